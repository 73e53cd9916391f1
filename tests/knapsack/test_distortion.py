"""Distortion extraction against a direct computation; resume; worker processes; graph split."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from secinfer.knapsack import apply_spec
from secinfer.knapsack.distortion import ModelRef, extract, iter_units
from secinfer.knapsack.graph_split import split_at
from secinfer.knapsack.problem import load_distortion
from secinfer.models.zoo import fmnist_resnet

KWARGS = {"widths": [4, 6, 8]}


def _few(height, width):
    return [(1, 1), (2, 2), (3, 2), (height, width), (0, 1), (1, 0)]


def _model_file(tmp_path):
    model = fmnist_resnet(**KWARGS)
    with torch.no_grad():  # non-trivial BN statistics so every layer matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(path))
    return ModelRef("fmnist_resnet", str(path), KWARGS), model.eval()


def _direct(model, x, layer, channels, channel, block):
    bs = torch.ones(channels, 2, dtype=torch.int32)
    bs[channel] = torch.tensor(block)
    distorted = apply_spec(copy.deepcopy(model), {layer: bs})
    with torch.no_grad():
        return float(((distorted(x) - model(x)) ** 2).mean())


def test_split_reproduces_the_model():
    model = fmnist_resnet(**KWARGS).eval()
    x = torch.randn(3, 1, 12, 12)
    for layer in ["relu", "layer1.0.relu1", "layer2.0.relu2", "layer3.0.relu1"]:
        split = split_at(model, layer)
        pre, live = split.run_prefix(x)
        with torch.no_grad():
            torch.testing.assert_close(split.suffix(torch.relu(pre), *live), model(x),
                                       rtol=1e-5, atol=1e-6)
    assert split_at(model, "layer1.0.relu1").live == 1  # the residual input crosses the split
    with pytest.raises(ValueError, match="called 0 times"):
        split_at(model, "nope")


@pytest.mark.slow
def test_matches_direct_computation_and_resumes(tmp_path):
    ref, model = _model_file(tmp_path)
    x = torch.randn(5, 1, 12, 12)
    layers = ["relu", "layer3.0.relu2"]
    out = tmp_path / "d"
    path = extract(ref, x, out, layers=layers, candidates=_few, copies=3, progress=False)
    table, meta = load_distortion(path)
    assert [t.name for t in table] == layers and meta["samples"] == 5
    rng = np.random.default_rng()
    for t in table:
        assert (t.noise >= 0).all()
        k11 = t.candidates.tolist().index([1, 1])
        assert (t.noise[:, k11] == 0).all()
        for _ in range(3):
            c, k = int(rng.integers(t.shape[0])), int(rng.integers(len(t.candidates)))
            want = _direct(model, x, t.name, t.shape[0], c, t.candidates[k].tolist())
            assert t.noise[c, k] == pytest.approx(want, rel=1e-4, abs=1e-9)

    # Resume: drop some units, run again (2 worker processes), get the same table.
    units = list(iter_units(out))
    for u in units[::3]:
        u.unlink()
    again, _ = load_distortion(extract(ref, x, out, layers=layers, candidates=_few, copies=3,
                                       workers=2, progress=False))
    for a, b in zip(table, again, strict=True):
        np.testing.assert_allclose(a.noise, b.noise, rtol=1e-6, atol=1e-12)
    with pytest.raises(ValueError, match="different"):
        extract(ref, x, out, layers=layers[:1], candidates=_few, progress=False)
    with pytest.raises(ValueError, match="samples"):
        extract(ref, x + 1, out, layers=layers, candidates=_few, progress=False)


def test_default_layers_skip_relus_after_linear_layers(tmp_path):
    ref = ModelRef("lenet", None, {"input_size": 16})
    path = extract(ref, torch.randn(3, 1, 16, 16), tmp_path / "d", candidates=_few, copies=4,
                   progress=False)
    table, _ = load_distortion(path)
    assert [t.name for t in table] == ["relu1", "relu2"]  # relu3/relu4 follow nn.Linear
    assert [t.shape for t in table] == [(6, 12, 12), (16, 2, 2)]
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        extract(ref, torch.randn(3, 1, 16, 16), tmp_path / "e", layers=["relu3"],
                progress=False)
