"""Plaintext block ReLU against a direct per-patch reference and against torch.relu."""

from __future__ import annotations

import math

import pytest
import torch
from torch import fx, nn

from secinfer.knapsack import BlockReLU, block_cost, block_relu
from secinfer.models.block_relu import block_gate, check_block_sizes


def _reference(x: torch.Tensor, bs: torch.Tensor) -> torch.Tensor:
    """Loop over channels and patches; the gate is the sign of the patch *mean* (seed semantics)."""
    out = torch.zeros_like(x)
    _, c, height, width = x.shape
    for ch in range(c):
        h, w = bs[ch].tolist()
        if (h, w) == (0, 1):
            out[:, ch] = x[:, ch]
            continue
        if (h, w) == (1, 0):
            continue
        for i in range(0, height, h):
            for j in range(0, width, w):
                patch = x[:, ch, i:i + h, j:j + w]
                gate = (patch.mean(dim=(1, 2)) > 0).to(x.dtype)
                out[:, ch, i:i + h, j:j + w] = patch * gate[:, None, None]
    return out


def _random_sizes(c: int) -> torch.Tensor:
    choices = [(1, 1), (0, 1), (1, 0), (2, 2), (3, 3), (2, 3), (5, 4), (7, 7), (1, 6), (9, 9)]
    idx = torch.randint(len(choices), (c,))
    return torch.tensor([choices[i] for i in idx.tolist()], dtype=torch.int32)


@pytest.mark.parametrize(("height", "width"), [(7, 7), (8, 8), (10, 13), (1, 5)])
def test_matches_per_patch_mean_reference(height, width):
    x = torch.randn(3, 12, height, width, dtype=torch.float64)
    bs = _random_sizes(12)
    torch.testing.assert_close(block_relu(x, bs), _reference(x, bs), rtol=0, atol=0)


def test_one_by_one_is_relu_and_sentinels():
    x = torch.randn(4, 5, 9, 9)
    ones = torch.ones(5, 2, dtype=torch.int32)
    assert torch.equal(block_relu(x, ones), torch.relu(x))
    ident = torch.tensor([[0, 1]] * 5, dtype=torch.int32)
    assert torch.equal(block_relu(x, ident), x)
    zero = torch.tensor([[1, 0]] * 5, dtype=torch.int32)
    assert torch.equal(block_relu(x, zero), torch.zeros_like(x))


def test_ceil_border_patches_use_only_real_elements():
    # 5 wide with 3x3 blocks: the right-hand patch is 3x2. Make its real elements positive-sum
    # even though a zero-padded *mean over 9* and a mean over 6 agree in sign: check the gate.
    x = torch.full((1, 1, 3, 5), -1.0)
    x[0, 0, :, 3:] = torch.tensor([[5.0, -1.0], [-1.0, -1.0], [-1.0, 0.5]])  # sum 1.5 > 0
    out = block_relu(x, torch.tensor([[3, 3]], dtype=torch.int32))
    assert torch.equal(out[0, 0, :, :3], torch.zeros(3, 3))
    assert torch.equal(out[0, 0, :, 3:], x[0, 0, :, 3:])


def test_gate_is_sign_of_sum_and_zero_sum_gates_off():
    x = torch.tensor([[[[1.0, -1.0], [2.0, -2.0]]]])  # sum exactly 0
    assert torch.equal(block_relu(x, torch.tensor([[2, 2]])), torch.zeros_like(x))


def test_gradient_passes_straight_through_the_gate():
    x = torch.randn(2, 6, 8, 8, dtype=torch.float64, requires_grad=True)
    bs = _random_sizes(6)
    y = block_relu(x, bs)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    gate = block_gate(x.detach(), bs)
    assert set(gate.unique().tolist()) <= {0.0, 1.0}
    assert x.grad is not None
    torch.testing.assert_close(x.grad, g * gate, rtol=0, atol=0)
    # The gate is the mask of the forward pass (random x has no exact zeros).
    assert torch.equal(gate, (y.detach() != 0).double())


def test_module_costs_and_fx():
    bs = torch.tensor([[1, 1], [2, 2], [0, 1], [1, 0], [3, 5]], dtype=torch.int32)
    m = BlockReLU(bs)
    assert m.block_sizes.dtype == torch.int32 and m.block_sizes.shape == (5, 2)
    assert m.drelu_count(7, 7) == 49 + 16 + 0 + 0 + 3 * 2
    assert block_cost((3, 5), 7, 7) == math.ceil(7 / 3) * math.ceil(7 / 5)
    net = nn.Sequential(nn.Conv2d(1, 5, 3, padding=1), m)
    traced = fx.symbolic_trace(net)
    x = torch.randn(2, 1, 7, 7)
    torch.testing.assert_close(traced(x), net(x), rtol=0, atol=0)
    assert torch.equal(net.state_dict()["1.block_sizes"], bs)


@pytest.mark.parametrize("bad", [[[0, 0]], [[2, 0]], [[-1, 3]], [[0, 2]]])
def test_invalid_block_sizes_rejected(bad):
    with pytest.raises(ValueError, match="invalid block size"):
        check_block_sizes(torch.tensor(bad))


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"shape \[C, 2\]"):
        BlockReLU(torch.ones(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="expected 4"):
        block_relu(torch.randn(1, 4, 3, 3), torch.ones(3, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="4-D"):
        block_relu(torch.randn(4, 3), torch.ones(3, 2, dtype=torch.int32))
