"""``secinfer knapsack distortion|solve|finetune`` end to end on tiny settings."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from secinfer.cli import main
from secinfer.knapsack import load_spec
from secinfer.models.block_spec import activation_shapes, drelu_counts
from secinfer.models.zoo import fmnist_resnet


@pytest.mark.slow
def test_distortion_solve_finetune(tmp_path, capsys):
    weights = tmp_path / "w.safetensors"
    save_file(fmnist_resnet().state_dict(), str(weights))
    run = tmp_path / "run"
    layers = "layer2.0.relu2,layer3.0.relu1"
    assert main(["knapsack", "distortion", "--weights", str(weights), "--samples", "3",
                 "--layers", layers, "--out", str(run), "--quiet"]) == 0
    spec_path = tmp_path / "spec.json"
    assert main(["knapsack", "solve", str(run), "--ratio", "0.06", "--out", str(spec_path)]) == 0
    spec = load_spec(spec_path)
    assert list(spec) == layers.split(",")
    shapes = activation_shapes(fmnist_resnet(), (1, 28, 28), list(spec))
    full = 32 * 14 * 14 + 64 * 7 * 7
    assert sum(drelu_counts(spec, shapes).values()) <= int(0.06 * full)
    meta = json.loads(spec_path.read_text())["meta"]
    assert meta["full_drelus"] == full and meta["budget"] == int(0.06 * full)

    out = tmp_path / "ft.safetensors"
    assert main(["knapsack", "finetune", "--weights", str(weights), "--spec", str(spec_path),
                 "--epochs", "1", "--train-limit", "64", "--test-limit", "50",
                 "--out", str(out)]) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["drelus_block"] < summary["drelus_original"]
    assert 0 <= summary["accuracy_finetuned"] <= 1 and summary["test_images"] == 50
    from safetensors.torch import load_file

    state = load_file(str(out))
    assert torch.equal(state["layer3.0.relu1.block_sizes"], spec["layer3.0.relu1"])
    assert "fine-tuned: test accuracy" in capsys.readouterr().out


def test_solve_needs_exactly_one_budget(tmp_path):
    with pytest.raises(SystemExit):
        main(["knapsack", "solve", str(tmp_path), "--out", str(tmp_path / "s.json")])
    with pytest.raises(SystemExit):
        main(["knapsack", "solve", str(tmp_path), "--ratio", "0.1", "--count", "5",
              "--out", str(tmp_path / "s.json")])
