"""WASI preview1 (sandbox/wasm/wasi/) against wasmtime: programs compiled with clang
--target=wasm32-wasi run with wasmtime's own WASI and with this package's functions as their
imports (wasmtime only executes the Wasm there; every WASI call is handled here), and must
see the same memory layouts, errnos and output."""

from __future__ import annotations

import shutil
from pathlib import Path

from support import compile_wasi
from wasi_support import run_with_this_wasi, run_with_wasmtime_wasi, snapshot

from sandbox.wasm.wasi import Preopen, WasiConfig

LAYOUT_PROGRAM = r"""
#include <stdio.h>
#include <stdint.h>
#include <wasi/api.h>
static uint8_t buf[4096];
static uint8_t *ptrs[64];
static void dump(const char *what, __wasi_size_t n, __wasi_size_t size) {
    printf("%s %u %u:", what, (unsigned)n, (unsigned)size);
    for (__wasi_size_t i = 0; i < n; i++) printf(" %d", (int)(ptrs[i] - buf));
    printf(" |");
    for (__wasi_size_t i = 0; i < size; i++) printf(" %02x", buf[i]);
    printf("\n");
}
int main(void) {
    __wasi_size_t n, size;
    printf("%d\n", __wasi_args_sizes_get(&n, &size));
    printf("%d\n", __wasi_args_get(ptrs, buf));
    dump("args", n, size);
    printf("%d\n", __wasi_environ_sizes_get(&n, &size));
    printf("%d\n", __wasi_environ_get(ptrs, buf));
    dump("env", n, size);
    __wasi_prestat_t pre;
    for (int fd = 3; fd < 8; fd++) {
        __wasi_errno_t e = __wasi_fd_prestat_get(fd, &pre);
        printf("prestat %d: %d", fd, e);
        if (e == 0) {
            char name[64] = {0};
            printf(" len=%u name_err=%d", (unsigned)pre.u.dir.pr_name_len,
                   __wasi_fd_prestat_dir_name(fd, (uint8_t *)name, pre.u.dir.pr_name_len));
            printf(" name=%s", name);
        }
        printf("\n");
    }
    __wasi_fd_t fd;
    printf("escape %d\n", __wasi_path_open(3, 0, "../x", 0, 0, 0, 0, &fd) != 0);
    printf("badf %d\n", __wasi_fd_close(99));
    printf("noent %d\n", __wasi_path_open(3, 1, "missing", 0, 0, 0, 0, &fd));
    printf("notdir %d\n", __wasi_path_open(3, 1, "a.txt/x", 0, 0, 0, 0, &fd));
    printf("exist %d\n", __wasi_path_create_directory(3, "sub"));
    printf("notempty %d\n", __wasi_path_remove_directory(3, "sub"));
    return 0;
}
"""


def test_layout_and_errnos_match_wasmtime(tree: Path, tmp_path: Path) -> None:
    wasm = compile_wasi(tmp_path, LAYOUT_PROGRAM, "layout")
    args = ["prog", "", "two words", "ünïcode"]
    env = {"HOME": "/data", "EMPTY": "", "EQ": "a=b=c"}
    ours = run_with_this_wasi(
        wasm,
        WasiConfig(
            args=args,
            env=env,
            preopens=[
                Preopen(host_path=tree / "data", guest_path="/data", read_only=False),
                Preopen(host_path=tree / "ro", guest_path="/ro"),
            ],
        ),
    )
    theirs = run_with_wasmtime_wasi(
        wasm, args, env, [(tree / "data", "/data", True), (tree / "ro", "/ro", False)], tmp_path
    )
    assert ours == theirs
    assert b"args 4 " in ours[1] and b"prestat 5: 8" in ours[1]


