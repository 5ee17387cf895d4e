# Freestanding guest payload for graceful stop: prints "ready", then polls the ACPI GED event
# register (port 0x610; what the DSDT's _EVT method reads) until the power-button bit is set,
# prints "power button pressed" and powers off through ACPI S5 (sleep control register, port
# 0x600: SLP_TYP 5 and SLP_EN), as Linux does when its power button is pressed. Interrupts
# stay off: polling stands in for the GED interrupt.
        .intel_syntax noprefix
        .include "lib/entry.S"
        .code64
        payload_entry
        say ready
        call wait_power_button
        say pressed
        jmp acpi_poweroff

        .include "lib/serial.S"
        .include "lib/power.S"

        .section .rodata
ready:   .asciz "ready\n"
pressed: .asciz "power button pressed\n"
