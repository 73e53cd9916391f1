"""The gateway's REST API (FastAPI TestClient) in front of three real server processes."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from fastapi.testclient import TestClient

from secinfer.cli.gateway import FASHION_MNIST
from secinfer.data import fashion_mnist
from secinfer.gateway import GatewayConfig, create_app
from secinfer.gateway.errors import classify_error
from secinfer.net import PeerDisconnected, RequestRefused, write_local_topology
from secinfer.net.tls import make_certs
from secinfer.net.topology import Topology
from secinfer.serve.client import Client

from .conftest import MAX_USERS, fmnist_png

pytestmark = pytest.mark.network


@pytest.fixture(scope="module")
def api(served):
    # at most MAX_USERS sessions from the gateway: more requests queue here, not at the servers
    cfg = GatewayConfig(served.topology, served.cert, served.key, max_sessions=MAX_USERS,
                        busy_wait=2.0,
                        plaintext=served.model,
                        plaintext_name="zoo:fmnist_cnn", class_names=list(FASHION_MNIST))
    with TestClient(create_app(cfg), raise_server_exceptions=False) as c:
        yield c


def _assert_error(r, status, *words):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "cause"}, body
    for w in words:
        assert w in body["cause"], body
    return body


def test_health_model_and_openapi(api):
    h = api.get("/v1/health")
    assert h.status_code == 200, h.text
    body = h.json()
    assert body["ok"] and body["gateway"]["state"] == "serving"
    assert [body["servers"][s]["state"] for s in "012"] == ["serving"] * 3
    m = api.get("/v1/model").json()
    assert m["input_shape"] == [1, 28, 28] and m["output"]["mode"] == "logits"
    assert m["output"]["outputs"] == 10 and m["plaintext_check"] is True
    assert m["input_range"] == pytest.approx(list(fashion_mnist.INPUT_RANGE), rel=1e-9)
    spec = api.get("/openapi.json").json()
    body_types = spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body_types)
    assert {"/v1/health", "/v1/model", "/v1/embed", "/v1/zero-shot", "/v1/generate"} <= set(
        spec["paths"])


def test_classify_a_png_agrees_with_plaintext_and_costs_per_layer(api, tmp_path):
    png, label, x = fmnist_png(tmp_path / "img0.png", 0)
    with torch.no_grad():
        plain = api.app.state.gateway.cfg.plaintext(x).double()
    with png.open("rb") as f:
        r = api.post("/v1/classify", files={"file": ("img0.png", f, "image/png")})
    assert r.status_code == 200, r.text
    res = r.json()
    p = res["predictions"][0]
    assert p["label"] == int(plain.argmax()) == label and p["name"] == FASHION_MNIST[label]
    # the PNG's 8-bit pixels mapped onto the announced range are the data set's own input
    assert (torch.tensor(p["logits"]) - plain[0]).abs().max() < 0.05
    pc = res["plaintext_check"]
    assert pc["available"] and pc["agrees"] and pc["max_abs_logit_error"] < 0.05
    cost = res["cost"]
    assert cost["available"] and cost["steps"] == 1, cost
    layers = {lay["name"]: lay for lay in cost["layers"]}
    assert layers["conv1"]["bytes"] > 0 and layers["relu1"]["rounds"] >= 1
    assert sum(lay["bytes"] for lay in cost["layers"]) == cost["total"]["bytes"]
    assert cost["layers"][-1]["name"] == "scheduling" and "output" in layers
    # two shares; to each of the 3 servers a request header (5 int64) and the shape (4 int64)
    assert cost["user"]["bytes_sent"] == 2 * 8 * 28 * 28 + 3 * (5 * 8 + 4 * 8)
    # a layer's bytes and rounds are a function of the public plan and batch: the same next
    # time (the scheduling entry is not: it counts the steps and heartbeats in the interval)
    with png.open("rb") as f:
        again = api.post("/v1/classify", files={"file": ("img0.png", f, "image/png")}).json()

    def model_layers(c):
        return [(lay["name"], lay["bytes"], lay["rounds"]) for lay in c["layers"]
                if lay["name"] != "scheduling"]

    assert model_layers(again["cost"]) == model_layers(cost) and len(model_layers(cost)) >= 10


def test_classify_a_json_tensor_batch(api):
    x, _ = fashion_mnist.load("test", limit=3)
    r = api.post("/v1/classify", json={"input": x[1:3].tolist()})
    assert r.status_code == 200, r.text
    with torch.no_grad():
        plain = api.app.state.gateway.cfg.plaintext(x[1:3]).double()
    got = torch.tensor([p["logits"] for p in r.json()["predictions"]])
    assert got.shape == (2, 10) and (got - plain).abs().max() < 0.05


def test_bad_requests_are_json_errors_and_the_servers_go_on(api, tmp_path):
    _assert_error(api.post("/v1/classify", files={"file": ("x.png", b"not a png", "image/png")}),
                  422, "not an image Pillow can read")
    _assert_error(api.post("/v1/classify", files={"file": ("x.png", b"", "image/png")}),
                  422, "empty")
    _assert_error(api.post("/v1/classify", files={"other": ("a", b"x")}), 422, "'file'")
    _assert_error(api.post("/v1/classify", json={"input": [[1.0, 2.0]]}), 422,
                  "the model takes [batch, 1, 28, 28]")
    _assert_error(api.post("/v1/classify", json={"input": [[1.0, 2.0], [3.0]]}), 422,
                  "rectangular")
    _assert_error(api.post("/v1/classify", json={"input": torch.full((1, 28, 28), 1e6).tolist()}),
                  422, "valid range")
    _assert_error(api.post("/v1/classify", json={"x": 1}), 422, '{"input"')
    _assert_error(api.post("/v1/classify", content=b"{", headers={"content-type":
                                                                   "application/json"}),
                  422, "not JSON")
    _assert_error(api.post("/v1/classify", content=b"abc", headers={"content-type":
                                                                    "text/plain"}), 415)
    big = torch.zeros((300, 1, 28, 28)).tolist()  # over max_batch 256: the servers refuse it
    _assert_error(api.post("/v1/classify", json={"input": big}), 422, "max_batch")
    for name, why in (("embed", "without a STIP cloud"), ("generate", "without a STIP cloud"),
                      ("zero-shot", "without a served CLIP")):
        body = _assert_error(api.post(f"/v1/{name}", json={}), 501, why)
        assert body["error"] == "not served by this gateway"
    _assert_error(api.get("/nope"), 404)
    # after all that, the servers still answer an honest request correctly
    png, label, _ = fmnist_png(tmp_path / "img5.png", 5)
    r = api.post("/v1/classify", files={"file": ("i.png", png.read_bytes(), "image/png")})
    assert r.status_code == 200 and r.json()["predictions"][0]["label"] == label, r.text


def test_concurrent_requests_each_get_their_own_session(api):
    x, _ = fashion_mnist.load("test", limit=4)
    with torch.no_grad():
        want = api.app.state.gateway.cfg.plaintext(x).argmax(1).tolist()

    def one(i):
        r = api.post("/v1/classify", json={"input": x[i].tolist()})
        assert r.status_code == 200, r.text
        return r.json()["predictions"][0]["label"]

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(one, range(4))) == want


def test_busy_servers_are_503_and_serve_again_once_a_slot_frees(api, served):
    x, _ = fashion_mnist.load("test", limit=1)
    others = [Client(served.topology, cert=served.cert, key=served.key)
              for _ in range(MAX_USERS)]
    try:
        for c in others:  # other sessions hold every slot
            c.connect()
        t0 = time.monotonic()
        body = _assert_error(api.post("/v1/classify", json={"input": x.tolist()}), 503, "busy")
        assert body["error"] == "servers busy" and time.monotonic() - t0 >= 1.5  # retried
    finally:
        for c in others:
            c.close()
    r = api.post("/v1/classify", json={"input": x.tolist()})
    assert r.status_code == 200, r.text


def test_unreachable_servers_are_503(tmp_path):
    path = write_local_topology(tmp_path, ["server", "server", "helper", "user"], timeout=2,
                                connect_timeout=1)
    topo = Topology.load(path)
    make_certs(topo)
    user = topo.party(3)
    with TestClient(create_app(GatewayConfig(topo, user.cert, user.key, probe_timeout=1)),
                    raise_server_exceptions=False) as c:
        _assert_error(c.post("/v1/classify", files={"file": ("x.png", b"junk", "image/png")}),
                      422, "not an image")  # refused before any server is contacted
        body = _assert_error(c.post("/v1/classify", json={"input": [0.0]}), 503, "unreachable")
        assert body["error"] == "servers unreachable"
        h = c.get("/v1/health")
        assert h.status_code == 503
        assert {v["state"] for v in h.json()["servers"].values()} == {"unreachable"}


def test_error_statuses():
    assert classify_error(PeerDisconnected("party 1 (server)", "EOF")).status == 502
    assert classify_error(RequestRefused("party 0 refused the session: busy: ...")).status == 503
    assert classify_error(RequestRefused("refused: query quota exceeded: ...")).status == 429
    assert classify_error(ValueError("bad")).status == 422
    assert json.dumps(classify_error(RuntimeError("x")).body())


def test_cli_refuses_half_a_certificate_and_missing_files(tmp_path, capsys):
    from secinfer.cli import main

    path = write_local_topology(tmp_path, ["server", "server", "helper"])
    base = ["gateway", "--topology", str(path), "--port", "1"]
    assert main([*base, "--cert", str(tmp_path / "a.pem")]) == 1
    assert "give both --cert and --key" in capsys.readouterr().err
    assert main([*base, "--cert", str(tmp_path / "a.pem"), "--key", str(tmp_path / "a.key")]) == 1
    assert "a.pem does not exist" in capsys.readouterr().err
    assert main(base) == 1
    assert "has no user party" in capsys.readouterr().err
