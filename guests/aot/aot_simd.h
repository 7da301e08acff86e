/* aot_simd.h: forced into every compiled file of a module that uses SIMD, after aot.h.
 * wasm2c 1.0.42 defines v128 (SIMDe's type) in module.h only where an import or export
 * has a v128 parameter, yet declares multi-value structs with v128 members there in other
 * cases too (a tag's payload, a multi-value result): the type is defined first here, the
 * generated code's own definition is guarded by WASM_RT_SIMD_TYPE_DEFINED. */
#ifndef AOT_SIMD_H
#define AOT_SIMD_H
#include <simde/wasm/simd128.h>
#ifndef WASM_RT_SIMD_TYPE_DEFINED
#define WASM_RT_SIMD_TYPE_DEFINED
typedef simde_v128_t v128;
#endif
#endif
