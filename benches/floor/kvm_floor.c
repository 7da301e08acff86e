/* kvm_floor.c: the KVM floor: the same KVM work as a sandbox with no runtime around it.
 *
 * Per iteration it creates a VM, backs 16 MiB of guest memory with a memfd, writes page
 * tables / GDT / TSS / IDT, creates a vCPU, sets CPUID, special and general registers
 * (ring 3, long mode) and runs to the guest's first `out` (create-to-first-exit); then it
 * measures the round trip of one exit (KVM_RUN -> out -> back), and a host loop of the
 * same shape as the demo guest's spin(). Prints one JSON object with medians in us.
 *
 *   kvm_floor [iterations] [roundtrips] [spin_n]
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MEM_SIZE (16u << 20)
#define PTE_P 1ull
#define PTE_W 2ull
#define PTE_U 4ull
#define PTE_NX (1ull << 63)
#define CODE 0x10000
#define PORT 0xE0

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static struct {
    struct kvm_cpuid2 c;
    struct kvm_cpuid_entry2 e[256];
} cpuid;

/* Page tables for 16 MiB with 4 KiB pages, descriptor tables, a TSS whose I/O bitmap
 * opens PORT, and ring-3 code `loop: out PORT, eax; inc eax; jmp loop`. */
static void write_image(uint8_t *mem) {
    uint64_t *pml4 = (void *)(mem + 0x1000), *pdpt = (void *)(mem + 0x2000);
    uint64_t *pd = (void *)(mem + 0x3000), *pt = (void *)(mem + 0x9000);
    pml4[0] = 0x2000 | PTE_P | PTE_W | PTE_U;
    pdpt[0] = 0x3000 | PTE_P | PTE_W | PTE_U;
    for (int i = 0; i < 8; i++) pd[i] = (0x9000 + i * 0x1000) | PTE_P | PTE_W | PTE_U;
    for (uint64_t a = 0x1000; a < 0x9000; a += 0x1000) pt[a >> 12] = a | PTE_P | PTE_W | PTE_NX;
    pt[CODE >> 12] = CODE | PTE_P | PTE_U;
    for (uint64_t a = 0x20000; a < MEM_SIZE; a += 0x1000) pt[a >> 12] = a | PTE_P | PTE_W | PTE_U | PTE_NX;
    uint64_t *gdt = (void *)(mem + 0x4000);
    gdt[1] = 0x00af9b000000ffffull;
    gdt[2] = 0x00cf93000000ffffull;
    gdt[3] = 0x00cff3000000ffffull;
    gdt[4] = 0x00affb000000ffffull;
    uint64_t tss = 0x4100, limit = 104 + 32;
    gdt[5] = limit | ((tss & 0xffffff) << 16) | (0x89ull << 40) | (((tss >> 24) & 0xff) << 56);
    gdt[6] = tss >> 32;
    *(uint64_t *)(mem + tss + 4) = 0x9000;
    *(uint16_t *)(mem + tss + 102) = 104;
    memset(mem + tss + 104, 0xff, 33);
    mem[tss + 104 + PORT / 8] = 0xf0; /* open PORT..PORT+3 */
    static const uint8_t code[] = {0xe7, PORT, 0xff, 0xc0, 0xeb, 0xfa};
    memcpy(mem + CODE, code, sizeof code);
}

struct vm {
    int vm, vcpu, memfd;
    uint8_t *mem;
    struct kvm_run *run;
};

