"""`secinfer compile` on user models: ONNX in, calibration refusals, the printed summary, and
one calibrated model served over the real three-process path."""


import pytest
import torch
from safetensors.torch import save_file

from secinfer.cli import main
from secinfer.models.bundle import load_bundle
from secinfer.serve.local import secure_eval

from .corpus import build
from .test_calibrate import _inputs, _model


def _cal_file(tmp_path):
    path = tmp_path / "cal.safetensors"
    save_file({"x": _inputs().contiguous()}, str(path))
    return path


def test_compile_refuses_wrapping_frac_bits_naming_the_layer(tmp_path, capsys):
    args = ["compile", "--model", "tests.byom.test_calibrate:_model", "--input-shape", "3,8,8",
            "--calibration", str(_cal_file(tmp_path))]
    assert main([*args, "--out", str(tmp_path / "a"), "--frac-bits", "24"]) != 0
    err = capsys.readouterr().err
    assert "layer 'conv1'" in err and "would wrap" in err and "frac_bits <= 23" in err
    assert main([*args, "--out", str(tmp_path / "b"), "--frac-bits", "28"]) != 0
    assert "1..24" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "c"), "--frac-bits", "20"]) == 0
    out = capsys.readouterr().out
    for line in ("comparisons per inference", "predicted bytes per inference",
                 "predicted rounds per inference",
                 "truncation exact", "valid input range [0.0, 255.0]", "conv1: max |value|"):
        assert line in out, line
    _, _, manifest = load_bundle(tmp_path / "c" / "party0")
    assert manifest["truncation"] == "exact" and manifest["input_range"] == [0.0, 255.0]
    assert manifest["calibration"]["ranges"]["conv1"] > 1000


def test_compile_takes_an_onnx_file(tmp_path, capsys):
    model, shape = build("vgg")
    path = tmp_path / "vgg.onnx"
    torch.onnx.export(model, (torch.randn(1, *shape),), str(path), dynamo=False,
                      opset_version=17)
    assert main(["compile", "--model", str(path), "--input-shape", "3,8,8", "--out",
                 str(tmp_path / "b"), "--frac-bits", "16"]) == 0
    out = capsys.readouterr().out
    assert "conv2d x2" in out and "comparisons per inference" in out


@pytest.mark.network
def test_calibrated_model_over_three_processes_agrees_on_all_50_raw_inputs():
    model, x = _model(), _inputs()
    with torch.no_grad():
        labels = model(x).argmax(-1)
    res = secure_eval(model, (3, 8, 8), x, labels, batch=50, frac_bits=20, calibration=x,
                      timeout=120)
    print(f"3-process f=20 exact: agreement {res.agreement:.2f}, max logit error "
          f"{res.max_abs_logit_error:.3g}")
    assert res.agreement == 1.0
    # the documented per-op costs predict every op's measured bytes (all parties, batch 50)
    from secinfer.models.capture import capture
    from secinfer.models.summary import op_bytes, op_rounds

    plan, _ = capture(model, (3, 8, 8), frac_bits=20)
    predicted = op_bytes(plan, "exact")
    for op in plan.ops:
        measured = sum(int(res.costs[p]["servers"].get(op.name, {}).get("bytes_sent", 0))
                       for p in range(3))
        assert measured == 50 * sum(predicted[op.name].values()), op.name
        rounds = op_rounds(plan, "exact")[op.name]
        assert rounds is not None
        assert res.costs[1]["servers"].get(op.name, {}).get("rounds", 0) == rounds, op.name
