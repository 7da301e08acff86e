/* ops.h: the engine's internal instruction set (X-macro list). The compiler emits
 * interp_handlers[OP_x]; the interpreter defines one label per entry. Operand fields are
 * u32 units after the 2-unit handler address; d/a/b/c are frame slot indices. */
#ifndef WASM_OPS_H
#define WASM_OPS_H

/* Control and data movement; exception handling: THROW tag args frame_size, THROW_REF a. */
#define OPS_CONTROL(X)                                                                  \
    X(HALT) X(UNREACHABLE) X(BR) X(BR_IF) X(BR_UNLESS) X(BR_TABLE) X(RETURN) X(RET1) X(RET_ADD) X(RET_ADD_I)    \
    X(CALL) X(CALL_INDIRECT) X(MOV) X(MOV2) X(CONST32) X(CONST64) X(SELECT) X(GLOBAL_GET)       \
    X(GLOBAL_SET) X(MEM_SIZE) X(MEM_GROW) X(MEM_INIT) X(DATA_DROP) X(MEM_COPY)          \
    X(MEM_FILL) X(TABLE_INIT) X(ELEM_DROP) X(TABLE_COPY) X(TABLE_GROW) X(TABLE_SIZE)    \
    X(TABLE_FILL) X(TABLE_GET) X(TABLE_SET) X(REF_IS_NULL) X(REF_FUNC)                \
    X(THROW) X(THROW_REF)

/* Loads d a off; stores a v off. */
#define OPS_MEMORY(X)                                                                   \
    X(I32_LOAD) X(I64_LOAD) X(F32_LOAD) X(F64_LOAD) X(I32_LOAD8_S) X(I32_LOAD8_U)       \
    X(I32_LOAD16_S) X(I32_LOAD16_U) X(I64_LOAD8_S) X(I64_LOAD8_U) X(I64_LOAD16_S)       \
    X(I64_LOAD16_U) X(I64_LOAD32_S) X(I64_LOAD32_U) X(I32_STORE) X(I64_STORE)           \
    X(F32_STORE) X(F64_STORE) X(I32_STORE8) X(I32_STORE16) X(I64_STORE8)                \
    X(I64_STORE16) X(I64_STORE32)

/* Numeric ops d a [b], in Wasm opcode order 0x45..0xC4, then 0xFC 0..7. */
#define OPS_NUMERIC(X)                                                                  \
    X(I32_EQZ) X(I32_EQ) X(I32_NE) X(I32_LT_S) X(I32_LT_U) X(I32_GT_S) X(I32_GT_U)      \
    X(I32_LE_S) X(I32_LE_U) X(I32_GE_S) X(I32_GE_U)                                     \
    X(I64_EQZ) X(I64_EQ) X(I64_NE) X(I64_LT_S) X(I64_LT_U) X(I64_GT_S) X(I64_GT_U)      \
    X(I64_LE_S) X(I64_LE_U) X(I64_GE_S) X(I64_GE_U)                                     \
    X(F32_EQ) X(F32_NE) X(F32_LT) X(F32_GT) X(F32_LE) X(F32_GE)                         \
    X(F64_EQ) X(F64_NE) X(F64_LT) X(F64_GT) X(F64_LE) X(F64_GE)                         \
    X(I32_CLZ) X(I32_CTZ) X(I32_POPCNT) X(I32_ADD) X(I32_SUB) X(I32_MUL) X(I32_DIV_S)   \
    X(I32_DIV_U) X(I32_REM_S) X(I32_REM_U) X(I32_AND) X(I32_OR) X(I32_XOR) X(I32_SHL)   \
    X(I32_SHR_S) X(I32_SHR_U) X(I32_ROTL) X(I32_ROTR)                                   \
    X(I64_CLZ) X(I64_CTZ) X(I64_POPCNT) X(I64_ADD) X(I64_SUB) X(I64_MUL) X(I64_DIV_S)   \
    X(I64_DIV_U) X(I64_REM_S) X(I64_REM_U) X(I64_AND) X(I64_OR) X(I64_XOR) X(I64_SHL)   \
    X(I64_SHR_S) X(I64_SHR_U) X(I64_ROTL) X(I64_ROTR)                                   \
    X(F32_ABS) X(F32_NEG) X(F32_CEIL) X(F32_FLOOR) X(F32_TRUNC) X(F32_NEAREST)          \
    X(F32_SQRT) X(F32_ADD) X(F32_SUB) X(F32_MUL) X(F32_DIV) X(F32_MIN) X(F32_MAX)       \
    X(F32_COPYSIGN)                                                                     \
    X(F64_ABS) X(F64_NEG) X(F64_CEIL) X(F64_FLOOR) X(F64_TRUNC) X(F64_NEAREST)          \
    X(F64_SQRT) X(F64_ADD) X(F64_SUB) X(F64_MUL) X(F64_DIV) X(F64_MIN) X(F64_MAX)       \
    X(F64_COPYSIGN)                                                                     \
    X(I32_WRAP_I64) X(I32_TRUNC_F32_S) X(I32_TRUNC_F32_U) X(I32_TRUNC_F64_S)            \
    X(I32_TRUNC_F64_U) X(I64_EXTEND_I32_S) X(I64_EXTEND_I32_U) X(I64_TRUNC_F32_S)       \
    X(I64_TRUNC_F32_U) X(I64_TRUNC_F64_S) X(I64_TRUNC_F64_U) X(F32_CONVERT_I32_S)       \
    X(F32_CONVERT_I32_U) X(F32_CONVERT_I64_S) X(F32_CONVERT_I64_U) X(F32_DEMOTE_F64)    \
    X(F64_CONVERT_I32_S) X(F64_CONVERT_I32_U) X(F64_CONVERT_I64_S)                      \
    X(F64_CONVERT_I64_U) X(F64_PROMOTE_F32) X(I32_REINTERPRET_F32)                      \
    X(I64_REINTERPRET_F64) X(F32_REINTERPRET_I32) X(F64_REINTERPRET_I64)                \
    X(I32_EXTEND8_S) X(I32_EXTEND16_S) X(I64_EXTEND8_S) X(I64_EXTEND16_S)               \
    X(I64_EXTEND32_S)                                                                   \
    X(I32_TRUNC_SAT_F32_S) X(I32_TRUNC_SAT_F32_U) X(I32_TRUNC_SAT_F64_S)                \
    X(I32_TRUNC_SAT_F64_U) X(I64_TRUNC_SAT_F32_S) X(I64_TRUNC_SAT_F32_U)                \
    X(I64_TRUNC_SAT_F64_S) X(I64_TRUNC_SAT_F64_U)

