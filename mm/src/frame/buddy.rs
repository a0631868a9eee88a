//! The buddy allocator itself (Linux: `mm/page_alloc.c`, `zone->free_area[]`).
//!
//! Free blocks are kept on one intrusive doubly-linked list per order. The links are
//! frame indices stored in the [`FrameMeta`] of each free block's head frame (Linux:
//! `page->lru` on `free_area[order].free_list`), so the allocator never reads or writes
//! the free memory itself, and alloc/free are O(1) per order visited.
//!
//! A free block is exactly a head frame with [`FrameFlags::BUDDY`] set and `order()` equal
//! to its order; every other frame of the block has no allocator flag. An allocated block
//! is a head frame with [`FrameFlags::HEAD`] and its order. That is all the state `free`
//! needs to reject double and wrong-order frees and to find a mergeable buddy
//! (Linux: `page_is_buddy()`).
//!
//! Order-0 allocations and frees go through the current CPU's per-CPU page list first
//! (`super::pcp`, Linux: `rmqueue_pcplist()`, `free_unref_page()`), which talks to
//! these lists [`PCP_BATCH`](super::PCP_BATCH) frames at a time.
//!
//! Lock order: a per-CPU list lock, then the allocator (zone) lock; both are leaves of
//! the memory manager's order. Nothing is allocated, logged or locked under the zone
//! lock, so they may be taken under any other lock, and from interrupt context.
//!
//! Page poisoning (Linux: `CONFIG_PAGE_POISONING` with `page_poison=1`,
//! `mm/page_poison.c`) is off by default and switched on per allocator with
//! [`FrameAllocator::enable_page_poisoning`]: every free frame is then filled with
//! [`PAGE_POISON`] and checked when it is handed out again, so a write through a stale
//! reference to a freed frame is caught (counted, recorded, logged) instead of silently
//! corrupting the frame's next owner. With poisoning on, the allocator does touch free
//! memory.

use core::mem::size_of;
use core::ops::Range;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use x86_64::PhysAddr;

use super::meta::{FrameFlags, FrameMeta, NIL};
use super::pcp::{PCP_BATCH, PCP_HIGH, PcpDisabled, PerCpuPages};
use super::{FrameError, FrameStats, MAX_ORDER, NR_ORDERS, PAGE_SIZE};

/// [`PAGE_SIZE`] as a physical-address quantity (the allocator works in `u64`).
const PAGE_BYTES: u64 = PAGE_SIZE as u64;
use crate::sync::IrqSpinLock;

use crate::PAGE_SHIFT;

/// Highest physical address x86_64 can express (52 bits).
const MAX_PHYS: u64 = 1 << 52;

/// The byte free frames are filled with while page poisoning is on (Linux: `PAGE_POISON`).
pub const PAGE_POISON: u8 = 0xaa;

/// A free frame found written to: the first damaged byte (Linux: the report of
/// `check_poison_mem()`, "pagealloc: memory corruption").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoisonReport {
    /// The damaged frame.
    pub frame: PhysAddr,
    /// Offset of its first byte that is not [`PAGE_POISON`].
    pub offset: usize,
    /// That byte.
    pub byte: u8,
    /// How many bytes of the frame are not [`PAGE_POISON`].
    pub bad_bytes: usize,
}

/// Free lists, one per order (Linux: `struct free_area`).
struct FreeAreas {
    /// Index (into the metadata array) of the first free block of each order, or [`NIL`].
    head: [u32; NR_ORDERS],
    /// Free blocks of each order (Linux: `free_area[order].nr_free`).
    nr_free: [u64; NR_ORDERS],
}

/// Physical frame allocator: a binary buddy allocator over all usable RAM plus the
/// per-frame metadata array (Linux: the zone allocator in `mm/page_alloc.c` and
/// `mem_map`, flat memory model).
///
/// The metadata array covers every frame from the lowest to the highest usable frame,
/// holes included (holes are marked [`FrameFlags::RESERVED`] and never handed out), so a
/// frame's metadata is found by subtracting the base frame number (Linux:
/// `pfn_to_page()` under `FLATMEM`).
pub struct FrameAllocator {
    free: IrqSpinLock<FreeAreas>,
    /// Each CPU's list of free order-0 frames in front of `free`.
    pcp: PerCpuPages,
    /// Start of the metadata array (lives in memory carved out of the usable ranges).
    meta: NonNull<FrameMeta>,
    /// Entries in the metadata array: frames `base_pfn..base_pfn + nr_meta`.
    nr_meta: usize,
    base_pfn: u64,
    phys_offset: u64,
    /// Usable frames (inside the given ranges), metadata frames included.
    total_frames: u64,
    /// Usable frames holding the metadata array.
    reserved_frames: u64,
    /// Test-only: fail exactly the Nth allocation (see [`FrameAllocator::fail_nth_alloc`]).
    #[cfg(feature = "fault-inject")]
    inject: FailNth,
    /// Page poisoning is on (set under the free-list lock, read under it).
    poison: AtomicBool,
    /// Damaged free frames found so far.
    poison_bad: AtomicU64,
    /// The first damaged free frame found.
    poison_first: spin::Mutex<Option<PoisonReport>>,
}

