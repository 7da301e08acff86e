#!/bin/sh
# Builds the engine natively as a shared library for the spec-test driver (runner.py).
set -e
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-/tmp/wasm-native}
mkdir -p "$out"
cc -std=gnu11 -O2 -g -Wall -Wextra -fPIC -shared -fno-strict-aliasing ${EXTRA_CFLAGS} \
    -o "$out/libwasmengine.so" $(ls "$here"/../*.c | grep -v /guest.c) "$here"/platform.c
echo "$out/libwasmengine.so"