/* Super-instructions: binary op with an immediate right operand (d a imm), and fused
 * i32 compare + branch (a b off / a imm off). */
#define OPS_IMM(X)                                                                      \
    X(I32_ADD_I) X(I32_SUB_I) X(I32_MUL_I) X(I32_AND_I) X(I32_OR_I) X(I32_XOR_I)        \
    X(I32_SHL_I) X(I32_SHR_S_I) X(I32_SHR_U_I) X(I32_EQ_I) X(I32_NE_I) X(I32_LT_S_I)    \
    X(I32_LT_U_I) X(I32_GT_S_I) X(I32_GT_U_I) X(I32_LE_S_I) X(I32_LE_U_I) X(I32_GE_S_I) \
    X(I32_GE_U_I) X(I64_ADD_I) X(I64_SUB_I) X(I64_AND_I) X(I64_SHL_I) X(I64_SHR_S_I)    \
    X(I64_SHR_U_I) X(I32_ROTL_I) X(I32_ROTR_I) X(I64_ROTL_I) X(I64_ROTR_I) X(I64_MUL_I)     \
    X(I64_OR_I) X(I64_XOR_I)
#define OPS_FUSED(X)                                                                    \
    X(BR_EQ) X(BR_NE) X(BR_LT_S) X(BR_LT_U) X(BR_GT_S) X(BR_GT_U) X(BR_LE_S) X(BR_LE_U) \
    X(BR_GE_S) X(BR_GE_U) X(BR_EQ_I) X(BR_NE_I) X(BR_LT_S_I) X(BR_LT_U_I) X(BR_GT_S_I)  \
    X(BR_GT_U_I) X(BR_LE_S_I) X(BR_LE_U_I) X(BR_GE_S_I) X(BR_GE_U_I) X(BR64_EQ)        \
    X(BR64_NE) X(BR64_LT_S) X(BR64_LT_U) X(BR64_GT_S) X(BR64_GT_U) X(BR64_LE_S)         \
    X(BR64_LE_U) X(BR64_GE_S) X(BR64_GE_U) X(BR_IF64) X(BR_UNLESS64)

/* Stores of an immediate value: a k off (k sign-extended for the 64-bit store). Loads
 * whose address is an i32.add: d a b off (address a + b) and d a k off (a + k). */
#define OPS_MEMFUSED(X)                                                                 \
    X(STORE8_I) X(STORE16_I) X(STORE32_I) X(STORE64_I)                                  \
    X(I32_LOAD_RR) X(I64_LOAD_RR) X(F32_LOAD_RR) X(F64_LOAD_RR) X(I32_LOAD8_S_RR)       \
    X(I32_LOAD8_U_RR) X(I32_LOAD16_S_RR) X(I32_LOAD16_U_RR) X(I64_LOAD8_S_RR)           \
    X(I64_LOAD8_U_RR) X(I64_LOAD16_S_RR) X(I64_LOAD16_U_RR) X(I64_LOAD32_S_RR)          \
    X(I64_LOAD32_U_RR)                                                                  \
    X(I32_LOAD_RI) X(I64_LOAD_RI) X(F32_LOAD_RI) X(F64_LOAD_RI) X(I32_LOAD8_S_RI)       \
    X(I32_LOAD8_U_RI) X(I32_LOAD16_S_RI) X(I32_LOAD16_U_RI) X(I64_LOAD8_S_RI)           \
    X(I64_LOAD8_U_RI) X(I64_LOAD16_S_RI) X(I64_LOAD16_U_RI) X(I64_LOAD32_S_RI)          \
    X(I64_LOAD32_U_RI)

/* Two i32 ops in one: d = a OUTER (x INNER y|k), where the inner op's result was used
 * only by the outer one: d a x y/k. */
