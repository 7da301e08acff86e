/* runtime.c: the AOT guest's runtime. wasm2c's runtime API (wasm-rt.h) on the guest SDK,
 * and the engine ABI (guests/wasm/wasm_abi.h) over the one compiled module the glue
 * describes (aot.h), so the host drives this guest like the interpreter engine:
 *
 * - Linear memory k is the engine ABI's window k (WASM_WINDOW_BASE + k * STRIDE), grown
 *   by the host (WASM_HOST_GROW). The code is compiled with WASM_RT_MEMCHECK_SIGNAL_HANDLER
 *   (no bounds checks on loads and stores): an access past the end faults on the
 *   window's unmapped guard space and the host calls wasm_fault, as for the interpreter.
 * - A native stack overflow (deep Wasm recursion) faults on the stack guard; the host
 *   recovers the vCPU and calls wasm_fault too, which reports "call stack exhausted".
 * - Other traps (wasm_rt_trap) unwind with aot_longjmp to the export adapter.
 * - Imports are linked at instantiation as the interpreter links them: to the exports of
 *   instances registered under the import's module name (wasm_register), to the built-in
 *   "spectest" module, or (functions only) to the host (WASM_HOST_IMPORT, with the
 *   engine's value lists). A linked function is called through its export's adapter; a
 *   linked table, memory or global is the exporter's own (wasm2c's accessors return it).
 * The guest holds the modules it was compiled with (aot_modules: one, or the modules of a
 * linked set, sandbox/wasm/aot/compiler.py); each may be instantiated more than once.
 */
#include "sbx.h"

#include "../wasm/wasm_abi.h"
#include "aot.h"
#include "../wasm/trap_messages.h"

#include <setjmp.h> /* aot_setjmp, aot_longjmp (jmp.S) */

#include "wasm-rt-exceptions.h"

#define AOT_LIMIT 200 /* internal "trap": a resource limit, reported as WASM_STATUS_LIMIT */
#define AOT_UNLINKABLE 201 /* internal "trap": an import that does not link */
#define MAX_INSTANCES 4096
#define MAX_TABLE_ELEMENTS 10000000u

SBX_EXPORT(wasm_abi_version, SBX_TAG_U32) { sbx_ret_u32(ret, WASM_ABI_VERSION); }

/* The host checks that the guest holds the module it validated (sandbox/wasm/aot/): the
 * modules' ids, comma-separated, in aot_modules' order. */
SBX_EXPORT(aot_module_id, SBX_TAG_STR) {
    static char *ids; /* made on the first call: the list never changes */
    static size_t len;
    if (!ids) {
        size_t size = 1;
        for (uint32_t i = 0; i < aot_nmodules; i++) size += strlen(aot_modules[i]->module_id) + 1;
        ids = malloc(size);
        if (!ids) sbx_abort("no memory for the modules' ids");
        for (uint32_t i = 0; i < aot_nmodules; i++) {
            size_t n = strlen(aot_modules[i]->module_id);
            if (i) ids[len++] = ',';
            memcpy(ids + len, aot_modules[i]->module_id, n);
            len += n;
        }
    }
    sbx_ret_str(ret, ids, len);
}

/* ---- Replies ------------------------------------------------------------------------ */

/* A reply is built here, then copied into the call's result record. Most replies are a
 * few bytes: they use the small buffer, which shares a page with the other state every
 * call writes (a reset copies back each page written); a longer one (up to REPLY_MAX: 255
 * v128 results and their types) moves to a heap buffer made on first need. */
#define REPLY_SMALL 256
#define REPLY_MAX 8192
static uint8_t reply_small[REPLY_SMALL];
static uint8_t *reply_big;
static uint8_t *reply = reply_small;
static size_t reply_len, reply_cap = REPLY_SMALL;

static void reply_start(uint8_t status, uint8_t kind) {
    reply = reply_small;
    reply_cap = REPLY_SMALL;
    reply[0] = status;
    reply_len = 1;
    if (status != WASM_STATUS_OK) reply[reply_len++] = kind;
}

static void reply_put(const void *p, size_t n) {
    if (reply_len + n > reply_cap && reply_cap < REPLY_MAX) {
        if (!reply_big) reply_big = malloc(REPLY_MAX);
        if (reply_big) {
            memcpy(reply_big, reply, reply_len);
            reply = reply_big;
            reply_cap = REPLY_MAX;
        }
    }
    if (reply_len + n > reply_cap) n = reply_cap - reply_len;
    memcpy(reply + reply_len, p, n);
    reply_len += n;
}

static void reply_error(uint8_t status, uint8_t kind, const char *msg) {
    reply_start(status, kind);
    reply_put(msg, strlen(msg));
}

static void reply_value(uint8_t type, const aot_val *bits) {
    reply_put(&type, 1);
    reply_put(bits, type == WASM_TYPE_V128 ? 16 : 8);
}

static void ret_reply(sbx_value *ret) { sbx_ret_bytes(ret, reply, reply_len); }


static void reply_trap(int kind) {
    reply_error(WASM_STATUS_TRAP, (uint8_t)kind, trap_messages[kind]);
}

/* ---- Operations and traps ------------------------------------------------------------ */

