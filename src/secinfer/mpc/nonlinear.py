"""Non-linear functions on shares: exp, reciprocal, rsqrt, sigmoid, tanh, GELU, SecLMM ``sig``.

Each function mirrors its plaintext reference in :mod:`secinfer.mpc.approx` step by step, using
only what the 3-party engine offers: Beaver products (then a truncation), products with
public constants, and comparisons (DReLU) whose bits select between shares. All comparisons of
one step are batched into a single DReLU call and all independent products into a single
Beaver call; nothing loops over elements in Python.

Fixed point. Transformers run at ``frac_bits = 16`` (set on :class:`~secinfer.mpc.MPCConfig`):
the exp's squarings amplify its input's rounding error 2^n-fold, and 12 bits would give 6%
relative error after 8 squarings; 16 bits give under 0.5%. The engine's local truncation
fails (an error of ~2^(64-2f)) with probability ~|v| 2^(2f-64) per product of magnitude |v|,
2^-28 per element at f = 16 and |v| <= 16, which over a whole MiniLM adds up to one corrupted
article in ~143 (measured), so transformers run the exact truncation
(``SecureTransformerConfig.truncation``); these functions work with either. Small
constants (1/d in means, polynomial coefficients) are scaled so every public coefficient is
>= ~0.3 before encoding (see :func:`sig_seclmm`), or encoded with extra bits on few elements.

Measured max errors at f = 16 against float64 torch (``tests/transformer/test_nonlinear.py``
asserts these bounds on fresh random inputs):

=================  ====================  ==========================================
function           input range           asserted bound (measured max, 20k inputs)
=================  ====================  ==========================================
exp                [-14, 0] (0 below)    abs 5e-3 (3.6e-3)
reciprocal         [2^-4, 2^8)           abs 1e-3 / a + 2^-14 (relative 3.7e-3 at
                                         a near 2^8, where 1/a is 2^8 units)
rsqrt              [2^-8, 2^16)          abs 1e-3 / sqrt(a) + 2^-14
sigmoid            all reals             abs 3e-3 (1.5e-3)
tanh               all reals             abs 5e-3 (3.1e-3)
gelu (tanh form)   all reals             abs 4e-3 vs erf GELU (1.5e-3)
quick_gelu         all reals             abs 4e-3 (1.8e-3)
sig_seclmm         all reals             abs 3e-4 vs the plaintext sig (9.4e-5);
                                         4.5e-3 vs sigmoid (3.8e-3)
quick_gelu_sig     all reals             abs 3e-4 (1 + |x|) vs plaintext (6.7e-5)
=================  ====================  ==========================================

Threat model: semi-honest, non-colluding (see :mod:`secinfer.mpc.engine`). Inputs and outputs
are secret; the knobs, ranges and thresholds are public. What each party receives: only the
messages of the DReLUs (:mod:`.compare`), Beaver products and truncations (:mod:`.engine`) each
function is built from, each masked by fresh randomness the receiver lacks. No intermediate is
opened (the selections by comparison bits are products with bit shares, not openings), so the
joint view of every party is independent of the inputs; the view tests cover exp, reciprocal,
rsqrt, GELU (and with it the sigmoid), softmax (both forms) and LayerNorm with the receiver's
seeds fixed.
"""

from __future__ import annotations

import math

import torch

from .approx import SIG_SEG1, SIG_SEG2
from .config import NonlinearConfig
from .engine import MPCEngine
from .nonlinear_base import bit_mul, bits_poly, ge_bits, lincomb, mul_many, one_minus
from .share import Share

__all__ = ["exp", "reciprocal", "rsqrt", "sigmoid", "tanh", "gelu",
           "quick_gelu", "sig_seclmm", "quick_gelu_sig", "SIG_SEG1", "SIG_SEG2"]



def _exp_core(engine: MPCEngine, x: Share, iters: int) -> Share:
    """(1 + x 2^-n)^(2^n) for x already clamped to (-2^n, 0]: n rounds of squaring."""
    # x 2^-n is x's ring value read at scale f + n: exact, then truncated once to f
    y = engine.add_public(engine.truncate(x.with_frac(x.frac_bits + iters), iters), 1.0)
    for _ in range(iters):
        y = engine.mul(y, y)
    return y


