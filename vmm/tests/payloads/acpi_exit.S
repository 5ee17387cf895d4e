# Freestanding guest payload: ends the VM the way Linux does with hardware-reduced ACPI.
# It reads its command line through the zero page (boot_params.hdr.cmd_line_ptr, 0x228):
# "reset" writes RESET_VALUE to the FADT reset register (port 0x602, Linux `reboot`);
# anything else enters S5 through the sleep control register (port 0x600: SLP_TYP 5 and
# SLP_EN, Linux `poweroff`).
        .intel_syntax noprefix
        .code64
        .globl _start
_start:
        mov eax, dword ptr [rsi + 0x228]
        movzx ecx, byte ptr [rax]
        mov dx, 0x3f8
        mov al, 'A'
        out dx, al
        mov al, 10
        out dx, al
        cmp cl, 'r'
        je 1f
        mov dx, 0x600
        mov al, 0x34
        out dx, al
        jmp 2f
1:      mov dx, 0x602
        mov al, 1
        out dx, al
2:      hlt
        jmp 2b
