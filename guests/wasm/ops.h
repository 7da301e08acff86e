/* ops.h: the engine's internal instruction set (X-macro list). The compiler emits
 * interp_handlers[OP_x]; the interpreter defines one label per entry. Operand fields are
 * u32 units after the 2-unit handler address; d/a/b/c are frame slot indices. */
#ifndef WASM_OPS_H
#define WASM_OPS_H

/* Control and data movement. */
#define OPS_CONTROL(X)                                                                  \
    X(HALT) X(UNREACHABLE) X(BR) X(BR_IF) X(BR_UNLESS) X(BR_TABLE) X(RETURN) X(RET1) X(RET_ADD) X(RET_ADD_I)    \
    X(CALL) X(CALL_INDIRECT) X(MOV) X(MOV2) X(CONST32) X(CONST64) X(SELECT) X(GLOBAL_GET)       \
    X(GLOBAL_SET) X(MEM_SIZE) X(MEM_GROW) X(MEM_INIT) X(DATA_DROP) X(MEM_COPY)          \
    X(MEM_FILL) X(TABLE_INIT) X(ELEM_DROP) X(TABLE_COPY) X(TABLE_GROW) X(TABLE_SIZE)    \
    X(TABLE_FILL) X(TABLE_GET) X(TABLE_SET) X(REF_IS_NULL) X(REF_FUNC)

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

#define OPS_ALL(X) OPS_CONTROL(X) OPS_MEMORY(X) OPS_NUMERIC(X) OPS_IMM(X) OPS_FUSED(X) OPS_MEMFUSED(X) \
    OPS_BINBIN(X) OPS_FMULADD(X)

enum {
#define OP_ENUM(n) OP_##n,
    OPS_ALL(OP_ENUM)
#undef OP_ENUM
    OP_COUNT
};

#endif /* WASM_OPS_H */
