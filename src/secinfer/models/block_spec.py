"""ReLU spec files: which block size each channel of each ReLU layer uses.

File format (JSON, UTF-8)::

    {"format": "secinfer.relu-spec", "version": 1,
     "layers": {"layer1.0.relu1": [[1, 1], [0, 1], [3, 3], ...], ...},
     "meta": {...free-form: budget, DReLU counts, command...}}

A layer name is the module path of an ``nn.ReLU`` in the model (``model.get_submodule(name)``);
its list has one ``[h, w]`` per channel (see :mod:`secinfer.models.block_relu` for the meaning,
including the sentinels ``[0, 1]`` identity and ``[1, 0]`` zero). A bare mapping
``{layer: [[h, w], ...]}`` without the envelope is accepted too, for hand-written specs.
Layers not in the spec keep their ordinary ReLU. The seed stored this as a pickle; JSON cannot
run code when loaded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from secinfer.models.block_relu import BlockReLU, block_cost, check_block_sizes

__all__ = [
    "SPEC_FORMAT",
    "activation_shapes",
    "apply_spec",
    "drelu_counts",
    "load_spec",
    "relu_layers",
    "save_spec",
    "spec_meta",
]

SPEC_FORMAT = "secinfer.relu-spec"
_VERSION = 1


def save_spec(
    path: Path | str, spec: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None
) -> Path:
    """Write ``spec`` (layer -> int ``[C, 2]``) as JSON; returns the path."""
    layers = {}
    for name, bs in spec.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"layer names must be non-empty strings, got {name!r}")
        try:
            layers[name] = check_block_sizes(bs).tolist()
        except ValueError as e:
            raise ValueError(f"layer {name!r}: {e}") from e
    doc = {"format": SPEC_FORMAT, "version": _VERSION, "layers": layers, "meta": dict(meta or {})}
    path = Path(path)
    path.write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")
    return path


def _read(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"ReLU spec file {path} not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"ReLU spec {path} is not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise ValueError(f"ReLU spec {path}: top level must be a JSON object")
    if "format" in doc:
        if doc["format"] != SPEC_FORMAT or doc.get("version") != _VERSION:
            raise ValueError(
                f"ReLU spec {path}: unsupported format {doc.get('format')!r} version "
                f"{doc.get('version')!r} (expected {SPEC_FORMAT!r} version {_VERSION})"
            )
        if not isinstance(doc.get("layers"), dict):
            raise ValueError(f"ReLU spec {path}: 'layers' must be an object")
        return doc
    return {"format": SPEC_FORMAT, "version": _VERSION, "layers": doc, "meta": {}}


def load_spec(path: Path | str) -> dict[str, torch.Tensor]:
    """Read a spec file: layer name -> int32 tensor ``[C, 2]`` of block sizes."""
    out = {}
    for name, blocks in _read(path)["layers"].items():
        if not isinstance(blocks, list) or not blocks:
            raise ValueError(f"ReLU spec {path}: layer {name!r} needs a non-empty list of [h, w]")
        if not all(isinstance(b, list) and len(b) == 2 and all(type(v) is int for v in b)
                   for b in blocks):
            raise ValueError(f"ReLU spec {path}: layer {name!r}: every entry must be [h, w] ints")
        try:
            out[name] = check_block_sizes(torch.tensor(blocks, dtype=torch.int64))
        except ValueError as e:
            raise ValueError(f"ReLU spec {path}: layer {name!r}: {e}") from e
    return out


def spec_meta(path: Path | str) -> dict[str, Any]:
    """The free-form ``meta`` object of a spec file (empty for a bare mapping)."""
    meta = _read(path).get("meta", {})
    return dict(meta) if isinstance(meta, dict) else {}


def relu_layers(model: nn.Module) -> list[str]:
    """Module paths of every ``nn.ReLU`` and ``BlockReLU`` in ``model``, in definition order."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.ReLU, BlockReLU))]


@torch.no_grad()
def activation_shapes(
    model: nn.Module, input_shape: tuple[int, ...], layers: list[str] | None = None
) -> dict[str, tuple[int, ...]]:
    """Per-image input shape (without batch) of each ReLU layer, from one forward pass."""
    names = relu_layers(model) if layers is None else layers
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name in names:
        def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], _o: object,
                 name: str = name) -> None:
            if name in shapes:
                raise ValueError(f"ReLU module {name!r} runs twice in one forward; give each "
                                 f"activation its own module")
            shapes[name] = tuple(inp[0].shape[1:])
        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    missing = [n for n in names if n not in shapes]
    if missing:
        raise ValueError(f"ReLU layers never ran in a forward pass: {missing}")
    return shapes


def drelu_counts(
    spec: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, int]:
    """DReLUs per image of each layer in ``shapes``: from the spec, or ``numel`` for plain ReLU."""
    out = {}
    for name, shape in shapes.items():
        if name in spec:
            if len(shape) != 3:
                raise ValueError(f"layer {name!r}: block ReLU needs a [C, H, W] activation, "
                                 f"got {list(shape)}")
            bs = check_block_sizes(spec[name], shape[0])
            out[name] = sum(block_cost((h, w), shape[1], shape[2]) for h, w in bs.tolist())
        else:
            n = 1
            for d in shape:
                n *= d
            out[name] = n
    return out


def apply_spec(model: nn.Module, spec: Mapping[str, torch.Tensor]) -> nn.Module:
    """Replace each ReLU named in ``spec`` by a :class:`BlockReLU` (in place; returns ``model``)."""
    for name, bs in spec.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"ReLU spec names layer {name!r}, which the model does not have") \
                from None
        if not isinstance(module, (nn.ReLU, BlockReLU)):
            raise ValueError(f"ReLU spec names {name!r}, a {type(module).__name__}, not a ReLU")
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, BlockReLU(bs))
    return model
