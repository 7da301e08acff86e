"""`WasiContext`: one program's WASI state and its table of the 46 preview1 functions,
each wrapped so that nothing a guest passes makes it raise (see the package docstring)."""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from functools import partial
from types import TracebackType

from . import env, fd, fdio, path, poll
from .config import WasiConfig, encode_env
from .memory import GuardedMemory
from .state import WasiState
from .types import (
    I32,
    I64,
    U32,
    U64,
    Errno,
    Fail,
    LinearMemory,
    MemoryOutOfBounds,
    WasiFunction,
    from_oserror,
)

# name -> (params, results); "i" is i32, "I" is i64 (wasi_snapshot_preview1.witx).
SIGNATURES: dict[str, tuple[str, str]] = {
    "args_get": ("ii", "i"),
    "args_sizes_get": ("ii", "i"),
    "environ_get": ("ii", "i"),
    "environ_sizes_get": ("ii", "i"),
    "clock_res_get": ("ii", "i"),
    "clock_time_get": ("iIi", "i"),
    "fd_advise": ("iIIi", "i"),
    "fd_allocate": ("iII", "i"),
    "fd_close": ("i", "i"),
    "fd_datasync": ("i", "i"),
    "fd_fdstat_get": ("ii", "i"),
    "fd_fdstat_set_flags": ("ii", "i"),
    "fd_fdstat_set_rights": ("iII", "i"),
    "fd_filestat_get": ("ii", "i"),
    "fd_filestat_set_size": ("iI", "i"),
    "fd_filestat_set_times": ("iIIi", "i"),
    "fd_pread": ("iiiIi", "i"),
    "fd_prestat_get": ("ii", "i"),
    "fd_prestat_dir_name": ("iii", "i"),
    "fd_pwrite": ("iiiIi", "i"),
    "fd_read": ("iiii", "i"),
    "fd_readdir": ("iiiIi", "i"),
    "fd_renumber": ("ii", "i"),
    "fd_seek": ("iIii", "i"),
    "fd_sync": ("i", "i"),
    "fd_tell": ("ii", "i"),
    "fd_write": ("iiii", "i"),
    "path_create_directory": ("iii", "i"),
    "path_filestat_get": ("iiiii", "i"),
    "path_filestat_set_times": ("iiiiIIi", "i"),
    "path_link": ("iiiiiii", "i"),
    "path_open": ("iiiiiIIii", "i"),
    "path_readlink": ("iiiiii", "i"),
    "path_remove_directory": ("iii", "i"),
    "path_rename": ("iiiiii", "i"),
    "path_symlink": ("iiiii", "i"),
    "path_unlink_file": ("iii", "i"),
    "poll_oneoff": ("iiii", "i"),
    "proc_exit": ("i", ""),
    "proc_raise": ("i", "i"),
    "sched_yield": ("", "i"),
    "random_get": ("ii", "i"),
    "sock_accept": ("iii", "i"),
    "sock_recv": ("iiiiii", "i"),
    "sock_send": ("iiiii", "i"),
    "sock_shutdown": ("ii", "i"),
}
_TYPE_CODES = {"i": I32, "I": I64}

# Every implementation, by name: each takes (WasiState, GuardedMemory, *args).
IMPLEMENTATIONS: dict[str, Callable[..., int]] = {
    **env.FUNCTIONS,
    **fd.FUNCTIONS,
    **fdio.FUNCTIONS,
    **path.FUNCTIONS,
    **poll.FUNCTIONS,
}
assert IMPLEMENTATIONS.keys() == SIGNATURES.keys(), "a WASI function without its signature"


def _call(
    state: WasiState,
    name: str,
    impl: Callable[..., int],
    masks: tuple[int, ...],
    memory: LinearMemory | None,
    *args: int,
) -> int:
    """One WASI call (WasiFunction.call with the context bound): arguments reduced to
    their widths, the implementation's failures turned into an errno."""
    if len(args) != len(masks):
        raise TypeError(f"{name} takes {len(masks)} arguments, got {len(args)}")
    values = [int(a) & m for a, m in zip(args, masks, strict=True)]
    try:
        return int(impl(state, GuardedMemory(memory), *values))
    except Fail as exc:
        return int(exc.code)
    except MemoryOutOfBounds:
        return int(Errno.FAULT)
    except OSError as exc:
        return int(from_oserror(exc))
    except UnicodeError:
        return int(Errno.ILSEQ)
    except (ValueError, OverflowError, struct.error):
        return int(Errno.INVAL)
    except MemoryError:
        return int(Errno.NOMEM)


