"""Secure segmentation over three server processes and mutual TLS, compared with plaintext.

The model owner compiles the net into per-party bundles (:func:`~secinfer.models.bundle.
compile_model`); three ``secinfer serve`` processes (P0, P1 and the helper) run it on shares; the
user's :class:`~secinfer.serve.client.Client` here shares each batch of scenes and reconstructs
the per-pixel logits ``[B, C, H, W]`` (the owner's ``logits`` policy), then takes the per-pixel
argmax. Costs come from the servers' accounting reports.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..models.bundle import compile_model
from ..net import Topology, local_cluster
from ..net.accounting import CostAccountant
from ..serve.client import Client
from .train import confusion, miou, pixel_accuracy

__all__ = ["SegEval", "secure_segment"]


@dataclass
class SegEval:
    n: int
    plain_miou: float
    secure_miou: float
    plain_pixel_accuracy: float
    secure_pixel_accuracy: float
    pixel_agreement: float
    max_abs_logit_error: float
    seconds_per_image: float
    bytes_per_image: float
    rounds_per_request: float
    secure_labels: torch.Tensor = field(repr=False)
    costs: dict[int, dict] = field(default_factory=dict, repr=False)

    def summary(self) -> dict[str, float | int]:
        return {k: v for k, v in self.__dict__.items() if k not in ("secure_labels", "costs")}


def secure_segment(model: torch.nn.Module, input_shape: tuple[int, ...], images: torch.Tensor,
                   labels: torch.Tensor, classes: int, batch: int = 50,
                   relu_spec: Mapping[str, torch.Tensor] | None = None,
                   timeout: float = 300.0, workdir: str | Path | None = None,
                   progress: Callable[[int, int, float], None] | None = None) -> SegEval:
    """Secure per-pixel labels of ``images`` and their mIoU against plaintext and the labels."""
    model = model.eval()
    with tempfile.TemporaryDirectory(prefix="secinfer-seg-") as tmp:
        wd = Path(workdir) if workdir is not None else Path(tmp)
        compile_model(model, input_shape, wd / "bundles", relu_spec=relu_spec)
        with local_cluster(roles=["server", "server", "helper", "user"], workdir=wd,
                           timeout=timeout) as cluster:
            servers = [cluster.spawn(i, ["serve", "--topology", str(cluster.topology_path),
                                         "--id", str(i), "--bundle",
                                         str(wd / "bundles" / f"party{i}"), "--max-clients", "1",
                                         "--report", str(wd / f"report{i}.json")])
                       for i in range(3)]
            topo = Topology.load(cluster.topology_path)
            outs = []
            t0 = time.perf_counter()
            with Client(topo, compute_timeout=timeout) as client:
                for i in range(0, len(images), batch):
                    outs.append(client.predict(images[i:i + batch]))
                    if progress is not None:
                        progress(min(i + batch, len(images)), len(images),
                                 time.perf_counter() - t0)
            seconds = time.perf_counter() - t0
            cluster.wait(servers, timeout=timeout + 30)
            costs = {i: json.loads((wd / f"report{i}.json").read_text()) for i in range(3)}
    secure = torch.cat(outs)
    with torch.no_grad():
        plain = torch.cat([model(images[i:i + batch]) for i in range(0, len(images), batch)])
    s_lab, p_lab = secure.argmax(1), plain.argmax(1)
    cs, cp = confusion(s_lab, labels, classes), confusion(p_lab, labels, classes)
    total = costs[1]["servers"][CostAccountant.TOTAL]
    sent = sum(int(c["servers"][CostAccountant.TOTAL].get("bytes_sent", 0)) for c in costs.values())
    return SegEval(n=len(images), plain_miou=miou(cp), secure_miou=miou(cs),
                   plain_pixel_accuracy=pixel_accuracy(cp),
                   secure_pixel_accuracy=pixel_accuracy(cs),
                   pixel_agreement=float((s_lab == p_lab).double().mean()),
                   max_abs_logit_error=float((secure - plain.double()).abs().max()),
                   seconds_per_image=seconds / len(images), bytes_per_image=sent / len(images),
                   rounds_per_request=int(total.get("rounds", 0)) / len(outs),
                   secure_labels=s_lab, costs=costs)
