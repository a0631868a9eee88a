//! Per-CPU page lists: each CPU's private cache of free order-0 frames (Linux:
//! `struct per_cpu_pages`, `mm/page_alloc.c`'s `rmqueue_pcplist()` and
//! `free_unref_page()`).
//!
//! Most allocations and frees are of single frames, and with one zone lock every CPU
//! would meet every other on that lock and on the free-list heads for each page it
//! faults in or unmaps. So each CPU keeps a short list of free frames of its own: an
//! order-0 allocation pops the list's head and a free pushes there, under a lock only
//! this CPU normally takes, so its cache line stays in this CPU's cache. The zone lock
//! is taken once per [`PCP_BATCH`] frames: to refill an empty list
//! (`rmqueue_bulk()`), and to hand the coldest [`PCP_BATCH`] frames back when a list
//! grows past [`PCP_HIGH`] (`free_pcppages_bulk()`).
//!
//! This module owns the list itself, linked through the frames' metadata like the buddy
//! lists (Linux: `page->pcp_list`); the policy (when to refill, drain, bypass) is the
//! allocator's, in `buddy.rs`. A frame on a list has [`FrameFlags::PCP`] and order 0,
//! and counts as free. Frames on a list do not merge with their buddies (Linux: a
//! pcp page is not `PageBuddy`), which is why the lists are short and drained whenever
//! the buddy allocator must see all free memory: on allocation failure
//! (`drain_all_pages()` in the slow path), before page poisoning is switched on, and
//! when a caller asks for the exact buddy state (`zone_pcp_disable()`).
//!
//! Locking, as Linux since 6.0 (`pcp_spin_trylock`): each list has its own spin lock,
//! taken with interrupts left as they are and only ever *tried* by its own CPU. Frames
//! are freed from interrupts too (RCU callbacks free page-table pages from the timer
//! tick): a handler that interrupts its CPU's holder finds the lock taken and goes to
//! the zone instead, so it never spins on a lock its own CPU holds, and the common
//! path does not pay for switching interrupts off and on (which, under QEMU's TCG, is
//! what the two-CPU allocation loop spent its time on). Another CPU takes the lock
//! only to drain or count, and may wait for it. Lock order: a list lock, then the zone
//! lock, never the other way round.

use core::sync::atomic::{AtomicU32, Ordering};

use super::meta::{FrameFlags, FrameMeta, NIL};
use crate::paging::MAX_CPUS;
use spin::{Mutex, MutexGuard};

/// Frames moved between a list and the zone at a time (Linux: `pcp->batch`, 63 for a
/// zone of a gigabyte or more, `zone_batchsize()`).
pub const PCP_BATCH: u32 = 63;

/// A list holding more frames than this after a free hands [`PCP_BATCH`] of them back
/// (Linux: `pcp->high`; its lower bound there is four batches).
pub const PCP_HIGH: u32 = 4 * PCP_BATCH;

/// One CPU's list of free order-0 frames, hottest at the head (Linux: the order-0
/// list of `struct per_cpu_pages`), doubly linked through `FrameMeta::{next, prev}`.
pub(super) struct PcpList {
    head: u32,
    tail: u32,
    count: u32,
}

impl PcpList {
    const fn new() -> Self {
        Self {
            head: NIL,
            tail: NIL,
            count: 0,
        }
    }

    /// Frames on the list.
    pub(super) fn count(&self) -> u32 {
        self.count
    }

    /// Puts free frame `idx` at the head, where it is handed out first: it was just
    /// used, so it is likely still in this CPU's cache (Linux: `list_add`, hot).
    pub(super) fn push_head(&mut self, metas: &[FrameMeta], idx: usize) {
        let m = &metas[idx];
        m.next.store(self.head, Ordering::Relaxed);
        m.prev.store(NIL, Ordering::Relaxed);
        match self.head {
            NIL => self.tail = idx as u32,
            h => metas[h as usize].prev.store(idx as u32, Ordering::Relaxed),
        }
        self.head = idx as u32;
        self.count += 1;
        m.set_order(0);
        m.store_flags(FrameFlags::PCP);
    }

    /// Puts free frame `idx` at the tail (a refill: cold frames from the zone).
    pub(super) fn push_tail(&mut self, metas: &[FrameMeta], idx: usize) {
        let m = &metas[idx];
        m.next.store(NIL, Ordering::Relaxed);
        m.prev.store(self.tail, Ordering::Relaxed);
        match self.tail {
            NIL => self.head = idx as u32,
            t => metas[t as usize].next.store(idx as u32, Ordering::Relaxed),
        }
        self.tail = idx as u32;
        self.count += 1;
        m.set_order(0);
        m.store_flags(FrameFlags::PCP);
    }

    /// Takes the hottest frame; its flags are cleared.
    pub(super) fn pop_head(&mut self, metas: &[FrameMeta]) -> Option<usize> {
        let idx = self.head;
        if idx == NIL {
            return None;
        }
        let m = &metas[idx as usize];
        self.head = m.next.load(Ordering::Relaxed);
        match self.head {
            NIL => self.tail = NIL,
            h => metas[h as usize].prev.store(NIL, Ordering::Relaxed),
        }
        self.count -= 1;
        m.store_flags(FrameFlags::empty());
        Some(idx as usize)
    }

