# Ending the VM, and the ACPI power button, for the freestanding payloads:
# `.include "lib/power.S"` at the end of the payload's code, as with lib/serial.S. The VMM's
# hardware-reduced ACPI (FADT and DSDT) names these ports; Linux uses them the same way.
# acpi_poweroff, acpi_reset, i8042_reset, payload_done and payload_failed do not return: jump
# to them. payload_done and payload_failed print, so they need lib/serial.S too.

        .set ACPI_SLEEP_CONTROL, 0x600
        .set ACPI_SLP_EN_S5, 0x34                       # SLP_TYP 5 (S5) | SLP_EN
        .set ACPI_RESET_REGISTER, 0x602
        .set ACPI_RESET_VALUE, 1
        .set ACPI_GED_EVENT, 0x610                      # what the DSDT's _EVT reads
        .set ACPI_GED_POWER_BUTTON, 1
        .set I8042_COMMAND, 0x64
        .set I8042_CMD_RESET, 0xfe

        .section .text

# acpi_poweroff: enters S5 through the sleep control register (Linux `poweroff`).
acpi_poweroff:
        mov dx, ACPI_SLEEP_CONTROL
        mov al, ACPI_SLP_EN_S5
        out dx, al
1:      hlt
        jmp 1b

# acpi_reset: writes the FADT reset value to the reset register (Linux `reboot`).
acpi_reset:
        mov dx, ACPI_RESET_REGISTER
        mov al, ACPI_RESET_VALUE
        out dx, al
1:      hlt
        jmp 1b

# i8042_reset: pulses the CPU reset line through the i8042 (Linux `reboot=k`).
i8042_reset:
        mov al, I8042_CMD_RESET
        out I8042_COMMAND, al
1:      hlt
        jmp 1b

# payload_failed: rsi = what failed, a NUL-terminated line: prints it, then as payload_done.
payload_failed:
        call puts
# payload_done: prints "payload: done" and resets through the i8042 (the device payloads' end).
payload_done:
        lea rsi, [rip + power_msg_done]
        call puts
        jmp i8042_reset

# wait_power_button: polls the GED event register until the power-button bit is set. Keeps
# every register but the flags.
wait_power_button:
        push rax
        push rdx
        mov dx, ACPI_GED_EVENT
1:      in al, dx
        test al, ACPI_GED_POWER_BUTTON
        jz 1b
        pop rdx
        pop rax
        ret

        .section .rodata
power_msg_done: .asciz "payload: done\n"

        .section .text