/// Fail-the-Nth-allocation state (Linux: `fail_page_alloc` with `interval`/`times`
/// narrowed to "exactly the Nth call", as the `should_fail` sweeps of the VMA
/// userland tests use it).
#[cfg(feature = "fault-inject")]
#[derive(Default)]
struct FailNth {
    /// Allocations left before the failing one, counting it (0: disarmed).
    countdown: core::sync::atomic::AtomicU64,
    /// Allocations counted since arming, the failing one included.
    seen: core::sync::atomic::AtomicU64,
    /// Whether the armed failure has happened.
    fired: core::sync::atomic::AtomicBool,
}

/// What [`FrameAllocator::disarm_fail_nth`] reports about the armed window.
#[cfg(feature = "fault-inject")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailNthReport {
    /// Allocation calls counted while armed: up to and including the failed one if it
    /// fired, else every call of the window.
    pub allocations: u64,
    /// The Nth allocation happened and was failed.
    pub fired: bool,
}

// SAFETY: the metadata array is made only of atomics and is valid for as long as the allocator exists (contract of `new`); the free lists are behind the lock, and the links inside the metadata are only written with that lock held.
unsafe impl Sync for FrameAllocator {}
// SAFETY: as for `Sync`; nothing in the allocator is tied to the creating CPU or thread.
unsafe impl Send for FrameAllocator {}

/// Frames fully inside a byte range: start rounded up, end rounded down.
fn pfns_of(r: &Range<u64>) -> Range<u64> {
    let start = r.start.div_ceil(PAGE_BYTES);
    let end = r.end / PAGE_BYTES;
    start..end.max(start)
}

fn clip(r: Range<u64>, to: &Range<u64>) -> Range<u64> {
    let s = r.start.max(to.start);
    let e = r.end.min(to.end);
    s..e.max(s)
}

impl FrameAllocator {
    /// Builds the allocator over `usable` (Linux: `memblock` handing memory to the buddy
    /// allocator, `memmap_init()` + `memblock_free_all()`).
    ///
    /// `phys_offset`: virtual address at which all physical memory is mapped
    /// (virt = phys + offset, Linux `__va`); must be page aligned.
    /// `usable`: sorted, non-overlapping usable physical ranges (byte addresses, from the
    /// boot memory map). Partial frames at range ends are ignored.
    ///
    /// Carves its metadata array out of usable memory itself (the top of the first range
    /// large enough, like memblock's top-down allocation), marks those frames
    /// [`FrameFlags::RESERVED`], zero-initialises the array through the offset mapping,
    /// then frees every remaining usable frame into the buddy lists in the largest
    /// aligned blocks possible (adjacent ranges merge).
    ///
    /// Errors: `OutOfMemory` if there is no usable frame or no range can hold the
    /// metadata; `OutOfRange` if the ranges are unsorted or overlap, or reach past the
    /// 52-bit physical address limit; `Misaligned` if `phys_offset` is not page aligned.
    /// Memory beyond 2^32 - 1 frames (16 TiB) past the first usable frame is ignored.
    ///
    /// # Safety
    /// The ranges are really unused RAM, mapped read-write at `phys_offset`, and stay
    /// owned by this allocator for as long as it (or anything it handed out) is used,
    /// i.e. `'static` in the kernel.
    pub unsafe fn new(phys_offset: u64, usable: &[Range<u64>]) -> Result<Self, FrameError> {
        if !phys_offset.is_multiple_of(PAGE_BYTES) {
            return Err(FrameError::Misaligned);
        }
        // Pass 1: validate and find the span of frames to describe.
        let mut span: Option<Range<u64>> = None;
        for r in usable {
            let p = pfns_of(r);
            if p.is_empty() {
                continue;
            }
            if p.end > MAX_PHYS / PAGE_BYTES {
                return Err(FrameError::OutOfRange);
            }
            span = Some(match span {
                None => p,
                Some(s) if p.start >= s.end => s.start..p.end,
                Some(_) => return Err(FrameError::OutOfRange),
            });
        }
        let mut span = span.ok_or(FrameError::OutOfMemory)?;
        // Indices must stay below NIL.
        if span.end - span.start > NIL as u64 {
            log::warn!(
                "frame: ignoring memory above frame {:#x}",
                span.start + NIL as u64
            );
            span.end = span.start + NIL as u64;
        }
        let nr_meta = (span.end - span.start) as usize;
        let meta_frames = (nr_meta * size_of::<FrameMeta>()).div_ceil(PAGE_SIZE) as u64;

        // Pass 2: carve the metadata array from the top of the first range that fits.
        let carve = usable
            .iter()
            .map(|r| clip(pfns_of(r), &span))
            .find(|p| p.end - p.start >= meta_frames)
            .map(|p| p.end - meta_frames..p.end)
            .ok_or(FrameError::OutOfMemory)?;

        let meta_va = (carve.start * PAGE_BYTES).wrapping_add(phys_offset) as *mut FrameMeta;
        // SAFETY: `carve` lies inside a usable range, which the caller guarantees is unused RAM mapped read-write at `phys_offset`; the address is page aligned (page-aligned physical address plus page-aligned offset), so aligned for `FrameMeta`, and `meta_frames` frames hold `nr_meta` entries. All-zero bytes are a valid `FrameMeta`.
        let meta = unsafe {
            core::ptr::write_bytes(meta_va, 0, nr_meta);
            NonNull::new(meta_va).ok_or(FrameError::OutOfRange)?
        };

        let this = Self {
            free: IrqSpinLock::new(FreeAreas {
                head: [NIL; NR_ORDERS],
                nr_free: [0; NR_ORDERS],
            }),
            pcp: PerCpuPages::new(),
            meta,
            nr_meta,
            base_pfn: span.start,
            phys_offset,
            total_frames: 0,
            reserved_frames: meta_frames,
            #[cfg(feature = "fault-inject")]
            inject: FailNth::default(),
            poison: AtomicBool::new(false),
            poison_bad: AtomicU64::new(0),
            poison_first: spin::Mutex::new(None),
        };
        let metas = this.metas();

        // Everything starts reserved: holes stay so, usable frames are released below.
        for m in metas {
            m.store_flags(FrameFlags::RESERVED);
        }
        let mut total = 0;
        {
            let mut areas = this.free.lock();
            for r in usable {
                let p = clip(pfns_of(r), &span);
                total += p.end - p.start;
                // The part of `p` below and above the carve-out.
                for part in [
                    p.start..p.end.min(carve.start),
                    p.start.max(carve.end)..p.end,
                ] {
                    if part.is_empty() {
                        continue;
                    }
                    for pfn in part.clone() {
                        metas[(pfn - span.start) as usize].store_flags(FrameFlags::empty());
                    }
                    this.free_range(&mut areas, part);
                }
            }
        }
        Ok(Self {
            total_frames: total,
            ..this
        })
    }

