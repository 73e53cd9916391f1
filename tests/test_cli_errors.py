"""The CLI prints a SecinferError as one clear line and exits 2; --debug shows the traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from secinfer.cli import main
from secinfer.models import zoo
from secinfer.models.bundle import compile_model
from secinfer.net.topology import write_local_topology


@pytest.fixture
def corrupt(tmp_path: Path) -> tuple[Path, Path]:
    """A topology and P0's bundle with one bit of its weight shares flipped."""
    topo = write_local_topology(tmp_path / "t", ["server", "server", "helper", "user"])
    d = compile_model(zoo.build("lenet").eval(), (1, 28, 28), tmp_path / "b")[0]
    f = d / "weights.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0x01
    f.write_bytes(bytes(raw))
    return topo, d


def _argv(topo: Path, bundle: Path) -> list[str]:
    return ["serve", "--topology", str(topo), "--id", "0", "--bundle", str(bundle)]


def test_corrupt_artifact_is_one_clear_line_and_exit_2(corrupt, capsys, monkeypatch) -> None:
    monkeypatch.delenv("SECINFER_DEBUG", raising=False)
    assert main(_argv(*corrupt)) == 2
    err = capsys.readouterr().err
    assert err == (f"secinfer: error: {corrupt[1]}: checksum mismatch for "
                   "weights.safetensors: corrupted or replaced\n")
    with pytest.raises(ValueError, match="checksum mismatch"):  # --debug: the error itself
        main(["--debug", *_argv(*corrupt)])
    monkeypatch.setenv("SECINFER_DEBUG", "1")
    with pytest.raises(ValueError, match="checksum mismatch"):
        main(_argv(*corrupt))


def test_real_process_exit_status_and_no_traceback(corrupt) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SECINFER_DEBUG"}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "secinfer", *_argv(*corrupt)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("secinfer: error: ") and "weights.safetensors" in res.stderr
    res = subprocess.run(cmd, env={**env, "SECINFER_DEBUG": "1"}, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 1 and "Traceback" in res.stderr and "ArtifactError" in res.stderr


def test_version_names_secinfer_torch_and_python(capsys) -> None:
    import platform

    import torch

    import secinfer

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"secinfer {secinfer.__version__} ")
    assert torch.__version__ in out and platform.python_version() in out
