/* reader.h: bounds-checked reading of the Wasm binary format (LEB128, bytes, names).
 * Every read past the end or overlong encoding raises eng_malformed. */
#ifndef WASM_READER_H
#define WASM_READER_H

#include "internal.h"

typedef struct reader {
    const uint8_t *p, *end;
} reader;

static inline size_t rd_left(const reader *r) { return (size_t)(r->end - r->p); }

static inline uint8_t rd_u8(reader *r) {
    if (r->p >= r->end) eng_malformed("unexpected end");
    return *r->p++;
}

static inline const uint8_t *rd_bytes(reader *r, size_t n) {
    if (n > rd_left(r)) eng_malformed("unexpected end");
    const uint8_t *p = r->p;
    r->p += n;
    return p;
}

static inline uint64_t rd_uleb(reader *r, int bits) {
    uint64_t v = 0;
    for (int shift = 0;; shift += 7) {
        uint8_t b = rd_u8(r);
        if (shift + 7 > bits) { /* the last byte allowed */
            if (b & 0x80) eng_malformed("integer representation too long");
            if ((b & 0x7f) >> (bits - shift)) eng_malformed("integer too large");
        }
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) return v;
    }
}

static inline int64_t rd_sleb(reader *r, int bits) {
    uint64_t v = 0;
    int shift = 0;
    uint8_t b;
    for (;;) {
        b = rd_u8(r);
        if (shift + 7 > bits) {
            if (b & 0x80) eng_malformed("integer representation too long");
            int8_t sx = (int8_t)(uint8_t)(b << 1) >> 1;
            int8_t top = sx >> (bits - shift - 1);
            if (top != 0 && top != -1) eng_malformed("integer too large");
        }
        v |= (uint64_t)(b & 0x7f) << shift;
        shift += 7;
        if (!(b & 0x80)) break;
    }
    if (shift < 64 && (b & 0x40)) v |= ~(uint64_t)0 << shift;
    return (int64_t)v;
}

static inline uint32_t rd_u32(reader *r) { return (uint32_t)rd_uleb(r, 32); }
static inline int32_t rd_s32(reader *r) { return (int32_t)rd_sleb(r, 32); }
static inline int64_t rd_s64(reader *r) { return rd_sleb(r, 64); }

/* A vector count, bounded by the bytes left (each element takes at least `min` bytes). */
static inline uint32_t rd_count(reader *r, size_t min) {
    uint32_t n = rd_u32(r);
    if (min && (uint64_t)n * min > rd_left(r)) eng_malformed("unexpected end");
    return n;
}

#endif /* WASM_READER_H */
