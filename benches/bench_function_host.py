"""Function host: requests per second through the serverless function host, and the
latency of one request (p50, p99), against the same guest function called directly.

The function host does not exist yet (issue 5): each row is reported as skipped with that
reason, so the report shows what is missing instead of leaving it out. Replace the skip
with the measurement when the host lands.
"""

from __future__ import annotations

THEME = "function-host"
NOT_YET = "not implemented yet (issue 5: the serverless function host)"

ROWS = (
    "function host: throughput, requests/s",
    "function host: request latency p50",
    "function host: request latency p99",
)


def test_function_host(bench_nofloor):
    *first, last = ROWS
    for scenario in first:
        bench_nofloor.skip(scenario, NOT_YET, now=False)
    bench_nofloor.skip(last, NOT_YET)
