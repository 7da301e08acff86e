/* interp.c: the threaded interpreter (GCC computed goto) over the compiled form, with
 * exact Wasm float and integer semantics. Calls never recurse on the C stack: frames
 * live on the heap value stack, return addresses on a heap control stack. */
#include "internal.h"

typedef void *hptr __attribute__((aligned(4), may_alias));
/* A 16-byte value slot as one SSE register. Slots are in fact 16-byte aligned (the value
 * stack is, and every slot index is even), but the type says 8 on purpose: GCC then loads
 * slot operands with plain moves instead of folding them into the SSE instructions, and
 * on the AMD hosts measured (Zen) a plain load of a slot the previous handler just stored
 * is forwarded faster than a folded one (the blend kernel of native/bench.py ran 20%
 * slower with aligned(16)). */
typedef int64_t vslot __attribute__((vector_size(16), aligned(8), may_alias));

void **interp_handlers;
uint64_t *eng_stack, *eng_stack_end;

typedef struct cframe {
    const uint32_t *ip;
    uint64_t *fp;
    instance *inst;
    uint8_t *mem;
} cframe;

static cframe *cstack, *cstack_end;
static uint32_t halt_code[2];
static uint32_t return_code[2]; /* a RETURN: where a catch to a function's label goes on */

/* ---- Float helpers -------------------------------------------------------------------- */

static inline float f32_of(uint64_t v) {
    uint32_t b = (uint32_t)v;
    float f;
    __builtin_memcpy(&f, &b, 4);
    return f;
}
static inline uint64_t of_f32(float f) {
    uint32_t b;
    __builtin_memcpy(&b, &f, 4);
    return b;
}
static inline double f64_of(uint64_t v) {
    double d;
    __builtin_memcpy(&d, &v, 8);
    return d;
}
static inline uint64_t of_f64(double d) {
    uint64_t b;
    __builtin_memcpy(&b, &d, 8);
    return b;
}

static inline float f32_sqrt(float x) {
    float r;
    __asm__("sqrtss %1, %0" : "=x"(r) : "x"(x));
    return r;
}
static inline double f64_sqrt(double x) {
    double r;
    __asm__("sqrtsd %1, %0" : "=x"(r) : "x"(x));
    return r;
}

static inline float f32_copysign(float x, float s) {
    return f32_of((of_f32(x) & 0x7fffffffu) | (of_f32(s) & 0x80000000u));
}
static inline double f64_copysign(double x, double s) {
    return f64_of((of_f64(x) & 0x7fffffffffffffffull) | (of_f64(s) & 0x8000000000000000ull));
}

static inline float f32_trunc(float x) {
    uint32_t b = (uint32_t)of_f32(x);
    uint32_t e = (b >> 23) & 0xff;
    if (e >= 150) return e == 0xff ? x + x : x;
    if (e < 127) return f32_of(b & 0x80000000u);
    uint32_t mask = (1u << (150 - e)) - 1;
    return f32_of(b & ~mask);
}
static inline double f64_trunc(double x) {
    uint64_t b = of_f64(x);
    uint32_t e = (b >> 52) & 0x7ff;
    if (e >= 1075) return e == 0x7ff ? x + x : x;
    if (e < 1023) return f64_of(b & 0x8000000000000000ull);
    uint64_t mask = (1ull << (1075 - e)) - 1;
    return f64_of(b & ~mask);
}
static inline float f32_ceil(float x) {
    float t = f32_trunc(x);
    return t < x ? t + 1.0f : t;
}
static inline float f32_floor(float x) {
    float t = f32_trunc(x);
    return t > x ? t - 1.0f : t;
}
static inline double f64_ceil(double x) {
    double t = f64_trunc(x);
    return t < x ? t + 1.0 : t;
}
static inline double f64_floor(double x) {
    double t = f64_trunc(x);
    return t > x ? t - 1.0 : t;
}
static inline float f32_nearest(float x) {
    uint32_t b = (uint32_t)of_f32(x);
    uint32_t e = (b >> 23) & 0xff;
    if (e >= 150) return e == 0xff ? x + x : x;
    volatile float a = f32_of(b & 0x7fffffffu);
    float r = (a + 8388608.0f) - 8388608.0f;
    return f32_copysign(r, x);
}
static inline double f64_nearest(double x) {
    uint64_t b = of_f64(x);
    uint32_t e = (b >> 52) & 0x7ff;
    if (e >= 1075) return e == 0x7ff ? x + x : x;
    volatile double a = f64_of(b & 0x7fffffffffffffffull);
    double r = (a + 4503599627370496.0) - 4503599627370496.0;
    return f64_copysign(r, x);
}
static inline float f32_min(float a, float b) {
    if (a != a || b != b) return a + b;
    if (a == b) return f32_of(of_f32(a) | of_f32(b)); /* -0 wins */
    return a < b ? a : b;
}
static inline float f32_max(float a, float b) {
    if (a != a || b != b) return a + b;
    if (a == b) return f32_of(of_f32(a) & of_f32(b)); /* +0 wins */
    return a > b ? a : b;
}
static inline double f64_min(double a, double b) {
    if (a != a || b != b) return a + b;
    if (a == b) return f64_of(of_f64(a) | of_f64(b));
    return a < b ? a : b;
}
static inline double f64_max(double a, double b) {
    if (a != a || b != b) return a + b;
    if (a == b) return f64_of(of_f64(a) & of_f64(b));
    return a > b ? a : b;
}

/* Trapping truncations: NaN is an invalid conversion, out of range an overflow. */
#define TRUNC(name, ft, it, lo_ok, hi)                                                 \
    static inline it name(ft x) {                                                      \
        if (x != x) eng_trap(WASM_TRAP_INVALID_CONVERSION);                            \
        if (!((lo_ok) && x < (hi))) eng_trap(WASM_TRAP_INT_OVERFLOW);                  \
        return (it)x;                                                                  \
    }
TRUNC(i32_trunc_f32_s, float, int32_t, x >= -2147483648.0f, 2147483648.0f)
TRUNC(i32_trunc_f32_u, float, uint32_t, x > -1.0f, 4294967296.0f)
TRUNC(i32_trunc_f64_s, double, int32_t, x > -2147483649.0, 2147483648.0)
TRUNC(i32_trunc_f64_u, double, uint32_t, x > -1.0, 4294967296.0)
TRUNC(i64_trunc_f32_s, float, int64_t, x >= -9223372036854775808.0f, 9223372036854775808.0f)
TRUNC(i64_trunc_f32_u, float, uint64_t, x > -1.0f, 18446744073709551616.0f)
TRUNC(i64_trunc_f64_s, double, int64_t, x >= -9223372036854775808.0, 9223372036854775808.0)
TRUNC(i64_trunc_f64_u, double, uint64_t, x > -1.0, 18446744073709551616.0)

