//! The page-table root of one address space: the part of Linux's `mm_struct` that owns
//! `pgd`, its CPU mask, and its teardown (Linux: `mm_alloc`/`pgd_alloc`, `mm_cpumask`,
//! `exit_mmap`, `free_pgtables`, `pgd_free`).

use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::{PhysAddr, VirtAddr};

use super::entry::{ENTRIES, Kind, Table};
use super::tlb::{ArchTlb, FlushKind, MmuGather, TlbBackend, flush_kind};
use super::{Level, MapError, PageSize};
use crate::frame::FrameAllocator;

/// Most CPUs the kernel supports (Linux: `NR_CPUS`), and the CPUs the CPU mask can name
/// (a larger index sets every bit: flush everyone). The kernel's per-CPU data uses this
/// same constant.
pub const MAX_CPUS: usize = 64;

/// First PML4 slot of the kernel half.
const KERNEL_PML4_START: usize = 256;

/// The page tables of one address space (Linux: `mm->pgd` with `mm_cpumask(mm)`).
///
/// Owns its PML4 page and every user-half table below it; the kernel half (PML4 slots
/// 256..512) is copied from the kernel's PML4 at creation and never modified or freed.
/// Dropping it frees every user page-table page and drops the reference and map count of
/// every accounted frame it maps, so the allocator's counters return to where they were.
pub struct PageTableRoot {
    alloc: &'static FrameAllocator,
    pml4: PhysAddr,
    /// The PML4 whose kernel half was copied at creation, if any.
    kernel_pml4: Option<PhysAddr>,
    /// Bit `n` set while CPU `n` may have this space loaded (Linux: `mm_cpumask`).
    /// Shared with the space's gathers, which read it again at every flush.
    cpus: Arc<AtomicU64>,
    tlb: ArchTlb,
    /// The lock of the PML4 and PDPT entries (Linux: `mm->page_table_lock`); PD and PT
    /// entries have their table page's own lock (see [`super::ptlock`]).
    pub(super) page_table_lock: crate::sync::Mutex<()>,
}

impl PageTableRoot {
    /// A new address space (Linux: `pgd_alloc` + `pgd_ctor`, which copies the kernel's
    /// upper PGD entries so every space shares the kernel's lower-level tables).
    ///
    /// With `kernel_pml4 = None` the kernel half is empty (host tests, or a space that is
    /// never loaded). Fails only with `OutOfMemory`.
    ///
    /// # Safety
    /// `kernel_pml4`, if given, is a PML4 page readable through `alloc`'s direct map, and
    /// the tables its upper half points at stay alive (never freed) for as long as this
    /// space exists: they are shared, not owned.
    pub unsafe fn new(
        alloc: &'static FrameAllocator,
        kernel_pml4: Option<PhysAddr>,
    ) -> Result<Self, MapError> {
        let tlb = ArchTlb::try_new().ok_or(MapError::OutOfMemory)?;
        let cpus = Arc::try_new(AtomicU64::new(0)).map_err(|_| MapError::OutOfMemory)?;
        let root = Table::alloc(alloc)?;
        let kernel_pml4 = kernel_pml4.map(|kpa| kpa.align_down(4096u64));
        if let Some(kpa) = kernel_pml4 {
            // SAFETY: the caller vouches that `kernel_pml4` is a live PML4 reachable through the direct map; we only read it.
            let k = unsafe { Table::from_phys(alloc, kpa) };
            for i in KERNEL_PML4_START..ENTRIES {
                root.store(i, k.load(i));
            }
        }
        Ok(Self {
            alloc,
            pml4: root.pa(),
            kernel_pml4,
            cpus,
            tlb,
            page_table_lock: crate::sync::Mutex::new(
                crate::sync::lockdep::LockClass::PageTable,
                (),
            ),
        })
    }

    /// A space with an empty kernel half (safe: nothing foreign is read or shared).
    pub fn new_user_only(alloc: &'static FrameAllocator) -> Result<Self, MapError> {
        // SAFETY: `new`'s contract concerns the kernel PML4 it copies from; with `None`
        // none is read or shared.
        unsafe { Self::new(alloc, None) }
    }

    /// Physical address of the PML4, for CR3.
    pub fn root_phys(&self) -> PhysAddr {
        self.pml4
    }

    /// The PML4 whose kernel half this root shares (`None`: an empty kernel half, so it
    /// must never be loaded).
    pub fn kernel_pml4(&self) -> Option<PhysAddr> {
        self.kernel_pml4
    }

