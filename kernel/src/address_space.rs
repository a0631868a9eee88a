//! The kernel's side of address spaces (Linux: `struct mm_struct` as the scheduler
//! sees it): making one, and which one each CPU runs in.
//!
//! The address space itself is the memory manager's [`AddressSpace`] (VMA tree, mmap
//! lock, page tables, the syscall-shaped `mmap`/`munmap`/`mprotect`/`mremap`/
//! `madvise`, demand paging), shared in an [`Arc`]. What only the kernel can do is
//! here, as functions: [`new_user_space`] builds one whose page tables share the
//! kernel's upper half; [`activate`] loads it into CR3 (through [`crate::arch::mmu`])
//! and makes it the CPU's current space, whose lower-half faults the page-fault
//! handler resolves ([`crate::fault`]); [`deactivate_current`] switches back to the
//! kernel's own tables. Dropping the last reference tears the lower half down
//! (`exit_mmap`): every VMA, page-table page and mapped frame goes back.
//!
//! Lock order: the memory manager's, written once in `mm::sync`. Never touch user
//! memory through its user address while holding the page-table lock: the fault
//! would need it (`copy_to_user` goes through the direct map instead).

use alloc::sync::Arc;
use mm::errno::Errno;
use mm::mmap::{AddressSpace, ExecArgs, ExecImage, MmLayout};

use crate::arch::mmu;
use crate::memory;
use crate::percpu::{CacheLine, MAX_CPUS, PerCpu, this_cpu};

/// Each CPU's current address space (`None`: only the kernel's tables are loaded).
/// Linux: `cpu_tlbstate.loaded_mm` (and `current->mm`).
///
/// A plain spin lock, not an `IrqSpinLock`: no interrupt handler takes it, and
/// `activate` takes the page-table lock under it, which must not be waited for with
/// interrupts off (the holder may be waiting for our answer to a TLB shootdown; see
/// `mm::sync`).
static CURRENT: PerCpu<spin::Mutex<Option<Arc<AddressSpace>>>> =
    PerCpu::new([const { CacheLine(spin::Mutex::new(None)) }; MAX_CPUS]);

/// A new, empty user address space with `layout` (`MmLayout::default()` is Linux's
/// x86_64 layout), its page tables sharing the kernel's upper half so that it can be
/// loaded (Linux: `mm_alloc` + `pgd_alloc`).
pub fn new_user_space(layout: MmLayout) -> Result<Arc<AddressSpace>, Errno> {
    let (frames, kernel_pml4) = (memory::frames(), memory::kernel_pml4());
    // SAFETY: the kernel PML4 is the live boot page table, reachable through the direct map; its upper-half tables are never freed while the kernel runs.
    let mm = unsafe { AddressSpace::with_kernel_pml4(frames, kernel_pml4, layout) }?;
    Arc::try_new(mm).map_err(|_| Errno::ENOMEM)
}

/// A child of `mm` for a forked task (Linux: `dup_mm`): its VMAs copied, private pages
/// shared copy-on-write, page tables sharing the kernel's upper half as `mm`'s do.
pub fn fork(mm: &Arc<AddressSpace>) -> Result<Arc<AddressSpace>, Errno> {
    Arc::try_new(mm.fork()?).map_err(|_| Errno::ENOMEM)
}

/// exec on this CPU: a new space with `args` on its initial stack, made current, after
/// which the old current space's reference is dropped, tearing it down if it was the
/// last (Linux: `begin_new_exec` → `exec_mmap`: switch first, `mmput(old_mm)` after).
pub fn exec(
    layout: MmLayout,
    args: &ExecArgs<'_>,
) -> Result<(Arc<AddressSpace>, ExecImage), Errno> {
    let mm = new_user_space(layout)?;
    let img = mm.exec_into(args)?;
    activate(&mm);
    Ok((mm, img))
}

/// Makes `mm` the CPU's current space and loads its page tables (Linux: `switch_mm`).
/// The previous space, if any, is deactivated on this CPU.
///
/// # Panics
/// If `mm` was not made by [`new_user_space`]: page tables without the kernel half
/// must never be loaded.
pub fn activate(mm: &Arc<AddressSpace>) {
    let cpu = this_cpu();
    let mut current = CURRENT.get().lock();
    // SAFETY: the space stays alive while `CURRENT` holds its `Arc`, and CR3 leaves it before that `Arc` is dropped: a later `activate` loads another root first, `deactivate_current` the kernel's.
    mm.with_page_tables(|t| unsafe { mmu::switch_to(t) });
    if let Some(prev) = current.replace(mm.clone())
        && !Arc::ptr_eq(&prev, mm)
    {
        prev.with_page_tables(|t| t.deactivate(cpu));
    }
}

/// True if `mm` is the current space of the calling CPU.
pub fn is_current(mm: &Arc<AddressSpace>) -> bool {
    CURRENT
        .get()
        .lock()
        .as_ref()
        .is_some_and(|c| Arc::ptr_eq(c, mm))
}

/// Switches the CPU back to the kernel's own page tables (no user space active).
pub fn deactivate_current() {
    let mut current = CURRENT.get().lock();
    if let Some(prev) = current.take() {
        prev.with_page_tables(mmu::switch_to_kernel);
    }
}

/// The calling CPU's current address space.
pub fn current() -> Option<Arc<AddressSpace>> {
    CURRENT.get().lock().clone()
}

/// Runs `f` on the calling CPU's current address space without taking a reference
/// (Linux: the fault handler's `current->mm`); `None` if there is none. Only this
/// CPU's ordinary context changes its current space, and never while `f` runs (it
/// holds this CPU's entry), so no reference count bounces between CPUs per fault.
/// `f` must not call [`activate`], [`deactivate_current`], [`current`] or
/// [`is_current`].
pub fn with_current<R>(f: impl FnOnce(&AddressSpace) -> R) -> Option<R> {
    let cur = CURRENT.get().lock();
    cur.as_deref().map(f)
}
