/* hostile.c: a test guest that breaks the ABI on purpose: each function writes one kind
 * of malformed record and exits as if it were valid. The host must reject every one
 * cleanly (a GuestProtocolError/GuestTrap, the host process unharmed). */
#include "sbx.h"

static void out_port(uint16_t port, uint32_t value) {
    __asm__ volatile("outl %0, %1" : : "a"(value), "Nd"(port) : "memory");
}

static struct sbx_result *result_record(void) {
    return (struct sbx_result *)(uintptr_t)sbx_boot_info()->out_buf;
}

/* Writes `r` as the call's result and exits; the host never resumes a guest after a
 * malformed record, so this does not return. */
_Noreturn static void send(uint16_t port, uint32_t offset) {
    out_port(port, offset);
    for (;;) __asm__ volatile("");
}

static void fill(struct sbx_result *r, uint32_t size, uint32_t tag, uint32_t len, uint64_t bits) {
    r->size = size;
    r->status = SBX_STATUS_OK;
    r->print_off = 0;
    r->print_len = 0;
    r->value.tag = tag;
    r->value.len = len;
    r->value.bits = bits;
}

SBX_EXPORT(size_past_buffer, SBX_TAG_STR) {
    fill(result_record(), 0xFFFFFFF0u, SBX_TAG_STR, 4, sizeof(struct sbx_result));
    send(SBX_PORT_RETURN, 0);
}

SBX_EXPORT(len_past_record, SBX_TAG_STR) {
    fill(result_record(), sizeof(struct sbx_result) + 8, SBX_TAG_STR, 1u << 20, sizeof(struct sbx_result));
    send(SBX_PORT_RETURN, 0);
}

SBX_EXPORT(offset_overflow, SBX_TAG_BYTES) {
    /* offset + len wraps around 2^64 */
    fill(result_record(), sizeof(struct sbx_result) + 8, SBX_TAG_BYTES, 16, 0xFFFFFFFFFFFFFFF8ull);
    send(SBX_PORT_RETURN, 0);
}

SBX_EXPORT(unknown_tag, SBX_TAG_I32) {
    fill(result_record(), sizeof(struct sbx_result), 77, 0, 0);
    send(SBX_PORT_RETURN, 0);
}

SBX_EXPORT(wrong_tag, SBX_TAG_I32) {
    /* A valid value of another type than the function declares. */
    fill(result_record(), sizeof(struct sbx_result), SBX_TAG_F64, 0, 0);
    send(SBX_PORT_RETURN, 0);
}

SBX_EXPORT(bad_utf8, SBX_TAG_STR) {
    struct sbx_result *r = result_record();
    uint8_t *data = (uint8_t *)(r + 1);
    data[0] = 0xC3;
    data[1] = 0x28; /* invalid continuation byte */
    fill(r, sizeof(*r) + 2, SBX_TAG_STR, 2, sizeof(*r));
    send(SBX_PORT_RETURN, 0);
}

SBX_EXPORT(record_offset_outside, SBX_TAG_VOID) {
    fill(result_record(), sizeof(struct sbx_result), SBX_TAG_VOID, 0, 0);
    send(SBX_PORT_RETURN, 0x7FFFFFF0u);
}

SBX_EXPORT(print_past_record, SBX_TAG_VOID) {
    struct sbx_result *r = result_record();
    fill(r, sizeof(*r), SBX_TAG_VOID, 0, 0);
    r->print_off = 8;
    r->print_len = 1u << 30;
    send(SBX_PORT_RETURN, 0);
}

SBX_EXPORT(unknown_status, SBX_TAG_VOID) {
    struct sbx_result *r = result_record();
    fill(r, sizeof(*r), SBX_TAG_VOID, 0, 0);
    r->status = 1234;
    send(SBX_PORT_RETURN, 0);
}

SBX_EXPORT(host_call_too_many_args, SBX_TAG_VOID) {
    struct sbx_call *c = (struct sbx_call *)(uintptr_t)sbx_boot_info()->out_buf;
    memset(c, 0, sizeof *c);
    c->size = sizeof *c;
    c->argc = 1000;
    send(SBX_PORT_HOST_CALL, 0);
}

SBX_EXPORT(host_call_name_past_record, SBX_TAG_VOID) {
    struct sbx_call *c = (struct sbx_call *)(uintptr_t)sbx_boot_info()->out_buf;
    memset(c, 0, sizeof *c);
    c->size = sizeof *c;
    c->name_off = sizeof *c - 2;
    c->name_len = 40;
    send(SBX_PORT_HOST_CALL, 0);
}

SBX_EXPORT(in_port, SBX_TAG_VOID) {
    uint32_t v;
    __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"((uint16_t)SBX_PORT_RETURN));
    (void)v;
}

SBX_EXPORT(byte_out, SBX_TAG_VOID) {
    /* An 8-bit `out` to the return port: not the ABI's 32-bit write. */
    __asm__ volatile("outb %0, %1" : : "a"((uint8_t)0), "Nd"((uint16_t)SBX_PORT_RETURN));
}

SBX_EXPORT(trap_port, SBX_TAG_VOID) {
    /* The trap port is for the ring-0 stubs; ring 3 may not fake a trap report. */
    out_port(SBX_PORT_TRAP, 0);
}

SBX_EXPORT(ok, SBX_TAG_I32) { sbx_ret_i32(ret, 42); }
