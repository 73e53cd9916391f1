"""One long-lived server set (three real processes, mutual TLS) for all gateway tests."""

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from secinfer.data import fashion_mnist
from secinfer.models import zoo
from secinfer.models.bundle import compile_model
from secinfer.net import Topology, local_cluster
from secinfer.net.tls import issue_user_cert
from secinfer.net.userlink import probe_health

MAX_USERS = 3  # the servers' [service] max_users: one more session is told "busy"


@dataclass
class Served:
    topology: Topology
    topology_path: Path
    cert: Path
    key: Path
    model: torch.nn.Module
    workdir: Path
    cluster: object


def fmnist_png(path: Path, index: int = 0) -> tuple[Path, int, torch.Tensor]:
    """Write Fashion-MNIST test image ``index`` as an 8-bit grey PNG; returns (path, label,
    the normalised input the gateway must reconstruct from the PNG)."""
    from PIL import Image

    x, y = fashion_mnist.load("test", limit=index + 1)
    img = x[index, 0] * fashion_mnist.FMNIST_STD + fashion_mnist.FMNIST_MEAN
    pixels = torch.round(img * 255).clamp(0, 255).to(torch.uint8).numpy()
    Image.fromarray(np.ascontiguousarray(pixels), mode="L").save(path, format="PNG")
    return path, int(y[index]), x[index : index + 1]


def _wait_serving(topo: Topology, cert: Path, key: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    last: object = None
    while time.monotonic() < deadline:
        try:
            states = [probe_health(topo, cert, key, s, timeout=2.0)["state"] for s in (0, 1, 2)]
            if all(s == "serving" for s in states):
                return
            last = states
        except Exception as e:  # noqa: BLE001 - not up yet
            last = e
        time.sleep(0.3)
    raise AssertionError(f"servers not serving within {seconds} s: {last}")


@pytest.fixture(scope="package")
def served(tmp_path_factory):
    wd = tmp_path_factory.mktemp("gateway")
    model = zoo.pretrained("fmnist_cnn")
    dirs = compile_model(model, (1, 28, 28), wd / "bundles",
                         input_range=fashion_mnist.INPUT_RANGE)
    with local_cluster(roles=["server", "server", "helper", "user"], workdir=wd,
                       timeout=20, connect_timeout=5, service={"max_users": MAX_USERS}) as cluster:
        for i in range(3):
            cluster.spawn(i, ["serve", "--topology", str(cluster.topology_path), "--id", str(i),
                              "--bundle", str(dirs[i])])
        topo = Topology.load(cluster.topology_path)
        # a user certificate from the owner's CA, no topology entry (`secinfer certs user`)
        cert, key = wd / "user-alice.pem", wd / "user-alice.key"
        issue_user_cert(topo, "alice", cert, key)
        _wait_serving(topo, cert, key, 90)
        yield Served(topo, cluster.topology_path, cert, key, model, wd, cluster)
