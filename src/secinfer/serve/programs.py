"""Party programs for benchmarks: the three servers run a compiled plan on a random input."""

from __future__ import annotations

import time

import torch

from ..models.bundle import load_bundle
from ..models.secure import SecureModel
from ..mpc import MPCConfig, MPCEngine

__all__ = ["plan_latency"]


def plan_latency(session, bundle_root: str, batch: int = 1, reps: int = 1,
                 drelu_high_bits: int = 0, drelu_low_bits: int = 0) -> dict[str, torch.Tensor]:
    """Run the plan ``reps`` times on a random input owned by P0; party 3+ is not involved.

    Returns per-rep seconds and the accounting of the last rep (bytes summed by the caller).
    """
    pid = session.party_id
    plan, shares, manifest = load_bundle(f"{bundle_root}/party{pid}", expect_party=pid)
    cfg = MPCConfig(frac_bits=plan.frac_bits, drelu_high_bits=drelu_high_bits,
                    drelu_low_bits=drelu_low_bits)
    engine = MPCEngine(session, cfg)
    model = SecureModel(engine, plan, shares)
    shape = (batch, *manifest["input_shape"])
    times = []
    for _ in range(reps):
        session.acct.reset()
        x = torch.randn(shape) if pid == 0 else None
        t0 = time.perf_counter()
        with session.op("inference"):
            xs = engine.share_input(x, 0, shape)
            model.forward(xs)
        times.append(time.perf_counter() - t0)
    report = session.report()
    total = report["inference"]
    # comparison traffic: every op's nested "drelu" entry (innermost only, no double count)
    drelu_bytes = sum(int(v["bytes_sent"]) for k, v in report.items()
                      if k.endswith("/drelu") and "/drelu/" not in k)
    return {"seconds": torch.tensor(times, dtype=torch.float64),
            "bytes_sent": torch.tensor(int(total["bytes_sent"])),
            "drelu_bytes_sent": torch.tensor(drelu_bytes),
            "rounds": torch.tensor(int(total["rounds"]))}
