"""A user's own model file compiles and serves through mpc and tee with the same commands."""

from __future__ import annotations

import re
import time

import pytest
import torch
from safetensors.torch import save_file

from secinfer.cli import main
from secinfer.data import fashion_mnist
from secinfer.net import local_cluster

from .user_model import build

pytestmark = pytest.mark.network
ROLES = {"mpc": ["server", "server", "helper", "user"], "tee": ["enclave", "device", "user"]}


@pytest.mark.parametrize("backend", ["mpc", "tee"])
def test_a_users_residual_cnn_compiles_serves_and_answers_as_plaintext(backend, tmp_path,
                                                                       capsys):
    x = fashion_mnist.load("test", limit=20)[0]
    save_file({"x": x.contiguous()}, str(tmp_path / "x.safetensors"))
    cal = fashion_mnist.load("train", limit=128)[0]
    save_file({"x": cal.contiguous()}, str(tmp_path / "cal.safetensors"))
    args = ["compile", "--backend", backend, "--model", "tests.api.user_model:build",
            "--input-shape", "1,28,28", "--calibration", str(tmp_path / "cal.safetensors"),
            "--out", str(tmp_path / "build")]
    if backend == "mpc":
        args += ["--frac-bits", "16"]
    assert main(args) == 0
    if backend == "mpc":
        with torch.no_grad():
            expected = build()(x).argmax(-1).tolist()
    else:
        from secinfer.tee.bundle import EnclaveBundle
        from secinfer.tee.enclave import Enclave

        model = Enclave(EnclaveBundle.load(tmp_path / "build" / "enclave")).model
        expected = model.forward(x.double()).argmax(-1).tolist()
    capsys.readouterr()
    with local_cluster(roles=ROLES[backend], workdir=tmp_path, timeout=20,
                       connect_timeout=20) as cluster:
        procs = [cluster.spawn(p.id, ["serve", "--topology", str(cluster.topology_path), "--id",
                                      str(p.id), "--artifact", str(tmp_path / "build")])
                 for p in cluster.topology.parties if p.role != "user"]
        deadline = time.monotonic() + 120
        while not all("ready" in p.log.read_text() for p in procs):
            assert time.monotonic() < deadline and all(p.proc.poll() is None for p in procs), \
                [p.tail() for p in procs]
            time.sleep(0.2)
        assert main(["infer", "--topology", str(cluster.topology_path), "--input",
                     str(tmp_path / "x.safetensors")]) == 0
    out = capsys.readouterr().out
    got = [int(v) for v in re.search(r"prediction: \[(.*)\]", out).group(1).split(",")]
    assert got == expected
