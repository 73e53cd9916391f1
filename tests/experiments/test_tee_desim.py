"""De-similarity training (experiments/tee_desim.py) on a real (tiny) data set: digits."""

from __future__ import annotations

import torch
from experiments.tee_desim import desim_train, thief_init
from torch import nn

from secinfer.data.digits import load_digits
from secinfer.tee import QuantConfig, capture_any
from secinfer.tee.qat import accuracy, train_classifier


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 10))


def _data(gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    x, y = load_digits()
    idx = torch.randperm(len(x), generator=gen)
    tr, te = idx[:1300], idx[1300:]
    return x[tr], y[tr], x[te], y[te]


def test_desim_keeps_true_accuracy_and_hides_it_from_the_device_view(
    gen: torch.Generator,
) -> None:
    x, y, xt, yt = _data(gen)
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    model = train_classifier(_net(), x, y, epochs=8, lr=3e-3, gen=gen)
    prog = capture_any(model, (1, 8, 8))
    d = desim_train(prog, x, y, gen, epochs=6, lam=1.0, lr=2e-3)
    qm = d.export(x, QuantConfig(0))
    with torch.no_grad():
        true_acc = accuracy(qm.forward, xt, yt)
        thief_acc = accuracy(lambda t: d(t, thief=True), xt, yt)
        # the int8 export and the float parametrisation agree
        assert (qm.forward(xt[:50]).argmax(1) == d(xt[:50]).argmax(1)).float().mean() > 0.9
    assert true_acc > 80.0
    assert thief_acc < true_acc - 30.0
    # the device's tensors are the exported int8 rows; negative scales carry the secret signs
    assert any((s < 0).any() for s in qm.w_scale)
    thief = thief_init(_net(), qm, None)
    first = next(m for m in thief.modules() if isinstance(m, nn.Conv2d))
    assert first.bias is not None and (first.bias == 0).all()
