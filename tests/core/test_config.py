"""SandboxConfig validation (no KVM) and sandboxes with non-default configs."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from sandbox import ArgumentError, ConfigError, GuestAbort, Sandbox, SandboxConfig, SandboxError

KiB = 1024
MiB = 1024 * KiB


def test_defaults() -> None:
    config = SandboxConfig()
    assert config.memory_size == 16 * MiB
    assert config.memory_size % (2 * MiB) == 0
    assert config.stack_size % 4096 == 0 and config.stack_size > 0
    assert config.output_buffer_size >= 16 * KiB
    assert config.timeout is None
    assert config.heap_size is None


BAD_VALUES = [
    ("memory_size", 3 * MiB),  # not a multiple of 2 MiB
    ("memory_size", 2 * MiB + 4096),
    ("memory_size", 1 * MiB),
    ("memory_size", 0),
    ("memory_size", -2 * MiB),
    ("memory_size", 1024 * MiB + 2 * MiB),  # over 1 GiB
    ("memory_size", 2048 * MiB),
    ("stack_size", 0),
    ("stack_size", -4096),
    ("stack_size", 4097),  # not page aligned
    ("stack_size", 100),
    ("heap_size", 0),
    ("heap_size", -4096),
    ("heap_size", 12345),
    ("input_buffer_size", 0),
    ("input_buffer_size", 1000),
    ("output_buffer_size", 8 * KiB),  # under 16 KiB
    ("output_buffer_size", 16 * KiB - 4096),
    ("output_buffer_size", 16 * KiB + 1),
    ("output_buffer_size", 0),
    ("timeout", 0),
    ("timeout", 0.0),
    ("timeout", -1),
    ("timeout", float("nan")),
    ("memory_size", "lots"),
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
def test_bad_values_are_rejected_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        SandboxConfig(**{field: value})
    assert isinstance(info.value, ValueError)
    assert field in str(info.value)
    assert [e["loc"] for e in info.value.errors()] == [(field,)]


@pytest.mark.parametrize(
    "sizes",
    [
        {"memory_size": 2 * MiB, "stack_size": 1 * MiB, "input_buffer_size": 512 * KiB},
        {"memory_size": 2 * MiB, "heap_size": 2 * MiB},
        {"memory_size": 4 * MiB, "output_buffer_size": 4 * MiB},
        {"memory_size": 16 * MiB, "stack_size": 8 * MiB, "heap_size": 8 * MiB},
    ],
)
def test_sizes_that_do_not_fit_are_rejected(sizes: dict[str, int]) -> None:
    with pytest.raises(ValidationError) as info:
        SandboxConfig(**sizes)
    assert "memory_size" in str(info.value)


def test_valid_non_default_values() -> None:
    config = SandboxConfig(
        memory_size=1024 * MiB,
        stack_size=4096,
        heap_size=4096,
        input_buffer_size=4096,
        output_buffer_size=16 * KiB,
        timeout=0.001,
    )
    assert config.memory_size == 1024 * MiB
    assert SandboxConfig(memory_size=2 * MiB).memory_size == 2 * MiB


def test_config_is_frozen_and_strict() -> None:
    config = SandboxConfig()
    with pytest.raises(ValidationError):
        config.memory_size = 32 * MiB  # type: ignore[misc]
    assert config.memory_size == 16 * MiB
    with pytest.raises(ValidationError, match="memry_size"):
        SandboxConfig(memry_size=32 * MiB)  # type: ignore[call-arg]
    assert hash(config) == hash(SandboxConfig())  # usable as a cache key
    changed = config.model_copy(update={"timeout": 1.0})
    assert changed.timeout == 1.0 and config.timeout is None


def test_guest_that_does_not_fit_is_a_config_error(big_guest: Path) -> None:
    # Raised while preparing the guest, before KVM is touched.
    for memory in (2 * MiB, 4 * MiB):
        with pytest.raises(ConfigError) as info:
            Sandbox(big_guest, config=SandboxConfig(memory_size=memory))
        assert isinstance(info.value, ValueError)
        assert isinstance(info.value, SandboxError)
        assert "memory_size" in str(info.value)


@pytest.mark.requires_kvm
def test_big_guest_fits_in_more_memory(big_guest: Path) -> None:
    with Sandbox(big_guest, config=SandboxConfig(memory_size=8 * MiB)) as box:
        assert box.call("touch", 5) == 1
        assert box.call("touch", 5) == 2
        assert box.call("touch", (3 << 20) - 1) == 1


@pytest.mark.requires_kvm
def test_smallest_memory() -> None:
    with Sandbox(config=SandboxConfig(memory_size=2 * MiB)) as box:
        assert box.layout.mem_size == 2 * MiB
        assert box.call("add", 1, 2) == 3
        assert box.call("heap_check", 64) == sum(16 + i * 97 for i in range(64))
        assert box.call("echo", "x" * 100_000) == "x" * 100_000


@pytest.mark.requires_kvm
def test_larger_memory() -> None:
    config = SandboxConfig(memory_size=64 * MiB)
    with Sandbox(config=config) as box:
        assert box.config is config
        assert box.layout.mem_size == 64 * MiB
        assert box.layout.heap_base + box.layout.heap_size == 64 * MiB
        assert box.call("heap_check", 64) == sum(16 + i * 97 for i in range(64))
        assert box.call("fib", 20) == 6765


@pytest.mark.requires_kvm
def test_explicit_heap_size_is_honoured() -> None:
    expected = sum(16 + i * 97 for i in range(64))  # ~200 KB of blocks
    with Sandbox(config=SandboxConfig(heap_size=1 * MiB)) as box:
        assert box.layout.heap_size == 1 * MiB
        assert box.call("heap_check", 64) == expected
    with Sandbox(config=SandboxConfig(heap_size=64 * KiB)) as box:
        assert box.call("heap_check", 8) == sum(16 + i * 97 for i in range(8))
        with pytest.raises(GuestAbort, match="heap exhausted"):
            box.call("heap_check", 64)
        assert not box.poisoned


@pytest.mark.requires_kvm
def test_buffer_sizes_bound_the_arguments() -> None:
    data = bytes(range(256)) * 2048  # 512 KiB
    config = SandboxConfig(input_buffer_size=1 * MiB, output_buffer_size=1 * MiB)
    with Sandbox(config=config) as box:
        assert box.call("echo_bytes", data) == data
    # The default 256 KiB input buffer.
    with Sandbox() as box, pytest.raises(ArgumentError, match="input_buffer_size"):
        box.call("echo_bytes", data)


@pytest.mark.requires_kvm
def test_small_output_buffer() -> None:
    config = SandboxConfig(
        memory_size=2 * MiB,
        stack_size=64 * KiB,
        input_buffer_size=64 * KiB,
        output_buffer_size=16 * KiB,
    )
    with Sandbox(config=config) as box:
        assert box.call("echo", "x" * 3000) == "x" * 3000
        assert box.call("sum_many", *range(32)) == sum(range(32))
        assert box.call("print_lines", 2000) == 2000
        assert box.last_output.count("\n") == 2000
        # A result bigger than the output buffer is a guest error, not a crash.
        with pytest.raises(GuestAbort, match="too large"):
            box.call("echo", "y" * 20_000)
        assert not box.poisoned
        assert box.call("echo", "after") == "after"
