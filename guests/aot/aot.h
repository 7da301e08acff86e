/* aot.h: the contract between the AOT guest's runtime (runtime.c) and the glue that the
 * compiler driver (sandbox/wasm/aot/glue.py) generates for each module beside wasm2c's
 * output. Forced into every compiled file with -include, after the compiler's own headers.
 *
 * The glue defines `aot_module` for its module: the exports (a thunk per function or
 * global that converts raw u64 bits to the C types wasm2c uses, a locator per table,
 * memory or global), the imports (wasm2c's import functions, each defined by the glue as
 * a call of aot_call_import or aot_import_ptr) and wasm2c's instantiate. A guest holds
 * one module or several (each module's objects linked into one with only `aot_module`
 * global, renamed aot_module_<k>), listed in `aot_modules`. The runtime speaks the engine ABI of guests/wasm/wasm_abi.h on top of it, so
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
/* Where an exported table, memory or global of `instance` is (wasm2c's export accessor:
 * a wasm_rt_*_table_t*, wasm_rt_memory_t* or the global's value). */
typedef void *(*aot_locate)(void *instance);

/* Kinds of imports and exports (the binary format's external kinds). */
#define AOT_EXTERN_FUNC 0
#define AOT_EXTERN_TABLE 1
#define AOT_EXTERN_MEMORY 2
#define AOT_EXTERN_GLOBAL 3
#define AOT_EXTERN_TAG 4

struct aot_export {
    const char *name;
    uint32_t name_len;
    uint8_t kind;     /* AOT_EXTERN_* */
    uint8_t nparams;  /* a function's; else 0 */
    uint8_t nresults; /* a function's; a global: 1; else 0 */
    uint8_t mutable_; /* a global's mutability */
    /* a function: WASM_TYPE_* of the params, then of the results; a global: its type;
     * a table: its element type; a memory: none */
    const uint8_t *types;
    aot_thunk thunk;   /* a function: calls it; a global: reads it; else NULL */
    aot_locate locate; /* a table, memory or global: where it is; else NULL */
};

/* One import of the module, in the module's order (all kinds). Function imports are
 * numbered among themselves too (the host's index, aot_call_import's `index`). */
struct aot_import {
    const char *module;
    uint32_t module_len;
    const char *name;
    uint32_t name_len;
    uint8_t kind;     /* AOT_EXTERN_* */
    uint8_t nparams;  /* as in aot_export */
    uint8_t nresults;
    uint8_t mutable_;
    const uint8_t *types;
    uint64_t min, max; /* a table's or memory's limits; max UINT64_MAX: none */
};

struct aot_module {
    const char *module_id; /* sha256 of the module's bytes, hex */
    uint64_t module_size;
    uint32_t module_crc32; /* of the module's bytes: tells apart modules of one size */
    uint64_t instance_size;
    /* wasm2c's instantiate; `ctx` is passed for every import module, and comes back to
     * aot_call_import and aot_import_ptr as the import's first argument. */
    void (*instantiate)(void *instance, void *ctx);
    uint32_t nexports;
    const struct aot_export *exports;
    uint32_t nimports;
    const struct aot_import *imports;
    uint32_t nfunc_imports;
    const uint32_t *func_imports; /* function import k -> its index in imports */
    int32_t memory0_import;       /* the import index of memory 0, or -1: its own */
};

/* The modules compiled into this guest (the compiler driver writes the list; a guest of
 * one module has one). */
extern const struct aot_module *const aot_modules[];
extern const uint32_t aot_nmodules;

/* Calls function import `index` (k-th function import): on the host (WASM_HOST_IMPORT),
 * or the export of another instance in this guest it was linked to. Args and results
 * as raw bits, typed by the import. */
void aot_call_import(void *ctx, uint32_t index, const aot_val *args, aot_val *results);

/* Where import `index` (a table, memory or global; index among all imports) linked to:
 * what wasm2c's import accessor returns. */
void *aot_import_ptr(void *ctx, uint32_t index);

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
