/* sbx_memory.c: guest memory: map an image without its holes, find written pages, reset. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "sbx_memory.h"

#define PAGE 4096ULL

/* PAGEMAP_SCAN (Linux 6.7+, <linux/fs.h>); Debian 12's uapi headers predate it, so the
 * ABI is written out here: _IOWR('f', 16, struct pm_scan_arg). */
#define SBX_PAGEMAP_SCAN 0xC0606610UL
#define SBX_PAGE_IS_FILE (1ULL << 2)
#define SBX_PAGE_IS_PRESENT (1ULL << 3)
#define SBX_PAGE_IS_SWAPPED (1ULL << 4)
#define SBX_PAGE_IS_PFNZERO (1ULL << 5)

/* /proc/self/pagemap entries (Documentation/admin-guide/mm/pagemap.rst), the fallback. */
#define PM_PRESENT (1ULL << 63)
#define PM_SWAPPED (1ULL << 62)
#define PM_FILE (1ULL << 61)

struct sbx_page_region {
    uint64_t start, end, categories;
};

struct sbx_pm_scan_arg {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
    uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};

static int scan_unsupported; /* set once PAGEMAP_SCAN failed with ENOTTY/EINVAL */

void *sbx_map(int fd, size_t length, int private_, int writable) {
    int prot = PROT_READ | (writable ? PROT_WRITE : 0);
    void *p = mmap(NULL, length, prot, private_ ? MAP_PRIVATE : MAP_SHARED, fd, 0);
    return p == MAP_FAILED ? NULL : p;
}

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

/* Maps [off, off+len) of the guest memory at `at` (NULL: anywhere): from the file if
 * `file`, else anonymous. With `at`, only where nothing is mapped yet. */
static char *map_segment(char *at, int fd, uint64_t off, uint64_t len, int file) {
    int prot = PROT_READ | PROT_WRITE;
    int flags = MAP_PRIVATE | (file ? 0 : MAP_ANONYMOUS | MAP_NORESERVE);
    if (at) flags |= MAP_FIXED_NOREPLACE;
    char *p = mmap(at, len, prot, flags, file ? fd : -1, file ? (off_t)off : 0);
    if (p == MAP_FAILED) return NULL;
    if (at && p != at) { /* an old kernel took MAP_FIXED_NOREPLACE as a hint */
        munmap(p, len);
        errno = EEXIST;
        return NULL;
    }
    return p;
}

/* The simple way: anonymous memory, the extents mapped over it with MAP_FIXED. Each
 * replacement is an unmap, which every VM of the process hears about (KVM's MMU
 * notifier): costly with many sandboxes alive, so used only when the other way fails. */
static void *map_over(int fd, uint64_t size, const uint64_t *extents, uint32_t n) {
    int prot = PROT_READ | PROT_WRITE;
    char *base = mmap(NULL, size, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) return NULL;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t off = extents[2 * i], len = extents[2 * i + 1];
        if (mmap(base + off, len, prot, MAP_PRIVATE | MAP_FIXED, fd, (off_t)off) == MAP_FAILED) {
            int err = errno;
            munmap(base, size);
            errno = err;
            return NULL;
        }
    }
    return base;
}

void *sbx_memory_map(int fd, uint64_t size, const uint64_t *extents, uint32_t n) {
    for (uint32_t i = 0; i < n; i++) {
        uint64_t off = extents[2 * i], len = extents[2 * i + 1];
        if (off % PAGE || len % PAGE || len == 0 || off > size || len > size - off ||
            (i && off < extents[2 * i - 2] + extents[2 * i - 1])) {
            errno = EINVAL;
            return NULL;
        }
    }
    /* Segment by segment from the top: the last wherever the kernel puts it, each one
     * before it just below (where the kernel's top-down placement leaves room), so that
     * nothing is ever replaced. */
    char *low = NULL;
    uint64_t end = size;
    for (int64_t i = (int64_t)n - 1; i >= -1 && end > 0; i--) {
        uint64_t ext_off = i >= 0 ? extents[2 * i] : 0, ext_end = i >= 0 ? ext_off + extents[2 * i + 1] : 0;
        /* the hole above this extent, then the extent itself */
        for (int part = 0; part < 2; part++) {
            uint64_t start = part == 0 ? ext_end : ext_off;
            if (start >= end) continue;
            char *p = map_segment(low ? low - (end - start) : NULL, fd, start, end - start, part == 1);
            if (!p) {
                if (low) munmap(low, size - end);
                return map_over(fd, size, extents, n);
            }
            low = p;
            end = start;
        }
    }
    return low;
}

