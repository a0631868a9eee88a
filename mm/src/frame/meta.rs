//! Per-frame metadata, one entry per physical frame (Linux: `struct page`, `mem_map`).
//!
//! Every field is an atomic so that the array can be shared (`&FrameMeta`) by the whole
//! kernel without a lock. The free-list links (`next`/`prev`) and the allocator-owned
//! flags ([`FrameFlags::ALLOCATOR_OWNED`]) are only written by the buddy allocator while
//! it holds its lock; the atomics there just make the shared access well defined.

use super::FrameError;
use core::sync::atomic::{AtomicU32, Ordering};

bitflags::bitflags! {
    /// Per-frame flags (Linux: the `PG_*` page flags and the page-type bits such as
    /// `PageBuddy`/`PageTable`).
    ///
    /// `BUDDY`, `RESERVED`, `HEAD` and `PCP` belong to the frame allocator
    /// ([`FrameFlags::ALLOCATOR_OWNED`]): other code may read them but must not set or
    /// clear them, or the allocator's free/double-free checks stop meaning anything.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct FrameFlags: u32 {
        /// Head frame of a free block on a buddy free list; `order()` is the block's
        /// order (Linux: `PageBuddy`, `buddy_order()`).
        const BUDDY = 1 << 0;
        /// Never handed out: the metadata array itself, or a hole between usable ranges
        /// (Linux: `PG_reserved`).
        const RESERVED = 1 << 1;
        /// First frame of an allocated block; `order()` is the block's order, the
        /// reference count lives here (Linux: `PG_head` / the head of a compound page,
        /// also set for order-0 allocations here).
        const HEAD = 1 << 2;
        /// The frame holds a page table (Linux: `PageTable`, `struct ptdesc`).
        const PAGETABLE = 1 << 3;
        /// The shared, read-only zero page (Linux: `ZERO_PAGE`, `is_zero_pfn()`).
        const ZERO = 1 << 4;
        /// The frame is part of a hugetlb page (Linux: `PageHuge`, `folio_test_hugetlb`).
        const HUGETLB = 1 << 5;
        /// Anonymous memory (Linux: `PageAnon`, `PAGE_MAPPING_ANON`).
        const ANON = 1 << 6;
        /// Contents differ from backing store (Linux: `PG_dirty`).
        const DIRTY = 1 << 7;
        /// An anonymous page known to be mapped by exactly one page-table entry of one
        /// address space, so a write fault may reuse it without looking at any count
        /// (Linux: `PageAnonExclusive`, `PG_anon_exclusive`). Set when the page is
        /// created for one mapping (`do_anonymous_page`, `wp_page_copy`) or reused by
        /// `do_wp_page` once its reference count shows it unshared; cleared when fork
        /// shares it (`folio_try_dup_anon_rmap_pte`).
        const ANON_EXCLUSIVE = 1 << 8;
        /// A free frame on a CPU's per-CPU page list, order 0 (Linux: a page on a
        /// `per_cpu_pages` list, `page->pcp_list`; see `frame::pcp`).
        const PCP = 1 << 9;
    }
}

impl FrameFlags {
    /// Flags only the frame allocator may change.
    pub const ALLOCATOR_OWNED: Self = Self::BUDDY
        .union(Self::RESERVED)
        .union(Self::HEAD)
        .union(Self::PCP);
}

/// Sentinel "no frame" index in the intrusive free lists.
pub(super) const NIL: u32 = u32::MAX;

/// Metadata of one physical frame (Linux: `struct page`; the page-table view of it is
/// `struct ptdesc`).
///
/// The all-zero bit pattern is a valid value (no flags, no references), which is how
/// [`FrameAllocator::new`](super::FrameAllocator::new) initialises the array.
///
/// Counts on tail frames of a higher-order block are unused: reference counting is done
/// on the head frame (the address the allocator returned), as for Linux compound pages.
#[repr(C)]
pub struct FrameMeta {
    /// References held on the block (Linux: `_refcount`). 0 while free.
    refcount: AtomicU32,
    /// Number of page-table entries mapping the frame. A plain count starting at 0,
    /// i.e. Linux's `page_mapcount()`, not the raw `_mapcount` which is biased by -1.
    mapcount: AtomicU32,
    /// [`FrameFlags`] bits.
    flags: AtomicU32,
    /// Order of the block this frame heads (valid with `HEAD` or `BUDDY`).
    order: AtomicU32,
    /// Additional sharers of a PMD page-table page: 0 = private (Linux:
    /// `ptdesc->pt_share_count`, hugetlb PMD sharing).
    pt_share_count: AtomicU32,
    /// The split page-table lock word of a page-table page: 0 free, 1 held (Linux:
    /// `ptdesc->ptl`, the spinlock embedded in the page-table page's descriptor).
    /// Only [`crate::paging`] touches it, through its `ptlock` module.
    ptl: AtomicU32,
    /// Free-list successor, as an index into the metadata array (Linux: `page->lru`).
    /// Only meaningful with `BUDDY`; written under the allocator lock.
    pub(super) next: AtomicU32,
    /// Free-list predecessor, as above.
    pub(super) prev: AtomicU32,
}

