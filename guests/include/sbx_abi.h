/* sbx_abi.h: the one guest/host ABI of the sandbox runtime.
 *
 * Three readers: guest C code (through sbx.h), the C run loop (native/) and Python
 * (sandbox/abi.py, through cffi's cdef). So this file is written in the subset that
 * cffi's cdef parses: `#define NAME <integer literal>`, structs of fixed-width integers,
 * no #include, no include guard, no expressions in #define. Include it through sbx.h.
 *
 * Contract (see README "Guest ABI"):
 * - The host maps one guest-physical region, identity-mapped, laid out by
 *   sandbox/layout.py. Guest code runs in ring 3 from its first instruction.
 * - Host -> guest call: the host writes a `struct sbx_call` into the input buffer and
 *   resumes the vCPU; the guest dispatches it, writes a `struct sbx_result` into the
 *   output buffer and executes `out` to SBX_PORT_RETURN. The next resume is the next call.
 * - Guest -> host call: the guest writes a `struct sbx_call` into the output buffer and
 *   executes `out` to SBX_PORT_HOST_CALL; the host writes a `struct sbx_result` into
 *   the reply buffer and resumes the guest.
 * - Print flush: when the guest's print buffer is full it writes a `struct sbx_result`
 *   (status OK, void value, print_off/print_len set) into the output buffer and executes
 *   `out` to SBX_PORT_PRINT; the host consumes the text and resumes.
 * - Everything the guest writes is untrusted: the host bounds-checks every size, offset
 *   and length against the buffer it lives in before reading it.
 * - Offsets in records are relative to the start of the record, which is the start of
 *   the buffer it lives in.
 */

/* Bumped on any incompatible change; the guest carries it in an ELF note and in
 * `sbx_boot_info.abi_version` is the host's, so either side can refuse the other. */
#define SBX_ABI_VERSION 1

/* ELF note that carries the guest's ABI version: owner "SBX\0", this type,
 * descriptor one uint32_t (the version). */
#define SBX_NOTE_TYPE 0x53420001

/* I/O ports, each written with a 32-bit `out` (which the CPU checks against four
 * consecutive bits of the TSS I/O bitmap, so ports are 4 apart). Ring 3 may use ports
 * SBX_PORT_FIRST..SBX_PORT_LAST except the trap port's four (the TSS I/O bitmap opens
 * exactly these); any other port is a #GP trap, and an unassigned port in the range is
 * reported by the host as a "bad_port" trap. */
#define SBX_PORT_FIRST 224
#define SBX_PORT_RETURN 224
#define SBX_PORT_HOST_CALL 228
#define SBX_PORT_PRINT 232
/* Used by the host's ring-0 exception stubs only: rax = vector, rbx = error code,
 * rcx = faulting RIP, rdx = CR2, rsi = faulting RSP. */
#define SBX_PORT_TRAP 236
/* First port of the open range that the ABI leaves unassigned. */
#define SBX_PORT_UNASSIGNED 240
#define SBX_PORT_LAST 247

/* Value type tags. */
#define SBX_TAG_VOID 0
#define SBX_TAG_I32 1
#define SBX_TAG_U32 2
#define SBX_TAG_I64 3
#define SBX_TAG_U64 4
#define SBX_TAG_F32 5
#define SBX_TAG_F64 6
#define SBX_TAG_BOOL 7
#define SBX_TAG_STR 8
#define SBX_TAG_BYTES 9
#define SBX_TAG_COUNT 10

/* Status of a `struct sbx_result`. */
#define SBX_STATUS_OK 0
/* The guest gave up: value is a STR message (sbx_abort). Does not poison. */
#define SBX_STATUS_ABORT 1
/* No guest function of that name. */
#define SBX_STATUS_NOT_FOUND 2
/* Argument count or tags do not match the function's declaration. */
#define SBX_STATUS_BAD_ARGS 3
/* Reply to a host call: the host function raised; the guest unwinds the call. */
#define SBX_STATUS_HOST_ERROR 4
/* The record the guest received was malformed. */
#define SBX_STATUS_BAD_RECORD 5

/* Limits. */
#define SBX_MAX_ARGS 32
#define SBX_NAME_MAX 47

/* One value. Scalars live in `bits`: integers sign- or zero-extended to 64 bits,
 * bool as 0 or 1, f32/f64 as their IEEE-754 bit patterns. STR and BYTES: `bits` is the
 * offset of the data from the start of the record and `len` its length in bytes; STR is
 * UTF-8. Data written by the host is followed by a NUL byte (not counted in `len`). */
struct sbx_value {
    uint32_t tag;
    uint32_t len;
    uint64_t bits;
};

/* A call, in either direction. `size` covers the header and all data. */
struct sbx_call {
    uint32_t size;
    uint32_t argc;
    uint32_t name_off;
    uint32_t name_len;
    /* Guest -> host: buffered sbx_print output flushed with the call. Host -> guest:
     * print_off may carry 1 + the function's index in the guest's sbx_funcs table, a
     * hint the guest checks against the name before it searches (0: no hint). */
    uint32_t print_off;
    uint32_t print_len;
    struct sbx_value args[32];
};

/* The result of a call, or the host's reply to a host call. */
struct sbx_result {
    uint32_t size;
    uint32_t status;
    /* Guest -> host only: buffered sbx_print output flushed with the result. */
    uint32_t print_off;
    uint32_t print_len;
    struct sbx_value value;
};

/* Written by the host at SBX_BOOT_INFO (layout.py) before the first instruction and
 * passed in RDI to the guest's entry point. Append-only: new fields go at the end and
 * `size` tells the guest which ones it has. All addresses are guest addresses. */
struct sbx_boot_info {
    uint32_t abi_version;
    uint32_t size;
    uint64_t mem_size;
    uint64_t in_buf;
    uint64_t in_size;
    uint64_t out_buf;
    uint64_t out_size;
    uint64_t reply_buf;
    uint64_t reply_size;
    uint64_t heap_base;
    uint64_t heap_size;
    uint64_t stack_top;
    uint64_t stack_size;
    uint64_t random_seed;
};

/* One exported guest function. The SDK's SBX_EXPORT macro places these in the ELF
 * section "sbx_funcs"; the host reads the table from the file to learn each function's
 * signature, and the guest dispatches by name through the same table. */
struct sbx_func_desc {
    char name[48];
    uint8_t ret;
    uint8_t nparams;
    uint8_t params[32];
    uint8_t reserved[6];
    uint64_t entry;
};
