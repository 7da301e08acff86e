/* demo.c: the bundled demo guest: arithmetic, strings, state, host calls, and one
 * deliberate failure per kind of fault the runtime must survive. */
#include "sbx.h"

SBX_EXPORT(add, SBX_TAG_I32, SBX_TAG_I32, SBX_TAG_I32) {
    /* Wrapping add, like the i32 it declares. */
    sbx_ret_i32(ret, (int32_t)((uint32_t)sbx_arg_i32(args, 0) + (uint32_t)sbx_arg_i32(args, 1)));
}

SBX_EXPORT(echo, SBX_TAG_STR, SBX_TAG_STR) {
    size_t len;
    const char *s = sbx_arg_str(args, 0, &len);
    sbx_ret_str(ret, s, len);
}

SBX_EXPORT(echo_bytes, SBX_TAG_BYTES, SBX_TAG_BYTES) {
    size_t len;
    const uint8_t *p = sbx_arg_bytes(args, 0, &len);
    sbx_ret_bytes(ret, p, len);
}

SBX_EXPORT(fib, SBX_TAG_U64, SBX_TAG_U64) {
    uint64_t n = sbx_arg_u64(args, 0), a = 0, b = 1;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t t = a + b;
        a = b;
        b = t;
    }
    sbx_ret_u64(ret, a);
}

SBX_EXPORT(spin, SBX_TAG_U64, SBX_TAG_U64) {
    /* n iterations of a tight loop whose result depends on every iteration; the same
     * loop runs on the host in benches/ for comparison. */
    uint64_t n = sbx_arg_u64(args, 0), x = 0;
    for (uint64_t i = 0; i < n; i++) {
        x += i ^ (x >> 3);
        __asm__ volatile("" : "+r"(x));
    }
    sbx_ret_u64(ret, x);
}

SBX_EXPORT(counter, SBX_TAG_I64) {
    static int64_t count;
    sbx_ret_i64(ret, ++count);
}

SBX_EXPORT(call_host, SBX_TAG_STR, SBX_TAG_STR, SBX_TAG_STR) {
    const char *name = sbx_arg_str(args, 0, 0);
    const char *arg = sbx_arg_str(args, 1, 0);
    size_t len;
    const char *reply = sbx_host_call_str(name, arg, &len);
    if (!reply) sbx_abort("host function %s did not return a str", name);
    sbx_ret_str(ret, reply, len);
}

SBX_EXPORT(random_u64, SBX_TAG_U64) { sbx_ret_u64(ret, sbx_random_u64()); }

SBX_EXPORT(hello, SBX_TAG_STR, SBX_TAG_STR) {
    size_t len;
    const char *who = sbx_arg_str(args, 0, &len);
    char buf[256];
    int n = snprintf(buf, sizeof buf, "Hello, %.*s!", (int)len, who);
    sbx_print("guest says: %s\n", buf);
    sbx_ret_str(ret, buf, sbx_utf8_trim(buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1));
}

SBX_EXPORT(print_lines, SBX_TAG_U32, SBX_TAG_U32) {
    /* Prints n numbered lines: enough of them overflow the print buffer and exercise
     * the mid-call flush. */
    uint32_t n = sbx_arg_u32(args, 0);
    for (uint32_t i = 0; i < n; i++) sbx_print("line %u\n", i);
    sbx_ret_u32(ret, n);
}

SBX_EXPORT(format_f64, SBX_TAG_STR, SBX_TAG_STR, SBX_TAG_F64) {
    /* snprintf with a caller-chosen format for one double (tests compare with Python). */
    char buf[128];
    int n = snprintf(buf, sizeof buf, sbx_arg_str(args, 0, 0), sbx_arg_f64(args, 1));
    sbx_ret_str(ret, buf, sbx_utf8_trim(buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1));
}

