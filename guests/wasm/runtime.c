/* runtime.c: the engine's operations (load, instantiate, register, invoke, get, fault),
 * replies, import linking, the built-in "spectest" module, and the bounds-checked
 * memory/table helpers the interpreter calls. */
#include "internal.h"
#include "trap_messages.h"

wfunc **eng_funcs;
uint32_t eng_nfuncs;
static uint32_t funcs_cap;

static module **modules;
static uint32_t nmodules, modules_cap;
static instance **instances;
static uint32_t ninstances, instances_cap;
static uint32_t next_window;

typedef struct registration {
    char *name;
    size_t len;
    instance *inst;
} registration;
static registration *regs;
static uint32_t nregs, regs_cap;

/* ---- Replies and failure ------------------------------------------------------------- */

static uint8_t *reply_buf;
static size_t reply_len, reply_cap;
static bool reply_oom;


static void reply_put(const void *p, size_t n) {
    if (reply_len + n > reply_cap) {
        size_t cap = reply_cap ? reply_cap : 256;
        while (cap < reply_len + n) cap *= 2;
        uint8_t *b = plat_realloc(reply_buf, cap);
        if (!b) {
            reply_oom = true;
            return;
        }
        reply_buf = b;
        reply_cap = cap;
    }
    memcpy(reply_buf + reply_len, p, n);
    reply_len += n;
}

static void reply_begin(uint8_t status) {
    reply_len = 0;
    reply_oom = false;
    reply_put(&status, 1);
}

static void reply_u32(uint32_t v) {
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    reply_put(b, 4);
}

/* One value of a value list: type, then 8 bytes LE (16 for a v128: `hi` second). */
static size_t put_value(uint8_t *b, uint8_t type, uint64_t bits, uint64_t hi) {
    b[0] = type;
    for (int i = 0; i < 8; i++) b[1 + i] = (uint8_t)(bits >> (8 * i));
    if (type != WASM_TYPE_V128) return 9;
    for (int i = 0; i < 8; i++) b[9 + i] = (uint8_t)(hi >> (8 * i));
    return 17;
}

static void reply_value(uint8_t type, uint64_t bits, uint64_t hi) {
    uint8_t b[17];
    reply_put(b, put_value(b, type, bits, hi));
}

static void reply_error(int status, int kind, const char *msg) {
    reply_begin((uint8_t)status);
    uint8_t k = (uint8_t)kind;
    reply_put(&k, 1);
    size_t n = 0;
    while (msg[n]) n++;
    reply_put(msg, n);
}

const uint8_t *eng_reply(size_t *len) {
    if (reply_oom || !reply_buf) {
        static const uint8_t limit[] = {WASM_STATUS_LIMIT, 0, 'r', 'e', 'p', 'l', 'y'};
        *len = sizeof limit;
        return limit;
    }
    *len = reply_len;
    return reply_buf;
}

/* The running operation: traps and failures longjmp here. */
static void *op_jmp[5];
static bool op_running;

void eng_fail(int status, const char *msg) {
    reply_error(status, 0, msg);
    op_running = false;
    __builtin_longjmp(op_jmp, 1);
}

void eng_malformed(const char *msg) { eng_fail(WASM_STATUS_MALFORMED, msg); }

void eng_trap(int kind) {
    if (kind <= 0 || kind >= WASM_TRAP_COUNT) kind = WASM_TRAP_UNREACHABLE;
    reply_error(WASM_STATUS_TRAP, kind, trap_messages[kind]);
    op_running = false;
    __builtin_longjmp(op_jmp, 1);
}

void eng_trap_uninitialized(uint32_t index) {
    char msg[48] = "uninitialized element ";
    char digits[12];
    int n = 0, k = 22;
    do {
        digits[n++] = (char)('0' + index % 10);
        index /= 10;
    } while (index);
    while (n) msg[k++] = digits[--n];
    msg[k] = 0;
    reply_error(WASM_STATUS_TRAP, WASM_TRAP_UNINITIALIZED_ELEMENT, msg);
    op_running = false;
    __builtin_longjmp(op_jmp, 1);
}

void eng_fault(uint64_t address) {
    (void)address;
    if (!op_running) {
        reply_error(WASM_STATUS_BAD_CALL, 0, "no operation was running");
        return;
    }
    op_running = false;
    reply_error(WASM_STATUS_TRAP, WASM_TRAP_MEMORY_OOB, trap_messages[WASM_TRAP_MEMORY_OOB]);
}

