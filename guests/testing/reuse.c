/* reuse.c: a guest that leaves CPU state behind on purpose, to test that no later caller
 * sees it (tests/core/test_hostile_reuse.py): after a restore, a per-call reset, a pool
 * handoff, or on a machine another sandbox used before (sandbox/machines.py).
 *
 * `plant` sets the x87 state (control word, a half-full register stack, an exception
 * flag), MXCSR (flush-to-zero, denormals-are-zero, round toward zero), vector registers
 * and, if asked, the AVX registers (ymm upper halves) and the AVX-512 registers (zmm16-31,
 * the upper halves of zmm0-15, opmasks), then ends its call in one of several ways: its
 * own `out` to the return port (skipping the SDK's return path, which zeroes xmm0-15),
 * with single-stepping armed and/or in a MOV SS interrupt shadow at that `out`, a trap, an
 * endless loop (a timeout), or a host call. The `probe_*` functions report what a call
 * sees at entry; a test compares them with what a fresh sandbox's call sees.
 */
#include "sbx.h"

/* Mode bits of `plant`. */
#define PLANT_AVX 1u      /* ymm0-15 (upper halves too) */
#define PLANT_AVX512 2u   /* zmm0-31, k0-7 */
#define SINGLE_STEP 4u    /* RFLAGS.TF set just before the exit's `out` */
#define SHADOW 8u         /* the `out` in a MOV SS interrupt shadow */
#define EXIT_TRAP 16u     /* end with ud2 instead of a result */
#define EXIT_SPIN 32u     /* end in an endless loop (a timeout) */
#define EXIT_HOST 64u     /* end in a host call to `boom` */

static uint8_t pattern[64 * 32] __attribute__((aligned(64)));

/* x87: a non-default control word, three values left on the stack, an exception flag;
 * MXCSR: flush-to-zero, denormals-are-zero, round toward zero, a flag set; DF set. */
static void plant_legacy(uint64_t seed) {
    uint16_t fcw = 0x0c7f ^ 0x0300;          /* round toward zero, single precision */
    uint32_t mxcsr = 0x1f80 | 0x8000 | 0x0040 | 0x6000 | 0x0001;
    double one = 1.0, zero = 0.0;
    __asm__ volatile("fldcw %0" : : "m"(fcw));
    __asm__ volatile("fld1\n\tfldpi\n\tfldl2t\n\t" : : : "memory");
    __asm__ volatile("fldl %0\n\tfdivl %1\n\t" : : "m"(one), "m"(zero) : "memory"); /* ZE */
    __asm__ volatile("ldmxcsr %0" : : "m"(mxcsr));
    __asm__ volatile("movq %0, %%xmm7\n\tmovq %0, %%xmm15" : : "r"(seed) : "xmm7", "xmm15");
}

static void fill(uint64_t seed) {
    for (unsigned i = 0; i < sizeof pattern / 8; i++)
        ((uint64_t *)pattern)[i] = seed * 0x9e3779b97f4a7c15ull + i;
}

static void plant_avx(void) {
    __asm__ volatile(
        "vmovdqu 0(%0), %%ymm0\n\tvmovdqu 32(%0), %%ymm1\n\tvmovdqu 64(%0), %%ymm2\n\t"
        "vmovdqu 96(%0), %%ymm8\n\tvmovdqu 128(%0), %%ymm14\n\tvmovdqu 160(%0), %%ymm15\n\t"
        : : "r"(pattern) : "memory");
}

static void plant_avx512(void) {
    __asm__ volatile(
        "vmovdqu64 0(%0), %%zmm16\n\tvmovdqu64 64(%0), %%zmm24\n\tvmovdqu64 128(%0), %%zmm31\n\t"
        "vmovdqu64 192(%0), %%zmm3\n\t"
        "kmovq 256(%0), %%k1\n\tkmovq 264(%0), %%k5\n\tkmovq 272(%0), %%k7\n\t"
        : : "r"(pattern) : "memory");
}

static void forge_void_result(void) {
    const struct sbx_boot_info *bi = sbx_boot_info();
    struct sbx_result *r = (struct sbx_result *)(uintptr_t)bi->out_buf;
    memset(r, 0, sizeof *r);
    r->status = SBX_STATUS_OK;
    r->value.tag = SBX_TAG_VOID;
    r->size = sizeof *r;
}

#define STR_(x) #x
#define STR(x) STR_(x)

/* Plants state, then ends the call as `mode` says: by default with a forged result and
 * its own `out` (the SDK's return path, which zeroes xmm0-15, is skipped). */