SBX_EXPORT(heap_check, SBX_TAG_U64, SBX_TAG_U64) {
    /* Allocates n blocks of growing size, fills and verifies them, frees them; returns
     * the number of bytes verified. Aborts if the heap is exhausted. */
    uint64_t n = sbx_arg_u64(args, 0), total = 0;
    uint8_t *blocks[64];
    if (n > 64) n = 64;
    for (uint64_t i = 0; i < n; i++) {
        size_t sz = 16 + i * 97;
        blocks[i] = malloc(sz);
        if (!blocks[i]) sbx_abort("heap exhausted after %llu blocks", (unsigned long long)i);
        memset(blocks[i], (int)i, sz);
    }
    for (uint64_t i = 0; i < n; i++) {
        size_t sz = 16 + i * 97;
        for (size_t j = 0; j < sz; j++)
            if (blocks[i][j] != (uint8_t)i) sbx_abort("heap corruption in block %llu", (unsigned long long)i);
        total += sz;
        free(blocks[i]);
    }
    sbx_ret_u64(ret, total);
}

SBX_EXPORT(dirty_pages, SBX_TAG_U32, SBX_TAG_U32) {
    /* Writes one byte in each of n consecutive heap pages (restore benchmarks and tests:
     * a restore must undo exactly these). Returns n, capped at the heap's page count. */
    const struct sbx_boot_info *bi = sbx_boot_info();
    uint32_t n = sbx_arg_u32(args, 0);
    if ((uint64_t)n > bi->heap_size / 4096) n = (uint32_t)(bi->heap_size / 4096);
    volatile uint8_t *heap = (volatile uint8_t *)(uintptr_t)bi->heap_base;
    for (uint32_t i = 0; i < n; i++) heap[(uint64_t)i * 4096] = (uint8_t)(i + 1);
    sbx_ret_u32(ret, n);
}

SBX_EXPORT(heap_byte, SBX_TAG_U32, SBX_TAG_U32) {
    /* The first byte of heap page i (0 unless dirty_pages wrote it). */
    const struct sbx_boot_info *bi = sbx_boot_info();
    uint32_t i = sbx_arg_u32(args, 0);
    if ((uint64_t)i >= bi->heap_size / 4096) sbx_abort("page %u is outside the heap", i);
    sbx_ret_u32(ret, ((volatile uint8_t *)(uintptr_t)bi->heap_base)[(uint64_t)i * 4096]);
}

/* CPU state that outlives a call unless the host restores it (restore tests): MXCSR and
 * an SSE register nothing else uses. (The FS/GS bases and segment selectors, which ring
 * 3 can change too: guests/testing/segments.c.) */
SBX_EXPORT(set_mxcsr, SBX_TAG_VOID, SBX_TAG_U32) {
    uint32_t v = sbx_arg_u32(args, 0);
    __asm__ volatile("ldmxcsr %0" : : "m"(v));
}

SBX_EXPORT(get_mxcsr, SBX_TAG_U32) {
    uint32_t v;
    __asm__ volatile("stmxcsr %0" : "=m"(v));
    sbx_ret_u32(ret, v);
}

SBX_EXPORT(set_xmm15, SBX_TAG_VOID, SBX_TAG_U64) {
    uint64_t v = sbx_arg_u64(args, 0);
    __asm__ volatile("movq %0, %%xmm15" : : "r"(v) : "xmm15");
}

/* Leaves a value in xmm15 and traps, so that the value is still in the vCPU afterwards:
 * the SDK zeroes the vector registers before every return, so only a call that never
 * returns (a trap, a timeout) can leave one set for a restore to undo. */
SBX_EXPORT(set_xmm15_then_trap, SBX_TAG_VOID, SBX_TAG_U64) {
    uint64_t v = sbx_arg_u64(args, 0);
    __asm__ volatile("movq %0, %%xmm15\n\tud2" : : "r"(v) : "xmm15");
}

SBX_EXPORT(get_xmm15, SBX_TAG_U64) {
    uint64_t v;
    __asm__ volatile("movq %%xmm15, %0" : "=r"(v));
    sbx_ret_u64(ret, v);
}

