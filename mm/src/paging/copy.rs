//! Copying a range of one space's leaves into another (fork) and moving leaves within a
//! space (exec's stack relocation).
//!
//! Linux: `mm/memory.c` (`copy_page_range` → `copy_pte_range` → `copy_present_pte` /
//! `__copy_present_ptes`, and `copy_huge_pmd` for a huge leaf), `mm/mremap.c`
//! (`move_page_tables` with `for_stack`, as `relocate_vma_down` uses it).
//!
//! Both allocate the destination's table pages as they go, before the leaves they will
//! hold are touched (Linux: `pte_alloc_map_lock` for the destination table before
//! `copy_pte_range` copies into it); fork copies a PTE table's leaves in one batch
//! under the child's and the parent's PTE locks. A failure stops the walk with `OutOfMemory`: what
//! was copied stays copied (fork then tears the whole child down, exec the whole new
//! space), and the source leaf being processed when the allocation failed is left as it
//! was.

use core::ops::Range;

use x86_64::{PhysAddr, VirtAddr};

use super::entry::{ENTRIES, Kind, Pte, Table};
use super::table::{FreeTables, Stash, user_range};
use super::tlb::MmuGather;
use super::{Level, MapError, PTE_ACCOUNTED, PageSize, PageTableFlags as F, PageTableRoot};
use crate::frame::FrameFlags;

/// How [`PageTableRoot::copy_range_to`] treats the leaves it copies (Linux: the VMA flags
/// `copy_present_pte` looks at).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyMode {
    /// A private writable mapping (Linux: `is_cow_mapping()`, `VM_MAYWRITE` without
    /// `VM_SHARED`): writable leaves are write-protected in the source and in the copy.
    pub cow: bool,
    /// A shared mapping (`VM_SHARED`): the copy is marked clean (`pte_mkclean`).
    pub shared: bool,
}

/// What one [`PageTableRoot::copy_range_to`] did (tests and benchmarks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Leaves copied.
    pub leaves: u64,
    /// Source leaves write-protected for copy-on-write.
    pub wrprotected: u64,
}

impl PageTableRoot {
    /// Copies every leaf of `range` into `dst` at the same addresses (Linux:
    /// `copy_page_range` for one VMA, the part below `vma_needs_copy`).
    ///
    /// For each leaf, in Linux's order: the destination's table pages first (the only
    /// allocation), then the accounting (an accounted leaf's frame gets one more
    /// reference and map count; an anonymous frame stops being exclusive,
    /// `folio_try_dup_anon_rmap_pte`), then, for a [`CopyMode::cow`] range, the source
    /// leaf is write-protected (queued for a flush in `g`) and so is the copy
    /// (`__copy_present_ptes`); the copy is always old (`pte_mkold`) and, for a shared
    /// range, clean. The zero page and unaccounted (PFN) leaves are copied as they are.
    ///
    /// Huge leaves are copied whole (Linux: `copy_huge_pmd`/`copy_huge_pud`); the range
    /// must not cut one (`PartialHugePage`). A PD table shared with another space
    /// (hugetlb PMD sharing) is refused (`SharedTable`): hugetlb ranges go through the
    /// VMA layer's `copy_hugetlb_page_range`, which decides about sharing.
    ///
    /// Errors: `OutOfMemory` part-way (see the module docs), or, with nothing changed,
    /// the range checks of [`unmap`](Self::unmap) and `WrongAllocator`.
    pub fn copy_range_to(
        &self,
        dst: &PageTableRoot,
        range: Range<VirtAddr>,
        mode: CopyMode,
        g: &mut MmuGather,
    ) -> Result<CopyStats, MapError> {
        let (start, end) = user_range(&range, PageSize::Size4K.bytes())?;
        if !core::ptr::eq(self.allocator(), dst.allocator())
            || !core::ptr::eq(g.allocator(), self.allocator())
        {
            return Err(MapError::WrongAllocator);
        }
        let root = self.root_table();
        self.check_modify_range(range)?;
        g.add_cpus(self.active_cpus());
        let mut stash = Stash::fill(self.allocator(), 0)?;
        let mut stats = CopyStats::default();
        let mut cx = CopyCx {
            dst,
            src: self,
            stash: &mut stash,
            mode,
            g,
            stats: &mut stats,
        };
        let copied = cx.copy_level(root, Level::Pml4, 0, start, end);
        // Write-protected leaves, part-way or not: flush on every CPU that may hold them.
        self.add_cpus_after_clear(g);
        copied?;
        Ok(stats)
    }

