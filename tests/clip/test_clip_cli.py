"""``secinfer clip ...`` end to end on small subsets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secinfer.cli import main


@pytest.mark.slow
def test_cli_zeroshot_tinyclip_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "res.json"
    rc = main(["clip", "zeroshot", "--task", "fmnist-tinyclip", "--hidden_act", "sig",
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


def test_cli_secure_names_missing_engine_piece(capsys: pytest.CaptureFixture) -> None:
    rc = main(["clip", "zeroshot", "--task", "bbc", "--secure"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "--secure needs" in err and "secinfer" in err


def test_cli_rejects_unknown_choices() -> None:
    with pytest.raises(SystemExit):
        main(["clip", "zeroshot", "--task", "cifar"])
    with pytest.raises(SystemExit):
        main(["clip", "fewshot", "--task", "bbc", "--hidden_act", "relu"])
