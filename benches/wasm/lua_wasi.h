/* Configuration of Lua 5.4 for wasm32-wasi (the C sources bundled in lupa's PyPI sdist,
   fetched and used unchanged; see benches/bench_aot.py), forced in with -include.

   WASI has no setjmp/longjmp without the exception-handling proposal, which the AOT
   tier's wasm2c does not compile: a Lua error ends the program with a message instead of
   unwinding to a pcall. The bench's script raises none. No shell (os.execute says there
   is none), no temporary files. */
#ifndef LUA_WASI_H
#define LUA_WASI_H
#include <stdio.h>
#include <stdlib.h>
#define luai_jmpbuf int
#define LUAI_THROW(L, c) (fputs("lua: error (fatal in this WASI build)\n", stderr), abort())
#define LUAI_TRY(L, c, a) { a }
#define system(cmd) ((cmd) == NULL ? 0 : -1)
#define tmpfile() ((FILE *)NULL)
#define LUA_TMPNAMBUFSIZE 32
#define lua_tmpnam(b, e) { (b)[0] = '\0'; e = 1; }
#endif
