# Freestanding guest payload: prints a line, then executes an undefined instruction. With the
# boot IDT empty, #UD escalates to a triple fault, which the VMM must report as a fatal error.
        .intel_syntax noprefix
        .include "lib/entry.S"
        .code64
        .section .text
        .globl _start
_start:
        say msg
        ud2

        .include "lib/serial.S"

        .section .rodata
msg:    .asciz "payload: about to fault\n"
