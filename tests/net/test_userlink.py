"""User links at a server's listener: who may connect, and bounds on what waits there."""

from __future__ import annotations

import secrets
import ssl
import time

import pytest

from secinfer.net import Listener, Topology, write_local_topology
from secinfer.net.errors import SecinferNetError
from secinfer.net.tls import issue_user_cert, make_certs, user_context
from secinfer.net.transport import USER_DOWN, USER_UP
from secinfer.net.userlink import _dial_one, probe_health, server_side, user_digest

pytestmark = pytest.mark.network


@pytest.fixture
def server(tmp_path):
    topo = Topology.load(write_local_topology(tmp_path, ["server", "server", "helper", "user"],
                                              timeout=5, connect_timeout=5,
                                              service={"max_users": 1}))
    make_certs(topo, overwrite=True)
    lst = Listener(topo, topo.party(0))
    yield topo, lst
    lst.close()


def _wait(pred, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not pred():
        time.sleep(0.05)
    return pred()


def _dial(topo, cert, key, kind, token):
    return _dial_one(topo, user_context(topo, cert, key), 0, kind, token, user_digest(topo),
                     time.monotonic() + 5)


def test_a_session_is_complete_only_with_both_links_and_half_sessions_expire(server):
    topo, lst = server
    me = topo.party(3)
    token = secrets.token_bytes(16)
    up = _dial(topo, me.cert, me.key, USER_UP, token)
    assert _wait(lambda: token in lst._users)
    assert lst.user_tokens() == []  # one link of two: not a session yet
    assert lst.expire_users(0.0) == ["party-3"]
    assert token not in lst._users
    up.close()
    t2 = secrets.token_bytes(16)
    links = [_dial(topo, me.cert, me.key, k, t2) for k in (USER_UP, USER_DOWN)]
    assert _wait(lambda: lst.user_tokens() == [t2])
    got = lst.take_user(t2, time.monotonic() + 1)
    assert got is not None and got.identity == "party-3" and got.complete
    got.close()
    for s in links:
        s.close()


def test_waiting_sessions_are_bounded_and_the_excess_refused_naming_the_user(server, tmp_path):
    topo, lst = server
    assert lst.max_pending_users == 4 * 1 + 16
    lst.max_pending_users = 2
    cert, key = tmp_path / "m.pem", tmp_path / "m.key"
    issue_user_cert(topo, "mallory", cert, key)
    socks = [_dial(topo, cert, key, USER_UP, secrets.token_bytes(16)) for _ in range(3)]
    assert _wait(lambda: len(lst._users) == 2 and len(lst.rejections) == 1)
    assert "2 user sessions are already waiting" in lst.rejections[-1]
    assert "user-mallory" in lst.rejections[-1]
    for s in socks:
        s.close()


def test_a_second_link_of_one_kind_or_from_another_certificate_is_refused(server, tmp_path):
    topo, lst = server
    me = topo.party(3)
    cert, key = tmp_path / "e.pem", tmp_path / "e.key"
    issue_user_cert(topo, "eve", cert, key)
    token = secrets.token_bytes(16)
    a = _dial(topo, me.cert, me.key, USER_UP, token)
    assert _wait(lambda: token in lst._users)
    b = _dial(topo, cert, key, USER_DOWN, token)  # eve claims party-3's session
    assert _wait(lambda: len(lst.rejections) == 1)
    assert "does not match the session's first link" in lst.rejections[-1]
    assert lst._users[token].down is None
    for s in (a, b):
        s.close()


def test_a_server_certificate_cannot_open_a_user_link(server):
    topo, lst = server
    p1 = topo.party(1)
    _dial(topo, p1.cert, p1.key, USER_UP, secrets.token_bytes(16))
    assert _wait(lambda: len(lst.rejections) == 1)
    assert "needs a certificate with role 'user'" in lst.rejections[-1]


def test_the_health_probe_returns_the_listeners_status(server):
    topo, lst = server
    lst.status = lambda: {"state": "serving", "active_users": 0}
    me = topo.party(3)
    assert probe_health(topo, me.cert, me.key, 0) == {"state": "serving", "active_users": 0}
    lst.status = lambda: {"blob": "x" * 2_000_000}  # a lying or broken server: bounded
    with pytest.raises(SecinferNetError, match="health answer over"):
        probe_health(topo, me.cert, me.key, 0)


def test_a_closing_transport_frees_no_socket_while_its_reader_can_still_read_it(server,
                                                                               monkeypatch):
    """A reader inside OpenSSL reads by fd number: a link closed under it lets a socket opened
    meanwhile by any thread reuse that number and lose its first bytes to the old reader (seen
    in CI as another user's TLS handshake failing with UNEXPECTED_MESSAGE)."""
    topo, lst = server
    me = topo.party(3)
    token = secrets.token_bytes(16)
    links = [_dial(topo, me.cert, me.key, k, token) for k in (USER_UP, USER_DOWN)]
    arrival = lst.take_user(token, time.monotonic() + 5)
    assert arrival is not None
    transport = server_side(topo, 0, arrival)
    time.sleep(0.2)  # the reader is waiting inside its read
    assert all(t.is_alive() for t in transport._readers)
    live_at_close: list[bool] = []
    real_close = ssl.SSLSocket.close

    def close(sock):
        live_at_close.append(any(t.is_alive() for t in transport._readers))
        real_close(sock)

    monkeypatch.setattr(ssl.SSLSocket, "close", close)
    transport.close()
    monkeypatch.undo()
    assert live_at_close == [False, False]  # both links closed, each after the reader ended
    for s in links:
        s.close()