    /// Moves the 4 KiB leaves of `[old, old + len)` to `[new, new + len)` in this space
    /// without touching their frames' counts, then frees the table pages the move
    /// emptied (Linux: `move_page_tables` + `free_pgd_range`, as `relocate_vma_down`
    /// runs them for exec's stack). The ranges may overlap. Every moved leaf that was
    /// present is queued for a flush in `g` at its old address.
    ///
    /// Errors: `OutOfMemory` part-way (leaves moved so far stay moved; exec discards
    /// the space), a huge leaf in the range (`PartialHugePage`), a shared PD table
    /// (`SharedTable`), or, with nothing changed, the range checks of
    /// [`unmap`](Self::unmap) on either range.
    pub fn move_range(
        &self,
        old: VirtAddr,
        new: VirtAddr,
        len: u64,
        g: &mut MmuGather,
    ) -> Result<(), MapError> {
        let page = PageSize::Size4K.bytes();
        let oe = old.as_u64().checked_add(len).ok_or(MapError::OutOfRange)?;
        let ne = new.as_u64().checked_add(len).ok_or(MapError::OutOfRange)?;
        let (os, oe) = user_range(&(old..VirtAddr::new_truncate(oe)), page)?;
        let (ns, ne) = user_range(&(new..VirtAddr::new_truncate(ne)), page)?;
        if !core::ptr::eq(g.allocator(), self.allocator()) {
            return Err(MapError::WrongAllocator);
        }
        self.check_modify_range(VirtAddr::new(os)..VirtAddr::new(oe))?;
        self.check_modify_range(VirtAddr::new(ns)..VirtAddr::new(ne))?;
        if os == ns || len == 0 {
            return Ok(());
        }
        g.add_cpus(self.active_cpus());
        let mut stash = Stash::fill(self.allocator(), 0)?;
        let npages = len / page;
        // Downwards, move the lowest page first (its destination is below every source
        // not yet moved); upwards, the highest.
        for k in 0..npages {
            let off = if ns < os { k } else { npages - 1 - k } * page;
            let Some((t, i, size)) = self.find_leaf(os + off) else {
                continue;
            };
            if size != PageSize::Size4K {
                return Err(MapError::PartialHugePage);
            }
            let need = self.plan_map(ns + off, ns + off + page, PageSize::Size4K)?;
            stash.top_up(need)?;
            // The old PTE lock, then the new one, never both (exec's space is its
            // own: no fault can see the page missing in between).
            let pte = {
                let _l = self.lock_table(t, Level::Pt);
                t.take(i)
            };
            g.flush_leaf(os + off, PageSize::Size4K, pte);
            self.install(ns + off, pte, PageSize::Size4K, &mut stash)?;
        }
        // Linux: free_pgd_range() of what the old range leaves behind. Every leaf there
        // has moved, so this only frees the tables it emptied.
        let (fs, fe) = if ns < os {
            (os.max(ne), oe)
        } else {
            (os, oe.min(ns))
        };
        if fs < fe {
            // Exec's new space has no other user yet: every emptied table may go.
            self.zap_level(
                self.root_table(),
                Level::Pml4,
                0,
                (fs, fe),
                FreeTables::ALL,
                g,
            );
        }
        self.add_cpus_after_clear(g);
        Ok(())
    }
}

/// The state of one copy walk.
struct CopyCx<'a> {
    dst: &'a PageTableRoot,
    src: &'a PageTableRoot,
    stash: &'a mut Stash,
    mode: CopyMode,
    g: &'a mut MmuGather,
    stats: &'a mut CopyStats,
}

