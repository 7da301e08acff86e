/* math.c: the rounding functions wasm2c output calls (floor, ceil, trunc, nearbyint), in
 * SSE2 arithmetic (roundsd is SSE4.1, beyond the guest's baseline). NaN never reaches
 * them: the generated wasm_floor etc. return the quieted NaN first. Values of magnitude
 * 2^52 (2^23 for float) and up are integers already and pass through unchanged. */
#include <stdint.h>
#include <math.h>

#define TWO52 4503599627370496.0
#define TWO23 8388608.0f

double trunc(double x) {
    if (!(fabs(x) < TWO52)) return x;
    return copysign((double)(int64_t)x, x);
}

float truncf(float x) {
    if (!(fabsf(x) < TWO23)) return x;
    return copysignf((float)(int32_t)x, x);
}

double floor(double x) {
    double t = trunc(x);
    return t > x ? t - 1.0 : t;
}

float floorf(float x) {
    float t = truncf(x);
    return t > x ? t - 1.0f : t;
}

double ceil(double x) {
    double t = trunc(x);
    return t < x ? copysign(t + 1.0, x) : t;
}

float ceilf(float x) {
    float t = truncf(x);
    return t < x ? copysignf(t + 1.0f, x) : t;
}

/* Round to nearest, ties to even (the default SSE rounding mode does the work): adding
 * and subtracting 2^52 leaves no fraction bits. volatile keeps the compiler from folding
 * the pair away. */
double nearbyint(double x) {
    if (!(fabs(x) < TWO52)) return x;
    volatile double big = fabs(x) + TWO52;
    return copysign(big - TWO52, x);
}

float nearbyintf(float x) {
    if (!(fabsf(x) < TWO23)) return x;
    volatile float big = fabsf(x) + TWO23;
    return copysignf(big - TWO23, x);
}
