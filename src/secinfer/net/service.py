"""The one serve loop: every backend's servers admit and serve users through it.

Users dial in (:mod:`.userlink`); their sessions wait in each server's listener until the loop
admits them; they speak the one request/reply protocol (:mod:`.rpc`). A backend plugs in a
:class:`Handler` (how to greet a user, read its request, compute replies). The loop runs
alone (the TEE enclave, the STIP cloud) or in lock-step with the other servers of an MPC
deployment, whose shared session (seeds, op counters, correlated randomness) must never fall
out of step; alone is the lock-step loop of a group of one. Per step:

1. The *leader* (the single server, or P0 of the MPC servers) picks the step: user sessions
   to admit (oldest first, while fewer than ``[service] max_users`` are active), sessions to
   turn away as busy (over that limit: the leader tells the user "busy" itself), idle
   sessions to drop, and the active users whose next request has arrived, in round-robin
   order after the last one served. With ``[service] batching`` every waiting user's request
   joins one batch (up to the handler's ``max_batch`` inputs, optionally waiting
   ``batch_wait_ms`` for more); without it, one user per step. In a group the leader sends
   the step to the others, and an empty step every second when idle: a heartbeat by which the
   others tell a frozen leader from an idle one.
2. Each server takes the admitted users' links from its listener (followers wait briefly
   for links still in flight) and reads each scheduled user's request
   (:meth:`Handler.read`: this server's part of it and its *verdict*).
3. In a group, one round: every server sends the others ``[stopping, admitted ok...,
   verdicts...]``.
4. All apply the same outcome: a user admitted only where every server holds its links,
   made for this deployment, gets the handler's welcome (else the leader says why); a
   request every server accepts joins the batch; different verdicts or a refused read end
   that user's session with the reason (it reaches the user: the rest of its request may
   still be in flight, so the stream cannot go on); a goodbye is answered and ends the
   session, a vanished user ends it quietly. The batch runs through
   :meth:`Handler.handle` once: each user receives only its own reply, or a refusal
   (:class:`~.errors.RequestRefused`: the reason reaches the user and the session goes on).
5. A stopping server (SIGTERM, or ``max_sessions`` ended) sets its flag: after this step
   every user session ends with that reason and the loop returns. A handler that raises
   :class:`Fatal` (its own state is unknown: a lying device) refuses the batch with the
   reason, ends those sessions and raises the cause to the loop's caller, which repairs its
   state (the enclave dials its device again) and runs the loop on with the other sessions.

Cost per step in a group: one step message from the leader (``8 * (4 + 2 * tokens)`` bytes)
and one status round among the servers, on top of the handler's own rounds; a batch of B
users costs the model's rounds once instead of B times. Alone: no messages at all.

What a server learns from the loop itself: which users are active, when, how many requests
(and inputs) each sends, and the sizes of their frames; batching mixes users only in the
servers' own shares.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..errors import ProtocolError
from . import rpc
from .errors import FrameError, RequestRefused, SecinferNetError
from .listener import Listener, UserArrival
from .session import Session
from .topology import Topology
from .userlink import USER_PEER, UserLinks, server_side, user_digest

__all__ = ["Fatal", "Handler", "OneByOne", "Read", "ServeLoop", "Step", "UserSession",
           "GOODBYE", "GONE", "REFUSED", "Reply"]

log = logging.getLogger(__name__)
HEARTBEAT_S = 1.0
HEADER_WAIT_S = 5.0
_POLL_S = 0.002

# a server's verdict on one request: > 0 accepted (every server must hold the same value),
# GOODBYE, GONE (the user left), or any other value <= REFUSED (the read was refused)
GOODBYE, REFUSED, GONE = 0, -1, -5


class Fatal(Exception):  # noqa: N818 - a control-flow signal, not an error of its own
    """Raised by a handler when a request failed in a way that leaves the server's own state
    unknown: ``why`` reaches the user, ``cause`` is raised to the loop's caller."""

    def __init__(self, why: str, cause: BaseException) -> None:
        super().__init__(why)
        self.why = why
        self.cause = cause