static jmp_buf trap_buf;
static bool in_op; /* an instantiate or invoke is running (wasm_fault may end it) */
static bool initialized;
static uint32_t trap_element; /* the element index of an "uninitialized element" trap */
static wasm_rt_jmp_buf *unwind_target; /* the innermost try_table's, or NULL */

static int trap_kind(int code) {
    switch (code) {
    case WASM_RT_TRAP_OOB: return WASM_TRAP_MEMORY_OOB;
    case WASM_RT_TRAP_INT_OVERFLOW: return WASM_TRAP_INT_OVERFLOW;
    case WASM_RT_TRAP_DIV_BY_ZERO: return WASM_TRAP_DIV_ZERO;
    case WASM_RT_TRAP_INVALID_CONVERSION: return WASM_TRAP_INVALID_CONVERSION;
    case WASM_RT_TRAP_UNREACHABLE: return WASM_TRAP_UNREACHABLE;
    case WASM_RT_TRAP_CALL_INDIRECT: return WASM_TRAP_INDIRECT_TYPE_MISMATCH;
    case WASM_RT_TRAP_EXHAUSTION: return WASM_TRAP_STACK_EXHAUSTED;
    case WASM_RT_TRAP_NULL_REF: return WASM_TRAP_NULL_REFERENCE;
    case WASM_RT_TRAP_UNCAUGHT_EXCEPTION: return WASM_TRAP_UNCAUGHT_EXCEPTION;
    case WASM_RT_TRAP_TABLE_OOB: return WASM_TRAP_TABLE_OOB;
    case WASM_RT_TRAP_UNDEFINED_ELEMENT: return WASM_TRAP_UNDEFINED_ELEMENT;
    case WASM_RT_TRAP_UNINITIALIZED_ELEMENT: return WASM_TRAP_UNINITIALIZED_ELEMENT;
    case WASM_RT_TRAP_INDIRECT_MISMATCH: return WASM_TRAP_INDIRECT_TYPE_MISMATCH;
    default: return WASM_TRAP_UNREACHABLE;
    }
}

void wasm_rt_trap(wasm_rt_trap_t code) {
    if (!in_op) sbx_abort("wasm trap %d outside a Wasm operation", (int)code);
    aot_longjmp(trap_buf, (int)code == 0 ? AOT_LIMIT + 1 : (int)code);
}

static __attribute__((noreturn)) void limit(void) { wasm_rt_trap((wasm_rt_trap_t)AOT_LIMIT); }

/* Starts an instantiate or invoke: no exception handler yet (see wasm_rt_throw). */
static void op_start(void) {
    in_op = true;
    unwind_target = NULL;
}

static const char *unlinkable_why;

static __attribute__((noreturn)) void unlinkable(const char *why) {
    unlinkable_why = why;
    aot_longjmp(trap_buf, AOT_UNLINKABLE);
}

/* Ends an operation that trapped: the reply for its code. */
static void reply_code(int code) {
    in_op = false;
    if (code == AOT_UNLINKABLE)
        reply_error(WASM_STATUS_UNLINKABLE, 0, unlinkable_why);
    else if (code == AOT_LIMIT)
        reply_error(WASM_STATUS_LIMIT, 0, "the AOT guest's heap or memory pool is exhausted");
    else if (trap_kind(code) == WASM_TRAP_UNINITIALIZED_ELEMENT) {
        char msg[48]; /* the interpreter names the element too */
        snprintf(msg, sizeof msg, "uninitialized element %u", trap_element);
        reply_error(WASM_STATUS_TRAP, WASM_TRAP_UNINITIALIZED_ELEMENT, msg);
    } else
        reply_trap(trap_kind(code));
}

int aot_call_indirect_check(const wasm_rt_funcref_table_t *table, wasm_rt_func_type_t type,
                            uint32_t index) {
    if (index >= table->size) wasm_rt_trap((wasm_rt_trap_t)WASM_RT_TRAP_UNDEFINED_ELEMENT);
    trap_element = index;
    const wasm_rt_funcref_t *ref = &table->data[index];
    if (!ref->func) wasm_rt_trap((wasm_rt_trap_t)WASM_RT_TRAP_UNINITIALIZED_ELEMENT);
    if (type && ref->func_type && memcmp(type, ref->func_type, 32) == 0) return 1;
    wasm_rt_trap((wasm_rt_trap_t)WASM_RT_TRAP_INDIRECT_MISMATCH);
}

/* ---- wasm-rt: exceptions (try_table, throw, throw_ref) ------------------------------------
 * wasm2c's code saves an unwind target (wasm_rt_try: aot_setjmp) per try_table and restores
 * the outer one on the way out; wasm_rt_throw jumps to the innermost. With none (thrown
 * out of the export that was called) the operation ends as the interpreter ends it:
 * "uncaught exception". Every operation starts with none (a trap may have abandoned the
 * frames that held the last one). */

#define MAX_EXCEPTION_SIZE 256 /* wasm2c's WASM_EXN_MAX_SIZE: the payload of an exnref */
static wasm_rt_tag_t exception_tag;
static uint32_t exception_size;
static uint8_t exception_data[MAX_EXCEPTION_SIZE];
void wasm_rt_load_exception(const wasm_rt_tag_t tag, uint32_t size, const void *values) {
    if (size > MAX_EXCEPTION_SIZE) limit(); /* the validator's limits keep payloads smaller */
    exception_tag = tag;
    exception_size = size;
    if (size) memcpy(exception_data, values, size);
}

