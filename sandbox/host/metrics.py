"""Prometheus metrics in the text exposition format (version 0.0.4), without a client
library: counters and histograms with labels, and gauges read when scraped. Updated
only from the event loop's thread, so no locks."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

Labels = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class Counter:
    def __init__(self, name: str, help_: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_, tuple(labels)
        self.values: dict[Labels, float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.label_names, labels)} {_number(value)}"


class Histogram:
    def __init__(
        self,
        name: str,
        help_: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        self.name, self.help, self.label_names = name, help_, tuple(labels)
        self.buckets = tuple(buckets)
        self.series: dict[Labels, tuple[list[int], list[float]]] = {}  # counts, [sum]

    def observe(self, value: float, *labels: str) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = ([0] * (len(self.buckets) + 1), [0.0])
        series[0][bisect.bisect_left(self.buckets, value)] += 1
        series[1][0] += value

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for labels, (counts, total) in sorted(self.series.items()):
            cumulative = 0
            for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
                cumulative += count
                le = _labels(self.label_names, labels, f'le="{_number(bound)}"')
                yield f"{self.name}_bucket{le} {cumulative}"
            plain = _labels(self.label_names, labels)
            yield f"{self.name}_sum{plain} {_number(total[0])}"
            yield f"{self.name}_count{plain} {cumulative}"


class Gauge:
    """A gauge whose samples are computed when scraped by `collect()`."""

    def __init__(
        self,
        name: str,
        help_: str,
        labels: Sequence[str],
        collect: Callable[[], Iterable[tuple[Labels, float]]],
    ) -> None:
        self.name, self.help, self.label_names = name, help_, tuple(labels)
        self.collect = collect

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        for labels, value in sorted(self.collect()):
            yield f"{self.name}{_labels(self.label_names, labels)} {_number(value)}"


class Metrics:
    """Everything /metrics shows. `gauges` is filled in by the app (pool sizes)."""

    def __init__(self) -> None:
        p = "sandbox_host_"
        self.requests = Counter(
            p + "http_requests_total", "HTTP requests answered", ("method", "route", "status")
        )
        self.request_latency = Histogram(
            p + "http_request_duration_seconds", "time to answer an HTTP request", ("route",)
        )
        self.invocations = Counter(
            p + "invocations_total", "function invocations by outcome", ("function", "outcome")
        )
        self.invocation_latency = Histogram(
            p + "invocation_duration_seconds",
            "time of a guest call, fresh-state restore included",
            ("function",),
        )
        self.traps = Counter(p + "traps_total", "guest traps by kind", ("function", "kind"))
        self.timeouts = Counter(p + "timeouts_total", "calls past their time limit", ("function",))
        self.rejected = Counter(
            p + "rejected_total", "requests refused with 429 (queue full)", ("function",)
        )
        self.gauges: list[Gauge] = []

    def render(self) -> str:
        families: list[Counter | Histogram | Gauge] = [
            self.requests,
            self.request_latency,
            self.invocations,
            self.invocation_latency,
            self.traps,
            self.timeouts,
            self.rejected,
            *self.gauges,
        ]
        return "\n".join(line for f in families for line in f.render()) + "\n"