@dataclass
class UserSession:
    """One admitted user session at one server, as the loop and the handler see it."""

    token: bytes
    identity: str
    session: Session
    links: UserLinks
    state: Any = None  # the handler's, per session (a STIP KV cache)
    requests: int = 0
    last: float = field(default_factory=time.monotonic)

    @property
    def tag(self) -> str:
        return f"{self.identity}/{self.token.hex()[:8]}"


@dataclass
class Read:
    """This server's reading of a user's next request: its verdict, why a refusal, the
    request's id (its reply carries it) and this server's part of it."""

    verdict: int
    why: str = ""
    request_id: int = 0
    request: Any = None


Reply = list[torch.Tensor] | RequestRefused | None
"""A handler's answer to one user: the reply's tensors, a refusal (the session goes on), or
None where this server sends no reply (the MPC helper)."""


class Handler(Protocol):
    """A backend behind the loop."""

    what: str  # "the enclave", "the servers": who refuses, in messages
    max_batch: int  # inputs one step may batch (with [service] batching)

    def open(self, user: UserSession) -> list[torch.Tensor]:
        """Set ``user.state``; the frames this server sends the user first (may be empty)."""
        ...

    def read(self, user: UserSession) -> Read:
        """Read the user's next request (never raises for what the user sent)."""
        ...

    def batch_of(self, user: UserSession) -> int:
        """How many inputs the user's waiting request holds (for batching; 1 if unknown)."""
        ...

    def handle(self, batch: list[tuple[UserSession, Read]]) -> list[Reply]:
        """One reply per accepted request; raise :class:`Fatal` when the server's state is
        unknown. Any other exception propagates (an MPC server link failed)."""
        ...


class OneByOne:
    """A single server's handler that reads whole requests and answers them one at a time."""

    what = "this server"
    max_batch = 1

    def open(self, user: UserSession) -> list[torch.Tensor]:
        return []

    def batch_of(self, user: UserSession) -> int:
        return 1

    def read(self, user: UserSession) -> Read:
        try:
            req = rpc.recv_request(user.session, USER_PEER, timeout=min(
                user.session.timeout or HEADER_WAIT_S, HEADER_WAIT_S))
        except ProtocolError as e:
            return Read(REFUSED, str(e))
        except SecinferNetError as e:  # the user left, or left mid-request
            return Read(GONE, f"user {user.identity} left: {e}")
        if req.op == rpc.BYE:
            return Read(GOODBYE, request_id=req.id)
        return Read(1, request_id=req.id, request=req)

    def handle_one(self, user: UserSession, request: rpc.Request) -> list[torch.Tensor]:
        """The reply's tensors; raise :class:`RequestRefused` to refuse, :class:`Fatal` when
        the server's state is unknown."""
        raise NotImplementedError

    def handle(self, batch: list[tuple[UserSession, Read]]) -> list[Reply]:
        out: list[Reply] = []
        for user, r in batch:
            try:
                out.append(self.handle_one(user, r.request))
            except RequestRefused as e:
                out.append(e)
        return out


def _words(token: bytes) -> list[int]:
    return torch.frombuffer(bytearray(token), dtype=torch.int64).tolist()


def _token(words: list[int]) -> bytes:
    return torch.tensor(words, dtype=torch.int64).numpy().tobytes()


@dataclass
class Step:
    """What the leader decided: lists of 16-byte user session tokens."""

    admit: list[bytes] = field(default_factory=list)
    reject: list[bytes] = field(default_factory=list)
    drop: list[bytes] = field(default_factory=list)
    serve: list[bytes] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.admit or self.reject or self.drop or self.serve)

    def encode(self) -> torch.Tensor:
        out = [len(self.admit), len(self.reject), len(self.drop), len(self.serve)]
        for group in (self.admit, self.reject, self.drop, self.serve):
            for t in group:
                out += _words(t)
        return torch.tensor(out, dtype=torch.int64)

    @classmethod
    def decode(cls, t: torch.Tensor) -> Step:
        if t.dtype != torch.int64 or t.dim() != 1 or t.numel() < 4:
            raise FrameError(f"malformed step message {t.dtype} {tuple(t.shape)}")
        v = t.tolist()
        counts, rest = v[:4], v[4:]
        if any(c < 0 for c in counts) or len(rest) != 2 * sum(counts):
            raise FrameError(f"malformed step message (counts {counts}, {len(rest)} words)")
        groups: list[list[bytes]] = []
        for c in counts:
            groups.append([_token(rest[2 * i:2 * i + 2]) for i in range(c)])
            rest = rest[2 * c:]
        return cls(*groups)


