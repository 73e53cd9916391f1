"""Bundles, servers and the user's client over real processes and mutual TLS."""

import time

import pytest
import torch

from secinfer.data import fashion_mnist
from secinfer.models import zoo
from secinfer.models.bundle import BundleError, compile_model, load_bundle
from secinfer.net import SecinferNetError, Topology, local_cluster
from secinfer.serve.client import Client
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


def _spawn_server(cluster, i, dirs, tag=""):
    return cluster.spawn(i, ["serve", "--topology", str(cluster.topology_path), "--id", str(i),
                             "--bundle", str(dirs[i])], tag=tag)


def _wait_for(pred, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {seconds} s: {what}")


def _predict_right(cluster, model, x, **kw) -> None:
    with torch.no_grad():
        plain = model(x).double()
    with Client(cluster.topology, **kw) as c:
        out = c.predict(x)
    assert (out - plain).abs().max() < 0.05


def test_a_missing_party_is_named_and_served_with_once_it_comes(tmp_path):
    model = zoo.build("lenet").eval()
    dirs = compile_model(model, (1, 28, 28), tmp_path / "b")
    x, _ = fashion_mnist.load("test", limit=2)
    with local_cluster(roles=["server", "server", "helper", "user"], workdir=tmp_path,
                       timeout=5, connect_timeout=3) as cluster:
        procs = [_spawn_server(cluster, i, dirs) for i in (0, 1)]
        _wait_for(lambda: any("party 2 (helper" in p.log.read_text() for p in procs), 60,
                  "a server log names the missing helper")
        assert all(p.proc.poll() is None for p in procs)  # waiting for it, not exited
        procs.append(_spawn_server(cluster, 2, dirs))
        _wait_for(lambda: ": ready" in procs[2].log.read_text(), 90, "the helper serves")
        _predict_right(cluster, model, x, admit_timeout=60)
        assert all(p.proc.poll() is None for p in procs)


def test_wrong_topology_or_role_is_a_clear_error(tmp_path):
    dirs = compile_model(zoo.build("lenet").eval(), (1, 28, 28), tmp_path / "b")
    with local_cluster(roles=["server", "server", "helper"], workdir=tmp_path) as cluster:
        topo = Topology.load(cluster.topology_path)
        with pytest.raises(BundleError, match="bundle of party 1, not of party 0"):
            serve(topo, 0, dirs[1])
        with pytest.raises(ValueError, match="party 2 has role 'helper'"):
            Client(topo, user_id=2)


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


def test_a_killed_server_restarted_is_served_with_again_without_restarting_the_others(tmp_path):
    model = zoo.pretrained("fmnist_cnn")
    dirs = compile_model(model, (1, 28, 28), tmp_path / "b")
    x, _ = fashion_mnist.load("test", limit=4)
    with local_cluster(roles=["server", "server", "helper", "user"], workdir=tmp_path,
                       timeout=8, connect_timeout=3) as cluster:
        procs = [_spawn_server(cluster, i, dirs) for i in range(3)]
        _wait_for(lambda: all(": ready" in p.log.read_text() for p in procs), 90, "all serve")
        _predict_right(cluster, model, x, admit_timeout=60)
        procs[1].proc.kill()
        procs[1].proc.wait(timeout=10)
        with pytest.raises(SecinferNetError, match="party 1"):
            _predict_right(cluster, model, x, admit_timeout=20)
        procs[1] = _spawn_server(cluster, 1, dirs, tag="-restarted")
        t0 = time.monotonic()
        _wait_for(lambda: ": ready" in procs[1].log.read_text(), 90, "P1 serves again")
        print(f"restarted P1 serving with the same P0 and helper after "
              f"{time.monotonic() - t0:.1f} s")
        _predict_right(cluster, model, x, admit_timeout=60)
        assert procs[0].proc.poll() is None and procs[2].proc.poll() is None
        for i in (0, 2):
            assert "reconnect" in procs[i].log.read_text()


def test_a_frozen_p0_is_named_to_the_user_within_the_session_timeout(tmp_path):
    import signal

    model = zoo.pretrained("fmnist_cnn")
    dirs = compile_model(model, (1, 28, 28), tmp_path / "b")
    x, _ = fashion_mnist.load("test", limit=4)
    with local_cluster(roles=["server", "server", "helper", "user"], workdir=tmp_path,
                       timeout=8, connect_timeout=3) as cluster:
        procs = [_spawn_server(cluster, i, dirs) for i in range(3)]
        _wait_for(lambda: all(": ready" in p.log.read_text() for p in procs), 90, "all serve")
        with Client(cluster.topology, admit_timeout=60) as c:
            c.predict(x[:1])
            procs[0].proc.send_signal(signal.SIGSTOP)
            t0 = time.monotonic()
            with pytest.raises(SecinferNetError, match="party 0") as info:
                c.predict(x)
            waited = time.monotonic() - t0
        print(f"frozen P0 named to the user after {waited:.1f} s: {info.value}")
        assert waited < 8 + 10, (waited, info.value)  # the session timeout, and slack
        procs[0].proc.send_signal(signal.SIGCONT)
        _predict_right(cluster, model, x, admit_timeout=60)  # all three serve again
