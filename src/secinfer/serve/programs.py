"""Party programs for benchmarks: the three servers run a compiled plan on a random input."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from ..models.bundle import load_bundle
from ..models.secure import SecureModel
from ..mpc import MPCConfig, MPCEngine
from ..net.session import Session

__all__ = ["plan_latency"]


@contextmanager
def _recv_waits(session: Session) -> Iterator[dict[str, float]]:
    """Seconds this party spends blocked in ``recv``, per innermost accounting op."""
    waits: dict[str, float] = defaultdict(float)
    recv = session.recv

    def timed(peer: int, timeout: float | None = None, tag: str = "",
              expect: tuple[Sequence[int], torch.dtype] | None = None) -> torch.Tensor:
        t0 = time.perf_counter()
        try:
            return recv(peer, timeout, tag, expect)
        finally:
            waits[session.acct.current] += time.perf_counter() - t0

    session.recv = timed  # type: ignore[method-assign]
    try:
        yield waits
    finally:
        del session.recv  # the class's method again


def _breakdown(report: dict[str, dict[str, object]], waits: dict[str, float],
               kinds: dict[str, str]) -> dict[str, dict[str, float]]:
    """Per layer kind (comparisons as ``<kind>/drelu``): seconds, seconds blocked in recv,
    bytes sent, rounds and layers, from one inference's accounting."""
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for key, cost in report.items():
        parts = key.split("/")
        if len(parts) < 2 or parts[0] != "inference":
            continue
        kind = kinds.get(parts[1], parts[1])
        row = out[kind if len(parts) == 2 else f"{kind}/{'/'.join(parts[2:])}"]
        row["seconds"] += float(cost["seconds"])  # type: ignore[arg-type]
        row["bytes_sent"] += int(cost["bytes_sent"])  # type: ignore[call-overload]
        row["rounds"] += int(cost["rounds"])  # type: ignore[call-overload]
        row["layers"] += int(len(parts) == 2)
    # waits are charged to the innermost op only: add them to every enclosing kind row
    for key, sec in waits.items():
        parts = key.split("/")
        if len(parts) < 2 or parts[0] != "inference":
            continue
        kind = kinds.get(parts[1], parts[1])
        for i in range(2, len(parts) + 1):
            name = kind if i == 2 else f"{kind}/{'/'.join(parts[2:i])}"
            out[name]["wait_seconds"] += sec
    return {k: dict(v) for k, v in out.items()}


def plan_latency(session, bundle_root: str | list[str], batch: int = 1, reps: int = 1,
                 drelu_high_bits: int | list[int] = 0, drelu_low_bits: int | list[int] = 0,
                 warmup: int = 0, breakdown: bool = False) -> dict[str, torch.Tensor]:
    """Run the plan ``reps`` times on a random input owned by P0; party 3+ is not involved.

    Returns per-rep seconds and the accounting of the last rep (bytes summed by the caller).
    With a list of bundles (and per-bundle DReLU bits), every bundle is loaded once and the
    reps are interleaved, ``warmup`` untimed passes over all bundles first, so that the
    bundles share whatever else the machine is doing; keys are then prefixed ``m<i>.``
    (``warmup_seconds``: the untimed passes' seconds; the first bundle's first pass also pays
    this process's one-time costs).
    ``breakdown``: also ``breakdown``, a JSON text (uint8) of the last rep's seconds,
    seconds blocked in recv, bytes sent and rounds per layer kind.
    """
    pid = session.party_id
    roots = [bundle_root] if isinstance(bundle_root, str) else list(bundle_root)
    highs = drelu_high_bits if isinstance(drelu_high_bits, list) else [drelu_high_bits] * len(roots)
    lows = drelu_low_bits if isinstance(drelu_low_bits, list) else [drelu_low_bits] * len(roots)
    models = []
    for root, hb, lb in zip(roots, highs, lows, strict=True):
        plan, shares, manifest = load_bundle(f"{root}/party{pid}", expect_party=pid)
        cfg = MPCConfig(frac_bits=plan.frac_bits, drelu_high_bits=hb, drelu_low_bits=lb)
        engine = MPCEngine(session, cfg)
        models.append((engine, SecureModel(engine, plan, shares),
                       (batch, *manifest["input_shape"]), {op.name: op.kind for op in plan.ops}))
    times: list[list[float]] = [[] for _ in models]
    first: list[list[float]] = [[] for _ in models]
    last: list[tuple[dict, dict[str, float]]] = [({}, {}) for _ in models]
    for rep in range(warmup + reps):
        for i, (engine, model, shape, _kinds) in enumerate(models):
            session.acct.reset()
            x = torch.randn(shape) if pid == 0 else None
            with _recv_waits(session) as waits:
                t0 = time.perf_counter()
                with session.op("inference"):
                    xs = engine.share_input(x, 0, shape)
                    model.forward(xs)
                dt = time.perf_counter() - t0
            if rep < warmup:
                first[i].append(dt)
            else:
                times[i].append(dt)
                last[i] = (session.report(), dict(waits))
    out: dict[str, torch.Tensor] = {}
    for i, (report, waits) in enumerate(last):
        total = report["inference"]
        # comparison traffic: every op's nested "drelu" entry (innermost only, no double count)
        drelu_bytes = sum(int(v["bytes_sent"]) for k, v in report.items()
                          if k.endswith("/drelu") and "/drelu/" not in k)
        res = {"seconds": torch.tensor(times[i], dtype=torch.float64),
               "bytes_sent": torch.tensor(int(total["bytes_sent"])),
               "drelu_bytes_sent": torch.tensor(drelu_bytes),
               "rounds": torch.tensor(int(total["rounds"]))}
        if warmup:
            res["warmup_seconds"] = torch.tensor(first[i], dtype=torch.float64)
        if breakdown:
            text = json.dumps(_breakdown(report, waits, models[i][3])).encode()
            res["breakdown"] = torch.frombuffer(bytearray(text), dtype=torch.uint8)
        prefix = "" if isinstance(bundle_root, str) else f"m{i}."
        out.update({prefix + k: v for k, v in res.items()})
    return out
