"""Bundles, servers and the user's client over real processes and mutual TLS."""

import time

import pytest
import torch

from secinfer.data import fashion_mnist
from secinfer.models import zoo
from secinfer.models.bundle import BundleError, compile_model, load_bundle
from secinfer.net import PartyFailed, Topology, local_cluster
from secinfer.serve.local import secure_eval
from secinfer.serve.server import serve

pytestmark = pytest.mark.network


def test_bundles_hold_shares_and_detect_tampering(tmp_path):
    model = zoo.build("fmnist_cnn").eval()
    dirs = compile_model(model, (1, 28, 28), tmp_path / "b")
    plan0, s0, m0 = load_bundle(dirs[0], expect_party=0)
    _, s1, _ = load_bundle(dirs[1], expect_party=1)
    plan2, s2, m2 = load_bundle(dirs[2], expect_party=2)
    assert s2 is None and not (dirs[2] / "weights.safetensors").exists()
    assert m2["role"] == "helper" and plan2.to_json() == plan0.to_json()
    w = model.conv1.weight.detach().double()
    enc = s0["conv1.w"] + s1["conv1.w"]
    assert torch.allclose(enc.double() / 2**12, w, atol=2**-12)
    assert not torch.equal(s0["conv1.w"], s1["conv1.w"])
    # a flipped byte in a share is caught by the manifest's checksum
    f = dirs[1] / "weights.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-5] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="checksum mismatch for weights.safetensors"):
        load_bundle(dirs[1])
    with pytest.raises(BundleError, match="bundle of party 0, not of party 2"):
        load_bundle(dirs[0], expect_party=2)
    (dirs[2] / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="corrupt"):
        load_bundle(dirs[2])


def test_secure_inference_on_fashion_mnist_subset():
    model = zoo.pretrained("fmnist_cnn")
    x, y = fashion_mnist.load("test", limit=60)
    res = secure_eval(model, (1, 28, 28), x, y, batch=30)
    assert res.agreement >= 59 / 60
    assert abs(res.secure_accuracy - res.plain_accuracy) <= 1 / 60 + 1e-9
    assert res.max_abs_logit_error < 0.05
    p0 = res.costs[0]["servers"]
    assert p0["conv1"]["bytes_sent"] > 0 and p0["relu1"]["rounds"] >= 1


def test_missing_party_fails_fast_naming_it(tmp_path):
    dirs = compile_model(zoo.build("lenet").eval(), (1, 28, 28), tmp_path / "b")
    with local_cluster(roles=["server", "server", "helper", "user"], workdir=tmp_path,
                       timeout=5, connect_timeout=4) as cluster:
        procs = [cluster.spawn(i, ["serve", "--topology", str(cluster.topology_path),
                                   "--id", str(i), "--bundle", str(dirs[i])]) for i in (0, 1)]
        t0 = time.monotonic()
        with pytest.raises(PartyFailed) as info:
            cluster.wait(procs, timeout=80)
        assert time.monotonic() - t0 < 90  # 4 s connect timeout + process start-up under load
    assert "party 2 (helper" in str(info.value)


def test_wrong_topology_or_role_is_a_clear_error(tmp_path):
    dirs = compile_model(zoo.build("lenet").eval(), (1, 28, 28), tmp_path / "b")
    with local_cluster(roles=["server", "server", "helper"], workdir=tmp_path) as cluster:
        topo = Topology.load(cluster.topology_path)
        with pytest.raises(ValueError, match="no party with role 'user'"):
            serve(topo, 0, dirs[0])
        with pytest.raises(BundleError, match="bundle of party 1, not of party 0"):
            serve(topo, 0, dirs[1])


def test_a_server_logs_its_start_with_time_level_address_and_plan_digest(tmp_path):
    import re

    model = zoo.pretrained("fmnist_cnn")
    x, y = fashion_mnist.load("test", limit=2)
    secure_eval(model, (1, 28, 28), x, y, batch=2, workdir=tmp_path)
    for i in range(3):
        text = (tmp_path / "logs" / f"party{i}.log").read_text()
        assert re.search(
            r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO secinfer\.serve\.server: "
            rf"server {i} \((server|helper)\) ready on 127\.0\.0\.1:\d+: backend mpc, bundle "
            r"\S+ \(plan [0-9a-f]{12}\)", text, re.M), text[-2000:]


def test_sigterm_finishes_the_request_in_flight_then_every_server_exits_cleanly(tmp_path):
    import signal
    import threading

    from secinfer.serve.client import Client

    model = zoo.pretrained("fmnist_cnn")
    dirs = compile_model(model, (1, 28, 28), tmp_path / "b")
    x, _ = fashion_mnist.load("test", limit=100)
    with torch.no_grad():
        plain = model(x).double()
    with local_cluster(roles=["server", "server", "helper", "user"], workdir=tmp_path,
                       timeout=20, connect_timeout=10) as cluster:
        procs = [cluster.spawn(i, ["serve", "--topology", str(cluster.topology_path),
                                   "--id", str(i), "--bundle", str(dirs[i])]) for i in range(3)]
        with Client(cluster.topology) as c:
            timer = threading.Timer(0.3, lambda: [p.proc.send_signal(signal.SIGTERM)
                                                  for p in procs])
            timer.start()
            out = c.predict(x)  # 100 images: the signal lands while this is being computed
            timer.join()
        assert (out.argmax(1) == plain.argmax(1)).double().mean() >= 0.99
        codes = [p.proc.wait(timeout=60) for p in procs]
    assert codes == [0, 0, 0]
    for p in procs:
        log = p.log.read_text()
        assert "SIGTERM: finishing the request in flight, then exiting" in log
        assert "stopped on request after" in log


def test_the_helper_stops_with_a_clear_error_when_both_compute_servers_die(tmp_path):
    dirs = compile_model(zoo.pretrained("fmnist_cnn"), (1, 28, 28), tmp_path / "b")
    with local_cluster(roles=["server", "server", "helper", "user"], workdir=tmp_path,
                       timeout=10, connect_timeout=3) as cluster:
        procs = [cluster.spawn(i, ["serve", "--topology", str(cluster.topology_path),
                                   "--id", str(i), "--bundle", str(dirs[i])]) for i in range(3)]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(
                ": ready" in p.log.read_text() for p in procs):
            time.sleep(0.2)
        assert all(": ready" in p.log.read_text() for p in procs)
        for p in procs[:2]:
            p.proc.kill()
        t0 = time.monotonic()
        code = procs[2].proc.wait(timeout=60)
        waited = time.monotonic() - t0
    assert code == 2 and waited < 30  # one user connect timeout (3 s) and start-up slack
    log = procs[2].log.read_text()
    assert "server 2 stops: another server is gone" in log
    assert "party 0 (server" in log or "party 1 (server" in log
