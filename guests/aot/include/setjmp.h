/* setjmp.h for wasm2c output in the AOT guest. wasm-rt.h (wabt 1.0.42) keeps a jmp_buf in
 * its wasm_rt_jmp_buf, and wasm2c's code for try_table (the exception-handling proposal)
 * saves one with sigsetjmp and the runtime's wasm_rt_throw returns to it with siglongjmp:
 * both are the runtime's own aot_setjmp/aot_longjmp (jmp.S: callee-saved registers, RSP
 * and the return address; the guest has no signal mask to save). */
#ifndef AOT_SETJMP_H
#define AOT_SETJMP_H
typedef unsigned long jmp_buf[8];
int aot_setjmp(unsigned long buf[8]) __attribute__((returns_twice));
__attribute__((noreturn)) void aot_longjmp(unsigned long buf[8], int value);
#define sigsetjmp(buf, savemask) aot_setjmp(buf)
#define siglongjmp(buf, value) aot_longjmp(buf, value)
#endif
