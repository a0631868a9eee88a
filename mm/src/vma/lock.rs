//! The mmap lock, `mm_lock_seq`, and the per-VMA lock state machine.
//!
//! Linux: `include/linux/mmap_lock.h`, `mm/mmap_lock.c` (`vma_start_read`,
//! `vma_end_read`, `__vma_start_write`, `vma_mark_attached`, `vma_mark_detached`,
//! `vma_end_write_all`).
//!
//! # States of `vm_refcnt` (Linux: `include/linux/mmap_lock.h`)
//!
//! `vm_refcnt`: 0 = detached; 1 = attached (unlocked, or write-locked iff
//! `vm_lock_seq == mm_lock_seq`); 2..FLAG-1 = read-locked by `n-1` readers; values with
//! [`VM_REFCNT_EXCLUDE_READERS_FLAG`] set = a writer or detacher is excluding readers.
//!
//! `mm_lock_seq` is odd while the mmap lock is write-held; `vma_start_write` copies it
//! into `vm_lock_seq`; `mmap_write_unlock` bumps it to even, which releases every VMA
//! write lock of that hold at once (Linux: `vma_end_write_all`).
//!
//! Waiting: this kernel has no sleeping primitives yet, so writers that must wait for
//! readers to leave spin (`core::hint::spin_loop`). The states and orderings are those
//! of Linux; replacing the spin with an rcuwait is local to `wait_refcnt`.
//!
//! Lock order: rank 2 of the table in [`crate::sync`] (mmap_lock → VMA write lock(s)
//! → hugetlb vma_lock → i_mmap → anon_vma → page-table lock).

use core::sync::atomic::{AtomicU32, Ordering};

use super::area::{Vma, VmaRef};
use crate::errno::Errno;
use crate::sync::lockdep::{self, Acquire, LockClass};

/// Linux: `VM_REFCNT_EXCLUDE_READERS_FLAG` (`VMA_LOCK_OFFSET`), bit 30.
pub const VM_REFCNT_EXCLUDE_READERS_FLAG: u32 = 1 << 30;
/// Linux: `VM_REFCNT_LIMIT` — readers may not push the count above this.
pub const VM_REFCNT_LIMIT: u32 = VM_REFCNT_EXCLUDE_READERS_FLAG - 1;

/// Why a lock-free `vma_start_read` failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmaReadError {
    /// The VMA was detached (refcnt 0): the lookup raced with removal; retry it.
    /// Linux returns `ERR_PTR(-EAGAIN)`.
    Detached,
    /// The VMA is write-locked (`vm_lock_seq == mm_lock_seq`). Linux returns NULL.
    WriteLocked,
    /// Readers are excluded (FLAG set) or the reader count would overflow. NULL.
    Excluded,
    /// The slot was reused by another address space. NULL.
    OtherMm,
}

impl VmaReadError {
    /// The errno Linux would report (`EAGAIN` for a retryable race, else the caller
    /// falls back to the mmap lock, reported here as `EBUSY`).
    pub fn errno(self) -> Errno {
        match self {
            VmaReadError::Detached => Errno::EAGAIN,
            _ => Errno::EBUSY,
        }
    }
}

/// "Increment unless zero and unless the result exceeds LIMIT", acquire on success.
/// Returns the old value on failure.
/// Linux: `__refcount_inc_not_zero_limited_acquire()`.
pub(super) fn refcnt_inc_limited(vma: &Vma) -> Result<(), u32> {
    let rc = &vma.cold.vm_refcnt;
    let mut old = rc.load(Ordering::Relaxed);
    loop {
        if old == 0 || old >= VM_REFCNT_LIMIT {
            return Err(old);
        }
        match rc.compare_exchange_weak(old, old + 1, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => return Ok(()),
            Err(v) => old = v,
        }
    }
}

