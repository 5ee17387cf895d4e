# Freestanding guest payload: finds the first virtio-blk device, negotiates features, prints
# its capacity and ConfigGeneration and "ready", then polls InterruptStatus until the
# configuration-change bit (1) is set (the host resizes the disk on the control socket),
# prints the status, the new generation and capacity, acknowledges the interrupt, prints the
# status after the ack, and resets through the i8042. Integer instructions only (see probe.S).

        .intel_syntax noprefix
        .code64
        .include "lib/entry.S"

        .set VIRTIO_ID_BLOCK, 2

        payload_entry

        mov edi, VIRTIO_ID_BLOCK
        call virtio_find_device
        jc no_blk

        # FEATURES_OK (or not: this payload reads the config space either way).
        call virtio_negotiate

        mov edi, dword ptr [rbx + 0x100]
        say_hex msg_capacity
        mov edi, dword ptr [rbx + 0xfc]
        say_hex msg_generation
        say msg_ready

1:      mov edi, dword ptr [rbx + 0x60]         # InterruptStatus
        test edi, 2
        jz 1b
        say_hex msg_interrupt
        mov edi, dword ptr [rbx + 0xfc]
        say_hex msg_generation
        mov edi, dword ptr [rbx + 0x100]
        say_hex msg_capacity
        mov dword ptr [rbx + 0x64], 2           # InterruptACK
        mov edi, dword ptr [rbx + 0x60]
        say_hex msg_after_ack
        jmp payload_done
no_blk:
        lea rsi, [rip + msg_no_blk]
        jmp payload_failed

        .include "lib/serial.S"
        .include "lib/virtio_mmio.S"
        .include "lib/power.S"

        .section .rodata
msg_capacity:   .asciz "virtio-blk: capacity "
msg_generation: .asciz "virtio-blk: generation "
msg_ready:      .asciz "ready\n"
msg_interrupt:  .asciz "virtio-blk: interrupt status "
msg_after_ack:  .asciz "virtio-blk: interrupt status after ack "
msg_no_blk:     .asciz "virtio-blk: no device\n"
