# Freestanding guest payload: drives the virtio-vsock device (id 19) in the virtio-mmio windows
# from 0xd0000000 the way Linux's driver starts it: features (VIRTIO_F_VERSION_1), its three
# queues, DRIVER_OK; then resets it and starts it again (the VMM drops the device and listens
# on its host socket anew). Prints "vsock driver ok" after each start that the device did
# not refuse, then "ready"; then waits for the ACPI power button (GED register, port 0x610),
# prints "power button pressed" and powers off through S5.
# Integer instructions only (see probe.S).
        .intel_syntax noprefix
        .code64

        .set MMIO_BASE, 0xd0000000
        .set MAX_WINDOWS, 16
        .set VIRTIO_MAGIC, 0x74726976
        .set RINGS, 0x300000

        .globl _start
_start:
        cli
        cld
        lea rsp, [rip + stack_top]
        mov rbx, MMIO_BASE
        xor ecx, ecx
1:      cmp ecx, MAX_WINDOWS
        jae failed
        cmp dword ptr [rbx], VIRTIO_MAGIC
        jne failed
        cmp dword ptr [rbx + 8], 19
        je 2f
        add rbx, 0x1000
        inc ecx
        jmp 1b
2:      call start_device
        mov dword ptr [rbx + 0x70], 0           # reset
        call start_device
        lea rsi, [rip + msg_ready]
        call puts
        mov dx, 0x610
3:      in al, dx
        test al, 1
        jz 3b
        lea rsi, [rip + msg_pressed]
        call puts
        mov dx, 0x600
        mov al, 0x34
        out dx, al
4:      hlt
        jmp 4b

# Initialization (virtio 1.2, 3.1.1) of the device at rbx with three 8-entry queues.
start_device:
        mov dword ptr [rbx + 0x70], 0
        mov dword ptr [rbx + 0x70], 1
        mov dword ptr [rbx + 0x70], 3
        mov dword ptr [rbx + 0x24], 1
        mov dword ptr [rbx + 0x20], 1           # VIRTIO_F_VERSION_1
        mov dword ptr [rbx + 0x70], 11
        test dword ptr [rbx + 0x70], 8
        jz failed
        xor ecx, ecx
1:      mov dword ptr [rbx + 0x30], ecx         # QueueSel
        mov dword ptr [rbx + 0x38], 8           # QueueNum
        mov eax, ecx
        shl eax, 14
        add eax, RINGS
        mov dword ptr [rbx + 0x80], eax         # descriptors
        mov dword ptr [rbx + 0x84], 0
        add eax, 0x1000
        mov dword ptr [rbx + 0x90], eax         # avail ring
        mov dword ptr [rbx + 0x94], 0
        add eax, 0x1000
        mov dword ptr [rbx + 0xa0], eax         # used ring
        mov dword ptr [rbx + 0xa4], 0
        mov dword ptr [rbx + 0x44], 1           # QueueReady
        inc ecx
        cmp ecx, 3
        jb 1b
        mov dword ptr [rbx + 0x70], 15          # DRIVER_OK
        test dword ptr [rbx + 0x70], 0xc0       # DEVICE_NEEDS_RESET or FAILED
        jnz failed
        lea rsi, [rip + msg_ok]
        call puts
        ret

failed: lea rsi, [rip + msg_failed]
        call puts
        mov al, 0xfe
        out 0x64, al
1:      hlt
        jmp 1b

puts:   mov dx, 0x3f8
1:      mov al, byte ptr [rsi]
        test al, al
        jz 2f
        out dx, al
        inc rsi
        jmp 1b
2:      ret

        .section .rodata
msg_ok:      .asciz "vsock driver ok\n"
msg_ready:   .asciz "ready\n"
msg_pressed: .asciz "power button pressed\n"
msg_failed:  .asciz "vsock driver failed\n"

        .section .bss
        .balign 16
        .skip 4096
stack_top:
