# Freestanding guest payload: prints "ready", waits for one byte on COM1's receive buffer
# (line status bit 0), prints "got <byte>", then resets through the i8042.
        .intel_syntax noprefix
        .include "lib/entry.S"
        .code64
        payload_entry
        say ready
        mov dx, 0x3fd                           # COM1 line status
1:      in al, dx
        test al, 1                              # data ready
        jz 1b
        mov dx, 0x3f8
        in al, dx                               # the byte received
        say got
        call putc
        call put_newline
        jmp i8042_reset

        .include "lib/serial.S"
        .include "lib/power.S"

        .section .rodata
ready:  .asciz "ready\n"
got:    .asciz "got "
