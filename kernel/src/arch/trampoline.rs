//! The application processors' way from real mode to the kernel (Linux:
//! `arch/x86/realmode/rm/trampoline_64.S`, `arch/x86/kernel/smpboot.c`'s
//! `do_boot_cpu` and `wakeup_secondary_cpu_via_init`).
//!
//! A STARTUP IPI starts an AP in 16-bit real mode at `vector * 4096`, so the first
//! instructions must sit in a page below 1 MiB. The code below is position
//! independent: it finds its own base from CS, and the few absolute addresses it needs
//! (the GDT base, the far-jump targets, the parameter block) are patched into the copy
//! at run time. It goes real mode → protected mode (its own flat GDT) → long mode on a
//! temporary PML4 that maps the trampoline's 2 MiB identity and shares the kernel's
//! upper half (Linux: `trampoline_pgd`), then jumps to [`ap_entry64`] in the kernel's
//! upper half, which loads the kernel's own CR3, so the identity mapping is gone as soon
//! as the AP runs Rust; the temporary tables live in the reserved low pages and are
//! never used once every AP is up.
//!
//! Layout of the reserved area (`memory::trampoline_area`): page 0 the code and its
//! parameter block, page 1 the PML4, page 2 the PDPT, page 3 the PD (one 2 MiB page at
//! physical 0).

use core::arch::global_asm;
use core::sync::atomic::AtomicU64;
use x86_64::PhysAddr;

use crate::memory;

global_asm!(
    ".pushsection .text.ap_trampoline, \"ax\"",
    ".code16",
    ".global ap_tramp_start",
    "ap_tramp_start:",
    "    cli",
    "    cld",
    "    mov %cs, %ax",
    "    mov %ax, %ds",
    // esi = the page's linear address, kept in a register across the mode switches.
    "    xor %esi, %esi",
    "    mov %ax, %si",
    "    shl $4, %esi",
    "    lgdtl ap_tramp_gdtr - ap_tramp_start",
    "    mov %cr0, %eax",
    "    or $1, %eax",
    "    mov %eax, %cr0",
    // ljmpl $0x08, $<patched: base + ap_tramp_pm>
    "    .byte 0x66, 0xea",
    ".global ap_tramp_pm_target",
    "ap_tramp_pm_target:",
    "    .long 0",
    "    .word 0x08",
    ".code32",
    "ap_tramp_pm:",
    "    mov $0x10, %ax",
    "    mov %ax, %ds",
    "    mov %ax, %es",
    "    mov %ax, %ss",
    "    mov %cr4, %eax",
    "    or $0x20, %eax", // PAE
    "    mov %eax, %cr4",
    "    mov (ap_tramp_cr3 - ap_tramp_start)(%esi), %eax",
    "    mov %eax, %cr3",
    "    mov $0xc0000080, %ecx", // EFER
    "    rdmsr",
    "    or $0x900, %eax", // LME | NXE (the kernel's tables use NX)
    "    wrmsr",
    "    mov %cr0, %eax",
    "    and $0x9fffffff, %eax", // caches on: CD and NW off
    "    or $0x80010001, %eax",  // PG | WP | PE
    "    mov %eax, %cr0",
    // ljmp $0x18, $<patched: base + ap_tramp_lm>
    "    .byte 0xea",
    ".global ap_tramp_lm_target",
    "ap_tramp_lm_target:",
    "    .long 0",
    "    .word 0x18",
    ".code64",
    "ap_tramp_lm:",
    "    xor %eax, %eax",
    "    mov %ax, %ds",
    "    mov %ax, %es",
    "    mov %ax, %ss",
    "    mov %ax, %fs",
    "    mov %ax, %gs",
    "    mov %esi, %esi",
    "    mov (ap_tramp_stack - ap_tramp_start)(%rsi), %rsp",
    "    mov (ap_tramp_arg - ap_tramp_start)(%rsi), %rdi",
    "    mov (ap_tramp_kcr3 - ap_tramp_start)(%rsi), %rdx",
    "    mov (ap_tramp_entry - ap_tramp_start)(%rsi), %rax",
    "    jmp *%rax",
    "    .balign 8",
    ".global ap_tramp_gdt",
    "ap_tramp_gdt:",
    "    .quad 0",
    "    .quad 0x00cf9a000000ffff", // 0x08: 32-bit code
    "    .quad 0x00cf92000000ffff", // 0x10: data
    "    .quad 0x00af9a000000ffff", // 0x18: 64-bit code
    ".global ap_tramp_gdtr",
    "ap_tramp_gdtr:",
    "    .word 4 * 8 - 1",
    "    .long 0", // patched: base + ap_tramp_gdt
    "    .balign 8",
    ".global ap_tramp_params",
    "ap_tramp_params:",
    "ap_tramp_cr3:",
    "    .quad 0",
    "ap_tramp_kcr3:",
    "    .quad 0",
    "ap_tramp_stack:",
    "    .quad 0",
    "ap_tramp_entry:",
    "    .quad 0",
    "ap_tramp_arg:",
    "    .quad 0",
    ".global ap_tramp_end",
    "ap_tramp_end:",
    ".popsection",
    // The upper-half landing: switch to the kernel's page tables (this code is mapped
    // in both), then call the Rust entry on the AP's own stack.
    ".pushsection .text.ap_entry64, \"ax\"",
    ".global ap_entry64",
    "ap_entry64:",
    "    mov %rdx, %cr3",
    "    xor %ebp, %ebp",
    "    call {entry}",
    "    ud2",
    ".popsection",
    entry = sym crate::smp::ap_main,
    options(att_syntax)
);

