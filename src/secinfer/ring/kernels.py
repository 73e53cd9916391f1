"""Which exact kernel ``method="auto"`` runs, chosen by measuring both on this machine.

The two methods of :mod:`secinfer.ring.ops` compute the same ring products at speeds that
depend on the machine, not on the code: on one 2-core AVX2 host torch's int64 matmul ran at
2.4x a float64 GEMM and the limb method at 7.3x, on another host of the same kind int64 ran at
131x and the limbs at 7.0x. A constant choice is therefore a bug on the next machine, so
``auto`` is resolved by timing both methods once per machine (a matmul and a 3x3 convolution
of mid-sized CNN / transformer shapes, best of 3 after a warm-up, well under a second) and the
verdict is cached:

1. in the process (:func:`auto_choice` is memoised per device type), and
2. on disk, as JSON in ``$SECINFER_CACHE_DIR`` (default ``~/.cache/secinfer``), keyed by a
   fingerprint of what decides the speed: torch version, CPU model, machine, torch threads.

A missing, corrupt or foreign cache entry is measured again and rewritten (atomically); a
cache that cannot be written is only logged. Set ``SECINFER_RING_METHOD=int64|limbs`` to
force a method without measuring.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

__all__ = ["KernelChoice", "auto_choice", "cache_path", "choose", "fingerprint",
           "load_or_measure", "measure"]

log = logging.getLogger(__name__)

Method = Literal["int64", "limbs"]
_METHODS: tuple[Method, ...] = ("int64", "limbs")
_FORMAT = 1


@dataclass(frozen=True)
class KernelChoice:
    """The method per op kind, and the seconds measured for each (empty if forced)."""

    matmul: Method
    conv: Method
    seconds: dict[str, float]


def choose(seconds: dict[str, float]) -> KernelChoice:
    """The faster method per op from timings keyed ``"<op>/<method>"`` (op: matmul, conv)."""
    picks: dict[str, Method] = {}
    for op in ("matmul", "conv"):
        try:
            picks[op] = min(_METHODS, key=lambda m: seconds[f"{op}/{m}"])
        except KeyError as e:
            raise ValueError(f"no timing for {e.args[0]!r}") from None
    return KernelChoice(picks["matmul"], picks["conv"], dict(seconds))


def _best_of(fn: Callable[[], object], reps: int = 3) -> float:
    fn()  # warm-up: first-call allocations and lazy kernel selection
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(device: str = "cpu") -> KernelChoice:
    """Time both methods on this machine, on random full-width int64 operands (so no kernel
    can take a shortcut on small or zero values)."""
    from .ops import ring_conv2d, ring_matmul

    g = torch.Generator().manual_seed(0)  # public benchmark operands, not secrets
    def rnd(*shape: int) -> torch.Tensor:
        return torch.randint(-(2**62), 2**62, shape, generator=g).to(device)

    a, b = rnd(256, 512), rnd(512, 256)
    x, w = rnd(1, 32, 28, 28), rnd(32, 32, 3, 3)
    seconds: dict[str, float] = {}
    for m in _METHODS:
        seconds[f"matmul/{m}"] = _best_of(functools.partial(ring_matmul, a, b, method=m))
        seconds[f"conv/{m}"] = _best_of(functools.partial(ring_conv2d, x, w, padding=1,
                                                          method=m))
    return choose(seconds)


def fingerprint(device: str = "cpu") -> str:
    """What decides which kernel is faster here, hashed."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [torch.__version__, platform.machine(), cpu, str(torch.get_num_threads()), device]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def cache_path() -> Path:
    root = os.environ.get("SECINFER_CACHE_DIR") or Path.home() / ".cache" / "secinfer"
    return Path(root) / "ring-kernels.json"


def _read(path: Path, key: str) -> KernelChoice | None:
    try:
        data = json.loads(path.read_text())
        entry = data["entries"][key] if data.get("format") == _FORMAT else None
        if entry is None or entry["matmul"] not in _METHODS or entry["conv"] not in _METHODS:
            return None
        return KernelChoice(entry["matmul"], entry["conv"],
                            {k: float(v) for k, v in entry["seconds"].items()})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("ignoring the unreadable ring kernel cache %s (%s): measuring again", path, e)
        return None


def _write(path: Path, key: str, choice: KernelChoice) -> None:
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
        if data.get("format") != _FORMAT or not isinstance(data.get("entries"), dict):
            data = {}
    except (OSError, ValueError, AttributeError):
        data = {}
    data = {"format": _FORMAT, "entries": {**data.get("entries", {}), key: asdict(choice)}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ring-kernels-")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not cache the ring kernel choice in %s: %s", path, e)


def load_or_measure(device: str = "cpu", path: Path | None = None,
                    measure_fn: Callable[[str], KernelChoice] = measure) -> KernelChoice:
    """The cached choice for this machine, or a fresh measurement (then cached)."""
    forced = os.environ.get("SECINFER_RING_METHOD")
    if forced:
        if forced not in _METHODS:
            raise ValueError(f"SECINFER_RING_METHOD must be one of {_METHODS}, got {forced!r}")
        return KernelChoice(forced, forced, {})  # type: ignore[arg-type]
    path = path or cache_path()
    key = fingerprint(device)
    hit = _read(path, key)
    if hit is not None:
        return hit
    choice = measure_fn(device)
    log.info("ring kernels measured for this machine: matmul %s, conv %s (%s)",
             choice.matmul, choice.conv, choice.seconds)
    _write(path, key, choice)
    return choice


@functools.cache
def auto_choice(device_type: str) -> KernelChoice:
    """What ``method="auto"`` means on ``device_type`` in this process.

    Off the CPU only the limb method is known to run (no int64 GEMM on CUDA), so no
    measurement is made there.
    """
    if device_type != "cpu":
        return KernelChoice("limbs", "limbs", {})
    return load_or_measure("cpu")
