/* malloc.c: the guest heap, a first-fit allocator over the region given to sbx_heap_init. */
#include "sbx.h"

/* The region is a run of blocks, each a 16-byte header and then its payload, closed by
 * an end marker (a bare header: size 0, in use). Block sizes include the header and are
 * multiples of 16, so every payload is 16-byte aligned; bit 0 of `size` marks a block in
 * use. `prev_size` (the size of the block just below; 0 for the first) lets free() merge
 * with the block below as well as the one above, so no two free blocks are ever
 * adjacent. Free blocks are also on a doubly linked list through their payload, and
 * malloc takes the first one that fits, splitting off the rest.
 *
 * malloc(0) returns a unique non-NULL pointer (a minimum-size block) while there is room.
 * free() and realloc() abort the call on a pointer that is not a live heap block (as far
 * as the headers can tell: double frees and wild pointers, not every corruption). */

typedef struct block {
    size_t prev_size;
    size_t size;               /* bytes, header included; | USED */
    struct block *next, *prev; /* free blocks only */
} block;

#define HDR 16u       /* header bytes before the payload */
#define MIN_BLOCK 32u /* header + room for the free-list links */
#define USED ((size_t)1)

static struct {
    uintptr_t lo, end; /* first block; end marker (0, 0: not initialised) */
    block *free_list;
} heap;

static size_t bsize(const block *b) { return b->size & ~USED; }
static block *next_block(const block *b) { return (block *)((uintptr_t)b + bsize(b)); }

static void list_push(block *b) {
    b->prev = NULL;
    b->next = heap.free_list;
    if (b->next) b->next->prev = b;
    heap.free_list = b;
}

static void list_remove(block *b) {
    if (b->prev)
        b->prev->next = b->next;
    else
        heap.free_list = b->next;
    if (b->next) b->next->prev = b->prev;
}

/* Makes b free, merging it with free neighbours, and puts the result on the list. */
static void release(block *b) {
    size_t size = bsize(b);
    b->size = size; /* clear USED first, so a stale header never looks live */
    block *next = next_block(b);
    if (!(next->size & USED)) {
        list_remove(next);
        size += bsize(next);
    }
    if (b->prev_size) {
        block *prev = (block *)((uintptr_t)b - b->prev_size);
        if (!(prev->size & USED)) {
            list_remove(prev);
            size += bsize(prev);
            b = prev;
        }
    }
    b->size = size;
    next_block(b)->prev_size = size;
    list_push(b);
}

/* Shrinks the in-use block b to `need` bytes if what is left makes a block of its own. */
static void split(block *b, size_t need) {
    size_t size = bsize(b);
    if (size - need < MIN_BLOCK) return;
    block *rest = (block *)((uintptr_t)b + need);
    b->size = need | USED;
    rest->prev_size = need;
    rest->size = (size - need) | USED;
    next_block(rest)->prev_size = size - need;
    release(rest);
}

/* Block size for an n-byte payload, or 0 if it can never fit. */
static size_t block_size(size_t n) {
    if (n > heap.end - heap.lo) return 0; /* also: heap not initialised */
    size_t need = (n + HDR + 15) & ~(size_t)15;
    return need < MIN_BLOCK ? MIN_BLOCK : need;
}

/* The header of a pointer handed out by malloc, or an abort. */
static block *live_block(void *p) {
    uintptr_t a = (uintptr_t)p;
    block *b = (block *)(a - HDR);
    if (a < heap.lo + HDR || a >= heap.end || (a & 15) || !(b->size & USED) ||
        bsize(b) < MIN_BLOCK || bsize(b) > heap.end - (uintptr_t)b ||
        next_block(b)->prev_size != bsize(b))
        sbx_abort("free/realloc: %p is not an allocated heap block", p);
    return b;
}

/* The heap is set up on first use, not in sbx_heap_init: its first and last pages are
 * then touched only by guests that allocate (each first touch of a page costs a fault
 * in the hypervisor, which a call that never allocates should not pay). */
static void *pending_base;
static size_t pending_size;
static bool pending;

static void heap_setup(void *base, size_t size);

static inline void ensure_heap(void) {
    if (pending) {
        pending = false;
        heap_setup(pending_base, pending_size);
    }
}

void sbx_heap_init(void *base, size_t size) {
    heap.lo = heap.end = 0;
    heap.free_list = NULL;
    pending_base = base;
    pending_size = size;
    pending = true;
}

static void heap_setup(void *base, size_t size) {
    heap.lo = heap.end = 0;
    heap.free_list = NULL;
    uintptr_t a = (uintptr_t)base;
    uintptr_t lo = (a + 15) & ~(uintptr_t)15;
    if (!base || lo < a || lo - a >= size) return;
    size_t usable = (size - (lo - a)) & ~(size_t)15;
    if (usable < MIN_BLOCK + HDR) return;

    block *first = (block *)lo;
    block *end = (block *)(lo + usable - HDR);
    first->prev_size = 0;
    first->size = usable - HDR;
    end->prev_size = usable - HDR;
    end->size = 0 | USED;
    heap.lo = lo;
    heap.end = (uintptr_t)end;
    list_push(first);
}

void *malloc(size_t n) {
    ensure_heap();
    size_t need = block_size(n);
    if (!need) return NULL;
    for (block *b = heap.free_list; b; b = b->next) {
        if (b->size >= need) {
            list_remove(b);
            b->size |= USED;
            split(b, need);
            return (char *)b + HDR;
        }
    }
    return NULL;
}

void *calloc(size_t n, size_t size) {
    size_t total;
    if (__builtin_mul_overflow(n, size, &total)) return NULL;
    void *p = malloc(total);
    if (p) memset(p, 0, total);
    return p;
}

void free(void *p) {
    ensure_heap();
    if (p) release(live_block(p));
}

void *realloc(void *p, size_t n) {
    ensure_heap();
    if (!p) return malloc(n);
    if (n == 0) {
        free(p);
        return NULL;
    }
    block *b = live_block(p);
    size_t need = block_size(n);
    if (!need) return NULL;
    size_t size = bsize(b);
    if (need <= size) {
        split(b, need);
        return p;
    }
    block *next = next_block(b);
    if (!(next->size & USED) && size + bsize(next) >= need) {
        /* Grow in place into the free block above. */
        list_remove(next);
        b->size = (size + bsize(next)) | USED;
        next_block(b)->prev_size = bsize(b);
        split(b, need);
        return p;
    }
    void *q = malloc(n);
    if (!q) return NULL;
    memcpy(q, p, size - HDR);
    release(b);
    return q;
}
