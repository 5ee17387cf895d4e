# Freestanding guest payload: drives the first virtio-blk device (device id 2) of the
# virtio-mmio windows from 0xd0000000 through one queue, polling for completion:
# GET_ID, read sector 0 (printed up to its first newline), write "written by the guest\n"
# to sector 1, flush; prints each status, then resets through the i8042.
# Integer instructions only (see probe.S).

        .intel_syntax noprefix
        .code64
        .include "lib/entry.S"

        .set VIRTIO_ID_BLOCK, 2
        .set DESC, 0x300000
        .set AVAIL, 0x301000
        .set USED, 0x302000
        .set HEADER, 0x305000
        .set STATUS, 0x306000
        .set DATA, 0x310000

        payload_entry
        say msg_hello

        mov edi, VIRTIO_ID_BLOCK
        call virtio_find_device
        jc no_blk
        mov edi, ebx
        say_hex msg_found

        mov ecx, 1
        mov eax, DESC
        call virtio_start_device
        jc init_failed
        xor r14d, r14d                          # requests submitted

        # GET_ID into DATA (20 bytes).
        mov dword ptr [DATA], 0
        mov r8d, 8
        xor r9d, r9d
        mov r10d, DATA
        mov r11d, 20
        mov r12d, 2
        call submit
        mov edi, eax
        say_hex msg_id_status
        mov byte ptr [DATA + 20], 0
        say msg_id
        mov esi, DATA
        call puts
        call put_newline

        # Read sector 0 and print it up to the first newline (at most 64 bytes).
        mov r8d, 0
        xor r9d, r9d
        mov r10d, DATA
        mov r11d, 512
        mov r12d, 2
        call submit
        mov edi, eax
        say_hex msg_read_status
        say msg_sector0
        mov esi, DATA
        call put_first_line

        # Write sector 1: the message, then zeros to 512 bytes.
        mov edi, DATA
        mov ecx, 512
        call zero_bytes
        lea rsi, [rip + msg_written]
        call copy_string
        mov r8d, 1
        mov r9d, 1
        mov r10d, DATA
        mov r11d, 512
        xor r12d, r12d
        call submit
        mov edi, eax
        say_hex msg_write_status

        # Flush.
        mov r8d, 4
        xor r9d, r9d
        xor r10d, r10d
        call submit
        mov edi, eax
        say_hex msg_flush_status
        jmp payload_done
init_failed:
        lea rsi, [rip + msg_init_failed]
        jmp payload_failed
no_blk:
        lea rsi, [rip + msg_no_blk]
        jmp payload_failed

# submit: one request on queue 0 of the device at rbx. r8d type, r9 sector, r10 data address
# (0: no data descriptor), r11d data length, r12d data descriptor flags; r14d counts the
# requests submitted. Returns eax = the status byte, or 0x100 when the device did not
# complete the request.
submit:
        push rdi
        push rsi
        mov dword ptr [HEADER], r8d
        mov dword ptr [HEADER + 4], 0
        mov qword ptr [HEADER + 8], r9
        mov byte ptr [STATUS], 0xff
        mov rdi, DESC
        mov qword ptr [rdi], HEADER             # descriptor 0: header
        mov dword ptr [rdi + 8], 16
        mov word ptr [rdi + 12], 1              # NEXT
        test r10, r10
        jz 1f
        mov word ptr [rdi + 14], 1
        mov qword ptr [rdi + 16], r10           # descriptor 1: data
        mov dword ptr [rdi + 24], r11d
        mov eax, r12d
        or eax, 1
        mov word ptr [rdi + 28], ax
        mov word ptr [rdi + 30], 2
        jmp 2f
1:      mov word ptr [rdi + 14], 2
2:      mov qword ptr [rdi + 32], STATUS        # descriptor 2: status
        mov dword ptr [rdi + 40], 1
        mov word ptr [rdi + 44], 2              # WRITE
        mov word ptr [rdi + 46], 0
        mov rdi, AVAIL
        mov eax, r14d
        and eax, 7
        mov word ptr [rdi + 4 + rax * 2], 0     # ring[idx % 8] = descriptor 0
        inc r14d
        mov word ptr [rdi + 2], r14w            # avail idx
        mov dword ptr [rbx + 0x50], 0           # QueueNotify
        mov edi, USED
        mov esi, r14d
        call virtio_wait_used
        jnc 3f
        mov eax, 0x100
        jmp 4f
3:      movzx eax, byte ptr [STATUS]
        mov dword ptr [rbx + 0x64], 1           # InterruptACK
4:      pop rsi
        pop rdi
        ret

        .include "lib/serial.S"
        .include "lib/virtio_mmio.S"
        .include "lib/memory.S"
        .include "lib/power.S"

        .section .rodata
msg_hello:        .asciz "payload: virtio-blk\n"
msg_found:        .asciz "virtio-blk: device at "
msg_no_blk:       .asciz "virtio-blk: no device\n"
msg_init_failed:  .asciz "virtio-blk: initialization failed\n"
msg_id_status:    .asciz "virtio-blk: get-id status "
msg_id:           .asciz "virtio-blk: id "
msg_read_status:  .asciz "virtio-blk: read status "
msg_sector0:      .asciz "virtio-blk: sector 0: "
msg_write_status: .asciz "virtio-blk: write status "
msg_flush_status: .asciz "virtio-blk: flush status "
msg_written:      .asciz "written by the guest\n"
