"""WASI preview1 edge cases against wasmtime, as real programs meet them: renumbering or
replacing a preopened descriptor, path_link, opening a preopened directory itself,
trailing slashes (through symlinks too), and whether stdin/stdout/stderr are terminals.
Each C program runs under wasmtime's own WASI and under this package's (with wasmtime
executing the Wasm, no KVM needed; and end to end in the VM through `python -m sandbox
wasm run`), and everything it prints, its exit code and the files it leaves must be the
same. The few places where this runtime deliberately differs are tested on their own in
test_wasi_confinement.py."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import ROOT, compile_wasi
from wasi_support import (
    FDSTAT,
    Guest,
    run_with_this_wasi,
    run_with_wasmtime_wasi,
    snapshot,
)

from sandbox.wasm.wasi import Preopen, WasiConfig, WasiContext

pytest.importorskip("wasmtime")

EDGES = r"""
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <wasi/api.h>
#define T(expr) do { errno = 0; long r_ = (long)(expr); \
    printf("%-60s %ld %d\n", #expr, r_ < 0 ? -1L : r_, errno); } while (0)
static const char *kind(mode_t m) {
    return S_ISDIR(m) ? "dir" : S_ISREG(m) ? "reg" : S_ISLNK(m) ? "lnk" : "other";
}
static void look(const char *p) {
    struct stat s;
    errno = 0;
    int r = stat(p, &s);
    printf("stat %-24s %d %d %s\n", p, r, errno, r == 0 ? kind(s.st_mode) : "");
    errno = 0;
    r = lstat(p, &s);
    printf("lstat %-23s %d %d %s\n", p, r, errno, r == 0 ? kind(s.st_mode) : "");
    int flags[] = {O_RDONLY, O_RDONLY | O_DIRECTORY, O_RDONLY | O_NOFOLLOW, O_RDWR};
    for (int i = 0; i < 4; i++) {
        errno = 0;
        int fd = open(p, flags[i]);
        printf("open %-24s %x %d %d\n", p, flags[i], fd >= 0, errno);
        if (fd >= 0) close(fd);
    }
}
static int entries(const char *p) {
    DIR *d = opendir(p);
    if (!d) return -errno;
    int n = 0;
    while (readdir(d)) n++;
    closedir(d);
    return n;
}
int main(void) {
    /* Trailing slashes, through symlinks too. */
    const char *paths[] = {"/data", "/data/", "/data/.", "/data/./", "/data/sub/", "/data/sub//",
        "/data/a.txt/", "/data/link_dir", "/data/link_dir/", "/data/link_dir/.",
        "/data/link_dir_slash", "/data/link_dir_slash/", "/data/link_in/", "/data/link_file_slash",
        "/data/dangling/", "/data/missing/", "/data/chain1/", 0};
    for (int i = 0; paths[i]; i++) look(paths[i]);
    char buf[64];
    T(readlink("/data/link_dir/", buf, sizeof buf));
    T(readlink("/data/link_dir", buf, sizeof buf));
    T(unlink("/data/link_dir/"));
    T(unlink("/data/link_in/"));
    T(unlink("/data/sub/"));
    T(unlink("/data/dangling/"));
    T(rmdir("/data/link_dir/"));
    T(rmdir("/data/link_in/"));
    T(rename("/data/link_dir/", "/data/renamed"));
    T(rename("/data/link_in/", "/data/renamed"));
    T(rename("/data/a.txt", "/data/renamed/"));
    T(rename("/data/sub/deep", "/data/moved/"));
    T(rename("/data/moved/", "/data/sub/deep/"));
    T(symlink("sub", "/data/newlink/"));
    T(symlink("sub", "/data/sub/"));
    T(symlink("sub/", "/data/newlink2"));
    T(mkdir("/data/newdir/", 0755));
    T(mkdir("/data/link_dir/", 0755));
    T(mkdir("/data/dangling/", 0755));
    T(mkdir("/data/a.txt/", 0755));
    T(open("/data/newfile/", O_CREAT | O_WRONLY, 0644));
    T(open("/data/link_dir/", O_CREAT | O_WRONLY, 0644));
    T(open("/data/a.txt/", O_CREAT | O_WRONLY, 0644));
    T(open("/data/a.txt/", O_CREAT | O_EXCL | O_WRONLY, 0644));
    T(open("/data/sub/", O_CREAT | O_EXCL | O_WRONLY, 0644));
    T(open("/data/newfile/", O_CREAT | O_EXCL | O_WRONLY, 0644));
    T(open("/data/link_dir/", O_CREAT | O_EXCL | O_WRONLY, 0644));
    T(open("/data/dangling/", O_CREAT | O_EXCL | O_WRONLY, 0644));
    T(open("/data/dangling/", O_CREAT | O_WRONLY, 0644));
    T(rmdir("/data/newdir/"));
    /* path_link. */
    T(link("/data/a.txt", "/data/hard"));
    T(link("/data/a.txt", "/data/hard"));
    T(link("/data/link_in", "/data/hard_link"));
    T(link("/data/sub/inner", "/data/sub/deep/../inner2"));
    T(link("/data/sub", "/data/hard_dir"));
    T(link("/data/link_dir/", "/data/hard_dir2"));
    T(link("/data/a.txt", "/data/sub/"));
    T(link("/data/a.txt", "/data/newname/"));
    T(link("/data/a.txt/", "/data/x"));
    T(link("/data/missing", "/data/x"));
    struct stat s;
    T(stat("/data/hard", &s));
    printf("nlink %d\n", (int)s.st_nlink);
    T(lstat("/data/hard_link", &s));
    printf("hard link to a symlink is a symlink: %d\n", S_ISLNK(s.st_mode));
    T(unlink("/data/hard"));
    /* The preopen itself. */
    printf("entries /data %d /data/ %d . %d\n", entries("/data"), entries("/data/"),
           entries("/data/sub/.."));
    __wasi_fd_t fd;
    __wasi_rights_t dir = __WASI_RIGHTS_FD_READDIR | __WASI_RIGHTS_PATH_OPEN;
    T(__wasi_path_open(3, 0, ".", 0, dir, dir, 0, &fd));
    T(__wasi_path_open(3, 0, "./", __WASI_OFLAGS_DIRECTORY, dir, dir, 0, &fd));
    T(__wasi_path_open(3, 0, "", 0, dir, dir, 0, &fd));
    T(__wasi_path_open(3, 0, ".", 0, __WASI_RIGHTS_FD_WRITE, 0, 0, &fd));
    T(__wasi_path_open(3, 0, ".", __WASI_OFLAGS_DIRECTORY, __WASI_RIGHTS_FD_WRITE, 0, 0, &fd));
    T(__wasi_path_open(3, 0, ".", __WASI_OFLAGS_CREAT, dir, 0, 0, &fd));
    T(__wasi_path_open(3, 0, ".", __WASI_OFLAGS_CREAT | __WASI_OFLAGS_EXCL, dir, 0, 0, &fd));
    T(__wasi_path_open(3, 0, ".", __WASI_OFLAGS_TRUNC, dir, 0, 0, &fd));
    T(__wasi_path_open(3, 0, "./", __WASI_OFLAGS_CREAT | __WASI_OFLAGS_EXCL, dir, 0, 0, &fd));
    T(__wasi_path_open(3, 0, "sub/..", __WASI_OFLAGS_CREAT | __WASI_OFLAGS_EXCL, dir, 0, 0, &fd));
    T(__wasi_path_open(3, 0, "link_dir/..", __WASI_OFLAGS_CREAT, dir, 0, 0, &fd));
    T(__wasi_path_open(3, 0, "sub/..", __WASI_OFLAGS_TRUNC, dir, 0, 0, &fd));
    /* Renumbering: a preopen moves with its name; one replaced is closed. */
    __wasi_prestat_t pre;
    int f = open("/data/a.txt", O_RDONLY);
    T(__wasi_fd_renumber(3, f));
    T(__wasi_fd_prestat_get(f, &pre));
    T(__wasi_fd_prestat_get(3, &pre));
    T(open("/data/sub/b.txt", O_RDONLY));
    T(__wasi_path_open(f, 0, "sub/b.txt", 0, __WASI_RIGHTS_FD_READ, 0, 0, &fd));
    T(__wasi_fd_renumber(fd, 3));
    T(__wasi_fd_prestat_get(3, &pre));
    memset(buf, 0, sizeof buf);
    T(read(3, buf, sizeof buf - 1));
    printf("read through 3: %s\n", buf);
    T(__wasi_path_open(f, 0, "a.txt", 0, __WASI_RIGHTS_FD_READ, 0, 0, &fd));
    T(__wasi_fd_renumber(fd, f));
    T(__wasi_fd_prestat_get(f, &pre));
    T(__wasi_path_open(f, 0, "a.txt", 0, __WASI_RIGHTS_FD_READ, 0, 0, &fd));
    T(__wasi_fd_renumber(1, 1));
    T(__wasi_fd_renumber(3, 3));
    T(__wasi_fd_renumber(50, 1));
    T(__wasi_fd_renumber(1, 50));
    return 0;
}
"""


def edge_tree(root: Path) -> Path:
    """The `tree` fixture plus the links the program above looks through."""
    data = root / "data"
    (data / "link_dir_slash").symlink_to("sub/")
    (data / "link_file_slash").symlink_to("a.txt/")
    (data / "dangling").symlink_to("nothing")
    (data / "sub" / "inner").symlink_to("../a.txt")
    return root


def test_edge_cases_match_wasmtime(tree: Path, tmp_path: Path) -> None:
    wasm = compile_wasi(tmp_path, EDGES, "edges")
    edge_tree(tree)
    reference = tmp_path / "reference"
    shutil.copytree(tree, reference, symlinks=True)
    ours = run_with_this_wasi(
        wasm,
        WasiConfig(
            args=["edges"],
            preopens=[Preopen(host_path=tree / "data", guest_path="/data", read_only=False)],
        ),
    )
    theirs = run_with_wasmtime_wasi(
        wasm, ["edges"], {}, [(reference / "data", "/data", True)], tmp_path
    )
    assert ours[0] == theirs[0] == 0, ours[2]
    assert ours[1].decode().splitlines() == theirs[1].decode().splitlines()
    assert snapshot(tree / "data") == snapshot(reference / "data")
    # The cases of the issue, spelled out (they failed here and not in wasmtime).
    lines = {" ".join(line.split()) for line in ours[1].decode().splitlines()}
    for line in (
        "lstat /data/link_dir/ 0 0 dir",  # a trailing slash follows the link
        "open /data/link_dir/ 5000000 1 0",  # O_NOFOLLOW too
        'unlink("/data/link_dir/") -1 31',  # EISDIR: it names the directory
        "open /data 14000000 0 31",  # O_RDWR of the preopen: EISDIR
        "open /data/. 4002000 1 0",  # O_DIRECTORY of the preopen
        'link("/data/a.txt", "/data/hard") 0 0',
        "nlink 2",
        "__wasi_fd_renumber(3, f) 0 0",  # a preopen moves
        "__wasi_fd_prestat_get(f, &pre) 0 0",  # with its name
        "__wasi_fd_renumber(fd, 3) 0 0",  # and can be replaced
        "read through 3: bee",
    ):
        assert line in lines, line


@pytest.mark.requires_kvm
def test_edge_cases_match_wasmtime_in_the_vm(tree: Path, tmp_path: Path) -> None:
    wasm = compile_wasi(tmp_path, EDGES, "edges")
    edge_tree(tree)
    reference = tmp_path / "reference"
    shutil.copytree(tree, reference, symlinks=True)
    proc = subprocess.run(
        [sys.executable, "-m", "sandbox", "wasm", "run", str(wasm), "--dir"]
        + [f"{tree / 'data'}::/data"],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    theirs = run_with_wasmtime_wasi(
        wasm, [wasm.name], {}, [(reference / "data", "/data", True)], tmp_path
    )
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert proc.stdout.decode().splitlines() == theirs[1].decode().splitlines()
    assert snapshot(tree / "data") == snapshot(reference / "data")


# -- terminals ---------------------------------------------------------------------------

TTY = r"""
#include <stdio.h>
#include <unistd.h>
#include <wasi/api.h>
int main(void) {
    char line[64];
    if (isatty(0)) printf("banner: enter SQL\nprompt> ");
    if (fgets(line, sizeof line, stdin)) printf("got %s", line);
    for (int fd = 0; fd < 3; fd++) {
        __wasi_fdstat_t st;
        __wasi_filestat_t fs;
        int e = __wasi_fd_fdstat_get(fd, &st);
        int f = __wasi_fd_filestat_get(fd, &fs);
        printf("fd %d isatty %d fdstat %d/%d filestat %d/%d\n", fd, isatty(fd), e,
               st.fs_filetype, f, fs.filetype);
    }
    return 0;
}
"""

WASMTIME_RUN = """
import sys, wasmtime
engine = wasmtime.Engine()
linker = wasmtime.Linker(engine)
linker.define_wasi()
store = wasmtime.Store(engine)
wasi = wasmtime.WasiConfig()
wasi.argv = ["tty"]
wasi.inherit_stdin(); wasi.inherit_stdout(); wasi.inherit_stderr()
store.set_wasi(wasi)
instance = linker.instantiate(store, wasmtime.Module.from_file(engine, sys.argv[1]))
try:
    instance.exports(store)["_start"](store)
except wasmtime.ExitTrap as e:
    sys.exit(e.code)
"""


def ours_cmd(wasm: Path) -> list[str]:
    return [sys.executable, "-m", "sandbox", "wasm", "run", str(wasm)]


def wasmtime_cmd(wasm: Path) -> list[str]:
    return [sys.executable, "-c", WASMTIME_RUN, str(wasm)]


def run_in_terminal(cmd: list[str], typed: bytes) -> bytes:
    """Runs `cmd` with stdin, stdout and stderr on a new pseudo-terminal, types `typed`
    and returns what it printed (a terminal turns "\\n" into "\\r\\n")."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT)
        os.close(slave)
        slave = -1
        os.write(master, typed)
        out = b""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        proc.wait(timeout=30)
        return out.replace(b"\r\n", b"\n")
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)


