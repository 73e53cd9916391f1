"""Run a :class:`~secinfer.models.plan.Plan` on secret shares, or in plaintext for reference."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..mpc import MPCEngine, PreparedWeight, Share, cat, maxpool2d, relu, relu6
from ..mpc.block_relu import block_relu
from ..mpc.engine import encode
from ..mpc.upsample import upsample, upsample_plain
from . import extra_ops
from .block_relu import block_relu as block_relu_plain
from .plan import Plan, PlanOp

__all__ = ["SecureModel", "run_plain"]

log = logging.getLogger(__name__)


def _avg_window_sum(x: Share, k: list[int], s: list[int], p: list[int]) -> Share:
    """Window sums through :class:`Share`'s methods (shapes only at the helper)."""
    xp = x.pad((p[1], p[1], p[0], p[0]))
    return xp.unfold(2, k[0], s[0]).unfold(3, k[1], s[1]).sum(dim=(-1, -2))


class SecureModel:
    """A plan bound to an engine, with weights shared and their Beaver masks opened once.

    ``weight_shares`` maps ``<node>.w`` / ``<node>.b`` to this party's int64 shares (encoded at
    the plan's ``frac_bits``); the helper passes ``None``.
    """

    def __init__(self, engine: MPCEngine, plan: Plan,
                 weight_shares: dict[str, torch.Tensor] | None) -> None:
        if engine.f != plan.frac_bits:
            raise ValueError(f"plan was compiled at {plan.frac_bits} fractional bits, engine "
                             f"runs {engine.f}")
        self.engine, self.plan = engine, plan
        self.weights: dict[str, PreparedWeight] = {}
        self.debug_log: list[dict[str, object]] = []
        self._weight_shares: dict[str, Share] = {}
        self.biases: dict[str, Share] = {}
        f = plan.frac_bits
        with engine.session.op("prepare_weights"):
            for op in plan.ops:
                if op.kind not in ("conv2d", "linear", "layer_norm"):
                    continue
                wshape, bshape = tuple(op.weights["w"]), tuple(op.weights["b"])
                if engine.is_helper:
                    w = engine.placeholder(wshape, f)
                    self.biases[op.name] = engine.placeholder(bshape, f)
                else:
                    if weight_shares is None:
                        raise ValueError("compute parties need their weight shares")
                    w_data = _get(weight_shares, f"{op.name}.w", wshape)
                    self.biases[op.name] = Share(_get(weight_shares, f"{op.name}.b", bshape), f)
                    w = Share(w_data, f)
                self.weights[op.name] = engine.prepare_weight(w)
                if engine.config.debug_reveal_insecure:
                    self._weight_shares[op.name] = w

    def forward(self, x: Share) -> Share:
        env: dict[str, Share] = {self.plan.input_name: x}
        sess = self.engine.session
        debug = self.engine.config.debug_reveal_insecure
        for op in self.plan.ops:
            with sess.op(op.name):
                env[op.name] = self._run(op, [env[i] for i in op.inputs])
            if debug:
                self._debug_check(op, env)
        return env[self.plan.output]

    def _debug_check(self, op: PlanOp, env: dict[str, Share]) -> None:
        """INSECURE debug mode: open the op's inputs, weights and output to P0 and P1, recompute
        the op in float64 and report its deviation and any fixed-point overflow."""
        e = self.engine
        opened = {name: e.reveal(env[name]) for name in (*op.inputs, op.name)}
        weights: dict[str, torch.Tensor] = {}
        if op.name in self.weights:
            for key, share in (("w", self._weight_shares.get(op.name)),
                               ("b", self.biases[op.name])):
                if share is not None:
                    val = e.reveal(share)
                    if val is not None:
                        weights[f"{op.name}.{key}"] = val
        if e.is_helper:
            return
        names = [f"__in{i}" for i in range(len(op.inputs))]
        sub = Plan(input_name="__in0", input_shape=[], output=op.name,
                   frac_bits=self.plan.frac_bits,
                   ops=[PlanOp(op.kind, op.name, names, op.params, op.weights)])
        ins = [opened[n] for n in op.inputs]
        env_plain = {f"__in{i}": t for i, t in enumerate(ins) if t is not None}
        ref = run_plain(sub, weights, env_plain["__in0"], extra_inputs=env_plain)
        got = opened[op.name]
        assert got is not None
        err = (got - ref).abs().max().item() if got.numel() else 0.0
        bound = 2.0 ** (62 - 2 * self.plan.frac_bits)
        self.debug_log.append({"op": op.name, "kind": op.kind, "max_abs_error": err,
                               "max_abs_value": got.abs().max().item() if got.numel() else 0.0,
                               "overflow": bool(got.numel() and got.abs().max().item() > bound)})
        log.warning("INSECURE debug: %s (%s) max |secure - plaintext| = %.3g", op.name, op.kind,
                    err)

    def _run(self, op: PlanOp, xs: list[Share]) -> Share:
        e, p = self.engine, op.params
        x = xs[0]
        if op.kind == "conv2d":
            return e.conv2d(x, self.weights[op.name], self.biases[op.name], stride=p["stride"],
                            padding=p["padding"], dilation=p["dilation"], groups=p["groups"])
        if op.kind == "linear":
            return e.linear(x, self.weights[op.name], self.biases[op.name])
        if op.kind == "relu":
            return relu(e, x)
        if op.kind == "relu6":
            return relu6(e, x)
        if op.kind == "block_relu":
            return block_relu(e, x, p["block_sizes"])
        if op.kind == "maxpool2d":
            return maxpool2d(e, x, p["kernel"], p["stride"], p["padding"])
        if op.kind == "avgpool2d":
            k = p["kernel"]
            return e.mul_public(_avg_window_sum(x, k, p["stride"], p["padding"]),
                                1.0 / (k[0] * k[1]))
        if op.kind == "global_avgpool":
            h, w = x.shape[-2:]
            return e.mul_public(x.sum(dim=(-1, -2), keepdim=True), 1.0 / (h * w))
        if op.kind == "flatten":
            return x.flatten(p["start_dim"])
        if op.kind == "reshape":
            return x.reshape(*p["shape"])
        if op.kind == "add":
            return xs[0] + xs[1]
        if op.kind == "cat":
            return cat(xs, p["dim"])
        if op.kind == "identity":
            return x
        if op.kind == "upsample":
            return upsample(e, x, p["size"], p["mode"], p["align_corners"])
        return extra_ops.secure(e, op, xs, self.weights.get(op.name), self.biases.get(op.name))


