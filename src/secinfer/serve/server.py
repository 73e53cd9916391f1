"""A long-lived compute party (P0, P1) or helper (P2) that answers many users' requests.

The three servers keep one session among themselves: seeds are agreed, the output policy and
limits are compared (they must be equal at all three), and every weight's Beaver mask is
opened once, when the session starts (again after a reconnect). Users dial in (they open no
port: :mod:`secinfer.net.userlink`); any certificate with role ``user`` from the topology's CA
is served. The three run the one serve loop (:class:`secinfer.net.service.ServeLoop`) in
lock-step, P0 leading: admission, round-robin, dynamic batching, "busy" over
``[service] max_users``, idle sessions dropped after the session timeout; what is MPC about a
request is :class:`.handler.MpcHandler`.

Per request a user sends a header ``[batch, *input_shape]`` to all three servers, its input
shares to P0 and P1, and receives from P0 and P1 the shares of what the owner's output policy
lets it see (logits, top-k indices, or the label: see :mod:`.output`), each framed by the
request/reply protocol (:mod:`secinfer.net.rpc`); a ``bye`` request ends the session. Only
the user can reconstruct.

Before computing, the three servers agree on every request: each sends the others its verdict
(the batch, or why it refuses: malformed header, batch over ``max_batch``, query quota spent,
bad share, user gone). Only if all three verdicts are the same accepted batch do they run the
model; otherwise every server refuses, so a user that sends different headers to different
servers (or one oversize frame to one server) cannot push the servers' shared session out of
step. A refusal ends that user's session with an abort whose message (the limit and the
value) reaches the user; the servers go on serving everyone else.

Wire messages of a user session (framed by the runtime):
    P0 -> user on admission:  int64 [frac_bits, *input_shape]
    P0 -> user on admission:  int64 [mode (0 logits, 1 topk, 2 label), k, max_batch,
                              queries left (-1: unlimited), outputs per input]
    P0 -> user on admission:  float64 [lo, hi], the owner's valid input range
                              (NaN, NaN: none was stated at compile time)
    P0 -> user on admission:  int64 [E, n_0, *shape_0, n_1, *shape_1, ...]: the input shapes
                              the servers take (E programs, e.g. CLIP's image and text
                              towers; a CNN or an encoder has one)
    requests and replies are the one request/reply protocol (:mod:`secinfer.net.rpc`):
    user -> P0, P1, P2:       request header [magic, version, id, op infer, n] (op bye:
                              goodbye), then int64 [batch, *shape_e] (the shape says which
                              program)
    user -> P0 / P1:          then the int64 input share [batch, *input_shape] (n = 2; the
                              helper's n = 1)
    P0 / P1 -> user:          reply header [magic, id, ok, 1], then the output share:
                              [batch, C] logits, [batch, k] or [batch]
    any server -> user:       an abort frame with the reason (busy, refused, a server failed,
                              shutting down, idle)
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import ConfigError
from ..models.bundle import OutputPolicy
from ..mpc import MPCConfig, MPCEngine, Share
from ..net import Listener, SecinferNetError, Session, Topology
from ..net.service import ServeLoop, UserSession
from .handler import MpcHandler, Welcome
from .limits import ServeLimits
from .metrics import ServiceMetrics
from .output import policy_output
from .served import Program, load_served

__all__ = ["serve", "SERVER_IDS", "QuotaBook", "layer_counters"]

log = logging.getLogger(__name__)
SERVER_IDS = (0, 1, 2)


@dataclass
class QuotaBook:
    """Queries (inputs) used per user identity; ``quota`` None is unlimited.

    Counts live in the server process: a restarted server starts from zero.
    """

    quota: int | None
    used: dict[str, int] = field(default_factory=dict)

    def left(self, user: str) -> int | None:
        return None if self.quota is None else self.quota - self.used.get(user, 0)

    def charge(self, user: str, n: int) -> None:
        self.used[user] = self.used.get(user, 0) + n


def serve(topology: Topology, party_id: int, bundle: str | Path, max_clients: int | None = None,
          report: str | Path | None = None, mpc_config: MPCConfig | None = None,
          policy: OutputPolicy | None = None, max_batch: int | None = None,
          max_frame_bytes: int | None = None, stop: threading.Event | None = None,
          metrics: ServiceMetrics | None = None) -> int:
    """Serve until ``max_clients`` user sessions have ended (forever if None). Returns count.

    Users are scheduled by P0 in steps (:mod:`secinfer.net.service`): up to
    ``[service] max_users`` at once, their requests batched. When another server fails
    (dies, freezes, drops a link) every user session in flight ends with an error naming it,
    and this server reconnects to the others with backoff and serves again once they are
    back: no restart needed.

    ``stop`` (set by ``secinfer serve`` on SIGTERM) drains: the step in flight is finished
    and answered, every user session then ends saying why, and the function returns.

    ``policy`` (the owner's serve config) overrides the bundle's output policy; the three
    servers must run the same one. Limits come from the topology's ``[limits]`` (see
    :mod:`.limits`), or from ``max_batch`` / ``max_frame_bytes`` here, which override it.
    """
    if party_id not in SERVER_IDS:
        raise ValueError(f"party {party_id} is not a server (servers are 0, 1 and 2)")
    for name, value in (("max_batch", max_batch), ("max_frame_bytes", max_frame_bytes)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if max_batch is not None:
        topology = replace(topology, max_batch=max_batch)
    if max_frame_bytes is not None:
        topology = replace(topology, max_frame_bytes=max_frame_bytes)
    served_prog = load_served(topology, party_id, bundle, policy, mpc_config)
    policy, cfg, limits = served_prog.policy, served_prog.mpc_config, served_prog.limits
    classes = served_prog.classes
    quota = QuotaBook(policy.quota)
    welcome = Welcome(served_prog.frac_bits, served_prog.input_shape, policy.code,
                      policy.k or 0, classes, served_prog.input_range, served_prog.entries)
    me = topology.party(party_id)
    listener = Listener(topology, me)
    state: dict[str, Any] = {"state": "connecting", "role": me.role, "party": party_id,
                             "plan": served_prog.digest, "kind": served_prog.kind,
                             "sessions": 0, "version": __version__}
    live: list[ServeLoop] = []  # the loop now serving, for the health answer
    linked: list[Session] = []  # its server session, for the cost counters in the answer

    def status() -> dict[str, Any]:
        out = dict(state, active_users=len(live[0].users) if live else 0)
        if linked:
            out["costs"] = layer_counters(linked[0])
        return out

    listener.status = status
    served = 0
    backoff = _BACKOFF_MIN
    peers = [p for p in SERVER_IDS if p != party_id]
    try:
        while not _stopping(stop) and (max_clients is None or served < max_clients):
            began = time.monotonic()
            try:
                servers = Session.connect(topology, party_id, peers=peers, listener=listener,
                                          max_payload=limits.server_frame)
            except SecinferNetError as e:
                state["state"] = "waiting for the other servers"
                # an attempt that waited out its window retries at once: a server asleep
                # while its peers try is how retrying parties keep missing each other; only
                # fast failures (a refused handshake, a link dropped at once) back off
                waited = time.monotonic() - began >= 0.9 * topology.connect_timeout
                pause = 0.0 if waited else backoff
                log.warning("server %d: the other servers are not all reachable (%s); retrying "
                            "in %.1f s", party_id, e, pause)
                _sleep(stop, pause)
                if not waited:
                    backoff = min(2 * backoff, _BACKOFF_MAX)
                continue
            backoff = _BACKOFF_MIN
            if metrics is not None:
                metrics.track_traffic(functools.partial(_traffic, servers))
            with servers:
                _agree_config(servers, policy, limits, classes)
                engine = MPCEngine(servers, cfg)
                programs = served_prog.build(engine)

                def forward(x: Share, entry: int, engine: MPCEngine = engine,
                            programs: list[Program] = programs,
                            servers: Session = servers) -> torch.Tensor:
                    y = programs[entry](x)
                    with servers.op("output"):
                        return policy_output(engine, y, policy).data

                def ended(conn: UserSession, servers: Session = servers) -> None:
                    state["sessions"] = int(state["sessions"]) + 1
                    if report:
                        _write_report(report, servers, conn.session)

                left = None if max_clients is None else max_clients - served
                handler = MpcHandler(party_id, engine, forward, limits, welcome, quota.left,
                                     quota.charge, quota.quota, topology.timeout, metrics)
                loop = ServeLoop(topology, party_id, listener, handler, servers=servers,
                                 leader=0, user_frame=limits.user_frame, on_session_end=ended,
                                 metrics=metrics)
                log.info("server %d (%s) ready on %s:%d: backend mpc, bundle %s (plan %s), %s; "
                         "output %s; max_batch %d, max_users %d, batching %s, frame "
                         "limits %d B from users, %d B from servers", party_id, me.role,
                         me.host, me.port, Path(bundle).resolve(), state["plan"],
                         served_prog.summary, policy.describe(), limits.max_batch,
                         topology.max_users, "on" if topology.batching else "off",
                         limits.user_frame, limits.server_frame)
                print(f"server {party_id}: ready ({served_prog.summary}; output "
                      f"{policy.describe()}; max_batch {limits.max_batch}, frame limits "
                      f"{limits.user_frame} B from users, {limits.server_frame} B from "
                      "servers)", flush=True)
                state["state"] = "serving"
                live[:] = [loop]
                linked[:] = [servers]
                try:
                    loop.run(stop, left)
                except (SecinferNetError, OSError) as e:
                    peer = getattr(e, "peer", None) or "another server"
                    why = f"{peer} failed ({e}); this request is cancelled, retry later"
                    log.error("server %d: %s; reconnecting", party_id, why)
                    loop.abort_all(why)
                    if metrics is not None:
                        metrics.count("failures")
                    state["state"] = "reconnecting"
                finally:
                    served += loop.ended
                    live.clear()
                    linked.clear()
    finally:
        listener.close()
    if _stopping(stop):
        log.info("server %d stopped on request after %d user sessions", party_id, served)
    return served


_BACKOFF_MIN, _BACKOFF_MAX = 0.5, 5.0


def layer_counters(servers: Session) -> dict[str, list[float]]:
    """Cumulative ``[bytes_sent, rounds, seconds, calls]`` per top-level op (layer) of this
    server's session with the other servers, since it (re)connected; for the health answer.

    Every figure is a function of the public plan and batch sizes, plus wall time; a user
    (the gateway) diffs two answers to get one request's cost per layer.
    """
    for _ in range(5):  # the protocol thread may add an op while we copy: copy again
        try:
            ops = servers.report()
            break
        except RuntimeError:
            continue
    else:
        return {}
    fields = ("bytes_sent", "rounds", "seconds", "calls")
    return {name: [float(c[f]) for f in fields]  # type: ignore[arg-type]
            for name, c in ops.items() if "/" not in name}


def _traffic(servers: Session) -> tuple[int, int]:
    total: dict[str, Any] = dict(servers.report().get("<total>", {}))
    return int(total.get("bytes_sent", 0)), int(total.get("rounds", 0))


def _sleep(stop: threading.Event | None, seconds: float) -> None:
    if stop is not None:
        stop.wait(seconds)
    else:
        time.sleep(seconds)


def _stopping(stop: threading.Event | None) -> bool:
    return stop is not None and stop.is_set()


def _agree_config(servers: Session, policy: OutputPolicy, limits: ServeLimits,
                  classes: int) -> None:
    """The three servers must enforce the same policy and limits, or they would fall out of
    step on the first request one accepts and another refuses."""
    mine = torch.tensor([policy.code, policy.k or 0, -1 if policy.quota is None else policy.quota,
                         limits.max_batch, classes], dtype=torch.int64)
    with servers.op("policy"):
        got = servers.exchange(dict.fromkeys(servers.peers, mine))
    for peer, theirs in got.items():
        if not torch.equal(theirs, mine):
            raise ConfigError(
                f"server {peer} runs output policy / limits {theirs.tolist()}, this server "
                f"{mine.tolist()} ([mode, k, quota, max_batch, outputs]); give all three the "
                "same bundle policy and [limits]")


def _write_report(path: str | Path, servers: Session, client: Session) -> None:
    """The servers' cumulative costs and the last ended user session's."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"servers": servers.report(), "user": client.report()}, indent=1))
    tmp.replace(path)