/* ---- Allocation helpers ---------------------------------------------------------------- */

static void *xcalloc(size_t n, size_t size) {
    if (size && n > (size_t)-1 / size) eng_fail(WASM_STATUS_LIMIT, "engine heap exhausted");
    void *p = plat_calloc(n ? n : 1, size ? size : 1);
    if (!p) eng_fail(WASM_STATUS_LIMIT, "engine heap exhausted");
    return p;
}

static void *grow_array(void *p, uint32_t *cap, uint32_t need, size_t elem) {
    if (need <= *cap) return p;
    uint32_t n = *cap ? *cap * 2 : 16;
    while (n < need) n *= 2;
    void *q = plat_realloc(p, (size_t)n * elem);
    if (!q) eng_fail(WASM_STATUS_LIMIT, "engine heap exhausted");
    *cap = n;
    return q;
}

/* ---- Canonical function types ---------------------------------------------------------- */

typedef struct canon_type {
    uint8_t *types;
    uint32_t nparams, nresults;
} canon_type;
static canon_type *canon;
static uint32_t ncanon, canon_cap;
static uint32_t *canon_hash; /* open addressing: canonical id + 1, 0 = empty */
static uint32_t canon_hash_size;

static uint32_t type_hash(const uint8_t *types, uint32_t np, uint32_t nr) {
    uint32_t h = 2166136261u ^ np ^ (nr << 16);
    for (uint32_t i = 0; i < np + nr; i++) h = (h ^ types[i]) * 16777619u;
    return h;
}

uint32_t eng_canon_type(const uint8_t *types, uint32_t np, uint32_t nr) {
    if (canon_hash_size < 2 * (ncanon + 1)) {
        uint32_t size = canon_hash_size ? canon_hash_size * 2 : 256;
        uint32_t *t = plat_calloc(size, sizeof(uint32_t));
        if (!t) eng_fail(WASM_STATUS_LIMIT, "engine heap exhausted");
        for (uint32_t i = 0; i < ncanon; i++) {
            uint32_t k = type_hash(canon[i].types, canon[i].nparams, canon[i].nresults) & (size - 1);
            while (t[k]) k = (k + 1) & (size - 1);
            t[k] = i + 1;
        }
        plat_free(canon_hash);
        canon_hash = t;
        canon_hash_size = size;
    }
    uint32_t k = type_hash(types, np, nr) & (canon_hash_size - 1);
    for (; canon_hash[k]; k = (k + 1) & (canon_hash_size - 1)) {
        const canon_type *c = &canon[canon_hash[k] - 1];
        if (c->nparams == np && c->nresults == nr && memcmp(c->types, types, np + nr) == 0)
            return canon_hash[k] - 1;
    }
    canon = grow_array(canon, &canon_cap, ncanon + 1, sizeof(canon_type));
    uint8_t *copy = xcalloc(np + nr + 1, 1);
    memcpy(copy, types, np + nr);
    canon[ncanon] = (canon_type){copy, np, nr};
    canon_hash[k] = ncanon + 1;
    return ncanon++;
}

static functype *make_functype(const uint8_t *types, uint32_t np, uint32_t nr) {
    functype *t = xcalloc(1, sizeof(functype));
    t->types = xcalloc(np + nr + 1, 1);
    memcpy(t->types, types, np + nr);
    t->nparams = np;
    t->nresults = nr;
    t->canon = eng_canon_type(types, np, nr);
    return t;
}

static wfunc *new_func(const functype *t, instance *inst) {
    eng_funcs = grow_array(eng_funcs, &funcs_cap, eng_nfuncs + 1, sizeof(wfunc *));
    wfunc *f = xcalloc(1, sizeof(wfunc));
    f->type = t;
    f->canon = t->canon;
    f->nparams = t->nparams * ENG_SLOT_WORDS;
    f->nresults = t->nresults;
    f->inst = inst;
    f->id = eng_nfuncs;
    eng_funcs[eng_nfuncs++] = f;
    return f;
}

/* ---- Memories and tables ----------------------------------------------------------------- */

