"""Text endpoints through STIP: /v1/generate against a real `secinfer stip serve` process,
/v1/embed against a STIP cloud serving an encoder over TLS; both compared with plaintext."""

import threading

import pytest
import torch
from fastapi.testclient import TestClient

from secinfer.gateway import GatewayConfig, create_app
from secinfer.gateway.stip import StipBackend, StipConfig
from secinfer.net import local_cluster
from secinfer.stip import transform_model, write_cloud, write_key
from secinfer.stip.cloud import load_cloud
from secinfer.stip.protocol import serve as stip_serve

from ..stip import tiny
from ..stip.test_equivalence import plaintext_greedy

pytestmark = pytest.mark.network


def _artifacts(model, folder):
    cloud_state, cloud_cfg, key = transform_model(model)
    write_cloud(folder / "cloud", key.model_class, cloud_state, cloud_cfg)
    write_key(folder / "key", key)
    return folder / "cloud", folder / "key"


def _gateway(served, topo, key_dir):
    stip = StipBackend(StipConfig(topo, key_dir))
    return TestClient(create_app(GatewayConfig(served.topology, served.cert, served.key,
                                               stip=stip)), raise_server_exceptions=False)


@torch.inference_mode()
def test_generate_through_a_stip_serve_process(served, tmp_path):
    torch.manual_seed(0)  # a test model whose greedy tokens vary (not a secret)
    m = tiny.gpt2()
    cloud, key = _artifacts(m, tmp_path)
    with local_cluster(roles=["owner", "cloud", "user"], workdir=tmp_path / "run",
                       timeout=30.0, connect_timeout=20.0) as cluster:
        cluster.spawn(1, ["stip", "serve", "--topology", str(cluster.topology_path),
                          "--model", str(cloud)])
        with _gateway(served, cluster.topology, key) as api:
            ids = torch.randint(3, 150, (1, 5), generator=torch.Generator().manual_seed(0))
            r = api.post("/v1/generate", json={"input_ids": ids[0].tolist(),
                                               "max_new_tokens": 6})
            assert r.status_code == 200, r.text
            res = r.json()
            assert res["tokens"] == plaintext_greedy(m, ids, 6).tolist()
            assert len(set(res["tokens"][0])) > 1, res["tokens"]
            ops = {lay["name"]: lay for lay in res["cost"]["layers"]}
            assert ops["lm_start"]["bytes"] > 0 and ops["lm_step"]["rounds"] == 5, ops
            assert res["plaintext_check"]["available"] is False
            # bad requests are JSON errors; the cloud serves the next one
            for body, why in (({"input_ids": [[1, 2], [3]]}, "same length"),
                              ({"input_ids": [1], "max_new_tokens": 0}, "max_new_tokens"),
                              ({"text": "hi"}, "--stip-tokenizer"),
                              ({"input_ids": [10**6]}, "")):
                e = api.post("/v1/generate", json=body)
                assert e.status_code == 422 and why in e.json()["cause"], e.text
            e = api.post("/v1/embed", json={"input_ids": [1, 2]})
            assert e.status_code == 501 and "'encoder'" in e.json()["cause"], e.text
            again = api.post("/v1/generate", json={"input_ids": ids[0].tolist(),
                                                   "max_new_tokens": 2})
            assert again.status_code == 200 and again.json()["tokens"] == [res["tokens"][0][:2]]


@torch.inference_mode()
def test_embed_through_a_stip_cloud(served, tmp_path):
    m = tiny.bert_encoder()
    cloud, key = _artifacts(m, tmp_path)
    with local_cluster(roles=["owner", "cloud", "user"], workdir=tmp_path / "run",
                       timeout=30.0, connect_timeout=20.0) as cluster:
        topo = cluster.topology
        t = threading.Thread(target=stip_serve, args=(topo, 1, load_cloud(cloud)),
                             kwargs={"max_sessions": 1, "log": lambda _m: None}, daemon=True)
        t.start()
        with _gateway(served, topo, key) as api:
            ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
            r = api.post("/v1/embed", json={"input_ids": ids.tolist()})
            assert r.status_code == 200, r.text
        t.join(timeout=30)
    want = m(input_ids=ids).last_hidden_state.mean(dim=1)
    got = torch.tensor(r.json()["embeddings"])
    assert got.shape == want.shape and (got - want).abs().max() < 1e-4
