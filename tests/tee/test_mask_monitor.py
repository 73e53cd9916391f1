"""Ring arithmetic, masks, permutations and the fingerprint monitor."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from secinfer.mpc.prg import PRG
from secinfer.tee import alteration_bound, detection_guarantee, triples_for
from secinfer.tee.mask import (
    LayerSecret,
    device_weight,
    permute_input,
    ring_linear,
    ring_random,
    unpermute_output,
    wrap,
)
from secinfer.tee.monitor import (
    MonitorConfig,
    check,
    checksum_pass,
    draw_checksum_vectors,
    draw_fingerprints,
    mix,
)
from secinfer.tee.program import LinearSpec
from secinfer.tee.rand import EnclaveRandomness

M = 1 << 32


def _ref_mod(spec: LinearSpec, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    # int64 reference; exact as long as |sum| < 2^63 (true for these sizes)
    if spec.kind == "linear":
        out = u.to(torch.int64) @ w.to(torch.int64).t()
    else:
        cols = torch.nn.functional.unfold(u.double(), w.shape[2:], spec.dilation, spec.padding,
                                          spec.stride)  # exact: |u| < 2^32 fits float64
        out = (w.to(torch.int64).reshape(w.shape[0], -1) @ cols.to(torch.int64))
        side = int(math.isqrt(out.shape[-1]))
        out = out.reshape(u.shape[0], w.shape[0], side, side)
    return wrap(out)


def test_ring_linear_matches_int64_reference(gen: torch.Generator, prg: PRG) -> None:
    w = torch.randint(-127, 128, (6, 5, 3, 3), generator=gen).to(torch.int8)
    conv = LinearSpec("c", w, torch.empty(0), "conv", (1, 1), (1, 1))
    u = ring_random((4, 5, 7, 7), prg)
    assert torch.equal(ring_linear(conv, u, w).to(torch.int64), _ref_mod(conv, u, w))
    # fan-in 40,000 > the float64-exact bound: the chunked path
    wl = torch.randint(-127, 128, (3, 40000), generator=gen).to(torch.int8)
    lin = LinearSpec("l", wl, torch.empty(0), "linear")
    ul = ring_random((2, 40000), prg)
    assert torch.equal(ring_linear(lin, ul, wl).to(torch.int64), _ref_mod(lin, ul, wl))
    with pytest.raises(TypeError, match="int8"):
        ring_linear(lin, ul, wl.to(torch.int16))


def test_mask_unmask_and_permutation_recover_exact_accumulator(gen: torch.Generator,
                                                                 prg: PRG) -> None:
    w = torch.randint(-127, 128, (8, 3, 3, 3), generator=gen).to(torch.int8)
    spec = LinearSpec("c", w, torch.empty(0), "conv", (1, 1), (1, 1))
    c = torch.randint(-40, 216, (5, 3, 6, 6), generator=gen)
    perm = torch.randperm(8, generator=gen)
    sec = LayerSecret(perm, None)
    wd = device_weight(w, sec)
    assert not torch.equal(wd, w) or torch.equal(perm, torch.arange(8))
    m = ring_random(tuple(c.shape), prg)
    u = wrap(c + m)
    assert int(u.min()) < -(1 << 29) and int(u.max()) > (1 << 29)  # spread over the ring
    r = ring_linear(spec, u.to(torch.int32), wd).to(torch.int64)
    key = ring_linear(spec, m, wd).to(torch.int64)
    got = unpermute_output(wrap(r - key), sec)
    assert torch.equal(got, _ref_mod(spec, c, w))


def test_depthwise_permutation(gen: torch.Generator) -> None:
    w = torch.randint(-127, 128, (4, 1, 3, 3), generator=gen).to(torch.int8)
    spec = LinearSpec("dw", w, torch.empty(0), "conv", (1, 1), (1, 1), groups=4)
    perm = torch.randperm(4, generator=gen)
    sec = LayerSecret(perm, perm)
    c = torch.randint(-255, 256, (2, 4, 5, 5), generator=gen)
    out = ring_linear(spec, permute_input(c, sec), device_weight(w, sec)).to(torch.int64)
    assert torch.equal(unpermute_output(out, sec), ring_linear(spec, c, w).to(torch.int64))


def test_detection_guarantee_formula() -> None:
    assert detection_guarantee(1, 2) == pytest.approx(6 / 7)
    assert detection_guarantee(32, 4) == pytest.approx(12 / 44)
    # brute force: fraction of k-subsets of N positions that contain a fingerprint position
    b, t, k = 3, 1, 2
    n = b + 3 * t
    hits = sum(any(p >= b for p in s) for s in itertools.combinations(range(n), k))
    assert detection_guarantee(b, t, k) == pytest.approx(hits / math.comb(n, k))
    for batch, target in ((1, 0.9), (32, 0.5), (100, 0.99)):
        t = triples_for(batch, target)
        assert detection_guarantee(batch, t) >= target
        assert t == 1 or detection_guarantee(batch, t - 1) < target
    with pytest.raises(ValueError):
        detection_guarantee(1, 1, 5)
    with pytest.raises(ValueError):
        triples_for(4, 1.0)


def test_fingerprints_and_check(gen: torch.Generator, rng: EnclaveRandomness) -> None:
    real = torch.randint(-10, 200, (6, 3, 4, 4), generator=gen)
    fps = draw_fingerprints(real, 4, -10, 245, rng)
    assert fps.shape == (12, 3, 4, 4)
    tri = fps.view(4, 3, -1)
    assert torch.equal(tri[:, 0] + tri[:, 1], tri[:, 2])
    assert int(fps.min()) >= -10 and int(fps.max()) <= 245
    mixed = mix(real, fps, rng)
    assert torch.equal(mixed.unshuffle(mixed.items), torch.cat([real, fps]))
    w = torch.randint(-127, 128, (5, 3, 3, 3), generator=gen).to(torch.int8)
    spec = LinearSpec("c", w, torch.empty(0), "conv", (1, 1), (1, 1))
    y = ring_linear(spec, torch.cat([real, fps]), w).to(torch.int64)
    assert check(y, 6, 4).all()
    y[6 + 3 * 2 + 1, 0, 0, 0] += 1  # one element of the second member of triple 2
    assert check(y, 6, 4).tolist() == [True, True, False, True]


def test_masked_fingerprints_look_like_masked_real_items(gen: torch.Generator,
                                                         rng: EnclaveRandomness) -> None:
    from scipy.stats import ks_2samp

    # Extreme real inputs (all at the top of the range) against fingerprints near the middle:
    # after the pad, both are uniform on the ring and a two-sample test cannot separate them.
    real = torch.full((400, 2, 3, 3), 255, dtype=torch.int64)
    fps = draw_fingerprints(torch.randint(0, 100, (8, 2, 3, 3), generator=gen), 134, 0, 255,
                            rng)
    mixed = mix(real, fps, rng)
    u = wrap(mixed.items + rng.masks(tuple(mixed.items.shape)))
    is_fp = mixed.order >= 400
    a, b = u[is_fp].flatten().double(), u[~is_fp].flatten().double()
    assert ks_2samp(a.numpy(), b.numpy()).pvalue > 1e-4
    # without the pad the two groups are trivially separable
    raw = mixed.items
    assert ks_2samp(raw[is_fp].flatten().double().numpy(),
                    raw[~is_fp].flatten().double().numpy()).pvalue < 1e-10


def _checksum_layers(gen: torch.Generator) -> list[tuple[LinearSpec, tuple[int, ...]]]:
    def w(*shape: int) -> torch.Tensor:
        return torch.randint(-127, 128, shape, generator=gen).to(torch.int8)

    return [
        (LinearSpec("fc", w(7, 20), torch.empty(0), "linear"), (20,)),
        (LinearSpec("conv", w(6, 3, 3, 3), torch.empty(0), "conv", (2, 2), (1, 1)), (3, 9, 9)),
        (LinearSpec("dw", w(4, 1, 3, 3), torch.empty(0), "conv", (1, 1), (1, 1), groups=4),
         (4, 5, 5)),
        (LinearSpec("g2", w(6, 2, 1, 1), torch.empty(0), "conv", groups=2), (4, 3, 3)),
    ]


@pytest.mark.parametrize("bits", [64, 32])
def test_checksums_pass_honest_results_and_catch_changes(gen: torch.Generator,
                                                         rng: EnclaveRandomness,
                                                         bits: int) -> None:
    trials, n, k = 5, 3, 3
    for spec, item in _checksum_layers(gen):
        x = torch.randint(-255, 256, (trials * n, *item), generator=gen)
        r = ring_linear(spec, x, spec.weight).to(torch.int64)  # exact accumulators mod 2^32
        r = r.view(trials, n, *r.shape[1:])
        s = draw_checksum_vectors(trials, k, spec.out_channels, rng)
        xv = x.view(trials, n, *item)
        assert checksum_pass(spec, spec.weight, xv, r, s, bits).all(), spec.name
        bad = r.clone().view(trials, n, -1)
        bad[1, 2, 5] += 1  # one odd error: escapes with probability 2^-(16 k)
        bad[3, 0, 0] += 12345
        bad = wrap(bad)  # the enclave always sees signed representatives
        ok = checksum_pass(spec, spec.weight, xv, bad.view_as(r), s, bits)
        assert ok.sum() == trials * n - 2 and not ok[1, 2] and not ok[3, 0], spec.name


def _top_bit_flips(gen: torch.Generator, trials: int) -> tuple[LinearSpec, torch.Tensor,
                                                                  torch.Tensor]:
    spec, item = _checksum_layers(gen)[1]
    x = torch.randint(-255, 256, (trials, *item), generator=gen)
    r = ring_linear(spec, x, spec.weight).to(torch.int64).view(trials, 1, -1)
    r[:, 0, 7] += 1 << 31
    return spec, x.view(trials, 1, *item), wrap(r).view(trials, 1, 6, 5, 5)


def test_top_bit_flip_escapes_the_32_bit_check_half_the_time(gen: torch.Generator,
                                                            rng: EnclaveRandomness) -> None:
    trials = 4000
    spec, x, r = _top_bit_flips(gen, trials)
    for k, expect in ((1, 0.5), (2, 0.25)):
        s = draw_checksum_vectors(trials, k, spec.out_channels, rng)
        rate = float(checksum_pass(spec, spec.weight, x, r, s, 32).double().mean())
        assert abs(rate - expect) < 4.5 * math.sqrt(expect * (1 - expect) / trials), (k, rate)


def test_top_bit_flip_is_caught_by_the_64_bit_check(gen: torch.Generator,
                                                    rng: EnclaveRandomness) -> None:
    trials = 4000
    spec, x, r = _top_bit_flips(gen, trials)
    s = draw_checksum_vectors(trials, 1, spec.out_channels, rng)
    # each flip escapes one 16-bit vector with probability 2^-16: 0.061 escapes expected in
    # 4000 trials, so "none" would fail 6% of runs; 4 or more has probability < 1e-6
    escapes = int(checksum_pass(spec, spec.weight, x, r, s, 64).sum())
    assert escapes <= 3, escapes
    # the derivation's per-vector bound 2^-w is tight: with w-bit entries a one-element error
    # escapes exactly when that entry is 0, i.e. with probability 2^-w; measure it at w = 3
    s3 = draw_checksum_vectors(trials, 1, spec.out_channels, rng, bits=3)
    rate = float(checksum_pass(spec, spec.weight, x, r, s3, 64).double().mean())
    assert abs(rate - 1 / 8) < 4.5 * math.sqrt((1 / 8) * (7 / 8) / trials), rate
    with pytest.raises(ValueError, match="lifted"):
        checksum_pass(spec, spec.weight, x, r + (1 << 32), s, 64)


def test_detection_guarantee_with_checksums() -> None:
    assert detection_guarantee(1, 2, checksums=2, check_bits=32) == pytest.approx(1 - 1 / 28)
    assert detection_guarantee(8, 0, checksums=3, check_bits=32) == pytest.approx(1 - 1 / 8)
    assert detection_guarantee(1, 2, checksums=2) == pytest.approx(1 - 2.0 ** -32 / 7)
    assert alteration_bound(2) == 1 - 2.0 ** -32
    assert alteration_bound(10, check_bits=32) == pytest.approx(1 - 2.0 ** -10)
    cfg = MonitorConfig()
    assert (cfg.checksums, cfg.check_bits) == (2, 64) and cfg.one_layer_bound() >= 0.999
    assert MonitorConfig(2, 2, 32).one_layer_bound() == 0.75
    with pytest.raises(ValueError):
        detection_guarantee(1, 1, checksums=-1)
    with pytest.raises(ValueError, match="check_bits"):
        MonitorConfig(check_bits=48)
