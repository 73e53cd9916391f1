"""Output policy, query quota and batch limit through real servers and a user over mutual TLS.

The three servers run as threads of this process (cheap), each with its own listener and TLS
links, exactly the code ``secinfer serve`` runs.
"""

from __future__ import annotations

import threading

import pytest
import torch

from secinfer.data import fashion_mnist
from secinfer.errors import ConfigError
from secinfer.models import zoo
from secinfer.models.bundle import OutputPolicy, compile_model
from secinfer.net import (
    RequestRefused,
    SecinferNetError,
    Topology,
    framing,
    make_certs,
    rpc,
    write_local_topology,
)
from secinfer.net.accounting import CostAccountant
from secinfer.serve.client import Client
from secinfer.serve.handler import OP_INFER
from secinfer.serve.server import serve

pytestmark = pytest.mark.network


class _Servers:
    def __init__(self, tmp_path, policy, sessions, max_batch=4, server_policies=None,
                 serve_max_batch=None, input_range=None):
        self.model = zoo.pretrained("fmnist_cnn")
        self.dirs = compile_model(self.model, (1, 28, 28), tmp_path / "b", output_policy=policy,
                                  input_range=input_range)
        self.topo = Topology.load(write_local_topology(
            tmp_path, ["server", "server", "helper", "user"], timeout=20, connect_timeout=10,
            limits={"max_batch": max_batch}))
        make_certs(self.topo, overwrite=True)
        self.errors: dict[int, BaseException] = {}
        self.serve_max_batch = serve_max_batch
        self.threads = [threading.Thread(target=self._run, daemon=True,
                                         args=(i, sessions, (server_policies or {}).get(i)))
                        for i in range(3)]
        for t in self.threads:
            t.start()

    def _run(self, i, sessions, policy):
        try:
            serve(self.topo, i, self.dirs[i], max_clients=sessions, policy=policy,
                  max_batch=self.serve_max_batch)
        except BaseException as e:  # noqa: BLE001 - inspected by the test
            self.errors[i] = e

    def join(self):
        for t in self.threads:
            t.join(60)
        assert not any(t.is_alive() for t in self.threads)


def _confident(model, x, margin=0.1):
    with torch.no_grad():
        logits = model(x).double()
    top2 = logits.topk(2, dim=1).values
    return logits, (top2[:, 0] - top2[:, 1]) > margin

def _assert_right_and_servers_fine(srv: _Servers, labels, logits, sure) -> None:
    """The (confident) labels equal plaintext, and every server ended without an error."""
    assert torch.equal(labels[sure], logits.argmax(1)[sure])
    srv.join()
    assert not srv.errors, srv.errors


def test_label_mode_reveals_only_the_label_and_the_quota_is_enforced(tmp_path):
    srv = _Servers(tmp_path, OutputPolicy("label", quota=5), sessions=3)
    x, _ = fashion_mnist.load("test", limit=8)
    logits, sure = _confident(srv.model, x)
    with Client(srv.topo, record_view=True) as c:
        assert c.policy.mode == "label" and c.queries_left == 5 and c.max_batch == 4
        labels = c.predict(x[:3])
        with pytest.raises(RequestRefused, match="query quota exceeded: user party-3 has 2 of its "
                                                 "quota of 5 queries left and asked for 3"):
            c.predict(x[3:6])
        view = list(c.view)
    assert labels.dtype == torch.int64 and labels.shape == (3,)
    assert torch.equal(labels[sure[:3]], logits[:3].argmax(1)[sure[:3]]) and bool(sure[:3].any())
    # the user's whole view: meta, policy, input range and the input shapes (entries) from
    # P0, then from P0 and from P1 a reply header [4] and one [3] share; nothing with a
    # logit's shape, and 8 bytes per input from each: only the label
    assert [(s, tuple(t.shape)) for s, t in view] == [(0, (4,)), (0, (5,)), (0, (2,)),
                                                     (0, (5,)), (0, (4,)), (0, (3,)),
                                                     (1, (4,)), (1, (3,))]
    assert view[3][1].tolist() == [1, 3, 1, 28, 28]  # one program, input [1, 28, 28]
    assert view[4][1].tolist()[1:] == view[6][1].tolist()[1:] == [1, rpc.OK, 1]  # request 1
    s0, s1 = view[5][1], view[7][1]
    assert s0.dtype == s1.dtype == torch.int64
    assert torch.equal(s0 + s1, labels)
    assert bool((s0.abs() > 2**40).all()) and bool((s1.abs() > 2**40).all())  # each uniform

    # over the limit: refused before the quota is even looked at
    with Client(srv.topo) as c, pytest.raises(RequestRefused,
                                              match="batch of 5 exceeds the limit max_batch = 4"):
        c.predict(torch.zeros(5, 1, 28, 28))
    # the count belongs to the identity, across sessions: 2 queries left, then none
    with Client(srv.topo) as c:
        assert c.queries_left == 2
        more = c.predict(x[3:5])
        assert torch.equal(more[sure[3:5]], logits[3:5].argmax(1)[sure[3:5]])
        with pytest.raises(RequestRefused, match="has 0 of its quota of 5 queries left"):
            c.predict(x[5:6])
    srv.join()
    assert not srv.errors, srv.errors


