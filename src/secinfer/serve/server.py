"""A long-lived compute party (P0, P1) or helper (P2) that answers many users' requests.

The three servers keep one session among themselves for their whole life: seeds are agreed,
the output policy and limits are compared (they must be equal at all three), and every
weight's Beaver mask is opened once, at start-up. A user (a party of role ``user`` in the
topology) then opens one session with each server; per request it sends a header
``[batch, *input_shape]`` to all three, its input shares to P0 and P1, and receives from P0
and P1 the shares of what the owner's output policy lets it see (logits, top-k indices, or the
label: see :mod:`.output`). An empty header ends the user's session. Only the user can
reconstruct.

Before computing, the three servers agree on every request: each sends the others its verdict
(the batch, or why it refuses: malformed header, batch over ``max_batch``, query quota spent,
bad share, user gone). Only if all three verdicts are the same accepted batch do they run the
model; otherwise every server refuses, so a user that sends different headers to different
servers (or one oversize frame to one server) cannot push the servers' shared session out of
step. A refusal ends that user's session with a :class:`~secinfer.net.RequestRefused` whose
message (the limit and the value) reaches the user; the servers go on serving.

Wire messages from a user session (all int64 tensors, framed by the runtime):
    server P0 -> user on connect: [frac_bits, *input_shape]
    server P0 -> user on connect: [mode (0 logits, 1 topk, 2 label), k, max_batch,
                                   queries left (-1: unlimited), outputs per input]
    server P0 -> user on connect: float64 [lo, hi], the owner's valid input range
                                  (NaN, NaN: none was stated at compile time)
    user -> P0, P1, P2:           header [batch, *input_shape]   (empty = goodbye)
    user -> P0 / P1:              input share [batch, *input_shape]
    P0 / P1 -> user:              output share: [batch, C] logits, [batch, k] or [batch]
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..models.bundle import OutputPolicy, load_bundle
from ..models.secure import SecureModel
from ..mpc import MPCConfig, MPCEngine, Share
from ..net import (
    FrameError,
    Listener,
    PeerTimeout,
    RequestRefused,
    SecinferNetError,
    Session,
    Topology,
)
from .limits import ServeLimits, plan_sizes, serve_limits
from .output import policy_output

__all__ = ["serve", "SERVER_IDS", "QuotaBook"]

log = logging.getLogger(__name__)
SERVER_IDS = (0, 1, 2)

# a server's verdict on one request: the batch (> 0) if it accepts, else one of these
GOODBYE, MALFORMED, OVER_BATCH, OVER_QUOTA, BAD_SHARE, USER_GONE = 0, -1, -2, -3, -4, -5


def _users(topology: Topology) -> list[int]:
    users = [p.id for p in topology.parties if p.role == "user"]
    if not users:
        raise ValueError("the topology has no party with role 'user'")
    return users


@dataclass
class QuotaBook:
    """Queries (inputs) used per user identity; ``quota`` None is unlimited.

    Counts live in the server process: a restarted server starts from zero.
    """

    quota: int | None
    used: dict[int, int] = field(default_factory=dict)

    def left(self, user: int) -> int | None:
        return None if self.quota is None else self.quota - self.used.get(user, 0)

    def charge(self, user: int, n: int) -> None:
        self.used[user] = self.used.get(user, 0) + n


def serve(topology: Topology, party_id: int, bundle: str | Path, max_clients: int | None = None,
          report: str | Path | None = None, mpc_config: MPCConfig | None = None,
          policy: OutputPolicy | None = None, max_batch: int | None = None,
          max_frame_bytes: int | None = None, stop: threading.Event | None = None) -> int:
    """Serve until ``max_clients`` user sessions have ended (forever if None). Returns count.

    ``stop`` (set by ``secinfer serve`` on SIGTERM) drains: the request in flight is finished
    and answered, then the user's session ends at that request boundary (an idle user's at its
    next request or goodbye) and no new session starts.

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
    plan, shares, manifest = load_bundle(bundle, expect_party=party_id)
    policy = policy or OutputPolicy.from_manifest(manifest)
    users = _users(topology)
    cfg = mpc_config or MPCConfig(frac_bits=plan.frac_bits,
                                  truncation=manifest.get("truncation", "local"))
    sizes = plan_sizes(plan)
    classes = math.prod(sizes.output_shape)
    if policy.mode != "logits" and len(sizes.output_shape) != 1:
        raise ValueError(f"output mode {policy.mode} needs a model with outputs [batch, C]; "
                         f"this one gives [batch, {', '.join(map(str, sizes.output_shape))}]")
    if policy.mode == "topk" and policy.k is not None and policy.k > classes:
        raise ValueError(f"output policy top-{policy.k}, but the model has {classes} outputs")
    if policy.mode == "topk" and cfg.drelu_high_bits:
        raise ValueError("output mode topk needs the exact DReLU (drelu_high_bits = 0)")
    limits = serve_limits(plan, topology, sizes)
    quota = QuotaBook(policy.quota)
    listener = Listener(topology, topology.party(party_id))
    served = 0
    try:
        peers = [p for p in SERVER_IDS if p != party_id]
        with Session.connect(topology, party_id, peers=peers, listener=listener,
                             max_payload=limits.server_frame) as servers:
            _agree_config(servers, policy, limits, classes)
            engine = MPCEngine(servers, cfg)
            model = SecureModel(engine, plan, shares)
            me = topology.party(party_id)
            log.info("server %d (%s) ready on %s:%d: backend mpc, bundle %s (plan %s), %d ops; "
                     "output %s; max_batch %d, frame limits %d B from users, %d B from servers",
                     party_id, me.role, me.host, me.port, Path(bundle).resolve(),
                     manifest["files"]["plan.json"][:12], len(plan.ops), policy.describe(),
                     limits.max_batch, limits.user_frame, limits.server_frame)
            print(f"server {party_id}: ready ({len(plan.ops)} ops; output {policy.describe()}; "
                  f"max_batch {limits.max_batch}, frame limits {limits.user_frame} B from users, "
                  f"{limits.server_frame} B from servers)", flush=True)
            while (max_clients is None or served < max_clients) and not _stopping(stop):
                for user in users:
                    if _stopping(stop):
                        break
                    try:
                        client = Session.connect(topology, party_id, peers=[user],
                                                 listener=listener, max_payload=limits.user_frame)
                    except SecinferNetError as e:  # absent, or a stale link: never fatal here
                        if not isinstance(e, PeerTimeout):
                            log.warning("user %d could not connect: %s", user, e)
                        dead = servers.transport.broken_link()
                        if dead is not None:  # no user can be served without the others
                            raise SecinferNetError(
                                f"server {party_id} stops: another server is gone ({dead})"
                            ) from dead
                        continue
                    with client:
                        try:
                            n = _serve_client(engine, model, servers, client, user, manifest,
                                              policy, limits, quota, classes, stop)
                            # before dialing again: the user's listener must be gone
                            client.wait_hangup(user, min(servers.timeout, 5.0))
                            print(f"server {party_id}: user {user} done ({n} requests)",
                                  flush=True)
                        except RequestRefused as e:
                            print(f"server {party_id}: user {user} refused: {e}", flush=True)
                            _refuse(client, user, e, servers.timeout)
                    served += 1
                    if report:
                        _write_report(report, servers, client)
    finally:
        listener.close()
    if _stopping(stop):
        log.info("server %d stopped on request after %d user sessions", party_id, served)
    return served


