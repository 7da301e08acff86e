/* simd.h: the interpreter's fixed-width SIMD (Wasm 2.0 v128) instructions. Included by
 * interp.c twice: once at file scope (SIMD_HELPERS: lane types and helpers), once inside
 * interp_call (SIMD_HANDLERS: one label per SIMD_LIST entry of ops.h).
 *
 * Written with GCC vector extensions and lane loops for exact Wasm semantics: the guest
 * is built for baseline x86-64 (SSE2), where GCC lowers whole-vector operations to SSE
 * instructions; lane-wise operations whose x86 form differs from Wasm (float min/max
 * and NaN/-0, trunc_sat, rounding, saturating narrow) reuse the scalar helpers of
 * interp.c lane by lane. A v128 slot is fp[i] (lanes 0..7 bytes) and fp[i + 1]. */

#ifdef SIMD_HELPERS
typedef int8_t i8x16 __attribute__((vector_size(16)));
typedef uint8_t u8x16 __attribute__((vector_size(16)));
typedef int16_t i16x8 __attribute__((vector_size(16)));
typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef int32_t i32x4 __attribute__((vector_size(16)));
typedef uint32_t u32x4 __attribute__((vector_size(16)));
typedef int64_t i64x2 __attribute__((vector_size(16)));
typedef uint64_t u64x2 __attribute__((vector_size(16)));
typedef float f32x4 __attribute__((vector_size(16)));
typedef double f64x2 __attribute__((vector_size(16)));

static inline int32_t sat_s8(int32_t x) { return x < -128 ? -128 : x > 127 ? 127 : x; }
static inline int32_t sat_u8(int32_t x) { return x < 0 ? 0 : x > 255 ? 255 : x; }
static inline int32_t sat_s16(int32_t x) { return x < -32768 ? -32768 : x > 32767 ? 32767 : x; }
static inline int32_t sat_u16(int32_t x) { return x < 0 ? 0 : x > 65535 ? 65535 : x; }

/* SSE2 builtins' own vector types (x86-64 baseline: no -msse4.1 needed). */
typedef char v16qi __attribute__((vector_size(16)));
typedef short v8hi __attribute__((vector_size(16)));
typedef int v4si __attribute__((vector_size(16)));
typedef float v4sf __attribute__((vector_size(16)));
typedef double v2df __attribute__((vector_size(16)));

/* Lane-wise select of integer vectors of one type: m's lanes are all ones or zeros. */
#define VSEL(m, x, y) (((x) & (m)) | ((y) & ~(m)))

/* Interleaving masks: lanes h.. of a with lanes h.. of b (b: zeros or a's signs), which
 * widens the low (h = 0) or high half of a by zero or sign extension. */
#define ZIP8(h)                                                                        \
    (u8x16) {                                                                          \
        h + 0, h + 16, h + 1, h + 17, h + 2, h + 18, h + 3, h + 19, h + 4, h + 20, h + 5, \
            h + 21, h + 6, h + 22, h + 7, h + 23                                       \
    }
#define ZIP16(h) (u16x8){h + 0, h + 8, h + 1, h + 9, h + 2, h + 10, h + 3, h + 11}
#define ZIP32(h) (u32x4){h + 0, h + 4, h + 1, h + 5}

static inline u16x8 ext8(i8x16 a, bool sign, bool high) {
    i8x16 s = sign ? (i8x16)(a < (i8x16){0}) : (i8x16){0};
    return (u16x8)(high ? __builtin_shuffle(a, s, ZIP8(8)) : __builtin_shuffle(a, s, ZIP8(0)));
}
static inline u32x4 ext16(i16x8 a, bool sign, bool high) {
    i16x8 s = sign ? (i16x8)(a < (i16x8){0}) : (i16x8){0};
    return (u32x4)(high ? __builtin_shuffle(a, s, ZIP16(4)) : __builtin_shuffle(a, s, ZIP16(0)));
}
static inline u64x2 ext32(i32x4 a, bool sign, bool high) {
    i32x4 s = sign ? (i32x4)(a < (i32x4){0}) : (i32x4){0};
    return (u64x2)(high ? __builtin_shuffle(a, s, ZIP32(2)) : __builtin_shuffle(a, s, ZIP32(0)));
}

/* Whether no lane of a (of any width, as bytes after a lane compare) is zero. */
static inline uint32_t no_zero_lane(v16qi zero_mask) {
    return __builtin_ia32_pmovmskb128(zero_mask) == 0;
}

/* Wasm float min/max: NaN if either is NaN, -0 < +0, else the IEEE order. */
static inline u32x4 f32x4_min(f32x4 a, f32x4 b) {
    u32x4 ua = (u32x4)a, ub = (u32x4)b;
    u32x4 r = VSEL((u32x4)(a < b), ua, ub);
    r = VSEL((u32x4)(a == b), ua | ub, r);
    return VSEL((u32x4)((a != a) | (b != b)), (u32x4)(a + b), r);
}
static inline u32x4 f32x4_max(f32x4 a, f32x4 b) {
    u32x4 ua = (u32x4)a, ub = (u32x4)b;
    u32x4 r = VSEL((u32x4)(a > b), ua, ub);
    r = VSEL((u32x4)(a == b), ua & ub, r);
    return VSEL((u32x4)((a != a) | (b != b)), (u32x4)(a + b), r);
}
static inline u64x2 f64x2_min(f64x2 a, f64x2 b) {
    u64x2 ua = (u64x2)a, ub = (u64x2)b;
    u64x2 r = VSEL((u64x2)(a < b), ua, ub);
    r = VSEL((u64x2)(a == b), ua | ub, r);
    return VSEL((u64x2)((a != a) | (b != b)), (u64x2)(a + b), r);
}
static inline u64x2 f64x2_max(f64x2 a, f64x2 b) {
    u64x2 ua = (u64x2)a, ub = (u64x2)b;
    u64x2 r = VSEL((u64x2)(a > b), ua, ub);
    r = VSEL((u64x2)(a == b), ua & ub, r);
    return VSEL((u64x2)((a != a) | (b != b)), (u64x2)(a + b), r);
}

/* i32x4.trunc_sat_f32x4_s: cvttps2dq gives INT32_MIN for NaN and out of range. */
static inline i32x4 f32x4_trunc_sat_s(f32x4 a) {
    i32x4 r = (i32x4)__builtin_ia32_cvttps2dq((v4sf)a);
    r = VSEL((i32x4)(a >= 2147483648.0f), (i32x4){0} + INT32_MAX, r);
    return r & (i32x4)(a == a);
}

/* Rounding without SSE4.1's roundps/roundpd. For |x| < 2^23 (2^52 for f64), adding and
 * subtracting that power of two rounds |x| to the nearest integer, ties to even (the
 * default MXCSR rounding); trunc steps back where that went up; floor and ceil step from
 * trunc; the sign is put back by OR, so that -0.5 gives -0. Larger magnitudes are already
 * integers, kept as they are; a NaN is quieted (x + x), as the scalar helpers do. */
enum { RND_NEAREST, RND_TRUNC, RND_FLOOR, RND_CEIL };
#define V_ROUND(name, F, U, sign, big)                                                 \
    static inline U name(F x, int mode) {                                              \
        U bits = (U)x, s = bits & (sign);                                              \
        F a = (F)(bits & ~(sign));                                                     \
        F n = (a + (big)) - (big);                                                     \
        __asm__("" : "+x"(n));                                                         \
        F r;                                                                           \
        if (mode == RND_NEAREST) {                                                     \
            r = (F)((U)n | s);                                                         \
        } else {                                                                       \
            F t = (F)VSEL((U)(n > a), (U)(n - 1), (U)n);                               \
            t = (F)((U)t | s);                                                         \
            if (mode == RND_TRUNC) r = t;                                              \
            else if (mode == RND_FLOOR) r = (F)VSEL((U)(t > x), (U)(t - 1), (U)t);     \
            else r = (F)VSEL((U)(t < x), (U)(t + 1), (U)t);                            \
        }                                                                              \
        U keep = VSEL((U)(x != x), (U)(x + x), bits);                                  \
        return VSEL((U)(a < (big)), (U)r, keep);                                       \
    }
