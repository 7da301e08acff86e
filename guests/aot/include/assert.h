/* assert.h for wasm2c output in the AOT guest: the generated code asserts only what the
 * runtime guarantees (initialisation order), so assertions compile to nothing. */
#ifndef AOT_ASSERT_H
#define AOT_ASSERT_H
#define assert(x) ((void)0)
#endif
