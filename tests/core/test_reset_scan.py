"""Sandbox.limit_reset_scan: a reset searches only the ranges a host layer names (the
Wasm engine's pool, tests/wasm/test_wasm_call_path.py), it does exactly that (a page
written outside them is the caller's broken promise, left as it is), the names are
checked, and they never outlive the owner: a machine parked for the next sandbox, or
memory mapped afresh from another snapshot, searches all of memory again."""

from __future__ import annotations

import pytest

from sandbox import GuestProtocolError, Sandbox, SandboxConfig, _reaper
from sandbox.config import MiB

pytestmark = pytest.mark.requires_kvm

PAGE = 4096
# A config of its own, so that parked machines of other tests do not mix in.
CONFIG = SandboxConfig(memory_size=16 * MiB, stack_size=276 * 1024)


def _far(sb: Sandbox) -> int:
    """A heap page near the top of guest memory, written by the host below."""
    return (sb.layout.heap_base + sb.layout.heap_size - 16 * PAGE) & ~(PAGE - 1)


def test_a_reset_searches_the_named_ranges_only() -> None:
    with Sandbox(config=CONFIG) as sb:
        far = _far(sb)
        sb.call("add", 1, 2)
        sb.limit_reset_scan([(0, far)])
        sb.memory.write(far, b"kept")
        sb.memory.write(far - PAGE, b"reset")
        sb.restore()
        assert bytes(sb.memory.view[far - PAGE : far - PAGE + 5]) == bytes(5)
        assert bytes(sb.memory.view[far : far + 4]) == b"kept"  # the broken promise
        sb.limit_reset_scan(None)
        sb.restore()
        assert bytes(sb.memory.view[far : far + 4]) == bytes(4)
        assert sb.call("add", 2, 3) == 5


@pytest.mark.parametrize(
    "ranges",
    [
        [(1, PAGE)],  # not page-aligned
        [(0, PAGE + 1)],
        [(0, 2 * PAGE), (PAGE, PAGE)],  # overlapping
        [(0, 1 << 40)],  # beyond memory
        [(-PAGE, PAGE)],
    ],
)
def test_bad_ranges_are_refused(ranges: list[tuple[int, int]]) -> None:
    with Sandbox(config=CONFIG) as sb:
        with pytest.raises((ValueError, GuestProtocolError)):
            sb.limit_reset_scan(ranges)
        far = _far(sb)
        sb.memory.write(far, b"x")
        sb.restore()  # the refused names changed nothing: all of memory searched
        assert bytes(sb.memory.view[far : far + 1]) == b"\0"


def test_the_next_owner_of_a_parked_machine_searches_everything() -> None:
    with Sandbox(config=CONFIG) as first:
        snap = first.snapshot()
    for _ in range(3):
        with Sandbox.from_snapshot(snap) as a:
            a.limit_reset_scan([(0, PAGE)])
        _reaper.drain()  # parked
        with Sandbox.from_snapshot(snap) as b:
            far = _far(b)
            b.memory.write(far, b"left over?")
            b.restore()
            assert bytes(b.memory.view[far : far + 10]) == bytes(10)


def test_memory_mapped_from_another_snapshot_searches_everything() -> None:
    with Sandbox(config=CONFIG) as sb:
        one = sb.snapshot()
        sb.call("add", 1, 2)
        two = sb.snapshot()
        sb.limit_reset_scan([(0, PAGE)])
        sb.restore(one)  # another image: mapped afresh
        far = _far(sb)
        sb.memory.write(far, b"x")
        sb.restore(one)
        assert bytes(sb.memory.view[far : far + 1]) == b"\0"
        sb.restore(two)
