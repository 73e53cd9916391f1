"""Fixed-point encoding of real tensors into Z_{2^64}, held as int64 (two's complement).

A real ``x`` is encoded as ``round(x * 2^f)`` (round half to even) and read back by dividing
the signed int64 value by ``2^f``. Ring arithmetic wraps mod 2^64; the signed reading is
correct while the true integer stays in ``[-2^63, 2^63)``.

Why ``frac_bits = 16`` by default
---------------------------------
* Precision: 2^-16 ~ 1.5e-5 per value. The Knapsack seed uses 12 bits (2.4e-4), too coarse
  for softmax, LayerNorm and GELU approximations in transformers; CrypTen also uses 16.
* Headroom for products: a product of two encodings carries 2f = 32 fractional bits, so a
  matmul or conv output before truncation is correct while ``|sum_i x_i y_i| < 2^(63 - 2f)
  = 2^31 ~ 2.1e9``, ample for normalised activations and weights.
* Comparisons and truncation: a sign (MSB) test reads values correctly while
  ``|x| < 2^(63 - f) = 2^47``; two-party local truncation of a share fails with probability
  about ``|x| * 2^f / 2^63`` per element, about 2^-32 for ``|x| < 2^15`` at f = 16.
* :meth:`FixedPoint.encode` refuses ``|x| > 2^(62 - f)`` (2^46 at f = 16), which keeps one bit
  spare so that the sum of two encoded values cannot wrap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["FixedPoint", "DEFAULT_FRAC_BITS"]

DEFAULT_FRAC_BITS = 16


@dataclass(frozen=True)
class FixedPoint:
    """Fixed-point codec with ``frac_bits`` fractional bits (0 to 31; default 16, see module)."""

    frac_bits: int = DEFAULT_FRAC_BITS

    def __post_init__(self) -> None:
        f = self.frac_bits
        if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f <= 31:
            raise ValueError(
                f"FixedPoint.frac_bits must be an int in [0, 31] (a product of two encodings"
                f" needs 2*frac_bits < 63 bits), got {f!r}"
            )

    @property
    def scale(self) -> int:
        """``2^frac_bits``: the integer that stands for 1.0."""
        return 1 << self.frac_bits

    @property
    def resolution(self) -> float:
        """``2^-frac_bits``: the spacing of representable values."""
        return 2.0**-self.frac_bits

    @property
    def max_abs(self) -> float:
        """``2^(62 - frac_bits)``: the largest magnitude :meth:`encode` accepts."""
        return 2.0 ** (62 - self.frac_bits)

    def encode(self, x: Tensor) -> Tensor:
        """Round ``x * 2^f`` to the nearest integer (ties to even), as int64 on ``x``'s device.

        Raises ``TypeError`` for a non-floating tensor (an int64 tensor is probably already
        encoded) and ``ValueError`` for NaN, infinity or ``|x| > max_abs``.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"FixedPoint.encode expects a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(
                f"FixedPoint.encode expects a floating-point tensor, got {x.dtype}"
                " (int64 tensors are ring elements: already encoded?)"
            )
        xd = x.to(torch.float64)
        finite = torch.isfinite(xd)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise ValueError(f"FixedPoint.encode: input has {bad} NaN or infinite value(s)")
        if xd.numel() and float(xd.abs().max()) > self.max_abs:
            raise ValueError(
                f"FixedPoint.encode: |x| up to {float(xd.abs().max()):.6g} exceeds the fixed-point"
                f" range, the safe bound 2^{62 - self.frac_bits} = {self.max_abs:.6g} for"
                f" frac_bits={self.frac_bits}"
            )
        return torch.round(xd * self.scale).to(torch.int64)

    def decode(self, v: Tensor) -> Tensor:
        """The signed int64 value divided by ``2^f``, as float64 (exact while |v| <= 2^53)."""
        if not isinstance(v, Tensor) or v.dtype != torch.int64:
            got = v.dtype if isinstance(v, Tensor) else type(v).__name__
            raise TypeError(f"FixedPoint.decode expects a torch.int64 tensor, got {got}")
        return v.to(torch.float64) / self.scale
