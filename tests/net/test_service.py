"""The one serve loop with a toy backend over real TLS user links: a request slower than the
session timeout does not make its session idle, a refusal keeps the session, ``bye`` is
answered, a handler's Fatal reaches the user and the caller, and stopping tells every user
why. (The backends' own tests run the same loop: MPC in lock-step, the cloud, the enclave.)"""

from __future__ import annotations

import secrets
import threading
import time

import pytest
import torch

from secinfer.net import PeerAborted, Session, local_cluster, rpc
from secinfer.net.client import ServiceClient
from secinfer.net.errors import RequestRefused
from secinfer.net.listener import Listener
from secinfer.net.service import Fatal, OneByOne, ServeLoop
from secinfer.net.userlink import dial_user, user_credentials

pytestmark = [pytest.mark.network]

TIMEOUT = 1.0  # the session timeout: a session idle longer than this is dropped


class _Doubler(OneByOne):
    what = "the doubler"

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def handle_one(self, user, request):
        if request.op == 7:
            raise RequestRefused("op 7 is not served here")
        if request.op == 9:
            raise Fatal("the doubler lost its state", RuntimeError("state lost"))
        time.sleep(self.delay)
        return [request.tensors[0] * 2]


class _User:
    def __init__(self, session):
        self.c = ServiceClient.over(session, (0,))

    def call(self, op, tensors):
        return self.c.request(op, {0: tensors}, (0,))[0]


def _until(cond, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _serve(loop: ServeLoop, stop: threading.Event, errors: list[BaseException]):
    def run():
        while not stop.is_set():
            try:
                loop.run(stop)
            except RuntimeError as e:  # the Fatal's cause: "repair", then serve on
                errors.append(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_the_loop_serves_refuses_survives_fatal_and_says_why_it_stops(tmp_path):
    with local_cluster(roles=["cloud", "user"], workdir=tmp_path, timeout=TIMEOUT,
                       connect_timeout=5.0) as cluster:
        topo = cluster.topology
        listener = Listener(topo, topo.party(0))
        log: list[str] = []
        loop = ServeLoop(topo, 0, listener, _Doubler(delay=1.6 * TIMEOUT), log_line=log.append)
        stop = threading.Event()
        errors: list[BaseException] = []
        t = _serve(loop, stop, errors)
        cert, key = user_credentials(topo)
        try:
            links = dial_user(topo, cert, key, secrets.token_bytes(16), servers=(0,))
            with Session(links, timeout=10.0, role="user") as s:
                user = _User(s)
                x = torch.arange(4.0)
                # slower than the session timeout, then the next request at once: served
                assert torch.equal(user.call(1, [x])[0], 2 * x)
                assert torch.equal(user.call(1, [x + 1])[0], 2 * (x + 1))
                with pytest.raises(RequestRefused, match="op 7 is not served here"):
                    user.call(7, [x])
                assert torch.equal(user.call(1, [x])[0], 2 * x)  # the session goes on
                assert user.call(rpc.BYE, []) == []
            _until(lambda: loop.ended == 1)
            assert not loop.users

            links = dial_user(topo, cert, key, secrets.token_bytes(16), servers=(0,))
            with Session(links, timeout=10.0, role="user") as s, \
                    pytest.raises(RequestRefused, match="lost its state"):
                _User(s).call(9, [x])
            _until(lambda: bool(errors))
            assert [str(e) for e in errors] == ["state lost"]  # raised to the caller

            links = dial_user(topo, cert, key, secrets.token_bytes(16), servers=(0,))
            with Session(links, timeout=10.0, role="user") as s:
                user = _User(s)
                assert torch.equal(user.call(1, [x])[0], 2 * x)  # served after the repair
                stop.set()
                with pytest.raises(PeerAborted, match="the doubler is shutting down"):
                    s.recv(0, timeout=5.0)
        finally:
            stop.set()
            t.join(timeout=10)
            listener.close()
    assert not t.is_alive()
    assert any("session ended after 3 requests" in line for line in log), log
