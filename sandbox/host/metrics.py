"""Prometheus metrics, with the official client (prometheus_client): counters and
histograms with labels, gauges read when scraped, and the process collector (resident
memory, open descriptors, CPU) plus a thread count.

Each `Metrics` has its own CollectorRegistry (tests build several apps in one process).
The hot path looks a series up once per label set and keeps it (`_series`): a
`.labels()` call costs ~1-2 us, a cached child's `inc()` ~0.3 us.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series

if TYPE_CHECKING:
    from .registry import Registry

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
P = "sandbox_host_"


def _threads() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


class _Gauges(Collector):
    """Gauges computed when scraped: pools, functions, connections, threads."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[GaugeMetricFamily]:
        m = self.metrics
        yield GaugeMetricFamily(P + "process_threads", "threads of the host process", _threads())
        yield GaugeMetricFamily(P + "connections", "open HTTP connections", float(m.connections()))
        registry = m.registry_ref
        if registry is None:
            return
        deps = registry.all()
        yield GaugeMetricFamily(P + "functions", "deployed functions", float(len(deps)))
        families = {
            "pool_size": ("sandboxes of a function", "members"),
            "pool_idle": ("idle sandboxes", "idle"),
            "pool_busy": ("sandboxes running a call", "busy"),
            "queued": ("requests waiting for a sandbox", "queued"),
        }
        for key, (help_, attr) in families.items():
            family = GaugeMetricFamily(P + key, help_, labels=["function", "version"])
            for dep in deps:
                if dep.pool is not None:
                    value = float(getattr(dep.pool, attr))
                    family.add_metric([dep.name, str(dep.version)], value)
            yield family


class Metrics:
    """Everything /metrics shows."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        self.requests = Counter(
            P + "http_requests", "HTTP requests answered", ("method", "route", "status"), registry=r
        )
        self.request_latency = Histogram(
            P + "http_request_duration_seconds",
            "time to answer an HTTP request",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.invocations = Counter(
            P + "invocations",
            "function invocations by outcome",
            ("function", "outcome"),
            registry=r,
        )
        self.responses = Counter(
            P + "function_responses",
            "invocations answered, by function, version and HTTP status",
            ("function", "version", "status"),
            registry=r,
        )
        self.invocation_latency = Histogram(
            P + "invocation_duration_seconds",
            "time of a guest call, fresh-state restore included",
            ("function",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.traps = Counter(P + "traps", "guest traps by kind", ("function", "kind"), registry=r)
        self.timeouts = Counter(
            P + "timeouts", "calls past their time limit", ("function",), registry=r
        )
        self.rejected = Counter(
            P + "rejected", "requests refused with 429 (queue full)", ("function",), registry=r
        )
        self.sandboxes_created = Counter(
            P + "sandboxes_created",
            "sandboxes made (cold starts: deploys, pool growth, replacements)",
            ("function",),
            registry=r,
        )
        self.connections_refused = Counter(
            P + "connections_refused",
            "connections and requests refused by the connection limits",
            ("reason",),
            registry=r,
        )
        self.registry_ref: Registry | None = None
        self.connections: Callable[[], int] = lambda: 0
        r.register(_Gauges(self))
        self._series: dict[tuple[Any, ...], Any] = {}

    def watch(self, registry: Registry) -> None:
        self.registry_ref = registry

    def _child(self, family: Any, *labels: str) -> Any:
        key = (id(family), *labels)
        child = self._series.get(key)
        if child is None:
            child = self._series[key] = family.labels(*labels)
        return child

    def request(self, method: str, route: str, status: int, elapsed: float) -> None:
        self._child(self.requests, method, route, str(status)).inc()
        self._child(self.request_latency, route).observe(elapsed)

    def invocation(
        self,
        function: str,
        version: int,
        outcome: str,
        duration: float | None,
        *,
        trap: str | None = None,
    ) -> None:
        self._child(self.invocations, function, outcome).inc()
        if duration is not None:
            self._child(self.invocation_latency, function).observe(duration)
        if outcome == "timeout":
            self._child(self.timeouts, function).inc()
        elif outcome == "rejected":
            self._child(self.rejected, function).inc()
        elif outcome == "trap" and trap is not None:
            self._child(self.traps, function, trap).inc()

    def response(self, function: str, version: int, status: int) -> None:
        self._child(self.responses, function, str(version), str(status)).inc()

    def created_counter(self, function: str) -> Callable[[], None]:
        """Counts one sandbox made for `function` (thread-safe)."""
        return self.sandboxes_created.labels(function).inc

    def refused(self, reason: str) -> None:
        self._child(self.connections_refused, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
