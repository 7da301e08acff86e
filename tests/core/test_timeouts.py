"""Time limits, cancellation and concurrent callers."""

from __future__ import annotations

import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from support import ROOT, spin_reference

from sandbox import (
    ArgumentError,
    CallCancelled,
    CallTimeout,
    Sandbox,
    SandboxConfig,
    SandboxPoisoned,
)

pytestmark = pytest.mark.requires_kvm

LIMIT = 0.05
SLACK = 0.02  # the requirement: CallTimeout within 20 ms of the limit


def timed_out_after(box: Sandbox, **kwargs: float) -> float:
    start = time.monotonic()
    with pytest.raises(CallTimeout):
        box.call("fault", "spin_forever", **kwargs)
    return time.monotonic() - start


def test_timeout_is_close_to_the_limit() -> None:
    elapsed = []
    for _ in range(5):
        with Sandbox() as box:
            elapsed.append(timed_out_after(box, timeout=LIMIT))
            assert box.poisoned
    assert min(elapsed) >= LIMIT, f"timed out before the limit: {elapsed}"
    assert statistics.median(elapsed) < LIMIT + SLACK, elapsed
    assert max(elapsed) < LIMIT + 1.0, elapsed  # never anywhere near a hang


def test_timeout_is_a_timeout_error_and_poisons(sb: Sandbox) -> None:
    with pytest.raises(TimeoutError) as info:
        sb.call("fault", "spin_forever", timeout=0.02)
    assert "fault" in str(info.value)
    with pytest.raises(SandboxPoisoned, match="CallTimeout"):
        sb.call("add", 1, 2)


def test_config_default_timeout_applies() -> None:
    with Sandbox(config=SandboxConfig(timeout=LIMIT)) as box:
        assert box.call("add", 1, 2) == 3
        elapsed = timed_out_after(box)
    assert LIMIT <= elapsed < LIMIT + 1.0


def test_call_timeout_overrides_config_default() -> None:
    n = 300_000_000  # ~0.2 s of guest time here; far more than the config's 10 ms
    with Sandbox() as reference:
        start = time.monotonic()
        expected = reference.call("spin", n)
        duration = time.monotonic() - start
    assert duration > 0.05, "the spin is too short to outlast the 10 ms default"
    with Sandbox(config=SandboxConfig(timeout=0.01)) as box:
        assert box.call("spin", n, timeout=60) == expected
        assert not box.poisoned
        with pytest.raises(CallTimeout):
            box.call("spin", n)  # the default applies again


def test_finite_spin_under_generous_timeout(sb: Sandbox) -> None:
    assert sb.call("spin", 100_000, timeout=10) == spin_reference(100_000)
    assert sb.call("spin", 50_000_000, timeout=30) == sb.call("spin", 50_000_000)


def test_no_stray_kick_after_a_timed_call(sb: Sandbox) -> None:
    """The timer of a timed call must not kick a later, untimed one."""
    for _ in range(200):
        assert sb.call("add", 1, 2, timeout=0.5) == 3
    expected = sb.call("spin", 150_000_000)  # ~0.1 s untimed, after many timers
    assert expected == sb.call("spin", 150_000_000, timeout=60)
    assert not sb.poisoned


def test_timeout_while_host_function_runs_still_ends_the_call(make_sandbox) -> None:
    box = make_sandbox(host_functions={"slow": lambda s: time.sleep(0.2) or s})
    start = time.monotonic()
    with pytest.raises(CallTimeout):
        box.call("call_host", "slow", "x", timeout=0.05)
    assert time.monotonic() - start < 0.2 + 1.0


@pytest.mark.parametrize("timeout", [-1, 0, 0.0, -0.001, float("nan"), "1"])
def test_invalid_call_timeout_is_an_argument_error(sb: Sandbox, timeout: object) -> None:
    # Regression: a negative timeout timed the call out at once and poisoned the sandbox.
    with pytest.raises(ArgumentError):
        sb.call("add", 1, 2, timeout=timeout)  # type: ignore[arg-type]
    assert not sb.poisoned
    assert sb.call("add", 1, 2) == 3


