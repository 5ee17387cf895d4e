# Freestanding guest payload: takes the ACPI power button as Linux's GED driver does, by its
# interrupt rather than by polling. It routes IOAPIC pin 23 (the GED's interrupt in the DSDT:
# edge, active high) to vector 0x40 on this CPU, enables the local APIC, prints "ready" and
# halts with interrupts on. The handler reads the GED event register (port 0x610, what _EVT
# reads), notes a power-button event and sends the EOI; the main loop then prints
# "power button interrupt" and powers off through ACPI S5.
        .intel_syntax noprefix
        .code64
        .include "lib/entry.S"

        .set IOAPIC, 0xfec00000
        .set LAPIC, 0xfee00000
        .set GED_PIN, 23
        .set GED_VECTOR, 0x40

        payload_entry
        # Every vector gets a handler that only returns (a spurious interrupt needs no EOI);
        # GED_VECTOR gets ged_isr.
        lea rdi, [rip + idt]
        lea rax, [rip + ignore_isr]
        mov ecx, 256
1:      call set_gate
        add rdi, 16
        dec ecx
        jnz 1b
        lea rdi, [rip + idt + GED_VECTOR * 16]
        lea rax, [rip + ged_isr]
        call set_gate
        lea rax, [rip + idt]
        mov qword ptr [rip + idtr + 2], rax
        lidt [rip + idtr]
        # Local APIC on (spurious vector 0xff, APIC software enable).
        mov rbx, LAPIC
        mov dword ptr [rbx + 0xf0], 0x1ff
        # IOAPIC redirection entry of GED_PIN: destination APIC 0; vector, fixed, physical,
        # active high, edge, unmasked.
        mov rbx, IOAPIC
        mov dword ptr [rbx], 0x10 + GED_PIN * 2 + 1
        mov dword ptr [rbx + 0x10], 0
        mov dword ptr [rbx], 0x10 + GED_PIN * 2
        mov dword ptr [rbx + 0x10], GED_VECTOR
        say msg_ready
        sti
2:      hlt
        cmp byte ptr [rip + pressed], 0
        je 2b
        cli
        say msg_pressed
        jmp acpi_poweroff

# Writes a 64-bit interrupt gate to handler rax at rdi, with this code segment.
set_gate:
        mov word ptr [rdi], ax
        mov dx, cs
        mov word ptr [rdi + 2], dx
        mov word ptr [rdi + 4], 0x8e00          # present, DPL 0, interrupt gate
        mov rdx, rax
        shr rdx, 16
        mov word ptr [rdi + 6], dx
        shr rdx, 16
        mov dword ptr [rdi + 8], edx
        mov dword ptr [rdi + 12], 0
        ret

ged_isr:
        push rax
        push rdx
        push rbx
        mov dx, 0x610
        in al, dx
        test al, 1
        jz 1f
        mov byte ptr [rip + pressed], 1
1:      mov rbx, LAPIC
        mov dword ptr [rbx + 0xb0], 0           # EOI
        pop rbx
        pop rdx
        pop rax
        iretq

ignore_isr:
        iretq

        .include "lib/serial.S"
        .include "lib/power.S"

        .section .rodata
msg_ready:   .asciz "ready\n"
msg_pressed: .asciz "power button interrupt\n"

        .section .data
        .balign 16
idtr:   .word 256 * 16 - 1
        .quad 0
pressed: .byte 0

        .section .bss
        .balign 16
idt:    .skip 256 * 16
