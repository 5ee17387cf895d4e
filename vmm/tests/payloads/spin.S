# Freestanding guest payload for control-socket tests: prints "ready", then halts with
# interrupts off forever. Only the VMM (a Stop request) ends it.
        .intel_syntax noprefix
        .include "lib/entry.S"
        .code64
        payload_entry
        say ready
1:      hlt
        jmp 1b

        .include "lib/serial.S"

        .section .rodata
ready:  .asciz "ready\n"
