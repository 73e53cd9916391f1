"""The helper's ratio attack on PrivateCompare, as an attacker who knows its own seeds would run it.

Before the fix, P0 and P1 each sent the helper ``s_j * c_j^(i)`` (their own share of each
comparison term, times a mask s_j common to both), so the pair (t0_j, t1_j) satisfied
``t0_j * c1_j = t1_j * c0_j (mod p)`` for the true shares c0_j, c1_j. The helper dealt the
bit-shares of r, so for a guess of (rotation, beta, bits of z) it can compute c0_j and c1_j
itself and test that relation term by term, top bit first. The correct guess always passes;
a wrong one passes a term with probability about 1/p, so a beam over the bits of z recovers z,
hence x = z - r, for nearly every element.

After the fix P0 adds and P1 subtracts a pad from their common PRG, so ``t0_j`` is uniform and
independent of everything the helper knows; the relation holds with probability 1/p per term
and no guess survives.
"""

from __future__ import annotations

import torch

from secinfer.mpc import PRG, MPCConfig
from secinfer.mpc.compare import _bits, _mod_small

_MAX_LANES = 1 << 20


def helper_dealing(cfg: MPCConfig, h0: bytes, h1: bytes, n: int,
                   off0: int = 0, off1: int = 0) -> tuple[torch.Tensor, torch.Tensor,
                                                           torch.Tensor]:
    """Replay the helper's draws for one DReLU of ``n`` elements: (r, share0, share1).

    ``off0``/``off1``: bytes the helper had drawn from each seed before this DReLU.
    """
    g0, g1 = PRG(h0), PRG(h1)
    g0.bytes(off0)
    g1.bytes(off1)
    r = g0.int64((n,)) + g1.int64((n,))
    nbits, p = cfg.compare_bits, cfg.prime
    rp = (r >> cfg.drelu_low_bits) & ((1 << nbits) - 1)
    share0 = _mod_small(g0, (n, nbits), p).to(torch.int64)
    share1 = torch.remainder(_bits(rp, nbits).to(torch.int64) - share0, p)
    return r, share0, share1


def ratio_attack(cfg: MPCConfig, share0: torch.Tensor, share1: torch.Tensor,
                 t0: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
    """The helper's guess of z' = (z >> low) mod 2^nbits per element (-1 where it has none).

    Beam search over (rotation, beta, bits of z' + beta from the top), vectorised over lanes.
    """
    n, nbits, p = share0.shape[0], cfg.compare_bits, cfg.prime
    w = nbits + 1
    t0 = t0.reshape(n, w).to(torch.int64)
    t1 = t1.reshape(n, w).to(torch.int64)
    r0 = torch.nn.functional.pad(share0, (0, 1))
    r1 = torch.nn.functional.pad(share1, (0, 1))
    # lanes: one per (element, rotation, beta) to start with
    elem = torch.arange(n).repeat_interleave(2 * w)
    shift = torch.arange(w).repeat_interleave(2).repeat(n)
    beta = torch.tensor([0, 1]).repeat(n * w)
    suf0 = torch.zeros_like(elem)
    suf1 = torch.zeros_like(elem)
    u = torch.zeros_like(elem)  # bits of z' + beta decoded so far
    for j in range(w - 1, -1, -1):
        k = (j - shift) % w
        T0, T1 = t0[elem, k], t1[elem, k]
        a0, a1 = r0[elem, j], r1[elem, j]
        sgn = 2 * beta - 1
        keep_lanes, keep_bit = [], []
        for uj in (0, 1):
            c0 = sgn * a0 + suf0 + (1 - sgn * uj)
            c1 = sgn * a1 + suf1
            ok = torch.remainder(T0 * c1 - T1 * c0, p) == 0
            keep_lanes.append(ok.nonzero().reshape(-1))
            keep_bit.append(torch.full((int(ok.sum()),), uj, dtype=torch.int64))
        idx = torch.cat(keep_lanes)[:_MAX_LANES]
        bit = torch.cat(keep_bit)[:_MAX_LANES]
        elem, shift, beta = elem[idx], shift[idx], beta[idx]
        a0, a1 = a0[idx], a1[idx]
        suf0 = suf0[idx] + a0 * (1 - 2 * bit) + bit
        suf1 = suf1[idx] + a1 * (1 - 2 * bit)
        u = u[idx] | (bit << j)
        if elem.numel() == 0:
            break
    guess = torch.full((n,), -1, dtype=torch.int64)
    if elem.numel():
        zp = (u - beta) & ((1 << nbits) - 1)
        # the first surviving lane per element (survivors nearly always agree)
        order = torch.arange(elem.numel() - 1, -1, -1)
        guess[elem[order]] = zp[order]
    return guess


def true_zp(cfg: MPCConfig, x_ring: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """z' = ((x + r) >> low) mod 2^nbits, what a successful attack recovers (x in ring units)."""
    return ((x_ring.reshape(-1) + r) >> cfg.drelu_low_bits) & ((1 << cfg.compare_bits) - 1)


def strip_pad(cfg: MPCConfig, seed01: bytes, n: int, t0: torch.Tensor, t1: torch.Tensor,
              off01: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove the P0-P1 pad from the terms of one DReLU (needs P0 and P1's common seed).

    This rebuilds exactly what the protocol without the pad sent, so the attack can be shown
    to work on it. The draws replay :func:`secinfer.mpc.compare._drelu` at P0 for n below one
    chunk: beta, then the multipliers, the rotations and the pads. ``off01``: bytes drawn
    from the common seed before this DReLU.
    """
    nbits, p = cfg.compare_bits, cfg.prime
    w = nbits + 1
    g = PRG(seed01)
    g.bytes(off01)
    g.int64((n,))  # beta
    _mod_small(g, (n, w), p - 1)  # multipliers
    shift = _mod_small(g, (n, 1), w).to(torch.int64)
    pad = _mod_small(g, (n, w), p).to(torch.int64)
    idx = torch.arange(w) + shift
    idx -= w * (idx >= w)
    pad = torch.gather(pad, 1, idx)
    u0 = torch.remainder(t0.reshape(n, w).to(torch.int64) - pad, p)
    u1 = torch.remainder(t1.reshape(n, w).to(torch.int64) + pad, p)
    return u0, u1
