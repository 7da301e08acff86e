/* compile.c: translates one Wasm function body into the interpreter's pre-decoded form.
 *
 * The compiled form is a "stack-slot register machine": every operand-stack height h
 * has a fixed frame slot (nlocals + h), known at compile time, so each instruction names
 * its operands and result as frame slot indices and the interpreter never moves a stack
 * pointer. local.get and constants are not copied: they stay "virtual" on the compile-time
 * stack (the consumer reads the local's slot directly, or uses an immediate form) and
 * are materialised into their slot only when needed (block boundaries, branches, call
 * arguments, a local.set of the same local). A local.set right after the instruction
 * that produced its value retargets that instruction's result to the local. An i32
 * compare followed by br_if/if becomes one fused compare-and-branch.
 *
 * Instruction stream: u32 units; 2 units of handler address, then operand fields.
 * Branch offsets are relative to the offset field itself. Forward branches are chained
 * through their (not yet patched) offset fields until the label is bound. */
#include "reader.h"

enum { SV_STACK, SV_LOCAL, SV_CONST };

typedef struct sval {
    uint8_t kind;
    uint32_t local; /* SV_LOCAL: the local's slot (local_slot) */
    uint64_t k;
} sval;

enum { CTL_FUNC = 0, CTL_BLOCK = 2, CTL_LOOP = 3, CTL_IF = 4, CTL_TRY = 0x1f };

typedef struct ctl {
    uint8_t kind;
    bool unreachable;
    uint32_t base, nparams, nresults;
    uint32_t start;      /* loop: code position of its first instruction */
    uint32_t chain;      /* forward branches to the end: field position + 1, 0 = none */
    uint32_t else_field; /* if: BR_UNLESS offset field + 1, 0 once bound */
    const uint8_t *ptypes, *rtypes; /* its parameter and result types */
    uint32_t eh_chain;   /* catch clauses that land at the end: clause index + 1, 0 = none */
    uint32_t eh_first, eh_n; /* try_table: its clauses */
} ctl;

typedef struct comp {
    module *m;
    reader r;
    uint32_t *code;
    uint32_t len, cap;
    sval *st;
    uint32_t sh, scap, maxh;
    ctl *ctls;
    uint32_t nctl, ccap;
    uint32_t nlocals;
    uint32_t nvirt;   /* entries of kind LOCAL or CONST */
    uint32_t virt_lo; /* no virtual entry below this height (when nvirt > 0) */
    /* Peephole: the last instruction that produced the top-of-stack value. */
    uint32_t last_dfield; /* its result field + 1, 0 = none */
    uint32_t last_dh, last_pos, last_end;
    int last_op;
    uint32_t last_mov;  /* position of the last MOV emitted + 1, 0 = none */
    uint32_t label_at;  /* code position where a label was last bound + 1 */
    const uint8_t *bpt, *brt; /* the types of the block type just read */
    uint32_t nranges, nclauses; /* exception handling: try_tables and their clauses */
    uint32_t throw_chain; /* THROW frame-size fields to patch: position + 1, 0 = none */
    uint32_t vload_pos, vload_end; /* the last v128.load emitted (simd_pair_load) */
    uint32_t vprod_pos, vprod_end; /* the last SIMD v128 result emitted (simd_pair) */
    uint32_t vprod_dfield;          /* its result field */
    int vprod_op;
    uint32_t vprev_pos, vprev_end, vprev_dfield; /* the one right before it, if any */
    int vprev_op;
} comp;

/* Scratch buffers reused by every compilation (the result is copied out). */
static uint32_t *s_code;
static uint32_t s_code_cap;
static sval *s_st;
static uint32_t s_st_cap;
static ctl *s_ctls;
static uint32_t s_ctl_cap;
static uint32_t *s_targets;
static uint32_t s_targets_cap;
static eh_range *s_ranges;
static uint32_t s_ranges_cap;
static eh_clause *s_clauses;
static uint32_t s_clauses_cap;

#define MAX_LOCALS 50000

NORETURN static void invalid(const char *msg) { eng_fail(WASM_STATUS_INVALID, msg); }

static void *grow_buf(void *p, uint32_t *cap, uint32_t need, size_t elem) {
    if (need <= *cap) return p;
    uint32_t n = *cap ? *cap : 64;
    while (n < need) {
        if (n > 0x40000000u) eng_fail(WASM_STATUS_LIMIT, "function too large");
        n *= 2;
    }
    void *q = plat_realloc(p, (size_t)n * elem);
    if (!q) eng_fail(WASM_STATUS_LIMIT, "engine heap exhausted");
    *cap = n;
    return q;
}

static inline void reserve(comp *c, uint32_t n) {
    if (c->len + n > c->cap) {
        s_code = grow_buf(s_code, &s_code_cap, c->len + n, sizeof(uint32_t));
        c->code = s_code;
        c->cap = s_code_cap;
    }
}

static inline void emit(comp *c, uint32_t v) {
    reserve(c, 1);
    c->code[c->len++] = v;
}

/* Emits a handler address; returns the instruction's position. */
static uint32_t emit_op(comp *c, int op) {
    reserve(c, 8);
    uint32_t pos = c->len;
    uint64_t h = (uint64_t)(uintptr_t)interp_handlers[op];
    c->code[c->len++] = (uint32_t)h;
    c->code[c->len++] = (uint32_t)(h >> 32);
    c->last_dfield = 0;
    return pos;
}

/* The first value-stack word of operand height h / local x (see ENG_SLOT_WORDS). */
static inline uint32_t slot(comp *c, uint32_t h) { return (c->nlocals + h) * ENG_SLOT_WORDS; }
static inline uint32_t local_slot(uint32_t x) { return x * ENG_SLOT_WORDS; }
static inline ctl *top_ctl(comp *c) { return &c->ctls[c->nctl - 1]; }

static void materialize_all(comp *c);

/* Virtual entries are kept few and close to the top (materialised past these bounds),
 * so that every scan for them is short: compilation stays linear in the body size. */
#define VIRT_MAX 64
#define VIRT_SPAN 256

static void push(comp *c, uint8_t kind, uint32_t local, uint64_t k) {
    if (kind != SV_STACK) {
        if (c->nvirt && (c->nvirt >= VIRT_MAX || c->sh - c->virt_lo > VIRT_SPAN)) materialize_all(c);
        if (!c->nvirt) c->virt_lo = c->sh;
    }
    if (c->sh == c->scap) {
        s_st = grow_buf(s_st, &s_st_cap, c->sh + 1, sizeof(sval));
        c->st = s_st;
        c->scap = s_st_cap;
    }
    c->st[c->sh++] = (sval){kind, local, k};
    if (kind != SV_STACK) c->nvirt++;
    if (c->sh > c->maxh) c->maxh = c->sh;
    if (c->maxh > 1000000) eng_fail(WASM_STATUS_LIMIT, "operand stack too deep");
}

/* Pushes the result of the instruction at `pos` whose result field is at `dfield`. */
static void push_result(comp *c, int op, uint32_t pos, uint32_t dfield) {
    push(c, SV_STACK, 0, 0);
    c->last_dfield = dfield + 1;
    c->last_dh = c->sh - 1;
    c->last_pos = pos;
    c->last_end = c->len;
    c->last_op = op;
}

static void emit_const(comp *c, uint32_t dst, uint64_t k) {
    if (k >> 32) {
        emit_op(c, OP_CONST64);
        emit(c, dst);
        emit(c, (uint32_t)k);
        emit(c, (uint32_t)(k >> 32));
    } else {
        emit_op(c, OP_CONST32);
        emit(c, dst);
        emit(c, (uint32_t)k);
    }
}

static void emit_mov(comp *c, uint32_t dst, uint32_t src) {
    if (dst == src) return;
    if (c->last_mov && c->last_mov - 1 + 4 == c->len && c->label_at != c->len + 1) {
        /* Merge with the MOV just emitted (no label in between). */
        uint32_t pos = c->last_mov - 1;
        uint64_t h = (uint64_t)(uintptr_t)interp_handlers[OP_MOV2];
        c->code[pos] = (uint32_t)h;
        c->code[pos + 1] = (uint32_t)(h >> 32);
        emit(c, dst);
        emit(c, src);
        c->last_mov = 0;
        c->last_dfield = 0;
        return;
    }
    uint32_t pos = emit_op(c, OP_MOV);
    emit(c, dst);
    emit(c, src);
    c->last_mov = pos + 1;
}

/* Records that a branch may land at the current position. */
static inline void mark_label(comp *c) { c->label_at = c->len + 1; }

static void materialize(comp *c, uint32_t h) {
    sval *v = &c->st[h];
    if (v->kind == SV_STACK) return;
    if (v->kind == SV_LOCAL)
        emit_mov(c, slot(c, h), v->local);
    else
        emit_const(c, slot(c, h), v->k);
    v->kind = SV_STACK;
    c->nvirt--;
}

static void materialize_all(comp *c) {
    for (uint32_t h = c->virt_lo; c->nvirt && h < c->sh; h++) materialize(c, h);
}

