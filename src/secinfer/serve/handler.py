"""The MPC servers behind the one serve loop (:class:`secinfer.net.service.ServeLoop`).

The three servers run the loop in lock-step, P0 leading (it plans every step and the others
follow, :mod:`secinfer.net.service`), so their shared session never falls out of step. This
handler is what is MPC about it:

1. **welcome** (P0 only): the fixed-point precision and input shape, the output policy, the
   limits and the user's quota left, the input range, and every input shape served;
2. **read**: each server reads the user's request header (the one request/reply protocol,
   :mod:`secinfer.net.rpc`: request id, op :data:`OP_INFER`, tensor count), the shape header
   ``[batch, *shape]`` and (P0, P1) the user's input share, and forms its verdict: the batch
   and program (``batch + entry * ENTRY_STRIDE``) if it accepts; a malformed header, a batch
   over ``max_batch``, a quota exceeded or a share of the wrong shape is refused with the
   reason (the three verdicts must agree, or the request is refused as inconsistent);
3. **handle**: the users' quotas are charged, their shares concatenated into one batch per
   program, run through the model once, and each user gets its own output rows from P0 and
   P1 (the helper sends nothing).

What each server learns beyond one user's session: which users are active, when, and how
many inputs each sends; batching mixes users only in the servers' own shares.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import ProtocolError
from ..mpc import MPCEngine, Share
from ..net import FrameError, SecinferNetError, rpc
from ..net.service import GONE, GOODBYE, Read, Reply, UserSession
from ..net.userlink import USER_PEER
from .limits import ServeLimits

__all__ = ["MpcHandler", "OP_INFER", "Welcome", "entries_message", "parse_entries"]

OP_INFER = 1  # a user's one op (net.rpc.BYE ends its session)
# refused verdicts (the loop ends the session with the reason); GOODBYE and GONE are the loop's
MALFORMED, OVER_BATCH, OVER_QUOTA, BAD_SHARE = -1, -2, -3, -4
_HEADER_WAIT_S = 5.0

log = logging.getLogger(__name__)


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
    """The input shapes of :func:`entries_message` (the user's side); ValueError if malformed."""
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


class MpcHandler:
    """One MPC server's side of every user request (see the module docstring)."""

    what = "the servers"

    def __init__(self, party_id: int, engine: MPCEngine,
                 forward: Callable[[Share, int], torch.Tensor], limits: ServeLimits,
                 welcome: Welcome, quota_left: Callable[[str], int | None],
                 charge: Callable[[str, int], None], quota: int | None = None,
                 timeout: float = _HEADER_WAIT_S, metrics: object | None = None) -> None:
        self.party_id, self.engine, self.forward = party_id, engine, forward
        self.limits, self.welcome = limits, welcome
        self.quota_left, self.charge, self.quota = quota_left, charge, quota
        self.header_wait = min(timeout, _HEADER_WAIT_S)
        self.metrics = metrics
        self.max_batch = limits.max_batch

    def open(self, user: UserSession) -> list[torch.Tensor]:
        if self.engine.role != 0:
            return []
        w = self.welcome
        left = self.quota_left(user.identity)
        return [torch.tensor([w.frac_bits, *w.shape], dtype=torch.int64),
                torch.tensor([w.policy_code, w.k, self.limits.max_batch,
                              -1 if left is None else left, w.classes], dtype=torch.int64),
                torch.tensor(w.input_range, dtype=torch.float64),
                entries_message(w.all_entries())]

    def batch_of(self, user: UserSession) -> int:
        item = user.links.peek(USER_PEER, 1)  # after the request header: [batch, *shape]
        if isinstance(item, tuple):
            h = item[0]
            if h.dtype == torch.int64 and h.dim() == 1 and h.numel() >= 1:
                return max(1, int(h[0]))
        return 1

    def read(self, user: UserSession) -> Read:
        """This server's verdict on the user's next request, why, and its input share."""
        name, s, wait = user.identity, user.session, self.header_wait
        try:
            head = s.recv(USER_PEER, timeout=wait)
        except FrameError as e:
            return Read(MALFORMED, f"malformed request header: {e}")
        except SecinferNetError as e:  # left, aborted, disconnected, timed out
            return Read(GONE, f"user {name} left: {e}")
        try:
            rid, op, n = rpc.parse_request_header(head)
        except ProtocolError as e:
            return Read(MALFORMED, f"malformed request header: {e}")
        if op == rpc.BYE:
            return Read(GOODBYE, request_id=rid)
        want = 1 if self.engine.is_helper else 2  # [batch, *shape], then this server's share
        if op != OP_INFER or n != want:
            return Read(MALFORMED, f"request op {op} with {n} tensors; server "
                        f"{self.party_id} takes op {OP_INFER} (infer) with {want}")
        try:
            header = s.recv(USER_PEER, timeout=wait)
        except FrameError as e:
            return Read(MALFORMED, f"malformed request header: {e}")
        except SecinferNetError as e:
            return Read(GONE, f"user {name} left: {e}")
        if header.dtype != torch.int64 or header.dim() != 1:
            return Read(MALFORMED, f"request header must be a 1-d int64 tensor, got "
                        f"{tuple(header.shape)} {header.dtype}")
        got = tuple(int(v) for v in header.tolist())
        entries = self.welcome.all_entries()
        if len(got) < 2 or got[1:] not in entries or got[0] < 1:
            takes = " or ".join(f"[batch, {', '.join(map(str, e))}]" for e in entries)
            return Read(MALFORMED, f"user {name} asked for input {got}; the model takes "
                        f"{takes}")
        batch = got[0]
        entry = entries.index(got[1:])
        shape = entries[entry]
        if batch > self.limits.max_batch:
            return Read(OVER_BATCH, f"batch of {batch} exceeds the limit max_batch = "
                        f"{self.limits.max_batch}")
        left = self.quota_left(name)
        if left is not None and batch > left:
            return Read(OVER_QUOTA, f"query quota exceeded: user {name} has {left} of its "
                        f"quota of {self.quota} queries left and asked for {batch}")
        verdict = batch + entry * ENTRY_STRIDE
        if self.engine.is_helper:
            return Read(verdict, request_id=rid)
        try:
            data = s.recv(USER_PEER)
        except FrameError as e:
            return Read(BAD_SHARE, str(e))
        except SecinferNetError as e:
            return Read(GONE, f"user {name} left: {e}")
        if tuple(data.shape) != (batch, *shape) or data.dtype != torch.int64:
            return Read(BAD_SHARE, f"user {name} sent a share of {tuple(data.shape)} "
                        f"{data.dtype}, expected {(batch, *shape)} int64")
        return Read(verdict, request_id=rid, request=data)

    def handle(self, batch: list[tuple[UserSession, Read]]) -> list[Reply]:
        """Run the accepted requests, one batch per entry (program), in entry order."""
        replies: dict[int, Reply] = {}
        for entry in sorted({r.verdict // ENTRY_STRIDE for _, r in batch}):
            idx = [i for i, (_, r) in enumerate(batch) if r.verdict // ENTRY_STRIDE == entry]
            for i, out in zip(idx, self._entry(entry, [batch[i] for i in idx]), strict=True):
                replies[i] = out
        return [replies[i] for i in range(len(batch))]

    def _entry(self, entry: int, batch: list[tuple[UserSession, Read]]) -> list[Reply]:
        sizes = [r.verdict % ENTRY_STRIDE for _, r in batch]
        total = sum(sizes)
        shape = self.welcome.all_entries()[entry]
        t0 = time.perf_counter()
        for (u, _), b in zip(batch, sizes, strict=True):
            self.charge(u.identity, b)
        if self.engine.is_helper:
            x = self.engine.placeholder((total, *shape), self.engine.f)
        else:
            x = Share(torch.cat([r.request for _, r in batch]), self.engine.f)
        out = self.forward(x, entry)
        seconds = time.perf_counter() - t0
        replies: list[Reply] = []
        start = 0
        for (u, _), rows in zip(batch, sizes, strict=True):
            replies.append(None if self.engine.is_helper else [out[start:start + rows]])
            start += rows
            log.info("request %s-%d (batch %d of a step of %d inputs, %d users) in %.3f s",
                     u.tag, u.requests + 1, rows, total, len(batch), seconds)
        if self.metrics is not None:
            self.metrics.observe_step(len(batch), total, seconds)  # type: ignore[attr-defined]
        return replies


def nan_range(rng: list[float] | None) -> tuple[float, float]:
    return (float(rng[0]), float(rng[1])) if rng else (math.nan, math.nan)
