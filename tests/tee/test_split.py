"""Split inference (enclave + device over the runtime's in-memory transport) and faults."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from secinfer.net import run_in_memory
from secinfer.tee import (
    Device,
    DeviceBundle,
    Enclave,
    EnclaveBundle,
    Fault,
    IntegrityError,
    MonitorConfig,
    calibrate,
    capture,
    provision,
)
from secinfer.tee.faults import device_trials, enclave_trials


def _bundle(model: nn.Module, gen: torch.Generator, permute: bool = True) -> EnclaveBundle:
    qm = calibrate(capture(model), [torch.randn(32, 2, 8, 8, generator=gen)])
    return provision(qm, permute=permute)


def _split(bundle: EnclaveBundle, x: torch.Tensor, fault: Fault | None = None,
           triples: int = 2, precompute: bool = False,
           dev_bundle: DeviceBundle | None = None) -> tuple[torch.Tensor, Enclave]:
    enc = Enclave(bundle, MonitorConfig(triples))
    dev = Device(dev_bundle or bundle.device_bundle(), fault)
    if precompute:
        enc.precompute(tuple(x.shape[1:]), len(x))

    def party(s):  # type: ignore[no-untyped-def]
        if s.party_id == 0:
            try:
                return enc.infer(s, 1, x)
            finally:
                enc.stop(s, 1)
        return dev.serve(s, 0)

    return run_in_memory(2, party, timeout=30)[0], enc


@pytest.mark.parametrize("permute", [True, False])
def test_split_is_bit_identical_to_int8_model(tiny: nn.Module, gen: torch.Generator,
                                              permute: bool) -> None:
    b = _bundle(tiny, gen, permute)
    x = torch.randn(3, 2, 8, 8, generator=gen)
    out, enc = _split(b, x, precompute=True)
    assert torch.equal(out, b.model.forward(x))
    assert enc.stats.layer_calls == 5 and enc.stats.triples_failed == 0
    assert enc.stats.inline_keys == 0  # every decode key came from the offline pool
    if permute:
        dev = b.device_bundle()
        assert any(not torch.equal(d.weight, w) for d, w in zip(dev.layers, b.model.w_q,
                                                                strict=True))


def test_bundles_round_trip_through_files(tiny: nn.Module, gen: torch.Generator,
                                          tmp_path: Path) -> None:
    b = _bundle(tiny, gen)
    b.save(tmp_path / "enclave")
    b.device_bundle().save(tmp_path / "device")
    eb, db = EnclaveBundle.load(tmp_path / "enclave"), DeviceBundle.load(tmp_path / "device")
    from safetensors.torch import load_file

    held = load_file(str(tmp_path / "device.safetensors"))
    assert all(t.dtype == torch.int8 for t in held.values())  # the device holds int8 only
    x = torch.randn(2, 2, 8, 8, generator=gen)
    out, _ = _split(eb, x, dev_bundle=db)
    assert torch.equal(out, b.model.forward(x))
    with pytest.raises(ValueError, match="not a enclave bundle|not a device bundle"):
        DeviceBundle.load(tmp_path / "enclave")
    with pytest.raises(FileNotFoundError, match="bundle file"):
        EnclaveBundle.load(tmp_path / "missing")


@pytest.mark.parametrize("kind", ["noise", "element", "scale", "skip", "replay"])
def test_every_fault_on_every_item_is_caught(tiny: nn.Module, gen: torch.Generator,
                                             kind: str) -> None:
    b = _bundle(tiny, gen)
    x = torch.randn(2, 2, 8, 8, generator=gen)
    fault = Fault(kind, "all")
    if kind == "replay":  # needs an earlier result to replay: prime it with an honest batch
        fault.apply(0, torch.zeros(1, 2 + 6, 2, 8, 8, dtype=torch.int32),
                    torch.zeros(1, 8, 6, 8, 8, dtype=torch.int32), gen)
    with pytest.raises(IntegrityError, match="layer 0 .*fingerprint triples failed"):
        _split(b, x, fault)


def test_monitor_off_lets_faults_through(tiny: nn.Module, gen: torch.Generator) -> None:
    b = _bundle(tiny, gen)
    x = torch.randn(2, 2, 8, 8, generator=gen)
    out, enc = _split(b, x, Fault("scale", "all"), triples=0)
    assert not torch.equal(out, b.model.forward(x)) and enc.stats.triples_checked == 0


@pytest.mark.parametrize("kind", ["none", "element", "replay"])
def test_single_item_fault_detection_rate(kind: str) -> None:
    trials, batch, triples = 1500, 1, 2
    res = run_in_memory(2, lambda s: enclave_trials(s, trials, batch, triples, chunk=500)
                        if s.party_id == 0 else device_trials(s, kind, "one"), timeout=60)[0]
    alarm, altered = res["alarm"], res["altered"]
    assert not (alarm & ~altered).any()  # no false alarms
    if kind == "none":
        assert not altered.any()
        return
    g = float(res["guarantee"])
    n = int(altered.sum())
    rate = int((alarm & altered).sum()) / n
    # The guarantee is exact for one altered item: the rate is binomial around it.
    assert abs(rate - g) < 4.5 * math.sqrt(g * (1 - g) / n)
    assert torch.equal(res["undetected_corruption"], altered & ~alarm)


def test_device_rejects_bad_requests(tiny: nn.Module, gen: torch.Generator) -> None:
    dev = Device(_bundle(tiny, gen).device_bundle())
    with pytest.raises(ValueError, match="layer 9"):
        dev.compute(9, torch.zeros(1, 2, 8, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="int32"):
        dev.compute(0, torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="fault kind"):
        Fault("melt")
    with pytest.raises(ValueError, match="on_failure"):
        Enclave(_bundle(tiny, gen), on_failure="ignore")
