# Freestanding guest payload: drives the first virtio-net device (device id 1) of the
# virtio-mmio windows from 0xd0000000 with VIRTIO_F_VERSION_1 only (no offloads, no
# mergeable buffers: the 12-byte header, num_buffers 1): posts one rx buffer on queue 0,
# sends one Ethernet/IPv4/UDP frame on queue 1 from 10.77.0.2:4000 to 10.77.0.1:7777 (the
# host side of the tap, MAC 02:00:00:77:00:01) carrying "hello host", waits for the tx
# buffer to come back and for a frame in the rx buffer, prints the rx used length and the
# datagram's payload (a NUL-terminated string at frame offset 12 + 14 + 20 + 8), then resets.
# Integer instructions only (see probe.S).

        .intel_syntax noprefix
        .code64
        .include "lib/entry.S"

        .set VIRTIO_ID_NET, 1
        .set RINGS, 0x300000                    # queue n's rings at RINGS + n * 0x4000
        .set RX_DESC, RINGS
        .set RX_AVAIL, RINGS + 0x1000
        .set RX_USED, RINGS + 0x2000
        .set TX_DESC, RINGS + 0x4000
        .set TX_AVAIL, RINGS + 0x5000
        .set TX_USED, RINGS + 0x6000
        .set RX_BUF, 0x310000
        .set RX_BUF_LEN, 2048
        .set TX_BUF, 0x320000
        .set PAYLOAD_OFFSET, 12 + 14 + 20 + 8
        # Rounds of virtio_wait_used for the host's reply (each polls VIRTQ_POLLS times).
        .set RX_ROUNDS, 2000

        payload_entry
        say msg_hello
        mov edi, VIRTIO_ID_NET
        call virtio_find_device
        jc no_net
        mov edi, ebx
        say_hex msg_found
        mov ecx, 2
        mov eax, RINGS
        call virtio_start_device
        jc init_failed

        # rx: one device-writable buffer.
        mov rdi, RX_DESC
        mov qword ptr [rdi], RX_BUF
        mov dword ptr [rdi + 8], RX_BUF_LEN
        mov word ptr [rdi + 12], 2              # WRITE
        mov word ptr [rdi + 14], 0
        mov word ptr [RX_AVAIL + 4], 0
        mov word ptr [RX_AVAIL + 2], 1
        mov dword ptr [rbx + 0x50], 0           # QueueNotify rx

        # tx: the frame.
        mov rdi, TX_BUF
        lea rsi, [rip + frame]
        mov ecx, frame_end - frame
1:      mov al, byte ptr [rsi]
        mov byte ptr [rdi], al
        inc rsi
        inc rdi
        dec ecx
        jnz 1b
        mov rdi, TX_DESC
        mov qword ptr [rdi], TX_BUF
        mov dword ptr [rdi + 8], frame_end - frame
        mov word ptr [rdi + 12], 0
        mov word ptr [rdi + 14], 0
        mov word ptr [TX_AVAIL + 4], 0
        mov word ptr [TX_AVAIL + 2], 1
        mov dword ptr [rbx + 0x50], 1           # QueueNotify tx
        mov edi, TX_USED
        mov esi, 1
        call virtio_wait_used
        jc tx_failed
        say msg_tx_done

        mov ecx, RX_ROUNDS
2:      mov edi, RX_USED
        mov esi, 1
        call virtio_wait_used
        jnc 3f
        dec ecx
        jnz 2b
        lea rsi, [rip + msg_no_rx]
        jmp payload_failed
3:      mov edi, dword ptr [RX_USED + 8]        # used ring element 0: id, then len
        say_hex msg_rx_len
        say msg_rx
        mov byte ptr [RX_BUF + RX_BUF_LEN - 1], 0
        mov esi, RX_BUF + PAYLOAD_OFFSET
        call puts
        call put_newline
        jmp payload_done

init_failed:
        lea rsi, [rip + msg_init_failed]
        jmp payload_failed
no_net:
        lea rsi, [rip + msg_no_net]
        jmp payload_failed
tx_failed:
        lea rsi, [rip + msg_tx_failed]
        jmp payload_failed

        .include "lib/serial.S"
        .include "lib/virtio_mmio.S"
        .include "lib/power.S"

        .section .rodata
# virtio_net_hdr_v1 (all zero), Ethernet, IPv4 (checksum precomputed), UDP (no checksum).
frame:
        .byte 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
        .byte 0x02, 0x00, 0x00, 0x77, 0x00, 0x01          # to the tap
        .byte 0x52, 0x54, 0x00, 0x77, 0x00, 0x02          # from the guest
        .byte 0x08, 0x00
        .byte 0x45, 0, 0, 38, 0, 1, 0x40, 0, 64, 17, 0x26, 0x2a
        .byte 10, 77, 0, 2, 10, 77, 0, 1
        .byte 0x0f, 0xa0, 0x1e, 0x61, 0, 18, 0, 0         # 4000 → 7777, length 18
        .ascii "hello host"
frame_end:
msg_hello:        .asciz "payload: virtio-net\n"
msg_found:        .asciz "virtio-net: device at "
msg_no_net:       .asciz "virtio-net: no device\n"
msg_init_failed:  .asciz "virtio-net: initialization failed\n"
msg_tx_failed:    .asciz "virtio-net: tx buffer not returned\n"
msg_tx_done:      .asciz "virtio-net: tx done\n"
msg_no_rx:        .asciz "virtio-net: no frame received\n"
msg_rx_len:       .asciz "virtio-net: rx used length "
msg_rx:           .asciz "virtio-net: rx payload "
