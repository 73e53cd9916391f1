"""Exact bilinear products mod 2^64 from float64 products of small signed limbs.

Why: a GPU (and some CPUs) has fast float64 GEMMs but no fast, or no, int64 GEMM. Any
bilinear map ``P`` (matmul, conv2d) of integer inputs can be evaluated exactly in float64 as
long as every partial sum stays at or below 2^53 in magnitude; we cut each int64 operand into
three small signed limbs so that this holds, and recombine the limb products in int64.

Representation
--------------
An int64 tensor stands for its value mod 2^64 (two's complement, wrap-around). It is split as

    x = x0 + 2^22 * x1 + 2^42 * x2   (mod 2^64)

with *balanced* limbs ``x0 in [-2^21, 2^21)``, ``x1 in [-2^19, 2^19)``, ``x2 in [-2^21, 2^21)``
(widths 22, 20, 22 bits). :func:`split` computes them with shifts and adds only; the one
addition that can wrap does so harmlessly (see its docstring).

Exactness argument
------------------
Let ``P`` be bilinear and let every output of ``P`` be a sum of at most ``K`` products of one
entry of each operand (``K`` is the reduction length: the inner dimension of a matmul, or
``in_channels / groups * kh * kw`` of a conv). Then mod 2^64::

    P(a, b) = P(a0,b0) + 2^22 (P(a0,b1) + P(a1,b0)) + 2^44 P(a1,b1) + 2^42 (P(a0,b2) + P(a2,b0))
              + 2^62 (...) + 2^64 (...)

The pairs (a1,b2) and (a2,b1) have shift 22 + 42 = 64 and (a2,b2) has shift 84, so they vanish
mod 2^64 and are dropped. (Equal widths of 21 bits would not do: their shift 63 survives.) The
cross term uses Karatsuba, ``P(a0,b1) + P(a1,b0) = P(a0+a1, b0+b1) - P(a0,b0) - P(a1,b1)``, so
five float64 products are evaluated:

1. ``P00 = P(a0, b0)``: each entry product is at most 2^21 * 2^21 = 2^42 in magnitude.
2. ``P11 = P(a1, b1)``: at most 2^19 * 2^19 = 2^38.
3. ``PK = P(a0 + a1, b0 + b1)``: ``|a0 + a1| <= 2^21 + 2^19``, so at most (2^21 + 2^19)^2
   = 1.5625 * 2^42.
4. ``P02 = P(a0, b2)`` and 5. ``P20 = P(a2, b0)``: at most 2^21 * 2^21 = 2^42.

All limbs are integers, so every product and every partial sum that a GEMM or convolution
forms, in any order or blocking, is an integer of magnitude at most ``K * 1.5625 * 2^42``.
With ``K <= MAX_TERMS = 1310`` this is below 2^53, where float64 represents every integer
exactly; hence each multiply, add and FMA is exact and each ``P..`` is the exact integer. The
five results are converted to int64 (exact, since below 2^53) and combined with wrap-around
int64 arithmetic, which is arithmetic mod 2^64. Callers with ``K > MAX_TERMS`` split the
reduction into chunks of at most ``MAX_TERMS`` terms and add the int64 chunk results mod 2^64.

The one assumption on the backend is that it computes the classical sum of products (no
Strassen-type recombination, no reduced-precision mode); float64 GEMMs and convolutions in
PyTorch's CPU (MKL/oneDNN) and CUDA backends do. The tests check exact equality against an
independent numpy uint64 computation, including inputs that reach the bound.

Cost: five float64 products of the original size, plus O(size of inputs + outputs) int64 work.

Nothing here handles secrets differently from public data: the work done depends only on
shapes, never on values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["LIMB_BITS", "MAX_TERMS", "Limbs", "split", "bilinear_mod64", "num_chunks"]

LIMB_BITS: tuple[int, int, int] = (22, 20, 22)
_SHIFT_MID = LIMB_BITS[0]
_SHIFT_HI = LIMB_BITS[0] + LIMB_BITS[1]
_KARATSUBA_BOUND = (1 << (LIMB_BITS[0] - 1)) + (1 << (LIMB_BITS[1] - 1))
MAX_TERMS: int = (1 << 53) // (_KARATSUBA_BOUND * _KARATSUBA_BOUND)
"""Largest reduction length for which every float64 partial sum is exact (1310)."""


@dataclass(frozen=True)
class Limbs:
    """Float64 limbs of an int64 tensor: ``x = lo + 2^22 mid + 2^42 hi (mod 2^64)``.

    ``lo_mid = lo + mid`` is precomputed for the Karatsuba product.
    """

    lo: Tensor
    mid: Tensor
    hi: Tensor
    lo_mid: Tensor

    def map(self, f: Callable[[Tensor], Tensor]) -> Limbs:
        """Apply the same reshaping or slicing to every limb (it must be linear)."""
        return Limbs(f(self.lo), f(self.mid), f(self.hi), f(self.lo_mid))


def split(x: Tensor, dtype: torch.dtype = torch.float64) -> Limbs:
    """Balanced limbs of an int64 tensor, as ``dtype`` (float64 unless told otherwise).

    Each limb is the low ``w`` bits of what remains, sign-extended by shifting them to the
    top and arithmetically back; what remains is the rounded quotient
    ``floor((v + 2^(w-1)) / 2^w)``, whose remainder ``v - 2^w q`` is exactly that signed limb.
    The addition can wrap for ``v`` near 2^63; that changes ``q`` by a multiple of
    2^(64 - w) only, and ``q`` is used solely multiplied by 2^w mod 2^64, so
    ``x = lo + 2^22 mid + 2^42 hi`` still holds mod 2^64. Shifts and in-place updates only:
    ``int64 & python_int`` takes a slow scalar path in torch 2.13, and every fresh 8 MB
    buffer costs page faults comparable to the arithmetic.
    """
    w0, w1, w2 = LIMB_BITS
    lo = x << (64 - w0)
    lo >>= 64 - w0
    rest = x + (1 << (w0 - 1))
    rest >>= w0
    mid = rest << (64 - w1)
    mid >>= 64 - w1
    rest += 1 << (w1 - 1)
    rest >>= w1
    rest <<= 64 - w2
    rest >>= 64 - w2
    lo_f = lo.to(dtype)
    mid_f = mid.to(dtype)
    return Limbs(lo_f, mid_f, rest.to(dtype), lo_f + mid_f)


def num_chunks(terms: int) -> int:
    """How many chunks of at most :data:`MAX_TERMS` a reduction of ``terms`` needs (>= 1)."""
    return max(1, -(-terms // MAX_TERMS))


def bilinear_mod64(product: Callable[[Tensor, Tensor], Tensor], a: Limbs, b: Limbs) -> Tensor:
    """``product(a, b) mod 2^64`` as int64, from five float64 products of limbs.

    ``product`` must be bilinear with at most :data:`MAX_TERMS` terms per output (see the
    module docstring for the proof of exactness under that condition).
    """
    p00 = product(a.lo, b.lo).to(torch.int64)
    p11 = product(a.mid, b.mid).to(torch.int64)
    cross = product(a.lo_mid, b.lo_mid).to(torch.int64)
    high = product(a.lo, b.hi).to(torch.int64)
    high += product(a.hi, b.lo).to(torch.int64)
    cross -= p00
    cross -= p11
    out = p00
    out += cross.bitwise_left_shift_(_SHIFT_MID)
    out += p11.bitwise_left_shift_(2 * _SHIFT_MID)
    out += high.bitwise_left_shift_(_SHIFT_HI)
    return out
