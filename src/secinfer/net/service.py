"""The one serve loop of single-server services: the TEE enclave and the STIP cloud.

Users dial in (:mod:`.userlink`), come through the one door (:class:`~.userlink.UserGate`) and
speak the one request/reply protocol (:mod:`.rpc`). The loop, per step:

1. admits arrived sessions (the gate refuses another deployment's links and, beyond
   ``[service] max_users`` active sessions, says "busy"); the backend's :meth:`Handler.open`
   gives each its state and the welcome frames it sends first;
2. serves one waiting request of each active session, round-robin, so many users share the
   server request by request and a silent user holds up nobody;
3. answers ``bye`` and ends that session; refuses a request the backend refuses
   (:class:`~.errors.RequestRefused`: its reason reaches the user and the session goes on);
   ends a session whose framing is broken (:class:`~secinfer.errors.ProtocolError`) or that
   stayed idle past the topology's session timeout, telling the user why;
4. on :class:`Fatal` (the backend's own state is unknown: a lying device) refuses the request
   with the reason, ends that session and raises the cause to the caller, which repairs its
   state (the enclave dials its device again) and runs the loop on with the other sessions.

The MPC servers run the lock-step variant of this loop (:mod:`secinfer.serve.scheduler`):
three servers must agree on every admission and request, so P0 schedules and the others follow.

What the server learns from the loop itself: which users are active, when, how many requests
each sends, and the sizes of their frames.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..errors import ProtocolError
from . import rpc
from .errors import RequestRefused, SecinferNetError
from .listener import Listener
from .session import Session
from .topology import Topology
from .userlink import USER_PEER, UserGate, UserLinks

__all__ = ["Fatal", "Handler", "UserSession", "ServeLoop"]

log = logging.getLogger(__name__)
_POLL_S = 0.002
_HEADER_WAIT_S = 5.0


class Fatal(Exception):  # noqa: N818 - a control-flow signal, not an error of its own
    """Raised by a handler when a request failed in a way that leaves the server's own state
    unknown: ``why`` reaches the user, ``cause`` is raised to the loop's caller."""

    def __init__(self, why: str, cause: BaseException) -> None:
        super().__init__(why)
        self.why = why
        self.cause = cause


@dataclass
class UserSession:
    """One admitted user session, as the handler sees it."""

    token: bytes
    identity: str
    session: Session
    links: UserLinks
    state: Any = None
    requests: int = 0
    last: float = field(default_factory=time.monotonic)


class Handler(Protocol):
    """A backend behind the loop."""

    what: str  # "the enclave", "the cloud": who refuses, in messages

    def open(self, user: UserSession) -> list[torch.Tensor]:
        """Set ``user.state``; the frames to send the user first (may be empty)."""
        ...

    def handle(self, user: UserSession, request: rpc.Request) -> list[torch.Tensor]:
        """The reply's tensors; raise :class:`RequestRefused` to refuse, :class:`Fatal` when
        the server's state is unknown."""
        ...


class ServeLoop:
    """Admits and serves users of one server until told to stop (see the module docstring)."""

    def __init__(self, topology: Topology, party_id: int, listener: Listener,
                 handler: Handler, log_line: Callable[[str], None] | None = None) -> None:
        self.topology, self.handler = topology, handler
        self.gate = UserGate(topology, party_id, listener, handler.what)
        self.users: dict[bytes, UserSession] = {}
        self.ended = 0
        self._log = log_line or (lambda m: log.info("%s", m))

    def end(self, token: bytes, why: str | None) -> None:
        """End a session; ``why`` (if any) reaches the user as an abort reason."""
        u = self.users.pop(token)
        if why is not None:
            self._log(f"user {u.identity}: {why}")
            u.links.abort(why)
        u.session.close()
        self.ended += 1

    def close(self, why: str) -> None:
        for token in list(self.users):
            self.end(token, why)

    def _admit(self) -> None:
        new, notes = self.gate.admit(len(self.users))
        for line in notes:
            self._log(line)
        for a in new:
            u = UserSession(a.token, a.identity, a.session, a.links)
            self.users[a.token] = u
            self._log(f"session {a.token.hex()[:8]} with user {a.identity}")
            try:
                for t in self.handler.open(u):
                    u.session.send(USER_PEER, t)
            except SecinferNetError:
                self.end(a.token, None)

    def _serve(self, u: UserSession) -> None:
        try:
            req = rpc.recv_request(u.session, USER_PEER, timeout=min(self.topology.timeout,
                                                                     _HEADER_WAIT_S))
        except ProtocolError as e:
            self._log(f"session aborted: {e}")
            self.end(u.token, str(e))
            return
        except SecinferNetError as e:  # the user left, or left mid-request
            self._log(f"session aborted: {e}")
            self.end(u.token, None)
            return
        u.last = time.monotonic()
        if req.op == rpc.BYE:
            try:
                rpc.reply(u.session, USER_PEER, req.id, [])
            except SecinferNetError:
                pass
            self._log(f"session ended after {u.requests} requests (user {u.identity})")
            self.end(u.token, None)
            return
        try:
            out = self.handler.handle(u, req)
        except RequestRefused as e:
            try:
                rpc.refuse(u.session, USER_PEER, req.id, e.reason)
            except SecinferNetError:
                self.end(u.token, None)
            return
        except Fatal as f:
            try:
                rpc.refuse(u.session, USER_PEER, req.id, f.why)
            except SecinferNetError:
                pass
            self.end(u.token, f.why)
            raise f.cause from None
        u.requests += 1
        try:
            rpc.reply(u.session, USER_PEER, req.id, out)
        except SecinferNetError:
            self.end(u.token, None)

    def run(self, stop: threading.Event | Callable[[], bool] | None = None,
            max_sessions: int | None = None) -> None:
        """Serve until ``stop`` is set (or returns True) or ``max_sessions`` sessions ended;
        a :class:`Fatal` request raises its cause (the sessions stay, for the next run)."""
        should_stop = stop.is_set if isinstance(stop, threading.Event) else stop
        while True:
            if (should_stop is not None and should_stop()) or \
                    (max_sessions is not None and self.ended >= max_sessions):
                return
            self._admit()
            busy = False
            now = time.monotonic()
            for token, u in list(self.users.items()):
                if u.links.pending(USER_PEER):
                    busy = True
                    self._serve(u)
                elif now - u.last > self.topology.timeout:
                    self.end(token, f"session idle for more than {self.topology.timeout:.0f} s "
                             "(the session timeout); closed")
            if not busy:
                time.sleep(_POLL_S)
