//! Page-table pages reached through the direct map, and their entries as atomics
//! (Linux: `pte_offset_kernel`, `ptep_get`, `set_pte`, `ptep_get_and_clear`).
//!
//! This is the only module that turns a physical table address into a pointer. The
//! invariant it relies on is the one [`Table::from_phys`] states: a [`Table`] handle names
//! a live, 4 KiB-aligned page-table page reachable through the allocator's direct map.

use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::PhysAddr;
use x86_64::structures::paging::PageTableFlags as F;
use x86_64::structures::paging::page_table::PageTableEntry;

use super::{Level, PageSize};
use crate::frame::{FrameAllocator, FrameError, FrameFlags};

/// Physical-address bits of an entry.
pub(super) const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Software bit 9: a leaf that is mapped but not present to the hardware (PROT_NONE;
/// Linux: `_PAGE_PROTNONE`, which x86 Linux aliases to the global bit instead).
pub const PTE_PROTNONE: F = F::BIT_9;

/// Software bit 10: the leaf holds a reference and a map count on its frame (the inverse
/// of Linux's `_PAGE_SPECIAL`).
pub const PTE_ACCOUNTED: F = F::BIT_10;

/// Entries per table.
pub(super) const ENTRIES: usize = 512;

/// A raw entry value with the decoding this layer needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pte(pub(super) u64);

/// What an entry at some level is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Nothing here.
    Empty,
    /// A leaf of this size (present or PROT_NONE).
    Leaf(PageSize),
    /// Points at a lower-level table.
    Table(PhysAddr),
}

impl Pte {
    pub(super) fn flags(self) -> F {
        F::from_bits_retain(self.0 & !ADDR_MASK)
    }

    pub(super) fn has(self, f: F) -> bool {
        self.0 & f.bits() != 0
    }

    /// Address bits (for a huge leaf, the caller aligns down to the page size).
    pub(super) fn addr(self) -> PhysAddr {
        PhysAddr::new(self.0 & ADDR_MASK)
    }

    /// Decodes an entry found in a table at `level`.
    pub(super) fn kind(self, level: Level) -> Kind {
        let mapped = self.has(F::PRESENT) || self.has(PTE_PROTNONE);
        if !mapped {
            return Kind::Empty;
        }
        match level {
            Level::Pt => Kind::Leaf(PageSize::Size4K),
            Level::Pd | Level::Pdpt if self.has(F::HUGE_PAGE) => {
                Kind::Leaf(level.leaf_size().expect("PD/PDPT have leaves"))
            }
            // A PROT_NONE marker without PS above the PT level is never written by this
            // layer; treat a present non-huge entry as a table pointer.
            _ if self.has(F::PRESENT) => Kind::Table(self.addr()),
            _ => Kind::Empty,
        }
    }

    /// The entry as the x86_64 crate's type, for callers.
    pub(super) fn to_entry(self) -> PageTableEntry {
        let mut e = PageTableEntry::new();
        e.set_addr(self.addr(), self.flags());
        e
    }
}

/// Handle to one page-table page: its physical address and the allocator whose direct map
/// reaches it. Copyable; validity is the creator's promise (see [`Table::from_phys`]).
#[derive(Clone, Copy)]
pub(super) struct Table {
    pa: PhysAddr,
    alloc: &'static FrameAllocator,
}

impl Table {
    /// Wraps an existing table page.
    ///
    /// # Safety
    /// `pa` is a 4 KiB-aligned page-table page (or a page about to become one that nobody
    /// else uses), mapped read-write at `alloc.phys_to_virt(pa)`, and it stays allocated
    /// for as long as this handle or any copy of it is used.
    pub(super) unsafe fn from_phys(alloc: &'static FrameAllocator, pa: PhysAddr) -> Self {
        debug_assert!(pa.is_aligned(4096u64));
        Self { pa, alloc }
    }

    /// Allocates a zeroed page, marks it [`FrameFlags::PAGETABLE`] and wraps it.
    pub(super) fn alloc(alloc: &'static FrameAllocator) -> Result<Self, FrameError> {
        let pa = alloc.alloc_zeroed(0)?;
        if let Some(m) = alloc.meta(pa) {
            m.set_flags(FrameFlags::PAGETABLE);
        }
        // SAFETY: freshly allocated, zeroed, order-0 and ours alone; the allocator's direct map reaches every frame it hands out.
        Ok(unsafe { Self::from_phys(alloc, pa) })
    }

    /// Returns the page to the allocator at once. Only for pages no hardware walker can
    /// reach any more (never linked, or unlinked and flushed; see `MmuGather`).
    pub(super) fn free(self) {
        free_table_page(self.alloc, self.pa);
    }

