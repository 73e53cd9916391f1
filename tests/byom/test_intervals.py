"""The interval rules of the new ops are sound: sampled plaintext values of every op of every
corpus model lie inside the bounds :func:`interval_bounds` proves for the input box."""

import pytest
import torch

from secinfer.models.capture import capture
from secinfer.models.ranges import interval_bounds
from secinfer.models.secure import run_plain

from .corpus import CORPUS, build


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_interval_bounds_contain_sampled_values(name):
    model, shape = build(name)
    plan, weights = capture(model, shape)
    bounds = interval_bounds(plan, weights, -1.0, 1.0)
    x = torch.rand(64, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    record: dict[str, float] = {}
    run_plain(plan, weights, x * 2 - 1, record=record)
    for op in plan.ops:
        assert record[op.name] <= bounds[op.name] * (1 + 1e-9) + 1e-9, (op.name, op.kind)