void wasm_rt_throw(void) {
    if (!unwind_target) wasm_rt_trap(WASM_RT_TRAP_UNCAUGHT_EXCEPTION);
    WASM_RT_LONGJMP(*unwind_target, WASM_RT_TRAP_UNCAUGHT_EXCEPTION);
}

wasm_rt_jmp_buf *wasm_rt_get_unwind_target(void) { return unwind_target; }
void wasm_rt_set_unwind_target(wasm_rt_jmp_buf *target) { unwind_target = target; }
wasm_rt_tag_t wasm_rt_exception_tag(void) { return exception_tag; }
uint32_t wasm_rt_exception_size(void) { return exception_size; }
void *wasm_rt_exception(void) { return exception_data; }

/* ---- wasm-rt: initialisation ------------------------------------------------------------ */

void wasm_rt_init(void) { initialized = true; }
bool wasm_rt_is_initialized(void) { return initialized; }
void wasm_rt_free(void) {}

const char *wasm_rt_strerror(wasm_rt_trap_t trap) { return trap_messages[trap_kind(trap)]; }

void abort(void) { sbx_abort("the compiled module aborted"); }

/* ---- wasm-rt: memories in the engine ABI's windows ------------------------------------ */

static uint32_t n_windows;
static int32_t capture_mem0 = -1; /* memory 0 of the instance being instantiated */

static bool host_grow(uint32_t window, uint64_t pages) {
    sbx_value a[2] = {sbx_val_u64(window), sbx_val_u64(pages)};
    a[0].tag = SBX_TAG_U32;
    sbx_value r = sbx_host_call(WASM_HOST_GROW, 2, a);
    return r.tag == SBX_TAG_BOOL && r.bits != 0;
}

static uint32_t window_of(const wasm_rt_memory_t *mem) {
    return (uint32_t)(((uintptr_t)mem->data - (uintptr_t)WASM_WINDOW_BASE) / WASM_WINDOW_STRIDE);
}

void wasm_rt_allocate_memory(wasm_rt_memory_t *mem, uint64_t initial, uint64_t max, bool is64,
                             uint32_t page_size) {
    /* memory64 and custom page sizes are refused by the validator before compiling */
    if (is64 || page_size != WASM_PAGE_SIZE) sbx_abort("unsupported memory type");
    if (n_windows >= WASM_MAX_MEMORIES || initial > WASM_MAX_PAGES) limit();
    uint32_t window = n_windows++;
    if (!host_grow(window, initial)) limit();
    mem->data = (uint8_t *)(uintptr_t)(WASM_WINDOW_BASE + (uint64_t)window * WASM_WINDOW_STRIDE);
    mem->data_end = mem->data + (uint64_t)WASM_MAX_PAGES * WASM_PAGE_SIZE;
    mem->page_size = WASM_PAGE_SIZE;
    mem->is64 = false;
    mem->pages = initial;
    mem->max_pages = max > WASM_MAX_PAGES ? WASM_MAX_PAGES : max;
    mem->size = initial * WASM_PAGE_SIZE;
    if (capture_mem0 < 0) capture_mem0 = (int32_t)window;
}

uint64_t wasm_rt_grow_memory(wasm_rt_memory_t *mem, uint64_t delta) {
    uint64_t old = mem->pages;
    if (delta > mem->max_pages - old) return UINT32_MAX; /* -1 as a 32-bit memory's i32 */
    uint64_t pages = old + delta;
    if (delta && !host_grow(window_of(mem), pages)) return UINT32_MAX;
    mem->pages = pages;
    mem->size = pages * WASM_PAGE_SIZE;
    return old;
}

void wasm_rt_free_memory(wasm_rt_memory_t *mem) { (void)mem; /* windows are never freed */ }

/* ---- wasm-rt: tables ------------------------------------------------------------------- */

void wasm_rt_allocate_funcref_table(wasm_rt_funcref_table_t *t, uint32_t n, uint32_t max) {
    if (n > MAX_TABLE_ELEMENTS) limit();
    t->data = calloc(n ? n : 1, sizeof *t->data);
    if (!t->data) limit();
    t->size = n;
    t->max_size = max;
}

void wasm_rt_allocate_externref_table(wasm_rt_externref_table_t *t, uint32_t n, uint32_t max) {
    if (n > MAX_TABLE_ELEMENTS) limit();
    t->data = calloc(n ? n : 1, sizeof *t->data);
    if (!t->data) limit();
    t->size = n;
    t->max_size = max;
}

void wasm_rt_allocate_exnref_table(wasm_rt_exnref_table_t *t, uint32_t n, uint32_t max) {
    if (n > MAX_TABLE_ELEMENTS / 32) limit(); /* 272 bytes an element */
    t->data = calloc(n ? n : 1, sizeof *t->data);
    if (!t->data) limit();
    t->size = n;
    t->max_size = max;
}