#define OPS_BINBIN(X)                                                                   \
    X(F_ADD_ADD) X(F_ADD_SUB) X(F_ADD_XOR) X(F_ADD_AND) X(F_ADD_OR) X(F_ADD_ROTL_I)     \
    X(F_ADD_ROTR_I) X(F_ADD_SHL_I) X(F_ADD_SHR_U_I) X(F_ADD_ADD_I) X(F_ADD_AND_I)       \
    X(F_XOR_ADD) X(F_XOR_SUB) X(F_XOR_XOR) X(F_XOR_AND) X(F_XOR_OR) X(F_XOR_ROTL_I)     \
    X(F_XOR_ROTR_I) X(F_XOR_SHL_I) X(F_XOR_SHR_U_I) X(F_XOR_ADD_I) X(F_XOR_AND_I)       \
    X(F_AND_ADD) X(F_AND_SUB) X(F_AND_XOR) X(F_AND_AND) X(F_AND_OR) X(F_AND_ROTL_I)     \
    X(F_AND_ROTR_I) X(F_AND_SHL_I) X(F_AND_SHR_U_I) X(F_AND_ADD_I) X(F_AND_AND_I)       \
    X(F_OR_ADD) X(F_OR_SUB) X(F_OR_XOR) X(F_OR_AND) X(F_OR_OR) X(F_OR_ROTL_I)           \
    X(F_OR_ROTR_I) X(F_OR_SHL_I) X(F_OR_SHR_U_I) X(F_OR_ADD_I) X(F_OR_AND_I)

/* Float multiply then add (two roundings, as in Wasm): d = a + x * y. */
#define OPS_FMULADD(X) X(F32_ADD_MUL) X(F64_ADD_MUL)

/* Fixed-width SIMD (0xFD prefix): Y(opcode, name, shape, k), in opcode order. Shapes and
 * their fields (k: the lane count, or for memory accesses the log2 of the natural
 * alignment): UN d a; BIN d a b; TERN d a b c; LOAD d a off; STORE a v off;
 * CONST d k0 k1 k2 k3; SHUF d a b m0..m3 n0..n3 (lane bytes: m picks from a, n from b,
 * 0x80 where the other does); EXTRACT d a lane;
 * REPLACE d a x lane; LOADLANE d a v off lane; STORELANE a v off lane. */
