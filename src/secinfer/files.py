"""File helpers shared by every artifact format (bundles, STIP artifacts)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["read_json_manifest", "sha256_file", "verify_listed_files"]


def read_json_manifest(path: Path, error: type[Exception], missing: str) -> Any:
    """Parse a manifest file; ``error(missing)`` when it is absent, ``error`` naming the file
    and the parse error when it is not JSON."""
    if not path.is_file():
        raise error(missing)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{path} is corrupt (not valid JSON): {e}") from e


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_listed_files(folder: Path, files: Mapping[str, str],
                        error: type[Exception] = ValueError) -> None:
    """Check that every file a manifest lists sits in ``folder`` with its SHA-256.

    Names that would leave the folder are refused, so a manifest cannot point elsewhere.
    """
    for name, digest in files.items():
        if "/" in name or "\\" in name or name.startswith("."):
            raise error(f"{folder}: manifest lists a file outside its folder: {name!r}")
        f = folder / name
        if not f.is_file():
            raise error(f"{folder}: file {name} listed in the manifest is missing")
        if sha256_file(f) != digest:
            raise error(f"{folder}: checksum mismatch for {name}: corrupted or replaced")