uint32_t wasm_rt_grow_exnref_table(wasm_rt_exnref_table_t *t, uint32_t delta,
                                   wasm_rt_exnref_t init) {
    uint32_t old = t->size;
    uint64_t n = (uint64_t)old + delta;
    if (n > t->max_size || n > MAX_TABLE_ELEMENTS / 32) return UINT32_MAX;
    if (delta) {
        wasm_rt_exnref_t *grown = realloc(t->data, n * sizeof *grown);
        if (!grown) return UINT32_MAX;
        for (uint64_t i = old; i < n; i++) grown[i] = init;
        t->data = grown;
        t->size = (uint32_t)n;
    }
    return old;
}

void wasm_rt_free_exnref_table(wasm_rt_exnref_table_t *t) { free(t->data); }
void wasm_rt_free_funcref_table(wasm_rt_funcref_table_t *t) { free(t->data); }
void wasm_rt_free_externref_table(wasm_rt_externref_table_t *t) { free(t->data); }

uint32_t wasm_rt_grow_funcref_table(wasm_rt_funcref_table_t *t, uint32_t delta,
                                    wasm_rt_funcref_t init) {
    uint32_t old = t->size;
    uint64_t n = (uint64_t)old + delta;
    if (n > t->max_size || n > MAX_TABLE_ELEMENTS) return UINT32_MAX;
    if (delta) {
        wasm_rt_funcref_t *grown = realloc(t->data, n * sizeof *grown);
        if (!grown) return UINT32_MAX;
        for (uint64_t i = old; i < n; i++) grown[i] = init;
        t->data = grown;
        t->size = (uint32_t)n;
    }
    return old;
}

uint32_t wasm_rt_grow_externref_table(wasm_rt_externref_table_t *t, uint32_t delta,
                                      wasm_rt_externref_t init) {
    uint32_t old = t->size;
    uint64_t n = (uint64_t)old + delta;
    if (n > t->max_size || n > MAX_TABLE_ELEMENTS) return UINT32_MAX;
    if (delta) {
        wasm_rt_externref_t *grown = realloc(t->data, n * sizeof *grown);
        if (!grown) return UINT32_MAX;
        for (uint64_t i = old; i < n; i++) grown[i] = init;
        t->data = grown;
        t->size = (uint32_t)n;
    }
    return old;
}

/* ---- References across the boundary ------------------------------------------------------ */

static wasm_rt_funcref_t *funcrefs; /* id -> funcref handed to the host */
static uint32_t n_funcrefs, cap_funcrefs;

uint64_t aot_funcref_bits(wasm_rt_funcref_t ref) {
    if (!ref.func) return WASM_NULL_REF;
    for (uint32_t i = 0; i < n_funcrefs; i++)
        if (funcrefs[i].func == ref.func && funcrefs[i].module_instance == ref.module_instance)
            return i;
    if (n_funcrefs == cap_funcrefs) {
        uint32_t cap = cap_funcrefs ? cap_funcrefs * 2 : 64;
        wasm_rt_funcref_t *grown = realloc(funcrefs, cap * sizeof *grown);
        if (!grown) limit();
        funcrefs = grown;
        cap_funcrefs = cap;
    }
    funcrefs[n_funcrefs] = ref;
    return n_funcrefs++;
}

wasm_rt_funcref_t aot_funcref_value(uint64_t bits) {
    if (bits == WASM_NULL_REF || bits >= n_funcrefs) return wasm_rt_funcref_null_value;
    return funcrefs[bits];
}

uint64_t aot_externref_bits(wasm_rt_externref_t ref) {
    return ref ? (uint64_t)(uintptr_t)ref - 1 : WASM_NULL_REF;
}

wasm_rt_externref_t aot_externref_value(uint64_t bits) {
    return bits == WASM_NULL_REF ? NULL : (wasm_rt_externref_t)(uintptr_t)(bits + 1);
}

/* ---- Instances, links and host imports ---------------------------------------------------- */

/* What an import linked to: an export of another instance (`data`: that instance's
 * wasm2c struct, NULL for spectest's) and where it is (a table, memory or global); or
 * nothing (export NULL): a function import the host serves. */
struct link {
    void *data;
    const struct aot_export *export;
    void *ptr;
};

/* The context wasm2c passes to the glue's import functions is the instance record given to
 * instantiate for every import module, or, for an imported function called through a
 * table (wasm2c's element initializer adds the offset of its import-module field to the
 * instance struct: the address of a field that holds that record), a pointer to it. As
 * `self` comes first, both point at the record's address: the record is *ctx. */
struct instance {
    struct instance *self;
    const struct aot_module *module;
    void *data;         /* wasm2c's instance struct */
    struct link *links; /* per import of the module */
    uint32_t handle;    /* what wasm_instantiate returns */
    uint32_t memory;    /* window of memory 0, or 0xffffffff */
    bool ready;
};
/* On the heap, one allocation each (wasm2c keeps a pointer to its instance as the
 * imports' context): a static array of MAX_INSTANCES would be ~100 KB of .bss, pages
 * that every reset of the sandbox copies back. */
static struct instance **instances;
static uint32_t n_instances, cap_instances;

/* Bytes of a value of `type` in a value list, after its type byte. */
static size_t value_size(uint8_t type) { return type == WASM_TYPE_V128 ? 16 : 8; }

