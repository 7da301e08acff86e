/* setjmp.h for wasm2c output in the AOT guest. wasm-rt.h names jmp_buf only in the
 * declarations of the exception-handling API, which the AOT tier does not provide (the
 * validator refuses the exceptions proposal); the runtime unwinds traps with its own
 * aot_setjmp/aot_longjmp (jmp.S). */
#ifndef AOT_SETJMP_H
#define AOT_SETJMP_H
typedef long jmp_buf[8];
#endif
