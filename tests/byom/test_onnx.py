"""ONNX in: a corpus model exported to ONNX by torch, converted back and compiled for mpc."""

import pytest
import torch

from secinfer.models.capture import capture
from secinfer.models.onnx_import import load_onnx

from ._secure import secure_vs_plain
from .corpus import build


@pytest.mark.parametrize("name", ["resnet", "squeeze_excite"])
def test_onnx_export_of_corpus_model_compiles_and_matches(name, tmp_path):
    torch.set_num_threads(1)
    model, shape = build(name)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(5))
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (x[:1],), str(path), dynamo=False, opset_version=17)
    plan, weights = capture(load_onnx(path), shape, frac_bits=16)
    with torch.no_grad():
        ref = model.double()(x.double())
    out, plain = secure_vs_plain(plan, weights, x)
    assert torch.allclose(plain, ref, atol=1e-6)  # float32 ONNX weights
    err = (out - ref).abs().max().item()
    print(f"onnx {name}: {len(plan.ops)} ops, max logit error {err:.2e}")
    assert err <= 0.02 * (ref.abs().max().item() + 1.0)
    assert torch.equal(out.argmax(-1), ref.argmax(-1))
