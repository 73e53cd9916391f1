"""Interval bounds through a plan: sound (never below a value reached), refusing what can wrap."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from secinfer.data.fashion_mnist import INPUT_RANGE
from secinfer.models import zoo
from secinfer.models.bundle import compile_model, load_bundle
from secinfer.models.capture import capture
from secinfer.models.ranges import RangeError, check_headroom, interval_bounds
from secinfer.models.secure import run_plain


def _inputs(shape, lo, hi, n=64):
    """Corners (all lo, all hi), random sign patterns at the corners, and uniform points."""
    corners = torch.where(torch.rand(n, *shape) < 0.5, lo, hi).double()
    uniform = lo + (hi - lo) * torch.rand(n, *shape, dtype=torch.float64)
    ends = torch.stack([torch.full(shape, lo), torch.full(shape, hi)]).double()
    return torch.cat([corners, uniform, ends])


@pytest.mark.parametrize("name", ["fmnist_cnn", "fmnist_resnet", "fmnist_cnn_avgpool"])
def test_bounds_are_never_below_any_value_reached(name):
    model = zoo.build(name).eval()
    plan, weights = capture(model, (1, 28, 28))
    lo, hi = INPUT_RANGE
    bounds = interval_bounds(plan, weights, lo, hi)
    x = _inputs((1, 28, 28), lo, hi)
    for op in plan.ops:
        reached = run_plain(dataclasses.replace(plan, output=op.name), weights, x).abs().max()
        assert float(reached) <= bounds[op.name] * (1 + 1e-9), op.name


def test_a_layer_that_can_wrap_is_refused_naming_it():
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    with torch.no_grad():
        model[1].weight.fill_(1e6)
    plan, weights = capture(model, (1, 28, 28))
    bounds = interval_bounds(plan, weights, -1e3, 1e3)  # 784 * 1e6 * 1e3 = 7.8e11 per output
    assert check_headroom(bounds, frac_bits=8) > 0  # 2^46 holds it
    with pytest.raises(RangeError, match=r"op '_1' can reach .* over the fixed point's 2\^38"):
        check_headroom(bounds, frac_bits=12)
    with pytest.raises(RangeError, match="lo < hi"):
        interval_bounds(plan, weights, 1.0, 1.0)


def test_compile_records_the_range_and_the_headroom(tmp_path):
    dirs = compile_model(zoo.pretrained("fmnist_cnn"), (1, 28, 28), tmp_path / "b",
                         input_range=INPUT_RANGE)
    for d in dirs:
        meta = load_bundle(d)[2]
        assert meta["input_range"] == pytest.approx(list(INPUT_RANGE))
        assert 0 < meta["activation_bound"] < 2.0 ** 38 and meta["headroom_bits"] > 10
    plain = compile_model(zoo.pretrained("fmnist_cnn"), (1, 28, 28), tmp_path / "c")
    assert load_bundle(plain[0])[2]["input_range"] is None
