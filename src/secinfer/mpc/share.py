"""The share type: one party's additive share mod 2^64 of a secret fixed-point tensor.

A :class:`Share` is an object, not a bare tensor, so that authenticated shares (SPDZ2k-style
MACs) can later extend it without touching protocol signatures. At the helper, which holds no
share, ``data`` is a tensor on the ``meta`` device: shape bookkeeping runs through the same
code, and any attempt to read a value fails loudly.

Local operations (add, subtract, negate, reshape, permute, slice, pad, concatenate, sum) need
no communication and are methods here; interactive ones live on the engine.

Arithmetic on a placeholder computes the result's shape only, with no meta-tensor dispatch:
torch runs meta arithmetic through its Python reference implementations, ~50-200 us per op,
and the first one imports ``torch._dynamo`` (2-5 s), which used to land inside the helper's
first request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Share", "broadcast_shape", "cat", "meta"]


def broadcast_shape(*shapes: Sequence[int]) -> torch.Size:
    """``torch.broadcast_shapes`` in plain Python: torch's imports sympy on its first call
    (about a second, once per process, in the middle of a request)."""
    ndim = max((len(s) for s in shapes), default=0)
    out = [1] * ndim
    for shape in shapes:
        for i, d in enumerate(shape, ndim - len(shape)):
            if d != 1:
                if out[i] not in (1, d):
                    raise ValueError(f"shapes {[tuple(s) for s in shapes]} do not broadcast")
                out[i] = int(d)
    return torch.Size(out)


def meta(shape: Sequence[int] | torch.Size) -> torch.Tensor:
    """A placeholder's data: an int64 tensor of ``shape`` on the ``meta`` device."""
    return torch.empty(tuple(shape), dtype=torch.int64, device="meta")


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

    def _shape_only(self, *others: torch.Tensor | int) -> Share | None:
        """At a placeholder: the broadcast result's placeholder (shape bookkeeping only)."""
        if not self.is_placeholder:
            return None
        shapes = [self.shape, *(o.shape for o in others if isinstance(o, torch.Tensor))]
        return self._like(meta(broadcast_shape(*shapes)))

    def __add__(self, other: Share) -> Share:
        self._check_scale(other)
        return self._shape_only(other.data) or self._like(self.data + other.data)

    def __sub__(self, other: Share) -> Share:
        self._check_scale(other)
        return self._shape_only(other.data) or self._like(self.data - other.data)

    def __neg__(self) -> Share:
        return self._shape_only() or self._like(-self.data)

    def mul_int(self, k: int | torch.Tensor) -> Share:
        """Multiply by a public integer (or int64 tensor); the scale is unchanged."""
        return self._shape_only(k) or self._like(self.data * k)

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
        if self.is_placeholder:
            return self._like(meta(_reduced_shape(self.shape, dim, keepdim)))
        if dim is None:
            return self._like(self.data.sum().reshape(()))
        return self._like(self.data.sum(dim=dim, keepdim=keepdim))  # type: ignore[arg-type]

    def pad(self, pad: Sequence[int]) -> Share:
        """Zero padding (shares of zero are zero at both parties)."""
        if self.is_placeholder:
            shape = list(self.shape)
            for i in range(len(pad) // 2):
                shape[-1 - i] += pad[2 * i] + pad[2 * i + 1]
            return self._like(meta(shape))
        return self._like(F.pad(self.data, tuple(pad)))

    def contiguous(self) -> Share:
        return self._like(self.data.contiguous())

    def expand(self, *shape: int) -> Share:
        return self._like(self.data.expand(*shape))

    def unfold(self, dim: int, size: int, step: int) -> Share:
        return self._like(self.data.unfold(dim, size, step))


def _reduced_shape(shape: torch.Size, dim: int | Sequence[int] | None,
                   keepdim: bool) -> list[int]:
    n = len(shape)
    dims = range(n) if dim is None else [dim] if isinstance(dim, int) else dim
    if dim is None:  # as the data path: a 0-d sum whatever keepdim says
        return []
    gone = {d % n for d in dims} if n else set()
    return [1 if i in gone else s for i, s in enumerate(shape) if keepdim or i not in gone]


def cat(shares: Sequence[Share], dim: int = 0) -> Share:
    """Concatenate shares of one scale along ``dim`` (local: each party concatenates its own)."""
    if not shares:
        raise ValueError("cat of no shares")
    f = shares[0].frac_bits
    for s in shares:
        if s.frac_bits != f:
            raise ValueError("cat of shares with different fixed-point scales")
    if shares[0].is_placeholder:
        shape = list(shares[0].shape)
        d = dim % len(shape)
        shape[d] = sum(s.shape[d] for s in shares)
        return Share(meta(shape), f)
    return Share(torch.cat([s.data for s in shares], dim=dim), f)