void aot_call_import(void *ctx, uint32_t index, const aot_val *args, aot_val *results) {
    const struct instance *inst = *(struct instance *const *)ctx;
    uint32_t at = inst->module->func_imports[index];
    const struct link *link = &inst->links[at];
    if (link->export) { /* linked to another instance's function (or spectest's) */
        link->export->thunk(link->data, args, results);
        return;
    }
    const struct aot_import *imp = &inst->module->imports[at];
    uint8_t list[1 + 255 * 17];
    size_t len = 0;
    list[len++] = imp->nparams;
    for (uint32_t i = 0; i < imp->nparams; i++) {
        list[len++] = imp->types[i];
        memcpy(list + len, &args[i], value_size(imp->types[i]));
        len += value_size(imp->types[i]);
    }
    /* Memory 0 of the caller; during instantiation it may not be allocated yet. */
    uint32_t memory = inst->memory;
    if (!inst->ready && capture_mem0 >= 0) memory = (uint32_t)capture_mem0;
    sbx_value a[4] = {sbx_val_u64(inst->handle), sbx_val_u64(index), sbx_val_bytes(list, len),
                      sbx_val_u64(memory)};
    a[0].tag = SBX_TAG_U32;
    a[1].tag = SBX_TAG_U32;
    a[3].tag = SBX_TAG_U32;
    sbx_value r = sbx_host_call(WASM_HOST_IMPORT, 4, a);
    const uint8_t *res = (const uint8_t *)(uintptr_t)r.bits;
    size_t want = 1;
    for (uint32_t i = 0; i < imp->nresults; i++) want += 1 + value_size(imp->types[imp->nparams + i]);
    if (r.tag != SBX_TAG_BYTES || r.len != want || res[0] != imp->nresults)
        sbx_abort("host import %u answered a malformed value list", index);
    size_t at_res = 1;
    for (uint32_t i = 0; i < imp->nresults; i++) {
        uint8_t type = imp->types[imp->nparams + i];
        if (res[at_res] != type) sbx_abort("host import %u answered a value of the wrong type", index);
        results[i] = (aot_val){0, 0};
        memcpy(&results[i], res + at_res + 1, value_size(type));
        at_res += 1 + value_size(type);
    }
}

void *aot_import_ptr(void *ctx, uint32_t index) {
    const struct instance *inst = *(struct instance *const *)ctx;
    return inst->links[index].ptr;
}

static bool name_eq(const char *a, size_t alen, const char *b, size_t blen) {
    return alen == blen && memcmp(a, b, alen) == 0;
}

static const struct aot_export *find_export(const struct aot_module *m, const char *name,
                                            size_t len) {
    for (uint32_t i = 0; i < m->nexports; i++) {
        const struct aot_export *e = &m->exports[i];
        if (name_eq(e->name, e->name_len, name, len)) return e;
    }
    return NULL;
}

/* ---- The built-in "spectest" module (the spec suite's; the interpreter has it too) ---- */

static void spectest_print(void *instance, const aot_val *args, aot_val *results) {
    (void)instance, (void)args, (void)results;
}
static uint32_t spectest_i32 = 666;
static uint64_t spectest_i64 = 666;
static float spectest_f32 = 666.6f;
static double spectest_f64 = 666.6;
static wasm_rt_funcref_table_t spectest_table;
static wasm_rt_memory_t spectest_memory;
static void *locate_i32(void *i) { return (void)i, &spectest_i32; }
static void *locate_i64(void *i) { return (void)i, &spectest_i64; }
static void *locate_f32(void *i) { return (void)i, &spectest_f32; }
static void *locate_f64(void *i) { return (void)i, &spectest_f64; }
/* The table and memory are made on first use (a window only where a module imports it). */
static void *locate_table(void *i) {
    (void)i;
    if (!spectest_table.data) wasm_rt_allocate_funcref_table(&spectest_table, 10, 20);
    return &spectest_table;
}
static void *locate_memory(void *i) {
    (void)i;
    if (!spectest_memory.data) wasm_rt_allocate_memory(&spectest_memory, 1, 2, false, WASM_PAGE_SIZE);
    return &spectest_memory;
}
static const uint8_t t_i32[] = {WASM_TYPE_I32}, t_i64[] = {WASM_TYPE_I64},
                     t_f32[] = {WASM_TYPE_F32}, t_f64[] = {WASM_TYPE_F64},
                     t_i32_f32[] = {WASM_TYPE_I32, WASM_TYPE_F32},
                     t_f64_f64[] = {WASM_TYPE_F64, WASM_TYPE_F64}, t_funcref[] = {WASM_TYPE_FUNCREF};
#define SPECTEST_PRINT(name, n, types) \
    {name, sizeof name - 1, AOT_EXTERN_FUNC, n, 0, 0, types, spectest_print, NULL}
#define SPECTEST_GLOBAL(name, types, at) \
    {name, sizeof name - 1, AOT_EXTERN_GLOBAL, 0, 1, 0, types, NULL, at}
