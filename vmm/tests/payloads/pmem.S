# Freestanding guest payload: finds the first virtio-pmem device (id 27) among the
# virtio-mmio windows, reads its region's start and size from the config space, prints the
# region's first line, writes "written by the guest" at region offset 4096, and sends one
# FLUSH request through the queue (polling for the response); then resets through the i8042.
# Integer instructions only (see probe.S).

        .intel_syntax noprefix
        .code64
        .include "lib/entry.S"

        .set VIRTIO_ID_PMEM, 27
        .set DESC, 0x300000
        .set AVAIL, 0x301000
        .set USED, 0x302000
        .set REQ, 0x305000
        .set RESP, 0x306000

        payload_entry
        say msg_hello

        mov edi, VIRTIO_ID_PMEM
        call virtio_find_device
        jc no_pmem
        mov r12, qword ptr [rbx + 0x100]        # region start
        mov r13, qword ptr [rbx + 0x108]        # region size
        say msg_region
        mov rdi, r12
        shr rdi, 32
        call puthex32
        mov edi, r12d
        call puthex32
        mov edi, r13d
        say_hex msg_size

        # The region's first line.
        say msg_line
        mov rsi, r12
        call put_first_line

        # Write the message at offset 4096 (dropped by KVM on a read-only region).
        lea rsi, [rip + msg_written]
        lea rdi, [r12 + 4096]
        call copy_string

        # Initialization, then one FLUSH request.
        mov ecx, 1
        mov eax, DESC
        call virtio_start_device
        jc init_failed
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
        mov dword ptr [rbx + 0x50], 0           # QueueNotify
        mov edi, USED
        mov esi, 1
        call virtio_wait_used                   # the response says whether it completed
        mov edi, dword ptr [RESP]
        say_hex msg_flush
        jmp payload_done
init_failed:
        lea rsi, [rip + msg_init_failed]
        jmp payload_failed
no_pmem:
        lea rsi, [rip + msg_no_pmem]
        jmp payload_failed

        .include "lib/serial.S"
        .include "lib/virtio_mmio.S"
        .include "lib/memory.S"
        .include "lib/power.S"

        .section .rodata
msg_hello:        .asciz "payload: virtio-pmem\n"
msg_region:       .asciz "virtio-pmem: region "
msg_size:         .asciz " size "
msg_line:         .asciz "virtio-pmem: first line: "
msg_flush:        .asciz "virtio-pmem: flush response "
msg_no_pmem:      .asciz "virtio-pmem: no device\n"
msg_init_failed:  .asciz "virtio-pmem: initialization failed\n"
msg_written:      .asciz "written by the guest\n"