/* One echo per scalar type: the host's conversions are tested through these. */
SBX_EXPORT(echo_i32, SBX_TAG_I32, SBX_TAG_I32) { sbx_ret_i32(ret, sbx_arg_i32(args, 0)); }
SBX_EXPORT(echo_u32, SBX_TAG_U32, SBX_TAG_U32) { sbx_ret_u32(ret, sbx_arg_u32(args, 0)); }
SBX_EXPORT(echo_i64, SBX_TAG_I64, SBX_TAG_I64) { sbx_ret_i64(ret, sbx_arg_i64(args, 0)); }
SBX_EXPORT(echo_u64, SBX_TAG_U64, SBX_TAG_U64) { sbx_ret_u64(ret, sbx_arg_u64(args, 0)); }
SBX_EXPORT(echo_f32, SBX_TAG_F32, SBX_TAG_F32) { sbx_ret_f32(ret, sbx_arg_f32(args, 0)); }
SBX_EXPORT(echo_f64, SBX_TAG_F64, SBX_TAG_F64) { sbx_ret_f64(ret, sbx_arg_f64(args, 0)); }
SBX_EXPORT(echo_bool, SBX_TAG_BOOL, SBX_TAG_BOOL) { sbx_ret_bool(ret, !!sbx_arg_bool(args, 0)); }
SBX_EXPORT(noop, SBX_TAG_VOID) {}

SBX_EXPORT(sum_many, SBX_TAG_I64, SBX_TAG_I64, SBX_TAG_I64, SBX_TAG_I64, SBX_TAG_I64, SBX_TAG_I64,
           SBX_TAG_I64, SBX_TAG_I64, SBX_TAG_I64, SBX_TAG_I64, SBX_TAG_I64, SBX_TAG_I64,
           SBX_TAG_I64, SBX_TAG_I64, SBX_TAG_I64, SBX_TAG_I64, SBX_TAG_I64, SBX_TAG_I64,
           SBX_TAG_I64, SBX_TAG_I64, SBX_TAG_I64, SBX_TAG_I64, SBX_TAG_I64, SBX_TAG_I64,
           SBX_TAG_I64, SBX_TAG_I64, SBX_TAG_I64, SBX_TAG_I64, SBX_TAG_I64, SBX_TAG_I64,
           SBX_TAG_I64, SBX_TAG_I64, SBX_TAG_I64) {
    /* The maximum of 32 arguments. */
    int64_t s = 0;
    for (int i = 0; i < 32; i++) s += sbx_arg_i64(args, i);
    sbx_ret_i64(ret, s);
}

/* Where layout.py puts the top-level page table (supervisor-only). */
#define PAGE_TABLE_ADDR 0x1000

static uint64_t recurse(uint64_t depth) {
    volatile uint8_t frame[1024];
    frame[0] = (uint8_t)depth;
    return recurse(depth + 1) + frame[0];
}

SBX_EXPORT(fault, SBX_TAG_VOID, SBX_TAG_STR) {
    const char *kind = sbx_arg_str(args, 0, 0);
    if (!strcmp(kind, "null")) {
        (void)*(volatile uint64_t *)0;
    } else if (!strcmp(kind, "wild_write")) {
        *(volatile uint64_t *)PAGE_TABLE_ADDR = 0x7;
    } else if (!strcmp(kind, "exec_data")) {
        volatile uint8_t code[16] = {0xc3}; /* ret, on the stack (NX) */
        ((void (*)(void))(uintptr_t)code)();
    } else if (!strcmp(kind, "ud2")) {
        __builtin_trap();
    } else if (!strcmp(kind, "divzero")) {
        /* An explicit idiv: the compiler may rewrite `1 / x` without a division. */
        int32_t zero = 0, num = 100;
        int32_t high = 0;
        __asm__ volatile("idivl %2" : "+a"(num), "+d"(high) : "r"(zero));
    } else if (!strcmp(kind, "stack_overflow")) {
        (void)recurse(0);
    } else if (!strcmp(kind, "abort")) {
        sbx_abort("deliberate abort (%s)", kind);
    } else if (!strcmp(kind, "bad_port")) {
        __asm__ volatile("outl %0, %1" : : "a"(0), "Nd"((uint16_t)SBX_PORT_UNASSIGNED));
    } else if (!strcmp(kind, "privileged")) {
        __asm__ volatile("hlt");
    } else if (!strcmp(kind, "spin_forever")) {
        for (;;) __asm__ volatile("");
    } else {
        sbx_abort("unknown fault kind: %s", kind);
    }
    sbx_abort("fault %s did not fault", kind);
}
