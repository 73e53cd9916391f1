"""Prometheus metrics of one server, on an opt-in port (``secinfer serve --metrics-port``).

Exported (all per server process): ``secinfer_sessions_total``, ``secinfer_requests_total``,
``secinfer_inputs_total``, ``secinfer_refused_total``, ``secinfer_busy_total``,
``secinfer_server_failures_total``, ``secinfer_step_seconds`` (a histogram of the time of
one step's secure forward), ``secinfer_step_users`` (users per step: the batching), and
``secinfer_bytes_sent_total`` / ``secinfer_rounds_total`` of the servers' session.

The endpoint shows counts and timings only, never a value of any user's data; it binds to
127.0.0.1 unless told otherwise, since request rates are still operational information.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["ServiceMetrics"]


class ServiceMetrics:
    """Counters and histograms in their own registry (no process-global state)."""

    def __init__(self, party_id: int) -> None:
        try:
            import prometheus_client as prom
            from prometheus_client.core import CounterMetricFamily
            from prometheus_client.registry import Collector
        except ImportError as e:  # an extra, not a core dependency
            raise ImportError("metrics need the prometheus-client package: "
                              "pip install 'secinfer[service]'") from e
        self._prom = prom
        self.registry = prom.CollectorRegistry()
        labels = {"party": str(party_id)}
        r = self.registry

        def counter(name: str, doc: str):
            return prom.Counter(name, doc, labelnames=list(labels), registry=r).labels(**labels)

        self._counters = {
            "sessions": counter("secinfer_sessions", "user sessions admitted"),
            "requests": counter("secinfer_requests", "requests answered"),
            "inputs": counter("secinfer_inputs", "inputs (batch rows) answered"),
            "refused": counter("secinfer_refused", "requests refused (bad input, limits)"),
            "busy": counter("secinfer_busy", "user sessions turned away: max_users reached"),
            "failures": counter("secinfer_server_failures", "another server failed"),
        }
        self._latency = prom.Histogram(
            "secinfer_step_seconds", "seconds of one step's secure forward pass",
            labelnames=list(labels), registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)).labels(**labels)
        self._users = prom.Histogram(
            "secinfer_step_users", "users whose requests ran in one step (batching)",
            labelnames=list(labels), registry=r, buckets=(1, 2, 4, 8, 16, 32)).labels(**labels)
        self._traffic: Callable[[], tuple[int, int]] = lambda: (0, 0)
        parent = self

        class _Traffic(Collector):
            def collect(self):
                sent, rounds = parent._traffic()
                yield CounterMetricFamily(
                    "secinfer_bytes_sent", "bytes sent to the other servers", value=sent)
                yield CounterMetricFamily(
                    "secinfer_rounds", "communication rounds with the other servers",
                    value=rounds)

        r.register(_Traffic())
        self._server: Any = None

    def count(self, what: str, n: int = 1) -> None:
        self._counters[what].inc(n)

    def observe_step(self, users: int, inputs: int, seconds: float) -> None:
        self._counters["requests"].inc(users)
        self._counters["inputs"].inc(inputs)
        self._latency.observe(seconds)
        self._users.observe(users)

    def track_traffic(self, read: Callable[[], tuple[int, int]]) -> None:
        self._traffic = read

    def text(self) -> str:
        return self._prom.generate_latest(self.registry).decode()

    def start(self, port: int, host: str = "127.0.0.1") -> None:
        self._server, _ = self._prom.start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