V_ROUND(f32x4_round, f32x4, u32x4, 0x80000000u, 8388608.0f)
V_ROUND(f64x2_round, f64x2, u64x2, 0x8000000000000000ull, 4503599627370496.0)
#undef V_ROUND

/* i32x4.trunc_sat_f32x4_u: values from 2^31 on through a bias of -2^31. */
static inline u32x4 f32x4_trunc_sat_u(f32x4 a) {
    u32x4 lo = (u32x4)__builtin_ia32_cvttps2dq((v4sf)a);
    u32x4 hi = (u32x4)__builtin_ia32_cvttps2dq((v4sf)(a - 2147483648.0f)) ^ 0x80000000u;
    u32x4 r = VSEL((u32x4)(a >= 2147483648.0f), hi, lo);
    r = VSEL((u32x4)(a >= 4294967296.0f), (u32x4){0} + UINT32_MAX, r);
    return r & (u32x4)(a > 0); /* NaN and negatives: 0 */
}

/* i16x8.narrow_i32x4_u without SSE4.1's packusdw: clamp to [0, 65535], then a signed
 * pack of the values biased by -32768, unbiased again. */
static inline i16x8 narrow32_u(i32x4 a, i32x4 b) {
    a = VSEL((i32x4)(a < 0), (i32x4){0}, a);
    a = VSEL((i32x4)(a > 65535), (i32x4){0} + 65535, a);
    b = VSEL((i32x4)(b < 0), (i32x4){0}, b);
    b = VSEL((i32x4)(b > 65535), (i32x4){0} + 65535, b);
    v8hi r = __builtin_ia32_packssdw128((v4si)(a - 32768), (v4si)(b - 32768));
    return (i16x8)r ^ ((i16x8){0} + (int16_t)0x8000);
}

/* SSSE3's pshufb where the CPU has it (CPUID, checked once by simd_init: the guest image
 * is built for baseline x86-64), for shuffles and swizzles; a gather otherwise. */
static bool have_ssse3;

static void simd_init(void) {
    uint32_t a, b, c, d;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
    have_ssse3 = (c >> 9) & 1;
#ifdef ENG_NO_SSSE3 /* native builds: test the fallback */
    have_ssse3 = false;
#endif
}

/* Inline assembly rather than a target("ssse3") function: that could not be inlined
 * into the interpreter (built for baseline x86-64) and cost a call per shuffle. */
static inline u8x16 pshufb1(u8x16 a, u8x16 m) {
    /* "x", not "xm": the SSE form's memory operand must be 16-byte aligned, and a mask
     * may sit in the instruction stream, which is 4-byte aligned. */
    __asm__("pshufb %1, %0" : "+x"(a) : "x"(m));
    return a;
}
static inline u8x16 pshufb2(u8x16 a, u8x16 ma, u8x16 b, u8x16 mb) {
    return pshufb1(a, ma) | pshufb1(b, mb);
}

/* r[i] = t[k[i] & mask], gathered in two registers (byte stores into a vector in memory
 * would stall the 16-byte load that follows). */
static inline u64x2 gather16(const uint8_t *t, const uint8_t *k, uint8_t mask) {
    uint64_t lo = 0, hi = 0;
    for (int i = 7; i >= 0; i--) {
        lo = lo << 8 | t[k[i] & mask];
        hi = hi << 8 | t[k[i + 8] & mask];
    }
    return (u64x2){lo, hi};
}

/* Float lanes by their bits (so that NaN payloads pass through untouched). */
static inline float lane_f32(uint32_t b) { return f32_of(b); }
static inline double lane_f64(uint64_t b) { return f64_of(b); }
#endif /* SIMD_HELPERS */

#ifdef SIMD_HANDLERS
/* Operand access: the slot of field i as a vector of type T; the result slot. */
#define VA(T, i) ((T)W(i))
/* Every v128 result is also left in `acc` (a register): the next instruction, when the
 * compiler gave it an _A or _B variant, reads its a or b operand from there instead of
 * from the slot just stored (a store-to-load round trip per dependent instruction). */
#define VSETF(i, r)                                                                    \
    do {                                                                               \
        vslot v_ = (vslot)(r);                                                         \
        __asm__("" : "=x"(acc) : "0"(v_)); /* opaque to GCC's vector lowering */       \
        W(i) = v_;                                                                     \
    } while (0)
#define VSET(r) VSETF(2, r)
#define ACC(T)                                                                         \
    ({                                                                                 \
        vslot a_;                                                                      \
        __asm__("" : "=x"(a_) : "0"(acc));                                             \
        (T)a_;                                                                         \
    })
/* A result built lane by lane: the vector and its lanes as an array (GCC warns falsely
 * about element stores into a vector in a loop). */
#define LANES(R)                                                                       \
    union {                                                                            \
        R v;                                                                           \
        __typeof__(((R){0})[0]) e[16 / sizeof(((R){0})[0])];                          \
    }
/* Whole-vector forms (expr over a, b), lane loops (expr over a[i], b[i]). */
#define V_UN_BODY(T, R, expr, A)                                                       \
    {                                                                                  \
        T a = (A);                                                                     \
        R r = (expr);                                                                  \
        VSET(r);                                                                       \
        ip += 4;                                                                       \
        NEXT();                                                                        \
    }
#define V_UN(name, T, R, expr)                                                         \
    L_##name##_B : L_##name : V_UN_BODY(T, R, expr, VA(T, 3))                          \
    L_##name##_A : V_UN_BODY(T, R, expr, ACC(T))
#define V_BIN_BODY(T, R, expr, A, B)                                                   \
    {                                                                                  \
        T a = (A), b = (B);                                                            \
        R r = (R)(expr);                                                               \
        VSET(r);                                                                       \
        ip += 5;                                                                       \
        NEXT();                                                                        \
    }
#define V_BIN(name, T, R, expr)                                                        \
    L_##name : V_BIN_BODY(T, R, expr, VA(T, 3), VA(T, 4))                              \
    L_##name##_A : V_BIN_BODY(T, R, expr, ACC(T), VA(T, 4))                            \
    L_##name##_B : V_BIN_BODY(T, R, expr, VA(T, 3), ACC(T))
/* The variants of the other handlers read the slots (the value is there too). */
#define V_ALIAS(name) L_##name##_A : L_##name##_B :
#define V_UNL(name, T, R, N, expr)                                                     \
    V_ALIAS(name) L_##name : {                                                                       \
        T a = VA(T, 3);                                                                \
        LANES(R) r = {{0}};                                                            \
        for (int i = 0; i < (N); i++) r.e[i] = (expr);                                 \
        VSET(r.v);                                                                     \
        ip += 4;                                                                       \
        NEXT();                                                                        \
    }
#define V_BINL(name, T, R, N, expr)                                                    \
    V_ALIAS(name) L_##name : {                                                                       \
        T a = VA(T, 3), b = VA(T, 4);                                                  \
        LANES(R) r = {{0}};                                                            \
        for (int i = 0; i < (N); i++) r.e[i] = (expr);                                 \
        VSET(r.v);                                                                     \
        ip += 5;                                                                       \
        NEXT();                                                                        \
    }
/* A scalar result (any_true, all_true, bitmask) from a lane loop accumulating into s. */
#define V_REDUCE(name, T, N, init, step)                                               \
    V_ALIAS(name) L_##name : {                                                                       \
        T a = VA(T, 3);                                                                \
        uint32_t s = (init);                                                           \
        for (int i = 0; i < (N); i++) step;                                            \
        S(2) = s;                                                                      \
        ip += 4;                                                                       \
        NEXT();                                                                        \
    }
