//! Address spaces (Linux: `struct mm_struct`) and the one each CPU runs in.
//!
//! An [`AddressSpace`] owns a page-table root whose upper half is the kernel's
//! (shared into every space) and whose lower half is its own. Activating a space
//! makes it the CPU's current one and loads CR3; the page-fault handler resolves
//! lower-half faults against the current space. Dropping the last reference tears
//! the lower half down: every page-table page and every mapped frame goes back to
//! the frame allocator.
//!
//! Lock order (Linux's, the part that exists so far): the mmap lock (with the VMA
//! tree) → page-table lock ([`AddressSpace::tables`], an [`IrqSpinLock`]). Never touch
//! user memory while holding the page-table lock: the fault would need it.

use alloc::sync::Arc;
use mm::paging::{MapError, PageTableRoot};
use mm::sync::IrqSpinLock;
use x86_64::PhysAddr;
use x86_64::registers::control::Cr3;
use x86_64::structures::paging::PhysFrame;

use crate::memory;
use crate::percpu::{MAX_CPUS, PerCpu, this_cpu};

/// A user address space.
pub struct AddressSpace {
    /// The page tables (Linux: `mm->pgd` under `mm->page_table_lock`).
    tables: IrqSpinLock<PageTableRoot>,
}

/// Each CPU's current address space (`None`: only the kernel's tables are loaded).
static CURRENT: PerCpu<IrqSpinLock<Option<Arc<AddressSpace>>>> =
    PerCpu::new([const { IrqSpinLock::new(None) }; MAX_CPUS]);

impl AddressSpace {
    /// A new, empty address space sharing the kernel's upper half.
    pub fn new() -> Result<Arc<Self>, MapError> {
        // SAFETY: the kernel PML4 is the live boot page table, reachable through the
        // direct map; its upper-half tables are never freed while the kernel runs.
        let tables = unsafe { PageTableRoot::new(memory::frames(), Some(memory::kernel_pml4())) }?;
        Ok(Arc::new(Self {
            tables: IrqSpinLock::new(tables),
        }))
    }

    /// Runs `f` with the page tables locked (Linux: `spin_lock(&mm->page_table_lock)`).
    pub fn with_tables<R>(&self, f: impl FnOnce(&mut PageTableRoot) -> R) -> R {
        f(&mut self.tables.lock())
    }

    /// Makes this space the CPU's current one and loads its page tables
    /// (Linux: `switch_mm`). The previous space, if any, is deactivated.
    pub fn activate(self: &Arc<Self>) {
        let cpu = this_cpu();
        let mut current = CURRENT.get().lock();
        {
            let tables = self.tables.lock();
            // SAFETY: we run on `cpu`; the upper half of this PML4 is the kernel's
            // (copied from the boot PML4), so the running kernel stays mapped; the
            // space stays alive while `CURRENT` holds its `Arc`, and is deactivated
            // before that `Arc` is dropped (below and in `deactivate_current`).
            unsafe { tables.activate(cpu) };
        }
        if let Some(prev) = current.replace(self.clone()) {
            if !Arc::ptr_eq(&prev, self) {
                prev.tables.lock().deactivate(cpu);
            }
        }
    }

    /// True if this space is the current one of the calling CPU.
    pub fn is_current(self: &Arc<Self>) -> bool {
        CURRENT
            .get()
            .lock()
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, self))
    }
}

/// Switches the CPU back to the kernel's own page tables (no user space active).
pub fn deactivate_current() {
    let cpu = this_cpu();
    let mut current = CURRENT.get().lock();
    if let Some(prev) = current.take() {
        let kernel = PhysFrame::containing_address(memory::kernel_pml4());
        let (_, flags) = Cr3::read();
        // SAFETY: the boot PML4 maps the whole kernel and stays alive forever.
        unsafe { Cr3::write(kernel, flags) };
        prev.tables.lock().deactivate(cpu);
    }
}

/// The calling CPU's current address space.
pub fn current() -> Option<Arc<AddressSpace>> {
    CURRENT.get().lock().clone()
}

/// The physical address of the page-table root loaded in CR3.
pub fn loaded_root() -> PhysAddr {
    Cr3::read().0.start_address()
}
