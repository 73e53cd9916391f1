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