#define TRUNC_SAT(name, ft, it, lo_ok, hi, minv, maxv)                                 \
    static inline it name(ft x) {                                                      \
        if (x != x) return 0;                                                          \
        if (!(lo_ok)) return minv;                                                     \
        if (!(x < (hi))) return maxv;                                                  \
        return (it)x;                                                                  \
    }
TRUNC_SAT(i32_sat_f32_s, float, int32_t, x >= -2147483648.0f, 2147483648.0f, INT32_MIN, INT32_MAX)
TRUNC_SAT(i32_sat_f32_u, float, uint32_t, x > -1.0f, 4294967296.0f, 0, UINT32_MAX)
TRUNC_SAT(i32_sat_f64_s, double, int32_t, x > -2147483649.0, 2147483648.0, INT32_MIN, INT32_MAX)
TRUNC_SAT(i32_sat_f64_u, double, uint32_t, x > -1.0, 4294967296.0, 0, UINT32_MAX)
TRUNC_SAT(i64_sat_f32_s, float, int64_t, x >= -9223372036854775808.0f, 9223372036854775808.0f,
          INT64_MIN, INT64_MAX)
TRUNC_SAT(i64_sat_f32_u, float, uint64_t, x > -1.0f, 18446744073709551616.0f, 0, UINT64_MAX)
TRUNC_SAT(i64_sat_f64_s, double, int64_t, x >= -9223372036854775808.0, 9223372036854775808.0,
          INT64_MIN, INT64_MAX)
TRUNC_SAT(i64_sat_f64_u, double, uint64_t, x > -1.0, 18446744073709551616.0, 0, UINT64_MAX)

#define SIMD_HELPERS
#include "simd.h"
#undef SIMD_HELPERS

/* ---- Integer helpers ---------------------------------------------------------------- */

static inline uint32_t i32_div_s(uint32_t a, uint32_t b) {
    if (b == 0) eng_trap(WASM_TRAP_DIV_ZERO);
    if (a == 0x80000000u && b == 0xffffffffu) eng_trap(WASM_TRAP_INT_OVERFLOW);
    return (uint32_t)((int32_t)a / (int32_t)b);
}
static inline uint32_t i32_div_u(uint32_t a, uint32_t b) {
    if (b == 0) eng_trap(WASM_TRAP_DIV_ZERO);
    return a / b;
}
static inline uint32_t i32_rem_s(uint32_t a, uint32_t b) {
    if (b == 0) eng_trap(WASM_TRAP_DIV_ZERO);
    if (b == 0xffffffffu) return 0;
    return (uint32_t)((int32_t)a % (int32_t)b);
}
static inline uint32_t i32_rem_u(uint32_t a, uint32_t b) {
    if (b == 0) eng_trap(WASM_TRAP_DIV_ZERO);
    return a % b;
}
static inline uint64_t i64_div_s(uint64_t a, uint64_t b) {
    if (b == 0) eng_trap(WASM_TRAP_DIV_ZERO);
    if (a == 0x8000000000000000ull && b == ~0ull) eng_trap(WASM_TRAP_INT_OVERFLOW);
    return (uint64_t)((int64_t)a / (int64_t)b);
}
static inline uint64_t i64_div_u(uint64_t a, uint64_t b) {
    if (b == 0) eng_trap(WASM_TRAP_DIV_ZERO);
    return a / b;
}
static inline uint64_t i64_rem_s(uint64_t a, uint64_t b) {
    if (b == 0) eng_trap(WASM_TRAP_DIV_ZERO);
    if (b == ~0ull) return 0;
    return (uint64_t)((int64_t)a % (int64_t)b);
}
static inline uint64_t i64_rem_u(uint64_t a, uint64_t b) {
    if (b == 0) eng_trap(WASM_TRAP_DIV_ZERO);
    return a % b;
}
static inline uint32_t rotl32(uint32_t a, uint32_t b) {
    b &= 31;
    return (a << b) | (a >> ((32 - b) & 31));
}
static inline uint32_t rotr32(uint32_t a, uint32_t b) {
    b &= 31;
    return (a >> b) | (a << ((32 - b) & 31));
}
static inline uint64_t rotl64(uint64_t a, uint64_t b) {
    b &= 63;
    return (a << b) | (a >> ((64 - b) & 63));
}
static inline uint64_t rotr64(uint64_t a, uint64_t b) {
    b &= 63;
    return (a >> b) | (a << ((64 - b) & 63));
}
static inline uint32_t popcnt32(uint32_t x) {
    x = x - ((x >> 1) & 0x55555555u);
    x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
    return (((x + (x >> 4)) & 0x0f0f0f0fu) * 0x01010101u) >> 24;
}
static inline uint64_t popcnt64(uint64_t x) {
    return popcnt32((uint32_t)x) + popcnt32((uint32_t)(x >> 32));
}

/* ---- The interpreter ------------------------------------------------------------------- */

#ifdef ENG_PROFILE
/* Developer profiling (native only): dynamic counts of each op and op pair. */
uint64_t eng_prof_ops[OP_COUNT], eng_prof_pairs[OP_COUNT][OP_COUNT];
static int prof_prev;
static void prof(const void *h) {
    for (int i = 0; i < OP_COUNT; i++)
        if (interp_handlers[i] == h) {
            eng_prof_ops[i]++;
            eng_prof_pairs[prof_prev][i]++;
            prof_prev = i;
            return;
        }
}
#define NEXT()                                                                         \
    do {                                                                               \
        prof(*(const hptr *)ip);                                                       \
        goto **(const hptr *)ip;                                                       \
    } while (0)
#else
#define NEXT() goto **(const hptr *)ip
#endif
#define S(i) fp[ip[i]]
/* A whole 16-byte slot (moves copy it all: the compiler does not track types). */
#define W(i) (*(vslot *)&fp[ip[i]])
#define U32(i) ((uint32_t)S(i))
#define I32(i) ((int32_t)S(i))
#define I64(i) ((int64_t)S(i))
#define F32(i) f32_of(S(i))
#define F64(i) f64_of(S(i))
#define K32 (ip[4])

