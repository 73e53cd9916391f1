"""Exact conv2d mod 2^64 through float64 convolutions of limbs (see :mod:`.limbs`).

The reduction of a convolution runs over ``(in_channels / groups, kh, kw)``. When it has more
than :data:`~secinfer.ring.limbs.MAX_TERMS` terms, it is cut into blocks of input channels
(within every group) and, for kernels with more taps than that bound, blocks of kernel rows
and columns. Each block is a smaller convolution of the padded input shifted by the block's
first tap, cropped to the full output size; the int64 block results are added mod 2^64.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .limbs import MAX_TERMS, Limbs, bilinear_mod64, split

__all__ = ["ConvGeometry", "conv2d_limbs"]


@dataclass(frozen=True)
class ConvGeometry:
    """Normalised conv2d parameters: explicit padding ``(top, bottom, left, right)``."""

    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int]
    groups: int

    def output_size(self, height: int, width: int, kh: int, kw: int) -> tuple[int, int]:
        top, bottom, left, right = self.padding
        ho = (height + top + bottom - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        wo = (width + left + right - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        return ho, wo


@dataclass(frozen=True)
class _Block:
    channels: tuple[int, int]
    rows: tuple[int, int]
    cols: tuple[int, int]


def _ranges(n: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def _blocks(cg: int, kh: int, kw: int) -> Iterator[_Block]:
    """Reduction blocks of at most MAX_TERMS taps each, covering ``(cg, kh, kw)`` once."""
    if kh * kw <= MAX_TERMS:
        per = (max(1, MAX_TERMS // (kh * kw)), kh, kw)
    elif kw <= MAX_TERMS:
        per = (1, MAX_TERMS // kw, kw)
    else:
        per = (1, 1, MAX_TERMS)
    for c in _ranges(cg, per[0]):
        for r in _ranges(kh, per[1]):
            for q in _ranges(kw, per[2]):
                yield _Block(c, r, q)


def conv2d_limbs(x: Tensor, w: Tensor, geom: ConvGeometry) -> Tensor:
    """``conv2d(x, w) mod 2^64`` for int64 ``x`` (N, C, H, W) and ``w`` (O, C/groups, kh, kw)."""
    n, c, height, width = x.shape
    _, cg, kh, kw = w.shape
    ho, wo = geom.output_size(height, width, kh, kw)
    top, bottom, left, right = geom.padding
    blocks = list(_blocks(cg, kh, kw))
    xl = split(x)
    wl = split(w)
    symmetric = top == bottom and left == right
    if len(blocks) == 1 and symmetric:

        def whole(a: Tensor, b: Tensor) -> Tensor:
            return F.conv2d(a, b, None, geom.stride, (top, left), geom.dilation, geom.groups)

        return bilinear_mod64(whole, xl, wl)
    if any(geom.padding):
        xl = xl.map(lambda t: F.pad(t, (left, right, top, bottom)))
    out = torch.zeros((n, w.shape[0], ho, wo), dtype=torch.int64, device=x.device)
    for blk in blocks:
        out += _block_product(xl, wl, blk, geom, cg, (ho, wo))
    return out


def _block_product(
    xl: Limbs, wl: Limbs, blk: _Block, geom: ConvGeometry, cg: int, out_hw: tuple[int, int]
) -> Tensor:
    (c0, c1), (r0, r1), (q0, q1) = blk.channels, blk.rows, blk.cols
    groups = geom.groups
    dh, dw = geom.dilation

    def take_x(t: Tensor) -> Tensor:
        n, _, hp, wp = t.shape
        if (c0, c1) != (0, cg):
            t = t.reshape(n, groups, cg, hp, wp)[:, :, c0:c1].reshape(n, groups * (c1 - c0), hp, wp)
        return t[:, :, r0 * dh :, q0 * dw :]

    xs = xl.map(take_x)
    ws = wl.map(lambda t: t[:, c0:c1, r0:r1, q0:q1])
    ho, wo = out_hw

    def part(a: Tensor, b: Tensor) -> Tensor:
        y = F.conv2d(a, b, None, geom.stride, 0, geom.dilation, groups)
        return y[:, :, :ho, :wo]

    return bilinear_mod64(part, xs, ws)
