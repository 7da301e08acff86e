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

/* Float lanes by their bits (so that NaN payloads pass through untouched). */
static inline float lane_f32(uint32_t b) { return f32_of(b); }
static inline double lane_f64(uint64_t b) { return f64_of(b); }
#endif /* SIMD_HELPERS */

#ifdef SIMD_HANDLERS
/* Operand access: the slot of field i as a vector of type T; the result slot. */
#define VA(T, i) ((T)W(i))
#define VSET(r) (W(2) = (vslot)(r))
/* A result built lane by lane: the vector and its lanes as an array (GCC warns falsely
 * about element stores into a vector in a loop). */
#define LANES(R)                                                                       \
    union {                                                                            \
        R v;                                                                           \
        __typeof__(((R){0})[0]) e[16 / sizeof(((R){0})[0])];                          \
    }
/* Whole-vector forms (expr over a, b), lane loops (expr over a[i], b[i]). */
#define V_UN(name, T, R, expr)                                                         \
    L_##name : {                                                                       \
        T a = VA(T, 3);                                                                \
        R r = (expr);                                                                  \
        VSET(r);                                                                       \
        ip += 4;                                                                       \
        NEXT();                                                                        \
    }
#define V_BIN(name, T, R, expr)                                                        \
    L_##name : {                                                                       \
        T a = VA(T, 3), b = VA(T, 4);                                                  \
        R r = (R)(expr);                                                               \
        VSET(r);                                                                       \
        ip += 5;                                                                       \
        NEXT();                                                                        \
    }
#define V_UNL(name, T, R, N, expr)                                                     \
    L_##name : {                                                                       \
        T a = VA(T, 3);                                                                \
        LANES(R) r = {{0}};                                                            \
        for (int i = 0; i < (N); i++) r.e[i] = (expr);                                 \
        VSET(r.v);                                                                     \
        ip += 4;                                                                       \
        NEXT();                                                                        \
    }
#define V_BINL(name, T, R, N, expr)                                                    \
    L_##name : {                                                                       \
        T a = VA(T, 3), b = VA(T, 4);                                                  \
        LANES(R) r = {{0}};                                                            \
        for (int i = 0; i < (N); i++) r.e[i] = (expr);                                 \
        VSET(r.v);                                                                     \
        ip += 5;                                                                       \
        NEXT();                                                                        \
    }
/* A scalar result (any_true, all_true, bitmask) from a lane loop accumulating into s. */
#define V_REDUCE(name, T, N, init, step)                                               \
    L_##name : {                                                                       \
        T a = VA(T, 3);                                                                \
        uint32_t s = (init);                                                           \
        for (int i = 0; i < (N); i++) step;                                            \
        S(2) = s;                                                                      \
        ip += 4;                                                                       \
        NEXT();                                                                        \
    }
#define V_SHIFT(name, T, bits, op)                                                     \
    L_##name : {                                                                       \
        T a = VA(T, 3);                                                                \
        T r = a op(int)(U32(4) & ((bits) - 1));                                        \
        VSET(r);                                                                       \
        ip += 5;                                                                       \
        NEXT();                                                                        \
    }
#define ADDR(k) (mem + (uint64_t)U32(k))

    /* Memory: d a off. */
