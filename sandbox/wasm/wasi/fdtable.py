"""The program's descriptor table: what each WASI fd is (stdio, a preopened directory, a
file or directory opened under one), the rights it carries, and the host descriptor it
owns. Rights are the only access control a descriptor has: every function asks the table
for the descriptor together with the right it needs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from ...errors import ConfigError
from .config import Preopen
from .types import (
    DIR_READ_RIGHTS,
    DIR_RIGHTS,
    FILE_READ_RIGHTS,
    FILE_RIGHTS,
    STDIN_RIGHTS,
    STDOUT_RIGHTS,
    Errno,
    Fail,
    Filetype,
)

Kind = Literal["stdin", "stdout", "stderr", "file", "dir"]
STDIO: tuple[Kind, ...] = ("stdin", "stdout", "stderr")


def stdio_terminals(stdin: bool, stdout: bool, stderr: bool) -> tuple[bool, bool, bool]:
    """Which of fds 0-2 are terminals, given which are the host's own (inherited): only
    an inherited one whose host descriptor is a terminal (os.isatty). Captured, discarded
    or given output and given input are never terminals."""
    return (
        stdin and os.isatty(0),
        stdout and os.isatty(1),
        stderr and os.isatty(2),
    )


def ident(st: os.stat_result) -> tuple[int, int]:
    """What identifies a host directory: (st_dev, st_ino)."""
    return (st.st_dev, st.st_ino)


@dataclass(eq=False)
class Descriptor:
    """One open descriptor of the guest."""

    kind: Kind
    filetype: Filetype
    base: int  # rights
    inheriting: int
    host_fd: int = -1  # -1 for stdio
    flags: int = 0  # fdflags
    preopen: str | None = None  # guest_path of a preopened directory
    read_only: bool = True
    root: tuple[int, int] = (0, 0)  # ident() of the preopen it lives in
    listing: list[tuple[str, int, Filetype]] | None = field(default=None, repr=False)

    @property
    def is_stdio(self) -> bool:
        return self.kind in STDIO

    def host(self) -> int:
        """The host descriptor: EBADF for stdin, EINVAL for stdout and stderr (which have
        none, for the operations that need one)."""
        if self.host_fd < 0:
            raise Fail(Errno.BADF if self.kind == "stdin" else Errno.INVAL)
        return self.host_fd


class DescriptorTable:
    """fds 0-2 (stdio), the preopened directories from fd 3 in configuration order, then
    whatever path_open adds (the lowest free number). Owns every host descriptor in it.

    `terminals` says which of fds 0-2 are terminals: those have the filetype
    CHARACTER_DEVICE (wasi-libc's isatty() is then true), the others UNKNOWN, as wasmtime
    reports a pipe or a file (see `stdio_terminals`)."""

    def __init__(
        self,
        preopens: list[Preopen],
        max_open: int,
        terminals: tuple[bool, bool, bool] = (False, False, False),
    ) -> None:
        self.max_open = max_open
        kinds = (Filetype.CHARACTER_DEVICE if tty else Filetype.UNKNOWN for tty in terminals)
        stdin, stdout, stderr = kinds
        self._fds: dict[int, Descriptor] = {
            0: Descriptor("stdin", stdin, STDIN_RIGHTS, 0),
            1: Descriptor("stdout", stdout, STDOUT_RIGHTS, 0),
            2: Descriptor("stderr", stderr, STDOUT_RIGHTS, 0),
        }
        try:
            for number, pre in enumerate(preopens, start=3):
                self._fds[number] = self._open_preopen(pre)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _open_preopen(pre: Preopen) -> Descriptor:
        try:
            host_fd = os.open(pre.host_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ConfigError(
                f"preopen {pre.guest_path!r}: cannot open host directory "
                f"{str(pre.host_path)!r}: {exc.strerror}"
            ) from exc
        if pre.read_only:
            base, inheriting = DIR_READ_RIGHTS, DIR_READ_RIGHTS | FILE_READ_RIGHTS
        else:
            base, inheriting = DIR_RIGHTS, DIR_RIGHTS | FILE_RIGHTS
        try:
            root = ident(os.fstat(host_fd))
        except BaseException:
            os.close(host_fd)
            raise
        return Descriptor(
            "dir",
            Filetype.DIRECTORY,
            int(base),
            int(inheriting),
            host_fd=host_fd,
            preopen=pre.guest_path,
            read_only=pre.read_only,
            root=root,
        )

    def __len__(self) -> int:
        return len(self._fds)

    def lookup(self, fd: int) -> Descriptor | None:
        """The descriptor, or None when fd is not open (for poll, which reports per fd)."""
        return self._fds.get(fd)

    def get(self, fd: int, right: int = 0) -> Descriptor:
        """The descriptor `fd`: EBADF when it is not open, ENOTCAPABLE without `right`."""
        entry = self._fds.get(fd)
        if entry is None:
            raise Fail(Errno.BADF)
        if right and (entry.base & right) != right:
            raise Fail(Errno.NOTCAPABLE)
        return entry

    def directory(self, fd: int, right: int) -> Descriptor:
        """The directory `fd` (ENOTDIR for anything else), with `right` (ENOTCAPABLE)."""
        entry = self.get(fd)
        if entry.kind != "dir":
            raise Fail(Errno.NOTDIR)
        if (entry.base & right) != right:
            raise Fail(Errno.NOTCAPABLE)
        return entry

    def check_room(self) -> None:
        """EMFILE when no descriptor can be added (checked before O_CREAT leaves a file)."""
        if len(self._fds) >= self.max_open:
            raise Fail(Errno.MFILE)

    def add(self, entry: Descriptor) -> int:
        """Adds `entry` at the lowest free number; EMFILE (closing its host fd) when full."""
        if len(self._fds) >= self.max_open:
            if entry.host_fd >= 0:
                os.close(entry.host_fd)
            raise Fail(Errno.MFILE)
        number = 0
        while number in self._fds:
            number += 1
        self._fds[number] = entry
        return number

    def remove(self, fd: int) -> None:
        """Closes `fd` and its host descriptor."""
        entry = self.get(fd)
        del self._fds[fd]
        if entry.host_fd >= 0:
            os.close(entry.host_fd)

    def renumber(self, fd: int, to: int) -> None:
        """Moves `fd` to `to`, closing what `to` held (EBADF when either is not open).
        As in wasmtime, any descriptor moves and any is replaced, stdio and preopens
        included: a preopen keeps its name (fd_prestat_*) at its new number, and one that
        is replaced is closed like any other descriptor."""
        self.get(fd)
        target = self.get(to)
        if fd == to:
            return
        del self._fds[to]
        self._fds[to] = self._fds.pop(fd)
        if target.host_fd >= 0:
            os.close(target.host_fd)

    def close(self) -> None:
        """Closes every host descriptor; the table is empty afterwards."""
        fds, self._fds = getattr(self, "_fds", {}), {}
        for entry in fds.values():
            if entry.host_fd >= 0:
                try:
                    os.close(entry.host_fd)
                except OSError:
                    pass
