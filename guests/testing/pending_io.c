/* pending_io.c: a guest that stops in the middle of an instruction on purpose, to test
 * that every reset really returns to the snapshot (tests/core/test_hostile_reset.py).
 *
 * Each `pend_*` function first changes state a reset must undo (globals, the heap, MXCSR,
 * an SSE register), then executes one port-I/O instruction that the host reports as a
 * trap (bad_port or a malformed record) and that KVM leaves pending: KVM completes it at
 * the next KVM_RUN unless the host retires it first. The instruction is followed by a
 * jump to `hijack_entry`, the code a hostile guest "plants": if a reset loads the
 * snapshot's registers and KVM then completes the old instruction, execution continues
 * there, with the snapshot's registers and the next caller's call record. The hijacker
 * answers every later call itself: it passes the arguments of `echo` to the host function
 * `leak`, returns "forged" from it, 1337 from `ok`, and a GuestAbort "hijacked" from
 * anything else. None of that may ever be seen: after a correct reset the next call runs
 * the real function from the snapshot's state.
 *
 * `state` reports what a call sees at entry (registers, MXCSR, x87 control word, vector
 * registers) and a checksum of the guest image (code, data, bss) and of the start of the
 * heap, so that a test can compare the first call after a reset with the first call of
 * a fresh sandbox made from the same snapshot.
 */
#include "sbx.h"

#define HEAP_CHECKED (256u * 1024u) /* bytes of heap that `state` checksums */

/* Written by `scribble` and by every pend_* function; all in the image, so `state`'s
 * checksum covers them. The string I/O instructions read and write `io_buffer`. */
uint64_t calls_seen;
uint64_t data_word = 0x1122334455667788ull;
__attribute__((aligned(4096))) uint8_t io_buffer[8192];

extern const uint8_t __executable_start[];
extern const uint8_t _end[];