# -- cancellation ---------------------------------------------------------------------------


def _spin_in_thread(box: Sandbox, errors: list[BaseException]) -> threading.Thread:
    def run() -> None:
        try:
            box.call("fault", "spin_forever", timeout=30)  # the safety net: CallTimeout
        except BaseException as exc:  # noqa: BLE001 - checked by the test
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_cancel_from_another_thread(sb: Sandbox) -> None:
    errors: list[BaseException] = []
    thread = _spin_in_thread(sb, errors)
    time.sleep(0.05)
    first_cancel = time.monotonic()
    # cancel() is a no-op until the call has started; repeat until the call ends.
    while thread.is_alive() and time.monotonic() < first_cancel + 10:
        sb.cancel()
        thread.join(0.05)
    stopped_after = time.monotonic() - first_cancel
    thread.join(30)
    assert not thread.is_alive()
    assert len(errors) == 1 and type(errors[0]) is CallCancelled, errors
    assert stopped_after < 2.0
    assert sb.poisoned
    with pytest.raises(SandboxPoisoned):
        sb.call("add", 1, 2)


def test_a_cancel_does_not_reach_the_next_call(sb: Sandbox) -> None:
    """The caller restores and calls again at once (as a pool does) while cancel() is
    still in its kick loop: the next call is not kicked out as a time-out (it was, every
    time, when the loop kicked whatever call ran), and a stale kick that still lands
    in it only pauses it."""
    n = 2_000_000  # a few ms of guest work: long enough to be in flight
    for _ in range(5):
        timer = threading.Timer(0.05, sb.cancel)
        timer.start()
        with pytest.raises(CallCancelled):
            sb.call("fault", "spin_forever", timeout=30)
        sb.restore()
        assert sb.call("spin", n) == spin_reference(n)
        assert not sb.poisoned
        timer.join()


def test_cancel_without_a_call_is_harmless(sb: Sandbox) -> None:
    sb.cancel()
    assert sb.call("add", 1, 2) == 3
    assert not sb.poisoned


# -- concurrent callers ---------------------------------------------------------------------


def test_two_threads_are_serialized(sb: Sandbox) -> None:
    per_thread = 200
    results: dict[int, list[int]] = {0: [], 1: []}
    barrier = threading.Barrier(2)

    def worker(index: int) -> None:
        barrier.wait()
        for _ in range(per_thread):
            results[index].append(sb.call("counter"))

    threads = [threading.Thread(target=worker, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    everything = results[0] + results[1]
    assert len(everything) == 2 * per_thread
    assert set(everything) == set(range(1, 2 * per_thread + 1))
    for r in results.values():
        assert r == sorted(r)  # each thread sees the counter only go up


def test_concurrent_different_calls_get_their_own_results(sb: Sandbox) -> None:
    errors: list[str] = []

    def worker(k: int) -> None:
        for i in range(100):
            text = f"thread {k} call {i} " + "é" * k
            if sb.call("echo", text) != text or sb.call("add", k, i) != k + i:
                errors.append(f"{k}/{i}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors


def test_sigint_interrupts_a_call() -> None:
    """Regression: the run loop restarted KVM_RUN after any signal, so Ctrl-C could not
    stop a call without a time limit."""
    code = textwrap.dedent(
        """
        import sandbox
        sb = sandbox.Sandbox()
        print("started", flush=True)
        try:
            sb.call("fault", "spin_forever")
        except KeyboardInterrupt:
            print("interrupted", sb.poisoned, flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "started"
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=3)
        except subprocess.TimeoutExpired:
            out = None
        assert out is not None, "SIGINT did not interrupt the call"
        assert out.split() == ["interrupted", "True"]
    finally:
        proc.kill()
        proc.wait()
