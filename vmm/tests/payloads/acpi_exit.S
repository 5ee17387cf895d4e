# Freestanding guest payload: ends the VM the way Linux does with hardware-reduced ACPI.
# It reads its command line through the zero page (boot_params.hdr.cmd_line_ptr, 0x228):
# "reset" writes RESET_VALUE to the FADT reset register (port 0x602, Linux `reboot`);
# anything else enters S5 through the sleep control register (port 0x600: SLP_TYP 5 and
# SLP_EN, Linux `poweroff`).
        .intel_syntax noprefix
        .include "lib/entry.S"
        .code64
        .globl _start
_start:
        mov eax, dword ptr [rsi + 0x228]
        movzx ecx, byte ptr [rax]
        say msg
        cmp cl, 'r'
        je acpi_reset
        jmp acpi_poweroff

        .include "lib/serial.S"
        .include "lib/power.S"

        .section .rodata
msg:    .asciz "A\n"
