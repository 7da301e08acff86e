"""Prometheus metrics, with the official client (prometheus_client): counters and
histograms with labels, gauges read when scraped, and the process collector (resident
memory, open descriptors, CPU) plus a thread count.

Each `Metrics` has its own CollectorRegistry (tests build several apps in one process).
The per-request series (requests, invocations, responses, traps, timeouts, rejections,
latencies) are counted by the event loop's thread alone, in plain dicts and lists, and
handed to prometheus_client as metric families when scraped (`_Hot`): an invocation's
metrics cost ~1 us instead of the ~5 us of prometheus_client's locked counters and
histograms. Series other threads count (sandboxes made) stay prometheus_client Counters.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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


class _Histogram:
    """One histogram series: counts per bucket (not cumulative) and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last: above every bound
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, value)] += 1  # the first bound >= value
        self.total += value


_LE = [floatToGoString(b) for b in LATENCY_BUCKETS] + ["+Inf"]  # type: ignore[no-untyped-call]


class _Family:
    """The series of one metric, by label values, counted on the event loop's thread."""

    __slots__ = ("name", "help", "labels", "series")

    def __init__(self, name: str, help_: str, labels: tuple[str, ...]) -> None:
        self.name, self.help, self.labels = name, help_, labels
        self.series: dict[tuple[str, ...], Any] = {}

    def inc(self, key: tuple[str, ...]) -> None:
        series = self.series
        series[key] = series.get(key, 0) + 1

    def observe(self, key: tuple[str, ...], value: float) -> None:
        hist = self.series.get(key)
        if hist is None:
            hist = self.series[key] = _Histogram()
        hist.observe(value)

    def collect(self) -> CounterMetricFamily | HistogramMetricFamily:
        series = list(self.series.items())
        if series and isinstance(series[0][1], _Histogram):
            hfamily = HistogramMetricFamily(self.name, self.help, labels=self.labels)
            for key, hist in series:
                cumulative, buckets = 0, []
                for le, count in zip(_LE, list(hist.counts), strict=True):
                    cumulative += count
                    buckets.append((le, float(cumulative)))
                hfamily.add_metric(list(key), buckets, hist.total)
            return hfamily
        cfamily = CounterMetricFamily(self.name, self.help, labels=self.labels)
        for key, count in series:
            cfamily.add_metric(list(key), float(count))
        return cfamily


class _Hot(Collector):
    """The per-request families (see the module docstring)."""

    def __init__(self, families: list[_Family]) -> None:
        self.families = families

    def collect(self) -> Iterable[CounterMetricFamily | HistogramMetricFamily]:
        for family in self.families:
            yield family.collect()


class Metrics:
    """Everything /metrics shows. `request`, `invocation`, `response` and `refused` are
    called on the event loop's thread only; `created_counter`'s counter anywhere."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        self.requests = _Family(
            P + "http_requests", "HTTP requests answered", ("method", "route", "status")
        )
        self.request_latency = _Family(
            P + "http_request_duration_seconds", "time to answer an HTTP request", ("route",)
        )
        self.invocations = _Family(
            P + "invocations", "function invocations by outcome", ("function", "outcome")
        )
        self.responses = _Family(
            P + "function_responses",
            "invocations answered, by function, version and HTTP status",
            ("function", "version", "status"),
        )
        self.invocation_latency = _Family(
            P + "invocation_duration_seconds",
            "time of a guest call, fresh-state restore included",
            ("function",),
        )
        self.traps = _Family(P + "traps", "guest traps by kind", ("function", "kind"))
        self.timeouts = _Family(P + "timeouts", "calls past their time limit", ("function",))
        self.rejected = _Family(
            P + "rejected", "requests refused with 429 (queue full)", ("function",)
        )
        self.connections_refused = _Family(
            P + "connections_refused",
            "connections and requests refused by the connection limits",
            ("reason",),
        )
        self.sandboxes_created = Counter(
            P + "sandboxes_created",
            "sandboxes made (cold starts: deploys, pool growth, replacements)",
            ("function",),
            registry=r,
        )
        r.register(
            _Hot(
                [
                    self.requests,
                    self.request_latency,
                    self.invocations,
                    self.responses,
                    self.invocation_latency,
                    self.traps,
                    self.timeouts,
                    self.rejected,
                    self.connections_refused,
                ]
            )
        )
        self.registry_ref: Registry | None = None
        self.connections: Callable[[], int] = lambda: 0
        r.register(_Gauges(self))

    def watch(self, registry: Registry) -> None:
        self.registry_ref = registry

    def request(self, method: str, route: str, status: int, elapsed: float) -> None:
        self.requests.inc((method, route, str(status)))
        self.request_latency.observe((route,), elapsed)

    def invocation(
        self, function: str, outcome: str, duration: float | None, *, trap: str | None = None
    ) -> None:
        self.invocations.inc((function, outcome))
        if duration is not None:
            self.invocation_latency.observe((function,), duration)
        if outcome == "timeout":
            self.timeouts.inc((function,))
        elif outcome == "rejected":
            self.rejected.inc((function,))
        elif outcome == "trap" and trap is not None:
            self.traps.inc((function, trap))

    def response(self, function: str, version: int, status: int) -> None:
        self.responses.inc((function, str(version), str(status)))

    def created_counter(self, function: str) -> Callable[[], None]:
        """Counts one sandbox made for `function` (thread-safe)."""
        return self.sandboxes_created.labels(function).inc

    def refused(self, reason: str) -> None:
        self.connections_refused.inc((reason,))

    def render(self) -> bytes:
        return generate_latest(self.registry)
