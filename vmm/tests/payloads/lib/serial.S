# Serial output on COM1 for the freestanding payloads: `.include "lib/serial.S"` at the end of
# the payload's code (after its last instruction, before its data), so that `_start` stays the
# first byte of .text (the bzImage test enters the flat binary there) and the numeric local
# labels here cannot capture the payload's `1b`/`1f`.
#
# Every routine waits for the transmitter holding register to be empty before each byte (line
# status bit 5), as a driver of a real 16550 must, and keeps every register but the flags.
# Integer instructions only: the nested /dev/kvm on the build machines emulates guest code and
# has no x87/SSE.

        .set COM1, 0x3f8
        .set COM1_LSR, COM1 + 5
        .set LSR_THR_EMPTY, 0x20

        .section .text

# putc: al to COM1.
putc:
        push rdx
        push rax
        mov dx, COM1_LSR
1:      in al, dx
        test al, LSR_THR_EMPTY
        jz 1b
        pop rax
        mov dx, COM1
        out dx, al
        pop rdx
        ret

# puts: the NUL-terminated string at rsi.
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

# put_newline: "\n".
put_newline:
        push rax
        mov al, 10
        call putc
        pop rax
        ret

# puthex32: edi as "0x" and eight lowercase hex digits.
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

# put_labelled_hex: the string at rsi, then edi as puthex32 does, then "\n".
put_labelled_hex:
        call puts
        call puthex32
        jmp put_newline

# put_first_line: the bytes at rsi up to the first "\n" or NUL, 64 at the most, then "\n".
put_first_line:
        push rax
        push rcx
        push rsi
        mov ecx, 64
1:      mov al, byte ptr [rsi]
        cmp al, 10
        je 2f
        test al, al
        je 2f
        call putc
        inc rsi
        dec ecx
        jnz 1b
2:      call put_newline
        pop rsi
        pop rcx
        pop rax
        ret