static wmemory *new_memory(limits lim) {
    if (next_window >= WASM_MAX_MEMORIES) eng_fail(WASM_STATUS_LIMIT, "too many linear memories");
    wmemory *m = xcalloc(1, sizeof(wmemory));
    m->window = next_window++;
    m->base = (uint8_t *)(uintptr_t)((uint64_t)ENG_WINDOW_BASE + (uint64_t)m->window * WASM_WINDOW_STRIDE);
    m->max_pages = lim.has_max && lim.max < WASM_MAX_PAGES ? lim.max : WASM_MAX_PAGES;
    m->has_max = lim.has_max;
    m->decl_max = lim.max;
    if (lim.min > m->max_pages) eng_fail(WASM_STATUS_LIMIT, "memory size exceeds the maximum");
    if (lim.min && !plat_grow(m->window, lim.min))
        eng_fail(WASM_STATUS_LIMIT, "out of linear memory");
    m->pages = lim.min;
    return m;
}

static wtable *new_table(uint8_t elemtype, limits lim) {
    wtable *t = xcalloc(1, sizeof(wtable));
    t->elemtype = elemtype;
    t->max = lim.has_max ? lim.max : 0xffffffffu;
    t->has_max = lim.has_max;
    if (lim.min > 10000000) eng_fail(WASM_STATUS_LIMIT, "table too large");
    t->elems = xcalloc(lim.min ? lim.min : 1, sizeof(uint64_t));
    for (uint64_t i = 0; i < lim.min; i++) t->elems[i] = NULL_REF;
    t->size = (uint32_t)lim.min;
    return t;
}

int32_t rt_memory_grow(wmemory *m, uint32_t delta) {
    uint64_t old = m->pages;
    if (delta == 0) return (int32_t)old;
    uint64_t n = old + delta;
    if (n > m->max_pages) return -1;
    if (!plat_grow(m->window, n)) return -1;
    m->pages = n;
    return (int32_t)old;
}

static inline uint64_t mem_bytes(const wmemory *m) { return m->pages * (uint64_t)WASM_PAGE_SIZE; }

void rt_memory_fill(wmemory *m, uint32_t d, uint32_t val, uint32_t n) {
    if ((uint64_t)d + n > mem_bytes(m)) eng_trap(WASM_TRAP_MEMORY_OOB);
    memset(m->base + d, (int)(uint8_t)val, n);
}

void rt_memory_copy(wmemory *dm, wmemory *sm, uint32_t d, uint32_t s, uint32_t n) {
    if ((uint64_t)d + n > mem_bytes(dm) || (uint64_t)s + n > mem_bytes(sm))
        eng_trap(WASM_TRAP_MEMORY_OOB);
    memmove(dm->base + d, sm->base + s, n);
}

void rt_memory_init(instance *inst, uint32_t seg, wmemory *m, uint32_t d, uint32_t s, uint32_t n) {
    uint32_t len = inst->data_len[seg];
    if ((uint64_t)s + n > len || (uint64_t)d + n > mem_bytes(m)) eng_trap(WASM_TRAP_MEMORY_OOB);
    memcpy(m->base + d, inst->mod->datas[seg].bytes + s, n);
}

void rt_table_init(instance *inst, uint32_t seg, wtable *t, uint32_t d, uint32_t s, uint32_t n) {
    uint32_t len = inst->elem_len[seg];
    if ((uint64_t)s + n > len || (uint64_t)d + n > t->size) eng_trap(WASM_TRAP_TABLE_OOB);
    memcpy(t->elems + d, inst->elem_items[seg] + s, (size_t)n * sizeof(uint64_t));
}

void rt_table_copy(wtable *dt, wtable *st, uint32_t d, uint32_t s, uint32_t n) {
    if ((uint64_t)d + n > dt->size || (uint64_t)s + n > st->size) eng_trap(WASM_TRAP_TABLE_OOB);
    memmove(dt->elems + d, st->elems + s, (size_t)n * sizeof(uint64_t));
}

int32_t rt_table_grow(wtable *t, uint64_t init, uint32_t delta) {
    uint64_t old = t->size, n = old + delta;
    if (n > t->max || n > 10000000) return -1;
    if (delta == 0) return (int32_t)old;
    uint64_t *e = plat_realloc(t->elems, (size_t)n * sizeof(uint64_t));
    if (!e) return -1;
    for (uint64_t i = old; i < n; i++) e[i] = init;
    t->elems = e;
    t->size = (uint32_t)n;
    return (int32_t)old;
}