#define UN(name, expr)                                                                 \
    L_##name : {                                                                       \
        S(2) = (expr);                                                                 \
        ip += 4;                                                                       \
        NEXT();                                                                        \
    }
#define BIN(name, expr)                                                                \
    L_##name : {                                                                       \
        S(2) = (expr);                                                                 \
        ip += 5;                                                                       \
        NEXT();                                                                        \
    }
#define LOAD(name, type, conv)                                                         \
    L_##name : {                                                                       \
        type v;                                                                        \
        __builtin_memcpy(&v, mem + (uint64_t)U32(3) + ip[4], sizeof v);                          \
        S(2) = conv;                                                                   \
        ip += 5;                                                                       \
        NEXT();                                                                        \
    }
#define LOAD_RR(name, type, conv)                                                      \
    L_##name##_RR : {                                                                  \
        type v;                                                                        \
        __builtin_memcpy(&v, mem + (uint64_t)(uint32_t)(U32(3) + U32(4)) + ip[5], sizeof v); \
        S(2) = conv;                                                                   \
        ip += 6;                                                                       \
        NEXT();                                                                        \
    }                                                                                  \
    L_##name##_RI : {                                                                  \
        type v;                                                                        \
        __builtin_memcpy(&v, mem + (uint64_t)(uint32_t)(U32(3) + ip[4]) + ip[5], sizeof v); \
        S(2) = conv;                                                                   \
        ip += 6;                                                                       \
        NEXT();                                                                        \
    }
#define STORE_I(name, type, conv)                                                      \
    L_##name : {                                                                       \
        type v = (type)(conv);                                                         \
        __builtin_memcpy(mem + (uint64_t)U32(2) + ip[4], &v, sizeof v);                \
        ip += 5;                                                                       \
        NEXT();                                                                        \
    }
#define STORE(name, type)                                                              \
    L_##name : {                                                                       \
        type v = (type)S(3);                                                           \
        __builtin_memcpy(mem + (uint64_t)U32(2) + ip[4], &v, sizeof v);                          \
        ip += 5;                                                                       \
        NEXT();                                                                        \
    }
#define BB(name, outer, inner)                                                         \
    L_##name : {                                                                       \
        uint32_t t = (inner);                                                          \
        S(2) = (uint32_t)(U32(3) outer t);                                             \
        ip += 6;                                                                       \
        NEXT();                                                                        \
    }
#define JUMP(k) ip = ip + (k) + (int32_t)ip[k]
#define CBR(name, cond)                                                                \
    L_##name : {                                                                       \
        if (cond)                                                                      \
            JUMP(4);                                                                   \
        else                                                                           \
            ip += 5;                                                                   \
        NEXT();                                                                        \
    }

/* ---- Exception handling: unwinding ------------------------------------------------------
 * Out of line and cold, so that the interpreter's hot registers do not see it. */
typedef struct unwind_state {
    const uint32_t *ip;
    uint64_t *fp;
    instance *inst;
    uint8_t *mem;
    cframe *csp;
} unwind_state;

/* A throw leaves the interpreter (interp_run returns true) with its state here, and
 * interp_call resumes it at the handler: the interpreter's loop has no call that returns
 * into it for exceptions, which measurably cost its hot handlers registers. */
static unwind_state unwound;
static wtag *throw_tag;    /* THROW: the tag (the values are at the instruction's slots) */
static uint64_t throw_ref; /* THROW_REF: the exnref */

/* Unwinds frame by frame from `unwound` to the innermost handler of exception `exn`:
 * each caller is looked up at its call instruction (the return address - 1); cstack[0]
 * returns to the host, so an exception that gets there is uncaught (a trap). Leaves the
 * handler's frame and where it goes on in `unwound`. */
__attribute__((noinline, cold)) static void unwind(uint64_t exn) {
    if (exn == NULL_REF || !eh_valid(exn)) eng_trap(WASM_TRAP_NULL_REFERENCE); /* throw_ref null */
    unwind_state *s = &unwound;
    const uint32_t *at = s->ip;
    for (;;) {
        const uint32_t *to = eh_catch(at, s->inst, s->fp, exn, return_code);
        if (to) {
            s->ip = to;
            return;
        }
        if (s->csp - 1 == cstack) {
            eh_uncaught(exn);
            eng_trap(WASM_TRAP_UNCAUGHT_EXCEPTION);
        }
        s->csp--;
        at = s->csp->ip - 1;
        s->fp = s->csp->fp;
        s->inst = s->csp->inst;
        s->mem = s->csp->mem;
    }
}

/* GCC would turn the loop that zeroes a callee's locals into a memset call. Handlers
 * start on 32-byte boundaries: with wherever the linker put them, a small change
 * anywhere in the engine moved the SIMD kernels by up to 2.3x (the dot kernel 6.5x <->
 * 15x wasmtime in the VM, same handlers, other addresses); aligned, every build measured
 * ran at the fast end (and the scalar kernels no slower). */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-tree-loop-distribute-patterns", "align-labels=32")))
