"""Fault-injection campaign against the 3-party engine: one server corrupts one message.

Each trial is one real secure inference of a real model on a real Fashion-MNIST test image,
four parties as threads over in-memory links: the user (party 3) shares its image to P0 and P1
and adds the two output shares it gets back; P0, P1 and the helper run the plan with the
engine the service runs. One server's session is a :class:`~secinfer.net.faults.FaultySession`
that corrupts one message: a ``(party, message tag, corruption)`` cell and an occurrence drawn
uniformly among that tag's messages in an honest run. The trial's outcome is

- ``detected``: the run failed with an error (the user gets an error, not a result);
- ``correct``: the user got logits within ``tol`` of plaintext PyTorch and the same class;
- ``wrong``: the user got a result that is not the honest one, and nothing said so.

On the semi-honest engine every ``wrong`` is an attack that works; the malicious-secure engine
of ``docs/integrity.md`` must bring that count to 0.

Run: ``python experiments/mpc_faults.py --trials 300`` (table, and JSON with ``--out``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from secinfer.data.fashion_mnist import load
from secinfer.models.capture import capture
from secinfer.models.secure import SecureModel, run_plain
from secinfer.models.zoo import pretrained
from secinfer.mpc import MPCConfig, MPCEngine
from secinfer.mpc.config import HELPER, P0, P1
from secinfer.mpc.engine import encode
from secinfer.mpc.prg import PRG, new_seed
from secinfer.net import run_in_memory
from secinfer.net.faults import CORRUPTIONS, Fault, FaultySession
from secinfer.net.session import Session
from secinfer.transformer.model import receive_output, send_shares

__all__ = ["Workload", "Trial", "cnn_workload", "honest_counts", "run_trial", "campaign"]

USER = 3
SERVERS = (P0, P1, HELPER)


@dataclass
class Workload:
    """A plan with its weights shared once, test images, and plaintext references."""

    name: str
    plan: object
    shares: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]
    images: torch.Tensor
    reference: torch.Tensor
    config: MPCConfig
    tol: float


@dataclass
class Trial:
    party: int
    tag: str
    corruption: str
    occurrence: int
    outcome: str
    detail: str
    seconds: float


def cnn_workload(name: str = "fmnist_cnn", images: int = 8, config: MPCConfig | None = None,
                 tol: float = 0.05) -> Workload:
    cfg = config or MPCConfig(frac_bits=12)
    model = pretrained(name).eval()
    plan, weights = capture(model, (1, 28, 28), frac_bits=cfg.frac_bits)
    g = PRG(new_seed())
    s0: dict[str, torch.Tensor] = {}
    s1: dict[str, torch.Tensor] = {}
    for k, v in weights.items():
        enc = encode(v, cfg.frac_bits)
        r = g.int64(tuple(enc.shape))
        s0[k], s1[k] = enc - r, r
    x, _ = load("test", limit=images)
    x = x.double()
    ref = torch.cat([run_plain(plan, weights, x[i : i + 1]) for i in range(images)])
    return Workload(name, plan, (s0, s1), x, ref, cfg, tol)


def _party(session: Session, w: Workload, image: int, fault: Fault | None, faulty: int,
           counting: bool) -> object:
    x = w.images[image : image + 1]
    if session.party_id == USER:
        send_shares(session, x, w.plan.frac_bits)  # type: ignore[attr-defined]
        return receive_output(session, w.plan.frac_bits)  # type: ignore[attr-defined]
    s: Session = session
    if session.party_id == faulty or counting:
        s = FaultySession(session, fault)
    eng = MPCEngine(s, w.config)
    model = SecureModel(eng, w.plan, w.shares[eng.role] if eng.role in (P0, P1) else None)
    xs = eng.share_input(None, USER, tuple(x.shape))
    eng.send_share_to(model.forward(xs), USER)
    return s


def honest_counts(w: Workload, sizes: bool = False) -> dict[int, dict[str, int]]:
    """Messages (or, with ``sizes``, bytes) per tag each server sends in one honest inference."""
    res = run_in_memory(4, _party, w, 0, None, -1, True, timeout=60)
    return {p: dict(res[p].sizes if sizes else res[p].counts) for p in SERVERS}


def run_trial(w: Workload, party: int, tag: str, corruption: str, occurrence: int,
              image: int, timeout: float = 5.0) -> Trial:
    fault = Fault(tag, occurrence, corruption)
    t0 = time.perf_counter()
    try:
        res = run_in_memory(4, _party, w, image, fault, party, False, timeout=timeout)
    except Exception as e:  # noqa: BLE001 - any error that reaches the caller is a detection
        return Trial(party, tag, corruption, occurrence, "detected",
                     f"{type(e).__name__}: {str(e)[:120]}", time.perf_counter() - t0)
    out = res[USER]
    ref = w.reference[image : image + 1]
    err = float((out - ref).abs().max())
    same = bool((out.argmax(-1) == ref.argmax(-1)).all())
    outcome = "correct" if err <= w.tol and same else "wrong"
    return Trial(party, tag, corruption, occurrence, outcome,
                 f"max |out - plaintext| = {err:.3g}, class {'kept' if same else 'changed'}",
                 time.perf_counter() - t0)


def campaign(w: Workload, trials: int, seed: bytes | None = None,
             timeout: float = 5.0) -> list[Trial]:
    """``trials`` faults spread round-robin over every (party, tag, corruption) cell."""
    counts = honest_counts(w)
    cells = [(p, tag, c) for p in SERVERS for tag in sorted(counts[p]) for c in CORRUPTIONS]
    g = PRG(seed or new_seed())
    out = []
    for i in range(trials):
        p, tag, c = cells[i % len(cells)]
        occ = int(g.uniform_int((1,), 0, counts[p][tag]).item())
        image = int(g.uniform_int((1,), 0, w.images.shape[0]).item())
        out.append(run_trial(w, p, tag, c, occ, image, timeout))
    return out


def summarise(trials: list[Trial]) -> dict[str, object]:
    by_cell: dict[str, Counter[str]] = {}
    for t in trials:
        by_cell.setdefault(f"P{t.party if t.party < 2 else 'h'} {t.tag} {t.corruption}",
                           Counter())[t.outcome] += 1
    total = Counter(t.outcome for t in trials)
    return {"trials": len(trials), "outcomes": dict(total),
            "cells": {k: dict(v) for k, v in sorted(by_cell.items())}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="fmnist_cnn")
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    w = cnn_workload(a.model, a.images)
    t0 = time.perf_counter()
    trials = campaign(w, a.trials, timeout=a.timeout)
    summary = summarise(trials)
    print(f"{'cell':42s} {'detected':>9s} {'correct':>8s} {'wrong':>6s}")
    for cell, c in summary["cells"].items():  # type: ignore[union-attr]
        print(f"{cell:42s} {c.get('detected', 0):9d} {c.get('correct', 0):8d} "
              f"{c.get('wrong', 0):6d}")
    print(f"total: {summary['outcomes']} in {time.perf_counter() - t0:.0f} s")
    if a.out:
        a.out.write_text(json.dumps({**summary, "model": a.model,
                                     "trials_detail": [asdict(t) for t in trials]}, indent=1))


if __name__ == "__main__":
    main()
