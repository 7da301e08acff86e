/* segments.c: state ring-3 code can change beyond the general registers: the FS/GS bases
 * (WRFSBASE/WRGSBASE, which this project's nested hosts execute in ring 3 whatever
 * CR4.FSGSBASE says, and which are #UD where CR4.FSGSBASE is clear) and the data segment
 * selectors (tests/core/test_cpu_state.py: a restore must reset all of them). */
#include "sbx.h"

SBX_EXPORT(set_fs_base, SBX_TAG_VOID, SBX_TAG_U64) {
    __asm__ volatile("wrfsbase %0" ::"r"(sbx_arg_u64(args, 0)));
}

SBX_EXPORT(get_fs_base, SBX_TAG_U64) {
    uint64_t v;
    __asm__ volatile("rdfsbase %0" : "=r"(v));
    sbx_ret_u64(ret, v);
}

SBX_EXPORT(set_gs_base, SBX_TAG_VOID, SBX_TAG_U64) {
    __asm__ volatile("wrgsbase %0" ::"r"(sbx_arg_u64(args, 0)));
}

SBX_EXPORT(get_gs_base, SBX_TAG_U64) {
    uint64_t v;
    __asm__ volatile("rdgsbase %0" : "=r"(v));
    sbx_ret_u64(ret, v);
}

/* Loads `selector` into DS, ES, FS and GS (0 is allowed in 64-bit mode). FS and GS bases
 * are reloaded from the descriptor (0 for a null selector). */
SBX_EXPORT(set_data_selectors, SBX_TAG_VOID, SBX_TAG_U32) {
    uint32_t sel = sbx_arg_u32(args, 0);
    __asm__ volatile("mov %0, %%ds\n\tmov %0, %%es\n\tmov %0, %%fs\n\tmov %0, %%gs" ::"r"(sel));
}

SBX_EXPORT(get_ds, SBX_TAG_U32) {
    uint32_t v;
    __asm__ volatile("mov %%ds, %0" : "=r"(v));
    sbx_ret_u32(ret, v);
}

SBX_EXPORT(get_gs, SBX_TAG_U32) {
    uint32_t v;
    __asm__ volatile("mov %%gs, %0" : "=r"(v));
    sbx_ret_u32(ret, v);
}
