"""What ``compile`` built and what it will cost: ops, comparisons, predicted bytes, ranges.

Predicted bytes per inference (batch 1) come from the documented per-op costs:

* a comparison (DReLU) on n elements: :func:`secinfer.mpc.drelu_bytes` (checked by the
  known-answer test in tests/mpc), plus the selection product: 40 bytes per element (P0 and
  P1 each open 2 masked int64 values, the helper sends P1 its int64 product share);
* a product with a prepared weight (conv, linear): P0 and P1 each send the masked activation,
  8 bytes per input element, and the helper 8 bytes per output element (the weight's mask is
  opened once, at load time);
* a product of two shares (``mul``): 40 bytes per element, as the selection; the smooth
  activations' internal products (exp, reciprocal, ...) are not counted, only their recorded
  comparisons, so for models with smooth ops the figure is a lower bound;
* exact truncation: 3 parties x f bits per truncated element (int16/int32 on the wire).

Rounds (P1's, the party with the most; checked against the measured accounting): a product
1, a DReLU 2 and its selection 1 (a ReLU: 3), a k x k max pool ceil(log2 k^2) times 3, an exact
truncation 1 more, local ops 0. Not predicted (``None``) for ReLU6, block ReLU and the smooth
ops, whose protocols chain several sub-steps: the runtime's ``--report`` measures them.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from ..mpc import drelu_bytes
from .calibrate import TRUNCATING_KINDS
from .plan import Plan

__all__ = ["predicted_bytes", "describe"]


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _counts(plan: Plan) -> dict[str, int]:
    """Output elements per input of every op (a plaintext run on zeros)."""
    import torch

    from .secure import run_plain

    weights = {f"{op.name}.{k}": torch.zeros(shape, dtype=torch.float64)
               for op in plan.ops for k, shape in op.weights.items()}
    counts: dict[str, int] = {plan.input_name: _numel(plan.input_shape)}
    run_plain(plan, weights, torch.zeros((1, *plan.input_shape), dtype=torch.float64),
              counts=counts)
    return counts


def op_bytes(plan: Plan, truncation: str = "local") -> dict[str, dict[str, int]]:
    """Predicted bytes sent per inference by all parties, per op and cause (see the module)."""
    counts = _counts(plan)
    wire = 2 if plan.frac_bits <= 16 else 4
    out: dict[str, dict[str, int]] = {}
    for op in plan.ops:
        c = {"comparisons": 0, "products": 0, "truncation": 0}
        n = int(op.params.get("drelus", 0))
        if n:
            sent = drelu_bytes(n, 63)
            c["comparisons"] = sum(v for k, v in sent.items() if k.endswith("_sent")) + 40 * n
        if op.kind in ("conv2d", "linear"):
            c["products"] = 16 * counts[op.inputs[0]] + 8 * counts[op.name]
        elif op.kind == "mul":
            c["products"] = 40 * counts[op.name]
        if truncation == "exact" and op.kind in TRUNCATING_KINDS:
            c["truncation"] = 3 * wire * counts[op.name]
        out[op.name] = c
    return out


_LOCAL = frozenset({"pad", "upsample", "permute", "flatten", "reshape", "add", "sub", "cat",
                    "identity"})
_SCALED = frozenset({"affine", "avgpool2d", "global_avgpool", "mean"})  # local x public + trunc


def op_rounds(plan: Plan, truncation: str = "local") -> dict[str, int | None]:
    """P1's predicted communication rounds per op (``None``: not predicted)."""
    exact = 1 if truncation == "exact" else 0
    out: dict[str, int | None] = {}
    for op in plan.ops:
        r: int | None
        if op.kind in ("conv2d", "linear", "mul"):
            r = 1 + exact
        elif op.kind == "relu":
            r = 3
        elif op.kind == "maxpool2d":
            k = op.params["kernel"][0] * op.params["kernel"][1]
            r = 3 * math.ceil(math.log2(k)) if k > 1 else 0
        elif op.kind in _LOCAL:
            r = 0
        elif op.kind in _SCALED:
            r = exact if not (op.kind == "affine" and float(op.params["scale"]).is_integer()) \
                else 0
        else:
            r = None
        out[op.name] = r
    return out


def predicted_bytes(plan: Plan, truncation: str = "local") -> dict[str, int]:
    """Bytes sent per inference by all parties, split by cause (a lower bound, see above)."""
    tot = {"comparisons": 0, "products": 0, "truncation": 0}
    for c in op_bytes(plan, truncation).values():
        for k, v in c.items():
            tot[k] += v
    return {**tot, "total": sum(tot.values())}


def describe(plan: Plan, meta: dict[str, Any]) -> str:
    """A few lines for the model owner: ops, comparisons, predicted bytes, ranges."""
    kinds = Counter(op.kind for op in plan.ops)
    trunc = str(meta.get("truncation", "local"))
    cost = predicted_bytes(plan, trunc)
    lines = [f"plan: {len(plan.ops)} ops ({', '.join(f'{k} x{n}' for k, n in kinds.items())})",
             f"comparisons per inference: {plan.relu_count()}",
             f"predicted bytes per inference (all parties, lower bound): {cost['total']:,} "
             f"(comparisons {cost['comparisons']:,}, products {cost['products']:,}, "
             f"truncation {cost['truncation']:,})",
             _rounds_line(plan, trunc),
             f"frac_bits {plan.frac_bits}, truncation {trunc}"]
    if meta.get("input_range") is not None:
        lines.append(f"valid input range {meta['input_range']} (the client enforces it)")
    cal = meta.get("calibration")
    if isinstance(cal, dict):
        lines.append(f"calibrated on {cal['samples']} samples: local-truncation risk "
                     f"{cal['local_risk']:.2g}/inference, max plaintext fixed-point logit "
                     f"error {cal['logit_error']:.3g}")
        for name, v in cal["ranges"].items():
            lines.append(f"  {name:>24}: max |value| {v:.4g}")
    return "\n".join(lines)


def _rounds_line(plan: Plan, truncation: str) -> str:
    rounds = op_rounds(plan, truncation)
    known = sum(r for r in rounds.values() if r is not None)
    unknown = sorted({op.kind for op in plan.ops if rounds[op.name] is None})
    line = f"predicted rounds per inference (P1, sequential ops): {known}"
    return line + (f" + not predicted for {', '.join(unknown)}" if unknown else "")
