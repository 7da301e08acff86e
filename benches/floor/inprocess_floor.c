/* inprocess_floor.c: the KVM floor as a function of a shared library, for a bench to run
 * inside its own (Python) process.
 *
 * The same C code as kvm_floor.c, which it includes: create a VM with its memory and
 * vCPU, run to the first exit, tear down. kvm_floor runs it in a small process of its
 * own; run here, inside the process that runs the sandboxes, the difference is what the
 * embedding process itself costs a new VM (KVM_CREATE_VM takes a lock on every mapping
 * of the process, and a Python process has hundreds of them).
 *
 *   double floor_create_to_first_exit_us(int iterations)  -- the median, in us
 */
#define main kvm_floor_main
#include "kvm_floor.c"
#undef main

double floor_create_to_first_exit_us(int iterations) {
    static int kvm = -1, mmap_size;
    if (kvm < 0) {
        kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
        if (kvm < 0) die("/dev/kvm");
        cpuid.c.nent = 256;
        if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, &cpuid) < 0) die("KVM_GET_SUPPORTED_CPUID");
        mmap_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    }
    if (iterations < 1) iterations = 1;
    double *spawn = calloc(iterations, sizeof *spawn);
    if (!spawn) die("calloc");
    for (int i = 0; i < iterations; i++) {
        struct vm v;
        double t0 = now_us();
        create(kvm, mmap_size, &v);
        run_to_exit(&v);
        spawn[i] = now_us() - t0;
        destroy(&v, mmap_size);
    }
    double result = median(spawn, iterations);
    free(spawn);
    return result;
}