void rt_table_fill(wtable *t, uint32_t d, uint64_t val, uint32_t n) {
    if ((uint64_t)d + n > t->size) eng_trap(WASM_TRAP_TABLE_OOB);
    for (uint32_t i = 0; i < n; i++) t->elems[d + i] = val;
}

/* ---- Value lists ------------------------------------------------------------------------ */

static uint64_t le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static uint64_t normalize(uint8_t type, uint64_t bits) {
    return (type == WASM_TYPE_I32 || type == WASM_TYPE_F32) ? (uint32_t)bits : bits;
}

/* Reads a value list of exactly the given types into the value slots at out;
 * false on any mismatch. */
static bool read_values(const uint8_t *p, size_t len, const uint8_t *types, uint32_t n, uint64_t *out) {
    if (len < 1 || p[0] != n) return false;
    size_t at = 1;
    for (uint32_t i = 0; i < n; i++) {
        size_t size = types[i] == WASM_TYPE_V128 ? 17 : 9;
        if (len - at < size) return false;
        const uint8_t *v = p + at;
        at += size;
        if (v[0] != types[i]) return false;
        uint64_t bits = normalize(v[0], le64(v + 1));
        if (v[0] == WASM_TYPE_FUNCREF && bits != NULL_REF && bits >= eng_nfuncs) return false;
        out[i * ENG_SLOT_WORDS] = bits;
        out[i * ENG_SLOT_WORDS + 1] = v[0] == WASM_TYPE_V128 ? le64(v + 9) : 0;
    }
    return at == len;
}

void rt_call_host(wfunc *f, uint64_t *sp) {
    if (f->kind == FN_BUILTIN) {
        f->builtin(sp);
        return;
    }
    const functype *t = f->type;
    uint8_t args[1 + 255 * 17];
    if (t->nparams > 255 || t->nresults > 255) eng_fail(WASM_STATUS_BAD_CALL, "too many values for a host import");
    args[0] = (uint8_t)t->nparams;
    size_t at = 1;
    for (uint32_t i = 0; i < t->nparams; i++) {
        const uint64_t *v = sp + i * ENG_SLOT_WORDS;
        at += put_value(args + at, t->types[i], normalize(t->types[i], v[0]), v[1]);
    }
    size_t rlen = 0;
    const instance *caller = f->inst;
    uint32_t memory = caller && caller->nmems ? caller->mems[0]->window : 0xffffffffu;
    const uint8_t *res = plat_import(f->host_inst, f->host_index, args, at, memory, &rlen);
    if (!res || !read_values(res, rlen, t->types + t->nparams, t->nresults, sp))
        eng_fail(WASM_STATUS_BAD_CALL, "host import returned values of the wrong types");
}

/* ---- Engine set-up --------------------------------------------------------------------- */

static instance *spectest;

static void builtin_nop(uint64_t *sp) { (void)sp; }

static void engine_init(void) {
    if (interp_handlers && eng_stack) return;
    interp_call(0, 0);
    /* ENG_VALUE_STACK_SLOTS values of ENG_SLOT_WORDS words (4 MiB); a small engine heap
     * gets a smaller stack, down to a quarter of that, rather than no engine at all. */
    for (size_t words = (size_t)ENG_VALUE_STACK_SLOTS * ENG_SLOT_WORDS;
         !eng_stack && words >= (size_t)ENG_VALUE_STACK_SLOTS * ENG_SLOT_WORDS / 4; words /= 2) {
        eng_stack = plat_malloc(words * sizeof(uint64_t));
        eng_stack_end = eng_stack ? eng_stack + words : 0;
    }
    if (!eng_stack) eng_fail(WASM_STATUS_LIMIT, "engine heap exhausted");
}

#define BEGIN_OP()                                                                     \
    do {                                                                               \
        op_running = false;                                                            \
        if (__builtin_setjmp(op_jmp)) return;                                          \
        op_running = true;                                                             \
        engine_init();                                                                 \
    } while (0)

/* ---- Load ------------------------------------------------------------------------------ */

void *eng_alloc(uint64_t size) { return size > (1ull << 40) ? 0 : plat_malloc(size ? size : 1); }

static module *loading;

