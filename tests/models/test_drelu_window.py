"""The comparison window a proven input range allows: exact at the range's extremes, and tight
(two bits fewer and the extremes break), recorded by the compiler, used by the servers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from secinfer.data.fashion_mnist import INPUT_RANGE
from secinfer.models import zoo
from secinfer.models.bundle import OutputPolicy, compile_model, load_bundle
from secinfer.models.capture import capture
from secinfer.models.ranges import drelu_window, interval_bounds
from secinfer.models.secure import SecureModel, run_plain
from secinfer.mpc import MPCConfig, MPCEngine
from secinfer.mpc.engine import encode
from secinfer.net import run_in_memory

F = 12


def _program(s, plan, shares, x, high):
    eng = MPCEngine(s, MPCConfig(frac_bits=plan.frac_bits, drelu_high_bits=high))
    model = SecureModel(eng, plan, shares[eng.role] if eng.role < 2 else None)
    xs = eng.share_input(x if eng.role == 0 else None, 0, tuple(x.shape))
    return eng.reveal(model.forward(xs), to=0)


def _secure(plan, weights, x, high):
    g = torch.Generator().manual_seed(3)  # test weight shares, not a secret of the product
    s0, s1 = {}, {}
    for k, v in weights.items():
        enc = encode(v, F)
        r = torch.randint(-(2**63), 2**63 - 1, enc.shape, dtype=torch.int64, generator=g)
        s0[k], s1[k] = enc - r, r
    return run_in_memory(3, _program, plan, (s0, s1), x, high, timeout=120)[0].double()


def test_the_window_is_exact_at_the_range_corners_and_two_bits_narrower_is_not():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    with torch.no_grad():
        model[1].weight.mul_(40.0)  # hidden pre-activations reach a few hundred
    lo, hi = -1.0, 1.0
    plan, weights = capture(model, (1, 8, 8), frac_bits=F)
    bounds = interval_bounds(plan, weights, lo, hi)
    high = drelu_window(plan, bounds, F)
    assert 30 < high < 63 - 20  # a few hundred at f = 12 needs about 21 bits
    # for each hidden unit, the corner of the input box that maximises it and the one that
    # minimises it: the first layer's interval bound is reached there
    w = model[1].weight.detach()
    up = torch.where(w > 0, hi, lo)
    x = torch.cat([up, -up]).reshape(-1, 1, 8, 8).double()
    plain = run_plain(plan, weights, x)
    exact = _secure(plan, weights, x, high)
    assert float((exact - plain).abs().max()) < 0.05
    assert float((_secure(plan, weights, x, 0) - plain).abs().max()) < 0.05
    # two bits past the margin the largest hidden values read as negative: the window is tight
    too_narrow = _secure(plan, weights, x, high + 3)
    assert float((too_narrow - plain).abs().max()) > 1.0


def test_compile_records_the_window_only_where_a_range_proves_it(tmp_path):
    model = zoo.pretrained("fmnist_cnn")
    meta = load_bundle(compile_model(model, (1, 28, 28), tmp_path / "a",
                                     input_range=INPUT_RANGE)[0])[2]
    plan, weights = capture(model, (1, 28, 28), frac_bits=F)
    want = drelu_window(plan, interval_bounds(plan, weights, *INPUT_RANGE), F)
    assert meta["drelu_high_bits"] == want > 0
    assert "drelu_high_bits" not in load_bundle(compile_model(model, (1, 28, 28),
                                                              tmp_path / "b")[0])[2]
    assert "drelu_high_bits" not in load_bundle(compile_model(
        model, (1, 28, 28), tmp_path / "c", input_range=INPUT_RANGE, narrow_drelu=False)[0])[2]
    assert "drelu_high_bits" not in load_bundle(compile_model(
        model, (1, 28, 28), tmp_path / "d", input_range=INPUT_RANGE,
        output_policy=OutputPolicy("topk", k=3))[0])[2]


def test_a_padded_max_pool_or_a_smooth_activation_keeps_the_full_comparison():
    for model in (nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2, padding=1)),
                  nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.Sigmoid())):
        plan, weights = capture(model.eval(), (1, 8, 8), frac_bits=F)
        assert drelu_window(plan, interval_bounds(plan, weights, 0.0, 1.0), F) == 0


@pytest.mark.parametrize("mode", ["label", "logits"])
def test_a_ranking_output_policy_widens_the_window_to_its_logit_differences(mode):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    with torch.no_grad():
        model[3].weight.mul_(1e4)  # outputs far larger than the ReLU's input
    plan, weights = capture(model, (1, 8, 8), frac_bits=F)
    bounds = interval_bounds(plan, weights, 0.0, 1.0)
    plain_window = drelu_window(plan, bounds, F)
    ranked = drelu_window(plan, bounds, F, compares_output=mode == "label")
    assert (ranked < plain_window) == (mode == "label")
