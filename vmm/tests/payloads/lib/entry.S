# The macros every payload uses, `.include "lib/entry.S"` near the top (it emits nothing
# itself): `say` and `say_hex` for its serial lines and, for a payload that runs on a stack
# of its own rather than the loader's boot stack, `payload_entry` where `_start` belongs,
# before any other code, so that `_start` stays the first byte of .text (the bzImage test
# enters the flat binary there).
#
# say LABEL: prints the string at LABEL (puts, lib/serial.S).
# say_hex LABEL: prints the string at LABEL, then edi in hex and a newline (put_labelled_hex).
#
# payload_entry: defines `_start`: interrupts off, string operations forward, rsp at the top
# of a 4 KiB stack in .bss. Leaves every other register as the loader set it (rsi: the zero
# page).

        .set PAYLOAD_STACK_SIZE, 4096

        .macro say label
        lea rsi, [rip + \label]
        call puts
        .endm

        .macro say_hex label
        lea rsi, [rip + \label]
        call put_labelled_hex
        .endm

        .macro payload_entry
        .section .bss
        .balign 16
payload_stack:
        .skip PAYLOAD_STACK_SIZE
payload_stack_top:

        .section .text
        .globl _start
_start:
        cli
        cld
        lea rsp, [rip + payload_stack_top]
        .endm
