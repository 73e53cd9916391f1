"""Executors of the plan ops added for user models: on shares, in plaintext, and as intervals.

Each op kind here has three forms that must agree: :func:`secure` (the engine's protocols),
:func:`plain` (float64 reference) and :func:`interval` (sound bounds for :mod:`.ranges`).

* pad, permute: local rearrangements of the shares (upsampling is :mod:`secinfer.mpc.upsample`);
* affine ``x * scale + shift`` with public scalars: one local product and truncation (none
  when the scale is an integer);
* sub, mul (share x share, broadcast): a subtraction; one Beaver product;
* mean over one feature dim: :func:`~secinfer.mpc.nonlinear_norm.mean_last`;
* sigmoid, tanh, SiLU, GELU (tanh form), softmax (last dim), layer norm: the transformer
  engine's approximations (:mod:`secinfer.mpc.nonlinear`), accurate to a few 1e-3 at
  ``frac_bits >= 16``;
* hard-swish ``x relu6(x + 3) / 6`` and hard-sigmoid ``relu6(x + 3) / 6``: one ReLU6 (two
  DReLUs) and, for hard-swish, one product.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..mpc import MPCEngine, PreparedWeight, Share, relu6
from ..mpc.nonlinear import gelu, sigmoid, tanh
from ..mpc.nonlinear_norm import layer_norm, mean_last, softmax
from ..mpc.share import broadcast_shape
from .plan import PlanOp

__all__ = ["EXTRA_KINDS", "secure", "plain", "interval"]

EXTRA_KINDS = frozenset({
    "pad", "affine", "sub", "mul", "mean", "sigmoid", "tanh", "silu", "gelu", "softmax",
    "hardswish", "hardsigmoid", "permute", "layer_norm",
})


def _bcast(a: Share, b: Share) -> tuple[Share, Share]:
    shape = broadcast_shape(a.shape, b.shape)
    return a.expand(*shape).contiguous(), b.expand(*shape).contiguous()


def secure(e: MPCEngine, op: PlanOp, xs: list[Share], w: PreparedWeight | None,
           b: Share | None) -> Share:
    """Run one extra op on shares."""
    x, p = xs[0], op.params
    k = op.kind
    if k == "pad":
        return x.pad(p["pad"])
    if k == "permute":
        return x.permute(*p["dims"]).contiguous()
    if k == "affine":
        s = float(p["scale"])
        y = x.mul_int(int(s)) if s == int(s) else e.mul_public(x, s)
        return e.add_public(y, float(p["shift"])) if p["shift"] else y
    if k == "sub":
        a, c = _bcast(xs[0], xs[1])
        return a - c
    if k == "mul":
        a, c = _bcast(xs[0], xs[1])
        return e.mul(a, c)
    if k == "mean":
        d = int(p["dim"])
        t = x if d == x.data.dim() - 1 else x.transpose(d, -1)
        m = mean_last(e, t)
        m = m if d == x.data.dim() - 1 else m.transpose(d, -1)
        return m if p["keepdim"] else Share(m.data.squeeze(d), m.frac_bits)
    if k == "sigmoid":
        return sigmoid(e, x)
    if k == "tanh":
        return tanh(e, x)
    if k == "silu":
        return e.mul(x, sigmoid(e, x))
    if k == "gelu":
        return gelu(e, x)
    if k == "softmax":
        return softmax(e, x)
    if k in ("hardswish", "hardsigmoid"):
        h = e.mul_public(relu6(e, e.add_public(x, 3.0)), 1.0 / 6.0)
        return h if k == "hardsigmoid" else e.mul(x, h)
    if k == "layer_norm":
        return layer_norm(e, x, w, b, float(p["eps"]))
    raise NotImplementedError(f"plan op {k} at {op.name} has no secure executor")


def plain(op: PlanOp, xs: list[torch.Tensor], wt: Any) -> torch.Tensor:
    """Run one extra op in float64 (``wt(key)`` returns a weight)."""
    a, p, k = xs[0], op.params, op.kind
    if k == "pad":
        return F.pad(a, p["pad"])
    if k == "permute":
        return a.permute(*p["dims"])
    if k == "affine":
        return a * float(p["scale"]) + float(p["shift"])
    if k == "sub":
        return xs[0] - xs[1]
    if k == "mul":
        return xs[0] * xs[1]
    if k == "mean":
        return a.mean(dim=int(p["dim"]), keepdim=bool(p["keepdim"]))
    if k == "sigmoid":
        return torch.sigmoid(a)
    if k == "tanh":
        return torch.tanh(a)
    if k == "silu":
        return F.silu(a)
    if k == "gelu":
        return F.gelu(a)
    if k == "softmax":
        return torch.softmax(a, -1)
    if k == "hardswish":
        return F.hardswish(a)
    if k == "hardsigmoid":
        return F.hardsigmoid(a)
    if k == "layer_norm":
        c = a.shape[-1]
        return F.layer_norm(a, (c,), wt(f"{op.name}.w"), wt(f"{op.name}.b"), float(p["eps"]))
    raise NotImplementedError(f"plan op {k} at {op.name} has no plaintext executor")


_MIN = {"silu": -0.2785, "gelu": -0.17, "hardswish": -0.375}


def interval(op: PlanOp, ins: list[tuple[torch.Tensor, torch.Tensor]],
             weights: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sound elementwise bounds of one extra op's output."""
    (lo, hi), p, k = ins[0], op.params, op.kind
    if k in ("pad", "permute", "mean"):
        return plain(op, [lo], None), plain(op, [hi], None)
    if k == "affine":
        s, sh = float(p["scale"]), float(p["shift"])
        a, b = lo * s + sh, hi * s + sh
        return torch.minimum(a, b), torch.maximum(a, b)
    if k == "sub":
        return ins[0][0] - ins[1][1], ins[0][1] - ins[1][0]
    if k == "mul":
        (a0, a1), (b0, b1) = ins
        q = [a0 * b0, a0 * b1, a1 * b0, a1 * b1]
        return (torch.minimum(torch.minimum(q[0], q[1]), torch.minimum(q[2], q[3])),
                torch.maximum(torch.maximum(q[0], q[1]), torch.maximum(q[2], q[3])))
    if k in ("sigmoid", "tanh", "hardsigmoid"):
        return plain(op, [lo], None), plain(op, [hi], None)
    if k in _MIN:
        top = torch.maximum(plain(op, [lo], None), plain(op, [hi], None))
        return torch.full_like(lo, _MIN[k]), top.clamp(min=0)
    if k == "softmax":
        return torch.zeros_like(lo), torch.ones_like(hi)
    if k == "layer_norm":
        c = int(lo.shape[-1])
        w, b = weights[f"{op.name}.w"].double(), weights[f"{op.name}.b"].double()
        r = math.sqrt(max(c - 1, 1)) * w.abs()
        return (b - r).expand_as(lo), (b + r).expand_as(hi)
    raise ValueError(f"no interval rule for op {k!r} ({op.name})")
