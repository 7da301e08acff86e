/* A Wasm "engine" that lies to the host (tests/test_wasm_hostile.py): every export of the
 * engine ABI exists, but answers with what the `mode` global selects: addresses outside
 * the heap, replies of the wrong size, unknown statuses or value types, huge counts,
 * memory-window requests out of range. The host must refuse each with a clear error. */
#include "sbx.h"
#include "../wasm/wasm_abi.h"

static uint32_t mode;
static uint8_t reply[64];

SBX_EXPORT(set_mode, SBX_TAG_VOID, SBX_TAG_U32) { mode = sbx_arg_u32(args, 0); }

#ifndef LIE_ABI_VERSION
#define LIE_ABI_VERSION WASM_ABI_VERSION
#endif
SBX_EXPORT(wasm_abi_version, SBX_TAG_U32) { sbx_ret_u32(ret, LIE_ABI_VERSION); }

SBX_EXPORT(wasm_alloc, SBX_TAG_U64, SBX_TAG_U64) {
    static uint8_t buffer[65536];
    uint64_t addr = (uint64_t)(uintptr_t)buffer;  /* in .bss: not the heap */
    if (mode == 1) addr = 0x1000;                  /* the page tables */
    if (mode == 2) addr = (uint64_t)-4096;         /* wraps */
    if (mode >= 3) addr = (uint64_t)(uintptr_t)malloc(sbx_arg_u64(args, 0) + 1);
    sbx_ret_u64(ret, addr);
}

static void answer(sbx_value *ret, size_t len) { sbx_ret_bytes(ret, reply, len); }

SBX_EXPORT(wasm_load, SBX_TAG_BYTES, SBX_TAG_U64, SBX_TAG_U64) {
    if (mode == 4) return answer(ret, 0);                                  /* empty reply */
    reply[0] = mode == 5 ? 99 : WASM_STATUS_OK;                            /* unknown status */
    answer(ret, mode == 6 ? 3 : 5);                                        /* short handle */
}

SBX_EXPORT(wasm_instantiate, SBX_TAG_BYTES, SBX_TAG_I32) {
    if (mode == 7) { /* a grow request for a window that cannot exist */
        sbx_value a[2] = {{SBX_TAG_U32, 0, 5000}, sbx_val_u64(1)};
        sbx_host_call(WASM_HOST_GROW, 2, a);
    }
    if (mode == 8) { /* a host import of an instance and index nobody bound */
        uint8_t none[1] = {0};
        sbx_value a[4] = {{SBX_TAG_U32, 0, 77}, {SBX_TAG_U32, 0, 3}, sbx_val_bytes(none, 1),
                          {SBX_TAG_U32, 0, 0}};
        sbx_host_call(WASM_HOST_IMPORT, 4, a);
    }
    reply[0] = WASM_STATUS_OK;
    reply[1] = reply[2] = reply[3] = reply[4] = 0;
    answer(ret, 5);
}

SBX_EXPORT(wasm_invoke, SBX_TAG_BYTES, SBX_TAG_I32, SBX_TAG_STR, SBX_TAG_BYTES) {
    reply[0] = WASM_STATUS_OK;
    reply[1] = mode == 9 ? 200 : 1; /* a value count the payload does not hold */
    reply[2] = mode == 10 ? 0x42 : WASM_TYPE_I32; /* an unknown value type */
    for (int i = 3; i < 11; i++) reply[i] = 0;
    answer(ret, 11);
}

SBX_EXPORT(wasm_fault, SBX_TAG_BYTES, SBX_TAG_U64) { answer(ret, 0); }
SBX_EXPORT(wasm_get, SBX_TAG_BYTES, SBX_TAG_I32, SBX_TAG_STR) { answer(ret, 0); }
SBX_EXPORT(wasm_register, SBX_TAG_BYTES, SBX_TAG_I32, SBX_TAG_STR) { answer(ret, 0); }
