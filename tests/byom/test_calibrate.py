"""Compile-time calibration on a CIFAR-10-like model with raw 0..255 inputs: every accepted
frac_bits setting agrees with plaintext on all 50 inputs; settings that would wrap are refused
naming the layer."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from secinfer.models.calibrate import FRAC_BITS_RANGE, calibrate
from secinfer.models.capture import capture
from secinfer.models.ranges import RangeError
from secinfer.net import run_in_memory

from ._secure import share_weights


class CifarRaw(nn.Module):
    """A Keras-style CIFAR-10 CNN fed raw 0..255 pixels (no normalisation layer)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding="same")
        self.conv2 = nn.Conv2d(8, 16, 3, padding="same")
        self.fc = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(torch.flatten(x, 1))


def _model():
    torch.manual_seed(0)
    model = CifarRaw().eval()
    with torch.no_grad():  # a model trained on raw pixels: first-layer values in the 1000s
        model.conv1.weight.mul_(32)
        model.conv2.weight.mul_(2)
    return model


def _inputs():
    g = torch.Generator().manual_seed(7)
    return torch.randint(0, 256, (50, 3, 8, 8), generator=g).float()


def _program(s, plan, shares, x, truncation):
    from secinfer.models.secure import SecureModel
    from secinfer.mpc import MPCConfig, MPCEngine

    eng = MPCEngine(s, MPCConfig(frac_bits=plan.frac_bits, truncation=truncation))
    model = SecureModel(eng, plan, shares[eng.role] if eng.role < 2 else None)
    xs = eng.share_input(x if eng.role == 0 else None, 0, tuple(x.shape))
    return eng.reveal(model.forward(xs), to=0)


def test_every_accepted_frac_bits_agrees_on_50_raw_inputs():
    torch.set_num_threads(1)
    model, x = _model(), _inputs()
    with torch.no_grad():
        ref = model.double()(x.double())
    accepted, refused = [], {}
    for f in FRAC_BITS_RANGE:
        plan, weights = capture(model, (3, 8, 8), frac_bits=f)
        try:
            cal = calibrate(plan, weights, x)
        except RangeError as e:
            refused[f] = str(e)
            continue
        out = run_in_memory(3, _program, plan, share_weights(weights, f), x, cal.truncation,
                            timeout=120)[0]
        agree = (out.argmax(-1) == ref.argmax(-1)).float().mean().item()
        err = (out - ref).abs().max().item()
        print(f"f={f} truncation={cal.truncation} risk={cal.local_risk:.1e} agree={agree:.2f} "
              f"max logit error {err:.3g}")
        accepted.append(f)
        assert agree == 1.0, f
    assert refused, "raw 0..255 inputs must make the largest settings wrap"
    wraps = {f: m for f, m in refused.items() if "would wrap" in m}
    assert wraps and all("layer '" in m for m in wraps.values())
    assert all("too coarse" in m for f, m in refused.items() if f not in wraps)
    assert max(accepted) < min(wraps)
    print("refused:", sorted(refused), next(iter(refused.values())))


def test_local_truncation_refused_when_risky_and_frac_bits_limit():
    model, x = _model(), _inputs()
    plan, weights = capture(model, (3, 8, 8), frac_bits=16)
    with pytest.raises(RangeError, match="local truncation .* layer"):
        calibrate(plan, weights, x, truncation="local")
    plan.frac_bits = 28
    with pytest.raises(RangeError, match="1..24"):
        calibrate(plan, weights, x)
