"""One test body for every backend: compile, serve (real processes over mutual TLS), ask as a
user through :class:`secinfer.Client`, and the error paths, which must name the problem and
leave the servers serving."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytest
import torch

import secinfer
from secinfer import api
from secinfer.errors import ConfigError, SecinferError
from secinfer.models import zoo
from secinfer.net import local_cluster

pytestmark = pytest.mark.network

ROLES = {"mpc": ["server", "server", "helper", "user"], "tee": ["enclave", "device", "user"],
         "stip": ["cloud", "user"]}


@dataclass
class Case:
    """A backend with a model it supports: a good input, what plaintext answers, and a bad
    input with the words its error must contain."""

    backend: str
    compiled: secinfer.Compiled
    good: Any
    expected: torch.Tensor
    bad: Any
    bad_error: str
    task: str


def _fmnist(n: int) -> torch.Tensor:
    from secinfer.data import fashion_mnist

    return fashion_mnist.load("test", limit=n)[0]


def _case(backend: str, tmp) -> Case:
    if backend in ("mpc", "tee"):
        model = zoo.pretrained("fmnist_cnn")
        x = _fmnist(8)
        bad = torch.zeros(2, 1, 27, 28)
        if backend == "mpc":
            compiled = secinfer.compile(model, "mpc", tmp / "build", input_shape=(1, 28, 28))
            with torch.no_grad():
                expected = model(x).argmax(-1)
        else:
            from secinfer.data import fashion_mnist
            from secinfer.tee.bundle import EnclaveBundle
            from secinfer.tee.enclave import Enclave

            cal = fashion_mnist.load("train", limit=256)[0]
            compiled = secinfer.compile(model, "tee", tmp / "build", input_shape=(1, 28, 28),
                                        calibration=cal)
            ref = Enclave(EnclaveBundle.load(compiled.artifacts["enclave"])).model
            expected = ref.forward(x.float()).argmax(-1)
        return Case(backend, compiled, x, expected, bad, "28", "classify")
    from tests.stip import tiny

    model = tiny.bert_classifier().eval()
    ids = torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        expected = model(input_ids=ids).logits.argmax(-1)
    compiled = secinfer.compile(model, "stip", tmp / "build")
    bad = torch.full((1, 4), 10**6, dtype=torch.int64)  # token ids outside the vocabulary
    return Case("stip", compiled, ids, expected, bad, "token ids", "classify")


@pytest.fixture(scope="module", params=["mpc", "tee", "stip"])
def served(request, tmp_path_factory):
    backend = request.param
    tmp = tmp_path_factory.mktemp(backend)
    case = _case(backend, tmp)
    with local_cluster(roles=ROLES[backend], workdir=tmp, timeout=20,
                       connect_timeout=20) as cluster:
        servers = [p.id for p in cluster.topology.parties if p.role != "user"]
        procs = [cluster.spawn(i, ["serve", "--topology", str(cluster.topology_path), "--id",
                                   str(i), "--artifact", str(tmp / "build")])
                 for i in servers]
        if backend != "stip":
            deadline = time.monotonic() + 120
            while not all("ready" in p.log.read_text() for p in procs):
                for p in procs:
                    assert p.proc.poll() is None, p.tail()
                assert time.monotonic() < deadline, [p.tail() for p in procs]
                time.sleep(0.2)
        yield case, cluster, procs


def _client(case: Case, cluster) -> secinfer.Client:
    artifact = case.compiled.artifacts.get("key")
    return secinfer.Client(cluster.topology, artifact=artifact, timeout=300)


def test_a_served_model_answers_as_plaintext(served):
    case, cluster, _ = served
    with _client(case, cluster) as c:
        assert c.backend == case.backend
        res = c.classify(case.good)
    assert torch.equal(res.labels, case.expected)
    assert res.logits is not None and res.logits.shape[0] == len(case.expected)
    # every result says whether anything checked it against a lying server: only the
    # enclave does today; the semi-honest MPC and STIP say "no" rather than stay silent
    assert res.verified is not None and res.verified.checked == (case.backend == "tee")
    assert res.verified.mechanism.startswith("none: ") != res.verified.checked


def test_a_bad_input_is_refused_naming_it_and_the_servers_serve_on(served):
    case, cluster, procs = served
    with _client(case, cluster) as c, pytest.raises((ValueError, SecinferError),
                                                    match=case.bad_error):
        c.classify(case.bad)
    with _client(case, cluster) as c:
        assert torch.equal(c.classify(case.good).labels, case.expected)
    assert all(p.proc.poll() is None for p in procs)


def test_a_task_the_backend_does_not_do_is_a_clear_error(served):
    case, cluster, _ = served
    with _client(case, cluster) as c:
        if case.backend == "stip":
            # a sequence classifier is no causal LM: the cloud refuses, naming the op
            with pytest.raises(SecinferError, match="lm_start|causal"):
                c.generate(case.good[:1], 2)
        else:
            with pytest.raises(ConfigError, match="does not do 'generate'"):
                c.generate(torch.zeros(1, 3, dtype=torch.int64), 2)


def test_an_artifact_for_another_role_is_refused_before_serving(served, tmp_path):
    case, cluster, _ = served
    first = next(iter(case.compiled.artifacts.values()))
    wrong = {"mpc": 0, "tee": 1, "stip": 1}[case.backend]  # a party of another role
    if case.backend == "mpc":
        first = case.compiled.artifacts["party2"]  # the helper's for server 0
    with pytest.raises((ConfigError, SecinferError), match="role|artifact"):
        api.serve(cluster.topology, wrong, first, max_clients=0)
