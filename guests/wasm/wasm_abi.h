/* wasm_abi.h: the contract between the Wasm engine guest (guests/wasm/) and the host
 * (sandbox/wasm/). Read by the engine's C code and by Python through cffi's cdef, so it
 * is written in the subset cffi parses: `#define NAME <integer literal>` (plus the two
 * host-call names, which the cffi builder turns into string constants), no includes, no
 * include guard: include it once, through the engine's own header.
 *
 * Engine exports (SBX_EXPORT functions of the engine guest). Every one except
 * wasm_alloc returns BYTES, a "reply":
 *     byte 0      status (WASM_STATUS_*)
 *     OK:         the payload described per function
 *     otherwise:  byte 1 = trap kind (WASM_TRAP_*, 0 unless status is TRAP),
 *                 bytes 2.. = UTF-8 message
 *   wasm_alloc(U64 size) -> U64 address of a heap buffer of `size` bytes (0: no room);
 *       the host writes a module's bytes there, then calls wasm_load, which frees it.
 *   wasm_load(U64 address, U64 length) -> OK + u32 LE module handle.
 *       MALFORMED / INVALID when the decoder or compiler rejects the module;
 *       LIMIT when the engine heap is exhausted.
 *   wasm_instantiate(I32 module) -> OK + u32 LE instance handle. Imports are resolved by
 *       module name: a name given to wasm_register (and "spectest", built in) links to
 *       that instance's export of the same name and kind (types checked; mismatch or a
 *       missing export: UNLINKABLE); any other module's function import becomes a host
 *       import (WASM_HOST_IMPORT below); any other non-function import: UNLINKABLE.
 *       A trap in segment initialisation or the start function: TRAP (with its kind);
 *       the writes of segments applied before it stay visible (Wasm 2.0 semantics).
 *   wasm_register(I32 instance, STR name) -> OK, empty payload.
 *   wasm_invoke(I32 instance, STR export, BYTES args) -> OK + results.
 *       args and results are value lists: u8 count, then per value u8 type
 *       (WASM_TYPE_*) and u64 LE bits (i32/f32 in the low 32 bits; a null reference is
 *       WASM_NULL_REF; an externref is the host's u64; a funcref an engine id; an exnref
 *       an engine handle, opaque to the host, which may pass only a null one); a v128
 *       value has 16 bytes LE instead of 8 (lane 0 first).
 *       A missing export or wrong argument count/types: BAD_CALL. A trap: TRAP; an
 *       exception (Wasm exception handling) that no handler caught leaves the call as
 *       TRAP with kind WASM_TRAP_UNCAUGHT_EXCEPTION.
 *   wasm_get(I32 instance, STR export) -> OK + value list of one value (an exported
 *       global's value); BAD_CALL if there is no such global.
 *   wasm_fault(U64 address) -> the reply of the operation (wasm_instantiate or
 *       wasm_invoke) that was running when its access to a linear-memory window faulted:
 *       TRAP with kind WASM_TRAP_MEMORY_OOB. The host calls it (on a fresh stack) after
 *       a page fault at an address inside a window; the engine abandons the faulted
 *       operation's C frames and interpreter state. BAD_CALL if no operation was running.
 *
 * Host functions the engine calls (sbx_host_call):
 *   WASM_HOST_GROW(U32 memory, U64 pages) -> BOOL: make memory window `memory` hold
 *       `pages` 64 KiB pages (mapped read-write, zero-filled, never shrinks). False when
 *       the pool of linear memory is exhausted (memory.grow then returns -1).
 *   WASM_HOST_IMPORT(U32 instance, U32 function import index, BYTES args value list,
 *       U32 memory) -> BYTES value list of the results. `memory` is the window index of
 *       the calling instance's memory 0 (0xffffffff if it has none): WASI functions read
 *       and write it. The instance handle is the one wasm_instantiate is about to return
 *       when the call comes from the start function. If the host function raises, the
 *       guest call is unwound by the SDK (the host reports the error).
 *
 * Linear memory k (0 <= k < WASM_MAX_MEMORIES, assigned by the engine in creation
 * order) lives at virtual address WASM_WINDOW_BASE + k * WASM_WINDOW_STRIDE. The host
 * maps its current pages there and nothing else in the window: an access at
 * base + (u32 address) + (u32 offset) past the current size faults (the window is
 * larger than 2^33 bytes), and the host turns the fault into wasm_fault.
 */
#define WASM_ABI_VERSION 3

#define WASM_WINDOW_BASE 0x10000000000
#define WASM_WINDOW_STRIDE 0x400000000
#define WASM_MAX_MEMORIES 1024
#define WASM_PAGE_SIZE 65536
#define WASM_MAX_PAGES 65536

#define WASM_NULL_REF 0xffffffffffffffff

#define WASM_HOST_GROW "__wasm_grow"
#define WASM_HOST_IMPORT "__wasm_import"

/* Reply status. */
#define WASM_STATUS_OK 0
#define WASM_STATUS_TRAP 1
#define WASM_STATUS_MALFORMED 2
#define WASM_STATUS_INVALID 3
#define WASM_STATUS_UNLINKABLE 4
#define WASM_STATUS_BAD_CALL 5
#define WASM_STATUS_LIMIT 6

/* Value types (their binary encodings). */
#define WASM_TYPE_I32 0x7f
#define WASM_TYPE_I64 0x7e
#define WASM_TYPE_F32 0x7d
#define WASM_TYPE_F64 0x7c
#define WASM_TYPE_V128 0x7b
#define WASM_TYPE_FUNCREF 0x70
#define WASM_TYPE_EXTERNREF 0x6f
#define WASM_TYPE_EXNREF 0x69

/* Trap kinds; the spec test suite's message for each is in the engine's trap table. */
#define WASM_TRAP_NONE 0
#define WASM_TRAP_UNREACHABLE 1
#define WASM_TRAP_MEMORY_OOB 2
#define WASM_TRAP_DIV_ZERO 3
#define WASM_TRAP_INT_OVERFLOW 4
#define WASM_TRAP_INVALID_CONVERSION 5
#define WASM_TRAP_INDIRECT_TYPE_MISMATCH 6
#define WASM_TRAP_UNDEFINED_ELEMENT 7
#define WASM_TRAP_UNINITIALIZED_ELEMENT 8
#define WASM_TRAP_STACK_EXHAUSTED 9
#define WASM_TRAP_TABLE_OOB 10
#define WASM_TRAP_NULL_REFERENCE 11
#define WASM_TRAP_UNCAUGHT_EXCEPTION 12
#define WASM_TRAP_COUNT 13

