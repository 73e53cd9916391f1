"""What integrity costs: the semi-honest engine against the engine with the dealer proof.

Issue 14 asks for malicious/semi-honest time and bytes on the shipped CNN, fmnist_resnet, one
BERT layer and MiniLM. The malicious engine of ``docs/integrity.md`` is not built yet. This
measures the one layer that is: ``MPCConfig(verify_dealer=True)``, whose
:meth:`~secinfer.mpc.engine.MPCEngine.check_dealer` proves every Beaver triple the helper
dealt (:mod:`secinfer.mpc.dzk`) before the output leaves. It runs the CNN workloads; the
transformer programs take the same switch (``SecureTransformerConfig.verify_dealer``), and
their far larger cost is measured in ``docs/integrity.md``.

One real Fashion-MNIST test image per run, the same weights and inputs for both modes. The
user and the three servers are threads of this process over the in-memory transport, one
torch thread each. The modes are interleaved (A B A B ...) and the median of ``--reps`` is
reported. Time is the servers' wall time from the user's shares in to the output out. Bytes
are everything the servers send, the weight openings of the set-up excluded.

    .venv/bin/python benchmarks/integrity.py [--reps 5] [--models fmnist_cnn fmnist_resnet]

Prints a table and ``<model> dealer-proof/semi-honest time ratio:`` and ``bytes ratio:``
lines, and writes ``benchmarks/results/integrity.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from secinfer.data.fashion_mnist import load
from secinfer.models.capture import capture
from secinfer.models.secure import SecureModel
from secinfer.models.zoo import pretrained
from secinfer.mpc import MPCConfig, MPCEngine, encode
from secinfer.mpc.prg import PRG, new_seed
from secinfer.net import run_in_memory
from secinfer.transformer.model import receive_output, send_shares

RESULTS = Path(__file__).resolve().parent / "results" / "integrity.json"
USER = 3


def _setup(name: str, f: int):
    plan, weights = capture(pretrained(name).eval(), (1, 28, 28), frac_bits=f)
    g = PRG(new_seed())
    shares: tuple[dict, dict] = ({}, {})
    for k, v in weights.items():
        enc = encode(v, f)
        r = g.int64(tuple(enc.shape))
        shares[0][k], shares[1][k] = enc - r, r
    return plan, shares


def _party(s, plan, shares, x, verify: bool):
    if s.party_id == USER:
        send_shares(s, x, plan.frac_bits)
        return receive_output(s, plan.frac_bits)
    e = MPCEngine(s, MPCConfig(frac_bits=plan.frac_bits, verify_dealer=verify))
    model = SecureModel(e, plan, shares[e.role] if e.role < 2 else None)
    before = sum(int(v["bytes_sent"]) for k, v in s.report().items() if k == "<total>")
    t0 = time.perf_counter()
    y = model.forward(e.share_input(None, USER, tuple(x.shape)))
    t1 = time.perf_counter()
    if verify:
        e.check_dealer()
    e.send_share_to(y, USER)
    t2 = time.perf_counter()
    sent = sum(int(v["bytes_sent"]) for k, v in s.report().items() if k == "<total>") - before
    check = s.report().get("check_dealer", {})
    return {"seconds": t2 - t0, "forward": t1 - t0, "check": t2 - t1, "bytes": sent,
            "check_bytes": int(check.get("bytes_sent", 0))}


def measure(name: str, f: int, reps: int) -> dict[str, object]:
    plan, shares = _setup(name, f)
    x = load("test", limit=1)[0].double()
    runs: dict[bool, list[dict]] = {False: [], True: []}
    for _ in range(reps):
        for verify in (False, True):
            res = run_in_memory(4, _party, plan, shares, x, verify, timeout=300)
            servers = res[:3]
            runs[verify].append({"seconds": max(r["seconds"] for r in servers),
                                 "check": max(r["check"] for r in servers),
                                 "bytes": sum(r["bytes"] for r in servers),
                                 "check_bytes": sum(r["check_bytes"] for r in servers)})

    def med(v: bool, key: str) -> float:
        return statistics.median(r[key] for r in runs[v])

    return {"model": name, "frac_bits": f, "reps": reps,
            "semi_honest": {"seconds": med(False, "seconds"), "bytes": med(False, "bytes")},
            "dealer_proof": {"seconds": med(True, "seconds"), "bytes": med(True, "bytes"),
                             "check_seconds": med(True, "check"),
                             "check_bytes": med(True, "check_bytes")},
            "time_ratio": med(True, "seconds") / med(False, "seconds"),
            "bytes_ratio": med(True, "bytes") / med(False, "bytes")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--models", nargs="+", default=["fmnist_cnn", "fmnist_resnet"])
    a = ap.parse_args()
    torch.set_num_threads(1)
    bits = {"fmnist_cnn": 12, "fmnist_resnet": 16}
    rows = [measure(m, bits.get(m, 12), a.reps) for m in a.models]
    print(f"{'model':16s} {'semi-honest s':>14s} {'MB':>7s} {'dealer proof s':>15s} {'MB':>7s} "
          f"{'check s':>8s} {'check kB':>9s}")
    for r in rows:
        sh, dp = r["semi_honest"], r["dealer_proof"]
        print(f"{r['model']:16s} {sh['seconds']:14.3f} {sh['bytes'] / 1e6:7.2f} "  # type: ignore
              f"{dp['seconds']:15.3f} {dp['bytes'] / 1e6:7.2f} {dp['check_seconds']:8.3f} "
              f"{dp['check_bytes'] / 1e3:9.1f}")
    for r in rows:
        print(f"{r['model']} dealer-proof/semi-honest time ratio: {r['time_ratio']:.3f}")
        print(f"{r['model']} dealer-proof/semi-honest bytes ratio: {r['bytes_ratio']:.4f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows, "note": "dealer proof only (issue 14 layer 2 "
                                   "for Beaver triples); not the full malicious engine"},
                                  indent=1))


if __name__ == "__main__":
    main()
