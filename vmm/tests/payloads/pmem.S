# Freestanding guest payload: finds the first virtio-pmem device (id 27) among the
# virtio-mmio windows, reads its region's start and size from the config space, prints the
# region's first line, writes "written by the guest" at region offset 4096, and sends one
# FLUSH request through the queue (polling for the response); then resets through the i8042.
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
        .set REQ, 0x305000
        .set RESP, 0x306000

        .section .text
        .globl _start
_start:
        cli
        cld
        lea rsp, [rip + stack_top]
        lea rsi, [rip + msg_hello]
        call puts

        mov rbx, MMIO_BASE
        xor ecx, ecx
1:      cmp ecx, MAX_WINDOWS
        jae no_pmem
        cmp dword ptr [rbx], VIRTIO_MAGIC
        jne no_pmem
        cmp dword ptr [rbx + 8], 27
        je 2f
        add rbx, 0x1000
        inc ecx
        jmp 1b
2:      mov r12, qword ptr [rbx + 0x100]        # region start
        mov r13, qword ptr [rbx + 0x108]        # region size
        lea rsi, [rip + msg_region]
        call puts
        mov rdi, r12
        shr rdi, 32
        call puthex32
        mov edi, r12d
        call puthex32
        lea rsi, [rip + msg_size]
        call puts
        mov edi, r13d
        call puthex32
        lea rsi, [rip + msg_nl]
        call puts

        # The region's first line.
        lea rsi, [rip + msg_line]
        call puts
        mov rsi, r12
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

        # Write the message at offset 4096 (dropped by KVM on a read-only region).
        lea rsi, [rip + msg_written]
        lea rdi, [r12 + 4096]
5:      mov al, byte ptr [rsi]
        test al, al
        jz 6f
        mov byte ptr [rdi], al
        inc rsi
        inc rdi
        jmp 5b
6:
        # Initialization, then one FLUSH request.
        mov dword ptr [rbx + 0x70], 0
        mov dword ptr [rbx + 0x70], 1
        mov dword ptr [rbx + 0x70], 3
        mov dword ptr [rbx + 0x24], 1
        mov dword ptr [rbx + 0x20], 1
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
        mov dword ptr [REQ], 0                  # VIRTIO_PMEM_REQ_TYPE_FLUSH
        mov dword ptr [RESP], 0xffffffff
        mov rdi, DESC
        mov qword ptr [rdi], REQ
        mov dword ptr [rdi + 8], 4
        mov word ptr [rdi + 12], 1              # NEXT
        mov word ptr [rdi + 14], 1
        mov qword ptr [rdi + 16], RESP
        mov dword ptr [rdi + 24], 4
        mov word ptr [rdi + 28], 2              # WRITE
        mov word ptr [rdi + 30], 0
        mov word ptr [AVAIL + 4], 0
        mov word ptr [AVAIL + 2], 1
        mov dword ptr [rbx + 0x50], 0
        mov ecx, 10000000                       # the device thread is on another host CPU
7:      cmp word ptr [USED + 2], 1
        je 8f
        dec ecx
        jnz 7b
8:      lea rsi, [rip + msg_flush]
        call puts
        mov edi, dword ptr [RESP]
        call puthex32
        lea rsi, [rip + msg_nl]
        call puts
        jmp done

init_failed:
        lea rsi, [rip + msg_init_failed]
        call puts
        jmp done
no_pmem:
        lea rsi, [rip + msg_no_pmem]
        call puts
done:
        lea rsi, [rip + msg_done]
        call puts
        mov al, 0xfe
        out 0x64, al
9:      hlt
        jmp 9b

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
msg_hello:        .asciz "payload: virtio-pmem\n"
msg_region:       .asciz "virtio-pmem: region "
msg_size:         .asciz " size "
msg_line:         .asciz "virtio-pmem: first line: "
msg_flush:        .asciz "virtio-pmem: flush response "
msg_no_pmem:      .asciz "virtio-pmem: no device\n"
msg_init_failed:  .asciz "virtio-pmem: initialization failed\n"
msg_written:      .asciz "written by the guest\n"
msg_done:         .asciz "payload: done\n"
msg_nl:           .asciz "\n"

        .section .bss
        .balign 16
stack:  .skip 4096
stack_top:
