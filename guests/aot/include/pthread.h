/* pthread.h for wasm2c output in the AOT guest: wasm-rt.h (wabt 1.0.42) names
 * pthread_mutex_t in its shared-memory type, which the AOT tier does not provide (no
 * threads proposal: the validator refuses shared memories); nothing locks. */
#ifndef AOT_PTHREAD_H
#define AOT_PTHREAD_H
typedef struct {
    long unused;
} pthread_mutex_t;
#endif