#define SIMD_LIST(Y) \
    Y(0x00, V128_LOAD, LOAD, 4) \
    Y(0x01, V128_LOAD8X8_S, LOAD, 3) \
    Y(0x02, V128_LOAD8X8_U, LOAD, 3) \
    Y(0x03, V128_LOAD16X4_S, LOAD, 3) \
    Y(0x04, V128_LOAD16X4_U, LOAD, 3) \
    Y(0x05, V128_LOAD32X2_S, LOAD, 3) \
    Y(0x06, V128_LOAD32X2_U, LOAD, 3) \
    Y(0x07, V128_LOAD8_SPLAT, LOAD, 0) \
    Y(0x08, V128_LOAD16_SPLAT, LOAD, 1) \
    Y(0x09, V128_LOAD32_SPLAT, LOAD, 2) \
    Y(0x0a, V128_LOAD64_SPLAT, LOAD, 3) \
    Y(0x0b, V128_STORE, STORE, 4) \
    Y(0x0c, V128_CONST, CONST, 0) \
    Y(0x0d, I8X16_SHUFFLE, SHUF, 0) \
    Y(0x0e, I8X16_SWIZZLE, BIN, 0) \
    Y(0x0f, I8X16_SPLAT, UN, 0) \
    Y(0x10, I16X8_SPLAT, UN, 0) \
    Y(0x11, I32X4_SPLAT, UN, 0) \
    Y(0x12, I64X2_SPLAT, UN, 0) \
    Y(0x13, F32X4_SPLAT, UN, 0) \
    Y(0x14, F64X2_SPLAT, UN, 0) \
    Y(0x15, I8X16_EXTRACT_LANE_S, EXTRACT, 16) \
    Y(0x16, I8X16_EXTRACT_LANE_U, EXTRACT, 16) \
    Y(0x17, I8X16_REPLACE_LANE, REPLACE, 16) \
    Y(0x18, I16X8_EXTRACT_LANE_S, EXTRACT, 8) \
    Y(0x19, I16X8_EXTRACT_LANE_U, EXTRACT, 8) \
    Y(0x1a, I16X8_REPLACE_LANE, REPLACE, 8) \
    Y(0x1b, I32X4_EXTRACT_LANE, EXTRACT, 4) \
    Y(0x1c, I32X4_REPLACE_LANE, REPLACE, 4) \
    Y(0x1d, I64X2_EXTRACT_LANE, EXTRACT, 2) \
    Y(0x1e, I64X2_REPLACE_LANE, REPLACE, 2) \
    Y(0x1f, F32X4_EXTRACT_LANE, EXTRACT, 4) \
    Y(0x20, F32X4_REPLACE_LANE, REPLACE, 4) \
    Y(0x21, F64X2_EXTRACT_LANE, EXTRACT, 2) \
    Y(0x22, F64X2_REPLACE_LANE, REPLACE, 2) \
    Y(0x23, I8X16_EQ, BIN, 0) \
    Y(0x24, I8X16_NE, BIN, 0) \
    Y(0x25, I8X16_LT_S, BIN, 0) \
    Y(0x26, I8X16_LT_U, BIN, 0) \
    Y(0x27, I8X16_GT_S, BIN, 0) \
    Y(0x28, I8X16_GT_U, BIN, 0) \
    Y(0x29, I8X16_LE_S, BIN, 0) \
    Y(0x2a, I8X16_LE_U, BIN, 0) \
    Y(0x2b, I8X16_GE_S, BIN, 0) \
    Y(0x2c, I8X16_GE_U, BIN, 0) \
    Y(0x2d, I16X8_EQ, BIN, 0) \
    Y(0x2e, I16X8_NE, BIN, 0) \
    Y(0x2f, I16X8_LT_S, BIN, 0) \
    Y(0x30, I16X8_LT_U, BIN, 0) \
    Y(0x31, I16X8_GT_S, BIN, 0) \
    Y(0x32, I16X8_GT_U, BIN, 0) \
    Y(0x33, I16X8_LE_S, BIN, 0) \
    Y(0x34, I16X8_LE_U, BIN, 0) \
    Y(0x35, I16X8_GE_S, BIN, 0) \
    Y(0x36, I16X8_GE_U, BIN, 0) \
    Y(0x37, I32X4_EQ, BIN, 0) \
    Y(0x38, I32X4_NE, BIN, 0) \
    Y(0x39, I32X4_LT_S, BIN, 0) \
    Y(0x3a, I32X4_LT_U, BIN, 0) \
    Y(0x3b, I32X4_GT_S, BIN, 0) \
    Y(0x3c, I32X4_GT_U, BIN, 0) \
    Y(0x3d, I32X4_LE_S, BIN, 0) \
    Y(0x3e, I32X4_LE_U, BIN, 0) \
    Y(0x3f, I32X4_GE_S, BIN, 0) \
    Y(0x40, I32X4_GE_U, BIN, 0) \
    Y(0x41, F32X4_EQ, BIN, 0) \
    Y(0x42, F32X4_NE, BIN, 0) \
    Y(0x43, F32X4_LT, BIN, 0) \
    Y(0x44, F32X4_GT, BIN, 0) \
    Y(0x45, F32X4_LE, BIN, 0) \
    Y(0x46, F32X4_GE, BIN, 0) \
    Y(0x47, F64X2_EQ, BIN, 0) \
    Y(0x48, F64X2_NE, BIN, 0) \
    Y(0x49, F64X2_LT, BIN, 0) \
    Y(0x4a, F64X2_GT, BIN, 0) \
    Y(0x4b, F64X2_LE, BIN, 0) \
    Y(0x4c, F64X2_GE, BIN, 0) \
    Y(0x4d, V128_NOT, UN, 0) \
    Y(0x4e, V128_AND, BIN, 0) \
    Y(0x4f, V128_ANDNOT, BIN, 0) \
    Y(0x50, V128_OR, BIN, 0) \
    Y(0x51, V128_XOR, BIN, 0) \
    Y(0x52, V128_BITSELECT, TERN, 0) \
    Y(0x53, V128_ANY_TRUE, UN, 0) \
    Y(0x54, V128_LOAD8_LANE, LOADLANE, 16) \
    Y(0x55, V128_LOAD16_LANE, LOADLANE, 8) \
    Y(0x56, V128_LOAD32_LANE, LOADLANE, 4) \
    Y(0x57, V128_LOAD64_LANE, LOADLANE, 2) \
    Y(0x58, V128_STORE8_LANE, STORELANE, 16) \
    Y(0x59, V128_STORE16_LANE, STORELANE, 8) \
    Y(0x5a, V128_STORE32_LANE, STORELANE, 4) \
    Y(0x5b, V128_STORE64_LANE, STORELANE, 2) \
    Y(0x5c, V128_LOAD32_ZERO, LOAD, 2) \
    Y(0x5d, V128_LOAD64_ZERO, LOAD, 3) \
    Y(0x5e, F32X4_DEMOTE_F64X2_ZERO, UN, 0) \
    Y(0x5f, F64X2_PROMOTE_LOW_F32X4, UN, 0) \
    Y(0x60, I8X16_ABS, UN, 0) \
    Y(0x61, I8X16_NEG, UN, 0) \
    Y(0x62, I8X16_POPCNT, UN, 0) \
    Y(0x63, I8X16_ALL_TRUE, UN, 0) \
    Y(0x64, I8X16_BITMASK, UN, 0) \
    Y(0x65, I8X16_NARROW_I16X8_S, BIN, 0) \
    Y(0x66, I8X16_NARROW_I16X8_U, BIN, 0) \
    Y(0x67, F32X4_CEIL, UN, 0) \
    Y(0x68, F32X4_FLOOR, UN, 0) \
    Y(0x69, F32X4_TRUNC, UN, 0) \
    Y(0x6a, F32X4_NEAREST, UN, 0) \
    Y(0x6b, I8X16_SHL, BIN, 0) \
    Y(0x6c, I8X16_SHR_S, BIN, 0) \
    Y(0x6d, I8X16_SHR_U, BIN, 0) \
    Y(0x6e, I8X16_ADD, BIN, 0) \
    Y(0x6f, I8X16_ADD_SAT_S, BIN, 0) \
    Y(0x70, I8X16_ADD_SAT_U, BIN, 0) \
    Y(0x71, I8X16_SUB, BIN, 0) \
    Y(0x72, I8X16_SUB_SAT_S, BIN, 0) \
    Y(0x73, I8X16_SUB_SAT_U, BIN, 0) \
    Y(0x74, F64X2_CEIL, UN, 0) \
    Y(0x75, F64X2_FLOOR, UN, 0) \
    Y(0x76, I8X16_MIN_S, BIN, 0) \
    Y(0x77, I8X16_MIN_U, BIN, 0) \
    Y(0x78, I8X16_MAX_S, BIN, 0) \
    Y(0x79, I8X16_MAX_U, BIN, 0) \
    Y(0x7a, F64X2_TRUNC, UN, 0) \
    Y(0x7b, I8X16_AVGR_U, BIN, 0) \
    Y(0x7c, I16X8_EXTADD_PAIRWISE_I8X16_S, UN, 0) \
    Y(0x7d, I16X8_EXTADD_PAIRWISE_I8X16_U, UN, 0) \
    Y(0x7e, I32X4_EXTADD_PAIRWISE_I16X8_S, UN, 0) \
    Y(0x7f, I32X4_EXTADD_PAIRWISE_I16X8_U, UN, 0) \
    Y(0x80, I16X8_ABS, UN, 0) \
    Y(0x81, I16X8_NEG, UN, 0) \
    Y(0x82, I16X8_Q15MULR_SAT_S, BIN, 0) \
    Y(0x83, I16X8_ALL_TRUE, UN, 0) \
    Y(0x84, I16X8_BITMASK, UN, 0) \
    Y(0x85, I16X8_NARROW_I32X4_S, BIN, 0) \
    Y(0x86, I16X8_NARROW_I32X4_U, BIN, 0) \
    Y(0x87, I16X8_EXTEND_LOW_I8X16_S, UN, 0) \
    Y(0x88, I16X8_EXTEND_HIGH_I8X16_S, UN, 0) \
    Y(0x89, I16X8_EXTEND_LOW_I8X16_U, UN, 0) \
    Y(0x8a, I16X8_EXTEND_HIGH_I8X16_U, UN, 0) \
    Y(0x8b, I16X8_SHL, BIN, 0) \
    Y(0x8c, I16X8_SHR_S, BIN, 0) \
    Y(0x8d, I16X8_SHR_U, BIN, 0) \
    Y(0x8e, I16X8_ADD, BIN, 0) \
    Y(0x8f, I16X8_ADD_SAT_S, BIN, 0) \
    Y(0x90, I16X8_ADD_SAT_U, BIN, 0) \
    Y(0x91, I16X8_SUB, BIN, 0) \
    Y(0x92, I16X8_SUB_SAT_S, BIN, 0) \
    Y(0x93, I16X8_SUB_SAT_U, BIN, 0) \
    Y(0x94, F64X2_NEAREST, UN, 0) \
    Y(0x95, I16X8_MUL, BIN, 0) \
    Y(0x96, I16X8_MIN_S, BIN, 0) \
    Y(0x97, I16X8_MIN_U, BIN, 0) \
    Y(0x98, I16X8_MAX_S, BIN, 0) \
    Y(0x99, I16X8_MAX_U, BIN, 0) \
    Y(0x9b, I16X8_AVGR_U, BIN, 0) \
    Y(0x9c, I16X8_EXTMUL_LOW_I8X16_S, BIN, 0) \
    Y(0x9d, I16X8_EXTMUL_HIGH_I8X16_S, BIN, 0) \
    Y(0x9e, I16X8_EXTMUL_LOW_I8X16_U, BIN, 0) \
    Y(0x9f, I16X8_EXTMUL_HIGH_I8X16_U, BIN, 0) \
    Y(0xa0, I32X4_ABS, UN, 0) \
    Y(0xa1, I32X4_NEG, UN, 0) \
    Y(0xa3, I32X4_ALL_TRUE, UN, 0) \
    Y(0xa4, I32X4_BITMASK, UN, 0) \
    Y(0xa7, I32X4_EXTEND_LOW_I16X8_S, UN, 0) \
    Y(0xa8, I32X4_EXTEND_HIGH_I16X8_S, UN, 0) \
    Y(0xa9, I32X4_EXTEND_LOW_I16X8_U, UN, 0) \
    Y(0xaa, I32X4_EXTEND_HIGH_I16X8_U, UN, 0) \
    Y(0xab, I32X4_SHL, BIN, 0) \
    Y(0xac, I32X4_SHR_S, BIN, 0) \
    Y(0xad, I32X4_SHR_U, BIN, 0) \
    Y(0xae, I32X4_ADD, BIN, 0) \
    Y(0xb1, I32X4_SUB, BIN, 0) \
    Y(0xb5, I32X4_MUL, BIN, 0) \
    Y(0xb6, I32X4_MIN_S, BIN, 0) \
    Y(0xb7, I32X4_MIN_U, BIN, 0) \
    Y(0xb8, I32X4_MAX_S, BIN, 0) \
    Y(0xb9, I32X4_MAX_U, BIN, 0) \
    Y(0xba, I32X4_DOT_I16X8_S, BIN, 0) \
    Y(0xbc, I32X4_EXTMUL_LOW_I16X8_S, BIN, 0) \
    Y(0xbd, I32X4_EXTMUL_HIGH_I16X8_S, BIN, 0) \
    Y(0xbe, I32X4_EXTMUL_LOW_I16X8_U, BIN, 0) \
    Y(0xbf, I32X4_EXTMUL_HIGH_I16X8_U, BIN, 0) \
    Y(0xc0, I64X2_ABS, UN, 0) \
    Y(0xc1, I64X2_NEG, UN, 0) \
    Y(0xc3, I64X2_ALL_TRUE, UN, 0) \
    Y(0xc4, I64X2_BITMASK, UN, 0) \
    Y(0xc7, I64X2_EXTEND_LOW_I32X4_S, UN, 0) \
    Y(0xc8, I64X2_EXTEND_HIGH_I32X4_S, UN, 0) \
    Y(0xc9, I64X2_EXTEND_LOW_I32X4_U, UN, 0) \
    Y(0xca, I64X2_EXTEND_HIGH_I32X4_U, UN, 0) \
    Y(0xcb, I64X2_SHL, BIN, 0) \
    Y(0xcc, I64X2_SHR_S, BIN, 0) \
    Y(0xcd, I64X2_SHR_U, BIN, 0) \
    Y(0xce, I64X2_ADD, BIN, 0) \
    Y(0xd1, I64X2_SUB, BIN, 0) \
    Y(0xd5, I64X2_MUL, BIN, 0) \
    Y(0xd6, I64X2_EQ, BIN, 0) \
    Y(0xd7, I64X2_NE, BIN, 0) \
    Y(0xd8, I64X2_LT_S, BIN, 0) \
    Y(0xd9, I64X2_GT_S, BIN, 0) \
    Y(0xda, I64X2_LE_S, BIN, 0) \
    Y(0xdb, I64X2_GE_S, BIN, 0) \
    Y(0xdc, I64X2_EXTMUL_LOW_I32X4_S, BIN, 0) \
    Y(0xdd, I64X2_EXTMUL_HIGH_I32X4_S, BIN, 0) \
    Y(0xde, I64X2_EXTMUL_LOW_I32X4_U, BIN, 0) \
    Y(0xdf, I64X2_EXTMUL_HIGH_I32X4_U, BIN, 0) \
    Y(0xe0, F32X4_ABS, UN, 0) \
    Y(0xe1, F32X4_NEG, UN, 0) \
    Y(0xe3, F32X4_SQRT, UN, 0) \
    Y(0xe4, F32X4_ADD, BIN, 0) \
    Y(0xe5, F32X4_SUB, BIN, 0) \
    Y(0xe6, F32X4_MUL, BIN, 0) \
    Y(0xe7, F32X4_DIV, BIN, 0) \
    Y(0xe8, F32X4_MIN, BIN, 0) \
    Y(0xe9, F32X4_MAX, BIN, 0) \
    Y(0xea, F32X4_PMIN, BIN, 0) \
    Y(0xeb, F32X4_PMAX, BIN, 0) \
    Y(0xec, F64X2_ABS, UN, 0) \
    Y(0xed, F64X2_NEG, UN, 0) \
    Y(0xef, F64X2_SQRT, UN, 0) \
    Y(0xf0, F64X2_ADD, BIN, 0) \
    Y(0xf1, F64X2_SUB, BIN, 0) \
    Y(0xf2, F64X2_MUL, BIN, 0) \
    Y(0xf3, F64X2_DIV, BIN, 0) \
    Y(0xf4, F64X2_MIN, BIN, 0) \
    Y(0xf5, F64X2_MAX, BIN, 0) \
    Y(0xf6, F64X2_PMIN, BIN, 0) \
    Y(0xf7, F64X2_PMAX, BIN, 0) \
    Y(0xf8, I32X4_TRUNC_SAT_F32X4_S, UN, 0) \
    Y(0xf9, I32X4_TRUNC_SAT_F32X4_U, UN, 0) \
    Y(0xfa, F32X4_CONVERT_I32X4_S, UN, 0) \
    Y(0xfb, F32X4_CONVERT_I32X4_U, UN, 0) \
    Y(0xfc, I32X4_TRUNC_SAT_F64X2_S_ZERO, UN, 0) \
    Y(0xfd, I32X4_TRUNC_SAT_F64X2_U_ZERO, UN, 0) \
    Y(0xfe, F64X2_CONVERT_LOW_I32X4_S, UN, 0) \
    Y(0xff, F64X2_CONVERT_LOW_I32X4_U, UN, 0)