#define V_SHIFT(name, T, bits, op)                                                     \
    V_ALIAS(name) L_##name : {                                                                       \
        T a = VA(T, 3);                                                                \
        T r = a op(int)(U32(4) & ((bits) - 1));                                        \
        VSET(r);                                                                       \
        ip += 5;                                                                       \
        NEXT();                                                                        \
    }
#define V_SHIFT_I_BODY(T, bits, op, A)                                                 \
    {                                                                                  \
        T a = (A);                                                                     \
        T r = a op(int)(ip[4] & ((bits) - 1));                                         \
        VSET(r);                                                                       \
        ip += 5;                                                                       \
        NEXT();                                                                        \
    }
#define V_SHIFT_I(name, T, bits, op)                                                   \
    L_##name##_I : V_SHIFT_I_BODY(T, bits, op, VA(T, 3))                               \
    L_##name##_I_A : V_SHIFT_I_BODY(T, bits, op, ACC(T))
#define ADDR(k) (mem + (uint64_t)U32(k))

    /* Memory: d a off. */
L_V128_LOAD: {
    vslot v;
    __builtin_memcpy(&v, ADDR(3) + ip[4], 16);
    VSET(v);
    ip += 5;
    NEXT();
}
L_V128_LOAD_RR: { /* d x y off: address x + y */
    vslot v;
    __builtin_memcpy(&v, mem + (uint64_t)(uint32_t)(U32(3) + U32(4)) + ip[5], 16);
    VSET(v);
    ip += 6;
    NEXT();
}
L_V128_LOAD_RI: { /* d x k off: address x + k */
    vslot v;
    __builtin_memcpy(&v, mem + (uint64_t)(uint32_t)(U32(3) + ip[4]) + ip[5], 16);
    VSET(v);
    ip += 6;
    NEXT();
}
/* The 16 bytes at address x + k + off (fields i, i + 1, i + 2; x + k wraps at 32 bits). */
#define LDV(v, i)                                                                      \
    __builtin_memcpy(&(v), mem + (uint64_t)(uint32_t)(U32(i) + ip[(i) + 1]) + ip[(i) + 2], 16)
L_V128_LOAD2: { /* d1 x1 k1 off1 d2 x2 k2 off2: two loads, in order */
    vslot v;
    LDV(v, 3);
    VSET(v);
    LDV(v, 7);
    VSETF(6, v);
    ip += 10;
    NEXT();
}
L_F32X4_MUL_LL: { /* d x1 k1 off1 x2 k2 off2 */
    f32x4 x, y;
    LDV(x, 3);
    LDV(y, 6);
    VSET(x * y);
    ip += 9;
    NEXT();
}
L_F64X2_MUL_LL: {
    f64x2 x, y;
    LDV(x, 3);
    LDV(y, 6);
    VSET(x * y);
    ip += 9;
    NEXT();
}
L_F32X4_ADD_MUL_LL: { /* d a x1 k1 off1 x2 k2 off2: d = a + x * y, two roundings */
    f32x4 x, y;
    LDV(x, 4);
    LDV(y, 7);
    f32x4 t = x * y;
    __asm__("" : "+x"(t));
    VSET(VA(f32x4, 3) + t);
    ip += 10;
    NEXT();
}
L_F64X2_ADD_MUL_LL: {
    f64x2 x, y;
    LDV(x, 4);
    LDV(y, 7);
    f64x2 t = x * y;
    __asm__("" : "+x"(t));
    VSET(VA(f64x2, 3) + t);
    ip += 10;
    NEXT();
}
#define V_LOAD_EXT(name, ST, R, N)                                                     \
    L_##name : {                                                                       \
        ST v[N];                                                                       \
        __builtin_memcpy(v, ADDR(3) + ip[4], sizeof v);                                \
        LANES(R) r = {{0}};                                                            \
        for (int i = 0; i < (N); i++) r.e[i] = v[i];                                   \
        VSET(r.v);                                                                     \
        ip += 5;                                                                       \
        NEXT();                                                                        \
    }
    V_LOAD_EXT(V128_LOAD8X8_S, int8_t, i16x8, 8)
    V_LOAD_EXT(V128_LOAD8X8_U, uint8_t, u16x8, 8)
    V_LOAD_EXT(V128_LOAD16X4_S, int16_t, i32x4, 4)
    V_LOAD_EXT(V128_LOAD16X4_U, uint16_t, u32x4, 4)
    V_LOAD_EXT(V128_LOAD32X2_S, int32_t, i64x2, 2)
    V_LOAD_EXT(V128_LOAD32X2_U, uint32_t, u64x2, 2)
#define V_LOAD_SPLAT(name, ST, R, zero)                                                \
    L_##name : {                                                                       \
        ST v;                                                                          \
        __builtin_memcpy(&v, ADDR(3) + ip[4], sizeof v);                               \
        R r = (zero) ? (R){v} : (R){0} + v;                                            \
        VSET(r);                                                                       \
        ip += 5;                                                                       \
        NEXT();                                                                        \
    }
    V_LOAD_SPLAT(V128_LOAD8_SPLAT, uint8_t, u8x16, 0)
    V_LOAD_SPLAT(V128_LOAD16_SPLAT, uint16_t, u16x8, 0)
    V_LOAD_SPLAT(V128_LOAD32_SPLAT, uint32_t, u32x4, 0)
    V_LOAD_SPLAT(V128_LOAD64_SPLAT, uint64_t, u64x2, 0)
    V_LOAD_SPLAT(V128_LOAD32_ZERO, uint32_t, u32x4, 1)
    V_LOAD_SPLAT(V128_LOAD64_ZERO, uint64_t, u64x2, 1)
L_V128_STORE_A:
L_V128_STORE: { /* a v off: one 16-byte store (no partial write before a fault) */
    vslot v = W(3);
    __builtin_memcpy(ADDR(2) + ip[4], &v, 16);
    ip += 5;
    NEXT();
}
L_V128_STORE_B: { /* the value from acc */
    vslot v = ACC(vslot);
    __builtin_memcpy(ADDR(2) + ip[4], &v, 16);
    ip += 5;
    NEXT();
}
    /* Lanes of memory: d a v off lane / a v off lane. */
#define V_LOAD_LANE(name, T, ST)                                                       \
    L_##name : {                                                                       \
        T r = VA(T, 4);                                                                \
        ST v;                                                                          \
        __builtin_memcpy(&v, ADDR(3) + ip[5], sizeof v);                               \
        r[ip[6]] = v;                                                                  \
        VSET(r);                                                                       \
        ip += 7;                                                                       \
        NEXT();                                                                        \
    }
#define V_STORE_LANE(name, T, ST)                                                      \
    L_##name : {                                                                       \
        T a = VA(T, 3);                                                                \
        ST v = a[ip[5]];                                                               \
        __builtin_memcpy(ADDR(2) + ip[4], &v, sizeof v);                               \
        ip += 6;                                                                       \
        NEXT();                                                                        \
    }
    V_LOAD_LANE(V128_LOAD8_LANE, u8x16, uint8_t)
    V_LOAD_LANE(V128_LOAD16_LANE, u16x8, uint16_t)
    V_LOAD_LANE(V128_LOAD32_LANE, u32x4, uint32_t)
    V_LOAD_LANE(V128_LOAD64_LANE, u64x2, uint64_t)
    V_STORE_LANE(V128_STORE8_LANE, u8x16, uint8_t)
    V_STORE_LANE(V128_STORE16_LANE, u16x8, uint16_t)
    V_STORE_LANE(V128_STORE32_LANE, u32x4, uint32_t)
    V_STORE_LANE(V128_STORE64_LANE, u64x2, uint64_t)

    /* Constants, shuffles, splats, lanes. */
