/* sbx_memory.h: interface of the native guest-memory helpers (also parsed by cffi's
 * cdef: keep it in that subset: plain prototypes, no includes).
 *
 * A sandbox's memory is `size` bytes of private anonymous memory over which the data
 * extents of its image (a sealed memfd) are mapped private (copy-on-write). Holes of the
 * image are never mapped from the file: touching a hole of a shared memory file through
 * any mapping allocates a page in the file itself (shmem_fault), which would grow the
 * image every sandbox shares. `extents` arrays hold (offset, length) pairs, page-aligned,
 * sorted, not overlapping. */

/* mmap(2) of `length` bytes of `fd` (shared or private, read-only or read-write).
 * Returns the address, or NULL with errno set. Unlike Python's mmap module this keeps
 * no duplicate of the descriptor. */
void *sbx_map(int fd, size_t length, int private_, int writable);

/* Maps a sandbox's memory (see above): `size` bytes of anonymous memory with the `n`
 * extents of `fd` mapped over it. Returns the address, or NULL with errno set. */
void *sbx_memory_map(int fd, uint64_t size, const uint64_t *extents, uint32_t n);

/* munmap(2). Returns 0 or -errno. */
int sbx_unmap(void *addr, size_t length);

/* madvise(2). Returns 0 or -errno. */
int sbx_madvise(void *addr, size_t length, int advice);

/* Lists the pages of `mem` written since it was mapped (its private copies, present or
 * swapped; pages only read, and zero pages, are not listed), starting at offset
 * `from`: at most `max` (offset, length) pairs into `out`, adjacent pages merged.
 * Returns the number of pairs and sets *next to the offset to continue from (`size`
 * when done), or -errno. Uses PAGEMAP_SCAN on `pagemap_fd` (/proc/self/pagemap;
 * Linux 6.7+), or reads that file's entries on older kernels. */
int64_t sbx_memory_written(int pagemap_fd, const void *mem, uint64_t size, uint64_t from,
                           uint64_t *out, uint32_t max, uint64_t *next);

/* 1: find written pages by reading /proc/self/pagemap entries even where PAGEMAP_SCAN
 * exists (tests of the fallback); 0: PAGEMAP_SCAN where the kernel has it (default). */
void sbx_memory_use_pagemap_entries(int on);

/* Makes `mem` equal to its image again. `image` is a shared read-only mapping of the
 * image file (all `size` bytes; only its extents are ever read). The `n_stable`
 * `stable` ranges (sorted, page-aligned) hold pages nobody writes once mapped (read-only
 * to the guest and never written by the host): a private copy there (made by a
 * populate-for-write, so that KVM maps it at once) equals the image and is left as it
 * is. Every written page in
 * an extent is copied back from `image`, every written page in a hole is zeroed; once
 * `keep` bytes have been reset that way, the remaining written pages are dropped
 * (MADV_DONTNEED: an extent page then maps the file again, a hole page the zero page),
 * so a sandbox keeps at most `keep` bytes of its own pages mapped after a reset. Pages
 * kept stay mapped in the VM (no fault on the next call). Only the `n_scan` `scan`
 * ranges (sorted, disjoint, page-aligned, within `size`; -EINVAL otherwise) are searched
 * for written pages: the caller promises that every page written since the memory was
 * last equal to its image lies in them (outside, pages equal the image). Returns the
 * bytes of written pages found, or -errno. Releases the GIL (cffi). */
int64_t sbx_memory_reset(int pagemap_fd, void *mem, const void *image, uint64_t size,
                         const uint64_t *extents, uint32_t n, const uint64_t *stable,
                         uint32_t n_stable, const uint64_t *scan, uint32_t n_scan,
                         uint64_t keep);
