/* engine.h: the plain-C core API of the Wasm engine, shared by the guest adapter
 * (guest.c) and the native test driver (native/); plus the platform hooks each of them
 * implements (memory windows, host imports, allocation).
 *
 * Every eng_* operation fills the engine's reply buffer (eng_reply) with a reply in the
 * format of wasm_abi.h: byte 0 status, then the payload or trap kind + message.
 */
#ifndef WASM_ENGINE_H
#define WASM_ENGINE_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#include "wasm_abi.h"

/* Where memory windows start: WASM_WINDOW_BASE, except in native sanitizer builds (whose
 * shadow memory covers that range). */
#ifndef ENG_WINDOW_BASE
#define ENG_WINDOW_BASE WASM_WINDOW_BASE
#endif

/* Limits of the interpreter (value stack slots of 16 bytes, frames deep). */
#define ENG_VALUE_STACK_SLOTS (256 * 1024)
#define ENG_CALL_DEPTH_MAX 12000

/* ---- Core API ------------------------------------------------------------------------ */
void *eng_alloc(uint64_t size);
/* Takes ownership of bytes[0..len) (allocated with eng_alloc). */
void eng_load(uint8_t *bytes, uint64_t len);
void eng_instantiate(uint32_t module);
void eng_register(uint32_t instance, const char *name, size_t name_len);
void eng_invoke(uint32_t instance, const char *name, size_t name_len, const uint8_t *args,
                size_t args_len);
void eng_get(uint32_t instance, const char *name, size_t name_len);
/* The reply of the operation abandoned by a fault at `address` in a memory window. */
void eng_fault(uint64_t address);

/* The last reply. Valid until the next eng_* call. */
const uint8_t *eng_reply(size_t *len);

/* ---- Platform hooks ------------------------------------------------------------------ */
/* Makes memory window `memory` hold `pages` pages (zero-filled, read-write). */
bool plat_grow(uint32_t memory, uint64_t pages);
/* Calls the host's import `func_index` of `instance` with a value list; returns the
 * results' value list (valid until the next platform call). `memory` is the window of
 * the instance's memory 0 (0xffffffff: none), which WASI functions use. May not return
 * (the host function raised: the platform unwinds the operation). */
const uint8_t *plat_import(uint32_t instance, uint32_t func_index, const uint8_t *args,
                           size_t args_len, uint32_t memory, size_t *result_len);
void *plat_malloc(size_t n);
void *plat_calloc(size_t n, size_t size);
void *plat_realloc(void *p, size_t n);
void plat_free(void *p);

#endif /* WASM_ENGINE_H */
