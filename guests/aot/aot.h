/* aot.h: the contract between the AOT guest's runtime (runtime.c) and the glue that the
 * compiler driver (sandbox/wasm/aot/glue.py) generates for each module beside wasm2c's
 * output. Forced into every compiled file with -include, after the compiler's own headers.
 *
 * The glue defines `aot_module`: the module's exports (a thunk per function or global
 * that converts raw u64 bits to the C types wasm2c uses), its function imports (each
 * defined by the glue as a call of aot_call_import) and wasm2c's init/instantiate entry
 * points. The runtime speaks the engine ABI of guests/wasm/wasm_abi.h on top of it, so
 * the host drives an AOT guest exactly like the interpreter engine. */
#ifndef AOT_H
#define AOT_H

#include <stdint.h>

#include "wasm-rt.h"

/* A value across the export and import adapters: raw bits, lane 0 of a v128 in the low
 * bits of lo (the engine ABI's value lists; 8 bytes for every other type, in lo). */
typedef struct {
    uint64_t lo, hi;
} aot_val;

/* Trap codes beyond wasm2c's (wasm_rt_trap_t): the driver rewrites the generated code's
 * table checks and call_indirect to raise these, so that every trap has the kind and
 * message the interpreter gives. */
#define WASM_RT_TRAP_TABLE_OOB 100
#define WASM_RT_TRAP_UNDEFINED_ELEMENT 101
#define WASM_RT_TRAP_UNINITIALIZED_ELEMENT 102
#define WASM_RT_TRAP_INDIRECT_MISMATCH 103

/* Table bounds (the driver rewrites the RANGE_CHECKs of wasm2c's table helpers to this):
 * "out of bounds table access", where wasm2c traps OOB for memories and tables alike. */
#define AOT_TABLE_RANGE_CHECK(t, offset, len)                                           \
    do {                                                                                \
        uint64_t aot_end_;                                                              \
        if (__builtin_add_overflow((uint64_t)(offset), (uint64_t)(len), &aot_end_) ||   \
            aot_end_ > (t)->size)                                                       \
            wasm_rt_trap((wasm_rt_trap_t)WASM_RT_TRAP_TABLE_OOB);                       \
    } while (0)

/* A throw's payload (the driver rewrites wasm2c's `wasm_rt_load_exception(&tag, size, ...)`
 * to this): wasm2c 1.0.42 keeps a caught exception's payload in an exnref of at most
 * WASM_EXN_MAX_SIZE (256) bytes, which a tag whose parameters include an exnref (272
 * bytes) exceeds; such a module fails to compile, with this message, and stays on the
 * interpreter. */
#define AOT_LOAD_EXCEPTION(tag, size, values)                                           \
    do {                                                                                \
        _Static_assert((size) <= WASM_EXN_MAX_SIZE,                                     \
                       "AOT: a tag's payload over 256 bytes (an exnref in an "          \
                       "exception) is beyond wasm2c's exnref");                        \
        wasm_rt_load_exception(tag, size, values);                                      \
    } while (0)

typedef void (*aot_thunk)(void *instance, const aot_val *args, aot_val *results);

#define AOT_EXPORT_FUNC 0
#define AOT_EXPORT_GLOBAL 3

struct aot_export {
    const char *name;
    uint32_t name_len;
    uint8_t kind;     /* AOT_EXPORT_FUNC or AOT_EXPORT_GLOBAL */
    uint8_t nparams;  /* a global: 0 */
    uint8_t nresults; /* a global: 1 */
    const uint8_t *types; /* WASM_TYPE_* of the params, then of the results */
    aot_thunk thunk;
};

struct aot_import {
    uint8_t nparams;
    uint8_t nresults;
    const uint8_t *types;
};

struct aot_module {
    const char *module_id; /* sha256 of the module's bytes, hex */
    uint64_t module_size;
    uint64_t instance_size;
    /* wasm2c's instantiate; `ctx` is passed for every import module, and comes back to
     * aot_call_import as the import's first argument. */
    void (*instantiate)(void *instance, void *ctx);
    uint32_t nexports;
    const struct aot_export *exports;
    uint32_t nimports;
    const struct aot_import *imports;
};

extern const struct aot_module aot_module;

/* Calls function import `index` on the host (WASM_HOST_IMPORT): args and results as raw
 * bits, typed by aot_module.imports[index]. */
void aot_call_import(void *ctx, uint32_t index, const aot_val *args, aot_val *results);

/* call_indirect's slow path (the fast path compares the type pointers): true where the
 * element's type has the same hash as `type` (wasm2c's types are SHA-256 of the
 * signature), else a trap with the interpreter's kind for the reason. */
int aot_call_indirect_check(const wasm_rt_funcref_table_t *table, wasm_rt_func_type_t type,
                            uint32_t index);

/* Reference values across the host boundary: a funcref is an id in the runtime's table
 * of funcrefs seen by the host, an externref the host's u64 (WASM_NULL_REF: null). */
uint64_t aot_funcref_bits(wasm_rt_funcref_t ref);
wasm_rt_funcref_t aot_funcref_value(uint64_t bits);
uint64_t aot_externref_bits(wasm_rt_externref_t ref);
wasm_rt_externref_t aot_externref_value(uint64_t bits);

static inline uint64_t aot_f32_bits(float f) {
    uint32_t u;
    __builtin_memcpy(&u, &f, 4);
    return u;
}
static inline float aot_f32_value(uint64_t bits) {
    uint32_t u = (uint32_t)bits;
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
}
static inline uint64_t aot_f64_bits(double d) {
    uint64_t u;
    __builtin_memcpy(&u, &d, 8);
    return u;
}
static inline double aot_f64_value(uint64_t bits) {
    double d;
    __builtin_memcpy(&d, &bits, 8);
    return d;
}

#endif /* AOT_H */
