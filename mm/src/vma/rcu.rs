//! The VMA tree's use of RCU: retired nodes handed to `call_rcu` in node-sized records,
//! and given back to their writer once the grace period is over.
//!
//! RCU itself lives in [`crate::sync::rcu`]; lock-free readers (`lock_vma_under_rcu`)
//! use its [`rcu_read_lock`]. Linux frees every replaced maple node with `call_rcu`
//! on the `rcu_head` the dead node's own slots make room for (`ma_free_rcu` →
//! `mt_free_rcu` → `kmem_cache_free`), and its readers check each node's "dead" mark
//! after reading a slot, since those slots are overwritten. Our readers take no such
//! check, so a retired node stays intact until its grace period ends, and the
//! `rcu_head` lives in a **record** instead: a block the size of a node, taken from the
//! writer's own reservation, that lists up to `RECORD_ITEMS` (27) retired nodes. The
//! writer fills its open record across publications and queues it with `call_rcu`
//! when it is full (Linux's `kfree_rcu` batches objects into pages the same way), or
//! when it wants its nodes back; so one callback serves a couple of dozen nodes.
//!
//! When the grace period is over the callback, which may run in the timer interrupt
//! on any CPU, only pushes the record onto its writer's **return stack** (a
//! lock-free stack: pushes by compare-and-swap, and the writer takes everything at
//! once with a swap, so no ABA). The writer then puts the nodes and the record blocks
//! back into its node cache, in process context, the next time its cache runs low:
//! Linux's slab per-CPU caches play that part for `kmem_cache_free`d maple nodes.
//!
//! The return stack is shared by the writer and its records in flight and counts them
//! (`refs`); whoever drops the last reference frees what is on it, so a tree destroyed
//! while records wait (an address space torn down right after a munmap) leaks nothing
//! and frees nothing early.

pub use crate::sync::rcu::{RcuReadGuard, rcu_read_lock};

use core::alloc::Layout;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering, fence};

use crate::errno::Errno;
use crate::sync::rcu::{self, RcuHead};

/// Bytes of a record: one tree node.
pub(super) const RECORD_BYTES: usize = 256;
/// Retired items one record lists (the rest of the block is the header).
pub(super) const RECORD_ITEMS: usize = (RECORD_BYTES - 5 * 8) / 8;

/// A record of retired items (Linux: the `rcu_head` of `ma_free_rcu`, here one per
/// [`RECORD_ITEMS`] nodes). Lives in a node-sized block owned by RCU while queued.
#[repr(C)]
struct Record {
    // First field (`repr(C)`): the callback finds the record from its head.
    rcu: RcuHead,
    home: *mut Home,
    /// The next record on the return stack.
    link: *mut Record,
    n: usize,
    items: [usize; RECORD_ITEMS],
}

const _: () = assert!(core::mem::size_of::<Record>() == RECORD_BYTES);

/// How the last owner of a [`Home`] frees a retired item or a record block (a block
/// comes as its address: an item encoding must read an 8-aligned address as one
/// node-sized block).
pub(super) type FreeFn = unsafe fn(usize);

/// A writer's return stack, shared with its records in flight.
struct Home {
    /// Records whose grace period ended, linked by `link`.
    done: AtomicPtr<Record>,
    /// The writer's reference and one per queued record.
    refs: AtomicUsize,
    free: FreeFn,
}

const HOME: Layout = Layout::new::<Home>();

/// The writer's side of node retirement (owned by the tree writer, under the mmap
/// write lock).
pub(super) struct Retirement {
    home: *mut Home,
    /// The record being filled (not yet queued), or null.
    open: *mut Record,
    /// Items and record blocks handed to RCU and not yet taken back.
    in_flight: usize,
}

impl Retirement {
    /// Nothing retired yet; the return stack is allocated by [`Self::prepare`].
    pub(super) const fn new() -> Self {
        Self {
            home: ptr::null_mut(),
            open: ptr::null_mut(),
            in_flight: 0,
        }
    }

    /// Allocate the return stack if there is none yet, so that [`Self::retire`]
    /// cannot fail (part of the writer's preallocation).
    pub(super) fn prepare(&mut self, free: FreeFn) -> Result<(), Errno> {
        if self.home.is_null() {
            // SAFETY: `HOME` has a non-zero size.
            let h = unsafe { alloc::alloc::alloc(HOME) } as *mut Home;
            if h.is_null() {
                return Err(Errno::ENOMEM);
            }
            // SAFETY: freshly allocated for a `Home`, known to no one else.
            unsafe {
                h.write(Home {
                    done: AtomicPtr::new(ptr::null_mut()),
                    refs: AtomicUsize::new(1),
                    free,
                })
            };
            self.home = h;
        }
        Ok(())
    }