class _Metrics(Protocol):
    def count(self, what: str) -> None: ...


class ServeLoop:
    """Admits and serves users until stopped (see the module docstring).

    ``servers``: this server's session with the other servers it runs in step with (None:
    alone); ``leader``: the party id that plans (default: the lowest id of the group).
    ``user_frame``: the largest frame a user may send. ``on_session_end`` is called with
    every ended session; ``metrics`` counts sessions, busy turn-aways and refusals.
    """

    def __init__(self, topology: Topology, party_id: int, listener: Listener,
                 handler: Handler, *, servers: Session | None = None,
                 leader: int | None = None, user_frame: int | None = None,
                 on_session_end: Callable[[UserSession], None] | None = None,
                 metrics: _Metrics | None = None,
                 log_line: Callable[[str], None] | None = None) -> None:
        self.topology, self.party_id, self.listener = topology, party_id, listener
        self.handler, self.servers = handler, servers
        group = [party_id, *(servers.peers if servers is not None else [])]
        self.leader = min(group) if leader is None else leader
        self.user_frame = user_frame
        self.on_session_end, self.metrics = on_session_end, metrics
        self.users: dict[bytes, UserSession] = {}
        self.ended = 0
        self._rr = 0  # round-robin position among active users
        self._digest = user_digest(topology)
        self._log = log_line or (lambda m: log.info("%s", m))
        self._stop: Callable[[], bool] = lambda: False
        self._max_sessions: int | None = None

    @property
    def leading(self) -> bool:
        return self.party_id == self.leader

    @property
    def peers(self) -> Sequence[int]:
        return self.servers.peers if self.servers is not None else ()

    # ------------------------------------------------------------------ the loop
    def run(self, stop: threading.Event | Callable[[], bool] | None = None,
            max_sessions: int | None = None) -> None:
        """Serve until ``stop`` is set (or returns True) or ``max_sessions`` more sessions
        ended; a :class:`Fatal` request raises its cause (the sessions stay, for the next
        run); a failure of the link to the other servers propagates (the caller reconnects
        and calls :meth:`abort_all`)."""
        self._stop = (stop.is_set if isinstance(stop, threading.Event) else
                      stop if stop is not None else (lambda: False))
        self._max_sessions = None if max_sessions is None else self.ended + max_sessions
        last = time.monotonic()
        while True:
            if self.leading:
                stopping = self._stopping()
                step = self._plan() if not stopping else Step()
                if step.empty and not stopping and (
                        self.servers is None or time.monotonic() - last < HEARTBEAT_S):
                    time.sleep(_POLL_S)
                    continue
                if self.servers is not None:
                    with self.servers.op("step"):
                        for p in self.peers:
                            self.servers.send(p, step.encode())
                for t in step.reject:
                    self._turn_away(t)
                # a session whose second link never came would hold its socket for ever
                for who in self.listener.expire_users(2 * self.topology.connect_timeout):
                    self._log(f"user {who} opened one of its two links only; dropped")
            else:
                assert self.servers is not None
                with self.servers.op("step"):
                    step = Step.decode(self.servers.recv(self.leader,
                                                         timeout=self.topology.timeout))
                for t in step.reject:
                    self.listener.drop_user(t)
                self.listener.expire_users(2 * self.topology.connect_timeout)
            last = time.monotonic()
            if self._run_step(step):
                return

    def _stopping(self) -> bool:
        done = self._max_sessions is not None and self.ended >= self._max_sessions
        return done or self._stop()

    # ------------------------------------------------------------------ planning (leader)
    def _plan(self) -> Step:
        step = Step()
        room = self.topology.max_users - len(self.users)
        for t in self.listener.user_tokens():
            if room > 0:
                step.admit.append(t)
                room -= 1
            else:
                step.reject.append(t)
        now = time.monotonic()
        order = list(self.users.values())
        if order:
            k = self._rr % len(order)
            order = order[k:] + order[:k]
        ready = [u for u in order if u.links.pending(USER_PEER)]
        for u in order:
            if u not in ready and now - u.last > self.topology.timeout:
                step.drop.append(u.token)
        if ready and self.topology.batching:
            if self.topology.batch_wait_ms and len(ready) < len(order):
                deadline = now + self.topology.batch_wait_ms / 1000
                while time.monotonic() < deadline and len(ready) < len(order):
                    time.sleep(_POLL_S)
                    ready = [u for u in order if u.links.pending(USER_PEER)]
            total = 0
            for u in ready:
                b = self.handler.batch_of(u)
                if step.serve and total + b > self.handler.max_batch:
                    break
                step.serve.append(u.token)
                total += b
        elif ready:
            step.serve.append(ready[0].token)
        if step.serve:
            self._rr += len(step.serve)
        return step

    def _turn_away(self, token: bytes) -> None:
        arrival = self.listener.take_user(token, time.monotonic())
        if arrival is None:
            return
        links = server_side(self.topology, self.party_id, arrival, self.user_frame)
        verb = "serve" if self.servers is not None else "serves"
        why = (f"busy: {self.handler.what} {verb} at most {self.topology.max_users} users at "
               "once ([service] max_users) and all are in use; try again later")
        self._log(f"refused user {arrival.identity}: {why}")
        self._count("busy")
        links.abort(why)
        links.close()

    # ------------------------------------------------------------------ one step
    def _agree(self, mine: list[int]) -> dict[int, list[int]]:
        if self.servers is None:
            return {}
        with self.servers.op("status"):
            got = self.servers.exchange(
                dict.fromkeys(self.peers, torch.tensor(mine, dtype=torch.int64)))
        theirs = {p: t.tolist() for p, t in got.items()}
        for p, v in theirs.items():
            if len(v) != len(mine):
                raise FrameError(f"server {p} ran a different step ({len(v)} status words, "
                                 f"expected {len(mine)})")
        return theirs

    def _run_step(self, step: Step) -> bool:
        """One step at this server; True when the loop must end (a server is stopping)."""
        patience = 0.0 if self.leading else min(self.topology.connect_timeout, 5.0)
        arrivals: list[tuple[bytes, UserArrival | None, bool]] = []
        for t in step.admit:
            a = self.listener.take_user(t, time.monotonic() + patience)
            arrivals.append((t, a, a is not None and a.digest == self._digest))
        reads = [self.handler.read(self.users[t]) if t in self.users else
                 Read(GONE, "unknown session") for t in step.serve]
        mine = [int(self._stopping())] + [int(ok) for _, _, ok in arrivals] + \
            [r.verdict for r in reads]
        theirs = self._agree(mine)
        stopping = [self.party_id] * mine[0] + [p for p, v in theirs.items() if v[0]]
        for i, (t, a, ok) in enumerate(arrivals):
            missing = [p for p, v in theirs.items() if not v[1 + i]]
            if ok and not missing:
                assert a is not None
                self._admit(t, a)
            elif a is not None:
                self._refuse_arrival(a, ok, missing)
        for t in step.drop:
            u = self.users.get(t)
            if u is not None:
                self._end(u, f"session idle for more than {self.topology.timeout:.0f} s "
                          "(the session timeout); closed")
        batch: list[tuple[UserSession, Read]] = []
        n0 = 1 + len(arrivals)
        for j, t in enumerate(step.serve):
            r = reads[j]
            others = {p: v[n0 + j] for p, v in theirs.items()}
            u = self.users.get(t)
            if u is None:
                continue
            u.last = time.monotonic()
            if any(v != r.verdict for v in others.values()):
                here = f"; server {self.party_id}: {r.why}" if r.verdict < 0 and r.why else ""
                verdicts = dict(sorted({**others, self.party_id: r.verdict}.items()))
                self._refuse(u, f"the servers received different requests from user "
                             f"{u.identity} (verdicts {verdicts}){here}; refused")
            elif r.verdict == GOODBYE:
                self._reply(u, r.request_id, [])
                self._log(f"session ended after {u.requests} requests (user {u.identity})")
                self._end(u, None)
            elif r.verdict == GONE:
                self._log(f"session aborted: {r.why}")
                self._end(u, None)
            elif r.verdict < 0:
                self._refuse(u, r.why)
            else:
                batch.append((u, r))
        if batch:
            self._handle(batch)
        if stopping:
            names = ", ".join(self._name(p) for p in sorted(set(stopping)))
            for u in list(self.users.values()):
                self._end(u, f"{names} is shutting down; this session ended after "
                          f"{u.requests} requests")
            return True
        return False

    def _name(self, party: int) -> str:
        return f"server {party}" if self.servers is not None else self.handler.what

    def _refuse_arrival(self, a: UserArrival, ok: bool, missing: list[int]) -> None:
        links = server_side(self.topology, self.party_id, a, self.user_frame)
        if self.leading:
            if not ok and a.digest != self._digest:
                why = "this session's links are for another deployment (topology)"
            else:
                who = ", ".join(map(str, missing or [self.party_id]))
                why = (f"server(s) {who} did not receive this session's links (or saw "
                       "another deployment's); retry")
            self._log(f"refused user {a.identity}: {why}")
            links.abort(why)
        links.close()

    def _admit(self, token: bytes, a: UserArrival) -> None:
        links = server_side(self.topology, self.party_id, a, self.user_frame)
        u = UserSession(token, a.identity, Session(links, timeout=self.topology.timeout,
                                                   role="server"), links)
        self.users[token] = u
        self._count("sessions")
        self._log(f"session {token.hex()[:8]} with user {a.identity} ({len(self.users)} "
                  "active)")
        try:
            for t in self.handler.open(u):
                u.session.send(USER_PEER, t)
        except SecinferNetError as e:  # in a group, the others see it as a user gone
            self._log(f"user {u.tag} left before its welcome: {e}")

    def _handle(self, batch: list[tuple[UserSession, Read]]) -> None:
        try:
            replies = self.handler.handle(batch)
        except Fatal as f:
            for u, r in batch:
                try:
                    rpc.refuse(u.session, USER_PEER, r.request_id, f.why)
                except SecinferNetError:
                    pass
                self._end(u, f.why)
            raise f.cause from None
        done = time.monotonic()  # a session is idle from its reply on, not from its request
        for (u, r), out in zip(batch, replies, strict=True):
            u.last = done
            if isinstance(out, RequestRefused):
                self._count("refused")
                try:
                    rpc.refuse(u.session, USER_PEER, r.request_id, out.reason)
                except SecinferNetError:
                    self._end(u, None)
            else:
                u.requests += 1
                if out is not None:
                    self._reply(u, r.request_id, out)

    def _reply(self, u: UserSession, request_id: int, out: list[torch.Tensor]) -> None:
        try:
            rpc.reply(u.session, USER_PEER, request_id, out)
        except SecinferNetError as e:  # after the compute: the servers stay in step
            self._log(f"user {u.tag} left before its reply: {e}")

    def _refuse(self, u: UserSession, why: str) -> None:
        self._count("refused")
        self._log(f"session aborted (user {u.tag}): {why}")
        self._end(u, why)

    def _end(self, u: UserSession, why: str | None) -> None:
        """End a session; ``why`` (if any) reaches the user as an abort reason."""
        if self.users.pop(u.token, None) is None:
            return
        if why is not None:
            u.links.abort(why)
        u.session.close()
        self.ended += 1
        if self.on_session_end is not None:
            self.on_session_end(u)

    def abort_all(self, why: str) -> None:
        """End every session with ``why`` (the caller's state failed)."""
        for u in list(self.users.values()):
            self._end(u, why)

    close = abort_all

    def _count(self, what: str) -> None:
        if self.metrics is not None:
            self.metrics.count(what)