    /// The frame allocator the tables come from.
    pub fn allocator(&self) -> &'static FrameAllocator {
        self.alloc
    }

    /// The TLB backend (host: the recording log).
    pub fn tlb(&self) -> &ArchTlb {
        &self.tlb
    }

    pub(super) fn root_table(&self) -> Table {
        // SAFETY: the PML4 is allocated in `new` and freed only in `drop`.
        unsafe { Table::from_phys(self.alloc, self.pml4) }
    }

    /// CPUs that may have this space loaded (Linux: `mm_cpumask`).
    pub fn active_cpus(&self) -> u64 {
        self.cpus.load(Ordering::Acquire)
    }

    /// The live CPU mask itself, for a gather to read again at each flush.
    pub(super) fn cpu_mask(&self) -> Arc<AtomicU64> {
        self.cpus.clone()
    }

    fn cpu_bit(cpu: usize) -> u64 {
        if cpu < MAX_CPUS { 1 << cpu } else { u64::MAX }
    }

    /// Marks the space active on `cpu` and loads CR3 there (Linux: `switch_mm_irqs_off`,
    /// which sets the `mm_cpumask` bit before the CR3 write so a concurrent flusher
    /// includes us). PCIDs are not used, so the load flushes all non-global entries. On
    /// the host the load is only recorded.
    ///
    /// # Safety
    /// Kernel target: must run on CPU `cpu`; the kernel half of this PML4 must map the
    /// running kernel; the space must stay alive until another space is activated on
    /// `cpu` and [`deactivate`](Self::deactivate) is called for it.
    pub unsafe fn activate(&self, cpu: usize) {
        self.cpus.fetch_or(Self::cpu_bit(cpu), Ordering::SeqCst);
        // SAFETY: `load_root` needs a PML4 whose kernel half maps the running kernel and
        // that stays alive while loaded: our caller vouches for both (this function's
        // contract), and `self.pml4` is this space's own root, freed only with it.
        unsafe { self.tlb.load_root(cpu, self.pml4) };
    }

    /// Clears `cpu` from the CPU mask after the CPU switched to another space.
    pub fn deactivate(&self, cpu: usize) {
        self.cpus.fetch_and(!Self::cpu_bit(cpu), Ordering::AcqRel);
    }

    /// Flushes one page on the CPUs using this space (Linux: `flush_tlb_page`).
    pub fn flush_page(&self, va: VirtAddr) {
        let kind = FlushKind::Pages {
            start: va.align_down(4096u64),
            count: 1,
            stride: PageSize::Size4K,
        };
        self.tlb.flush(self.active_cpus(), kind);
    }

    /// Flushes `start..end` with Linux's policy: per page up to
    /// [`TLB_SINGLE_PAGE_FLUSH_CEILING`](super::TLB_SINGLE_PAGE_FLUSH_CEILING) pages of
    /// `stride`, else everything (Linux: `flush_tlb_mm_range`).
    pub fn flush_range(&self, start: VirtAddr, end: VirtAddr, stride: PageSize) {
        if start < end {
            let kind = flush_kind(start.as_u64(), end.as_u64(), stride, false);
            self.tlb.flush(self.active_cpus(), kind);
        }
    }

    /// Flushes all non-global entries (Linux: `flush_tlb_mm`).
    pub fn flush_all(&self) {
        self.tlb
            .flush(self.active_cpus(), FlushKind::All { global: false });
    }

    /// Tears down the user half under `table` (at `level`), freeing through `g`.
    fn free_level(&self, table: Table, level: Level, base: u64, g: &mut MmuGather) {
        for i in 0..ENTRIES {
            let va = base + i as u64 * level.entry_span();
            match table.load(i).kind(level) {
                Kind::Empty => {}
                Kind::Leaf(size) => {
                    let old = table.take(i);
                    g.remove_leaf(va, size, old);
                }
                Kind::Table(pa) => {
                    // SAFETY: read from a present non-leaf entry that stays linked until we clear it below.
                    let child = unsafe { table.child(pa) };
                    let lower = level.lower().expect("tables only above the PT");
                    if lower == Level::Pd && child.share_count() > 0 {
                        // Someone else still uses this PD table: just drop our share
                        // (Linux: huge_pmd_unshare during exit).
                        table.take(i);
                        if let Some(m) = self.alloc.meta(pa) {
                            m.pt_share_dec();
                        }
                        continue;
                    }
                    self.free_level(child, lower, va, g);
                    table.take(i);
                    g.remove_table(va, pa);
                }
            }
        }
    }
}

impl Drop for PageTableRoot {
    /// Linux: `exit_mmap` (unmap everything with a full-mm gather) + `free_pgtables` +
    /// `pgd_free`. The kernel half is left alone.
    fn drop(&mut self) {
        if self.active_cpus() != 0 {
            // Freeing a PML4 some CPU may still have in CR3 would let the hardware walk
            // freed memory; leaking is the safe choice.
            log::error!(
                "paging: dropping address space {:#x} still active on CPUs {:#x}; leaking it",
                self.pml4.as_u64(),
                self.active_cpus()
            );
            return;
        }
        let root = self.root_table();
        let mut g = MmuGather::with(self.alloc, self.tlb.clone(), None, true);
        for i in 0..KERNEL_PML4_START {
            let va = i as u64 * Level::Pml4.entry_span();
            if let Kind::Table(pa) = root.load(i).kind(Level::Pml4) {
                // SAFETY: present PML4 entry of our user half, kept linked until cleared.
                let child = unsafe { root.child(pa) };
                self.free_level(child, Level::Pdpt, va, &mut g);
                root.take(i);
                g.remove_table(va, pa);
            }
        }
        g.finish();
        root.free();
    }
}
