"""Softmax (exp form and SecLMM's I-BERT ``quant`` form) and LayerNorm on shares.

Both mirror :mod:`secinfer.mpc.approx` (``softmax_mpc``, ``softmax_quant`` with
``emulate_mpc``, ``layer_norm_mpc``). Max errors at f = 16 against float64 torch on fresh
random inputs (asserted by ``tests/transformer/test_nonlinear.py``):

================  ==============================  ==========================================
function          input range                     asserted bound (measured max)
================  ==============================  ==========================================
softmax           scores in [-30, 30], masked     abs 5e-3 (3.1e-3)
softmax_quant     scores in [-30, 30], masked     abs 3e-3 (7.4e-4)
layer_norm        row variance in [2^-8, 2^14)    abs 2e-3 max|gamma| + 1e-3 (6.9e-4)
mean_last         any                             abs 2 units (2^-15)
================  ==============================  ==========================================

Threat model: semi-honest, non-colluding (see :mod:`secinfer.mpc.engine`). What each party
receives: only the messages of the DReLUs, Beaver products and truncations these functions are
made of (see :mod:`.compare` and :mod:`.engine`), each masked by fresh randomness the receiver
lacks; nothing is opened, so every party's view is independent of the scores and of the
activations. The ``keep`` argument, when given, is a PUBLIC mask known to all three servers:
it reveals which positions are padding, i.e. each text's token count. The transformer passes it
only with ``hide_length=False``; by default (``SecureTransformerConfig.hide_length``) the user
secret-shares the padding as a score bias (see :mod:`secinfer.transformer.layer`) and these
functions get ``keep=None``.
"""

from __future__ import annotations

import torch

from .approx import IEXP_A, IEXP_B, IEXP_C, LN2
from .compare import max_along
from .config import NonlinearConfig
from .engine import MPCEngine, PreparedWeight
from .nonlinear import exp, reciprocal, rsqrt
from .nonlinear_base import bit_mul, bits_poly, ge_bits, lincomb, mul_const
from .share import Share, broadcast_shape

__all__ = ["softmax", "softmax_quant", "layer_norm", "i_exp", "mean_last"]



def _shift_by_max(engine: MPCEngine, x: Share, keep: torch.Tensor | None,
                  cfg: NonlinearConfig) -> Share:
    """x - max over the last dim of the kept entries (masked ones pushed down publicly)."""
    if keep is not None:
        off = (1.0 - keep.to(torch.float64)) * -cfg.mask_offset
        x = engine.add_public(x, off.expand(*x.shape))
    m = max_along(engine, x, -1)
    return x - m.unsqueeze(-1)


def _normalise(engine: MPCEngine, e: Share, keep: torch.Tensor | None,
               cfg: NonlinearConfig) -> Share:
    """e * keep / sum(e): the max entry contributes exactly 1, so the sum is in [1, n]."""
    n = e.shape[-1]
    if keep is not None and not engine.is_helper:
        e = e.mul_int(keep.to(torch.int64).expand(*e.shape))
    s = e.sum(-1, keepdim=True)
    r = reciprocal(engine, s, 0, max(1, n.bit_length()), cfg)
    return engine.mul(e, r)


def softmax(engine: MPCEngine, x: Share, keep: torch.Tensor | None = None,
            cfg: NonlinearConfig | None = None) -> Share:
    """Softmax over the last dim, masked entries (``keep == 0``, a public mask) set to 0.

    Steps (PUMA-style, ``mpc.approx.softmax_mpc``): 1. x' = x - max (a tournament of
    ceil(log2 n) DReLU + product levels); 2. e = exp(x') with the clamp at ``exp_lower``;
    3. e *= keep (local: the mask is public); 4. s = sum e in [1, n]; 5. e * 1/s, the
    reciprocal normalised by log2(n) comparisons per row. Needs at least one kept entry per row.
    Max abs error 5e-3 at f = 16.
    """
    cfg = cfg or NonlinearConfig()
    _check_keep(keep, x)
    e = exp(engine, _shift_by_max(engine, x, keep, cfg), cfg)
    return _normalise(engine, e, keep, cfg)


