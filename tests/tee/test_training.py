"""QAT and the r-sweep on a real (tiny) data set: scikit-learn digits (de-similarity:
tests/experiments/test_tee_desim.py)."""

from __future__ import annotations

import torch
from torch import nn

from secinfer.data.digits import load_digits
from secinfer.tee import QuantConfig, calibrate, capture_any, sweep_reduce_range
from secinfer.tee.qat import FakeQuantProgram, accuracy, qat, train_classifier


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 10))


def _data(gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    x, y = load_digits()
    idx = torch.randperm(len(x), generator=gen)
    tr, te = idx[:1300], idx[1300:]
    return x[tr], y[tr], x[te], y[te]


def test_ptq_qat_and_sweep_keep_accuracy(gen: torch.Generator) -> None:
    x, y, xt, yt = _data(gen)
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    model = train_classifier(_net(), x, y, epochs=8, lr=3e-3, gen=gen)
    prog = capture_any(model, (1, 8, 8))
    fl = accuracy(lambda t: prog.run(t.double()), xt, yt)
    assert fl > 85.0
    ptq = calibrate(prog, [x], QuantConfig(0))
    assert accuracy(ptq.forward, xt, yt) >= fl - 2.0
    fq = FakeQuantProgram(prog, QuantConfig(192))
    qm = qat(prog, x, y, QuantConfig(192), epochs=1, lr=5e-4, gen=gen)
    # the exported int8 model computes what the fake-quantized network trained on
    assert qm.config.qmax == 63 and len(qm.w_q) == len(fq.weights)
    assert accuracy(qm.forward, xt, yt) >= fl - 4.0
    rows = sweep_reduce_range(prog, [x], xt, yt, [0, 240])
    assert rows[0]["reduce_range"] == -1 and abs(rows[0]["accuracy"] - fl) < 1e-9
    assert rows[1]["accuracy"] >= fl - 2.0  # 256 activation levels: as close as PTQ above
    # Fewer levels, larger error. Compared on logits: accuracy on 497 digits is at the mercy of a
    # few borderline images (16 levels once scored 1.2 points above 256 by chance).
    ref = prog.run(xt.double())
    err = [float((calibrate(prog, [x], QuantConfig(r)).forward(xt) - ref).abs().mean())
           for r in (0, 240)]
    assert err[0] < err[1] / 2
