# Freestanding guest payload: drives the first virtio-blk device (device id 2) of the
# virtio-mmio windows from 0xd0000000 through one queue, polling for completion:
# GET_ID, read sector 0 (printed up to its first newline), write "written by the guest\n"
# to sector 1, flush; prints each status, then resets through the i8042.
# Integer instructions only (see probe.S).

        .intel_syntax noprefix
        .code64

        .set COM1, 0x3f8
        .set MMIO_BASE, 0xd0000000
        .set MAX_WINDOWS, 16
        .set VIRTIO_MAGIC, 0x74726976
        .set DESC, 0x300000
        .set AVAIL, 0x301000
        .set USED, 0x302000
        .set HEADER, 0x305000
        .set STATUS, 0x306000
        .set DATA, 0x310000

        .section .text
        .globl _start
_start:
        cli
        cld
        lea rsp, [rip + stack_top]
        lea rsi, [rip + msg_hello]
        call puts

        # Find the block device.
        mov rbx, MMIO_BASE
        xor ecx, ecx
1:      cmp ecx, MAX_WINDOWS
        jae no_blk
        cmp dword ptr [rbx], VIRTIO_MAGIC
        jne no_blk
        cmp dword ptr [rbx + 8], 2
        je 2f
        add rbx, 0x1000
        inc ecx
        jmp 1b
2:      lea rsi, [rip + msg_found]
        call puts
        mov edi, ebx
        call puthex32
        lea rsi, [rip + msg_nl]
        call puts

        # Initialization (virtio 1.2, 3.1.1).
        mov dword ptr [rbx + 0x70], 0
        mov dword ptr [rbx + 0x70], 1
        mov dword ptr [rbx + 0x70], 3
        mov dword ptr [rbx + 0x24], 1
        mov dword ptr [rbx + 0x20], 1           # VIRTIO_F_VERSION_1
        mov dword ptr [rbx + 0x70], 11
        test dword ptr [rbx + 0x70], 8
        jz init_failed
        mov dword ptr [rbx + 0x30], 0
        mov dword ptr [rbx + 0x38], 8
        mov dword ptr [rbx + 0x80], DESC
        mov dword ptr [rbx + 0x84], 0
        mov dword ptr [rbx + 0x90], AVAIL
        mov dword ptr [rbx + 0x94], 0
        mov dword ptr [rbx + 0xa0], USED
        mov dword ptr [rbx + 0xa4], 0
        mov dword ptr [rbx + 0x44], 1
        mov dword ptr [rbx + 0x70], 15
        test dword ptr [rbx + 0x70], 0x40
        jnz init_failed
        xor r14d, r14d                          # requests submitted

        # GET_ID into DATA (20 bytes).
        mov dword ptr [DATA], 0
        mov r8d, 8
        xor r9d, r9d
        mov r10d, DATA
        mov r11d, 20
        mov r12d, 2
        call submit
        lea rsi, [rip + msg_id_status]
        call print_status
        mov byte ptr [DATA + 20], 0
        lea rsi, [rip + msg_id]
        call puts
        mov esi, DATA
        call puts
        lea rsi, [rip + msg_nl]
        call puts

        # Read sector 0 and print it up to the first newline (at most 64 bytes).
        mov r8d, 0
        xor r9d, r9d
        mov r10d, DATA
        mov r11d, 512
        mov r12d, 2
        call submit
        lea rsi, [rip + msg_read_status]
        call print_status
        lea rsi, [rip + msg_sector0]
        call puts
        mov esi, DATA
        mov ecx, 64
3:      mov al, byte ptr [rsi]
        cmp al, 10
        je 4f
        test al, al
        je 4f
        call putc
        inc rsi
        dec ecx
        jnz 3b
4:      lea rsi, [rip + msg_nl]
        call puts

        # Write sector 1: the message, then zeros to 512 bytes.
        mov edi, DATA
        mov ecx, 512
5:      mov byte ptr [rdi], 0
        inc rdi
        dec ecx
        jnz 5b
        lea rsi, [rip + msg_written]
        mov edi, DATA
6:      mov al, byte ptr [rsi]
        test al, al
        jz 7f
        mov byte ptr [rdi], al
        inc rsi
        inc rdi
        jmp 6b
7:      mov r8d, 1
        mov r9d, 1
        mov r10d, DATA
        mov r11d, 512
        xor r12d, r12d
        call submit
        lea rsi, [rip + msg_write_status]
        call print_status

        # Flush.
        mov r8d, 4
        xor r9d, r9d
        xor r10d, r10d
        call submit
        lea rsi, [rip + msg_flush_status]
        call print_status
        jmp done

init_failed:
        lea rsi, [rip + msg_init_failed]
        call puts
        jmp done
no_blk:
        lea rsi, [rip + msg_no_blk]
        call puts
done:
        lea rsi, [rip + msg_done]
        call puts
        mov al, 0xfe
        out 0x64, al
8:      hlt
        jmp 8b

# submit: one request on queue 0 of the device at rbx. r8d type, r9 sector, r10 data address
# (0: no data descriptor), r11d data length, r12d data descriptor flags. Returns eax = the
# status byte, or 0x100 when the device did not complete the request.
submit:
        push rdi
        push rcx
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
        mov ecx, 10000000                       # the device thread is on another host CPU
3:      cmp word ptr [USED + 2], r14w
        je 4f
        dec ecx
        jnz 3b
        mov eax, 0x100
        jmp 5f
4:      movzx eax, byte ptr [STATUS]
        mov dword ptr [rbx + 0x64], 1           # InterruptACK
5:      pop rcx
        pop rdi
        ret

# print_status: rsi = label, eax = status.
print_status:
        push rdi
        call puts
        mov edi, eax
        call puthex32
        lea rsi, [rip + msg_nl]
        call puts
        pop rdi
        ret

putc:
        push rdx
        push rax
        mov dx, COM1 + 5
1:      in al, dx
        test al, 0x20
        jz 1b
        pop rax
        mov dx, COM1
        out dx, al
        pop rdx
        ret

puts:
        push rax
        push rsi
1:      mov al, byte ptr [rsi]
        test al, al
        jz 2f
        call putc
        inc rsi
        jmp 1b
2:      pop rsi
        pop rax
        ret

puthex32:
        push rax
        push rcx
        push rdi
        mov al, '0'
        call putc
        mov al, 'x'
        call putc
        mov ecx, 8
1:      rol edi, 4
        mov eax, edi
        and eax, 0xf
        cmp al, 10
        jb 2f
        add al, 'a' - 10 - '0'
2:      add al, '0'
        call putc
        dec ecx
        jnz 1b
        pop rdi
        pop rcx
        pop rax
        ret

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
msg_done:         .asciz "payload: done\n"
msg_nl:           .asciz "\n"

        .section .bss
        .balign 16
stack:  .skip 4096
stack_top:
