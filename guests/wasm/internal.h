/* internal.h: the engine's data structures (modules, instances, functions, memories,
 * tables, globals) and the interfaces between decoder, compiler, runtime and interpreter. */
#ifndef WASM_INTERNAL_H
#define WASM_INTERNAL_H

#include "engine.h"

void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);

#define NULL_REF ((uint64_t)WASM_NULL_REF)
#define UNUSED __attribute__((unused))
#define NORETURN __attribute__((noreturn))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

/* ---- Value slots ------------------------------------------------------------------------
 * Every Wasm value (operand-stack entry, local, argument, result) occupies one 16-byte
 * slot: ENG_SLOT_WORDS u64 words of the value stack. Instruction fields name slots by
 * their first word's index, so the interpreter reads fp[i] for a scalar (its low 8
 * bytes; the high 8 are don't-care) and fp[i], fp[i + 1] for a v128 (low lanes first,
 * little-endian). The compiler is untyped, so moves (MOV, RET1, SELECT, globals,
 * arguments) always copy the whole 16 bytes. */
#define ENG_SLOT_WORDS 2u

typedef struct v128_bits {
    uint64_t lo, hi;
} v128_bits;

/* ---- Types --------------------------------------------------------------------------- */
typedef struct functype {
    uint32_t nparams, nresults;
    uint8_t *types; /* params then results */
    uint32_t canon; /* canonical id: equal ids <=> structurally equal types */
} functype;

typedef struct limits {
    uint64_t min, max;
    bool has_max;
} limits;

enum { EXT_FUNC = 0, EXT_TABLE = 1, EXT_MEM = 2, EXT_GLOBAL = 3, EXT_TAG = 4 };

/* A constant expression as written in the module (evaluated at instantiation). */
typedef struct cexpr {
    const uint8_t *code;
    uint32_t len;
} cexpr;

typedef struct import_desc {
    const char *module, *name;
    uint32_t module_len, name_len;
    uint8_t kind;
    uint32_t type;       /* EXT_FUNC, EXT_TAG: type index */
    uint8_t valtype;     /* EXT_GLOBAL: value type; EXT_TABLE: element type */
    bool mut;            /* EXT_GLOBAL */
    limits lim;          /* EXT_TABLE / EXT_MEM */
} import_desc;

typedef struct export_desc {
    const char *name;
    uint32_t name_len;
    uint8_t kind;
    uint32_t index;
} export_desc;

typedef struct global_desc {
    uint8_t valtype;
    bool mut;
    cexpr init;
} global_desc;

typedef struct table_desc {
    uint8_t elemtype;
    limits lim;
} table_desc;

enum { SEG_ACTIVE, SEG_PASSIVE, SEG_DECLARATIVE };

typedef struct elem_desc {
    uint8_t mode;
    uint8_t elemtype;
    uint32_t table;
    cexpr offset;
    uint32_t count;
    cexpr *items; /* one constant expression per element */
} elem_desc;

typedef struct data_desc {
    uint8_t mode;
    uint32_t memory;
    cexpr offset;
    const uint8_t *bytes;
    uint32_t len;
} data_desc;

/* Exception handling: a try_table's catch clauses, as the compiler resolved them. A
 * caught exception's values (tag params, then the exnref for the _ref kinds) go to the
 * frame slots from `dest` on (the target label's slots), then execution goes on at code
 * offset `target` (EH_TARGET_RETURN: the label is the function's, so it returns). */
enum { EH_CATCH = 0, EH_CATCH_REF = 1, EH_CATCH_ALL = 2, EH_CATCH_ALL_REF = 3 };
#define EH_TARGET_RETURN 0xffffffffu
typedef struct eh_clause {
    uint32_t kind, tag, dest, target;
} eh_clause;
/* A try_table's body: code offsets [start, end) and its clauses. Ranges are listed inner
 * first (in the order their try_tables end), so the first range holding a position is
 * the innermost try_table around it. */
