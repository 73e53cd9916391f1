"""Rings Z_{2^k} narrower than 64 bits (k = 32 for the TEE's one-time masks), with small weights.

Elements are int64 tensors holding the signed representative in ``[-2^(k-1), 2^(k-1))``.
:func:`wrap` reduces any int64 tensor to it; :func:`narrow_linear` and :func:`narrow_conv2d`
compute ``x @ w.T`` / ``conv2d(x, w)`` mod 2^k exactly for int8 weights (the device's
quantized layers), at plaintext speed:

1. every product is at most ``2^(k-1) * 2^7`` in magnitude, so a float64 GEMM or convolution
   is exact while a partial sum has at most ``2^53 / 2^(k+6)`` terms (2^15 = 32,768 at
   k = 32: one call for every layer of the shipped CNNs);
2. wider layers are split over input channels (features) into chunks of that many terms, each
   chunk's exact integer result reduced mod 2^k before the next is added (grouped convolutions
   wider than one chunk are refused: their channels cannot be split that way);
3. the result is reduced with :func:`wrap`.

The same results as the mod-2^64 functions of :mod:`.ops` reduced mod 2^k (2^k divides 2^64),
which the tests check; those need limbs or int64 kernels, these need one float64 kernel call.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .ops import IntPair, _geometry

__all__ = ["wrap", "narrow_linear", "narrow_conv2d"]

_WEIGHT_BITS = 7  # |int8| <= 2^7


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 64:
        raise ValueError(f"ring width must be an int in [2, 64] bits, got {bits!r}")


def wrap(t: Tensor, bits: int) -> Tensor:
    """The signed representative in ``[-2^(bits-1), 2^(bits-1))`` of ``t mod 2^bits`` (int64).

    int64 overflow on the way is harmless: it wraps mod 2^64, which 2^bits divides."""
    _check_bits(bits)
    t = t.to(torch.int64)
    if bits == 64:
        return t
    half = 1 << (bits - 1)
    return torch.remainder(t + half, 1 << bits) - half


def _chunk_terms(bits: int) -> int:
    """Largest number of products whose float64 sum stays exact (< 2^53)."""
    return max(1, (1 << 53) // (1 << (bits - 1 + _WEIGHT_BITS)))


def _check(op: str, x: Tensor, w: Tensor, bits: int) -> None:
    _check_bits(bits)
    if bits > 46:  # one product alone would leave float64's 53 exact bits
        raise ValueError(f"{op}: int8 weights on Z_2^{bits} need the mod-2^64 functions of "
                         "secinfer.ring.ops (at most 46 bits here)")
    if w.dtype != torch.int8:
        raise TypeError(f"{op}: weights must be int8, got {w.dtype}")
    if x.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{op}: x must hold ring elements as int32 or int64, got {x.dtype}")


def narrow_linear(x: Tensor, w: Tensor, bits: int) -> Tensor:
    """``x @ w.T mod 2^bits`` (signed representatives, int64) for int8 ``w`` (N, K)."""
    _check("narrow_linear", x, w, bits)
    if w.dim() != 2 or x.dim() == 0 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"narrow_linear: x (..., {w.shape[-1]}) and w (N, K) needed, got x "
                         f"{tuple(x.shape)}, w {tuple(w.shape)}")
    xd, wd = wrap(x, bits).to(torch.float64), w.to(torch.float64)
    k, step = int(w.shape[1]), _chunk_terms(bits)
    acc: Tensor | None = None
    for s in range(0, k, step):
        part = (xd[..., s:s + step] @ wd[:, s:s + step].t()).to(torch.int64)
        acc = wrap(part if acc is None else acc + part, bits)
    assert acc is not None
    return acc


def narrow_conv2d(x: Tensor, w: Tensor, bits: int, stride: IntPair = 1,
                  padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1) -> Tensor:
    """``conv2d(x, w) mod 2^bits`` (signed representatives, int64) for int8 ``w``
    (O, C / groups, kh, kw) and ``x`` (N, C, H, W); torch's parameters, no bias."""
    _check("narrow_conv2d", x, w, bits)
    if w.dim() != 4 or x.dim() != 4:
        raise ValueError(f"narrow_conv2d: x (N, C, H, W) and w (O, C/groups, kh, kw) needed, "
                         f"got x {tuple(x.shape)}, w {tuple(w.shape)}")
    geom = _geometry(stride, padding, dilation, groups, (int(w.shape[2]), int(w.shape[3])))
    top, bottom, left, right = geom.padding
    xd, wd = wrap(x, bits).to(torch.float64), w.to(torch.float64)

    def conv(xs: Tensor, ws: Tensor) -> Tensor:
        out = torch.nn.functional.conv2d(xs, ws, None, geom.stride, (top, left), geom.dilation,
                                         groups)
        return out.to(torch.int64)

    fan_in = int(w[0].numel())
    step_terms = _chunk_terms(bits)
    if fan_in <= step_terms:
        return wrap(conv(xd, wd), bits)
    if groups != 1:
        raise ValueError(f"narrow_conv2d: a grouped convolution with fan-in {fan_in} is wider "
                         f"than one exact float64 call ({step_terms} products)")
    per = fan_in // int(w.shape[1])  # products per input channel
    step = max(1, step_terms // per)
    acc: Tensor | None = None
    for s in range(0, int(w.shape[1]), step):
        part = conv(xd[:, s:s + step], wd[:, s:s + step])
        acc = wrap(part if acc is None else acc + part, bits)
    assert acc is not None
    return acc