/* Makes sure n values are above the innermost block's base (phantoms when unreachable). */
static void need(comp *c, uint32_t n) {
    ctl *f = top_ctl(c);
    if (c->sh >= f->base + n) return;
    if (!f->unreachable) invalid("type mismatch");
    /* Insert phantoms below the existing values of this (unreachable) block. */
    uint32_t missing = f->base + n - c->sh, above = c->sh - f->base;
    for (uint32_t i = 0; i < missing; i++) push(c, SV_STACK, 0, 0);
    memmove(&c->st[f->base + missing], &c->st[f->base], (size_t)above * sizeof(sval));
    for (uint32_t i = 0; i < missing; i++) c->st[f->base + i] = (sval){SV_STACK, 0, 0};
}

static void truncate(comp *c, uint32_t h) {
    while (c->sh > h) {
        c->sh--;
        if (c->st[c->sh].kind != SV_STACK) c->nvirt--;
    }
}

/* Pops one value and returns the slot to read it from. */
static uint32_t pop_slot(comp *c) {
    need(c, 1);
    uint32_t h = c->sh - 1;
    sval *v = &c->st[h];
    if (v->kind == SV_CONST) materialize(c, h);
    c->sh--;
    if (v->kind == SV_LOCAL) {
        c->nvirt--;
        return v->local;
    }
    return slot(c, h);
}

static void drop(comp *c) {
    need(c, 1);
    truncate(c, c->sh - 1);
}

static void set_unreachable(comp *c) {
    ctl *f = top_ctl(c);
    truncate(c, f->base);
    f->unreachable = true;
    c->last_dfield = 0;
}

static void bind_chain(comp *c, uint32_t chain, uint32_t target) {
    if (chain && target == c->len) mark_label(c);
    while (chain) {
        uint32_t f = chain - 1;
        chain = c->code[f];
        c->code[f] = target - f;
    }
}

/* A branch offset field pointing at label `t`. */
static void emit_target(comp *c, ctl *t) {
    uint32_t field = c->len;
    if (t->kind == CTL_LOOP) {
        emit(c, t->start - field);
    } else {
        emit(c, t->chain);
        t->chain = field + 1;
    }
}

static uint32_t label_arity(ctl *t) { return t->kind == CTL_LOOP ? t->nparams : t->nresults; }

static bool branch_needs_moves(comp *c, ctl *t) {
    if (t->kind == CTL_FUNC) return true;
    uint32_t n = label_arity(t);
    return n && c->sh - n != t->base;
}

/* The moves and jump of a branch to `t` with the top values of the stack (all
 * materialised). */
static void emit_branch(comp *c, ctl *t) {
    uint32_t n = label_arity(t);
    need(c, n);
    if (t->kind == CTL_FUNC) {
        if (n == 1 && c->last_dfield && c->last_end == c->len && c->last_dh == c->sh - 1 &&
            c->st[c->sh - 1].kind == SV_STACK &&
            (c->last_op == OP_I32_ADD || c->last_op == OP_I32_ADD_I)) {
            /* Return the sum just computed: one instruction. */
            uint32_t a = c->code[c->last_pos + 3], b = c->code[c->last_pos + 4];
            int op = c->last_op == OP_I32_ADD ? OP_RET_ADD : OP_RET_ADD_I;
            c->len = c->last_pos;
            emit_op(c, op);
            emit(c, a);
            emit(c, b);
            return;
        }
        if (n == 1) {
            emit_op(c, OP_RET1);
            emit(c, slot(c, c->sh - 1));
        } else {
            for (uint32_t i = 0; i < n; i++) emit_mov(c, local_slot(i), slot(c, c->sh - n + i));
            emit_op(c, OP_RETURN);
        }
        return;
    }
    for (uint32_t i = 0; i < n; i++) emit_mov(c, slot(c, t->base + i), slot(c, c->sh - n + i));
    emit_op(c, OP_BR);
    emit_target(c, t);
}

static ctl *label(comp *c, uint32_t depth) {
    if (depth >= c->nctl) invalid("unknown label");
    return &c->ctls[c->nctl - 1 - depth];
}

static void block_type(comp *c, uint32_t *np, uint32_t *nr) {
    if (c->r.p >= c->r.end) eng_malformed("unexpected end");
    uint8_t b = *c->r.p;
    c->bpt = c->brt = c->r.p;
    if (b == 0x40) {
        c->r.p++;
        *np = *nr = 0;
    } else if (eng_is_valtype(b)) {
        c->r.p++;
        *np = 0;
        *nr = 1;
    } else {
        int64_t t = rd_sleb(&c->r, 33);
        if (t < 0 || (uint64_t)t >= c->m->ntypes) invalid("unknown type");
        *np = c->m->types[t].nparams;
        *nr = c->m->types[t].nresults;
        c->bpt = c->m->types[t].types;
        c->brt = c->bpt + *np;
    }
}

static void push_ctl(comp *c, uint8_t kind, uint32_t np, uint32_t nr) {
    if (c->nctl == c->ccap) {
        s_ctls = grow_buf(s_ctls, &s_ctl_cap, c->nctl + 1, sizeof(ctl));
        c->ctls = s_ctls;
        c->ccap = s_ctl_cap;
    }
    if (c->nctl) need(c, np);
    c->ctls[c->nctl++] = (ctl){kind, false, c->sh - np, np, nr, c->len, 0, 0, c->bpt, c->brt, 0, 0, 0};
    c->last_dfield = 0;
    if (kind == CTL_LOOP) mark_label(c);
}

/* ---- Fused compare-and-branch ----------------------------------------------------- */

/* If the last instruction computed the i32 compare that is the condition just popped
 * (at height h), removes it and returns the fused branch op; *a, *b get its operands.
 * `negate`: branch when the compare is false. Returns -1 if not fusable; for eqz
 * returns OP_BR_IF / OP_BR_UNLESS with *a its operand. */
static int fuse_compare(comp *c, uint32_t h, bool negate, uint32_t *a, uint32_t *b) {
    if (!c->last_dfield || c->last_dh != h || c->last_end != c->len) return -1;
    static const struct { int cmp, br, inv; } map[] = {
        {OP_I32_EQ, OP_BR_EQ, OP_BR_NE},       {OP_I32_NE, OP_BR_NE, OP_BR_EQ},
        {OP_I32_LT_S, OP_BR_LT_S, OP_BR_GE_S}, {OP_I32_LT_U, OP_BR_LT_U, OP_BR_GE_U},
        {OP_I32_GT_S, OP_BR_GT_S, OP_BR_LE_S}, {OP_I32_GT_U, OP_BR_GT_U, OP_BR_LE_U},
        {OP_I32_LE_S, OP_BR_LE_S, OP_BR_GT_S}, {OP_I32_LE_U, OP_BR_LE_U, OP_BR_GT_U},
        {OP_I32_GE_S, OP_BR_GE_S, OP_BR_LT_S}, {OP_I32_GE_U, OP_BR_GE_U, OP_BR_LT_U},
        {OP_I32_EQ_I, OP_BR_EQ_I, OP_BR_NE_I},       {OP_I32_NE_I, OP_BR_NE_I, OP_BR_EQ_I},
        {OP_I32_LT_S_I, OP_BR_LT_S_I, OP_BR_GE_S_I}, {OP_I32_LT_U_I, OP_BR_LT_U_I, OP_BR_GE_U_I},
        {OP_I32_GT_S_I, OP_BR_GT_S_I, OP_BR_LE_S_I}, {OP_I32_GT_U_I, OP_BR_GT_U_I, OP_BR_LE_U_I},
        {OP_I32_LE_S_I, OP_BR_LE_S_I, OP_BR_GT_S_I}, {OP_I32_LE_U_I, OP_BR_LE_U_I, OP_BR_GT_U_I},
        {OP_I32_GE_S_I, OP_BR_GE_S_I, OP_BR_LT_S_I}, {OP_I32_GE_U_I, OP_BR_GE_U_I, OP_BR_LT_U_I},
        {OP_I32_EQZ, OP_BR_UNLESS, OP_BR_IF},
        {OP_I64_EQ, OP_BR64_EQ, OP_BR64_NE},       {OP_I64_NE, OP_BR64_NE, OP_BR64_EQ},
        {OP_I64_LT_S, OP_BR64_LT_S, OP_BR64_GE_S}, {OP_I64_LT_U, OP_BR64_LT_U, OP_BR64_GE_U},
        {OP_I64_GT_S, OP_BR64_GT_S, OP_BR64_LE_S}, {OP_I64_GT_U, OP_BR64_GT_U, OP_BR64_LE_U},
        {OP_I64_LE_S, OP_BR64_LE_S, OP_BR64_GT_S}, {OP_I64_LE_U, OP_BR64_LE_U, OP_BR64_GT_U},
        {OP_I64_GE_S, OP_BR64_GE_S, OP_BR64_LT_S}, {OP_I64_GE_U, OP_BR64_GE_U, OP_BR64_LT_U},
        {OP_I64_EQZ, OP_BR_UNLESS64, OP_BR_IF64},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        if (map[i].cmp != c->last_op) continue;
        *a = c->code[c->last_pos + 3];
        *b = c->code[c->last_pos + 4];
        c->len = c->last_pos;
        c->last_dfield = 0;
        return negate ? map[i].inv : map[i].br;
    }
    return -1;
}

/* Emits a conditional branch on the popped condition at slot `cs` (height h): taken
 * when the condition is true (or false if `negate`). Returns the offset field. */
