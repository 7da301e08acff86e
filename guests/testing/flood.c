/* flood.c: a guest that prints as much as it is told to (tests/core/test_hostile_output.py).
 * flood(total, unit) writes `unit` (1 to 64 bytes of UTF-8) over and over, whole units
 * only, up to `total` bytes, and returns how many bytes it wrote. */
#include "sbx.h"

static char chunk[4096];

SBX_EXPORT(flood, SBX_TAG_U64, SBX_TAG_U64, SBX_TAG_STR) {
    uint64_t total = sbx_arg_u64(args, 0);
    size_t ulen;
    const char *unit = sbx_arg_str(args, 1, &ulen);
    if (ulen == 0 || ulen > 64) sbx_abort("a unit of %zu bytes", ulen);
    size_t per = sizeof chunk / ulen * ulen;
    for (size_t i = 0; i < per; i += ulen) memcpy(chunk + i, unit, ulen);
    uint64_t left = total / ulen * ulen, done = 0;
    while (left) {
        size_t n = left < per ? (size_t)left : per;
        sbx_write(chunk, n);
        left -= n;
        done += n;
    }
    sbx_ret_u64(ret, done);
}

SBX_EXPORT(add, SBX_TAG_I32, SBX_TAG_I32, SBX_TAG_I32) {
    sbx_ret_i32(ret, (int32_t)((uint32_t)sbx_arg_i32(args, 0) + (uint32_t)sbx_arg_i32(args, 1)));
}
