"""Split inference (enclave + device over the runtime's in-memory transport) and faults
(the fault campaign's detection rates: tests/experiments/test_tee_faults.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from secinfer.errors import ArtifactError
from secinfer.mpc.prg import PRG
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
    capture_any,
    provision,
)


def _bundle(model: nn.Module, gen: torch.Generator, permute: bool = True) -> EnclaveBundle:
    qm = calibrate(capture_any(model, (2, 8, 8)), [torch.randn(32, 2, 8, 8, generator=gen)])
    return provision(qm, permute=permute)


def _split(bundle: EnclaveBundle, x: torch.Tensor, fault: Fault | None = None,
           triples: int = 2, precompute: bool = False,
           dev_bundle: DeviceBundle | None = None,
           checksums: int = 2) -> tuple[torch.Tensor, Enclave]:
    enc = Enclave(bundle, MonitorConfig(triples, checksums))
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

    held = load_file(str(tmp_path / "device" / "tensors.safetensors"))
    assert all(t.dtype == torch.int8 for t in held.values())  # the device holds int8 only
    x = torch.randn(2, 2, 8, 8, generator=gen)
    out, _ = _split(eb, x, dev_bundle=db)
    assert torch.equal(out, b.model.forward(x))
    with pytest.raises(ArtifactError, match="is a 'enclave' artifact, not a 'device' one"):
        DeviceBundle.load(tmp_path / "enclave")
    with pytest.raises(ArtifactError, match="missing is not an artifact: no such folder"):
        EnclaveBundle.load(tmp_path / "missing")
    (tmp_path / "old.json").write_text('{"format": "secinfer.tee/1", "role": "enclave"}')
    with pytest.raises(ArtifactError, match="old.json is a enclave bundle of the old format"):
        EnclaveBundle.load(tmp_path / "old")


# with the 64-bit check every fault, the top-bit flip included, escapes checksums alone with
# probability at most 2^-32 (k = 2), so the whole grid is caught
_ALL_ITEM_CASES = [(k, t, c) for k in ("noise", "element", "scale", "skip", "replay", "msb")
                   for t, c in ((2, 0), (0, 2), (2, 2))]


@pytest.mark.parametrize(("kind", "triples", "checksums"), _ALL_ITEM_CASES)
def test_every_fault_on_every_item_is_caught(tiny: nn.Module, gen: torch.Generator, prg: PRG,
                                             kind: str, triples: int, checksums: int) -> None:
    b = _bundle(tiny, gen)
    x = torch.randn(2, 2, 8, 8, generator=gen)
    fault = Fault(kind, "all")
    if kind == "replay":  # needs an earlier result to replay: prime it with an honest batch
        n = 2 + 3 * triples
        fault.apply(0, torch.zeros(1, n, 2, 8, 8, dtype=torch.int32),
                    torch.zeros(1, n, 6, 8, 8, dtype=torch.int32), prg)
    what = "fingerprint triples failed" if triples else "item checksums failed"
    with pytest.raises(IntegrityError, match=f"layer 0 .*{what}"):
        _split(b, x, fault, triples=triples, checksums=checksums)


def test_monitor_off_lets_faults_through(tiny: nn.Module, gen: torch.Generator) -> None:
    b = _bundle(tiny, gen)
    x = torch.randn(2, 2, 8, 8, generator=gen)
    out, enc = _split(b, x, Fault("scale", "all"), triples=0, checksums=0)
    assert not torch.equal(out, b.model.forward(x))
    assert enc.stats.triples_checked == 0 and enc.stats.items_checksummed == 0


def test_honest_device_passes_every_check(tiny: nn.Module, gen: torch.Generator) -> None:
    b = _bundle(tiny, gen)
    x = torch.randn(3, 2, 8, 8, generator=gen)
    out, enc = _split(b, x, None, triples=1, checksums=8)
    assert torch.equal(out, b.model.forward(x))
    st = enc.stats
    assert st.items_checksummed == st.layer_calls * (3 + 3) and st.checksums_failed == 0
    assert st.triples_failed == 0 and st.alarms == 0


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
