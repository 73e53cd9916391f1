"""One test body over every backend's artifacts: write, load back equal, then each corruption.

Each backend case writes its artifact through its own public function (``compile_model``,
``write_key`` / ``write_cloud``, ``EnclaveBundle.save`` / ``DeviceBundle.save``) and loads it
through its own loader; the corruptions are applied to the files on disk, so the test checks
the common reader (:mod:`secinfer.artifacts`) as every backend uses it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from secinfer.artifacts import MANIFEST
from secinfer.errors import ArtifactError, SecinferError

from ..stip import tiny


@dataclass
class Case:
    folder: Path
    load: Callable[[Path], Any]
    tensors: Callable[[Any], dict[str, torch.Tensor]]  # what must round-trip exactly
    secret: bool


def _mpc(tmp: Path, party: int) -> Case:
    from secinfer.models import zoo
    from secinfer.models.bundle import compile_model, load_bundle

    dirs = compile_model(zoo.build("lenet").eval(), (1, 28, 28), tmp / "b")

    def tensors(loaded: Any) -> dict[str, torch.Tensor]:
        plan, shares, manifest = loaded
        assert manifest["party"] == party and manifest["input_shape"] == [1, 28, 28]
        text = torch.tensor(list(plan.to_json().encode()), dtype=torch.uint8)
        return {"plan": text, **(shares or {})}

    return Case(dirs[party], lambda d: load_bundle(d, expect_party=party), tensors,
                secret=party != 2)


def _stip_key(tmp: Path) -> Case:
    from secinfer.stip import load_key, transform_model, write_key

    _, _, key = transform_model(tiny.bert_classifier())
    folder = write_key(tmp / "key", key)
    return Case(folder, load_key, lambda k: {**k.perms, **k.tables}, secret=True)


def _stip_cloud(tmp: Path) -> Case:
    from secinfer.stip import transform_model, write_cloud
    from secinfer.stip.cloud import load_cloud

    m = tiny.bert_classifier()
    state, cfg, key = transform_model(m)
    folder = write_cloud(tmp / "cloud", key.model_class, state, cfg)
    return Case(folder, load_cloud, lambda c: dict(c.model.state_dict()), secret=True)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flat(self.relu(self.conv(x))))


def _tee_enclave(tmp: Path) -> Any:
    from secinfer.tee import calibrate, capture_any, provision

    qm = calibrate(capture_any(_Net().eval(), (2, 6, 6)), [torch.randn(16, 2, 6, 6)])
    return provision(qm)


def _tee(tmp: Path, role: str) -> Case:
    from secinfer.tee import DeviceBundle, EnclaveBundle

    b = _tee_enclave(tmp)
    if role == "enclave":
        b.save(tmp / "enclave")

        def enc(e: Any) -> dict[str, torch.Tensor]:
            out = {f"w_q{i}": w for i, w in enumerate(e.model.w_q)}
            out.update({f"perm{i}": s.out_perm for i, s in enumerate(e.secrets)})
            return out

        return Case(tmp / "enclave", EnclaveBundle.load, enc, secret=True)
    b.device_bundle().save(tmp / "device")
    return Case(tmp / "device", DeviceBundle.load,
                lambda d: {f"w{i}": s.weight for i, s in enumerate(d.layers)}, secret=True)


CASES: dict[str, Callable[[Path], Case]] = {
    "mpc-server": lambda t: _mpc(t, 0),
    "mpc-helper": lambda t: _mpc(t, 2),
    "stip-key": _stip_key,
    "stip-cloud": _stip_cloud,
    "tee-enclave": lambda t: _tee(t, "enclave"),
    "tee-device": lambda t: _tee(t, "device"),
}


def _listed(folder: Path) -> list[str]:
    return sorted(json.loads((folder / MANIFEST).read_text())["files"])


def _edit_manifest(folder: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    m = json.loads((folder / MANIFEST).read_text())
    edit(m)
    (folder / MANIFEST).write_text(json.dumps(m))


def _refused(case: Case, folder: Path, match: str) -> None:
    with pytest.raises(ArtifactError, match=match) as info:
        case.load(folder)
    assert isinstance(info.value, SecinferError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("backend", sorted(CASES))
def test_artifact_round_trip_and_every_corruption(backend: str, tmp_path: Path) -> None:
    case = CASES[backend](tmp_path)
    first = case.tensors(case.load(case.folder))
    again = case.tensors(case.load(case.folder))
    assert first.keys() == again.keys() and first
    assert all(torch.equal(first[k], again[k]) for k in first)
    names = _listed(case.folder)
    # no staging folders are left beside the artifact; secrets are private to their owner
    assert not [p for p in case.folder.parent.iterdir() if p.name.startswith(".")]
    modes = {p.name: p.stat().st_mode & 0o777 for p in case.folder.iterdir()}
    assert set(modes) == {*names, MANIFEST}
    if case.secret:
        assert set(modes.values()) == {0o600}
        assert case.folder.stat().st_mode & 0o077 == 0

    pristine = tmp_path / "pristine"
    shutil.copytree(case.folder, pristine)

    def fresh() -> Path:
        shutil.rmtree(case.folder)
        shutil.copytree(pristine, case.folder)
        return case.folder

    for name in names:
        f = fresh() / name
        raw = bytearray(f.read_bytes())
        raw[len(raw) // 2 if name.endswith(".json") else -1] ^= 0x01  # one bit
        f.write_bytes(bytes(raw))
        _refused(case, case.folder, f"checksum mismatch for {name}")
        (fresh() / name).unlink()
        _refused(case, case.folder, f"file {name} listed in the manifest is missing")
        # a symlink is refused even to identical bytes: the link could later point anywhere
        f = fresh() / name
        f.unlink()
        f.symlink_to(pristine / name)
        _refused(case, case.folder, f"{name} is a symlink")

    (fresh() / "secret.txt").write_text("outside")

    def escape(m: dict[str, Any]) -> None:
        m["files"]["../secret.txt"] = "0" * 64

    _edit_manifest(case.folder, escape)
    _refused(case, case.folder, r"file outside its folder: '\.\./secret\.txt'")

    link = tmp_path / "linked"
    link.symlink_to(fresh(), target_is_directory=True)
    _refused(case, link, "is a symlink; give the artifact's real folder")

    (fresh() / MANIFEST).write_text('{"format": ')
    _refused(case, case.folder, r"manifest\.json is corrupt \(not valid JSON\)")
    _edit_manifest(fresh(), lambda m: m.update(comment="added by hand"))
    _refused(case, case.folder, "unknown manifest key.*comment")
    _edit_manifest(fresh(), lambda m: m.update(version=2))
    _refused(case, case.folder, "unknown format version 2")
    (fresh() / MANIFEST).unlink()
    _refused(case, case.folder, r"is not a .* artifact \(no manifest\.json\)")
    _refused(case, tmp_path / "absent", "absent is not an artifact: no such folder")

    last = case.tensors(case.load(fresh()))  # the pristine copy still loads, equal
    assert last.keys() == first.keys() and all(torch.equal(first[k], last[k]) for k in first)


def test_tee_flipped_weight_bit_is_refused_not_silently_loaded(tmp_path: Path) -> None:
    """Before the common format, a TEE bundle had no checksums: one flipped bit in an int8
    weight still parsed and loaded (the model was silently a different one). Show the flip is
    a valid-looking bundle to safetensors, and that the loader now refuses it."""
    from safetensors.torch import load as st_load

    from secinfer.tee import EnclaveBundle

    _tee_enclave(tmp_path).save(tmp_path / "enclave")
    f = tmp_path / "enclave" / "tensors.safetensors"
    good = st_load(f.read_bytes())
    raw = bytearray(f.read_bytes())
    header = 8 + int.from_bytes(raw[:8], "little")
    offsets = json.loads(raw[8:header])["w_q.0"]["data_offsets"]
    raw[header + offsets[0]] ^= 0x40  # one bit of the first int8 weight
    f.write_bytes(bytes(raw))
    bad = st_load(bytes(raw))  # parses fine: without a checksum nothing would notice
    assert bad.keys() == good.keys() and not torch.equal(bad["w_q.0"], good["w_q.0"])
    with pytest.raises(ArtifactError, match="checksum mismatch for tensors.safetensors"):
        EnclaveBundle.load(tmp_path / "enclave")


def test_writer_is_atomic_and_refuses_to_clobber(tmp_path: Path) -> None:
    from secinfer.artifacts import read_artifact, write_artifact
    from secinfer.errors import ArtifactExistsError

    d = write_artifact(tmp_path / "a", "demo", "test", "x", {"a.txt": b"one"}, {"k": 1})
    with pytest.raises(ArtifactExistsError, match="already holds an artifact"):
        write_artifact(d, "demo", "test", "x", {"a.txt": b"two"})
    write_artifact(d, "demo", "test", "x", {"b.txt": b"two"}, overwrite=True)
    art = read_artifact(d, "demo")
    assert sorted(os.listdir(d)) == ["b.txt", MANIFEST] and art.text("b.txt") == "two"
    assert art.meta == {} and art.backend == "test" and art.role == "x" and art.party is None
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    with pytest.raises(ArtifactError, match="holds other files; refusing to replace it"):
        write_artifact(tmp_path / "mine", "demo", "test", "x", {"a.txt": b"x"}, overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "a user's file"
    with pytest.raises(ArtifactError, match="outside its folder"):
        write_artifact(tmp_path / "c", "demo", "test", "x", {"../a.txt": b"x"})
    with pytest.raises(ArtifactError, match="expected 'other'"):
        read_artifact(d, "other")
    with pytest.raises(ArtifactError, match="is a 'x' artifact, not a 'y' one"):
        read_artifact(d, "demo", role="y")
    # a file swapped after the folder was checked is caught when it is read
    (d / "b.txt").write_bytes(b"TWO")
    with pytest.raises(ArtifactError, match="checksum mismatch for b.txt: changed after"):
        art.read_bytes("b.txt")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_failed_replace_keeps_the_old_artifact(tmp_path: Path, monkeypatch) -> None:
    from secinfer import artifacts

    d = artifacts.write_artifact(tmp_path / "a", "demo", "test", "x", {"a.txt": b"old"})
    real = os.rename

    def flaky(src: str | Path, dst: str | Path) -> None:
        if Path(dst) == d and ".tmp-" in Path(src).name:  # the new folder's move into place
            raise OSError("disk gone")
        real(src, dst)

    monkeypatch.setattr(artifacts.os, "rename", flaky)
    with pytest.raises(OSError, match="disk gone"):
        artifacts.write_artifact(d, "demo", "test", "x", {"a.txt": b"new"}, overwrite=True)
    assert artifacts.read_artifact(d, "demo").text("a.txt") == "old"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