def exp(engine: MPCEngine, x: Share, cfg: NonlinearConfig | None = None) -> Share:
    """exp(x) for x <= 0 (``mpc.approx.exp_limit``); inputs below ``exp_lower`` give ~0.

    Steps: 1. c = [x >= lower] (one DReLU); 2. x' = lower + c (x - lower) (one bit product);
    3. y = 1 + x' 2^-n; 4. n squarings. We keep y(lower) = e^-14 ~ 8e-7 instead of zeroing it
    (below one unit at f = 16). Range (-inf, 0]; max abs error 5e-3 at f = 16, n = 8.
    Cost: DReLU(n) + (1 + iters) products.
    """
    cfg = cfg or NonlinearConfig()
    lo = cfg.exp_lower
    (c,) = ge_bits(engine, [engine.add_public(x, -lo)])
    (sel,) = bit_mul(engine, [c], [engine.add_public(x, -lo)])
    return _exp_core(engine, engine.add_public(sel, lo), cfg.exp_iters)


def _pow2_split(engine: MPCEngine, a: Share, lo: int, hi: int, root: bool
                ) -> tuple[Share, Share]:
    """(m, g) with a = m 2^k, m in [1, 2), g = 2^-k (or 2^(-k/2) when ``root``).

    1. bits c_j = [a >= 2^j], j = lo+1 .. hi-1, in one DReLU; 2. one-hot o_k = c_k - c_(k+1)
    (c_lo = 1, c_hi = 0), so 2^-k = sum_k o_k 2^-k is LINEAR in the bits (no products, unlike
    the sequential factors of the plaintext reference, which compute the same value);
    3. m = a 2^-k (one product). With lo = 0, hi = 1 no comparison is made and m = a.
    """
    f = engine.f
    one = engine.public_const(torch.ones(a.shape, dtype=torch.float64), 0)
    zero = Share(one.data * 0, 0)
    if hi - lo <= 1:
        inv = engine.public_const(torch.full(a.shape, 2.0 ** -lo, dtype=torch.float64), f)
        m = a if lo == 0 else engine.mul(a, inv)
        g = inv if not root else engine.public_const(
            torch.full(a.shape, 2.0 ** (-lo / 2), dtype=torch.float64), f)
        return m, g
    cs = ge_bits(engine, [engine.add_public(a, -(2.0 ** j)) for j in range(lo + 1, hi)])
    cs = [one, *cs, zero]
    onehot = [(cs[i] - cs[i + 1], k) for i, k in enumerate(range(lo, hi))]
    pow_inv = bits_poly(engine, [(o, 2.0 ** -k) for o, k in onehot], 0.0, f)
    m = engine.mul(a, pow_inv)
    if not root:
        return m, pow_inv
    return m, bits_poly(engine, [(o, 2.0 ** (-k / 2)) for o, k in onehot], 0.0, f)


def reciprocal(engine: MPCEngine, a: Share, lo: int = 0, hi: int = 8,
               cfg: NonlinearConfig | None = None) -> Share:
    """1/a for a in [2^lo, 2^hi) (``mpc.approx.reciprocal_newton``).

    Steps: 1. a = m 2^k, m in [1, 2) (hi - lo - 1 comparisons in one DReLU, one product);
    2. y0 = 24/17 - 8/17 m; 3. ``recip_iters`` Newton steps y <- y (2 - m y) (2 products
    each); 4. y 2^-k (one product). With lo = 0, hi = 1 the input may be in [1, 2] (used by
    the sigmoid, whose 1 + e^-|t| can equal 2). Max abs error at f = 16 for lo >= -4:
    1e-3 / a + 2^-14 (the result keeps about 16 fractional bits, so large a lose relative
    precision: 3.7e-3 relative at a near 2^8).
    """
    cfg = cfg or NonlinearConfig()
    m, g = _pow2_split(engine, a, lo, hi, root=False)
    y = lincomb(engine, [(m, -8.0 / 17.0)], 24.0 / 17.0)
    for _ in range(cfg.recip_iters):
        my = engine.mul(m, y)
        y = engine.mul(y, engine.add_public(-my, 2.0))
    return y if (hi - lo <= 1 and lo == 0) else engine.mul(y, g)


