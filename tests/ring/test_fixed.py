"""FixedPoint: round trips within half a unit, exact grid points, clear errors."""

from __future__ import annotations

import pytest
import torch

from secinfer.ring import DEFAULT_FRAC_BITS, FixedPoint, ring_mul


def test_default_and_derived_constants() -> None:
    fp = FixedPoint()
    assert fp.frac_bits == DEFAULT_FRAC_BITS == 16
    assert fp.scale == 65536
    assert fp.resolution == 2.0**-16
    assert fp.max_abs == 2.0**46


@pytest.mark.parametrize("frac_bits", [0, 8, 12, 16, 24, 31])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_round_trip_within_half_resolution(frac_bits: int, dtype: torch.dtype) -> None:
    fp = FixedPoint(frac_bits)
    mags = torch.logspace(-6, 6, 13, dtype=torch.float64)
    x = (torch.randn(13, 500, dtype=torch.float64) * mags[:, None]).to(dtype)
    x = x.clamp(-fp.max_abs, fp.max_abs)
    v = fp.encode(x)
    assert v.dtype == torch.int64
    err = (fp.decode(v) - x.to(torch.float64)).abs().max().item()
    assert err <= fp.resolution / 2


def test_grid_points_are_exact_and_ties_round_to_even() -> None:
    fp = FixedPoint(16)
    k = torch.randint(-(2**40), 2**40, (1000,), dtype=torch.int64)
    x = k.to(torch.float64) * fp.resolution
    assert torch.equal(fp.encode(x), k)
    assert torch.equal(fp.decode(k), x)
    halves = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5], dtype=torch.float64) * fp.resolution
    assert fp.encode(halves).tolist() == [0, 2, 2, 0, -2]


def test_ring_sum_and_product_decode() -> None:
    fp = FixedPoint(16)
    x = torch.randn(2000, dtype=torch.float64) * 100
    y = torch.randn(2000, dtype=torch.float64) * 100
    ex, ey = fp.encode(x), fp.encode(y)
    assert (fp.decode(ex + ey) - (x + y)).abs().max().item() <= fp.resolution
    # A product carries 2f fractional bits; error from rounding each factor: |x|+|y| units/2.
    prod = ring_mul(ex, ey).to(torch.float64) / fp.scale**2
    bound = (x.abs() + y.abs() + 1) * fp.resolution / 2
    assert bool(((prod - x * y).abs() <= bound).all())


def test_bound_is_inclusive_and_wraps_nothing() -> None:
    fp = FixedPoint(16)
    edge = torch.tensor([fp.max_abs, -fp.max_abs], dtype=torch.float64)
    assert fp.encode(edge).tolist() == [2**62, -(2**62)]
    assert fp.encode(torch.empty(0)).shape == (0,)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_rejected(bad: float) -> None:
    x = torch.randn(10, dtype=torch.float64)
    x[3] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        FixedPoint().encode(x)


def test_overflow_rejected() -> None:
    fp = FixedPoint(20)
    x = torch.randn(10, dtype=torch.float64)
    x[7] = -fp.max_abs * 1.01
    with pytest.raises(ValueError, match=r"safe bound 2\^42"):
        fp.encode(x)


def test_type_errors() -> None:
    fp = FixedPoint()
    with pytest.raises(TypeError, match="already encoded"):
        fp.encode(torch.ones(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        fp.encode([1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="int64"):
        fp.decode(torch.ones(3))


@pytest.mark.parametrize("bad", [-1, 32, 1.5, True, "16"])
def test_invalid_frac_bits(bad: object) -> None:
    with pytest.raises(ValueError, match="frac_bits"):
        FixedPoint(bad)  # type: ignore[arg-type]