static uint32_t emit_cond_branch(comp *c, uint32_t cs, uint32_t h, bool negate, bool fusable) {
    uint32_t a = 0, b = 0;
    int op = fusable ? fuse_compare(c, h, negate, &a, &b) : -1;
    if (op < 0) {
        emit_op(c, negate ? OP_BR_UNLESS : OP_BR_IF);
        emit(c, cs);
    } else if (op == OP_BR_IF || op == OP_BR_UNLESS || op == OP_BR_IF64 || op == OP_BR_UNLESS64) {
        emit_op(c, op);
        emit(c, a);
    } else {
        emit_op(c, op);
        emit(c, a);
        emit(c, b);
    }
    uint32_t field = c->len;
    emit(c, 0);
    return field;
}

/* ---- Numeric instructions ----------------------------------------------------------- */

static bool is_unary(uint8_t op) {
    return op == 0x45 || op == 0x50 || (op >= 0x67 && op <= 0x69) || (op >= 0x79 && op <= 0x7b) ||
           (op >= 0x8b && op <= 0x91) || (op >= 0x99 && op <= 0x9f) || op >= 0xa7;
}

static int imm_form(int op, uint64_t k) {
    bool fits = (int64_t)k == (int64_t)(int32_t)k;
    switch (op) {
    case OP_I32_ADD: return OP_I32_ADD_I;
    case OP_I32_SUB: return OP_I32_SUB_I;
    case OP_I32_MUL: return OP_I32_MUL_I;
    case OP_I32_AND: return OP_I32_AND_I;
    case OP_I32_OR: return OP_I32_OR_I;
    case OP_I32_XOR: return OP_I32_XOR_I;
    case OP_I32_SHL: return OP_I32_SHL_I;
    case OP_I32_SHR_S: return OP_I32_SHR_S_I;
    case OP_I32_SHR_U: return OP_I32_SHR_U_I;
    case OP_I32_EQ: return OP_I32_EQ_I;
    case OP_I32_NE: return OP_I32_NE_I;
    case OP_I32_LT_S: return OP_I32_LT_S_I;
    case OP_I32_LT_U: return OP_I32_LT_U_I;
    case OP_I32_GT_S: return OP_I32_GT_S_I;
    case OP_I32_GT_U: return OP_I32_GT_U_I;
    case OP_I32_LE_S: return OP_I32_LE_S_I;
    case OP_I32_LE_U: return OP_I32_LE_U_I;
    case OP_I32_GE_S: return OP_I32_GE_S_I;
    case OP_I32_GE_U: return OP_I32_GE_U_I;
    case OP_I64_ADD: return fits ? OP_I64_ADD_I : -1;
    case OP_I64_SUB: return fits ? OP_I64_SUB_I : -1;
    case OP_I64_AND: return fits ? OP_I64_AND_I : -1;
    case OP_I64_SHL: return OP_I64_SHL_I;
    case OP_I64_SHR_S: return OP_I64_SHR_S_I;
    case OP_I64_SHR_U: return OP_I64_SHR_U_I;
    case OP_I32_ROTL: return OP_I32_ROTL_I;
    case OP_I32_ROTR: return OP_I32_ROTR_I;
    case OP_I64_ROTL: return OP_I64_ROTL_I;
    case OP_I64_ROTR: return OP_I64_ROTR_I;
    case OP_I64_MUL: return fits ? OP_I64_MUL_I : -1;
    case OP_I64_OR: return fits ? OP_I64_OR_I : -1;
    case OP_I64_XOR: return fits ? OP_I64_XOR_I : -1;
    case OP_I8X16_SHL: return OP_I8X16_SHL_I;
    case OP_I8X16_SHR_S: return OP_I8X16_SHR_S_I;
    case OP_I8X16_SHR_U: return OP_I8X16_SHR_U_I;
    case OP_I16X8_SHL: return OP_I16X8_SHL_I;
    case OP_I16X8_SHR_S: return OP_I16X8_SHR_S_I;
    case OP_I16X8_SHR_U: return OP_I16X8_SHR_U_I;
    case OP_I32X4_SHL: return OP_I32X4_SHL_I;
    case OP_I32X4_SHR_S: return OP_I32X4_SHR_S_I;
    case OP_I32X4_SHR_U: return OP_I32X4_SHR_U_I;
    case OP_I64X2_SHL: return OP_I64X2_SHL_I;
    case OP_I64X2_SHR_S: return OP_I64X2_SHR_S_I;
    case OP_I64X2_SHR_U: return OP_I64X2_SHR_U_I;
    default: return -1;
    }
}

/* The fused op for `outer` (i32 add/xor/and/or) of the value just computed by the
 * last instruction (if it is one of the inner ops), or -1. */
static int binbin_op(int outer, int inner) {
    if (outer == OP_F64_ADD) return inner == OP_F64_MUL ? OP_F64_ADD_MUL : -1;
    if (outer == OP_F32_ADD) return inner == OP_F32_MUL ? OP_F32_ADD_MUL : -1;
    if (outer == OP_F32X4_ADD) return inner == OP_F32X4_MUL ? OP_F32X4_ADD_MUL : -1;
    if (outer == OP_F64X2_ADD) return inner == OP_F64X2_MUL ? OP_F64X2_ADD_MUL : -1;
    static const int outers[4] = {OP_I32_ADD, OP_I32_XOR, OP_I32_AND, OP_I32_OR};
    static const int inners[11] = {OP_I32_ADD, OP_I32_SUB, OP_I32_XOR, OP_I32_AND, OP_I32_OR, OP_I32_ROTL_I, OP_I32_ROTR_I, OP_I32_SHL_I, OP_I32_SHR_U_I, OP_I32_ADD_I, OP_I32_AND_I};
    static const int fused[4][11] = {
        {OP_F_ADD_ADD, OP_F_ADD_SUB, OP_F_ADD_XOR, OP_F_ADD_AND, OP_F_ADD_OR, OP_F_ADD_ROTL_I, OP_F_ADD_ROTR_I, OP_F_ADD_SHL_I, OP_F_ADD_SHR_U_I, OP_F_ADD_ADD_I, OP_F_ADD_AND_I},
        {OP_F_XOR_ADD, OP_F_XOR_SUB, OP_F_XOR_XOR, OP_F_XOR_AND, OP_F_XOR_OR, OP_F_XOR_ROTL_I, OP_F_XOR_ROTR_I, OP_F_XOR_SHL_I, OP_F_XOR_SHR_U_I, OP_F_XOR_ADD_I, OP_F_XOR_AND_I},
        {OP_F_AND_ADD, OP_F_AND_SUB, OP_F_AND_XOR, OP_F_AND_AND, OP_F_AND_OR, OP_F_AND_ROTL_I, OP_F_AND_ROTR_I, OP_F_AND_SHL_I, OP_F_AND_SHR_U_I, OP_F_AND_ADD_I, OP_F_AND_AND_I},
        {OP_F_OR_ADD, OP_F_OR_SUB, OP_F_OR_XOR, OP_F_OR_AND, OP_F_OR_OR, OP_F_OR_ROTL_I, OP_F_OR_ROTR_I, OP_F_OR_SHL_I, OP_F_OR_SHR_U_I, OP_F_OR_ADD_I, OP_F_OR_AND_I}};
    for (int o = 0; o < 4; o++) {
        if (outers[o] != outer) continue;
        for (int i = 0; i < 11; i++)
            if (inners[i] == inner) return fused[o][i];
    }
    return -1;
}

static void numeric(comp *c, uint8_t opcode, int op) {
    uint32_t d, a, b, pos;
    if (is_unary(opcode)) {
        a = pop_slot(c);
        d = slot(c, c->sh);
        pos = emit_op(c, op);
        emit(c, d);
        emit(c, a);
        push_result(c, op, pos, pos + 2);
        return;
    }
    need(c, 2);
    sval *top = &c->st[c->sh - 1];
    int iop = top->kind == SV_CONST ? imm_form(op, top->k) : -1;
    if (iop >= 0) {
        uint32_t k = (uint32_t)top->k;
        truncate(c, c->sh - 1);
        a = pop_slot(c);
        d = slot(c, c->sh);
        pos = emit_op(c, iop);
        emit(c, d);
        emit(c, a);
        emit(c, k);
        push_result(c, iop, pos, pos + 2);
        return;
    }
    int fop = c->last_dfield && c->last_end == c->len ? binbin_op(op, c->last_op) : -1;
    if (fop >= 0) {
        sval t = c->st[c->sh - 1], u = c->st[c->sh - 2];
        uint32_t x = c->code[c->last_pos + 3], y = c->code[c->last_pos + 4];
        bool right = t.kind == SV_STACK && c->last_dh == c->sh - 1;
        bool left = u.kind == SV_STACK && c->last_dh == c->sh - 2 && t.kind == SV_LOCAL;
        if (right || left) {
            /* The inner op's result is consumed here only: compute both in one. */
            c->len = c->last_pos;
            c->last_dfield = 0;
            if (right) {
                truncate(c, c->sh - 1);
                a = pop_slot(c);
            } else {
                a = pop_slot(c);
                truncate(c, c->sh - 1);
            }
            d = slot(c, c->sh);
            pos = emit_op(c, fop);
            emit(c, d);
            emit(c, a);
            emit(c, x);
            emit(c, y);
            push_result(c, fop, pos, pos + 2);
            return;
        }
    }
    b = pop_slot(c);
    a = pop_slot(c);
    d = slot(c, c->sh);
    pos = emit_op(c, op);
    emit(c, d);
    emit(c, a);
    emit(c, b);
    push_result(c, op, pos, pos + 2);
}