    /// The metadata array.
    fn metas(&self) -> &[FrameMeta] {
        // SAFETY: `meta` points to `nr_meta` initialised entries that live as long as the allocator (contract of `new`), and are only ever accessed through shared references (all fields are atomics).
        unsafe { core::slice::from_raw_parts(self.meta.as_ptr(), self.nr_meta) }
    }

    fn pfn_to_idx(&self, pfn: u64) -> Option<usize> {
        let idx = pfn.checked_sub(self.base_pfn)?;
        (idx < self.nr_meta as u64).then_some(idx as usize)
    }

    fn idx_to_pa(&self, idx: usize) -> PhysAddr {
        PhysAddr::new((self.base_pfn + idx as u64) << PAGE_SHIFT)
    }

    /// Frees `pfns` (all usable and owned by no one) in the largest aligned blocks
    /// (Linux: `__free_pages_memory()`).
    fn free_range(&self, areas: &mut FreeAreas, pfns: Range<u64>) {
        let mut pfn = pfns.start;
        while pfn < pfns.end {
            let mut order = (pfn.trailing_zeros() as usize).min(MAX_ORDER);
            while pfn + (1 << order) > pfns.end {
                order -= 1;
            }
            self.free_block_locked(areas, pfn, order);
            pfn += 1 << order;
        }
    }

    /// Puts block `idx` of `order` at the head of its free list.
    fn push(&self, areas: &mut FreeAreas, idx: usize, order: usize) {
        let metas = self.metas();
        let m = &metas[idx];
        let first = areas.head[order];
        m.next.store(first, Ordering::Relaxed);
        m.prev.store(NIL, Ordering::Relaxed);
        if first != NIL {
            metas[first as usize]
                .prev
                .store(idx as u32, Ordering::Relaxed);
        }
        areas.head[order] = idx as u32;
        areas.nr_free[order] += 1;
        m.set_order(order);
        m.store_flags(FrameFlags::BUDDY);
    }

    /// Takes free block `idx` of `order` off its list (Linux: `del_page_from_free_list()`).
    fn unlink(&self, areas: &mut FreeAreas, idx: usize, order: usize) {
        use Ordering::Relaxed;
        let metas = self.metas();
        let m = &metas[idx];
        let (next, prev) = (m.next.load(Relaxed), m.prev.load(Relaxed));
        if prev == NIL {
            areas.head[order] = next;
        } else {
            metas[prev as usize].next.store(next, Relaxed);
        }
        if next != NIL {
            metas[next as usize].prev.store(prev, Relaxed);
        }
        areas.nr_free[order] -= 1;
        m.store_flags(FrameFlags::empty());
    }

    /// Returns a block to the free lists, merging it with its buddy for as long as the
    /// buddy is free and of the same order (Linux: `__free_one_page()`; the buddy of
    /// `pfn` at `order` is `pfn ^ (1 << order)`, `__find_buddy_pfn()`).
    fn free_block_locked(&self, areas: &mut FreeAreas, mut pfn: u64, mut order: usize) {
        while order < MAX_ORDER {
            let buddy = pfn ^ (1 << order);
            let Some(bidx) = self.pfn_to_idx(buddy) else {
                break;
            };
            let bm = &self.metas()[bidx];
            // Linux: page_is_buddy(). Holes and metadata are RESERVED, never BUDDY, so
            // merging never crosses them.
            if !bm.flags().contains(FrameFlags::BUDDY) || bm.order() != order {
                break;
            }
            self.unlink(areas, bidx, order);
            pfn &= !(1 << order);
            order += 1;
        }
        let idx = self
            .pfn_to_idx(pfn)
            .expect("merged block inside the metadata span");
        self.push(areas, idx, order);
    }

