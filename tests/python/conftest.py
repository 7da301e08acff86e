"""Fixtures of the Python-guest tests. The interpreter starts once per process (about a
second, cached by sandbox.python.interpreter); each test's sandbox is spawned from that
snapshot in milliseconds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandbox import Sandbox
from sandbox.python import PythonSandbox


@pytest.fixture
def sb() -> Iterator[PythonSandbox]:
    with Sandbox("python") as s:
        assert isinstance(s, PythonSandbox)
        yield s
