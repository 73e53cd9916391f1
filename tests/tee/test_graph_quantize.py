"""Capture and quantization against plaintext PyTorch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from secinfer.tee import QuantConfig, UnsupportedOp, calibrate, capture
from secinfer.tee.quantize import act_params, exact_linear, quantize_weight


def test_capture_matches_module(tiny: nn.Module, gen: torch.Generator) -> None:
    prog = capture(tiny)
    assert [lay.kind for lay in prog.layers] == ["conv", "conv", "conv", "linear", "linear"]
    assert prog.layers[2].groups == 6
    x = torch.randn(5, 2, 8, 8, generator=gen)
    with torch.no_grad():
        ref = tiny.double()(x.double())
    got = prog.run(x.double())
    assert torch.allclose(got, ref, rtol=1e-10, atol=1e-10)


def test_unsupported_op_names_node() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sigmoid())
    with pytest.raises(UnsupportedOp, match="Sigmoid.*node '_1'.*secinfer.tee.graph"):
        capture(model)


def test_weight_quantization_per_channel(gen: torch.Generator) -> None:
    w = torch.randn(7, 3, 3, 3, generator=gen, dtype=torch.float64) * torch.rand(7, 1, 1, 1,
                                                                                 generator=gen)
    q, s = quantize_weight(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
    assert (q.reshape(7, -1).abs().amax(1) == 127).all()
    err = (w - q.double() * s.view(-1, 1, 1, 1)).abs().reshape(7, -1).amax(1)
    assert (err <= s / 2 + 1e-12).all()


def _int64_conv(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    # Independent reference: im2col with integer matmul, no floats anywhere.
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = F.pad(x, (padding,) * 4)
    oh, ow = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    cols = torch.stack([xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
                        for i in range(kh) for j in range(kw)], dim=2)  # n, c, k, oh, ow
    cols = cols.reshape(n, c * kh * kw, oh * ow)
    wm = w.to(torch.int64).permute(0, 1, 2, 3).reshape(o, c, kh * kw).reshape(o, -1)
    return (wm @ cols).reshape(n, o, oh, ow)


def test_exact_linear_is_integer_exact(gen: torch.Generator) -> None:
    from secinfer.tee.graph import LinearSpec

    w = torch.randint(-127, 128, (5, 64, 3, 3), generator=gen).to(torch.int8)
    spec = LinearSpec("c", w.double(), torch.zeros(5), "conv", (2, 2), (1, 1))
    c = torch.randint(-255, 256, (3, 64, 9, 9), generator=gen)
    assert torch.equal(exact_linear(spec, c, w), _int64_conv(c, w, 2, 1))


def test_int8_model_close_to_float(tiny: nn.Module, gen: torch.Generator) -> None:
    prog = capture(tiny)
    calib = torch.randn(64, 2, 8, 8, generator=gen)
    qm = calibrate(prog, [calib])
    x = torch.randn(32, 2, 8, 8, generator=gen)
    ref, got = prog.run(x.double()), qm.forward(x)
    # 8-bit activations and weights through 5 layers of a random net. Bounds set from 200
    # fresh draws (worst seen: mean 1.6 %, max 18 % of the largest output), with margin.
    assert (got - ref).abs().mean() <= 0.04 * ref.abs().mean()
    assert (got - ref).abs().max() <= 0.3 * ref.abs().max()
    coarse = calibrate(prog, [calib], QuantConfig(reduce_range=224))  # 32 levels
    # 8x coarser activation steps: the mean error grows (at least 2.4x in 200 draws)
    assert (coarse.forward(x) - ref).abs().mean() > 1.5 * (got - ref).abs().mean()


def test_reduced_range_bounds_and_errors(gen: torch.Generator) -> None:
    a = act_params(-1.0, 3.0, 127)
    assert 0 <= a.zero_point <= 127 and a.scale == pytest.approx(4.0 / 127)
    with pytest.raises(ValueError, match="reduce_range"):
        QuantConfig(reduce_range=300)
    with pytest.raises(ValueError, match="not finite"):
        act_params(float("nan"), 1.0, 255)
    wide = nn.Sequential(nn.Flatten(), nn.Linear(70000, 2))
    with pytest.raises(ValueError, match="overflow a 32-bit accumulator"):
        calibrate(capture(wide), [torch.randn(2, 70000)])
    calibrate(capture(wide), [torch.randn(2, 70000)], QuantConfig(reduce_range=128))
    with pytest.raises(ValueError, match="at least one batch"):
        calibrate(capture(wide), [])
