"""Party programs for the runtime (``python -m secinfer party`` / ``local_cluster``).

``enclave`` is party 0 by convention and ``device`` party 1 (override with ``peer``). Both take
JSON keyword arguments and return tensors, as every runtime program does.

The enclave reads its queries from a safetensors file (key ``x``) or from the Fashion-MNIST test
set, runs them in batches, and returns logits, labels (when known), the int8 reference logits
(when ``reference`` is set: the bit-identity check) and its monitor counters.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..net.session import Session
from .bundle import DeviceBundle, EnclaveBundle
from .device import Device, Fault
from .enclave import Enclave
from .monitor import MonitorConfig

__all__ = ["enclave", "device", "load_queries", "two_party"]


def load_queries(inputs: str | None, dataset: str | None,
                 limit: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Queries from a safetensors file (``x``, optional ``y``) or ``dataset='fmnist'``."""
    if (inputs is None) == (dataset is None):
        raise ValueError("give exactly one of 'inputs' (safetensors path) or 'dataset'")
    if inputs is not None:
        t = load_file(str(Path(inputs)))
        if "x" not in t:
            raise ValueError(f"{inputs}: no tensor named 'x'")
        x, y = t["x"], t.get("y")
    elif dataset == "fmnist":
        from ..data.fashion_mnist import load

        x, y = load("test", limit=limit)
    else:
        raise ValueError(f"unknown dataset {dataset!r}; known: fmnist")
    if limit is not None:
        x, y = x[:limit], (y[:limit] if y is not None else None)
    return x, y


def enclave(session: Session, bundle: str, inputs: str | None = None,
            dataset: str | None = None, limit: int | None = None, batch: int = 32,
            triples: int = 2, reference: bool = False, precompute: bool = True,
            on_failure: str = "raise", peer: int = 1,
            checksums: int = 2) -> dict[str, torch.Tensor]:
    """Run every query through the split with the device at party ``peer``."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    enc = Enclave(EnclaveBundle.load(bundle), MonitorConfig(triples, checksums), on_failure)
    x, y = load_queries(inputs, dataset, limit)
    outs, refs = [], []
    online = offline = 0.0
    try:
        for s in range(0, len(x), batch):
            xb = x[s:s + batch]
            if precompute:  # offline phase: masks and decode keys, before the query arrives
                t0 = time.perf_counter()
                enc.precompute(tuple(xb.shape[1:]), len(xb))
                offline += time.perf_counter() - t0
            t0 = time.perf_counter()
            outs.append(enc.infer(session, peer, xb))
            online += time.perf_counter() - t0
            if reference:
                refs.append(enc.model.forward(xb))
    finally:
        enc.stop(session, peer)
    st = enc.stats
    result = {
        "logits": torch.cat(outs),
        "stats": torch.tensor([st.batches, st.layer_calls, st.triples_checked,
                               st.triples_failed, st.alarms, st.inline_keys,
                               st.items_checksummed, st.checksums_failed],
                              dtype=torch.int64),
        "seconds": torch.tensor([online, offline], dtype=torch.float64),
    }
    if y is not None:
        result["labels"] = y.to(torch.int64)
    if reference:
        result["reference"] = torch.cat(refs)
    return result


def device(session: Session, bundle: str, fault: str = "none", target: str = "one",
           rate: float = 1.0, peer: int = 0) -> dict[str, torch.Tensor]:
    """Serve the enclave at party ``peer`` (honestly unless ``fault`` names a fault class)."""
    dev = Device(DeviceBundle.load(bundle), Fault(fault, target, rate))
    served = dev.serve(session, peer)
    return {"served": torch.tensor([served], dtype=torch.int64)}


def two_party(enclave: tuple[str, dict[str, Any]], device: tuple[str, dict[str, Any]],
              timeout: float = 600.0) -> tuple[dict[str, torch.Tensor], dict[int, Any], float]:
    """Run two programs as party 0 (enclave) and party 1 (device), separate OS processes on
    loopback over mutual TLS (``local_cluster``). Each is ``("module:function", kwargs)``.

    Returns the enclave's result, both parties' cost reports, and the wall time.
    """
    import json

    from ..net.launcher import local_cluster

    with local_cluster(roles=["enclave", "device"], timeout=120.0) as cl:
        t0 = time.perf_counter()
        p0 = cl.start(enclave[0], enclave[1], ids=[0])
        p1 = cl.start(device[0], device[1], ids=[1])
        res = cl.wait(p0 + p1, timeout)
        wall = time.perf_counter() - t0
        costs = {p.party_id: json.loads(p.out.with_suffix(".cost.json").read_text())
                 for p in p0 + p1}
    return res[0], costs, wall
