"""The share type: one party's additive share mod 2^64 of a secret fixed-point tensor.

A :class:`Share` is an object, not a bare tensor, so that authenticated shares (SPDZ2k-style
MACs) can later extend it without touching protocol signatures. At the helper, which holds no
share, ``data`` is a tensor on the ``meta`` device: shape bookkeeping runs through the same
code, and any attempt to read a value fails loudly.

Local operations (add, subtract, negate, reshape, permute, slice, pad, concatenate, sum) need
no communication and are methods here; interactive ones live on the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Share", "cat"]


@dataclass
class Share:
    data: torch.Tensor  # int64 on cpu (compute party) or meta (helper)
    frac_bits: int

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def is_placeholder(self) -> bool:
        return self.data.device.type == "meta"

    def numel(self) -> int:
        return self.data.numel()

    def with_frac(self, frac_bits: int) -> Share:
        """The same ring elements relabelled with another scale (no arithmetic)."""
        return Share(self.data, frac_bits)

    def _like(self, data: torch.Tensor, frac_bits: int | None = None) -> Share:
        return Share(data, self.frac_bits if frac_bits is None else frac_bits)

    def _check_scale(self, other: Share) -> None:
        if other.frac_bits != self.frac_bits:
            raise ValueError(
                f"fixed-point scales differ ({self.frac_bits} vs {other.frac_bits} bits); "
                "truncate first"
            )

    def __add__(self, other: Share) -> Share:
        self._check_scale(other)
        return self._like(self.data + other.data)

    def __sub__(self, other: Share) -> Share:
        self._check_scale(other)
        return self._like(self.data - other.data)

    def __neg__(self) -> Share:
        return self._like(-self.data)

    def mul_int(self, k: int | torch.Tensor) -> Share:
        """Multiply by a public integer (or int64 tensor); the scale is unchanged."""
        return self._like(self.data * k)

    # -- shape ops (all local)
    def reshape(self, *shape: int) -> Share:
        return self._like(self.data.reshape(*shape))

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> Share:
        return self._like(self.data.flatten(start_dim, end_dim))

    def permute(self, *dims: int) -> Share:
        return self._like(self.data.permute(*dims))

    def transpose(self, a: int, b: int) -> Share:
        return self._like(self.data.transpose(a, b))

    def unsqueeze(self, dim: int) -> Share:
        return self._like(self.data.unsqueeze(dim))

    def __getitem__(self, idx: object) -> Share:
        return self._like(self.data[idx])  # type: ignore[index]

    def sum(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> Share:
        if dim is None:
            return self._like(self.data.sum().reshape(()))
        return self._like(self.data.sum(dim=dim, keepdim=keepdim))  # type: ignore[arg-type]

    def pad(self, pad: Sequence[int]) -> Share:
        """Zero padding (shares of zero are zero at both parties)."""
        return self._like(F.pad(self.data, tuple(pad)))

    def contiguous(self) -> Share:
        return self._like(self.data.contiguous())

    def expand(self, *shape: int) -> Share:
        return self._like(self.data.expand(*shape))

    def unfold(self, dim: int, size: int, step: int) -> Share:
        return self._like(self.data.unfold(dim, size, step))


def cat(shares: Sequence[Share], dim: int = 0) -> Share:
    """Concatenate shares of one scale along ``dim`` (local: each party concatenates its own)."""
    if not shares:
        raise ValueError("cat of no shares")
    f = shares[0].frac_bits
    for s in shares:
        if s.frac_bits != f:
            raise ValueError("cat of shares with different fixed-point scales")
    return Share(torch.cat([s.data for s in shares], dim=dim), f)
