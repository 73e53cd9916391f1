"""The servers' step loop: many users at once, in lock-step, scheduled by P0.

Users dial in (:mod:`secinfer.net.userlink`); their sessions wait in each server's listener
until P0 admits them. P0 alone decides what happens next and tells P1 and the helper in a
*step* message; then all three run the step identically, so their shared session (seeds,
op counters, correlated randomness) never falls out of step:

1. P0 picks the step: user sessions to admit (oldest first, while fewer than
   ``[service] max_users`` are active), sessions to turn away as busy (over that limit: P0
   tells the user "busy" itself), idle sessions to drop, and the active users whose next
   request has arrived, in round-robin order after the last one served. With
   ``[service] batching`` every waiting user's request joins one batch (up to
   ``[limits] max_batch`` inputs, optionally waiting ``batch_wait_ms`` for more); without
   it, one user per step. With nothing to do P0 still sends an empty step every second: a
   heartbeat by which P1 and the helper tell a frozen P0 from an idle one.
2. Each server takes the admitted users' links from its listener (P1 and the helper wait
   briefly for links still in flight) and reads each scheduled user's request (the one
   request/reply protocol, :mod:`secinfer.net.rpc`: request id, op, the shape header) and
   (P0, P1) input share, forming its verdict as in :func:`.server._read_request`.
3. One round: every server sends the others ``[stopping, admitted ok..., verdicts...]``.
4. All apply the same outcome: a user admitted only where all three hold its links gets
   P0's welcome (else P0 says which server missed it); a request all three accept joins
   the batch; different verdicts or a refusal end that user's session with the reason (it
   reaches the user); a goodbye or a vanished user ends it quietly. The batch runs through
   the model once; each user receives only its own rows, from P0 and P1.
5. A server that is stopping (SIGTERM) sets its flag: after this step every user session
   ends with that reason and the loop returns.

Cost per step: one step message from P0 (``8 * (5 + 2 * tokens)`` bytes) and one status
round among the three servers, on top of the model's own rounds; a batch of B users costs
the model's rounds once instead of B times.

What each server learns beyond one user's session: which users are active, when, and how
many inputs each sends (as before); batching mixes users only in the servers' own shares.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import ProtocolError
from ..mpc import MPCEngine, Share
from ..net import FrameError, Listener, SecinferNetError, Session, Topology, rpc
from ..net.userlink import USER_PEER, UserLinks, server_side, user_digest
from .limits import ServeLimits

__all__ = ["UserConn", "StepLoop", "Step"]

log = logging.getLogger(__name__)

# a server's verdict on one request: the batch (> 0) if it accepts, else one of these
GOODBYE, MALFORMED, OVER_BATCH, OVER_QUOTA, BAD_SHARE, USER_GONE = 0, -1, -2, -3, -4, -5
HEARTBEAT_S = 1.0
OP_INFER = 1  # a user's one op (net.rpc.BYE ends its session)
_POLL_S = 0.002


def _words(token: bytes) -> list[int]:
    return torch.frombuffer(bytearray(token), dtype=torch.int64).tolist()


def _token(words: list[int]) -> bytes:
    return torch.tensor(words, dtype=torch.int64).numpy().tobytes()


@dataclass
class Step:
    """What P0 decided: lists of 16-byte user session tokens."""

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


@dataclass
class UserConn:
    """One admitted user session at one server."""

    token: bytes
    identity: str
    session: Session
    links: UserLinks
    requests: int = 0
    last_active: float = field(default_factory=time.monotonic)
    request_id: int = 0  # of the request being served (its reply carries it)

    @property
    def tag(self) -> str:
        return f"{self.identity}/{self.token.hex()[:8]}"

    def end(self, why: str | None) -> None:
        """End the session; ``why`` (if any) reaches the user as an abort with that reason."""
        if why is not None:
            self.links.abort(why)
        self.session.close()


@dataclass
class Welcome:
    """P0's first messages to an admitted user (see :mod:`.server`)."""

    frac_bits: int
    shape: tuple[int, ...]
    policy_code: int
    k: int
    classes: int
    input_range: tuple[float, float]
    # every input shape the servers take (one program each); the first is ``shape``
    entries: tuple[tuple[int, ...], ...] = ()

    def all_entries(self) -> tuple[tuple[int, ...], ...]:
        return self.entries or (self.shape,)


