"""The remaining user-model ops on shares (sub, tanh, hard-sigmoid, constant arithmetic, a
per-sample shape check through torch.export), and the refusals: op, node and what to do."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from secinfer.models.capture import UnsupportedOpError, capture

from ._secure import secure_vs_plain


class Misc(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(6, 8)
        self.out = nn.Linear(8, 4)

    def forward(self, x):
        u, v = torch.tanh(self.a(x)), F.hardsigmoid(self.b(x))
        y = (u - v) / 4 + (1 - v) * 0.5 - 2
        return self.out(y)


def test_misc_ops_secure_match():
    torch.manual_seed(0)
    model = Misc().eval()
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    plan, weights = capture(model, (6,), frac_bits=16)
    kinds = {op.kind for op in plan.ops}
    assert {"tanh", "hardsigmoid", "sub", "affine"} <= kinds
    with torch.no_grad():
        ref = model.double()(x.double())
    out, plain = secure_vs_plain(plan, weights, x)
    assert torch.allclose(plain, ref, atol=1e-12)
    assert (out - ref).abs().max().item() < 0.01


class Bicubic(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x):
        return F.interpolate(self.conv(x), scale_factor=2, mode="bicubic")


class ValueBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent: neither fx nor export at a static shape can take it
            return self.fc(x)
        return -self.fc(x)


class Exp(nn.Module):
    def forward(self, x):
        return torch.exp(x)


@pytest.mark.parametrize("model,shape,what,node", [
    (Bicubic(), (1, 4, 4), "interpolate(mode='bicubic')", "interpolate"),
    (Exp(), (4,), "function exp", "exp"),
])
def test_unsupported_ops_name_op_node_and_fix(model, shape, what, node):
    with pytest.raises(UnsupportedOpError) as info:
        capture(model, shape)
    msg = str(info.value)
    assert what in msg and f"'{node}'" in msg and info.value.node == node
    assert "capture.py" not in msg
    assert "supported-ops.md" in msg or "mode='nearest'" in msg


def test_value_dependent_control_flow_says_what_to_do():
    with pytest.raises(UnsupportedOpError) as info:
        capture(ValueBranch(), (4,))
    msg = str(info.value)
    assert "torch.fx" in msg and "torch.export" in msg and "depends on the input's values" in msg
