"""Real processes over mutual TLS: round trips, refused peers, dead and silent parties."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import threading
import time

import pytest
import torch

from secinfer.net import (
    HandshakeError,
    Listener,
    PartyFailed,
    PeerTimeout,
    SecinferNetError,
    Session,
    Topology,
    local_cluster,
    make_certs,
    write_local_topology,
)
from secinfer.net.programs import sample_tensors, storable

pytestmark = pytest.mark.network


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    a = storable(a)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.numel() == 0:
        return True
    if a.is_floating_point():
        return bool(torch.equal(a.nan_to_num(3.0), b.nan_to_num(3.0)))
    return bool(torch.equal(a, b))


def test_every_dtype_roundtrips_between_three_processes():
    with local_cluster(timeout=20) as cluster:
        results = cluster.run("secinfer.net.programs:roundtrip", timeout=120)
        costs = cluster.costs()
    samples = sample_tensors()
    for pid in range(3):
        for peer in (p for p in range(3) if p != pid):
            for name, t in samples.items():
                assert _same(t, results[pid][f"from{peer}.{name}"]), (pid, peer, name)
        sent = sum(t.numel() * t.element_size() for t in samples.values()) * 2
        assert costs[pid]["roundtrip"]["bytes_sent"] == sent


def _two_party_topology(tmp_path, name):
    path = write_local_topology(tmp_path / name, ["server", "server"], timeout=5)
    topo = Topology.load(path)
    make_certs(topo, overwrite=True)
    return topo


def _connect_in_thread(topo, pid, out):
    def body():
        try:
            out[pid] = Session.connect(topo, pid)
        except Exception as e:  # noqa: BLE001
            out[pid] = e

    t = threading.Thread(target=body)
    t.start()
    return t


def test_certificate_from_another_ca_is_refused(tmp_path):
    good = _two_party_topology(tmp_path, "a")
    other = _two_party_topology(tmp_path, "b")
    # party 1 presents a certificate of a foreign CA but trusts good's CA
    p1 = good.party(1)
    rogue = good.__class__(
        parties=(good.party(0), p1.__class__(1, p1.role, p1.host, p1.port,
                                              other.party(1).cert, other.party(1).key)),
        ca_cert=good.ca_cert, timeout=5, connect_timeout=4,
    )
    strict = good.__class__(parties=good.parties, ca_cert=good.ca_cert, timeout=5,
                            connect_timeout=4)
    out: dict = {}
    threads = [_connect_in_thread(strict, 0, out), _connect_in_thread(rogue, 1, out)]
    for t in threads:
        t.join(30)
    assert isinstance(out[0], PeerTimeout | HandshakeError)
    assert "party 1" in str(out[0])
    assert isinstance(out[1], HandshakeError | PeerTimeout)
    for s in out.values():
        if isinstance(s, Session):
            s.close()


def test_plaintext_connection_is_refused(tmp_path):
    topo = _two_party_topology(tmp_path, "p")
    lst = Listener(topo, topo.party(0))
    try:
        raw = socket.create_connection((topo.party(0).host, topo.party(0).port), timeout=5)
        raw.sendall(b"SIF1" + bytes(200))  # a plaintext frame, no TLS
        raw.settimeout(5)
        try:
            assert raw.recv(100) in (b"",) or True
        except (ConnectionResetError, TimeoutError):
            pass
        raw.close()
        deadline = time.monotonic() + 5
        while not lst.rejections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lst.rejections and "rejected connection" in lst.rejections[0]
        with pytest.raises(PeerTimeout, match="never connected"):
            lst.wait_for([1], time.monotonic() + 0.5)
    finally:
        lst.close()


def test_dialing_a_plaintext_server_fails_clearly(tmp_path):
    topo = _two_party_topology(tmp_path, "q")
    srv = socket.create_server((topo.party(1).host, topo.party(1).port))

    def serve():
        conn, _ = srv.accept()
        conn.sendall(b"HTTP/1.1 200 OK\r\n\r\nhello")
        time.sleep(1)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        with pytest.raises(HandshakeError, match="party 1"):
            Session.connect(topo, 0)
    finally:
        srv.close()


def _wait_started(cluster, n, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = [(cluster.workdir / "logs" / f"party{i}.log") for i in range(n)]
        if all(p.exists() and "connected to" in p.read_text() for p in logs):
            return
        time.sleep(0.1)
    raise AssertionError("parties did not connect")


@pytest.mark.parametrize("fault", ["kill", "stop"])
def test_dead_or_silent_party_fails_the_others_naming_it(fault):
    timeout = 4.0
    with local_cluster(timeout=timeout) as cluster:
        procs = cluster.start("secinfer.net.programs:ping_loop", kwargs={"delay": 0.01})
        _wait_started(cluster, 3)
        victim = procs[2]
        t0 = time.monotonic()
        os.kill(victim.proc.pid, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
        try:
            with pytest.raises(PartyFailed):
                cluster.wait(procs[:2], timeout=timeout + 20)
            elapsed = time.monotonic() - t0
        finally:
            if fault == "stop":
                os.kill(victim.proc.pid, signal.SIGKILL)
        assert elapsed < timeout + 10
        for p in procs[:2]:
            log = p.log.read_text()
            assert "party 2 (helper" in log, log[-2000:]
            expect = "disconnected" if fault == "kill" else "for 4.0 s"
            assert expect in log, log[-2000:]


def test_session_ids_are_fresh():
    with local_cluster(roles=["a", "b"], timeout=10) as cluster:
        cluster.run()
        cluster.run()
        log = (cluster.workdir / "logs" / "party0.log").read_text()
        ids = [line.split("session ")[1] for line in log.splitlines() if "session " in line]
        assert len(ids) == 2 and ids[0] != ids[1]


def test_closed_listener_refuses_at_once(tmp_path):
    topo = Topology.load(write_local_topology(tmp_path, ["a", "b"], timeout=5))
    make_certs(topo, overwrite=True)
    spec = topo.party(0)
    for _ in range(5):
        listener = Listener(topo, spec)
        listener.close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((spec.host, spec.port), timeout=2.0).close()


def test_back_to_back_sessions_against_a_long_lived_listener(tmp_path):
    """A user that reconnects the moment its previous session ends must reach the new session.

    Regression: the user's old listener stayed open while its readers wound down, the server's
    redial landed there, and the new session waited for a link that never came.
    """
    topo = Topology.load(write_local_topology(tmp_path, ["server", "user"], timeout=10,
                                              connect_timeout=8))
    make_certs(topo, overwrite=True)
    rounds = 8
    served: list[int] = []
    failures: list[BaseException] = []

    def server() -> None:
        listener = Listener(topo, topo.party(0))
        try:
            while len(served) < rounds:
                try:
                    with Session.connect(topo, 0, peers=[1], listener=listener) as s:
                        x = s.recv(1)
                        s.send(1, x + 1)
                        try:
                            s.recv(1, timeout=5)  # the user leaves without a goodbye
                        except Exception:  # noqa: BLE001 - any drop ends this session
                            pass
                        served.append(int(x))
                except (PeerTimeout, HandshakeError):
                    continue
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            failures.append(e)
        finally:
            listener.close()

    t = threading.Thread(target=server, daemon=True)
    t.start()
    for i in range(rounds):
        with Session.connect(topo, 1, peers=[0]) as s:
            s.send(0, torch.tensor(i))
            assert int(s.recv(0)) == i + 1
    t.join(timeout=30)
    assert not failures, failures
    assert served == list(range(rounds))


def test_wrong_topology_file_is_a_clear_error(tmp_path):
    from secinfer.net import TopologyError

    bad = tmp_path / "t.toml"
    bad.write_text("[tls]\nca_cert='x'\n[[party]]\nid=0\nhost='127.0.0.1'\n")
    with pytest.raises(TopologyError, match="lacks port, cert, key"):
        Topology.load(bad)
    with pytest.raises(TopologyError, match="does not exist"):
        Topology.load(tmp_path / "missing.toml")


_ = ssl  # the ssl module must be importable for these tests to mean anything


def test_a_send_to_a_peer_that_gave_up_names_its_reason():
    """A peer that aborts (with a reason) and closes: our next send fails with that reason
    (PeerAborted), not with the bare EOF of the closed socket, whichever comes first."""
    from secinfer.net import PeerAborted, run_tls_threads

    def program(s):
        if s.party_id == 0:
            s.transport.abort("busy: try again later")
            s.close()
            return None
        time.sleep(0.3)  # the abort frame and the close have both arrived
        with pytest.raises(PeerAborted, match="busy: try again later"):
            for _ in range(50):  # the first sends may still fit the socket buffer
                s.send(0, torch.zeros(1 << 16, dtype=torch.int64))
        return True

    assert run_tls_threads(2, program)[1]


def test_a_dial_into_a_closing_listener_does_not_cost_the_next_attempt_its_timeout(tmp_path):
    """A dials B while B's old listener is closing; B's new process dials A, which confirms
    B's link and then finds its own dial dead. A's next attempt keeps the link B already
    counts as confirmed, so the two meet at once instead of A waiting out its whole connect
    timeout for a link B will never send again (B has one already)."""
    topo = Topology.load(write_local_topology(tmp_path, ["server", "server"], timeout=10,
                                              connect_timeout=6))
    make_certs(topo, overwrite=True)
    la = Listener(topo, topo.party(0))
    old_b = Listener(topo, topo.party(1))  # B's previous process: about to go away
    first: list[BaseException] = []

    def a_first_attempt() -> None:
        try:
            Session.connect(topo, 0, peers=[1], listener=la).close()
        except BaseException as e:  # noqa: BLE001 - inspected below
            first.append(e)

    t = threading.Thread(target=a_first_attempt, daemon=True)
    t.start()
    deadline = time.monotonic() + 5
    while old_b._arrivals.empty():  # A's dial has landed in the old listener
        assert time.monotonic() < deadline
        time.sleep(0.01)
    old_b.close()
    b_session: list[Session] = []
    b = threading.Thread(target=lambda: b_session.append(Session.connect(topo, 1, peers=[0])),
                         daemon=True)
    b.start()  # B's new process: dials A, which confirms that link
    t.join(timeout=10)
    assert first and isinstance(first[0], SecinferNetError), first  # A's own dial was dead
    t0 = time.monotonic()
    with Session.connect(topo, 0, peers=[1], listener=la) as s:
        b.join(timeout=10)
        assert b_session, "B never got its session"
        with b_session[0] as sb:
            s.send(1, torch.tensor([7]))
            assert int(sb.recv(0)) == 7
            sb.send(0, torch.tensor([8]))
            assert int(s.recv(1)) == 8
    assert time.monotonic() - t0 < 3.0  # not the 6 s connect timeout
    la.close()
