"""Cost accounting: bytes, rounds and wall time per named op, per peer.

Definitions (the known-answer tests check these exactly):

* **bytes** are payload bytes (``numel * element_size``) of every tensor sent or received.
  ``wire_bytes`` add the frame header (``38 + 8 * ndim`` bytes, see :mod:`.framing`); TLS record
  overhead is not counted.
* **rounds** count sequential communication steps on this party's critical path: a receive
  starts a new round if this party has sent anything since its previous round began, or if it is
  the first receive of the op. So sending to two peers and then receiving from both is one round;
  receive, send, receive is two. A party that only sends has zero rounds.
* **time** is wall-clock seconds spent inside the op (compute and waiting).

Ops nest: ``with acct.op("layer3"): with acct.op("relu"): ...`` records under ``layer3/relu``.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["OpCost", "CostAccountant", "format_table"]


@dataclass
class OpCost:
    bytes_sent: int = 0
    bytes_recv: int = 0
    wire_sent: int = 0
    wire_recv: int = 0
    messages_sent: int = 0
    messages_recv: int = 0
    rounds: int = 0
    seconds: float = 0.0
    calls: int = 0
    per_peer_sent: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    per_peer_recv: dict[int, int] = field(default_factory=lambda: defaultdict(int))

    def as_dict(self) -> dict[str, object]:
        return {
            "bytes_sent": self.bytes_sent,
            "bytes_recv": self.bytes_recv,
            "wire_bytes_sent": self.wire_sent,
            "wire_bytes_recv": self.wire_recv,
            "messages_sent": self.messages_sent,
            "messages_recv": self.messages_recv,
            "rounds": self.rounds,
            "seconds": round(self.seconds, 6),
            "calls": self.calls,
            "per_peer_sent": {str(k): v for k, v in sorted(self.per_peer_sent.items())},
            "per_peer_recv": {str(k): v for k, v in sorted(self.per_peer_recv.items())},
        }


class CostAccountant:
    """Per-party ledger. Not thread-safe by design: one protocol thread drives a party."""

    TOTAL = "<total>"

    def __init__(self) -> None:
        self._ops: dict[str, OpCost] = defaultdict(OpCost)
        self._stack: list[str] = []
        self._sent_since_round: dict[str, bool] = defaultdict(lambda: True)

    @property
    def current(self) -> str:
        return "/".join(self._stack) if self._stack else "<none>"

    @contextmanager
    def op(self, name: str) -> Iterator[None]:
        if "/" in name:
            raise ValueError("op names may not contain '/'")
        self._stack.append(name)
        key = self.current
        self._sent_since_round[key] = True
        start = time.perf_counter()
        try:
            yield
        finally:
            cost = self._ops[key]
            cost.seconds += time.perf_counter() - start
            cost.calls += 1
            self._stack.pop()

    def _keys(self) -> list[str]:
        # an event is charged to the innermost op, every enclosing op, and the total
        keys = ["/".join(self._stack[: i + 1]) for i in range(len(self._stack))]
        if not keys:
            keys = ["<none>"]
        return [*keys, self.TOTAL]

    def on_send(self, peer: int, nbytes: int, wire: int) -> None:
        for k in self._keys():
            c = self._ops[k]
            c.bytes_sent += nbytes
            c.wire_sent += wire
            c.messages_sent += 1
            c.per_peer_sent[peer] += nbytes
            self._sent_since_round[k] = True

    def on_recv(self, peer: int, nbytes: int, wire: int) -> None:
        for k in self._keys():
            c = self._ops[k]
            c.bytes_recv += nbytes
            c.wire_recv += wire
            c.messages_recv += 1
            c.per_peer_recv[peer] += nbytes
            if self._sent_since_round[k]:
                c.rounds += 1
                self._sent_since_round[k] = False

    def get(self, name: str) -> OpCost:
        return self._ops[name] if name in self._ops else OpCost()

    @property
    def total(self) -> OpCost:
        return self.get(self.TOTAL)

    def report(self) -> dict[str, dict[str, object]]:
        return {k: v.as_dict() for k, v in self._ops.items()}

    def to_json(self) -> str:
        return json.dumps(self.report(), indent=2, sort_keys=True)

    def table(self) -> str:
        return format_table(self.report())

    def reset(self) -> None:
        self._ops.clear()
        self._sent_since_round.clear()


def format_table(report: dict[str, dict[str, object]]) -> str:
    """A fixed-width table of a report, one row per op, total last."""
    head = f"{'op':<40} {'sent':>12} {'recv':>12} {'rounds':>7} {'calls':>6} {'time s':>9}"
    rows = [head, "-" * len(head)]
    names = sorted(k for k in report if k != CostAccountant.TOTAL)
    if CostAccountant.TOTAL in report:
        names.append(CostAccountant.TOTAL)
    for name in names:
        r = report[name]
        rows.append(
            f"{name:<40} {_fmt_bytes(int(r['bytes_sent'])):>12} "  # type: ignore[call-overload]
            f"{_fmt_bytes(int(r['bytes_recv'])):>12} {r['rounds']:>7} "  # type: ignore[call-overload]
            f"{r['calls']:>6} {float(r['seconds']):>9.4f}"  # type: ignore[arg-type]
        )
    return "\n".join(rows)


def _fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(size) < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    return f"{n} B"