L_V128_CONST: {
    vslot v;
    __builtin_memcpy(&v, ip + 3, 16);
    VSET(v);
    ip += 7;
    NEXT();
}
L_I8X16_SHUFFLE_A: /* a from acc; b too where it is the same slot */
    if (LIKELY(have_ssse3)) {
        u8x16 ma, mb, a = ACC(u8x16);
        __builtin_memcpy(&ma, ip + 5, 16);
        __builtin_memcpy(&mb, ip + 9, 16);
        VSET(pshufb2(a, ma, ip[4] == ip[3] ? a : VA(u8x16, 4), mb));
        ip += 13;
        NEXT();
    }
    goto L_I8X16_SHUFFLE;
L_I8X16_SHUFFLE_B:
    if (LIKELY(have_ssse3)) {
        u8x16 ma, mb;
        __builtin_memcpy(&ma, ip + 5, 16);
        __builtin_memcpy(&mb, ip + 9, 16);
        VSET(pshufb2(VA(u8x16, 3), ma, ACC(u8x16), mb));
        ip += 13;
        NEXT();
    }
    /* fallthrough */
L_I8X16_SHUFFLE: { /* d a b ma mb: pshufb masks (0x80: the lane comes from the other) */
    u8x16 ma, mb;
    __builtin_memcpy(&ma, ip + 5, 16);
    __builtin_memcpy(&mb, ip + 9, 16);
    if (LIKELY(have_ssse3)) {
        VSET(pshufb2(VA(u8x16, 3), ma, VA(u8x16, 4), mb));
    } else {
        uint8_t t[32], k[16];
        vslot a = W(3), b = W(4);
        __builtin_memcpy(t, &a, 16);
        __builtin_memcpy(t + 16, &b, 16);
        for (int i = 0; i < 16; i++) k[i] = ma[i] < 16 ? ma[i] : 16 + mb[i];
        VSET(gather16(t, k, 31));
    }
    ip += 13;
    NEXT();
}
    V_ALIAS(I8X16_SWIZZLE)
L_I8X16_SWIZZLE: {
    u8x16 k = VA(u8x16, 4);
    if (LIKELY(have_ssse3)) {
        /* Lanes >= 16 get bit 7 (pshufb's zero) by a saturating add; the rest keep their
         * low 4 bits. */
        u8x16 m = (u8x16)__builtin_ia32_paddusb128((v16qi)k, (v16qi)((u8x16){0} + 0x70));
        VSET(pshufb1(VA(u8x16, 3), m));
    } else {
        uint8_t t[32] = {0};
        vslot a = W(3);
        __builtin_memcpy(t, &a, 16);
        k = VSEL((u8x16)(k > 15), (u8x16){0} + 16, k); /* t[16] is a zero */
        uint8_t kb[16];
        __builtin_memcpy(kb, &k, 16);
        VSET(gather16(t, kb, 31));
    }
    ip += 5;
    NEXT();
}
    V_ALIAS(I8X16_SPLAT)
L_I8X16_SPLAT:
    VSET((u8x16){0} + (uint8_t)S(3));
    ip += 4;
    NEXT();
    V_ALIAS(I16X8_SPLAT)
L_I16X8_SPLAT:
    VSET((u16x8){0} + (uint16_t)S(3));
    ip += 4;
    NEXT();
    V_ALIAS(I32X4_SPLAT)
L_I32X4_SPLAT:
    V_ALIAS(F32X4_SPLAT)
L_F32X4_SPLAT:
    VSET((u32x4){0} + (uint32_t)S(3));
    ip += 4;
    NEXT();
    V_ALIAS(I64X2_SPLAT)
L_I64X2_SPLAT:
    V_ALIAS(F64X2_SPLAT)
L_F64X2_SPLAT:
    VSET((u64x2){0} + S(3));
    ip += 4;
    NEXT();
#define V_EXTRACT(name, T, conv)                                                       \
    L_##name : {                                                                       \
        T a = VA(T, 3);                                                                \
        S(2) = conv(a[ip[4]]);                                                         \
        ip += 5;                                                                       \
        NEXT();                                                                        \
    }
#define V_REPLACE(name, T, ST)                                                         \
    L_##name : {                                                                       \
        T r = VA(T, 3);                                                                \
        r[ip[5]] = (ST)S(4);                                                           \
        VSET(r);                                                                       \
        ip += 6;                                                                       \
        NEXT();                                                                        \
    }
    V_EXTRACT(I8X16_EXTRACT_LANE_S, i8x16, (uint32_t)(int32_t))
    V_EXTRACT(I8X16_EXTRACT_LANE_U, u8x16, (uint32_t))
    V_EXTRACT(I16X8_EXTRACT_LANE_S, i16x8, (uint32_t)(int32_t))
    V_EXTRACT(I16X8_EXTRACT_LANE_U, u16x8, (uint32_t))
    V_EXTRACT(I32X4_EXTRACT_LANE, u32x4, (uint32_t))
    V_EXTRACT(I64X2_EXTRACT_LANE, u64x2, (uint64_t))
    V_EXTRACT(F32X4_EXTRACT_LANE, u32x4, (uint32_t))
    V_EXTRACT(F64X2_EXTRACT_LANE, u64x2, (uint64_t))
    V_REPLACE(I8X16_REPLACE_LANE, u8x16, uint8_t)
    V_REPLACE(I16X8_REPLACE_LANE, u16x8, uint16_t)
    V_REPLACE(I32X4_REPLACE_LANE, u32x4, uint32_t)
    V_REPLACE(I64X2_REPLACE_LANE, u64x2, uint64_t)
    V_REPLACE(F32X4_REPLACE_LANE, u32x4, uint32_t)
    V_REPLACE(F64X2_REPLACE_LANE, u64x2, uint64_t)

    /* Comparisons: all-ones / all-zeros lanes. */
    V_BIN(I8X16_EQ, i8x16, i8x16, a == b)
    V_BIN(I8X16_NE, i8x16, i8x16, a != b)
    V_BIN(I8X16_LT_S, i8x16, i8x16, a < b)
    V_BIN(I8X16_LT_U, u8x16, i8x16, a < b)
    V_BIN(I8X16_GT_S, i8x16, i8x16, a > b)
    V_BIN(I8X16_GT_U, u8x16, i8x16, a > b)
    V_BIN(I8X16_LE_S, i8x16, i8x16, a <= b)
    V_BIN(I8X16_LE_U, u8x16, i8x16, a <= b)
    V_BIN(I8X16_GE_S, i8x16, i8x16, a >= b)
    V_BIN(I8X16_GE_U, u8x16, i8x16, a >= b)
    V_BIN(I16X8_EQ, i16x8, i16x8, a == b)
    V_BIN(I16X8_NE, i16x8, i16x8, a != b)
    V_BIN(I16X8_LT_S, i16x8, i16x8, a < b)
    V_BIN(I16X8_LT_U, u16x8, i16x8, a < b)
    V_BIN(I16X8_GT_S, i16x8, i16x8, a > b)
    V_BIN(I16X8_GT_U, u16x8, i16x8, a > b)
    V_BIN(I16X8_LE_S, i16x8, i16x8, a <= b)
    V_BIN(I16X8_LE_U, u16x8, i16x8, a <= b)
    V_BIN(I16X8_GE_S, i16x8, i16x8, a >= b)
    V_BIN(I16X8_GE_U, u16x8, i16x8, a >= b)
    V_BIN(I32X4_EQ, i32x4, i32x4, a == b)
    V_BIN(I32X4_NE, i32x4, i32x4, a != b)
    V_BIN(I32X4_LT_S, i32x4, i32x4, a < b)
    V_BIN(I32X4_LT_U, u32x4, i32x4, a < b)
    V_BIN(I32X4_GT_S, i32x4, i32x4, a > b)
    V_BIN(I32X4_GT_U, u32x4, i32x4, a > b)
    V_BIN(I32X4_LE_S, i32x4, i32x4, a <= b)
    V_BIN(I32X4_LE_U, u32x4, i32x4, a <= b)
    V_BIN(I32X4_GE_S, i32x4, i32x4, a >= b)
    V_BIN(I32X4_GE_U, u32x4, i32x4, a >= b)
    V_BIN(I64X2_EQ, i64x2, i64x2, a == b)
    V_BIN(I64X2_NE, i64x2, i64x2, a != b)
    V_BIN(I64X2_LT_S, i64x2, i64x2, a < b)
    V_BIN(I64X2_GT_S, i64x2, i64x2, a > b)
    V_BIN(I64X2_LE_S, i64x2, i64x2, a <= b)
    V_BIN(I64X2_GE_S, i64x2, i64x2, a >= b)
    /* Float comparisons are IEEE: false with a NaN operand, except ne. */
    V_BIN(F32X4_EQ, f32x4, i32x4, a == b)
    V_BIN(F32X4_NE, f32x4, i32x4, a != b)
    V_BIN(F32X4_LT, f32x4, i32x4, a < b)
    V_BIN(F32X4_GT, f32x4, i32x4, a > b)
    V_BIN(F32X4_LE, f32x4, i32x4, a <= b)
    V_BIN(F32X4_GE, f32x4, i32x4, a >= b)
    V_BIN(F64X2_EQ, f64x2, i64x2, a == b)
    V_BIN(F64X2_NE, f64x2, i64x2, a != b)
    V_BIN(F64X2_LT, f64x2, i64x2, a < b)
    V_BIN(F64X2_GT, f64x2, i64x2, a > b)
    V_BIN(F64X2_LE, f64x2, i64x2, a <= b)
    V_BIN(F64X2_GE, f64x2, i64x2, a >= b)

    /* Bitwise. */
    V_UN(V128_NOT, u64x2, u64x2, ~a)
    V_BIN(V128_AND, u64x2, u64x2, a & b)
    V_BIN(V128_ANDNOT, u64x2, u64x2, a & ~b)
    V_BIN(V128_OR, u64x2, u64x2, a | b)
    V_BIN(V128_XOR, u64x2, u64x2, a ^ b)
