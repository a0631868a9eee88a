//! Split page-table locks: one spin lock per PTE-table page and per PMD (PD) page, the
//! address space's `page_table_lock` for the levels above (Linux: `pte_lockptr`,
//! `pmd_lockptr` with `USE_SPLIT_PMD_PTLOCKS`, `pud_lockptr` = `&mm->page_table_lock`).
//!
//! # Which lock covers which entry
//!
//! | entries of a … | map | lock | Linux |
//! |---|---|---|---|
//! | PT page | 4 KiB leaves | the PT page's own lock word | `pte_offset_map_lock` |
//! | PD page | 2 MiB leaves and the links to PT pages | the PD page's own lock word | `pmd_lock`, `__pte_alloc`'s `pmd_install` |
//! | PDPT and PML4 pages | 1 GiB leaves and the links to PD and PDPT pages | [`PageTableRoot`]'s `page_table_lock` | `pud_lock`, `__pmd_alloc`, `__pud_alloc` |
//!
//! The lock word of a table page lives in that page's frame metadata, as Linux's lives
//! in its `struct ptdesc`; so a PD page shared between address spaces (hugetlb PMD
//! sharing) has one lock for all of them, which is what makes installing a huge page
//! into a shared table safe.
//!
//! # The rules the rest of the layer follows
//!
//! - Changing an entry takes the lock that covers it; installing a table into an empty
//!   entry re-checks the entry under that lock and gives the new page back if someone
//!   else was first (Linux: `pmd_install`).
//! - Walking down needs no lock (Linux: `pte_offset_map`, `pmdp_get_lockless`): a table
//!   is freed only by [`PageTableRoot::free_pgtables`]-style teardown of a range that no
//!   VMA covers any more (floor and ceiling, as Linux's `free_pgtables`), under the mmap
//!   write lock, so no fault (which holds a VMA lock, or the mmap lock, for an address
//!   it walks to) can be on its way into it.
//! - At most one page-table lock is held at a time (lockdep-light panics on a second),
//!   except in fork's copy, which holds the child's PTE lock and, nested, the parent's
//!   for a whole PTE table at a time, as Linux's `copy_pte_range` does. The child is
//!   not yet visible to anyone, so nothing takes its locks in the other order. Exec's
//!   stack move takes one, then the other (its space has no other user yet).
//! - All of them are rank 6 of the lock order in [`crate::sync`]; interrupts stay
//!   enabled while a CPU spins for one (the holder may be waiting for a TLB-shootdown
//!   answer from the spinning CPU).

use core::sync::atomic::{AtomicU32, Ordering};

use super::entry::Table;
use super::{Level, PageTableRoot};
use crate::sync::MutexGuard;
use crate::sync::lockdep::{self, Acquire, LockClass};

/// A held page-table lock (Linux: the `spinlock_t *ptl` a walker holds). Dropping it
/// unlocks.
pub(super) enum PtLockGuard<'a> {
    /// A split lock: the lock word in a table page's frame metadata.
    Split(&'a AtomicU32),
    /// The address space's `page_table_lock`.
    Mm(#[allow(dead_code)] MutexGuard<'a, ()>),
}

/// Spins for a split lock word (Linux: `spin_lock(ptl)`; `how` is
/// [`Acquire::Nested`] for the second of a pair, `spin_lock_nested`).
fn lock_word(w: &AtomicU32, how: Acquire) {
    lockdep::acquire(LockClass::PageTable, how);
    loop {
        if w.compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
        // Read-only spin: the cache line stays shared until the holder lets go.
        while w.load(Ordering::Relaxed) != 0 {
            core::hint::spin_loop();
        }
    }
}

impl Drop for PtLockGuard<'_> {
    fn drop(&mut self) {
        if let PtLockGuard::Split(w) = self {
            w.store(0, Ordering::Release);
            lockdep::release(LockClass::PageTable);
        }
        // `Mm`: the mutex guard unlocks (and tells lockdep) itself.
    }
}

impl PageTableRoot {
    /// The lock covering the entries of `table`, a table at `level`, taken.
    pub(super) fn lock_table(&self, table: Table, level: Level) -> PtLockGuard<'_> {
        if matches!(level, Level::Pt | Level::Pd)
            && let Some(m) = self.allocator().meta(table.pa())
        {
            let w = m.ptl_word();
            lock_word(w, Acquire::Wait);
            return PtLockGuard::Split(w);
        }
        PtLockGuard::Mm(self.page_table_lock.lock())
    }

    /// The lock of PTE table `table` (`Level::Pt`), taken while the caller already
    /// holds the PTE lock of another space's table (Linux: `spin_lock_nested(src_ptl,
    /// SINGLE_DEPTH_NESTING)` in `copy_pte_range`). Only fork's copy does this: it
    /// holds the new child's table lock, which nothing else can be taking, and then
    /// the parent's, so no two CPUs ever take such a pair in opposite orders.
    pub(super) fn lock_pte_table_nested(&self, table: Table) -> PtLockGuard<'_> {
        let m = self
            .allocator()
            .meta(table.pa())
            .expect("a PTE table's frame has metadata");
        let w = m.ptl_word();
        lock_word(w, Acquire::Nested);
        PtLockGuard::Split(w)
    }
}
