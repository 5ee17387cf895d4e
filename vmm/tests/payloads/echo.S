# Freestanding guest payload: prints "ready", waits for one byte on COM1's receive buffer
# (line status bit 0), prints "got <byte>", then resets through the i8042.
        .intel_syntax noprefix
        .code64
        .globl _start
_start:
        lea rsi, [rip + ready]
        call puts
        mov dx, 0x3fd
1:      in al, dx
        test al, 1
        jz 1b
        mov dx, 0x3f8
        in al, dx
        mov bl, al
        lea rsi, [rip + got]
        call puts
        mov al, bl
        out dx, al
        mov al, 10
        out dx, al
        mov al, 0xfe
        out 0x64, al
2:      hlt
        jmp 2b

puts:   mov dx, 0x3f8
1:      mov al, byte ptr [rsi]
        test al, al
        jz 2f
        out dx, al
        inc rsi
        jmp 1b
2:      ret

        .section .rodata
ready:  .asciz "ready\n"
got:    .asciz "got "
