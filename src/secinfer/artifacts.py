"""One on-disk artifact format for every backend (MPC bundles, STIP folders, TEE bundles).

An artifact is a folder of plain files plus ``manifest.json``::

    {"format": "secinfer-mpc-bundle", "version": 1, "backend": "mpc", "role": "server",
     "party": 0, "meta": {...}, "files": {"plan.json": "<sha256>", ...}}

:func:`write_artifact` builds the folder in a temporary sibling and renames it into place, so a
reader never sees half an artifact; secret artifacts get mode 0600 files in a 0700 folder.
:func:`read_artifact` checks the manifest strictly (unknown keys and versions are refused, not
ignored: a newer writer's fields must not be silently dropped) and the SHA-256 of every listed
file; each failure is an :class:`~secinfer.errors.ArtifactError` naming the folder and the file.
Symlinks are refused, the folder itself and every entry: a link could swap in a file the
manifest's author never hashed, or point outside the folder. Files are read again, and their
checksums checked again, when a format loads them (:meth:`Artifact.read_bytes`), so what is
parsed is exactly what was hashed. Tensors are safetensors (nothing is pickled).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from .errors import ArtifactError, ArtifactExistsError

__all__ = ["Artifact", "MANIFEST", "VERSION", "read_artifact", "inspect_artifact", "write_artifact",
           "tensor_bytes", "sha256_file", "staging_dir", "install"]

MANIFEST = "manifest.json"
VERSION = 1
_KEYS = {"format", "version", "backend", "role", "party", "meta", "files"}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Artifact:
    """A checked artifact folder: the manifest's fields; files are read on demand."""

    folder: Path
    format: str
    version: int
    backend: str
    role: str
    party: int | None
    meta: dict[str, Any]
    files: dict[str, str]

    def read_bytes(self, name: str) -> bytes:
        """The content of a listed file, checked against its SHA-256 again."""
        if name not in self.files:
            raise ArtifactError(f"{self.folder}: the manifest lists no file {name}")
        fd = _open(self.folder, name)
        with os.fdopen(fd, "rb") as fh:
            data = fh.read()
        if hashlib.sha256(data).hexdigest() != self.files[name]:
            raise ArtifactError(f"{self.folder}: checksum mismatch for {name}: "
                                "changed after it was checked")
        return data

    def text(self, name: str) -> str:
        try:
            return self.read_bytes(name).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ArtifactError(f"{self.folder}: {name} is not UTF-8 text: {e}") from e

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        try:
            return _st_load(self.read_bytes(name))
        except SafetensorError as e:
            raise ArtifactError(f"{self.folder}: {name} is unreadable: {e}") from e

    def manifest(self) -> dict[str, Any]:
        """The manifest's fields as a plain dict (for callers that keep one around)."""
        return {"format": self.format, "version": self.version, "backend": self.backend,
                "role": self.role, "party": self.party, "meta": self.meta,
                "files": dict(self.files)}


def tensor_bytes(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """Safetensors bytes of ``tensors`` (copied to contiguous CPU memory, no shared storage)."""
    return _st_save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()},
                    metadata={"format": "pt"})


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_name(folder: Path, name: object) -> str:
    # one plain name per file: no separators, no dot files ('..' included), not the manifest
    if (not isinstance(name, str) or not name or "/" in name or "\\" in name or "\0" in name
            or name.startswith(".") or name == MANIFEST):
        raise ArtifactError(f"{folder}: manifest lists a file outside its folder: {name!r}")
    return name


