/* sbx_machine.c: the boot of a machine in one call (see sbx_machine.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <linux/kvm.h>

#include "sbx_machine.h"
#include "sbx_memory.h"
#include "sbx_vcpu.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#define MADV_POPULATE_WRITE 23
#endif

int sbx_machine_boot(struct sbx_boot *b) {
    int err = 0, vm = -1, vcpu = -1;
    char *mem = NULL;
    void *run = MAP_FAILED;
    b->failed = 0;
    int bad = b->seed_at > b->mem_size || b->mem_size - b->seed_at < sizeof b->seed;
    for (uint32_t i = 0; i < b->n_prefault; i++) {
        const uint64_t *p = b->prefault + 3 * i;
        bad |= p[0] > b->mem_size || p[1] > b->mem_size - p[0];
    }
    if (bad) {
        b->failed = SBX_BOOT_ARGS;
        return -EINVAL;
    }
    mem = sbx_memory_map(b->image_fd, b->mem_size, b->extents, b->n_extents);
    if (!mem) {
        err = errno;
        b->failed = SBX_BOOT_MAP;
        goto fail;
    }
    for (uint32_t i = 0; i < b->n_prefault; i++) {
        const uint64_t *p = b->prefault + 3 * i;
        if (madvise(mem + p[0], p[1], p[2] ? MADV_POPULATE_WRITE : MADV_POPULATE_READ) != 0) {
            err = errno;
            b->failed = SBX_BOOT_PREFAULT;
            goto fail;
        }
    }
    memcpy(mem + b->seed_at, &b->seed, sizeof b->seed);
    vm = ioctl(b->kvm_fd, KVM_CREATE_VM, 0);
    if (vm < 0) {
        err = errno;
        b->failed = SBX_BOOT_CREATE_VM;
        goto fail;
    }
    struct kvm_userspace_memory_region region = {
        .slot = b->slot,
        .guest_phys_addr = 0,
        .memory_size = b->mem_size,
        .userspace_addr = (uint64_t)(uintptr_t)mem,
    };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) != 0) {
        err = errno;
        b->failed = SBX_BOOT_MEMSLOT;
        goto fail;
    }
    vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) {
        err = errno;
        b->failed = SBX_BOOT_CREATE_VCPU;
        goto fail;
    }
    run = mmap(NULL, (size_t)b->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) {
        err = errno;
        b->failed = SBX_BOOT_MAP_RUN;
        goto fail;
    }
    if (ioctl(vcpu, KVM_SET_CPUID2, b->cpuid) != 0) {
        err = errno;
        b->failed = SBX_BOOT_SET_CPUID;
        goto fail;
    }
    sbx_vcpu_sync_init(run);
    sbx_vcpu_load_state(run, b->regs, b->sregs);
    b->mem = mem;
    b->vm_fd = vm;
    b->vcpu_fd = vcpu;
    b->run = run;
    return 0;

fail: /* in the order Python closes a machine: the vCPU, the VM, then the memory */
    if (run != MAP_FAILED) munmap(run, (size_t)b->run_size);
    if (vcpu >= 0) close(vcpu);
    if (vm >= 0) close(vm);
    if (mem) munmap(mem, b->mem_size);
    return -(err ? err : EIO);
}
