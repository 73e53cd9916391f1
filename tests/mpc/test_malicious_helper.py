"""A malicious helper learns from a DReLU what the semi-honest analysis says it cannot.

The view tests (``test_view.py``) show that an *honest* helper's view of a DReLU is independent
of the data: the zero test of PrivateCompare's terms gives it ``borrow xor beta``, and the
common random bit beta (which it never sees) makes that a uniform bit. That argument assumes
that the bit-shares the helper dealt reconstruct to bits. A helper may deal anything mod p:

- at every compared position but one it deals 34 = (p + 1) / 2, whose term in SecureNN's
  running XOR, ``a (1 - 2u) + u``, is 34 for either bit u of z: the suffix sums become constants
  it knows, and (for a window of 63 bits) none of those terms is ever zero;
- at the target position j it deals K + 2, with K = 34 (62 - j) mod p the constant suffix: its
  term is zero exactly when bit j of z is 1 and beta = 0, or bit j of z is 1 and (with
  probability 1/2) the other branch lands on zero too.

So a zero term appears only when bit j of z = x + r is 1, for either beta, and the helper sees
whether one does. It knows r, so it learns about x. Here j = 14, inside the magnitude of
fixed-point data (|x| < 2^15 ring units): bit 14 of x + r depends on x.

This pins the finding of ``docs/integrity.md`` (privacy under attack) on the real protocol: P0
and P1 run the engine's ``drelu`` unchanged; only the helper deviates. The chosen malicious
design removes the helper's zero test for this reason. When it lands, this test must be turned
into the opposite assertion.
"""

from __future__ import annotations

import torch

from secinfer.mpc import MPCConfig, MPCEngine, drelu, encode
from secinfer.mpc.compare import _bits, _mask, _mod_small
from secinfer.mpc.config import P0, P1
from secinfer.mpc.prg import PRG, new_seed
from secinfer.mpc.share import Share
from secinfer.net import run_in_memory

N = 4000
CHUNK = 1 << 13  # the chunking of compare._drelu, which fixes the order of the PRG draws


def _cheating_helper(engine: MPCEngine, n: int, target: int | None) -> tuple[torch.Tensor, ...]:
    """The helper's side of one DReLU on n elements, dealing the values above (aimed at bit
    ``target`` of z) in place of r's bits; ``None``: honest. Returns (r, gamma) as the helper
    sees them."""
    cfg, s = engine.config, engine.session
    k, low, nbits, p = cfg.sign_bit, cfg.drelu_low_bits, cfg.compare_bits, cfg.prime
    w = nbits + 1
    assert n <= CHUNK
    r = engine.prg_h0.int64((n,)) + engine.prg_h1.int64((n,))
    bits = _bits((r >> low) & _mask(nbits), nbits).to(torch.int32)
    if target is not None:
        assert low == 0 and nbits == 63
        bits[:] = (p + 1) // 2
        bits[:, target] = (34 * (nbits - 1 - target) + 2) % p
    share0 = _mod_small(engine.prg_h0, (n, nbits), p)
    s.send(P1, torch.remainder(bits - share0, p).to(torch.uint8), "drelu.bits")
    t0 = s.recv(P0).reshape(n, w).to(torch.int16)
    t1 = s.recv(P1).reshape(n, w).to(torch.int16)
    gamma = (torch.remainder(t0 + t1, p) == 0).any(dim=1).to(torch.int64)
    delta = gamma ^ ((r >> k) & _mask(1))
    s.send(P1, delta - engine.prg_h0.int64((n,)), "drelu.delta")
    return r, gamma


def _prog(s, x_shares, target):
    eng = MPCEngine(s, MPCConfig())
    if eng.is_helper:
        return _cheating_helper(eng, N, target)
    return eng.reveal(drelu(eng, Share(x_shares[eng.role], eng.f)))


def _run(target):
    x = PRG(new_seed()).uniform_int((N,), -(1 << 15), 1 << 15)  # |x| < 8 at 12 fractional bits
    enc = encode(x.to(torch.float64) / 4096, 12)
    r0 = PRG(new_seed()).int64((N,))
    out = run_in_memory(3, _prog, (enc - r0, r0), target)
    r, gamma = out[2]
    if target is None:  # the replica of the helper's side is faithful: the DReLU is right
        assert torch.equal(out[0], (x >= 0).to(torch.float64))
    z = enc + r
    bit = (z >> (14 if target is None else target)) & 1
    return gamma, bit, enc, r


def test_honest_helper_learns_nothing_from_the_zero_test() -> None:
    gamma, bit, _, _ = _run(None)
    # gamma = borrow xor beta: a fair coin, whatever bit 14 of z is
    for b in (0, 1):
        rate = gamma[bit == b].double().mean().item()
        assert abs(rate - 0.5) < 0.06, (b, rate)


def test_a_helper_dealing_non_bits_learns_a_chosen_bit_of_x_plus_r() -> None:
    gamma, bit, enc, r = _run(14)
    # a zero term only when bit 14 of z is 1, whichever beta P0 and P1 drew: every other term
    # lies in [1, 66] mod 67, and the target's is zero only for that bit set ...
    assert int(gamma[bit == 0].sum()) == 0
    # ... and then for beta = 0 always, for beta = 1 half the time: P(gamma | bit) ~ 3/4
    seen = gamma[bit == 1].double().mean().item()
    assert 0.65 < seen < 0.85, seen
    # what the helper learns is about x, not only about its own r: bit 14 of x + r is not
    # bit 14 of r for about half of these x (|x| < 2^15)
    differs = (bit != ((r >> 14) & 1)).double().mean().item()
    assert 0.3 < differs < 0.7, differs