/// Add FLAG unless the count is zero. Linux: `refcount_add_not_zero(FLAG)`.
fn refcnt_add_flag_not_zero(vma: &Vma) -> bool {
    let rc = &vma.cold.vm_refcnt;
    let mut old = rc.load(Ordering::Relaxed);
    loop {
        if old == 0 {
            return false;
        }
        match rc.compare_exchange_weak(
            old,
            old + VM_REFCNT_EXCLUDE_READERS_FLAG,
            Ordering::Acquire,
            Ordering::Relaxed,
        ) {
            Ok(_) => return true,
            Err(v) => old = v,
        }
    }
}

/// Wait until `vm_refcnt == target` (readers leaving). Linux: `rcuwait_wait_event`.
///
/// The wait leaves interrupts as they are (enabled on every path that writes VMAs),
/// so a CPU waiting here keeps answering IPIs: a reader's CPU that is itself waiting
/// for our CPU's shootdown answer gets it. Lockdep-light checks that no lock of a
/// higher rank (a page-table lock) is held: its holder may be the reader we wait for.
#[track_caller]
fn wait_refcnt(vma: &Vma, target: u32) {
    lockdep::might_wait(LockClass::VmaLock);
    while vma.cold.vm_refcnt.load(Ordering::Acquire) != target {
        core::hint::spin_loop();
    }
}

/// The lock-free read attempt. Linux: `vma_start_read()`.
pub(super) fn vma_start_read(
    mm_id: u64,
    mm_lock_seq: &AtomicU32,
    vma: &Vma,
) -> Result<(), VmaReadError> {
    // 1. Cheap peek: a write-locked VMA cannot be read-locked.
    if vma.vm_lock_seq.load(Ordering::Relaxed) == mm_lock_seq.load(Ordering::Relaxed) {
        return Err(VmaReadError::WriteLocked);
    }
    // 2. Take a reference unless detached / excluded.
    if let Err(old) = refcnt_inc_limited(vma) {
        return Err(if old == 0 {
            VmaReadError::Detached
        } else {
            VmaReadError::Excluded
        });
    }
    // 3. Type-stable memory: the VMA may now belong to another mm.
    if vma.mm_id() != mm_id {
        vma_end_read(vma);
        return Err(VmaReadError::OtherMm);
    }
    // 4. Re-check with acquire, pairing with the release in `mmap_write_unlock`.
    if vma.vm_lock_seq.load(Ordering::Relaxed) == mm_lock_seq.load(Ordering::Acquire) {
        vma_end_read(vma);
        return Err(VmaReadError::WriteLocked);
    }
    Ok(())
}

/// Drop a read reference. Linux: `vma_end_read()`. A waiting writer spins on the
/// count, so no wake-up is needed.
pub(super) fn vma_end_read(vma: &Vma) {
    vma.cold.vm_refcnt.fetch_sub(1, Ordering::Release);
}

/// Mark `vma` write-locked for the current mmap write-lock hold (`seq` = odd
/// `mm_lock_seq`), waiting for readers to leave. Idempotent within one hold.
/// Linux: `vma_start_write()` / `__vma_start_write()`.
pub(super) fn vma_start_write(vma: &Vma, seq: u32) {
    if vma.vm_lock_seq.load(Ordering::Relaxed) == seq {
        return;
    }
    let excluding = refcnt_add_flag_not_zero(vma);
    if excluding {
        // Attached: wait until only our FLAG and the attach reference remain.
        wait_refcnt(vma, VM_REFCNT_EXCLUDE_READERS_FLAG + 1);
    }
    vma.vm_lock_seq.store(seq, Ordering::Relaxed);
    if excluding {
        vma.cold
            .vm_refcnt
            .fetch_sub(VM_REFCNT_EXCLUDE_READERS_FLAG, Ordering::Release);
    }
}

