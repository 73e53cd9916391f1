"""Capture a PyTorch ``nn.Module`` into a :class:`~secinfer.models.plan.Plan` with torch.fx.

Batch norm that follows a convolution (or linear layer) is folded into it; a stand-alone batch
norm becomes a depthwise 1x1 convolution. A forward that torch.fx cannot trace (shape checks,
shape arithmetic) is traced by torch.export instead (:mod:`.trace`); functional forms, smooth
activations and the other ops people write are handled in :mod:`.functional`. Every op the
secure engine lacks raises :class:`UnsupportedOpError` naming the op, the node, and what the
user can do.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import UnsupportedOpError
from . import functional
from .plan import Plan, PlanOp
from .trace import TraceError, trace

__all__ = ["UnsupportedOpError", "capture"]

def _unsupported(what: str, node: str) -> UnsupportedOpError:
    return functional.unsupported(what, node)


def _pair(v: int | tuple[int, ...]) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(x) for x in v]


def _fold_bn(w: torch.Tensor, b: torch.Tensor | None, bn: nn.BatchNorm2d | nn.BatchNorm1d):
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)  # type: ignore[operator,arg-type]
    shape = (-1,) + (1,) * (w.dim() - 1)
    w2 = w * scale.reshape(shape)
    b0 = b if b is not None else torch.zeros_like(bn.running_mean)  # type: ignore[arg-type]
    b2 = (b0 - bn.running_mean) * scale + bn.bias.detach()  # type: ignore[operator]
    return w2, b2


def capture(model: nn.Module, input_shape: tuple[int, ...] | list[int], frac_bits: int = 12,
            ) -> tuple[Plan, dict[str, torch.Tensor]]:
    """Trace ``model`` (eval mode) for inputs of ``[batch, *input_shape]``.

    Returns the plan and the float64 weights it references (``<node>.w``, ``<node>.b``).
    """
    model = model.eval()
    param = next(model.parameters(), None)
    example = torch.zeros(1, *input_shape, dtype=param.dtype if param is not None else None)
    try:
        gm, _how = trace(model, example)
    except TraceError as e:
        raise UnsupportedOpError(f"the model could not be traced: {e}", "<trace>",
                                 "<trace>") from e
    _ValueProp(gm).propagate(example)
    modules = dict(gm.named_modules())
    ops: list[PlanOp] = []
    weights: dict[str, torch.Tensor] = {}
    alias: dict[str, str] = {}  # nodes that forward their input unchanged
    users = {n.name: len(n.users) for n in gm.graph.nodes}
    by_name = {op.name: op for op in ops}
    input_name = output = ""

    def src(n: torch.fx.Node | str) -> str:
        return n if isinstance(n, str) else alias.get(n.name, n.name)

    def numel(n: torch.fx.Node) -> int:
        meta = n.meta.get("tensor_meta")
        return int(torch.Size(meta.shape[1:]).numel()) if meta is not None else 0

    def emit(op: PlanOp) -> None:
        ops.append(op)
        by_name[op.name] = op

    consts: dict[str, torch.Tensor] = {}

    def fold_bn(node: torch.fx.Node, inp: str, scale: torch.Tensor, shift: torch.Tensor) -> None:
        _affine_bn(node, inp, scale, shift, by_name, users, weights, alias, emit)

    ctx = functional.Ctx(src, emit, alias, numel, consts, weights, fold_bn)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if input_name:
                raise _unsupported("(a second model input)", node.name)
            input_name = node.name
            continue
        if node.op == "output":
            arg = node.args[0]
            if isinstance(arg, list | tuple) and len(arg) == 1:
                arg = arg[0]  # torch.export returns a flat tuple
            if not isinstance(arg, torch.fx.Node):
                raise _unsupported("(non-tensor or multiple outputs)", node.name)
            output = src(arg)
            continue
        if node.op == "get_attr":
            val = _get_attr(gm, str(node.target))
            if not isinstance(val, torch.Tensor):
                raise _unsupported(f"get_attr {node.target} (not a tensor)", node.name)
            consts[node.name] = val
            continue
        node.args = _static(node.args, alias)
        args = [a for a in node.args if isinstance(a, torch.fx.Node)]
        if node.op == "call_module":
            mod = modules[str(node.target)]
            if not functional.module_op(ctx, node, mod):
                _module_op(node, mod, src, emit, by_name, users, weights, alias, numel)
        elif node.op in ("call_function", "call_method"):
            if not functional.function_op(ctx, node):
                _function_op(node, args, src, emit, alias, numel)
        else:  # pragma: no cover - fx has no other node kinds
            raise _unsupported(node.op, node.name)
    plan = Plan(input_name=input_name, input_shape=[int(d) for d in input_shape], ops=ops,
                output=output, frac_bits=frac_bits)
    return plan.optimize(), weights


class _ValueProp(ShapeProp):
    """ShapeProp that also records non-tensor results (shape arithmetic) as ``meta['value']``."""

    def run_node(self, n: torch.fx.Node) -> object:
        result = super().run_node(n)
        if not isinstance(result, torch.Tensor):
            n.meta["value"] = result
        return result


def _static(a: object, alias: dict[str, str]) -> object:
    """Replace nodes that compute shape arithmetic by the value they had when traced."""
    if isinstance(a, torch.fx.Node):
        if alias.get(a.name) == functional.SIZE and "value" in a.meta:
            return a.meta["value"]
        return a
    if isinstance(a, list | tuple):
        return type(a)(_static(b, alias) for b in a)
    return a


def _get_attr(gm: torch.fx.GraphModule, target: str) -> object:
    obj: object = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _affine_bn(node, inp: str, scale, shift, by_name, users, weights, alias, emit) -> None:
    """A frozen batch norm y = scale x + shift: folded into the conv / linear layer in front of
    it when that layer has no other user; otherwise a depthwise 1x1 conv (NCHW) or a diagonal
    linear layer (NC)."""
    scale, shift = scale.double(), shift.double()
    prev = by_name.get(inp)
    src_node = node.args[0]
    if (prev is not None and prev.kind in ("conv2d", "linear")
            and users.get(src_node.name, 2) == 1):
        w, b = weights[f"{prev.name}.w"], weights[f"{prev.name}.b"]
        weights[f"{prev.name}.w"] = w * scale.reshape((-1,) + (1,) * (w.dim() - 1))
        weights[f"{prev.name}.b"] = b * scale + shift
        alias[node.name] = prev.name
        return
    meta = node.meta.get("tensor_meta")
    nd = len(meta.shape) if meta is not None else 4
    c = int(scale.numel())
    if nd == 4:
        weights[f"{node.name}.w"] = scale.reshape(c, 1, 1, 1)
        weights[f"{node.name}.b"] = shift
        emit(PlanOp("conv2d", node.name, [inp], {"stride": [1, 1], "padding": [0, 0],
                                                 "dilation": [1, 1], "groups": c},
                    {"w": [c, 1, 1, 1], "b": [c]}))
    elif nd == 2:
        weights[f"{node.name}.w"] = torch.diag(scale)
        weights[f"{node.name}.b"] = shift
        emit(PlanOp("linear", node.name, [inp], {}, {"w": [c, c], "b": [c]}))
    else:
        raise _unsupported(f"batch norm on a {nd}-d tensor", node.name)


def _module_op(node, mod, src, emit, by_name, users, weights, alias, numel) -> None:
    name, inp = node.name, node.args[0]
    if isinstance(mod, nn.Conv2d):
        if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
            raise _unsupported(f"Conv2d(padding={mod.padding!r}, "
                                     f"padding_mode={mod.padding_mode!r})", name)
        w = mod.weight.detach().double()
        weights[f"{name}.w"] = w
        weights[f"{name}.b"] = (mod.bias.detach().double() if mod.bias is not None
                                else torch.zeros(w.shape[0], dtype=torch.float64))
        emit(PlanOp("conv2d", name, [src(inp)], {
            "stride": _pair(mod.stride), "padding": _pair(mod.padding),
            "dilation": _pair(mod.dilation), "groups": int(mod.groups)},
            {"w": list(w.shape), "b": [int(w.shape[0])]}))
    elif isinstance(mod, nn.Linear):
        w = mod.weight.detach().double()
        weights[f"{name}.w"] = w
        weights[f"{name}.b"] = (mod.bias.detach().double() if mod.bias is not None
                                else torch.zeros(w.shape[0], dtype=torch.float64))
        emit(PlanOp("linear", name, [src(inp)], {}, {"w": list(w.shape),
                                                     "b": [int(w.shape[0])]}))
    elif isinstance(mod, nn.BatchNorm2d | nn.BatchNorm1d):
        prev = by_name.get(src(inp))
        if prev is not None and prev.kind in ("conv2d", "linear") and users[inp.name] == 1:
            w2, b2 = _fold_bn(weights[f"{prev.name}.w"], weights[f"{prev.name}.b"], mod)
            weights[f"{prev.name}.w"], weights[f"{prev.name}.b"] = w2, b2
            alias[name] = prev.name
        else:
            if isinstance(mod, nn.BatchNorm1d):
                raise _unsupported("BatchNorm1d not after a Linear layer", name)
            c = int(mod.num_features)
            w2, b2 = _fold_bn(torch.ones(c, 1, 1, 1, dtype=torch.float64), None, mod)
            weights[f"{name}.w"], weights[f"{name}.b"] = w2.double(), b2.double()
            emit(PlanOp("conv2d", name, [src(inp)], {"stride": [1, 1], "padding": [0, 0],
                                                     "dilation": [1, 1], "groups": c},
                        {"w": [c, 1, 1, 1], "b": [c]}))
    elif isinstance(mod, nn.ReLU):
        emit(PlanOp("relu", name, [src(inp)], {"drelus": numel(node)}))
    elif isinstance(mod, nn.ReLU6):
        emit(PlanOp("relu6", name, [src(inp)], {"drelus": 2 * numel(node)}))
    elif type(mod).__name__ == "BlockReLU" and hasattr(mod, "block_sizes"):
        sizes = mod.block_sizes.detach().to(torch.int64).tolist()
        emit(PlanOp("block_relu", name, [src(inp)], {"block_sizes": sizes,
                                                     "drelus": _block_drelus(node, sizes)}))
    elif isinstance(mod, nn.MaxPool2d):
        if mod.ceil_mode or _pair(mod.dilation) != [1, 1]:
            raise _unsupported("MaxPool2d(ceil_mode or dilation)", name)
        k = _pair(mod.kernel_size)
        emit(PlanOp("maxpool2d", name, [src(inp)], {
            "kernel": k, "stride": _pair(mod.stride or mod.kernel_size),
            "padding": _pair(mod.padding), "drelus": numel(node) * (k[0] * k[1] - 1)}))
    elif isinstance(mod, nn.AvgPool2d):
        if mod.ceil_mode or not mod.count_include_pad or mod.divisor_override:
            raise _unsupported("AvgPool2d(ceil_mode / count_include_pad=False / "
                                     "divisor_override)", name)
        emit(PlanOp("avgpool2d", name, [src(inp)], {
            "kernel": _pair(mod.kernel_size), "stride": _pair(mod.stride or mod.kernel_size),
            "padding": _pair(mod.padding)}))
    elif isinstance(mod, nn.AdaptiveAvgPool2d):
        _adaptive(node, mod.output_size, src, emit)
    elif isinstance(mod, nn.Flatten):
        if mod.end_dim != -1:  # a partial flatten: the traced output shape says it all
            emit(PlanOp("reshape", name, [src(inp)],
                        {"shape": [-1, *node.meta["tensor_meta"].shape[1:]]}))
        else:
            emit(PlanOp("flatten", name, [src(inp)], {"start_dim": int(mod.start_dim)}))
    elif isinstance(mod, nn.Dropout | nn.Identity):
        alias[name] = src(inp)
    else:
        raise _unsupported(f"module {type(mod).__name__}", name)


def _block_drelus(node, sizes) -> int:
    meta = node.meta.get("tensor_meta")
    _, _, h, w = meta.shape
    total = 0
    for bh, bw in sizes:
        if bh == 0 or bw == 0:
            continue
        total += -(-h // bh) * -(-w // bw)
    return total


def _adaptive(node, output_size, src, emit) -> None:
    meta = node.args[0].meta["tensor_meta"]
    h, w = int(meta.shape[2]), int(meta.shape[3])
    oh, ow = _pair(output_size if output_size is not None else (h, w))
    if (oh, ow) == (1, 1):
        emit(PlanOp("global_avgpool", node.name, [src(node.args[0])], {}))
    elif h % oh == 0 and w % ow == 0:
        k = [h // oh, w // ow]
        emit(PlanOp("avgpool2d", node.name, [src(node.args[0])],
                    {"kernel": k, "stride": k, "padding": [0, 0]}))
    else:
        raise _unsupported(f"AdaptiveAvgPool2d from {h}x{w} to {oh}x{ow}", node.name)


_ADD: set[Callable] = {operator.add, torch.add, operator.iadd}
_RELU: set[Callable] = {F.relu, torch.relu}


def _function_op(node, args, src, emit, alias, numel) -> None:
    t, name = node.target, node.name
    if t in _ADD or t == "add" or t == "add_":
        if len(args) != 2:
            raise _unsupported("add with a constant", name)
        emit(PlanOp("add", name, [src(a) for a in args]))
    elif t in _RELU or t in ("relu", "relu_"):
        emit(PlanOp("relu", name, [src(args[0])], {"drelus": numel(node)}))
    elif t in (F.relu6,) or (t is F.hardtanh and node.kwargs.get("min_val", -1) == 0):
        emit(PlanOp("relu6", name, [src(args[0])], {"drelus": 2 * numel(node)}))
    elif t in (torch.flatten, "flatten"):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        if start != 1:
            raise _unsupported("flatten over the batch dimension", name)
        if end != -1:  # a partial flatten: the traced output shape says it all
            emit(PlanOp("reshape", name, [src(args[0])],
                        {"shape": [-1, *node.meta["tensor_meta"].shape[1:]]}))
        else:
            emit(PlanOp("flatten", name, [src(args[0])], {"start_dim": 1}))
    elif t in ("view", "reshape") or t is torch.reshape:
        shape = list(node.meta["tensor_meta"].shape)
        emit(PlanOp("reshape", name, [src(args[0])], {"shape": [-1, *shape[1:]]}))
    elif t == "size":
        alias[name] = "<size>"  # consumed only by view/reshape, whose shape we already know
    elif t in (torch.cat, torch.concat):
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if dim == 0:
            raise _unsupported("cat over the batch dimension", name)
        emit(PlanOp("cat", name, [src(a) for a in tensors], {"dim": int(dim)}))
    elif t is F.adaptive_avg_pool2d:
        _adaptive(node, node.args[1] if len(node.args) > 1 else node.kwargs["output_size"],
                  src, emit)
    elif t in ("contiguous", F.dropout) or t is torch.nn.functional.dropout:
        alias[name] = src(args[0])
    elif t == operator.getitem:
        raise _unsupported("indexing (getitem)", name)
    else:
        what = t if isinstance(t, str) else getattr(t, "__name__", str(t))
        raise _unsupported(f"function {what}", name)
