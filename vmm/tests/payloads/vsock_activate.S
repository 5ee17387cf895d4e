# Freestanding guest payload: drives the virtio-vsock device (id 19) in the virtio-mmio windows
# from 0xd0000000 the way Linux's driver starts it: features (VIRTIO_F_VERSION_1), its three
# queues, DRIVER_OK; then resets it and starts it again (the VMM drops the device and listens
# on its host socket anew). Prints "vsock driver ok" after each start that the device did
# not refuse, then "ready"; then waits for the ACPI power button (GED register, port 0x610),
# prints "power button pressed" and powers off through S5.
# Integer instructions only (see probe.S).
        .intel_syntax noprefix
        .code64
        .include "lib/entry.S"

        .set VIRTIO_ID_VSOCK, 19
        .set RINGS, 0x300000                    # queue n's rings at RINGS + n * 0x4000

        payload_entry
        mov edi, VIRTIO_ID_VSOCK
        call virtio_find_device
        jc failed
        call start_device
        mov dword ptr [rbx + 0x70], 0           # reset
        call start_device
        say msg_ready
        call wait_power_button
        say msg_pressed
        jmp acpi_poweroff

# Initialization (virtio 1.2, 3.1.1) of the device at rbx with three 8-entry queues.
start_device:
        mov ecx, 3
        mov eax, RINGS
        call virtio_start_device
        jc failed
        say msg_ok
        ret

failed: lea rsi, [rip + msg_failed]
        call puts
        jmp i8042_reset

        .include "lib/serial.S"
        .include "lib/virtio_mmio.S"
        .include "lib/power.S"

        .section .rodata
msg_ok:      .asciz "vsock driver ok\n"
msg_ready:   .asciz "ready\n"
msg_pressed: .asciz "power button pressed\n"
msg_failed:  .asciz "vsock driver failed\n"