int sbx_unmap(void *addr, size_t length) { return munmap(addr, length) == 0 ? 0 : -errno; }

int sbx_madvise(void *addr, size_t length, int advice) {
    return madvise(addr, length, advice) == 0 ? 0 : -errno;
}

/* Appends [off, off+len) to out (merging with the last pair). Returns 0 when full. */
static int add_range(uint64_t *out, uint32_t max, uint32_t *count, uint64_t off, uint64_t len) {
    if (*count && out[2 * (*count - 1)] + out[2 * (*count - 1) + 1] == off) {
        out[2 * (*count - 1) + 1] += len;
        return 1;
    }
    if (*count == max) return 0;
    out[2 * *count] = off;
    out[2 * *count + 1] = len;
    (*count)++;
    return 1;
}

static int64_t scan_pagemap_scan(int fd, uint64_t base, uint64_t size, uint64_t from,
                                 uint64_t *out, uint32_t max, uint64_t *next) {
    struct sbx_page_region vec[64];
    uint32_t count = 0;
    uint64_t start = base + from, end = base + size;
    while (start < end && count < max) {
        struct sbx_pm_scan_arg arg = {
            .size = sizeof arg,
            .start = start,
            .end = end,
            .vec = (uint64_t)(uintptr_t)vec,
            .vec_len = 64,
            /* Private copies: not file pages, not the zero page, present or swapped. */
            .category_inverted = SBX_PAGE_IS_FILE | SBX_PAGE_IS_PFNZERO,
            .category_mask = SBX_PAGE_IS_FILE | SBX_PAGE_IS_PFNZERO,
            .category_anyof_mask = SBX_PAGE_IS_PRESENT | SBX_PAGE_IS_SWAPPED,
            .return_mask = SBX_PAGE_IS_PRESENT | SBX_PAGE_IS_SWAPPED,
        };
        int got = ioctl(fd, SBX_PAGEMAP_SCAN, &arg);
        if (got < 0) return -errno;
        for (int i = 0; i < got; i++) {
            /* The kernel reports ranges inside [start, end), i.e. inside the memory. */
            uint64_t off = vec[i].start - base, len = vec[i].end - vec[i].start;
            if (!add_range(out, max, &count, off, len)) {
                *next = off;
                return count;
            }
        }
        if (got < 64 || arg.walk_end >= end) {
            start = end;
            break;
        }
        start = arg.walk_end;
    }
    *next = start - base;
    return count;
}

static int64_t scan_pagemap_entries(int fd, uint64_t base, uint64_t size, uint64_t from,
                                    uint64_t *out, uint32_t max, uint64_t *next) {
    uint64_t entries[512];
    uint32_t count = 0;
    uint64_t off = from;
    while (off < size) {
        uint64_t pages = (size - off) / PAGE;
        if (pages > 512) pages = 512;
        ssize_t got = pread(fd, entries, pages * 8, (off_t)((base + off) / PAGE * 8));
        if (got < 0) return -errno;
        if (got == 0) return -EIO;
        for (uint64_t i = 0; i < (uint64_t)got / 8; i++, off += PAGE) {
            uint64_t e = entries[i];
            int written = (e & PM_SWAPPED) || ((e & PM_PRESENT) && !(e & PM_FILE));
            if (written && !add_range(out, max, &count, off, PAGE)) {
                *next = off;
                return count;
            }
        }
    }
    *next = size;
    return count;
}

void sbx_memory_use_pagemap_entries(int on) { scan_unsupported = on ? 2 : 0; }

int64_t sbx_memory_written(int pagemap_fd, const void *mem, uint64_t size, uint64_t from,
                           uint64_t *out, uint32_t max, uint64_t *next) {
    uint64_t base = (uint64_t)(uintptr_t)mem;
    if (from % PAGE || from > size || max == 0) return -EINVAL;
    if (!scan_unsupported) {
        int64_t n = scan_pagemap_scan(pagemap_fd, base, size, from, out, max, next);
        if (n != -ENOTTY && n != -EINVAL) return n;
        scan_unsupported = 1;
    }
    return scan_pagemap_entries(pagemap_fd, base, size, from, out, max, next);
}

