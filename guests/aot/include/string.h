/* string.h for wasm2c output in the AOT guest: the guest SDK's libc subset. */
#ifndef AOT_STRING_H
#define AOT_STRING_H
#include "sbx.h"
#endif
