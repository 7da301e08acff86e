"""Property-based test of the function host's HTTP API against its own /openapi.json
(schemathesis): generated requests to every operation, valid and invalid, with and
without the token, must never get a 5xx, and must get the status codes, content types
and bodies the description documents."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from host_support import (
    AUTH,
    Guests,
    Host,
    deploy,
    start_host,
)

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

pytestmark = pytest.mark.requires_kvm

MAX_EXAMPLES = 50
# Whether a request is acceptable depends on more than any schema can say: the module's
# bytes must be a guest ELF, the arguments must fit the deployed function's signature.
# Schema-valid requests that fail that are answered 400/422, which this check (expecting
# 2xx for every schema-valid request) would call a failure.
EXCLUDED_CHECKS = [schemathesis.checks.positive_data_acceptance]
# Invocations of generated names almost all end in 404; every other one goes to a
# deployed function instead, so that generated arguments reach real guests.
TARGETS = {"invoke": ["st-add", "st-echo", "st-bytes"], "http": ["st-web"]}


@pytest.fixture(scope="module")
def st_host(tmp_path_factory: pytest.TempPathFactory, guests: Guests) -> Iterator[Host]:
    root = tmp_path_factory.mktemp("host-schemathesis")
    host = start_host(root / "data", root / "host.log", max_body_bytes=256 * 1024)
    c = host.client()
    for name, manifest, module in [
        ("st-add", {"entry": "add"}, guests.demo),
        ("st-echo", {"entry": "echo"}, guests.demo),
        ("st-bytes", {"entry": "echo_bytes"}, guests.demo),
        ("st-web", {"mode": "http", "public": True}, guests.http),
    ]:
        assert deploy(c, name, module, **manifest).status_code == 201
    yield host
    host.stop()


def _operations(host: Host) -> list[Any]:
    schema = schemathesis.openapi.from_url(host.url + "/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def _property(operation: Any, mode: str, host: Host, turn: Iterator[int]) -> Any:
    """The hypothesis test of one operation."""
    path = operation.path
    kind = "invoke" if path.endswith("/invoke") else "http" if "/http" in path else None

    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode)))
    def run(case: Any) -> None:
        n = next(turn)
        if kind is not None and n % 2 == 0 and isinstance(case.path_parameters, dict):
            names = TARGETS[kind]
            case.path_parameters["name"] = names[n // 2 % len(names)]
        headers = AUTH if n % 5 else {}  # one in five without the token
        case.call_and_validate(base_url=host.url, headers=headers, excluded_checks=EXCLUDED_CHECKS)

    return run


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_api_never_answers_5xx(st_host: Host, mode: str) -> None:
    """Every operation, MAX_EXAMPLES generated requests each (schema-valid ones, or
    schema-violating ones), checked with schemathesis's default checks: no 5xx,
    documented status codes and content types, bodies matching their schemas."""
    operations = _operations(st_host)
    assert len(operations) >= 18
    turn = itertools.count()
    tested = 0
    for operation in operations:
        try:
            _property(operation, mode, st_host, turn)()
            tested += 1
        except hypothesis.errors.Unsatisfiable:
            assert mode == "negative"  # nothing to violate (e.g. GET /healthz)
    assert tested >= len(operations) // 2


def test_no_errors_were_logged(st_host: Host) -> None:
    """Runs last: no generated request made the host log an error."""
    errors = [r for r in st_host.logs() if r.get("level") not in ("info", "debug", "warning")]
    assert errors == [], json.dumps(errors)[:4000]
