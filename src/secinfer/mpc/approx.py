"""MPC-friendly approximations of transformer non-linearities, in plaintext (float32 / float64).

These are the reference implementations the secret-shared side mirrors step by step. Every
function below uses only what a 3-party additive-sharing engine offers cheaply:

* additions and multiplications (Beaver products, then a truncation),
* multiplications by public constants,
* comparisons with public constants or between two shared values (one bit, as 0/1),
* selection written as ``bit * a + (1 - bit) * b`` (one more product on shares),
* a floor of a fixed-point value (a truncation to the integer part) in the I-BERT softmax.

In float32 the exp's 2^n squarings amplify rounding: results differ from float64 by up to
1e-4 (n = 10). Fixed point on shares behaves like that too (more fractional bits, less error).

No ``torch.exp``, ``torch.sigmoid``, division by a secret or ``sqrt`` appears in an approximation;
those are only used by the tests as the float64 ground truth. Inputs keep their dtype.

One config: the knobs are :class:`~secinfer.mpc.config.NonlinearConfig`, the very object the
secure ops (:mod:`.nonlinear`, :mod:`.nonlinear_norm`) take, so an emulation with
``ApproxConfig(emulate_mpc=True)`` uses the secure side's squarings, iterations and ranges.

Measured maximum errors (float64, dense grids, the ranges stated; reproduce with
``pytest tests/mpc/test_approx.py -q``; the tests assert these bounds), at the defaults
(``exp_iters`` 8, Newton 3 iterations, ``ln`` range [2^-8, 2^14), ``quant_max_shift`` 16):

=============================  =====================  ===============================
function                       range                  max error (default knobs)
=============================  =====================  ===============================
``sig_seclmm``                 all reals              abs 3.8e-3 vs sigmoid
``quick_gelu_sig``             all reals              abs 3.8e-3 vs x*sigmoid(1.702x)
``exp_limit`` (n=8)            (-inf, 0]              abs 1.06e-3 vs exp (n=10: 2.7e-4)
``reciprocal_newton`` (3 it)   [2^-16, 2^16)          rel 2e-10 vs 1/a
``rsqrt_newton`` (3 it)        [2^-16, 2^16)          rel 4e-10 vs 1/sqrt(a)
``sigmoid_mpc``                all reals              abs 8.6e-4 vs sigmoid
``tanh_mpc``                   all reals              abs 1.7e-3 vs tanh
``quick_gelu_mpc``             [-8, 8]                abs 1.4e-3 vs x*sigmoid(1.702x)
``gelu_poly``                  all reals              abs 4.1e-4 vs erf GELU
``gelu_tanh_mpc``              all reals              abs 1.3e-3 vs erf GELU
``i_exp`` (z <= 16)            [-16 ln2, 0]           rel 3.1e-3 vs exp; below: < 2^-16
``softmax_mpc``                any scores             abs 5.9e-3 vs softmax
``softmax_quant`` (I-BERT)     any scores             abs 1.5e-3 vs softmax
``layer_norm_mpc``             var in [2^-8, 2^14)    abs 1e-8 * |gamma| vs LayerNorm
=============================  =====================  ===============================

Threat model: none here; this module is plaintext arithmetic. Which values would be secret on
shares is noted where it matters for the protocol (every input tensor; never the knobs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from .config import NonlinearConfig

__all__ = [
    "ApproxConfig",
    "SIG_SEG1",
    "SIG_SEG2",
    "sig_seclmm",
    "quick_gelu_sig",
    "exp_limit",
    "reciprocal_newton",
    "rsqrt_newton",
    "sigmoid_mpc",
    "tanh_mpc",
    "quick_gelu_mpc",
    "gelu_poly",
    "gelu_tanh_mpc",
    "gelu_mpc",
    "softmax_mpc",
    "softmax_quant",
    "i_exp",
    "layer_norm_mpc",
    "LN2",
    "IEXP_A",
    "IEXP_B",
    "IEXP_C",
]

HiddenAct = Literal["gelu", "sig"]
SoftmaxAct = Literal["softmax", "quant"]
GeluMode = Literal["poly", "tanh"]

#: SecLMM seg1(t) = b0 t^4 + b1 t^3 + b2 t^2 + b3 t + b4 on [-7, -2.2] (seeds-study 1.3), here
#: stored lowest degree first.
SIG_SEG1: tuple[float, ...] = (
    5.13221872e-1, 3.25062059e-1, 8.02087975e-2, 9.02375527e-3, 3.86706425e-4,
)
#: SecLMM seg2(t) = a0 t^2 + a1 t + a2 on (-2.2, 0), lowest degree first.
SIG_SEG2: tuple[float, ...] = (0.50378299, 0.27668905, 0.04206364)

# Piecewise GELU fitted by the project (weighted least squares tending to minimax, float64):
# [-5, -2) degree 4, [-2, 4] degree 10, 0 below -5, x above 4. Lowest degree first.
_GELU_LEFT: tuple[float, ...] = (
    -0.6387254123710112, -0.6181583023530188, -0.22413280366702634,
    -0.03603332819520846, -0.0021649622601844767,
)
_GELU_MID: tuple[float, ...] = (
    0.0001009818687865827, 0.5017055234956987, 0.39790539623049304, -0.005148802911247013,
    -0.06418597122218454, 0.004217644052956532, 0.007965284982084363,
    -0.0013014370775739318, -0.00042714384906327054, 0.0001362790537681986,
    -1.0457384612927456e-05,
)

LN2 = math.log(2.0)
#: I-BERT's second-order fit of exp on (-ln2, 0]: exp(p) ~ 0.3585 (p + 1.353)^2 + 0.344.
IEXP_A, IEXP_B, IEXP_C = 0.3585, 1.353, 0.344


@dataclass(frozen=True)
class ApproxConfig:
    """Which approximations a transformer uses; their knobs are ``nonlinear``, the very
    :class:`~secinfer.mpc.config.NonlinearConfig` the secure ops take (one config for both).

    Attributes:
        hidden_act: ``"gelu"`` keeps the model's own activation (erf GELU for BERT/ViT,
            quick-GELU for CLIP); ``"sig"`` uses x * sig_seclmm(1.702 x) in its place. For a
            GELU model this relies on GELU(x) ~ x * sigmoid(1.702 x) (max gap 0.020).
        softmax_act: ``"softmax"`` (exact, or exp_limit + Newton reciprocal when emulating) or
            ``"quant"``, the I-BERT integer-style exp.
        emulate_mpc: use the MPC forms for everything not chosen by the two switches, with the
            secure ops' knobs and ranges (exp squarings, Newton iterations, LayerNorm's
            variance range, I-BERT's shift bound, the reciprocal's range from the row length).
        gelu_mode: MPC GELU as a piecewise polynomial (``"poly"``) or the tanh form through
            ``sigmoid_mpc`` (``"tanh"``).
        nonlinear: the knobs (exp_iters, exp_lower, recip_iters, rsqrt_iters, ln_lo, ln_hi,
            mask_offset, quant_max_shift), shared with the secure side.
    """

    hidden_act: HiddenAct = "gelu"
    softmax_act: SoftmaxAct = "softmax"
    emulate_mpc: bool = False
    gelu_mode: GeluMode = "poly"
    nonlinear: NonlinearConfig = field(default_factory=NonlinearConfig)

    def __post_init__(self) -> None:
        if self.hidden_act not in ("gelu", "sig"):
            raise ValueError(f"hidden_act must be 'gelu' or 'sig', got {self.hidden_act!r}")
        if self.softmax_act not in ("softmax", "quant"):
            raise ValueError(f"softmax_act must be 'softmax' or 'quant', got {self.softmax_act!r}")
        if self.gelu_mode not in ("poly", "tanh"):
            raise ValueError(f"gelu_mode must be 'poly' or 'tanh', got {self.gelu_mode!r}")
        if not isinstance(self.nonlinear, NonlinearConfig):
            raise TypeError(f"nonlinear must be a NonlinearConfig, got "
                            f"{type(self.nonlinear).__name__}")

    @property
    def label(self) -> str:
        """Short name such as ``sig+quant`` used in tables."""
        return f"{self.hidden_act}+{self.softmax_act}" + ("+mpc" if self.emulate_mpc else "")


def _bit(cond: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A comparison result as 0/1 in ``like``'s dtype (on shares: a shared bit)."""
    return cond.to(like.dtype)