def _open(folder: Path, name: str) -> int:
    """A read-only descriptor of ``folder/name``; refuses symlinks and non-regular files."""
    try:
        fd = os.open(folder / name, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        what = "is missing" if name == MANIFEST else "listed in the manifest is missing"
        raise ArtifactError(f"{folder}: file {name} {what}") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ArtifactError(f"{folder}: {name} is a symlink; artifacts hold only "
                                "regular files") from None
        raise ArtifactError(f"{folder}: cannot read {name}: {e.strerror}") from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ArtifactError(f"{folder}: {name} is not a regular file")
    return fd


def _check_folder(folder: Path) -> None:
    if folder.is_symlink():
        raise ArtifactError(f"{folder} is a symlink; give the artifact's real folder")
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is not an artifact: no such folder")


def _parse_manifest(folder: Path, expected: str) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_symlink() and not path.exists():
        raise ArtifactError(f"{folder} is not a {expected} artifact (no {MANIFEST})")
    with os.fdopen(_open(folder, MANIFEST), "rb") as fh:
        raw = fh.read()
    try:
        m = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{folder / MANIFEST} is corrupt (not valid JSON): {e}") from e
    if not isinstance(m, dict):
        raise ArtifactError(f"{folder / MANIFEST} is corrupt: not a JSON object")
    if m.get("version") != VERSION:
        raise ArtifactError(f"{folder / MANIFEST}: unknown format version {m.get('version')!r} "
                            f"(this secinfer reads version {VERSION})")
    unknown, missing = sorted(set(m) - _KEYS), sorted(_KEYS - set(m))
    if unknown:
        raise ArtifactError(f"{folder / MANIFEST}: unknown manifest key(s) {', '.join(unknown)}")
    if missing:
        raise ArtifactError(f"{folder / MANIFEST}: missing manifest key(s) {', '.join(missing)}")
    return m


def read_artifact(folder: str | Path, format: str, role: str | None = None) -> Artifact:
    """Check the artifact in ``folder``: its manifest, kind, role and every file's SHA-256."""
    folder = Path(folder)
    _check_folder(folder)
    m = _parse_manifest(folder, format)
    if m["format"] != format:
        raise ArtifactError(f"{folder} holds a {m['format']!r} artifact, expected {format!r}")
    if role is not None and m["role"] != role:
        raise ArtifactError(f"{folder} is a {m['role']!r} artifact, not a {role!r} one")
    files, meta, party = m["files"], m["meta"], m["party"]
    if (not isinstance(files, dict) or not files or not isinstance(meta, dict)
            or not isinstance(m["backend"], str) or not isinstance(m["role"], str)
            or not (party is None or (isinstance(party, int) and not isinstance(party, bool)))):
        raise ArtifactError(f"{folder / MANIFEST} is corrupt: a field has the wrong type")
    for name, digest in files.items():
        _check_name(folder, name)
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ArtifactError(f"{folder / MANIFEST}: {name} has no valid SHA-256")
        h = hashlib.sha256()
        with os.fdopen(_open(folder, name), "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                h.update(chunk)
        if h.hexdigest() != digest:
            raise ArtifactError(f"{folder}: checksum mismatch for {name}: corrupted or replaced")
    return Artifact(folder, format, VERSION, m["backend"], m["role"], party, meta, dict(files))


def inspect_artifact(folder: str | Path) -> Artifact:
    """Check an artifact of any format (every check of :func:`read_artifact`); for the one
    ``serve`` that dispatches on what the folder holds."""
    folder = Path(folder)
    _check_folder(folder)
    fmt = _parse_manifest(folder, "secinfer").get("format")
    if not isinstance(fmt, str):
        raise ArtifactError(f"{folder / MANIFEST} is corrupt: format is not a string")
    return read_artifact(folder, fmt)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _check_target(folder: Path, overwrite: bool) -> None:
    """Refuse to replace anything but an empty folder or (with ``overwrite``) an artifact."""
    if folder.is_symlink():
        raise ArtifactError(f"{folder} is a symlink; refusing to write an artifact there")
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ArtifactError(f"{folder} exists and is not a folder")
    if (folder / MANIFEST).exists():
        if not overwrite:
            raise ArtifactExistsError(f"{folder} already holds an artifact; pass overwrite=True")
    elif any(folder.iterdir()):
        raise ArtifactError(f"{folder} holds other files; refusing to replace it")


def write_artifact(folder: str | Path, format: str, backend: str, role: str,
                   files: Mapping[str, bytes], meta: Mapping[str, Any] | None = None,
                   party: int | None = None, secret: bool = False,
                   overwrite: bool = False) -> Path:
    """Write ``files`` (name -> bytes) and their manifest as the folder ``folder``.

    ``secret``: every file mode 0600 and the folder 0700 (weight shares, keys, permutations).
    ``overwrite`` replaces an existing artifact; a folder with other content is never replaced.
    """
    folder = Path(folder)
    if not files:
        raise ArtifactError(f"{folder}: an artifact needs at least one file")
    for name in files:
        _check_name(folder, name)
    _check_target(folder, overwrite)
    manifest = {"format": format, "version": VERSION, "backend": backend, "role": role,
                "party": party, "meta": dict(meta or {}),
                "files": {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}}
    text = json.dumps(manifest, indent=2, sort_keys=True)
    tmp = staging_dir(folder)
    try:
        mode = 0o600 if secret else 0o644
        for name, data in files.items():
            _write_file(tmp / name, data, mode)
        _write_file(tmp / MANIFEST, text.encode(), mode)
        os.chmod(tmp, 0o700 if secret else 0o755)
        _replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def staging_dir(folder: str | Path) -> Path:
    """A fresh private (0700) folder beside ``folder`` to build or receive an artifact in."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))


def install(tmp: Path, folder: str | Path, format: str, role: str | None = None,
            overwrite: bool = False) -> Artifact:
    """Check the artifact built in ``tmp`` (see :func:`staging_dir`), then rename it to
    ``folder``; ``tmp`` is removed if it fails (files received from a peer, for example)."""
    folder = Path(folder)
    try:
        read_artifact(tmp, format, role)
        _check_target(folder, overwrite)
        _replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return read_artifact(folder, format, role)


def _replace(tmp: Path, folder: Path) -> None:
    # rename(2) is atomic but cannot replace a non-empty folder: move the old one aside first
    # (a reader in between finds no folder, never a mixture of old and new files)
    if not folder.exists():
        os.rename(tmp, folder)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
    os.rename(folder, old / "a")
    try:
        os.rename(tmp, folder)
    except BaseException:
        os.rename(old / "a", folder)  # put the old artifact back rather than lose both
        os.rmdir(old)
        raise
    shutil.rmtree(old, ignore_errors=True)