static uint64_t fnv1a(uint64_t h, const volatile uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* Changes everything `state` reports on, except the registers at entry. */
static void dirty_state(void) {
    const struct sbx_boot_info *bi = sbx_boot_info();
    volatile uint8_t *heap = (volatile uint8_t *)(uintptr_t)bi->heap_base;
    calls_seen++;
    data_word = data_word * 31 + calls_seen;
    for (size_t i = 0; i < sizeof io_buffer; i += 512) io_buffer[i] ^= (uint8_t)(0x5a + i);
    for (size_t off = 0; off < HEAP_CHECKED; off += 4096 * 7) heap[off] ^= 0xa5;
    uint32_t mxcsr = 0x1f80 ^ 0x6000; /* round toward zero */
    __asm__ volatile("ldmxcsr %0" : : "m"(mxcsr));
    uint64_t junk = 0xdeadbeefcafef00dull ^ calls_seen;
    __asm__ volatile("movq %0, %%xmm13" : : "r"(junk) : "xmm13");
}

SBX_EXPORT(scribble, SBX_TAG_U64) {
    dirty_state();
    sbx_ret_u64(ret, calls_seen);
}

SBX_EXPORT(state, SBX_TAG_BYTES) {
    uint64_t r[16];
    /* First statement: the registers as the dispatcher handed them over (values that
     * depend only on the state the call started from). */
    __asm__ volatile(
        "mov %%rsp, 0(%0)\n\t"
        "pushfq\n\tpopq 8(%0)\n\t"
        "mov %%rbx, 16(%0)\n\t"
        "mov %%rbp, 24(%0)\n\t"
        "mov %%r12, 32(%0)\n\t"
        "mov %%r13, 40(%0)\n\t"
        "mov %%r14, 48(%0)\n\t"
        "mov %%r15, 56(%0)\n\t"
        "movq %%xmm8, 64(%0)\n\t"
        "movq %%xmm13, 72(%0)\n\t"
        "movq %%xmm15, 80(%0)\n\t"
        "stmxcsr 88(%0)\n\t"
        "fnstcw 92(%0)"
        :
        : "r"(r)
        : "memory");
    const struct sbx_boot_info *bi = sbx_boot_info();
    r[12] = fnv1a(0xcbf29ce484222325ull, __executable_start, (size_t)(_end - __executable_start));
    size_t heap = bi->heap_size < HEAP_CHECKED ? bi->heap_size : HEAP_CHECKED;
    r[13] = fnv1a(0xcbf29ce484222325ull, (const volatile uint8_t *)(uintptr_t)bi->heap_base, heap);
    r[14] = calls_seen;
    r[15] = data_word;
    sbx_ret_bytes(ret, r, sizeof r);
}

SBX_EXPORT(echo, SBX_TAG_STR, SBX_TAG_STR) {
    size_t len;
    const char *s = sbx_arg_str(args, 0, &len);
    sbx_ret_str(ret, s, len);
}

SBX_EXPORT(ok, SBX_TAG_I32) { sbx_ret_i32(ret, 42); }

SBX_EXPORT(spin, SBX_TAG_VOID) {
    dirty_state();
    for (;;) __asm__ volatile("");
}

SBX_EXPORT(ud2, SBX_TAG_VOID) {
    dirty_state();
    __builtin_trap();
}

/* Calls the host function `boom` (a test makes it raise BaseException, which ends the
 * call while the guest waits in its host-call `out`). */
SBX_EXPORT(host_call, SBX_TAG_I64) {
    dirty_state();
    sbx_value a = sbx_val_i64(1);
    sbx_value r = sbx_host_call("boom", 1, &a);
    sbx_ret_i64(ret, (int64_t)r.bits);
}

/* Prints past the print buffer, so the guest flushes mid-call (a test's output callback
 * raises BaseException in that flush). */
SBX_EXPORT(print_flood, SBX_TAG_U32) {
    dirty_state();
    for (int i = 0; i < 1000; i++) sbx_print("line %d of a flood\n", i);
    sbx_ret_u32(ret, 1000);
}

/* ---- The pending instructions ------------------------------------------------------- */

/* One assembly routine per kind: the I/O instruction, then the jump a hostile guest
 * would plant after it. RDI is kept for hijack_entry (it holds the boot info address
 * in a guest's initial state). */
#define PENDING(name, body)                                                            \
    void pend_asm_##name(void);                                                        \
    __asm__(".text\n.globl pend_asm_" #name "\n.type pend_asm_" #name ", @function\n" \
            "pend_asm_" #name ":\n" body "\n\tjmp hijack_entry\n");                    \
    SBX_EXPORT(pend_##name, SBX_TAG_VOID) {                                            \
        dirty_state();                                                                  \
        pend_asm_##name();                                                             \
    }

/* Port numbers from the ABI header, as assembler immediates ("$224"). */
#define ASM_IMMEDIATE_(n) "$" #n
#define ASM_IMMEDIATE(n) ASM_IMMEDIATE_(n)
#define ABI_PORT ASM_IMMEDIATE(SBX_PORT_RETURN)
#define FREE_PORT ASM_IMMEDIATE(SBX_PORT_UNASSIGNED)

PENDING(in8, "\tmov " ABI_PORT ", %dx\n\tinb %dx, %al")
PENDING(in16, "\tmov " ABI_PORT ", %dx\n\tinw %dx, %ax")
PENDING(in32, "\tmov " ABI_PORT ", %dx\n\tinl %dx, %eax")
PENDING(in32_free_port, "\tmov " FREE_PORT ", %dx\n\tinl %dx, %eax")
PENDING(out8, "\tmov " ABI_PORT ", %dx\n\txor %eax, %eax\n\toutb %al, %dx")
PENDING(out16, "\tmov " ABI_PORT ", %dx\n\txor %eax, %eax\n\toutw %ax, %dx")
PENDING(out32_free_port, "\tmov " FREE_PORT ", %dx\n\txor %eax, %eax\n\toutl %eax, %dx")
/* A 32-bit `out` to the return port with a record offset outside the output buffer. */
PENDING(out32_bad_record, "\tmov " ABI_PORT ", %dx\n\tmov $0x7ffffff0, %eax\n\toutl %eax, %dx")
PENDING(insb, "\tlea io_buffer(%rip), %rdi\n\tmov " ABI_PORT ", %dx\n\tinsb")
PENDING(insl, "\tlea io_buffer(%rip), %rdi\n\tmov " ABI_PORT ", %dx\n\tinsl")
PENDING(rep_insb, "\tlea io_buffer(%rip), %rdi\n\tmov " ABI_PORT ", %dx\n"
                  "\tmov $64, %ecx\n\trep insb")
PENDING(rep_insl, "\tlea io_buffer(%rip), %rdi\n\tmov " ABI_PORT ", %dx\n"
                  "\tmov $1024, %ecx\n\trep insl")
PENDING(outsb, "\tlea io_buffer(%rip), %rsi\n\tmov " ABI_PORT ", %dx\n\toutsb")
PENDING(outsl, "\tlea io_buffer(%rip), %rsi\n\tmov " FREE_PORT ", %dx\n\toutsl")
PENDING(rep_outsb, "\tlea io_buffer(%rip), %rsi\n\tmov " ABI_PORT ", %dx\n"
                   "\tmov $64, %ecx\n\trep outsb")
/* Single-stepping set just before an `out` to the return port (POPF's TF takes effect
 * after the next instruction): the #DB it raises is left pending in KVM at the exit. */
PENDING(tf_out, "\tpushf\n\torq $0x100, (%rsp)\n\tmov " ABI_PORT ", %dx\n"
                "\tmov $0x7ffffff0, %eax\n\tpopf\n\toutl %eax, %dx")

/* ---- The planted code ----------------------------------------------------------------- */

/* Reached only if a reset let KVM complete an instruction above after loading the
 * snapshot's registers: RSP is then the snapshot's, RDI the boot info (initial state). */
__asm__(".text\n.globl hijack_entry\n.type hijack_entry, @function\nhijack_entry:\n"
        "\tand $-16, %rsp\n\tcall hijacked\n\tud2\n");

static void put_out(uint16_t port, uint32_t value) {
    __asm__ volatile("outl %0, %1" : : "a"(value), "Nd"(port) : "memory");
}

static void forge_result(const struct sbx_boot_info *bi, uint32_t status, uint32_t tag,
                         uint64_t bits, const char *text) {
    struct sbx_result *r = (struct sbx_result *)(uintptr_t)bi->out_buf;
    size_t len = text ? strlen(text) : 0;
    r->status = status;
    r->print_off = 0;
    r->print_len = 0;
    r->value.tag = tag;
    r->value.len = (uint32_t)len;
    r->value.bits = text ? sizeof *r : bits;
    if (text) memcpy(r + 1, text, len);
    r->size = (uint32_t)(sizeof *r + len);
}

/* A hand-made host call (the SDK's needs its own globals, which the snapshot may not
 * have set up yet). */
static void leak(const struct sbx_boot_info *bi, const uint8_t *data, uint32_t len) {
    struct sbx_call *c = (struct sbx_call *)(uintptr_t)bi->out_buf;
    uint8_t *tail = (uint8_t *)(c + 1);
    memset(c, 0, sizeof *c);
    c->argc = 1;
    c->name_off = sizeof *c;
    c->name_len = 4;
    memcpy(tail, "leak", 4);
    c->args[0].tag = SBX_TAG_STR;
    c->args[0].len = len;
    c->args[0].bits = sizeof *c + 8;
    memcpy(tail + 8, data, len);
    c->size = (uint32_t)(sizeof *c + 8 + len);
    put_out(SBX_PORT_HOST_CALL, 0);
}

__attribute__((used, noreturn)) void hijacked(uint64_t rdi) {
    const struct sbx_boot_info *bi = sbx_boot_info();
    if (!bi) bi = (const struct sbx_boot_info *)(uintptr_t)rdi;
    if (!bi || bi->abi_version != SBX_ABI_VERSION) __builtin_trap();
    for (;;) {
        const uint8_t *in = (const uint8_t *)(uintptr_t)bi->in_buf;
        const struct sbx_call *c = (const struct sbx_call *)in;
        const char *name = (const char *)in + c->name_off;
        if (c->name_len == 4 && !memcmp(name, "echo", 4) && c->argc == 1 &&
            c->args[0].len < 4096) {
            leak(bi, in + c->args[0].bits, c->args[0].len);
            forge_result(bi, SBX_STATUS_OK, SBX_TAG_STR, 0, "forged");
        } else if (c->name_len == 2 && !memcmp(name, "ok", 2)) {
            forge_result(bi, SBX_STATUS_OK, SBX_TAG_I32, 1337, 0);
        } else {
            forge_result(bi, SBX_STATUS_ABORT, SBX_TAG_STR, 0, "hijacked");
        }
        put_out(SBX_PORT_RETURN, 0);
    }
}
