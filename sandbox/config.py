"""`SandboxConfig`: the sizes and limits of one sandbox (pydantic, frozen)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

KiB = 1024
MiB = 1024 * KiB
MAX_TIMEOUT = 86400.0  # seconds: the longest time limit a call may be given (a day)
MAX_OUTPUT_LIMIT = 256 * MiB
# How a sandbox starts each call: "none" from wherever the last call left it, "per_call"
# from the state it started in (restored before every call after the first).
ResetMode = Literal["none", "per_call"]


class SandboxConfig(BaseModel):
    """Sizes are in bytes. Invalid values raise pydantic's ValidationError (a
    ValueError) with a message naming the field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    memory_size: int = Field(
        16 * MiB, description="guest memory: a multiple of 2 MiB, 2 MiB to 1 GiB"
    )
    stack_size: int = Field(256 * KiB, description="guest stack, a multiple of 4 KiB")
    heap_size: int | None = Field(
        None, description="guest heap (multiple of 4 KiB); None: all memory left over"
    )
    input_buffer_size: int = Field(
        256 * KiB, description="host -> guest records (call arguments, host-call replies)"
    )
    output_buffer_size: int = Field(
        256 * KiB, description="guest -> host records (results, host calls, output)"
    )
    timeout: float | None = Field(
        None,
        strict=True,
        description="default time limit of a call in seconds (finite, more than 0, at most "
        "a day); None: no limit",
    )
    output_limit: int = Field(
        1 * MiB,
        description="bytes of the guest's output kept per call (last_output, the output "
        "callback); beyond it output is dropped and last_output_truncated is set",
    )

    @field_validator("memory_size")
    @classmethod
    def _memory(cls, v: int) -> int:
        if v % (2 * MiB) or not 2 * MiB <= v <= 1024 * MiB:
            raise ValueError("must be a multiple of 2 MiB between 2 MiB and 1 GiB")
        return v

    @field_validator("stack_size", "input_buffer_size", "heap_size")
    @classmethod
    def _pages(cls, v: int | None) -> int | None:
        if v is not None and (v <= 0 or v % 4096):
            raise ValueError("must be a positive multiple of 4096")
        return v

    @field_validator("output_buffer_size")
    @classmethod
    def _output(cls, v: int) -> int:
        if v < 16 * KiB or v % 4096:
            raise ValueError("must be a multiple of 4096 and at least 16 KiB")
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float | None) -> float | None:
        if v is not None and not (math.isfinite(v) and 0 < v <= MAX_TIMEOUT):
            raise ValueError(
                f"must be a number of seconds more than 0 and at most {MAX_TIMEOUT:g}, or None"
            )
        return v

    @field_validator("output_limit")
    @classmethod
    def _output_limit(cls, v: int) -> int:
        if not 0 <= v <= MAX_OUTPUT_LIMIT:
            raise ValueError(f"must be between 0 and {MAX_OUTPUT_LIMIT} bytes")
        return v

    @model_validator(mode="after")
    def _fits(self) -> SandboxConfig:
        fixed = self.stack_size + 2 * self.input_buffer_size + self.output_buffer_size
        if fixed + (self.heap_size or 0) + 256 * KiB > self.memory_size:
            raise ValueError(
                "stack, heap and buffers do not fit in memory_size (with 256 KiB for "
                "system tables and the guest image): raise memory_size"
            )
        return self
