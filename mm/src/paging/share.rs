//! Sharing PD ("PMD") tables between address spaces, the table-level mechanics of
//! Linux's hugetlb PMD sharing (`huge_pmd_share`, `huge_pmd_unshare`, `mm/hugetlb.c`).
//!
//! A PD table maps 1 GiB. Sharing installs another space's PD table into our PDPT entry
//! and bumps the table's `pt_share_count` (additional sharers; 0 = private); unsharing
//! clears our PDPT entry and drops the count. Whoever holds the table when the count is 0
//! is its sole owner and frees it (and what it maps) on unmap or drop. Deciding *when* to
//! share (`want_pmd_share`: `VM_MAYSHARE`, whole aligned 1 GiB inside the VMA, same file
//! offset modulo 1 GiB) is the VMA layer's job; so is serialising sharing changes
//! (Linux: `i_mmap_rwsem` + hugetlb vma lock).

use x86_64::{PhysAddr, VirtAddr};

use super::entry::{Kind, Pte, Table};
use super::tlb::MmuGather;
use super::{Level, MapError, PageSize, PageTableRoot, TABLE_FLAGS, USER_END};
use crate::frame::FrameFlags;

const GIB: u64 = 1 << 30;

fn check_pud_va(va: VirtAddr) -> Result<u64, MapError> {
    let va = va.as_u64();
    if !va.is_multiple_of(GIB) {
        return Err(MapError::Misaligned);
    }
    if va + GIB > USER_END {
        return Err(MapError::OutOfRange);
    }
    Ok(va)
}

impl PageTableRoot {
    /// Our PDPT and the index of `va`'s entry in it, if the PDPT exists.
    fn pdpt_slot(&self, va: u64) -> Option<(Table, usize)> {
        self.slot_for(va, PageSize::Size1G)
    }

    /// Physical address of the PD table covering the 1 GiB around `va`, if there is one
    /// (Linux: `pud_pgtable(*pud)`).
    pub fn pmd_table_at(&self, va: VirtAddr) -> Option<PhysAddr> {
        let (t, i) = self.pdpt_slot(va.as_u64())?;
        match t.load(i).kind(Level::Pdpt) {
            Kind::Table(pa) => Some(pa),
            _ => None,
        }
    }

    /// Calls `f` with the 1 GiB-aligned address of every PD table of the user half that
    /// is shared with another space (validation: a walk of the PML4 and PDPT levels
    /// only).
    pub fn for_each_shared_pmd(&self, mut f: impl FnMut(VirtAddr)) {
        let root = self.root_table();
        for i4 in 0..256 {
            let Kind::Table(pdpt) = root.load(i4).kind(Level::Pml4) else {
                continue;
            };
            // SAFETY: read from a present non-leaf PML4 entry of this space, linked
            // while `&self` is held.
            let t = unsafe { root.child(pdpt) };
            for i3 in 0..512 {
                if let Kind::Table(pd) = t.load(i3).kind(Level::Pdpt)
                    && self
                        .allocator()
                        .meta(pd)
                        .is_some_and(|m| m.pt_share_count() > 0)
                {
                    let va = (i4 as u64) * Level::Pml4.entry_span() + (i3 as u64) * GIB;
                    f(VirtAddr::new(va));
                }
            }
        }
    }

    /// True when the PD table covering `va` is shared with another space.
    pub fn is_pmd_shared(&self, va: VirtAddr) -> bool {
        self.pmd_table_at(va)
            .and_then(|pa| self.allocator().meta(pa))
            .is_some_and(|m| m.pt_share_count() > 0)
    }

    /// Makes the 1 GiB at `va` use the PD table `other` has at `other_va` (Linux:
    /// `huge_pmd_share`; both addresses 1 GiB aligned, the VMA layer checks the file
    /// offsets agree).
    ///
    /// Errors, with nothing changed: `Misaligned`, `OutOfRange`, `WrongAllocator`,
    /// `NotMapped` (other has no PD table there), `AlreadyMapped` (our PDPT entry is in
    /// use), `OutOfMemory` (our PDPT could not be allocated).
    pub fn share_pmd_with(
        &self,
        va: VirtAddr,
        other: &PageTableRoot,
        other_va: VirtAddr,
    ) -> Result<(), MapError> {
        check_pud_va(va)?;
        check_pud_va(other_va)?;
        if !core::ptr::eq(self.allocator(), other.allocator()) {
            return Err(MapError::WrongAllocator);
        }
        let table = other.pmd_table_at(other_va).ok_or(MapError::NotMapped)?;
        // SAFETY: `table` is a PD table linked in `other`, which `&other` keeps alive until we hold our own share; same allocator, checked above.
        unsafe { self.share_pmd_table(va, table) }
    }