static void free_module(module *m) {
    for (uint32_t i = 0; i < m->nallocs; i++) plat_free(m->allocs[i]);
    plat_free(m->allocs);
    plat_free(m->bytes);
    plat_free(m);
}

void eng_load(uint8_t *bytes, uint64_t len) {
    loading = 0;
    op_running = false;
    if (__builtin_setjmp(op_jmp)) {
        if (loading) free_module(loading);
        else plat_free(bytes);
        loading = 0;
        return;
    }
    op_running = true;
    if (!bytes) eng_fail(WASM_STATUS_BAD_CALL, "no module bytes (wasm_alloc failed?)");
    engine_init();
    module *m = plat_calloc(1, sizeof(module));
    if (!m) eng_fail(WASM_STATUS_LIMIT, "engine heap exhausted");
    m->bytes = bytes;
    m->len = len;
    loading = m;
    decode_module(m);
    modules = grow_array(modules, &modules_cap, nmodules + 1, sizeof(module *));
    modules[nmodules] = m;
    loading = 0;
    reply_begin(WASM_STATUS_OK);
    reply_u32(nmodules++);
    op_running = false;
}

/* ---- Instantiate ------------------------------------------------------------------------ */

typedef struct ext {
    uint8_t kind;
    void *p;
} ext;

static bool name_eq(const char *a, size_t an, const char *b, size_t bn) {
    return an == bn && memcmp(a, b, an) == 0;
}

static const export_desc *find_export(const instance *inst, const char *name, size_t len, int kind) {
    const module *m = inst->mod;
    for (uint32_t i = 0; i < m->nexports; i++)
        if (name_eq(m->exports[i].name, m->exports[i].name_len, name, len) &&
            (kind < 0 || m->exports[i].kind == kind))
            return &m->exports[i];
    return 0;
}

static bool instance_export(const instance *inst, const char *name, size_t len, ext *out) {
    const export_desc *e = find_export(inst, name, len, -1);
    if (!e) return false;
    out->kind = e->kind;
    switch (e->kind) {
    case EXT_FUNC: out->p = inst->funcs[e->index]; break;
    case EXT_TABLE: out->p = inst->tables[e->index]; break;
    case EXT_MEM: out->p = inst->mems[e->index]; break;
    default: out->p = inst->globals[e->index]; break;
    }
    return true;
}

static wglobal *new_global(uint8_t type, bool mut, uint64_t v, uint64_t hi) {
    wglobal *g = xcalloc(1, sizeof(wglobal));
    g->valtype = type;
    g->mut = mut;
    g->value = v;
    g->value_hi = hi;
    return g;
}

static void make_spectest(void) {
    if (spectest) return;
    instance *s = xcalloc(1, sizeof(instance));
    s->handle = 0xffffffffu;
    spectest = s;
}

/* The spectest module's exports (its memory is created on first use). */
static bool spectest_export(const char *name, size_t len, ext *out) {
    static wfunc *prints[7];
    static wglobal *globals[4];
    static wtable *table;
    static wmemory *memory;
    static const struct {
        const char *name;
        uint8_t np;
        uint8_t types[2];
    } pf[7] = {{"print", 0, {0}},
               {"print_i32", 1, {WASM_TYPE_I32}},
               {"print_i64", 1, {WASM_TYPE_I64}},
               {"print_f32", 1, {WASM_TYPE_F32}},
               {"print_f64", 1, {WASM_TYPE_F64}},
               {"print_i32_f32", 2, {WASM_TYPE_I32, WASM_TYPE_F32}},
               {"print_f64_f64", 2, {WASM_TYPE_F64, WASM_TYPE_F64}}};
    make_spectest();
    for (int i = 0; i < 7; i++) {
        size_t n = 0;
        while (pf[i].name[n]) n++;
        if (!name_eq(pf[i].name, n, name, len)) continue;
        if (!prints[i]) {
            wfunc *f = new_func(make_functype(pf[i].types, pf[i].np, 0), spectest);
            f->kind = FN_BUILTIN;
            f->builtin = builtin_nop;
            prints[i] = f;
        }
        *out = (ext){EXT_FUNC, prints[i]};
        return true;
    }
    static const char *gnames[4] = {"global_i32", "global_i64", "global_f32", "global_f64"};
    static const uint8_t gtypes[4] = {WASM_TYPE_I32, WASM_TYPE_I64, WASM_TYPE_F32, WASM_TYPE_F64};
    static const uint64_t gvals[4] = {666, 666, 0x4426a666u /* 666.6f */, 0x4084d4cccccccccdull};
    for (int i = 0; i < 4; i++) {
        if (!name_eq(gnames[i], 10, name, len)) continue;
        if (!globals[i]) globals[i] = new_global(gtypes[i], false, gvals[i], 0);
        *out = (ext){EXT_GLOBAL, globals[i]};
        return true;
    }
    if (name_eq("table", 5, name, len)) {
        if (!table) table = new_table(WASM_TYPE_FUNCREF, (limits){10, 20, true});
        *out = (ext){EXT_TABLE, table};
        return true;
    }
    if (name_eq("memory", 6, name, len)) {
        if (!memory) memory = new_memory((limits){1, 2, true});
        *out = (ext){EXT_MEM, memory};
        return true;
    }
    return false;
}

