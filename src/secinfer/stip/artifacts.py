"""STIP's two artifacts on the common format (:mod:`secinfer.artifacts`), tensors as safetensors.

Both STIP artifacts use this layout — the cloud's transformed model and the user's key — so
neither is ever pickled and a corrupted or swapped file is caught before it is used::

    <folder>/manifest.json        the common manifest: format (kind), role, files, meta
    <folder>/<name>.safetensors   tensors
    <folder>/config.json          (cloud model only) the transformers config

The cloud folder is also a plain transformers folder (``config.json`` + ``model.safetensors``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import artifacts as common
from ..artifacts import MANIFEST, sha256_file
from ..errors import ArtifactError

__all__ = ["ArtifactError", "CLOUD_KIND", "KEY_KIND", "MANIFEST", "sha256_file",
           "write_artifact", "read_manifest", "read_artifact"]

CLOUD_KIND = "secinfer-stip-cloud"
KEY_KIND = "secinfer-stip-key"
# who holds each kind; both are secret: the key un-permutes, the cloud model is the owner's
_ROLES = {CLOUD_KIND: "cloud", KEY_KIND: "user"}


def write_artifact(
    folder: str | Path,
    kind: str,
    tensors: dict[str, dict[str, torch.Tensor]],
    texts: dict[str, str] | None = None,
    meta: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``tensors[file_stem]`` as ``<file_stem>.safetensors`` and ``texts`` verbatim.

    Returns the folder. Refuses to overwrite an existing artifact unless ``overwrite``.
    """
    files = {f"{stem}.safetensors": common.tensor_bytes(group) for stem, group in tensors.items()}
    files.update({name: text.encode() for name, text in (texts or {}).items()})
    return common.write_artifact(folder, kind, "stip", _ROLES.get(kind, kind), files,
                                 meta or {}, secret=True, overwrite=overwrite)


def read_manifest(folder: str | Path, kind: str) -> dict[str, Any]:
    """Load and check the manifest: right kind, every listed file present with its checksum."""
    return common.read_artifact(folder, kind).manifest()


def read_artifact(
    folder: str | Path, kind: str
) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """Checked manifest plus every safetensors file it lists, as ``{stem: tensors}``."""
    art = common.read_artifact(folder, kind)
    groups = {name[: -len(".safetensors")]: art.tensors(name)
              for name in art.files if name.endswith(".safetensors")}
    return art.manifest(), groups
