"""The STIP cloud as a service: users dial out (no user port), sessions run side by side, a
full cloud says "busy", another deployment's user is refused, and each refusal leaves the cloud
serving the next user. Real TLS links, the serving loop in a thread of this process."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
import torch

from secinfer.net import RequestRefused, local_cluster
from secinfer.net.tls import issue_user_cert
from secinfer.stip import (
    SessionLink,
    StipUser,
    build_cloud,
    dial_cloud,
    serve,
    transform_model,
)

from . import tiny
from .test_equivalence import plaintext_greedy

pytestmark = [pytest.mark.network]


@pytest.fixture
def cloud_and_key():
    m = tiny.gpt2()
    cloud_state, cloud_cfg, key = transform_model(m)
    return m, build_cloud(key.model_class, cloud_cfg, cloud_state), key


def _serving(topology, cloud, stop, log):
    t = threading.Thread(target=serve, args=(topology, 1, cloud),
                         kwargs={"should_stop": stop.is_set, "log": log.append}, daemon=True)
    t.start()
    return t


@torch.inference_mode()
def test_two_users_are_served_side_by_side_and_an_idle_one_holds_up_nobody(cloud_and_key,
                                                                           tmp_path):
    m, cloud, key = cloud_and_key
    ids = torch.randint(3, 150, (1, 5))
    log: list[str] = []
    stop = threading.Event()
    with local_cluster(roles=["owner", "cloud", "user"], workdir=tmp_path, timeout=30.0,
                       connect_timeout=10.0) as cluster:
        t = _serving(cluster.topology, cloud, stop, log)
        try:
            cert = issue_user_cert(cluster.topology, "bob", tmp_path / "bob.pem",
                                   tmp_path / "bob.key")
            pkey = tmp_path / "bob.key"
            with dial_cloud(cluster.topology) as alice:
                a = StipUser(key, SessionLink(alice, 1))
                first = a.generate(ids, 3)  # alice's session is open and now idle
                t0 = time.monotonic()
                with dial_cloud(cluster.topology, cert=cert, key=pkey) as bob:
                    link = SessionLink(bob, 1)
                    toks = StipUser(key, link).generate(ids, 6)
                    link.close()
                waited = time.monotonic() - t0
                again = a.generate(ids, 3)  # alice's cache survived bob's session
            assert torch.equal(toks, plaintext_greedy(m, ids, 6))
            assert torch.equal(first, toks[:, :3]) and torch.equal(again, first)
            # bob did not wait for alice's session (30 s idle timeout) to end
            assert waited < 10.0, waited
            assert any("user user-bob" in line for line in log), log
        finally:
            stop.set()
            t.join(timeout=10)
    assert not t.is_alive()


@torch.inference_mode()
def test_a_full_cloud_says_busy_and_serves_the_next_user_once_a_slot_frees(cloud_and_key,
                                                                          tmp_path):
    m, cloud, key = cloud_and_key
    ids = torch.randint(3, 150, (1, 4))
    log: list[str] = []
    stop = threading.Event()
    with local_cluster(roles=["owner", "cloud", "user"], workdir=tmp_path, timeout=30.0,
                       connect_timeout=10.0, service={"max_users": 1}) as cluster:
        t = _serving(cluster.topology, cloud, stop, log)
        try:
            with dial_cloud(cluster.topology) as first:
                SessionLink(first, 1).call("lm_start", [torch.zeros(1, 2, 48),
                                                        torch.ones(1, 2, dtype=torch.int64)])
                with dial_cloud(cluster.topology) as second, \
                        pytest.raises(RequestRefused, match=r"busy.*max_users"):
                    StipUser(key, SessionLink(second, 1)).generate(ids, 2)
                SessionLink(first, 1).close()
            deadline = time.monotonic() + 10
            while True:  # the first session's thread ends just after its bye reply
                try:
                    with dial_cloud(cluster.topology) as third:
                        link = SessionLink(third, 1)
                        toks = StipUser(key, link).generate(ids, 3)
                        link.close()
                    break
                except RequestRefused:
                    assert time.monotonic() < deadline, log
                    time.sleep(0.05)
            assert torch.equal(toks, plaintext_greedy(m, ids, 3))
            assert any("busy" in line for line in log), log
        finally:
            stop.set()
            t.join(timeout=10)


@torch.inference_mode()
def test_a_user_of_another_deployment_is_refused_saying_so(cloud_and_key, tmp_path):
    _, cloud, key = cloud_and_key
    log: list[str] = []
    stop = threading.Event()
    with local_cluster(roles=["owner", "cloud", "user"], workdir=tmp_path / "a", timeout=30.0,
                       connect_timeout=10.0) as cluster:
        t = _serving(cluster.topology, cloud, stop, log)
        try:
            # same CA and certificates, but a topology whose owner entry differs
            owner = cluster.topology.party(0)
            other = dataclasses.replace(cluster.topology, parties=(
                dataclasses.replace(owner, port=owner.port + 1), *cluster.topology.parties[1:]))
            with dial_cloud(other) as s, pytest.raises(RequestRefused, match="another deployment"):
                SessionLink(s, 1).call("lm_start", [torch.zeros(1, 2, 48),
                                                    torch.ones(1, 2, dtype=torch.int64)])
            with dial_cloud(cluster.topology) as s:
                link = SessionLink(s, 1)
                assert StipUser(key, link).last_logits(torch.tensor([[5, 6]])).shape[0] == 1
                link.close()
        finally:
            stop.set()
            t.join(timeout=10)


def test_dial_cloud_names_a_topology_without_one_cloud(tmp_path):
    with local_cluster(roles=["owner", "user"], workdir=tmp_path) as cluster, \
            pytest.raises(ValueError, match="exactly one party with role 'cloud'"):
        dial_cloud(cluster.topology)
