//! Which page tables this CPU walks: new roots that share the kernel half, the switch
//! to a root and back to the kernel's own tables (Linux: `pgd_alloc`,
//! `switch_mm_irqs_off`, `leave_mm`, `read_cr3_pa`).
//!
//! CR3 itself is written in one place, [`mm::paging::tlb::load_cr3`]: the memory
//! manager's [`PageTableRoot::activate`] needs it too and cannot call into this crate.
//! Address spaces ([`crate::address_space`]) and the page-table test kernel, which
//! runs on bare roots, switch through the functions here. [`map_mmio`] maps device
//! registers (the xAPIC page) uncached into the kernel half.

use mm::paging::{MapError, PageTableRoot};
use x86_64::PhysAddr;
use x86_64::registers::control::Cr3;

use crate::memory;
use crate::percpu::this_cpu;

/// A new, empty page-table root whose kernel half is the kernel's (Linux: `pgd_alloc`,
/// whose `pgd_ctor` copies the kernel's upper PGD entries), so it may be loaded.
pub fn new_root() -> Result<PageTableRoot, MapError> {
    // SAFETY: the kernel PML4 is the live boot page table, reachable through the direct map; its upper-half tables are never freed while the kernel runs.
    unsafe { PageTableRoot::new(memory::frames(), Some(memory::kernel_pml4())) }
}

/// Loads `root` on this CPU and marks it active there (Linux: `switch_mm_irqs_off`).
/// The root loaded before stays marked active on this CPU until its owner calls
/// [`PageTableRoot::deactivate`] or [`switch_to_kernel`] for it.
///
/// # Panics
/// If `root`'s kernel half is not the kernel's (a root made without it, e.g. by
/// `PageTableRoot::new_user_only`): loading it would unmap the running kernel.
///
/// # Safety
/// `root` stays loaded only while it lives: its owner switches this CPU away from it
/// (to another root, or with [`switch_to_kernel`]) and only then deactivates and drops
/// it.
pub unsafe fn switch_to(root: &PageTableRoot) {
    assert_eq!(
        root.kernel_pml4(),
        Some(memory::kernel_pml4()),
        "loading page tables without the kernel half"
    );
    // SAFETY: we run on `this_cpu()`; the kernel half is the kernel's (checked above), so the running kernel stays mapped; the root outlives its time in CR3 (caller's contract).
    unsafe { root.activate(this_cpu()) };
}

/// Loads the kernel's own page tables on this CPU and marks `prev` inactive there
/// (Linux: `switch_mm` to `init_mm`, `leave_mm`). Afterwards no user mapping is
/// reachable from this CPU, so `prev` may be dropped.
pub fn switch_to_kernel(prev: &PageTableRoot) {
    // SAFETY: the boot PML4 maps the whole kernel and is never freed.
    unsafe { mm::paging::tlb::load_cr3(memory::kernel_pml4()) };
    prev.deactivate(this_cpu());
}

/// The physical address of the page-table root loaded in CR3 (Linux: `read_cr3_pa`).
pub fn loaded_root() -> PhysAddr {
    Cr3::read().0.start_address()
}

/// Maps the 4 KiB of MMIO at `pa` into the kernel half, uncached (PCD|PWT), and
/// returns its virtual address (Linux: `ioremap_uc` / `set_fixmap_nocache`).
///
/// The mappings go into one upper-half PML4 slot that the bootloader left empty,
/// taken at the first call. Call it during boot, before any user address space or
/// application processor copies the kernel's PML4: they copy the top-level entries
/// once.
///
/// # Panics
/// If the kernel half has no free PML4 slot or there is no memory for a table.
pub fn map_mmio(pa: PhysAddr) -> x86_64::VirtAddr {
    use core::sync::atomic::{AtomicU64, Ordering};
    use x86_64::structures::paging::PageTableFlags as F;
    // Next free virtual page of the MMIO window (0: not chosen yet).
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let frames = memory::frames();
    let table =
        |pa: u64| frames.phys_to_virt(PhysAddr::new(pa & 0x000f_ffff_ffff_f000)) as *mut u64;
    let pml4 = table(memory::kernel_pml4().as_u64());
    if NEXT.load(Ordering::Relaxed) == 0 {
        let slot = (256..511)
            .rev()
            .find(|&i| {
                // SAFETY: the kernel PML4 is live and reachable through the direct map;
                // `i < 512` keeps the read inside its page (the upper half's entries).
                unsafe { pml4.add(i).read_volatile() == 0 }
            })
            .expect("no free PML4 slot in the kernel half for MMIO");
        NEXT.store(
            0xffff_0000_0000_0000 | (slot as u64) << 39,
            Ordering::Relaxed,
        );
    }
    let va = NEXT.fetch_add(4096, Ordering::Relaxed);
    let inter = (F::PRESENT | F::WRITABLE).bits();
    let mut t = pml4;
    for shift in [39u64, 30, 21] {
        let idx = ((va >> shift) & 511) as usize;
        // SAFETY: `t` is a live page table of the kernel half (the PML4, or a table this function made), reachable through the direct map; an empty entry gets a fresh zeroed table. Boot runs on one CPU, so nobody else edits these tables.
        unsafe {
            let e = t.add(idx);
            if e.read_volatile() & F::PRESENT.bits() == 0 {
                let new = frames
                    .alloc_zeroed(0)
                    .expect("no memory for an MMIO page table");
                e.write_volatile(new.as_u64() | inter);
            }
            t = table(e.read_volatile());
        }
    }
    let leaf =
        F::PRESENT | F::WRITABLE | F::NO_CACHE | F::WRITE_THROUGH | F::NO_EXECUTE | F::GLOBAL;
    // SAFETY: `t` is the page table for `va` (made above); its entry for `va` is unused because the window only grows.
    unsafe {
        t.add(((va >> 12) & 511) as usize)
            .write_volatile(pa.as_u64() | leaf.bits())
    };
    x86_64::VirtAddr::new(va)
}
