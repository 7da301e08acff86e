/* guest.c: the engine guest's SBX_EXPORT adapter over the core API (engine.h), and the
 * platform hooks on the guest SDK (heap, host calls for grow and imports). */
#include "sbx.h"

#include "engine.h"

/* The host refuses an engine of another ABI (sandbox/wasm/sandbox.py). */
SBX_EXPORT(wasm_abi_version, SBX_TAG_U32) { sbx_ret_u32(ret, WASM_ABI_VERSION); }

static void ret_reply(sbx_value *ret) {
    size_t len;
    const uint8_t *r = eng_reply(&len);
    sbx_ret_bytes(ret, r, len);
}

SBX_EXPORT(wasm_alloc, SBX_TAG_U64, SBX_TAG_U64) {
    sbx_ret_u64(ret, (uint64_t)(uintptr_t)eng_alloc(sbx_arg_u64(args, 0)));
}

SBX_EXPORT(wasm_load, SBX_TAG_BYTES, SBX_TAG_U64, SBX_TAG_U64) {
    eng_load((uint8_t *)(uintptr_t)sbx_arg_u64(args, 0), sbx_arg_u64(args, 1));
    ret_reply(ret);
}

SBX_EXPORT(wasm_instantiate, SBX_TAG_BYTES, SBX_TAG_I32) {
    eng_instantiate((uint32_t)sbx_arg_i32(args, 0));
    ret_reply(ret);
}

SBX_EXPORT(wasm_register, SBX_TAG_BYTES, SBX_TAG_I32, SBX_TAG_STR) {
    size_t len;
    const char *name = sbx_arg_str(args, 1, &len);
    eng_register((uint32_t)sbx_arg_i32(args, 0), name, len);
    ret_reply(ret);
}

SBX_EXPORT(wasm_invoke, SBX_TAG_BYTES, SBX_TAG_I32, SBX_TAG_STR, SBX_TAG_BYTES) {
    size_t name_len, args_len;
    const char *name = sbx_arg_str(args, 1, &name_len);
    const uint8_t *vals = sbx_arg_bytes(args, 2, &args_len);
    eng_invoke((uint32_t)sbx_arg_i32(args, 0), name, name_len, vals, args_len);
    ret_reply(ret);
}

SBX_EXPORT(wasm_get, SBX_TAG_BYTES, SBX_TAG_I32, SBX_TAG_STR) {
    size_t len;
    const char *name = sbx_arg_str(args, 1, &len);
    eng_get((uint32_t)sbx_arg_i32(args, 0), name, len);
    ret_reply(ret);
}

SBX_EXPORT(wasm_fault, SBX_TAG_BYTES, SBX_TAG_U64) {
    eng_fault(sbx_arg_u64(args, 0));
    ret_reply(ret);
}

/* ---- Platform hooks ------------------------------------------------------------------- */

bool plat_grow(uint32_t memory, uint64_t pages) {
    sbx_value a[2] = {sbx_val_u64(memory), sbx_val_u64(pages)};
    a[0].tag = SBX_TAG_U32;
    sbx_value r = sbx_host_call(WASM_HOST_GROW, 2, a);
    return r.tag == SBX_TAG_BOOL && r.bits != 0;
}

const uint8_t *plat_import(uint32_t instance, uint32_t func_index, const uint8_t *args,
                           size_t args_len, uint32_t memory, size_t *result_len) {
    sbx_value a[4] = {sbx_val_u64(instance), sbx_val_u64(func_index), sbx_val_bytes(args, args_len),
                      sbx_val_u64(memory)};
    a[0].tag = SBX_TAG_U32;
    a[1].tag = SBX_TAG_U32;
    a[3].tag = SBX_TAG_U32;
    sbx_value r = sbx_host_call(WASM_HOST_IMPORT, 4, a);
    if (r.tag != SBX_TAG_BYTES) return 0;
    *result_len = r.len;
    return (const uint8_t *)(uintptr_t)r.bits;
}

void *plat_malloc(size_t n) { return malloc(n); }
void *plat_calloc(size_t n, size_t size) { return calloc(n, size); }
void *plat_realloc(void *p, size_t n) { return realloc(p, n); }
void plat_free(void *p) { free(p); }