/* SIMD super-instructions: v128.load addressed by an i32.add (d x y off / d x k off),
 * float lanes multiply then add (two roundings): d = a + x * y, and shifts by a constant
 * count (d a k). Two v128.loads in a row (d1 x1 k1 off1 d2 x2 k2 off2: address x + k +
 * off, k = 0 for a plain load), the product of two such loads (d x1 k1 off1 x2 k2 off2)
 * and a value plus that product (d a x1 k1 off1 x2 k2 off2). The shifts by a constant
 * also have a variant reading a from acc (_I_A, see the SIMD_LIST variants below). */
#define OPS_SIMDFUSED(X)                                                                \
    X(V128_LOAD_RR) X(V128_LOAD_RI) X(F32X4_ADD_MUL) X(F64X2_ADD_MUL) X(I8X16_SHL_I)   \
    X(I8X16_SHR_S_I) X(I8X16_SHR_U_I) X(I16X8_SHL_I) X(I16X8_SHR_S_I) X(I16X8_SHR_U_I) \
    X(I32X4_SHL_I) X(I32X4_SHR_S_I) X(I32X4_SHR_U_I) X(I64X2_SHL_I) X(I64X2_SHR_S_I)    \
    X(I64X2_SHR_U_I) X(V128_LOAD2) X(F32X4_MUL_LL) X(F64X2_MUL_LL) X(F32X4_ADD_MUL_LL)  \
    X(F64X2_ADD_MUL_LL) X(I8X16_SHL_I_A) X(I8X16_SHR_S_I_A) X(I8X16_SHR_U_I_A) X(I16X8_SHL_I_A) \
    X(I16X8_SHR_S_I_A) X(I16X8_SHR_U_I_A) X(I32X4_SHL_I_A) X(I32X4_SHR_S_I_A) X(I32X4_SHR_U_I_A) \
    X(I64X2_SHL_I_A) X(I64X2_SHR_S_I_A) X(I64X2_SHR_U_I_A) SIMD_PAIRS(OP_PAIR_NAME, X)     \
    SIMD_PAIRS(OP_PAIR_NAME_P, X) SIMD_PAIRS(OP_PAIR_NAME_X, X)

