# virtio-mmio driver steps shared by the freestanding payloads (virtio 1.2, 4.2.2 registers and
# 3.1.1 initialization): `.include "lib/virtio_mmio.S"` at the end of the payload's code, as
# with lib/serial.S. The device is the window at rbx throughout.
#
# Our VMM places virtio-mmio windows of 0x1000 bytes from 0xd0000000, without gaps: the first
# window without the magic value ends the list. Queues have 8 entries with their rings in one
# 12 KiB area below 4 GiB (see virtio_setup_queue). Only VIRTIO_F_VERSION_1 is negotiated.
# Routines report failure in the carry flag and keep every other register unless they say so.

        .set VIRTIO_MMIO_BASE, 0xd0000000
        .set VIRTIO_MMIO_STRIDE, 0x1000
        .set VIRTIO_MMIO_MAX_WINDOWS, 16
        .set VIRTIO_MMIO_MAGIC, 0x74726976              # "virt"

        .set VIRTIO_MMIO_MAGIC_VALUE, 0x00
        .set VIRTIO_MMIO_DEVICE_ID, 0x08
        .set VIRTIO_MMIO_DRIVER_FEATURES, 0x20
        .set VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0x24
        .set VIRTIO_MMIO_QUEUE_SEL, 0x30
        .set VIRTIO_MMIO_QUEUE_NUM, 0x38
        .set VIRTIO_MMIO_QUEUE_READY, 0x44
        .set VIRTIO_MMIO_STATUS, 0x70
        .set VIRTIO_MMIO_QUEUE_DESC_LOW, 0x80
        .set VIRTIO_MMIO_QUEUE_DESC_HIGH, 0x84
        .set VIRTIO_MMIO_QUEUE_DRIVER_LOW, 0x90
        .set VIRTIO_MMIO_QUEUE_DRIVER_HIGH, 0x94
        .set VIRTIO_MMIO_QUEUE_DEVICE_LOW, 0xa0
        .set VIRTIO_MMIO_QUEUE_DEVICE_HIGH, 0xa4

        .set VIRTIO_STATUS_ACKNOWLEDGE, 1
        .set VIRTIO_STATUS_DRIVER, 2
        .set VIRTIO_STATUS_DRIVER_OK, 4
        .set VIRTIO_STATUS_FEATURES_OK, 8
        .set VIRTIO_STATUS_DEVICE_NEEDS_RESET, 0x40
        .set VIRTIO_STATUS_FAILED, 0x80

        .set VIRTQ_SIZE, 8
        .set VIRTQ_AVAIL_OFFSET, 0x1000
        .set VIRTQ_USED_OFFSET, 0x2000
        .set VIRTQ_AREA_STRIDE, 0x4000                  # queue n's area in virtio_start_device
        # Polls of a used ring before giving up: the device thread may run on another host CPU.
        .set VIRTQ_POLLS, 10000000

        .section .text

# virtio_find_device: edi = device id. Found: rbx = the first window with that device, CF
# clear. Not found: CF set, rbx clobbered.
virtio_find_device:
        push rcx
        mov rbx, VIRTIO_MMIO_BASE
        xor ecx, ecx
1:      cmp ecx, VIRTIO_MMIO_MAX_WINDOWS
        jae 2f
        cmp dword ptr [rbx + VIRTIO_MMIO_MAGIC_VALUE], VIRTIO_MMIO_MAGIC
        jne 2f
        cmp dword ptr [rbx + VIRTIO_MMIO_DEVICE_ID], edi
        je 3f
        add rbx, VIRTIO_MMIO_STRIDE
        inc ecx
        jmp 1b
2:      pop rcx
        stc
        ret
3:      pop rcx
        clc
        ret

