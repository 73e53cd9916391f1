"""Capture: every zoo model becomes a plan whose plaintext evaluation equals the model."""

import pytest
import torch
import torch.nn as nn

from secinfer.models.capture import UnsupportedOpError, capture
from secinfer.models.plan import Plan
from secinfer.models.secure import run_plain
from secinfer.models.zoo import fmnist_cnn, fmnist_resnet, lenet, mobilenet_v2, resnet18, vgg


def _randomise_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


@pytest.mark.parametrize("factory,shape", [
    (lenet, (1, 28, 28)), (fmnist_cnn, (1, 28, 28)), (fmnist_resnet, (1, 28, 28)),
    (lambda: resnet18(10), (3, 32, 32)), (lambda: mobilenet_v2(10), (3, 32, 32)),
    (lambda: vgg(11, 10), (3, 32, 32)),
])
def test_plan_matches_model(factory, shape):
    model = _randomise_bn(factory().double())
    plan, weights = capture(model, shape)
    x = torch.randn(2, *shape, dtype=torch.float64)
    ref = model(x)
    out = run_plain(Plan.from_json(plan.to_json()), weights, x)
    assert torch.allclose(out, ref, atol=1e-9, rtol=1e-9)
    assert not any(op.kind == "identity" for op in plan.ops)


class _Sigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.PReLU()

    def forward(self, x):
        return self.act(self.fc(x))


def test_unsupported_op_names_op_node_and_where():
    with pytest.raises(UnsupportedOpError) as info:
        capture(_Sigmoid(), (4,))
    msg = str(info.value)
    assert "module PReLU" in msg and "'act'" in msg and "supported-ops.md" in msg
    assert "capture.py" not in msg  # the fix is the user's model, not secinfer's source


def test_malformed_plan_json():
    with pytest.raises(ValueError, match="malformed plan"):
        Plan.from_json('{"ops": [{"kind": "relu"}]}')
