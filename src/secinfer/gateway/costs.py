"""One request's cost per layer, from the servers' own counters.

Each server's health answer carries its cumulative ``[bytes_sent, rounds, seconds, calls]``
per layer (:func:`secinfer.serve.server.layer_counters`). The gateway asks all three before
and after a request and subtracts. Totals follow :func:`secinfer.serve.local.layer_table`:
bytes summed over the three servers, rounds as P1 counts them, time as P0 measured it.

Scope, said in every answer: the difference covers every step the servers ran between the
two probes (``steps``: the most calls of any layer at P0). ``steps == 1`` is this request alone or
batched with other users' requests in the same step; more steps mean other users' work is
included. The servers' scheduling messages in that interval (P0's step plans, the verdicts;
idle heartbeats too) are one more entry, ``scheduling``; the total is the sum of the entries.
A server that reconnected in between resets its counters: then no figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..net import Topology
from ..net.userlink import probe_health

__all__ = ["snapshot", "layer_costs", "SERVERS"]

SERVERS = (0, 1, 2)
# the servers' own control ops: not layers of the model
_CONTROL = {"<none>", "<total>", "setup", "policy", "prepare_weights", "step", "status"}
_SCHEDULING = ("step", "status")  # P0's step plan and the servers' verdicts, once per step


def snapshot(topology: Topology, cert: Path, key: Path,
             timeout: float = 5.0) -> dict[int, dict[str, list[float]]] | None:
    """Every server's layer counters now, or None if one cannot say (not serving)."""
    out: dict[int, dict[str, list[float]]] = {}
    for s in SERVERS:
        try:
            st = probe_health(topology, cert, key, s, timeout=timeout)
        except Exception:  # noqa: BLE001 - costs are a courtesy; the request itself decides
            return None
        if "costs" not in st:
            return None
        out[s] = st["costs"]
    return out


def _delta(after: dict[str, list[float]], before: dict[str, list[float]], name: str
           ) -> list[float]:
    a, b = after.get(name, [0, 0, 0.0, 0]), before.get(name, [0, 0, 0.0, 0])
    return [x - y for x, y in zip(a, b, strict=True)]


def layer_costs(before: dict[int, dict[str, list[float]]] | None,
                after: dict[int, dict[str, list[float]]] | None) -> dict[str, Any]:
    """Per-layer ``{name, bytes, rounds, seconds}`` in plan order, a total, and the scope."""
    if before is None or after is None:
        return {"available": False, "reason": "a server did not report its counters (not "
                "serving, or an older version)"}
    names: Sequence[str] = [n for n in after[0] if n not in _CONTROL]
    deltas = {s: {n: _delta(after[s], before[s], n) for n in [*names, *_SCHEDULING]}
              for s in SERVERS}
    if any(v < 0 for s in SERVERS for d in deltas[s].values() for v in d):
        return {"available": False, "reason": "a server reconnected during the request (its "
                "counters restarted)"}
    layers: list[dict[str, Any]] = []
    for n in names:
        b = int(sum(deltas[s][n][0] for s in SERVERS))
        if b == 0 and deltas[0][n][3] == 0:
            continue  # a layer this request did not run
        layers.append({"name": n, "bytes": b, "rounds": int(deltas[1][n][1]),
                       "seconds": round(float(deltas[0][n][2]), 6)})
    steps = int(max((deltas[0][n][3] for n in names), default=0))
    sched = [sum(deltas[s][n][0] for s in SERVERS for n in _SCHEDULING),
             sum(deltas[1][n][1] for n in _SCHEDULING),
             sum(deltas[0][n][2] for n in _SCHEDULING)]
    layers.append({"name": "scheduling", "bytes": int(sched[0]), "rounds": int(sched[1]),
                   "seconds": round(float(sched[2]), 6)})
    total = {"bytes": sum(lay["bytes"] for lay in layers),
             "rounds": sum(lay["rounds"] for lay in layers),
             "seconds": round(sum(lay["seconds"] for lay in layers), 6)}
    scope = ("this request's step alone (other users' inputs batched into the same step, if "
             "any, are included)" if steps == 1 else
             f"{steps} server steps ran between the probes: other users' requests are included")
    return {"available": True, "layers": layers, "total": total, "steps": steps,
            "scope": scope, "definition": "bytes: payload bytes sent by the three servers to "
            "each other; rounds: P1's sequential rounds; seconds: P0's wall time"}
