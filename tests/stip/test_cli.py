"""``secinfer stip transform`` on a local Hugging Face folder, and the package's public API."""

from __future__ import annotations

import torch

import secinfer.stip as stip
from secinfer.cli import main

from . import tiny


def test_public_api_names_exist() -> None:
    assert stip.__all__ and all(hasattr(stip, n) for n in stip.__all__)


@torch.inference_mode()
def test_transform_command_writes_working_artifacts(tmp_path, capsys) -> None:
    m = tiny.bert_classifier()
    m.save_pretrained(tmp_path / "hf")
    rc = main(["stip", "transform", "--model", str(tmp_path / "hf"), "--cloud-out",
               str(tmp_path / "cloud"), "--key-out", str(tmp_path / "key")])
    assert rc == 0
    assert "BertForSequenceClassification" in capsys.readouterr().out
    user = stip.StipUser(stip.load_key(tmp_path / "key"),
                         stip.LocalLink(stip.load_cloud(tmp_path / "cloud")))
    ids = torch.randint(0, 120, (2, 9))
    ref = m(input_ids=ids).logits
    assert float((user.classify(ids) - ref).abs().max() / ref.abs().max()) < 1e-5
    # a second run must not silently overwrite the artifacts
    assert main(["stip", "transform", "--model", str(tmp_path / "hf"), "--cloud-out",
                 str(tmp_path / "cloud"), "--key-out", str(tmp_path / "key")]) == 2
    assert "already holds an artifact" in capsys.readouterr().err
