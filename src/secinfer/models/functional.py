"""Capture of the ops people write besides the classic module list.

Functional forms (``F.conv2d`` on the module's own parameters, ``F.max_pool2d``, ``F.pad``,
``torch.mean`` over the spatial dims, arithmetic with constants), smooth activations (sigmoid,
hard-swish, SiLU, GELU, tanh, softmax), nearest upsampling, permutes (channel shuffle,
token-mixing transposes), layer norm and the ATen forms of all of them (``torch.export``
graphs, see :mod:`.trace`). Each handler emits :class:`~.plan.PlanOp` entries through the
capture's context; :func:`function_op` / :func:`module_op` return False for a target they do
not know so the classic handlers in :mod:`.capture` get their turn.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UnsupportedOpError
from .plan import PlanOp

__all__ = ["Ctx", "function_op", "module_op", "unsupported", "SIZE"]

SIZE = "<size>"  # alias of a node that computes shape arithmetic, not a tensor

HOWTO = ("rewrite that part of forward with supported ops (docs/supported-ops.md lists them "
         "with their backends and costs), or wrap the model in a module whose forward "
         "computes the same function with them")


def unsupported(what: str, node: str, hint: str = "") -> UnsupportedOpError:
    fix = hint or HOWTO
    return UnsupportedOpError(f"unsupported op {what} at node '{node}'; {fix}", what, node)


@dataclass
class Ctx:
    """What the handlers need from the capture loop."""

    src: Callable[[Any], str]
    emit: Callable[[PlanOp], None]
    alias: dict[str, str]
    numel: Callable[[torch.fx.Node], int]
    consts: dict[str, torch.Tensor]     # get_attr nodes -> their tensor
    weights: dict[str, torch.Tensor]
    fold_bn: Callable[[torch.fx.Node, str, torch.Tensor, torch.Tensor], None]


def _shape(n: Any) -> list[int]:
    meta = n.meta.get("tensor_meta") if isinstance(n, torch.fx.Node) else None
    if meta is None:
        val = n.meta.get("val") if isinstance(n, torch.fx.Node) else None
        if val is None:
            return []
        return [int(d) for d in val.shape]
    return [int(d) for d in meta.shape]


def _arg(node: torch.fx.Node, i: int, key: str, default: Any = None) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(key, default)


def _pair(v: Any) -> list[int]:
    if isinstance(v, int):
        return [v, v]
    v = [int(x) for x in v]
    return v * 2 if len(v) == 1 else v


def _const(ctx: Ctx, n: Any, node: torch.fx.Node, role: str) -> torch.Tensor | None:
    if n is None:
        return None
    if isinstance(n, torch.fx.Node) and n.name in ctx.consts:
        return ctx.consts[n.name].detach().double()
    raise unsupported(f"{role} computed in forward (not a parameter or buffer)", node.name,
                      "make it an nn.Parameter or registered buffer of the module, used as is")


def _is_size(ctx: Ctx, a: Any) -> bool:
    if isinstance(a, torch.fx.Node):
        return ctx.alias.get(a.name) == SIZE
    if isinstance(a, list | tuple):
        return all(_is_size(ctx, b) for b in a)
    return True


def _tensor_args(node: torch.fx.Node) -> list[torch.fx.Node]:
    return [a for a in node.args if isinstance(a, torch.fx.Node)]


def _linear(ctx: Ctx, node: torch.fx.Node, kind: str, w: torch.Tensor, b: torch.Tensor | None,
            params: dict[str, Any], inp: Any) -> None:
    name = node.name
    ctx.weights[f"{name}.w"] = w
    ctx.weights[f"{name}.b"] = (b if b is not None
                                else torch.zeros(w.shape[0], dtype=torch.float64))
    ctx.emit(PlanOp(kind, name, [ctx.src(inp)], params,
                    {"w": list(w.shape), "b": [int(w.shape[0])]}))


def conv(ctx: Ctx, node: torch.fx.Node, inp: Any, w: torch.Tensor, b: torch.Tensor | None,
         stride: Any, padding: Any, dilation: Any, groups: int) -> None:
    """A convolution; string padding ('same', 'valid') becomes explicit (asymmetric) pads."""
    stride, dilation = _pair(stride), _pair(dilation)
    if isinstance(padding, str):
        if padding == "valid":
            padding = [0, 0]
        else:
            tot = [dilation[i] * (int(w.shape[2 + i]) - 1) for i in range(2)]
            lo = [t // 2 for t in tot]
            hi = [t - t // 2 for t in tot]
            if lo != hi:
                pname = f"{node.name}_pad"
                ctx.emit(PlanOp("pad", pname, [ctx.src(inp)],
                                {"pad": [lo[1], hi[1], lo[0], hi[0]]}))
                inp, padding = pname, [0, 0]
            else:
                padding = lo
    params = {"stride": stride, "padding": _pair(padding), "dilation": dilation,
              "groups": int(groups)}
    _linear(ctx, node, "conv2d", w, b, params, inp)


def _scalar_arith(ctx: Ctx, node: torch.fx.Node, op: str) -> None:
    a: Any = node.args[0]
    b: Any = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
    alpha = float(node.kwargs.get("alpha", 1))  # type: ignore[arg-type]
    name = node.name
    if isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node):
        if b.name in ctx.consts or a.name in ctx.consts:
            raise unsupported(f"{op} with a tensor constant", name,
                              "fold the constant into a neighbouring conv/linear layer, or "
                              "express a per-channel scale as a depthwise 1x1 nn.Conv2d")
        if op == "add":
            ctx.emit(PlanOp("add", name, [ctx.src(a), ctx.src(b)]))
        elif op == "sub":
            ctx.emit(PlanOp("sub", name, [ctx.src(a), ctx.src(b)]))
        elif op == "mul":
            ctx.emit(PlanOp("mul", name, [ctx.src(a), ctx.src(b)]))
        else:
            raise unsupported("division by a secret tensor", name,
                              "divide by a constant, or multiply by a learned scale")
        return
    x, c = (a, b) if isinstance(a, torch.fx.Node) else (b, a)
    if not isinstance(c, int | float):
        raise unsupported(f"{op} with {type(c).__name__}", name)
    c = float(c)
    if op == "add":
        scale, shift = 1.0, c * alpha
    elif op == "sub":
        scale, shift = (1.0, -c * alpha) if x is a else (-alpha, c)
    elif op == "mul":
        scale, shift = c, 0.0
    else:
        if x is not a:
            raise unsupported("a constant divided by a tensor", name,
                              "multiply by a learned scale instead")
        scale, shift = 1.0 / c, 0.0
    ctx.emit(PlanOp("affine", name, [ctx.src(x)], {"scale": scale, "shift": shift}))


_ARITH: dict[Any, str] = {
    operator.add: "add", torch.add: "add", operator.iadd: "add", "add": "add", "add_": "add",
    operator.sub: "sub", torch.sub: "sub", operator.isub: "sub", "sub": "sub",
    operator.mul: "mul", torch.mul: "mul", operator.imul: "mul", "mul": "mul", "mul_": "mul",
    operator.truediv: "div", torch.div: "div", operator.itruediv: "div", "div": "div",
}
_ACT: dict[Any, str] = {
    torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", "sigmoid": "sigmoid",
    F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid", F.silu: "silu",
    F.gelu: "gelu", torch.tanh: "tanh", F.tanh: "tanh", "tanh": "tanh",
}
_DRELUS = {"sigmoid": 3, "silu": 3, "gelu": 3, "tanh": 3, "hardswish": 2, "hardsigmoid": 2}


def _act(ctx: Ctx, node: torch.fx.Node, kind: str, inp: Any) -> None:
    if kind == "gelu" and node.kwargs.get("approximate", "none") not in ("none", "tanh"):
        raise unsupported(f"gelu(approximate={node.kwargs['approximate']!r})", node.name)
    ctx.emit(PlanOp(kind, node.name, [ctx.src(inp)],
                    {"drelus": _DRELUS[kind] * ctx.numel(node)}))


def _pool(ctx: Ctx, node: torch.fx.Node, kind: str, inp: Any, k: Any, s: Any, p: Any) -> None:
    k = _pair(k)
    s = _pair(s) if s not in (None, [], ()) else k
    params: dict[str, Any] = {"kernel": k, "stride": s, "padding": _pair(p)}
    if kind == "maxpool2d":
        params["drelus"] = ctx.numel(node) * (k[0] * k[1] - 1)
    ctx.emit(PlanOp(kind, node.name, [ctx.src(inp)], params))


def _adaptive_max(ctx: Ctx, node: torch.fx.Node, inp: Any, size: Any) -> None:
    h, w = _shape(inp)[2:]
    oh, ow = _pair(size if size is not None else (h, w))
    if h % oh or w % ow:
        raise unsupported(f"adaptive_max_pool2d from {h}x{w} to {oh}x{ow}", node.name)
    _pool(ctx, node, "maxpool2d", inp, [h // oh, w // ow], [h // oh, w // ow], 0)


def _pad(ctx: Ctx, node: torch.fx.Node, inp: Any, pad: Any, mode: str, value: Any) -> None:
    pad = [int(v) for v in pad]
    if mode != "constant" or float(value or 0.0) != 0.0:
        raise unsupported(f"pad(mode={mode!r}, value={value!r})", node.name,
                          "only zero padding is supported: use F.pad(x, pads) with value 0")
    if len(pad) == 2:
        pad = pad + [0, 0]
    if len(pad) != 4 or min(pad) < 0:
        raise unsupported(f"pad {pad} (only the last two dims, non-negative)", node.name)
    ctx.emit(PlanOp("pad", node.name, [ctx.src(inp)], {"pad": pad}))


def _mean(ctx: Ctx, node: torch.fx.Node, inp: Any, dim: Any, keepdim: bool) -> None:
    nd = len(_shape(inp))
    dims = sorted(int(d) % nd for d in ([dim] if isinstance(dim, int) else dim))
    if nd == 4 and dims == [2, 3]:
        if keepdim:
            ctx.emit(PlanOp("global_avgpool", node.name, [ctx.src(inp)], {}))
        else:
            gap = f"{node.name}_gap"
            ctx.emit(PlanOp("global_avgpool", gap, [ctx.src(inp)], {}))
            ctx.emit(PlanOp("reshape", node.name, [gap], {"shape": [-1, *_shape(node)[1:]]}))
        return
    if dims == [nd - 1] or (nd == 3 and dims == [1]):
        ctx.emit(PlanOp("mean", node.name, [ctx.src(inp)], {"dim": dims[0],
                                                           "keepdim": bool(keepdim)}))
        return
    raise unsupported(f"mean over dims {dims} of a {nd}-d tensor", node.name,
                      "average over the spatial dims (2, 3) of NCHW or one feature dim")


def _upsample(ctx: Ctx, node: torch.fx.Node, inp: Any, mode: str,
              align_corners: bool | None = None) -> None:
    """Bilinear / nearest upsampling: a public linear map (:mod:`secinfer.mpc.upsample`)."""
    from ..mpc.upsample import MODES

    shape = _shape(node)
    if node.kwargs.get("antialias"):
        raise unsupported("interpolate(antialias=True)", node.name,
                          "antialiased resizing is not a supported linear map; drop antialias")
    if mode not in MODES or len(shape) != 4:
        raise unsupported(f"interpolate(mode={mode!r}) of a {len(shape)}-d tensor", node.name,
                          f"use mode={' or '.join(repr(m) for m in MODES)} on an NCHW tensor "
                          "(see docs/supported-ops.md)")
    ctx.emit(PlanOp("upsample", node.name, [ctx.src(inp)], {
        "size": [int(shape[2]), int(shape[3])], "mode": str(mode),
        "align_corners": bool(align_corners) if mode == "bilinear" else None}))


def _permute(ctx: Ctx, node: torch.fx.Node, inp: Any, dims: list[int]) -> None:
    nd = len(dims)
    dims = [int(d) % nd for d in dims]
    if dims[0] != 0:
        raise unsupported("permute that moves the batch dimension", node.name)
    ctx.emit(PlanOp("permute", node.name, [ctx.src(inp)], {"dims": dims}))


def _transpose(ctx: Ctx, node: torch.fx.Node, inp: Any, a: int, b: int) -> None:
    nd = len(_shape(inp))
    dims = list(range(nd))
    a, b = a % nd, b % nd
    dims[a], dims[b] = dims[b], dims[a]
    _permute(ctx, node, inp, dims)


def _layer_norm(ctx: Ctx, node: torch.fx.Node, inp: Any, shape: Any, w: Any, b: Any,
                eps: float) -> None:
    c = int(list(shape)[-1])
    if len(list(shape)) != 1:
        raise unsupported(f"layer_norm over {list(shape)} (only the last dim)", node.name)
    wt = w if isinstance(w, torch.Tensor) or w is None else _const(ctx, w, node, "weight")
    bt = b if isinstance(b, torch.Tensor) or b is None else _const(ctx, b, node, "bias")
    ctx.weights[f"{node.name}.w"] = (wt.detach().double() if wt is not None
                                     else torch.ones(c, dtype=torch.float64))
    ctx.weights[f"{node.name}.b"] = (bt.detach().double() if bt is not None
                                     else torch.zeros(c, dtype=torch.float64))
    ctx.emit(PlanOp("layer_norm", node.name, [ctx.src(inp)],
                    {"eps": float(eps), "drelus": 21 * ctx.numel(node) // c},
                    {"w": [c], "b": [c]}))


def _softmax(ctx: Ctx, node: torch.fx.Node, inp: Any, dim: Any) -> None:
    nd = len(_shape(inp))
    if dim is None or int(dim) % nd != nd - 1:
        raise unsupported(f"softmax over dim {dim} of a {nd}-d tensor", node.name,
                          "softmax over the last dim (transpose first if needed)")
    n = ctx.numel(node)
    ctx.emit(PlanOp("softmax", node.name, [ctx.src(inp)], {"drelus": 2 * n}))


def function_op(ctx: Ctx, node: torch.fx.Node) -> bool:
    """Capture one call_function / call_method node; False if its target is not handled here."""
    t, name = node.target, node.name
    args: Any = node.args
    inp = args[0] if args else None
    if t in (getattr, "size", "dim") or (
            t in (operator.getitem, operator.floordiv, operator.mul, operator.add,
                  operator.sub, operator.truediv, math.ceil, int, max, min)
            and all(_is_size(ctx, a) for a in args)):
        ctx.alias[name] = SIZE  # shape arithmetic: reshapes use the traced static shape
        return True
    if t == operator.getitem and isinstance(inp, torch.fx.Node) and args[1] == 0 and (
            str(getattr(inp, "target", "")).find("batch_norm") >= 0):
        ctx.alias[name] = ctx.src(inp)
        return True
    if t in (torch.flatten, "flatten") and int(_arg(node, 1, "start_dim", 0)) >= 2:
        ctx.emit(PlanOp("reshape", name, [ctx.src(inp)], {"shape": [-1, *_shape(node)[1:]]}))
    elif t is F.conv2d:
        w = _const(ctx, _arg(node, 1, "weight"), node, "conv weight")
        b = _const(ctx, _arg(node, 2, "bias"), node, "conv bias")
        assert w is not None
        conv(ctx, node, inp, w, b, _arg(node, 3, "stride", 1), _arg(node, 4, "padding", 0),
             _arg(node, 5, "dilation", 1), int(_arg(node, 6, "groups", 1)))
    elif t is F.linear:
        w = _const(ctx, _arg(node, 1, "weight"), node, "linear weight")
        assert w is not None
        _linear(ctx, node, "linear", w, _const(ctx, _arg(node, 2, "bias"), node, "bias"), {},
                inp)
    elif t in _ARITH and not (
            _ARITH[t] == "add" and all(isinstance(a, torch.fx.Node) for a in args[:2])
            and not any(a.name in ctx.consts for a in args[:2])):
        _scalar_arith(ctx, node, _ARITH[t])
    elif t in _ACT:
        _act(ctx, node, _ACT[t], inp)
    elif t in (F.softmax, torch.softmax, "softmax"):
        _softmax(ctx, node, inp, _arg(node, 1, "dim"))
    elif t is F.max_pool2d:
        if _arg(node, 4, "dilation", 1) not in (1, [1, 1], (1, 1)) or _arg(node, 5, "ceil_mode"):
            raise unsupported("max_pool2d(dilation or ceil_mode)", name)
        _pool(ctx, node, "maxpool2d", inp, _arg(node, 1, "kernel_size"),
              _arg(node, 2, "stride"), _arg(node, 3, "padding", 0))
    elif t is F.avg_pool2d:
        if (_arg(node, 4, "ceil_mode") or not _arg(node, 5, "count_include_pad", True)
                or _arg(node, 6, "divisor_override")):
            raise unsupported("avg_pool2d(ceil_mode / count_include_pad=False / "
                              "divisor_override)", name)
        _pool(ctx, node, "avgpool2d", inp, _arg(node, 1, "kernel_size"),
              _arg(node, 2, "stride"), _arg(node, 3, "padding", 0))
    elif t is F.adaptive_max_pool2d:
        _adaptive_max(ctx, node, inp, _arg(node, 1, "output_size"))
    elif t is F.pad:
        _pad(ctx, node, inp, _arg(node, 1, "pad"), _arg(node, 2, "mode", "constant"),
             _arg(node, 3, "value", 0.0))
    elif t in (torch.mean, "mean"):
        _mean(ctx, node, inp, _arg(node, 1, "dim"), bool(_arg(node, 2, "keepdim", False)))
    elif t is F.interpolate or t is F.upsample:
        _upsample(ctx, node, inp, _arg(node, 3, "mode", "nearest"),
                  _arg(node, 4, "align_corners", None))
    elif t == "upsample_nearest2d":
        _upsample(ctx, node, inp, "nearest")
    elif t in ("permute", torch.permute):
        dims = args[1:] if len(args) > 2 or isinstance(args[1], int) else args[1]
        _permute(ctx, node, inp, [int(d) for d in dims])
    elif t in ("transpose", torch.transpose):
        _transpose(ctx, node, inp, int(args[1]), int(args[2]))
    elif t == "t":
        _transpose(ctx, node, inp, 0, 1)
    elif t is F.layer_norm:
        _layer_norm(ctx, node, inp, _arg(node, 1, "normalized_shape"), _arg(node, 2, "weight"),
                    _arg(node, 3, "bias"), float(_arg(node, 4, "eps", 1e-5)))
    elif t is F.batch_norm or (not isinstance(t, str) and "batch_norm" in str(t)):
        _batch_norm(ctx, node, t)
    elif t is F.hardtanh:
        lo, hi = _arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0)
        if (float(lo), float(hi)) != (0.0, 6.0):
            raise unsupported(f"hardtanh({lo}, {hi})", name, "use F.relu6 or a clamp to [0, 6]")
        ctx.emit(PlanOp("relu6", name, [ctx.src(inp)], {"drelus": 2 * ctx.numel(node)}))
    else:
        return False
    return True


def _batch_norm(ctx: Ctx, node: torch.fx.Node, t: Any) -> None:
    if t is F.batch_norm:
        rm, rv, w, b = (_arg(node, i, k) for i, k in ((1, "running_mean"), (2, "running_var"),
                                                       (3, "weight"), (4, "bias")))
        if _arg(node, 5, "training", False):
            raise unsupported("batch_norm(training=True)", node.name,
                              "call model.eval() before compiling")
        eps = float(_arg(node, 7, "eps", 1e-5))
    elif str(t) in ("aten.batch_norm.default", "aten.batch_norm"):
        nargs0: Any = node.args
        w, b, rm, rv = nargs0[1:5]
        if nargs0[5]:
            raise unsupported("batch_norm(training=True)", node.name,
                              "call model.eval() before compiling")
        eps = float(nargs0[7])
    elif "_native_batch_norm_legit_no_training" in str(t):
        nargs: Any = node.args
        w, b, rm, rv = nargs[1:5]
        eps = float(nargs[6])
    else:
        raise unsupported(f"function {t}", node.name)
    mean, var = _const(ctx, rm, node, "running_mean"), _const(ctx, rv, node, "running_var")
    assert mean is not None and var is not None
    wt, bt = _const(ctx, w, node, "weight"), _const(ctx, b, node, "bias")
    scale = (wt if wt is not None else torch.ones_like(mean)) / torch.sqrt(var + eps)
    shift = (bt if bt is not None else torch.zeros_like(mean)) - mean * scale
    ctx.fold_bn(node, ctx.src(node.args[0]), scale, shift)


def module_op(ctx: Ctx, node: torch.fx.Node, mod: nn.Module) -> bool:
    """Capture one call_module node of a module type the classic handler lacks."""
    if type(mod).__name__ == "GuardsFn":  # torch.export's shape guards: nothing to compute
        return True
    inp = node.args[0]
    if isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d):
        mean, var = mod.running_mean, mod.running_var
        if mean is None or var is None:
            raise unsupported(f"{type(mod).__name__} without running statistics", node.name,
                              "construct it with track_running_stats=True and train it")
        scale = (mod.weight.detach().double() if mod.weight is not None
                 else torch.ones_like(mean.double())) / torch.sqrt(var.double() + mod.eps)
        shift = (mod.bias.detach().double() if mod.bias is not None
                 else torch.zeros_like(mean.double())) - mean.double() * scale
        ctx.fold_bn(node, ctx.src(inp), scale, shift)
    elif isinstance(mod, nn.Conv2d) and isinstance(mod.padding, str) and \
            mod.padding_mode == "zeros":
        w = mod.weight.detach().double()
        b = mod.bias.detach().double() if mod.bias is not None else None
        conv(ctx, node, inp, w, b, mod.stride, mod.padding, mod.dilation, mod.groups)
    elif isinstance(mod, nn.ZeroPad2d | nn.ConstantPad2d):
        _pad(ctx, node, inp, _pair(mod.padding) * 2 if isinstance(mod.padding, int)
             else mod.padding, "constant", getattr(mod, "value", 0.0))
    elif isinstance(mod, nn.Sigmoid | nn.Hardswish | nn.Hardsigmoid | nn.SiLU | nn.GELU |
                    nn.Tanh):
        kind = {nn.Sigmoid: "sigmoid", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid",
                nn.SiLU: "silu", nn.GELU: "gelu", nn.Tanh: "tanh"}[type(mod)]
        if isinstance(mod, nn.GELU) and mod.approximate not in ("none", "tanh"):
            raise unsupported(f"GELU(approximate={mod.approximate!r})", node.name)
        _act(ctx, node, kind, inp)
    elif isinstance(mod, nn.Softmax):
        _softmax(ctx, node, inp, mod.dim)
    elif isinstance(mod, nn.Upsample):
        _upsample(ctx, node, inp, mod.mode, mod.align_corners)
    elif isinstance(mod, nn.AdaptiveMaxPool2d):
        _adaptive_max(ctx, node, inp, mod.output_size)
    elif isinstance(mod, nn.LayerNorm):
        _layer_norm(ctx, node, inp, mod.normalized_shape, mod.weight, mod.bias, mod.eps)
    elif isinstance(mod, nn.Hardtanh) and (mod.min_val, mod.max_val) == (0.0, 6.0):
        ctx.emit(PlanOp("relu6", node.name, [ctx.src(inp)], {"drelus": 2 * ctx.numel(node)}))
    elif isinstance(mod, nn.ChannelShuffle):
        raise unsupported("nn.ChannelShuffle", node.name,
                          "write it as view / transpose / view (supported)")
    else:
        return False
    return True
