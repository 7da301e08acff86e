/* native/platform.c: the engine's platform layer on Linux, for the native test driver:
 * PROT_NONE reservations of the memory windows, mprotect on grow, SIGSEGV -> trap. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>

#include "../engine.h"

static sigjmp_buf fault_jmp;
static volatile int in_op;
static volatile uint64_t fault_addr;
static uint64_t mapped_pages[WASM_MAX_MEMORIES];
static unsigned char reserved[WASM_MAX_MEMORIES];

static uint8_t *window(uint32_t k) {
    return (uint8_t *)(uintptr_t)(ENG_WINDOW_BASE + (uint64_t)k * WASM_WINDOW_STRIDE);
}

bool plat_grow(uint32_t memory, uint64_t pages) {
    if (memory >= WASM_MAX_MEMORIES) return false;
    if (!reserved[memory]) {
        void *p = mmap(window(memory), WASM_WINDOW_STRIDE, PROT_NONE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
        if (p != window(memory)) return false;
        reserved[memory] = 1;
    }
    if (pages <= mapped_pages[memory]) return true;
    if (pages > 65536) return false;
    if (mprotect(window(memory), pages * WASM_PAGE_SIZE, PROT_READ | PROT_WRITE) != 0) return false;
    mapped_pages[memory] = pages;
    return true;
}

/* Host imports: the native driver registers a callback (Python, through ctypes). */
typedef const uint8_t *(*import_cb)(uint32_t, uint32_t, const uint8_t *, size_t, size_t *);
static import_cb import_callback;
void native_set_import(import_cb cb) { import_callback = cb; }

const uint8_t *plat_import(uint32_t instance, uint32_t func_index, const uint8_t *args,
                           size_t args_len, uint32_t memory, size_t *result_len) {
    (void)memory;
    if (!import_callback) return 0;
    return import_callback(instance, func_index, args, args_len, result_len);
}

void *plat_malloc(size_t n) { return malloc(n); }
void *plat_calloc(size_t n, size_t size) { return calloc(n, size); }
void *plat_realloc(void *p, size_t n) { return realloc(p, n); }
void plat_free(void *p) { free(p); }

static void on_segv(int sig, siginfo_t *si, void *uc) {
    (void)uc;
    uint64_t a = (uint64_t)(uintptr_t)si->si_addr;
    if (in_op && a >= ENG_WINDOW_BASE &&
        a < ENG_WINDOW_BASE + (uint64_t)WASM_MAX_MEMORIES * WASM_WINDOW_STRIDE) {
        fault_addr = a;
        siglongjmp(fault_jmp, 1);
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Optional time limit per operation (fuzzing): SIGALRM abandons the operation like a
 * fault and sets native_timed_out. */
static long timeout_us;
int native_timed_out;
void native_set_timeout_us(long us) { timeout_us = us; }

static void on_alarm(int sig) {
    (void)sig;
    if (in_op) {
        native_timed_out = 1;
        siglongjmp(fault_jmp, 2);
    }
}

static void arm(long us) {
    struct itimerval it = {{0, 0}, {us / 1000000, us % 1000000}};
    setitimer(ITIMER_REAL, &it, 0);
}

void native_init(void) {
    signal(SIGALRM, on_alarm);
    static char altstack[64 * 1024];
    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack};
    sigaltstack(&ss, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigaction(SIGSEGV, &sa, 0);
    sigaction(SIGBUS, &sa, 0);
}

/* Wrappers the driver calls: each runs an engine operation with the fault handler armed
 * and returns the reply. */
#define GUARDED(call)                                                                  \
    do {                                                                               \
        native_timed_out = 0;                                                          \
        if (sigsetjmp(fault_jmp, 1)) {                                                 \
            in_op = 0;                                                                 \
            if (timeout_us) arm(0);                                                    \
            eng_fault(fault_addr);                                                     \
        } else {                                                                       \
            in_op = 1;                                                                 \
            if (timeout_us) arm(timeout_us);                                           \
            call;                                                                      \
            in_op = 0;                                                                 \
            if (timeout_us) arm(0);                                                    \
        }                                                                              \
        return eng_reply(reply_len);                                                   \
    } while (0)

const uint8_t *native_load(const uint8_t *bytes, size_t len, size_t *reply_len) {
    uint8_t *copy = eng_alloc(len);
    memcpy(copy, bytes, len);
    GUARDED(eng_load(copy, len));
}
const uint8_t *native_instantiate(uint32_t m, size_t *reply_len) { GUARDED(eng_instantiate(m)); }
const uint8_t *native_register(uint32_t i, const char *name, size_t *reply_len) {
    GUARDED(eng_register(i, name, strlen(name)));
}
const uint8_t *native_invoke(uint32_t i, const char *name, size_t name_len, const uint8_t *args,
                             size_t args_len, size_t *reply_len) {
    GUARDED(eng_invoke(i, name, name_len, args, args_len));
}
const uint8_t *native_get(uint32_t i, const char *name, size_t name_len, size_t *reply_len) {
    GUARDED(eng_get(i, name, name_len));
}
