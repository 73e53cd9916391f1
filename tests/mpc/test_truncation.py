"""Truncation on shares: the exact (wrap-bit) protocol against the local one, on raw ring values."""

import pytest
import torch

from secinfer.mpc import MPCConfig, MPCEngine, Share
from secinfer.net import run_in_memory


def _share_raw(eng: MPCEngine, raw: torch.Tensor, frac_bits: int) -> Share:
    """Additive shares of the ring values ``raw`` (known to the test, not to the protocol)."""
    if eng.is_helper:
        return eng.placeholder(raw.shape, frac_bits)
    r = eng.prg_01.int64(raw.shape)
    return Share(raw - r if eng.role == 0 else r, frac_bits)


def _open_raw(eng: MPCEngine, y: Share) -> torch.Tensor | None:
    if eng.is_helper:
        return None
    return y.data + eng.session.exchange({eng.other: y.data})[eng.other]


def _prog_truncate(s, raw, d, mode):
    eng = MPCEngine(s, MPCConfig(frac_bits=16, truncation=mode))
    x = _share_raw(eng, raw, 40)
    with s.op("trunc"):
        y = eng.truncate(x, d)
    assert y.frac_bits == 40 - d
    return _open_raw(eng, y), s.report()["trunc"]


def _raw_values(n: int) -> torch.Tensor:
    edges = torch.tensor([0, 1, -1, 2**62 - 1, -(2**62 - 1), 2**61, -(2**61), 12345, -12345])
    return torch.cat([edges, torch.randint(-(2**62 - 1), 2**62, (n,), dtype=torch.int64),
                      torch.randint(-(2**20), 2**20, (n,), dtype=torch.int64)])


@pytest.mark.parametrize("d", [1, 12, 16, 20, 33, 40])
def test_exact_truncation_is_never_more_than_one_unit_off(run3, d):
    raw = _raw_values(20_000)
    out, _ = run3(_prog_truncate, raw, d, "exact")[0]
    err = out - (raw >> d)  # result - floor(x / 2^d): stochastic rounding, 0 or 1
    assert int(err.min()) >= 0 and int(err.max()) <= 1, (int(err.min()), int(err.max()))
    # stochastic rounding: P(round up) = (low bits + 1) / 2^d over the uniform shares, so the
    # mean error against the true quotient is 2^-d units (0.5 at d = 1, negligible at d = 16)
    frac = (raw & ((1 << d) - 1)).double() / 2.0**d
    assert abs(float((err.double() - frac).mean()) - 2.0**-d) < 0.02


def test_local_truncation_fails_on_large_values_where_exact_does_not():
    # |x| near 2^61: the local protocol's wrap probability is |x| / 2^64 ~ 1/8 per element
    raw = torch.randint(2**60, 2**61, (4000,), dtype=torch.int64)
    raw[::2] = -raw[::2]
    for mode, expect_bad in (("local", True), ("exact", False)):
        out, _ = run_in_memory(3, _prog_truncate, raw, 16, mode)[0]
        bad = int(((raw >> 16) - out).abs().gt(1).sum())
        assert (bad > 100) if expect_bad else (bad == 0), (mode, bad)


@pytest.mark.parametrize("d,wire_bytes", [(16, 2), (20, 4), (40, 8)])
def test_exact_truncation_known_cost(d, wire_bytes):
    raw = _raw_values(50)
    n = raw.numel()
    r0, r1, r2 = (r for _, r in run_in_memory(3, _prog_truncate, raw, d, "exact"))
    # P0 -> P1: e, P1 -> P0: g, helper -> P1: gamma1; each d bits packed in the smallest int
    assert r0["bytes_sent"] == r1["bytes_sent"] == r2["bytes_sent"] == wire_bytes * n
    assert r2["per_peer_sent"] == {"1": wire_bytes * n}
    assert r0["rounds"] == r1["rounds"] == 1
    local = [r for _, r in run_in_memory(3, _prog_truncate, raw, d, "local")]
    assert all(r["bytes_sent"] == 0 and r["rounds"] == 0 for r in local)


def test_exact_truncation_rejects_a_shift_beyond_its_offset():
    with pytest.raises(ValueError, match="1..61 bits"):
        run_in_memory(3, _prog_truncate, _raw_values(4), 62, "exact")


def test_config_rejects_unknown_truncation():
    with pytest.raises(ValueError, match="truncation must be"):
        MPCConfig(truncation="probabilistic")  # type: ignore[arg-type]


def _prog_risk(s, raw, mode):
    eng = MPCEngine(s, MPCConfig(frac_bits=16, truncation=mode, debug_reveal_insecure=True))
    x = _share_raw(eng, raw, 32)
    with s.op("scale"):
        eng.truncate(x, 16)
    return eng.debug_truncation_risk


@pytest.mark.parametrize("mode", ["local", "exact"])
def test_debug_mode_reports_local_truncation_risk(mode):
    raw = torch.randint(-(2**50), 2**50, (5000,), dtype=torch.int64)
    p0, p1, helper = run_in_memory(3, _prog_risk, raw, mode)
    expect = float(raw.abs().double().sum()) / 2.0**64
    assert p0.keys() == {"scale"} and abs(p0["scale"] - expect) <= 1e-9 * expect
    assert p1 == p0 and helper == {}