    /// Allocates a block of `2^order` frames and returns its physical address, aligned to
    /// its size (Linux: `alloc_pages()` -> `rmqueue()`: `rmqueue_pcplist()` for order 0,
    /// else `__rmqueue_smallest()` + `expand()`; then `prep_new_page()`).
    ///
    /// The head frame's metadata gets a reference count of 1, [`FrameFlags::HEAD`] and
    /// the order; map and share counts start at 0. The contents are not cleared (see
    /// [`alloc_zeroed`](Self::alloc_zeroed)). When neither the CPU's list nor the buddy
    /// lists can serve the request, every CPU's list is drained into the buddy lists
    /// and the request tried once more (Linux: `drain_all_pages()` in the slow path), so
    /// `OutOfMemory` means no free block of the order exists anywhere.
    pub fn alloc(&self, order: usize) -> Result<PhysAddr, FrameError> {
        if order > MAX_ORDER {
            return Err(FrameError::BadOrder);
        }
        #[cfg(feature = "fault-inject")]
        if self.inject_fails() {
            return Err(FrameError::OutOfMemory);
        }
        let (idx, poisoned) = match self.alloc_block(order) {
            Ok(got) => got,
            Err(_) if self.drain_lists(false) > 0 => self.alloc_block(order)?,
            Err(e) => return Err(e),
        };
        let pa = self.idx_to_pa(idx);
        if poisoned {
            // Linux: post_alloc_hook() → kernel_unpoison_pages() → check_poison_mem().
            for i in 0..1u64 << order {
                if let Some(r) = self.check_poison(pa + i * PAGE_BYTES) {
                    self.report_poison(r);
                }
            }
        }
        Ok(pa)
    }

    /// Takes a block of `order` from the CPU's list (order 0) or the buddy lists and
    /// preps it as allocated; returns its index and whether its poison must be checked.
    fn alloc_block(&self, order: usize) -> Result<(usize, bool), FrameError> {
        if order == 0
            && let Some(got) = self.pcp_alloc()
        {
            return got.map(|idx| (idx, false));
        }
        let mut areas = self.free.lock();
        let idx = self.rmqueue_smallest(&mut areas, order)?;
        self.metas()[idx].prep_allocated(order);
        Ok((idx, self.poison.load(Ordering::Relaxed)))
    }

    /// Unlinks the smallest free block of at least `order`, splits it down to `order`
    /// and returns its index, flags cleared (Linux: `__rmqueue_smallest()` +
    /// `expand()`).
    fn rmqueue_smallest(&self, areas: &mut FreeAreas, order: usize) -> Result<usize, FrameError> {
        let found = (order..NR_ORDERS)
            .find(|&o| areas.head[o] != NIL)
            .ok_or(FrameError::OutOfMemory)?;
        let idx = areas.head[found] as usize;
        self.unlink(areas, idx, found);
        // Linux: expand(). Hand the upper halves back, one block per order below `found`.
        for o in (order..found).rev() {
            self.push(areas, idx + (1 << o), o);
        }
        Ok(idx)
    }

    /// Whether order-0 requests may use the per-CPU lists: not while a [`PcpDisabled`]
    /// guard lives, and not with page poisoning on (every frame then goes through the
    /// zone, where it is poisoned and checked). Read under a list lock.
    fn pcp_usable(&self) -> bool {
        !self.pcp.disabled() && !self.poison.load(Ordering::Acquire)
    }

    /// An order-0 frame from the current CPU's list, refilled with [`PCP_BATCH`] frames
    /// from the zone when empty (Linux: `rmqueue_pcplist()` → `__rmqueue_pcplist()` →
    /// `rmqueue_bulk()`). `None` if the lists are bypassed right now, or the list's
    /// lock is taken (an interrupt on this CPU, a drain on another): the caller uses the
    /// zone, as Linux's `rmqueue_pcplist` failing its trylock does.
    fn pcp_alloc(&self) -> Option<Result<usize, FrameError>> {
        let metas = self.metas();
        let mut list = self.pcp.try_lock_local()?;
        if !self.pcp_usable() {
            return None;
        }
        if list.count() == 0 {
            let mut areas = self.free.lock();
            for _ in 0..PCP_BATCH {
                let Ok(idx) = self.rmqueue_smallest(&mut areas, 0) else {
                    break;
                };
                list.push_tail(metas, idx);
            }
        }
        let got = list.pop_head(metas).ok_or(FrameError::OutOfMemory);
        drop(list);
        Some(got.inspect(|&idx| metas[idx].prep_allocated(0)))
    }

    /// Puts a claimed order-0 frame on the current CPU's list, handing the coldest
    /// [`PCP_BATCH`] back to the zone when the list passes [`PCP_HIGH`] (Linux:
    /// `free_unref_page()` → `free_unref_page_commit()` → `free_pcppages_bulk()`).
    /// False if the lists are bypassed right now or the list's lock is taken (the
    /// caller frees to the zone, Linux: `free_unref_page` → `free_one_page`).
    fn pcp_free(&self, idx: usize) -> bool {
        let metas = self.metas();
        let Some(mut list) = self.pcp.try_lock_local() else {
            return false;
        };
        if !self.pcp_usable() {
            return false;
        }
        list.push_head(metas, idx);
        if list.count() > PCP_HIGH {
            let mut areas = self.free.lock();
            for _ in 0..PCP_BATCH {
                let Some(cold) = list.pop_tail(metas) else {
                    break;
                };
                self.release_to_zone(&mut areas, cold, 0);
            }
        }
        true
    }