SBX_EXPORT(plant, SBX_TAG_VOID, SBX_TAG_U64, SBX_TAG_U32) {
    uint64_t seed = sbx_arg_u64(args, 0);
    uint32_t mode = sbx_arg_u32(args, 1);
    (void)ret;
    fill(seed);
    plant_legacy(seed);
    if (mode & PLANT_AVX) plant_avx();
    if (mode & PLANT_AVX512) plant_avx512();
    if (mode & EXIT_TRAP) __builtin_trap();
    if (mode & EXIT_SPIN) for (;;) __asm__ volatile("");
    if (mode & EXIT_HOST) {
        sbx_value a = sbx_val_i64(1);
        sbx_host_call("boom", 1, &a);
        for (;;) __asm__ volatile("");
    }
    forge_void_result();
    uint64_t tf = (mode & SINGLE_STEP) ? 0x100 : 0;
    if (mode & SHADOW) {
        __asm__ volatile(
            "pushfq\n\torq %0, (%%rsp)\n\tmov %%ss, %%cx\n\txor %%eax, %%eax\n\t"
            "popfq\n\tmov %%cx, %%ss\n\toutl %%eax, $" STR(SBX_PORT_RETURN) "\n\tud2"
            : : "r"(tf) : "rax", "rcx", "memory");
    } else {
        __asm__ volatile(
            "pushfq\n\torq %0, (%%rsp)\n\txor %%eax, %%eax\n\tpopfq\n\t"
            "outl %%eax, $" STR(SBX_PORT_RETURN) "\n\tud2"
            : : "r"(tf) : "rax", "memory");
    }
    __builtin_unreachable();
}

/* What a call sees at entry: RFLAGS, then the FXSAVE image (x87 and SSE state). */
SBX_EXPORT(probe_legacy, SBX_TAG_BYTES) {
    static uint8_t area[8 + 512] __attribute__((aligned(16)));
    __asm__ volatile("pushfq\n\tpopq (%0)\n\tfxsave64 8(%0)" : : "r"(area) : "memory");
    sbx_ret_bytes(ret, area, sizeof area);
}

SBX_EXPORT(probe_avx, SBX_TAG_BYTES) {
    static uint8_t out[16 * 32] __attribute__((aligned(32)));
    __asm__ volatile(
        "vmovdqu %%ymm0, 0(%0)\n\tvmovdqu %%ymm1, 32(%0)\n\tvmovdqu %%ymm2, 64(%0)\n\t"
        "vmovdqu %%ymm3, 96(%0)\n\tvmovdqu %%ymm4, 128(%0)\n\tvmovdqu %%ymm5, 160(%0)\n\t"
        "vmovdqu %%ymm6, 192(%0)\n\tvmovdqu %%ymm7, 224(%0)\n\tvmovdqu %%ymm8, 256(%0)\n\t"
        "vmovdqu %%ymm9, 288(%0)\n\tvmovdqu %%ymm10, 320(%0)\n\tvmovdqu %%ymm11, 352(%0)\n\t"
        "vmovdqu %%ymm12, 384(%0)\n\tvmovdqu %%ymm13, 416(%0)\n\tvmovdqu %%ymm14, 448(%0)\n\t"
        "vmovdqu %%ymm15, 480(%0)\n\t"
        : : "r"(out) : "memory");
    sbx_ret_bytes(ret, out, sizeof out);
}

SBX_EXPORT(probe_avx512, SBX_TAG_BYTES) {
    static uint8_t out[32 * 64 + 8 * 8] __attribute__((aligned(64)));
#define Z(n) "vmovdqu64 %%zmm" #n ", " #n "*64(%0)\n\t"
    __asm__ volatile(
        Z(0) Z(1) Z(2) Z(3) Z(4) Z(5) Z(6) Z(7) Z(8) Z(9) Z(10) Z(11) Z(12) Z(13) Z(14) Z(15)
        Z(16) Z(17) Z(18) Z(19) Z(20) Z(21) Z(22) Z(23) Z(24) Z(25) Z(26) Z(27) Z(28) Z(29)
        Z(30) Z(31)
        "kmovq %%k0, 2048(%0)\n\tkmovq %%k1, 2056(%0)\n\tkmovq %%k2, 2064(%0)\n\t"
        "kmovq %%k3, 2072(%0)\n\tkmovq %%k4, 2080(%0)\n\tkmovq %%k5, 2088(%0)\n\t"
        "kmovq %%k6, 2096(%0)\n\tkmovq %%k7, 2104(%0)\n\t"
        : : "r"(out) : "memory");
#undef Z
    sbx_ret_bytes(ret, out, sizeof out);
}

SBX_EXPORT(ok, SBX_TAG_I32) { sbx_ret_i32(ret, 42); }

/* Changes memory (so that a snapshot after it has another image). */
static uint64_t counter;
SBX_EXPORT(bump, SBX_TAG_U64) { sbx_ret_u64(ret, ++counter); }
