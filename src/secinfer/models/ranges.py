"""Sound bounds on every value a plan computes, for inputs in a box, and the ring's headroom.

On shares nothing can be checked at run time: a value too large for the fixed point wraps
mod 2^64 and comes back as a wrong answer with no error. So the model owner states the valid
input range at compile time, and the compiler proves, by interval arithmetic (interval bound
propagation, Gowal et al. 2018) through the captured plan, that no value of any op can exceed
what the ring holds; the user's client then refuses inputs outside the range before sending.

Per op, with the input of the op in [l, u] elementwise:

* linear / conv: centre c = (l + u) / 2 and radius r = (u - l) / 2 give
  ``y in op(c, W) + b -+ op(r, |W|)`` (exact for one layer, sound through a network);
* ReLU, ReLU6, max / average pooling, flatten, reshape, cat, identity: monotone, applied to
  l and u; block ReLU gates each element by 0 or 1, so ``[min(l, 0), max(u, 0)]``;
* add: the sums of the bounds.

The ring constraint: a product of an activation and a weight, before its truncation, carries
2f fractional bits, so every linear output y needs ``|y| 2^(2f) < 2^62`` (one bit of margin
below the sign bit for the sum of the two shares' carries), i.e. ``|y| < 2^(62 - 2f)``;
every other op's values are at scale f with more room. The bound is worst case over the box,
so it may be far above what real inputs reach (it grows with depth); an owner whose model
fails the check narrows the range, lowers ``frac_bits``, or checks a calibration set instead
(not sound: then say so).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..mpc.upsample import upsample_plain
from . import extra_ops
from .plan import Plan

__all__ = ["RangeError", "interval_bounds", "check_headroom", "range_slack", "drelu_window"]


class RangeError(ValueError):
    """The plan's values cannot be proven to fit the fixed point for the stated input range."""