static bool resolve(const import_desc *d, ext *out) {
    for (uint32_t i = nregs; i-- > 0;)
        if (name_eq(regs[i].name, regs[i].len, d->module, d->module_len))
            return instance_export(regs[i].inst, d->name, d->name_len, out);
    if (name_eq("spectest", 8, d->module, d->module_len)) return spectest_export(d->name, d->name_len, out);
    return false;
}

static bool limits_match(uint64_t size, bool has_max, uint64_t max, const limits *want) {
    if (size < want->min) return false;
    if (want->has_max && (!has_max || max > want->max)) return false;
    return true;
}

/* Evaluates a constant expression with the instance's globals [0, nglobals) ready; a
 * v128 value's high 8 bytes go to *hi (if not NULL). */
static uint64_t eval_cexpr(instance *inst, cexpr e, uint32_t nglobals, uint64_t *hi) {
    uint64_t st[16];
    int sp = 0;
    const uint8_t *p = e.code, *end = e.code + e.len;
    if (hi) *hi = 0;
    while (p < end) {
        uint8_t op = *p++;
        uint64_t v = 0;
        if (op == 0x0b) break;
        if (op == 0xfd) { /* v128.const (the decoder checked the sub-opcode: 12) */
            if (end - p < 17) eng_fail(WASM_STATUS_INVALID, "bad constant expression");
            p++;
            v = le64(p);
            if (hi) *hi = le64(p + 8);
            p += 16;
            if (sp == 16) eng_fail(WASM_STATUS_INVALID, "bad constant expression");
            st[sp++] = v;
            continue;
        }
        if (op == 0x41 || op == 0x42 || op == 0x23 || op == 0xd2) {
            /* LEB immediate (already validated by the decoder's rd_cexpr). */
            int shift = 0;
            uint8_t b;
            do {
                if (p >= end) eng_fail(WASM_STATUS_INVALID, "bad constant expression");
                b = *p++;
                if (shift < 64) v |= (uint64_t)(b & 0x7f) << shift;
                shift += 7;
            } while (b & 0x80);
            if ((op == 0x41 || op == 0x42) && shift < 64 && (b & 0x40)) v |= ~0ull << shift;
            if (op == 0x41) v = (uint32_t)v;
            if (op == 0x23) {
                if (v >= nglobals) eng_fail(WASM_STATUS_INVALID, "unknown global");
                if (hi) *hi = inst->globals[v]->value_hi;
                v = inst->globals[v]->value;
            } else if (op == 0xd2) {
                if (v >= inst->nfuncs) eng_fail(WASM_STATUS_INVALID, "unknown function");
                v = inst->funcs[v]->id;
            }
        } else if (op == 0x43 || op == 0x44) {
            int n = op == 0x43 ? 4 : 8;
            if (end - p < n) eng_fail(WASM_STATUS_INVALID, "bad constant expression");
            for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
            p += n;
        } else if (op == 0xd0) {
            p++;
            v = NULL_REF;
        } else {
            if (sp < 2) eng_fail(WASM_STATUS_INVALID, "bad constant expression");
            uint64_t b = st[--sp], a = st[--sp];
            switch (op) {
            case 0x6a: v = (uint32_t)(a + b); break;
            case 0x6b: v = (uint32_t)(a - b); break;
            case 0x6c: v = (uint32_t)(a * b); break;
            case 0x7c: v = a + b; break;
            case 0x7d: v = a - b; break;
            case 0x7e: v = a * b; break;
            default: eng_fail(WASM_STATUS_INVALID, "bad constant expression");
            }
        }
        if (sp == 16) eng_fail(WASM_STATUS_INVALID, "bad constant expression");
        st[sp++] = v;
    }
    if (sp != 1) eng_fail(WASM_STATUS_INVALID, "bad constant expression");
    return st[0];
}

