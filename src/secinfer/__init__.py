"""secinfer: secure neural-network inference.

The contract (:mod:`secinfer.api`): ``compile`` a model for a backend (``mpc``, ``tee``,
``stip``), ``serve`` its artifact, ask as a user with ``Client``. Importing the package has no
side effects; sub-packages load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "compile": "secinfer.api",
    "Client": "secinfer.api",
    "Compiled": "secinfer.api",
    "ClassifyResult": "secinfer.api",
    "EmbedResult": "secinfer.api",
    "GenerateResult": "secinfer.api",
    "ZeroShotResult": "secinfer.api",
    "Verification": "secinfer.api",
    "BACKENDS": "secinfer.api",
    "TASKS": "secinfer.api",
    "Session": "secinfer.net",
    "Topology": "secinfer.net",
    "local_cluster": "secinfer.net",
    "run_in_memory": "secinfer.net",
    "CostAccountant": "secinfer.net",
    "SecinferError": "secinfer.errors",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'secinfer' has no attribute {name!r}")
