"""``secinfer experiments clip ...`` end to end on small subsets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secinfer.cli import main

_CLIP = ["experiments", "clip"]


@pytest.mark.slow
def test_cli_zeroshot_tinyclip_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "res.json"
    rc = main([*_CLIP, "zeroshot", "--task", "fmnist-tinyclip", "--hidden_act", "sig",
               "--softmax_act", "quant", "--train-per-class", "30", "--test-per-class", "10",
               "--clip-train-steps", "40", "--episodes", "2", "--seed", "3", "--threads", "1",
               "--save", str(tmp_path / "tiny"), "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert len(res) == 1 and res[0]["label"] == "sig+quant" and res[0]["n_test"] == 100
    before = res[0]["before"]
    assert 0.0 <= before["zeroshot"] <= 1.0 and before["fewshot_n_way"] == 10
    assert "after" not in res[0]
    assert (tmp_path / "tiny" / "model.safetensors").is_file()
    assert "| sig+quant" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_secure_tinyclip_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "res.json"
    rc = main([*_CLIP, "zeroshot", "--task", "fmnist-tinyclip", "--train-per-class", "30",
               "--test-per-class", "5", "--clip-train-steps", "40", "--episodes", "2",
               "--seed", "4", "--threads", "1", "--secure", "--secure-limit", "8",
               "--json", str(out)])
    assert rc == 0
    sec = json.loads(out.read_text())[0]["secure"]
    assert sec["n"] == 8 and len(sec["indices"]) == 8 and sec["when"] == "before"
    assert 0.0 <= sec["plaintext_acc"] <= 1.0 and 0.0 <= sec["secure_acc"] <= 1.0
    assert sec["agreement"] >= 0.75  # a flip needs two classes within ~0.05 of a logit
    assert sec["min_cosine_image"] >= 0.999 and sec["min_cosine_text"] >= 0.999
    assert sec["bytes_inference"] > 0 and sec["seconds"] > 0
    text = capsys.readouterr().out
    assert "8 test examples on shares" in text and "agreement" in text


@pytest.mark.slow
def test_cli_secure_bbc_zeroshot_and_probe(tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bbc.json"
    rc = main([*_CLIP, "fewshot", "--task", "bbc", "--train-per-class", "4",
               "--test-per-class", "2", "--max-length", "16", "--episodes", "1",
               "--k-shot", "2", "--seed", "2", "--threads", "1", "--secure",
               "--secure-limit", "2", "--json", str(out)])
    assert rc == 0
    sec = json.loads(out.read_text())[0]["secure"]
    assert sec["n"] == 2 and sec["max_length"] == 16
    assert sec["min_cosine"] >= 0.99
    for name in ("zeroshot", "probe"):
        assert set(sec[name]) == {"plaintext_acc", "secure_acc", "agreement"}
    assert "probe    plaintext" in capsys.readouterr().out


def test_cli_secure_limit_must_be_positive(capsys: pytest.CaptureFixture) -> None:
    rc = main([*_CLIP, "zeroshot", "--task", "bbc", "--secure", "--secure-limit", "0"])
    assert rc == 1
    assert "--secure-limit must be positive" in capsys.readouterr().err


def test_cli_rejects_unknown_choices() -> None:
    with pytest.raises(SystemExit):
        main([*_CLIP, "zeroshot", "--task", "cifar"])
    with pytest.raises(SystemExit):
        main([*_CLIP, "fewshot", "--task", "bbc", "--hidden_act", "relu"])