    pub(super) fn pa(self) -> PhysAddr {
        self.pa
    }

    fn slot(&self, i: usize) -> &AtomicU64 {
        assert!(i < ENTRIES, "page-table index out of range");
        let base = self.alloc.phys_to_virt(self.pa) as *const AtomicU64;
        // SAFETY: `from_phys` promised a live, aligned 4 KiB table page reachable at `base`; `i < 512` keeps the 8-byte slot inside it, and `AtomicU64` has the layout of the `u64` entry. Entries are only ever accessed atomically, so the CPU's concurrent A/D updates and other cores are not data races.
        unsafe { &*base.add(i) }
    }

    pub(super) fn load(self, i: usize) -> Pte {
        Pte(self.slot(i).load(Ordering::Acquire))
    }

    /// Writes an entry. Release so a new table's zeroed contents are visible to any
    /// walker that sees the pointer (Linux: `smp_wmb()` in `pmd_install`).
    pub(super) fn store(self, i: usize, v: Pte) {
        self.slot(i).store(v.0, Ordering::Release)
    }

    /// Clears an entry and returns what it held, A/D bits included (Linux:
    /// `ptep_get_and_clear`).
    pub(super) fn take(self, i: usize) -> Pte {
        Pte(self.slot(i).swap(0, Ordering::AcqRel))
    }

    /// Atomically replaces the entry by `f(old)`; returns (old, new) (Linux:
    /// `ptep_modify_prot_start/commit`, done as a compare-exchange so a concurrent dirty
    /// bit set by the CPU is not lost).
    pub(super) fn update(self, i: usize, mut f: impl FnMut(Pte) -> Pte) -> (Pte, Pte) {
        let slot = self.slot(i);
        let mut old = slot.load(Ordering::Acquire);
        loop {
            let new = f(Pte(old)).0;
            match slot.compare_exchange_weak(old, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return (Pte(old), Pte(new)),
                Err(cur) => old = cur,
            }
        }
    }

    /// Clears `bits` in entry `i`; returns the old entry (Linux:
    /// `ptep_test_and_clear_young`, a locked AND like `clear_bit`).
    pub(super) fn clear_bits(self, i: usize, bits: F) -> Pte {
        Pte(self.slot(i).fetch_and(!bits.bits(), Ordering::AcqRel))
    }

    /// True when no entry is used.
    pub(super) fn is_empty(self) -> bool {
        (0..ENTRIES).all(|i| self.load(i).0 == 0)
    }

    /// The table's share count (PD tables only carry one; 0 = private).
    pub(super) fn share_count(self) -> u32 {
        self.alloc.meta(self.pa).map_or(0, |m| m.pt_share_count())
    }

    /// Handle to the table an entry of this table points to.
    ///
    /// # Safety
    /// `child` was read from a present non-leaf entry of this table, which the caller
    /// keeps linked (so the page stays allocated) while the handle is used.
    pub(super) unsafe fn child(self, child: PhysAddr) -> Table {
        // SAFETY: non-leaf entries in tables this layer manages only ever point at table pages from the same allocator (created by `Table::alloc` or shared in by `share_pmd_*`, whose contract says the same); the caller keeps it linked.
        unsafe { Table::from_phys(self.alloc, child) }
    }
}

/// Clears the page-table marks and returns a table page to the allocator.
pub(super) fn free_table_page(alloc: &FrameAllocator, pa: PhysAddr) {
    if let Some(m) = alloc.meta(pa) {
        m.clear_flags(FrameFlags::PAGETABLE);
    }
    if let Err(e) = alloc.free(pa, 0) {
        log::error!("paging: freeing table page {:#x}: {e}", pa.as_u64());
    }
}

/// Builds a leaf entry. `flags` is already validated against `LEAF_FLAGS`; a leaf without
/// `PRESENT` is stored as PROT_NONE.
pub(super) fn leaf_pte(pa: PhysAddr, size: PageSize, flags: F, accounted: bool) -> Pte {
    let mut f = flags;
    if !f.contains(F::PRESENT) {
        f |= PTE_PROTNONE;
    }
    if size != PageSize::Size4K {
        f |= F::HUGE_PAGE;
    }
    if accounted {
        f |= PTE_ACCOUNTED;
    }
    Pte(pa.as_u64() | f.bits())
}

/// The flags of a leaf as callers see them: without PS and the software bits.
pub(super) fn visible_flags(p: Pte) -> F {
    p.flags() - F::HUGE_PAGE - PTE_PROTNONE - PTE_ACCOUNTED
}