def i_exp(engine: MPCEngine, x: Share, cfg: NonlinearConfig | None = None) -> Share:
    """I-BERT's exp for x <= 0 (``mpc.approx.i_exp``), on shares.

    Steps: 1. z' = floor(-x / ln2) by a multiplication with -1/ln2 and a truncation to scale
    0 (either truncation protocol may give floor + 1); p' = x + z' ln2;
    2. one DReLU on 2n values: b = [p' > 0] (then z = z' - b, p = p' - b ln2 in (-ln2, 0]) and
    c = [x >= -(max_shift + 1) ln2] (z within [0, max_shift]);
    3. q = 0.3585 (p + 1.353)^2 + 0.344 (one product);
    4. 2^-z from z's L = bitlength(max_shift) bits, found high to low by comparisons of the
    remainder with 2^i (L DReLUs), each bit scaling the running product by 2^-(2^i) (L bit
    products); 5. c q 2^-z. Range (-inf, 0]; max relative error 3.1e-3 (I-BERT's polynomial)
    plus rounding; values below 2^-max_shift become 0.
    """
    cfg = cfg or NonlinearConfig()
    f = engine.f
    zt = engine.truncate(mul_const(engine, x, -1.0 / LN2), f)  # scale 0
    ln2 = bits_poly(engine, [(zt, LN2)], 0.0, f)
    pt = x + ln2
    lim = -(cfg.quant_max_shift + 1) * LN2
    nb, c = ge_bits(engine, [-pt, engine.add_public(x, -lim)])
    b = engine.add_public(-nb, 1.0)                        # [p' > 0]
    z = zt - b
    p = pt - bits_poly(engine, [(b, LN2)], 0.0, f)
    pb = engine.add_public(p, IEXP_B)
    q = lincomb(engine, [(engine.mul(pb, pb), IEXP_A)], IEXP_C)
    # the remainder compared at scale f so an approximate DReLU (ignored low bits) stays exact
    rem = z.with_frac(0)
    scale: Share | None = None
    for i in reversed(range(cfg.quant_max_shift.bit_length())):
        rem_f = Share(rem.data * (1 << f), f)
        (bi,) = ge_bits(engine, [engine.add_public(rem_f, -(2.0 ** i))])
        rem = rem - Share(bi.data * (1 << i), 0)
        factor = bits_poly(engine, [(bi, 2.0 ** -(2 ** i) - 1.0)], 1.0, f)
        if scale is None:
            scale = factor
        else:
            (d,) = bit_mul(engine, [bi], [scale])
            scale = scale + lincomb(engine, [(d, 2.0 ** -(2 ** i) - 1.0)])
    assert scale is not None
    e = engine.mul(q, scale)
    (out,) = bit_mul(engine, [c], [e])
    return out


def softmax_quant(engine: MPCEngine, x: Share, keep: torch.Tensor | None = None,
                  cfg: NonlinearConfig | None = None) -> Share:
    """SecLMM's ``quant`` softmax (I-BERT exp), normalised by the Newton reciprocal.

    Steps: 1. x' = x - max (kept entries); 2. e = i_exp(x'); 3. e *= keep; 4. e / sum e as in
    :func:`softmax`. Max abs error 3e-3 at f = 16.
    """
    cfg = cfg or NonlinearConfig()
    _check_keep(keep, x)
    e = i_exp(engine, _shift_by_max(engine, x, keep, cfg), cfg)
    return _normalise(engine, e, keep, cfg)


def _check_keep(keep: torch.Tensor | None, x: Share) -> None:
    if keep is None:
        return
    try:
        broadcast_shape(keep.shape, x.shape)
    except ValueError as err:
        raise ValueError(f"attention mask of shape {tuple(keep.shape)} does not broadcast to "
                         f"scores {tuple(x.shape)}") from err
    if not ((keep == 0) | (keep == 1)).all():
        raise ValueError("attention mask must hold only 0 and 1")
    if (keep.to(torch.int64).expand(*x.shape).sum(-1) == 0).any():
        raise ValueError("every softmax row needs at least one unmasked entry")


def mean_last(engine: MPCEngine, x: Share) -> Share:
    """Mean over the last dim, keepdim. d = odd 2^s: the 2^-s is exact (a relabelled scale)
    and only 1/odd is encoded, so 1/384 = 1/3 2^-7 is exact to 1.5e-5 relative instead of the
    0.2% of encoding 1/384 at 16 bits."""
    d = x.shape[-1]
    s = (d & -d).bit_length() - 1
    odd = d >> s
    t = x.sum(-1, keepdim=True).with_frac(x.frac_bits + s)
    if odd != 1:
        t = mul_const(engine, t, 1.0 / odd)
    return engine.truncate(t, s) if s else t


def layer_norm(engine: MPCEngine, x: Share, weight: PreparedWeight | torch.Tensor | None,
               bias: Share | torch.Tensor | None, eps: float = 1e-12,
               cfg: NonlinearConfig | None = None) -> Share:
    """LayerNorm over the last dim (``mpc.approx.layer_norm_mpc``).

    Steps: 1. mu = sum(x) / d (:func:`mean_last`);
    2. dx = x - mu; v = sum(dx^2) / d + eps (one product); 3. r = rsqrt(v) with the
    variance's range [2^ln_lo, 2^ln_hi) (``ln_hi - ln_lo - 1`` comparisons per row, one
    DReLU); 4. y = dx r (one product); 5. y gamma + beta, gamma a prepared secret weight (one
    product with its mask re-used, as for linear layers) or a public tensor.
    Valid for row variances in [2^ln_lo, 2^ln_hi). Max abs error 2e-3 max|gamma| + 1e-3 at
    f = 16 (the rsqrt's relative error on the normalised values).
    """
    cfg = cfg or NonlinearConfig()
    mu = mean_last(engine, x)
    dx = x - mu
    v = engine.add_public(mean_last(engine, engine.mul(dx, dx)), eps)
    r = rsqrt(engine, v, cfg.ln_lo, cfg.ln_hi, cfg)
    y = engine.mul(dx, r)
    if isinstance(weight, PreparedWeight):
        y = engine.truncate(engine.beaver_fixed(y, weight, torch.mul), weight.frac_bits)
    elif weight is not None:
        y = mul_const(engine, y, weight.to(torch.float64))
    if isinstance(bias, Share):
        y = y + bias
    elif bias is not None:
        y = engine.add_public(y, bias.to(torch.float64).expand(*y.shape))
    return y

