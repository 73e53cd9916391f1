"""`secinfer tee provision --model ... --data ...`: a user's MNIST-style model, trained here
on the 8x8 digits, provisioned from the command line; the split over two processes reports the
accuracy of the user's own test file, and a data file of another shape is refused."""

import json

import pytest
import torch
from safetensors.torch import save_file

from secinfer.cli import main
from secinfer.tee.programs import two_party

from .corpus import DigitsNet

pytest.importorskip("sklearn")


def _train(x, y):
    torch.manual_seed(0)
    model = DigitsNet()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(40):
        for s in range(0, len(x), 256):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[s:s + 256]), y[s:s + 256]).backward()
            opt.step()
    return model.eval()


@pytest.mark.network
def test_tee_on_a_user_model_reports_the_users_test_file(tmp_path, capsys):
    torch.set_num_threads(1)
    from secinfer.data.digits import load_digits

    x, y = load_digits()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    xtr, ytr, xte, yte = x[:1500], y[:1500], x[1500:], y[1500:]
    model = _train(xtr, ytr)
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    save_file({"x": xtr[:256].contiguous()}, str(tmp_path / "cal.safetensors"))
    save_file({"x": xte.contiguous(), "y": yte.contiguous()}, str(tmp_path / "test.safetensors"))
    save_file({"x": torch.zeros(4, 1, 28, 28), "y": torch.zeros(4, dtype=torch.int64)},
              str(tmp_path / "mnist.safetensors"))
    base = ["tee", "provision", "--model", "tests.byom.corpus:digits_cnn", "--weights",
            str(tmp_path / "w.safetensors"), "--input-shape", "1,8,8", "--calibration",
            str(tmp_path / "cal.safetensors")]
    assert main([*base, "--data", str(tmp_path / "mnist.safetensors"), "--out",
                 str(tmp_path / "bad")]) != 0
    assert "does not match the model's input" in capsys.readouterr().err
    assert main([*base, "--data", str(tmp_path / "test.safetensors"), "--out",
                 str(tmp_path / "b")]) == 0
    report = json.loads(capsys.readouterr().out)
    with torch.no_grad():
        plain = float((model(xte).argmax(1) == yte).double().mean()) * 100
    assert report["data_size"] == len(xte) and abs(report["float_accuracy"] - plain) < 1e-9
    assert report["float_accuracy"] > 85
    res, _costs, _wall = two_party(
        ("secinfer.tee.programs:enclave", {"bundle": str(tmp_path / "b" / "enclave"),
                                            "inputs": str(tmp_path / "test.safetensors"),
                                            "reference": True}),
        ("secinfer.tee.programs:device", {"bundle": str(tmp_path / "b" / "device")}))
    split = float((res["logits"].argmax(1) == res["labels"]).double().mean()) * 100
    print(f"tee user digits model: float {report['float_accuracy']:.2f}%, int8 "
          f"{report['int8_accuracy']:.2f}%, split over two processes {split:.2f}% on "
          f"{len(yte)} test images")
    assert torch.equal(res["logits"], res["reference"])
    assert abs(split - report["int8_accuracy"]) < 1e-9
