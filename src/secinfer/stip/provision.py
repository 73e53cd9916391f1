"""Owner -> cloud / user distribution over the runtime: the cloud gets its model, the user its key.

A party program for ``secinfer party`` / ``local_cluster`` (roles ``owner``, ``cloud``,
``user`` in the topology)::

    cluster.run("secinfer.stip.provision:run", party_kwargs={
        0: {"cloud_dir": ..., "key_dir": ...},        # owner
        1: {"out_dir": ...},                          # cloud
        2: {"out_dir": ...}})                         # user

1. The owner checks both artifact folders (manifest kinds and checksums).
2. The owner sends every file of the cloud folder to the cloud only and of the key folder to
   the user only, over their mutually authenticated TLS links: a count, then per file its
   name, size and bytes in chunks (uint8 frames; nothing pickled).
3. The receiver writes the files to a private staging folder and re-checks the manifest: the
   kind it expects (a cloud must never receive a key) and every checksum; only then is the
   folder renamed into place.

Threat model: links are authenticated by the topology's certificates, so only the cloud gets
the transformed weights and only the user the permutations; the owner trusts both to keep what
they receive.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..artifacts import install, staging_dir
from ..errors import ArtifactExistsError
from .artifacts import MANIFEST, read_manifest
from .transform import CLOUD_KIND, KEY_KIND

__all__ = ["send_folder", "recv_folder", "run"]

_CHUNK = 1 << 26  # 64 MiB per frame keeps peak memory bounded for large models
_MAX_FILES = 64
_MAX_NAME = 255


def send_folder(session: Any, peer: int, folder: Path, kind: str) -> int:
    """Step 2 for one folder; returns the bytes of file content sent."""
    manifest = read_manifest(folder, kind)
    names = [*manifest["files"], MANIFEST]
    session.send(peer, torch.tensor([len(names)], dtype=torch.int64))
    total = 0
    for name in names:
        data = (folder / name).read_bytes()
        chunks = max(1, -(-len(data) // _CHUNK))
        session.send(peer, torch.tensor(list(name.encode()), dtype=torch.uint8))
        session.send(peer, torch.tensor([len(data), chunks], dtype=torch.int64))
        for i in range(chunks):
            part = data[i * _CHUNK:(i + 1) * _CHUNK]
            session.send(peer, torch.frombuffer(bytearray(part), dtype=torch.uint8)
                         if part else torch.empty(0, dtype=torch.uint8))
        total += len(data)
    return total


def recv_folder(session: Any, peer: int, out: Path, kind: str, timeout: float = 600.0) -> int:
    """Step 3: receive a folder into ``out`` (must not hold an artifact yet).

    The files land in a private staging folder beside ``out`` and are renamed into place only
    once the manifest and every checksum pass, so a failed transfer leaves nothing behind.
    """
    if (out / MANIFEST).exists():
        raise ArtifactExistsError(f"{out} already holds an artifact")
    n = int(session.recv(peer, timeout=timeout)[0])
    if not 0 < n <= _MAX_FILES:
        raise ValueError(f"the owner announced {n} files")
    tmp = staging_dir(out)
    total = 0
    try:
        for _ in range(n):
            total += _recv_file(session, peer, tmp, timeout)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    install(tmp, out, kind)
    return total


def _recv_file(session: Any, peer: int, folder: Path, timeout: float) -> int:
    raw = session.recv(peer, timeout=timeout)
    name = bytes(raw.tolist()).decode("utf-8", "replace")
    if (not name or len(name) > _MAX_NAME or "/" in name or "\\" in name
            or name.startswith(".")):
        raise ValueError(f"the owner sent a bad file name {name!r}")
    size, chunks = (int(v) for v in session.recv(peer, timeout=timeout))
    if size < 0 or chunks != max(1, -(-size // _CHUNK)):
        raise ValueError(f"{name}: bad size {size} / chunk count {chunks}")
    got = 0
    # O_EXCL: a name sent twice must not overwrite the first copy after it was counted;
    # 0600: both STIP artifacts are secret
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    with os.fdopen(os.open(folder / name, flags, 0o600), "wb") as fh:
        for _ in range(chunks):
            part = session.recv(peer, timeout=timeout)
            fh.write(part.numpy().tobytes())
            got += part.numel()
    if got != size:
        raise ValueError(f"{name}: received {got} bytes, announced {size}")
    return got


def run(
    session: Any,
    cloud_dir: str | None = None,
    key_dir: str | None = None,
    out_dir: str | None = None,
) -> dict[str, torch.Tensor]:
    """The party program: dispatch on this party's role (``owner``, ``cloud`` or ``user``)."""
    topo = session.transport.topology
    role = session.role
    cloud_id = topo.by_role("cloud")[0].id
    user_id = topo.by_role("user")[0].id
    owner_id = topo.by_role("owner")[0].id
    if role == "owner":
        if cloud_dir is None or key_dir is None:
            raise ValueError("the owner needs cloud_dir and key_dir")
        with session.op("stip_provision"):
            a = send_folder(session, cloud_id, Path(cloud_dir), CLOUD_KIND)
            b = send_folder(session, user_id, Path(key_dir), KEY_KIND)
        return {"bytes": torch.tensor([a, b], dtype=torch.int64)}
    if role in ("cloud", "user"):
        if out_dir is None:
            raise ValueError(f"the {role} needs out_dir")
        kind = CLOUD_KIND if role == "cloud" else KEY_KIND
        with session.op("stip_provision"):
            got = recv_folder(session, owner_id, Path(out_dir), kind)
        return {"bytes": torch.tensor([got], dtype=torch.int64)}
    raise ValueError(f"STIP provisioning has no role {role!r} (expected owner, cloud, user)")
