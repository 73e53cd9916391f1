"""Upsampling on shares: bilinear (or nearest) interpolation is a public linear map.

PyTorch's ``F.interpolate`` in ``bilinear`` mode is separable: ``y = A_h x A_w^T`` per channel,
with ``A_h`` (``H_out x H_in``) and ``A_w`` (``W_out x W_in``) fixed by the sizes and
``align_corners`` alone, so public. On additive shares a public linear map is local: each compute
party applies it to its own share. Cost: no message, no round; one truncation by the
matrices' fixed-point bits (itself local with the default ``"local"`` truncation).

For integer scale factors the bilinear weights are dyadic (``k / 2^b``: x2 -> quarters, x4 ->
eighths, x8 -> sixteenths), so they are encoded exactly at ``b`` bits and the only error is the
truncation's one unit in the last place. Weights that are not dyadic within ``frac_bits`` bits are
rounded at ``frac_bits`` bits (error at most ``2^-(f+1)`` per weight).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ring.fixed import FixedPoint
from ..ring.ops import ring_matmul
from .share import Share

__all__ = ["MODES", "dyadic_bits", "interp_matrix", "upsample", "upsample_plain"]

MODES = ("bilinear", "nearest")


def interp_matrix(n_in: int, n_out: int, mode: str, align_corners: bool | None) -> torch.Tensor:
    """The ``[n_out, n_in]`` float64 matrix of PyTorch's 1-D interpolation along one axis.

    Built by interpolating the identity basis with ``F.interpolate`` itself, so it is PyTorch's
    own rule (half-pixel centres, border clamping) and not a re-derivation of it.
    """
    if mode not in MODES:
        raise ValueError(f"upsampling mode {mode!r} is not a supported public linear map "
                         f"(supported: {', '.join(MODES)})")
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be positive, got {n_in} -> {n_out}")
    eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, n_in, 1)
    kw = {"align_corners": bool(align_corners)} if mode == "bilinear" else {}
    cols = F.interpolate(eye, size=(n_out, 1), mode=mode, **kw)  # [n_in, 1, n_out, 1]
    return cols.reshape(n_in, n_out).T.contiguous()


def upsample_plain(a: torch.Tensor, size: list[int], mode: str,
                   align_corners: bool | None) -> torch.Tensor:
    """The plaintext reference: PyTorch's ``F.interpolate`` with the plan op's parameters."""
    if mode not in MODES:
        raise ValueError(f"upsampling mode {mode!r} is not supported (supported: "
                         f"{', '.join(MODES)})")
    kw = {"align_corners": bool(align_corners)} if mode == "bilinear" else {}
    return F.interpolate(a, size=(int(size[0]), int(size[1])), mode=mode, **kw)


def dyadic_bits(m: torch.Tensor, max_bits: int) -> int:
    """Smallest ``b <= max_bits`` with ``m * 2^b`` integral; ``max_bits`` if there is none."""
    for b in range(max_bits + 1):
        scaled = m * (1 << b)
        if torch.equal(scaled, scaled.round()):
            return b
    return max_bits


def upsample(engine, x: Share, size: list[int], mode: str = "bilinear",
             align_corners: bool | None = False) -> Share:
    """Shares of ``F.interpolate(x, size, mode, align_corners)`` for ``x`` ``[B, C, H, W]``.

    Steps (every party, SPMD; nothing is sent):

    1. Build the public matrices ``A_h`` (``size[0] x H``) and ``A_w`` (``size[1] x W``) with
       :func:`interp_matrix`, and encode each at its :func:`dyadic_bits` ``b_h``, ``b_w``
       (at most the engine's ``f``): integers ``Ah = A_h 2^b_h``, ``Aw = A_w 2^b_w``.
    2. P0 and P1 compute ``y_i = Ah x_i Aw^T`` mod 2^64 on their own share ``x_i`` (the sum
       ``y_0 + y_1 = Ah x Aw^T``: the map is linear); the helper only tracks the shape.
    3. Truncate by ``b_h + b_w`` bits (:meth:`MPCEngine.truncate`, the configured protocol)
       to return to ``f`` fractional bits. With ``b_h + b_w = 0`` (e.g. nearest, or a 1 x 1
       image-pooling branch broadcast to ``H x W``) there is no truncation at all.
    """
    if x.data.dim() != 4:
        raise ValueError(f"upsample needs [batch, C, H, W] shares, got {tuple(x.shape)}")
    b, c, h, w = x.shape
    oh, ow = int(size[0]), int(size[1])
    mh = interp_matrix(h, oh, mode, align_corners)
    mw = interp_matrix(w, ow, mode, align_corners)
    bh, bw = dyadic_bits(mh, engine.f), dyadic_bits(mw, engine.f)
    if engine.is_helper:
        y = engine.placeholder((b, c, oh, ow), x.frac_bits + bh + bw)
    else:
        ah, aw = FixedPoint(bh).encode(mh), FixedPoint(bw).encode(mw)
        y = Share(ring_matmul(ring_matmul(ah, x.data), aw.T.contiguous()), x.frac_bits + bh + bw)
    return engine.truncate(y, bh + bw) if bh + bw else y