/* ---- Locals ----------------------------------------------------------------------- */

static bool refs_local(comp *c, uint32_t x, uint32_t below) {
    if (!c->nvirt) return false;
    for (uint32_t h = c->virt_lo; h < below; h++)
        if (c->st[h].kind == SV_LOCAL && c->st[h].local == x) return true;
    return false;
}

static void local_set(comp *c, uint32_t index, bool tee) {
    if (index >= c->nlocals) invalid("unknown local");
    uint32_t x = local_slot(index);
    need(c, 1);
    if (c->nvirt && c->sh - c->virt_lo > VIRT_SPAN) materialize_all(c);
    uint32_t h = c->sh - 1;
    sval v = c->st[h];
    if (v.kind == SV_STACK && c->last_dfield && c->last_dh == h && c->last_end == c->len &&
        !refs_local(c, x, h)) {
        /* Retarget the producing instruction to write the local directly. */
        c->code[c->last_dfield - 1] = x;
        c->last_dfield = 0;
        truncate(c, h);
    } else {
        truncate(c, h);
        if (refs_local(c, x, h))
            for (uint32_t i = c->virt_lo; i < h; i++)
                if (c->st[i].kind == SV_LOCAL && c->st[i].local == x) materialize(c, i);
        if (v.kind == SV_CONST)
            emit_const(c, x, v.k);
        else if (v.kind == SV_LOCAL)
            emit_mov(c, x, v.local);
        else
            emit_mov(c, x, slot(c, h));
        c->last_dfield = 0;
    }
    if (tee) push(c, SV_LOCAL, x, 0);
}

/* ---- Memory and tables ------------------------------------------------------------- */

static uint32_t memarg(comp *c) {
    uint32_t align = rd_u32(&c->r);
    if (align >= 32) eng_malformed("malformed memop flags");
    uint32_t off = rd_u32(&c->r);
    if (c->m->nmems == 0) invalid("unknown memory 0");
    return off;
}

static void mem0(comp *c) {
    if (rd_u8(&c->r) != 0) eng_malformed("zero byte expected");
    if (c->m->nmems == 0) invalid("unknown memory 0");
}

static uint32_t table_idx(comp *c) {
    uint32_t t = rd_u32(&c->r);
    if (t >= c->m->ntables) invalid("unknown table");
    return t;
}

static uint32_t data_idx(comp *c) {
    uint32_t d = rd_u32(&c->r);
    if (!c->m->has_datacount) eng_malformed("data count section required");
    if (d >= c->m->datacount) invalid("unknown data segment");
    return d;
}

static uint32_t elem_idx(comp *c) {
    uint32_t e = rd_u32(&c->r);
    if (e >= c->m->nelems) invalid("unknown elem segment");
    return e;
}

/* Pops n operands (the last pushed is out[n-1]). */
static void pop_n(comp *c, uint32_t *out, uint32_t n) {
    for (uint32_t i = n; i-- > 0;) out[i] = pop_slot(c);
}

static void emit_fields(comp *c, int op, const uint32_t *f, uint32_t n) {
    emit_op(c, op);
    for (uint32_t i = 0; i < n; i++) emit(c, f[i]);
}

static void prefixed(comp *c) {
    uint32_t sub = rd_u32(&c->r);
    uint32_t o[3], d, pos;
    if (sub <= 7) {
        numeric(c, 0xa7 /* any unary */, OP_I32_TRUNC_SAT_F32_S + (int)sub);
        return;
    }
    switch (sub) {
    case 8: { /* memory.init seg 0: d s n */
        uint32_t seg = data_idx(c);
        mem0(c);
        pop_n(c, o, 3);
        uint32_t f[4] = {seg, o[0], o[1], o[2]};
        emit_fields(c, OP_MEM_INIT, f, 4);
        break;
    }
    case 9: {
        uint32_t seg = data_idx(c);
        emit_fields(c, OP_DATA_DROP, &seg, 1);
        break;
    }
    case 10:
        mem0(c);
        mem0(c);
        pop_n(c, o, 3);
        emit_fields(c, OP_MEM_COPY, o, 3);
        break;
    case 11:
        mem0(c);
        pop_n(c, o, 3);
        emit_fields(c, OP_MEM_FILL, o, 3);
        break;
    case 12: { /* table.init seg t: d s n */
        uint32_t seg = elem_idx(c);
        uint32_t t = table_idx(c);
        pop_n(c, o, 3);
        uint32_t f[5] = {t, seg, o[0], o[1], o[2]};
        emit_fields(c, OP_TABLE_INIT, f, 5);
        break;
    }
    case 13: {
        uint32_t seg = elem_idx(c);
        emit_fields(c, OP_ELEM_DROP, &seg, 1);
        break;
    }
    case 14: { /* table.copy dst src: d s n */
        uint32_t dt = table_idx(c);
        uint32_t st = table_idx(c);
        pop_n(c, o, 3);
        uint32_t f[5] = {dt, st, o[0], o[1], o[2]};
        emit_fields(c, OP_TABLE_COPY, f, 5);
        break;
    }
    case 15: { /* table.grow t: init n -> old size */
        uint32_t t = table_idx(c);
        pop_n(c, o, 2);
        d = slot(c, c->sh);
        pos = emit_op(c, OP_TABLE_GROW);
        emit(c, t);
        emit(c, d);
        emit(c, o[0]);
        emit(c, o[1]);
        push_result(c, OP_TABLE_GROW, pos, pos + 3);
        break;
    }
    case 16: {
        uint32_t t = table_idx(c);
        d = slot(c, c->sh);
        pos = emit_op(c, OP_TABLE_SIZE);
        emit(c, t);
        emit(c, d);
        push_result(c, OP_TABLE_SIZE, pos, pos + 3);
        break;
    }
    case 17: { /* table.fill t: i val n */
        uint32_t t = table_idx(c);
        pop_n(c, o, 3);
        uint32_t f[4] = {t, o[0], o[1], o[2]};
        emit_fields(c, OP_TABLE_FILL, f, 4);
        break;
    }
    default: eng_malformed("illegal opcode");
    }
}

/* ---- Fixed-width SIMD (0xFD) -------------------------------------------------------- */

enum { SH_UN, SH_BIN, SH_TERN, SH_LOAD, SH_STORE, SH_CONST, SH_SHUF, SH_EXTRACT, SH_REPLACE,
       SH_LOADLANE, SH_STORELANE };

static const struct simd_info {
    uint16_t op1; /* OP_x + 1; 0: no such instruction */
    uint8_t shape, k;
} simd_info[256] = {
#define SIMD_INFO(code, n, shape, k) [code] = {OP_##n + 1, SH_##shape, k},
    SIMD_LIST(SIMD_INFO)
#undef SIMD_INFO
};

/* A SIMD memarg: the alignment may not exceed the access's natural one. */
static uint32_t simd_memarg(comp *c, uint32_t max_align) {
    uint32_t align = rd_u32(&c->r);
    if (align >= 32) eng_malformed("malformed memop flags");
    if (align > max_align) invalid("alignment must not be larger than natural");
    uint32_t off = rd_u32(&c->r);
    if (c->m->nmems == 0) invalid("unknown memory 0");
    return off;
}

static uint32_t lane_idx(comp *c, uint32_t lanes) {
    uint8_t lane = rd_u8(&c->r);
    if (lane >= lanes) invalid("invalid lane index");
    return lane;
}

static uint32_t log2_of(uint32_t n) { return (uint32_t)__builtin_ctz(n); }

static void simd_produced(comp *c);

/* Whether the instruction at `pos` is `op`. */
static bool op_at(comp *c, uint32_t pos, int op) {
    uint64_t h = (uint64_t)(uintptr_t)interp_handlers[op];
    return c->code[pos] == (uint32_t)h && c->code[pos + 1] == (uint32_t)(h >> 32);
}

/* A v128.load of address x + k (k = 0 for a plain load) + off, about to be emitted: if
 * the instruction just before is a v128.load too (nothing in between, no label), the two
 * become one V128_LOAD2 (executed in order, as written). Returns whether it did. */
static bool simd_pair_load(comp *c, uint32_t x, uint32_t k, uint32_t off) {
    uint32_t p = c->vload_pos;
    if (!c->vload_end || c->vload_end != c->len || c->label_at == c->len + 1) return false;
    if (!op_at(c, p, OP_V128_LOAD_RI) && !op_at(c, p, OP_V128_LOAD)) return false;
    uint32_t f[8];
    bool ri = op_at(c, p, OP_V128_LOAD_RI);
    f[0] = c->code[p + 2];
    f[1] = c->code[p + 3];
    f[2] = ri ? c->code[p + 4] : 0;
    f[3] = c->code[p + (ri ? 5 : 4)];
    f[5] = x;
    f[6] = k;
    f[7] = off;
    c->len = p;
    uint32_t pos = emit_op(c, OP_V128_LOAD2);
    f[4] = slot(c, c->sh);
    for (uint32_t i = 0; i < 8; i++) emit(c, f[i]);
    push_result(c, OP_V128_LOAD2, pos, pos + 6);
    simd_produced(c);
    c->vload_end = 0;
    return true;
}