def rsqrt(engine: MPCEngine, a: Share, lo: int = -8, hi: int = 16,
          cfg: NonlinearConfig | None = None) -> Share:
    """1/sqrt(a) for a in [2^lo, 2^hi) (``mpc.approx.rsqrt_newton``).

    Steps: 1. a = m 2^k (hi - lo - 1 comparisons, one DReLU), g = 2^(-k/2) linear in the
    bits; 2. y0 = 1.2929 - 0.2929 m (chord, 4.6% relative error); 3. ``rsqrt_iters`` steps
    y <- y (3 - m y^2) / 2 (3 products each); 4. y g (one product).
    Max abs error at f = 16 for lo >= -8: 1e-3 / sqrt(a) + 2^-14.
    """
    cfg = cfg or NonlinearConfig()
    m, g = _pow2_split(engine, a, lo, hi, root=True)
    c1 = 1.0 - 2.0 ** -0.5
    y = lincomb(engine, [(m, -c1)], 1.0 + c1)
    for _ in range(cfg.rsqrt_iters):
        y2 = engine.mul(y, y)
        my2 = engine.mul(m, y2)
        y = lincomb(engine, [(engine.mul(y, engine.add_public(-my2, 3.0)), 0.5)])
    return engine.mul(y, g)


def sigmoid(engine: MPCEngine, t: Share, cfg: NonlinearConfig | None = None) -> Share:
    """sigmoid(t) for any t (``mpc.approx.sigmoid_mpc``).

    Steps: 1. one DReLU on 3n values: p = [t >= 0], [t >= lower], [t <= -lower];
    2. clamp t to [lower, -lower] (two bit products, one round); 3. -|t| = (1 - 2p) t (one bit
    product); 4. e = exp(-|t|) by squarings; 5. r = 1/(1 + e), argument in [1, 2]: no
    normalisation; 6. (1 - r) + p (2r - 1) (one bit product).
    Max abs error 3e-3 at f = 16.
    """
    cfg = cfg or NonlinearConfig()
    lo = cfg.exp_lower
    p, ge, le = ge_bits(engine, [t, engine.add_public(t, -lo), engine.add_public(-t, -lo)])
    # max(t, lo) = lo + ge (t - lo); then min(., -lo) = -lo + le (. + lo) also works on t
    # directly because the two clamps touch disjoint sides
    s1, s2 = bit_mul(engine, [ge, le], [engine.add_public(t, -lo), engine.add_public(t, lo)])
    tc = s1 + s2 - t
    (pt,) = bit_mul(engine, [p], [tc])
    neg_abs = pt.mul_int(-2) + tc  # -(2p - 1) t = -|t|
    e = _exp_core(engine, neg_abs, cfg.exp_iters)
    r = reciprocal(engine, engine.add_public(e, 1.0), 0, 1, cfg)
    (sel,) = bit_mul(engine, [p], [engine.add_public(r.mul_int(2), -1.0)])
    return engine.add_public(sel - r, 1.0)


def tanh(engine: MPCEngine, u: Share, cfg: NonlinearConfig | None = None) -> Share:
    """tanh(u) = 2 sigmoid(2u) - 1. Max abs error 4e-3 at f = 16."""
    return engine.add_public(sigmoid(engine, u.mul_int(2), cfg).mul_int(2), -1.0)


def gelu(engine: MPCEngine, x: Share, cfg: NonlinearConfig | None = None) -> Share:
    """GELU, tanh form: x sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)) (``gelu_tanh_mpc``).

    The project's degree-10 piecewise GELU needs >= 20 fractional bits for its 1e-5 top
    coefficient, so on shares at f = 16 the tanh form is used. Steps: x^2, x^3 (2 products),
    the sigmoid, one product. Max abs error vs erf GELU: 4e-3 over all reals (tanh form 4.7e-4;
    the rest is the sigmoid's error times |x|, largest near |x| = 3). With an approximate
    DReLU of window 2^w the sigmoid's argument 1.6 (x + 0.045 x^3) must stay below 2^w:
    |x| < 70 for w = 15.
    """
    k = 2.0 * math.sqrt(2.0 / math.pi)
    x2 = engine.mul(x, x)
    # (0.0714 x) x^2 rather than x^3 * 0.0714: the truncated product is 14x smaller, and so is
    # local truncation's failure probability (proportional to the product's magnitude) when
    # the engine runs that protocol
    x3k = engine.mul(lincomb(engine, [(x, k * 0.044715)]), x2)
    arg = lincomb(engine, [(x, k)]) + x3k
    return engine.mul(x, sigmoid(engine, arg, cfg))


