/* sbx_vcpu.h: interface of the native run loop (also parsed by cffi's cdef: keep it in
 * that subset: #define NAME <literal>, plain structs and prototypes, no includes). */

/* What ended a run; Python maps each to a result or an exception. */
#define SBX_EXIT_RETURN 1      /* guest finished a call: result record in the out buffer */
#define SBX_EXIT_HOST_CALL 2   /* guest calls the host: call record in the out buffer */
#define SBX_EXIT_PRINT 3       /* guest flushes its print buffer */
#define SBX_EXIT_TRAP 4        /* CPU exception, reported by the ring-0 stub */
#define SBX_EXIT_BAD_PORT 5    /* I/O to a port the ABI does not assign, or an `in` */
#define SBX_EXIT_KICKED 6      /* the deadline passed or another thread kicked the vCPU */
#define SBX_EXIT_SHUTDOWN 7    /* triple fault */
#define SBX_EXIT_INTERNAL 8    /* KVM could not run or emulate the guest */
#define SBX_EXIT_UNKNOWN 9     /* any other KVM exit reason (in kvm_exit_reason) */
#define SBX_EXIT_INTERRUPTED 10 /* another signal interrupted KVM_RUN; run again */

struct sbx_exit {
    uint32_t kind;            /* SBX_EXIT_* */
    uint32_t kvm_exit_reason; /* KVM_EXIT_* of the last exit */
    uint32_t port;            /* I/O exits: port */
    uint32_t value;           /* I/O exits: the 32-bit value written (record offset) */
    uint64_t vector;          /* TRAP: exception vector */
    uint64_t error_code;      /* TRAP: error code (0 for vectors that push none) */
    uint64_t rip;             /* TRAP: faulting RIP */
    uint64_t cr2;             /* TRAP: CR2 (the fault address of a #PF) */
    uint64_t rsp;             /* TRAP: guest RSP at the fault */
    uint64_t detail;          /* INTERNAL: suberror; BAD_PORT: size | direction << 8 */
};

/* Installs the handler for `signo` (no SA_RESTART) used to kick vCPUs out of KVM_RUN.
 * Returns 0 or -errno. Call once per process before sbx_vcpu_run. */
int sbx_signal_init(int signo);

/* Runs the vCPU until an exit that needs Python (see SBX_EXIT_*). `run` is the vCPU's
 * mmapped struct kvm_run. If timeout_ns > 0 a timer kicks this thread at the deadline
 * and every millisecond after it until the vCPU is out. Returns 0 with *exit filled, or
 * -errno if KVM_RUN (or, for a trap, KVM_GET_REGS) failed. Releases the GIL (cffi). */
int sbx_vcpu_run(int vcpu_fd, void *run, int64_t timeout_ns, struct sbx_exit *exit);

/* Kicks thread `tid` (of this process) out of KVM_RUN: its run ends with
 * SBX_EXIT_KICKED. Returns 0 or -errno. */
int sbx_kick_thread(int tid);

/* Asks KVM to copy the general registers into kvm_run at every exit (KVM_SYNC_X86_REGS),
 * so the RIP of the last exit is known without an ioctl. */
void sbx_vcpu_sync_init(void *run);

/* RIP at the last exit (from the synced registers). */
uint64_t sbx_vcpu_exit_rip(void *run);

/* Loads `regs` and `sregs` (a struct kvm_regs and a struct kvm_sregs) into the vCPU at the
 * next KVM_RUN through kvm_run's sync area, without an ioctl. */
void sbx_vcpu_load_state(void *run, const void *regs, const void *sregs);

/* Completes an I/O exit without running the guest (KVM_RUN with immediate_exit): after
 * it the vCPU state is consistent and can be saved. Returns 0 or -errno. */
int sbx_vcpu_complete_io(int vcpu_fd, void *run);

/* mmap(2) of `length` bytes of `fd` (shared or private, read-only or read-write).
 * Returns the address, or NULL with errno set. Unlike Python's mmap module this keeps
 * no duplicate of the descriptor (two fewer per sandbox). */
void *sbx_map(int fd, size_t length, int private_, int writable);

/* munmap(2). Returns 0 or -errno. */
int sbx_unmap(void *addr, size_t length);

/* madvise(2). Returns 0 or -errno. */
int sbx_madvise(void *addr, size_t length, int advice);

/* Version of the package this extension was built for (checked at import). */
const char *sbx_native_version(void);
