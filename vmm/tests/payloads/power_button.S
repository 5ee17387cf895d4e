# Freestanding guest payload for graceful stop: prints "ready", then polls the ACPI GED event
# register (port 0x610; what the DSDT's _EVT method reads) until the power-button bit is set,
# prints "power button pressed" and powers off through ACPI S5 (sleep control register, port
# 0x600: SLP_TYP 5 and SLP_EN), as Linux does when its power button is pressed. Interrupts
# stay off: polling stands in for the GED interrupt.
        .intel_syntax noprefix
        .code64
        .globl _start
_start:
        cli
        lea rsi, [rip + ready]
        call puts
        mov dx, 0x610
1:      in al, dx
        test al, 1
        jz 1b
        lea rsi, [rip + pressed]
        call puts
        mov dx, 0x600
        mov al, 0x34
        out dx, al
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
ready:   .asciz "ready\n"
pressed: .asciz "power button pressed\n"
