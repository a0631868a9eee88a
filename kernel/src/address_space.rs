//! Address spaces (Linux: `struct mm_struct`) and the one each CPU runs in.
//!
//! An [`AddressSpace`] is the memory manager's [`mm::mmap::AddressSpace`] (VMA tree,
//! mmap lock, page tables, the syscall-shaped `mmap`/`munmap`/`mprotect`/`mremap`/
//! `madvise`, demand paging) plus what only the kernel can do: load it into CR3 and
//! make it a CPU's current space, whose lower-half faults the page-fault handler
//! resolves. Its page tables share the kernel's upper half. Dropping the last
//! reference tears the lower half down (`exit_mmap`): every VMA, page-table page and
//! mapped frame goes back.
//!
//! Lock order: the memory manager's, written once in `mm::sync`. Never touch user
//! memory through its user address while holding the page-table lock: the fault
//! would need it (`copy_to_user` goes through the direct map instead).

use alloc::sync::Arc;
use core::ops::Deref;
use mm::errno::Errno;
use mm::mmap::MmLayout;
use mm::paging::PageTableRoot;
use mm::sync::IrqSpinLock;
use x86_64::PhysAddr;
use x86_64::registers::control::Cr3;
use x86_64::structures::paging::PhysFrame;

use crate::memory;
use crate::percpu::{MAX_CPUS, PerCpu, this_cpu};

/// A user address space.
pub struct AddressSpace {
    inner: mm::mmap::AddressSpace,
}

/// Each CPU's current address space (`None`: only the kernel's tables are loaded).
static CURRENT: PerCpu<IrqSpinLock<Option<Arc<AddressSpace>>>> =
    PerCpu::new([const { IrqSpinLock::new(None) }; MAX_CPUS]);

impl AddressSpace {
    /// A new, empty address space sharing the kernel's upper half, with Linux's
    /// default x86_64 layout.
    pub fn new() -> Result<Arc<Self>, Errno> {
        Self::with_layout(MmLayout::default())
    }

    /// As [`AddressSpace::new`], with a custom layout (tests, exec).
    pub fn with_layout(layout: MmLayout) -> Result<Arc<Self>, Errno> {
        // SAFETY: the kernel PML4 is the live boot page table, reachable through the direct map; its upper-half tables are never freed while the kernel runs.
        let inner = unsafe {
            mm::mmap::AddressSpace::with_kernel_pml4(
                memory::frames(),
                memory::kernel_pml4(),
                layout,
            )
        }?;
        Ok(Arc::new(Self { inner }))
    }

    /// Runs `f` with the page tables locked (Linux: `mm->page_table_lock`).
    pub fn with_tables<R>(&self, f: impl FnOnce(&mut PageTableRoot) -> R) -> R {
        self.inner.with_page_tables(f)
    }

    /// Makes this space the CPU's current one and loads its page tables
    /// (Linux: `switch_mm`). The previous space, if any, is deactivated.
    pub fn activate(self: &Arc<Self>) {
        let cpu = this_cpu();
        let mut current = CURRENT.get().lock();
        // SAFETY: we run on `cpu`; the upper half of this PML4 is the kernel's (copied from the boot PML4), so the running kernel stays mapped; the space stays alive while `CURRENT` holds its `Arc`, and is deactivated before that `Arc` is dropped (below and in `deactivate_current`).
        self.with_tables(|t| unsafe { t.activate(cpu) });
        if let Some(prev) = current.replace(self.clone())
            && !Arc::ptr_eq(&prev, self)
        {
            prev.with_tables(|t| t.deactivate(cpu));
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

impl Deref for AddressSpace {
    type Target = mm::mmap::AddressSpace;
    fn deref(&self) -> &Self::Target {
        &self.inner
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
        prev.with_tables(|t| t.deactivate(cpu));
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
