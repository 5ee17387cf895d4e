# Guest memory helpers for the freestanding payloads: `.include "lib/memory.S"` at the end of
# the payload's code, as with lib/serial.S. Plain byte loops, without `rep` string
# instructions, like the rest of the payloads' code.

        .section .text

# zero_bytes: ecx bytes at rdi to zero. Keeps every register but the flags.
zero_bytes:
        push rcx
        push rdi
        test ecx, ecx
        jz 2f
1:      mov byte ptr [rdi], 0
        inc rdi
        dec ecx
        jnz 1b
2:      pop rdi
        pop rcx
        ret

# copy_string: the NUL-terminated string at rsi to rdi, without its NUL. Keeps every register
# but the flags.
copy_string:
        push rax
        push rsi
        push rdi
1:      mov al, byte ptr [rsi]
        test al, al
        jz 2f
        mov byte ptr [rdi], al
        inc rsi
        inc rdi
        jmp 1b
2:      pop rdi
        pop rsi
        pop rax
        ret
