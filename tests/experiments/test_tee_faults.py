"""The fault campaign's trials (experiments/tee_faults.py): detection rates against the bound."""

from __future__ import annotations

import math

import pytest
import torch
from experiments.tee_faults import device_trials, enclave_trials

from secinfer.net import run_in_memory


@pytest.mark.parametrize(("kind", "checksums", "bits"),
                         [("none", 2, 64), ("element", 0, 64), ("replay", 0, 64),
                          ("element", 2, 64), ("scale", 2, 64), ("msb", 2, 64), ("msb", 2, 32)])
def test_single_item_fault_detection_rate(kind: str, checksums: int, bits: int) -> None:
    trials, batch, triples = 1500, 1, 2
    res = run_in_memory(2, lambda s: enclave_trials(s, trials, batch, triples, chunk=500,
                                                    checksums=checksums, check_bits=bits)
                        if s.party_id == 0 else device_trials(s, kind, "one"), timeout=60)[0]
    alarm, altered = res["alarm"], res["altered"]
    assert not (alarm & ~altered).any()  # no false alarms
    if kind == "none":
        assert not altered.any()
        return
    g = float(res["guarantee"])
    miss = 0.5 if bits == 32 else 2.0 ** -16
    assert g == pytest.approx(1 - (1 / 7) * miss ** checksums)
    n = int(altered.sum())
    rate = int((alarm & altered).sum()) / n
    if checksums == 0 or (kind == "msb" and bits == 32):
        # Exact for one altered item (and for a top-bit flip against 32-bit checksums): binomial.
        assert abs(rate - g) < 4.5 * math.sqrt(g * (1 - g) / n)
    else:
        # Every error escapes 2 vectors of the 64-bit check with probability <= 2^-32.
        assert rate == 1.0 and bool(res["checksum_alarm"][altered].all())
    assert torch.equal(res["undetected_corruption"], altered & ~alarm)
