"""Party programs for ``benchmarks/tee.py``: timed split inference, several variants per run.

The enclave runs each variant (bundle, batch, triples) in turn under the accounting op
``v<k>``, so bytes per variant come from the runtime's ledger; the device serves one bundle per
variant, in the same order, and stops when told.
"""

from __future__ import annotations

import time

import torch

from ..net.session import Session
from .bundle import DeviceBundle, EnclaveBundle
from .device import Device
from .enclave import Enclave
from .monitor import MonitorConfig
from .qat import training_generator

__all__ = ["enclave_bench", "device_bench"]


def enclave_bench(session: Session, bundles: list[str], batches: list[int],
                  triples: list[int], item: list[int], reps: int = 2,
                  peer: int = 1, checksums: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Per variant ``k``: median online seconds, offline seconds, and equality with int8."""
    if not (len(bundles) == len(batches) == len(triples)):
        raise ValueError("bundles, batches and triples must have one entry per variant")
    gen = training_generator()
    sums = checksums if checksums is not None else [2] * len(bundles)
    online, offline, equal = [], [], []
    loaded: dict[str, EnclaveBundle] = {}
    for k, (path, b, t) in enumerate(zip(bundles, batches, triples, strict=True)):
        eb = loaded.setdefault(path, EnclaveBundle.load(path))
        enc = Enclave(eb, MonitorConfig(t, sums[k]))
        x = torch.randn((b, *item), generator=gen)
        times, pre = [], []
        with session.op(f"v{k}"):
            for _ in range(reps + 1):  # first pass warms up allocators and kernels
                t0 = time.perf_counter()
                enc.precompute(tuple(item), b)
                pre.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                out = enc.infer(session, peer, x)
                times.append(time.perf_counter() - t0)
            enc.stop(session, peer)
        online.append(sorted(times[1:])[len(times[1:]) // 2])
        offline.append(sorted(pre[1:])[len(pre[1:]) // 2])
        equal.append(bool(torch.equal(out, eb.model.forward(x))))
    return {"online": torch.tensor(online, dtype=torch.float64),
            "offline": torch.tensor(offline, dtype=torch.float64),
            "bit_identical": torch.tensor(equal)}


def device_bench(session: Session, bundles: list[str], peer: int = 0) -> dict[str, torch.Tensor]:
    served = []
    loaded: dict[str, DeviceBundle] = {}
    for path in bundles:
        dev = Device(loaded.setdefault(path, DeviceBundle.load(path)))
        served.append(dev.serve(session, peer))
    return {"served": torch.tensor(served, dtype=torch.int64)}