def _stopping(stop: threading.Event | None) -> bool:
    return stop is not None and stop.is_set()


def _refuse(client: Session, user: int, why: RequestRefused, patience: float) -> None:
    """Tell the user why (an abort frame with the message), then wait for it to hang up, so
    that the next session's dial cannot land in this user's old, closing listener."""
    client.fail(why)
    if not client.wait_hangup(user, min(patience, 10.0)):
        log.warning("user %d did not hang up after its refusal", user)


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
            raise SecinferNetError(
                f"server {peer} runs output policy / limits {theirs.tolist()}, this server "
                f"{mine.tolist()} ([mode, k, quota, max_batch, outputs]); give all three the "
                "same bundle policy and [limits]")


def _read_request(engine: MPCEngine, client: Session, user: int, shape: tuple[int, ...],
                  limits: ServeLimits, quota: QuotaBook) -> tuple[int, str, torch.Tensor | None]:
    """This server's verdict on the user's next request, why, and its input share."""
    try:
        header = client.recv(user)
    except FrameError as e:
        return MALFORMED, f"malformed request header: {e}", None
    except SecinferNetError as e:  # disconnected, timed out, aborted
        return USER_GONE, f"user {user} left: {e}", None
    if header.numel() == 0:
        return GOODBYE, "", None
    if header.dtype != torch.int64 or header.dim() != 1:
        return MALFORMED, (f"request header must be a 1-d int64 tensor, got "
                           f"{tuple(header.shape)} {header.dtype}"), None
    got = tuple(int(v) for v in header.tolist())
    if len(got) != len(shape) + 1 or got[1:] != shape or got[0] < 1:
        return MALFORMED, (f"user {user} asked for input {got}; the model takes "
                           f"[batch, {', '.join(map(str, shape))}]"), None
    batch = got[0]
    if batch > limits.max_batch:
        return OVER_BATCH, (f"batch of {batch} exceeds the limit max_batch = "
                            f"{limits.max_batch}"), None
    left = quota.left(user)
    if left is not None and batch > left:
        return OVER_QUOTA, (f"query quota exceeded: user {user} has {left} of its quota of "
                            f"{quota.quota} queries left and asked for {batch}"), None
    if engine.is_helper:
        return batch, "", None
    try:
        data = client.recv(user)
    except FrameError as e:
        return BAD_SHARE, str(e), None
    except SecinferNetError as e:
        return USER_GONE, f"user {user} left: {e}", None
    if tuple(data.shape) != (batch, *shape) or data.dtype != torch.int64:
        return BAD_SHARE, (f"user {user} sent a share of {tuple(data.shape)} {data.dtype}, "
                           f"expected {(batch, *shape)} int64"), None
    return batch, "", data