typedef struct eh_range {
    uint32_t start, end, first, n;
} eh_range;

/* A compiled function body. */
typedef struct code_desc {
    uint32_t *code;      /* pre-decoded instruction stream */
    uint32_t code_len;   /* in u32 units */
    uint32_t nlocals;    /* words of params + declared locals */
    uint32_t frame_size; /* words of locals + max operand stack height + slack */
    uint32_t nranges;    /* try_tables with catch clauses (0 for most functions) */
    eh_range *ranges;
    eh_clause *clauses;
} code_desc;

typedef struct module {
    uint8_t *bytes; /* owned copy of the binary: names and segment data point into it */
    size_t len;
    uint32_t ntypes;
    functype *types;
    uint32_t nimports;
    import_desc *imports;
    uint32_t nfuncs_imported, ntables_imported, nmems_imported, nglobals_imported;
    uint32_t nfuncs;     /* total, imports included */
    uint32_t *func_type; /* type index per function */
    code_desc *codes;    /* per defined function (index - nfuncs_imported) */
    uint32_t ntables;
    table_desc *tables;
    uint32_t nmems;
    limits *mems;
    uint32_t nglobals;
    global_desc *globals; /* all, imports included (import entries: type only) */
    uint32_t ntags, ntags_imported;
    uint32_t *tag_type; /* type index per tag, imports first */
    uint32_t nexports;
    export_desc *exports;
    bool has_start;
    uint32_t start;
    uint32_t nelems;
    elem_desc *elems;
    uint32_t ndatas;
    data_desc *datas;
    bool has_datacount;
    uint32_t datacount;
    /* Allocation list: everything this module owns, freed together on failure. */
    void **allocs;
    uint32_t nallocs, allocs_cap;
} module;

/* ---- Runtime objects ----------------------------------------------------------------- */
struct instance;
typedef struct wfunc wfunc;

/* A built-in host function (the spectest module's prints): args at `sp`, results there. */
typedef void (*builtin_fn)(uint64_t *sp);

enum { FN_WASM, FN_HOST, FN_BUILTIN };

struct wfunc {
    /* Hot fields first: the interpreter's call path reads these. */
    const uint32_t *code;
    uint32_t nlocals, nparams, frame_size; /* in value-stack words (ENG_SLOT_WORDS per value) */
    uint8_t kind;
    uint32_t nresults;
    struct instance *inst;
    const functype *type;
    uint32_t canon;
    uint32_t id;          /* engine-wide funcref value */
    uint32_t host_inst;   /* FN_HOST: importing instance handle */
    uint32_t host_index;  /* FN_HOST: function index in that instance */
    builtin_fn builtin;
};

typedef struct wmemory {
    uint8_t *base;
    uint32_t window;
    uint64_t pages, max_pages; /* max_pages: the effective limit */
    bool has_max;
    uint64_t decl_max; /* the declared maximum (import matching) */
} wmemory;

typedef struct wtable {
    uint64_t *elems;
    uint32_t size;
    uint64_t max; /* <= 2^32 - 1 */
    bool has_max;
    uint8_t elemtype;
} wtable;

typedef struct wglobal {
    uint64_t value;
    uint64_t value_hi; /* v128: the high 8 bytes */
    uint8_t valtype;
    bool mut;
} wglobal;

/* A tag (exception handling): its identity is the object; imports share it. */
typedef struct wtag {
    const functype *type; /* params: the exception's values; no results */
} wtag;

typedef struct instance {
    /* Hot fields first: the interpreter reads these. */
    uint8_t *mem0;        /* memory 0 window base (or NULL) */
    wfunc **funcs;
    wglobal **globals;
    wtable **tables;
    wmemory **mems;
    uint32_t handle;
    const module *mod;
    uint32_t nfuncs, nglobals, ntables, nmems;
    /* Passive element segments (evaluated refs) and data segments; dropped = length 0. */
    uint64_t **elem_items;
    uint32_t *elem_len;
    uint32_t *data_len;
    wtag **tags;
    uint32_t ntags;
} instance;

