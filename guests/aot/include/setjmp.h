/* setjmp.h for wasm2c output in the AOT guest. wasm-rt.h (wabt 1.0.42) names jmp_buf in
 * its wasm_rt_jmp_buf and sigsetjmp/siglongjmp in the macros of its exception API; the
 * AOT runtime unwinds traps with its own aot_setjmp/aot_longjmp (jmp.S) and does not
 * use these (exception handling is refused before compiling). */
#ifndef AOT_SETJMP_H
#define AOT_SETJMP_H
typedef long jmp_buf[8];
#endif
