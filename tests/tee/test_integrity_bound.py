"""The per-query integrity bound: a device that corrupts ONE layer of a query is caught with
probability at least ``MonitorConfig().one_layer_bound()`` (``1 - 2^-32`` by default, stated in
docs/tee.md), at every layer position; an honest device never raises an alarm.

Trials are whole queries through the enclave's real code (``Enclave.run_trials``: the same
``protocol.begin`` / ``protocol.finish`` as ``Enclave.linear``, each query with its own
fingerprints, shuffle, masks and checksum vectors), vectorised over 10,000 queries, against the
device's real layer code (``Device.compute``).

A fault at layer ``j`` is caught by layer ``j``'s own checks or not at all (the other layers are
honest), and those checks see only layer ``j``'s input (any valid one) and the device's answer.
So one pass in which the device corrupts every layer, with per-layer alarm flags, measures the
one-layer fault at each position at once: flag ``j`` is distributed exactly as the alarm of a
query whose device corrupts only layer ``j`` (on that query's layer-``j`` input). One pass with
``Fault(layers=(j,))`` is run too, to check that equivalence where it matters.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from secinfer.tee import Device, Enclave, Fault, MonitorConfig, calibrate, capture_any, provision

pytestmark = pytest.mark.slow

TRIALS = 10_000
CHUNK = 2_500
ITEM = (2, 8, 8)


def _run(enc: Enclave, fault: Fault, gen: torch.Generator,
         trials: int = TRIALS) -> tuple[torch.Tensor, bool]:
    """Per query and layer, whether that layer's checks fired (bool ``(T, L)``), and whether
    every output equals the int8 model's, over ``trials`` one-item queries."""
    dev = Device(enc.bundle.device_bundle(), fault)
    flags, exact, done = [], True, 0
    while done < trials:
        t = min(CHUNK, trials - done)
        x = torch.randn(t, *ITEM, generator=gen)  # B = 1 real item per query
        rep = enc.run_trials(x, t, lambda i, u, t=t: dev.compute(i, u, t))
        flags.append((rep.triples_failed + rep.checksums_failed) > 0)
        exact = exact and torch.equal(rep.logits, enc.model.forward(x))
        done += t
    return torch.cat(flags), exact


@pytest.fixture
def enclave(tiny: nn.Module, gen: torch.Generator) -> Enclave:
    qm = calibrate(capture_any(tiny, ITEM), [torch.randn(64, *ITEM, generator=gen)])
    return Enclave(provision(qm), MonitorConfig(triples=2), on_failure="record")


def test_no_false_alarms_over_10000_honest_queries(enclave: Enclave,
                                                   gen: torch.Generator) -> None:
    flags, exact = _run(enclave, Fault("none"), gen)
    assert flags.shape == (TRIALS, 5) and not flags.any()  # 0 alarms in 10,000 queries
    assert exact  # and every answer is the int8 model's, bit for bit


def test_top_bit_flip_at_every_layer_is_caught_at_least_at_the_bound(
        enclave: Enclave, gen: torch.Generator) -> None:
    bound = enclave.monitor.one_layer_bound()
    assert bound >= 0.999
    flags, _ = _run(enclave, Fault("msb", "one"), gen)
    assert flags.shape[1] == 5  # conv, conv (residual), depthwise conv, linear, linear
    rates = flags.double().mean(dim=0)
    assert bool((rates >= bound).all()), rates.tolist()
    # the same fault at one layer only (the middle, depthwise one): only that layer alarms
    one, _ = _run(enclave, Fault("msb", "one", layers=(2,)), gen, trials=CHUNK)
    assert bool(one[:, 2].all()) and not one[:, [0, 1, 3, 4]].any()


@pytest.mark.parametrize("kind", ["noise", "element", "scale", "skip", "replay"])
def test_other_one_layer_faults_are_caught(enclave: Enclave, gen: torch.Generator,
                                           kind: str) -> None:
    bound = enclave.monitor.one_layer_bound()
    flags, _ = _run(enclave, Fault(kind, "one"), gen, trials=1000)
    # replay: the very first query has nothing to replay, so it is honest
    if kind == "replay":
        assert not flags[0].any()
        flags = flags[1:]
    rates = flags.double().mean(dim=0)
    assert bool((rates >= bound).all()), (kind, rates.tolist())


def test_the_old_32_bit_check_misses_the_bound(enclave: Enclave, gen: torch.Generator) -> None:
    """Power check: the pre-fix configuration (2 vectors mod 2^32) lets a top-bit flip at one
    layer through with probability (1/7)(1/4) = 1/28, so the bound test above would fail."""
    old = Enclave(enclave.bundle, MonitorConfig(2, 2, check_bits=32), on_failure="record")
    assert old.monitor.one_layer_bound() == 0.75
    n = 3000
    flags, _ = _run(old, Fault("msb", "one"), gen, trials=n)
    rates = flags.double().mean(dim=0)
    sd = (1 / 28 * 27 / 28 / n) ** 0.5
    assert bool((rates < 0.999).all()), rates.tolist()
    assert bool(((rates - (1 - 1 / 28)).abs() < 5 * sd).all()), rates.tolist()
