"""MaxPool-to-AvgPool swap: what it replaces, what it refuses, what it does to the plan."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from secinfer.models import zoo
from secinfer.models.capture import capture
from secinfer.models.transforms import maxpool_to_avgpool


def test_every_max_pool_becomes_the_average_pool_of_the_same_geometry():
    model = zoo.fmnist_cnn().eval()
    swapped, n = maxpool_to_avgpool(model)
    assert n == 2
    assert not any(isinstance(m, nn.MaxPool2d) for m in swapped.modules())
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 2  # original untouched
    x = torch.randn(3, 1, 28, 28)
    # the same network with the pools computed by hand: avg of each 2x2 window
    ref = model.conv1(x).relu()
    ref = nn.functional.avg_pool2d(ref, 2)
    ref = nn.functional.avg_pool2d(model.conv2(ref).relu(), 2)
    ref = model.fc2(model.fc1(ref.flatten(1)).relu())
    with torch.no_grad():
        torch.testing.assert_close(swapped(x), ref.detach(), rtol=1e-5, atol=1e-5)
    assert isinstance(zoo.build("fmnist_cnn_avgpool").pool1, nn.AvgPool2d)


def test_the_swap_moves_comparisons_from_max_pools_to_relus():
    plain, _ = capture(zoo.fmnist_cnn().eval(), (1, 28, 28))
    swapped, _ = capture(maxpool_to_avgpool(zoo.fmnist_cnn())[0].eval(), (1, 28, 28))
    kinds = [op.kind for op in swapped.ops]
    assert "maxpool2d" not in kinds and "avgpool2d" in kinds
    def by_kind(plan):
        out: dict[str, int] = {}
        for op in plan.ops:
            out[op.kind] = out.get(op.kind, 0) + int(op.params.get("drelus", 0))
        return {k: v for k, v in out.items() if v}

    # before: ReLUs moved after the pools, 3 comparisons per 2x2 window; after: every
    # comparison is a ReLU before a pool, the kind the knapsack can replace by block ReLU
    assert by_kind(plain) == {"relu": 32 * 14 * 14 + 64 * 7 * 7 + 128,
                              "maxpool2d": 3 * (32 * 14 * 14 + 64 * 7 * 7)}
    assert by_kind(swapped) == {"relu": 32 * 28 * 28 + 64 * 14 * 14 + 128}


@pytest.mark.parametrize("pool, why", [
    (nn.MaxPool2d(2, dilation=2), "dilation"),
    (nn.MaxPool2d(3, 2, ceil_mode=True), "ceil_mode"),
    (nn.MaxPool2d(2, return_indices=True), "returns indices"),
])
def test_pools_without_an_average_counterpart_are_refused_by_name(pool, why):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), pool)
    with pytest.raises(ValueError, match=f"^1: .*{why}"):
        maxpool_to_avgpool(model)


def test_a_model_without_max_pool_modules_is_refused():
    with pytest.raises(ValueError, match="no nn.MaxPool2d"):
        maxpool_to_avgpool(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))