static void create(int kvm, int mmap_size, struct vm *v) {
    v->vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (v->vm < 0) die("KVM_CREATE_VM");
    v->memfd = memfd_create("floor", MFD_CLOEXEC);
    if (v->memfd < 0 || ftruncate(v->memfd, MEM_SIZE) != 0) die("memfd");
    v->mem = mmap(0, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, v->memfd, 0);
    if (v->mem == MAP_FAILED) die("mmap");
    write_image(v->mem);
    struct kvm_userspace_memory_region r = {.slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE,
                                            .userspace_addr = (uint64_t)v->mem};
    if (ioctl(v->vm, KVM_SET_USER_MEMORY_REGION, &r) < 0) die("KVM_SET_USER_MEMORY_REGION");
    v->vcpu = ioctl(v->vm, KVM_CREATE_VCPU, 0);
    if (v->vcpu < 0) die("KVM_CREATE_VCPU");
    v->run = mmap(0, mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->vcpu, 0);
    if (v->run == MAP_FAILED) die("mmap vcpu");
    if (ioctl(v->vcpu, KVM_SET_CPUID2, &cpuid) < 0) die("KVM_SET_CPUID2");
    struct kvm_sregs s;
    if (ioctl(v->vcpu, KVM_GET_SREGS, &s) < 0) die("KVM_GET_SREGS");
    s.cr3 = 0x1000;
    s.cr4 = (1 << 5) | (1 << 9) | (1 << 10);
    s.cr0 = 0x80010033;
    s.efer = (1 << 8) | (1 << 10) | (1 << 11);
    struct kvm_segment cs = {.limit = 0xffffffff, .selector = 0x23, .type = 11, .present = 1,
                             .dpl = 3, .s = 1, .l = 1, .g = 1};
    struct kvm_segment ds = {.limit = 0xffffffff, .selector = 0x1b, .type = 3, .present = 1,
                             .dpl = 3, .db = 1, .s = 1, .g = 1};
    struct kvm_segment tr = {.base = 0x4100, .limit = 104 + 32, .selector = 0x28, .type = 11,
                             .present = 1};
    s.cs = cs;
    s.ds = s.es = s.fs = s.gs = s.ss = ds;
    s.tr = tr;
    s.gdt.base = 0x4000;
    s.gdt.limit = 55;
    s.idt.base = 0x5000;
    s.idt.limit = 511;
    if (ioctl(v->vcpu, KVM_SET_SREGS, &s) < 0) die("KVM_SET_SREGS");
    struct kvm_regs regs = {.rip = CODE, .rsp = MEM_SIZE, .rflags = 2};
    if (ioctl(v->vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");
}

static void run_to_exit(struct vm *v) {
    if (ioctl(v->vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
    if (v->run->exit_reason != KVM_EXIT_IO || v->run->io.port != PORT) {
        fprintf(stderr, "unexpected exit %u\n", v->run->exit_reason);
        exit(1);
    }
}

static void destroy(struct vm *v, int mmap_size) {
    munmap(v->run, mmap_size);
    close(v->vcpu);
    close(v->vm);
    munmap(v->mem, MEM_SIZE);
    close(v->memfd);
}

int main(int argc, char **argv) {
    int iters = argc > 1 ? atoi(argv[1]) : 50;
    int trips = argc > 2 ? atoi(argv[2]) : 1000;
    unsigned long long spin_n = argc > 3 ? strtoull(argv[3], 0, 10) : 100000000ull;
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("/dev/kvm");
    cpuid.c.nent = 256;
    if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, &cpuid) < 0) die("KVM_GET_SUPPORTED_CPUID");
    int mmap_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);

    double *spawn = calloc(iters, sizeof *spawn), *teardown = calloc(iters, sizeof *teardown);
    for (int i = 0; i < iters; i++) {
        struct vm v;
        double t0 = now_us();
        create(kvm, mmap_size, &v);
        run_to_exit(&v);
        double t1 = now_us();
        destroy(&v, mmap_size);
        spawn[i] = t1 - t0;
        teardown[i] = now_us() - t1;
    }

    struct vm v;
    create(kvm, mmap_size, &v);
    run_to_exit(&v);
    double *rt = calloc(trips, sizeof *rt);
    for (int i = 0; i < trips; i++) {
        double t0 = now_us();
        run_to_exit(&v);
        rt[i] = now_us() - t0;
    }
    destroy(&v, mmap_size);

    /* The demo guest's spin() loop, on the host. */
    double t0 = now_us();
    unsigned long long x = 0;
    for (unsigned long long i = 0; i < spin_n; i++) {
        x += i ^ (x >> 3);
        __asm__ volatile("" : "+r"(x));
    }
    double spin_us = now_us() - t0;

    printf("{\"create_to_first_exit_us\": %.2f, \"teardown_us\": %.2f, \"exit_roundtrip_us\": %.2f, "
           "\"host_spin_us\": %.1f, \"spin_n\": %llu, \"spin_result\": %llu, \"iterations\": %d, "
           "\"roundtrips\": %d}\n",
           median(spawn, iters), median(teardown, iters), median(rt, trips), spin_us, spin_n, x, iters,
           trips);
    return 0;
}
