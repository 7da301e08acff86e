/* sbx_memory.h: interface of the native guest-memory helpers (also parsed by cffi's
 * cdef: keep it in that subset: plain prototypes, no includes). */

/* Makes the private mapping `mem` (`size` bytes) equal to `image` (the same bytes of a
 * shared mapping of the file `mem` maps) again: finds the pages of `mem` that are
 * private copies (written since mapped) with the PAGEMAP_SCAN ioctl on `pagemap_fd`
 * (/proc/self/pagemap) and copies each back from `image`; the pages stay mapped. One
 * call for what memory.py's scan-then-copy does in several. Returns the number of bytes
 * copied, or -errno (-ENOTTY or -EINVAL: the kernel has no PAGEMAP_SCAN, before 6.7).
 * Releases the GIL (cffi). */
int64_t sbx_memory_reset(int pagemap_fd, void *mem, const void *image, uint64_t size);
