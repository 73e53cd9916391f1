"""Frame and batch limits of a serving deployment, sized from the plan.

A server accepts, per link, frames no larger than:

* from a user: one input share of the largest allowed batch,
  ``8 * max_batch * prod(input_shape)`` bytes (headers are far smaller);
* from another server: the largest message the engine can send for that batch. The bound is
  ``max(8 * weight elements, 128 * max_batch * largest per-input tensor)`` plus 1 MiB: the weights'
  Beaver masks are opened once (8 bytes per weight element), and per inference no message
  exceeds 128 bytes per element of the largest tensor an op touches (a DReLU sends
  ``8 + 64`` bytes per compared element at most, a ReLU6 compares two tensors at once, and a
  max pool compares its ``k*k`` windows).

``[limits] max_frame_bytes`` in the topology, when set, replaces both plan-derived bounds (it is
the operator's explicit choice); ``[limits] max_batch`` (default 256) caps a user's batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..models.plan import Plan, PlanOp
from ..models.secure import run_plain
from ..net import Topology

__all__ = ["PlanSizes", "ServeLimits", "plan_sizes", "serve_limits"]

_BYTES_PER_ELEMENT = 128
_SLACK = 1 << 20


@dataclass(frozen=True)
class PlanSizes:
    input_numel: int       # per input, no batch dimension
    largest_numel: int     # the largest tensor (or max pool windows) any op touches, per input
    weight_numel: int      # all weights and biases
    output_shape: tuple[int, ...]  # per input


@dataclass(frozen=True)
class ServeLimits:
    max_batch: int
    user_frame: int    # largest frame payload a server accepts from a user
    server_frame: int  # largest frame payload a server accepts from another server


def plan_sizes(plan: Plan) -> PlanSizes:
    """Per-input tensor sizes of a plan, by running each op once in plaintext on zeros."""
    weights = {f"{op.name}.{k}": torch.zeros(shape, dtype=torch.float64)
               for op in plan.ops for k, shape in op.weights.items()}
    env = {plan.input_name: torch.zeros((1, *plan.input_shape), dtype=torch.float64)}
    largest = math.prod(plan.input_shape)
    for op in plan.ops:
        names = [f"__in{i}" for i in range(len(op.inputs))]
        sub = Plan(input_name="__in0", input_shape=[], output=op.name, frac_bits=plan.frac_bits,
                   ops=[PlanOp(op.kind, op.name, names, op.params, op.weights)])
        ins = {n: env[i] for n, i in zip(names, op.inputs, strict=True)}
        y = run_plain(sub, weights, ins["__in0"], extra_inputs=ins)
        env[op.name] = y
        touched = max(y.numel(), sum(t.numel() for t in ins.values()))
        if op.kind == "maxpool2d":
            k = op.params["kernel"]
            touched = max(touched, y.numel() * int(k[0]) * int(k[1]))
        largest = max(largest, touched)
    out = env[plan.output]
    return PlanSizes(math.prod(plan.input_shape), largest,
                     sum(math.prod(s) for op in plan.ops for s in op.weights.values()),
                     tuple(out.shape[1:]))


def serve_limits(plan: Plan, topology: Topology, sizes: PlanSizes | None = None) -> ServeLimits:
    sizes = sizes or plan_sizes(plan)
    batch = topology.max_batch
    if topology.max_frame_bytes is not None:
        return ServeLimits(batch, topology.max_frame_bytes, topology.max_frame_bytes)
    user = max(8 * batch * sizes.input_numel, 4096)
    server = max(8 * sizes.weight_numel,
                 _BYTES_PER_ELEMENT * batch * sizes.largest_numel) + _SLACK
    return ServeLimits(batch, user, server)
