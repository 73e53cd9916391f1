"""Provisioning: split an int8 model into what the device holds and what the enclave holds.

The model owner calls :func:`provision` once. The device bundle holds only int8 weights in the
secret per-layer row order and each layer's geometry (stride, padding, groups); the enclave
bundle holds everything else: the trusted-side program, scales, zero points, biases and the
permutations. On disk each bundle is a folder in the common artifact format
(:mod:`secinfer.artifacts`): ``tensors.safetensors`` plus ``manifest.json`` with its SHA-256 and
the bundle's structure as metadata (no pickle). A flipped bit anywhere is refused at load: before
the checksums, one flipped weight bit loaded silently and cost accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..artifacts import read_artifact, tensor_bytes, write_artifact
from ..errors import ArtifactError
from ..mpc.prg import PRG
from .mask import LayerSecret, device_weight, draw_secrets
from .program import LinearSpec, Program, Step
from .quantize import ActQuant, QuantConfig, QuantModel
from .rand import permutation_prg

__all__ = ["DeviceBundle", "EnclaveBundle", "provision"]

_FORMAT = "secinfer-tee-bundle"
T = TypeVar("T")


def _geometry(layer: LinearSpec) -> dict[str, Any]:
    return {"kind": layer.kind, "stride": list(layer.stride), "padding": list(layer.padding),
            "dilation": list(layer.dilation), "groups": layer.groups}


def _spec(name: str, weight: torch.Tensor, bias: torch.Tensor, g: dict[str, Any]) -> LinearSpec:
    if g.get("kind") not in ("conv", "linear"):
        raise ValueError(f"layer {name!r}: unknown kind {g.get('kind')!r}")
    return LinearSpec(name, weight, bias, g["kind"], tuple(g["stride"]), tuple(g["padding"]),
                      tuple(g["dilation"]), int(g["groups"]))


_TENSORS = "tensors.safetensors"


def _read(path: Path, role: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if not path.exists() and path.with_suffix(".json").is_file():
        # the format before checksums: PATH.json + PATH.safetensors beside each other
        raise ArtifactError(f"{path.with_suffix('.json')} is a {role} bundle of the old format "
                            f"(no checksums); provision again to write the folder {path}")
    art = read_artifact(path, _FORMAT, role)
    if _TENSORS not in art.files:
        raise ArtifactError(f"{path}: the {role} bundle lists no {_TENSORS}")
    return art.meta, art.tensors(_TENSORS)


def _write(path: Path, role: str, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    # both are secret: the enclave's holds the permutations, the device's the owner's weights
    write_artifact(path, _FORMAT, "tee", role, {_TENSORS: tensor_bytes(tensors)}, meta,
                   secret=True, overwrite=True)


def _load(path: Path, role: str, build: Callable[[dict[str, Any], dict[str, torch.Tensor]], T],
          ) -> T:
    """Rebuild a bundle from its checked files; a manifest that passed its checksums can still
    be malformed (hand-written, or written by a buggy tool): name it instead of a KeyError."""
    meta, tensors = _read(path, role)
    try:
        return build(meta, tensors)
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise ArtifactError(f"{path}: malformed {role} bundle: {type(e).__name__}: {e}") from e


@dataclass
class DeviceBundle:
    """What the untrusted device holds: int8 weights (secretly permuted rows) and geometry."""

    layers: list[LinearSpec]  # weight is the int8 device weight; bias empty

    def save(self, path: str | Path) -> None:
        meta = {"layers": [_geometry(s) for s in self.layers]}
        _write(Path(path), "device", meta, {f"w.{i}": s.weight for i, s in enumerate(self.layers)})

    @classmethod
    def load(cls, path: str | Path) -> DeviceBundle:
        return _load(Path(path), "device", cls._build)

    @classmethod
    def _build(cls, meta: dict[str, Any], t: dict[str, torch.Tensor]) -> DeviceBundle:
        layers = []
        for i, g in enumerate(meta["layers"]):
            w = t[f"w.{i}"]
            if w.dtype != torch.int8:
                raise ValueError(f"device weight {i} must be int8, got {w.dtype}")
            layers.append(_spec(f"layer{i}", w, torch.empty(0), g))
        return cls(layers)


@dataclass
class EnclaveBundle:
    """What the enclave holds: the int8 model (scales, zero points, biases) and the secrets."""

    model: QuantModel
    secrets: list[LayerSecret]

    def device_bundle(self) -> DeviceBundle:
        layers = [
            LinearSpec(f"layer{i}", device_weight(self.model.w_q[i], s), torch.empty(0),
                       layer.kind, layer.stride, layer.padding, layer.dilation, layer.groups)
            for i, (layer, s) in enumerate(zip(self.model.program.layers, self.secrets,
                                               strict=True))
        ]
        return DeviceBundle(layers)

    def save(self, path: str | Path) -> None:
        qm = self.model
        prog = qm.program
        meta = {
            "reduce_range": qm.config.reduce_range,
            "input": prog.input, "output": prog.output,
            "steps": [{"op": s.op, "inputs": list(s.inputs), "output": s.output,
                       "attrs": s.attrs, "layer": s.layer} for s in prog.steps],
            "layers": [dict(_geometry(layer), name=layer.name) for layer in prog.layers],
            "act": [[a.scale, a.zero_point] for a in qm.act],
        }
        tensors: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(prog.layers):
            tensors[f"w_q.{i}"] = qm.w_q[i]
            tensors[f"w_scale.{i}"] = qm.w_scale[i]
            tensors[f"bias.{i}"] = layer.bias
            tensors[f"out_perm.{i}"] = self.secrets[i].out_perm
            if self.secrets[i].in_perm is not None:
                tensors[f"in_perm.{i}"] = self.secrets[i].in_perm  # type: ignore[assignment]
        _write(Path(path), "enclave", meta, tensors)

    @classmethod
    def load(cls, path: str | Path) -> EnclaveBundle:
        return _load(Path(path), "enclave", cls._build)

    @classmethod
    def _build(cls, meta: dict[str, Any], t: dict[str, torch.Tensor]) -> EnclaveBundle:
        layers, wq, ws, sec = [], [], [], []
        for i, g in enumerate(meta["layers"]):
            w = t[f"w_q.{i}"]
            layers.append(_spec(g["name"], w.to(torch.float64), t[f"bias.{i}"], g))
            wq.append(w)
            ws.append(t[f"w_scale.{i}"])
            sec.append(LayerSecret(t[f"out_perm.{i}"], t.get(f"in_perm.{i}")))
        steps = [Step(s["op"], tuple(s["inputs"]), s["output"], _attrs(s["attrs"]), s["layer"])
                 for s in meta["steps"]]
        prog = Program(steps, layers, meta["input"], meta["output"])
        act = [ActQuant(float(s), int(z)) for s, z in meta["act"]]
        return cls(QuantModel(prog, QuantConfig(int(meta["reduce_range"])), wq, ws, act), sec)


def _attrs(a: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in a.items()}


def provision(model: QuantModel, permute: bool = True, prg: PRG | None = None) -> EnclaveBundle:
    """Draw fresh secret permutations for ``model`` from an AES-CTR PRG under a fresh
    OS-CSPRNG key used for nothing else (``rand.permutation_prg``); ``permute=False`` keeps the
    identity. ``prg`` only for tests that need two provisionings to share permutations."""
    return EnclaveBundle(model, draw_secrets(model.program, prg or permutation_prg(), permute))