L_V128_BITSELECT: {
    u64x2 a = VA(u64x2, 3), b = VA(u64x2, 4), m = VA(u64x2, 5);
    VSET((a & m) | (b & ~m));
    ip += 6;
    NEXT();
}
    V_ALIAS(V128_ANY_TRUE)
L_V128_ANY_TRUE: {
    u64x2 a = VA(u64x2, 3);
    S(2) = (a[0] | a[1]) != 0;
    ip += 4;
    NEXT();
}

    /* Integer lanes: unsigned arithmetic wraps; signed forms widen first. */
    V_UN(I8X16_ABS, i8x16, u8x16, ((u8x16)a ^ (u8x16)(a < 0)) - (u8x16)(a < 0))
    V_UN(I8X16_NEG, u8x16, u8x16, (u8x16){0} - a)
    V_ALIAS(I8X16_POPCNT)
L_I8X16_POPCNT: {
    u8x16 x = VA(u8x16, 3);
    x = x - ((x >> 1) & 0x55);
    x = (x & 0x33) + ((x >> 2) & 0x33);
    x = (x + (x >> 4)) & 0x0f;
    VSET(x);
    ip += 4;
    NEXT();
}
    /* Scalar results from the sign bits (pmovmskb/movmskps/movmskpd). */
    V_REDUCE(I8X16_ALL_TRUE, i8x16, 0, no_zero_lane((v16qi)(a == 0)), (void)0)
    V_REDUCE(I16X8_ALL_TRUE, i16x8, 0, no_zero_lane((v16qi)(a == 0)), (void)0)
    V_REDUCE(I32X4_ALL_TRUE, i32x4, 0, no_zero_lane((v16qi)(a == 0)), (void)0)
    V_REDUCE(I64X2_ALL_TRUE, i64x2, 0, no_zero_lane((v16qi)(a == 0)), (void)0)
    V_REDUCE(I8X16_BITMASK, i8x16, 0, (uint32_t)__builtin_ia32_pmovmskb128((v16qi)a), (void)0)
    V_REDUCE(I16X8_BITMASK, i16x8, 0,
             (uint32_t)__builtin_ia32_pmovmskb128(__builtin_ia32_packsswb128((v8hi)a, (v8hi)a)) & 0xff,
             (void)0)
    V_REDUCE(I32X4_BITMASK, i32x4, 0, (uint32_t)__builtin_ia32_movmskps((v4sf)a), (void)0)
    V_REDUCE(I64X2_BITMASK, i64x2, 0, (uint32_t)__builtin_ia32_movmskpd((v2df)a), (void)0)
    /* Saturating narrowing: packsswb/packuswb/packssdw are exactly Wasm's. */
    V_BIN(I8X16_NARROW_I16X8_S, i16x8, v16qi, __builtin_ia32_packsswb128((v8hi)a, (v8hi)b))
    V_BIN(I8X16_NARROW_I16X8_U, i16x8, v16qi, __builtin_ia32_packuswb128((v8hi)a, (v8hi)b))
    V_BIN(I16X8_NARROW_I32X4_S, i32x4, v8hi, __builtin_ia32_packssdw128((v4si)a, (v4si)b))
    V_BIN(I16X8_NARROW_I32X4_U, i32x4, i16x8, narrow32_u(a, b))
    V_SHIFT(I8X16_SHL, u8x16, 8, <<)
    V_SHIFT(I8X16_SHR_S, i8x16, 8, >>)
    V_SHIFT(I8X16_SHR_U, u8x16, 8, >>)
    V_SHIFT(I16X8_SHL, u16x8, 16, <<)
    V_SHIFT(I16X8_SHR_S, i16x8, 16, >>)
    V_SHIFT(I16X8_SHR_U, u16x8, 16, >>)
    V_SHIFT(I32X4_SHL, u32x4, 32, <<)
    V_SHIFT(I32X4_SHR_S, i32x4, 32, >>)
    V_SHIFT(I32X4_SHR_U, u32x4, 32, >>)
    V_SHIFT(I64X2_SHL, u64x2, 64, <<)
    V_SHIFT(I64X2_SHR_S, i64x2, 64, >>)
    V_SHIFT(I64X2_SHR_U, u64x2, 64, >>)
    V_SHIFT_I(I8X16_SHL, u8x16, 8, <<)
    V_SHIFT_I(I8X16_SHR_S, i8x16, 8, >>)
    V_SHIFT_I(I8X16_SHR_U, u8x16, 8, >>)
    V_SHIFT_I(I16X8_SHL, u16x8, 16, <<)
    V_SHIFT_I(I16X8_SHR_S, i16x8, 16, >>)
    V_SHIFT_I(I16X8_SHR_U, u16x8, 16, >>)
    V_SHIFT_I(I32X4_SHL, u32x4, 32, <<)
    V_SHIFT_I(I32X4_SHR_S, i32x4, 32, >>)
    V_SHIFT_I(I32X4_SHR_U, u32x4, 32, >>)
    V_SHIFT_I(I64X2_SHL, u64x2, 64, <<)
    V_SHIFT_I(I64X2_SHR_S, i64x2, 64, >>)
    V_SHIFT_I(I64X2_SHR_U, u64x2, 64, >>)
    V_BIN(I8X16_ADD, u8x16, u8x16, a + b)
    V_BIN(I8X16_ADD_SAT_S, v16qi, v16qi, __builtin_ia32_paddsb128(a, b))
    V_BIN(I8X16_ADD_SAT_U, v16qi, v16qi, __builtin_ia32_paddusb128(a, b))
    V_BIN(I8X16_SUB, u8x16, u8x16, a - b)
    V_BIN(I8X16_SUB_SAT_S, v16qi, v16qi, __builtin_ia32_psubsb128(a, b))
    V_BIN(I8X16_SUB_SAT_U, v16qi, v16qi, __builtin_ia32_psubusb128(a, b))
    V_BINL(I8X16_MIN_S, i8x16, i8x16, 16, a[i] < b[i] ? a[i] : b[i])
    V_BINL(I8X16_MIN_U, u8x16, u8x16, 16, a[i] < b[i] ? a[i] : b[i])
    V_BINL(I8X16_MAX_S, i8x16, i8x16, 16, a[i] > b[i] ? a[i] : b[i])
    V_BINL(I8X16_MAX_U, u8x16, u8x16, 16, a[i] > b[i] ? a[i] : b[i])
    V_BINL(I8X16_AVGR_U, u8x16, u8x16, 16, (uint8_t)((a[i] + b[i] + 1) >> 1))
    /* Pairwise: the even lanes (low halves of the wide lanes) plus the odd ones. */
    V_UN(I16X8_EXTADD_PAIRWISE_I8X16_S, i16x8, u16x8, (u16x8)(((i16x8)((u16x8)a << 8) >> 8) + (a >> 8)))
    V_UN(I16X8_EXTADD_PAIRWISE_I8X16_U, u16x8, u16x8, (a & 0xff) + (a >> 8))
    V_UN(I32X4_EXTADD_PAIRWISE_I16X8_S, i32x4, u32x4, (u32x4)(((i32x4)((u32x4)a << 16) >> 16) + (a >> 16)))
    V_UN(I32X4_EXTADD_PAIRWISE_I16X8_U, u32x4, u32x4, (a & 0xffff) + (a >> 16))
    V_UN(I16X8_ABS, i16x8, u16x8, ((u16x8)a ^ (u16x8)(a < 0)) - (u16x8)(a < 0))
    V_UN(I16X8_NEG, u16x8, u16x8, (u16x8){0} - a)
    V_BINL(I16X8_Q15MULR_SAT_S, i16x8, i16x8, 8, (int16_t)sat_s16((a[i] * b[i] + 0x4000) >> 15))
    V_UN(I16X8_EXTEND_LOW_I8X16_S, i8x16, u16x8, ext8(a, 1, 0))
    V_UN(I16X8_EXTEND_HIGH_I8X16_S, i8x16, u16x8, ext8(a, 1, 1))
    V_UN(I16X8_EXTEND_LOW_I8X16_U, i8x16, u16x8, ext8(a, 0, 0))
    V_UN(I16X8_EXTEND_HIGH_I8X16_U, i8x16, u16x8, ext8(a, 0, 1))
    V_BIN(I16X8_ADD, u16x8, u16x8, a + b)
    V_BIN(I16X8_ADD_SAT_S, v8hi, v8hi, __builtin_ia32_paddsw128(a, b))
    V_BIN(I16X8_ADD_SAT_U, v8hi, v8hi, __builtin_ia32_paddusw128(a, b))
    V_BIN(I16X8_SUB, u16x8, u16x8, a - b)
    V_BIN(I16X8_SUB_SAT_S, v8hi, v8hi, __builtin_ia32_psubsw128(a, b))
    V_BIN(I16X8_SUB_SAT_U, v8hi, v8hi, __builtin_ia32_psubusw128(a, b))
    V_BIN(I16X8_MUL, u16x8, u16x8, a * b)
    V_BINL(I16X8_MIN_S, i16x8, i16x8, 8, a[i] < b[i] ? a[i] : b[i])
    V_BINL(I16X8_MIN_U, u16x8, u16x8, 8, a[i] < b[i] ? a[i] : b[i])
    V_BINL(I16X8_MAX_S, i16x8, i16x8, 8, a[i] > b[i] ? a[i] : b[i])
    V_BINL(I16X8_MAX_U, u16x8, u16x8, 8, a[i] > b[i] ? a[i] : b[i])
    V_BINL(I16X8_AVGR_U, u16x8, u16x8, 8, (uint16_t)(((uint32_t)a[i] + b[i] + 1) >> 1))
    /* Extended multiplies: the wrapped product of the widened lanes is exact. */
    V_BIN(I16X8_EXTMUL_LOW_I8X16_S, i8x16, u16x8, ext8(a, 1, 0) * ext8(b, 1, 0))
    V_BIN(I16X8_EXTMUL_HIGH_I8X16_S, i8x16, u16x8, ext8(a, 1, 1) * ext8(b, 1, 1))
    V_BIN(I16X8_EXTMUL_LOW_I8X16_U, i8x16, u16x8, ext8(a, 0, 0) * ext8(b, 0, 0))
    V_BIN(I16X8_EXTMUL_HIGH_I8X16_U, i8x16, u16x8, ext8(a, 0, 1) * ext8(b, 0, 1))
    V_UN(I32X4_ABS, i32x4, u32x4, ((u32x4)a ^ (u32x4)(a < 0)) - (u32x4)(a < 0))
    V_UN(I32X4_NEG, u32x4, u32x4, (u32x4){0} - a)
    V_UN(I32X4_EXTEND_LOW_I16X8_S, i16x8, u32x4, ext16(a, 1, 0))
    V_UN(I32X4_EXTEND_HIGH_I16X8_S, i16x8, u32x4, ext16(a, 1, 1))
    V_UN(I32X4_EXTEND_LOW_I16X8_U, i16x8, u32x4, ext16(a, 0, 0))
    V_UN(I32X4_EXTEND_HIGH_I16X8_U, i16x8, u32x4, ext16(a, 0, 1))
    V_BIN(I32X4_ADD, u32x4, u32x4, a + b)
    V_BIN(I32X4_SUB, u32x4, u32x4, a - b)
    V_BIN(I32X4_MUL, u32x4, u32x4, a * b)
    V_BINL(I32X4_MIN_S, i32x4, i32x4, 4, a[i] < b[i] ? a[i] : b[i])
    V_BINL(I32X4_MIN_U, u32x4, u32x4, 4, a[i] < b[i] ? a[i] : b[i])
    V_BINL(I32X4_MAX_S, i32x4, i32x4, 4, a[i] > b[i] ? a[i] : b[i])
    V_BINL(I32X4_MAX_U, u32x4, u32x4, 4, a[i] > b[i] ? a[i] : b[i])
    /* pmaddwd: the sum of the two products wraps to 0x80000000 as Wasm's does. */
    V_BIN(I32X4_DOT_I16X8_S, v8hi, v4si, __builtin_ia32_pmaddwd128(a, b))
    V_BIN(I32X4_EXTMUL_LOW_I16X8_S, i16x8, u32x4, ext16(a, 1, 0) * ext16(b, 1, 0))
    V_BIN(I32X4_EXTMUL_HIGH_I16X8_S, i16x8, u32x4, ext16(a, 1, 1) * ext16(b, 1, 1))
    V_BIN(I32X4_EXTMUL_LOW_I16X8_U, i16x8, u32x4, ext16(a, 0, 0) * ext16(b, 0, 0))
    V_BIN(I32X4_EXTMUL_HIGH_I16X8_U, i16x8, u32x4, ext16(a, 0, 1) * ext16(b, 0, 1))
    V_UN(I64X2_ABS, i64x2, u64x2, ((u64x2)a ^ (u64x2)(a < 0)) - (u64x2)(a < 0))
    V_UN(I64X2_NEG, u64x2, u64x2, (u64x2){0} - a)
    V_UN(I64X2_EXTEND_LOW_I32X4_S, i32x4, u64x2, ext32(a, 1, 0))
    V_UN(I64X2_EXTEND_HIGH_I32X4_S, i32x4, u64x2, ext32(a, 1, 1))
    V_UN(I64X2_EXTEND_LOW_I32X4_U, i32x4, u64x2, ext32(a, 0, 0))
    V_UN(I64X2_EXTEND_HIGH_I32X4_U, i32x4, u64x2, ext32(a, 0, 1))
    V_BIN(I64X2_ADD, u64x2, u64x2, a + b)
    V_BIN(I64X2_SUB, u64x2, u64x2, a - b)
    V_BIN(I64X2_MUL, u64x2, u64x2, a * b)
    V_BIN(I64X2_EXTMUL_LOW_I32X4_S, i32x4, u64x2, ext32(a, 1, 0) * ext32(b, 1, 0))
    V_BIN(I64X2_EXTMUL_HIGH_I32X4_S, i32x4, u64x2, ext32(a, 1, 1) * ext32(b, 1, 1))
    V_BIN(I64X2_EXTMUL_LOW_I32X4_U, i32x4, u64x2, ext32(a, 0, 0) * ext32(b, 0, 0))
    V_BIN(I64X2_EXTMUL_HIGH_I32X4_U, i32x4, u64x2, ext32(a, 0, 1) * ext32(b, 0, 1))

    /* Float lanes. */
    V_UN(F32X4_ABS, u32x4, u32x4, a & 0x7fffffffu)
    V_UN(F32X4_NEG, u32x4, u32x4, a ^ 0x80000000u)
    V_UN(F64X2_ABS, u64x2, u64x2, a & 0x7fffffffffffffffull)
    V_UN(F64X2_NEG, u64x2, u64x2, a ^ 0x8000000000000000ull)
    V_UNL(F32X4_SQRT, u32x4, u32x4, 4, (uint32_t)of_f32(f32_sqrt(lane_f32(a[i]))))
    V_UNL(F64X2_SQRT, u64x2, u64x2, 2, of_f64(f64_sqrt(lane_f64(a[i]))))
    V_UN(F32X4_CEIL, f32x4, u32x4, f32x4_round(a, RND_CEIL))
    V_UN(F32X4_FLOOR, f32x4, u32x4, f32x4_round(a, RND_FLOOR))
    V_UN(F32X4_TRUNC, f32x4, u32x4, f32x4_round(a, RND_TRUNC))
    V_UN(F32X4_NEAREST, f32x4, u32x4, f32x4_round(a, RND_NEAREST))
    V_UN(F64X2_CEIL, f64x2, u64x2, f64x2_round(a, RND_CEIL))
    V_UN(F64X2_FLOOR, f64x2, u64x2, f64x2_round(a, RND_FLOOR))
    V_UN(F64X2_TRUNC, f64x2, u64x2, f64x2_round(a, RND_TRUNC))
    V_UN(F64X2_NEAREST, f64x2, u64x2, f64x2_round(a, RND_NEAREST))
    V_BIN(F32X4_ADD, f32x4, f32x4, a + b)
    V_BIN(F32X4_SUB, f32x4, f32x4, a - b)
    V_BIN(F32X4_MUL, f32x4, f32x4, a * b)
    V_BIN(F32X4_DIV, f32x4, f32x4, a / b)
    V_BIN(F64X2_ADD, f64x2, f64x2, a + b)
    V_BIN(F64X2_SUB, f64x2, f64x2, a - b)
    V_BIN(F64X2_MUL, f64x2, f64x2, a * b)
    V_BIN(F64X2_DIV, f64x2, f64x2, a / b)
    V_BIN(F32X4_MIN, f32x4, u32x4, f32x4_min(a, b))
    V_BIN(F32X4_MAX, f32x4, u32x4, f32x4_max(a, b))
    V_BIN(F64X2_MIN, f64x2, u64x2, f64x2_min(a, b))
    V_BIN(F64X2_MAX, f64x2, u64x2, f64x2_max(a, b))
    /* pmin: b < a ? b : a; pmax: a < b ? b : a (operands' bits returned as they are). */
    V_BIN(F32X4_PMIN, f32x4, u32x4, VSEL((u32x4)(b < a), (u32x4)b, (u32x4)a))
    V_BIN(F32X4_PMAX, f32x4, u32x4, VSEL((u32x4)(a < b), (u32x4)b, (u32x4)a))
    V_BIN(F64X2_PMIN, f64x2, u64x2, VSEL((u64x2)(b < a), (u64x2)b, (u64x2)a))
    V_BIN(F64X2_PMAX, f64x2, u64x2, VSEL((u64x2)(a < b), (u64x2)b, (u64x2)a))

    /* d = a + x * y, rounded twice as in Wasm (no contraction into an FMA). */
