/* sbx_vcpu.c: the vCPU run loop: KVM_RUN with the GIL released, exits decoded in C. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/kvm.h>

#include "sbx_abi.h"
#include "sbx_internal.h"
#include "sbx_vcpu.h"

#ifndef SBX_PACKAGE_VERSION
#error "SBX_PACKAGE_VERSION must be defined by the build"
#endif

const char *sbx_native_version(void) { return SBX_PACKAGE_VERSION; }

/* Decodes an I/O exit into *exit. Returns 0, or -errno if reading a trap report failed. */
static int decode_io(int vcpu_fd, struct kvm_run *run, struct sbx_exit *exit) {
    uint16_t port = run->io.port;
    exit->port = port;
    int plain_out = run->io.direction == KVM_EXIT_IO_OUT && run->io.size == 4 && run->io.count == 1;
    if (!plain_out) {
        exit->kind = SBX_EXIT_BAD_PORT;
        exit->pending_io = 1; /* see sbx_vcpu.h */
        exit->detail = (uint64_t)run->io.size | ((uint64_t)run->io.direction << 8);
        return 0;
    }
    memcpy(&exit->value, (uint8_t *)run + run->io.data_offset, 4);
    switch (port) {
    case SBX_PORT_RETURN: exit->kind = SBX_EXIT_RETURN; return 0;
    case SBX_PORT_HOST_CALL: exit->kind = SBX_EXIT_HOST_CALL; return 0;
    case SBX_PORT_PRINT: exit->kind = SBX_EXIT_PRINT; return 0;
    case SBX_PORT_TRAP: {
        /* The ring-0 stub loaded the report into registers (see layout.py). */
        struct kvm_regs regs;
        if (ioctl(vcpu_fd, KVM_GET_REGS, &regs) != 0) return -errno;
        exit->kind = SBX_EXIT_TRAP;
        exit->vector = regs.rax;
        exit->error_code = regs.rbx;
        exit->rip = regs.rcx;
        exit->cr2 = regs.rdx;
        exit->rsp = regs.rsi;
        return 0;
    }
    default: exit->kind = SBX_EXIT_BAD_PORT; return 0;
    }
}

void sbx_vcpu_sync_init(void *run_area) {
    struct kvm_run *run = run_area;
    run->kvm_valid_regs = KVM_SYNC_X86_REGS;
}

uint64_t sbx_vcpu_exit_rip(void *run_area) {
    struct kvm_run *run = run_area;
    return run->s.regs.regs.rip;
}

void sbx_vcpu_load_state(void *run_area, const void *regs, const void *sregs) {
    struct kvm_run *run = run_area;
    memcpy(&run->s.regs.regs, regs, sizeof run->s.regs.regs);
    run->kvm_dirty_regs |= KVM_SYNC_X86_REGS;
    if (sregs) {
        memcpy(&run->s.regs.sregs, sregs, sizeof run->s.regs.sregs);
        run->kvm_dirty_regs |= KVM_SYNC_X86_SREGS;
    }
}

int sbx_vcpu_complete_io(int vcpu_fd, void *run_area) {
    struct kvm_run *run = run_area;
    run->immediate_exit = 1;
    int rc = ioctl(vcpu_fd, KVM_RUN, 0);
    int err = errno;
    run->immediate_exit = 0;
    if (rc == 0 || err == EINTR) return 0;
    return -err;
}

static uint64_t runs_begun;

uint64_t sbx_vcpu_runs(void) { return __atomic_load_n(&runs_begun, __ATOMIC_RELAXED); }

int64_t sbx_vcpu_run(int vcpu_fd, void *run_area, int64_t timeout_ns, struct sbx_exit *exit) {
    struct kvm_run *run = run_area;
    __atomic_fetch_add(&runs_begun, 1, __ATOMIC_RELAXED);
    int armed = 0;
    int64_t err = 0;

    memset(exit, 0, sizeof *exit);
    run->immediate_exit = 0;
    __atomic_store_n(&exit->thread, sbx_run_tid(), __ATOMIC_SEQ_CST); /* for cancel() */
    if (sbx_run_enter(run)) {
        exit->kind = SBX_EXIT_INTERRUPTED;
        goto out;
    }
    if (timeout_ns > 0) {
        err = sbx_timer_arm(timeout_ns);
        if (err) goto out;
        armed = 1;
    }
    /* One KVM_RUN: every exit ends the run, since each needs Python (the guest's own
     * exits are `out`s to the ABI's ports; the others are faults or signals). */
    if (ioctl(vcpu_fd, KVM_RUN, 0) != 0) {
        if (errno != EINTR && errno != EAGAIN) {
            err = -errno;
            goto out;
        }
        /* Kicked, or another signal (Ctrl-C): Python decides (its signal handlers run
         * when this returns; the call resumes if none of them raises). */
        exit->kind = sbx_run_kicked() ? SBX_EXIT_KICKED : SBX_EXIT_INTERRUPTED;
        goto out;
    }
    exit->kvm_exit_reason = run->exit_reason;
    switch (run->exit_reason) {
    case KVM_EXIT_IO:
        err = decode_io(vcpu_fd, run, exit);
        break;
    case KVM_EXIT_INTR:
        exit->kind = sbx_run_kicked() ? SBX_EXIT_KICKED : SBX_EXIT_INTERRUPTED;
        break;
    case KVM_EXIT_SHUTDOWN:
        exit->kind = SBX_EXIT_SHUTDOWN;
        break;
    case KVM_EXIT_INTERNAL_ERROR:
        exit->kind = SBX_EXIT_INTERNAL;
        exit->detail = run->internal.suberror;
        break;
    case KVM_EXIT_FAIL_ENTRY:
        exit->kind = SBX_EXIT_INTERNAL;
        exit->detail = run->fail_entry.hardware_entry_failure_reason;
        break;
    case KVM_EXIT_MMIO:
        exit->kind = SBX_EXIT_UNKNOWN;
        exit->pending_io = 1; /* completed by the emulator, like string I/O */
        break;
    default:
        exit->kind = SBX_EXIT_UNKNOWN;
        break;
    }
out:
    if (armed) sbx_timer_disarm();
    sbx_run_leave();
    __atomic_store_n(&exit->thread, 0, __ATOMIC_SEQ_CST);
    run->immediate_exit = 0;
    if (err) return err;
    return ((int64_t)exit->kind << 32) | exit->value;
}