    /// Record blocks [`Self::retire`] may take for `items` items (the open record may
    /// be full).
    pub(super) const fn records_for(items: usize) -> usize {
        // At least `items.div_ceil(RECORD_ITEMS) + 1`, without the remainder.
        items / RECORD_ITEMS + 2
    }

    /// Items and record blocks not yet taken back (diagnostics and the writer's drive
    /// heuristic).
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Retire `items`: they are given back by [`Self::take_done`] after a full grace
    /// period. They are added to the open record, which goes to `call_rcu` once full
    /// (or at [`Self::drive`] or [`Self::release`]): one callback per
    /// [`RECORD_ITEMS`] nodes, as Linux's `kfree_rcu` batches objects into pages
    /// before it queues them. Holding an item back only delays its free. `block`
    /// supplies up to [`Self::records_for`]`(items.len())` record blocks.
    ///
    /// # Safety
    /// [`Self::prepare`] succeeded. Each item is unreachable by the tree from now on
    /// (readers that found it before may still read it until the grace period ends);
    /// each block is `RECORD_BYTES` long, 8-aligned, and the caller's alone.
    pub(super) unsafe fn retire(&mut self, items: &[usize], mut block: impl FnMut() -> *mut u8) {
        let mut r = self.open;
        for &x in items {
            if r.is_null() {
                r = block() as *mut Record;
                // SAFETY: contract: a block of a record's size and alignment, ours alone.
                // The header is written; `items` is written up to `n` before it is read.
                unsafe {
                    ptr::addr_of_mut!((*r).rcu).write(RcuHead::new());
                    ptr::addr_of_mut!((*r).home).write(self.home);
                    ptr::addr_of_mut!((*r).link).write(ptr::null_mut());
                    ptr::addr_of_mut!((*r).n).write(0);
                }
                self.in_flight += 1;
            }
            // SAFETY: the open record is ours until `seal` queues it; `n` is below
            // `RECORD_ITEMS` (a full record is sealed at once).
            unsafe {
                let n = (*r).n;
                ptr::addr_of_mut!((*r).items)
                    .cast::<usize>()
                    .add(n)
                    .write(x);
                (*r).n = n + 1;
                if n + 1 == RECORD_ITEMS {
                    self.open = r;
                    self.seal();
                    r = ptr::null_mut();
                }
            }
        }
        self.open = r;
        self.in_flight += items.len();
    }

    /// Queue the open record, if any, for its grace period.
    pub(super) fn seal(&mut self) {
        let r = core::mem::take(&mut self.open);
        if r.is_null() {
            return;
        }
        // SAFETY: `prepare` made `home` before the record was opened; the reference
        // taken here is the record's, dropped by its callback.
        unsafe { (*self.home).refs.fetch_add(1, Ordering::Relaxed) };
        // SAFETY: the record is ours until `record_done` runs with it, which may run
        // anywhere: it takes no lock and never waits.
        unsafe { rcu::call_rcu(r.cast::<RcuHead>(), record_done) };
    }

    /// Take back every record whose grace period has ended: `give` gets each retired
    /// item, then each record block (as its address, see [`FreeFn`]). Cheap when
    /// nothing came back (one atomic swap).
    pub(super) fn take_done(&mut self, mut give: impl FnMut(usize)) {
        if self.home.is_null() {
            return;
        }
        // SAFETY: `home` lives while we hold our reference. Acquire: pairs with the
        // callbacks' Release pushes, so the records' links are visible.
        let mut r = unsafe { (*self.home).done.swap(ptr::null_mut(), Ordering::Acquire) };
        while !r.is_null() {
            // SAFETY: a record on the stack finished its grace period and was pushed
            // by its callback; the swap made the whole stack ours. Its fields are read
            // before its block is handed back.
            unsafe {
                let next = (*r).link;
                let n = (*r).n;
                for i in 0..n {
                    give((*r).items[i]);
                }
                self.in_flight -= n + 1;
                give(r as usize);
                r = next;
            }
        }
    }

    /// Drive RCU from the writer (Linux: `__call_rcu_core` forcing progress when
    /// callbacks pile up) and take back what finished. Never waits.
    pub(super) fn drive(&mut self, give: impl FnMut(usize)) {
        if self.in_flight == 0 {
            return;
        }
        self.seal();
        rcu::rcu_core();
        self.take_done(give);
    }