/* Super-instructions of a SIMD binary op with the instruction just before it: the
 * product of two loads just paired (F32X4_MUL_LL: d x1 k1 off1 x2 k2 off2), and the sum
 * of a value and such a product (F32X4_ADD_MUL_LL: d a x1 ..., two roundings). Returns
 * whether it emitted one. */
static bool simd_fuse_bin(comp *c, int op) {
    if (!c->last_dfield || c->last_end != c->len || c->last_dh != c->sh - 1 || c->sh < 2 ||
        c->label_at == c->len + 1)
        return false;
    sval t = c->st[c->sh - 1], u = c->st[c->sh - 2];
    uint32_t lp = c->last_pos, f[8], n = 0;
    int fop;
    if ((op == OP_F32X4_MUL || op == OP_F64X2_MUL) && c->last_op == OP_V128_LOAD2) {
        /* Both operands are the loads' results, in order, and used here only. */
        if (t.kind != SV_STACK || u.kind != SV_STACK || c->code[lp + 2] != slot(c, c->sh - 2) ||
            c->code[lp + 6] != slot(c, c->sh - 1))
            return false;
        fop = op == OP_F32X4_MUL ? OP_F32X4_MUL_LL : OP_F64X2_MUL_LL;
        for (uint32_t i = 0; i < 3; i++) f[n++] = c->code[lp + 3 + i];
        for (uint32_t i = 0; i < 3; i++) f[n++] = c->code[lp + 7 + i];
        truncate(c, c->sh - 2);
    } else if ((op == OP_F32X4_ADD && c->last_op == OP_F32X4_MUL_LL) ||
               (op == OP_F64X2_ADD && c->last_op == OP_F64X2_MUL_LL)) {
        /* As binbin_op's multiply-add: the product on the right, or on the left with a
         * local on the right. */
        bool right = t.kind == SV_STACK;
        bool left = u.kind == SV_STACK && c->last_dh == c->sh - 2 && t.kind == SV_LOCAL;
        if (!right && !left) return false;
        fop = op == OP_F32X4_ADD ? OP_F32X4_ADD_MUL_LL : OP_F64X2_ADD_MUL_LL;
        for (uint32_t i = 0; i < 6; i++) f[1 + i] = c->code[lp + 3 + i];
        n = 7;
        c->len = lp;
        c->last_dfield = 0;
        if (right) {
            truncate(c, c->sh - 1);
            f[0] = pop_slot(c);
        } else {
            f[0] = pop_slot(c);
            truncate(c, c->sh - 1);
        }
    } else {
        return false;
    }
    c->len = lp;
    c->last_dfield = 0;
    uint32_t d = slot(c, c->sh);
    uint32_t pos = emit_op(c, fop);
    emit(c, d);
    for (uint32_t i = 0; i < n; i++) emit(c, f[i]);
    push_result(c, fop, pos, pos + 2);
    simd_produced(c);
    return true;
}

enum { PAIR_A = 1, PAIR_B = 2, PAIR_AB = 3 };

static const struct simd_pair {
    int16_t first, second, fused;
    uint8_t mode;
} simd_pairs[] = {
#define SIMD_PAIR_ENTRY(X, first, second, fused, mode) {OP_##first, OP_##second, OP_##fused, PAIR_##mode},
    SIMD_PAIRS(SIMD_PAIR_ENTRY, _)
#undef SIMD_PAIR_ENTRY
};

/* Whether SIMD op `op` has a scalar result (not a v128 one, so not left in acc). */
static bool simd_scalar_result(int op) {
    switch (op) {
    case OP_V128_ANY_TRUE: case OP_I8X16_ALL_TRUE: case OP_I16X8_ALL_TRUE:
    case OP_I32X4_ALL_TRUE: case OP_I64X2_ALL_TRUE: case OP_I8X16_BITMASK:
    case OP_I16X8_BITMASK: case OP_I32X4_BITMASK: case OP_I64X2_BITMASK:
    case OP_I8X16_EXTRACT_LANE_S: case OP_I8X16_EXTRACT_LANE_U: case OP_I16X8_EXTRACT_LANE_S:
    case OP_I16X8_EXTRACT_LANE_U: case OP_I32X4_EXTRACT_LANE: case OP_I64X2_EXTRACT_LANE:
    case OP_F32X4_EXTRACT_LANE: case OP_F64X2_EXTRACT_LANE: return true;
    default: return false;
    }
}

/* Records the instruction just emitted by simd() (its result pushed) as the last SIMD
 * result: every SIMD handler with a v128 result leaves it in acc too (simd.h). */
static void simd_produced(comp *c) {
    c->vprev_end = c->vprod_end == c->last_pos ? c->vprod_end : 0;
    c->vprev_pos = c->vprod_pos;
    c->vprev_dfield = c->vprod_dfield;
    c->vprev_op = c->vprod_op;
    c->vprod_pos = c->last_pos;
    c->vprod_end = simd_scalar_result(c->last_op) ? 0 : c->len;
    c->vprod_op = c->last_op;
    c->vprod_dfield = c->last_dfield - 1;
}

/* Whether the instruction at `pos` is `op` or one of its _A/_B variants. */
static bool simd_op_at(comp *c, uint32_t pos, int op) {
    if (op_at(c, pos, op)) return true;
    if (op >= OP_I8X16_SHL_I && op <= OP_I64X2_SHR_U_I)
        return op_at(c, pos, op - OP_I8X16_SHL_I + OP_I8X16_SHL_I_A);
    int first_pair = simd_pairs[0].fused, npairs = (int)(sizeof simd_pairs / sizeof simd_pairs[0]);
    if (op >= first_pair && op < first_pair + npairs)
        return op_at(c, pos, op + npairs) || op_at(c, pos, op + 2 * npairs);
    if (op < OP_V128_LOAD || op > OP_F64X2_CONVERT_LOW_I32X4_U) return false;
    return op_at(c, pos, op - OP_V128_LOAD + OP_V128_LOAD_A) ||
           op_at(c, pos, op - OP_V128_LOAD + OP_V128_LOAD_B);
}

/* The unary or binary SIMD instruction `op` just emitted at `pos` (d a [b]): if an
 * operand is the v128 result of the instruction right before it (no label in between),
 * switch to the variant that reads that operand from acc. */
static void simd_variant(comp *c, int op, uint32_t pos, bool binary) {
    if (!c->vprod_end || c->vprod_end != pos || c->label_at == pos + 1) return;
    if (!simd_op_at(c, c->vprod_pos, c->vprod_op)) return;
    if (op == OP_I8X16_SPLAT || op == OP_I16X8_SPLAT || op == OP_I32X4_SPLAT ||
        op == OP_I64X2_SPLAT || op == OP_F32X4_SPLAT || op == OP_F64X2_SPLAT)
        return; /* a scalar operand */
    bool shift = /* b is the i32 count */
        op == OP_I8X16_SHL || op == OP_I8X16_SHR_S || op == OP_I8X16_SHR_U ||
        op == OP_I16X8_SHL || op == OP_I16X8_SHR_S || op == OP_I16X8_SHR_U ||
        op == OP_I32X4_SHL || op == OP_I32X4_SHR_S || op == OP_I32X4_SHR_U ||
        op == OP_I64X2_SHL || op == OP_I64X2_SHR_S || op == OP_I64X2_SHR_U;
    uint32_t pd = c->code[c->vprod_dfield];
    int v;
    if (op >= OP_I8X16_SHL_I && op <= OP_I64X2_SHR_U_I) { /* d a k */
        if (c->code[pos + 3] != pd) return;
        v = op - OP_I8X16_SHL_I + OP_I8X16_SHL_I_A;
    } else if (c->code[pos + 3] == pd)
        v = op - OP_V128_LOAD + OP_V128_LOAD_A;
    else if (binary && !shift && c->code[pos + 4] == pd)
        v = op - OP_V128_LOAD + OP_V128_LOAD_B;
    else
        return;
    uint64_t h = (uint64_t)(uintptr_t)interp_handlers[v];
    c->code[pos] = (uint32_t)h;
    c->code[pos + 1] = (uint32_t)(h >> 32);
}

/* The slot an operand-stack entry is read from; UINT32_MAX for a constant (which would
 * have to be materialised first). */
static uint32_t peek_slot(comp *c, uint32_t h) {
    const sval *v = &c->st[h];
    return v->kind == SV_LOCAL ? v->local : v->kind == SV_STACK ? slot(c, h) : UINT32_MAX;
}

/* Binary SIMD op `op` (a shift by the constant k on the top if `shift`) right after the
 * last SIMD result: if SIMD_PAIRS has the pair and that result is the operand its mode
 * names, emits the pair as one instruction, pops the operands, pushes the result and
 * returns true. The first instruction's result is still written where it was (a local
 * it was retargeted to may be read later). */
