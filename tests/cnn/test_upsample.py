"""Upsampling and concatenation on shares match plaintext PyTorch; DeepLabV3 heads capture."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from secinfer.errors import UnsupportedOpError
from secinfer.models.capture import capture
from secinfer.models.secure import run_plain
from secinfer.models.segmentation import deeplabv3_mobilenet, deeplabv3_resnet
from secinfer.mpc import MPCConfig, MPCEngine, cat
from secinfer.mpc.upsample import dyadic_bits, interp_matrix, upsample
from secinfer.net import run_in_memory

from .test_secure_zoo import secure_logits


@pytest.mark.parametrize("n_in,n_out,mode,ac", [
    (8, 32, "bilinear", False), (1, 8, "bilinear", False), (3, 7, "bilinear", False),
    (5, 9, "bilinear", True), (4, 12, "nearest", None)])
def test_interp_matrix_is_pytorchs_map(n_in, n_out, mode, ac):
    x = torch.randn(2, 3, n_in, n_in + 1, dtype=torch.float64)
    mh = interp_matrix(n_in, n_out, mode, ac)
    mw = interp_matrix(n_in + 1, n_out + 2, mode, ac)
    kw = {"align_corners": ac} if mode == "bilinear" else {}
    ref = F.interpolate(x, size=(n_out, n_out + 2), mode=mode, **kw)
    assert torch.allclose(mh @ x @ mw.T, ref, atol=1e-12)


def test_integer_scales_are_dyadic():
    assert dyadic_bits(interp_matrix(8, 16, "bilinear", False), 12) == 2
    assert dyadic_bits(interp_matrix(8, 32, "bilinear", False), 12) == 3
    assert dyadic_bits(interp_matrix(1, 8, "bilinear", False), 12) == 0  # broadcast
    assert dyadic_bits(interp_matrix(3, 7, "bilinear", False), 12) == 12  # not dyadic: rounded


def _up_program(s, x, size, mode, ac, y_in):
    eng = MPCEngine(s, MPCConfig(frac_bits=12))
    xs = eng.share_input(x if eng.role == 0 else None, 0, tuple(x.shape))
    ys = eng.share_input(y_in if eng.role == 0 else None, 0, tuple(y_in.shape))
    up = upsample(eng, xs, size, mode, ac)
    return eng.reveal(cat([up, ys], 1), to=0)


@pytest.mark.parametrize("h,size,mode,ac", [
    (8, [32, 32], "bilinear", False), (1, [8, 8], "bilinear", False),
    (3, [7, 7], "bilinear", False), (4, [9, 9], "bilinear", True), (4, [8, 8], "nearest", None)])
def test_upsample_and_cat_on_shares_match_plaintext(h, size, mode, ac):
    x = torch.randn(2, 3, h, h, dtype=torch.float64) * 4
    other = torch.randn(2, 2, *size, dtype=torch.float64)
    out = run_in_memory(3, _up_program, x, size, mode, ac, other)[0]
    kw = {"align_corners": ac} if mode == "bilinear" else {}
    ref = torch.cat([F.interpolate(x, size=tuple(size), mode=mode, **kw), other], 1)
    # encoding (half a unit) plus one local truncation (one unit); when the map is not dyadic,
    # each of the <= 2 weights per row and axis is rounded by up to half a unit: <= 2 |x| units
    dyadic = dyadic_bits(interp_matrix(h, size[0], mode, ac), 12) < 12
    bound = 4 + (0 if dyadic else 2 * x.abs().max().item())
    assert (out - ref).abs().max().item() <= bound * 2.0 ** -12


@pytest.mark.parametrize("factory", [deeplabv3_resnet, deeplabv3_mobilenet])
def test_deeplabv3_secure_logits_match_plaintext(factory):
    torch.manual_seed(0)
    model = factory(input_size=16).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
            m.running_mean.normal_(0, 0.1)
    plan, weights = capture(model, (1, 16, 16))
    kinds = [op.kind for op in plan.ops]
    assert kinds.count("upsample") == 2 and "cat" in kinds
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        torch_ref = model(x).double()
    assert torch.allclose(run_plain(plan, weights, x.double()), torch_ref, atol=1e-4)
    out, ref = secure_logits(model, (1, 16, 16), x)
    assert out.shape == (1, 6, 16, 16)
    assert (out - ref).abs().max().item() <= 0.01 * (ref.abs().max().item() + 1.0)


class _Bicubic(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)


class _Functional(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def test_capture_interpolate_function_and_refusals():
    plan, _ = capture(_Functional(), (2, 4, 4))
    assert [(op.kind, op.params["size"]) for op in plan.ops] == [("upsample", [8, 8])]
    with pytest.raises(UnsupportedOpError, match="bicubic"):
        capture(_Bicubic(), (2, 4, 4))
