/* The spec test suite's message for each trap kind (WASM_TRAP_*, wasm_abi.h): one table
 * for the interpreter engine (runtime.c) and the AOT runtime (guests/aot/runtime.c). */
#ifndef WASM_TRAP_MESSAGES_H
#define WASM_TRAP_MESSAGES_H

#include "wasm_abi.h"

static const char *const trap_messages[WASM_TRAP_COUNT] = {
    "",
    "unreachable",
    "out of bounds memory access",
    "integer divide by zero",
    "integer overflow",
    "invalid conversion to integer",
    "indirect call type mismatch",
    "undefined element",
    "uninitialized element",
    "call stack exhausted",
    "out of bounds table access",
    "null reference",
    "thrown Wasm exception", /* wasmtime's words for an exception that left the call */
};

#endif
