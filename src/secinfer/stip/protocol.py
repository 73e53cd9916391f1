"""The user <-> cloud request protocol, the cloud's per-session state, and its serve loop.

Links: a user dials the cloud as users dial every secinfer server
(:mod:`secinfer.net.userlink`: two TLS 1.3 links, mutual authentication by a user certificate
of the topology's CA; the user opens no port), so many users on any machines reach one cloud,
each in its own session, served side by side (:func:`serve`).

Wire format: the one request/reply protocol of :mod:`secinfer.net.rpc` (request id, op,
status, an error text that reaches the user; nothing pickled). A reply's last tensor is
float64[1], the cloud's compute seconds.

Ops, by task of the model (``x'`` = permuted embeddings, float32 ``(B, S, d)``; ``mask`` =
int64 ``(B, S)`` attention mask)::

    1 encode      x', mask        -> permuted last hidden states (+ permuted pooled output)
    2 classify    x', mask        -> class-permuted logits (B, C)   (ViT: mask is ignored)
    3 lm_start    x', mask        -> vocab-permuted logits (B, V) of the last position;
                                     starts a KV cache that stays on the cloud for this session
    4 lm_step     x'(B,1,d), mask -> same, appending to the cache (mask covers all positions)
    5 clip_text   x', mask        -> projection-permuted features of every position (B, S, P)
    6 clip_image  x'              -> projection-permuted pooled image features (B, P)
    0 bye                         -> ends the session

Threat model: the cloud is honest-but-curious and sees exactly these messages, plus each user's
certificate name and the timing of its session; the user trusts the cloud to run the model it
was given (STIP offers no integrity against a cheating cloud).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from secinfer.errors import ProtocolError
from secinfer.net import (
    Listener,
    RequestRefused,
    Session,
    Topology,
    rpc,
)
from secinfer.net.client import ServiceClient
from secinfer.net.service import OneByOne, ServeLoop, UserSession
from secinfer.net.userlink import dial_user, user_credentials

from .cloud import CloudModel

__all__ = [
    "OPS", "StipError", "CloudHandler", "CloudLink", "LocalLink", "SessionLink",
    "serve", "dial_cloud",
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
    """The cloud's state for one user session: the shared model plus this session's KV cache."""

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
    """How the user reaches the cloud; ``cloud_seconds`` sums the cloud's reported compute time."""

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
    """The user's end of the wire protocol over a runtime :class:`Session` (TLS from
    :func:`dial_cloud`): the one user-side runtime
    (:class:`secinfer.net.client.ServiceClient`) over a session it is given.

    A request the cloud refuses raises :class:`StipError` with the cloud's reason (the
    session goes on); a session the cloud ends (busy, another deployment) raises
    :class:`~secinfer.net.RequestRefused` with its reason, as for every backend.
    """

    def __init__(self, session: Session, cloud_id: int) -> None:
        self.session = session
        self.cloud_id = cloud_id
        self.cloud_seconds = 0.0
        self._client = ServiceClient.over(session, (cloud_id,))

    def call(self, op: str, args: list[torch.Tensor]) -> list[torch.Tensor]:
        cid = self.cloud_id
        with self.session.op(f"stip_{op}"):
            try:
                out = self._client.request(OPS[op], {cid: args}, (cid,), name=op)[cid]
            except RequestRefused as e:
                if not self._client.connected:  # the cloud ended the session: say why
                    raise
                raise StipError(f"cloud refused {op!r}: {e.reason}") from None
        if op == "bye":
            return out
        if not out or out[-1].dtype != torch.float64 or out[-1].shape != (1,):
            raise StipError(f"the cloud's reply to {op!r} lacks its compute time")
        self.cloud_seconds += float(out[-1][0])
        return out[:-1]

    def close(self) -> None:
        """Say goodbye so the cloud ends this session at once instead of timing out (the
        session itself stays open: its owner closes it)."""
        self._client.close(bye_timeout=self.session.timeout or 5.0)


class _CloudService(OneByOne):
    """The cloud behind the one serve loop (:class:`secinfer.net.service.ServeLoop`)."""

    what = "the cloud"

    def __init__(self, cloud: CloudModel) -> None:
        self.cloud = cloud

    def open(self, user: UserSession) -> list[torch.Tensor]:
        user.state = CloudHandler(self.cloud)  # this session's KV cache lives here
        return []

    def handle_one(self, user: UserSession, request: rpc.Request) -> list[torch.Tensor]:
        return _run(user.state, request)


def _run(handler: CloudHandler, request: rpc.Request) -> list[torch.Tensor]:
    """One request's reply tensors (the outputs, then the cloud's compute seconds); a refusal names
    the problem."""
    try:
        out, secs = handler.handle(request.op, request.tensors)
    except StipError as e:
        raise RequestRefused(str(e)) from None
    except (RuntimeError, ValueError, IndexError) as e:  # the model rejected the input
        raise RequestRefused(f"{type(e).__name__}: {e}"[:2000]) from None
    return [*out, torch.tensor([secs], dtype=torch.float64)]


def dial_cloud(topology: Topology, cloud_id: int | None = None, *,
               cert: str | Path | None = None, key: str | Path | None = None,
               user_id: int | None = None) -> Session:
    """The user's session with the cloud (the user's end of the protocol), over user links.

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


def serve(
    topology: Topology,
    cloud_id: int,
    cloud: CloudModel,
    max_sessions: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    log: Callable[[str], None] = print,
) -> int:
    """The cloud's long-lived loop: one TLS listener, users' sessions served side by side,
    request by request (:class:`secinfer.net.service.ServeLoop`, the one serve loop of single-server
    services: the door refuses another deployment's links and says "busy" beyond
    ``[service] max_users``; a refused request names the problem and the session goes on).

    Returns the number of sessions served (ended). ``max_sessions``: return once that many
    ended; ``should_stop``: polled every few milliseconds, then the active sessions are told
    the cloud is shutting down.
    """
    listener = Listener(topology, topology.party(cloud_id))
    loop = ServeLoop(topology, cloud_id, listener, _CloudService(cloud),
                     log_line=lambda m: log(f"stip serve: {m}"))
    listener.status = lambda: {"state": "serving", "backend": "stip",
                               "model_class": cloud.spec.model_class, "active": len(loop.users)}
    try:
        loop.run(should_stop, max_sessions)
    finally:
        loop.close("the cloud is shutting down")
        listener.close()
    return loop.ended