NORETURN static void unlinkable(const char *msg) { eng_fail(WASM_STATUS_UNLINKABLE, msg); }

void eng_instantiate(uint32_t handle) {
    BEGIN_OP();
    if (handle >= nmodules) eng_fail(WASM_STATUS_BAD_CALL, "no such module");
    const module *m = modules[handle];
    instance *inst = xcalloc(1, sizeof(instance));
    inst->mod = m;
    inst->funcs = xcalloc(m->nfuncs, sizeof(wfunc *));
    inst->tables = xcalloc(m->ntables, sizeof(wtable *));
    inst->mems = xcalloc(m->nmems, sizeof(wmemory *));
    inst->globals = xcalloc(m->nglobals, sizeof(wglobal *));
    inst->elem_items = xcalloc(m->nelems, sizeof(uint64_t *));
    inst->elem_len = xcalloc(m->nelems, sizeof(uint32_t));
    inst->data_len = xcalloc(m->ndatas, sizeof(uint32_t));
    inst->handle = ninstances;

    /* Imports. */
    uint32_t nf = 0, nt = 0, nm = 0, ng = 0;
    for (uint32_t i = 0; i < m->nimports; i++) {
        const import_desc *d = &m->imports[i];
        ext e;
        bool found = resolve(d, &e);
        if (!found) {
            bool registered = name_eq("spectest", 8, d->module, d->module_len);
            for (uint32_t k = 0; k < nregs && !registered; k++)
                registered = name_eq(regs[k].name, regs[k].len, d->module, d->module_len);
            if (d->kind != EXT_FUNC || registered) unlinkable("unknown import");
            wfunc *f = new_func(&m->types[d->type], inst);
            f->kind = FN_HOST;
            f->host_inst = inst->handle;
            f->host_index = nf;
            inst->funcs[nf++] = f;
            continue;
        }
        if (e.kind != d->kind) unlinkable("incompatible import type");
        switch (d->kind) {
        case EXT_FUNC: {
            wfunc *f = e.p;
            if (f->canon != m->types[d->type].canon) unlinkable("incompatible import type");
            inst->funcs[nf++] = f;
            break;
        }
        case EXT_TABLE: {
            wtable *t = e.p;
            if (t->elemtype != d->valtype || !limits_match(t->size, t->has_max, t->max, &d->lim))
                unlinkable("incompatible import type");
            inst->tables[nt++] = t;
            break;
        }
        case EXT_MEM: {
            wmemory *mm = e.p;
            if (!limits_match(mm->pages, mm->has_max, mm->decl_max, &d->lim))
                unlinkable("incompatible import type");
            inst->mems[nm++] = mm;
            break;
        }
        default: {
            wglobal *g = e.p;
            if (g->valtype != d->valtype || g->mut != d->mut) unlinkable("incompatible import type");
            inst->globals[ng++] = g;
            break;
        }
        }
    }
    instances = grow_array(instances, &instances_cap, ninstances + 1, sizeof(instance *));
    instances[ninstances++] = inst;
    inst->nfuncs = m->nfuncs;
    inst->ntables = m->ntables;
    inst->nmems = m->nmems;
    inst->nglobals = m->nglobals;

    /* Definitions. */
    for (uint32_t i = nf; i < m->nfuncs; i++) {
        const code_desc *cd = &m->codes[i - m->nfuncs_imported];
        wfunc *f = new_func(&m->types[m->func_type[i]], inst);
        f->kind = FN_WASM;
        f->code = cd->code;
        f->nlocals = cd->nlocals;
        f->frame_size = cd->frame_size;
        inst->funcs[i] = f;
    }
    for (uint32_t i = nt; i < m->ntables; i++) inst->tables[i] = new_table(m->tables[i].elemtype, m->tables[i].lim);
    for (uint32_t i = nm; i < m->nmems; i++) inst->mems[i] = new_memory(m->mems[i]);
    inst->mem0 = m->nmems ? inst->mems[0]->base : 0;
    for (uint32_t i = ng; i < m->nglobals; i++) {
        const global_desc *g = &m->globals[i];
        uint64_t hi;
        uint64_t lo = eval_cexpr(inst, g->init, i, &hi);
        inst->globals[i] = new_global(g->valtype, g->mut, lo, hi);
    }
    for (uint32_t i = 0; i < m->nelems; i++) {
        const elem_desc *e = &m->elems[i];
        inst->elem_items[i] = xcalloc(e->count, sizeof(uint64_t));
        for (uint32_t k = 0; k < e->count; k++)
            inst->elem_items[i][k] = eval_cexpr(inst, e->items[k], m->nglobals, 0);
        inst->elem_len[i] = e->count;
    }
    for (uint32_t i = 0; i < m->ndatas; i++) inst->data_len[i] = m->datas[i].len;

    /* Segment initialisation, in order; a trap keeps the writes made before it. */
    for (uint32_t i = 0; i < m->nelems; i++) {
        const elem_desc *e = &m->elems[i];
        if (e->mode == SEG_ACTIVE) {
            uint32_t off = (uint32_t)eval_cexpr(inst, e->offset, m->nglobals, 0);
            rt_table_init(inst, i, inst->tables[e->table], off, 0, e->count);
        }
        if (e->mode != SEG_PASSIVE) inst->elem_len[i] = 0;
    }
    for (uint32_t i = 0; i < m->ndatas; i++) {
        const data_desc *d = &m->datas[i];
        if (d->mode != SEG_ACTIVE) continue;
        uint32_t off = (uint32_t)eval_cexpr(inst, d->offset, m->nglobals, 0);
        rt_memory_init(inst, i, inst->mems[d->memory], off, 0, d->len);
        inst->data_len[i] = 0;
    }
    if (m->has_start) interp_call(inst->funcs[m->start], eng_stack);
    reply_begin(WASM_STATUS_OK);
    reply_u32(inst->handle);
    op_running = false;
}