    /// Gives a block that no one holds (claimed by a free, or taken off a per-CPU
    /// list) back to the buddy lists, poisoning it first if poisoning is on.
    fn release_to_zone(&self, areas: &mut FreeAreas, idx: usize, order: usize) {
        if self.poison.load(Ordering::Relaxed) {
            // Linux: free_pages_prepare() → kernel_poison_pages(). Under the lock, so
            // the block is poisoned before anyone can allocate it again.
            self.poison_block(self.idx_to_pa(idx), order);
        }
        self.free_block_locked(areas, self.base_pfn + idx as u64, order);
    }

    /// Empties every CPU's list into the buddy lists and returns how many frames moved
    /// (Linux: `drain_all_pages()`; it asks each CPU to drain its own list, here the
    /// list lock lets any CPU drain any list). Waits for each list's lock: not for
    /// interrupt handlers, which may have interrupted their own CPU's holder.
    pub fn drain_all_pages(&self) -> u64 {
        self.drain_lists(true)
    }

    /// [`drain_all_pages`](Self::drain_all_pages); with `wait_own` false the current
    /// CPU's list is only tried and skipped if held, which is safe from an interrupt
    /// handler (the allocation-failure retry, which may run in one).
    fn drain_lists(&self, wait_own: bool) -> u64 {
        let metas = self.metas();
        let own = crate::sync::lockdep::current_cpu() % crate::paging::MAX_CPUS;
        let mut moved = 0;
        for cpu in 0..crate::paging::MAX_CPUS {
            let mut list = if cpu == own && !wait_own {
                match self.pcp.try_lock_local() {
                    Some(l) => l,
                    None => continue,
                }
            } else {
                self.pcp.lock_cpu(cpu)
            };
            if list.count() == 0 {
                continue;
            }
            let mut areas = self.free.lock();
            while let Some(idx) = list.pop_tail(metas) {
                self.release_to_zone(&mut areas, idx, 0);
                moved += 1;
            }
        }
        moved
    }

