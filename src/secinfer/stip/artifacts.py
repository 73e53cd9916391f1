"""Folders of tensors on disk: safetensors files plus a JSON manifest with SHA-256 checksums.

Both STIP artifacts use this layout — the cloud's transformed model and the user's key — so
neither is ever pickled and a corrupted or swapped file is caught before it is used::

    <folder>/manifest.json        {"format": ..., "files": {name: sha256}, "meta": {...}}
    <folder>/<name>.safetensors   tensors
    <folder>/config.json          (cloud model only) the transformers config
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..files import read_json_manifest, sha256_file, verify_listed_files

__all__ = ["ArtifactError", "sha256_file", "write_artifact", "read_manifest", "read_artifact"]

MANIFEST = "manifest.json"


class ArtifactError(ValueError):
    """An artifact folder is missing, incomplete, of the wrong kind or fails its checksums."""


def write_artifact(
    folder: str | Path,
    kind: str,
    tensors: dict[str, dict[str, torch.Tensor]],
    texts: dict[str, str] | None = None,
    meta: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``tensors[file_stem]`` as ``<file_stem>.safetensors`` and ``texts`` verbatim.

    Returns the folder. Refuses to overwrite an existing manifest unless ``overwrite``.
    """
    folder = Path(folder)
    if (folder / MANIFEST).exists() and not overwrite:
        raise FileExistsError(f"{folder} already holds an artifact; pass overwrite=True")
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for stem, group in tensors.items():
        name = f"{stem}.safetensors"
        clean = {k: v.detach().cpu().contiguous() for k, v in group.items()}
        save_file(clean, str(folder / name), metadata={"format": "pt"})
        files[name] = sha256_file(folder / name)
    for name, text in (texts or {}).items():
        (folder / name).write_text(text)
        files[name] = sha256_file(folder / name)
    manifest = {"format": kind, "files": files, "meta": meta or {}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    return folder


def read_manifest(folder: str | Path, kind: str) -> dict[str, Any]:
    """Load and check the manifest: right kind, every listed file present with its checksum."""
    folder = Path(folder)
    manifest = read_json_manifest(folder / MANIFEST, ArtifactError,
                                  f"{folder} is not a STIP artifact folder (no {MANIFEST})")
    if not isinstance(manifest, dict) or manifest.get("format") != kind:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise ArtifactError(f"{folder} holds a {got!r} artifact, expected {kind!r}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{folder / MANIFEST} lists no files")
    verify_listed_files(folder, files, ArtifactError)
    return manifest


def read_artifact(
    folder: str | Path, kind: str
) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """Checked manifest plus every safetensors file it lists, as ``{stem: tensors}``."""
    folder = Path(folder)
    manifest = read_manifest(folder, kind)
    groups = {
        name[: -len(".safetensors")]: load_file(str(folder / name))
        for name in manifest["files"]
        if name.endswith(".safetensors")
    }
    return manifest, groups
