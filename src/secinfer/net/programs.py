"""Resolving and running a party program: ``module:function`` taking a session.

A program is ``fn(session, **kwargs) -> dict[str, Tensor] | None``. Its kwargs travel as JSON
and its result as safetensors, so nothing between the launcher and a party is ever pickled.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

__all__ = ["resolve_program", "save_result", "selftest"]


def resolve_program(spec: str) -> Callable[..., Any]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"program must be 'module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import program module {module_name!r}: {e}") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"{module_name!r} has no callable {attr!r}")
    return fn


def save_result(result: Any, out: Path, report: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    if isinstance(result, dict):
        for k, v in result.items():
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"program result {k!r} is {type(v).__name__}, not a tensor")
            tensors[k] = v.detach().cpu().contiguous().clone()
    elif result is not None:
        raise TypeError("a party program must return a dict of tensors or None")
    tmp = out.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(out)
    out.with_suffix(".cost.json").write_text(json.dumps(report, indent=2, sort_keys=True))


def selftest(session: Any, size: int = 1024) -> dict[str, torch.Tensor]:
    """All-to-all check: each party sends a tagged tensor to every peer and verifies the echo."""
    with session.op("selftest"):
        mine = torch.full((size,), float(session.party_id), dtype=torch.float64)
        got = session.exchange(dict.fromkeys(session.peers, mine))
        for peer, t in got.items():
            if not torch.equal(t, torch.full((size,), float(peer), dtype=torch.float64)):
                raise RuntimeError(f"selftest: wrong data from party {peer}")
    return {"peers": torch.tensor(sorted(got))}


def sample_tensors() -> dict[str, torch.Tensor]:
    """One tensor of every wire dtype, plus empty and 0-d ones, with deterministic contents."""
    from .framing import DTYPE_CODES

    g = torch.Generator().manual_seed(1234)
    out: dict[str, torch.Tensor] = {}
    for dtype in DTYPE_CODES:
        name = str(dtype).removeprefix("torch.")
        base = torch.randint(-100, 100, (3, 5), generator=g)
        if dtype == torch.bool:
            t = base > 0
        elif dtype.is_complex:
            t = torch.complex(base.double(), -base.double()).to(dtype)
        elif dtype in (torch.uint8, torch.uint16, torch.uint32, torch.uint64):
            t = base.abs().to(dtype)
        else:
            t = base.to(dtype)
        out[f"{name}_2d"] = t
        out[f"{name}_empty"] = torch.empty((0, 4), dtype=dtype)
        out[f"{name}_0d"] = t.reshape(-1)[0].clone()
    out["int64_extremes"] = torch.tensor([-(2**63), 2**63 - 1, 0, -1], dtype=torch.int64)
    out["float64_special"] = torch.tensor([float("inf"), -0.0, 1e-308, float("nan")])
    out["strided"] = torch.arange(24, dtype=torch.int32).reshape(4, 6)[:, ::2]
    return out


def roundtrip(session: Any) -> dict[str, torch.Tensor]:
    """Send every sample tensor to every peer; return what arrived, keyed by peer and name."""
    got: dict[str, torch.Tensor] = {}
    samples = sample_tensors()
    with session.op("roundtrip"):
        for name, t in samples.items():
            for peer in session.peers:
                session.send(peer, t)
            for peer in session.peers:
                got[f"from{peer}.{name}"] = session.recv(peer)
    return {k: storable(v) for k, v in got.items()}


def storable(t: torch.Tensor) -> torch.Tensor:
    """The same values in a dtype safetensors can store (complex as real pairs, uints widened)."""
    if t.is_complex():
        return torch.view_as_real(t)
    if t.dtype in (torch.uint16, torch.uint32):
        return t.to(torch.int64)
    if t.dtype == torch.uint64:
        return t.view(torch.int64)
    return t


def ping_loop(session: Any, rounds: int = 100_000, delay: float = 0.02) -> None:
    """Exchange small tensors with every peer ``rounds`` times (for failure-injection tests)."""
    import time

    x = torch.zeros(4)
    for _ in range(rounds):
        session.exchange(dict.fromkeys(session.peers, x))
        time.sleep(delay)


def bulk(session: Any, megabytes: int = 64, reps: int = 5) -> dict[str, torch.Tensor]:
    """Party 0 streams ``reps`` tensors of ``megabytes`` MB to party 1, which acks each one.

    Returns party 0's per-transfer seconds (send + ack), for throughput benchmarks.
    """
    import time

    n = megabytes * (1 << 20) // 8
    ack = torch.zeros(1, dtype=torch.uint8)
    times = []
    if session.party_id == 0:
        x = torch.randint(-(2**62), 2**62, (n,), dtype=torch.int64)
        for _ in range(reps):
            t0 = time.perf_counter()
            session.send(1, x)
            session.recv(1)
            times.append(time.perf_counter() - t0)
    elif session.party_id == 1:
        for _ in range(reps):
            y = session.recv(0)
            if y.numel() != n:
                raise RuntimeError("bulk: short tensor")
            session.send(0, ack)
    return {"seconds": torch.tensor(times, dtype=torch.float64)}
