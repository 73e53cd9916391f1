"""Provisioning: split an int8 model into what the device holds and what the enclave holds.

The model owner calls :func:`provision` once. The device bundle holds only int8 weights in the
secret per-layer row order and each layer's geometry (stride, padding, groups); the enclave
bundle holds everything else: the trusted-side program, scales, zero points, biases and the
permutations. On disk each bundle is one safetensors file plus one JSON manifest (no pickle).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..mpc.prg import PRG
from .graph import LinearSpec, Program, Step
from .mask import LayerSecret, device_weight, draw_secrets
from .quantize import ActQuant, QuantConfig, QuantModel
from .rand import permutation_prg

__all__ = ["DeviceBundle", "EnclaveBundle", "provision"]

_FORMAT = "secinfer.tee/1"


def _geometry(layer: LinearSpec) -> dict[str, Any]:
    return {"kind": layer.kind, "stride": list(layer.stride), "padding": list(layer.padding),
            "dilation": list(layer.dilation), "groups": layer.groups}


def _spec(name: str, weight: torch.Tensor, bias: torch.Tensor, g: dict[str, Any]) -> LinearSpec:
    if g.get("kind") not in ("conv", "linear"):
        raise ValueError(f"layer {name!r}: unknown kind {g.get('kind')!r}")
    return LinearSpec(name, weight, bias, g["kind"], tuple(g["stride"]), tuple(g["padding"]),
                      tuple(g["dilation"]), int(g["groups"]))


def _read(path: Path, role: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    meta_path, data_path = path.with_suffix(".json"), path.with_suffix(".safetensors")
    for p in (meta_path, data_path):
        if not p.is_file():
            raise FileNotFoundError(f"{role} bundle file {p} not found")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != _FORMAT or meta.get("role") != role:
        raise ValueError(f"{meta_path} is not a {role} bundle of format {_FORMAT}")
    return meta, load_file(str(data_path))


def _write(path: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {k: v.contiguous().clone() for k, v in tensors.items()}  # no shared storage
    save_file(data, str(path.with_suffix(".safetensors")))
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1))


@dataclass
class DeviceBundle:
    """What the untrusted device holds: int8 weights (secretly permuted rows) and geometry."""

    layers: list[LinearSpec]  # weight is the int8 device weight; bias empty

    def save(self, path: str | Path) -> None:
        meta = {"format": _FORMAT, "role": "device",
                "layers": [_geometry(s) for s in self.layers]}
        _write(Path(path), meta, {f"w.{i}": s.weight for i, s in enumerate(self.layers)})

    @classmethod
    def load(cls, path: str | Path) -> DeviceBundle:
        meta, t = _read(Path(path), "device")
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
            "format": _FORMAT, "role": "enclave", "reduce_range": qm.config.reduce_range,
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
        _write(Path(path), meta, tensors)

    @classmethod
    def load(cls, path: str | Path) -> EnclaveBundle:
        meta, t = _read(Path(path), "enclave")
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
