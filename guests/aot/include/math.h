/* math.h for wasm2c output in the AOT guest: what the generated code calls, implemented in
 * math.c (rounding without SSE4.1, which the guest's baseline x86-64 lacks) or as
 * compiler built-ins that become single SSE2 instructions. */
#ifndef AOT_MATH_H
#define AOT_MATH_H
#define isnan(x) __builtin_isnan(x)
#define signbit(x) __builtin_signbit(x)
#define INFINITY __builtin_inff()
#define NAN __builtin_nanf("")
#define fabs(x) __builtin_fabs(x)
#define fabsf(x) __builtin_fabsf(x)
#define sqrt(x) __builtin_sqrt(x)
#define sqrtf(x) __builtin_sqrtf(x)
#define copysign(x, y) __builtin_copysign(x, y)
#define copysignf(x, y) __builtin_copysignf(x, y)
double floor(double x);
float floorf(float x);
double ceil(double x);
float ceilf(float x);
double trunc(double x);
float truncf(float x);
double nearbyint(double x);
float nearbyintf(float x);
#endif
