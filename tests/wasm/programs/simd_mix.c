/* simd_mix.c: Wasm SIMD (clang -msimd128, wasm_simd128.h) over pseudo-random inputs with
 * float edge cases mixed in; prints one hash per group of instructions. Built for
 * wasm32-wasi by tests/wasm/test_wasm_simd.py, which compares the output of our engine
 * with wasmtime's. NaN lanes are canonicalised before hashing: their sign and payload
 * are not deterministic across engines (the spec allows either). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <wasm_simd128.h>

static uint64_t state = 0x9E3779B97F4A7C15ull;

static uint64_t next(void) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

static const uint32_t f32_special[] = {0x7fc00000u, 0xffc00001u, 0x7f800000u, 0xff800000u,
                                       0x80000000u, 0x00000000u, 0x3f000000u, 0x40200000u,
                                       0x4f000000u, 0xcf000001u, 0x4f800000u, 0x00000001u};
static const uint64_t f64_special[] = {0x7ff8000000000000ull, 0xfff8000000000001ull,
                                       0x7ff0000000000000ull, 0xfff0000000000000ull,
                                       0x8000000000000000ull, 0x0000000000000000ull,
                                       0x3fe0000000000000ull, 0x4004000000000000ull,
                                       0x41e0000000000000ull, 0xc1e0000000200000ull,
                                       0x41f0000000000000ull, 0x0000000000000001ull};

static v128_t rand_v128(void) { return wasm_i64x2_make((int64_t)next(), (int64_t)next()); }

/* Random f32 lanes: small values, huge ones, and the special values above. */
static v128_t rand_f32x4(void) {
    uint32_t lane[4];
    for (int i = 0; i < 4; i++) {
        uint64_t r = next();
        switch (r % 4) {
        case 0: lane[i] = f32_special[(r >> 8) % 12]; break;
        case 1: {
            float f = (float)(int32_t)(r >> 32) / 65536.0f;
            __builtin_memcpy(&lane[i], &f, 4);
            break;
        }
        default: lane[i] = (uint32_t)(r >> 16); break;
        }
    }
    return wasm_u32x4_make(lane[0], lane[1], lane[2], lane[3]);
}

static v128_t rand_f64x2(void) {
    uint64_t lane[2];
    for (int i = 0; i < 2; i++) {
        uint64_t r = next();
        switch (r % 4) {
        case 0: lane[i] = f64_special[(r >> 8) % 12]; break;
        case 1: {
            double d = (double)(int64_t)r / 4294967296.0;
            __builtin_memcpy(&lane[i], &d, 8);
            break;
        }
        default: lane[i] = next(); break;
        }
    }
    return wasm_u64x2_make(lane[0], lane[1]);
}

static v128_t canon32(v128_t v) {
    return wasm_v128_bitselect(wasm_i32x4_splat(0x7fc00000), v, wasm_f32x4_ne(v, v));
}
static v128_t canon64(v128_t v) {
    return wasm_v128_bitselect(wasm_i64x2_splat(0x7ff8000000000000ll), v, wasm_f64x2_ne(v, v));
}

static uint64_t mix(uint64_t h, v128_t v) {
    h = (h ^ (uint64_t)wasm_i64x2_extract_lane(v, 0)) * 0x100000001b3ull;
    return (h ^ (uint64_t)wasm_i64x2_extract_lane(v, 1)) * 0x100000001b3ull;
}

#define ROUNDS 2000