# name -> (implementation, argument masks, parameter and result type codes): made once,
# so that a new context only binds its state (~46 partials, not 46 closures: the
# difference is ~80 us per sandbox spawn).
_TABLE = {
    name: (
        IMPLEMENTATIONS[name],
        tuple(U32 if p == "i" else U64 for p in params),
        tuple(_TYPE_CODES[p] for p in params),
        tuple(_TYPE_CODES[r] for r in results),
    )
    for name, (params, results) in SIGNATURES.items()
}


class WasiContext:
    """The WASI state of one program: its descriptor table, captured output and exit
    code. Owns host file descriptors: close() (or `with`) releases them; closing twice is
    harmless. Not thread-safe: one program calls it at a time (interrupt() excepted)."""

    def __init__(self, config: WasiConfig) -> None:
        if not isinstance(config, WasiConfig):
            raise TypeError(f"config must be a WasiConfig, not {type(config).__name__}")
        self.config = config
        self._state = WasiState.create(config)
        state = self._state
        self.functions: Mapping[str, WasiFunction] = {
            name: WasiFunction(params, results, partial(_call, state, name, impl, masks))
            for name, (impl, masks, params, results) in _TABLE.items()
        }

    @property
    def exit_code(self) -> int | None:
        """The code the program gave proc_exit, None while it has not exited."""
        return self._state.exit_code

    @exit_code.setter
    def exit_code(self, value: int | None) -> None:
        self._state.exit_code = value

    @property
    def stdout(self) -> bytes:
        """What the program wrote to fd 1 (with stdout="capture")."""
        return self._state.stdout.data

    @property
    def stderr(self) -> bytes:
        """What the program wrote to fd 2 (with stderr="capture")."""
        return self._state.stderr.data

    def output_marks(self) -> tuple[int, int]:
        """Where the captured stdout and stderr end now (see output_since): offsets in
        all the program wrote to each since the captures were last cleared."""
        return self._state.stdout.mark(), self._state.stderr.mark()

    def output_since(self, marks: tuple[int, int]) -> tuple[bytes, bytes]:
        """The captured stdout and stderr written after `marks` (from output_marks)."""
        return self._state.stdout.since(marks[0]), self._state.stderr.since(marks[1])

    def output_truncated_since(self, marks: tuple[int, int]) -> tuple[bool, bool]:
        """Whether some of the stdout and of the stderr written after `marks` was dropped
        because the capture was full (`WasiConfig.output_limit`)."""
        return (
            self._state.stdout.truncated_since(marks[0]),
            self._state.stderr.truncated_since(marks[1]),
        )

    @property
    def truncated(self) -> bool:
        """Whether the captured stdout or stderr dropped output (it reached
        `WasiConfig.output_limit`) since the captures were last cleared."""
        return self._state.stdout.truncated or self._state.stderr.truncated

    def clear_output(self) -> None:
        """Empties the captured stdout and stderr (and forgets that they were truncated)."""
        self._state.stdout.clear()
        self._state.stderr.clear()

    def set_stdin(self, data: bytes) -> None:
        """What fd 0 reads from now on (e.g. one request's body), instead of the
        configured stdin."""
        self._state.stdin.set(data)

    def set_env(self, env: Mapping[str, str]) -> None:
        """The environment the program reads from now on (environ_get), instead of the
        configured one (e.g. one request's CGI variables); `config.env` follows. Raises
        ValueError for a name that is empty or holds '=' or NUL, a value holding NUL, or
        text that is not UTF-8 (the rules of WasiConfig.env), and TypeError for keys or
        values that are not str; the environment is then unchanged."""
        self._state.environ = encode_env(env)
        self.config = self.config.model_copy(update={"env": dict(env)})
        self._state.config = self.config

    def set_deadline(self, deadline_ns: int | None) -> None:
        """A poll_oneoff sleep ends at this time.monotonic_ns() value with EINTR (the
        running call's time limit; None: no limit). Set at the start and the end of
        each call, it also drops an interrupt() that no sleep consumed: an interrupt is
        meant for the call it was given during."""
        self._state.clock.set_deadline(deadline_ns)

    def interrupt(self) -> None:
        """Ends a poll_oneoff sleep in progress, or else the call's next one (see
        set_deadline), with EINTR: call it from another thread when the program's call
        times out or is cancelled (WasmSandbox.cancel does)."""
        self._state.clock.interrupt()

    def close(self) -> None:
        """Closes every host descriptor; the program's later calls get EBADF."""
        state = getattr(self, "_state", None)
        if state is not None:
            state.fds.close()

    def __enter__(self) -> WasiContext:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
