"""Static check: every import inside ``secinfer`` runs down the layers, never up or sideways
into a cycle. Parsed from the source (function-level imports included), so a lazy import that
would run back up is caught too."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "secinfer"

# lower numbers are lower layers; a package may import only packages of a lower layer
LAYERS: dict[str, int] = {
    "errors": 0,
    "artifacts": 1, "ring": 1, "data": 1,
    "net": 2,
    "mpc": 3,
    "models": 4,
    "knapsack": 5, "transformer": 5, "tee": 5, "stip": 5,
    "seclmm": 6, "serve": 6,
    "seg": 7, "gateway": 7,
    "api": 8,
    "cli": 9,
    "__main__": 10, "__init__": 10,
}


def _imports() -> list[tuple[str, str, str]]:
    """(importing package, imported package, file) for every cross-package import."""
    out = []
    for f in SRC.rglob("*.py"):
        rel = f.relative_to(SRC)
        pkg = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        mod = ["secinfer", *rel.with_suffix("").parts]
        if mod[-1] == "__init__":
            mod = mod[:-1]
        for node in ast.walk(ast.parse(f.read_text())):
            targets: list[list[str]] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    keep = len(mod) - node.level + (1 if f.name == "__init__.py" else 0)
                    targets.append(mod[:keep] + (node.module.split(".") if node.module else []))
                else:
                    targets.append((node.module or "").split("."))
            elif isinstance(node, ast.Import):
                targets.extend(a.name.split(".") for a in node.names)
            for t in targets:
                if t[0] == "secinfer" and len(t) > 1 and t[1] != pkg:
                    out.append((pkg, t[1], str(rel)))
    return out


def test_every_package_has_a_layer() -> None:
    pkgs = {p.name if p.is_dir() else p.stem for p in SRC.iterdir()
            if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"}
    assert pkgs - set(LAYERS) == set(), "give each new package a layer in LAYERS"


def test_no_import_runs_back_up_the_layers() -> None:
    up = [f"{f}: {a} (layer {LAYERS[a]}) imports {b} (layer {LAYERS[b]})"
          for a, b, f in _imports() if LAYERS[b] >= LAYERS[a]]
    assert not up, "\n".join(sorted(set(up)))


def test_the_check_sees_imports() -> None:
    edges = {(a, b) for a, b, _ in _imports()}
    # known downward edges: the check would pass vacuously if it parsed nothing
    assert ("mpc", "ring") in edges and ("serve", "net") in edges and ("tee", "models") in edges
