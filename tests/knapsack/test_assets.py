"""The shipped block-ReLU fine-tuned fmnist_resnet: loads with its spec and classifies."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from secinfer.data import load
from secinfer.knapsack import BlockReLU, apply_spec, load_spec
from secinfer.knapsack.finetune import evaluate
from secinfer.models.zoo import asset_path, build


def test_finetuned_block_relu_resnet():
    base = asset_path("fmnist_resnet")
    spec = load_spec(base.with_name("fmnist_resnet_spec6.json"))
    meta = json.loads(base.with_name("fmnist_resnet_block6.json").read_text())
    model = apply_spec(build("fmnist_resnet"), spec)
    state = load_file(str(base.with_name("fmnist_resnet_block6.safetensors")))
    model.load_state_dict(state)
    for name, bs in spec.items():
        block = model.get_submodule(name)
        assert isinstance(block, BlockReLU) and torch.equal(block.block_sizes, bs)
    x, y = load("test", limit=2000)
    acc = evaluate(model, x, y)
    # 2,000 of the 10,000 test images: within 3 points of the recorded full-set figure.
    assert abs(acc - meta["accuracy_finetuned"]) < 0.03
    assert acc > 0.8 and meta["drelus_block"] <= 0.06 * meta["drelus_original"]
