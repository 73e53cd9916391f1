"""A long-lived compute party (P0, P1) or helper (P2) that answers many users' requests.

The three servers keep one session among themselves for their whole life: seeds are agreed and
every weight's Beaver mask is opened once, at start-up. A user (a party of role ``user`` in the
topology) then opens one session with each server; per request it sends a header
``[batch, *input_shape]`` to all three, its input shares to P0 and P1, and receives the output
shares from P0 and P1. An empty header ends the user's session. Only the user can reconstruct.

Wire messages from a user session (all int64 tensors, framed by the runtime):
    server P0 -> user on connect: [frac_bits, *input_shape]
    user -> P0, P1, P2:           header [batch, *input_shape]   (empty = goodbye)
    user -> P0 / P1:              input share [batch, *input_shape]
    P0 / P1 -> user:              output share
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from ..models.bundle import load_bundle
from ..models.secure import SecureModel
from ..mpc import MPCConfig, MPCEngine, Share
from ..net import Listener, PeerDisconnected, PeerTimeout, Session, Topology

__all__ = ["serve", "SERVER_IDS"]

log = logging.getLogger(__name__)
SERVER_IDS = (0, 1, 2)


def _users(topology: Topology) -> list[int]:
    users = [p.id for p in topology.parties if p.role == "user"]
    if not users:
        raise ValueError("the topology has no party with role 'user'")
    return users


def serve(topology: Topology, party_id: int, bundle: str | Path, max_clients: int | None = None,
          report: str | Path | None = None, mpc_config: MPCConfig | None = None) -> int:
    """Serve until ``max_clients`` user sessions have ended (forever if None). Returns count."""
    if party_id not in SERVER_IDS:
        raise ValueError(f"party {party_id} is not a server (servers are 0, 1 and 2)")
    plan, shares, manifest = load_bundle(bundle, expect_party=party_id)
    users = _users(topology)
    cfg = mpc_config or MPCConfig(frac_bits=plan.frac_bits)
    listener = Listener(topology, topology.party(party_id))
    served = 0
    try:
        peers = [p for p in SERVER_IDS if p != party_id]
        with Session.connect(topology, party_id, peers=peers, listener=listener) as servers:
            engine = MPCEngine(servers, cfg)
            model = SecureModel(engine, plan, shares)
            print(f"server {party_id}: ready ({len(plan.ops)} ops)", flush=True)
            while max_clients is None or served < max_clients:
                for user in users:
                    try:
                        client = Session.connect(topology, party_id, peers=[user],
                                                 listener=listener)
                    except PeerTimeout:
                        continue
                    with client:
                        n = _serve_client(engine, model, client, user, manifest)
                    served += 1
                    print(f"server {party_id}: user {user} done ({n} requests)", flush=True)
                    if report:
                        _write_report(report, servers, client)
    finally:
        listener.close()
    return served


def _serve_client(engine: MPCEngine, model: SecureModel, client: Session, user: int,
                  manifest: dict) -> int:
    shape = tuple(manifest["input_shape"])
    if engine.role == 0:
        client.send(user, torch.tensor([manifest["frac_bits"], *shape], dtype=torch.int64))
    requests = 0
    while True:
        try:
            header = client.recv(user)
        except (PeerDisconnected, PeerTimeout) as e:
            log.warning("user %d left: %s", user, e)
            return requests
        if header.numel() == 0:
            return requests
        got = tuple(int(v) for v in header.tolist())
        if len(got) != len(shape) + 1 or got[1:] != shape or got[0] < 1:
            raise ValueError(f"user {user} asked for input {got}; the model takes "
                             f"[batch, {', '.join(map(str, shape))}]")
        batch_shape = (got[0], *shape)
        t0 = time.perf_counter()
        if engine.is_helper:
            x = engine.placeholder(batch_shape, engine.f)
        else:
            data = client.recv(user)
            if tuple(data.shape) != batch_shape or data.dtype != torch.int64:
                raise ValueError(f"user {user} sent a share of {tuple(data.shape)} "
                                 f"{data.dtype}, expected {batch_shape} int64")
            x = Share(data, engine.f)
        y = model.forward(x)
        if not engine.is_helper:
            client.send(user, y.data)
        requests += 1
        log.info("request %d (batch %d) in %.3f s", requests, got[0], time.perf_counter() - t0)


def _write_report(path: str | Path, servers: Session, client: Session) -> None:
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"servers": servers.report(), "user": client.report()}, indent=1))
    tmp.replace(path)