    /// Bypasses the per-CPU lists until the guard is dropped, after emptying them, so
    /// that the buddy lists alone describe every free frame (Linux: `zone_pcp_disable()`
    /// … `zone_pcp_enable()`). For callers that need the exact buddy state, such as
    /// tests comparing per-order counts. Nests.
    pub fn pcp_disable(&self) -> PcpDisabled<'_> {
        self.pcp.disable();
        // Every free that saw the lists usable held a list lock when it did; taking each
        // lock after the switch catches what they left behind.
        self.drain_all_pages();
        PcpDisabled { pcp: &self.pcp }
    }

    /// Like [`alloc`](Self::alloc), with the whole block cleared (Linux: `__GFP_ZERO`,
    /// `kernel_init_pages()`).
    pub fn alloc_zeroed(&self, order: usize) -> Result<PhysAddr, FrameError> {
        let pa = self.alloc(order)?;
        // SAFETY: the block was just allocated, so nobody else uses it; it is RAM mapped read-write at `phys_offset` (contract of `new`) and `PAGE_SIZE << order` long.
        unsafe { core::ptr::write_bytes(self.phys_to_virt(pa), 0, (PAGE_BYTES << order) as usize) };
        Ok(pa)
    }

    /// Checks that `pa` is aligned to `PAGE_SIZE << order` and described by the metadata;
    /// returns its index.
    fn check(&self, pa: PhysAddr, order: usize) -> Result<usize, FrameError> {
        if order > MAX_ORDER {
            return Err(FrameError::BadOrder);
        }
        if !pa.as_u64().is_multiple_of(PAGE_BYTES << order) {
            return Err(FrameError::Misaligned);
        }
        self.pfn_to_idx(pa.as_u64() >> PAGE_SHIFT)
            .ok_or(FrameError::OutOfRange)
    }

    /// Frees the block at `idx` if it is allocated and (when given) of `expected` order:
    /// order 0 to the current CPU's list, anything else (or with the lists bypassed)
    /// to the buddy lists (Linux: `__free_pages()` → `free_unref_page()` or
    /// `__free_pages_ok()`).
    fn free_checked(&self, idx: usize, expected: Option<usize>) -> Result<(), FrameError> {
        // Atomic, so that two racing frees cannot both succeed even when they take the
        // locks of two different CPUs' lists.
        let order = self.metas()[idx].claim_for_free(expected)?;
        if order == 0 && self.pcp_free(idx) {
            return Ok(());
        }
        let mut areas = self.free.lock();
        self.release_to_zone(&mut areas, idx, order);
        Ok(())
    }

    /// Frees the block at `pa` of `order` outright (Linux: `__free_pages()` by the sole
    /// owner).
    ///
    /// The caller must hold the only reference; for shared frames use
    /// [`put_frame`](Self::put_frame). Checks, in this order: `BadOrder` (order above
    /// [`MAX_ORDER`]), `Misaligned` (`pa` not aligned to the block size), `OutOfRange`
    /// (not a frame this allocator describes), `NotAllocated` (not the head of an
    /// allocated block: double free, a tail frame, a reserved frame), `WrongOrder` (the
    /// block was allocated with another order). A rejected free changes nothing.
    pub fn free(&self, pa: PhysAddr, order: usize) -> Result<(), FrameError> {
        let idx = self.check(pa, order)?;
        let m = &self.metas()[idx];
        // Linux: free_page_is_bad(). Diagnostic only (racy by nature), hence outside the
        // lock, which must not be held while logging.
        if m.flags().contains(FrameFlags::HEAD) && (m.refcount() > 1 || m.mapcount() != 0) {
            log::warn!(
                "frame: freeing {:#x} with refcount {} mapcount {}",
                pa.as_u64(),
                m.refcount(),
                m.mapcount()
            );
        }
        self.free_checked(idx, Some(order))
    }

    /// Drops one reference on the block headed by `pa`; when it was the last one, frees
    /// the block with its recorded order and returns `Ok(true)` (Linux: `put_page()` ->
    /// `__folio_put()`).
    ///
    /// `pa` must be the head (the address [`alloc`](Self::alloc) returned): `Misaligned`
    /// if not page aligned, `OutOfRange` if unknown, `NotAllocated` if not an allocated
    /// head or its count is already 0.
    pub fn put_frame(&self, pa: PhysAddr) -> Result<bool, FrameError> {
        let idx = self.check(pa, 0)?;
        let m = &self.metas()[idx];
        if !m.flags().contains(FrameFlags::HEAD) {
            return Err(FrameError::NotAllocated);
        }
        match m.try_put() {
            None => Err(FrameError::NotAllocated),
            Some(false) => Ok(false),
            Some(true) => self.free_checked(idx, None).map(|()| true),
        }
    }

    /// Metadata of the frame containing `pa`, if this allocator describes it (Linux:
    /// `phys_to_page()`/`pfn_to_page()`; holes have metadata too, marked `RESERVED`).
    pub fn meta(&self, pa: PhysAddr) -> Option<&FrameMeta> {
        self.pfn_to_idx(pa.as_u64() >> PAGE_SHIFT)
            .map(|i| &self.metas()[i])
    }

    /// Virtual address of physical address `pa` in the offset mapping (Linux: `__va()`).
    pub fn phys_to_virt(&self, pa: PhysAddr) -> *mut u8 {
        pa.as_u64().wrapping_add(self.phys_offset) as *mut u8
    }

    /// Physical address behind `va`, which must lie in the offset mapping (Linux: `__pa()`).
    pub fn virt_to_phys(&self, va: *const u8) -> PhysAddr {
        PhysAddr::new((va as u64).wrapping_sub(self.phys_offset))
    }

    /// The offset of the physical memory mapping (virt = phys + offset).
    pub fn phys_offset(&self) -> u64 {
        self.phys_offset
    }

    /// Physical addresses described by the metadata array, holes included.
    pub fn phys_span(&self) -> Range<PhysAddr> {
        self.idx_to_pa(0)..PhysAddr::new((self.base_pfn + self.nr_meta as u64) << PAGE_SHIFT)
    }

    /// A snapshot of the counters (Linux: `/proc/buddyinfo`, `/proc/meminfo`).
    ///
    /// The per-CPU lists are read one lock at a time, after the buddy lists: exact when
    /// no other CPU allocates or frees meanwhile, approximate otherwise (as
    /// `/proc/meminfo` is).
    pub fn stats(&self) -> FrameStats {
        let free_per_order = self.free.lock().nr_free;
        let pcp_frames: u64 = (0..crate::paging::MAX_CPUS)
            .map(|cpu| u64::from(self.pcp.lock_cpu(cpu).count()))
            .sum();
        let buddy_frames: u64 = free_per_order
            .iter()
            .enumerate()
            .map(|(o, &n)| n << o)
            .sum();
        FrameStats {
            free_per_order,
            total_frames: self.total_frames,
            free_frames: buddy_frames + pcp_frames,
            pcp_frames,
            reserved_frames: self.reserved_frames,
        }
    }

    /// Usable frames given to the allocator (`FrameStats::total_frames`; Linux:
    /// `totalram_pages()`), without taking any lock: it never changes.
    pub fn total_frames(&self) -> u64 {
        self.total_frames
    }

    /// Frames currently handed out: total minus free minus reserved.
    pub fn allocated_frames(&self) -> u64 {
        let s = self.stats();
        s.total_frames - s.free_frames - s.reserved_frames
    }

    /// [`Self::allocated_frames`] once every RCU callback queued so far has run
    /// ([`crate::sync::rcu::rcu_barrier`] first): page-table pages a gather unlinks go
    /// back only after a grace period, so accounting and leak checks use this. Must
    /// not be called inside an RCU read-side section.
    pub fn allocated_frames_settled(&self) -> u64 {
        crate::sync::rcu::rcu_barrier();
        self.allocated_frames()
    }

    /// Switches page poisoning on (Linux: booting with `page_poison=1`): fills every
    /// free frame with [`PAGE_POISON`] now, every frame freed from now on as well, and
    /// checks the poison of every frame handed out from now on. A damaged frame is
    /// counted ([`poison_corruptions`](Self::poison_corruptions)), the first one
    /// recorded ([`first_poison_corruption`](Self::first_poison_corruption)) and each
    /// logged; the allocation still succeeds, as in Linux. Stays on for the allocator's
    /// life. Costs a write of every freed frame and a read of every allocated one.
    pub fn enable_page_poisoning(&self) {
        {
            let areas = self.free.lock();
            if self.poison.load(Ordering::Relaxed) {
                return;
            }
            self.for_each_free_block(&areas, |pa, order| self.poison_block(pa, order));
            self.poison.store(true, Ordering::Release);
        }
        // The per-CPU lists are bypassed from now on; what they hold was freed
        // unpoisoned, and goes back to the zone poisoned.
        self.drain_all_pages();
    }

    /// Is page poisoning on?
    pub fn page_poisoning(&self) -> bool {
        self.poison.load(Ordering::Relaxed)
    }

    /// Damaged free frames found so far (at allocation or by
    /// [`check_free_poison`](Self::check_free_poison)); 0 while poisoning is off.
    pub fn poison_corruptions(&self) -> u64 {
        self.poison_bad.load(Ordering::Relaxed)
    }

    /// The first damaged free frame found, if any.
    pub fn first_poison_corruption(&self) -> Option<PoisonReport> {
        *self.poison_first.lock()
    }

    /// Checks the poison of every frame that is free right now and returns how many are
    /// damaged (each also counted, recorded and logged as at allocation). Catches writes
    /// to freed frames that were not allocated again. The check Linux makes of each
    /// page when it is allocated, applied to all free pages at once (no direct Linux
    /// counterpart). Holds the allocator lock for a walk of all free memory: for tests.
    /// Returns 0 while poisoning is off.
    pub fn check_free_poison(&self) -> u64 {
        // Nothing reaches the per-CPU lists while poisoning is on, but a free that
        // raced with the switch may have left a frame there.
        self.drain_all_pages();
        let mut found = [None; 8];
        let mut n = 0u64;
        {
            let areas = self.free.lock();
            if !self.poison.load(Ordering::Relaxed) {
                return 0;
            }
            self.for_each_free_block(&areas, |pa, order| {
                for i in 0..1u64 << order {
                    if let Some(r) = self.check_poison(pa + i * PAGE_BYTES) {
                        // Reported after the lock is dropped (no logging under it).
                        if let Some(slot) = found.get_mut(n as usize) {
                            *slot = Some(r);
                        }
                        n += 1;
                    }
                }
            });
        }
        for r in found.iter().flatten() {
            self.report_poison(*r);
        }
        // Damaged frames beyond the ones reported one by one are still counted.
        let unreported = n.saturating_sub(found.len() as u64);
        self.poison_bad.fetch_add(unreported, Ordering::Relaxed);
        n
    }

    /// Calls `f(head, order)` for every free block. The lock is held by the caller.
    fn for_each_free_block(&self, areas: &FreeAreas, mut f: impl FnMut(PhysAddr, usize)) {
        let metas = self.metas();
        for (order, &head) in areas.head.iter().enumerate() {
            let mut cur = head;
            while cur != NIL {
                f(self.idx_to_pa(cur as usize), order);
                cur = metas[cur as usize].next.load(Ordering::Relaxed);
            }
        }
    }

    /// Fills the block at `pa` with [`PAGE_POISON`] (Linux: `kernel_poison_pages()`).
    /// The caller owns the block (it is being freed, or is free under the lock).
    fn poison_block(&self, pa: PhysAddr, order: usize) {
        // SAFETY: the block is owned by the allocator and nobody may use it (it is being freed, or is on a free list and the lock is held); it is RAM mapped read-write at `phys_offset` (contract of `new`) and `PAGE_SIZE << order` long.
        unsafe { core::ptr::write_bytes(self.phys_to_virt(pa), PAGE_POISON, PAGE_SIZE << order) };
    }

    /// The damage to the poison of the frame at `pa`, if any (Linux:
    /// `check_poison_mem()`). The caller owns the frame (just allocated, or free under
    /// the lock).
    fn check_poison(&self, pa: PhysAddr) -> Option<PoisonReport> {
        const WORD: u64 = u64::from_ne_bytes([PAGE_POISON; 8]);
        let p = self.phys_to_virt(pa);
        // SAFETY: the frame is owned by the caller as documented, so nothing may write to it (a racing write is exactly the bug being detected); one page of RAM mapped at `phys_offset`, page aligned, hence aligned for `u64`.
        let words = unsafe { core::slice::from_raw_parts(p as *const u64, PAGE_SIZE / 8) };
        // Word by word first: the common, undamaged case is one pass.
        let w = words.iter().position(|&w| w != WORD)?;
        // SAFETY: as above, the same page as bytes.
        let bytes = unsafe { core::slice::from_raw_parts(p, PAGE_SIZE) };
        let offset = w * 8 + bytes[w * 8..].iter().position(|&b| b != PAGE_POISON)?;
        Some(PoisonReport {
            frame: pa,
            offset,
            byte: bytes[offset],
            bad_bytes: bytes.iter().filter(|&&b| b != PAGE_POISON).count(),
        })
    }

    /// Counts, records and logs a damaged free frame. Not under the allocator lock.
    fn report_poison(&self, r: PoisonReport) {
        self.poison_bad.fetch_add(1, Ordering::Relaxed);
        self.poison_first.lock().get_or_insert(r);
        log::error!(
            "pagealloc: memory corruption: free frame {:#x} written to: byte {:#04x} at +{:#x}, {} bytes damaged",
            r.frame.as_u64(),
            r.byte,
            r.offset,
            r.bad_bytes
        );
    }
}

