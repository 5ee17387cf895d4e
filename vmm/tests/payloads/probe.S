# Freestanding guest payload for crosvm's KVM tests, entered in 64-bit mode by our loader
# (rsi = zero page, identity-mapped low 4 GiB). Integer instructions only: the nested
# /dev/kvm on the build machines emulates guest code and has no x87/SSE.
#
# It prints through COM1, finds the ACPI RSDP as Linux does (scan of 0xe0000-0xfffff),
# checks RSDP, XSDT, every table the XSDT lists and the DSDT the FADT points to, probes
# the virtio-mmio windows from 0xd0000000 until one lacks the magic value, drives the
# first virtio-rng device through one request, then resets through the i8042.
# Each check prints "ok" or "BAD"; the last line gives the number of failures.

        .intel_syntax noprefix
        .code64
        .include "lib/entry.S"

        .set MMIO_BASE, 0xd0000000
        .set MMIO_STRIDE, 0x1000
        .set MAX_WINDOWS, 16
        .set VIRTIO_MAGIC, 0x74726976
        .set VIRTIO_ID_RNG, 4
        .set RNG_RINGS, 0x300000
        .set RNG_USED, 0x302000
        .set RNG_BUFFER, 0x303000
        .set RSDP_SIG, 0x2052545020445352     # "RSD PTR "

        payload_entry
        mov r15, rsi                    # the zero page
        xor ebp, ebp                    # failure count

        say msg_hello

        # --- ACPI: find the RSDP -----------------------------------------------------------
        mov rbx, 0xe0000
        mov rax, RSDP_SIG
1:      cmp rbx, 0x100000
        jae no_rsdp
        cmp qword ptr [rbx], rax
        je 2f
        add rbx, 16
        jmp 1b
2:      lea rsi, [rip + msg_rsdp]
        call puts
        mov edi, ebx
        call puthex32
        mov rsi, rbx
        mov ecx, 20
        call sum8
        mov r8b, al
        mov ecx, dword ptr [rbx + 20]
        call sum8
        or al, r8b
        call ok_or_bad
        # The zero page must carry the same address (boot_params.acpi_rsdp_addr, 0x70).
        say msg_zero_page_rsdp
        xor eax, eax
        cmp rbx, qword ptr [r15 + 0x70]
        setne al
        call ok_or_bad

        # --- XSDT and its tables -----------------------------------------------------------
        mov r12, qword ptr [rbx + 24]   # XSDT address
        mov rsi, r12
        call check_table
        mov r13d, dword ptr [r12 + 4]
        sub r13d, 36
        shr r13d, 3                     # entry count
        lea r14, [r12 + 36]
3:      test r13d, r13d
        jz 5f
        mov rsi, qword ptr [r14]
        call check_table
        cmp dword ptr [rsi], 0x50434146 # "FACP": check the DSDT it points to (X_DSDT, 140)
        jne 4f
        mov rsi, qword ptr [rsi + 140]
        call check_table
4:      add r14, 8
        dec r13d
        jmp 3b
5:
        # --- virtio-mmio windows ------------------------------------------------------------
        mov rbx, MMIO_BASE
        xor r13d, r13d
6:      cmp r13d, MAX_WINDOWS
        jae 8f
        mov eax, dword ptr [rbx]        # MagicValue
        cmp eax, VIRTIO_MAGIC
        jne 8f
        say msg_virtio
        mov edi, ebx
        call puthex32
        say msg_version
        mov edi, dword ptr [rbx + 4]    # Version
        call puthex32
        say msg_device
        mov edi, dword ptr [rbx + 8]    # DeviceID
        call puthex32
        xor eax, eax
        cmp dword ptr [rbx + 4], 2
        setne al
        call ok_or_bad
        inc r13d
        add rbx, MMIO_STRIDE
        jmp 6b
8:      lea rsi, [rip + msg_windows]
        mov edi, r13d
        call put_labelled_hex

        # --- drive the first virtio-rng device, if window 0 is one -------------------------
        mov rbx, MMIO_BASE
        test r13d, r13d
        jz 9f
        cmp dword ptr [rbx + 8], VIRTIO_ID_RNG
        jne 9f
        call rng_request
9:
        # --- done: report and reset through the i8042 --------------------------------------
        mov edi, ebp
        say_hex msg_failures
        jmp i8042_reset

no_rsdp:
        say msg_no_rsdp
        inc ebp
        jmp 5b

