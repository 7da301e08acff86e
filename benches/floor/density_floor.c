/* density_floor.c: the density floor: N VMs of the KVM floor held at once.
 *
 * Reuses kvm_floor.c's VM (16 MiB memfd memslot, page tables, vCPU in ring-3 long mode)
 * by including it. Creates N VMs one after the other, runs each to its first `out` and
 * keeps them all alive; then reports the time that took and how much this process's
 * resident memory (VmRSS) grew, and tears them down. Prints one JSON object.
 *
 *   density_floor [n]
 */
#define main kvm_floor_main
#include "kvm_floor.c"
#undef main

#include <sys/resource.h>

static long rss_kib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    if (!f) die("/proc/self/status");
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1) break;
    fclose(f);
    return kib;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 1000;
    struct rlimit lim;
    /* Three descriptors per VM (VM, vCPU, memfd): raise the soft limit to the hard one. */
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
        lim.rlim_cur = lim.rlim_max;
        setrlimit(RLIMIT_NOFILE, &lim);
    }
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("/dev/kvm");
    cpuid.c.nent = 256;
    if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, &cpuid) < 0) die("KVM_GET_SUPPORTED_CPUID");
    int mmap_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct vm *vms = calloc(n, sizeof *vms);
    if (!vms) die("calloc");

    long before = rss_kib();
    double t0 = now_us();
    for (int i = 0; i < n; i++) {
        create(kvm, mmap_size, &vms[i]);
        run_to_exit(&vms[i]);
    }
    double create_us = now_us() - t0;
    long after = rss_kib();
    t0 = now_us();
    for (int i = 0; i < n; i++) destroy(&vms[i], mmap_size);
    double teardown_us = now_us() - t0;

    printf("{\"n\": %d, \"create_all_us\": %.1f, \"rss_growth_kib\": %ld, \"teardown_all_us\": %.1f}\n",
           n, create_us, after - before, teardown_us);
    return 0;
}