    /// The writer goes away: queue the open record and drop the writer's reference.
    /// What is on the stack now, or arrives later, is freed with the [`FreeFn`] given
    /// to `prepare` by whoever drops the last reference.
    pub(super) fn release(&mut self) {
        self.seal();
        let h = core::mem::take(&mut self.home);
        self.in_flight = 0;
        if !h.is_null() {
            // SAFETY: our reference kept `h` alive; it is given up here, once.
            unsafe { put_home(h) };
        }
    }
}

impl Drop for Retirement {
    fn drop(&mut self) {
        self.release();
    }
}

/// Drop one reference to `h`; the last one frees every record on its stack, their
/// items, and `h`.
///
/// # Safety
/// The caller owns one reference to a live `h` and gives it up.
unsafe fn put_home(h: *mut Home) {
    // SAFETY: contract: `h` is live until the last reference is dropped.
    unsafe {
        // Release: everything this owner did to the stack comes before the free.
        if (*h).refs.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        fence(Ordering::Acquire);
        let free = (*h).free;
        let mut r = (*h).done.swap(ptr::null_mut(), Ordering::Acquire);
        while !r.is_null() {
            let next = (*r).link;
            for i in 0..(*r).n {
                free((*r).items[i]);
            }
            free(r as usize);
            r = next;
        }
        alloc::alloc::dealloc(h.cast(), HOME);
    }
}

/// The grace period of a record is over: push it onto its writer's return stack and
/// drop its reference (the RCU callback; may run in the timer interrupt, takes no
/// lock).
///
/// # Safety
/// `head` is a record queued by [`Retirement::seal`].
unsafe fn record_done(head: *mut RcuHead) {
    let r = head.cast::<Record>();
    // SAFETY: contract: the record is ours now (RCU handed it back), and its `home`
    // lives while the record's reference is held.
    unsafe {
        let h = (*r).home;
        let mut old = (*h).done.load(Ordering::Relaxed);
        loop {
            (*r).link = old;
            // Release: the link (and the record) before its publication to the writer.
            match (*h)
                .done
                .compare_exchange_weak(old, r, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(o) => old = o,
            }
        }
        put_home(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use alloc::vec::Vec;

    const BLOCK: Layout = match Layout::from_size_align(RECORD_BYTES, 8) {
        Ok(l) => l,
        Err(_) => panic!(),
    };

    fn block() -> *mut u8 {
        // SAFETY: non-zero size.
        let b = unsafe { alloc::alloc::alloc(BLOCK) };
        assert!(!b.is_null());
        b
    }

    /// Blocks freed by the last owner of the test's return stack.
    static FREED: AtomicUsize = AtomicUsize::new(0);

    /// # Safety
    /// `x` is a block from [`block`] that no one else frees.
    unsafe fn count_free(x: usize) {
        FREED.fetch_add(1, Ordering::Relaxed);
        // SAFETY: contract.
        unsafe { alloc::alloc::dealloc(x as *mut u8, BLOCK) };
    }

    #[test]
    fn retired_items_come_back_only_after_a_grace_period_and_outlive_their_writer() {
        let mut r = Retirement::new();
        r.prepare(count_free).unwrap();
        // A reader that was inside before the items were retired holds them.
        let g = rcu_read_lock();
        let items: Vec<usize> = (0..40).map(|_| block() as usize).collect();
        // SAFETY: the items are blocks of ours, reachable by no structure.
        unsafe { r.retire(&items, block) };
        // 27 in a queued record, 13 in the open one: two record blocks.
        assert_eq!(r.in_flight(), 42);
        r.seal();
        let mut back = Vec::new();
        r.drive(|x| back.push(x));
        assert!(back.is_empty(), "given back under a reader of their time");
        drop(g);
        crate::sync::rcu::rcu_barrier();
        r.take_done(|x| back.push(x));
        assert_eq!(back.len(), 42);
        assert_eq!(r.in_flight(), 0);
        for x in &items {
            assert!(back.contains(x));
        }
        for x in back {
            // SAFETY: given back: ours again.
            unsafe { alloc::alloc::dealloc(x as *mut u8, BLOCK) };
        }

        // The writer goes away while a record waits: its callback, the last owner of
        // the return stack, frees the items and the record then, not before.
        let g = rcu_read_lock();
        let items: Vec<usize> = (0..5).map(|_| block() as usize).collect();
        // SAFETY: as above.
        unsafe { r.retire(&items, block) };
        r.release();
        crate::sync::rcu::rcu_core();
        assert_eq!(FREED.load(Ordering::Relaxed), 0, "freed under a reader");
        drop(g);
        crate::sync::rcu::rcu_barrier();
        assert_eq!(FREED.load(Ordering::Relaxed), 6);
    }
}
