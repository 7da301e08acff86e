/* jmp.S: aot_setjmp/aot_longjmp, the AOT runtime's trap unwinding (a Wasm trap abandons
 * the C frames of the compiled code back to the export adapter that started the call).
 * Saves the System V callee-saved registers, RSP and the return address; no signal mask,
 * no shadow stack (the guest has neither). */
    .text
    .globl aot_setjmp
    .type aot_setjmp, @function
aot_setjmp:
    mov %rbx, 0(%rdi)
    mov %rbp, 8(%rdi)
    mov %r12, 16(%rdi)
    mov %r13, 24(%rdi)
    mov %r14, 32(%rdi)
    mov %r15, 40(%rdi)
    lea 8(%rsp), %rdx       /* RSP after this call returns */
    mov %rdx, 48(%rdi)
    mov (%rsp), %rdx        /* the return address */
    mov %rdx, 56(%rdi)
    xor %eax, %eax
    ret
    .size aot_setjmp, . - aot_setjmp

    .globl aot_longjmp
    .type aot_longjmp, @function
aot_longjmp:                /* (buf, value != 0) */
    mov %esi, %eax
    mov 0(%rdi), %rbx
    mov 8(%rdi), %rbp
    mov 16(%rdi), %r12
    mov 24(%rdi), %r13
    mov 32(%rdi), %r14
    mov 40(%rdi), %r15
    mov 48(%rdi), %rsp
    jmp *56(%rdi)
    .size aot_longjmp, . - aot_longjmp

    .section .note.GNU-stack, "", @progbits