/* SIMD pairs: an instruction and the next one, which uses its result, in one dispatch
 * (both results written, in order, as the two would; the second reads the first's from
 * a register): P(X, first, second, fused, mode). mode: A, the first's result is the
 * second's (only or left) operand; B, its right operand; AB, either (commutative: the
 * other operand is read as is). Fields: the first's (V128_CONST: d k0..k3; binary: d a
 * b; unary: d a), then the second's d and its other operand (a shift: its count).
 * P(X, ...): X is passed through for OPS_SIMDFUSED's list. Each pair has variants that
 * read from acc (the previous instruction's v128 result, simd.h) the first's operand a
 * (_P) or the second's other operand (_X). */
#define SIMD_PAIRS(P, X)                                                                \
    P(X, V128_CONST, I8X16_ADD, K_I8X16_ADD, AB)                                        \
    P(X, V128_CONST, I16X8_ADD, K_I16X8_ADD, AB)                                        \
    P(X, V128_CONST, I32X4_ADD, K_I32X4_ADD, AB)                                        \
    P(X, V128_CONST, I16X8_MUL, K_I16X8_MUL, AB)                                        \
    P(X, V128_CONST, I32X4_MUL, K_I32X4_MUL, AB)                                        \
    P(X, V128_CONST, V128_AND, K_V128_AND, AB)                                          \
    P(X, V128_CONST, V128_OR, K_V128_OR, AB)                                            \
    P(X, V128_CONST, V128_XOR, K_V128_XOR, AB)                                          \
    P(X, V128_CONST, I8X16_SUB, K_I8X16_SUB, B)                                         \
    P(X, V128_CONST, I16X8_SUB, K_I16X8_SUB, B)                                         \
    P(X, V128_CONST, I32X4_SUB, K_I32X4_SUB, B)                                         \
    P(X, V128_CONST, V128_ANDNOT, K_V128_ANDNOT, B)                                     \
    P(X, I16X8_ADD, I16X8_SHR_U_I, I16X8_ADD_SHR_U, A)                                  \
    P(X, I16X8_ADD, I16X8_SHR_S_I, I16X8_ADD_SHR_S, A)                                  \
    P(X, I16X8_SUB, I16X8_SHR_U_I, I16X8_SUB_SHR_U, A)                                  \
    P(X, I16X8_SUB, I16X8_SHR_S_I, I16X8_SUB_SHR_S, A)                                  \
    P(X, I16X8_MUL, I16X8_SHR_U_I, I16X8_MUL_SHR_U, A)                                  \
    P(X, I16X8_MUL, I16X8_SHR_S_I, I16X8_MUL_SHR_S, A)                                  \
    P(X, I32X4_ADD, I32X4_SHR_U_I, I32X4_ADD_SHR_U, A)                                  \
    P(X, I32X4_ADD, I32X4_SHR_S_I, I32X4_ADD_SHR_S, A)                                  \
    P(X, I32X4_SUB, I32X4_SHR_U_I, I32X4_SUB_SHR_U, A)                                  \
    P(X, I32X4_SUB, I32X4_SHR_S_I, I32X4_SUB_SHR_S, A)                                  \
    P(X, I32X4_MUL, I32X4_SHR_U_I, I32X4_MUL_SHR_U, A)                                  \
    P(X, I32X4_MUL, I32X4_SHR_S_I, I32X4_MUL_SHR_S, A)                                  \
    P(X, I16X8_EXTMUL_LOW_I8X16_S, I16X8_ADD, ADD_I16X8_EXTMUL_LOW_S, AB)               \
    P(X, I16X8_EXTMUL_HIGH_I8X16_S, I16X8_ADD, ADD_I16X8_EXTMUL_HIGH_S, AB)             \
    P(X, I16X8_EXTMUL_LOW_I8X16_U, I16X8_ADD, ADD_I16X8_EXTMUL_LOW_U, AB)               \
    P(X, I16X8_EXTMUL_HIGH_I8X16_U, I16X8_ADD, ADD_I16X8_EXTMUL_HIGH_U, AB)             \
    P(X, I32X4_EXTMUL_LOW_I16X8_S, I32X4_ADD, ADD_I32X4_EXTMUL_LOW_S, AB)               \
    P(X, I32X4_EXTMUL_HIGH_I16X8_S, I32X4_ADD, ADD_I32X4_EXTMUL_HIGH_S, AB)             \
    P(X, I32X4_EXTMUL_LOW_I16X8_U, I32X4_ADD, ADD_I32X4_EXTMUL_LOW_U, AB)               \
    P(X, I32X4_EXTMUL_HIGH_I16X8_U, I32X4_ADD, ADD_I32X4_EXTMUL_HIGH_U, AB)             \
    P(X, I16X8_EXTEND_LOW_I8X16_S, I16X8_MUL, MUL_I16X8_EXTEND_LOW_S, AB)               \
    P(X, I16X8_EXTEND_HIGH_I8X16_S, I16X8_MUL, MUL_I16X8_EXTEND_HIGH_S, AB)             \
    P(X, I16X8_EXTEND_LOW_I8X16_U, I16X8_MUL, MUL_I16X8_EXTEND_LOW_U, AB)               \
    P(X, I16X8_EXTEND_HIGH_I8X16_U, I16X8_MUL, MUL_I16X8_EXTEND_HIGH_U, AB)             \
    P(X, I16X8_EXTEND_LOW_I8X16_S, I16X8_ADD, ADD_I16X8_EXTEND_LOW_S, AB)               \
    P(X, I16X8_EXTEND_HIGH_I8X16_S, I16X8_ADD, ADD_I16X8_EXTEND_HIGH_S, AB)             \
    P(X, I16X8_EXTEND_LOW_I8X16_U, I16X8_ADD, ADD_I16X8_EXTEND_LOW_U, AB)               \
    P(X, I16X8_EXTEND_HIGH_I8X16_U, I16X8_ADD, ADD_I16X8_EXTEND_HIGH_U, AB)             \
    P(X, I32X4_EXTEND_LOW_I16X8_S, I32X4_MUL, MUL_I32X4_EXTEND_LOW_S, AB)               \
    P(X, I32X4_EXTEND_HIGH_I16X8_S, I32X4_MUL, MUL_I32X4_EXTEND_HIGH_S, AB)             \
    P(X, I32X4_EXTEND_LOW_I16X8_U, I32X4_MUL, MUL_I32X4_EXTEND_LOW_U, AB)               \
    P(X, I32X4_EXTEND_HIGH_I16X8_U, I32X4_MUL, MUL_I32X4_EXTEND_HIGH_U, AB)             \
    P(X, I32X4_EXTEND_LOW_I16X8_S, I32X4_ADD, ADD_I32X4_EXTEND_LOW_S, AB)               \
    P(X, I32X4_EXTEND_HIGH_I16X8_S, I32X4_ADD, ADD_I32X4_EXTEND_HIGH_S, AB)             \
    P(X, I32X4_EXTEND_LOW_I16X8_U, I32X4_ADD, ADD_I32X4_EXTEND_LOW_U, AB)               \
    P(X, I32X4_EXTEND_HIGH_I16X8_U, I32X4_ADD, ADD_I32X4_EXTEND_HIGH_U, AB)
