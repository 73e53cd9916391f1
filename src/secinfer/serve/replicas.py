"""Several independent server sets (replicas) behind one user-side entry point.

A *server set* is three servers (P0, P1, the helper) with their own topology, certificates and
correlated randomness; sets share nothing but the model owner's CA and bundle. A user (or the
gateway) holding one user certificate of that CA can be served by any set. This module is the
dispatch interface the gateway is written against (``docs/scale-out.md``): today it picks among
a static list of topologies; an engine (Ray Serve, Kubernetes) later only supplies the list.

Dispatch: round-robin over the sets, and on a "busy" refusal or an unreachable set, the next
one, each set tried at most once per request; the error names every set that failed and why.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from ..net import RequestRefused, SecinferNetError, Topology

__all__ = ["ServerSet", "Dispatcher", "RoundRobin", "AllSetsFailed"]

T = TypeVar("T")


@dataclass(frozen=True)
class ServerSet:
    """One replica: its topology (three servers), and a name for logs and errors."""

    name: str
    topology: Topology

    @classmethod
    def load(cls, path: str | Path) -> ServerSet:
        return cls(Path(path).stem, Topology.load(path))


class AllSetsFailed(SecinferNetError):
    """No server set could serve the request; the message names each set and its error."""


class Dispatcher(Protocol):
    """What the gateway needs from a deployment: run one request on some server set."""

    def sets(self) -> Sequence[ServerSet]: ...

    def call(self, fn: Callable[[ServerSet], T]) -> T: ...


class RoundRobin:
    """Static replicas, round-robin, with failover on busy or unreachable sets."""

    def __init__(self, sets: Sequence[ServerSet]) -> None:
        if not sets:
            raise ValueError("give at least one server set")
        names = [s.name for s in sets]
        if len(set(names)) != len(names):
            raise ValueError(f"server set names must differ, got {names}")
        self._sets = tuple(sets)
        self._next = itertools.count()
        self._lock = threading.Lock()

    def sets(self) -> Sequence[ServerSet]:
        return self._sets

    def call(self, fn: Callable[[ServerSet], T]) -> T:
        """``fn(set)`` on the next set; a busy or unreachable set passes it on to the next.

        A request the servers refused for its own sake (bad input, quota) is not retried
        elsewhere: another set would refuse it too, and retrying would multiply its cost.
        """
        with self._lock:
            start = next(self._next) % len(self._sets)
        failures = []
        for k in range(len(self._sets)):
            s = self._sets[(start + k) % len(self._sets)]
            try:
                return fn(s)
            except RequestRefused as e:
                if "busy" not in str(e):
                    raise
                failures.append(f"{s.name}: {e}")
            except (SecinferNetError, OSError) as e:
                failures.append(f"{s.name}: {e}")
        raise AllSetsFailed("no server set could serve the request: " + "; ".join(failures))
