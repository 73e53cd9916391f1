"""Exact linear algebra on int64 tensors mod 2^64: matmul, linear, conv2d, elementwise product.

Every function takes int64 tensors, read as elements of Z_{2^64} in two's complement, and
returns exactly the wrap-around result of the naive int64 computation.

Two methods compute the same thing:

* ``"int64"``: PyTorch's own int64 kernels. On this project's CPU (torch 2.13, AVX-512,
  MKL) the int64 matmul measured only about 1.2x to 2x slower than a float64 GEMM of the
  same shape, and int64 conv2d about as fast as float64 conv2d, so this is the fastest exact
  path on CPU (``benchmarks/ring_matmul.py`` measures both methods in one run).
* ``"limbs"``: five float64 GEMMs or convolutions of 22/20/22-bit signed limbs with
  Karatsuba, exact by the argument in :mod:`secinfer.ring.limbs`. It needs only float64
  kernels, so it also runs on devices whose PyTorch backend lacks int64 matmul (CUDA).

``method="auto"`` (the default) runs whichever is faster on this machine, per op kind
(matmul, convolution), as measured once and cached by :mod:`secinfer.ring.kernels`: the two
differ by 20x or more between hosts of the same kind, so no constant choice is right. Off the
CPU ``auto`` is ``"limbs"`` (no GPU was available to measure on).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .conv import ConvGeometry, conv2d_limbs
from .kernels import auto_choice
from .limbs import Limbs, bilinear_mod64, num_chunks, split

__all__ = ["RingMethod", "ring_matmul", "ring_linear", "ring_conv2d", "ring_mul", "resolve_method"]

RingMethod = Literal["auto", "int64", "limbs"]
_METHODS = ("auto", "int64", "limbs")

IntPair = int | tuple[int, int]


def resolve_method(method: str, device: torch.device,
                   op: Literal["matmul", "conv"] = "matmul") -> Literal["int64", "limbs"]:
    """The concrete method ``"auto"`` stands for for ``op`` on ``device``; validates ``method``."""
    if method not in _METHODS:
        raise ValueError(f"ring method must be one of {_METHODS}, got {method!r}")
    if method == "auto":
        choice = auto_choice(device.type)
        return choice.matmul if op == "matmul" else choice.conv
    return "int64" if method == "int64" else "limbs"


def _check_ring(op: str, **tensors: Tensor) -> torch.device:
    devices = set()
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != torch.int64:
            raise TypeError(
                f"{op}: {name} must be a torch.int64 tensor of ring elements, got {t.dtype}"
                " (encode floats with FixedPoint.encode first)"
            )
        devices.add(t.device)
    if len(devices) != 1:
        raise ValueError(f"{op}: operands are on different devices: {sorted(map(str, devices))}")
    return devices.pop()


def ring_mul(a: Tensor, b: Tensor) -> Tensor:
    """Elementwise ``a * b mod 2^64`` with broadcasting (int64 multiply wraps exactly)."""
    _check_ring("ring_mul", a=a, b=b)
    return torch.mul(a, b)


def ring_matmul(a: Tensor, b: Tensor, *, method: RingMethod = "auto") -> Tensor:
    """``a @ b mod 2^64`` with ``torch.matmul`` semantics (1-D operands, broadcast batches)."""
    device = _check_ring("ring_matmul", a=a, b=b)
    if a.dim() == 0 or b.dim() == 0:
        raise ValueError("ring_matmul: operands must have at least one dimension (use ring_mul)")
    k = a.shape[-1]
    kb = b.shape[0] if b.dim() == 1 else b.shape[-2]
    if k != kb:
        raise ValueError(
            f"ring_matmul: inner dimensions differ: a is {tuple(a.shape)} (K={k}),"
            f" b is {tuple(b.shape)} (K={kb})"
        )
    if resolve_method(method, device) == "int64":
        return torch.matmul(a, b)
    return _matmul_limbs(a, b, k)


def _matmul_limbs(a: Tensor, b: Tensor, k: int) -> Tensor:
    al, bl = split(a), split(b)
    chunks = num_chunks(k)
    if chunks == 1:
        return bilinear_mod64(torch.matmul, al, bl)
    size = -(-k // chunks)
    b_dim = 0 if b.dim() == 1 else b.dim() - 2
    parts = (
        bilinear_mod64(
            torch.matmul,
            _narrow(al, -1, start, min(size, k - start)),
            _narrow(bl, b_dim, start, min(size, k - start)),
        )
        for start in range(0, k, size)
    )
    out = next(parts)
    for part in parts:
        out += part
    return out


def _narrow(limbs: Limbs, dim: int, start: int, length: int) -> Limbs:
    return limbs.map(lambda t: t.narrow(dim, start, length))


def ring_linear(x: Tensor, w: Tensor, *, method: RingMethod = "auto") -> Tensor:
    """``x @ w.T mod 2^64`` for ``x`` (..., K) and a weight matrix ``w`` (N, K); no bias."""
    _check_ring("ring_linear", x=x, w=w)
    if w.dim() != 2:
        raise ValueError(f"ring_linear: w must be 2-D (out_features, in_features), got {w.dim()}-D")
    if x.dim() == 0 or x.shape[-1] != w.shape[1]:
        raise ValueError(
            f"ring_linear: x's last dimension must equal w.shape[1] = {w.shape[1]},"
            f" got x of shape {tuple(x.shape)}"
        )
    return ring_matmul(x, w.t(), method=method)


def _pair(value: IntPair, name: str, minimum: int) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= minimum for v in pair):
        raise ValueError(
            f"ring_conv2d: {name} must be an int or a pair of ints >= {minimum}, got {value!r}"
        )
    return pair[0], pair[1]


def _geometry(
    stride: IntPair, padding: IntPair | str, dilation: IntPair, groups: int, kernel: tuple[int, int]
) -> ConvGeometry:
    s = _pair(stride, "stride", 1)
    d = _pair(dilation, "dilation", 1)
    if isinstance(padding, str):
        if padding == "valid":
            pads = (0, 0, 0, 0)
        elif padding == "same":
            if s != (1, 1):
                raise ValueError("ring_conv2d: padding='same' needs stride 1 (as in torch)")
            th, tw = d[0] * (kernel[0] - 1), d[1] * (kernel[1] - 1)
            pads = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        else:
            raise ValueError(
                f"ring_conv2d: padding must be 'valid', 'same' or ints, got {padding!r}"
            )
    else:
        ph, pw = _pair(padding, "padding", 0)
        pads = (ph, ph, pw, pw)
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"ring_conv2d: groups must be a positive int, got {groups!r}")
    return ConvGeometry(s, pads, d, groups)


def ring_conv2d(
    x: Tensor,
    w: Tensor,
    stride: IntPair = 1,
    padding: IntPair | str = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    *,
    method: RingMethod = "auto",
) -> Tensor:
    """``conv2d(x, w) mod 2^64`` with torch's parameters (no bias: add it in the ring).

    ``x`` is (N, C, H, W) or unbatched (C, H, W); ``w`` is (O, C / groups, kh, kw); padding
    is an int, a pair, ``"valid"`` or ``"same"`` (even kernels padded more at the end, as
    torch does). Depthwise convolution is ``groups = C``.
    """
    device = _check_ring("ring_conv2d", x=x, w=w)
    if w.dim() != 4:
        raise ValueError(f"ring_conv2d: w must be 4-D (O, C/groups, kh, kw), got {w.dim()}-D")
    if x.dim() not in (3, 4):
        raise ValueError(f"ring_conv2d: x must be (N, C, H, W) or (C, H, W), got {x.dim()}-D")
    geom = _geometry(stride, padding, dilation, groups, (w.shape[2], w.shape[3]))
    unbatched = x.dim() == 3
    x4 = x.unsqueeze(0) if unbatched else x
    o, cg, kh, kw = w.shape
    if x4.shape[1] != cg * groups or o % groups != 0:
        raise ValueError(
            f"ring_conv2d: with groups={groups}, x needs {cg * groups} channels (got"
            f" {x4.shape[1]}) and w's {o} output channels must be divisible by groups"
        )
    ho, wo = geom.output_size(x4.shape[2], x4.shape[3], kh, kw)
    if ho < 1 or wo < 1:
        raise ValueError(
            f"ring_conv2d: kernel {kh}x{kw} (dilation {geom.dilation}) does not fit the padded"
            f" input {tuple(x4.shape[2:])} with padding {geom.padding}"
        )
    if resolve_method(method, device, "conv") == "int64":
        top, bottom, left, right = geom.padding
        if top == bottom and left == right:
            out = torch.nn.functional.conv2d(
                x4, w, None, geom.stride, (top, left), geom.dilation, groups
            )
        else:
            padded = torch.nn.functional.pad(x4, (left, right, top, bottom))
            out = torch.nn.functional.conv2d(padded, w, None, geom.stride, 0, geom.dilation, groups)
    else:
        out = conv2d_limbs(x4, w, geom)
    return out.squeeze(0) if unbatched else out
