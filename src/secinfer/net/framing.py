"""Wire format of one tensor frame, and an incremental decoder.

Every message between two parties is one frame (little-endian)::

    offset size  field
    0      4     magic  b"SIF1"
    4      1     dtype code (see ``DTYPE_CODES``)
    5      1     ndim (0..16)
    6      16    session id (agreed at connect time, fresh per session)
    22     8     op counter (u64, per directed link, starts at 0, +1 per frame)
    30     8     payload length in bytes (u64)
    38     8*ndim shape (i64 each)
    ...    n     payload: the tensor's raw bytes, C order

dtype code 0 marks a control frame: an abort whose uint8 payload is a UTF-8 reason, sent by a
party that gives up so that its peers fail with the root cause instead of a bare disconnect.

So a frame costs ``HEADER_FIXED + 8 * ndim`` header bytes plus the payload. Nothing is pickled:
the receiver allocates an empty tensor of the announced dtype and shape and reads the payload
straight into it. A frame whose payload length disagrees with dtype and shape, whose ndim or
length exceeds the limits, whose magic is wrong, or whose session or counter is not the one
expected is rejected with :class:`FrameError`.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import torch

from .errors import FrameError

__all__ = [
    "MAGIC",
    "HEADER_FIXED",
    "MAX_NDIM",
    "DEFAULT_MAX_PAYLOAD",
    "DTYPE_CODES",
    "FrameHeader",
    "encode_header",
    "decode_header",
    "header_size",
    "tensor_payload",
    "frame_bytes",
    "FrameDecoder",
    "CONTROL_CODE",
    "abort_frame",
]

MAGIC = b"SIF1"
_FIXED = struct.Struct("<4sBB16sQQ")
HEADER_FIXED = _FIXED.size  # 38
MAX_NDIM = 16
# 4 GiB: the bound for party programs when the topology sets no [limits] max_frame_bytes;
# `secinfer serve` sizes its links from the plan instead (see secinfer.serve.limits)
DEFAULT_MAX_PAYLOAD = 1 << 32

DTYPE_CODES: dict[torch.dtype, int] = {
    torch.bool: 1,
    torch.uint8: 2,
    torch.int8: 3,
    torch.int16: 4,
    torch.int32: 5,
    torch.int64: 6,
    torch.float16: 7,
    torch.bfloat16: 8,
    torch.float32: 9,
    torch.float64: 10,
    torch.complex64: 11,
    torch.complex128: 12,
    torch.uint16: 13,
    torch.uint32: 14,
    torch.uint64: 15,
}
_CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}
CONTROL_CODE = 0


def abort_frame(session: bytes, counter: int, reason: str) -> bytes:
    """A control frame telling the peer that this party gives up, and why."""
    text = reason.encode("utf-8", "replace")[:4096]
    h = FrameHeader(torch.uint8, (len(text),), session, counter, len(text), control=True)
    return encode_header(h) + text


@dataclass(frozen=True)
class FrameHeader:
    dtype: torch.dtype
    shape: tuple[int, ...]
    session: bytes
    counter: int
    nbytes: int
    control: bool = False


def header_size(ndim: int) -> int:
    return HEADER_FIXED + 8 * ndim


def encode_header(h: FrameHeader) -> bytes:
    if h.control:
        fixed = _FIXED.pack(MAGIC, CONTROL_CODE, 1, h.session, h.counter, h.nbytes)
        return fixed + struct.pack("<q", h.nbytes)
    if h.dtype not in DTYPE_CODES:
        raise FrameError(f"dtype {h.dtype} is not supported on the wire")
    if len(h.shape) > MAX_NDIM:
        raise FrameError(f"tensor has {len(h.shape)} dims; at most {MAX_NDIM} are supported")
    if len(h.session) != 16:
        raise FrameError("session id must be 16 bytes")
    fixed = _FIXED.pack(
        MAGIC, DTYPE_CODES[h.dtype], len(h.shape), h.session, h.counter, h.nbytes
    )
    return fixed + struct.pack(f"<{len(h.shape)}q", *h.shape)


def decode_header(
    fixed: bytes | memoryview, shape_bytes: bytes | memoryview, max_payload: int
) -> FrameHeader:
    magic, code, ndim, session, counter, nbytes = _FIXED.unpack(fixed)
    if magic != MAGIC:
        raise FrameError(
            f"bad frame magic {bytes(magic)!r} (expected {MAGIC!r}): not a secinfer peer?"
        )
    shape = struct.unpack(f"<{ndim}q", shape_bytes)
    return _validate(code, ndim, session, counter, nbytes, shape, max_payload)


def peek_ndim(fixed: bytes | bytearray | memoryview) -> int:
    magic = bytes(fixed[:4])
    if magic != MAGIC:
        raise FrameError(f"bad frame magic {magic!r} (expected {MAGIC!r}): not a secinfer peer?")
    ndim = fixed[5]
    if ndim > MAX_NDIM:
        raise FrameError(f"oversized header: ndim {ndim} > {MAX_NDIM}")
    return int(ndim)


def _validate(code, ndim, session, counter, nbytes, shape, max_payload) -> FrameHeader:
    if code == CONTROL_CODE:
        if ndim != 1 or shape[0] != nbytes or nbytes > 4096:
            raise FrameError("malformed control frame")
        return FrameHeader(torch.uint8, (int(nbytes),), bytes(session), int(counter),
                           int(nbytes), control=True)
    if code not in _CODE_DTYPES:
        raise FrameError(f"unknown dtype code {code} in frame header")
    dtype = _CODE_DTYPES[code]
    if any(d < 0 for d in shape):
        raise FrameError(f"negative dimension in frame shape {shape}")
    if nbytes > max_payload:
        raise FrameError(f"frame payload of {nbytes} bytes exceeds the frame limit "
                         f"max_frame_bytes = {max_payload}")
    itemsize = torch.empty((), dtype=dtype).element_size()
    expect = math.prod(shape) * itemsize
    if expect != nbytes:
        raise FrameError(
            f"frame payload length {nbytes} does not match dtype {dtype} and shape {shape} "
            f"({expect} bytes)"
        )
    return FrameHeader(dtype, tuple(int(d) for d in shape), bytes(session), int(counter), nbytes)


def tensor_payload(t: torch.Tensor) -> memoryview:
    """Zero-copy byte view of a contiguous CPU tensor (copies only if it is not contiguous)."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    if flat.dtype in (torch.uint16, torch.uint32, torch.uint64):
        flat = flat.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[flat.element_size()])
    raw = flat.view(torch.uint8) if flat.dtype != torch.bool else flat.view(torch.uint8)
    return raw.numpy().data.cast("B")


