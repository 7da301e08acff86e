/* runtime.c: guest side of the ABI: entry, call dispatch, results, host calls, output. */
#include "sbx.h"

#define SBX_STR2(x) #x
#define SBX_STR(x) SBX_STR2(x)

/* The ABI note the host checks before loading the guest (sandbox/elf.py). Tests build a
 * guest with another version through -DSBX_GUEST_ABI_VERSION=N to see it refused. */
#ifndef SBX_GUEST_ABI_VERSION
#define SBX_GUEST_ABI_VERSION SBX_ABI_VERSION
#endif
__asm__(".pushsection .note.sbx, \"a\", @note\n"
        ".p2align 2\n"
        ".long 4\n"                       /* namesz: "SBX\0" */
        ".long 4\n"                       /* descsz */
        ".long " SBX_STR(SBX_NOTE_TYPE) "\n"
        ".asciz \"SBX\"\n"
        ".long " SBX_STR(SBX_GUEST_ABI_VERSION) "\n"
        ".popsection\n");

/* Bounds of the "sbx_funcs" section, provided by the linker. */
extern const struct sbx_func_desc __start_sbx_funcs[];
extern const struct sbx_func_desc __stop_sbx_funcs[];

/* Buffered output lives in the last PRINT_BUF_SIZE bytes of the output buffer, where
 * records point at it without a copy; results and host-call records keep out of it and
 * leave room for an abort message. */
#define PRINT_BUF_SIZE 4096
#define ABORT_MSG_MAX 1024
#define OUT_RESERVE (PRINT_BUF_SIZE + ABORT_MSG_MAX + 64)

/* The functions on the path of every call go to .text.hot, which the linker places
 * together: fewer code pages touched per call means fewer first-touch faults at spawn. */
#define HOT __attribute__((hot))

static const struct sbx_boot_info *boot;
static size_t print_len;
static uint64_t rng_state;
static uint64_t rng_seed;
/* Bytes of the output buffer in use by the result being built. */
static size_t out_pos;

_Noreturn void sbx_loop(void);
_Noreturn void sbx_restart_loop(uint64_t stack_top);
_Noreturn void sbx_start(const struct sbx_boot_info *bi);

static inline void port_out(uint16_t port, uint32_t value) {
    __asm__ volatile("outl %0, %1" : : "a"(value), "Nd"(port) : "memory");
}

/* Zeroes xmm0-15 before the guest goes back to its loop. The SysV ABI makes every vector
 * register caller-saved, so no guest function can expect a value in one from an earlier
 * call; zeroing them leaves a sandbox between calls (and every snapshot taken there) with
 * the vector registers of a new vCPU, so that Sandbox.from_snapshot can skip KVM_SET_XSAVE.
 * MXCSR and the x87 control word are callee-saved in the ABI and stay as the guest set
 * them (the host then loads the snapshot's XSAVE area). Legacy-SSE encodings: the upper
 * halves of the ymm registers are left alone (a guest built for AVX pays the ioctl). */