# virtio_negotiate: resets the device and takes it through ACKNOWLEDGE and DRIVER to
# FEATURES_OK with VIRTIO_F_VERSION_1 (bit 32) as the only driver feature. CF set when the
# device did not keep FEATURES_OK; the config space is readable either way.
virtio_negotiate:
        mov dword ptr [rbx + VIRTIO_MMIO_STATUS], 0
        mov dword ptr [rbx + VIRTIO_MMIO_STATUS], VIRTIO_STATUS_ACKNOWLEDGE
        mov dword ptr [rbx + VIRTIO_MMIO_STATUS], VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER
        mov dword ptr [rbx + VIRTIO_MMIO_DRIVER_FEATURES_SEL], 1
        mov dword ptr [rbx + VIRTIO_MMIO_DRIVER_FEATURES], 1
        mov dword ptr [rbx + VIRTIO_MMIO_STATUS], VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK
        test dword ptr [rbx + VIRTIO_MMIO_STATUS], VIRTIO_STATUS_FEATURES_OK
        jnz 1f
        stc
1:      ret

# virtio_setup_queue: ecx = queue index, eax = ring area (below 4 GiB): the descriptor table
# at eax, the available ring at eax + VIRTQ_AVAIL_OFFSET, the used ring at
# eax + VIRTQ_USED_OFFSET. Sets VIRTQ_SIZE entries and QueueReady.
virtio_setup_queue:
        push rax
        mov dword ptr [rbx + VIRTIO_MMIO_QUEUE_SEL], ecx
        mov dword ptr [rbx + VIRTIO_MMIO_QUEUE_NUM], VIRTQ_SIZE
        mov dword ptr [rbx + VIRTIO_MMIO_QUEUE_DESC_LOW], eax
        mov dword ptr [rbx + VIRTIO_MMIO_QUEUE_DESC_HIGH], 0
        add eax, VIRTQ_AVAIL_OFFSET
        mov dword ptr [rbx + VIRTIO_MMIO_QUEUE_DRIVER_LOW], eax
        mov dword ptr [rbx + VIRTIO_MMIO_QUEUE_DRIVER_HIGH], 0
        add eax, VIRTQ_USED_OFFSET - VIRTQ_AVAIL_OFFSET
        mov dword ptr [rbx + VIRTIO_MMIO_QUEUE_DEVICE_LOW], eax
        mov dword ptr [rbx + VIRTIO_MMIO_QUEUE_DEVICE_HIGH], 0
        mov dword ptr [rbx + VIRTIO_MMIO_QUEUE_READY], 1
        pop rax
        ret

# virtio_driver_ok: sets DRIVER_OK after virtio_negotiate. CF set when the device then reports
# DEVICE_NEEDS_RESET or FAILED.
virtio_driver_ok:
        mov dword ptr [rbx + VIRTIO_MMIO_STATUS], VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK
        test dword ptr [rbx + VIRTIO_MMIO_STATUS], VIRTIO_STATUS_DEVICE_NEEDS_RESET | VIRTIO_STATUS_FAILED
        jz 1f
        stc
1:      ret

# virtio_start_device: ecx = how many queues, eax = their ring areas: queue n's at
# eax + n * VIRTQ_AREA_STRIDE (see virtio_setup_queue). virtio_negotiate, virtio_setup_queue
# for each queue, virtio_driver_ok. CF set when negotiation or DRIVER_OK failed.
virtio_start_device:
        call virtio_negotiate
        jc 2f
        push rax
        push rcx
        push rdx
        mov edx, ecx
        xor ecx, ecx
1:      cmp ecx, edx
        jae 3f
        call virtio_setup_queue
        add eax, VIRTQ_AREA_STRIDE
        inc ecx
        jmp 1b
3:      pop rdx
        pop rcx
        pop rax
        jmp virtio_driver_ok
2:      ret

# virtio_wait_used: rdi = a used ring, si = the idx to wait for. Polls the ring's idx up to
# VIRTQ_POLLS times. CF clear when it reached si, set when it did not.
virtio_wait_used:
        push rcx
        mov ecx, VIRTQ_POLLS
1:      cmp word ptr [rdi + 2], si
        je 2f
        dec ecx
        jnz 1b
        stc
2:      pop rcx
        ret
