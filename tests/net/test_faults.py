"""The fault injector (secinfer.net.faults): each corruption does what it says, and only once."""

from __future__ import annotations

import pytest
import torch

from secinfer.net import run_in_memory
from secinfer.net.faults import CORRUPTIONS, Fault, FaultySession, corrupt

SEED = bytes(range(16))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.uint8])
def test_flip_bit_changes_exactly_one_bit(dtype: torch.dtype) -> None:
    x = torch.arange(40, dtype=torch.int64).to(dtype).reshape(5, 8)
    y = corrupt(x, "flip_bit", SEED)
    assert y is not None and y.dtype == dtype and y.shape == x.shape
    diff = (x.reshape(-1).view(torch.uint8) ^ y.reshape(-1).view(torch.uint8))
    assert sum(bin(int(b)).count("1") for b in diff) == 1
    # not in place
    assert torch.equal(x, torch.arange(40, dtype=torch.int64).to(dtype).reshape(5, 8))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_add_const_adds_one_nonzero_constant_everywhere(dtype: torch.dtype) -> None:
    x = torch.arange(12, dtype=torch.int64).to(dtype)
    y = corrupt(x, "add_const", SEED)
    assert y is not None and y.dtype == dtype
    d = y.to(torch.int64) - x.to(torch.int64)
    bits = 8 * x.element_size()
    d = d % (1 << bits) if bits < 64 else d
    assert (d == d[0]).all() and int(d[0]) != 0


def test_random_replay_drop_and_determinism() -> None:
    x = torch.arange(1000, dtype=torch.int64)
    r1, r2 = corrupt(x, "random", SEED), corrupt(x, "random", SEED)
    assert r1 is not None and torch.equal(r1, r2) and not torch.equal(r1, x)
    assert (r1 == x).float().mean() < 0.01
    prev = torch.full((3,), 7, dtype=torch.int64)
    rep = corrupt(x, "replay", SEED, prev)
    assert rep is not None and torch.equal(rep, prev)
    assert corrupt(x, "drop", SEED) is None
    with pytest.raises(ValueError, match="unknown corruption 'swap'"):
        Fault("beaver.open", 0, "swap")
    with pytest.raises(ValueError, match="occurrence"):
        Fault("beaver.open", -1, "drop")
    assert set(CORRUPTIONS) == {"flip_bit", "add_const", "random", "replay", "drop"}


def _prog(s, fault):
    if s.party_id == 0:
        f = FaultySession(s, fault)
        for i in range(3):
            f.send(1, torch.full((4,), i, dtype=torch.int64), "a")
        f.send(1, torch.full((2,), 9, dtype=torch.int64), "b")
        f.send(1, torch.full((4,), 5, dtype=torch.int64), "a")
        return dict(f.counts), dict(f.sizes), f.fired
    if fault is not None and fault.corruption == "drop":
        return [s.recv(0) for _ in range(4)]
    return [s.recv(0) for _ in range(5)]


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_faulty_session_hits_only_the_named_message(corruption: str) -> None:
    fault = Fault("a", 1, corruption, SEED)
    (counts, sizes, fired), got = run_in_memory(2, _prog, fault)
    assert counts == {"a": 4, "b": 1} and sizes == {"a": 128, "b": 16}
    assert fired == f"{corruption} on a #1 to party 1"
    honest = [torch.full((4,), i, dtype=torch.int64) for i in range(3)] + [
        torch.full((2,), 9, dtype=torch.int64), torch.full((4,), 5, dtype=torch.int64)]
    if corruption == "drop":
        assert all(torch.equal(a, b) for a, b in zip(got, honest[:1] + honest[2:], strict=True))
        return
    changed = [i for i, (a, b) in enumerate(zip(got, honest, strict=True))
               if a.shape != b.shape or not torch.equal(a, b)]
    assert changed == [1]
    if corruption == "replay":
        assert torch.equal(got[1], honest[0])


def test_no_fault_only_counts() -> None:
    (counts, _, fired), got = run_in_memory(2, _prog, None)
    assert fired is None and counts == {"a": 4, "b": 1}
    assert torch.equal(got[3], torch.full((2,), 9, dtype=torch.int64))


def _shape_prog(s):
    if s.party_id == 1:
        s.send(0, torch.zeros(3, dtype=torch.int64), "x.open")
        s.send(0, torch.zeros(4, dtype=torch.int32), "x.open")
        return None
    with pytest.raises(Exception) as first:
        s.recv(1, tag="x.open", expect=((4,), torch.int64))
    with pytest.raises(Exception) as second:
        s.recv(1, tag="x.open", expect=((4,), torch.int64))
    return first.value, second.value


def test_a_message_of_the_wrong_shape_or_dtype_names_peer_tag_and_shapes() -> None:
    from secinfer.errors import NetworkError
    from secinfer.net.errors import MessageError

    first, second = run_in_memory(2, _shape_prog)[0]
    for err in (first, second):
        assert isinstance(err, MessageError) and isinstance(err, NetworkError)
    assert str(first) == ("party 1 sent a message of shape (3,) int64 where the protocol "
                          "expects x.open of shape (4,) int64")
    assert "(4,) int32" in str(second)