    /// Installs the PD table `table` into our PDPT entry for `va` and takes a share of it
    /// (the raw form of [`share_pmd_with`](Self::share_pmd_with)).
    ///
    /// # Safety
    /// `table` is a PD-level table page from this space's allocator, currently linked in
    /// some address space (so it is alive until our share is taken). Installing a page
    /// that is not a PD table would let the CPU interpret arbitrary memory as mappings.
    pub unsafe fn share_pmd_table(&self, va: VirtAddr, table: PhysAddr) -> Result<(), MapError> {
        let va = check_pud_va(va)?;
        let alloc = self.allocator();
        let meta = alloc.meta(table).ok_or(MapError::NotMapped)?;
        if !meta.flags().contains(FrameFlags::PAGETABLE) || !table.as_u64().is_multiple_of(4096) {
            return Err(MapError::NotMapped);
        }
        let root = self.root_table();
        let i4 = Level::Pml4.index(va);
        // PML4 and PDPT entries change under the page_table_lock (Linux: `huge_pmd_share`
        // populates the PUD under `pud_lock`, which is `mm->page_table_lock`). The
        // PDPT page is allocated first: a leaf allocation may run under the lock, but
        // there is no reason to.
        let spare = Table::alloc(alloc)?;
        let _l = self.lock_table(root, Level::Pml4);
        let pdpt = match root.load(i4).kind(Level::Pml4) {
            Kind::Table(pa) => {
                spare.free();
                // SAFETY: `pa` was read from a present non-leaf PML4 entry of this space;
                // upper tables are freed only by teardown of ranges no VMA covers.
                let t = unsafe { root.child(pa) };
                if t.load(Level::Pdpt.index(va)).kind(Level::Pdpt) != Kind::Empty {
                    return Err(MapError::AlreadyMapped);
                }
                t
            }
            Kind::Empty => {
                root.store(i4, Pte(spare.pa().as_u64() | TABLE_FLAGS.bits()));
                spare
            }
            Kind::Leaf(_) => {
                spare.free();
                return Err(MapError::AlreadyMapped);
            }
        };
        meta.pt_share_inc();
        pdpt.store(
            Level::Pdpt.index(va),
            Pte(table.as_u64() | TABLE_FLAGS.bits()),
        );
        Ok(())
    }

    /// Stops sharing the PD table covering the 1 GiB at `va` (Linux: `huge_pmd_unshare`):
    /// clears our PDPT entry, drops the share count and queues a flush of the whole
    /// 1 GiB in `g` (finish it before the table can be reused, Linux's
    /// `huge_pmd_unshare_flush`). Our PDPT stays even if that emptied it, as Linux's
    /// PUD table does: a fault elsewhere in the 512 GiB may be walking into it; the
    /// unmap that follows frees it if no VMA is left under it.
    ///
    /// Returns `Ok(false)` and does nothing when the table is not shared (we are its only
    /// owner: unmap it normally). Errors: `Misaligned`, `OutOfRange`, `NotMapped` (no PD
    /// table there), `WrongAllocator`.
    pub fn unshare_pmd(&self, va: VirtAddr, g: &mut MmuGather) -> Result<bool, MapError> {
        let va = check_pud_va(va)?;
        if !core::ptr::eq(g.allocator(), self.allocator()) {
            return Err(MapError::WrongAllocator);
        }
        let (pdpt, i) = self.pdpt_slot(va).ok_or(MapError::NotMapped)?;
        let Kind::Table(table) = pdpt.load(i).kind(Level::Pdpt) else {
            return Err(MapError::NotMapped);
        };
        let meta = self.allocator().meta(table).ok_or(MapError::NotMapped)?;
        if meta.pt_share_count() == 0 {
            return Ok(false);
        }
        {
            let _l = self.lock_table(pdpt, Level::Pdpt);
            if pdpt.load(i).kind(Level::Pdpt) != Kind::Table(table) {
                return Ok(false);
            }
            pdpt.take(i);
            meta.pt_share_dec();
        }
        g.add_cpus(self.active_cpus());
        g.add_range(va, PageSize::Size2M);
        g.add_range(va + GIB - PageSize::Size2M.bytes(), PageSize::Size2M);
        self.add_cpus_after_clear(g);
        Ok(true)
    }
}