@pytest.mark.requires_kvm
def test_pipes_are_not_terminals_as_in_wasmtime(tmp_path: Path) -> None:
    """The sqlite3 shell's case: SQL piped in gets no banner and no prompt."""
    wasm = compile_wasi(tmp_path, TTY, "tty")
    runs = [
        subprocess.run(cmd, input=b"select 1;\n", capture_output=True, timeout=120, cwd=ROOT)
        for cmd in (ours_cmd(wasm), wasmtime_cmd(wasm))
    ]
    ours, theirs = runs
    assert ours.returncode == theirs.returncode == 0, ours.stderr
    assert ours.stdout == theirs.stdout
    assert ours.stdout.startswith(b"got select 1;\nfd 0 isatty 0 fdstat 0/0 filestat 0/0\n")


@pytest.mark.requires_kvm
def test_terminals_are_terminals_as_in_wasmtime(tmp_path: Path) -> None:
    wasm = compile_wasi(tmp_path, TTY, "tty")
    ours = run_in_terminal(ours_cmd(wasm), b"select 1;\n")
    theirs = run_in_terminal(wasmtime_cmd(wasm), b"select 1;\n")
    assert b"banner: enter SQL\nprompt> got select 1;\n" in ours
    assert b"fd 1 isatty 1 fdstat 0/2 filestat 0/2\n" in ours
    # The terminal echoes what was typed; the program's own lines must be the same.
    assert ours.split(b"banner")[1] == theirs.split(b"banner")[1]


