"""Secure logits of zoo models (random weights, fixed seed) match plaintext within bounds."""

import pytest
import torch
import torch.nn as nn

from secinfer.models.capture import capture
from secinfer.models.secure import SecureModel, run_plain
from secinfer.models.zoo import (
    fmnist_cnn,
    fmnist_resnet,
    lenet,
    mobilenet_v2,
    resnet18,
    resnet50,
    vgg,
)
from secinfer.mpc import MPCConfig, MPCEngine
from secinfer.mpc.engine import encode
from secinfer.net import run_in_memory


def _shares(weights, f, g):
    s0, s1 = {}, {}
    for k, v in weights.items():
        enc = encode(v, f)
        r = torch.randint(-(2**63), 2**63 - 1, enc.shape, dtype=torch.int64, generator=g)
        s0[k], s1[k] = enc - r, r
    return s0, s1


def _program(s, plan, shares, x):
    eng = MPCEngine(s, MPCConfig(frac_bits=plan.frac_bits))
    model = SecureModel(eng, plan, shares[eng.role] if eng.role < 2 else None)
    xs = eng.share_input(x if eng.role == 0 else None, 0, tuple(x.shape))
    return eng.reveal(model.forward(xs), to=0)


def secure_logits(model, shape, x, f=12):
    plan, weights = capture(model, shape, frac_bits=f)
    shares = _shares(weights, f, torch.Generator().manual_seed(1))
    out = run_in_memory(3, _program, plan, shares, x, timeout=120)[0]
    return out, run_plain(plan, weights, x.double())


@pytest.mark.parametrize("name,factory,shape", [
    ("lenet", lenet, (1, 28, 28)),
    ("fmnist_cnn", fmnist_cnn, (1, 28, 28)),
    ("fmnist_resnet", fmnist_resnet, (1, 28, 28)),
    ("resnet18", lambda: resnet18(10), (3, 16, 16)),
    ("mobilenet_v2", lambda: mobilenet_v2(10), (3, 16, 16)),
    ("vgg11", lambda: vgg(11, 10), (3, 32, 32)),
    ("resnet50", lambda: resnet50(10, stem="cifar"), (3, 8, 8)),
])
def test_zoo_secure_matches_plaintext(name, factory, shape):
    torch.manual_seed(0)
    model = factory().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
            m.running_mean.normal_(0, 0.1)
    x = torch.randn(1, *shape)
    out, ref = secure_logits(model, shape, x)
    scale = ref.abs().max().item() + 1.0
    # fixed point at f=12 with one truncation per linear layer: errors of a few 2^-12 per
    # layer that grow with depth; 1% of the logit range is the stated bound
    assert (out - ref).abs().max().item() <= 0.01 * scale, name
    assert out.argmax(-1).item() == ref.argmax(-1).item()


def _debug_program(s, plan, shares, x):
    eng = MPCEngine(s, MPCConfig(frac_bits=plan.frac_bits, debug_reveal_insecure=True))
    model = SecureModel(eng, plan, shares[eng.role] if eng.role < 2 else None)
    xs = eng.share_input(x if eng.role == 0 else None, 0, tuple(x.shape))
    model.forward(xs)
    return model.debug_log


def test_insecure_debug_mode_checks_every_op_against_plaintext():
    model = lenet().eval()
    plan, weights = capture(model, (1, 28, 28))
    shares = _shares(weights, 12, torch.Generator().manual_seed(2))
    logs = run_in_memory(3, _debug_program, plan, shares, torch.randn(1, 1, 28, 28))
    assert [e["op"] for e in logs[0]] == [op.name for op in plan.ops]
    assert all(e["max_abs_error"] < 0.05 and not e["overflow"] for e in logs[0])
    assert logs[2] == []  # the helper opens nothing