L_F32X4_ADD_MUL: {
    f32x4 t = VA(f32x4, 4) * VA(f32x4, 5);
    __asm__("" : "+x"(t));
    VSET(VA(f32x4, 3) + t);
    ip += 6;
    NEXT();
}
L_F64X2_ADD_MUL: {
    f64x2 t = VA(f64x2, 4) * VA(f64x2, 5);
    __asm__("" : "+x"(t));
    VSET(VA(f64x2, 3) + t);
    ip += 6;
    NEXT();
}

    /* SIMD_PAIRS (ops.h): two instructions in one; the first's result is written to its
     * slot (it may be a local read later) and used from the register. */
#define F_K_BODY(T, expr, X) /* d1 k0..k3 d2 x: d1 = K; d2 = x op K */                 \
    {                                                                                  \
        T b;                                                                           \
        __builtin_memcpy(&b, ip + 3, 16);                                              \
        W(2) = (vslot)b;                                                               \
        T a = (X);                                                                     \
        VSETF(7, (T)(expr));                                                           \
        ip += 9;                                                                       \
        NEXT();                                                                        \
    }
#define F_K(name, T, expr)                                                             \
    L_K_##name##_P : L_K_##name : F_K_BODY(T, expr, VA(T, 8))                           \
    L_K_##name##_X : F_K_BODY(T, expr, ACC(T))
    F_K(I8X16_ADD, u8x16, a + b)
    F_K(I16X8_ADD, u16x8, a + b)
    F_K(I32X4_ADD, u32x4, a + b)
    F_K(I16X8_MUL, u16x8, a * b)
    F_K(I32X4_MUL, u32x4, a * b)
    F_K(V128_AND, u64x2, a & b)
    F_K(V128_OR, u64x2, a | b)
    F_K(V128_XOR, u64x2, a ^ b)
    F_K(I8X16_SUB, u8x16, a - b)
    F_K(I16X8_SUB, u16x8, a - b)
    F_K(I32X4_SUB, u32x4, a - b)
    F_K(V128_ANDNOT, u64x2, a & ~b)
