//! Which page tables this CPU walks: new roots that share the kernel half, the switch
//! to a root and back to the kernel's own tables (Linux: `pgd_alloc`,
//! `switch_mm_irqs_off`, `leave_mm`, `read_cr3_pa`).
//!
//! CR3 itself is written in one place, [`mm::paging::tlb::load_cr3`]: the memory
//! manager's [`PageTableRoot::activate`] needs it too and cannot call into this crate.
//! Address spaces ([`crate::address_space`]) and the page-table test kernel, which
//! runs on bare roots, switch through the functions here.

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
