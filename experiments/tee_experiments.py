"""TSQP experiments behind ``secinfer experiments tee``: Fashion-MNIST training, the r-sweep,
the test set through the split as two OS processes over mutual TLS, the fault campaign, stealing.

Provisioning the shipped CNN is product code (``secinfer.tee.fmnist``, ``secinfer tee
provision``).

Every function here returns plain JSON-able figures; the CLI prints them and the benchmark
stores them. Randomness comes from CSPRNG-seeded generators (no fixed seeds).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from secinfer.tee.bundle import provision
from secinfer.tee.device import FAULT_KINDS
from secinfer.tee.fmnist import CALIB, INPUT_SHAPE, fmnist_data, fmnist_model
from secinfer.tee.from_plan import capture_any
from secinfer.tee.monitor import detection_guarantee
from secinfer.tee.programs import two_party
from secinfer.tee.qat import accuracy, train_classifier, training_generator
from secinfer.tee.quantize import QuantConfig, calibrate, sweep_reduce_range

from . import child_pythonpath

__all__ = [
    "train_fmnist", "rsweep_fmnist", "run_split_fmnist", "fault_campaign", "stealing_experiment",
]


def _model(weights: Path | None = None) -> torch.nn.Module:
    return fmnist_model(weights)


def train_fmnist(out: Path, epochs: int = 2) -> dict[str, Any]:
    """Train ``fmnist_cnn`` briefly; writes ``out/float.safetensors``."""
    x, y, xt, yt = fmnist_data()
    t0 = time.perf_counter()
    m = train_classifier(_model(), x, y, epochs=epochs, gen=training_generator())
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()},
              str(out / "float.safetensors"))
    return {"epochs": epochs, "seconds": round(time.perf_counter() - t0, 1),
            "float_accuracy": accuracy(m, xt, yt), "weights": str(out / "float.safetensors")}


def rsweep_fmnist(weights: Path, values: list[int]) -> list[dict[str, float]]:
    prog = capture_any(_model(weights), INPUT_SHAPE)
    x, _, xt, yt = fmnist_data()
    calib = x[torch.randperm(len(x), generator=training_generator())[:CALIB]]
    return sweep_reduce_range(prog, [calib], xt, yt, values)


def run_split_fmnist(bundle_dir: Path, limit: int | None = None, batch: int = 100,
                     triples: int = 2, fault: str = "none",
                     checksums: int = 2) -> dict[str, Any]:
    """The Fashion-MNIST test set through the split (two processes, mutual TLS)."""
    bundle_dir = Path(bundle_dir).resolve()
    enc_kw = {"bundle": str(bundle_dir / "enclave"), "dataset": "fmnist", "limit": limit,
              "batch": batch, "triples": triples, "checksums": checksums, "reference": True,
              "on_failure": "record"}
    dev_kw = {"bundle": str(bundle_dir / "device"), "fault": fault, "target": "one"}
    res, costs, wall = two_party(("secinfer.tee.programs:enclave", enc_kw),
                                 ("secinfer.tee.programs:device", dev_kw))
    st = res["stats"].tolist()
    n = len(res["logits"])
    return {
        "queries": n, "batch": batch, "triples": triples, "checksums": checksums,
        "fault": fault,
        "bit_identical": bool(torch.equal(res["logits"], res["reference"])),
        "split_accuracy": accuracy(lambda t: t, res["logits"], res["labels"]),
        "batches": st[0], "layer_calls": st[1], "triples_checked": st[2],
        "triples_failed": st[3], "alarms": st[4], "inline_keys": st[5],
        "items_checksummed": st[6], "checksums_failed": st[7],
        "online_s": float(res["seconds"][0]), "offline_s": float(res["seconds"][1]),
        "wall_s": round(wall, 2),
        "enclave_bytes_sent": costs[0]["<total>"]["bytes_sent"],
        "enclave_bytes_recv": costs[0]["<total>"]["bytes_recv"],
    }


def fault_campaign(trials: int = 10000, batch: int = 1, triples: int = 2,
                   checksums: int = 2, check_bits: int = 64) -> dict[str, Any]:
    """Every fault class (one item and all items) plus an honest run, each ``trials`` trials."""
    rows = []
    for kind in FAULT_KINDS:
        for target in (("one",) if kind == "none" else ("one", "all")):
            enc_kw = {"trials": trials, "batch": batch, "triples": triples,
                      "checksums": checksums, "check_bits": check_bits}
            dev_kw = {"fault": kind, "target": target}
            with child_pythonpath():  # the party processes import experiments.tee_faults
                res, _, wall = two_party(("experiments.tee_faults:enclave_trials", enc_kw),
                                         ("experiments.tee_faults:device_trials", dev_kw))
            alarm, altered = res["alarm"], res["altered"]
            n_alt = int(altered.sum())
            rows.append({
                "fault": kind, "target": target, "trials": int(alarm.numel()),
                "altered": n_alt, "alarms": int(alarm.sum()),
                "false_alarms": int((alarm & ~altered).sum()),
                "detection_rate": (int((alarm & altered).sum()) / n_alt) if n_alt else None,
                "undetected_real_corruptions": int(res["undetected_corruption"].sum()),
                "fingerprint_detections": int((res["fingerprint_alarm"] & altered).sum()),
                "checksum_detections": int((res["checksum_alarm"] & altered).sum()),
                "seconds": round(wall, 1),
            })
    return {"batch": batch, "triples": triples, "checksums": checksums, "check_bits": check_bits,
            "guarantee": detection_guarantee(batch, triples, checksums=checksums,
                                             check_bits=check_bits),
            "guarantee_fingerprints_only": detection_guarantee(batch, triples), "rows": rows}


def stealing_experiment(weights: Path, frac: float = 0.01, thief_epochs: int = 30,
                        desim_epochs: int = 1, lam: float = 1.0) -> dict[str, Any]:
    """De-similarity training and fine-tuning attacks from each starting point (see
    ``tee_desim.py``)."""
    from .tee_desim import desim_train, steal, thief_init

    victim = _model(weights)
    x, y, xt, yt = fmnist_data()
    gen = training_generator()
    prog = capture_any(victim, INPUT_SHAPE)
    calib = x[torch.randperm(len(x), generator=gen)[:CALIB]]
    cfg = QuantConfig(0)
    qm = calibrate(prog, [calib], cfg)
    secrets = provision(qm).secrets
    t0 = time.perf_counter()
    dmodel = desim_train(prog, x, y, gen, epochs=desim_epochs, lam=lam)
    dq = dmodel.export(calib, cfg)
    dsec = provision(dq).secrets
    desim_s = time.perf_counter() - t0
    idx = torch.randperm(len(x), generator=gen)[: max(1, int(frac * len(x)))]
    tx, ty = x[idx], y[idx]

    def run(start: torch.nn.Module | None) -> float:
        return steal(_model, start, tx, ty, xt, yt, thief_epochs, gen)

    rows = {
        "scratch": run(None),
        "white_box_int8": run(thief_init(_model(), qm, None, white_box=True)),
        "device_int8_no_perm": run(thief_init(_model(), qm, None)),
        "device_int8_perm": run(thief_init(_model(), qm, secrets)),
        "desim_device_int8_no_perm": run(thief_init(_model(), dq, None)),
        "desim_device_int8_perm": run(thief_init(_model(), dq, dsec)),
    }
    thief_view = accuracy(lambda t: dmodel(t, thief=True), xt, yt)
    return {
        "thief_data": len(idx), "thief_epochs": thief_epochs, "lambda": lam,
        "victim_float_accuracy": accuracy(victim, xt, yt),
        "victim_int8_accuracy": accuracy(qm.forward, xt, yt),
        "desim_int8_accuracy": accuracy(dq.forward, xt, yt),
        "desim_thief_view_accuracy": thief_view, "desim_train_s": round(desim_s, 1),
        "stolen_accuracy": rows,
    }