static bool simd_pair(comp *c, int op, bool shift, uint32_t k) {
    uint32_t p = c->vprod_pos;
    if (!c->vprod_end || c->vprod_end != c->len || c->label_at == c->len + 1) return false;
    if (c->sh < top_ctl(c)->base + 2 || !simd_op_at(c, p, c->vprod_op)) return false;
    uint32_t pd = c->code[p + 2], nf = c->vprod_end - p - 2;
    uint32_t a = peek_slot(c, c->sh - 2), b = shift ? UINT32_MAX : peek_slot(c, c->sh - 1);
    if (a == UINT32_MAX || (!shift && b == UINT32_MAX) || nf > 5) return false;
    for (size_t i = 0; i < sizeof simd_pairs / sizeof simd_pairs[0]; i++) {
        const struct simd_pair *e = &simd_pairs[i];
        if (e->first != c->vprod_op || e->second != op) continue;
        uint32_t other, f[5];
        if ((e->mode & PAIR_A) && a == pd)
            other = shift ? k : b;
        else if ((e->mode & PAIR_B) && b == pd)
            other = a;
        else
            return false;
        for (uint32_t j = 0; j < nf; j++) f[j] = c->code[p + 2 + j];
        /* The v128 result of the instruction before the first, still in acc: the variant
         * reading the second's other operand (unless the first overwrites that slot) or
         * the first's operand a from there. */
        int fused = e->fused;
        int npairs = (int)(sizeof simd_pairs / sizeof simd_pairs[0]);
        if (c->vprev_end && c->vprev_end == p && c->label_at != p + 1 &&
            simd_op_at(c, c->vprev_pos, c->vprev_op)) {
            uint32_t pd2 = c->code[c->vprev_dfield];
            if (!shift && other == pd2 && other != f[0])
                fused = e->fused + 2 * npairs; /* _X */
            else if (e->first != OP_V128_CONST && f[1] == pd2)
                fused = e->fused + npairs; /* _P */
        }
        truncate(c, c->sh - 2);
        c->len = p;
        uint32_t pos = emit_op(c, fused);
        for (uint32_t j = 0; j < nf; j++) emit(c, f[j]);
        emit(c, slot(c, c->sh));
        emit(c, other);
        push_result(c, e->fused, pos, pos + 2 + nf);
        simd_produced(c);
        return true;
    }
    return false;
}

static void simd(comp *c) {
    uint32_t sub = rd_u32(&c->r);
    const struct simd_info *si = sub < 256 ? &simd_info[sub] : 0;
    if (!si || !si->op1) eng_malformed("illegal opcode");
    int op = si->op1 - 1;
    uint32_t o[3], f[12], n = 0, d, pos;
    bool result = true;
    switch (si->shape) {
    case SH_UN: o[0] = pop_slot(c); f[n++] = o[0]; break;
    case SH_BIN: { /* d a b, through numeric() for the fused multiply-add */
        if (simd_fuse_bin(c, op)) return;
        need(c, 2);
        const sval *top = &c->st[c->sh - 1];
        int iop = top->kind == SV_CONST ? imm_form(op, top->k) : -1;
        if (simd_pair(c, iop >= 0 ? iop : op, iop >= 0, (uint32_t)top->k)) return;
        numeric(c, 0x6a /* any binary opcode */, op);
        if (c->last_op == op || (c->last_op >= OP_I8X16_SHL_I && c->last_op <= OP_I64X2_SHR_U_I))
            simd_variant(c, c->last_op, c->last_pos, true);
        simd_produced(c);
        return;
    }
    case SH_TERN:
        pop_n(c, o, 3);
        f[n++] = o[0];
        f[n++] = o[1];
        f[n++] = o[2];
        break;
    case SH_LOAD: {
        uint32_t off = simd_memarg(c, si->k);
        need(c, 1);
        if (op == OP_V128_LOAD && c->st[c->sh - 1].kind == SV_STACK && c->last_dfield &&
            c->last_dh == c->sh - 1 && c->last_end == c->len &&
            (c->last_op == OP_I32_ADD || c->last_op == OP_I32_ADD_I)) {
            /* The address is an i32.add just computed: fold it into the load. */
            f[n++] = c->code[c->last_pos + 3];
            f[n++] = c->code[c->last_pos + 4];
            op = c->last_op == OP_I32_ADD ? OP_V128_LOAD_RR : OP_V128_LOAD_RI;
            c->len = c->last_pos;
            truncate(c, c->sh - 1);
        } else {
            f[n++] = pop_slot(c);
        }
        f[n++] = off;
        if (op == OP_V128_LOAD_RI || op == OP_V128_LOAD) {
            bool ri = op == OP_V128_LOAD_RI;
            if (simd_pair_load(c, f[0], ri ? f[1] : 0, off)) return;
            d = slot(c, c->sh);
            c->vload_pos = emit_op(c, op);
            emit(c, d);
            for (uint32_t i = 0; i < n; i++) emit(c, f[i]);
            push_result(c, op, c->vload_pos, c->vload_pos + 2);
            simd_produced(c);
            c->vload_end = c->len;
            return;
        }
        break;
    }
    case SH_STORE: {
        uint32_t off = simd_memarg(c, si->k);
        pop_n(c, o, 2);
        f[n++] = o[0];
        f[n++] = o[1];
        f[n++] = off;
        result = false;
        break;
    }
    case SH_CONST: {
        const uint8_t *p = rd_bytes(&c->r, 16);
        for (uint32_t i = 0; i < 4; i++) memcpy(&f[n++], p + 4 * i, 4);
        break;
    }
    case SH_SHUF: {
        const uint8_t *p = rd_bytes(&c->r, 16);
        uint8_t m[32]; /* pshufb masks: lanes from a, then lanes from b */
        for (uint32_t i = 0; i < 16; i++) {
            if (p[i] >= 32) invalid("invalid lane index");
            m[i] = p[i] < 16 ? p[i] : 0x80;
            m[16 + i] = p[i] < 16 ? 0x80 : (uint8_t)(p[i] - 16);
        }
        pop_n(c, o, 2);
        f[n++] = o[0];
        f[n++] = o[1];
        for (uint32_t i = 0; i < 8; i++) memcpy(&f[n++], m + 4 * i, 4);
        break;
    }
    case SH_EXTRACT: {
        uint32_t lane = lane_idx(c, si->k);
        f[n++] = pop_slot(c);
        f[n++] = lane;
        break;
    }
    case SH_REPLACE: {
        uint32_t lane = lane_idx(c, si->k);
        pop_n(c, o, 2);
        f[n++] = o[0];
        f[n++] = o[1];
        f[n++] = lane;
        break;
    }
    case SH_LOADLANE:
    case SH_STORELANE: {
        uint32_t off = simd_memarg(c, log2_of(16 / si->k));
        uint32_t lane = lane_idx(c, si->k);
        pop_n(c, o, 2);
        f[n++] = o[0];
        f[n++] = o[1];
        f[n++] = off;
        f[n++] = lane;
        result = si->shape == SH_LOADLANE;
        break;
    }
    }
    if (!result) {
        uint32_t at = c->len;
        emit_fields(c, op, f, n);
        if (op == OP_V128_STORE && c->vprod_end && c->vprod_end == at && c->label_at != at + 1 &&
            simd_op_at(c, c->vprod_pos, c->vprod_op) && f[1] == c->code[c->vprod_dfield]) {
            /* The value stored is the v128 result right before: from acc. */
            uint64_t h = (uint64_t)(uintptr_t)interp_handlers[OP_V128_STORE_B];
            c->code[at] = (uint32_t)h;
            c->code[at + 1] = (uint32_t)(h >> 32);
        }
        return;
    }
    d = slot(c, c->sh);
    pos = emit_op(c, op);
    emit(c, d);
    for (uint32_t i = 0; i < n; i++) emit(c, f[i]);
    push_result(c, op, pos, pos + 2);
    if (si->shape == SH_UN || si->shape == SH_SHUF) simd_variant(c, op, pos, si->shape == SH_SHUF);
    simd_produced(c);
}

/* ---- Exception handling: throw, throw_ref, try_table -------------------------------- */

/* The types a branch to label t carries. */
static const uint8_t *label_types(ctl *t) { return t->kind == CTL_LOOP ? t->ptypes : t->rtypes; }

/* Reads one catch clause of a try_table (its label is resolved outside the try_table)
 * and checks that the label takes exactly the values the clause delivers. */
static void catch_clause(comp *c) {
    module *m = c->m;
    uint8_t kind = rd_u8(&c->r);
    if (kind > EH_CATCH_ALL_REF) eng_malformed("malformed catch clause");
    uint32_t tag = 0, np = 0;
    const uint8_t *tp = 0;
    if (kind == EH_CATCH || kind == EH_CATCH_REF) {
        tag = rd_u32(&c->r);
        if (tag >= m->ntags) invalid("unknown tag");
        const functype *ft = &m->types[m->tag_type[tag]];
        np = ft->nparams;
        tp = ft->types;
    }
    ctl *t = label(c, rd_u32(&c->r));
    bool ref = kind == EH_CATCH_REF || kind == EH_CATCH_ALL_REF;
    const uint8_t *lt = label_types(t);
    if (label_arity(t) != np + ref) invalid("type mismatch");
    if (np && memcmp(lt, tp, np) != 0) invalid("type mismatch");
    if (ref && lt[np] != WASM_TYPE_EXNREF) invalid("type mismatch");
    if (c->nclauses == s_clauses_cap)
        s_clauses = grow_buf(s_clauses, &s_clauses_cap, c->nclauses + 1, sizeof(eh_clause));
    eh_clause *cl = &s_clauses[c->nclauses];
    cl->kind = kind;
    cl->tag = tag;
    cl->dest = t->kind == CTL_FUNC ? local_slot(0) : slot(c, t->base);
    if (t->kind == CTL_FUNC) {
        cl->target = EH_TARGET_RETURN;
    } else if (t->kind == CTL_LOOP) {
        cl->target = t->start;
    } else { /* bound when the label's block ends (bind_catches) */
        cl->target = t->eh_chain;
        t->eh_chain = c->nclauses + 1;
    }
    c->nclauses++;
}