#[cfg(feature = "fault-inject")]
impl FrameAllocator {
    /// Test-only fault injection: of the allocations ([`alloc`](Self::alloc) and
    /// everything built on it) made from now on, fail exactly the `n`th (1-based) with
    /// [`FrameError::OutOfMemory`], changing nothing, and let every other one succeed
    /// as usual. `n == 0` disarms. Re-arming resets the count. Linux: `fail_page_alloc`.
    pub fn fail_nth_alloc(&self, n: u64) {
        use core::sync::atomic::Ordering::SeqCst;
        self.inject.fired.store(false, SeqCst);
        self.inject.seen.store(0, SeqCst);
        self.inject.countdown.store(n, SeqCst);
    }

    /// Disarms [`fail_nth_alloc`](Self::fail_nth_alloc) and reports how many
    /// allocations were made while armed and whether the failure happened.
    pub fn disarm_fail_nth(&self) -> FailNthReport {
        use core::sync::atomic::Ordering::SeqCst;
        self.inject.countdown.store(0, SeqCst);
        FailNthReport {
            allocations: self.inject.seen.swap(0, SeqCst),
            fired: self.inject.fired.swap(false, SeqCst),
        }
    }

    /// Counts one allocation if armed; true if it is the one to fail.
    fn inject_fails(&self) -> bool {
        use core::sync::atomic::Ordering::SeqCst;
        let armed = self
            .inject
            .countdown
            .try_update(SeqCst, SeqCst, |c| c.checked_sub(1));
        match armed {
            // Disarmed: nothing counted.
            Err(_) => false,
            Ok(left) => {
                self.inject.seen.fetch_add(1, SeqCst);
                if left == 1 {
                    self.inject.fired.store(true, SeqCst);
                }
                left == 1
            }
        }
    }
}

