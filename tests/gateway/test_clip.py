"""/v1/zero-shot through a served CLIP: three MPC servers (threads, mutual TLS) serving a compiled
tiny CLIP, the gateway as their user; answers compared with plaintext CLIP, bad bodies 422."""

import json

import pytest
import torch
from fastapi.testclient import TestClient

from secinfer import api
from secinfer.gateway import GatewayConfig, create_app
from secinfer.gateway.clip import ClipBackend, ClipConfig
from secinfer.seclmm.tinyclip import (
    FMNIST_CLASSES,
    TinyClipSpec,
    clip_image_embeddings,
    clip_text_embeddings,
    make_tiny_clip,
)

from ..serve.test_served_models import _Servers

pytestmark = pytest.mark.network


def test_zero_shot_through_served_clip_servers(served, tmp_path):
    bundle = make_tiny_clip(FMNIST_CLASSES, TinyClipSpec(hidden=32, layers=1, heads=2,
                                                         intermediate=64, projection=16))
    api.compile(bundle, "mpc", tmp_path / "b")
    srv = _Servers(tmp_path / "run", tmp_path / "b", sessions=1)
    user = srv.topo.party(3)
    clip = ClipBackend(ClipConfig(srv.topo, tmp_path / "b" / "user", user.cert, user.key))
    images = torch.rand(2, 1, 28, 28) * 2 - 1
    classes = FMNIST_CLASSES[:3]
    with TestClient(create_app(GatewayConfig(served.topology, served.cert, served.key,
                                             clip=clip)), raise_server_exceptions=False) as gw:
        for body, why in (({"input": images.tolist()}, "'classes'"),
                          ({"input": [[1.0]], "classes": ["a"]}, "takes [n, 1, 28, 28]"),
                          ({"input": images.tolist(), "classes": ["a"], "x": 1}, "unknown"),
                          ({"input": [[[[float("nan")] * 28] * 28]], "classes": ["a"]},
                           "NaN")):
            r = gw.post("/v1/zero-shot", content=json.dumps(body),  # NaN as JSON's NaN
                        headers={"content-type": "application/json"})
            assert r.status_code == 422 and why in r.json()["cause"], r.text
        r = gw.post("/v1/zero-shot", json={"input": images.tolist(), "classes": classes})
        assert r.status_code == 200, r.text
        res = r.json()
    srv.join()
    with torch.no_grad():
        img = torch.nn.functional.normalize(clip_image_embeddings(bundle, images).double(), dim=-1)
        txt = torch.nn.functional.normalize(clip_text_embeddings(
            bundle, [f"a photo of a {c}." for c in classes]).double(), dim=-1)
    scores = torch.tensor(res["scores"])
    assert (scores - img @ txt.T).abs().max().item() < 5e-3
    assert res["classes"] == [classes[i] for i in res["labels"]]
    assert res["cost"]["user_bytes_sent"] > 0
