/* sbx_memory.c: guest-memory restore: find the written pages (PAGEMAP_SCAN), copy them back. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>

#include "sbx_memory.h"

/* PAGEMAP_SCAN (Linux 6.7+, <linux/fs.h>); older uapi headers lack it, so the ABI is
 * written out here, as in memory.py: _IOWR('f', 16, struct pm_scan_arg). */
#define SBX_PAGEMAP_SCAN 0xC0606610UL
#define SBX_PAGE_IS_FILE (1ULL << 2)
#define SBX_PAGE_IS_PRESENT (1ULL << 3)
#define SBX_PAGE_IS_SWAPPED (1ULL << 4)

struct sbx_page_region {
    uint64_t start, end, categories;
};

struct sbx_pm_scan_arg {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
    uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};

#define REGIONS 64

int64_t sbx_memory_reset(int pagemap_fd, void *mem, const void *image, uint64_t size) {
    struct sbx_page_region vec[REGIONS];
    uint64_t base = (uint64_t)(uintptr_t)mem, start = base, end = base + size;
    int64_t copied = 0;
    while (start < end) {
        struct sbx_pm_scan_arg arg = {
            .size = sizeof arg,
            .start = start,
            .end = end,
            .vec = (uint64_t)(uintptr_t)vec,
            .vec_len = REGIONS,
            /* Pages that are not file pages (private copies) and present or swapped. */
            .category_inverted = SBX_PAGE_IS_FILE,
            .category_mask = SBX_PAGE_IS_FILE,
            .category_anyof_mask = SBX_PAGE_IS_PRESENT | SBX_PAGE_IS_SWAPPED,
            .return_mask = SBX_PAGE_IS_PRESENT,
        };
        int n = ioctl(pagemap_fd, SBX_PAGEMAP_SCAN, &arg);
        if (n < 0) return -errno;
        for (int i = 0; i < n; i++) {
            /* The kernel reports ranges inside [start, end), i.e. inside `mem`. */
            uint64_t offset = vec[i].start - base, length = vec[i].end - vec[i].start;
            memcpy((char *)mem + offset, (const char *)image + offset, length);
            copied += (int64_t)length;
        }
        if (n < REGIONS || arg.walk_end >= end) break;
        start = arg.walk_end;
    }
    return copied;
}
