# Freestanding guest payload: finds the first virtio-blk device, negotiates features, prints
# its capacity and ConfigGeneration and "ready", then polls InterruptStatus until the
# configuration-change bit (1) is set (the host resizes the disk on the control socket),
# prints the status, the new generation and capacity, acknowledges the interrupt, prints the
# status after the ack, and resets through the i8042. Integer instructions only (see probe.S).

        .intel_syntax noprefix
        .code64

        .set COM1, 0x3f8
        .set MMIO_BASE, 0xd0000000
        .set MAX_WINDOWS, 16
        .set VIRTIO_MAGIC, 0x74726976

        .section .text
        .globl _start
_start:
        cli
        cld
        lea rsp, [rip + stack_top]

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

        # ACKNOWLEDGE, DRIVER, VERSION_1, FEATURES_OK: the config space is readable now.
2:      mov dword ptr [rbx + 0x70], 0
        mov dword ptr [rbx + 0x70], 1
        mov dword ptr [rbx + 0x70], 3
        mov dword ptr [rbx + 0x24], 1
        mov dword ptr [rbx + 0x20], 1
        mov dword ptr [rbx + 0x70], 11

        lea rsi, [rip + msg_capacity]
        mov edi, dword ptr [rbx + 0x100]
        call print_value
        lea rsi, [rip + msg_generation]
        mov edi, dword ptr [rbx + 0xfc]
        call print_value
        lea rsi, [rip + msg_ready]
        call puts

3:      mov edi, dword ptr [rbx + 0x60]         # InterruptStatus
        test edi, 2
        jz 3b
        lea rsi, [rip + msg_interrupt]
        call print_value
        lea rsi, [rip + msg_generation]
        mov edi, dword ptr [rbx + 0xfc]
        call print_value
        lea rsi, [rip + msg_capacity]
        mov edi, dword ptr [rbx + 0x100]
        call print_value
        mov dword ptr [rbx + 0x64], 2           # InterruptACK
        lea rsi, [rip + msg_after_ack]
        mov edi, dword ptr [rbx + 0x60]
        call print_value
        jmp done
no_blk:
        lea rsi, [rip + msg_no_blk]
        call puts
done:
        lea rsi, [rip + msg_done]
        call puts
        mov al, 0xfe
        out 0x64, al
4:      hlt
        jmp 4b

# print_value: rsi = label, edi = value; prints "label 0x........\n".
print_value:
        call puts
        call puthex32
        lea rsi, [rip + msg_nl]
        call puts
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
msg_capacity:   .asciz "virtio-blk: capacity "
msg_generation: .asciz "virtio-blk: generation "
msg_ready:      .asciz "ready\n"
msg_interrupt:  .asciz "virtio-blk: interrupt status "
msg_after_ack:  .asciz "virtio-blk: interrupt status after ack "
msg_no_blk:     .asciz "virtio-blk: no device\n"
msg_done:       .asciz "payload: done\n"
msg_nl:         .asciz "\n"

        .section .bss
        .balign 16
stack:  .skip 4096
stack_top:
