"""The one request/reply protocol between a user and a service, over a Session.

Every item is one runtime frame (:mod:`.framing`: typed, sized, counted, session-bound;
nothing pickled)::

    request   int64[5] (magic, version, request id, op, n)      then n tensors
    reply     int64[4] (magic, request id, status, n)           then n tensors
              status OK: the results; status REFUSED: n = 1, a uint8 UTF-8 error text

Steps of one call (:func:`call`, user side; :func:`recv_request` / :func:`reply` /
:func:`refuse`, server side):

1. the user sends a request with a fresh id (its own counter, from 1) and the backend's op code
   (``BYE`` = 0 ends the session; the server answers it and closes);
2. the server reads the header, refuses a malformed one (wrong dtype, shape, magic, version,
   more than :data:`MAX_TENSORS` tensors) with a :class:`~secinfer.errors.ProtocolError`
   naming what is wrong, reads the n tensors, runs the op, and replies under the same id;
3. a refused request gets a REFUSED reply whose text names the problem and reaches the user
   as :class:`~.errors.RequestRefused`; the session goes on (the backend decides otherwise
   for failures that leave its state unknown, e.g. a failed integrity check);
4. the user checks the reply's magic, id and count, so a reply to another request, or a
   server that lies about its framing, is an error naming it, not a silently wrong result.

Cost: one header frame (40 or 32 bytes) per message on top of the payload; no extra round.
What the server learns from the protocol itself: op codes, request counts, tensor shapes and
timing; the payloads are whatever the backend sends (permuted activations for STIP, inputs
for the trusted enclave, shares for the MPC servers). The backends using it:
``stip/protocol.py``, ``tee/service.py`` and the MPC servers (``serve/handler.py``: a
user's request goes to all three, P0 and P1 reply with output shares; a request one of them
could not read is an abort that ends the session, since the three must stay in step), all
behind the one serve loop (:mod:`.service`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ProtocolError
from .errors import RequestRefused
from .session import Session

__all__ = ["BYE", "OK", "REFUSED", "MAX_TENSORS", "Request", "recv_request",
           "reply", "refuse", "call", "request_header", "parse_request_header",
           "parse_reply_header", "refusal"]

_REQ_MAGIC = 0x53495251  # "SIRQ"
_REP_MAGIC = 0x53495250  # "SIRP"
_VERSION = 1
BYE = 0
OK, REFUSED = 0, 1
MAX_TENSORS = 16
_MAX_ERROR = 4000


@dataclass
class Request:
    """One request as the server read it."""

    id: int
    op: int
    tensors: list[torch.Tensor]


def _name(session: Session, peer: int) -> str:
    namer = getattr(session.transport, "peer_name", None)
    return str(namer(peer)) if callable(namer) else f"party {peer}"


def _int_header(t: torch.Tensor, n: int, what: str) -> list[int]:
    if t.dtype != torch.int64 or tuple(t.shape) != (n,):
        raise ProtocolError(f"malformed {what} header: expected int64 [{n}], got {t.dtype} "
                            f"{list(t.shape)}")
    return [int(v) for v in t.tolist()]


def request_header(request_id: int, op: int, n: int) -> torch.Tensor:
    """The header frame of a request with ``n`` tensors."""
    if not 0 <= n <= MAX_TENSORS:
        raise ValueError(f"a request holds at most {MAX_TENSORS} tensors, got {n}")
    return torch.tensor([_REQ_MAGIC, _VERSION, request_id, op, n], dtype=torch.int64)


def parse_request_header(t: torch.Tensor) -> tuple[int, int, int]:
    """(request id, op, tensor count) of a request header; ProtocolError naming a bad one."""
    magic, version, rid, op, n = _int_header(t, 5, "request")
    if magic != _REQ_MAGIC:
        raise ProtocolError(f"not a secinfer request (magic {magic:#x})")
    if version != _VERSION:
        raise ProtocolError(f"request protocol version {version}, this server speaks "
                            f"{_VERSION}")
    if not 0 <= n <= MAX_TENSORS:
        raise ProtocolError(f"request announces {n} tensors (0..{MAX_TENSORS} allowed)")
    return rid, op, n


def recv_request(session: Session, peer: int, timeout: float | None = None) -> Request:
    """Read one request from ``peer`` (the header, then its tensors)."""
    rid, op, n = parse_request_header(session.recv(peer, timeout=timeout))
    return Request(rid, op, [session.recv(peer, timeout=timeout) for _ in range(n)])


def parse_reply_header(t: torch.Tensor, request_id: int, who: str) -> tuple[int, int]:
    """(status, tensor count) of ``who``'s reply to ``request_id``; ProtocolError naming a
    reply to another request, or one whose framing is wrong."""
    magic, rid, status, n = _int_header(t, 4, "reply")
    if magic != _REP_MAGIC:
        raise ProtocolError(f"{who} sent something other than a reply (magic {magic:#x})")
    if rid != request_id:
        raise ProtocolError(f"{who} answered request {rid}, not request {request_id}")
    if status not in (OK, REFUSED) or not 0 <= n <= MAX_TENSORS or (status == REFUSED and n != 1):
        raise ProtocolError(f"{who} sent a malformed reply (status {status}, {n} tensors)")
    return status, n


def refusal(text: torch.Tensor, who: str, what: str = "the request") -> RequestRefused:
    """The user-side error of a REFUSED reply's text tensor."""
    msg = (bytes(text.tolist()).decode("utf-8", "replace") if text.dtype == torch.uint8
           else "?")
    return RequestRefused(f"{who} refused {what}: {msg}", msg)


def reply(session: Session, peer: int, request_id: int, tensors: list[torch.Tensor]) -> None:
    """Answer request ``request_id`` with ``tensors``."""
    if len(tensors) > MAX_TENSORS:
        raise ValueError(f"a reply holds at most {MAX_TENSORS} tensors, got {len(tensors)}")
    session.send(peer, torch.tensor([_REP_MAGIC, request_id, OK, len(tensors)],
                                    dtype=torch.int64))
    for t in tensors:
        session.send(peer, t.contiguous())


def refuse(session: Session, peer: int, request_id: int, why: str) -> None:
    """Refuse request ``request_id``; ``why`` reaches the user verbatim (holds no secret)."""
    text = why.encode("utf-8", "replace")[:_MAX_ERROR]
    session.send(peer, torch.tensor([_REP_MAGIC, request_id, REFUSED, 1], dtype=torch.int64))
    session.send(peer, torch.frombuffer(bytearray(text), dtype=torch.uint8).clone()
                 if text else torch.empty(0, dtype=torch.uint8))


def call(session: Session, peer: int, request_id: int, op: int, tensors: list[torch.Tensor],
         timeout: float | None = None, name: str | None = None) -> list[torch.Tensor]:
    """Send one request and return the reply's tensors; a refusal raises
    :class:`RequestRefused` with the server's text, a malformed reply :class:`ProtocolError`."""
    if len(tensors) > MAX_TENSORS:
        raise ValueError(f"a request holds at most {MAX_TENSORS} tensors, got {len(tensors)}")
    session.send(peer, request_header(request_id, op, len(tensors)))
    for t in tensors:
        session.send(peer, t.contiguous())
    who = _name(session, peer)
    status, n = parse_reply_header(session.recv(peer, timeout=timeout), request_id, who)
    out = [session.recv(peer, timeout=timeout) for _ in range(n)]
    if status == REFUSED:
        raise refusal(out[0], who, f"{name!r}" if name else "the request")
    return out
