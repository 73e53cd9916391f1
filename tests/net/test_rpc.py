"""The one request/reply protocol (net/rpc.py): known-answer headers, refusals that reach the
user and leave the session serving, and negative tests for every malformed header or reply."""

from __future__ import annotations

import pytest
import torch

from secinfer.errors import ProtocolError
from secinfer.net import RequestRefused, rpc, run_in_memory
from secinfer.net.client import ServiceClient

OP_DOUBLE, OP_FAIL = 7, 8


def _server(session, n_requests):
    """Doubles its one tensor; refuses OP_FAIL naming it; ends on BYE."""
    seen = []
    while True:
        req = rpc.recv_request(session, 1)
        seen.append((req.id, req.op))
        if req.op == rpc.BYE:
            rpc.reply(session, 1, req.id, [])
            return seen
        if req.op == OP_FAIL:
            rpc.refuse(session, 1, req.id, "op 8 is refused: here is why (ünïcode kept)")
            continue
        rpc.reply(session, 1, req.id, [req.tensors[0] * 2, torch.tensor([len(req.tensors)])])


def test_calls_refusals_and_bye_over_one_session():
    def user(session):
        c = ServiceClient.over(session, (0,))

        def call(op, tensors, name=None):
            return c.request(op, {0: tensors}, (0,), name=name)[0]

        x = torch.arange(6, dtype=torch.float64).reshape(2, 3)
        out, n = call(OP_DOUBLE, [x, torch.zeros(1)])
        assert torch.equal(out, x * 2) and int(n) == 2
        with pytest.raises(RequestRefused, match="refused 'fail': op 8 is refused") as e:
            call(OP_FAIL, [], name="fail")
        assert e.value.reason == "op 8 is refused: here is why (ünïcode kept)"
        out2, _ = call(OP_DOUBLE, [torch.ones(4)])  # the session goes on after a refusal
        assert torch.equal(out2, torch.full((4,), 2.0))
        assert call(rpc.BYE, []) == []

    seen, _ = run_in_memory(2, lambda s: _server(s, 4) if s.party_id == 0 else user(s))
    assert seen == [(1, OP_DOUBLE), (2, OP_FAIL), (3, OP_DOUBLE), (4, rpc.BYE)]


def test_header_layout_is_fixed():
    """Known answer: the request and reply headers on the wire."""
    got = {}

    def server(session):
        got["request"] = session.recv(1)
        got["payload"] = session.recv(1)
        rpc.reply(session, 1, 41, [torch.tensor([1.5])])

    def user(session):
        return rpc.call(session, 0, 41, 9, [torch.tensor([3])])

    _, (out,) = run_in_memory(2, lambda s: server(s) if s.party_id == 0 else user(s))
    assert got["request"].tolist() == [0x53495251, 1, 41, 9, 1]
    assert got["payload"].tolist() == [3] and out.tolist() == [1.5]


@pytest.mark.parametrize("header, match", [
    (torch.tensor([1, 2, 3]), r"expected int64 \[5\]"),
    (torch.tensor([1.0, 1, 1, 1, 0]), r"expected int64 \[5\]"),
    (torch.tensor([0x12345678, 1, 1, 1, 0]), "not a secinfer request"),
    (torch.tensor([0x53495251, 2, 1, 1, 0]), "version 2"),
    (torch.tensor([0x53495251, 1, 1, 1, 17]), "announces 17 tensors"),
    (torch.tensor([0x53495251, 1, 1, 1, -1]), "announces -1 tensors"),
])
def test_a_malformed_request_header_is_named(header, match):
    def server(session):
        with pytest.raises(ProtocolError, match=match):
            rpc.recv_request(session, 1)
        return True

    def user(session):
        session.send(0, header)

    assert run_in_memory(2, lambda s: server(s) if s.party_id == 0 else user(s))[0]


@pytest.mark.parametrize("reply, match", [
    ([torch.tensor([0x53495250, 6, rpc.OK, 0])], "answered request 6, not request 5"),
    ([torch.tensor([0x53495251, 5, rpc.OK, 0])], "something other than a reply"),
    ([torch.tensor([0x53495250, 5, 7, 0])], "malformed reply"),
    ([torch.tensor([0x53495250, 5, rpc.REFUSED, 2])], "malformed reply"),
    ([torch.tensor([0x53495250, 5, rpc.OK, 99])], "malformed reply"),
    ([torch.tensor([5, rpc.OK, 0])], r"expected int64 \[4\]"),
])
def test_a_lying_server_reply_is_an_error_not_a_result(reply, match):
    def server(session):
        rpc.recv_request(session, 1)
        for t in reply:
            session.send(1, t)

    def user(session):
        with pytest.raises(ProtocolError, match=match):
            rpc.call(session, 0, 5, 1, [])
        return True

    assert run_in_memory(2, lambda s: server(s) if s.party_id == 0 else user(s))[1]


def test_too_many_tensors_are_refused_before_sending():
    def user(session):
        with pytest.raises(ValueError, match="at most 16"):
            rpc.call(session, 0, 1, 1, [torch.zeros(1)] * 17)
        with pytest.raises(ValueError, match="at most 16"):
            rpc.reply(session, 0, 1, [torch.zeros(1)] * 17)
        return True

    assert run_in_memory(2, lambda s: True if s.party_id == 0 else user(s))[1]