impl CopyCx<'_> {
    /// Linux: `copy_p4d_range` … `copy_pte_range`, one level per call.
    fn copy_level(
        &mut self,
        table: Table,
        level: Level,
        base: u64,
        start: u64,
        end: u64,
    ) -> Result<(), MapError> {
        let span = level.entry_span();
        let lo = start.max(base);
        let hi = end.min(base + span * ENTRIES as u64);
        if lo >= hi {
            return Ok(());
        }
        if level == Level::Pt {
            return self.copy_pte_table(table, base, lo, hi);
        }
        for i in level.index(lo)..=level.index(hi - 1) {
            let va = base + i as u64 * span;
            match table.load(i).kind(level) {
                Kind::Empty => {}
                Kind::Leaf(size) => {
                    if start > va || end < va + span {
                        return Err(MapError::PartialHugePage);
                    }
                    self.copy_leaf(table, i, va, size)?;
                }
                Kind::Table(pa) => {
                    // SAFETY: present non-leaf entry of a table reached from the root;
                    // fork holds the source's mmap write lock and every source VMA's
                    // write lock, so nothing frees source tables meanwhile.
                    let child = unsafe { table.child(pa) };
                    let Some(lower) = level.lower() else { continue };
                    if lower == Level::Pd && child.share_count() > 0 {
                        return Err(MapError::SharedTable);
                    }
                    self.copy_level(child, lower, va, start, end)?;
                }
            }
        }
        Ok(())
    }

    /// Copies the 4 KiB leaves of `[lo, hi)` from the source PTE table `src_table`
    /// (mapping the 2 MiB from `base`) into the child's table for the same region,
    /// holding the child's PTE lock and, nested, the parent's across the whole table
    /// (Linux: `copy_pte_range`, which takes `dst_ptl` from `pte_alloc_map_lock` and
    /// then `spin_lock_nested(src_ptl)`, and runs `copy_present_ptes` under both).
    /// The child's table, and any table above it, is allocated first, before any leaf
    /// is touched: a failure leaves this table's leaves as they were.
    fn copy_pte_table(
        &mut self,
        src_table: Table,
        base: u64,
        lo: u64,
        hi: u64,
    ) -> Result<(), MapError> {
        let page = PageSize::Size4K.bytes();
        let slots = Level::Pt.index(lo)..=Level::Pt.index(hi - 1);
        // No child table for a range with nothing mapped (Linux skips `pmd_none` and
        // allocates only where the parent has a table; an empty stretch of one costs a
        // table in Linux too, but fork of a sparse table is rare enough to skip here).
        if slots.clone().all(|i| src_table.load(i).0 == 0) {
            return Ok(());
        }
        let need = self.dst.plan_map(lo, lo + page, PageSize::Size4K)?;
        self.stash.top_up(need)?;
        let dst_table = self.dst.table_for(lo, Level::Pt, self.stash)?;
        let _dst_lock = self.dst.lock_table(dst_table, Level::Pt);
        let _src_lock = self.src.lock_pte_table_nested(src_table);
        let mut clear = F::ACCESSED;
        if self.mode.shared {
            clear |= F::DIRTY;
        }
        for i in slots {
            let mut pte = src_table.load(i);
            if pte.kind(Level::Pt) == Kind::Empty {
                continue;
            }
            if dst_table.load(i).0 != 0 {
                return Err(MapError::AlreadyMapped);
            }
            let va = base + i as u64 * page;
            if self.mode.cow && pte.has(F::WRITABLE) {
                // Linux: wrprotect_ptes() on the parent; the A/D bits the CPU sets
                // meanwhile are kept by the compare-exchange.
                let (old, _) = src_table.update(i, |p| Pte(p.0 & !F::WRITABLE.bits()));
                self.g.flush_leaf(va, PageSize::Size4K, old);
                self.stats.wrprotected += 1;
                pte = Pte(old.0 & !F::WRITABLE.bits());
            }
            self.account_copy(pte, PageSize::Size4K);
            dst_table.store(i, Pte(pte.0 & !clear.bits()));
            self.stats.leaves += 1;
        }
        Ok(())
    }

    /// The child's leaf holds its own reference and map count of an accounted frame,
    /// and an anonymous frame stops being exclusive (Linux: `folio_get` +
    /// `folio_try_dup_anon_rmap_pte` / `folio_dup_file_rmap_pte`).
    fn account_copy(&self, pte: Pte, size: PageSize) {
        if !pte.has(PTE_ACCOUNTED) {
            return;
        }
        let head = PhysAddr::new(pte.addr().as_u64() & !(size.bytes() - 1));
        if let Some(m) = self.dst.allocator().meta(head) {
            m.get();
            m.inc_mapcount();
            if m.flags().contains(FrameFlags::ANON) {
                m.clear_flags(FrameFlags::ANON_EXCLUSIVE);
            }
        }
    }

    /// Linux: `copy_huge_pmd` (or `copy_huge_pud`) for the huge leaf at `table[i]`.
    fn copy_leaf(
        &mut self,
        table: Table,
        i: usize,
        va: u64,
        size: PageSize,
    ) -> Result<(), MapError> {
        // Linux: the destination table comes first (`pte_alloc_map_lock`).
        let need = self.dst.plan_map(va, va + size.bytes(), size)?;
        self.stash.top_up(need)?;
        // The source leaf under its table's lock (Linux holds the source's and, nested,
        // the destination's PTE lock together; here the destination's is taken by
        // `install` after this one is dropped: the source VMA is write-locked, so the
        // leaf cannot change in between).
        let pte = {
            let _l = self.src.lock_table(table, size.level());
            let mut pte = table.load(i);
            if self.mode.cow && pte.has(F::WRITABLE) {
                // Linux: wrprotect_ptes() on the parent; the A/D bits the CPU sets
                // meanwhile are kept by the compare-exchange.
                let (old, _) = table.update(i, |p| Pte(p.0 & !F::WRITABLE.bits()));
                self.g.flush_leaf(va, size, old);
                self.stats.wrprotected += 1;
                pte = Pte(old.0 & !F::WRITABLE.bits());
            }
            pte
        };
        let mut clear = F::ACCESSED;
        if self.mode.shared {
            clear |= F::DIRTY;
        }
        let child = Pte(pte.0 & !clear.bits());
        self.dst.install(va, child, size, self.stash)?;
        self.account_copy(pte, size);
        self.stats.leaves += 1;
        Ok(())
    }
}
