/* eh.c: Wasm exception handling at run time: exception objects (what an exnref names),
 * their collection, and finding a frame's handler by code position.
 *
 * An exnref is EXN_BASE | index into the exception table. Exceptions that wasm code never
 * saw as a value (thrown by `throw`, caught by `catch` or `catch_all`, or uncaught) are
 * freed at once; the others (delivered by catch_ref/catch_all_ref: they may be in locals,
 * globals, tables or other exceptions' values) are collected when the table fills: the
 * compiler does not track types, so the live value stack is scanned conservatively (any
 * word equal to a live exnref keeps it), with every exnref global and table element and,
 * transitively, the values of the exceptions kept. Memory stays bounded by what wasm
 * code can still reach (plus what stale stack words happen to name). */
#include "internal.h"

#define EXN_BASE 0x6578000000000000ull /* "ex": exnrefs are recognisable in a stack scan */
#define EXN_INDEX_MAX 0x10000000u
#define EXN_MIN_THRESHOLD 1024u

typedef struct exn {
    wtag *tag;
    uint32_t nvals;
    bool seen;   /* wasm code got it as a value (catch_ref, catch_all_ref) */
    bool marked; /* collector */
    uint64_t vals[];
} exn;

static exn **exns;          /* by index; NULL: free */
static uint32_t *free_list; /* free indices */
static uint32_t exns_cap, nfree, nlive, threshold = EXN_MIN_THRESHOLD;
static uint32_t *work; /* the collector's mark stack */

static inline exn *lookup(uint64_t ref) {
    if ((ref & ~0xffffffffull) != EXN_BASE) return 0;
    uint32_t i = (uint32_t)ref;
    return i < exns_cap ? exns[i] : 0;
}

bool eh_valid(uint64_t ref) { return lookup(ref) != 0; }

static void release(uint64_t ref) {
    uint32_t i = (uint32_t)ref;
    plat_free(exns[i]);
    exns[i] = 0;
    free_list[nfree++] = i;
    nlive--;
}

static uint32_t nwork;

static void mark(uint64_t word) {
    exn *e = lookup(word);
    if (!e || e->marked) return;
    e->marked = true;
    work[nwork++] = (uint32_t)word;
}

static void collect(const uint64_t *stack_top) {
    nwork = 0;
    for (const uint64_t *p = eng_stack; p < stack_top && p < eng_stack_end; p++) mark(*p);
    rt_exn_roots(mark);
    while (nwork) {
        exn *e = exns[work[--nwork]];
        for (uint32_t i = 0; i < e->nvals * ENG_SLOT_WORDS; i++) mark(e->vals[i]);
    }
    for (uint32_t i = 0; i < exns_cap; i++) {
        if (!exns[i]) continue;
        if (exns[i]->marked)
            exns[i]->marked = false;
        else
            release(EXN_BASE | i);
    }
    threshold = nlive * 2 > EXN_MIN_THRESHOLD ? nlive * 2 : EXN_MIN_THRESHOLD;
}

static void grow_table(void) {
    if (exns_cap >= EXN_INDEX_MAX) eng_fail(WASM_STATUS_LIMIT, "too many live exceptions");
    uint32_t cap = exns_cap ? exns_cap * 2 : 256;
    exn **t = plat_realloc(exns, cap * sizeof(exn *));
    if (!t) eng_fail(WASM_STATUS_LIMIT, "engine heap exhausted");
    exns = t;
    uint32_t *f = plat_realloc(free_list, cap * sizeof(uint32_t));
    if (!f) eng_fail(WASM_STATUS_LIMIT, "engine heap exhausted");
    free_list = f;
    uint32_t *w = plat_realloc(work, cap * sizeof(uint32_t));
    if (!w) eng_fail(WASM_STATUS_LIMIT, "engine heap exhausted");
    work = w;
    for (uint32_t i = cap; i-- > exns_cap;) {
        exns[i] = 0;
        free_list[nfree++] = i;
    }
    exns_cap = cap;
}

