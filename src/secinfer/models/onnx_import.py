"""ONNX in: ``--model file.onnx`` through onnx2torch, then the same capture as PyTorch models.

1. ``onnx.load`` the file and convert it with onnx2torch (an ``fx.GraphModule`` of torch
   modules and functions, parameters as ``get_attr``);
2. the result goes through :func:`secinfer.models.capture.capture` unchanged, so every op
   the capture supports is supported from ONNX too, and the same errors name what is not.

onnx2torch imports torchvision at import time for two detection ops (NonMaxSuppression,
RoiAlign) only. torchvision does not import beside the pinned torch, so when it fails a
placeholder module is registered whose ops refuse to run: a classifier converts, a model with
those two ops is refused naming them. Install with ``pip install 'secinfer[onnx]'``.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch.nn as nn

from ..errors import UnsupportedOpError

__all__ = ["load_onnx"]


def _refuse(name: str):
    def op(*_a: object, **_k: object) -> None:
        raise UnsupportedOpError(f"ONNX op {name} needs torchvision, which does not import "
                                 "beside this torch; it is not supported", name, name)
    return op


def _ensure_torchvision() -> None:
    try:
        import torchvision  # noqa: F401
    except Exception:  # missing, or built for another torch
        for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[k]
        tv = types.ModuleType("torchvision")
        ops = types.ModuleType("torchvision.ops")
        for name in ("nms", "box_convert", "roi_align", "batched_nms"):
            setattr(ops, name, _refuse(name))
        tv.ops = ops  # type: ignore[attr-defined]
        sys.modules["torchvision"], sys.modules["torchvision.ops"] = tv, ops


def load_onnx(path: str | Path) -> nn.Module:
    """The ONNX model at ``path`` as a torch module (eval mode) for :func:`capture`."""
    try:
        import onnx
    except ImportError as e:
        raise UnsupportedOpError("ONNX import needs the 'onnx' extra: pip install "
                                 "'secinfer[onnx]'", "onnx", str(path)) from e
    _ensure_torchvision()
    from onnx2torch import convert

    proto = onnx.load(str(path))
    try:
        model = convert(proto)
    except NotImplementedError as e:
        raise UnsupportedOpError(f"{path}: onnx2torch cannot convert it: {e}. Export the model "
                                 "again with supported ops (docs/supported-ops.md)",
                                 "onnx", str(path)) from e
    return model.eval()
