"""The spare machine a Python sandbox takes (sandbox/machines.py) was warmed by a call
of a shipped function on the background thread; nothing of that call may be visible to
the sandbox that takes it: not the shipped function, not its source lines, not one
object more on the guest's heap."""

from __future__ import annotations

import pytest
from support import drain

from sandbox import Sandbox, _reaper, machines
from sandbox.python import PythonSandbox

pytestmark = pytest.mark.requires_kvm

PROBE = """\
import gc, linecache, sandbox_guest
(sorted(sandbox_guest.DEFINED), sorted(linecache.cache), len(gc.get_objects()))
"""


def triple(x: int) -> int:
    return 3 * x


def test_a_warmed_spare_holds_nothing_of_its_warm_up_call(tier: str) -> None:
    with Sandbox("python", tier=tier) as sb:
        assert isinstance(sb, PythonSandbox)
        assert sb.call(triple, 2) == 6
        snap = sb.snapshot()
    drain()
    with snap.spawn() as first:  # a new VM: a warmed spare is made meanwhile
        _reaper.drain()
        assert machines.idle_count() == 1
        with snap.spawn() as second:
            assert machines.idle_count() == 0  # on the spare
            seen = second.run(PROBE)
            assert seen == first.run(PROBE)
            assert seen[0] == sorted(snap.known) and "_spare_warmup" not in str(seen)
            assert second.call(triple, 5) == first.call(triple, 5) == 15
    drain()
