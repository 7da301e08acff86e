/* libc.c: the SDK's freestanding memory and string functions (mem*, str*). */
#include "sbx.h"

/* GCC turns byte loops into calls to memcpy/memset/memmove/strlen ("loop distribution");
 * inside these very functions that would recurse forever, so it is off for every one. */
#if defined(__GNUC__) && !defined(__clang__)
/* `hot`: these small functions go to .text.hot, beside the call path (runtime.c). */
#define NO_LIBCALLS __attribute__((optimize("no-tree-loop-distribute-patterns"), hot))
#else
#define NO_LIBCALLS
#endif

/* Unaligned, alias-anything word accesses. */
typedef uint64_t __attribute__((may_alias, aligned(1))) u64_u;
typedef uint32_t __attribute__((may_alias, aligned(1))) u32_u;

/* Below this size the fixed start-up cost of `rep movsb`/`rep stosb` dominates. */
#define SMALL 16

/* Copies n <= SMALL bytes. Every load happens before any store, so overlap is fine. */
NO_LIBCALLS static inline void copy_small(unsigned char *d, const unsigned char *s, size_t n) {
    if (n >= 8) {
        uint64_t a = *(const u64_u *)s, b = *(const u64_u *)(s + n - 8);
        *(u64_u *)d = a;
        *(u64_u *)(d + n - 8) = b;
    } else if (n >= 4) {
        uint32_t a = *(const u32_u *)s, b = *(const u32_u *)(s + n - 4);
        *(u32_u *)d = a;
        *(u32_u *)(d + n - 4) = b;
    } else if (n > 0) {
        unsigned char a = s[0], b = s[n / 2], c = s[n - 1];
        d[0] = a;
        d[n / 2] = b;
        d[n - 1] = c;
    }
}

/* Forward copy; correct for overlap when d < s (byte-by-byte semantics). */
NO_LIBCALLS static inline void copy_forward(unsigned char *d, const unsigned char *s, size_t n) {
#if defined(__x86_64__)
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
#else
    while (n--) *d++ = *s++;
#endif
}

NO_LIBCALLS void *memcpy(void *dst, const void *src, size_t n) {
    if (n <= SMALL)
        copy_small(dst, src, n);
    else
        copy_forward(dst, src, n);
    return dst;
}

NO_LIBCALLS void *memmove(void *dst, const void *src, size_t n) {
    unsigned char *d = dst;
    const unsigned char *s = src;
    if (n <= SMALL) {
        copy_small(d, s, n);
    } else if ((uintptr_t)d - (uintptr_t)s >= n) {
        /* d before s, or d at/after the end of s: a forward copy never reads a byte it
         * already overwrote. */
        copy_forward(d, s, n);
    } else {
        /* s < d < s + n: copy backwards, 8 bytes at a time (each load precedes its
         * store, and the bytes stored lie above everything still to be read). */
        while (n >= 8) {
            n -= 8;
            *(u64_u *)(d + n) = *(const u64_u *)(s + n);
        }
        while (n > 0) {
            n--;
            d[n] = s[n];
        }
    }
    return dst;
}

NO_LIBCALLS void *memset(void *dst, int c, size_t n) {
    unsigned char *d = dst;
    if (n <= SMALL) {
        uint64_t v = (uint64_t)(unsigned char)c * 0x0101010101010101ull;
        if (n >= 8) {
            *(u64_u *)d = v;
            *(u64_u *)(d + n - 8) = v;
        } else if (n >= 4) {
            *(u32_u *)d = (uint32_t)v;
            *(u32_u *)(d + n - 4) = (uint32_t)v;
        } else if (n > 0) {
            d[0] = (unsigned char)c;
            d[n / 2] = (unsigned char)c;
            d[n - 1] = (unsigned char)c;
        }
        return dst;
    }
#if defined(__x86_64__)
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
#else
    while (n--) *d++ = (unsigned char)c;
#endif
    return dst;
}

NO_LIBCALLS int memcmp(const void *a, const void *b, size_t n) {
    const unsigned char *x = a, *y = b;
    for (size_t i = 0; i < n; i++) {
        if (x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
    }
    return 0;
}

NO_LIBCALLS size_t strlen(const char *s) {
    const char *p = s;
    while (*p) p++;
    return (size_t)(p - s);
}

NO_LIBCALLS size_t strnlen(const char *s, size_t max) {
    size_t n = 0;
    while (n < max && s[n]) n++;
    return n;
}

NO_LIBCALLS int strcmp(const char *a, const char *b) {
    const unsigned char *x = (const unsigned char *)a, *y = (const unsigned char *)b;
    while (*x && *x == *y) {
        x++;
        y++;
    }
    return (*x > *y) - (*x < *y);
}

NO_LIBCALLS int strncmp(const char *a, const char *b, size_t n) {
    const unsigned char *x = (const unsigned char *)a, *y = (const unsigned char *)b;
    for (; n > 0; n--, x++, y++) {
        if (*x != *y) return *x < *y ? -1 : 1;
        if (!*x) break;
    }
    return 0;
}

NO_LIBCALLS char *strcpy(char *dst, const char *src) {
    char *d = dst;
    while ((*d++ = *src++)) {
    }
    return dst;
}

NO_LIBCALLS char *strchr(const char *s, int c) {
    char ch = (char)c;
    for (;; s++) {
        if (*s == ch) return (char *)s;
        if (!*s) return NULL;
    }
}