/* A block's end: the catch clauses that target it land here. */
static void bind_catches(comp *c, ctl *t) {
    for (uint32_t chain = t->eh_chain; chain;) {
        eh_clause *cl = &s_clauses[chain - 1];
        chain = cl->target;
        cl->target = c->len;
    }
    t->eh_chain = 0;
    mark_label(c);
}

/* A try_table's end: its body's code range gets its clauses. */
static void end_try(comp *c, ctl *t) {
    if (!t->eh_n) return;
    if (c->nranges == s_ranges_cap) s_ranges = grow_buf(s_ranges, &s_ranges_cap, c->nranges + 1, sizeof(eh_range));
    s_ranges[c->nranges++] = (eh_range){t->start, c->len, t->eh_first, t->eh_n};
}

static void exception_op(comp *c, uint8_t opc) {
    module *m = c->m;
    if (opc == 0x08) { /* throw x: THROW tag args frame_size (patched at the end) */
        uint32_t x = rd_u32(&c->r);
        if (x >= m->ntags) invalid("unknown tag");
        const functype *ft = &m->types[m->tag_type[x]];
        need(c, ft->nparams);
        for (uint32_t h = c->sh - ft->nparams; h < c->sh; h++) materialize(c, h);
        uint32_t base = c->sh - ft->nparams;
        truncate(c, base);
        emit_op(c, OP_THROW);
        emit(c, x);
        emit(c, slot(c, base));
        emit(c, c->throw_chain);
        c->throw_chain = c->len;
        set_unreachable(c);
    } else if (opc == 0x0a) { /* throw_ref: THROW_REF a */
        uint32_t a = pop_slot(c);
        emit_op(c, OP_THROW_REF);
        emit(c, a);
        set_unreachable(c);
    } else { /* try_table bt catch* */
        uint32_t np, nr;
        block_type(c, &np, &nr);
        const uint8_t *bpt = c->bpt, *brt = c->brt;
        uint32_t n = rd_count(&c->r, 2);
        uint32_t first = c->nclauses;
        for (uint32_t i = 0; i < n; i++) catch_clause(c);
        need(c, np);
        materialize_all(c);
        c->bpt = bpt;
        c->brt = brt;
        push_ctl(c, CTL_TRY, np, nr);
        top_ctl(c)->eh_first = first;
        top_ctl(c)->eh_n = n;
    }
}

/* ---- The function body -------------------------------------------------------------- */