def quick_gelu(engine: MPCEngine, x: Share, cfg: NonlinearConfig | None = None) -> Share:
    """x sigmoid(1.702 x) (``quick_gelu_mpc``). Max abs error 4e-3 at f = 16."""
    return engine.mul(x, sigmoid(engine, lincomb(engine, [(x, 1.702)]), cfg))


def sig_seclmm(engine: MPCEngine, t: Share) -> Share:
    """SecLMM's piecewise-polynomial sigmoid with the correct interval selection.

    Steps (``mpc.approx.sig_seclmm``):
      1. one DReLU on 5n values: c1 = [t < -7], c2 = [t < -2.2], c3 = [t < 0], c4 = [t < 2.2],
         c5 = [t <= 7];
      2. clamp t to [-7, 7]: t_c = t + c1 (-7 - t) + (1 - c5) (7 - t) (two bit products, one
         round), so the powers below stay bounded whatever t is;
      3. u = t_c / 7 in [-1, 1]; u^2, then u^3 and u^4 (two rounds). Coefficients are applied to
         powers of u, not t: b_k 7^k is 0.93 where b_4 is 3.9e-4, which fixed point at f = 16
         would round by 2% (an error of 0.018 at t = -7);
      4. pieces seg1(t), seg2(t), 1 - seg2(-t), 1 - seg1(-t) as linear combinations (local);
      5. interval indicators c2 - c1, c3 - c2, c4 - c3, c5 - c4 times the pieces (4 bit
         products, one round), plus (1 - c5).
    Range: all reals. Max abs error vs the plaintext ``sig_seclmm``: 3e-4; vs sigmoid: 4.5e-3
    (the polynomials' own 3.8e-3 plus rounding).
    """
    # [-t + a >= 0] = [t <= a]: the ties t == a that differ from the strict [t < a] have
    # measure zero, and both neighbouring pieces agree there to 4e-3
    c1, c2, c3, c4, c5 = ge_bits(engine, [
        engine.add_public(-t, -7.0), engine.add_public(-t, -2.2), -t,
        engine.add_public(-t, 2.2), engine.add_public(-t, 7.0)])
    lo_fix, hi_fix = bit_mul(engine, [c1, one_minus(engine, c5)],
                             [engine.add_public(-t, -7.0), engine.add_public(-t, 7.0)])
    tc = t + lo_fix + hi_fix
    u = lincomb(engine, [(tc, 1.0 / 7.0)])
    u2 = engine.mul(u, u)
    u3, u4 = mul_many(engine, [u2, u2], [u, u2])
    pw = [u, u2, u3, u4]

    def piece(coeffs: tuple[float, ...], sign: float, flip: bool) -> Share:
        # sum_k c_k 7^k (sign u)^k, or 1 - that when flip
        s = -1.0 if flip else 1.0
        terms = [(pw[k - 1], s * coeffs[k] * 7.0 ** k * sign ** k) for k in range(1, len(coeffs))]
        return lincomb(engine, terms, s * coeffs[0] + (1.0 if flip else 0.0))

    pieces = [piece(SIG_SEG1, 1.0, False), piece(SIG_SEG2, 1.0, False),
              piece(SIG_SEG2, -1.0, True), piece(SIG_SEG1, -1.0, True)]
    inds = [c2 - c1, c3 - c2, c4 - c3, c5 - c4]
    parts = bit_mul(engine, inds, pieces)
    return parts[0] + parts[1] + parts[2] + parts[3] + bits_poly(engine, [(c5, -1.0)], 1.0,
                                                                   engine.f)


def quick_gelu_sig(engine: MPCEngine, x: Share) -> Share:
    """SecLMM's ``sig`` activation x sig_seclmm(1.702 x) (``mpc.approx.quick_gelu_sig``).

    Max abs error vs the plaintext x sig_seclmm(1.702 x): 3e-4 (1 + |x|) (the sigmoid's
    rounding scaled by |x|), and vs x sigmoid(1.702 x) additionally 3.8e-3 |x|.
    """
    return engine.mul(x, sig_seclmm(engine, lincomb(engine, [(x, 1.702)])))
