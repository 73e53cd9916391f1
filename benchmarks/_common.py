"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<name>.py``)."""

from __future__ import annotations

SPU_NOTE = ("SPU: not importable in this virtualenv (it needs JAX); `make spu-venv` builds a "
            "separate one and benchmarks/peer_spu.py compares against it")


def spu_available() -> bool:
    """Whether SecretFlow SPU imports in this interpreter (it normally lives in .venv-spu)."""
    try:
        import spu  # noqa: F401
    except ImportError:
        return False
    return True