#[cfg(test)]
impl FrameAllocator {
    /// Holds the current CPU's list lock, as an interrupted holder does while a handler
    /// runs on its CPU.
    pub(super) fn hold_local_pcp(&self) -> spin::MutexGuard<'_, super::pcp::PcpList> {
        self.pcp.lock_cpu(crate::sync::lockdep::current_cpu())
    }

    /// Walks every free list and the whole metadata array and panics on any broken
    /// invariant: list links, flags and orders of free blocks, per-order counts, frames
    /// inside free blocks carrying allocator flags, and buddies left unmerged.
    pub(super) fn check_invariants(&self) {
        use Ordering::Relaxed;
        let metas = self.metas();
        // Frames on a per-CPU list (each checked: links, flags, order, count).
        let mut on_pcp = std::vec![false; self.nr_meta];
        for cpu in 0..crate::paging::MAX_CPUS {
            let list = self.pcp.lock_cpu(cpu);
            list.check(metas);
            for idx in list.frames(metas) {
                assert!(!on_pcp[idx], "frame {idx} on two pcp lists");
                on_pcp[idx] = true;
            }
        }
        let areas = self.free.lock();
        // For every frame: Some(head index) if it lies inside a free block.
        let mut in_free = std::vec![None::<usize>; self.nr_meta];
        for order in 0..NR_ORDERS {
            let mut count = 0;
            let mut prev = NIL;
            let mut cur = areas.head[order];
            while cur != NIL {
                let idx = cur as usize;
                let m = &metas[idx];
                assert_eq!(m.prev.load(Relaxed), prev, "prev link of free block {idx}");
                assert_eq!(m.flags(), FrameFlags::BUDDY, "flags of free block {idx}");
                assert_eq!(m.order(), order, "order of free block {idx}");
                let pfn = self.base_pfn + idx as u64;
                assert_eq!(pfn % (1 << order), 0, "free block {idx} misaligned");
                assert!(
                    idx + (1 << order) <= self.nr_meta,
                    "free block {idx} past the end"
                );
                for (i, slot) in in_free[idx..idx + (1 << order)].iter_mut().enumerate() {
                    assert!(slot.is_none(), "frame {} in two free blocks", idx + i);
                    assert!(
                        !on_pcp[idx + i],
                        "frame {} free twice: buddy and pcp",
                        idx + i
                    );
                    *slot = Some(idx);
                }
                count += 1;
                assert!(count <= self.nr_meta as u64, "cycle in free list {order}");
                prev = cur;
                cur = m.next.load(Relaxed);
            }
            assert_eq!(count, areas.nr_free[order], "nr_free[{order}]");
        }
        for (idx, m) in metas.iter().enumerate() {
            let f = m.flags();
            match in_free[idx] {
                Some(h) if h == idx => {
                    // A free block whose buddy is also free with the same order should
                    // have been merged.
                    let order = m.order();
                    if order < MAX_ORDER {
                        let buddy = (self.base_pfn + idx as u64) ^ (1 << order);
                        if let Some(b) = self.pfn_to_idx(buddy) {
                            let bm = &metas[b];
                            assert!(
                                !(in_free[b] == Some(b) && bm.order() == order),
                                "free buddies {idx} and {b} of order {order} not merged"
                            );
                        }
                    }
                }
                Some(_) => assert!(
                    !f.intersects(FrameFlags::ALLOCATOR_OWNED),
                    "frame {idx} inside a free block has flags {f:?}"
                ),
                None => assert!(!f.contains(FrameFlags::BUDDY), "stray BUDDY on frame {idx}"),
            }
            assert_eq!(
                f.contains(FrameFlags::PCP),
                on_pcp[idx],
                "PCP flag of frame {idx} disagrees with the pcp lists"
            );
            if f.contains(FrameFlags::HEAD) {
                assert!(m.refcount() > 0, "allocated head {idx} with refcount 0");
            }
        }
    }
}