impl FrameMeta {
    /// Metadata of an unused frame: no flags, no references. Equal to all-zero bytes.
    pub const fn new() -> Self {
        Self {
            refcount: AtomicU32::new(0),
            mapcount: AtomicU32::new(0),
            flags: AtomicU32::new(0),
            order: AtomicU32::new(0),
            pt_share_count: AtomicU32::new(0),
            ptl: AtomicU32::new(0),
            next: AtomicU32::new(0),
            prev: AtomicU32::new(0),
        }
    }

    /// Current reference count (Linux: `page_ref_count()`).
    pub fn refcount(&self) -> u32 {
        self.refcount.load(Ordering::Acquire)
    }

    /// Takes a reference (Linux: `get_page()`/`folio_get()`). The caller must already
    /// hold one (or own the frame), as in Linux.
    pub fn get(&self) {
        self.refcount.fetch_add(1, Ordering::Relaxed);
    }

    /// Drops a reference; true when it was the last one (Linux: `put_page_testzero()`).
    ///
    /// This only counts: freeing the block is the caller's job, see
    /// [`FrameAllocator::put_frame`](super::FrameAllocator::put_frame), which is what
    /// most code wants. Dropping a reference that does not exist (count already 0) is
    /// refused and returns false rather than wrapping around.
    pub fn put(&self) -> bool {
        self.try_put() == Some(true)
    }

    /// Like [`put`](Self::put) but `None` if the count was already 0.
    pub(super) fn try_put(&self) -> Option<bool> {
        dec_nonzero(&self.refcount).map(|old| old == 1)
    }

    /// Number of page-table entries mapping the frame (Linux: `page_mapcount()`).
    pub fn mapcount(&self) -> u32 {
        self.mapcount.load(Ordering::Acquire)
    }

