"""End-to-end secure evaluation on this machine: compile, start three server processes over
mutual TLS, run the user's client here, and compare with plaintext PyTorch."""

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
from .client import Client

__all__ = ["EvalResult", "secure_eval", "layer_table"]


@dataclass
class EvalResult:
    n: int
    plain_accuracy: float
    secure_accuracy: float
    agreement: float
    max_abs_logit_error: float
    seconds: float
    seconds_per_image: float
    costs: dict[int, dict] = field(default_factory=dict)  # party -> accounting report

    def summary(self) -> str:
        return (f"images: {self.n}\n"
                f"plaintext accuracy: {100 * self.plain_accuracy:.2f}%\n"
                f"secure accuracy:    {100 * self.secure_accuracy:.2f}%\n"
                f"prediction agreement: {100 * self.agreement:.2f}%\n"
                f"max |secure - plaintext| logit: {self.max_abs_logit_error:.2e}\n"
                f"secure inference time: {self.seconds:.1f} s "
                f"({1000 * self.seconds_per_image:.1f} ms per image, batched)")


def secure_eval(model: torch.nn.Module, input_shape: tuple[int, ...], images: torch.Tensor,
                labels: torch.Tensor, batch: int = 100, frac_bits: int = 12,
                relu_spec: Mapping[str, torch.Tensor] | None = None,
                workdir: str | Path | None = None, timeout: float = 60.0,
                progress: Callable[[int, int, float], None] | None = None,
                input_range: tuple[float, float] | None = None,
                calibration: torch.Tensor | None = None,
                narrow_drelu: bool = True) -> EvalResult:
    model = model.eval()
    with tempfile.TemporaryDirectory(prefix="secinfer-eval-") as tmp:
        wd = Path(workdir) if workdir else Path(tmp)
        compile_model(model, input_shape, wd / "bundles", frac_bits=frac_bits,
                      relu_spec=relu_spec, input_range=input_range, calibration=calibration,
                      narrow_drelu=narrow_drelu)
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
            with Client(topo) as client:
                for i in range(0, len(images), batch):
                    outs.append(client.predict(images[i : i + batch]))
                    if progress is not None:
                        progress(i + len(outs[-1]), len(images), time.perf_counter() - t0)
            seconds = time.perf_counter() - t0
            cluster.wait(servers, timeout=timeout + 30)
            costs = {i: json.loads((wd / f"report{i}.json").read_text()) for i in range(3)}
    secure = torch.cat(outs)
    with torch.no_grad():
        plain = model(images).double()
    return EvalResult(
        n=len(images),
        plain_accuracy=(plain.argmax(1) == labels).double().mean().item(),
        secure_accuracy=(secure.argmax(1) == labels).double().mean().item(),
        agreement=(plain.argmax(1) == secure.argmax(1)).double().mean().item(),
        max_abs_logit_error=(plain - secure).abs().max().item(),
        seconds=seconds, seconds_per_image=seconds / max(1, len(images)), costs=costs)


def layer_table(costs: dict[int, dict]) -> str:
    """Per-layer cost over all three servers: bytes sent (sum), rounds (P1), time (P0)."""
    servers = {pid: c["servers"] for pid, c in costs.items()}
    names = [k for k in servers[0] if k != CostAccountant.TOTAL]
    head = f"{'layer':<28} {'bytes sent (all)':>18} {'rounds':>7} {'time s':>9}"
    rows = [head, "-" * len(head)]
    tot_b = 0
    for name in names + [CostAccountant.TOTAL]:
        b = sum(int(servers[p].get(name, {}).get("bytes_sent", 0)) for p in servers)
        r = int(servers[1].get(name, {}).get("rounds", 0))
        t = float(servers[0].get(name, {}).get("seconds", 0.0))
        label = "TOTAL" if name == CostAccountant.TOTAL else name
        rows.append(f"{label:<28} {b / 1e6:>15.3f} MB {r:>7} {t:>9.3f}")
        tot_b = b
    user = costs[0].get("user", {}).get(CostAccountant.TOTAL, {})
    rows.append(f"(user <-> P0 traffic: {int(user.get('bytes_sent', 0)) / 1e6:.3f} MB sent by P0;"
                f" all figures summed over the requests of this run; {tot_b} bytes in total)")
    return "\n".join(rows)
