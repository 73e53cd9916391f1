import struct

import pytest
import torch

from secinfer.net import framing
from secinfer.net.errors import FrameError
from secinfer.net.programs import sample_tensors

SESSION = bytes(range(16))


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.numel() == 0:
        return True
    if a.dtype.is_floating_point or a.dtype.is_complex:
        return bool(torch.equal(torch.view_as_real(a) if a.is_complex() else a.nan_to_num(7.0),
                                torch.view_as_real(b) if b.is_complex() else b.nan_to_num(7.0)))
    if a.dtype in (torch.uint16, torch.uint32, torch.uint64):
        return bool(torch.equal(a.to(torch.int64), b.to(torch.int64)))
    return bool(torch.equal(a, b))


def test_every_dtype_roundtrips_through_one_byte_chunks():
    samples = list(sample_tensors().values())
    stream = b"".join(framing.frame_bytes(t, SESSION, i) for i, t in enumerate(samples))
    dec = framing.FrameDecoder(SESSION)
    out = []
    for i in range(len(stream)):
        out += dec.feed(stream[i : i + 1])
    assert dec.pending == 0
    assert len(out) == len(samples)
    for a, b in zip(samples, out, strict=True):
        assert _equal(a, b), (a.dtype, a.shape)


@pytest.mark.parametrize("split", [1, 2, 7, 37, 38, 39, 4096])
def test_split_at_any_boundary(split):
    t = torch.randn(17, 3, dtype=torch.float64)
    stream = framing.frame_bytes(t, SESSION, 0) + framing.frame_bytes(t * 2, SESSION, 1)
    dec = framing.FrameDecoder(SESSION)
    for i in range(0, len(stream), split):
        dec.feed(stream[i : i + split])
    assert torch.equal(dec.frames[0], t) and torch.equal(dec.frames[1], t * 2)


def test_header_size_is_documented():
    t = torch.zeros(2, 3, 4, dtype=torch.int64)
    assert len(framing.frame_bytes(t, SESSION, 0)) == 38 + 8 * 3 + 2 * 3 * 4 * 8
    assert framing.header_size(0) == 38


def test_wrong_session_rejected():
    stream = framing.frame_bytes(torch.ones(3), bytes(16), 0)
    with pytest.raises(FrameError, match="session"):
        framing.FrameDecoder(SESSION).feed(stream)


def test_replayed_counter_rejected():
    f0 = framing.frame_bytes(torch.ones(3), SESSION, 0)
    dec = framing.FrameDecoder(SESSION)
    dec.feed(f0)
    with pytest.raises(FrameError, match="op counter 0, expected 1"):
        dec.feed(f0)


def test_bad_magic_rejected():
    stream = bytearray(framing.frame_bytes(torch.ones(3), SESSION, 0))
    stream[:4] = b"HTTP"
    with pytest.raises(FrameError, match="magic"):
        framing.FrameDecoder(SESSION).feed(bytes(stream))


def test_oversized_header_rejected():
    stream = bytearray(framing.frame_bytes(torch.ones(3), SESSION, 0))
    stream[5] = 200  # ndim
    with pytest.raises(FrameError, match="oversized header"):
        framing.FrameDecoder(SESSION).feed(bytes(stream))


def test_length_mismatch_rejected():
    stream = bytearray(framing.frame_bytes(torch.ones(3), SESSION, 0))
    struct.pack_into("<Q", stream, 30, 999)
    with pytest.raises(FrameError, match="does not match"):
        framing.FrameDecoder(SESSION).feed(bytes(stream))


def test_payload_limit_enforced():
    stream = framing.frame_bytes(torch.ones(1000), SESSION, 0)
    with pytest.raises(FrameError,
                       match="4000 bytes exceeds the frame limit max_frame_bytes = 100"):
        framing.FrameDecoder(SESSION, max_payload=100).feed(stream)


def test_truncated_frame_left_pending():
    stream = framing.frame_bytes(torch.ones(10), SESSION, 0)
    dec = framing.FrameDecoder(SESSION)
    assert dec.feed(stream[:-1]) == []
    assert dec.pending == len(stream) - 1


def test_unsupported_dtype_rejected():
    with pytest.raises(FrameError, match="not supported"):
        framing.encode_header(framing.FrameHeader(torch.float8_e4m3fn, (1,), SESSION, 0, 1))