def _agree(servers: Session, verdict: int, timeout: float) -> dict[int, int]:
    mine = torch.tensor([verdict], dtype=torch.int64)
    with servers.op("request"):
        for p in servers.peers:
            servers.send(p, mine)
        return {p: int(servers.recv(p, timeout=timeout)) for p in servers.peers}


def _serve_client(engine: MPCEngine, model: SecureModel, servers: Session, client: Session,
                  user: int, manifest: dict, policy: OutputPolicy, limits: ServeLimits,
                  quota: QuotaBook, classes: int, stop: threading.Event | None = None) -> int:
    shape = tuple(manifest["input_shape"])
    if engine.role == 0:
        left = quota.left(user)
        try:
            client.send(user, torch.tensor([manifest["frac_bits"], *shape], dtype=torch.int64))
            client.send(user, torch.tensor([policy.code, policy.k or 0, limits.max_batch,
                                            -1 if left is None else left, classes],
                                           dtype=torch.int64))
            rng = manifest.get("input_range") or [math.nan, math.nan]
            client.send(user, torch.tensor([float(v) for v in rng], dtype=torch.float64))
        except SecinferNetError as e:  # the other servers see it as a user gone: no verdict
            log.warning("user %d left before its first request: %s", user, e)
    # a peer may wait for a user's header for up to one timeout before giving its verdict
    agree_timeout = 2 * client.timeout + servers.timeout
    requests = 0
    while True:
        verdict, why, data = _read_request(engine, client, user, shape, limits, quota)
        others = _agree(servers, verdict, agree_timeout)
        if any(v != verdict for v in others.values()):
            here = f"; server {engine.role}: {why}" if verdict < 0 and why else ""
            raise RequestRefused(
                f"the servers received different requests from user {user} (verdicts "
                f"{dict(sorted({**others, engine.role: verdict}.items()))}){here}; refused")
        if verdict == GOODBYE:
            return requests
        if verdict == USER_GONE:
            log.warning("%s", why)
            return requests
        if verdict < 0:
            raise RequestRefused(why)
        batch = verdict
        quota.charge(user, batch)
        t0 = time.perf_counter()
        batch_shape = (batch, *shape)
        if engine.is_helper:
            x = engine.placeholder(batch_shape, engine.f)
        else:
            assert data is not None
            x = Share(data, engine.f)
        y = model.forward(x)
        with servers.op("output"):
            out = policy_output(engine, y, policy)
        if not engine.is_helper:
            try:
                client.send(user, out.data)
            except SecinferNetError as e:  # after the compute: the servers stay in step
                log.warning("user %d left before its result: %s", user, e)
                return requests + 1
        requests += 1
        log.info("request %d (batch %d) in %.3f s", requests, batch, time.perf_counter() - t0)
        if _stopping(stop):
            log.info("draining: user %d's session ends after its request %d", user, requests)
            return requests


def _write_report(path: str | Path, servers: Session, client: Session) -> None:
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"servers": servers.report(), "user": client.report()}, indent=1))
    tmp.replace(path)
