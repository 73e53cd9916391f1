"""End to end over mutual TLS with real processes: the owner provisions the cloud and the user,
a long-lived cloud serves three user sessions: one that vanishes mid-request, one generating
with the KV cache on the cloud, one from the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from secinfer.net import local_cluster
from secinfer.stip import (
    SessionLink,
    StipUser,
    dial_cloud,
    load_key,
    transform_model,
    write_cloud,
    write_key,
)

from . import tiny
from .test_equivalence import plaintext_greedy

pytestmark = [pytest.mark.network, pytest.mark.slow]


@torch.inference_mode()
def test_provision_serve_and_generate_over_tls(tmp_path) -> None:
    m = tiny.gpt2()
    cloud_state, cloud_cfg, key = transform_model(m)
    write_cloud(tmp_path / "p1" / "cloud", key.model_class, cloud_state, cloud_cfg)
    write_key(tmp_path / "p1" / "key", key)
    with local_cluster(roles=["owner", "cloud", "user"], workdir=tmp_path / "run",
                       timeout=60.0) as cluster:
        # owner -> cloud / user through the CLI, one process per party
        topo_path = cluster.topology_path
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        base = [sys.executable, "-m", "secinfer", "stip", "provision", "--topology",
                str(topo_path), "--id"]
        procs = [
            subprocess.Popen(base + ["0", "--cloud-dir", str(tmp_path / "p1" / "cloud"),
                                     "--key-dir", str(tmp_path / "p1" / "key")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env),
            subprocess.Popen(base + ["1", "--out", str(tmp_path / "p2")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env),
            subprocess.Popen(base + ["2", "--out", str(tmp_path / "p3")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env),
        ]
        outs = [p.communicate(timeout=120)[0].decode() for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        assert "provisioned" in outs[0]
        assert not (tmp_path / "p2" / "perms.safetensors").exists()  # the cloud has no key
        assert (tmp_path / "p3" / "perms.safetensors").exists()

        with open(tmp_path / "serve.log", "wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "secinfer", "stip", "serve", "--topology",
                 str(topo_path), "--model", str(tmp_path / "p2"), "--sessions", "3"],
                stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
        try:
            ids = torch.randint(3, 150, (1, 6))
            # a user that vanishes mid-session (no bye) must not take the server down
            with dial_cloud(cluster.topology, 1) as s:
                SessionLink(s, 1).call("lm_start", [torch.zeros(1, 2, 48),
                                                    torch.ones(1, 2, dtype=torch.int64)])
                s.send(1, torch.tensor([3, 2], dtype=torch.int64))  # a request cut short
            with dial_cloud(cluster.topology, 1) as s:
                link = SessionLink(s, 1)
                toks = StipUser(load_key(tmp_path / "p3"), link).generate(ids, 32)
                link.close()
                cost = s.report()
            assert torch.equal(toks, plaintext_greedy(m, ids, 32))
            assert link.cloud_seconds > 0
            assert any("stip_lm_step" in k for k in cost)

            # a second session against the same long-lived server, from the user CLI
            q = subprocess.run(
                [sys.executable, "-m", "secinfer", "stip", "query", "--topology", str(topo_path),
                 "--key", str(tmp_path / "p3"), "--input-ids", ",".join(map(str, ids[0].tolist())),
                 "--generate", "5"],
                capture_output=True, text=True, timeout=120,
                env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
            assert q.returncode == 0, q.stderr
            assert json.loads(q.stdout.strip().splitlines()[-1])["tokens"] == toks[0, :5].tolist()
            assert server.wait(timeout=60) == 0
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
    text = (tmp_path / "serve.log").read_text()
    assert text.count("session ended after") == 2, text
    assert text.count("session aborted") == 1, text
