"""Typed configuration of the secret-sharing engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["MPCConfig", "NonlinearConfig", "P0", "P1", "HELPER", "Truncation"]

Truncation = Literal["local", "exact"]

P0, P1, HELPER = 0, 1, 2


@dataclass(frozen=True)
class MPCConfig:
    """Knobs of the 3-party engine, passed explicitly to :class:`~secinfer.mpc.engine.MPCEngine`.

    frac_bits (default 12):
        Fixed-point scale 2^-f. 12 bits give a resolution of 2.4e-4, ample for CNN activations,
        and keep the products of two encoded values (2f = 24 fractional bits) small, which is what
        bounds local truncation's failure probability: an element of magnitude below 2^(l_x - 2f)
        is truncated wrongly with probability at most 2^(l_x + 1 - 64) (SecureML, Thm 1). With
        |values| < 2^8 after a product that is 2^-31 per element. Transformers that need finer
        resolution raise it (e.g. 16) at the price of a higher failure probability.
    drelu_high_bits / drelu_low_bits (default 0 / 0: exact):
        The approximate DReLU of Gorski & Avidan: the sign is read from bit ``63 - high`` and the
        bits below ``low`` are ignored, so the bitwise comparison runs over ``63 - high - low``
        bits instead of 63. Correct for every |x| < 2^(63 - high) (in ring units) except when
        |x| < 2^low, where the sign may flip; :func:`check_drelu_window` verifies a data range.
        The seed's constants map as COMPARISON_NUM_BITS_IGNORED = high + low and
        NUM_OF_LSB_TO_IGNORE = low: its (48, 5) at f = 16 is high = 43, low = 5 here, i.e. a
        15-bit comparison, exact for 2^-11 <= |x| < 16.
    truncation (default "local"):
        ``"local"``: SecureML's local truncation, free but wrong by about 2^(64 - d) with the
        probability above. ``"exact"``: the wrap-bit truncation of
        :meth:`~secinfer.mpc.engine.MPCEngine.truncate`, never more than one unit off for
        |x| < 2^62, at one round and 3d bits per element (6 bytes at d = 16). Transformers use
        it: a MiniLM article takes ~4e7 truncations whose local failure probabilities add up to
        0.007 (measured), i.e. one corrupted embedding in ~140 articles.
    prime:
        Modulus of the bitwise private comparison (SecureNN uses 67; must exceed bits + 2).
    debug_reveal_insecure:
        INSECURE debugging aid: compute parties reveal intermediates to each other to check them
        against plaintext. Never enable it in production; the engine logs a loud warning.
    verify_dealer (default False):
        Record every Beaver triple and let :meth:`~secinfer.mpc.engine.MPCEngine.check_dealer`
        prove them correct (:mod:`secinfer.mpc.dzk`): catches a helper that deals a wrong
        product. Only that: it is one layer of the malicious design of ``docs/integrity.md``.
    """

    frac_bits: int = 12
    drelu_high_bits: int = 0
    drelu_low_bits: int = 0
    prime: int = 67
    debug_reveal_insecure: bool = False
    truncation: Truncation = "local"
    verify_dealer: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.frac_bits <= 24:
            raise ValueError(f"frac_bits must be in 1..24, got {self.frac_bits}")
        if self.truncation not in ("local", "exact"):
            raise ValueError(f"truncation must be 'local' or 'exact', got {self.truncation!r}")
        if self.drelu_high_bits < 0 or self.drelu_low_bits < 0:
            raise ValueError("ignored DReLU bit counts must be >= 0")
        if self.compare_bits < 1:
            raise ValueError(
                f"DReLU window is empty: 63 - {self.drelu_high_bits} - {self.drelu_low_bits} < 1"
            )
        if self.prime <= self.compare_bits + 2:
            raise ValueError(f"prime {self.prime} too small for {self.compare_bits}-bit compares")

    @property
    def sign_bit(self) -> int:
        return 63 - self.drelu_high_bits

    @property
    def compare_bits(self) -> int:
        return 63 - self.drelu_high_bits - self.drelu_low_bits

    @property
    def scale(self) -> int:
        return 1 << self.frac_bits

    def drelu_valid_range(self) -> tuple[float, float]:
        """(min |x|, max |x|) in real units for which the approximate DReLU is exact."""
        lo = (1 << self.drelu_low_bits) / self.scale if self.drelu_low_bits else 0.0
        hi = (1 << self.sign_bit) / self.scale
        return lo, hi


@dataclass(frozen=True)
class NonlinearConfig:
    """Knobs of the transformer non-linearities, passed explicitly: ONE config for the secure
    ops (:mod:`.nonlinear`, :mod:`.nonlinear_norm`) and their plaintext references
    (:mod:`.approx`, which an :class:`~.approx.ApproxConfig` carries as ``nonlinear``), so a
    plaintext emulation computes what the shares compute, up to fixed-point rounding.

    exp_iters (8): n in exp(x) ~ (1 + x/2^n)^(2^n). At f = 16 each squaring doubles the
        relative rounding error, so 8 (approximation error 1.1e-3, rounding ~2e-3) beats 10
        (2.7e-4 but rounding ~8e-3); see :mod:`.nonlinear`'s table.
    exp_lower (-14): inputs below it are clamped there (PUMA's cut, e^-14 = 8e-7 is below one
        unit at f = 16); must exceed -2^exp_iters so that 1 + x/2^n stays positive.
    recip_iters (3), rsqrt_iters (3): Newton iterations after normalisation to [1, 2); the
        initial guesses' relative errors (1/17 and 4.6%) square each iteration.
    ln_lo, ln_hi (-8, 14): LayerNorm's variance must lie in [2^ln_lo, 2^ln_hi); each power of
        two costs one comparison per row (batched). Below 2^-8 the variance has fewer than 8
        significant bits at f = 16; 2^14 keeps every compared value inside the approximate
        DReLU's window at f = 16 with 32 ignored high bits (|x| < 2^15).
    mask_offset (1e4): added (negated) to masked attention scores before the max, so they
        fall far under exp_lower. With a public mask (``hide_length=False``) it is added
        publicly; with length hiding the user shares -mask_offset / 2 per padded key, so
        the offset is public but where it applies is not.
    quant_max_shift (16): I-BERT softmax's 2^-z is computed for z in [0, 16] (from 5 bit
        comparisons); 2^-17 is below one unit at f = 16, so larger z give 0.
    """

    exp_iters: int = 8
    exp_lower: float = -14.0
    recip_iters: int = 3
    rsqrt_iters: int = 3
    ln_lo: int = -8
    ln_hi: int = 14
    mask_offset: float = 1e4
    quant_max_shift: int = 16

    def __post_init__(self) -> None:
        for name, lo, hi in (("exp_iters", 1, 16), ("recip_iters", 1, 10),
                             ("rsqrt_iters", 1, 10), ("quant_max_shift", 1, 30)):
            v = getattr(self, name)
            if not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {v!r}")
        if not -(2.0 ** self.exp_iters) < self.exp_lower < 0:
            raise ValueError(f"exp_lower must be in (-2^exp_iters, 0), got {self.exp_lower}")
        if not -16 <= self.ln_lo < self.ln_hi <= 30:
            raise ValueError(f"need -16 <= ln_lo < ln_hi <= 30, got {self.ln_lo}, {self.ln_hi}")
        if self.mask_offset <= -self.exp_lower:
            raise ValueError("mask_offset must exceed -exp_lower")
