# Freestanding guest payload for benchmarks: prints "ready", then stays alive for a while by
# reading the UART's line status register (each read is a VM exit, so the time it takes
# scales with exit cost, not guest instruction speed), prints "done" and resets through the
# i8042. The benchmark samples the VMM's memory while the guest is in the loop.
        .intel_syntax noprefix
        .include "lib/entry.S"
        .code64
        payload_entry
        say ready
        mov ecx, 20000
1:      mov dx, 0x3fd
        in al, dx
        dec ecx
        jnz 1b
        say done
        jmp i8042_reset

        .include "lib/serial.S"
        .include "lib/power.S"

        .section .rodata
ready:  .asciz "ready\n"
done:   .asciz "done\n"
