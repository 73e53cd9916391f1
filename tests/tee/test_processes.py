"""Enclave and device as two OS processes over the runtime's mutual-TLS channel."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from secinfer.tee import calibrate, capture_any, provision
from secinfer.tee.programs import two_party

pytestmark = [pytest.mark.network, pytest.mark.slow]


def test_split_over_tls_is_bit_identical(
    tiny: nn.Module, gen: torch.Generator, tmp_path: Path
) -> None:
    qm = calibrate(capture_any(tiny, (2, 8, 8)), [torch.randn(32, 2, 8, 8, generator=gen)])
    b = provision(qm)
    b.save(tmp_path / "enclave")
    b.device_bundle().save(tmp_path / "device")
    x = torch.randn(7, 2, 8, 8, generator=gen)
    save_file({"x": x}, str(tmp_path / "q.safetensors"))
    enc = {"bundle": str(tmp_path / "enclave"), "inputs": str(tmp_path / "q.safetensors"),
           "batch": 3, "triples": 2, "reference": True, "on_failure": "record"}
    res, costs, _ = two_party(("secinfer.tee.programs:enclave", enc),
                              ("secinfer.tee.programs:device",
                               {"bundle": str(tmp_path / "device")}), timeout=120)
    assert torch.equal(res["logits"], qm.forward(x))
    assert torch.equal(res["logits"], res["reference"])
    batches, calls, checked, failed, alarms, inline, summed, sum_failed = res["stats"].tolist()
    assert (batches, calls, checked, failed, alarms, inline) == (3, 15, 30, 0, 0, 0)
    # batches of 3, 3 and 1 queries, each with 3 * 2 fingerprints, through 5 layers
    assert sum_failed == 0 and summed == (9 + 9 + 7) * 5
    assert costs[1]["<total>"]["bytes_recv"] > 0  # the device received real tensors
