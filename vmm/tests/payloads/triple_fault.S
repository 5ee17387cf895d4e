# Freestanding guest payload: prints a line, then executes an undefined instruction. With the
# boot IDT empty, #UD escalates to a triple fault, which the VMM must report as a fatal error.
        .intel_syntax noprefix
        .code64
        .section .text
        .globl _start
_start:
        lea rsi, [rip + msg]
1:      mov al, byte ptr [rsi]
        test al, al
        jz 2f
        mov dx, 0x3f8
        out dx, al
        inc rsi
        jmp 1b
2:      ud2

        .section .rodata
msg:    .asciz "payload: about to fault\n"
