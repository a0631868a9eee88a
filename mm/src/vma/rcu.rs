//! A minimal epoch-based RCU for the VMA tree's lock-free readers.
//!
//! Linux: `rcu_read_lock()` / `synchronize_rcu()` as used by the maple tree.
//!
//! # Protocol
//!
//! * A global epoch counter `EPOCH` starts at 1 and only grows.
//! * A reader claims one of [`MAX_READERS`] slots and stores the epoch it observed in it
//!   (SeqCst) *before* it loads any tree root; it stores 0 (Release) when it leaves.
//! * A writer publishes a new root (SeqCst store), then advances the epoch with
//!   `fetch_add` (SeqCst) and tags the nodes it unlinked with the *old* epoch `e`.
//! * Nodes tagged `e` may be reclaimed once every slot is 0 or holds a value `> e`.
//!
//! Why that is enough: a reader whose slot holds `E > e` read the epoch after the
//! writer's `fetch_add`, which follows the root publication in the SeqCst total order,
//! so every root it loads afterwards is the new one (or newer) and cannot reach nodes
//! unlinked at `e`. A reader whose slot the writer sees as 0 stored its slot value after
//! the writer's scan, hence loads its root after the publication too. Any other reader
//! is seen with `E <= e` and blocks reclamation. The writer's Acquire load of a 0 slot
//! synchronises with the reader's Release store, so the reader's node reads happen
//! before the reuse. Readers never block writers; reclamation is simply deferred.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Maximum number of concurrent RCU readers (a reader beyond this spins for a slot).
pub const MAX_READERS: usize = 64;

static EPOCH: AtomicU64 = AtomicU64::new(1);
#[allow(clippy::declare_interior_mutable_const)]
const SLOT_INIT: AtomicU64 = AtomicU64::new(0);
static SLOTS: [AtomicU64; MAX_READERS] = [SLOT_INIT; MAX_READERS];
static HINT: AtomicUsize = AtomicUsize::new(0);

/// An RCU read-side critical section (Linux: `rcu_read_lock()` … `rcu_read_unlock()`).
pub struct RcuReadGuard {
    slot: usize,
}

/// Enter a read-side critical section.
pub fn rcu_read_lock() -> RcuReadGuard {
    let mut i = HINT.fetch_add(1, Ordering::Relaxed) % MAX_READERS;
    loop {
        let e = EPOCH.load(Ordering::SeqCst);
        if SLOTS[i]
            .compare_exchange(0, e, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
        {
            return RcuReadGuard { slot: i };
        }
        i = (i + 1) % MAX_READERS;
        core::hint::spin_loop();
    }
}

impl Drop for RcuReadGuard {
    fn drop(&mut self) {
        SLOTS[self.slot].store(0, Ordering::Release);
    }
}

/// Advance the epoch after a publication; returns the tag for nodes unlinked by it.
pub(super) fn retire_epoch() -> u64 {
    EPOCH.fetch_add(1, Ordering::SeqCst)
}

/// Every object tagged with an epoch `< safe_bound()` may be reclaimed now.
pub(super) fn safe_bound() -> u64 {
    let mut min = u64::MAX;
    for s in SLOTS.iter() {
        // SeqCst: the scan must be ordered after the epoch bump (see the module doc).
        let v = s.load(Ordering::SeqCst);
        if v != 0 && v < min {
            min = v;
        }
    }
    min
}

/// Current epoch (diagnostics).
pub fn current_epoch() -> u64 {
    EPOCH.load(Ordering::Relaxed)
}