#define OP_PAIR_NAME(X, first, second, fused, mode) X(fused)
#define OP_PAIR_NAME_P(X, first, second, fused, mode) X(fused##_P)
#define OP_PAIR_NAME_X(X, first, second, fused, mode) X(fused##_X)

#define OPS_ALL(X) OPS_CONTROL(X) OPS_MEMORY(X) OPS_NUMERIC(X) OPS_IMM(X) OPS_FUSED(X) OPS_MEMFUSED(X) \
    OPS_BINBIN(X) OPS_FMULADD(X) OPS_SIMDFUSED(X)

enum {
#define OP_ENUM(n) OP_##n,
    OPS_ALL(OP_ENUM)
#undef OP_ENUM
#define OP_ENUM_SIMD(code, n, shape, k) OP_##n,
    SIMD_LIST(OP_ENUM_SIMD)
#undef OP_ENUM_SIMD
/* Each SIMD instruction's variants reading operand a (_A) or b (_B) from the register
 * holding the previous instruction's v128 result (simd.h: acc). */
#define OP_ENUM_SIMD(code, n, shape, k) OP_##n##_A,
    SIMD_LIST(OP_ENUM_SIMD)
#undef OP_ENUM_SIMD
#define OP_ENUM_SIMD(code, n, shape, k) OP_##n##_B,
    SIMD_LIST(OP_ENUM_SIMD)
#undef OP_ENUM_SIMD
    OP_COUNT
};

#endif /* WASM_OPS_H */
