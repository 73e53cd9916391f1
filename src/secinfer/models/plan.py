"""The secure plan: a PyTorch model flattened into a list of ops the engine can run.

A plan is public structure (op kinds, shapes, hyper-parameters, weight names and shapes); the
weights live beside it, secret-shared. It serialises to JSON, never pickle.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["PlanOp", "Plan", "OP_KINDS"]

OP_KINDS = frozenset({
    "conv2d", "linear", "relu", "relu6", "block_relu", "maxpool2d", "avgpool2d",
    "global_avgpool", "flatten", "reshape", "add", "cat", "identity",
})


@dataclass
class PlanOp:
    kind: str
    name: str                      # the fx node name (for errors and cost tables)
    inputs: list[str]
    params: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, list[int]] = field(default_factory=dict)  # role -> shape, e.g. w, b

    def __post_init__(self) -> None:
        if self.kind not in OP_KINDS:
            raise ValueError(f"unknown plan op kind {self.kind!r}")


@dataclass
class Plan:
    input_name: str
    input_shape: list[int]          # without the batch dimension
    ops: list[PlanOp]
    output: str
    frac_bits: int = 12

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            raw = json.loads(text)
            ops = [PlanOp(**op) for op in raw.pop("ops")]
            return cls(ops=ops, **raw)
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"malformed plan: {e}") from e

    def weight_names(self) -> list[str]:
        return [f"{op.name}.{k}" for op in self.ops for k in op.weights]

    def relu_count(self, batch: int = 1) -> int:
        """Number of comparisons (DReLUs) one inference runs (recorded at capture time)."""
        return batch * sum(int(op.params.get("drelus", 0)) for op in self.ops)