int main(void) {
    uint64_t h;
    uint8_t buf[64];

    h = 1;
    for (int i = 0; i < ROUNDS; i++) {
        v128_t a = rand_v128(), b = rand_v128();
        int n = (int)(next() % 19);
        h = mix(h, wasm_i8x16_add(a, b));
        h = mix(h, wasm_i8x16_sub_sat(a, b));
        h = mix(h, wasm_u8x16_add_sat(a, b));
        h = mix(h, wasm_u8x16_sub_sat(a, b));
        h = mix(h, wasm_i8x16_min(a, b));
        h = mix(h, wasm_u8x16_max(a, b));
        h = mix(h, wasm_u8x16_avgr(a, b));
        h = mix(h, wasm_i8x16_abs(a));
        h = mix(h, wasm_i8x16_neg(b));
        h = mix(h, wasm_i8x16_popcnt(a));
        h = mix(h, wasm_i8x16_lt(a, b));
        h = mix(h, wasm_u8x16_ge(a, b));
        h = mix(h, wasm_i8x16_shl(a, n));
        h = mix(h, wasm_i8x16_shr(a, n));
        h = mix(h, wasm_u8x16_shr(b, n));
        h = mix(h, wasm_i8x16_narrow_i16x8(a, b));
        h = mix(h, wasm_u8x16_narrow_i16x8(a, b));
        h = mix(h, wasm_i8x16_swizzle(a, wasm_v128_and(b, wasm_i8x16_splat(0x1f))));
        h = mix(h, wasm_i8x16_shuffle(a, b, 0, 17, 2, 19, 4, 21, 6, 23, 31, 30, 1, 0, 15, 16, 8, 8));
        h = h * 31 + (uint32_t)wasm_i8x16_bitmask(a) + wasm_i8x16_all_true(b) + wasm_v128_any_true(a);
    }
    printf("i8x16 %016llx\n", (unsigned long long)h);

    h = 2;
    for (int i = 0; i < ROUNDS; i++) {
        v128_t a = rand_v128(), b = rand_v128();
        h = mix(h, wasm_i16x8_mul(a, b));
        h = mix(h, wasm_i16x8_q15mulr_sat(a, b));
        h = mix(h, wasm_i16x8_extmul_low_i8x16(a, b));
        h = mix(h, wasm_u16x8_extmul_high_u8x16(a, b));
        h = mix(h, wasm_i16x8_extadd_pairwise_i8x16(a));
        h = mix(h, wasm_u16x8_extadd_pairwise_u8x16(b));
        h = mix(h, wasm_i16x8_extend_low_i8x16(a));
        h = mix(h, wasm_u16x8_extend_high_u8x16(b));
        h = mix(h, wasm_i16x8_narrow_i32x4(a, b));
        h = mix(h, wasm_u16x8_narrow_i32x4(a, b));
        h = mix(h, wasm_i32x4_dot_i16x8(a, b));
        h = mix(h, wasm_i16x8_add_sat(a, b));
        h = mix(h, wasm_u16x8_avgr(a, b));
        h = mix(h, wasm_i16x8_gt(a, b));
        h = h * 31 + (uint32_t)wasm_i16x8_bitmask(a) + wasm_i16x8_all_true(b);
    }
    printf("i16x8 %016llx\n", (unsigned long long)h);

    h = 3;
    for (int i = 0; i < ROUNDS; i++) {
        v128_t a = rand_v128(), b = rand_v128();
        v128_t f = rand_f32x4(), d = rand_f64x2();
        int n = (int)(next() % 70);
        h = mix(h, wasm_i32x4_mul(a, b));
        h = mix(h, wasm_i32x4_min(a, b));
        h = mix(h, wasm_u32x4_max(a, b));
        h = mix(h, wasm_i32x4_extmul_low_i16x8(a, b));
        h = mix(h, wasm_u32x4_extmul_high_u16x8(a, b));
        h = mix(h, wasm_i32x4_trunc_sat_f32x4(f));
        h = mix(h, wasm_u32x4_trunc_sat_f32x4(f));
        h = mix(h, wasm_i32x4_trunc_sat_f64x2_zero(d));
        h = mix(h, wasm_u32x4_trunc_sat_f64x2_zero(d));
        h = mix(h, wasm_f32x4_convert_i32x4(a));
        h = mix(h, wasm_f32x4_convert_u32x4(b));
        h = mix(h, wasm_f64x2_convert_low_i32x4(a));
        h = mix(h, wasm_f64x2_convert_low_u32x4(b));
        h = mix(h, wasm_i32x4_shr(a, n));
        h = mix(h, wasm_i64x2_add(a, b));
        h = mix(h, wasm_i64x2_mul(a, b));
        h = mix(h, wasm_i64x2_neg(a));
        h = mix(h, wasm_i64x2_abs(b));
        h = mix(h, wasm_i64x2_lt(a, b));
        h = mix(h, wasm_i64x2_shr(a, n));
        h = mix(h, wasm_u64x2_shr(b, n));
        h = mix(h, wasm_i64x2_extmul_low_i32x4(a, b));
        h = mix(h, wasm_v128_bitselect(a, b, f));
        h = mix(h, wasm_v128_andnot(a, b));
        h = h * 31 + (uint32_t)wasm_i64x2_bitmask(a) + wasm_i32x4_all_true(b);
    }
    printf("i32x4 i64x2 %016llx\n", (unsigned long long)h);

    h = 4;
    for (int i = 0; i < ROUNDS; i++) {
        v128_t a = rand_f32x4(), b = rand_f32x4();
        h = mix(h, canon32(wasm_f32x4_add(a, b)));
        h = mix(h, canon32(wasm_f32x4_sub(a, b)));
        h = mix(h, canon32(wasm_f32x4_mul(a, b)));
        h = mix(h, canon32(wasm_f32x4_div(a, b)));
        h = mix(h, canon32(wasm_f32x4_sqrt(a)));
        h = mix(h, canon32(wasm_f32x4_min(a, b)));
        h = mix(h, canon32(wasm_f32x4_max(a, b)));
        h = mix(h, canon32(wasm_f32x4_pmin(a, b)));
        h = mix(h, canon32(wasm_f32x4_pmax(a, b)));
        h = mix(h, canon32(wasm_f32x4_ceil(a)));
        h = mix(h, canon32(wasm_f32x4_floor(a)));
        h = mix(h, canon32(wasm_f32x4_trunc(b)));
        h = mix(h, canon32(wasm_f32x4_nearest(b)));
        h = mix(h, wasm_f32x4_abs(a));
        h = mix(h, wasm_f32x4_neg(b));
        h = mix(h, wasm_f32x4_lt(a, b));
        h = mix(h, wasm_f32x4_ne(a, b));
        h = mix(h, wasm_f32x4_ge(a, b));
        h = mix(h, canon64(wasm_f64x2_promote_low_f32x4(a)));
    }
    printf("f32x4 %016llx\n", (unsigned long long)h);

    h = 5;
    for (int i = 0; i < ROUNDS; i++) {
        v128_t a = rand_f64x2(), b = rand_f64x2();
        h = mix(h, canon64(wasm_f64x2_add(a, b)));
        h = mix(h, canon64(wasm_f64x2_sub(a, b)));
        h = mix(h, canon64(wasm_f64x2_mul(a, b)));
        h = mix(h, canon64(wasm_f64x2_div(a, b)));
        h = mix(h, canon64(wasm_f64x2_sqrt(a)));
        h = mix(h, canon64(wasm_f64x2_min(a, b)));
        h = mix(h, canon64(wasm_f64x2_max(a, b)));
        h = mix(h, canon64(wasm_f64x2_pmin(a, b)));
        h = mix(h, canon64(wasm_f64x2_pmax(a, b)));
        h = mix(h, canon64(wasm_f64x2_ceil(a)));
        h = mix(h, canon64(wasm_f64x2_floor(b)));
        h = mix(h, canon64(wasm_f64x2_trunc(a)));
        h = mix(h, canon64(wasm_f64x2_nearest(b)));
        h = mix(h, wasm_f64x2_le(a, b));
        h = mix(h, wasm_f64x2_eq(a, b));
        h = mix(h, canon32(wasm_f32x4_demote_f64x2_zero(a)));
    }
    printf("f64x2 %016llx\n", (unsigned long long)h);

    h = 6;
    for (int i = 0; i < ROUNDS; i++) {
        for (int k = 0; k < 64; k += 8) {
            uint64_t r = next();
            __builtin_memcpy(buf + k, &r, 8);
        }
        int at = (int)(next() % 48);
        v128_t v = wasm_v128_load(buf + at);
        h = mix(h, v);
        h = mix(h, wasm_v128_load8_splat(buf + at + 1));
        h = mix(h, wasm_v128_load16_splat(buf + at + 3));
        h = mix(h, wasm_v128_load32_zero(buf + at + 2));
        h = mix(h, wasm_v128_load64_zero(buf + at + 5));
        h = mix(h, wasm_i16x8_load8x8(buf + at));
        h = mix(h, wasm_u32x4_load16x4(buf + at + 1));
        h = mix(h, wasm_i64x2_load32x2(buf + at + 7));
        h = mix(h, wasm_v128_load16_lane(buf + at + 9, v, 5));
        h = mix(h, wasm_v128_load64_lane(buf + at + 3, v, 1));
        wasm_v128_store32_lane(buf + (at ^ 7), wasm_i8x16_add(v, v), 2);
        wasm_v128_store8_lane(buf + (at ^ 3), v, 15);
        wasm_v128_store(buf + (47 - at), wasm_i32x4_mul(v, v));
        h = mix(h, wasm_v128_load(buf + 16));
    }
    printf("memory %016llx\n", (unsigned long long)h);
    return 0;
}