/* ---- Engine-wide state --------------------------------------------------------------- */
extern wfunc **eng_funcs; /* by id */
extern uint32_t eng_nfuncs;

/* Raises a trap (longjmps to the running operation). */
NORETURN void eng_trap(int kind);
/* The trap of call_indirect on a null table element (the message names the index). */
NORETURN void eng_trap_uninitialized(uint32_t index);
/* Raises a decoding error during eng_load. */
NORETURN void eng_malformed(const char *msg);
/* Ends the running operation with a reply of `status` and message. */
NORETURN void eng_fail(int status, const char *msg);

uint32_t eng_canon_type(const uint8_t *types, uint32_t nparams, uint32_t nresults);

/* ---- Decoder / compiler -------------------------------------------------------------- */
void *mod_alloc(module *m, size_t n);
void decode_module(module *m); /* eng_malformed on error */
bool eng_is_valtype(uint8_t t);   /* a value type's binary encoding (v128 included) */
/* Compiles function body `i` (defined-function index) from body[0..len). */
void compile_function(module *m, uint32_t defined, const uint8_t *body, uint32_t len);

/* ---- Exception handling (eh.c) ------------------------------------------------------- */
/* A new exception of tag t with its values copied from the slots at args; returns its
 * exnref. May collect unreachable exceptions first: the value stack up to stack_top is
 * scanned (conservatively) for live exnrefs, with the exnref globals and tables. */
uint64_t eh_new(wtag *t, const uint64_t *args, const uint64_t *stack_top);
/* Whether `ref` is a live exception (a non-null exnref the engine made). */
bool eh_valid(uint64_t ref);
/* Looks for a handler of exception `ref` in the frame (fp, inst) whose code position is
 * `at`: delivers the values into the frame and returns where to go on (`ret_code` for a
 * catch to the function's label), or NULL (no handler there). */
const uint32_t *eh_catch(const uint32_t *at, const instance *inst, uint64_t *fp, uint64_t ref,
                         const uint32_t *ret_code);
/* Drops an exception that no handler caught (unless wasm code can still see it). */
void eh_uncaught(uint64_t ref);
/* Makes the handler tables of module m's functions findable by code position. */
void eh_register(const module *m);
/* The roots of the exception collector outside the value stack: calls mark on the value
 * of every exnref global and table element of every instance (runtime.c). */
void rt_exn_roots(void (*mark)(uint64_t));

/* ---- Interpreter --------------------------------------------------------------------- */
/* Handler addresses for the compiler. */
extern void **interp_handlers;
void interp_init(void);
/* Runs f with its arguments at sp[0..nparams); results land in sp[0..nresults). */
void interp_call(wfunc *f, uint64_t *sp);
/* The value stack (allocated on first use). */
extern uint64_t *eng_stack, *eng_stack_end;

/* Runtime helpers used by the interpreter (trap on error). */
void rt_call_host(wfunc *f, uint64_t *sp);
int32_t rt_memory_grow(wmemory *m, uint32_t delta);
void rt_memory_fill(wmemory *m, uint32_t d, uint32_t val, uint32_t n);
void rt_memory_copy(wmemory *dm, wmemory *sm, uint32_t d, uint32_t s, uint32_t n);
void rt_memory_init(instance *inst, uint32_t seg, wmemory *m, uint32_t d, uint32_t s, uint32_t n);
void rt_table_init(instance *inst, uint32_t seg, wtable *t, uint32_t d, uint32_t s, uint32_t n);
void rt_table_copy(wtable *dt, wtable *st, uint32_t d, uint32_t s, uint32_t n);
int32_t rt_table_grow(wtable *t, uint64_t init, uint32_t delta);
void rt_table_fill(wtable *t, uint32_t d, uint64_t val, uint32_t n);

/* Opcode handler indices (the compiler emits interp_handlers[OP_x]). */
#include "ops.h"

#endif /* WASM_INTERNAL_H */