def test_logits_mode_is_unchanged_and_topk_gives_indices(tmp_path):
    srv = _Servers(tmp_path / "l", OutputPolicy(), sessions=1)
    x, _ = fashion_mnist.load("test", limit=4)
    logits, sure = _confident(srv.model, x)
    with Client(srv.topo, record_view=True) as c:
        assert c.policy.mode == "logits" and c.queries_left is None
        out = c.predict(x)
    assert out.dtype == torch.float64 and out.shape == (4, 10)
    assert (out - logits).abs().max().item() < 0.05
    # each reply: the request/reply header, then the output share
    assert [tuple(t.shape) for _, t in c.view[4:]] == [(4,), (4, 10), (4,), (4, 10)]
    srv.join()
    assert not srv.errors, srv.errors

    srv = _Servers(tmp_path / "k", OutputPolicy("topk", 2), sessions=1)
    with Client(srv.topo, record_view=True) as c:
        top = c.predict(x)
    assert top.shape == (4, 2) and torch.equal(top[:, 0][sure], logits.argmax(1)[sure])
    assert [tuple(t.shape) for _, t in c.view[4:]] == [(4,), (4, 2), (4,), (4, 2)]
    srv.join()
    assert not srv.errors, srv.errors


def test_servers_with_different_policies_refuse_to_start(tmp_path):
    srv = _Servers(tmp_path, OutputPolicy("label"), sessions=1,
                   server_policies={2: OutputPolicy("logits")})
    srv.join()
    assert set(srv.errors) == {0, 1, 2}
    for e in srv.errors.values():
        assert isinstance(e, SecinferNetError | ConfigError)
        assert "output policy / limits" in str(e) or "aborted" in str(e)


def test_an_oversize_share_frame_is_refused_naming_the_limit_and_servers_keep_serving(tmp_path):
    # serve config max_batch = 2 overrides the topology's 4: user frames are sized for 2 inputs
    srv = _Servers(tmp_path, OutputPolicy("label"), sessions=2, serve_max_batch=2)
    x, _ = fashion_mnist.load("test", limit=2)
    with Client(srv.topo) as c:
        assert c.max_batch == 2
        header = torch.tensor([2, 1, 28, 28], dtype=torch.int64)
        for sid in (0, 1, 2):
            c.session.send(sid, rpc.request_header(1, OP_INFER, 1 if sid == 2 else 2))
            c.session.send(sid, header)
        c.session.send(0, torch.zeros(9, 1, 28, 28, dtype=torch.int64))  # 56448 bytes
        c.session.send(1, torch.zeros(2, 1, 28, 28, dtype=torch.int64))
        with pytest.raises(SecinferNetError, match="56448 bytes exceeds the frame limit "
                                                   f"max_frame_bytes = {2 * 784 * 8}"):
            c.session.recv(0, timeout=30)
    with Client(srv.topo) as c:  # the servers are still in step
        assert c.predict(x).shape == (2,)
    srv.join()
    assert not srv.errors, srv.errors


def _bytes_sent(c: Client) -> int:
    assert c.session is not None
    return int(c.session.report().get(CostAccountant.TOTAL, {}).get("bytes_sent", 0))  # type: ignore[call-overload]


@pytest.mark.parametrize("bad, error", [
    (torch.full((2, 1, 28, 28), float("nan")), "NaN or infinite"),
    (torch.full((1, 1, 28, 28), float("inf")), "NaN or infinite"),
    (torch.full((1, 1, 28, 28), 1e16), "exceeds the fixed-point range"),
    (torch.zeros(0, 1, 28, 28), "empty batch"),
    (torch.zeros(1, 28, 28), "the model takes"),
    (torch.zeros(1, 1, 28, 28, dtype=torch.bool), "real numbers"),
])
def test_a_bad_input_is_refused_before_anything_is_sent_and_the_session_goes_on(
        tmp_path, bad, error):
    srv = _Servers(tmp_path, OutputPolicy("label"), sessions=1)
    x, _ = fashion_mnist.load("test", limit=2)
    logits, sure = _confident(srv.model, x)
    with Client(srv.topo) as c:
        sent_before = _bytes_sent(c)
        with pytest.raises((ValueError, TypeError), match=error):
            c.predict(bad)
        assert _bytes_sent(c) == sent_before
        labels = c.predict(x)  # the same session, still in step with the servers
    _assert_right_and_servers_fine(srv, labels, logits, sure)