def _poly(coeffs: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
    """Horner evaluation; on shares: deg products with public-constant additions."""
    out = torch.full_like(x, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        out = out * x + c
    return out


def sig_seclmm(t: torch.Tensor) -> torch.Tensor:
    """SecLMM's piecewise-polynomial sigmoid (seeds-study 1.3, the correct interval selection).

    Steps (t is secret on shares):
      1. Five comparison bits c1 = [t < -7], c2 = [t < -2.2], c3 = [t < 0], c4 = [t < 2.2],
         c5 = [t <= 7].
      2. Interval indicators from differences of the bits (each exactly one of 0/1):
         [-7, -2.2] = c2 - c1, (-2.2, 0) = c3 - c2, [0, 2.2) = c4 - c3, [2.2, 7] = c5 - c4,
         (7, inf) = 1 - c5. This is what the seed's ``b0 ^ b1 ^ True`` computes; its broken
         copies drop the ``^ True`` and select seg1 outside [-7, -2.2].
      3. sum of indicator * piece, with pieces seg1(t), seg2(t), 1 - seg2(-t), 1 - seg1(-t), 1.
    Range: all reals. Max |error| vs sigmoid: 3.8e-3 (at the breakpoints +-7).
    """
    c1 = _bit(t < -7.0, t)
    c2 = _bit(t < -2.2, t)
    c3 = _bit(t < 0.0, t)
    c4 = _bit(t < 2.2, t)
    c5 = _bit(t <= 7.0, t)
    seg1_neg = _poly(SIG_SEG1, t)
    seg2_neg = _poly(SIG_SEG2, t)
    seg2_pos = 1.0 - _poly(SIG_SEG2, -t)
    seg1_pos = 1.0 - _poly(SIG_SEG1, -t)
    return ((c2 - c1) * seg1_neg + (c3 - c2) * seg2_neg + (c4 - c3) * seg2_pos
            + (c5 - c4) * seg1_pos + (1.0 - c5))


def quick_gelu_sig(x: torch.Tensor) -> torch.Tensor:
    """SecLMM ``sig`` activation: x * sig_seclmm(1.702 x).

    Max |error| vs quick-GELU x * sigmoid(1.702 x): 3.8e-3; vs erf GELU: 2.0e-2 (mostly the
    quick-GELU-vs-GELU gap, 2.0e-2).
    """
    return x * sig_seclmm(1.702 * x)


def exp_limit(x: torch.Tensor, iters: int = 8, lower: float = -14.0) -> torch.Tensor:
    """exp(x) ~ (1 + x / 2^n)^(2^n) for x <= 0, and 0 below ``lower``.

    Steps: 1. c = [x >= lower]; x' = c x + (1 - c) lower, which keeps 1 + x'/2^n positive
    (needs lower > -2^n). 2. y = 1 + x' 2^-n (public scaling). 3. n squarings. 4. return c y
    (PUMA's cut: entries below e^lower become 0).
    Range (-inf, 0]; max |error| for n = 10: 2.6e-4 (near x = -2); n = 8: 1.06e-3.
    """
    if lower <= -(2.0 ** iters):
        raise ValueError(f"exp_limit needs lower > -2^iters, got lower={lower}, iters={iters}")
    c = _bit(x >= lower, x)
    y = 1.0 + (c * x + (1.0 - c) * lower) * (2.0 ** -iters)
    for _ in range(iters):
        y = y * y
    return c * y


def _pow2_normalise(a: torch.Tensor, lo: int, hi: int, root: bool
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a > 0 as m * 2^k with m in [1, 2), from comparisons with public powers of two.

    Steps: 1. bits c_j = [a >= 2^j] for j = lo .. hi-1 (one round of parallel comparisons);
    k = lo - 1 + sum c_j. 2. m = a 2^(1-lo) prod_j (1 + c_j (1/2 - 1)). 3. f = 2^(-k) (or
    2^(-k/2) when ``root``) as the same product with factors 2^-1 (or 2^-1/2).
    Returns (m, f). Exact for a in [2^lo, 2^hi); outside it m leaves [1, 2).
    """
    half = 2.0 ** -0.5 if root else 0.5
    base = 2.0 ** ((1 - lo) * (0.5 if root else 1.0))
    m = a * 2.0 ** (1 - lo)
    f = torch.full_like(a, base)
    for j in range(lo, hi):
        c = _bit(a >= 2.0 ** j, a)
        m = m * (1.0 - 0.5 * c)
        f = f * (1.0 + c * (half - 1.0))
    return m, f


def reciprocal_newton(a: torch.Tensor, iters: int = 3, lo: int = -16, hi: int = 16
                      ) -> torch.Tensor:
    """1/a for a in [2^lo, 2^hi) (default [1.5e-5, 65536)), by normalisation and Newton.

    Steps: 1. a = m 2^k with m in [1, 2) (``_pow2_normalise``: hi - lo comparisons).
    2. y0 = 24/17 - 8/17 m (relative error <= 1/17 on [1, 2)). 3. ``iters`` Newton steps
    y <- y (2 - m y); the relative error squares each step. 4. return y 2^-k.
    Max relative error with 3 iterations: 1.6e-10 (float64).
    """
    m, f = _pow2_normalise(a, lo, hi, root=False)
    y = 24.0 / 17.0 - (8.0 / 17.0) * m
    for _ in range(iters):
        y = y * (2.0 - m * y)
    return y * f


def rsqrt_newton(a: torch.Tensor, iters: int = 3, lo: int = -16, hi: int = 16) -> torch.Tensor:
    """1/sqrt(a) for a in [2^lo, 2^hi), by normalisation and Newton.

    Steps: 1. a = m 2^k with m in [1, 2). 2. y0 = 1.2929 - 0.2929 m, the chord of 1/sqrt(m)
    (relative error <= 4.6%). 3. ``iters`` steps y <- y (3 - m y^2) / 2. 4. return y 2^(-k/2).
    Max relative error with 3 iterations: 1e-9 (float64).
    """
    m, f = _pow2_normalise(a, lo, hi, root=True)
    c1 = 1.0 - 2.0 ** -0.5
    y = (1.0 + c1) - c1 * m
    for _ in range(iters):
        y = y * (3.0 - m * y * y) * 0.5
    return y * f


def sigmoid_mpc(t: torch.Tensor, cfg: ApproxConfig | None = None) -> torch.Tensor:
    """sigmoid(t) from exp_limit and reciprocal_newton, safe for any t.

    Steps: 1. s = [t < 0]; |t| = t - 2 s t. 2. e = exp(-|t|) in (0, 1]. 3. r = 1/(1 + e), the
    argument lies in [1, 2]. 4. return s (1 - r) + (1 - s) r.
    Max |error| vs sigmoid (defaults): 8.6e-4.
    """
    nl = (cfg or ApproxConfig()).nonlinear
    s = _bit(t < 0.0, t)
    abs_t = t - 2.0 * s * t
    e = exp_limit(-abs_t, nl.exp_iters, nl.exp_lower)
    r = reciprocal_newton(1.0 + e, nl.recip_iters, 0, 1)  # 1 + e lies in [1, 2]
    return s * (1.0 - r) + (1.0 - s) * r


def tanh_mpc(u: torch.Tensor, cfg: ApproxConfig | None = None) -> torch.Tensor:
    """tanh(u) = 2 sigmoid(2u) - 1 via ``sigmoid_mpc``. Max |error| (defaults): 1.7e-3."""
    return 2.0 * sigmoid_mpc(2.0 * u, cfg) - 1.0


def quick_gelu_mpc(x: torch.Tensor, cfg: ApproxConfig | None = None) -> torch.Tensor:
    """Quick-GELU x * sigmoid(1.702 x) via ``sigmoid_mpc``. Max |error| on [-8, 8]: 1.4e-3."""
    return x * sigmoid_mpc(1.702 * x, cfg)


def gelu_poly(x: torch.Tensor) -> torch.Tensor:
    """Erf GELU as a piecewise polynomial fitted by the project.

    Steps: 1. bits c1 = [x < -5], c2 = [x < -2], c3 = [x <= 4]. 2. pieces: 0 below -5, degree 4
    on [-5, -2), degree 10 on [-2, 4], x above 4. 3. (c2 - c1) p4 + (c3 - c2) p10 + (1 - c3) x.
    Max |error| vs erf GELU over all reals: 4.1e-4. The degree-10 piece's top coefficient is
    1e-5, so fixed point needs at least 20 fractional bits for it to matter correctly.
    """
    c1 = _bit(x < -5.0, x)
    c2 = _bit(x < -2.0, x)
    c3 = _bit(x <= 4.0, x)
    return (c2 - c1) * _poly(_GELU_LEFT, x) + (c3 - c2) * _poly(_GELU_MID, x) + (1.0 - c3) * x


def gelu_tanh_mpc(x: torch.Tensor, cfg: ApproxConfig | None = None) -> torch.Tensor:
    """GELU(x) ~ x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)), the tanh form, via ``sigmoid_mpc``.

    Max |error| vs erf GELU (defaults): 1.3e-3 (tanh form 4.7e-4 plus the sigmoid's error).
    """
    k = 2.0 * math.sqrt(2.0 / math.pi)
    return x * sigmoid_mpc(k * (x + 0.044715 * x * x * x), cfg)


def gelu_mpc(x: torch.Tensor, cfg: ApproxConfig | None = None) -> torch.Tensor:
    """The MPC GELU chosen by ``cfg.gelu_mode``."""
    cfg = cfg or ApproxConfig()
    return gelu_poly(x) if cfg.gelu_mode == "poly" else gelu_tanh_mpc(x, cfg)


def _masked_shift(x: torch.Tensor, dim: int, keep: torch.Tensor | None,
                  offset: float) -> torch.Tensor:
    """x - max over ``dim`` of the kept entries (on shares: a tree of comparisons)."""
    if keep is not None:
        # The mask is public (padding), so pushing masked entries far down is a public operation.
        x = x - (1.0 - keep.to(x.dtype)) * offset
    return x - x.amax(dim=dim, keepdim=True)


def _row_hi(x: torch.Tensor, dim: int) -> int:
    """The reciprocal's range [1, 2^hi) for a sum in [1, n], as the secure softmax takes it."""
    return max(1, int(x.shape[dim]).bit_length())


def softmax_mpc(x: torch.Tensor, dim: int = -1, keep: torch.Tensor | None = None,
                cfg: ApproxConfig | None = None) -> torch.Tensor:
    """Softmax as the shares compute it (PUMA-style).

    Steps: 1. x' = x - max (kept entries only). 2. e = exp_limit(x'), 0 below ``exp_lower``.
    3. e *= keep. 4. s = sum e, which lies in [1, n] since the max contributes 1.
    5. return e * reciprocal_newton(s) on [1, 2^bitlen(n)), the secure softmax's range.
    Max |error| vs softmax (defaults): 5.9e-3 (the exp's relative error near x = -2; 2.5e-3
    with ``exp_iters`` 10).
    """
    nl = (cfg or ApproxConfig()).nonlinear
    xs = _masked_shift(x, dim, keep, nl.mask_offset)
    e = exp_limit(xs, nl.exp_iters, nl.exp_lower)
    if keep is not None:
        e = e * keep.to(e.dtype)
    return e * reciprocal_newton(e.sum(dim=dim, keepdim=True), nl.recip_iters, 0,
                                 _row_hi(x, dim))


def i_exp(x: torch.Tensor, max_shift: int = 16) -> torch.Tensor:
    """I-BERT's integer-friendly exp for x <= 0 (used by ``softmax_quant``).

    Steps: 1. z = floor(-x / ln2), clamped to [0, max_shift] (on shares: a truncation, then a
    comparison). 2. p = x + z ln2 in (-ln2, 0]. 3. exp(p) ~ 0.3585 (p + 1.353)^2 + 0.344.
    4. 2^-z as the product over z's bits b_i of (1 + b_i (2^-(2^i) - 1)); the bits come from
    comparisons of the running remainder with 2^i, so only comparisons and products are used
    (I-BERT shifts an integer instead). Max relative error on [-max_shift ln2, 0]: 3.1e-3;
    below, the result is under 2^-max_shift.
    """
    z = torch.floor(-x * (1.0 / LN2)).clamp(0, max_shift)
    p = x + z * LN2
    # Below the clamp, p is no longer in (-ln2, 0]; the exp is then below 2^-max_shift anyway.
    p = torch.clamp(p, min=-LN2)
    poly = IEXP_A * (p + IEXP_B) ** 2 + IEXP_C
    scale = torch.ones_like(x)
    rem = z
    for i in reversed(range(max(1, max_shift.bit_length()))):
        b = _bit(rem >= 2 ** i, x)
        rem = rem - b * (2 ** i)
        scale = scale * (1.0 + b * (2.0 ** -(2 ** i) - 1.0))
    return poly * scale


def softmax_quant(x: torch.Tensor, dim: int = -1, keep: torch.Tensor | None = None,
                  cfg: ApproxConfig | None = None) -> torch.Tensor:
    """SecLMM's ``quant`` softmax (``SecureIntSoftmax``, I-BERT style).

    Steps: 1. x' = x - max (kept entries only). 2. e = i_exp(x'). 3. e *= keep.
    4. divide by the sum: exactly in plaintext, by ``reciprocal_newton`` when
    ``cfg.emulate_mpc``. Max |error| vs softmax: 1.5e-3.
    """
    cfg = cfg or ApproxConfig()
    nl = cfg.nonlinear
    xs = _masked_shift(x, dim, keep, nl.mask_offset)
    e = i_exp(xs, nl.quant_max_shift)
    if keep is not None:
        e = e * keep.to(e.dtype)
    s = e.sum(dim=dim, keepdim=True)
    if cfg.emulate_mpc:
        return e * reciprocal_newton(s, nl.recip_iters, 0, _row_hi(x, dim))
    return e / s


def layer_norm_mpc(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                   eps: float, cfg: ApproxConfig | None = None) -> torch.Tensor:
    """LayerNorm over the last dim with ``rsqrt_newton``.

    Steps: 1. mu = mean(x) (public 1/d). 2. d = x - mu; v = mean(d^2). 3. r = rsqrt(v + eps).
    4. y = d r, then gamma y + beta. Valid while v + eps lies in rsqrt's range
    [2^ln_lo, 2^ln_hi) (``cfg.nonlinear``, as the secure LayerNorm); max |error| there:
    1e-9 * |gamma| (float64).
    """
    nl = (cfg or ApproxConfig()).nonlinear
    mu = x.mean(dim=-1, keepdim=True)
    d = x - mu
    v = (d * d).mean(dim=-1, keepdim=True)
    y = d * rsqrt_newton(v + eps, nl.rsqrt_iters, nl.ln_lo, nl.ln_hi)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y