#define F_SH_BODY(T, expr, ST, bits, A) /* d1 a b d2 k: d2 = (a op b) >> k */         \
    {                                                                                  \
        T a = (A), b = VA(T, 4);                                                       \
        T r = (T)(expr);                                                               \
        W(2) = (vslot)r;                                                               \
        VSETF(5, (ST)r >> (int)(ip[6] & ((bits) - 1)));                                \
        ip += 7;                                                                       \
        NEXT();                                                                        \
    }
#define F_SH(name, T, expr, ST, bits)                                                  \
    L_##name##_X : L_##name : F_SH_BODY(T, expr, ST, bits, VA(T, 3))                   \
    L_##name##_P : F_SH_BODY(T, expr, ST, bits, ACC(T))
    F_SH(I16X8_ADD_SHR_U, u16x8, a + b, u16x8, 16)
    F_SH(I16X8_ADD_SHR_S, u16x8, a + b, i16x8, 16)
    F_SH(I16X8_SUB_SHR_U, u16x8, a - b, u16x8, 16)
    F_SH(I16X8_SUB_SHR_S, u16x8, a - b, i16x8, 16)
    F_SH(I16X8_MUL_SHR_U, u16x8, a * b, u16x8, 16)
    F_SH(I16X8_MUL_SHR_S, u16x8, a * b, i16x8, 16)
    F_SH(I32X4_ADD_SHR_U, u32x4, a + b, u32x4, 32)
    F_SH(I32X4_ADD_SHR_S, u32x4, a + b, i32x4, 32)
    F_SH(I32X4_SUB_SHR_U, u32x4, a - b, u32x4, 32)
    F_SH(I32X4_SUB_SHR_S, u32x4, a - b, i32x4, 32)
    F_SH(I32X4_MUL_SHR_U, u32x4, a * b, u32x4, 32)
    F_SH(I32X4_MUL_SHR_S, u32x4, a * b, i32x4, 32)