def _raw_to_p0(c: Client, data: bytes) -> None:
    """Write bytes on the user's TLS link to P0 below the framing layer (a hostile client)."""
    sock = c.session.transport._out[0]  # type: ignore[attr-defined]
    sock.sendall(data)


def _garbage(c: Client) -> bytes:
    return bytes(range(256)) * 4


def _ndim_17(c: Client) -> bytes:
    s = c.session.transport  # type: ignore[attr-defined]
    h = framing.FrameHeader(torch.int64, (4,), s.session_id, s._send_counter[0], 32)
    raw = bytearray(framing.encode_header(h))
    raw[5] = 17
    return bytes(raw)


def _truncated(c: Client) -> bytes:
    s = c.session.transport  # type: ignore[attr-defined]
    h = framing.FrameHeader(torch.int64, (4, 1, 28, 28), s.session_id, s._send_counter[0],
                            4 * 784 * 8)
    return framing.encode_header(h) + b"\0" * 100  # then the user hangs up


def _wrong_request_shape(c: Client) -> bytes:
    s = c.session.transport  # type: ignore[attr-defined]
    t = torch.tensor([2, 3], dtype=torch.int64)  # a request header [batch, *shape] of rank 1
    h = framing.FrameHeader(t.dtype, tuple(t.shape), s.session_id, s._send_counter[0], 16)
    return framing.encode_header(h) + t.numpy().tobytes()


@pytest.mark.parametrize("attack", [_garbage, _ndim_17, _truncated, _wrong_request_shape])
def test_a_malformed_frame_from_a_user_ends_only_that_session(tmp_path, attack):
    srv = _Servers(tmp_path, OutputPolicy("label"), sessions=2)
    x, _ = fashion_mnist.load("test", limit=2)
    logits, sure = _confident(srv.model, x)
    c = Client(srv.topo)
    c.connect()
    try:
        _raw_to_p0(c, attack(c))
    finally:
        c.close()
    with Client(srv.topo) as c2:  # the next user is served
        labels = c2.predict(x)
    _assert_right_and_servers_fine(srv, labels, logits, sure)


def test_inputs_outside_the_owners_range_are_refused_before_sending(tmp_path):
    lo, hi = fashion_mnist.INPUT_RANGE
    srv = _Servers(tmp_path, OutputPolicy("label"), sessions=1, input_range=(lo, hi))
    x, _ = fashion_mnist.load("test", limit=2)
    logits, sure = _confident(srv.model, x)
    with Client(srv.topo) as c:
        assert c.input_range == pytest.approx((lo, hi))
        before = _bytes_sent(c)
        for bad in (x * 1e9, x.clone().index_put_((torch.tensor([0]),), torch.tensor(1e12))):
            with pytest.raises(ValueError, match="leave the model's valid range"):
                c.predict(bad)
        assert _bytes_sent(c) == before
        labels = c.predict(x)  # the data set's own images are inside it
    _assert_right_and_servers_fine(srv, labels, logits, sure)


def test_a_user_that_dies_mid_request_ends_only_its_session(tmp_path):
    srv = _Servers(tmp_path, OutputPolicy("label"), sessions=2)
    x, _ = fashion_mnist.load("test", limit=2)
    logits, sure = _confident(srv.model, x)
    c = Client(srv.topo)
    c.connect()
    header = torch.tensor([2, 1, 28, 28], dtype=torch.int64)
    for sid in (0, 1, 2):
        c.session.send(sid, rpc.request_header(1, OP_INFER, 1 if sid == 2 else 2))
        c.session.send(sid, header)
    c.session.send(0, torch.zeros(2, 1, 28, 28, dtype=torch.int64))  # P1 gets nothing
    # killed: every link dropped, no goodbye frame
    assert c.session is not None
    c.session.transport.close()  # type: ignore[attr-defined]
    with Client(srv.topo) as c2:
        labels = c2.predict(x)
    _assert_right_and_servers_fine(srv, labels, logits, sure)


def test_twelve_back_to_back_user_sessions_are_all_served(tmp_path):
    srv = _Servers(tmp_path, OutputPolicy("label"), sessions=12)
    x, _ = fashion_mnist.load("test", limit=12)
    logits, sure = _confident(srv.model, x)
    got = []
    for i in range(12):
        with Client(srv.topo) as c:  # no pause between sessions
            got.append(c.predict(x[i : i + 1]))
    labels = torch.cat(got)
    _assert_right_and_servers_fine(srv, labels, logits, sure)
