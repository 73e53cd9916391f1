"""Secret randomness does not follow Python's, torch's or numpy's seeds.

Two enclaves (and two provisionings) started after the same ``random.seed``,
``torch.manual_seed`` and ``numpy.random.seed`` must draw different masks, shuffles,
fingerprints, checksum vectors and channel permutations: all come from AES-CTR PRGs keyed by the
OS CSPRNG, one key per purpose (``secinfer/tee/rand.py``). The pre-fix code (one torch
generator per enclave) would still differ here because it was seeded from ``secrets``; the
static test ``tests/test_randomness_sources.py`` is what rules out torch generators, and this
test rules out any draw that reads the global seeds.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

from secinfer.tee import Enclave, MonitorConfig, calibrate, capture_any, provision
from secinfer.tee.rand import PURPOSES, EnclaveRandomness


def _seed_everything() -> None:
    random.seed(1234)
    torch.manual_seed(1234)
    np.random.seed(1234)  # noqa: NPY002 - the point is that this global seed has no effect


def _draws(rng: EnclaveRandomness) -> dict[str, torch.Tensor]:
    return {"mask": rng.masks((4, 3, 5, 5)), "shuffle": rng.shuffles(64, 7),
            "fingerprint": rng.normal((64,)), "checksum": rng.checksum_vectors(4, 2, 16)}


def test_two_enclaves_under_the_same_global_seeds_draw_different_secrets(
        tiny: nn.Module, gen: torch.Generator) -> None:
    qm = calibrate(capture_any(tiny, (2, 8, 8)), [torch.randn(16, 2, 8, 8, generator=gen)])
    _seed_everything()
    b1 = provision(qm)
    e1 = Enclave(b1, MonitorConfig())
    d1 = _draws(e1.rng)
    _seed_everything()
    b2 = provision(qm)
    e2 = Enclave(b2, MonitorConfig())
    d2 = _draws(e2.rng)
    for k in PURPOSES:
        assert not torch.equal(d1[k], d2[k]), k
    # channel permutations: 6-channel layers, so equal by chance with probability 1/720 each;
    # all five layers' permutations equal with probability far below 1e-9
    p1 = torch.cat([s.out_perm for s in b1.secrets])
    p2 = torch.cat([s.out_perm for s in b2.secrets])
    assert not torch.equal(p1, p2)
    # and the enclave's own draws (fingerprints, shuffle, masks, checksums of a whole query)
    _seed_everything()
    x = torch.randn(1, 2, 8, 8, generator=gen)
    u = []
    for enc in (e1, e2):
        sent: list[torch.Tensor] = []
        enc.run_trials(x, 1, lambda i, t, sent=sent, enc=enc: (sent.append(t.clone()),
                                                               _honest(enc, i, t))[1])
        u.append(torch.cat([t.flatten() for t in sent]))
    assert u[0].shape == u[1].shape and not torch.equal(u[0], u[1])


def _honest(enc: Enclave, i: int, u: torch.Tensor) -> torch.Tensor:
    from secinfer.tee.mask import ring_linear

    spec = enc.dev.layers[i]
    return ring_linear(spec, u, spec.weight)


def test_purposes_use_separate_keys() -> None:
    rng = EnclaveRandomness()
    # same request to two purposes: different streams (a shared key would give equal bytes)
    a = rng.prg("mask").bytes(64).clone()
    b = rng.prg("checksum").bytes(64).clone()
    assert not torch.equal(a, b)
    assert rng.drawn()["mask"] == 64 and rng.drawn()["shuffle"] == 0
