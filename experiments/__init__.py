"""Research experiments and paper reproductions, kept out of the ``secinfer`` package.

Run from a checkout of the repository (this folder beside ``src/`` and ``benchmarks/``); the
CLI verbs ``secinfer experiments ...`` import these modules lazily. Product code under
``src/secinfer`` never imports from here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["ROOT", "child_pythonpath"]

# the repository root: the folder that holds this package (what must be on sys.path)
ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def child_pythonpath() -> Iterator[None]:
    """Put the repository root on PYTHONPATH while party processes are started, so a child
    running ``experiments.<module>:<function>`` imports it wherever the caller's cwd is."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), old) if p)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