def frame_bytes(t: torch.Tensor, session: bytes, counter: int) -> bytes:
    """A whole frame as bytes (for small tensors and tests)."""
    payload = tensor_payload(t)
    h = FrameHeader(t.dtype, tuple(t.shape), session, counter, payload.nbytes)
    return encode_header(h) + bytes(payload)


def empty_for(h: FrameHeader) -> tuple[torch.Tensor, memoryview]:
    """Allocate the receiving tensor and a writable byte view into it."""
    buf = torch.empty(h.nbytes, dtype=torch.uint8)
    view = buf.numpy().data.cast("B") if h.nbytes else memoryview(bytearray())
    return buf, view


def finish(buf: torch.Tensor, h: FrameHeader) -> torch.Tensor:
    if h.nbytes == 0:
        return torch.empty(h.shape, dtype=h.dtype)
    target = h.dtype
    if target in (torch.uint16, torch.uint32, torch.uint64):
        signed = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}
        return buf.view(signed[target]).view(target).reshape(h.shape)
    return buf.view(target).reshape(h.shape)


class FrameDecoder:
    """Incremental decoder: feed it byte chunks of any size, collect tensors.

    It checks the session id and that op counters arrive in order starting at ``first_counter``.
    Used by tests to prove that framing survives a stream split at every byte boundary; the socket
    transport reads with ``recv_into`` along the same state machine.
    """

    def __init__(
        self, session: bytes, first_counter: int = 0, max_payload: int = DEFAULT_MAX_PAYLOAD
    ) -> None:
        self.session = session
        self.expect_counter = first_counter
        self.max_payload = max_payload
        self._buf = bytearray()
        self.frames: list[torch.Tensor] = []

    def feed(self, chunk: bytes) -> list[torch.Tensor]:
        self._buf += chunk
        out: list[torch.Tensor] = []
        while True:
            if len(self._buf) < HEADER_FIXED:
                break
            ndim = peek_ndim(memoryview(self._buf)[:HEADER_FIXED])
            hsize = header_size(ndim)
            if len(self._buf) < hsize:
                break
            h = decode_header(
                bytes(self._buf[:HEADER_FIXED]), bytes(self._buf[HEADER_FIXED:hsize]),
                self.max_payload,
            )
            check_expected(h, self.session, self.expect_counter, "stream")
            if len(self._buf) < hsize + h.nbytes:
                break
            buf, view = empty_for(h)
            view[:] = self._buf[hsize : hsize + h.nbytes]
            del self._buf[: hsize + h.nbytes]
            self.expect_counter += 1
            out.append(finish(buf, h))
        self.frames.extend(out)
        return out

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a whole frame (non-zero at EOF = truncated)."""
        return len(self._buf)


def check_expected(h: FrameHeader, session: bytes, counter: int, peer: str) -> None:
    if h.session != session:
        raise FrameError(
            f"frame from {peer} carries session {h.session.hex()[:12]}..., "
            f"expected {session.hex()[:12]}... (stale or foreign session)"
        )
    if h.counter != counter:
        raise FrameError(
            f"frame from {peer} has op counter {h.counter}, expected {counter} "
            "(replayed, dropped or reordered message)"
        )