    /// Takes the coldest frame (what a drain hands back first, Linux:
    /// `free_pcppages_bulk()` taking `list_last_entry`); its flags are cleared.
    pub(super) fn pop_tail(&mut self, metas: &[FrameMeta]) -> Option<usize> {
        let idx = self.tail;
        if idx == NIL {
            return None;
        }
        let m = &metas[idx as usize];
        self.tail = m.prev.load(Ordering::Relaxed);
        match self.tail {
            NIL => self.head = NIL,
            t => metas[t as usize].next.store(NIL, Ordering::Relaxed),
        }
        self.count -= 1;
        m.store_flags(FrameFlags::empty());
        Some(idx as usize)
    }

    /// The frames on the list, head first (for invariant checks).
    #[cfg(test)]
    pub(super) fn frames<'a>(&self, metas: &'a [FrameMeta]) -> impl Iterator<Item = usize> + 'a {
        let mut cur = self.head;
        core::iter::from_fn(move || {
            (cur != NIL).then(|| {
                let idx = cur as usize;
                cur = metas[idx].next.load(Ordering::Relaxed);
                idx
            })
        })
    }

    /// Checks the links both ways and the count (for invariant checks).
    #[cfg(test)]
    pub(super) fn check(&self, metas: &[FrameMeta]) {
        let mut prev = NIL;
        let mut n = 0;
        for idx in self.frames(metas) {
            let m = &metas[idx];
            assert_eq!(
                m.prev.load(Ordering::Relaxed),
                prev,
                "pcp prev link of {idx}"
            );
            assert_eq!(m.flags(), FrameFlags::PCP, "flags of pcp frame {idx}");
            assert_eq!(m.order(), 0, "order of pcp frame {idx}");
            prev = idx as u32;
            n += 1;
            assert!(n <= metas.len() as u32, "cycle in a pcp list");
        }
        assert_eq!(self.tail, prev, "pcp tail");
        assert_eq!(self.count, n, "pcp count");
    }
}

/// One list per CPU, each on its own cache line so that CPUs never share one.
#[repr(align(64))]
struct PcpSlot(Mutex<PcpList>);

/// Every CPU's list, and the switch that bypasses them (Linux: `zone->per_cpu_pageset`
/// with `zone_pcp_disable()`).
pub(super) struct PerCpuPages {
    slots: [PcpSlot; MAX_CPUS],
    /// Holders of [`PcpDisabled`] guards; the lists are bypassed while it is non-zero
    /// (Linux: `zone_pcp_disable()` setting `high` and `batch` to pass-through values).
    disabled: AtomicU32,
}

impl PerCpuPages {
    pub(super) const fn new() -> Self {
        Self {
            slots: [const { PcpSlot(Mutex::new(PcpList::new())) }; MAX_CPUS],
            disabled: AtomicU32::new(0),
        }
    }

    /// The current CPU's list, if its lock is free (Linux: `pcp_spin_trylock`):
    /// `None` when an interrupt arrived while this CPU held it, or while another CPU
    /// drains it; the caller then goes to the zone. There is no preemption, so the CPU
    /// cannot change while the guard lives; on the host two threads may share a slot,
    /// which the lock makes safe.
    pub(super) fn try_lock_local(&self) -> Option<MutexGuard<'_, PcpList>> {
        self.slots[crate::sync::lockdep::current_cpu() % MAX_CPUS]
            .0
            .try_lock()
    }

    /// CPU `cpu`'s list, locked, waiting if needed: a drain or a count, never from an
    /// interrupt handler.
    pub(super) fn lock_cpu(&self, cpu: usize) -> MutexGuard<'_, PcpList> {
        self.slots[cpu % MAX_CPUS].0.lock()
    }

    /// Whether a guard asks for the lists to be bypassed. Read under a list lock, so
    /// that a drain taking every list lock after setting it leaves no frame behind.
    pub(super) fn disabled(&self) -> bool {
        self.disabled.load(Ordering::Acquire) != 0
    }

    pub(super) fn disable(&self) {
        self.disabled.fetch_add(1, Ordering::AcqRel);
    }

    pub(super) fn enable(&self) {
        self.disabled.fetch_sub(1, Ordering::AcqRel);
    }
}

/// While this guard lives, order-0 allocations and frees bypass the per-CPU lists and
/// the lists are empty, so the buddy lists describe all free memory exactly (Linux:
/// `zone_pcp_disable()` … `zone_pcp_enable()`, used around memory offlining and
/// `alloc_contig_range()`). Nests. From
/// [`FrameAllocator::pcp_disable`](super::FrameAllocator::pcp_disable).
pub struct PcpDisabled<'a> {
    pub(super) pcp: &'a PerCpuPages,
}

impl Drop for PcpDisabled<'_> {
    fn drop(&mut self) {
        self.pcp.enable();
    }
}
