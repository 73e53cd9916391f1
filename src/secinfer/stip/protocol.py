"""The P3 <-> P2 request protocol, P2's per-session state, and the long-lived server loop.

Links: a user (P3) dials the cloud (P2) as users dial every secinfer server
(:mod:`secinfer.net.userlink`: two TLS 1.3 links, mutual authentication by a user certificate
of the topology's CA; the user opens no port), so many users on any machines reach one cloud,
each in its own session, served side by side (:func:`serve`).

Wire format: the one request/reply protocol of :mod:`secinfer.net.rpc` (request id, op,
status, an error text that reaches the user; nothing pickled). A reply's last tensor is
float64[1], P2's compute seconds.

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

Threat model: P2 is honest-but-curious and sees exactly these messages, plus each user's
certificate name and the timing of its session; P3 trusts P2 to run the model it was given
(STIP offers no integrity against a cheating P2).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from secinfer.errors import ProtocolError
from secinfer.net import (
    Listener,
    PeerAborted,
    PeerDisconnected,
    PeerTimeout,
    RequestRefused,
    SecinferNetError,
    Session,
    Topology,
    rpc,
)
from secinfer.net.rpc import RpcClient
from secinfer.net.userlink import (
    USER_PEER,
    UserGate,
    UserLinks,
    dial_user,
    user_credentials,
)

from .cloud import CloudModel

__all__ = [
    "OPS", "StipError", "CloudHandler", "CloudLink", "LocalLink", "SessionLink",
    "serve_session", "serve", "dial_cloud",
]

_POLL_S = 0.01

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
        self._rpc = RpcClient(session, cloud_id)

    def call(self, op: str, args: list[torch.Tensor]) -> list[torch.Tensor]:
        with self.session.op(f"stip_{op}"):
            try:
                out = self._rpc.call(OPS[op], args, name=op)
            except RequestRefused as e:
                raise StipError(f"cloud refused {op!r}: {e.reason}") from None
        if not out or out[-1].dtype != torch.float64 or out[-1].shape != (1,):
            raise StipError(f"the cloud's reply to {op!r} lacks its compute time")
        self.cloud_seconds += float(out[-1][0])
        return out[:-1]

    def close(self) -> None:
        """Say goodbye so the cloud ends this session at once instead of timing out."""
        try:
            self.call("bye", [])
        except (PeerDisconnected, PeerTimeout, PeerAborted):
            pass


def serve_session(session: Session, peer: int, cloud: CloudModel,
                  idle_timeout: float | None = None) -> int:
    """Answer one user's requests until ``bye``; returns how many requests were served.

    A silent user (``idle_timeout``, default the session's) or a dropped link ends the
    session with the runtime's error, a malformed header with a ``ProtocolError``; a bad
    request gets a refusal naming the problem and the session goes on.
    """
    handler = CloudHandler(cloud)
    served = 0
    while True:
        req = rpc.recv_request(session, peer, timeout=idle_timeout)
        if req.op == rpc.BYE:
            rpc.reply(session, peer, req.id, [torch.zeros(1, dtype=torch.float64)])
            return served
        with session.op(f"stip_{_NAMES.get(req.op, req.op)}"):
            try:
                out, secs = handler.handle(req.op, req.tensors)
            except StipError as e:
                rpc.refuse(session, peer, req.id, str(e))
                continue
            except (RuntimeError, ValueError, IndexError) as e:  # the model rejected the input
                rpc.refuse(session, peer, req.id, f"{type(e).__name__}: {e}"[:2000])
                continue
            rpc.reply(session, peer, req.id, [*out, torch.tensor([secs], dtype=torch.float64)])
        served += 1


def dial_cloud(topology: Topology, cloud_id: int | None = None, *,
               cert: str | Path | None = None, key: str | Path | None = None,
               user_id: int | None = None) -> Session:
    """The user's session with the cloud (P3's end of the protocol), over user links.

    The user dials out (two mutually authenticated TLS 1.3 links, :mod:`secinfer.net.userlink`)
    and opens no port, so any number of users, on any machines, reach one cloud. ``cert`` /
    ``key``: a user certificate of the topology's CA (default: topology user ``user_id``'s, or
    the first user party's). The cloud is ``cloud_id`` (default: the topology's one party of
    role ``cloud``); in the returned session it is peer ``cloud_id``.
    """
    if cloud_id is None:
        clouds = topology.by_role("cloud")
        if len(clouds) != 1:
            raise ValueError(f"a stip topology needs exactly one party with role 'cloud', it "
                             f"has {len(clouds)}")
        cloud_id = int(clouds[0].id)
    elif topology.party(cloud_id).role != "cloud":
        raise ValueError(f"party {cloud_id} has role {topology.party(cloud_id).role!r}, "
                         "not 'cloud'")
    cert, key = user_credentials(topology, cert, key, user_id)
    links = dial_user(topology, cert, key, secrets.token_bytes(16), servers=(cloud_id,))
    return Session(links, timeout=topology.timeout, role="user")


def _serve_one(session: Session, identity: str, cloud: CloudModel,
               log: Callable[[str], None]) -> None:
    with session:
        log(f"stip serve: session {session.session_id.hex()} with user {identity}")
        try:
            n = serve_session(session, USER_PEER, cloud)
            log(f"stip serve: session ended after {n} requests")
        except (SecinferNetError, ProtocolError) as e:  # timeouts, drops, bad frames
            log(f"stip serve: session aborted: {e}")


def serve(
    topology: Topology,
    cloud_id: int,
    cloud: CloudModel,
    max_sessions: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    log: Callable[[str], None] = print,
) -> int:
    """P2's long-lived loop: one TLS listener, users' sessions served side by side.

    Steps:
      1. listen on the cloud's port; users dial in (:func:`dial_cloud`); a session is admitted
         once both of its links arrived;
      2. links for another deployment (topology digest) are refused saying so; beyond
         ``[service] max_users`` active sessions the newcomer is told "busy";
      3. each admitted session runs :func:`serve_session` in its own thread (the model is
         shared and read-only; the KV cache is per session), so a slow or silent user holds
         up nobody else; a session's failure is logged and ends only that session.

    Returns the number of sessions served (ended). ``max_sessions``: stop admitting after that
    many and return once they ended; ``should_stop``: polled every few milliseconds, aborts the
    active sessions with a reason and returns.
    """
    listener = Listener(topology, topology.party(cloud_id))
    gate = UserGate(topology, cloud_id, listener, "the cloud")
    active: dict[bytes, tuple[threading.Thread, UserLinks]] = {}
    admitted = ended = 0
    listener.status = lambda: {"state": "serving", "backend": "stip",
                               "model_class": cloud.spec.model_class, "active": len(active)}

    def reap() -> int:
        done = [t for t, (th, _) in active.items() if not th.is_alive()]
        for t in done:
            active.pop(t)
        return len(done)

    try:
        while max_sessions is None or admitted < max_sessions:
            if should_stop is not None and should_stop():
                for _, links in active.values():
                    links.abort("the cloud is shutting down")
                break
            ended += reap()
            new, notes = gate.admit(len(active))
            for line in notes:
                log(f"stip serve: {line}")
            if not new:
                time.sleep(_POLL_S)
                continue
            for i, a in enumerate(new):
                if max_sessions is not None and admitted >= max_sessions:
                    for late in new[i:]:  # admitted past the last session asked for
                        late.links.abort("the cloud is shutting down")
                        late.session.close()
                    break
                th = threading.Thread(target=_serve_one, args=(a.session, a.identity, cloud, log),
                                      daemon=True, name=f"stip-{a.token.hex()[:8]}")
                active[a.token] = (th, a.links)
                admitted += 1
                th.start()
        for th, _ in list(active.values()):
            th.join(timeout=topology.timeout + 5.0)
        ended += reap()
    finally:
        listener.close()
    return ended