def test_captured_and_given_stdio_are_not_terminals() -> None:
    for config in (
        WasiConfig(stdin=b"x", stdout="capture", stderr="discard"),
        WasiConfig(stdin="inherit", stdout="inherit", stderr="inherit"),
    ):
        g = Guest(WasiContext(config))
        buf = g.alloc(24)
        for fd in (0, 1, 2):
            assert g.call("fd_fdstat_get", fd, buf) == 0
            expected = 2 if config.stdin == "inherit" and os.isatty(fd) else 0
            assert FDSTAT.unpack_from(g.mem.data, buf)[0] == expected, (config, fd)


# -- stack overflows ---------------------------------------------------------------------

STACK = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((noinline)) int huge_frame(int n) {
    volatile char buf[1 << 20];  /* 1 MiB: __stack_pointer goes below address 0 */
    buf[0] = n;
    buf[sizeof buf - 1] = n;
    return buf[n];
}
int deep(int n);
static int (*volatile again)(int) = deep;  /* an indirect call: no loop made of it */
int deep(int n) { return n == 0 ? 0 : again(n - 1) + 1; }
int main(int argc, char **argv) {
    int n = atoi(argv[2]);
    printf("%d\n", argv[1][0] == 'h' ? huge_frame(n) : deep(n));
    return 0;
}
"""


@pytest.mark.requires_kvm
@pytest.mark.parametrize("stack_first", [False, True], ids=["data-first", "stack-first"])
@pytest.mark.parametrize(
    ("args", "kind"),
    [
        (["huge", "1"], "memory_oob"),  # the program's own stack (linear memory) overflows
        (["deep", "100000"], "stack_exhausted"),  # the engine's call stack runs out
        (["deep", "5000"], None),
    ],
    ids=["huge-frame", "deep-recursion", "recursion"],
)
def test_stack_overflows_trap_as_in_wasmtime(
    tmp_path: Path, stack_first: bool, args: list[str], kind: str | None
) -> None:
    """A C-stack overflow is an out-of-bounds access in both engines (the stack is in
    linear memory, below the data or at address 0 with --stack-first); deep recursion
    exhausts the engine's own call stack in both (wasmtime: STACK_OVERFLOW)."""
    import wasmtime

    flags = ("-Wl,--stack-first",) if stack_first else ()
    wasm = compile_wasi(tmp_path, STACK, "stack", flags)
    codes = {"memory_oob": wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS}
    codes["stack_exhausted"] = wasmtime.TrapCode.STACK_OVERFLOW
    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    wasi.argv = ["stack", *args]
    store.set_wasi(wasi)
    start = linker.instantiate(store, wasmtime.Module.from_file(engine, str(wasm)))
    theirs = None
    try:
        start.exports(store)["_start"](store)
    except wasmtime.Trap as trap:
        theirs = trap.trap_code
    proc = subprocess.run(
        [*ours_cmd(wasm), "--", *args], capture_output=True, timeout=120, cwd=ROOT
    )
    if kind is None:
        assert theirs is None and proc.returncode == 0, proc.stderr
    else:
        assert theirs == codes[kind]
        assert proc.returncode == 134 and proc.stderr.endswith(f"({kind})\n".encode())