static const struct aot_export spectest_exports[] = {
    SPECTEST_PRINT("print", 0, t_i32),
    SPECTEST_PRINT("print_i32", 1, t_i32),
    SPECTEST_PRINT("print_i64", 1, t_i64),
    SPECTEST_PRINT("print_f32", 1, t_f32),
    SPECTEST_PRINT("print_f64", 1, t_f64),
    SPECTEST_PRINT("print_i32_f32", 2, t_i32_f32),
    SPECTEST_PRINT("print_f64_f64", 2, t_f64_f64),
    SPECTEST_GLOBAL("global_i32", t_i32, locate_i32),
    SPECTEST_GLOBAL("global_i64", t_i64, locate_i64),
    SPECTEST_GLOBAL("global_f32", t_f32, locate_f32),
    SPECTEST_GLOBAL("global_f64", t_f64, locate_f64),
    {"table", 5, AOT_EXTERN_TABLE, 0, 0, 0, t_funcref, NULL, locate_table},
    {"memory", 6, AOT_EXTERN_MEMORY, 0, 0, 0, NULL, NULL, locate_memory},
};
static const struct aot_module spectest = {
    "spectest", 0, 0, 0, NULL, sizeof spectest_exports / sizeof *spectest_exports,
    spectest_exports, 0, NULL, 0, NULL, -1,
};

/* ---- Linking ------------------------------------------------------------------------------ */

struct registration {
    char *name;
    uint32_t len;
    struct instance *instance;
};
static struct registration *registered;
static uint32_t n_registered, cap_registered;

/* The export `imp` links to (and in *data its instance's struct), or NULL: the host's
 * (a name neither registered nor "spectest"). The latest registration of a name wins. */
static const struct aot_export *resolve(const struct aot_import *imp, void **data) {
    const struct aot_module *from = NULL;
    *data = NULL;
    for (uint32_t i = n_registered; i-- > 0 && !from;)
        if (name_eq(registered[i].name, registered[i].len, imp->module, imp->module_len)) {
            from = registered[i].instance->module;
            *data = registered[i].instance->data;
        }
    if (!from && name_eq("spectest", 8, imp->module, imp->module_len)) from = &spectest;
    if (!from) return NULL;
    const struct aot_export *e = find_export(from, imp->name, imp->name_len);
    if (!e) unlinkable("unknown import");
    return e;
}

/* Spec "import matching" of limits: at least the minimum; within the maximum if the
 * import has one (wasm2c gives no maximum as the largest, so an export without one
 * matches an import whose maximum is that largest value). */
static void check_limits(uint64_t size, uint64_t max, uint64_t largest, const struct aot_import *imp) {
    if (size < imp->min) unlinkable("incompatible import type");
    if (imp->max != UINT64_MAX && (max >= largest ? imp->max < largest : max > imp->max))
        unlinkable("incompatible import type");
}

static void link_imports(struct instance *inst) {
    const struct aot_module *m = inst->module;
    for (uint32_t i = 0; i < m->nimports; i++) {
        const struct aot_import *imp = &m->imports[i];
        struct link *link = &inst->links[i];
        const struct aot_export *e = resolve(imp, &link->data);
        if (!e) {
            if (imp->kind != AOT_EXTERN_FUNC) unlinkable("unknown import");
            continue; /* the host's (sandbox/wasm/state.py bound it) */
        }
        if (e->kind != imp->kind) unlinkable("incompatible import type");
        link->export = e;
        switch (imp->kind) {
        case AOT_EXTERN_FUNC:
            if (e->nparams != imp->nparams || e->nresults != imp->nresults ||
                memcmp(e->types, imp->types, imp->nparams + imp->nresults) != 0)
                unlinkable("incompatible import type");
            break;
        case AOT_EXTERN_GLOBAL:
            if (e->types[0] != imp->types[0] || e->mutable_ != imp->mutable_)
                unlinkable("incompatible import type");
            link->ptr = e->locate(link->data);
            break;
        case AOT_EXTERN_TABLE: {
            if (e->types[0] != imp->types[0]) unlinkable("incompatible import type");
            link->ptr = e->locate(link->data);
            /* funcref and externref tables: the same layout but for the element type */
            const wasm_rt_funcref_table_t *t = link->ptr;
            check_limits(t->size, t->max_size, UINT32_MAX, imp);
            break;
        }
        case AOT_EXTERN_MEMORY: {
            link->ptr = e->locate(link->data);
            const wasm_rt_memory_t *mem = link->ptr;
            check_limits(mem->pages, mem->max_pages, WASM_MAX_PAGES, imp);
            break;
        }
        default: unlinkable("incompatible import type");
        }
    }
}

/* ---- The engine ABI ---------------------------------------------------------------------- */

static uint8_t *pending_module;
static uint64_t pending_size;

static bool is_module_size(uint64_t size) {
    for (uint32_t i = 0; i < aot_nmodules; i++)
        if (aot_modules[i]->module_size == size) return true;
    return false;
}

SBX_EXPORT(wasm_alloc, SBX_TAG_U64, SBX_TAG_U64) {
    uint64_t size = sbx_arg_u64(args, 0);
    free(pending_module);
    pending_module = is_module_size(size) ? malloc(size ? size : 1) : NULL;
    pending_size = pending_module ? size : 0;
    sbx_ret_u64(ret, (uint64_t)(uintptr_t)pending_module);
}

