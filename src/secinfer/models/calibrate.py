"""Compile-time calibration: the numbers the servers will compute, checked before they run.

A value too large for the fixed point wraps mod 2^64 on the shares and comes back as a wrong
answer with no error; SecureML's local truncation also fails (an error of ~2^(64 - f)) with
probability growing with the value. Nothing can be checked on shares at run time, so the
compiler checks a calibration set (the owner's or the user's samples) in plaintext:

1. encode the samples and the weights at ``frac_bits`` (the servers' encoding) and run the
   plan in float64 on the encoded values, recording every op's max |value|;
2. wrap check: a product carries 2f fractional bits before its truncation, so every op's
   value v needs ``margin * |v| * 2^(2f) < 2^62`` (the exact truncation's domain; one bit
   below the sign for the shares' carry); otherwise the setting is refused naming the layer;
3. local-truncation risk: an element of magnitude |v| (2f fractional bits) truncated locally
   is wrong with probability at most ``|v| 2^(2f) / 2^63`` (SecureML, Thm 1); summed over the
   truncated elements of one inference. Above ``max_risk`` (1e-9) the exact truncation is
   chosen (one round, 3f bits per element), or, when the caller fixed ``truncation='local'``,
   the setting is refused;
4. resolution: the fixed-point plaintext run (inputs and weights encoded, every truncated
   op's output floored to 2^-f) must give the float model's predictions on every sample,
   otherwise the setting is refused as too coarse;
5. the valid input range is the calibration set's [min, max]; the client enforces it.

Calibration is measured, not proven: inputs unlike the calibration set may reach larger values
(``margin``, default 4, covers that much); :mod:`.ranges` gives the sound interval bound.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from ..mpc.config import Truncation
from ..mpc.engine import encode
from .plan import Plan
from .ranges import RangeError
from .secure import run_plain

__all__ = ["Calibration", "calibrate", "FRAC_BITS_RANGE", "TRUNCATING_KINDS"]

FRAC_BITS_RANGE = range(1, 25)  # what MPCConfig accepts

#: ops whose output is a product truncated by f bits on the shares
TRUNCATING_KINDS = frozenset({
    "conv2d", "linear", "avgpool2d", "global_avgpool", "affine", "mul", "mean", "sigmoid",
    "tanh", "silu", "gelu", "softmax", "hardswish", "hardsigmoid", "layer_norm",
})


@dataclass
class Calibration:
    frac_bits: int
    truncation: str
    input_range: list[float]
    local_risk: float                      # P(some local truncation fails) per inference
    ranges: dict[str, float] = field(default_factory=dict)  # op -> max |value|
    samples: int = 0
    margin: float = 4.0
    logit_error: float = 0.0               # max |fixed-point - float| output, plaintext

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _fixed(x: torch.Tensor, f: int) -> torch.Tensor:
    return encode(x.double(), f).double() / 2**f


def calibrate(plan: Plan, weights: dict[str, torch.Tensor], samples: torch.Tensor,
              truncation: Truncation | None = None, margin: float = 4.0,
              max_risk: float = 1e-9) -> Calibration:
    """Check ``plan`` at its ``frac_bits`` on ``samples`` ([n, *input_shape]); see the module.

    Raises :class:`~.ranges.RangeError` naming the layer when a value would wrap, or when
    ``truncation='local'`` is asked for and its risk exceeds ``max_risk``.
    """
    f = plan.frac_bits
    if f not in FRAC_BITS_RANGE:
        raise RangeError(f"frac_bits must be in 1..24 (the engine's limit), got {f}")
    if samples.dim() != len(plan.input_shape) + 1 or list(samples.shape[1:]) != plan.input_shape:
        raise RangeError(f"calibration samples are {list(samples.shape)}, the model takes "
                         f"[n, {', '.join(map(str, plan.input_shape))}]")
    record: dict[str, float] = {}
    counts: dict[str, int] = {}
    ref = run_plain(plan, weights, samples.double())
    fixed = run_plain(plan, weights, _fixed(samples, f), fixed_point=True, record=record,
                      counts=counts, round_ops=TRUNCATING_KINDS)
    logit_error = float((fixed - ref).abs().max()) if ref.numel() else 0.0
    limit = 2.0 ** 62
    risk = 0.0
    for op in plan.ops:
        v = record.get(op.name, 0.0)
        if margin * v * 2.0 ** (2 * f) >= limit:
            raise RangeError(
                f"layer {op.name!r} ({op.kind}) reaches |{v:.4g}| on the calibration set; at "
                f"{f} fractional bits a product there needs {math.log2(max(v, 1e-300)) + 2 * f:.1f}"
                f" + {math.log2(margin):.0f} (margin) bits, over the ring's 62: it would wrap "
                f"and give wrong results. Use frac_bits <= {_max_f(v, margin)} or scale the "
                "inputs down")
        if op.kind in TRUNCATING_KINDS:
            per_elem = min(1.0, margin * v * 2.0 ** (2 * f) / 2.0 ** 63)
            risk += counts.get(op.name, 0) * per_elem
    risk = min(risk, 1.0)
    if ref.dim() == 2 and ref.shape[1] > 1:
        changed = int((fixed.argmax(-1) != ref.argmax(-1)).sum())
        if changed:
            raise RangeError(
                f"at {f} fractional bits the fixed point changes {changed} of "
                f"{ref.shape[0]} calibration predictions (max logit error {logit_error:.3g}): "
                "too coarse, raise frac_bits")
    if truncation is None:
        truncation = "local" if risk <= max_risk else "exact"
    elif truncation == "local" and risk > max_risk:
        worst = max((o for o in plan.ops if o.kind in TRUNCATING_KINDS),
                    key=lambda o: record.get(o.name, 0.0))
        raise RangeError(
            f"local truncation at {f} fractional bits fails with probability {risk:.2g} per "
            f"inference (above {max_risk:g}; largest at layer {worst.name!r}, "
            f"|{record.get(worst.name, 0.0):.4g}|): use truncation='exact' or lower frac_bits")
    lo, hi = float(samples.min()), float(samples.max())
    return Calibration(f, truncation, [lo, hi], risk, record, int(samples.shape[0]), margin,
                       logit_error)


def _max_f(v: float, margin: float) -> int:
    f = 0
    while f < 24 and margin * v * 2.0 ** (2 * (f + 1)) < 2.0 ** 62:
        f += 1
    return f
