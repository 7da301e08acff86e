/* stdlib.h for wasm2c output in the AOT guest: the guest SDK's heap. */
#ifndef AOT_STDLIB_H
#define AOT_STDLIB_H
#include "sbx.h"
__attribute__((noreturn)) void abort(void);
#endif
