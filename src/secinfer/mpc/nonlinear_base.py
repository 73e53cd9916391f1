"""Building blocks for non-linear ops on shares: batched comparisons, bit selections, constants.

Every helper here batches its work into one engine call (one DReLU, one Beaver product) no
matter how many tensors it is given, because on this engine latency is counted in rounds and
each call is one (or, for DReLU, up to two) rounds at each compute party.

Threat model: semi-honest, non-colluding parties, as in :mod:`secinfer.mpc.engine`; nothing in
this module opens a secret: each function's messages are those of one DReLU or one Beaver
product (see :mod:`.compare` and :mod:`.engine` for what each party receives there). Public values
(constants, and attention masks when length hiding is off) are known to every party.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .compare import drelu
from .engine import MPCEngine, encode
from .share import Share, broadcast_shape, cat

__all__ = ["ge_bits", "bit_mul", "mul_many", "mul_const", "lincomb", "one_minus", "bits_poly"]


def _flat_cat(xs: Sequence[Share]) -> Share:
    return cat([x.reshape(-1) for x in xs], 0)


def _split(flat: Share, like: Sequence[Share]) -> list[Share]:
    out, i = [], 0
    for x in like:
        n = x.numel()
        out.append(flat[i : i + n].reshape(*x.shape))
        i += n
    return out


def ge_bits(engine: MPCEngine, diffs: Sequence[Share]) -> list[Share]:
    """Shares (scale 0) of ``[d >= 0]`` for each tensor ``d``, all in ONE DReLU call."""
    if not diffs:
        return []
    return _split(drelu(engine, _flat_cat(diffs)), diffs)


def one_minus(engine: MPCEngine, bit: Share) -> Share:
    """1 - b for a bit share (scale 0): local."""
    return engine.add_public(-bit, 1.0)


def bit_mul(engine: MPCEngine, bits: Sequence[Share], vals: Sequence[Share]) -> list[Share]:
    """``b * v`` for bit shares b (scale 0) and shares v, batched in one Beaver product.

    A bit has scale 0, so the product keeps v's scale and needs no truncation: the selection
    is exact. Shapes of b and v must agree elementwise (no broadcasting across the batch).
    """
    if not bits:
        return []
    bb = _flat_cat([b.expand(*v.shape) if b.shape != v.shape else b for b, v in zip(bits, vals,
                                                                                  strict=True)])
    fs = {v.frac_bits for v in vals}
    if len(fs) != 1:
        raise ValueError(f"bit_mul needs values at one scale, got {sorted(fs)}")
    prod = engine.beaver(bb, _flat_cat(vals), torch.mul)
    return _split(prod.with_frac(vals[0].frac_bits), vals)


def mul_many(engine: MPCEngine, xs: Sequence[Share], ys: Sequence[Share]) -> list[Share]:
    """Elementwise products ``x * y`` (same shapes, both at the engine's scale), one round."""
    if not xs:
        return []
    prod = engine.mul(_flat_cat(xs), _flat_cat(ys))
    return _split(prod, xs)


def mul_const(engine: MPCEngine, x: Share, c: float | torch.Tensor, extra_bits: int = 0
              ) -> Share:
    """x * c for a public constant encoded at ``f + extra_bits`` fractional bits, then truncated.

    Extra bits make small constants such as 1/384 exact to ~1e-7 relative instead of 3e-3, at
    the price of a larger product before truncation (failure probability ~|x c| 2^(2f + extra
    - 63) per element), so use them only on few elements (row means, variances).
    """
    e = engine.f + extra_bits
    enc = encode(torch.as_tensor(c, dtype=torch.float64), e)
    if engine.is_helper:
        y = engine.placeholder(broadcast_shape(x.shape, enc.shape), x.frac_bits + e)
    else:
        y = Share(x.data * enc, x.frac_bits + e)
    return engine.truncate(y, e)


def lincomb(engine: MPCEngine, terms: Sequence[tuple[Share, float]], const: float = 0.0
            ) -> Share:
    """sum_i c_i x_i + const with public c_i, all x_i at one scale f: ONE truncation.

    Each coefficient is encoded at f bits and the products are summed before truncating, so the
    rounding error is one unit in the last place, not one per term.
    """
    f = engine.f
    acc: Share | None = None
    for x, c in terms:
        enc = encode(torch.tensor(float(c), dtype=torch.float64), f)
        if x.frac_bits != f:
            raise ValueError(f"lincomb terms must be at scale {f}, got {x.frac_bits}")
        t = engine.placeholder(x.shape, 2 * f) if engine.is_helper else Share(x.data * enc, 2 * f)
        acc = t if acc is None else acc + t
    if acc is None:
        raise ValueError("lincomb of no terms")
    return engine.add_public(engine.truncate(acc, f), const)


def bits_poly(engine: MPCEngine, bits: Sequence[tuple[Share, float]], const: float,
              frac_bits: int) -> Share:
    """sum_i c_i b_i + const for bit shares b_i (scale 0): exact and local, at ``frac_bits``.

    Each c_i is rounded once to ``frac_bits``; used for powers of two selected by comparisons.
    """
    acc: Share | None = None
    for b, c in bits:
        k = int(encode(torch.tensor(float(c), dtype=torch.float64), frac_bits).item())
        t = Share(b.data * k, frac_bits)
        acc = t if acc is None else acc + t
    if acc is None:
        raise ValueError("bits_poly of no bits")
    return engine.add_public(acc, const)
