"""The P3 <-> P2 request protocol, P2's per-session state, and the long-lived server loop.

Wire format (every item one runtime frame, nothing pickled)::

    request   int64[2] (op, n)   then n tensors
    reply     int64[2] (status, n) then n tensors, then float64[1] (P2 compute seconds)
              status 0: ok; status 1: one uint8 tensor with a UTF-8 error message

Ops, by task of the model (``x'`` = permuted embeddings, float32 ``(B, S, d)``; ``mask`` =
int64 ``(B, S)`` attention mask)::

    1 encode      x', mask        -> permuted last hidden states (+ permuted pooled output)
    2 classify    x', mask        -> class-permuted logits (B, C)   (ViT: mask is ignored)
    3 lm_start    x', mask        -> vocab-permuted logits (B, V) of the last position;
                                     starts a KV cache that stays on P2 for this session
    4 lm_step     x'(B,1,d), mask -> same, appending to the cache (mask covers all positions)
    5 clip_text   x', mask        -> projection-permuted features of every position (B, S, P)
    6 clip_image  x'              -> projection-permuted pooled image features (B, P)
    0 bye                         -> ends the session

Threat model: P2 is honest-but-curious and sees exactly these messages; P3 trusts P2 to run
the model it was given (STIP offers no integrity against a cheating P2).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import torch

from secinfer.errors import ProtocolError
from secinfer.net import (
    Listener,
    PeerDisconnected,
    PeerTimeout,
    SecinferNetError,
    Session,
    Topology,
)

from .cloud import CloudModel

__all__ = [
    "OPS", "StipError", "CloudHandler", "CloudLink", "LocalLink", "SessionLink",
    "serve_session", "serve",
]

OPS = {"bye": 0, "encode": 1, "classify": 2, "lm_start": 3, "lm_step": 4,
       "clip_text": 5, "clip_image": 6}
_NAMES = {v: k for k, v in OPS.items()}
_TASK_OPS = {
    "encoder": {"encode"},
    "classify": {"classify"},
    "causal_lm": {"lm_start", "lm_step"},
    "clip": {"clip_text", "clip_image"},
}


class StipError(ProtocolError):
    """The cloud refused a request; the message is the cloud's."""


def _check_x(x: torch.Tensor, width: int, what: str) -> None:
    if x.dtype != torch.float32 or x.dim() != 3 or x.shape[-1] != width or x.shape[1] == 0:
        raise StipError(
            f"{what}: expected float32 embeddings of shape (batch, seq>0, {width}), "
            f"got {x.dtype} {tuple(x.shape)}"
        )


def _check_mask(mask: torch.Tensor, shape: tuple[int, int], what: str) -> None:
    if mask.dtype != torch.int64 or tuple(mask.shape) != shape:
        raise StipError(f"{what}: expected an int64 attention mask of shape {shape}, "
                        f"got {mask.dtype} {tuple(mask.shape)}")


class CloudHandler:
    """P2's state for one user session: the shared model plus this session's KV cache."""

    def __init__(self, cloud: CloudModel) -> None:
        self.cloud = cloud
        self.cache: Any = None
        self.cached = 0  # positions in the cache
        self.batch = 0

    def handle(self, op: int, args: list[torch.Tensor]) -> tuple[list[torch.Tensor], float]:
        """Validate and run one request; returns (results, compute seconds)."""
        name = _NAMES.get(op)
        task = self.cloud.task
        if name is None or name == "bye":
            raise StipError(f"unknown op code {op}")
        if name not in _TASK_OPS[task]:
            raise StipError(f"op {name!r} is not served by a {task} model "
                            f"({self.cloud.spec.model_class})")
        need = 1 if name == "clip_image" else 2
        if len(args) != need:
            raise StipError(f"op {name!r} takes {need} tensors, got {len(args)}")
        sizes = self.cloud.hidden_sizes
        width = sizes["hidden_vision"] if name == "clip_image" else sizes.get(
            "hidden_text", sizes.get("hidden", 0))
        x = args[0]
        _check_x(x, width, name)
        start = time.perf_counter()
        out = self._run(name, x, args[1] if need == 2 else None)
        return out, time.perf_counter() - start

    def _run(self, name: str, x: torch.Tensor, mask: torch.Tensor | None) -> list[torch.Tensor]:
        b, s = x.shape[0], x.shape[1]
        if name == "clip_image":
            return [self.cloud.clip_image(x)]
        assert mask is not None
        if name == "lm_step":
            if self.cache is None:
                raise StipError("lm_step before lm_start: no KV cache in this session")
            if b != self.batch:
                raise StipError(f"lm_step batch {b} differs from the cached batch {self.batch}")
            _check_mask(mask, (b, self.cached + s), name)
            logits, self.cache = self.cloud.lm_forward(x, mask, self.cache)
            self.cached += s
            return [logits]
        _check_mask(mask, (b, s), name)
        if name == "encode":
            return self.cloud.encode(x, mask)
        if name == "classify":
            return [self.cloud.classify(x, mask)]
        if name == "clip_text":
            return [self.cloud.clip_text(x, mask)]
        # lm_start: a fresh cache, replacing any previous one of this session
        logits, self.cache = self.cloud.lm_forward(x, mask, None)
        self.cached, self.batch = s, b
        return [logits]