/* CRC-32 (IEEE), bit by bit: only modules of one size in one guest need it, and a table
 * would be 1 KiB more of the state a reset copies back. */
static uint32_t crc32_of(const uint8_t *p, uint64_t n) {
    uint32_t c = 0xffffffffu;
    for (uint64_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
    }
    return c ^ 0xffffffffu;
}

/* The host validated the module and chose this guest by the module's hash (it checks
 * aot_module_id); the bytes pick which of the guest's modules it is: by size, and by
 * CRC-32 among modules of one size. The handle is the module's index. */
SBX_EXPORT(wasm_load, SBX_TAG_BYTES, SBX_TAG_U64, SBX_TAG_U64) {
    uint64_t addr = sbx_arg_u64(args, 0), size = sbx_arg_u64(args, 1);
    in_op = false;
    uint32_t found = UINT32_MAX, same_size = 0;
    if (pending_module && addr == (uint64_t)(uintptr_t)pending_module && size == pending_size) {
        bool crc_known = false;
        uint32_t crc = 0;
        for (uint32_t i = 0; i < aot_nmodules; i++)
            if (aot_modules[i]->module_size == size) same_size++;
        for (uint32_t i = 0; i < aot_nmodules && found == UINT32_MAX; i++) {
            if (aot_modules[i]->module_size != size) continue;
            if (same_size > 1 && !crc_known) {
                crc = crc32_of(pending_module, size);
                crc_known = true;
            }
            if (same_size == 1 || crc == aot_modules[i]->module_crc32) found = i;
        }
    }
    if (found == UINT32_MAX) {
        reply_error(WASM_STATUS_BAD_CALL, 0, "this AOT guest runs other modules");
    } else {
        reply_start(WASM_STATUS_OK, 0);
        reply_put(&found, 4);
    }
    free(pending_module);
    pending_module = NULL;
    ret_reply(ret);
}

SBX_EXPORT(wasm_instantiate, SBX_TAG_BYTES, SBX_TAG_I32) {
    in_op = false;
    uint32_t module = (uint32_t)sbx_arg_i32(args, 0);
    if (module >= aot_nmodules) {
        reply_error(WASM_STATUS_BAD_CALL, 0, "no such module");
        ret_reply(ret);
        return;
    }
    const struct aot_module *m = aot_modules[module];
    if (n_instances >= MAX_INSTANCES) {
        reply_error(WASM_STATUS_LIMIT, 0, "too many instances");
        ret_reply(ret);
        return;
    }
    if (n_instances == cap_instances) {
        uint32_t cap = cap_instances ? cap_instances * 2 : 4;
        struct instance **grown = realloc(instances, cap * sizeof *grown);
        if (!grown) {
            reply_error(WASM_STATUS_LIMIT, 0, "the AOT guest's heap is exhausted");
            ret_reply(ret);
            return;
        }
        instances = grown;
        cap_instances = cap;
    }
    struct instance *inst = calloc(1, sizeof *inst);
    void *data = calloc(1, m->instance_size);
    struct link *links = calloc(m->nimports ? m->nimports : 1, sizeof *links);
    if (!inst || !data || !links) {
        free(inst);
        free(data);
        free(links);
        reply_error(WASM_STATUS_LIMIT, 0, "the AOT guest's heap is exhausted");
        ret_reply(ret);
        return;
    }
    instances[n_instances] = inst;
    inst->self = inst;
    inst->module = m;
    inst->handle = n_instances;
    inst->memory = 0xffffffffu;
    inst->ready = false;
    inst->data = data;
    inst->links = links;
    n_instances++; /* a failed instantiation keeps its slot: its memories stay mapped */
    op_start();
    int code = aot_setjmp(trap_buf);
    if (code == 0) {
        if (!initialized) wasm_rt_init();
        link_imports(inst);
        if (m->memory0_import >= 0) inst->memory = window_of(links[m->memory0_import].ptr);
        capture_mem0 = -1; /* linking may have made spectest's memory */
        m->instantiate(inst->data, inst);
        in_op = false;
        if (m->memory0_import < 0 && capture_mem0 >= 0) inst->memory = (uint32_t)capture_mem0;
        inst->ready = true;
        reply_start(WASM_STATUS_OK, 0);
        reply_put(&inst->handle, 4);
    } else {
        reply_code(code);
    }
    capture_mem0 = -1;
    ret_reply(ret);
}

static struct instance *find_instance(uint32_t handle) {
    return handle < n_instances && instances[handle]->ready ? instances[handle] : NULL;
}

SBX_EXPORT(wasm_register, SBX_TAG_BYTES, SBX_TAG_I32, SBX_TAG_STR) {
    size_t len;
    const char *name = sbx_arg_str(args, 1, &len);
    struct instance *inst = find_instance((uint32_t)sbx_arg_i32(args, 0));
    in_op = false;
    if (!inst) {
        reply_error(WASM_STATUS_BAD_CALL, 0, "no such instance");
        ret_reply(ret);
        return;
    }
    if (n_registered == cap_registered) {
        uint32_t cap = cap_registered ? cap_registered * 2 : 8;
        struct registration *grown = realloc(registered, cap * sizeof *grown);
        if (!grown) {
            reply_error(WASM_STATUS_LIMIT, 0, "the AOT guest's heap is exhausted");
            ret_reply(ret);
            return;
        }
        registered = grown;
        cap_registered = cap;
    }
    char *copy = malloc(len ? len : 1);
    if (!copy) {
        reply_error(WASM_STATUS_LIMIT, 0, "the AOT guest's heap is exhausted");
        ret_reply(ret);
        return;
    }
    memcpy(copy, name, len);
    registered[n_registered++] = (struct registration){copy, (uint32_t)len, inst};
    reply_start(WASM_STATUS_OK, 0);
    ret_reply(ret);
}

