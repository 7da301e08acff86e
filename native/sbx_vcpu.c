/* sbx_vcpu.c: the vCPU run loop: KVM_RUN with the GIL released, exits decoded in C. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <linux/kvm.h>

#include "sbx_abi.h"
#include "sbx_vcpu.h"

#ifndef SBX_PACKAGE_VERSION
#error "SBX_PACKAGE_VERSION must be defined by the build"
#endif

static int kick_signo;
/* The kvm_run of the vCPU this thread is running, for the signal handler. */
static __thread struct kvm_run *volatile tls_run;
static __thread volatile sig_atomic_t tls_kicked;

static void on_kick(int signo) {
    (void)signo;
    struct kvm_run *run = tls_run;
    /* immediate_exit makes a KVM_RUN that has not entered the guest yet return EINTR at
     * once, so a signal that lands just before guest entry is not lost. */
    if (run) run->immediate_exit = 1;
    tls_kicked = 1;
}

int sbx_signal_init(int signo) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_kick;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: KVM_RUN must return EINTR */
    if (sigaction(signo, &sa, NULL) != 0) return -errno;
    kick_signo = signo;
    return 0;
}

int sbx_kick_thread(int tid) {
    if (!kick_signo) return -EINVAL;
    if (syscall(SYS_tgkill, getpid(), tid, kick_signo) != 0) return -errno;
    return 0;
}

const char *sbx_native_version(void) { return SBX_PACKAGE_VERSION; }

void *sbx_map(int fd, size_t length, int private_, int writable) {
    int prot = PROT_READ | (writable ? PROT_WRITE : 0);
    void *p = mmap(NULL, length, prot, private_ ? MAP_PRIVATE : MAP_SHARED, fd, 0);
    return p == MAP_FAILED ? NULL : p;
}

int sbx_unmap(void *addr, size_t length) { return munmap(addr, length) == 0 ? 0 : -errno; }

int sbx_madvise(void *addr, size_t length, int advice) {
    return madvise(addr, length, advice) == 0 ? 0 : -errno;
}

static int arm_timer(timer_t *timer, int64_t timeout_ns) {
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = kick_signo;
    sev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
    if (timer_create(CLOCK_MONOTONIC, &sev, timer) != 0) return -errno;
    struct itimerspec its;
    its.it_value.tv_sec = timeout_ns / 1000000000;
    its.it_value.tv_nsec = timeout_ns % 1000000000;
    /* Retry every millisecond until the vCPU is out. */
    its.it_interval.tv_sec = 0;
    its.it_interval.tv_nsec = 1000000;
    if (timer_settime(*timer, 0, &its, NULL) != 0) {
        int err = -errno;
        timer_delete(*timer);
        return err;
    }
    return 0;
}

/* Decodes an I/O exit. Returns 1 when the run must end (exit filled), 0 to resume. */
static int decode_io(int vcpu_fd, struct kvm_run *run, struct sbx_exit *exit, int *err) {
    uint16_t port = run->io.port;
    exit->port = port;
    int plain_out = run->io.direction == KVM_EXIT_IO_OUT && run->io.size == 4 && run->io.count == 1;
    if (plain_out) memcpy(&exit->value, (uint8_t *)run + run->io.data_offset, 4);
    if (!plain_out) {
        exit->kind = SBX_EXIT_BAD_PORT;
        exit->detail = (uint64_t)run->io.size | ((uint64_t)run->io.direction << 8);
        return 1;
    }
    switch (port) {
    case SBX_PORT_RETURN: exit->kind = SBX_EXIT_RETURN; return 1;
    case SBX_PORT_HOST_CALL: exit->kind = SBX_EXIT_HOST_CALL; return 1;
    case SBX_PORT_PRINT: exit->kind = SBX_EXIT_PRINT; return 1;
    case SBX_PORT_TRAP: {
        /* The ring-0 stub loaded the report into registers (see layout.py). */
        struct kvm_regs regs;
        if (ioctl(vcpu_fd, KVM_GET_REGS, &regs) != 0) {
            *err = -errno;
            return 1;
        }
        exit->kind = SBX_EXIT_TRAP;
        exit->vector = regs.rax;
        exit->error_code = regs.rbx;
        exit->rip = regs.rcx;
        exit->cr2 = regs.rdx;
        exit->rsp = regs.rsi;
        return 1;
    }
    default: exit->kind = SBX_EXIT_BAD_PORT; return 1;
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
    memcpy(&run->s.regs.sregs, sregs, sizeof run->s.regs.sregs);
    run->kvm_dirty_regs |= KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS;
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

int sbx_vcpu_run(int vcpu_fd, void *run_area, int64_t timeout_ns, struct sbx_exit *exit) {
    struct kvm_run *run = run_area;
    timer_t timer;
    int have_timer = 0, err = 0;

    memset(exit, 0, sizeof *exit);
    tls_kicked = 0;
    run->immediate_exit = 0;
    tls_run = run;
    if (timeout_ns > 0) {
        err = arm_timer(&timer, timeout_ns);
        if (err) goto out;
        have_timer = 1;
    }
    for (;;) {
        if (ioctl(vcpu_fd, KVM_RUN, 0) != 0) {
            if (errno != EINTR && errno != EAGAIN) {
                err = -errno;
                break;
            }
            /* Kicked, or another signal (Ctrl-C): Python decides (its signal handlers
             * run when this returns; the call resumes if none of them raises). */
            exit->kind = tls_kicked ? SBX_EXIT_KICKED : SBX_EXIT_INTERRUPTED;
            break;
        }
        exit->kvm_exit_reason = run->exit_reason;
        switch (run->exit_reason) {
        case KVM_EXIT_IO:
            if (decode_io(vcpu_fd, run, exit, &err)) goto out;
            continue;
        case KVM_EXIT_INTR:
            exit->kind = tls_kicked ? SBX_EXIT_KICKED : SBX_EXIT_INTERRUPTED;
            goto out;
        case KVM_EXIT_SHUTDOWN:
            exit->kind = SBX_EXIT_SHUTDOWN;
            goto out;
        case KVM_EXIT_INTERNAL_ERROR:
            exit->kind = SBX_EXIT_INTERNAL;
            exit->detail = run->internal.suberror;
            goto out;
        case KVM_EXIT_FAIL_ENTRY:
            exit->kind = SBX_EXIT_INTERNAL;
            exit->detail = run->fail_entry.hardware_entry_failure_reason;
            goto out;
        default:
            exit->kind = SBX_EXIT_UNKNOWN;
            goto out;
        }
    }
out:
    /* A signal from the timer that is already pending is delivered before timer_delete
     * returns to user space; none can come after, so the next run starts clean. */
    if (have_timer) timer_delete(timer);
    tls_run = NULL;
    run->immediate_exit = 0;
    return err;
}
