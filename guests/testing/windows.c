/* A test guest for the host's Wasm memory windows (sandbox/wasm/windows.py): it asks the
 * host to map window pages the way the engine does and reads/writes guest addresses. */
#include "sbx.h"

SBX_EXPORT(grow, SBX_TAG_BOOL, SBX_TAG_U32, SBX_TAG_U64) {
    sbx_value a[2] = {{SBX_TAG_U32, 0, sbx_arg_u32(args, 0)}, sbx_val_u64(sbx_arg_u64(args, 1))};
    sbx_value r = sbx_host_call("__wasm_grow", 2, a);
    if (r.tag != SBX_TAG_BOOL) sbx_abort("grow: host answered tag %u", r.tag);
    sbx_ret_bool(ret, r.bits != 0);
}

SBX_EXPORT(poke, SBX_TAG_VOID, SBX_TAG_U64, SBX_TAG_U64) {
    *(volatile uint64_t *)(uintptr_t)sbx_arg_u64(args, 0) = sbx_arg_u64(args, 1);
}

SBX_EXPORT(peek, SBX_TAG_U64, SBX_TAG_U64) {
    sbx_ret_u64(ret, *(volatile uint64_t *)(uintptr_t)sbx_arg_u64(args, 0));
}