uint64_t eh_new(wtag *t, const uint64_t *args, const uint64_t *stack_top) {
    if (nlive >= threshold) collect(stack_top);
    if (!nfree) grow_table();
    uint32_t n = t->type->nparams;
    exn *e = plat_malloc(sizeof(exn) + (size_t)n * ENG_SLOT_WORDS * sizeof(uint64_t));
    if (!e) eng_fail(WASM_STATUS_LIMIT, "engine heap exhausted");
    e->tag = t;
    e->nvals = n;
    e->seen = false;
    e->marked = false;
    memcpy(e->vals, args, (size_t)n * ENG_SLOT_WORDS * sizeof(uint64_t));
    uint32_t i = free_list[--nfree];
    exns[i] = e;
    nlive++;
    return EXN_BASE | i;
}

void eh_uncaught(uint64_t ref) {
    exn *e = lookup(ref);
    if (e && !e->seen) release(ref);
}

/* ---- Handler tables by code position --------------------------------------------------- */

typedef struct eh_func {
    const uint32_t *code;
    uint32_t len;
    const code_desc *cd;
} eh_func;

static eh_func *funcs; /* sorted by code address */
static uint32_t nfuncs, funcs_cap;

void eh_register(const module *m) {
    uint32_t n = 0, ndefined = m->nfuncs - m->nfuncs_imported;
    for (uint32_t i = 0; i < ndefined; i++) n += m->codes[i].nranges != 0;
    if (!n) return;
    if (nfuncs + n > funcs_cap) {
        uint32_t cap = funcs_cap ? funcs_cap : 64;
        while (cap < nfuncs + n) cap *= 2;
        eh_func *f = plat_realloc(funcs, cap * sizeof(eh_func));
        if (!f) eng_fail(WASM_STATUS_LIMIT, "engine heap exhausted");
        funcs = f;
        funcs_cap = cap;
    }
    for (uint32_t i = 0; i < ndefined; i++)
        if (m->codes[i].nranges) funcs[nfuncs++] = (eh_func){m->codes[i].code, m->codes[i].code_len, &m->codes[i]};
    /* Shell sort (the heap mostly hands out increasing addresses: nearly sorted). */
    static const uint32_t gaps[] = {1750, 701, 301, 132, 57, 23, 10, 4, 1};
    for (uint32_t g = 0; g < sizeof gaps / sizeof gaps[0]; g++) {
        uint32_t gap = gaps[g];
        for (uint32_t i = gap; i < nfuncs; i++) {
            eh_func x = funcs[i];
            uint32_t j = i;
            for (; j >= gap && funcs[j - gap].code > x.code; j -= gap) funcs[j] = funcs[j - gap];
            funcs[j] = x;
        }
    }
}

static const eh_func *find_func(const uint32_t *at) {
    uint32_t lo = 0, hi = nfuncs; /* the last entry with code <= at */
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (funcs[mid].code <= at)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (!lo) return 0;
    const eh_func *f = &funcs[lo - 1];
    return at < f->code + f->len ? f : 0;
}

const uint32_t *eh_catch(const uint32_t *at, const instance *inst, uint64_t *fp, uint64_t ref,
                         const uint32_t *ret_code) {
    const eh_func *f = find_func(at);
    if (!f) return 0;
    exn *e = lookup(ref);
    if (!e) return 0;
    uint32_t pos = (uint32_t)(at - f->code);
    const code_desc *cd = f->cd;
    for (uint32_t r = 0; r < cd->nranges; r++) {
        const eh_range *rg = &cd->ranges[r];
        if (pos < rg->start || pos >= rg->end) continue;
        for (uint32_t k = 0; k < rg->n; k++) {
            const eh_clause *cl = &cd->clauses[rg->first + k];
            bool all = cl->kind == EH_CATCH_ALL || cl->kind == EH_CATCH_ALL_REF;
            if (!all && (cl->tag >= inst->ntags || inst->tags[cl->tag] != e->tag)) continue;
            uint64_t *d = fp + cl->dest;
            uint32_t nv = 0;
            if (!all) {
                nv = e->nvals;
                memcpy(d, e->vals, (size_t)nv * ENG_SLOT_WORDS * sizeof(uint64_t));
            }
            if (cl->kind == EH_CATCH_REF || cl->kind == EH_CATCH_ALL_REF) {
                d[nv * ENG_SLOT_WORDS] = ref;
                d[nv * ENG_SLOT_WORDS + 1] = 0;
                e->seen = true;
            } else if (!e->seen) {
                release(ref);
            }
            return cl->target == EH_TARGET_RETURN ? ret_code : f->code + cl->target;
        }
    }
    return 0;
}
