"""What ``compile`` built and what it will cost: ops, comparisons, predicted bytes, ranges.

Predicted bytes per inference (batch 1) come from the documented per-op costs:

* a comparison (DReLU) on n elements: :func:`secinfer.mpc.drelu_bytes` (checked by the
  known-answer test in tests/mpc), plus the selection product (P0 and P1 each open 2 masked
  int64 values per element: 32 bytes);
* a product with a prepared weight (conv, linear): P0 and P1 each send the masked activation,
  8 bytes per input element (the weight's mask is opened once, at load time);
* a product of two shares (mul, the smooth activations' internal products): 16 bytes per
  element each way; counted for ``mul`` only, the smooth activations' internal products are
  listed as comparisons (``drelus``) and not as bytes, so their bytes are a lower bound;
* exact truncation: 3 parties x f bits per truncated element (int16/int32 on the wire).

Rounds are not predicted here: the runtime's accounting (``--report``) measures them.
"""

from __future__ import annotations

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


def predicted_bytes(plan: Plan, truncation: str = "local") -> dict[str, int]:
    """Bytes sent per inference by all parties, split by cause (a lower bound, see above)."""
    counts = _counts(plan)
    wire = 2 if plan.frac_bits <= 16 else 4
    compare = products = trunc = 0
    for op in plan.ops:
        n = int(op.params.get("drelus", 0))
        if n:
            sent = drelu_bytes(n, 63)
            compare += sum(v for k, v in sent.items() if k.endswith("_sent")) + 32 * n
        if op.kind in ("conv2d", "linear"):
            products += 2 * 8 * counts[op.inputs[0]]
        elif op.kind == "mul":
            products += 2 * 16 * counts[op.name]
        if truncation == "exact" and op.kind in TRUNCATING_KINDS:
            trunc += 3 * wire * counts[op.name]
    return {"comparisons": compare, "products": products, "truncation": trunc,
            "total": compare + products + trunc}


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
