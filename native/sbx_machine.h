/* sbx_machine.h: interface of the native boot of a machine (also parsed by cffi's cdef:
 * keep it in that subset: #define NAME <literal>, plain structs and prototypes, no
 * includes).
 *
 * A new machine is the same dozen steps every time (map the memory, populate the pages
 * a first call touches, write the seed, create the VM, add the memory slot, create the
 * vCPU, map its kvm_run, set its CPUID, load its registers). Each step is one system
 * call, several of them long (KVM_CREATE_VM and KVM_CREATE_VCPU take ~0.2 ms each); run
 * from Python one by one, the interpreter resumed with cold caches after every one of
 * them, they cost a new VM's spawn 20-35 us more than this one call (A/B, one machine).
 * Python then owns what was made: the mapping (GuestMemory), the VM fd (Vm), the vCPU fd
 * and its kvm_run mapping (Vcpu). */

/* The step of sbx_machine_boot that failed (struct sbx_boot's `failed`). */
#define SBX_BOOT_MAP 1          /* mapping the memory (sbx_memory_map) */
#define SBX_BOOT_PREFAULT 2     /* madvise(MADV_POPULATE_READ/WRITE) */
#define SBX_BOOT_CREATE_VM 3    /* KVM_CREATE_VM */
#define SBX_BOOT_MEMSLOT 4      /* KVM_SET_USER_MEMORY_REGION */
#define SBX_BOOT_CREATE_VCPU 5  /* KVM_CREATE_VCPU */
#define SBX_BOOT_MAP_RUN 6      /* mmap of the vCPU's kvm_run */
#define SBX_BOOT_SET_CPUID 7    /* KVM_SET_CPUID2 */
#define SBX_BOOT_ARGS 8         /* a range (prefault, seed) outside the memory: EINVAL */

struct sbx_boot {
    /* what to make */
    int32_t kvm_fd;            /* /dev/kvm */
    int32_t image_fd;          /* the memory image (a sealed memfd), `extents` of it mapped */
    uint64_t mem_size;         /* guest memory: bytes mapped, and the slot's size */
    const uint64_t *extents;   /* (offset, length) pairs, as sbx_memory_map takes them */
    uint32_t n_extents;
    const uint64_t *prefault;  /* (offset, length, write) triples populated in the mapping */
    uint32_t n_prefault;
    uint64_t seed_at;          /* offset of the 8 bytes of `seed`, written after the prefault */
    uint64_t seed;
    uint32_t slot;             /* memory slot number; the memory is at guest-physical 0 */
    int32_t run_size;          /* KVM_GET_VCPU_MMAP_SIZE */
    const void *cpuid;         /* struct kvm_cpuid2 for KVM_SET_CPUID2 */
    const void *regs;          /* struct kvm_regs and struct kvm_sregs, loaded through */
    const void *sregs;         /* the sync area for the first KVM_RUN (sbx_vcpu_load_state) */
    /* what was made (on success) */
    void *mem;
    int32_t vm_fd;
    int32_t vcpu_fd;
    void *run;
    uint32_t failed;           /* SBX_BOOT_* of the step that failed; 0 on success */
};

/* Makes the machine `boot` describes. Returns 0 with the outputs set, or -errno with
 * `failed` naming the step and everything made before it undone (nothing to close). */
int sbx_machine_boot(struct sbx_boot *boot);