class CloudLink(Protocol):
    """How the user reaches the cloud; ``cloud_seconds`` sums P2's reported compute time."""

    cloud_seconds: float

    def call(self, op: str, args: list[torch.Tensor]) -> list[torch.Tensor]: ...


class LocalLink:
    """In-process link straight to a handler (tests, and the plaintext-speed reference)."""

    def __init__(self, cloud: CloudModel) -> None:
        self.handler = CloudHandler(cloud)
        self.cloud_seconds = 0.0

    def call(self, op: str, args: list[torch.Tensor]) -> list[torch.Tensor]:
        out, secs = self.handler.handle(OPS[op], [a.clone() for a in args])
        self.cloud_seconds += secs
        return out

    def close(self) -> None:
        pass


class SessionLink:
    """The user's end of the wire protocol over a runtime :class:`Session` (e.g. TLS)."""

    def __init__(self, session: Session, cloud_id: int) -> None:
        self.session = session
        self.cloud_id = cloud_id
        self.cloud_seconds = 0.0

    def call(self, op: str, args: list[torch.Tensor]) -> list[torch.Tensor]:
        s, peer = self.session, self.cloud_id
        with s.op(f"stip_{op}"):
            s.send(peer, torch.tensor([OPS[op], len(args)], dtype=torch.int64))
            for a in args:
                s.send(peer, a.contiguous())
            head = s.recv(peer)
            if head.dtype != torch.int64 or head.shape != (2,):
                raise StipError("malformed reply header from the cloud")
            status, n = int(head[0]), int(head[1])
            if not 0 <= n <= 16:
                raise StipError(f"cloud announced {n} reply tensors")
            out = [s.recv(peer) for _ in range(n)]
            secs = s.recv(peer)
        if status != 0:
            msg = bytes(out[0].tolist()).decode("utf-8", "replace") if out else "?"
            raise StipError(f"cloud refused {op!r}: {msg}")
        self.cloud_seconds += float(secs[0])
        return out

    def close(self) -> None:
        """Say goodbye so the cloud ends this session at once instead of timing out."""
        try:
            self.call("bye", [])
        except (PeerDisconnected, PeerTimeout):
            pass


def _reply(session: Session, peer: int, status: int, tensors: list[torch.Tensor],
           secs: float) -> None:
    session.send(peer, torch.tensor([status, len(tensors)], dtype=torch.int64))
    for t in tensors:
        session.send(peer, t.contiguous())
    session.send(peer, torch.tensor([secs], dtype=torch.float64))


def serve_session(session: Session, peer: int, cloud: CloudModel,
                  idle_timeout: float | None = None) -> int:
    """Answer one user's requests until ``bye``; returns how many requests were served.

    A silent user (``idle_timeout``, default the session's) or a dropped link ends the
    session with the runtime's error; a bad request gets an error reply and the session goes on.
    """
    handler = CloudHandler(cloud)
    served = 0
    while True:
        head = session.recv(peer, timeout=idle_timeout)
        if head.dtype != torch.int64 or head.shape != (2,) or not 0 <= int(head[1]) <= 16:
            raise StipError(f"malformed request header from {peer}: {head.dtype} "
                            f"{tuple(head.shape)}")
        op, n = int(head[0]), int(head[1])
        args = [session.recv(peer, timeout=idle_timeout) for _ in range(n)]
        if op == OPS["bye"]:
            _reply(session, peer, 0, [], 0.0)
            return served
        with session.op(f"stip_{_NAMES.get(op, op)}"):
            try:
                out, secs = handler.handle(op, args)
            except StipError as e:
                _reply(session, peer, 1, [torch.tensor(list(str(e).encode()), dtype=torch.uint8)],
                       0.0)
                continue
            except (RuntimeError, ValueError, IndexError) as e:  # the model rejected the input
                msg = f"{type(e).__name__}: {e}"[:2000]
                _reply(session, peer, 1, [torch.tensor(list(msg.encode()), dtype=torch.uint8)],
                       0.0)
                continue
            _reply(session, peer, 0, out, secs)
        served += 1


def serve(
    topology: Topology,
    cloud_id: int,
    cloud: CloudModel,
    user_id: int,
    max_sessions: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    log: Callable[[str], None] = print,
) -> int:
    """P2's long-lived loop: one TLS listener, one user session after another.

    Returns the number of sessions served. Waiting for a user that does not come is not an
    error (the loop keeps listening); ``should_stop`` is polled between connection attempts.
    """
    listener = Listener(topology, topology.party(cloud_id))
    sessions = 0
    try:
        while max_sessions is None or sessions < max_sessions:
            if should_stop is not None and should_stop():
                break
            try:
                session = Session.connect(topology, cloud_id, peers=[user_id], listener=listener)
            except PeerTimeout:
                continue  # nobody came yet: keep listening
            except SecinferNetError as e:  # e.g. a failed handshake: refuse it, keep serving
                log(f"stip serve: connection refused: {e}")
                continue
            with session:
                log(f"stip serve: session {session.session_id.hex()} with party {user_id}")
                try:
                    n = serve_session(session, user_id, cloud)
                    log(f"stip serve: session ended after {n} requests")
                except (SecinferNetError, StipError) as e:  # timeouts, drops, bad frames
                    log(f"stip serve: session aborted: {e}")
            sessions += 1
    finally:
        listener.close()
    return sessions