static inline void clear_vector_registers(void) {
    __asm__ volatile(
        "pxor %%xmm0, %%xmm0\n\tpxor %%xmm1, %%xmm1\n\tpxor %%xmm2, %%xmm2\n\t"
        "pxor %%xmm3, %%xmm3\n\tpxor %%xmm4, %%xmm4\n\tpxor %%xmm5, %%xmm5\n\t"
        "pxor %%xmm6, %%xmm6\n\tpxor %%xmm7, %%xmm7\n\tpxor %%xmm8, %%xmm8\n\t"
        "pxor %%xmm9, %%xmm9\n\tpxor %%xmm10, %%xmm10\n\tpxor %%xmm11, %%xmm11\n\t"
        "pxor %%xmm12, %%xmm12\n\tpxor %%xmm13, %%xmm13\n\tpxor %%xmm14, %%xmm14\n\t"
        "pxor %%xmm15, %%xmm15"
        :
        :
        : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
          "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
}

static inline size_t align8(size_t n) { return (n + 7) & ~(size_t)7; }

const struct sbx_boot_info *sbx_boot_info(void) { return boot; }

uint64_t sbx_random_u64(void) {
    /* xorshift64*, seeded from the boot info. The host writes a fresh seed there on every
     * restore: a new seed restarts the sequence, so sandboxes restored from one snapshot
     * never repeat each other's numbers. */
    if (boot->random_seed != rng_seed) {
        rng_seed = boot->random_seed;
        rng_state = rng_seed | 1;
    }
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* ---- Output buffer -------------------------------------------------------------------- */

static uint8_t *out_base(void) { return (uint8_t *)(uintptr_t)boot->out_buf; }
static size_t print_at(void) { return boot->out_size - PRINT_BUF_SIZE; }

/* Copies `len` bytes into the output buffer after the record being built and returns
 * their offset from `record`, or aborts if they would not leave OUT_RESERVE free. */
HOT static uint32_t out_append(size_t record, const void *data, size_t len) {
    size_t at = align8(out_pos);
    if (len > boot->out_size || at + len + OUT_RESERVE > boot->out_size)
        sbx_abort("result too large for the output buffer (%zu bytes)", len);
    memcpy(out_base() + at, data, len);
    out_pos = at + len;
    return (uint32_t)(at - record);
}

/* Points the record at offset `record` to the buffered output and returns the record's
 * size (which then extends over the output). The buffer counts as flushed: the host
 * consumes it before the guest runs again. */
HOT static uint32_t attach_print(size_t record, uint32_t *off, uint32_t *len) {
    size_t end = out_pos;
    *off = 0;
    *len = 0;
    if (print_len) {
        *off = (uint32_t)(print_at() - record);
        *len = (uint32_t)print_len;
        end = print_at() + print_len;
        print_len = 0;
    }
    return (uint32_t)(end - record);
}

void sbx_write(const char *s, size_t len) {
    while (len > 0) {
        if (print_len == PRINT_BUF_SIZE) {
            /* Buffer full: one exit hands it to the host. The record goes after whatever
             * result is being built, so the result is left intact. */
            size_t rec = align8(out_pos);
            struct sbx_result *r = (struct sbx_result *)(out_base() + rec);
            r->status = SBX_STATUS_OK;
            r->value.tag = SBX_TAG_VOID;
            r->value.len = 0;
            r->value.bits = 0;
            size_t saved = out_pos;
            out_pos = rec + sizeof(*r);
            r->size = attach_print(rec, &r->print_off, &r->print_len);
            port_out(SBX_PORT_PRINT, (uint32_t)rec);
            out_pos = saved;
        }
        size_t n = PRINT_BUF_SIZE - print_len;
        if (n > len) n = len;
        memcpy(out_base() + print_at() + print_len, s, n);
        print_len += n;
        s += n;
        len -= n;
    }
}

int sbx_print(const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return n;
    if ((size_t)n < sizeof tmp) {
        sbx_write(tmp, (size_t)n);
        return n;
    }
    /* Long output: format again into the heap, or truncate if there is none. */
    char *big = malloc((size_t)n + 1);
    if (!big) {
        sbx_write(tmp, sizeof tmp - 1);
        return n;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sbx_write(big, (size_t)n);
    free(big);
    return n;
}

/* ---- Values --------------------------------------------------------------------------- */

HOT float sbx_arg_f32(const sbx_value *a, int i) {
    uint32_t b = (uint32_t)a[i].bits;
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

HOT double sbx_arg_f64(const sbx_value *a, int i) {
    double d;
    memcpy(&d, &a[i].bits, sizeof d);
    return d;
}

/* Inside the guest, STR/BYTES values carry a pointer in `bits` (the dispatcher and the
 * host-call stub translate record offsets to pointers and back). */
HOT const char *sbx_arg_str(const sbx_value *a, int i, size_t *len) {
    if (len) *len = a[i].len;
    return (const char *)(uintptr_t)a[i].bits;
}

HOT const uint8_t *sbx_arg_bytes(const sbx_value *a, int i, size_t *len) {
    if (len) *len = a[i].len;
    return (const uint8_t *)(uintptr_t)a[i].bits;
}

HOT static sbx_value scalar(uint32_t tag, uint64_t bits) {
    sbx_value v = {tag, 0, bits};
    return v;
}

HOT void sbx_ret_i32(sbx_value *r, int32_t v) { *r = scalar(SBX_TAG_I32, (uint64_t)(int64_t)v); }
HOT void sbx_ret_u32(sbx_value *r, uint32_t v) { *r = scalar(SBX_TAG_U32, v); }
HOT void sbx_ret_i64(sbx_value *r, int64_t v) { *r = scalar(SBX_TAG_I64, (uint64_t)v); }
HOT void sbx_ret_u64(sbx_value *r, uint64_t v) { *r = scalar(SBX_TAG_U64, v); }
HOT void sbx_ret_bool(sbx_value *r, bool v) { *r = scalar(SBX_TAG_BOOL, v ? 1 : 0); }

HOT void sbx_ret_f32(sbx_value *r, float v) {
    uint32_t b;
    memcpy(&b, &v, sizeof b);
    *r = scalar(SBX_TAG_F32, b);
}

HOT void sbx_ret_f64(sbx_value *r, double v) {
    uint64_t b;
    memcpy(&b, &v, sizeof b);
    *r = scalar(SBX_TAG_F64, b);
}

/* The result record is at offset 0 of the output buffer; its data follows it. */
HOT static void ret_data(sbx_value *r, uint32_t tag, const void *p, size_t len) {
    uint32_t off = out_append(0, p, len);
    r->tag = tag;
    r->len = (uint32_t)len;
    r->bits = off;
}

void sbx_ret_str(sbx_value *r, const char *s, size_t len) { ret_data(r, SBX_TAG_STR, s, len); }
void sbx_ret_bytes(sbx_value *r, const void *p, size_t len) { ret_data(r, SBX_TAG_BYTES, p, len); }

sbx_value sbx_val_i32(int32_t v) { return scalar(SBX_TAG_I32, (uint64_t)(int64_t)v); }
sbx_value sbx_val_i64(int64_t v) { return scalar(SBX_TAG_I64, (uint64_t)v); }
sbx_value sbx_val_u64(uint64_t v) { return scalar(SBX_TAG_U64, v); }
sbx_value sbx_val_bool(bool v) { return scalar(SBX_TAG_BOOL, v ? 1 : 0); }

sbx_value sbx_val_f64(double v) {
    uint64_t b;
    memcpy(&b, &v, sizeof b);
    return scalar(SBX_TAG_F64, b);
}

sbx_value sbx_val_str(const char *s) {
    sbx_value v = {SBX_TAG_STR, (uint32_t)strlen(s), (uint64_t)(uintptr_t)s};
    return v;
}

sbx_value sbx_val_bytes(const void *p, size_t len) {
    sbx_value v = {SBX_TAG_BYTES, (uint32_t)len, (uint64_t)(uintptr_t)p};
    return v;
}

static bool is_data_tag(uint32_t tag) { return tag == SBX_TAG_STR || tag == SBX_TAG_BYTES; }

/* ---- Ending a call --------------------------------------------------------------------- */

/* Writes the result record at offset 0 of the output buffer (its data is already in
 * place after it) together with the buffered output. */
HOT static void finish(uint32_t status, const sbx_value *value) {
    struct sbx_result *r = (struct sbx_result *)out_base();
    if (out_pos < sizeof(*r)) out_pos = sizeof(*r);
    r->status = status;
    r->value = *value;
    r->size = attach_print(0, &r->print_off, &r->print_len);
}

/* Ends the call with `status` and a STR message, then continues at the loop with a
 * fresh stack; used by sbx_abort and when a host function failed. */
size_t sbx_utf8_trim(const char *s, size_t len) {
    size_t i = len, cont = 0;
    while (i > 0 && cont < 3 && ((uint8_t)s[i - 1] & 0xC0) == 0x80) {
        i--;
        cont++;
    }
    if (i == 0) return len;
    uint8_t lead = (uint8_t)s[i - 1];
    size_t need = lead >= 0xF0 ? 3 : lead >= 0xE0 ? 2 : lead >= 0xC0 ? 1 : 0;
    return (lead >= 0xC0 && cont < need) ? i - 1 : len;
}

_Noreturn static void unwind(uint32_t status, const char *msg, size_t len) {
    /* Messages are STR values, which the host checks: never cut inside a character. */
    if (len > ABORT_MSG_MAX) len = ABORT_MSG_MAX;
    len = sbx_utf8_trim(msg, len);
    out_pos = sizeof(struct sbx_result);
    uint8_t *at = out_base() + out_pos;
    memcpy(at, msg, len);
    sbx_value v = {SBX_TAG_STR, (uint32_t)len, out_pos};
    out_pos += len;
    finish(status, &v);
    sbx_restart_loop(boot->stack_top);
}

void sbx_abort(const char *fmt, ...) {
    char msg[ABORT_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    if ((size_t)n >= sizeof msg) n = sizeof msg - 1;
    unwind(SBX_STATUS_ABORT, msg, (size_t)n);
}

/* ---- Dispatch ---------------------------------------------------------------------------- */

HOT static int name_is(const struct sbx_func_desc *d, const char *name, size_t len) {
    return strnlen(d->name, sizeof d->name) == len && memcmp(d->name, name, len) == 0;
}

/* `hint`: 1 + the index the host expects the function at (0: none); checked, never
 * trusted: the name decides. */
HOT static const struct sbx_func_desc *find_function(const char *name, size_t len,
                                                     uint32_t hint) {
    if (hint && hint <= (size_t)(__stop_sbx_funcs - __start_sbx_funcs) &&
        name_is(&__start_sbx_funcs[hint - 1], name, len))
        return &__start_sbx_funcs[hint - 1];
    for (const struct sbx_func_desc *d = __start_sbx_funcs; d < __stop_sbx_funcs; d++) {
        if (name_is(d, name, len)) return d;
    }
    return 0;
}

HOT static void fail(uint32_t status) {
    sbx_value v = {SBX_TAG_VOID, 0, 0};
    finish(status, &v);
}

/* Runs the call record in the input buffer and leaves its result in the output buffer.
 * The host is trusted by the guest, but the record is still checked: a malformed one is
 * answered with SBX_STATUS_BAD_RECORD rather than read out of bounds. */
HOT static void dispatch(void) {
    const uint8_t *in = (const uint8_t *)(uintptr_t)boot->in_buf;
    const struct sbx_call *c = (const struct sbx_call *)in;
    out_pos = sizeof(struct sbx_result);

    if (c->size < sizeof(*c) || c->size > boot->in_size || c->argc > SBX_MAX_ARGS ||
        c->name_len > c->size || c->name_off > c->size - c->name_len)
        return fail(SBX_STATUS_BAD_RECORD);
    const struct sbx_func_desc *d =
        find_function((const char *)in + c->name_off, c->name_len, c->print_off);
    if (!d) return fail(SBX_STATUS_NOT_FOUND);
    if (c->argc != d->nparams) return fail(SBX_STATUS_BAD_ARGS);

    sbx_value args[SBX_MAX_ARGS];
    for (uint32_t i = 0; i < c->argc; i++) {
        args[i] = c->args[i];
        if (args[i].tag != d->params[i]) return fail(SBX_STATUS_BAD_ARGS);
        if (is_data_tag(args[i].tag)) {
            if (args[i].len > c->size || args[i].bits > c->size - args[i].len)
                return fail(SBX_STATUS_BAD_RECORD);
            args[i].bits = (uint64_t)(uintptr_t)(in + args[i].bits);
        }
    }
    sbx_value ret = {SBX_TAG_VOID, 0, 0};
    ((sbx_func)(uintptr_t)d->entry)(args, &ret);
    if (ret.tag != d->ret)
        sbx_abort("%s returned tag %u, declared %u", d->name, ret.tag, d->ret);
    finish(SBX_STATUS_OK, &ret);
}

HOT void sbx_loop(void) {
    for (;;) {
        clear_vector_registers();
        port_out(SBX_PORT_RETURN, 0);
        dispatch();
    }
}

HOT void sbx_start(const struct sbx_boot_info *bi) {
    boot = bi;
    sbx_heap_init((void *)(uintptr_t)bi->heap_base, bi->heap_size);
    dispatch();
    sbx_loop();
}

/* ---- Host calls --------------------------------------------------------------------------- */

sbx_value sbx_host_call(const char *name, int argc, const sbx_value *args) {
    size_t name_len = strlen(name);
    if (argc < 0 || argc > SBX_MAX_ARGS) sbx_abort("host call %s: %d arguments", name, argc);
    if (name_len > SBX_NAME_MAX) sbx_abort("host call name too long");

    /* The record goes after the result being built, so that a function may call the host
     * after setting its result. */
    size_t saved = out_pos;
    size_t rec = align8(out_pos);
    struct sbx_call *c = (struct sbx_call *)(out_base() + rec);
    out_pos = rec + sizeof(*c);
    c->argc = (uint32_t)argc;
    c->name_len = (uint32_t)name_len;
    c->name_off = out_append(rec, name, name_len);
    for (int i = 0; i < argc; i++) {
        c->args[i] = args[i];
        if (is_data_tag(args[i].tag))
            c->args[i].bits = out_append(rec, (const void *)(uintptr_t)args[i].bits, args[i].len);
    }
    c->size = attach_print(rec, &c->print_off, &c->print_len);
    port_out(SBX_PORT_HOST_CALL, (uint32_t)rec);
    out_pos = saved;

    const uint8_t *reply = (const uint8_t *)(uintptr_t)boot->reply_buf;
    const struct sbx_result *r = (const struct sbx_result *)reply;
    sbx_value v = r->value;
    if (r->status == SBX_STATUS_HOST_ERROR) {
        size_t len = 0;
        const char *msg = "";
        if (v.tag == SBX_TAG_STR && v.len <= r->size && v.bits <= r->size - v.len) {
            msg = (const char *)reply + v.bits;
            len = v.len;
        }
        unwind(SBX_STATUS_HOST_ERROR, msg, len);
    }
    if (r->status != SBX_STATUS_OK || r->size > boot->reply_size)
        sbx_abort("host call %s: malformed reply", name);
    if (is_data_tag(v.tag)) {
        if (v.len > r->size || v.bits > r->size - v.len)
            sbx_abort("host call %s: malformed reply", name);
        v.bits = (uint64_t)(uintptr_t)(reply + v.bits);
    }
    return v;
}

const char *sbx_host_call_str(const char *name, const char *arg, size_t *len) {
    sbx_value a = sbx_val_str(arg);
    sbx_value v = sbx_host_call(name, 1, &a);
    if (v.tag != SBX_TAG_STR) return 0;
    if (len) *len = v.len;
    return (const char *)(uintptr_t)v.bits;
}