/* Resets [off, off+len), which lies wholly inside an extent or wholly inside a hole. */
static int reset_piece(char *mem, const char *image, uint64_t off, uint64_t len, int in_extent,
                       uint64_t *kept, uint64_t keep) {
    uint64_t take = *kept < keep ? keep - *kept : 0;
    if (take > len) take = len;
    if (take) {
        if (in_extent)
            memcpy(mem + off, image + off, take);
        else
            memset(mem + off, 0, take);
        *kept += take;
    }
    if (len > take && madvise(mem + off + take, len - take, MADV_DONTNEED) != 0) return -errno;
    return 0;
}

/* Resets [off, end) of written pages, split at the image's extents. */
static int reset_range(char *mem, const char *image, uint64_t off, uint64_t end,
                       const uint64_t *extents, uint32_t n, uint32_t *e, uint64_t *kept,
                       uint64_t keep) {
    while (off < end) {
        while (*e < n && extents[2 * *e] + extents[2 * *e + 1] <= off) (*e)++;
        uint64_t piece_end;
        int in_extent;
        if (*e < n && extents[2 * *e] <= off) {
            in_extent = 1;
            piece_end = extents[2 * *e] + extents[2 * *e + 1];
        } else {
            in_extent = 0;
            piece_end = *e < n ? extents[2 * *e] : end;
        }
        if (piece_end > end) piece_end = end;
        int rc = reset_piece(mem, image, off, piece_end - off, in_extent, kept, keep);
        if (rc) return rc;
        off = piece_end;
    }
    return 0;
}

/* sbx_memory_reset over [from, to): the written pages found there, reset. */
static int64_t reset_scanned(int pagemap_fd, void *mem, const void *image, uint64_t from,
                             uint64_t to, const uint64_t *extents, uint32_t n,
                             const uint64_t *stable, uint32_t n_stable, uint64_t *ranges,
                             uint32_t *ep, uint32_t *sp, uint64_t *keptp, uint64_t keep) {
    uint64_t kept = *keptp;
    int64_t found = 0;
    uint32_t e = *ep, s = *sp; /* the first extent / stable range that may overlap */
    while (from < to) {
        uint64_t next;
        int64_t count = sbx_memory_written(pagemap_fd, mem, to, from, ranges, 64, &next);
        if (count < 0) return count;
        for (int64_t i = 0; i < count; i++) {
            uint64_t off = ranges[2 * i], end = off + ranges[2 * i + 1];
            found += (int64_t)(end - off);
            /* Leave out the stable ranges: private copies equal to the image. */
            while (off < end) {
                while (s < n_stable && stable[2 * s] + stable[2 * s + 1] <= off) s++;
                uint64_t cut = end;
                if (s < n_stable && stable[2 * s] < end) {
                    if (stable[2 * s] <= off) {
                        off = stable[2 * s] + stable[2 * s + 1]; /* skip it */
                        continue;
                    }
                    cut = stable[2 * s];
                }
                int rc = reset_range(mem, image, off, cut, extents, n, &e, &kept, keep);
                if (rc) return rc;
                off = cut;
            }
        }
        from = next;
    }
    *ep = e;
    *sp = s;
    *keptp = kept;
    return found;
}

int64_t sbx_memory_reset(int pagemap_fd, void *mem, const void *image, uint64_t size,
                         const uint64_t *extents, uint32_t n, const uint64_t *stable,
                         uint32_t n_stable, const uint64_t *scan, uint32_t n_scan,
                         uint64_t keep) {
    uint64_t ranges[2 * 64], kept = 0;
    int64_t found = 0;
    uint32_t e = 0, s = 0;
    for (uint32_t r = 0; r < n_scan; r++) {
        uint64_t from = scan[2 * r], to = from + scan[2 * r + 1];
        if (from % PAGE || to % PAGE || to < from || to > size ||
            (r && from < scan[2 * r - 2] + scan[2 * r - 1]))
            return -EINVAL;
        int64_t got = reset_scanned(pagemap_fd, mem, image, from, to, extents, n, stable,
                                    n_stable, ranges, &e, &s, &kept, keep);
        if (got < 0) return got;
        found += got;
    }
    return found;
}