    /// One more mapping; returns the new count (Linux: `page_add_*_rmap`, where the
    /// first mapping is the transition -1 -> 0 of `_mapcount`).
    pub fn inc_mapcount(&self) -> u32 {
        self.mapcount.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// One mapping fewer; returns the new count, 0 meaning the last mapping went
    /// (Linux: `page_remove_rmap()`). Saturates at 0 (and logs) instead of wrapping.
    pub fn dec_mapcount(&self) -> u32 {
        match dec_nonzero(&self.mapcount) {
            Some(old) => old - 1,
            None => {
                log::error!("frame: mapcount underflow");
                0
            }
        }
    }

    /// Current flags.
    pub fn flags(&self) -> FrameFlags {
        FrameFlags::from_bits_retain(self.flags.load(Ordering::Acquire))
    }

    /// Sets `f` (atomic OR; Linux: `SetPage*`). Not for [`FrameFlags::ALLOCATOR_OWNED`].
    pub fn set_flags(&self, f: FrameFlags) {
        debug_assert!(
            !f.intersects(FrameFlags::ALLOCATOR_OWNED),
            "allocator-owned frame flags set from outside"
        );
        self.flags.fetch_or(f.bits(), Ordering::AcqRel);
    }

    /// Clears `f` (atomic AND-NOT; Linux: `ClearPage*`). Not for
    /// [`FrameFlags::ALLOCATOR_OWNED`].
    pub fn clear_flags(&self, f: FrameFlags) {
        debug_assert!(
            !f.intersects(FrameFlags::ALLOCATOR_OWNED),
            "allocator-owned frame flags cleared from outside"
        );
        self.flags.fetch_and(!f.bits(), Ordering::AcqRel);
    }

    /// Order of the block this frame heads, allocated (`HEAD`) or free (`BUDDY`)
    /// (Linux: `compound_order()`/`buddy_order()`). Meaningless on other frames.
    pub fn order(&self) -> usize {
        self.order.load(Ordering::Acquire) as usize
    }

    /// Additional sharers of this PMD page-table page, 0 when private
    /// (Linux: `ptdesc_pmd_pts_count()`).
    pub fn pt_share_count(&self) -> u32 {
        self.pt_share_count.load(Ordering::Acquire)
    }

    /// The split page-table lock word (Linux: `ptlock_ptr(ptdesc)`); see
    /// `paging::ptlock` for the protocol.
    pub(crate) fn ptl_word(&self) -> &AtomicU32 {
        &self.ptl
    }

    /// One more sharer; returns the new count (Linux: `ptdesc_pmd_pts_inc()`).
    pub fn pt_share_inc(&self) -> u32 {
        self.pt_share_count.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// One sharer fewer; returns the new count. Saturates at 0 (and logs) instead of
    /// wrapping (Linux: `ptdesc_pmd_pts_dec()`).
    pub fn pt_share_dec(&self) -> u32 {
        match dec_nonzero(&self.pt_share_count) {
            Some(old) => old - 1,
            None => {
                log::error!("frame: pt_share_count underflow");
                0
            }
        }
    }

    // ---- allocator-internal state changes (caller holds the allocator lock) ----

    /// Replaces all flags.
    pub(super) fn store_flags(&self, f: FrameFlags) {
        self.flags.store(f.bits(), Ordering::Release);
    }

    pub(super) fn set_order(&self, order: usize) {
        self.order.store(order as u32, Ordering::Release);
    }

    /// State of the head of a freshly allocated block (Linux: `prep_new_page()`).
    pub(super) fn prep_allocated(&self, order: usize) {
        self.mapcount.store(0, Ordering::Relaxed);
        self.pt_share_count.store(0, Ordering::Relaxed);
        self.set_order(order);
        self.refcount.store(1, Ordering::Relaxed);
        self.store_flags(FrameFlags::HEAD);
    }

    /// Takes an allocated block's head away from its owner for freeing: checks that it
    /// heads an allocated block (of `expected` order, if given) and clears its flags
    /// in one atomic step, then clears the per-owner counts; returns the order.
    ///
    /// The check and the clearing are one compare-and-swap because frees of one frame
    /// may run on two CPUs under two different locks (each CPU's per-CPU list lock):
    /// exactly one of two racing frees wins, the other gets `NotAllocated`. A rejected
    /// free changes nothing (Linux: `free_page_is_bad()` before anything is touched).
    pub(super) fn claim_for_free(&self, expected: Option<usize>) -> Result<usize, FrameError> {
        let mut cur = self.flags.load(Ordering::Acquire);
        loop {
            let f = FrameFlags::from_bits_retain(cur);
            if !f.contains(FrameFlags::HEAD) || f.intersects(FrameFlags::BUDDY | FrameFlags::PCP) {
                return Err(FrameError::NotAllocated);
            }
            let order = self.order();
            if expected.is_some_and(|e| e != order) {
                return Err(FrameError::WrongOrder);
            }
            match self
                .flags
                .compare_exchange_weak(cur, 0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    self.refcount.store(0, Ordering::Relaxed);
                    self.mapcount.store(0, Ordering::Relaxed);
                    self.pt_share_count.store(0, Ordering::Relaxed);
                    return Ok(order);
                }
                Err(now) => cur = now,
            }
        }
    }
}

/// Decrements `a` unless it is 0; returns the old value, `None` if it was 0.
///
/// Release so the caller's earlier writes happen before whoever sees the count drop;
/// Acquire so the caller sees the writes of those who dropped it before.
fn dec_nonzero(a: &AtomicU32) -> Option<u32> {
    let mut cur = a.load(Ordering::Acquire);
    loop {
        let new = cur.checked_sub(1)?;
        match a.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(old) => return Some(old),
            Err(now) => cur = now,
        }
    }
}

impl Default for FrameMeta {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for FrameMeta {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FrameMeta")
            .field("flags", &self.flags())
            .field("order", &self.order())
            .field("refcount", &self.refcount())
            .field("mapcount", &self.mapcount())
            .field("pt_share_count", &self.pt_share_count())
            .finish()
    }
}