static void body(comp *c) {
    module *m = c->m;
    reader *r = &c->r;
    while (c->nctl) {
        uint8_t opc = rd_u8(r);
        uint32_t x, a, d, pos;
        switch (opc) {
        case 0x00:
            emit_op(c, OP_UNREACHABLE);
            set_unreachable(c);
            break;
        case 0x01: break;
        case 0x02:
        case 0x03: {
            uint32_t np, nr;
            block_type(c, &np, &nr);
            need(c, np);
            materialize_all(c);
            push_ctl(c, opc, np, nr);
            break;
        }
        case 0x04: {
            uint32_t np, nr;
            block_type(c, &np, &nr);
            uint32_t cs = pop_slot(c);
            uint32_t h = c->sh;
            uint32_t before = c->len;
            need(c, np);
            materialize_all(c);
            uint32_t field = emit_cond_branch(c, cs, h, true, c->len == before);
            push_ctl(c, CTL_IF, np, nr);
            top_ctl(c)->else_field = field + 1;
            break;
        }
        case 0x05: {
            ctl *t = top_ctl(c);
            if (t->kind != CTL_IF || !t->else_field) invalid("else without if");
            materialize_all(c);
            emit_op(c, OP_BR);
            emit_target(c, t);
            bind_chain(c, t->else_field, c->len);
            t->else_field = 0;
            truncate(c, t->base);
            for (uint32_t i = 0; i < t->nparams; i++) push(c, SV_STACK, 0, 0);
            t->unreachable = false;
            c->last_dfield = 0;
            break;
        }
        case 0x0b: {
            ctl *t = top_ctl(c);
            need(c, t->nresults);
            materialize_all(c);
            if (t->kind == CTL_FUNC) {
                emit_branch(c, t);
                c->nctl = 0;
                break;
            }
            if (t->else_field) bind_chain(c, t->else_field, c->len);
            bind_chain(c, t->chain, c->len);
            if (t->kind == CTL_TRY) end_try(c, t);
            if (t->eh_chain) bind_catches(c, t);
            truncate(c, t->base);
            for (uint32_t i = 0; i < t->nresults; i++) push(c, SV_STACK, 0, 0);
            c->nctl--;
            c->last_dfield = 0;
            break;
        }
        case 0x0c: {
            ctl *t = label(c, rd_u32(r));
            materialize_all(c);
            emit_branch(c, t);
            set_unreachable(c);
            break;
        }
        case 0x0d: {
            ctl *t = label(c, rd_u32(r));
            uint32_t cs = pop_slot(c);
            uint32_t h = c->sh;
            uint32_t before = c->len;
            need(c, label_arity(t));
            materialize_all(c);
            bool fusable = c->len == before;
            if (!branch_needs_moves(c, t)) {
                emit_cond_branch(c, cs, h, false, fusable);
                c->len--;
                emit_target(c, t);
            } else {
                uint32_t skip = emit_cond_branch(c, cs, h, true, fusable);
                emit_branch(c, t);
                c->code[skip] = c->len - skip;
                mark_label(c);
            }
            c->last_dfield = 0;
            break;
        }
        case 0x0e: {
            uint32_t n = rd_count(r, 1);
            if (n + 1 > s_targets_cap) s_targets = grow_buf(s_targets, &s_targets_cap, n + 1, 4);
            for (uint32_t i = 0; i <= n; i++) s_targets[i] = rd_u32(r);
            uint32_t is = pop_slot(c);
            materialize_all(c);
            for (uint32_t i = 0; i <= n; i++) need(c, label_arity(label(c, s_targets[i])));
            emit_op(c, OP_BR_TABLE);
            emit(c, is);
            emit(c, n);
            reserve(c, n + 1);
            uint32_t fields = c->len;
            c->len += n + 1;
            for (uint32_t i = 0; i <= n; i++) {
                ctl *t = label(c, s_targets[i]);
                uint32_t f = fields + i;
                if (!branch_needs_moves(c, t)) {
                    if (t->kind == CTL_LOOP) {
                        c->code[f] = t->start - f;
                    } else {
                        c->code[f] = t->chain;
                        t->chain = f + 1;
                    }
                } else {
                    c->code[f] = c->len - f;
                    mark_label(c);
                    emit_branch(c, t);
                }
            }
            set_unreachable(c);
            break;
        }
        case 0x0f:
            materialize_all(c);
            emit_branch(c, &c->ctls[0]);
            set_unreachable(c);
            break;
        case 0x10: { /* call */
            x = rd_u32(r);
            if (x >= m->nfuncs) invalid("unknown function");
            const functype *ft = &m->types[m->func_type[x]];
            need(c, ft->nparams);
            for (uint32_t h = c->sh - ft->nparams; h < c->sh; h++) materialize(c, h);
            uint32_t base = c->sh - ft->nparams;
            truncate(c, base);
            emit_op(c, OP_CALL);
            emit(c, x);
            emit(c, slot(c, base));
            for (uint32_t i = 0; i < ft->nresults; i++) push(c, SV_STACK, 0, 0);
            break;
        }
        case 0x11: { /* call_indirect type table */
            uint32_t ti = rd_u32(r);
            if (ti >= m->ntypes) invalid("unknown type");
            uint32_t tab = table_idx(c);
            if (m->tables[tab].elemtype != WASM_TYPE_FUNCREF) invalid("type mismatch");
            const functype *ft = &m->types[ti];
            uint32_t is = pop_slot(c);
            need(c, ft->nparams);
            for (uint32_t h = c->sh - ft->nparams; h < c->sh; h++) materialize(c, h);
            uint32_t base = c->sh - ft->nparams;
            truncate(c, base);
            emit_op(c, OP_CALL_INDIRECT);
            emit(c, tab);
            emit(c, ft->canon);
            emit(c, slot(c, base));
            emit(c, is);
            for (uint32_t i = 0; i < ft->nresults; i++) push(c, SV_STACK, 0, 0);
            break;
        }
        case 0x08: /* throw x */
        case 0x0a: /* throw_ref */
        case 0x1f: /* try_table */
            exception_op(c, opc);
            break;
        case 0x1a: drop(c); break;
        case 0x1c: {
            uint32_t n = rd_u32(r);
            if (n != 1) invalid("invalid result arity");
            rd_u8(r);
        }
            /* fallthrough */
        case 0x1b: {
            uint32_t o[3];
            pop_n(c, o, 3);
            d = slot(c, c->sh);
            pos = emit_op(c, OP_SELECT);
            emit(c, d);
            emit(c, o[0]);
            emit(c, o[1]);
            emit(c, o[2]);
            push_result(c, OP_SELECT, pos, pos + 2);
            break;
        }
        case 0x20:
            x = rd_u32(r);
            if (x >= c->nlocals) invalid("unknown local");
            push(c, SV_LOCAL, local_slot(x), 0);
            break;
        case 0x21: local_set(c, rd_u32(r), false); break;
        case 0x22: local_set(c, rd_u32(r), true); break;
        case 0x23:
            x = rd_u32(r);
            if (x >= m->nglobals) invalid("unknown global");
            d = slot(c, c->sh);
            pos = emit_op(c, OP_GLOBAL_GET);
            emit(c, d);
            emit(c, x);
            push_result(c, OP_GLOBAL_GET, pos, pos + 2);
            break;
        case 0x24:
            x = rd_u32(r);
            if (x >= m->nglobals) invalid("unknown global");
            a = pop_slot(c);
            emit_op(c, OP_GLOBAL_SET);
            emit(c, a);
            emit(c, x);
            break;
        case 0x25: { /* table.get */
            uint32_t t = table_idx(c);
            a = pop_slot(c);
            d = slot(c, c->sh);
            pos = emit_op(c, OP_TABLE_GET);
            emit(c, t);
            emit(c, d);
            emit(c, a);
            push_result(c, OP_TABLE_GET, pos, pos + 3);
            break;
        }
        case 0x26: { /* table.set: i v */
            uint32_t t = table_idx(c);
            uint32_t o[2];
            pop_n(c, o, 2);
            uint32_t f[3] = {t, o[0], o[1]};
            emit_fields(c, OP_TABLE_SET, f, 3);
            break;
        }
        case 0x28: case 0x29: case 0x2a: case 0x2b: case 0x2c: case 0x2d: case 0x2e:
        case 0x2f: case 0x30: case 0x31: case 0x32: case 0x33: case 0x34: case 0x35: {
            uint32_t off = memarg(c);
            int op = OP_I32_LOAD + (opc - 0x28);
            need(c, 1);
            if (c->st[c->sh - 1].kind == SV_STACK && c->last_dfield && c->last_dh == c->sh - 1 &&
                c->last_end == c->len && (c->last_op == OP_I32_ADD || c->last_op == OP_I32_ADD_I)) {
                /* The address is an i32.add just computed: fold it into the load. */
                uint32_t x = c->code[c->last_pos + 3], y = c->code[c->last_pos + 4];
                int fop = (c->last_op == OP_I32_ADD ? OP_I32_LOAD_RR : OP_I32_LOAD_RI) + (opc - 0x28);
                c->len = c->last_pos;
                truncate(c, c->sh - 1);
                d = slot(c, c->sh);
                pos = emit_op(c, fop);
                emit(c, d);
                emit(c, x);
                emit(c, y);
                emit(c, off);
                push_result(c, fop, pos, pos + 2);
                break;
            }
            a = pop_slot(c);
            d = slot(c, c->sh);
            pos = emit_op(c, op);
            emit(c, d);
            emit(c, a);
            emit(c, off);
            push_result(c, op, pos, pos + 2);
            break;
        }
        case 0x36: case 0x37: case 0x38: case 0x39: case 0x3a: case 0x3b: case 0x3c:
        case 0x3d: case 0x3e: {
            uint32_t off = memarg(c);
            uint32_t o[2];
            need(c, 2);
            sval *v = &c->st[c->sh - 1];
            if (v->kind == SV_CONST) {
                /* i32.store i32.store8 ... by size; 64-bit values only if they fit 32 bits. */
                static const int8_t imm_op[9] = {2, 3, 2, 3, 0, 1, 0, 1, 2};
                int k = imm_op[opc - 0x36];
                bool ok = k != 3 || (int64_t)v->k == (int64_t)(int32_t)v->k;
                if (ok) {
                    uint32_t kv = (uint32_t)v->k;
                    truncate(c, c->sh - 1);
                    a = pop_slot(c);
                    emit_op(c, OP_STORE8_I + k);
                    emit(c, a);
                    emit(c, kv);
                    emit(c, off);
                    break;
                }
            }
            pop_n(c, o, 2);
            emit_op(c, OP_I32_STORE + (opc - 0x36));
            emit(c, o[0]);
            emit(c, o[1]);
            emit(c, off);
            break;
        }
        case 0x3f:
            mem0(c);
            d = slot(c, c->sh);
            pos = emit_op(c, OP_MEM_SIZE);
            emit(c, d);
            push_result(c, OP_MEM_SIZE, pos, pos + 2);
            break;
        case 0x40:
            mem0(c);
            a = pop_slot(c);
            d = slot(c, c->sh);
            pos = emit_op(c, OP_MEM_GROW);
            emit(c, d);
            emit(c, a);
            push_result(c, OP_MEM_GROW, pos, pos + 2);
            break;
        case 0x41: push(c, SV_CONST, 0, (uint32_t)rd_s32(r)); break;
        case 0x42: push(c, SV_CONST, 0, (uint64_t)rd_s64(r)); break;
        case 0x43: {
            const uint8_t *p = rd_bytes(r, 4);
            uint32_t v;
            memcpy(&v, p, 4);
            push(c, SV_CONST, 0, v);
            break;
        }
        case 0x44: {
            const uint8_t *p = rd_bytes(r, 8);
            uint64_t v;
            memcpy(&v, p, 8);
            push(c, SV_CONST, 0, v);
            break;
        }
        case 0xd0: {
            uint8_t t = rd_u8(r);
            if (t != WASM_TYPE_FUNCREF && t != WASM_TYPE_EXTERNREF && t != WASM_TYPE_EXNREF)
                eng_malformed("malformed reference type");
            push(c, SV_CONST, 0, NULL_REF);
            break;
        }
        case 0xd1:
            numeric(c, 0xa7, OP_REF_IS_NULL);
            break;
        case 0xd2:
            x = rd_u32(r);
            if (x >= m->nfuncs) invalid("unknown function");
            d = slot(c, c->sh);
            pos = emit_op(c, OP_REF_FUNC);
            emit(c, d);
            emit(c, x);
            push_result(c, OP_REF_FUNC, pos, pos + 2);
            break;
        case 0xfc: prefixed(c); break;
        case 0xfd: simd(c); break;
        default:
            if (opc >= 0x45 && opc <= 0xc4) {
                numeric(c, opc, OP_I32_EQZ + (opc - 0x45));
                break;
            }
            eng_malformed("illegal opcode");
        }
    }
}

void compile_function(module *m, uint32_t defined, const uint8_t *code, uint32_t len) {
    comp cc;
    comp *c = &cc;
    memset(c, 0, sizeof *c);
    c->m = m;
    c->r.p = code;
    c->r.end = code + len;
    c->code = s_code;
    c->cap = s_code_cap;
    c->st = s_st;
    c->scap = s_st_cap;
    c->ctls = s_ctls;
    c->ccap = s_ctl_cap;
    const functype *ft = &m->types[m->func_type[m->nfuncs_imported + defined]];
    uint64_t nlocals = ft->nparams;
    uint32_t groups = rd_count(&c->r, 2);
    for (uint32_t i = 0; i < groups; i++) {
        nlocals += rd_u32(&c->r);
        uint8_t t = rd_u8(&c->r);
        if (!eng_is_valtype(t)) eng_malformed("malformed value type");
        if (nlocals > MAX_LOCALS) eng_malformed("too many locals");
    }
    c->nlocals = (uint32_t)nlocals;
    c->bpt = ft->types;
    c->brt = ft->types + ft->nparams;
    push_ctl(c, CTL_FUNC, 0, ft->nresults);
    body(c);
    if (c->r.p != c->r.end) eng_malformed("section size mismatch");
    code_desc *cd = &m->codes[defined];
    cd->frame_size = (c->nlocals + c->maxh + 2) * ENG_SLOT_WORDS;
    for (uint32_t chain = c->throw_chain; chain;) { /* THROW's field: the frame size */
        uint32_t f = chain - 1;
        chain = c->code[f];
        c->code[f] = cd->frame_size;
    }
    cd->code = mod_alloc(m, (size_t)c->len * sizeof(uint32_t));
    memcpy(cd->code, c->code, (size_t)c->len * sizeof(uint32_t));
    cd->code_len = c->len;
    cd->nlocals = c->nlocals * ENG_SLOT_WORDS;
    if (c->nranges) {
        cd->nranges = c->nranges;
        cd->ranges = mod_alloc(m, (size_t)c->nranges * sizeof(eh_range));
        memcpy(cd->ranges, s_ranges, (size_t)c->nranges * sizeof(eh_range));
        cd->clauses = mod_alloc(m, (size_t)c->nclauses * sizeof(eh_clause));
        memcpy(cd->clauses, s_clauses, (size_t)c->nclauses * sizeof(eh_clause));
    }
}
