/* sbx_vcpu.h: interface of the native run loop (also parsed by cffi's cdef: keep it in
 * that subset: #define NAME <literal>, plain structs and prototypes, no includes). */

/* What ended a run (ExitKind in sandbox/exits.py); Python maps each to a result or an
 * exception. */
#define SBX_EXIT_RETURN 1      /* guest finished a call: result record in the out buffer */
#define SBX_EXIT_HOST_CALL 2   /* guest calls the host: call record in the out buffer */
#define SBX_EXIT_PRINT 3       /* guest flushes its print buffer */
#define SBX_EXIT_TRAP 4        /* CPU exception, reported by the ring-0 stub */
#define SBX_EXIT_BAD_PORT 5    /* I/O to a port the ABI does not assign, or an `in` */
#define SBX_EXIT_KICKED 6      /* the deadline passed or another thread kicked the vCPU */
#define SBX_EXIT_SHUTDOWN 7    /* triple fault */
#define SBX_EXIT_INTERNAL 8    /* KVM could not run or emulate the guest */
#define SBX_EXIT_UNKNOWN 9     /* any other KVM exit reason (in kvm_exit_reason) */
#define SBX_EXIT_INTERRUPTED 10 /* a signal interrupted KVM_RUN; Python's handlers run next */

/* The details of the last exit, for the kinds that have them. */
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
    uint32_t pending_io;      /* the exit left KVM an instruction to complete (below) */
    int32_t thread;           /* while a run is under way: the tid of its thread, else 0 */
};

/* Runs the vCPU until an exit that needs Python (see SBX_EXIT_*). `run` is the vCPU's
 * mmapped struct kvm_run. If timeout_ns > 0 this thread's timer kicks it at the deadline
 * and every millisecond after it until the vCPU is out. Returns (kind << 32) | value
 * (value: the 32-bit word of an I/O exit) with *exit filled, or -errno if KVM_RUN (or,
 * for a trap, KVM_GET_REGS) failed. Releases the GIL (cffi).
 *
 * `pending_io`: an I/O exit stops the vCPU in the middle of its instruction, and the
 * next KVM_RUN completes it, after applying registers loaded through the sync area. For
 * a 32-bit `out` (the ABI's exits) that completion only skips the instruction when RIP
 * is still at it (KVM checks the linear RIP; an emulated `out` is even completed before
 * the exit), so a new state with another RIP cancels it. Any other I/O (an `in`, string
 * I/O, other sizes) and MMIO are completed by re-running KVM's emulator on the state it
 * kept, which overrides RIP and registers: pending_io is 1 and the exit must be
 * completed (sbx_vcpu_complete_io) before a new state is loaded. */
int64_t sbx_vcpu_run(int vcpu_fd, void *run, int64_t timeout_ns, struct sbx_exit *exit);

/* How many sbx_vcpu_run calls this process has begun, on any thread: the background
 * thread that makes spare machines waits until it stops changing (machines.py), so a
 * spare is built while the caller is idle, not beside its calls. */
uint64_t sbx_vcpu_runs(void);

/* Asks KVM to copy the general registers into kvm_run at every exit (KVM_SYNC_X86_REGS),
 * so the RIP of the last exit is known without an ioctl. */
void sbx_vcpu_sync_init(void *run);

/* RIP at the last exit (from the synced registers). */
uint64_t sbx_vcpu_exit_rip(void *run);

/* Loads `regs` and `sregs` (a struct kvm_regs and a struct kvm_sregs; sregs may be NULL
 * to leave the special registers as they are) into the vCPU at the next KVM_RUN through
 * kvm_run's sync area, without an ioctl. */
void sbx_vcpu_load_state(void *run, const void *regs, const void *sregs);

/* Completes the last exit without running the guest (KVM_RUN with immediate_exit) and
 * applies registers waiting in the sync area: after it the vCPU's state is consistent
 * and can be saved or replaced. Returns 0 or -errno. */
int sbx_vcpu_complete_io(int vcpu_fd, void *run);

/* Version of the package this extension was built for (checked at import). */
const char *sbx_native_version(void);
