"""Trace a user's ``nn.Module`` to a ``torch.fx`` graph the capture can read.

1. ``torch.fx`` symbolic tracing first: it keeps module calls (so a ReLU spec can name each
   activation by its module path, and block ReLUs stay one node);
2. if that fails (Python control flow on shapes, ``math.ceil(x.size(-1) / s)``, a shape
   check that raises), ``torch.export`` with the static example shape: control flow on static
   shapes is evaluated once, and the graph is ATen ops with parameters as ``get_attr``;
3. the ATen ops are renamed to the ``torch`` / ``F`` functions they implement (same argument
   order), so one set of handlers reads both graphs; the few whose arguments differ are
   listed in :data:`ATEN_SPECIAL` and handled by name.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["trace", "TraceError"]


class TraceError(RuntimeError):
    """Neither torch.fx nor torch.export could trace the model."""


class _Tracer(torch.fx.Tracer):
    """Keeps block ReLUs (from :mod:`secinfer.knapsack`) as leaves: they map to one plan op."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if type(m).__name__ == "BlockReLU" and hasattr(m, "block_sizes"):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _aten_map() -> dict[Any, Any]:
    a = torch.ops.aten
    pairs: list[tuple[str, Any]] = [
        ("conv2d.default", F.conv2d), ("conv2d.padding", F.conv2d), ("linear.default", F.linear),
        ("relu.default", F.relu), ("relu_.default", F.relu), ("relu6.default", F.relu6),
        ("hardtanh.default", F.hardtanh), ("hardtanh_.default", F.hardtanh),
        ("max_pool2d.default", F.max_pool2d), ("avg_pool2d.default", F.avg_pool2d),
        ("adaptive_avg_pool2d.default", F.adaptive_avg_pool2d),
        ("add.Tensor", operator.add), ("add_.Tensor", operator.add),
        ("sub.Tensor", operator.sub), ("mul.Tensor", operator.mul),
        ("div.Tensor", operator.truediv), ("view.default", "view"),
        ("reshape.default", "reshape"), ("flatten.using_ints", torch.flatten),
        ("cat.default", torch.cat), ("sigmoid.default", torch.sigmoid),
        ("hardswish.default", F.hardswish), ("hardswish_.default", F.hardswish),
        ("hardsigmoid.default", F.hardsigmoid), ("silu.default", F.silu),
        ("silu_.default", F.silu), ("gelu.default", F.gelu), ("tanh.default", torch.tanh),
        ("softmax.int", F.softmax), ("_softmax.default", F.softmax),
        ("permute.default", "permute"), ("transpose.int", "transpose"),
        ("mean.dim", torch.mean), ("pad.default", F.pad), ("constant_pad_nd.default", F.pad),
        ("dropout.default", F.dropout), ("clone.default", "contiguous"),
        ("contiguous.default", "contiguous"), ("layer_norm.default", F.layer_norm),
        ("upsample_nearest2d.vec", "upsample_nearest2d"), ("t.default", "t"),
        ("alias.default", "contiguous"),
    ]
    out: dict[Any, Any] = {}
    for name, target in pairs:
        packet, overload = name.split(".")
        op = getattr(getattr(a, packet, None), overload, None)
        if op is not None:
            out[op] = target
    return out


#: ATen ops kept as they are (their arguments differ from the torch function's)
ATEN_SPECIAL = ("_native_batch_norm_legit_no_training", "batch_norm")


def _export(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    ep = torch.export.export(model, (example,), strict=False)
    gm = ep.module()
    assert isinstance(gm, torch.fx.GraphModule)
    amap = _aten_map()
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in amap:
            new = amap[node.target]
            if isinstance(new, str):
                node.op = "call_method"
            node.target = new
        elif node.op == "call_function" and node.target is torch.ops.aten.layer_norm.default:
            node.target = F.layer_norm
    gm.recompile()
    return gm


def trace(model: nn.Module, example: torch.Tensor) -> tuple[torch.fx.GraphModule, str]:
    """``(graph module, "fx" | "export")`` for ``model`` on inputs shaped like ``example``."""
    try:
        return torch.fx.GraphModule(model, _Tracer().trace(model)), "fx"
    except Exception as fx_error:  # fx raises many types on untraceable code
        try:
            return _export(model, example), "export"
        except Exception as export_error:
            raise TraceError(
                f"torch.fx could not trace the model ({type(fx_error).__name__}: {fx_error}) "
                f"and neither could torch.export ({type(export_error).__name__}: "
                f"{export_error}). Control flow that depends on the input's values (not its "
                "shape) cannot be compiled: move it out of forward, or wrap the model in a "
                "module whose forward is a straight sequence of ops") from export_error
