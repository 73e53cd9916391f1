"""The service under load and over time, against real server processes over TLS: users from
outside the topology, many at once, 'busy' over the limit, health, metrics, memory."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from secinfer.data import fashion_mnist
from secinfer.models import zoo
from secinfer.models.bundle import compile_model
from secinfer.net import RequestRefused, Topology, local_cluster
from secinfer.net.tls import issue_user_cert
from secinfer.net.topology import free_ports
from secinfer.serve.client import Client
from secinfer.serve.replicas import RoundRobin, ServerSet

pytestmark = pytest.mark.network

MAX_USERS = 8


def _wait_ready(procs, seconds=90):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(": ready" in p.log.read_text() for p in procs):
            return
        for p in procs:
            assert p.proc.poll() is None, p.tail()
        time.sleep(0.2)
    raise AssertionError("servers not ready: " + " | ".join(p.tail() for p in procs))


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("service")
    model = zoo.pretrained("fmnist_cnn")
    dirs = compile_model(model, (1, 28, 28), tmp / "b")
    ports = free_ports(3)
    with local_cluster(roles=["server", "server", "helper", "user"], workdir=tmp, timeout=20,
                       connect_timeout=10,
                       service={"max_users": MAX_USERS, "batch_wait_ms": 2}) as cluster:
        procs = [cluster.spawn(i, ["serve", "--topology", str(cluster.topology_path), "--id",
                                   str(i), "--bundle", str(dirs[i]), "--metrics-port",
                                   str(ports[i])]) for i in range(3)]
        _wait_ready(procs)
        x, _ = fashion_mnist.load("test", limit=64)
        with torch.no_grad():
            plain = model(x).double()
        yield SimpleNamespace(cluster=cluster, procs=procs, ports=ports, x=x, plain=plain,
                              tmp=tmp)


def _check(out: torch.Tensor, plain: torch.Tensor) -> bool:
    return bool((out - plain).abs().max() < 0.05)


def test_a_user_certificate_issued_while_serving_is_served_without_a_restart(service):
    topo = service.cluster.topology
    cert, key = service.tmp / "alice.pem", service.tmp / "alice.key"
    issue_user_cert(topo, "alice", cert, key)
    with Client(topo, cert=cert, key=key) as c:
        assert _check(c.predict(service.x[:3]), service.plain[:3])
    assert "user-alice" in service.procs[0].log.read_text()


def test_eight_concurrent_users_times_25_requests_are_all_answered_correctly(service):
    topo = service.cluster.topology
    results: dict[int, list[bool]] = {}
    errors: list[BaseException] = []

    def user(u: int) -> None:
        try:
            got = []
            with Client(topo, admit_timeout=60) as c:
                for r in range(25):
                    i = (u * 25 + r) % len(service.x)
                    got.append(_check(c.predict(service.x[i : i + 1]), service.plain[i : i + 1]))
            results[u] = got
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=user, args=(u,)) for u in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not errors, errors
    assert sum(sum(v) for v in results.values()) == 200
    assert sum(len(v) for v in results.values()) == 200


def test_a_user_over_max_users_is_told_busy_and_the_next_is_served(service):
    topo = service.cluster.topology
    held = [Client(topo, admit_timeout=60) for _ in range(MAX_USERS)]
    try:
        for c in held:
            c.connect()
        with pytest.raises(RequestRefused, match=f"busy: the servers serve at most {MAX_USERS}"):
            Client(topo).connect()
        assert _check(held[-1].predict(service.x[:2]), service.plain[:2])  # still served
    finally:
        for c in held:
            c.close()
    with Client(topo, admit_timeout=60) as c:
        assert _check(c.predict(service.x[:2]), service.plain[:2])


def test_health_names_every_server_and_its_state(service):
    out = subprocess.run([sys.executable, "-m", "secinfer", "health", "--topology",
                          str(service.cluster.topology_path), "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert set(status) == {"0", "1", "2"}
    for pid, st in status.items():
        assert st["state"] == "serving" and st["party"] == int(pid)
        assert st["role"] == ("helper" if pid == "2" else "server")
        assert len(st["plan"]) == 12


def _with_server_1_down(service, folder: Path) -> Path:
    """A copy of the service's topology whose server 1 is at a port nobody listens on."""
    text = Path(service.cluster.topology_path).read_text()
    port1 = service.cluster.topology.party(1).port
    moved = folder / "topology.toml"
    moved.write_text(text.replace(f"port = {port1}", f"port = {free_ports(1)[0]}").replace(
        '"certs/', f'"{Path(service.cluster.topology_path).parent}/certs/'))
    return moved


def test_health_of_a_topology_whose_server_is_down_fails_naming_it(service, tmp_path):
    moved = _with_server_1_down(service, tmp_path)
    out = subprocess.run([sys.executable, "-m", "secinfer", "health", "--topology", str(moved),
                          "--timeout", "2"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "party 1 (server" in out.stdout and "unreachable" in out.stdout
    assert "party 0 (server" in out.stdout and "serving" in out.stdout


def test_the_dispatcher_fails_over_from_a_dead_server_set_to_a_live_one(service, tmp_path):
    dead = ServerSet("dead", Topology.load(_with_server_1_down(service, tmp_path)))
    live = ServerSet("live", service.cluster.topology)
    rr = RoundRobin([dead, live])

    def ask(s: ServerSet) -> tuple[str, torch.Tensor]:
        with Client(s.topology, admit_timeout=5) as c:
            return s.name, c.predict(service.x[:2])

    for _ in range(2):  # whichever set round-robin starts with, the live one answers
        name, out = rr.call(ask)
        assert name == "live" and _check(out, service.plain[:2])


def test_prometheus_metrics_count_requests_and_traffic(service):
    with Client(service.cluster.topology) as c:
        c.predict(service.x[:2])
    for i, port in enumerate(service.ports):
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        lines = text.decode().splitlines()

        def value(name: str, lines=lines, i=i) -> float:
            return float(next(ln.split()[-1] for ln in lines
                              if ln.startswith(name) and f'party="{i}"' in ln
                              or ln.startswith(name + " ")))

        assert value("secinfer_requests_total") >= 1
        assert value("secinfer_inputs_total") >= 2
        assert value("secinfer_step_seconds_count") >= 1
        assert value("secinfer_bytes_sent_total") > 0
        assert value("secinfer_rounds_total") > 0


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.mark.slow
def test_a_thousand_sequential_requests_do_not_grow_server_memory(tmp_path):
    model = zoo.build("lenet").eval()
    dirs = compile_model(model, (1, 28, 28), tmp_path / "b")
    x, _ = fashion_mnist.load("test", limit=1)
    with torch.no_grad():
        plain = model(x).double()
    with local_cluster(roles=["server", "server", "helper", "user"], workdir=tmp_path,
                       timeout=20, connect_timeout=10) as cluster:
        procs = [cluster.spawn(i, ["serve", "--topology", str(cluster.topology_path), "--id",
                                   str(i), "--bundle", str(dirs[i])]) for i in range(3)]
        _wait_ready(procs)
        rss: list[list[int]] = []
        wrong = 0
        for session in range(10):  # 10 user sessions of 100 requests: both kinds of state
            with Client(cluster.topology) as c:
                for _ in range(100):
                    wrong += not _check(c.predict(x), plain)
            rss.append([_rss_kib(p.proc.pid) for p in procs])
            del session
    assert wrong == 0
    after_100, final = rss[0], rss[-1]
    for i in range(3):
        assert final[i] < 1.10 * after_100[i], (i, [r[i] for r in rss])