unsafe extern "C" {
    static ap_tramp_start: u8;
    static ap_tramp_pm_target: u8;
    static ap_tramp_lm_target: u8;
    static ap_tramp_gdt: u8;
    static ap_tramp_gdtr: u8;
    static ap_tramp_params: u8;
    static ap_tramp_end: u8;
    fn ap_entry64();
}

/// Offset of `sym` from the trampoline's start.
fn offset(sym: *const u8) -> usize {
    sym as usize - &raw const ap_tramp_start as usize
}

/// The parameter block at the end of the trampoline, in the order of the assembly.
#[repr(C)]
struct Params {
    /// The temporary PML4 (below 4 GiB: loaded from 32-bit code).
    cr3: u64,
    /// The kernel's PML4, loaded by `ap_entry64`.
    kernel_cr3: u64,
    /// Top of the AP's kernel stack.
    stack: u64,
    /// `ap_entry64`.
    entry: u64,
    /// The AP's CPU index (first argument of `smp::ap_main`).
    arg: u64,
}

/// CR4 of the boot CPU, which every AP copies (PGE, OSFXSR, … as the boot CPU has them).
pub static BSP_CR4: AtomicU64 = AtomicU64::new(0);

/// Copies the trampoline into the low area at `area`, builds the temporary page
/// tables there and fills the fixed part of the parameter block (Linux:
/// `setup_real_mode`). Returns the STARTUP vector (the code page's number).
pub fn install(area: PhysAddr) -> u8 {
    let frames = memory::frames();
    let base = area.as_u64();
    assert!(base + 4 * 4096 <= 0x10_0000 && base.is_multiple_of(4096));
    let page = |i: u64| frames.phys_to_virt(PhysAddr::new(base + i * 4096));
    let len = offset(&raw const ap_tramp_end);
    assert!(len + 64 <= 4096, "trampoline too large");
    // SAFETY: the four pages at `area` are reserved low memory (`memory::trampoline_area`), owned by this module and reachable through the direct map; the source is the trampoline's bytes in the kernel image.
    unsafe {
        core::ptr::copy_nonoverlapping(&raw const ap_tramp_start, page(0), len);
        let patch32 = |sym: *const u8, value: u64| {
            (page(0).add(offset(sym)) as *mut u32).write_unaligned(value as u32)
        };
        patch32(&raw const ap_tramp_pm_target, base + (len_of_pm() as u64));
        patch32(&raw const ap_tramp_lm_target, base + (len_of_lm() as u64));
        patch32(
            (&raw const ap_tramp_gdtr).add(2),
            base + offset(&raw const ap_tramp_gdt) as u64,
        );
        // Temporary tables: PML4[0] → PDPT[0] → PD[0] = 2 MiB identity at 0; the kernel
        // half copied from the kernel's PML4.
        for i in 1..4 {
            core::ptr::write_bytes(page(i), 0, 4096);
        }
        let pml4 = page(1) as *mut u64;
        let pdpt = page(2) as *mut u64;
        let pd = page(3) as *mut u64;
        const P_W: u64 = 0b11;
        const HUGE: u64 = 1 << 7;
        pml4.write((base + 2 * 4096) | P_W);
        pdpt.write((base + 3 * 4096) | P_W);
        pd.write(HUGE | P_W);
        let kernel = frames.phys_to_virt(memory::kernel_pml4()) as *const u64;
        for i in 256..512 {
            pml4.add(i).write(kernel.add(i).read());
        }
        let params = params(area);
        (*params).cr3 = base + 4096;
        (*params).kernel_cr3 = memory::kernel_pml4().as_u64();
        (*params).entry = ap_entry64 as *const () as u64;
    }
    (base >> 12) as u8
}

/// Offsets of the 32- and 64-bit parts: just past each far jump's 6-byte operand.
fn len_of_pm() -> usize {
    offset(&raw const ap_tramp_pm_target) + 6
}
fn len_of_lm() -> usize {
    offset(&raw const ap_tramp_lm_target) + 6
}

fn params(area: PhysAddr) -> *mut Params {
    let p = memory::frames().phys_to_virt(area);
    // SAFETY: the parameter block is inside the first page of the area (checked in `install`).
    unsafe { p.add(offset(&raw const ap_tramp_params)) as *mut Params }
}

/// Sets the per-AP part of the parameter block before an AP is started: its stack
/// top and CPU index.
pub fn prepare(area: PhysAddr, stack_top: u64, cpu: usize) {
    let p = params(area);
    // SAFETY: `p` is the installed parameter block; no AP reads it now (the previous AP finished with it before it reported online, and the next one is started after this write).
    unsafe {
        (&raw mut (*p).stack).write_volatile(stack_top);
        (&raw mut (*p).arg).write_volatile(cpu as u64);
    }
}
