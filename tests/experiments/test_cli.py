"""``secinfer experiments ...``: the verbs parse, load the repository's experiments/ lazily,
and fail with one clear line where that folder is absent (secinfer installed without the repo).
Product code never imports the experiments."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from secinfer.cli import build_parser, main
from secinfer.cli import experiments as cli_experiments

REPO = Path(__file__).resolve().parents[2]


def test_experiment_verbs_parse() -> None:
    p = build_parser()
    a = p.parse_args(["experiments", "tee", "faults", "--trials", "50"])
    assert a.trials == 50 and a.triples == 2 and a.checksums == 2
    a = p.parse_args(["experiments", "clip", "zeroshot", "--task", "bbc"])
    assert a.clip_action == "zeroshot" and a.hidden_act == "gelu"
    for cmd in ("train", "rsweep", "run", "steal"):
        with pytest.raises(SystemExit):  # each one requires its arguments
            p.parse_args(["experiments", "tee", cmd])
    with pytest.raises(SystemExit):  # the research verbs left the product groups
        p.parse_args(["clip", "zeroshot", "--task", "bbc"])


def test_load_finds_the_repository_folder() -> None:
    mod = cli_experiments.load("tee_experiments")
    assert Path(mod.__file__).resolve() == REPO / "experiments" / "tee_experiments.py"
    assert callable(mod.fault_campaign)


def test_absent_folder_is_one_clear_error(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setattr(cli_experiments, "_roots", lambda: [tmp_path])
    monkeypatch.delenv("SECINFER_DEBUG", raising=False)
    assert main(["experiments", "tee", "faults", "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("secinfer: error: secinfer experiments needs the repository's "
                          "experiments/ folder") and str(tmp_path) in err


def test_installed_without_the_repository(tmp_path: Path) -> None:
    """A copy of the package alone (as pip installs it): the verb exits 2 with the message."""
    site = tmp_path / "site"
    shutil.copytree(REPO / "src" / "secinfer", site / "secinfer",
                    ignore=shutil.ignore_patterns("__pycache__", "assets"))
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("SECINFER_DEBUG", None)
    res = subprocess.run([sys.executable, "-m", "secinfer", "experiments", "tee", "faults",
                          "--trials", "1"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "needs the repository's experiments/ folder" in res.stderr
    assert "Traceback" not in res.stderr


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_product_code_never_imports_the_experiments() -> None:
    src = REPO / "src" / "secinfer"
    bad = [str(p.relative_to(src)) for p in src.rglob("*.py")
           if any(n == "experiments" or n.startswith("experiments.") for n in _imports(p))]
    assert not bad, f"product modules importing experiments/: {bad}"
    for gone in ("clip/experiments.py", "tee/experiments.py", "tee/desim.py", "tee/faults.py"):
        assert not (src / gone).exists(), f"{gone} belongs in experiments/"
    assert {p.name for p in (REPO / "experiments").glob("*.py")} >= {
        "clip_experiments.py", "tee_experiments.py", "tee_desim.py", "tee_faults.py"}