LIBC_PROGRAM = r"""
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
static int cmp(const void *a, const void *b) { return strcmp(*(char **)a, *(char **)b); }
int main(int argc, char **argv) {
    for (int i = 0; i < argc; i++) printf("arg[%d]=%s\n", i, argv[i]);
    printf("HOME=%s\n", getenv("HOME"));
    char line[100];
    if (fgets(line, sizeof line, stdin)) printf("stdin: %s", line);
    FILE *f = fopen("/data/a.txt", "r");
    char buf[100] = {0};
    printf("read %zu: %s\n", fread(buf, 1, 99, f), buf);
    fclose(f);
    f = fopen("/data/out.txt", "w");
    for (int i = 0; i < 1000; i++) fprintf(f, "line %d\n", i);
    fclose(f);
    struct stat st;
    printf("stat %d size %lld reg %d\n", stat("/data/out.txt", &st), (long long)st.st_size,
           S_ISREG(st.st_mode));
    f = fopen("/data/out.txt", "a");
    fputs("appended\n", f);
    fclose(f);
    int fd = open("/data/out.txt", O_RDONLY);
    printf("seek %lld\n", (long long)lseek(fd, -9, SEEK_END));
    ssize_t n = read(fd, buf, 9);
    buf[n] = 0;
    printf("tail %s", buf);
    close(fd);
    printf("mkdir %d rename %d\n", mkdir("/data/new", 0755),
           rename("/data/out.txt", "/data/new/out.txt"));
    DIR *d = opendir("/data/sub");
    char *names[64];
    int count = 0;
    struct dirent *de;
    while ((de = readdir(d)) && count < 64) names[count++] = strdup(de->d_name);
    closedir(d);
    qsort(names, count, sizeof *names, cmp);
    for (int i = 0; i < count; i++) printf("entry %s\n", names[i]);
    printf("escape %d\n", open("/data/../outside/secret.txt", O_RDONLY) >= 0);
    printf("escape link %d\n", open("/data/link_out", O_RDONLY) >= 0);
    printf("abs link %d\n", open("/data/link_etc", O_RDONLY) >= 0);
    printf("inside link %d\n", open("/data/chain1", O_RDONLY) >= 0);
    printf("ro write %d\n", fopen("/ro/r.txt", "w") != NULL);
    printf("ro read %d\n", fopen("/ro/r.txt", "r") != NULL);
    printf("unlink %d %d\n", unlink("/data/new/out.txt"), rmdir("/data/new"));
    errno = 0;
    printf("missing %d %s\n", open("/data/missing", O_RDONLY), strerror(errno));
    struct timespec t0, t1, pause = {0, 20000000};
    clock_gettime(CLOCK_MONOTONIC, &t0);
    nanosleep(&pause, NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long long ms = (t1.tv_sec - t0.tv_sec) * 1000LL + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    printf("slept %d\n", ms >= 20);
    fprintf(stderr, "bye\n");
    return 7;
}
"""


def test_libc_program_matches_wasmtime(tree: Path, tmp_path: Path) -> None:
    wasm = compile_wasi(tmp_path, LIBC_PROGRAM, "libc")
    args = ["libc", "x y"]
    env = {"HOME": "/data"}
    reference = tmp_path / "reference"
    shutil.copytree(tree, reference, symlinks=True)
    ours = run_with_this_wasi(
        wasm,
        WasiConfig(
            args=args,
            env=env,
            stdin=b"first line\nsecond\n",
            preopens=[
                Preopen(host_path=tree / "data", guest_path="/data", read_only=False),
                Preopen(host_path=tree / "ro", guest_path="/ro"),
            ],
        ),
    )
    (tmp_path / "stdin").write_bytes(b"first line\nsecond\n")
    theirs = run_with_wasmtime_wasi(
        wasm,
        args,
        env,
        [(reference / "data", "/data", True), (reference / "ro", "/ro", False)],
        tmp_path,
    )
    assert ours[0] == theirs[0] == 7
    assert ours[2] == theirs[2] == b"bye\n"
    # wasmtime's reference run has no stdin configured; everything else is identical.
    ours_lines = [ln for ln in ours[1].splitlines() if not ln.startswith(b"stdin:")]
    assert ours_lines == theirs[1].splitlines()
    assert b"stdin: first line" in ours[1]
    assert b"escape 0" in ours[1] and b"ro write 0" in ours[1] and b"inside link 1" in ours[1]
    for part in ("data", "ro", "outside"):
        assert snapshot(tree / part) == snapshot(reference / part)
