"""Public API and command-line surface of the enclave split."""

from __future__ import annotations

from pathlib import Path

import pytest

import secinfer.tee as tee
from secinfer.cli import build_parser, main


def test_exported_members_exist() -> None:
    for name in tee.__all__:
        assert hasattr(tee, name), name
    assert len(set(tee.__all__)) == len(tee.__all__)


def test_cli_parses_every_tee_command() -> None:
    p = build_parser()
    a = p.parse_args(["tee", "device", "--topology", "t.toml", "--id", "1", "--bundle", "b",
                      "--fault", "noise"])
    assert a.role == "device" and a.peer == 0 and a.fault == "noise"
    a = p.parse_args(["tee", "provision", "--out", "d"])
    assert a.weights is None and a.reduce_range == 0  # default: the shipped weights
    for cmd in ("provision", "enclave", "device"):
        with pytest.raises(SystemExit):  # each one requires its arguments
            p.parse_args(["tee", cmd])
    for cmd in ("train", "rsweep", "run", "faults", "steal"):  # research: experiments tee
        with pytest.raises(SystemExit):
            p.parse_args(["tee", cmd])


def test_cli_missing_files_are_clear_errors(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["tee", "provision", "--weights", str(tmp_path / "nope.safetensors"),
               "--out", str(tmp_path)])
    assert rc == 1
    assert "nope.safetensors not found" in capsys.readouterr().err
