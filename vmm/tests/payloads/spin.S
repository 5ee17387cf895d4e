# Freestanding guest payload for control-socket tests: prints "ready", then halts with
# interrupts off forever. Only the VMM (a Stop request) ends it.
        .intel_syntax noprefix
        .code64
        .globl _start
_start:
        cli
        lea rsi, [rip + ready]
        mov dx, 0x3f8
1:      mov al, byte ptr [rsi]
        test al, al
        jz 2f
        out dx, al
        inc rsi
        jmp 1b
2:      hlt
        jmp 2b

        .section .rodata
ready:  .asciz "ready\n"