/* An export of `inst`'s module that the host reaches by name: a function or a global. */
static const struct aot_export *host_export(const struct instance *inst, const char *name,
                                            size_t len, uint8_t kind) {
    const struct aot_export *e = inst ? find_export(inst->module, name, len) : NULL;
    return e && e->kind == kind ? e : NULL;
}

SBX_EXPORT(wasm_invoke, SBX_TAG_BYTES, SBX_TAG_I32, SBX_TAG_STR, SBX_TAG_BYTES) {
    size_t name_len, vals_len;
    const char *name = sbx_arg_str(args, 1, &name_len);
    const uint8_t *vals = sbx_arg_bytes(args, 2, &vals_len);
    struct instance *inst = find_instance((uint32_t)sbx_arg_i32(args, 0));
    const struct aot_export *e = host_export(inst, name, name_len, AOT_EXTERN_FUNC);
    in_op = false;
    if (!inst || !e) {
        reply_error(WASM_STATUS_BAD_CALL, 0, inst ? "no such exported function" : "no such instance");
        ret_reply(ret);
        return;
    }
    if (vals_len < 1 || vals[0] != e->nparams) {
        reply_error(WASM_STATUS_BAD_CALL, 0, "wrong number of arguments");
        ret_reply(ret);
        return;
    }
    /* Sized by the export (at most 255 each): a fixed 8 KiB frame would put one more stack
     * page among those every reset copies back. */
    aot_val argv[e->nparams ? e->nparams : 1], results[e->nresults ? e->nresults : 1];
    size_t at = 1;
    for (uint32_t i = 0; i < e->nparams; i++) {
        uint8_t t = at < vals_len ? vals[at] : 0;
        size_t n = value_size(t);
        if (at + 1 + n > vals_len || t != e->types[i]) {
            reply_error(WASM_STATUS_BAD_CALL, 0, "wrong argument types");
            ret_reply(ret);
            return;
        }
        argv[i] = (aot_val){0, 0};
        memcpy(&argv[i], vals + at + 1, n);
        at += 1 + n;
        if (t == WASM_TYPE_FUNCREF && argv[i].lo != WASM_NULL_REF && argv[i].lo >= n_funcrefs) {
            reply_error(WASM_STATUS_BAD_CALL, 0, "wrong argument types");
            ret_reply(ret);
            return;
        }
    }
    if (at != vals_len) {
        reply_error(WASM_STATUS_BAD_CALL, 0, "wrong number of arguments");
        ret_reply(ret);
        return;
    }
    op_start();
    int code = aot_setjmp(trap_buf);
    if (code == 0) {
        e->thunk(inst->data, argv, results);
        in_op = false;
        reply_start(WASM_STATUS_OK, 0);
        uint8_t n = e->nresults;
        reply_put(&n, 1);
        for (uint32_t i = 0; i < n; i++) reply_value(e->types[e->nparams + i], &results[i]);
    } else {
        reply_code(code);
    }
    ret_reply(ret);
}

SBX_EXPORT(wasm_get, SBX_TAG_BYTES, SBX_TAG_I32, SBX_TAG_STR) {
    size_t len;
    const char *name = sbx_arg_str(args, 1, &len);
    struct instance *inst = find_instance((uint32_t)sbx_arg_i32(args, 0));
    const struct aot_export *e = host_export(inst, name, len, AOT_EXTERN_GLOBAL);
    in_op = false;
    if (!inst || !e) {
        reply_error(WASM_STATUS_BAD_CALL, 0, "no such exported global");
    } else {
        aot_val value = {0, 0};
        e->thunk(inst->data, NULL, &value);
        reply_start(WASM_STATUS_OK, 0);
        uint8_t one = 1;
        reply_put(&one, 1);
        reply_value(e->types[0], &value);
    }
    ret_reply(ret);
}

/* After a fault in a memory window (out of bounds) or on the stack guard (recursion too
 * deep), on a fresh stack: the reply of the operation that faulted. */
SBX_EXPORT(wasm_fault, SBX_TAG_BYTES, SBX_TAG_U64) {
    uint64_t addr = sbx_arg_u64(args, 0);
    if (!in_op) {
        reply_error(WASM_STATUS_BAD_CALL, 0, "no Wasm operation was running");
    } else {
        in_op = false;
        bool window = addr >= WASM_WINDOW_BASE &&
                      addr - WASM_WINDOW_BASE < (uint64_t)WASM_MAX_MEMORIES * WASM_WINDOW_STRIDE;
        reply_trap(window ? WASM_TRAP_MEMORY_OOB : WASM_TRAP_STACK_EXHAUSTED);
    }
    capture_mem0 = -1;
    ret_reply(ret);
}
