/* alloca.h for wasm2c output in the AOT guest. */
#ifndef AOT_ALLOCA_H
#define AOT_ALLOCA_H
#define alloca __builtin_alloca
#endif