/* ---- Register, invoke, get ---------------------------------------------------------------- */

static instance *get_instance(uint32_t handle) {
    if (handle >= ninstances) eng_fail(WASM_STATUS_BAD_CALL, "no such instance");
    return instances[handle];
}

void eng_register(uint32_t handle, const char *name, size_t len) {
    BEGIN_OP();
    instance *inst = get_instance(handle);
    regs = grow_array(regs, &regs_cap, nregs + 1, sizeof(registration));
    char *copy = xcalloc(len + 1, 1);
    memcpy(copy, name, len);
    regs[nregs++] = (registration){copy, len, inst};
    reply_begin(WASM_STATUS_OK);
    op_running = false;
}

void eng_invoke(uint32_t handle, const char *name, size_t len, const uint8_t *args, size_t args_len) {
    BEGIN_OP();
    instance *inst = get_instance(handle);
    const export_desc *e = find_export(inst, name, len, EXT_FUNC);
    if (!e) eng_fail(WASM_STATUS_BAD_CALL, "no such exported function");
    wfunc *f = inst->funcs[e->index];
    const functype *t = f->type;
    if (!read_values(args, args_len, t->types, t->nparams, eng_stack))
        eng_fail(WASM_STATUS_BAD_CALL, "wrong argument count or types");
    interp_call(f, eng_stack);
    reply_begin(WASM_STATUS_OK);
    uint8_t n = (uint8_t)t->nresults;
    reply_put(&n, 1);
    for (uint32_t i = 0; i < t->nresults; i++) {
        uint8_t ty = t->types[t->nparams + i];
        const uint64_t *v = eng_stack + i * ENG_SLOT_WORDS;
        reply_value(ty, normalize(ty, v[0]), v[1]);
    }
    op_running = false;
}

void eng_get(uint32_t handle, const char *name, size_t len) {
    BEGIN_OP();
    instance *inst = get_instance(handle);
    const export_desc *e = find_export(inst, name, len, EXT_GLOBAL);
    if (!e) eng_fail(WASM_STATUS_BAD_CALL, "no such exported global");
    wglobal *g = inst->globals[e->index];
    reply_begin(WASM_STATUS_OK);
    uint8_t n = 1;
    reply_put(&n, 1);
    reply_value(g->valtype, normalize(g->valtype, g->value), g->value_hi);
    op_running = false;
}