L_V128_LOAD: {
    vslot v;
    __builtin_memcpy(&v, ADDR(3) + ip[4], 16);
    W(2) = v;
    ip += 5;
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
L_V128_STORE: { /* a v off: one 16-byte store (no partial write before a fault) */
    vslot v = W(3);
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
    u32x4 r = {ip[3], ip[4], ip[5], ip[6]};
    VSET(r);
    ip += 7;
    NEXT();
}
L_I8X16_SHUFFLE: {
    uint8_t t[32], k[16];
    u8x16 r;
    vslot a = W(3), b = W(4);
    __builtin_memcpy(t, &a, 16);
    __builtin_memcpy(t + 16, &b, 16);
    __builtin_memcpy(k, ip + 5, 16);
    for (int i = 0; i < 16; i++) r[i] = t[k[i] & 31];
    VSET(r);
    ip += 9;
    NEXT();
}
    V_BINL(I8X16_SWIZZLE, u8x16, u8x16, 16, b[i] < 16 ? a[b[i] & 15] : 0)
L_I8X16_SPLAT:
    VSET((u8x16){0} + (uint8_t)S(3));
    ip += 4;
    NEXT();
L_I16X8_SPLAT:
    VSET((u16x8){0} + (uint16_t)S(3));
    ip += 4;
    NEXT();
L_I32X4_SPLAT:
L_F32X4_SPLAT:
    VSET((u32x4){0} + (uint32_t)S(3));
    ip += 4;
    NEXT();
L_I64X2_SPLAT:
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
L_V128_ANY_TRUE: {
    u64x2 a = VA(u64x2, 3);
    S(2) = (a[0] | a[1]) != 0;
    ip += 4;
    NEXT();
}

    /* Integer lanes: unsigned arithmetic wraps; signed forms widen first. */
    V_UNL(I8X16_ABS, i8x16, u8x16, 16, (uint8_t)(a[i] < 0 ? -a[i] : a[i]))
    V_UN(I8X16_NEG, u8x16, u8x16, (u8x16){0} - a)
L_I8X16_POPCNT: {
    u8x16 x = VA(u8x16, 3);
    x = x - ((x >> 1) & 0x55);
    x = (x & 0x33) + ((x >> 2) & 0x33);
    x = (x + (x >> 4)) & 0x0f;
    VSET(x);
    ip += 4;
    NEXT();
}
    V_REDUCE(I8X16_ALL_TRUE, u8x16, 16, 1, s &= a[i] != 0)
    V_REDUCE(I8X16_BITMASK, u8x16, 16, 0, s |= (uint32_t)(a[i] >> 7) << i)
    V_REDUCE(I16X8_ALL_TRUE, u16x8, 8, 1, s &= a[i] != 0)
    V_REDUCE(I16X8_BITMASK, u16x8, 8, 0, s |= (uint32_t)(a[i] >> 15) << i)
    V_REDUCE(I32X4_ALL_TRUE, u32x4, 4, 1, s &= a[i] != 0)
    V_REDUCE(I32X4_BITMASK, u32x4, 4, 0, s |= (a[i] >> 31) << i)
    V_REDUCE(I64X2_ALL_TRUE, u64x2, 2, 1, s &= a[i] != 0)
    V_REDUCE(I64X2_BITMASK, u64x2, 2, 0, s |= (uint32_t)(a[i] >> 63) << i)
    V_BINL(I8X16_NARROW_I16X8_S, i16x8, i8x16, 16, (int8_t)sat_s8(i < 8 ? a[i] : b[i - 8]))
    V_BINL(I8X16_NARROW_I16X8_U, i16x8, u8x16, 16, (uint8_t)sat_u8(i < 8 ? a[i] : b[i - 8]))
    V_BINL(I16X8_NARROW_I32X4_S, i32x4, i16x8, 8, (int16_t)sat_s16(i < 4 ? a[i] : b[i - 4]))
    V_BINL(I16X8_NARROW_I32X4_U, i32x4, u16x8, 8, (uint16_t)sat_u16(i < 4 ? a[i] : b[i - 4]))
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
    V_BIN(I8X16_ADD, u8x16, u8x16, a + b)
    V_BINL(I8X16_ADD_SAT_S, i8x16, i8x16, 16, (int8_t)sat_s8(a[i] + b[i]))
    V_BINL(I8X16_ADD_SAT_U, u8x16, u8x16, 16, (uint8_t)sat_u8(a[i] + b[i]))
    V_BIN(I8X16_SUB, u8x16, u8x16, a - b)
    V_BINL(I8X16_SUB_SAT_S, i8x16, i8x16, 16, (int8_t)sat_s8(a[i] - b[i]))
    V_BINL(I8X16_SUB_SAT_U, u8x16, u8x16, 16, (uint8_t)sat_u8(a[i] - b[i]))
    V_BINL(I8X16_MIN_S, i8x16, i8x16, 16, a[i] < b[i] ? a[i] : b[i])
    V_BINL(I8X16_MIN_U, u8x16, u8x16, 16, a[i] < b[i] ? a[i] : b[i])
    V_BINL(I8X16_MAX_S, i8x16, i8x16, 16, a[i] > b[i] ? a[i] : b[i])
    V_BINL(I8X16_MAX_U, u8x16, u8x16, 16, a[i] > b[i] ? a[i] : b[i])
    V_BINL(I8X16_AVGR_U, u8x16, u8x16, 16, (uint8_t)((a[i] + b[i] + 1) >> 1))
    V_UNL(I16X8_EXTADD_PAIRWISE_I8X16_S, i8x16, i16x8, 8, (int16_t)(a[2 * i] + a[2 * i + 1]))
    V_UNL(I16X8_EXTADD_PAIRWISE_I8X16_U, u8x16, u16x8, 8, (uint16_t)(a[2 * i] + a[2 * i + 1]))
    V_UNL(I32X4_EXTADD_PAIRWISE_I16X8_S, i16x8, i32x4, 4, a[2 * i] + a[2 * i + 1])
    V_UNL(I32X4_EXTADD_PAIRWISE_I16X8_U, u16x8, u32x4, 4, (uint32_t)a[2 * i] + a[2 * i + 1])
    V_UNL(I16X8_ABS, i16x8, u16x8, 8, (uint16_t)(a[i] < 0 ? -a[i] : a[i]))
    V_UN(I16X8_NEG, u16x8, u16x8, (u16x8){0} - a)
    V_BINL(I16X8_Q15MULR_SAT_S, i16x8, i16x8, 8, (int16_t)sat_s16((a[i] * b[i] + 0x4000) >> 15))
    V_UNL(I16X8_EXTEND_LOW_I8X16_S, i8x16, i16x8, 8, a[i])
    V_UNL(I16X8_EXTEND_HIGH_I8X16_S, i8x16, i16x8, 8, a[i + 8])
    V_UNL(I16X8_EXTEND_LOW_I8X16_U, u8x16, u16x8, 8, a[i])
    V_UNL(I16X8_EXTEND_HIGH_I8X16_U, u8x16, u16x8, 8, a[i + 8])
    V_BIN(I16X8_ADD, u16x8, u16x8, a + b)
    V_BINL(I16X8_ADD_SAT_S, i16x8, i16x8, 8, (int16_t)sat_s16(a[i] + b[i]))
    V_BINL(I16X8_ADD_SAT_U, u16x8, u16x8, 8, (uint16_t)sat_u16(a[i] + b[i]))
    V_BIN(I16X8_SUB, u16x8, u16x8, a - b)
    V_BINL(I16X8_SUB_SAT_S, i16x8, i16x8, 8, (int16_t)sat_s16(a[i] - b[i]))
    V_BINL(I16X8_SUB_SAT_U, u16x8, u16x8, 8, (uint16_t)sat_u16(a[i] - b[i]))
    V_BIN(I16X8_MUL, u16x8, u16x8, a * b)
    V_BINL(I16X8_MIN_S, i16x8, i16x8, 8, a[i] < b[i] ? a[i] : b[i])
    V_BINL(I16X8_MIN_U, u16x8, u16x8, 8, a[i] < b[i] ? a[i] : b[i])
    V_BINL(I16X8_MAX_S, i16x8, i16x8, 8, a[i] > b[i] ? a[i] : b[i])
    V_BINL(I16X8_MAX_U, u16x8, u16x8, 8, a[i] > b[i] ? a[i] : b[i])
    V_BINL(I16X8_AVGR_U, u16x8, u16x8, 8, (uint16_t)(((uint32_t)a[i] + b[i] + 1) >> 1))
    V_BINL(I16X8_EXTMUL_LOW_I8X16_S, i8x16, i16x8, 8, (int16_t)(a[i] * b[i]))
    V_BINL(I16X8_EXTMUL_HIGH_I8X16_S, i8x16, i16x8, 8, (int16_t)(a[i + 8] * b[i + 8]))
    V_BINL(I16X8_EXTMUL_LOW_I8X16_U, u8x16, u16x8, 8, (uint16_t)(a[i] * b[i]))
    V_BINL(I16X8_EXTMUL_HIGH_I8X16_U, u8x16, u16x8, 8, (uint16_t)(a[i + 8] * b[i + 8]))
    V_UNL(I32X4_ABS, i32x4, u32x4, 4, a[i] < 0 ? 0u - (uint32_t)a[i] : (uint32_t)a[i])
    V_UN(I32X4_NEG, u32x4, u32x4, (u32x4){0} - a)
    V_UNL(I32X4_EXTEND_LOW_I16X8_S, i16x8, i32x4, 4, a[i])
    V_UNL(I32X4_EXTEND_HIGH_I16X8_S, i16x8, i32x4, 4, a[i + 4])
    V_UNL(I32X4_EXTEND_LOW_I16X8_U, u16x8, u32x4, 4, a[i])
    V_UNL(I32X4_EXTEND_HIGH_I16X8_U, u16x8, u32x4, 4, a[i + 4])
    V_BIN(I32X4_ADD, u32x4, u32x4, a + b)
    V_BIN(I32X4_SUB, u32x4, u32x4, a - b)
    V_BIN(I32X4_MUL, u32x4, u32x4, a * b)
    V_BINL(I32X4_MIN_S, i32x4, i32x4, 4, a[i] < b[i] ? a[i] : b[i])
    V_BINL(I32X4_MIN_U, u32x4, u32x4, 4, a[i] < b[i] ? a[i] : b[i])
    V_BINL(I32X4_MAX_S, i32x4, i32x4, 4, a[i] > b[i] ? a[i] : b[i])
    V_BINL(I32X4_MAX_U, u32x4, u32x4, 4, a[i] > b[i] ? a[i] : b[i])
    V_BINL(I32X4_DOT_I16X8_S, i16x8, u32x4, 4,
           (uint32_t)((int64_t)a[2 * i] * b[2 * i] + (int64_t)a[2 * i + 1] * b[2 * i + 1]))
    V_BINL(I32X4_EXTMUL_LOW_I16X8_S, i16x8, i32x4, 4, a[i] * b[i])
    V_BINL(I32X4_EXTMUL_HIGH_I16X8_S, i16x8, i32x4, 4, a[i + 4] * b[i + 4])
    V_BINL(I32X4_EXTMUL_LOW_I16X8_U, u16x8, u32x4, 4, (uint32_t)a[i] * b[i])
    V_BINL(I32X4_EXTMUL_HIGH_I16X8_U, u16x8, u32x4, 4, (uint32_t)a[i + 4] * b[i + 4])
    V_UNL(I64X2_ABS, i64x2, u64x2, 2, a[i] < 0 ? 0ull - (uint64_t)a[i] : (uint64_t)a[i])
    V_UN(I64X2_NEG, u64x2, u64x2, (u64x2){0} - a)
    V_UNL(I64X2_EXTEND_LOW_I32X4_S, i32x4, i64x2, 2, a[i])
    V_UNL(I64X2_EXTEND_HIGH_I32X4_S, i32x4, i64x2, 2, a[i + 2])
    V_UNL(I64X2_EXTEND_LOW_I32X4_U, u32x4, u64x2, 2, a[i])
    V_UNL(I64X2_EXTEND_HIGH_I32X4_U, u32x4, u64x2, 2, a[i + 2])
    V_BIN(I64X2_ADD, u64x2, u64x2, a + b)
    V_BIN(I64X2_SUB, u64x2, u64x2, a - b)
    V_BIN(I64X2_MUL, u64x2, u64x2, a * b)
    V_BINL(I64X2_EXTMUL_LOW_I32X4_S, i32x4, i64x2, 2, (int64_t)a[i] * b[i])
    V_BINL(I64X2_EXTMUL_HIGH_I32X4_S, i32x4, i64x2, 2, (int64_t)a[i + 2] * b[i + 2])
    V_BINL(I64X2_EXTMUL_LOW_I32X4_U, u32x4, u64x2, 2, (uint64_t)a[i] * b[i])
    V_BINL(I64X2_EXTMUL_HIGH_I32X4_U, u32x4, u64x2, 2, (uint64_t)a[i + 2] * b[i + 2])

    /* Float lanes. */
    V_UN(F32X4_ABS, u32x4, u32x4, a & 0x7fffffffu)
    V_UN(F32X4_NEG, u32x4, u32x4, a ^ 0x80000000u)
    V_UN(F64X2_ABS, u64x2, u64x2, a & 0x7fffffffffffffffull)
    V_UN(F64X2_NEG, u64x2, u64x2, a ^ 0x8000000000000000ull)
    V_UNL(F32X4_SQRT, u32x4, u32x4, 4, (uint32_t)of_f32(f32_sqrt(lane_f32(a[i]))))
    V_UNL(F64X2_SQRT, u64x2, u64x2, 2, of_f64(f64_sqrt(lane_f64(a[i]))))
    V_UNL(F32X4_CEIL, u32x4, u32x4, 4, (uint32_t)of_f32(f32_ceil(lane_f32(a[i]))))
    V_UNL(F32X4_FLOOR, u32x4, u32x4, 4, (uint32_t)of_f32(f32_floor(lane_f32(a[i]))))
    V_UNL(F32X4_TRUNC, u32x4, u32x4, 4, (uint32_t)of_f32(f32_trunc(lane_f32(a[i]))))
    V_UNL(F32X4_NEAREST, u32x4, u32x4, 4, (uint32_t)of_f32(f32_nearest(lane_f32(a[i]))))
    V_UNL(F64X2_CEIL, u64x2, u64x2, 2, of_f64(f64_ceil(lane_f64(a[i]))))
    V_UNL(F64X2_FLOOR, u64x2, u64x2, 2, of_f64(f64_floor(lane_f64(a[i]))))
    V_UNL(F64X2_TRUNC, u64x2, u64x2, 2, of_f64(f64_trunc(lane_f64(a[i]))))
    V_UNL(F64X2_NEAREST, u64x2, u64x2, 2, of_f64(f64_nearest(lane_f64(a[i]))))
    V_BIN(F32X4_ADD, f32x4, f32x4, a + b)
    V_BIN(F32X4_SUB, f32x4, f32x4, a - b)
    V_BIN(F32X4_MUL, f32x4, f32x4, a * b)
    V_BIN(F32X4_DIV, f32x4, f32x4, a / b)
    V_BIN(F64X2_ADD, f64x2, f64x2, a + b)
    V_BIN(F64X2_SUB, f64x2, f64x2, a - b)
    V_BIN(F64X2_MUL, f64x2, f64x2, a * b)
    V_BIN(F64X2_DIV, f64x2, f64x2, a / b)
    V_BINL(F32X4_MIN, u32x4, u32x4, 4, (uint32_t)of_f32(f32_min(lane_f32(a[i]), lane_f32(b[i]))))
    V_BINL(F32X4_MAX, u32x4, u32x4, 4, (uint32_t)of_f32(f32_max(lane_f32(a[i]), lane_f32(b[i]))))
    V_BINL(F64X2_MIN, u64x2, u64x2, 2, of_f64(f64_min(lane_f64(a[i]), lane_f64(b[i]))))
    V_BINL(F64X2_MAX, u64x2, u64x2, 2, of_f64(f64_max(lane_f64(a[i]), lane_f64(b[i]))))
    /* pmin: b < a ? b : a; pmax: a < b ? b : a (operands' bits returned as they are). */
    V_BINL(F32X4_PMIN, u32x4, u32x4, 4, lane_f32(b[i]) < lane_f32(a[i]) ? b[i] : a[i])
    V_BINL(F32X4_PMAX, u32x4, u32x4, 4, lane_f32(a[i]) < lane_f32(b[i]) ? b[i] : a[i])
    V_BINL(F64X2_PMIN, u64x2, u64x2, 2, lane_f64(b[i]) < lane_f64(a[i]) ? b[i] : a[i])
    V_BINL(F64X2_PMAX, u64x2, u64x2, 2, lane_f64(a[i]) < lane_f64(b[i]) ? b[i] : a[i])

    /* Conversions. */
    V_UNL(I32X4_TRUNC_SAT_F32X4_S, u32x4, i32x4, 4, i32_sat_f32_s(lane_f32(a[i])))
    V_UNL(I32X4_TRUNC_SAT_F32X4_U, u32x4, u32x4, 4, i32_sat_f32_u(lane_f32(a[i])))
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
#undef LANES
#undef V_UN
#undef V_BIN
#undef V_UNL
#undef V_BINL
#undef V_REDUCE
#undef V_SHIFT
#undef ADDR
#undef V_LOAD_EXT
#undef V_LOAD_SPLAT
#undef V_LOAD_LANE
#undef V_STORE_LANE
#undef V_EXTRACT
#undef V_REPLACE
#endif /* SIMD_HANDLERS */
