/* SIMD kernels for the Wasm benchmark (benches/bench_wasm.py), compiled to a freestanding
 * wasm32 module by clang -msimd128 (Wasm fixed-width SIMD through wasm_simd128.h): each
 * export returns a checksum so both engines are checked to compute the same thing. */
#include <stdint.h>
#include <wasm_simd128.h>

#define EXPORT(name) __attribute__((export_name(#name)))

#define DOT_MAX (1 << 16)
static float xs[DOT_MAX], ys[DOT_MAX];

static int32_t dot_ready;

/* The dot product of two vectors of n floats (n a multiple of 16, <= 2^16), repeated
 * `reps` times (the data is set up by the first call); returns the sum's bits. */
EXPORT(dot) int32_t dot(int32_t n, int32_t reps) {
    if (n > DOT_MAX) n = DOT_MAX;
    for (int32_t i = dot_ready; i < n; i++) {
        xs[i] = (float)(i % 13) * 0.25f - 1.0f;
        ys[i] = (float)(i % 7) * 0.5f + 0.125f;
    }
    if (n > dot_ready) dot_ready = n;
    v128_t total = wasm_f32x4_splat(0);
    for (int32_t r = 0; r < reps; r++) {
        v128_t s0 = wasm_f32x4_splat(0), s1 = s0, s2 = s0, s3 = s0;
        for (int32_t i = 0; i < n; i += 16) {
            s0 = wasm_f32x4_add(s0, wasm_f32x4_mul(wasm_v128_load(xs + i), wasm_v128_load(ys + i)));
            s1 = wasm_f32x4_add(s1, wasm_f32x4_mul(wasm_v128_load(xs + i + 4), wasm_v128_load(ys + i + 4)));
            s2 = wasm_f32x4_add(s2, wasm_f32x4_mul(wasm_v128_load(xs + i + 8), wasm_v128_load(ys + i + 8)));
            s3 = wasm_f32x4_add(s3, wasm_f32x4_mul(wasm_v128_load(xs + i + 12), wasm_v128_load(ys + i + 12)));
        }
        total = wasm_f32x4_add(total, wasm_f32x4_add(wasm_f32x4_add(s0, s1), wasm_f32x4_add(s2, s3)));
    }
    float sum = wasm_f32x4_extract_lane(total, 0) + wasm_f32x4_extract_lane(total, 1) +
                wasm_f32x4_extract_lane(total, 2) + wasm_f32x4_extract_lane(total, 3);
    int32_t bits;
    __builtin_memcpy(&bits, &sum, 4);
    return bits;
}

#define PIXELS_MAX (1 << 18)
static uint8_t img_a[PIXELS_MAX * 4], img_b[PIXELS_MAX * 4], img_out[PIXELS_MAX * 4];

static int32_t blend_ready;

/* Blends two RGBA8 images of n pixels (n a multiple of 4, <= 2^18) with a per-pixel
 * alpha taken from image b: out = (a * (255 - alpha) + b * alpha + 127) / 255, in 16-bit
 * lanes, `reps` times (the images are set up by the first call); returns a checksum of
 * the result. */
EXPORT(blend) int32_t blend(int32_t n, int32_t reps) {
    if (n > PIXELS_MAX) n = PIXELS_MAX;
    for (int32_t i = blend_ready * 4; i < n * 4; i++) {
        img_a[i] = (uint8_t)(i * 7 + (i >> 8));
        img_b[i] = (uint8_t)(i * 13 + (i >> 6));
    }
    if (n > blend_ready) blend_ready = n;
    const v128_t k255 = wasm_i16x8_splat(255), k127 = wasm_i16x8_splat(127);
    for (int32_t r = 0; r < reps; r++) {
        for (int32_t i = 0; i < n * 4; i += 16) {
            v128_t a = wasm_v128_load(img_a + i), b = wasm_v128_load(img_b + i);
            /* Each pixel's alpha (byte 3) in all four of its bytes. */
            v128_t alpha = wasm_i8x16_shuffle(b, b, 3, 3, 3, 3, 7, 7, 7, 7, 11, 11, 11, 11, 15, 15, 15, 15);
            v128_t lo_w = wasm_u16x8_extend_low_u8x16(alpha), hi_w = wasm_u16x8_extend_high_u8x16(alpha);
            v128_t lo = wasm_i16x8_add(
                wasm_i16x8_add(wasm_i16x8_mul(wasm_u16x8_extend_low_u8x16(a), wasm_i16x8_sub(k255, lo_w)),
                               wasm_i16x8_mul(wasm_u16x8_extend_low_u8x16(b), lo_w)),
                k127);
            v128_t hi = wasm_i16x8_add(
                wasm_i16x8_add(wasm_i16x8_mul(wasm_u16x8_extend_high_u8x16(a), wasm_i16x8_sub(k255, hi_w)),
                               wasm_i16x8_mul(wasm_u16x8_extend_high_u8x16(b), hi_w)),
                k127);
            /* x / 255 for x < 65536: (x + 1 + (x >> 8)) >> 8. */
            lo = wasm_u16x8_shr(wasm_i16x8_add(wasm_i16x8_add(lo, wasm_i16x8_splat(1)), wasm_u16x8_shr(lo, 8)), 8);
            hi = wasm_u16x8_shr(wasm_i16x8_add(wasm_i16x8_add(hi, wasm_i16x8_splat(1)), wasm_u16x8_shr(hi, 8)), 8);
            wasm_v128_store(img_out + i, wasm_u8x16_narrow_i16x8(lo, hi));
        }
    }
    v128_t sum = wasm_i32x4_splat(0);
    for (int32_t i = 0; i < n * 4; i += 16)
        sum = wasm_v128_xor(wasm_i32x4_mul(sum, wasm_i32x4_splat(31)), wasm_v128_load(img_out + i));
    return wasm_i32x4_extract_lane(sum, 0) ^ wasm_i32x4_extract_lane(sum, 1) ^
           wasm_i32x4_extract_lane(sum, 2) ^ wasm_i32x4_extract_lane(sum, 3);
}
