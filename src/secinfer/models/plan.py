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
    "global_avgpool", "flatten", "reshape", "add", "cat", "identity", "upsample",
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

    def consumers(self, name: str) -> list[PlanOp]:
        return [op for op in self.ops if name in op.inputs]

    def optimize(self) -> Plan:
        """Exact rewrites that save comparisons; returns ``self``.

        ReLU followed only by a max pool becomes max pool then ReLU: both are monotone, so
        ``maxpool(relu(x)) == relu(maxpool(x))``, and the ReLU then runs on the pooled (k^2
        times smaller) tensor. Padded pools are left alone.
        """
        for i, op in enumerate(list(self.ops)):
            if op.kind != "relu" or op.name == self.output:
                continue
            users = self.consumers(op.name)
            if len(users) != 1 or users[0].kind != "maxpool2d" or any(users[0].params["padding"]):
                continue
            pool = users[0]
            k = pool.params["kernel"][0] * pool.params["kernel"][1]
            j = self.ops.index(pool)
            for later in self.ops[j + 1 :]:
                later.inputs = [op.name if n == pool.name else n for n in later.inputs]
            if self.output == pool.name:
                self.output = op.name
            pool.inputs, op.inputs = list(op.inputs), [pool.name]
            op.params["drelus"] = int(op.params["drelus"]) // k
            self.ops[i], self.ops[j] = pool, op
        return self

    def weight_names(self) -> list[str]:
        return [f"{op.name}.{k}" for op in self.ops for k in op.weights]

    def relu_count(self, batch: int = 1) -> int:
        """Number of comparisons (DReLUs) one inference runs (recorded at capture time)."""
        return batch * sum(int(op.params.get("drelus", 0)) for op in self.ops)