# One virtio-rng request on the device at rbx (virtio 1.2, 3.1.1 and 2.7): queue 0 of 8
# entries at RNG_RINGS, one 64-byte buffer at RNG_BUFFER.
rng_request:
        say msg_rng
        call virtio_negotiate
        jc 2f
        xor ecx, ecx
        mov eax, RNG_RINGS
        call virtio_setup_queue
        # descriptor 0: 64 device-writable bytes at RNG_BUFFER
        mov rdi, RNG_RINGS
        mov qword ptr [rdi], RNG_BUFFER
        mov dword ptr [rdi + 8], 64
        mov word ptr [rdi + 12], 2              # VIRTQ_DESC_F_WRITE
        mov word ptr [rdi + 14], 0
        mov rdi, RNG_RINGS + 0x1000
        mov word ptr [rdi], 0                   # avail flags
        mov word ptr [rdi + 4], 0               # ring[0] = descriptor 0
        mov word ptr [rdi + 2], 1               # avail idx
        call virtio_driver_ok
        jc 2f
        mov dword ptr [rbx + 0x50], 0           # QueueNotify
        # Our VMM serves the queue during the notify exit; poll a little anyway.
        mov rdi, RNG_USED
        mov esi, 1
        call virtio_wait_used
        jc 2f
        cmp dword ptr [rdi + 8], 64             # used len
        jne 2f
        mov rdi, RNG_BUFFER                     # 64 random bytes are not all zero
        mov rax, qword ptr [rdi]
        or rax, qword ptr [rdi + 8]
        or rax, qword ptr [rdi + 16]
        or rax, qword ptr [rdi + 24]
        test rax, rax
        jz 2f
        mov eax, dword ptr [rbx + 0x60]         # InterruptStatus: used buffer
        test eax, 1
        jz 2f
        mov dword ptr [rbx + 0x64], 1           # InterruptACK
        xor eax, eax
        call ok_or_bad
        ret
2:      mov eax, 1
        call ok_or_bad
        ret

# check_table: rsi = table address. Prints "acpi: SIG len 0x... ok|BAD". Keeps rsi.
check_table:
        push rsi
        push rcx
        push rdi
        mov rdi, rsi
        say msg_acpi
        mov rsi, rdi
        mov ecx, 4
1:      mov al, byte ptr [rsi]
        call putc
        inc rsi
        dec ecx
        jnz 1b
        say msg_len
        mov ecx, dword ptr [rdi + 4]
        push rdi
        mov edi, ecx
        call puthex32
        pop rdi
        mov eax, 1
        cmp ecx, 36                     # shorter than a header, or absurdly long: bad
        jb 2f
        cmp ecx, 0x20000
        ja 2f
        mov rsi, rdi
        call sum8
2:      call ok_or_bad
        pop rdi
        pop rcx
        pop rsi
        ret

# ok_or_bad: al = 0 prints " ok\n", else " BAD\n" and counts a failure.
ok_or_bad:
        push rsi
        lea rsi, [rip + msg_ok]
        test al, al
        jz 1f
        inc ebp
        lea rsi, [rip + msg_bad]
1:      call puts
        pop rsi
        ret

# sum8: al = sum of rcx bytes at rsi.
sum8:
        push rsi
        push rcx
        xor eax, eax
1:      test rcx, rcx
        jz 2f
        add al, byte ptr [rsi]
        inc rsi
        dec rcx
        jmp 1b
2:      pop rcx
        pop rsi
        ret

        .include "lib/serial.S"
        .include "lib/virtio_mmio.S"
        .include "lib/power.S"

        .section .rodata
msg_hello:          .asciz "payload: hello from 64-bit mode\n"
msg_rsdp:           .asciz "acpi: RSDP at "
msg_zero_page_rsdp: .asciz "acpi: zero page RSDP address"
msg_no_rsdp:        .asciz "acpi: no RSDP in 0xe0000-0xfffff BAD\n"
msg_acpi:           .asciz "acpi: "
msg_len:            .asciz " len "
msg_virtio:         .asciz "virtio-mmio "
msg_version:        .asciz " version "
msg_device:         .asciz " device "
msg_windows:        .asciz "virtio-mmio windows: "
msg_rng:            .asciz "virtio-rng: request"
msg_failures:       .asciz "payload: failures "
msg_ok:             .asciz " ok\n"
msg_bad:            .asciz " BAD\n"
