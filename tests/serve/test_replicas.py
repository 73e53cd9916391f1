"""Dispatch over several server sets: round-robin, failover on busy or unreachable sets only."""

from __future__ import annotations

import pytest

from secinfer.net import PeerTimeout, RequestRefused
from secinfer.serve.replicas import AllSetsFailed, RoundRobin, ServerSet


def _sets(n):
    return [ServerSet(f"set{i}", None) for i in range(n)]  # type: ignore[arg-type]


def test_round_robin_spreads_requests_over_the_sets():
    rr = RoundRobin(_sets(3))
    assert [rr.call(lambda s: s.name) for _ in range(6)] == ["set0", "set1", "set2"] * 2


def test_a_busy_or_unreachable_set_passes_the_request_on():
    rr = RoundRobin(_sets(3))

    def fn(s):
        if s.name == "set0":
            raise RequestRefused("party 0 refused the session: busy: the servers serve at most 2")
        if s.name == "set1":
            raise PeerTimeout("party 1 (server, 127.0.0.1:1)", 2.0, "did not admit this session")
        return s.name

    assert rr.call(fn) == "set2"


def test_a_refusal_for_the_request_itself_is_not_retried_elsewhere():
    rr = RoundRobin(_sets(2))
    tried = []

    def fn(s):
        tried.append(s.name)
        raise RequestRefused("query quota exceeded: user user-a has 0 of its quota of 5")

    with pytest.raises(RequestRefused, match="quota"):
        rr.call(fn)
    assert tried == ["set0"]


def test_when_every_set_fails_the_error_names_each_set_and_why():
    rr = RoundRobin(_sets(2))

    def fn(s):
        raise ConnectionRefusedError(f"{s.name} is down")

    with pytest.raises(AllSetsFailed, match="set0: set0 is down; set1: set1 is down"):
        rr.call(fn)


def test_set_names_must_differ_and_the_list_must_not_be_empty():
    with pytest.raises(ValueError, match="at least one"):
        RoundRobin([])
    with pytest.raises(ValueError, match="must differ"):
        RoundRobin([ServerSet("a", None), ServerSet("a", None)])  # type: ignore[arg-type]