#endif
__attribute__((noinline)) static bool interp_run(wfunc *f, uint64_t *sp, bool resume) {
#define OP_LABEL(n) &&L_##n,
#define OP_LABEL_SIMD(code, n, shape, k) &&L_##n,
/* Unary, binary, shuffle and store SIMD handlers have _A/_B variants (simd.h); the
 * others are their own. */
#define SIMD_VARIANT_UN(n, v) &&L_##n##_##v,
#define SIMD_VARIANT_BIN(n, v) &&L_##n##_##v,
#define SIMD_VARIANT_TERN(n, v) &&L_##n,
#define SIMD_VARIANT_LOAD(n, v) &&L_##n,
#define SIMD_VARIANT_STORE(n, v) &&L_##n##_##v,
#define SIMD_VARIANT_CONST(n, v) &&L_##n,
#define SIMD_VARIANT_SHUF(n, v) &&L_##n##_##v,
#define SIMD_VARIANT_EXTRACT(n, v) &&L_##n,
#define SIMD_VARIANT_REPLACE(n, v) &&L_##n,
#define SIMD_VARIANT_LOADLANE(n, v) &&L_##n,
#define SIMD_VARIANT_STORELANE(n, v) &&L_##n,
#define OP_LABEL_SIMD_A(code, n, shape, k) SIMD_VARIANT_##shape(n, A)
#define OP_LABEL_SIMD_B(code, n, shape, k) SIMD_VARIANT_##shape(n, B)
    static void *table[] = {OPS_ALL(OP_LABEL) SIMD_LIST(OP_LABEL_SIMD) SIMD_LIST(OP_LABEL_SIMD_A)
                                SIMD_LIST(OP_LABEL_SIMD_B)};
#undef OP_LABEL
#undef OP_LABEL_SIMD
#undef OP_LABEL_SIMD_A
#undef OP_LABEL_SIMD_B
    if (!f) {
        interp_handlers = table;
        simd_init();
        uint64_t h = (uint64_t)(uintptr_t)&&L_HALT;
        halt_code[0] = (uint32_t)h;
        halt_code[1] = (uint32_t)(h >> 32);
        h = (uint64_t)(uintptr_t)&&L_RETURN;
        return_code[0] = (uint32_t)h;
        return_code[1] = (uint32_t)(h >> 32);
        if (!cstack) {
            cstack = plat_malloc((ENG_CALL_DEPTH_MAX + 1) * sizeof(cframe));
            cstack_end = cstack ? cstack + ENG_CALL_DEPTH_MAX : 0;
        }
        return false;
    }
    const uint32_t *ip;
    uint64_t *fp, *nfp;
    vslot acc = {0}; /* the last v128 result (simd.h) */
    instance *inst;
    uint8_t *mem;
    cframe *csp;
    uint64_t *const stack_end = eng_stack_end;
    if (resume) { /* at a handler, after a throw */
        ip = unwound.ip;
        fp = nfp = unwound.fp;
        inst = unwound.inst;
        mem = unwound.mem;
        csp = unwound.csp;
        NEXT();
    }
    if (f->kind != FN_WASM) {
        rt_call_host(f, sp);
        return false;
    }
    inst = f->inst;
    mem = inst->mem0;
    csp = cstack;
    csp->ip = halt_code;
    csp->fp = sp;
    csp->inst = inst;
    csp->mem = mem;
    fp = sp;
    ip = halt_code;
    nfp = sp;
    goto do_call;

do_call:
    if (UNLIKELY(f->kind != FN_WASM)) {
        rt_call_host(f, nfp);
        NEXT();
    }
    if (UNLIKELY(csp == cstack_end || nfp + f->frame_size > stack_end))
        eng_trap(WASM_TRAP_STACK_EXHAUSTED);
    csp->ip = ip;
    csp->fp = fp;
    csp->inst = inst;
    csp->mem = mem;
    csp++;
    {
        uint64_t *l = nfp + f->nparams, *e = nfp + f->nlocals;
        while (l < e) *l++ = 0;
    }
    fp = nfp;
    ip = f->code;
    if (f->inst != inst) {
        inst = f->inst;
        mem = inst->mem0;
    }
    NEXT();

L_HALT:
    return false;
L_UNREACHABLE:
    eng_trap(WASM_TRAP_UNREACHABLE);
L_BR:
    JUMP(2);
    NEXT();
L_BR_IF:
    if (U32(2))
        JUMP(3);
    else
        ip += 4;
    NEXT();
L_BR_UNLESS:
    if (!U32(2))
        JUMP(3);
    else
        ip += 4;
    NEXT();
L_BR_TABLE: {
    uint32_t i = U32(2), n = ip[3];
    if (i > n) i = n;
    const uint32_t *t = ip + 4 + i;
    ip = t + (int32_t)*t;
    NEXT();
}
L_RET_ADD:
    fp[0] = (uint32_t)(U32(2) + U32(3));
    goto L_RETURN;
L_RET_ADD_I:
    fp[0] = (uint32_t)(U32(2) + ip[3]);
    goto L_RETURN;
L_RET1:
    *(vslot *)fp = W(2);
    /* fallthrough */
L_RETURN:
    csp--;
    ip = csp->ip;
    fp = csp->fp;
    inst = csp->inst;
    mem = csp->mem;
    NEXT();
L_CALL:
    f = inst->funcs[ip[2]];
    nfp = fp + ip[3];
    ip += 4;
    goto do_call;
L_CALL_INDIRECT: {
    wtable *t = inst->tables[ip[2]];
    uint32_t i = U32(5);
    if (UNLIKELY(i >= t->size)) eng_trap(WASM_TRAP_UNDEFINED_ELEMENT);
    uint64_t r = t->elems[i];
    if (UNLIKELY(r == NULL_REF)) eng_trap_uninitialized(i);
    f = eng_funcs[r];
    if (UNLIKELY(f->canon != ip[3])) eng_trap(WASM_TRAP_INDIRECT_TYPE_MISMATCH);
    nfp = fp + ip[4];
    ip += 6;
    goto do_call;
}
L_MOV:
    W(2) = W(3);
    ip += 4;
    NEXT();
L_MOV2:
    W(2) = W(3);
    W(4) = W(5);
    ip += 6;
    NEXT();
L_CONST32:
    S(2) = ip[3];
    ip += 4;
    NEXT();
L_CONST64:
    S(2) = ip[3] | (uint64_t)ip[4] << 32;
    ip += 5;
    NEXT();
L_SELECT:
    W(2) = U32(5) ? W(3) : W(4);
    ip += 6;
    NEXT();
L_GLOBAL_GET: {
    const wglobal *g = inst->globals[ip[3]];
    S(2) = g->value;
    fp[ip[2] + 1] = g->value_hi;
    ip += 4;
    NEXT();
}
L_GLOBAL_SET: {
    wglobal *g = inst->globals[ip[3]];
    g->value = S(2);
    g->value_hi = fp[ip[2] + 1];
    ip += 4;
    NEXT();
}
    ip += 4;
    NEXT();
L_MEM_SIZE:
    S(2) = inst->mems[0]->pages;
    ip += 3;
    NEXT();
L_MEM_GROW:
    S(2) = (uint32_t)rt_memory_grow(inst->mems[0], U32(3));
    ip += 4;
    NEXT();
L_MEM_INIT:
    rt_memory_init(inst, ip[2], inst->mems[0], U32(3), U32(4), U32(5));
    ip += 6;
    NEXT();
L_DATA_DROP:
    inst->data_len[ip[2]] = 0;
    ip += 3;
    NEXT();
L_MEM_COPY:
    rt_memory_copy(inst->mems[0], inst->mems[0], U32(2), U32(3), U32(4));
    ip += 5;
    NEXT();
L_MEM_FILL:
    rt_memory_fill(inst->mems[0], U32(2), U32(3), U32(4));
    ip += 5;
    NEXT();
L_TABLE_INIT:
    rt_table_init(inst, ip[3], inst->tables[ip[2]], U32(4), U32(5), U32(6));
    ip += 7;
    NEXT();
L_ELEM_DROP:
    inst->elem_len[ip[2]] = 0;
    ip += 3;
    NEXT();
L_TABLE_COPY:
    rt_table_copy(inst->tables[ip[2]], inst->tables[ip[3]], U32(4), U32(5), U32(6));
    ip += 7;
    NEXT();
L_TABLE_GROW:
    S(3) = (uint32_t)rt_table_grow(inst->tables[ip[2]], S(4), U32(5));
    ip += 6;
    NEXT();
L_TABLE_SIZE:
    S(3) = inst->tables[ip[2]]->size;
    ip += 4;
    NEXT();
L_TABLE_FILL:
    rt_table_fill(inst->tables[ip[2]], U32(3), S(4), U32(5));
    ip += 6;
    NEXT();
L_TABLE_GET: {
    wtable *t = inst->tables[ip[2]];
    uint32_t i = U32(4);
    if (UNLIKELY(i >= t->size)) eng_trap(WASM_TRAP_TABLE_OOB);
    S(3) = t->elems[i];
    ip += 5;
    NEXT();
}
L_TABLE_SET: {
    wtable *t = inst->tables[ip[2]];
    uint32_t i = U32(3);
    if (UNLIKELY(i >= t->size)) eng_trap(WASM_TRAP_TABLE_OOB);
    t->elems[i] = S(4);
    ip += 5;
    NEXT();
}
    UN(REF_IS_NULL, S(3) == NULL_REF)
L_REF_FUNC:
    S(2) = inst->funcs[ip[3]]->id;
    ip += 4;
    NEXT();

    /* Memory. */
    LOAD(I32_LOAD, uint32_t, v)
    LOAD(I64_LOAD, uint64_t, v)
    LOAD(F32_LOAD, uint32_t, v)
    LOAD(F64_LOAD, uint64_t, v)
    LOAD(I32_LOAD8_S, int8_t, (uint32_t)(int32_t)v)
    LOAD(I32_LOAD8_U, uint8_t, v)
    LOAD(I32_LOAD16_S, int16_t, (uint32_t)(int32_t)v)
    LOAD(I32_LOAD16_U, uint16_t, v)
    LOAD(I64_LOAD8_S, int8_t, (uint64_t)(int64_t)v)
    LOAD(I64_LOAD8_U, uint8_t, v)
    LOAD(I64_LOAD16_S, int16_t, (uint64_t)(int64_t)v)
    LOAD(I64_LOAD16_U, uint16_t, v)
    LOAD(I64_LOAD32_S, int32_t, (uint64_t)(int64_t)v)
    LOAD(I64_LOAD32_U, uint32_t, v)
    STORE(I32_STORE, uint32_t)
    STORE(I64_STORE, uint64_t)
    STORE(F32_STORE, uint32_t)
    STORE(F64_STORE, uint64_t)
    STORE(I32_STORE8, uint8_t)
    STORE(I32_STORE16, uint16_t)
    STORE(I64_STORE8, uint8_t)
    STORE(I64_STORE16, uint16_t)
    STORE(I64_STORE32, uint32_t)

    LOAD_RR(I32_LOAD, uint32_t, v)
    LOAD_RR(I64_LOAD, uint64_t, v)
    LOAD_RR(F32_LOAD, uint32_t, v)
    LOAD_RR(F64_LOAD, uint64_t, v)
    LOAD_RR(I32_LOAD8_S, int8_t, (uint32_t)(int32_t)v)
    LOAD_RR(I32_LOAD8_U, uint8_t, v)
    LOAD_RR(I32_LOAD16_S, int16_t, (uint32_t)(int32_t)v)
    LOAD_RR(I32_LOAD16_U, uint16_t, v)
    LOAD_RR(I64_LOAD8_S, int8_t, (uint64_t)(int64_t)v)
    LOAD_RR(I64_LOAD8_U, uint8_t, v)
    LOAD_RR(I64_LOAD16_S, int16_t, (uint64_t)(int64_t)v)
    LOAD_RR(I64_LOAD16_U, uint16_t, v)
    LOAD_RR(I64_LOAD32_S, int32_t, (uint64_t)(int64_t)v)
    LOAD_RR(I64_LOAD32_U, uint32_t, v)
    STORE_I(STORE8_I, uint8_t, ip[3])
    STORE_I(STORE16_I, uint16_t, ip[3])
    STORE_I(STORE32_I, uint32_t, ip[3])
    STORE_I(STORE64_I, uint64_t, (int64_t)(int32_t)ip[3])

    /* Comparisons. */
    UN(I32_EQZ, U32(3) == 0)
    BIN(I32_EQ, U32(3) == U32(4))
    BIN(I32_NE, U32(3) != U32(4))
    BIN(I32_LT_S, I32(3) < I32(4))
    BIN(I32_LT_U, U32(3) < U32(4))
    BIN(I32_GT_S, I32(3) > I32(4))
    BIN(I32_GT_U, U32(3) > U32(4))
    BIN(I32_LE_S, I32(3) <= I32(4))
    BIN(I32_LE_U, U32(3) <= U32(4))
    BIN(I32_GE_S, I32(3) >= I32(4))
    BIN(I32_GE_U, U32(3) >= U32(4))
    UN(I64_EQZ, S(3) == 0)
    BIN(I64_EQ, S(3) == S(4))
    BIN(I64_NE, S(3) != S(4))
    BIN(I64_LT_S, I64(3) < I64(4))
    BIN(I64_LT_U, S(3) < S(4))
    BIN(I64_GT_S, I64(3) > I64(4))
    BIN(I64_GT_U, S(3) > S(4))
    BIN(I64_LE_S, I64(3) <= I64(4))
    BIN(I64_LE_U, S(3) <= S(4))
    BIN(I64_GE_S, I64(3) >= I64(4))
    BIN(I64_GE_U, S(3) >= S(4))
    BIN(F32_EQ, F32(3) == F32(4))
    BIN(F32_NE, F32(3) != F32(4))
    BIN(F32_LT, F32(3) < F32(4))
    BIN(F32_GT, F32(3) > F32(4))
    BIN(F32_LE, F32(3) <= F32(4))
    BIN(F32_GE, F32(3) >= F32(4))
    BIN(F64_EQ, F64(3) == F64(4))
    BIN(F64_NE, F64(3) != F64(4))
    BIN(F64_LT, F64(3) < F64(4))
    BIN(F64_GT, F64(3) > F64(4))
    BIN(F64_LE, F64(3) <= F64(4))
    BIN(F64_GE, F64(3) >= F64(4))

    /* i32 arithmetic. */
    UN(I32_CLZ, U32(3) ? (uint32_t)__builtin_clz(U32(3)) : 32)
    UN(I32_CTZ, U32(3) ? (uint32_t)__builtin_ctz(U32(3)) : 32)
    UN(I32_POPCNT, popcnt32(U32(3)))
    BIN(I32_ADD, (uint32_t)(U32(3) + U32(4)))
    BIN(I32_SUB, (uint32_t)(U32(3) - U32(4)))
    BIN(I32_MUL, (uint32_t)(U32(3) * U32(4)))
    BIN(I32_DIV_S, i32_div_s(U32(3), U32(4)))
    BIN(I32_DIV_U, i32_div_u(U32(3), U32(4)))
    BIN(I32_REM_S, i32_rem_s(U32(3), U32(4)))
    BIN(I32_REM_U, i32_rem_u(U32(3), U32(4)))
    BIN(I32_AND, U32(3) & U32(4))
    BIN(I32_OR, U32(3) | U32(4))
    BIN(I32_XOR, U32(3) ^ U32(4))
    BIN(I32_SHL, (uint32_t)(U32(3) << (U32(4) & 31)))
    BIN(I32_SHR_S, (uint32_t)(I32(3) >> (U32(4) & 31)))
    BIN(I32_SHR_U, U32(3) >> (U32(4) & 31))
    BIN(I32_ROTL, rotl32(U32(3), U32(4)))
    BIN(I32_ROTR, rotr32(U32(3), U32(4)))

    /* i64 arithmetic. */
    UN(I64_CLZ, S(3) ? (uint64_t)__builtin_clzll(S(3)) : 64)
    UN(I64_CTZ, S(3) ? (uint64_t)__builtin_ctzll(S(3)) : 64)
    UN(I64_POPCNT, popcnt64(S(3)))
    BIN(I64_ADD, S(3) + S(4))
    BIN(I64_SUB, S(3) - S(4))
    BIN(I64_MUL, S(3) * S(4))
    BIN(I64_DIV_S, i64_div_s(S(3), S(4)))
    BIN(I64_DIV_U, i64_div_u(S(3), S(4)))
    BIN(I64_REM_S, i64_rem_s(S(3), S(4)))
    BIN(I64_REM_U, i64_rem_u(S(3), S(4)))
    BIN(I64_AND, S(3) & S(4))
    BIN(I64_OR, S(3) | S(4))
    BIN(I64_XOR, S(3) ^ S(4))
    BIN(I64_SHL, S(3) << (S(4) & 63))
    BIN(I64_SHR_S, (uint64_t)(I64(3) >> (S(4) & 63)))
    BIN(I64_SHR_U, S(3) >> (S(4) & 63))
    BIN(I64_ROTL, rotl64(S(3), S(4)))
    BIN(I64_ROTR, rotr64(S(3), S(4)))

    /* f32 arithmetic. */
    UN(F32_ABS, U32(3) & 0x7fffffffu)
    UN(F32_NEG, U32(3) ^ 0x80000000u)
    UN(F32_CEIL, of_f32(f32_ceil(F32(3))))
    UN(F32_FLOOR, of_f32(f32_floor(F32(3))))
    UN(F32_TRUNC, of_f32(f32_trunc(F32(3))))
    UN(F32_NEAREST, of_f32(f32_nearest(F32(3))))
    UN(F32_SQRT, of_f32(f32_sqrt(F32(3))))
    BIN(F32_ADD, of_f32(F32(3) + F32(4)))
    BIN(F32_SUB, of_f32(F32(3) - F32(4)))
    BIN(F32_MUL, of_f32(F32(3) * F32(4)))
    BIN(F32_DIV, of_f32(F32(3) / F32(4)))
    BIN(F32_MIN, of_f32(f32_min(F32(3), F32(4))))
    BIN(F32_MAX, of_f32(f32_max(F32(3), F32(4))))
    BIN(F32_COPYSIGN, (U32(3) & 0x7fffffffu) | (U32(4) & 0x80000000u))

    /* f64 arithmetic. */
    UN(F64_ABS, S(3) & 0x7fffffffffffffffull)
    UN(F64_NEG, S(3) ^ 0x8000000000000000ull)
    UN(F64_CEIL, of_f64(f64_ceil(F64(3))))
    UN(F64_FLOOR, of_f64(f64_floor(F64(3))))
    UN(F64_TRUNC, of_f64(f64_trunc(F64(3))))
    UN(F64_NEAREST, of_f64(f64_nearest(F64(3))))
    UN(F64_SQRT, of_f64(f64_sqrt(F64(3))))
    BIN(F64_ADD, of_f64(F64(3) + F64(4)))
    BIN(F64_SUB, of_f64(F64(3) - F64(4)))
    BIN(F64_MUL, of_f64(F64(3) * F64(4)))
    BIN(F64_DIV, of_f64(F64(3) / F64(4)))
    BIN(F64_MIN, of_f64(f64_min(F64(3), F64(4))))
    BIN(F64_MAX, of_f64(f64_max(F64(3), F64(4))))
    BIN(F64_COPYSIGN, (S(3) & 0x7fffffffffffffffull) | (S(4) & 0x8000000000000000ull))

    /* Conversions. */
    UN(I32_WRAP_I64, U32(3))
    UN(I32_TRUNC_F32_S, (uint32_t)i32_trunc_f32_s(F32(3)))
    UN(I32_TRUNC_F32_U, i32_trunc_f32_u(F32(3)))
    UN(I32_TRUNC_F64_S, (uint32_t)i32_trunc_f64_s(F64(3)))
    UN(I32_TRUNC_F64_U, i32_trunc_f64_u(F64(3)))
    UN(I64_EXTEND_I32_S, (uint64_t)(int64_t)I32(3))
    UN(I64_EXTEND_I32_U, (uint64_t)U32(3))
    UN(I64_TRUNC_F32_S, (uint64_t)i64_trunc_f32_s(F32(3)))
    UN(I64_TRUNC_F32_U, i64_trunc_f32_u(F32(3)))
    UN(I64_TRUNC_F64_S, (uint64_t)i64_trunc_f64_s(F64(3)))
    UN(I64_TRUNC_F64_U, i64_trunc_f64_u(F64(3)))
    UN(F32_CONVERT_I32_S, of_f32((float)I32(3)))
    UN(F32_CONVERT_I32_U, of_f32((float)U32(3)))
    UN(F32_CONVERT_I64_S, of_f32((float)I64(3)))
    UN(F32_CONVERT_I64_U, of_f32((float)S(3)))
    UN(F32_DEMOTE_F64, of_f32((float)F64(3)))
    UN(F64_CONVERT_I32_S, of_f64((double)I32(3)))
    UN(F64_CONVERT_I32_U, of_f64((double)U32(3)))
    UN(F64_CONVERT_I64_S, of_f64((double)I64(3)))
    UN(F64_CONVERT_I64_U, of_f64((double)S(3)))
    UN(F64_PROMOTE_F32, of_f64((double)F32(3)))
    UN(I32_REINTERPRET_F32, U32(3))
    UN(I64_REINTERPRET_F64, S(3))
    UN(F32_REINTERPRET_I32, U32(3))
    UN(F64_REINTERPRET_I64, S(3))
    UN(I32_EXTEND8_S, (uint32_t)(int32_t)(int8_t)S(3))
    UN(I32_EXTEND16_S, (uint32_t)(int32_t)(int16_t)S(3))
    UN(I64_EXTEND8_S, (uint64_t)(int64_t)(int8_t)S(3))
    UN(I64_EXTEND16_S, (uint64_t)(int64_t)(int16_t)S(3))
    UN(I64_EXTEND32_S, (uint64_t)(int64_t)(int32_t)S(3))
    UN(I32_TRUNC_SAT_F32_S, (uint32_t)i32_sat_f32_s(F32(3)))
    UN(I32_TRUNC_SAT_F32_U, i32_sat_f32_u(F32(3)))
    UN(I32_TRUNC_SAT_F64_S, (uint32_t)i32_sat_f64_s(F64(3)))
    UN(I32_TRUNC_SAT_F64_U, i32_sat_f64_u(F64(3)))
    UN(I64_TRUNC_SAT_F32_S, (uint64_t)i64_sat_f32_s(F32(3)))
    UN(I64_TRUNC_SAT_F32_U, i64_sat_f32_u(F32(3)))
    UN(I64_TRUNC_SAT_F64_S, (uint64_t)i64_sat_f64_s(F64(3)))
    UN(I64_TRUNC_SAT_F64_U, i64_sat_f64_u(F64(3)))

    /* Immediate forms: d a k. */
    BIN(I32_ADD_I, (uint32_t)(U32(3) + K32))
    BIN(I32_SUB_I, (uint32_t)(U32(3) - K32))
    BIN(I32_MUL_I, (uint32_t)(U32(3) * K32))
    BIN(I32_AND_I, U32(3) & K32)
    BIN(I32_OR_I, U32(3) | K32)
    BIN(I32_XOR_I, U32(3) ^ K32)
    BIN(I32_SHL_I, (uint32_t)(U32(3) << (K32 & 31)))
    BIN(I32_SHR_S_I, (uint32_t)(I32(3) >> (K32 & 31)))
    BIN(I32_SHR_U_I, U32(3) >> (K32 & 31))
    BIN(I32_EQ_I, U32(3) == K32)
    BIN(I32_NE_I, U32(3) != K32)
    BIN(I32_LT_S_I, I32(3) < (int32_t)K32)
    BIN(I32_LT_U_I, U32(3) < K32)
    BIN(I32_GT_S_I, I32(3) > (int32_t)K32)
    BIN(I32_GT_U_I, U32(3) > K32)
    BIN(I32_LE_S_I, I32(3) <= (int32_t)K32)
    BIN(I32_LE_U_I, U32(3) <= K32)
    BIN(I32_GE_S_I, I32(3) >= (int32_t)K32)
    BIN(I32_GE_U_I, U32(3) >= K32)
    BIN(I64_ADD_I, S(3) + (uint64_t)(int64_t)(int32_t)K32)
    BIN(I64_SUB_I, S(3) - (uint64_t)(int64_t)(int32_t)K32)
    BIN(I64_AND_I, S(3) & (uint64_t)(int64_t)(int32_t)K32)
    BIN(I64_SHL_I, S(3) << (K32 & 63))
    BIN(I64_SHR_S_I, (uint64_t)(I64(3) >> (K32 & 63)))
    BIN(I64_SHR_U_I, S(3) >> (K32 & 63))
    BIN(I32_ROTL_I, rotl32(U32(3), K32))
    BIN(I32_ROTR_I, rotr32(U32(3), K32))
    BIN(I64_ROTL_I, rotl64(S(3), K32))
    BIN(I64_ROTR_I, rotr64(S(3), K32))
    BIN(I64_MUL_I, S(3) * (uint64_t)(int64_t)(int32_t)K32)
    BIN(I64_OR_I, S(3) | (uint64_t)(int64_t)(int32_t)K32)
    BIN(I64_XOR_I, S(3) ^ (uint64_t)(int64_t)(int32_t)K32)

    /* Fused i32 op pairs: d a x y/k. */
    BB(F_ADD_ADD, +, (uint32_t)(U32(4) + U32(5)))
    BB(F_ADD_SUB, +, (uint32_t)(U32(4) - U32(5)))
    BB(F_ADD_XOR, +, (uint32_t)(U32(4) ^ U32(5)))
    BB(F_ADD_AND, +, (uint32_t)(U32(4) & U32(5)))
    BB(F_ADD_OR, +, (uint32_t)(U32(4) | U32(5)))
    BB(F_ADD_ROTL_I, +, rotl32(U32(4), ip[5]))
    BB(F_ADD_ROTR_I, +, rotr32(U32(4), ip[5]))
    BB(F_ADD_SHL_I, +, (uint32_t)(U32(4) << (ip[5] & 31)))
    BB(F_ADD_SHR_U_I, +, (U32(4) >> (ip[5] & 31)))
    BB(F_ADD_ADD_I, +, (uint32_t)(U32(4) + ip[5]))
    BB(F_ADD_AND_I, +, (U32(4) & ip[5]))
    BB(F_XOR_ADD, ^, (uint32_t)(U32(4) + U32(5)))
    BB(F_XOR_SUB, ^, (uint32_t)(U32(4) - U32(5)))
    BB(F_XOR_XOR, ^, (uint32_t)(U32(4) ^ U32(5)))
    BB(F_XOR_AND, ^, (uint32_t)(U32(4) & U32(5)))
    BB(F_XOR_OR, ^, (uint32_t)(U32(4) | U32(5)))
    BB(F_XOR_ROTL_I, ^, rotl32(U32(4), ip[5]))
    BB(F_XOR_ROTR_I, ^, rotr32(U32(4), ip[5]))
    BB(F_XOR_SHL_I, ^, (uint32_t)(U32(4) << (ip[5] & 31)))
    BB(F_XOR_SHR_U_I, ^, (U32(4) >> (ip[5] & 31)))
    BB(F_XOR_ADD_I, ^, (uint32_t)(U32(4) + ip[5]))
    BB(F_XOR_AND_I, ^, (U32(4) & ip[5]))
    BB(F_AND_ADD, &, (uint32_t)(U32(4) + U32(5)))
    BB(F_AND_SUB, &, (uint32_t)(U32(4) - U32(5)))
    BB(F_AND_XOR, &, (uint32_t)(U32(4) ^ U32(5)))
    BB(F_AND_AND, &, (uint32_t)(U32(4) & U32(5)))
    BB(F_AND_OR, &, (uint32_t)(U32(4) | U32(5)))
    BB(F_AND_ROTL_I, &, rotl32(U32(4), ip[5]))
    BB(F_AND_ROTR_I, &, rotr32(U32(4), ip[5]))
    BB(F_AND_SHL_I, &, (uint32_t)(U32(4) << (ip[5] & 31)))
    BB(F_AND_SHR_U_I, &, (U32(4) >> (ip[5] & 31)))
    BB(F_AND_ADD_I, &, (uint32_t)(U32(4) + ip[5]))
    BB(F_AND_AND_I, &, (U32(4) & ip[5]))
    BB(F_OR_ADD, |, (uint32_t)(U32(4) + U32(5)))
    BB(F_OR_SUB, |, (uint32_t)(U32(4) - U32(5)))
    BB(F_OR_XOR, |, (uint32_t)(U32(4) ^ U32(5)))
    BB(F_OR_AND, |, (uint32_t)(U32(4) & U32(5)))
    BB(F_OR_OR, |, (uint32_t)(U32(4) | U32(5)))
    BB(F_OR_ROTL_I, |, rotl32(U32(4), ip[5]))
    BB(F_OR_ROTR_I, |, rotr32(U32(4), ip[5]))
    BB(F_OR_SHL_I, |, (uint32_t)(U32(4) << (ip[5] & 31)))
    BB(F_OR_SHR_U_I, |, (U32(4) >> (ip[5] & 31)))
    BB(F_OR_ADD_I, |, (uint32_t)(U32(4) + ip[5]))
    BB(F_OR_AND_I, |, (U32(4) & ip[5]))

L_F32_ADD_MUL: {
    float t = F32(4) * F32(5);
    __asm__("" : "+x"(t)); /* no contraction into an FMA: Wasm rounds twice */
    S(2) = of_f32(F32(3) + t);
    ip += 6;
    NEXT();
}
L_F64_ADD_MUL: {
    double t = F64(4) * F64(5);
    __asm__("" : "+x"(t));
    S(2) = of_f64(F64(3) + t);
    ip += 6;
    NEXT();
}

    /* Fused compare-and-branch: a b off / a k off. */
    CBR(BR_EQ, U32(2) == U32(3))
    CBR(BR_NE, U32(2) != U32(3))
    CBR(BR_LT_S, I32(2) < I32(3))
    CBR(BR_LT_U, U32(2) < U32(3))
    CBR(BR_GT_S, I32(2) > I32(3))
    CBR(BR_GT_U, U32(2) > U32(3))
    CBR(BR_LE_S, I32(2) <= I32(3))
    CBR(BR_LE_U, U32(2) <= U32(3))
    CBR(BR_GE_S, I32(2) >= I32(3))
    CBR(BR_GE_U, U32(2) >= U32(3))
    CBR(BR_EQ_I, U32(2) == ip[3])
    CBR(BR_NE_I, U32(2) != ip[3])
    CBR(BR_LT_S_I, I32(2) < (int32_t)ip[3])
    CBR(BR_LT_U_I, U32(2) < ip[3])
    CBR(BR_GT_S_I, I32(2) > (int32_t)ip[3])
    CBR(BR_GT_U_I, U32(2) > ip[3])
    CBR(BR_LE_S_I, I32(2) <= (int32_t)ip[3])
    CBR(BR_LE_U_I, U32(2) <= ip[3])
    CBR(BR_GE_S_I, I32(2) >= (int32_t)ip[3])
    CBR(BR_GE_U_I, U32(2) >= ip[3])
    CBR(BR64_EQ, S(2) == S(3))
    CBR(BR64_NE, S(2) != S(3))
    CBR(BR64_LT_S, I64(2) < I64(3))
    CBR(BR64_LT_U, S(2) < S(3))
    CBR(BR64_GT_S, I64(2) > I64(3))
    CBR(BR64_GT_U, S(2) > S(3))
    CBR(BR64_LE_S, I64(2) <= I64(3))
    CBR(BR64_LE_U, S(2) <= S(3))
    CBR(BR64_GE_S, I64(2) >= I64(3))
    CBR(BR64_GE_U, S(2) >= S(3))
L_BR_IF64:
    if (S(2))
        JUMP(3);
    else
        ip += 4;
    NEXT();
L_BR_UNLESS64:
    if (!S(2))
        JUMP(3);
    else
        ip += 4;
    NEXT();

    /* Exception handling (after the scalar handlers: their code layout stays as it was). */
L_THROW:
    unwound = (unwind_state){ip, fp, inst, mem, csp};
    throw_tag = inst->tags[ip[2]];
    return true;
L_THROW_REF:
    unwound = (unwind_state){ip, fp, inst, mem, csp};
    throw_tag = 0;
    throw_ref = S(2);
    return true;

#define SIMD_HANDLERS
#include "simd.h"
#undef SIMD_HANDLERS
}

void interp_call(wfunc *f, uint64_t *sp) {
    bool resume = false;
    while (interp_run(f, sp, resume)) { /* a throw: THROW's fields are tag args frame_size */
        const uint32_t *ip = unwound.ip;
        uint64_t *fp = unwound.fp;
        unwind(throw_tag ? eh_new(throw_tag, fp + ip[3], fp + ip[4]) : throw_ref);
        resume = true;
    }
}