# an accepted verdict of a request for entry e with b inputs is b + e * ENTRY_STRIDE, so the
# three servers' agreement covers the entry too
ENTRY_STRIDE = 1 << 32


def entries_message(entries: tuple[tuple[int, ...], ...]) -> torch.Tensor:
    """P0's fourth welcome message: int64 [E, len(shape_0), *shape_0, len(shape_1), ...]."""
    flat = [len(entries)]
    for e in entries:
        flat += [len(e), *e]
    return torch.tensor(flat, dtype=torch.int64)


def parse_entries(t: torch.Tensor) -> tuple[tuple[int, ...], ...]:
    v = [int(x) for x in t.tolist()]
    if not v or v[0] < 1:
        raise ValueError(f"bad entries message {v[:8]}")
    out, i = [], 1
    for _ in range(v[0]):
        n = v[i]
        out.append(tuple(v[i + 1:i + 1 + n]))
        i += 1 + n
    if i != len(v):
        raise ValueError(f"bad entries message {v[:8]}")
    return tuple(out)


class StepLoop:
    """Runs steps until stopped; the same object at every server (P0 also plans)."""

    def __init__(self, topology: Topology, party_id: int, listener: Listener, servers: Session,
                 engine: MPCEngine, forward: Callable[[Share, int], torch.Tensor],
                 limits: ServeLimits, welcome: Welcome, quota_left: Callable[[str], int | None],
                 charge: Callable[[str, int], None], stop: threading.Event | None,
                 metrics: object | None = None, max_sessions: int | None = None,
                 on_session_end: Callable[[UserConn], None] | None = None,
                 quota: int | None = None) -> None:
        self.topology, self.party_id, self.listener = topology, party_id, listener
        self.servers, self.engine, self.forward = servers, engine, forward
        self.limits, self.welcome = limits, welcome
        self.quota_left, self.charge, self.quota = quota_left, charge, quota
        self.stop, self.metrics = stop, metrics
        self.max_sessions = max_sessions
        self.on_session_end = on_session_end
        self.active: dict[bytes, UserConn] = {}
        self.ended = 0
        self._rr = 0  # round-robin position among active users
        self._digest = user_digest(topology)
        self.user_frame = limits.user_frame

    # ------------------------------------------------------------------ planning (P0)
    def _stopping(self) -> bool:
        done = self.max_sessions is not None and self.ended >= self.max_sessions
        return done or (self.stop is not None and self.stop.is_set())

    def _batch_of(self, conn: UserConn) -> int:
        item = conn.links.peek(USER_PEER, 1)  # after the request header: [batch, *shape]
        if isinstance(item, tuple):
            h = item[0]
            if h.dtype == torch.int64 and h.dim() == 1 and h.numel() >= 1:
                return max(1, int(h[0]))
        return 1

    def _plan(self) -> Step:
        step = Step()
        waiting = self.listener.user_tokens()
        room = self.topology.max_users - len(self.active)
        for t in waiting:
            if room > 0:
                step.admit.append(t)
                room -= 1
            else:
                step.reject.append(t)
        now = time.monotonic()
        order = list(self.active.values())
        if order:
            k = self._rr % len(order)
            order = order[k:] + order[:k]
        ready = [c for c in order if c.links.pending(USER_PEER)]
        for c in order:
            if c not in ready and now - c.last_active > self.topology.timeout:
                step.drop.append(c.token)
        if ready and self.topology.batching:
            if self.topology.batch_wait_ms and len(ready) < len(order):
                deadline = now + self.topology.batch_wait_ms / 1000
                while time.monotonic() < deadline and len(ready) < len(order):
                    time.sleep(_POLL_S)
                    ready = [c for c in order if c.links.pending(USER_PEER)]
            total = 0
            for c in ready:
                b = self._batch_of(c)
                if step.serve and total + b > self.limits.max_batch:
                    break
                step.serve.append(c.token)
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
        why = (f"busy: the servers serve at most {self.topology.max_users} users at once "
               f"([service] max_users) and all are in use; try again later")
        log.warning("user %s turned away: %s", arrival.identity, why)
        self._count("busy")
        links.abort(why)
        links.close()

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        """Until stopping; a server-link failure propagates (the caller reconnects)."""
        last = time.monotonic()
        while True:
            if self.engine.role == 0:
                step = self._plan() if not self._stopping() else Step()
                if step.empty and not self._stopping() and \
                        time.monotonic() - last < HEARTBEAT_S:
                    time.sleep(_POLL_S)
                    continue
                with self.servers.op("step"):
                    for p in self.servers.peers:
                        self.servers.send(p, step.encode())
                for t in step.reject:
                    self._turn_away(t)
                # a session whose second link never came would hold its socket for ever
                for who in self.listener.expire_users(2 * self.topology.connect_timeout):
                    log.warning("user %s: dropped a session whose links never all arrived", who)
            else:
                with self.servers.op("step"):
                    step = Step.decode(self.servers.recv(0, timeout=self.topology.timeout))
                for t in step.reject:
                    self.listener.drop_user(t)
                self.listener.expire_users(2 * self.topology.connect_timeout)
            last = time.monotonic()
            if self._run_step(step):
                return

    def _run_step(self, step: Step) -> bool:
        """One step at this server; True when the loop must end (a server is stopping)."""
        patience = 0.0 if self.engine.role == 0 else min(self.topology.connect_timeout, 5.0)
        arrivals = []
        for t in step.admit:
            a = self.listener.take_user(t, time.monotonic() + patience)
            ok = a is not None and a.digest == self._digest
            arrivals.append((t, a, ok))
        reads = [self._read_request(self.active[t]) if t in self.active else
                 (USER_GONE, "unknown session", None) for t in step.serve]
        mine = [int(self._stopping())] + [int(ok) for _, _, ok in arrivals] + \
            [v for v, _, _ in reads]
        with self.servers.op("status"):
            got = self.servers.exchange(
                dict.fromkeys(self.servers.peers, torch.tensor(mine, dtype=torch.int64)))
        theirs = {p: t.tolist() for p, t in got.items()}
        for p, v in theirs.items():
            if len(v) != len(mine):
                raise FrameError(f"server {p} ran a different step ({len(v)} status words, "
                                 f"expected {len(mine)})")
        stopping = [self.party_id] * mine[0] + [p for p, v in theirs.items() if v[0]]
        # admissions
        for i, (t, a, ok) in enumerate(arrivals):
            missing = [p for p, v in theirs.items() if not v[1 + i]]
            if ok and not missing:
                self._admit(t, a)
            else:
                if a is not None:
                    links = server_side(self.topology, self.party_id, a, self.user_frame)
                    if self.engine.role == 0:
                        who = missing or [self.party_id]
                        links.abort(f"server(s) {', '.join(map(str, who))} did not receive "
                                    "this session's links (or saw another topology); retry")
                    links.close()
        # drops decided by P0 (idle)
        for t in step.drop:
            conn = self.active.pop(t, None)
            if conn is not None:
                self._end(conn, f"session idle for more than {self.topology.timeout:.0f} s "
                          "(the session timeout); closed")
        # requests
        batch: list[tuple[UserConn, int, torch.Tensor | None]] = []
        n0 = 1 + len(arrivals)
        for j, t in enumerate(step.serve):
            verdict, why, data = reads[j]
            others = {p: v[n0 + j] for p, v in theirs.items()}
            conn = self.active.get(t)
            if conn is None:
                continue
            conn.last_active = time.monotonic()
            if any(v != verdict for v in others.values()):
                here = f"; server {self.party_id}: {why}" if verdict < 0 and why else ""
                verdicts = dict(sorted({**others, self.party_id: verdict}.items()))
                self._refuse(conn, f"the servers received different requests from user "
                             f"{conn.identity} (verdicts {verdicts}){here}; refused")
            elif verdict in (GOODBYE, USER_GONE):
                if verdict == USER_GONE:
                    log.warning("%s", why)
                self._end(self.active.pop(t), None)
            elif verdict < 0:
                self._refuse(conn, why)
            else:
                batch.append((conn, verdict, data))
        if batch:
            self._compute(batch)
        if stopping:
            names = ", ".join(f"server {p}" for p in sorted(set(stopping)))
            for conn in list(self.active.values()):
                self._end(conn, f"{names} is shutting down; this session ended after "
                          f"{conn.requests} requests")
            self.active.clear()
            return True
        return False

    def _admit(self, token: bytes, arrival) -> None:
        links = server_side(self.topology, self.party_id, arrival, self.user_frame)
        session = Session(links, timeout=self.topology.timeout, role="server")
        conn = UserConn(token, arrival.identity, session, links)
        self.active[token] = conn
        self._count("sessions")
        log.info("user %s admitted (%d active)", conn.tag, len(self.active))
        if self.engine.role != 0:
            return
        w = self.welcome
        left = self.quota_left(conn.identity)
        try:
            session.send(USER_PEER, torch.tensor([w.frac_bits, *w.shape], dtype=torch.int64))
            session.send(USER_PEER, torch.tensor(
                [w.policy_code, w.k, self.limits.max_batch, -1 if left is None else left,
                 w.classes], dtype=torch.int64))
            session.send(USER_PEER, torch.tensor(w.input_range, dtype=torch.float64))
            session.send(USER_PEER, entries_message(w.all_entries()))
        except SecinferNetError as e:  # the others will see it as a user gone
            log.warning("user %s left before its welcome: %s", conn.tag, e)

    def _end(self, conn: UserConn, why: str | None) -> None:
        self.active.pop(conn.token, None)
        conn.end(why)
        self.ended += 1
        log.info("user %s done (%d requests)%s", conn.tag, conn.requests,
                 f": {why}" if why else "")
        if self.on_session_end is not None:
            self.on_session_end(conn)

    def _refuse(self, conn: UserConn, why: str) -> None:
        self._count("refused")
        log.warning("user %s refused: %s", conn.tag, why)
        self._end(conn, why)

    def abort_all(self, why: str) -> None:
        for conn in list(self.active.values()):
            self._end(conn, why)
        self.active.clear()

    # ------------------------------------------------------------------ requests
    def _read_request(self, conn: UserConn) -> tuple[int, str, torch.Tensor | None]:
        """This server's verdict on the user's next request, why, and its input share."""
        user, s = conn.identity, conn.session
        header_wait = min(self.topology.timeout, 5.0)
        try:
            head = s.recv(USER_PEER, timeout=header_wait)
        except FrameError as e:
            return MALFORMED, f"malformed request header: {e}", None
        except SecinferNetError as e:  # left, aborted, disconnected, timed out
            return USER_GONE, f"user {user} left: {e}", None
        try:
            rid, op, n = rpc.parse_request_header(head)
        except ProtocolError as e:
            return MALFORMED, f"malformed request header: {e}", None
        if op == rpc.BYE:
            return GOODBYE, "", None
        want = 1 if self.engine.is_helper else 2  # [batch, *shape], then this server's share
        if op != OP_INFER or n != want:
            return MALFORMED, (f"request op {op} with {n} tensors; server {self.party_id} "
                               f"takes op {OP_INFER} (infer) with {want}"), None
        conn.request_id = rid
        try:
            header = s.recv(USER_PEER, timeout=header_wait)
        except FrameError as e:
            return MALFORMED, f"malformed request header: {e}", None
        except SecinferNetError as e:
            return USER_GONE, f"user {user} left: {e}", None
        if header.dtype != torch.int64 or header.dim() != 1:
            return MALFORMED, (f"request header must be a 1-d int64 tensor, got "
                               f"{tuple(header.shape)} {header.dtype}"), None
        got = tuple(int(v) for v in header.tolist())
        entries = self.welcome.all_entries()
        if len(got) < 2 or got[1:] not in entries or got[0] < 1:
            takes = " or ".join(f"[batch, {', '.join(map(str, e))}]" for e in entries)
            return MALFORMED, (f"user {user} asked for input {got}; the model takes "
                               f"{takes}"), None
        batch = got[0]
        entry = entries.index(got[1:])
        shape = entries[entry]
        if batch > self.limits.max_batch:
            return OVER_BATCH, (f"batch of {batch} exceeds the limit max_batch = "
                                f"{self.limits.max_batch}"), None
        left = self.quota_left(user)
        if left is not None and batch > left:
            return (OVER_QUOTA, (f"query quota exceeded: user {user} has {left} of its "
                                f"quota of {self.quota} queries left and asked for {batch}"),
                    None)
        verdict = batch + entry * ENTRY_STRIDE
        if self.engine.is_helper:
            return verdict, "", None
        try:
            data = s.recv(USER_PEER)
        except FrameError as e:
            return BAD_SHARE, str(e), None
        except SecinferNetError as e:
            return USER_GONE, f"user {user} left: {e}", None
        if tuple(data.shape) != (batch, *shape) or data.dtype != torch.int64:
            return BAD_SHARE, (f"user {user} sent a share of {tuple(data.shape)} {data.dtype}, "
                               f"expected {(batch, *shape)} int64"), None
        return verdict, "", data

    def _compute(self, batch: list[tuple[UserConn, int, torch.Tensor | None]]) -> None:
        """Run the accepted requests, one batch per entry (program), in entry order."""
        for entry in sorted({v // ENTRY_STRIDE for _, v, _ in batch}):
            self._compute_entry(entry, [(c, v % ENTRY_STRIDE, d) for c, v, d in batch
                                        if v // ENTRY_STRIDE == entry])

    def _compute_entry(self, entry: int,
                       batch: list[tuple[UserConn, int, torch.Tensor | None]]) -> None:
        sizes = [b for _, b, _ in batch]
        total = sum(sizes)
        shape = self.welcome.all_entries()[entry]
        t0 = time.perf_counter()
        for conn, b, _ in batch:
            self.charge(conn.identity, b)
        if self.engine.is_helper:
            x = self.engine.placeholder((total, *shape), self.engine.f)
        else:
            x = Share(torch.cat([d for _, _, d in batch if d is not None]), self.engine.f)
        out = self.forward(x, entry)
        seconds = time.perf_counter() - t0
        start = 0
        for (conn, b, _), rows in zip(batch, sizes, strict=True):
            piece = out[start:start + rows]
            start += rows
            conn.requests += 1
            if not self.engine.is_helper:
                try:
                    rpc.reply(conn.session, USER_PEER, conn.request_id, [piece])
                except SecinferNetError as e:  # after the compute: the servers stay in step
                    log.warning("user %s left before its result: %s", conn.tag, e)
            log.info("request %s-%d (batch %d of a step of %d inputs, %d users) in %.3f s",
                     conn.tag, conn.requests, b, total, len(batch), seconds)
        if self.metrics is not None:
            self.metrics.observe_step(len(batch), total, seconds)  # type: ignore[attr-defined]

    def _count(self, what: str) -> None:
        if self.metrics is not None:
            self.metrics.count(what)  # type: ignore[attr-defined]


def nan_range(rng: list[float] | None) -> tuple[float, float]:
    return (float(rng[0]), float(rng[1])) if rng else (math.nan, math.nan)
