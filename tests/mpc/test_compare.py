"""Comparisons on shares: DReLU / ReLU exact away from 0, approximate DReLU error rate, max."""

import pytest
import torch
import torch.nn.functional as F

from secinfer.mpc import (
    MPCConfig,
    MPCEngine,
    argmax_along,
    check_drelu_window,
    drelu,
    drelu_bytes,
    max_along,
    maxpool2d,
    relu,
    relu6,
)

F_BITS = 12
ULP = 2.0**-F_BITS


def _prog(s, x, fn_name, cfg, kwargs):
    eng = MPCEngine(s, cfg)
    xs = eng.share_input(x if eng.role == 0 else None, 0, tuple(x.shape))
    fn = {"drelu": drelu, "relu": relu, "relu6": relu6, "max": max_along,
          "argmax": argmax_along, "maxpool": maxpool2d}[fn_name]
    return eng.reveal(fn(eng, xs, **kwargs), to=0)


def _away_from_zero(shape, scale=10.0):
    x = torch.randn(shape, dtype=torch.float64) * scale
    x[x.abs() < 4 * ULP] = 1.0
    return x


def test_drelu_and_relu_exact(run3):
    x = _away_from_zero((3, 700))
    x[0, :4] = torch.tensor([2.0**40, -(2.0**40), 1e-3, -1e-3])  # wide range
    d = run3(_prog, x, "drelu", MPCConfig(frac_bits=F_BITS), {})[0]
    assert torch.equal(d, (x >= 0).double())
    r = run3(_prog, x, "relu", MPCConfig(frac_bits=F_BITS), {})[0]
    assert (r - x.clamp(min=0)).abs().max() <= ULP


def test_relu6(run3):
    x = _away_from_zero((500,), 5.0)
    x[(x - 6).abs() < 4 * ULP] = 3.0
    r = run3(_prog, x, "relu6", MPCConfig(frac_bits=F_BITS), {})[0]
    assert (r - x.clamp(0, 6)).abs().max() <= 2 * ULP


def test_max_argmax_and_maxpool(run3):
    x = torch.randn(4, 9, dtype=torch.float64)
    m = run3(_prog, x, "max", MPCConfig(frac_bits=F_BITS), {"dim": 1})[0]
    assert (m - x.max(1).values).abs().max() <= ULP
    a = run3(_prog, x, "argmax", MPCConfig(frac_bits=F_BITS), {"dim": 1})[0]
    assert torch.equal(a.round().long(), x.argmax(1))
    img = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    for kw in ({"kernel": 2}, {"kernel": 3, "stride": 2, "padding": 1}, {"kernel": (3, 2),
                                                                       "stride": (1, 2)}):
        out = run3(_prog, img, "maxpool", MPCConfig(frac_bits=F_BITS), kw)[0]
        ref = F.max_pool2d(img, kw["kernel"], kw.get("stride"), kw.get("padding", 0))
        assert out.shape == ref.shape and (out - ref).abs().max() <= ULP, kw


def test_approximate_drelu_error_rate():
    """The seed's setting (COMPARISON_NUM_BITS_IGNORED=48, NUM_OF_LSB_TO_IGNORE=5, f=16) is
    high=43, low=5 here: sign read at bit 20, window |x| < 16, errors only below 2^-11."""
    from secinfer.net import run_in_memory

    cfg = MPCConfig(frac_bits=16, drelu_high_bits=43, drelu_low_bits=5)
    lo, hi = cfg.drelu_valid_range()
    assert hi == 16.0 and lo == 2.0**-11 and cfg.compare_bits == 15
    x = torch.randn(20000, dtype=torch.float64)
    d = run_in_memory(3, _prog, x, "drelu", cfg, {})[0]
    wrong = d != (x >= 0).double()
    assert wrong.double().mean() <= 2 * (x.abs() < lo).double().mean() + 1e-3
    assert (x[wrong].abs() < lo).all(), "sign errors only within the documented 2^low window"


def test_drelu_window_check():
    from secinfer.net import run_in_memory

    def prog(s):
        eng = MPCEngine(s, MPCConfig(frac_bits=16, drelu_high_bits=43, drelu_low_bits=5))
        check_drelu_window(eng, 100.0)

    with pytest.raises(ValueError, match="exceeds the approximate DReLU window"):
        run_in_memory(3, prog)


def test_config_rejects_empty_window():
    with pytest.raises(ValueError, match="window is empty"):
        MPCConfig(drelu_high_bits=40, drelu_low_bits=30)


@pytest.mark.parametrize("cfg", [MPCConfig(), MPCConfig(frac_bits=16, drelu_high_bits=40,
                                                         drelu_low_bits=8)])
def test_drelu_known_cost(cfg):
    from secinfer.net import run_in_memory

    n = 37

    def prog(s):
        eng = MPCEngine(s, cfg)
        xs = eng.share_input(torch.randn(n) if eng.role == 0 else None, 0, (n,))
        with s.op("drelu"):
            drelu(eng, xs)
        with s.op("relu"):
            relu(eng, xs)
        return s.report()

    r0, r1, r2 = run_in_memory(3, prog)
    want = drelu_bytes(n, cfg.compare_bits)
    assert r0["drelu"]["bytes_sent"] == want["p0_sent"]
    assert r1["drelu"]["bytes_sent"] == want["p1_sent"]
    assert r2["drelu"]["bytes_sent"] == want["helper_sent"]
    assert r0["drelu"]["rounds"] == want["p0_rounds"]
    assert r1["drelu"]["rounds"] == want["p1_rounds"]
    # ReLU = DReLU + one product: 16 more bytes per element from each compute party
    assert r0["relu"]["bytes_sent"] == want["p0_sent"] + 16 * n
    assert r1["relu"]["rounds"] == want["p1_rounds"] + 1


@pytest.mark.parametrize("m", [1, 2, 66, 67, 65, 255])
def test_small_uniform_values_are_lemire_on_the_whole_64_bit_draw(m):
    # known answer: floor(m x / 2^64) in exact integers on the same 64-bit stream, so every
    # bit of each draw counts (a 32-bit draw would be biased by m / 2^32)
    from secinfer.mpc import PRG
    from secinfer.mpc.compare import _mod_small

    seed = bytes(range(16))
    got = _mod_small(PRG(seed), (500, 3), m)
    xs = PRG(seed).bytes(8 * 1500).view(torch.int64).tolist()
    want = [(m * (x % (1 << 64))) >> 64 for x in xs]
    assert got.dtype == torch.int32 and got.reshape(-1).tolist() == want
    assert int(got.min()) >= 0 and int(got.max()) < m
    with pytest.raises(ValueError, match="modulus"):
        _mod_small(PRG(seed), (2,), 256)
