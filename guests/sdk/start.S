/* start.S: guest entry point. The host enters here in ring 3 with RSP = stack top
 * (16-byte aligned) and RDI = the boot-info address; nothing else is set up. */
    .section .text.hot.sbx_start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    xor %ebp, %ebp
    call sbx_start          /* never returns */
    ud2
    .size _start, . - _start

/* sbx_restart_loop(stack_top): abandon the current call's stack and continue in
 * sbx_loop() with a fresh stack. Used to unwind after sbx_abort or a host error. */
    .globl sbx_restart_loop
    .type sbx_restart_loop, @function
sbx_restart_loop:
    mov %rdi, %rsp
    xor %ebp, %ebp
    call sbx_loop           /* never returns */
    ud2
    .size sbx_restart_loop, . - sbx_restart_loop

    .section .note.GNU-stack, "", @progbits
