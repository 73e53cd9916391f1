"""Knapsack DP against brute force; budgets; spec file round trip."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from secinfer.knapsack import apply_spec, drelu_counts, load_spec, save_spec
from secinfer.knapsack.problem import (
    LayerDistortion,
    default_candidates,
    load_distortion,
    save_distortion,
)
from secinfer.knapsack.solve import resolve_budget, solve
from secinfer.models.block_relu import BlockReLU
from secinfer.models.block_spec import activation_shapes, spec_meta
from secinfer.models.zoo import fmnist_resnet


def _brute_force(layers, budget):
    options = [list(zip(la.costs.tolist(), row.tolist(), strict=True))
               for la in layers for row in la.noise]
    best = None
    for combo in itertools.product(*options):
        if sum(c for c, _ in combo) <= budget:
            noise = sum(v for _, v in combo)
            best = noise if best is None else min(best, noise)
    return best


def _random_problem(rng, layers=2, max_channels=3, integer_noise=False):
    out = []
    for i in range(layers):
        side = int(rng.integers(2, 7))
        c = int(rng.integers(1, max_channels + 1))
        cands = default_candidates(side, side)
        keep = rng.choice(len(cands), size=int(rng.integers(2, 5)), replace=False)
        cand = np.array([cands[k] for k in sorted(keep)], dtype=np.int32)
        # Integer noise makes exact ties (and equal-cost merges) common.
        noise = rng.integers(0, 4, (c, len(cand))).astype(float) if integer_noise \
            else rng.random((c, len(cand)))
        out.append(LayerDistortion(f"l{i}", (c, side, side), cand, noise))
    return out


@pytest.mark.parametrize("segmented", [False, True])
@pytest.mark.parametrize("integer_noise", [False, True])
def test_dp_matches_brute_force(segmented, integer_noise):
    rng = np.random.default_rng()
    for _ in range(25):
        layers = _random_problem(rng, integer_noise=integer_noise)
        full = sum(la.full_cost for la in layers)
        min_cost = sum(int(la.costs.min()) * la.shape[0] for la in layers)
        budget = int(rng.integers(min_cost, full + 1))
        sol = solve(layers, budget, full_table_bytes=0 if segmented else 1 << 30)
        expected = _brute_force(layers, budget)
        assert sol.drelus <= budget
        assert sol.noise == pytest.approx(expected, abs=1e-9)
        # The reported cost and noise are those of the returned spec.
        counts = drelu_counts(sol.spec, {la.name: la.shape for la in layers})
        assert sum(counts.values()) == sol.drelus
        for la in layers:
            idx = [next(k for k, b in enumerate(la.candidates.tolist()) if b == row)
                   for row in sol.spec[la.name].tolist()]
            assert counts[la.name] == int(la.costs[idx].sum())


def test_equal_cost_options_merge_to_the_better():
    # 4x4 activation: blocks (3,3) and (4,4)... (2,3) and (3,2) both cost 4; (3,2) is better.
    cand = np.array([[2, 3], [3, 2], [0, 1]], dtype=np.int32)
    noise = np.array([[0.5, 0.1, 9.0]])
    layer = LayerDistortion("a", (1, 4, 4), cand, noise)
    assert layer.costs.tolist() == [4, 4, 0]
    sol = solve([layer], 4)
    assert sol.spec["a"].tolist() == [[3, 2]] and sol.drelus == 4


def test_budget_resolution_and_errors():
    assert resolve_budget(1000, ratio=0.06) == 60
    assert resolve_budget(1000, count=77) == 77
    with pytest.raises(ValueError, match="exactly one"):
        resolve_budget(1000)
    with pytest.raises(ValueError, match="exactly one"):
        resolve_budget(1000, ratio=0.1, count=5)
    with pytest.raises(ValueError, match="ratio"):
        resolve_budget(1000, ratio=1.5)
    layer = LayerDistortion("a", (2, 4, 4), np.array([[1, 1], [2, 2]], np.int32), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="infeasible"):
        solve([layer], 3)


def test_larger_problem_segmented_equals_full_table():
    rng = np.random.default_rng()
    layers = []
    for i, side in enumerate([14, 7]):
        cand = np.array(default_candidates(side, side), dtype=np.int32)
        c = 24
        layers.append(LayerDistortion(f"l{i}", (c, side, side), cand, rng.random((c, len(cand)))))
    budget = resolve_budget(sum(la.full_cost for la in layers), ratio=0.06)
    a = solve(layers, budget)
    b = solve(layers, budget, full_table_bytes=0)
    assert a.noise == pytest.approx(b.noise, rel=1e-12)
    assert a.drelus <= budget and b.drelus <= budget


def test_distortion_file_round_trip(tmp_path):
    rng = np.random.default_rng()
    layers = _random_problem(rng)
    path = save_distortion(tmp_path / "d.safetensors", layers, {"samples": 3})
    back, meta = load_distortion(path)
    assert meta == {"samples": 3}
    for a, b in zip(layers, back, strict=True):
        assert a.name == b.name and a.shape == b.shape
        assert np.array_equal(a.candidates, b.candidates) and np.array_equal(a.noise, b.noise)


def test_spec_round_trip_and_apply(tmp_path):
    model = fmnist_resnet()
    shapes = activation_shapes(model, (1, 28, 28))
    spec = {}
    for name, (c, _, _) in shapes.items():
        choices = torch.tensor([[1, 1], [0, 1], [1, 0], [3, 3], [2, 5], [28, 28]],
                               dtype=torch.int32)
        spec[name] = choices[torch.randint(len(choices), (c,))]
    path = save_spec(tmp_path / "spec.json", spec, {"budget": 123})
    back = load_spec(path)
    assert list(back) == list(spec)
    for k in spec:
        assert back[k].dtype == torch.int32 and torch.equal(back[k], spec[k])
    assert spec_meta(path) == {"budget": 123}
    doc = json.loads(path.read_text())
    assert doc["layers"]["relu"][0] == spec["relu"][0].tolist()
    # A bare mapping (hand-written) is accepted as well.
    (tmp_path / "bare.json").write_text(json.dumps({"relu": [[2, 2]] * 16}))
    assert load_spec(tmp_path / "bare.json")["relu"].shape == (16, 2)

    apply_spec(model, back)
    assert all(isinstance(model.get_submodule(n), BlockReLU) for n in spec)
    counts = drelu_counts(back, shapes)
    assert counts["relu"] == model.get_submodule("relu").drelu_count(28, 28)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_spec_errors_name_the_problem(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"relu": [[2, 0]]}))
    with pytest.raises(ValueError, match="'relu'.*invalid block size"):
        load_spec(p)
    p.write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_spec(p)
    p.write_text(json.dumps({"format": "other", "version": 1, "layers": {}}))
    with pytest.raises(ValueError, match="unsupported format"):
        load_spec(p)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_spec(tmp_path / "missing.json")
    model = fmnist_resnet()
    with pytest.raises(ValueError, match="does not have"):
        apply_spec(model, {"nope": torch.ones(1, 2, dtype=torch.int32)})
    with pytest.raises(ValueError, match="not a ReLU"):
        apply_spec(model, {"conv1": torch.ones(1, 2, dtype=torch.int32)})


@pytest.mark.parametrize("model_name", ["fmnist_cnn", "fmnist_resnet"])
@pytest.mark.parametrize("percent", [6, 12])
def test_shipped_specs_fit_their_models_and_budgets(model_name, percent):
    from secinfer.models.zoo import asset_path, build

    path = asset_path(model_name).with_name(f"{model_name}_spec{percent}.json")
    spec = load_spec(path)
    model = build(model_name)
    shapes = activation_shapes(model, (1, 28, 28), list(spec))
    drelus = sum(drelu_counts(spec, shapes).values())
    full = sum(c * h * w for c, h, w in shapes.values())
    assert drelus <= percent / 100 * full
    assert spec_meta(path)["drelus"] == drelus
    apply_spec(model, spec)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)
