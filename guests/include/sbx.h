/* sbx.h: the guest SDK. Include this (never sbx_abi.h directly) from guest C code.
 *
 * A guest is a freestanding static-PIE x86-64 ELF linked with the SDK (guests/sdk/). It
 * exports functions with SBX_EXPORT; the host calls them by name. Guest code runs in
 * ring 3 with no kernel: no syscalls, no threads, no floating-point exceptions unmasked.
 */
#ifndef SBX_H
#define SBX_H

#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdbool.h>

#include "sbx_abi.h"

typedef struct sbx_value sbx_value;

/* ---- Exporting functions ------------------------------------------------------------
 *
 *   SBX_EXPORT(add, SBX_TAG_I32, SBX_TAG_I32, SBX_TAG_I32) {
 *       sbx_ret_i32(ret, sbx_arg_i32(args, 0) + sbx_arg_i32(args, 1));
 *   }
 *
 * declares `add(i32, i32) -> i32`: the first tag is the return type (SBX_TAG_VOID for
 * none), the rest are the parameter types in order. Inside the body, `args` points at
 * the arguments (already checked against the declaration by the dispatcher) and `ret`
 * is where the result goes; a body that sets nothing returns void.
 */
typedef void (*sbx_func)(const sbx_value *args, sbx_value *ret);

#define SBX_EXPORT(fn, ret_tag, ...)                                                  \
    static void fn(const sbx_value *args, sbx_value *ret);                           \
    __attribute__((used, section("sbx_funcs"), aligned(8)))                          \
    static const struct sbx_func_desc sbx_desc_##fn = {                              \
        #fn, (ret_tag), sizeof((const uint8_t[]){0, ##__VA_ARGS__}) - 1,             \
        {__VA_ARGS__}, {0}, (uint64_t)(uintptr_t)&fn};                               \
    static void fn(const sbx_value *args __attribute__((unused)),                    \
                   sbx_value *ret __attribute__((unused)))

/* Argument accessors. The dispatcher has checked every tag, so these only convert. */
static inline int32_t sbx_arg_i32(const sbx_value *a, int i) { return (int32_t)a[i].bits; }
static inline uint32_t sbx_arg_u32(const sbx_value *a, int i) { return (uint32_t)a[i].bits; }
static inline int64_t sbx_arg_i64(const sbx_value *a, int i) { return (int64_t)a[i].bits; }
static inline uint64_t sbx_arg_u64(const sbx_value *a, int i) { return a[i].bits; }
static inline bool sbx_arg_bool(const sbx_value *a, int i) { return a[i].bits != 0; }
float sbx_arg_f32(const sbx_value *a, int i);
double sbx_arg_f64(const sbx_value *a, int i);
/* STR/BYTES: pointer to the data (NUL-terminated) and its length in *len (may be NULL).
 * Valid until the function returns; the data is read-only. */
const char *sbx_arg_str(const sbx_value *a, int i, size_t *len);
const uint8_t *sbx_arg_bytes(const sbx_value *a, int i, size_t *len);

/* Result setters. STR/BYTES data is copied; if it does not fit the output buffer the
 * call aborts with a message. */
void sbx_ret_i32(sbx_value *r, int32_t v);
void sbx_ret_u32(sbx_value *r, uint32_t v);
void sbx_ret_i64(sbx_value *r, int64_t v);
void sbx_ret_u64(sbx_value *r, uint64_t v);
void sbx_ret_f32(sbx_value *r, float v);
void sbx_ret_f64(sbx_value *r, double v);
void sbx_ret_bool(sbx_value *r, bool v);
void sbx_ret_str(sbx_value *r, const char *s, size_t len);
void sbx_ret_bytes(sbx_value *r, const void *p, size_t len);

/* Value constructors for host-call arguments (STR/BYTES point at caller memory, which
 * must stay valid until sbx_host_call returns). */
sbx_value sbx_val_i32(int32_t v);
sbx_value sbx_val_i64(int64_t v);
sbx_value sbx_val_u64(uint64_t v);
sbx_value sbx_val_f64(double v);
sbx_value sbx_val_bool(bool v);
sbx_value sbx_val_str(const char *s);
sbx_value sbx_val_bytes(const void *p, size_t len);

/* ---- Calling the host ----------------------------------------------------------------
 * Calls the host function registered under `name` with `argc` values (SBX_MAX_ARGS at
 * most). Returns its result; STR/BYTES results point into the reply buffer and stay
 * valid until the next host call. If the host function raised, the guest call is
 * unwound (this function does not return) and the host reports HostFunctionError. */
sbx_value sbx_host_call(const char *name, int argc, const sbx_value *args);
/* Convenience: STR result of a host call, or NULL if the result is not a STR. */
const char *sbx_host_call_str(const char *name, const char *arg, size_t *len);

/* ---- Errors ------------------------------------------------------------------------- */
/* Ends the current call with a guest error (GuestAbort on the host, with this message;
 * formatted like printf). The sandbox stays usable. */
__attribute__((noreturn, format(printf, 1, 2))) void sbx_abort(const char *fmt, ...);

/* The length of s[0..len) without a trailing incomplete UTF-8 sequence: use it before
 * returning text cut to a buffer size, since the host rejects STR values that are not
 * valid UTF-8. */
size_t sbx_utf8_trim(const char *s, size_t len);

/* ---- Output --------------------------------------------------------------------------
 * Buffered; flushed to the host with the call's result or with a host call, or with one
 * exit when the buffer fills. */
void sbx_write(const char *s, size_t len);
__attribute__((format(printf, 1, 2))) int sbx_print(const char *fmt, ...);

/* ---- Environment -------------------------------------------------------------------- */
const struct sbx_boot_info *sbx_boot_info(void);
/* A per-sandbox random 64-bit number (xorshift seeded by the host). */
uint64_t sbx_random_u64(void);

/* ---- Heap (guests/sdk/malloc.c) ------------------------------------------------------
 * A simple allocator over the heap region the host provides; NULL when exhausted. */
void sbx_heap_init(void *base, size_t size);
void *malloc(size_t n);
void *calloc(size_t n, size_t size);
void *realloc(void *p, size_t n);
void free(void *p);

/* ---- Freestanding libc subset (guests/sdk/libc.c, printf.c) ------------------------- */
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
size_t strnlen(const char *s, size_t max);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
char *strcpy(char *dst, const char *src);
char *strchr(const char *s, int c);
/* printf-class formatting: %d %i %u %x %X %o %c %s %p %% %f %e %g, flags "-+ #0",
 * width and precision (also *), length modifiers hh h l ll z j t. Returns the length the
 * full output would have (C99 semantics); always NUL-terminates when size > 0. */
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
__attribute__((format(printf, 3, 4))) int snprintf(char *buf, size_t size, const char *fmt, ...);

#endif /* SBX_H */