/// [`vma_start_write`] that gives up while waiting for readers if `fatal()` reports a
/// fatal signal pending for the task (Linux: `vma_start_write_killable()`,
/// `__vma_start_write(vma, mm_lock_seq, TASK_KILLABLE)`): the readers' exclusion is
/// undone and the VMA is left unlocked; `EINTR`. `fatal` is checked only while there
/// are readers to wait for, as Linux's killable sleep is entered only then.
pub(super) fn vma_start_write_killable(
    vma: &Vma,
    seq: u32,
    fatal: &dyn Fn() -> bool,
) -> Result<(), Errno> {
    if vma.vm_lock_seq.load(Ordering::Relaxed) == seq {
        return Ok(());
    }
    let excluding = refcnt_add_flag_not_zero(vma);
    if excluding {
        let target = VM_REFCNT_EXCLUDE_READERS_FLAG + 1;
        while vma.cold.vm_refcnt.load(Ordering::Acquire) != target {
            if fatal() {
                vma.cold
                    .vm_refcnt
                    .fetch_sub(VM_REFCNT_EXCLUDE_READERS_FLAG, Ordering::Release);
                return Err(Errno::EINTR);
            }
            core::hint::spin_loop();
        }
    }
    vma.vm_lock_seq.store(seq, Ordering::Relaxed);
    if excluding {
        vma.cold
            .vm_refcnt
            .fetch_sub(VM_REFCNT_EXCLUDE_READERS_FLAG, Ordering::Release);
    }
    Ok(())
}

/// Attach: refcnt 0 → 1 with release, publishing the fields set before.
/// Linux: `vma_mark_attached()`.
pub(super) fn vma_mark_attached(vma: &Vma) {
    debug_assert_eq!(vma.refcnt(), 0, "attaching an attached VMA");
    vma.cold.vm_refcnt.store(1, Ordering::Release);
}

/// Detach, waiting out transient readers. Linux: `vma_mark_detached()`.
pub(super) fn vma_mark_detached(vma: &Vma) {
    debug_assert!(vma.refcnt() != 0, "detaching a detached VMA");
    if vma.cold.vm_refcnt.fetch_sub(1, Ordering::Release) == 1 {
        return;
    }
    // Readers that raced in (they will see the VMA write-locked and back off).
    if refcnt_add_flag_not_zero(vma) {
        wait_refcnt(vma, VM_REFCNT_EXCLUDE_READERS_FLAG);
        vma.cold
            .vm_refcnt
            .fetch_sub(VM_REFCNT_EXCLUDE_READERS_FLAG, Ordering::Release);
    }
    debug_assert_eq!(vma.refcnt(), 0);
}

/// A VMA read lock (Linux: a successful `vma_start_read` … `vma_end_read`).
pub struct VmaReadGuard<'a> {
    vma: VmaRef,
    _mm: core::marker::PhantomData<&'a super::space::Mm>,
}

impl<'a> VmaReadGuard<'a> {
    pub(super) fn new(vma: VmaRef) -> Self {
        // A VMA read lock never waits (a reader that cannot get it falls back), so it is
        // a trylock to lockdep-light; held, it forbids waiting for the mmap lock.
        lockdep::acquire(LockClass::VmaLock, Acquire::Try);
        VmaReadGuard {
            vma,
            _mm: core::marker::PhantomData,
        }
    }
    /// The read-locked VMA.
    pub fn vma(&self) -> VmaRef {
        self.vma
    }
}

impl core::ops::Deref for VmaReadGuard<'_> {
    type Target = Vma;
    fn deref(&self) -> &Vma {
        self.vma
    }
}

impl Drop for VmaReadGuard<'_> {
    fn drop(&mut self) {
        vma_end_read(self.vma);
        lockdep::release(LockClass::VmaLock);
    }
}

impl super::area::sealed::Sealed for VmaReadGuard<'_> {}
/// A VMA read lock stabilises its own VMA and no other (Linux: `vma_assert_locked()`
/// is about one VMA): writers must write-lock the VMA first, which waits for readers.
impl super::area::VmaStable for VmaReadGuard<'_> {
    fn stabilises(&self, vma: &Vma) -> bool {
        core::ptr::eq(self.vma, vma)
    }
}