def _get(shares: dict[str, torch.Tensor], key: str, shape: tuple[int, ...]) -> torch.Tensor:
    if key not in shares:
        raise ValueError(f"weight share {key!r} is missing from the bundle")
    t = shares[key]
    if tuple(t.shape) != shape or t.dtype != torch.int64:
        raise ValueError(f"weight share {key!r} is {tuple(t.shape)} {t.dtype}, plan says "
                         f"{shape} int64")
    return t


def run_plain(plan: Plan, weights: dict[str, torch.Tensor], x: torch.Tensor,
              fixed_point: bool = False,
              extra_inputs: dict[str, torch.Tensor] | None = None,
              record: dict[str, float] | None = None,
              counts: dict[str, int] | None = None,
              round_ops: frozenset[str] | None = None,
              shapes: dict[str, list[int]] | None = None) -> torch.Tensor:
    """Evaluate a plan in float64 (optionally rounding weights to the plan's fixed point).

    ``record`` / ``counts``, when given, receive each op's max |value| over the batch and its
    number of output elements per input (for :mod:`.calibrate`), ``shapes`` each op's output
    shape; ops whose kind is in
    ``round_ops`` have their output floored to the plan's fixed point, as a truncation does.
    """
    def wt(key: str) -> torch.Tensor:
        t = weights[key].double()
        return encode(t, plan.frac_bits).double() / 2**plan.frac_bits if fixed_point else t

    env = {plan.input_name: x.double()}
    env.update({k: v.double() for k, v in (extra_inputs or {}).items()})
    for op in plan.ops:
        xs = [env[i] for i in op.inputs]
        a, p = xs[0], op.params
        if op.kind == "conv2d":
            y = F.conv2d(a, wt(f"{op.name}.w"), wt(f"{op.name}.b"), p["stride"], p["padding"],
                         p["dilation"], p["groups"])
        elif op.kind == "linear":
            y = F.linear(a, wt(f"{op.name}.w"), wt(f"{op.name}.b"))
        elif op.kind == "relu":
            y = a.clamp(min=0)
        elif op.kind == "relu6":
            y = a.clamp(0, 6)
        elif op.kind == "block_relu":
            y = block_relu_plain(a, torch.tensor(p["block_sizes"]).reshape(-1, 2))
        elif op.kind == "maxpool2d":
            y = F.max_pool2d(a, p["kernel"], p["stride"], p["padding"])
        elif op.kind == "avgpool2d":
            y = F.avg_pool2d(a, p["kernel"], p["stride"], p["padding"])
        elif op.kind == "global_avgpool":
            y = a.mean(dim=(-1, -2), keepdim=True)
        elif op.kind == "flatten":
            y = a.flatten(p["start_dim"])
        elif op.kind == "reshape":
            y = a.reshape(*p["shape"])
        elif op.kind == "add":
            y = xs[0] + xs[1]
        elif op.kind == "cat":
            y = torch.cat(xs, p["dim"])
        elif op.kind == "upsample":
            y = upsample_plain(a, p["size"], p["mode"], p["align_corners"])
        elif op.kind in extra_ops.EXTRA_KINDS:
            y = extra_ops.plain(op, xs, wt)
        else:
            y = a
        if round_ops is not None and op.kind in round_ops:
            y = torch.floor(y * 2**plan.frac_bits) / 2**plan.frac_bits
        env[op.name] = y
        if record is not None:
            record[op.name] = float(y.abs().max()) if y.numel() else 0.0
        if counts is not None:
            counts[op.name] = int(y[0].numel()) if y.dim() else 1
        if shapes is not None:
            shapes[op.name] = list(y.shape)
    return env[plan.output]
