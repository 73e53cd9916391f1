"""The check of the helper's products (secinfer.mpc.dzk): honest triples pass, any wrong one
is caught, including the 2^63 error a random check over Z_2^64 misses half the time."""

from __future__ import annotations

import pytest
import torch

from secinfer.errors import IntegrityError
from secinfer.mpc import MPCConfig, MPCEngine, encode
from secinfer.mpc.compare import maxpool2d, relu
from secinfer.mpc.config import P0, P1
from secinfer.mpc.dzk import Elementwise, soundness_error
from secinfer.mpc.prg import PRG
from secinfer.mpc.share import Share
from secinfer.net import run_in_memory
from secinfer.net.faults import Fault, FaultySession

CFG = MPCConfig(verify_dealer=True)


def _shares(x: torch.Tensor, g: PRG) -> tuple[torch.Tensor, torch.Tensor]:
    enc = encode(x, CFG.frac_bits)
    r = g.int64(tuple(enc.shape))
    return enc - r, r


def _workload(g: PRG):
    x = (g.uniform_int((2, 3, 6, 6), -4096, 4096).double() / 1024)
    w = (g.uniform_int((4, 3, 3, 3), -512, 512).double() / 1024)
    fc = (g.uniform_int((5, 36), -512, 512).double() / 1024)
    y = (g.uniform_int((2, 5), -4096, 4096).double() / 1024)
    return x, w, fc, y


def _program(s, shares, fault, flip=None):
    if fault is not None and s.party_id == 2:
        s = FaultySession(s, fault)
    e = MPCEngine(s, CFG)
    xs, ws, fcs, ys = (None if e.is_helper else Share(t[e.role], CFG.frac_bits) for t in shares)
    if e.is_helper:
        xs = e.placeholder((2, 3, 6, 6), CFG.frac_bits)
        ws = e.placeholder((4, 3, 3, 3), CFG.frac_bits)
        fcs = e.placeholder((5, 36), CFG.frac_bits)
        ys = e.placeholder((2, 5), CFG.frac_bits)
    h = e.conv2d(xs, e.prepare_weight(ws), padding=1)           # conv (prepared weight)
    h = maxpool2d(e, relu(e, h), 2)                               # elementwise products
    h = e.linear(h.reshape(2, 36), e.prepare_weight(fcs))        # matmul with b^T
    h = e.mul(h, ys)                                              # elementwise, both secret
    h = e.matmul(h, ys.transpose(0, 1))                           # matmul, both secret
    checked = e.check_dealer()
    return checked, e.reveal(h)


@pytest.fixture(scope="module")
def shares():
    g = PRG(bytes(16))
    return tuple(_shares(t, g) for t in _workload(g))


def test_honest_products_pass_and_every_kind_is_covered(shares) -> None:
    (n0, out), (n1, _), (nh, _) = run_in_memory(3, _program, shares, None)
    assert n0 == n1 == nh >= 6
    assert out is not None and torch.isfinite(out).all()


@pytest.mark.parametrize("occurrence", range(7))
def test_a_wrong_product_correction_is_caught(shares, occurrence: int) -> None:
    fault = Fault("beaver.corr", occurrence, "flip_bit", bytes([occurrence]) * 16)
    with pytest.raises(IntegrityError, match="helper's correlated randomness failed"):
        run_in_memory(3, _program, shares, fault)


def _top_bit_program(s, n):
    """One elementwise product whose correction the helper skews by 2^63 in one element."""
    e = MPCEngine(s, CFG)
    x = e.placeholder((n,), 0) if e.is_helper else Share(e.prg_01.int64((n,)), 0)
    if e.is_helper:
        a0, b0 = e.prg_h0.int64((n,)), e.prg_h0.int64((n,))
        a1, b1 = e.prg_h1.int64((n,)), e.prg_h1.int64((n,))
        c = (a0 + a1) * (b0 + b1)
        c[n // 2] += -(1 << 63)
        c0 = e.prg_h0.int64((n,))
        s.send(P1, c - c0, "beaver.corr")
        e._triples.append((Elementwise(), a0 + a1, b0 + b1, c))  # what beaver records
    else:
        e.beaver(x, x, torch.mul)
    return e.check_dealer()


def test_an_error_of_2_to_the_63_is_caught_every_time() -> None:
    # over Z_2^64 a random linear check misses it for every even coefficient (1/2); over
    # GR(2^64, 48) the bound is soundness_error, about 2^-43 here
    assert soundness_error(1000, 48) < 2.0 ** -42
    for _ in range(20):
        with pytest.raises(IntegrityError):
            run_in_memory(3, _top_bit_program, 1000)


def test_the_helper_sends_only_p1_and_p0_gets_only_p1s_final_shares(shares) -> None:
    from secinfer.net.session import Session

    got: dict[int, list[str]] = {P0: [], P1: []}

    def prog(s: Session, *a):
        if s.party_id in (P0, P1):
            orig = s.recv

            def rec(peer, timeout=None, tag="", expect=None):
                got[s.party_id].append(f"{peer}:{tag}")
                return orig(peer, timeout, tag, expect)

            s.recv = rec  # type: ignore[method-assign]
        return _program(s, *a)

    run_in_memory(3, prog, shares, None)
    dzk0 = [m for m in got[P0] if ":dzk." in m]
    dzk1 = [m for m in got[P1] if ":dzk." in m]
    assert dzk0 == ["1:dzk.open"]  # P0 gets only P1's final shares
    assert "2:dzk.pad" in dzk1 and "2:dzk.fold" in dzk1 and dzk1[-1] == "0:dzk.open"


@pytest.mark.parametrize("party", [P0, P1])
def test_a_verifier_that_steers_the_coins_is_refused_by_the_helper(shares, party) -> None:
    """Coins from one verifier alone would let it steer the helper's folds to a single Beaver
    mask product (dzk.coin_prg); the helper compares both verifiers' coins first."""

    def prog(s, *a):
        if s.party_id == party:
            s = FaultySession(s, Fault("dzk.coin", 0, "random", bytes(16)))
        return _program(s, *a)

    with pytest.raises(IntegrityError, match="different coins"):
        run_in_memory(3, prog, shares, None)
