"""The enclave split's capture (the MPC capture, ``tee.from_plan``) and quantization against
plaintext PyTorch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from secinfer.models import zoo
from secinfer.tee import QuantConfig, UnsupportedOp, calibrate, capture_any
from secinfer.tee.program import LinearSpec
from secinfer.tee.quantize import ActQuant, act_params, exact_linear, quantize_weight

ITEM = (2, 8, 8)


def test_capture_matches_module(tiny: nn.Module, gen: torch.Generator) -> None:
    prog = capture_any(tiny, ITEM)
    assert [lay.kind for lay in prog.layers] == ["conv", "conv", "conv", "linear", "linear"]
    assert prog.layers[2].groups == 6
    x = torch.randn(5, 2, 8, 8, generator=gen)
    with torch.no_grad():
        ref = tiny.double()(x.double())
    got = prog.run(x.double())
    assert torch.allclose(got, ref, rtol=1e-10, atol=1e-10)


def test_unsupported_op_names_node() -> None:
    # the MPC capture's error: the op, the node, and where the supported ops are listed
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.PReLU())
    with pytest.raises(UnsupportedOp, match="PReLU at node '_1'.*docs/supported-ops.md") as e:
        capture_any(model, (1, 6, 6))
    assert e.value.what == "module PReLU" and e.value.node == "_1"


def _int8_torch(model: nn.Module, calib: torch.Tensor, x: torch.Tensor,
                act: list[ActQuant]) -> tuple[list[tuple[float, float]], torch.Tensor]:
    """The int8 scheme of ``quantize.py`` computed on the PyTorch module itself (no capture):
    the min/max of every conv / linear input over ``calib`` (returned), and the module run with
    per-channel int8 weights, activation parameters ``act``, exact integer accumulators and
    float64 everywhere else."""
    lin = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    seen = {m: (float("inf"), float("-inf")) for m in lin}

    def observe(m: nn.Module, args: tuple[torch.Tensor]) -> None:
        lo, hi = seen[m]
        seen[m] = min(lo, float(args[0].min())), max(hi, float(args[0].max()))

    def int8(m: nn.Module, args: tuple[torch.Tensor], _out: torch.Tensor) -> torch.Tensor:
        a = act[lin.index(m)]
        c = torch.clamp(torch.round(args[0] / a.scale) + a.zero_point, 0, 255) - a.zero_point
        wq, ws = quantize_weight(m.weight.detach())
        if isinstance(m, nn.Linear):
            return c @ wq.double().t() * (ws * a.scale).view(1, -1) + m.bias.view(1, -1)
        acc = F.conv2d(c, wq.double(), None, m.stride, m.padding, m.dilation, m.groups)
        return acc * (ws * a.scale).view(1, -1, 1, 1) + m.bias.view(1, -1, 1, 1)

    model = model.double()
    with torch.no_grad():
        hooks = [m.register_forward_pre_hook(observe) for m in lin]
        model(calib.double())
        for h in hooks:
            h.remove()
        hooks = [m.register_forward_hook(int8) for m in lin]
        out = model(x.double())
        for h in hooks:
            h.remove()
    model.float()
    return [seen[m] for m in lin], out


def test_the_shipped_cnn_is_native_steps_and_equals_pytorch(gen: torch.Generator) -> None:
    """fmnist_cnn through the one capture: only native trusted-side steps (no ``plan_op``),
    four linear layers; the float64 program equals the float64 PyTorch model, and its int8
    model equals the same int8 scheme computed on the PyTorch module."""
    model = zoo.pretrained("fmnist_cnn").eval()
    prog = capture_any(model, (1, 28, 28))
    assert [lay.kind for lay in prog.layers] == ["conv", "conv", "linear", "linear"]
    assert sorted({s.op for s in prog.steps}) == ["flatten", "linear", "maxpool", "relu"]
    pool = next(s for s in prog.steps if s.op == "maxpool")
    assert pool.attrs == {"kernel_size": (2, 2), "stride": (2, 2), "padding": (0, 0),
                          "dilation": (1, 1), "ceil_mode": False}
    x = torch.randn(16, 1, 28, 28, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        ref = model.double()(x)
        model.float()
    assert (prog.run(x) - ref).abs().max() <= 1e-12 * max(1.0, float(ref.abs().max()))
    calib = torch.randn(64, 1, 28, 28, generator=gen)
    qm = calibrate(prog, [calib])
    ranges, want = _int8_torch(model, calib, x.float(), qm.act)
    # calibration saw the module's own layer inputs (up to float64 rounding of the bias add)
    for a, (lo, hi) in zip(qm.act, ranges, strict=True):
        b = act_params(lo, hi, 255)
        assert a.scale == pytest.approx(b.scale, rel=1e-12) and a.zero_point == b.zero_point
    # with those parameters, integer accumulators are exact and the rest is the same float64
    # arithmetic: bit-identical
    assert torch.equal(qm.forward(x.float()), want)


def test_pools_map_to_native_steps_with_their_geometry(gen: torch.Generator) -> None:
    """Padded / strided pools, a global average pool and dropout become native steps that
    compute what PyTorch does (float64)."""
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU6(), nn.AvgPool2d(3, stride=1, padding=1),
        nn.Conv2d(4, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Dropout(0.2), nn.Flatten(),
        nn.Linear(4, 3)).eval()
    prog = capture_any(model, (2, 9, 9))
    assert [s.op for s in prog.steps] == [
        "linear", "relu", "maxpool", "linear", "relu6", "avgpool", "linear", "relu",
        "adaptive_avgpool", "flatten", "linear"]
    x = torch.randn(5, 2, 9, 9, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        ref = model.double()(x)
    assert (prog.run(x) - ref).abs().max() <= 1e-12


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
    w = torch.randint(-127, 128, (5, 64, 3, 3), generator=gen).to(torch.int8)
    spec = LinearSpec("c", w.double(), torch.zeros(5), "conv", (2, 2), (1, 1))
    c = torch.randint(-255, 256, (3, 64, 9, 9), generator=gen)
    assert torch.equal(exact_linear(spec, c, w), _int64_conv(c, w, 2, 1))


def test_int8_model_close_to_float(tiny: nn.Module, gen: torch.Generator) -> None:
    prog = capture_any(tiny, ITEM)
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
        calibrate(capture_any(wide, (70000,)), [torch.randn(2, 70000)])
    calibrate(capture_any(wide, (70000,)), [torch.randn(2, 70000)],
              QuantConfig(reduce_range=128))
    with pytest.raises(ValueError, match="at least one batch"):
        calibrate(capture_any(wide, (70000,)), [])


def test_partial_flatten_keeps_its_shape(gen: torch.Generator) -> None:
    """``Flatten(1, 2)`` / ``torch.flatten(x, 1, 2)`` merge two dimensions only (a reshape to
    the traced shape), not everything after the batch."""

    class Fn(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.flatten(x, 1, 2)

    x = torch.randn(3, 1, 6, 6, generator=gen, dtype=torch.float64)
    for model in (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(1, 2)),
                  nn.Sequential(nn.Conv2d(1, 2, 3), Fn())):
        prog = capture_any(model.eval(), (1, 6, 6))
        with torch.no_grad():
            ref = model.double()(x)
        got = prog.run(x)
        assert got.shape == ref.shape == (3, 8, 4)
        assert (got - ref).abs().max() <= 1e-12
