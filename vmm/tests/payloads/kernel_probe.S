# The instructions a stock Linux kernel executes early in boot that some /dev/kvm setups (a
# nested KVM that emulates guest code) cannot run. cros_vmm::probe embeds these bytes (built
# from this file with `as` + `objcopy -O binary`; a test checks that they match) and runs them
# as a flat 64-bit payload at 2 MiB. Before each stage it prints a digit on COM1, so the last
# digit names the instruction that failed; 'K' means all ran.
        .intel_syntax noprefix
        .code64
        .globl _start
_start:
        mov dx, 0x3f8
        mov al, '1'                     # stage 1: cmpxchg16b (Linux: percpu/slub cmpxchg_double)
        out dx, al
        lea rdi, [rip + buf]
        xor eax, eax
        xor edx, edx
        xor ebx, ebx
        xor ecx, ecx
        lock cmpxchg16b [rdi]
        mov dx, 0x3f8
        mov al, '2'                     # stage 2: SSE (Linux: FPU init, memcpy variants)
        out dx, al
        mov rax, cr4
        or rax, 0x600                   # OSFXSR | OSXMMEXCPT
        mov cr4, rax
        mov rax, cr0
        and rax, -5                     # clear EM
        or rax, 2                       # set MP
        mov cr0, rax
        pxor xmm0, xmm0
        mov al, '3'                     # stage 3: XSAVE state (Linux: xgetbv/xrstor at FPU init)
        out dx, al
        mov eax, 1
        cpuid
        bt ecx, 26                      # XSAVE supported?
        jnc 1f
        mov rax, cr4
        bts rax, 18                     # OSXSAVE
        mov cr4, rax
        xor ecx, ecx
        xgetbv
1:      mov dx, 0x3f8
        mov al, 'K'
        out dx, al
        mov al, 0xfe                    # i8042 reset: the VM ends
        out 0x64, al
2:      hlt
        jmp 2b
        .balign 16
buf:    .quad 0, 0