def _lin(op_kind: str, p: dict, w: torch.Tensor, b: torch.Tensor | None, lo: torch.Tensor,
         hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c, r = (lo + hi) / 2, (hi - lo) / 2
    if op_kind == "conv2d":
        yc = F.conv2d(c, w, b, p["stride"], p["padding"], p["dilation"], p["groups"])
        yr = F.conv2d(r, w.abs(), None, p["stride"], p["padding"], p["dilation"], p["groups"])
    else:
        yc, yr = F.linear(c, w, b), F.linear(r, w.abs())
    return yc - yr, yc + yr


def range_slack(lo: float, hi: float) -> float:
    """How far outside ``[lo, hi]`` an input may still be and is still covered by the bounds.

    Inputs are float32 (a normalised pixel 0 is -0.81019825 in float32, -0.81019830 in
    float64); the compiler bounds the slightly wider box and the client accepts it.
    """
    return 1e-6 * max(1.0, abs(lo), abs(hi))


def interval_bounds(plan: Plan, weights: dict[str, torch.Tensor], lo: float, hi: float
                    ) -> dict[str, float]:
    """max |value| of each op's output over every input in ``[lo, hi]^input_shape`` (widened
    by :func:`range_slack`)."""
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise RangeError(f"input range must be finite with lo < hi, got [{lo}, {hi}]")
    shape = (1, *plan.input_shape)
    eps = range_slack(lo, hi)
    env = {plan.input_name: (torch.full(shape, float(lo) - eps, dtype=torch.float64),
                             torch.full(shape, float(hi) + eps, dtype=torch.float64))}
    out: dict[str, float] = {}
    for op in plan.ops:
        ins = [env[i] for i in op.inputs]
        (l, u), p = ins[0], op.params
        if op.kind in ("conv2d", "linear"):
            w = weights[f"{op.name}.w"].double()
            b = weights.get(f"{op.name}.b")
            y = _lin(op.kind, p, w, None if b is None else b.double(), l, u)
        elif op.kind == "relu":
            y = (l.clamp(min=0), u.clamp(min=0))
        elif op.kind == "relu6":
            y = (l.clamp(0, 6), u.clamp(0, 6))
        elif op.kind == "block_relu":
            y = (l.clamp(max=0), u.clamp(min=0))
        elif op.kind == "maxpool2d":
            y = (F.max_pool2d(l, p["kernel"], p["stride"], p["padding"]),
                 F.max_pool2d(u, p["kernel"], p["stride"], p["padding"]))
        elif op.kind == "avgpool2d":
            y = (F.avg_pool2d(l, p["kernel"], p["stride"], p["padding"]),
                 F.avg_pool2d(u, p["kernel"], p["stride"], p["padding"]))
        elif op.kind == "global_avgpool":
            y = (l.mean(dim=(-1, -2), keepdim=True), u.mean(dim=(-1, -2), keepdim=True))
        elif op.kind == "flatten":
            y = (l.flatten(p["start_dim"]), u.flatten(p["start_dim"]))
        elif op.kind == "reshape":
            y = (l.reshape(*p["shape"]), u.reshape(*p["shape"]))
        elif op.kind == "add":
            y = (ins[0][0] + ins[1][0], ins[0][1] + ins[1][1])
        elif op.kind == "cat":
            y = (torch.cat([a for a, _ in ins], p["dim"]), torch.cat([b for _, b in ins],
                                                                       p["dim"]))
        elif op.kind == "identity":
            y = (l, u)
        elif op.kind == "upsample":  # bilinear / nearest weights are >= 0 and sum to 1
            y = (upsample_plain(l, p["size"], p["mode"], p["align_corners"]),
                 upsample_plain(u, p["size"], p["mode"], p["align_corners"]))
        elif op.kind in extra_ops.EXTRA_KINDS:
            y = extra_ops.interval(op, ins, weights)
        else:
            raise RangeError(f"no interval rule for op {op.kind!r} ({op.name})")
        env[op.name] = y
        out[op.name] = float(torch.maximum(y[0].abs(), y[1].abs()).max())
    return out


def check_headroom(bounds: dict[str, float], frac_bits: int) -> float:
    """The largest bound, after checking every op against the ring: raises naming the op.

    Returns the headroom in bits: ``62 - 2f - log2(max bound)``.
    """
    limit = 2.0 ** (62 - 2 * frac_bits)
    worst_name, worst = max(bounds.items(), key=lambda kv: kv[1])
    if worst >= limit:
        raise RangeError(
            f"op {worst_name!r} can reach |{worst:.3g}| for inputs in the stated range, over "
            f"the fixed point's 2^{62 - 2 * frac_bits} = {limit:.3g} at {frac_bits} fractional "
            "bits (it would wrap and give wrong results): narrow the input range or lower "
            "frac_bits")
    return 62 - 2 * frac_bits - math.log2(max(worst, 2.0 ** -frac_bits))


# ops whose secure form takes no sign at all (linear, data movement, sums)
_NO_COMPARISON = frozenset({
    "conv2d", "linear", "avgpool2d", "global_avgpool", "flatten", "reshape", "add", "cat",
    "identity", "upsample", "pad", "affine", "sub", "mul", "mean", "permute",
})


def drelu_window(plan: Plan, bounds: dict[str, float], frac_bits: int,
                 compares_output: bool = False) -> int:
    """High bits every secure comparison of ``plan`` may ignore (``MPCConfig.drelu_high_bits``)
    when every input lies in the range ``bounds`` were proven for; 0 when nothing is proven.

    The approximate DReLU of Gorski & Avidan reads the sign from bit ``63 - h`` and compares
    over ``63 - h`` bits: exact for every |x| < 2^(63 - h) in ring units, and its bytes and
    local work shrink with the bits. With the interval bounds of :func:`interval_bounds` the
    largest value whose sign is taken is known, so ``h`` is chosen to keep it exact:

    1. the compared magnitude of each comparison op: a ReLU's input bound; ReLU6 compares
       ``x`` and ``x - 6``; a max pool compares differences of two inputs (twice the bound);
       a block ReLU compares a block's sum (bound times the largest block's area); an output
       policy that ranks the outputs (``compares_output``) compares differences of two;
    2. the worst of them, at scale ``2^f`` and plus one unit of truncation error, needs
       ``b = ceil(log2(.))`` bits;
    3. ``h = 62 - b - 1``, at least 0: the sign is read from bit ``b + 2``, two bits spare
       (``h + 2`` would still be exact, ``h + 3`` is not; tested at the bound).

    Any op whose comparisons are not covered above (a padded max pool, whose padding is a
    huge negative constant; the SecLMM non-linearities) keeps the full 63-bit comparison:
    the answer is 0.
    """
    by_name = {op.name: op for op in plan.ops}
    worst = 0.0
    for op in plan.ops:
        if op.kind in _NO_COMPARISON:
            continue
        src = bounds.get(op.inputs[0]) if op.inputs[0] in by_name else None
        if src is None:  # the plan's input itself
            src = max(bounds.values())
        p = op.params
        if op.kind == "relu":
            need = src
        elif op.kind == "relu6":
            need = src + 6.0
        elif op.kind == "maxpool2d":
            pad = p["padding"]
            if any(pad) if isinstance(pad, (list, tuple)) else pad:
                return 0
            need = 2.0 * src
        elif op.kind == "block_relu":
            sizes = p["block_sizes"]
            flat = [int(v) for v in (sizes if not sizes or isinstance(sizes[0], int)
                                     else [v for pair in sizes for v in pair])]
            areas = [flat[i] * flat[i + 1] for i in range(0, len(flat) - 1, 2)]
            need = src * max([1, *areas])
        else:
            return 0
        worst = max(worst, need)
    if compares_output:
        worst = max(worst, 2.0 * bounds[plan.output])
    if worst == 0.0:
        return 0
    bits = math.ceil(math.log2(worst * 2.0 ** frac_bits + 1.0))
    return max(0, 62 - bits - 1)
