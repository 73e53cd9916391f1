"""The ``auto`` ring kernel: chosen by measurement, cached per machine, robust to a bad cache."""

from __future__ import annotations

import json

import pytest

from secinfer.ring import kernels
from secinfer.ring.kernels import KernelChoice, choose, fingerprint, load_or_measure


def test_choose_takes_the_faster_method_per_op() -> None:
    c = choose({"matmul/int64": 3.0, "matmul/limbs": 1.0, "conv/int64": 0.5, "conv/limbs": 2.0})
    assert (c.matmul, c.conv) == ("limbs", "int64")
    c = choose({"matmul/int64": 1.0, "matmul/limbs": 3.0, "conv/int64": 4.0, "conv/limbs": 2.0})
    assert (c.matmul, c.conv) == ("int64", "limbs")
    with pytest.raises(ValueError, match="conv/limbs"):
        choose({"matmul/int64": 1.0, "matmul/limbs": 3.0, "conv/int64": 4.0})


class _Counting:
    def __init__(self, choice: KernelChoice) -> None:
        self.choice, self.calls = choice, 0

    def __call__(self, device: str) -> KernelChoice:
        self.calls += 1
        return self.choice


def test_measured_once_then_read_from_the_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("SECINFER_RING_METHOD", raising=False)
    path = tmp_path / "ring-kernels.json"
    fake = _Counting(KernelChoice("limbs", "int64", {"matmul/limbs": 1.0}))
    assert load_or_measure("cpu", path, fake) == fake.choice
    assert load_or_measure("cpu", path, fake) == fake.choice
    assert fake.calls == 1
    entry = json.loads(path.read_text())["entries"][fingerprint("cpu")]
    assert (entry["matmul"], entry["conv"]) == ("limbs", "int64")


@pytest.mark.parametrize("content", [
    "{not json",
    json.dumps({"format": 1, "entries": {"x": 1}}),      # another machine's key only
    json.dumps({"format": 99, "entries": {}}),           # a future format
    json.dumps([1, 2, 3]),
])
def test_a_corrupt_or_foreign_cache_is_measured_again_and_rewritten(tmp_path, monkeypatch,
                                                                   content) -> None:
    monkeypatch.delenv("SECINFER_RING_METHOD", raising=False)
    path = tmp_path / "ring-kernels.json"
    path.write_text(content)
    fake = _Counting(KernelChoice("int64", "limbs", {}))
    assert load_or_measure("cpu", path, fake) == fake.choice
    assert fake.calls == 1
    assert load_or_measure("cpu", path, fake) == fake.choice and fake.calls == 1


def test_a_foreign_entry_is_kept_beside_ours(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("SECINFER_RING_METHOD", raising=False)
    path = tmp_path / "ring-kernels.json"
    other = {"matmul": "limbs", "conv": "limbs", "seconds": {}}
    path.write_text(json.dumps({"format": 1, "entries": {"elsewhere": other}}))
    load_or_measure("cpu", path, _Counting(KernelChoice("int64", "int64", {})))
    assert json.loads(path.read_text())["entries"]["elsewhere"] == other


def test_an_unwritable_cache_still_gives_a_choice(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("SECINFER_RING_METHOD", raising=False)
    blocker = tmp_path / "file"
    blocker.write_text("")
    fake = _Counting(KernelChoice("limbs", "limbs", {}))
    assert load_or_measure("cpu", blocker / "sub" / "ring-kernels.json", fake) == fake.choice


def test_forcing_a_method_skips_the_measurement(tmp_path, monkeypatch) -> None:
    fake = _Counting(KernelChoice("int64", "int64", {}))
    monkeypatch.setenv("SECINFER_RING_METHOD", "limbs")
    c = load_or_measure("cpu", tmp_path / "k.json", fake)
    assert (c.matmul, c.conv, fake.calls) == ("limbs", "limbs", 0)
    monkeypatch.setenv("SECINFER_RING_METHOD", "fast")
    with pytest.raises(ValueError, match="SECINFER_RING_METHOD"):
        load_or_measure("cpu", tmp_path / "k.json", fake)


def test_the_real_measurement_times_both_methods_for_both_ops() -> None:
    c = kernels.measure("cpu")
    assert set(c.seconds) == {"matmul/int64", "matmul/limbs", "conv/int64", "conv/limbs"}
    assert all(v > 0 for v in c.seconds.values())
    assert c == choose(c.seconds)