#define F_ADD2_BODY(T, R, expr, A, X) /* d1 a b d2 x: d2 = x + (a op b) (wrapping) */  \
    {                                                                                  \
        T a = (A), b = VA(T, 4);                                                       \
        R r = (R)(expr);                                                               \
        W(2) = (vslot)r; /* before x is read: x may be that slot */                    \
        R x = (X);                                                                     \
        VSETF(5, r + x);                                                               \
        ip += 7;                                                                       \
        NEXT();                                                                        \
    }
#define F_ADD2(name, T, R, expr)                                                       \
    L_##name : F_ADD2_BODY(T, R, expr, VA(T, 3), VA(R, 6))                             \
    L_##name##_P : F_ADD2_BODY(T, R, expr, ACC(T), VA(R, 6))                           \
    L_##name##_X : F_ADD2_BODY(T, R, expr, VA(T, 3), ACC(R))
    F_ADD2(ADD_I16X8_EXTMUL_LOW_S, i8x16, u16x8, ext8(a, 1, 0) * ext8(b, 1, 0))
    F_ADD2(ADD_I16X8_EXTMUL_HIGH_S, i8x16, u16x8, ext8(a, 1, 1) * ext8(b, 1, 1))
    F_ADD2(ADD_I16X8_EXTMUL_LOW_U, i8x16, u16x8, ext8(a, 0, 0) * ext8(b, 0, 0))
    F_ADD2(ADD_I16X8_EXTMUL_HIGH_U, i8x16, u16x8, ext8(a, 0, 1) * ext8(b, 0, 1))
    F_ADD2(ADD_I32X4_EXTMUL_LOW_S, i16x8, u32x4, ext16(a, 1, 0) * ext16(b, 1, 0))
    F_ADD2(ADD_I32X4_EXTMUL_HIGH_S, i16x8, u32x4, ext16(a, 1, 1) * ext16(b, 1, 1))
    F_ADD2(ADD_I32X4_EXTMUL_LOW_U, i16x8, u32x4, ext16(a, 0, 0) * ext16(b, 0, 0))
    F_ADD2(ADD_I32X4_EXTMUL_HIGH_U, i16x8, u32x4, ext16(a, 0, 1) * ext16(b, 0, 1))
#define F_UN2_BODY(T, R, expr, op, A, X) /* d1 a d2 x: d2 = x op f(a) (wrapping) */    \
    {                                                                                  \
        T a = (A);                                                                     \
        R r = (R)(expr);                                                               \
        W(2) = (vslot)r; /* before x is read: x may be that slot */                    \
        R x = (X);                                                                     \
        VSETF(4, r op x);                                                              \
        ip += 6;                                                                       \
        NEXT();                                                                        \
    }
#define F_UN2(name, T, R, expr, op)                                                    \
    L_##name : F_UN2_BODY(T, R, expr, op, VA(T, 3), VA(R, 5))                          \
    L_##name##_P : F_UN2_BODY(T, R, expr, op, ACC(T), VA(R, 5))                        \
    L_##name##_X : F_UN2_BODY(T, R, expr, op, VA(T, 3), ACC(R))
    F_UN2(MUL_I16X8_EXTEND_LOW_S, i8x16, u16x8, ext8(a, 1, 0), *)
    F_UN2(MUL_I16X8_EXTEND_HIGH_S, i8x16, u16x8, ext8(a, 1, 1), *)
    F_UN2(MUL_I16X8_EXTEND_LOW_U, i8x16, u16x8, ext8(a, 0, 0), *)
    F_UN2(MUL_I16X8_EXTEND_HIGH_U, i8x16, u16x8, ext8(a, 0, 1), *)
    F_UN2(ADD_I16X8_EXTEND_LOW_S, i8x16, u16x8, ext8(a, 1, 0), +)
    F_UN2(ADD_I16X8_EXTEND_HIGH_S, i8x16, u16x8, ext8(a, 1, 1), +)
    F_UN2(ADD_I16X8_EXTEND_LOW_U, i8x16, u16x8, ext8(a, 0, 0), +)
    F_UN2(ADD_I16X8_EXTEND_HIGH_U, i8x16, u16x8, ext8(a, 0, 1), +)
    F_UN2(MUL_I32X4_EXTEND_LOW_S, i16x8, u32x4, ext16(a, 1, 0), *)
    F_UN2(MUL_I32X4_EXTEND_HIGH_S, i16x8, u32x4, ext16(a, 1, 1), *)
    F_UN2(MUL_I32X4_EXTEND_LOW_U, i16x8, u32x4, ext16(a, 0, 0), *)
    F_UN2(MUL_I32X4_EXTEND_HIGH_U, i16x8, u32x4, ext16(a, 0, 1), *)
    F_UN2(ADD_I32X4_EXTEND_LOW_S, i16x8, u32x4, ext16(a, 1, 0), +)
    F_UN2(ADD_I32X4_EXTEND_HIGH_S, i16x8, u32x4, ext16(a, 1, 1), +)
    F_UN2(ADD_I32X4_EXTEND_LOW_U, i16x8, u32x4, ext16(a, 0, 0), +)
    F_UN2(ADD_I32X4_EXTEND_HIGH_U, i16x8, u32x4, ext16(a, 0, 1), +)

    /* Conversions. */
    V_UN(I32X4_TRUNC_SAT_F32X4_S, f32x4, i32x4, f32x4_trunc_sat_s(a))
    V_UN(I32X4_TRUNC_SAT_F32X4_U, f32x4, u32x4, f32x4_trunc_sat_u(a))
    V_UNL(I32X4_TRUNC_SAT_F64X2_S_ZERO, u64x2, i32x4, 2, i32_sat_f64_s(lane_f64(a[i])))
    V_UNL(I32X4_TRUNC_SAT_F64X2_U_ZERO, u64x2, u32x4, 2, i32_sat_f64_u(lane_f64(a[i])))
    V_UNL(F32X4_CONVERT_I32X4_S, i32x4, f32x4, 4, (float)a[i])
    V_UNL(F32X4_CONVERT_I32X4_U, u32x4, f32x4, 4, (float)a[i])
    V_UNL(F64X2_CONVERT_LOW_I32X4_S, i32x4, f64x2, 2, (double)a[i])
    V_UNL(F64X2_CONVERT_LOW_I32X4_U, u32x4, f64x2, 2, (double)a[i])
    V_UNL(F32X4_DEMOTE_F64X2_ZERO, f64x2, f32x4, 2, (float)a[i])
    V_UNL(F64X2_PROMOTE_LOW_F32X4, f32x4, f64x2, 2, (double)a[i])

#undef VA
#undef VSET
#undef VSETF
#undef ACC
#undef V_UN_BODY
#undef V_BIN_BODY
#undef V_ALIAS
#undef LANES
#undef V_UN
#undef V_BIN
#undef V_UNL
#undef V_BINL
#undef V_REDUCE
#undef V_SHIFT
#undef V_SHIFT_I
#undef V_SHIFT_I_BODY
#undef ADDR
#undef LDV
#undef F_K
#undef F_K_BODY
#undef F_SH_BODY
#undef F_ADD2_BODY
#undef F_UN2_BODY
#undef F_SH
#undef F_ADD2
#undef F_UN2
#undef V_LOAD_EXT
#undef V_LOAD_SPLAT
#undef V_LOAD_LANE
#undef V_STORE_LANE
#undef V_EXTRACT
#undef V_REPLACE
#endif /* SIMD_HANDLERS */
