//! Locks shared by the memory manager and the kernel, and the lock order.
//!
//! - [`RwSem`]: the reader-writer lock of the mmap lock and `i_mmap` (Linux:
//!   `rw_semaphore`), writer-fair, with a lockdep class.
//! - [`Mutex`]: a spin lock with a lockdep class, for the page-table and page-cache
//!   ranks (Linux: `spinlock_t`).
//! - [`IrqSpinLock`]: the lock for anything an interrupt handler may also take (the
//!   frame allocator; never a lock held across a TLB flush, see "Interrupts and other
//!   CPUs" below): on the kernel target it disables interrupts for as long as the
//!   guard lives, so a handler on the same CPU can never spin on a lock its own CPU
//!   holds. On the host (tests) there are no interrupts and it is a plain spin lock.
//! - [`lockdep`]: lockdep-light, which checks the order below at run time in debug
//!   builds.
//! - [`rcu`]: RCU read-side sections, grace periods across CPUs (driven by the timer
//!   tick in the kernel), `call_rcu`, `synchronize_rcu`, `rcu_barrier` (Linux:
//!   `kernel/rcu/tree.c`). Not a lock: readers never wait, and `synchronize_rcu` must
//!   not be called inside a read-side section or with a lock an RCU reader may be
//!   waiting for.
//!
//! # Lock order
//!
//! The one statement of the memory manager's lock order; every other module refers
//! here. It is Linux's (`mm/rmap.c`'s header): a path may take a lock only while it
//! holds none of a higher rank.
//!
//! | rank | lock | Linux | here | who takes it |
//! |---|---|---|---|---|
//! | 1 | mmap lock | `mmap_lock` | `Mm`'s [`RwSem`] ([`crate::vma::Mm::write_lock`], `read_lock`, `try_read_lock`) | syscalls (write), stack growth (write), the fault slow path (read), the fault fast path's anon_vma preparation (read trylock), populate (read) |
//! | 2 | VMA lock | `vm_refcnt` + `vm_lock_seq` | [`crate::vma::lock`] | write: under the mmap write lock, waits for the VMA's readers to leave; read: the fault fast path, never waits (a reader that cannot get it falls back to the mmap lock) |
//! | 2a | hugetlb fault mutex | `hugetlb_fault_mutex_table[hash]` | [`crate::hugetlb::fault_mutex`] (spin locks, not tracked by lockdep) | the hugetlb fault (under a VMA read lock or the mmap lock), truncation and hole punch (per index, before rank 3) |
//! | 3 | hugetlb vma lock | `hugetlb_vma_lock` (`vma->vm_private_data`) | [`crate::vma::Vma::hugetlb_vma_lock`] (an [`RwSem`] in each VMA) | read: the hugetlb fault; write: the hugetlb unmap (munmap, MADV_DONTNEED, exit), mprotect's and mremap's unshare; truncation takes it with a trylock under rank 4, dropping everything to retry (Linux: `hugetlb_vma_trylock_write`); `__split_vma`'s `hugetlb_split` does not take it (the VMA write lock keeps faults out) |
//! | 4 | file `i_mmap` | `i_mmap_rwsem` | [`crate::vma::IMmap`]'s [`RwSem`] | the VMA engine's link, commit, split (held across `hugetlb_split`) and removal (write); hugetlb's unmap, unshare and truncation (write, so no PD table can be freed under a sharer); `huge_pmd_share` and rmap walkers (read) |
//! | 5 | anon_vma | `anon_vma->rwsem` | none: anon_vma chains change only under ranks 1 and 2 | |
//! | 6 | page-table locks | `page_table_lock` and the split PTE/PMD locks (`ptlock_ptr`) | [`crate::paging`]'s `ptlock`: a lock word per PT and PD page (in its frame metadata), the `PageTableRoot`'s `page_table_lock` for PDPT and PML4 entries; one held at a time, except fork's copy: the child's PTE lock, then the parent's nested (`copy_pte_range`) | every change of an entry under the lock that covers it: the fault's install (re-checked there, Linux's `pte_same`), zap and protect (per table as they walk), fork's copy, table installs; `copy_to_user`/`copy_from_user` hold the leaf's lock across the copy so the frame cannot be freed under it |
//! | 7 | page cache | `i_pages` lock | `Inode`'s page map ([`Mutex`]) | the fault (before it takes rank 6, as Linux's `->fault` runs before the PTE lock) and file writes |
//! | 8 | leaves | zone lock, slab | frame allocator (`IrqSpinLock`), zero-page registry, kernel heap | anywhere; they take nothing else |
//!
//! The rule that matters most for the per-VMA locks: nothing waits for a VMA lock
//! (rank 2) while holding a page-table lock (rank 6). The fault fast path holds a
//! VMA read lock and then takes page-table locks; a syscall write-locks every VMA
//! it changes (waiting for those readers) *before* it takes the page-table lock for
//! the zap or protect that follows, and drops it before the next VMA. Doing it the
//! other way round deadlocks (a fault waits for the page-table lock while the
//! syscall, holding it, waits for the fault's VMA read lock to go).
//!
//! Lockdep-light ([`lockdep`]) checks this order in debug builds: each lock class
//! carries its rank, each CPU (each thread on the host) counts what it holds, and
//! waiting for a lock while holding one of a higher rank panics. Rank 8 is not
//! tracked: leaves nest freely (the zero-page registry allocates a frame).
//!
//! # Interrupts and other CPUs
//!
//! No CPU may wait with interrupts disabled for something that needs another CPU's
//! interrupt (a TLB-shootdown answer, or a lock held by a CPU that is waiting for our
//! answer). Hence, for every lock:
//!
//! 1. A lock an interrupt handler takes disables interrupts ([`IrqSpinLock`], Linux:
//!    `spin_lock_irqsave`), or the handler could interrupt its own CPU's holder and spin
//!    forever. Such a lock is a leaf: nothing waits for another CPU while holding it
//!    (no cross-call, no TLB flush, no other lock whose holder might), so a CPU spinning
//!    on it with interrupts off is delayed only by the holder's short critical section.
//!    Here: the frame allocator's free lists (Linux: `zone->lock`), the kernel heap, the
//!    serial console, the cross-call queues.
//! 2. A lock only process context takes (every lock of ranks 1 to 7 above: the mmap
//!    lock, VMA locks, `i_mmap`, the page-table lock, the page cache; the kernel's
//!    per-CPU `current` address space) leaves interrupts enabled ([`Mutex`],
//!    [`RwSem`], `spin::Mutex`). Their holders flush TLBs, which waits for other CPUs' answers,
//!    so a CPU spinning on one must keep answering IPIs. The page-fault handler
//!    re-enables interrupts before it takes them (Linux: `do_user_addr_fault`).
//! 3. Every wait for another CPU (a cross-call's completion, a busy call slot) also runs
//!    the waiting CPU's own call queue, so two CPUs waiting for each other still make
//!    progress even with interrupts off. Likewise the waits for the memory manager's own
//!    locks (a VMA writer waiting for readers, the mmap lock, a page-table lock) spin
//!    with interrupts as they are: enabled.

use core::ops::{Deref, DerefMut};

pub mod lockdep;
pub mod rcu;
mod rwsem;

pub use rwsem::{Mutex, MutexGuard, RwSem, RwSemReadGuard, RwSemWriteGuard};

/// A spin lock that keeps local interrupts disabled while held
/// (Linux: `spin_lock_irqsave`/`spin_unlock_irqrestore`).
pub struct IrqSpinLock<T: ?Sized> {
    inner: spin::Mutex<T>,
}

/// Guard of an [`IrqSpinLock`]; restores the interrupt flag when dropped.
pub struct IrqSpinLockGuard<'a, T: ?Sized> {
    // Field order matters: the lock is released before interrupts are restored.
    guard: spin::MutexGuard<'a, T>,
    #[allow(dead_code)] // held only for its Drop, which restores interrupts
    irq: IrqState,
}

impl<T> IrqSpinLock<T> {
    /// A new unlocked lock.
    pub const fn new(value: T) -> Self {
        Self {
            inner: spin::Mutex::new(value),
        }
    }
}

impl<T: ?Sized> IrqSpinLock<T> {
    /// Disables local interrupts, then spins until the lock is ours.
    pub fn lock(&self) -> IrqSpinLockGuard<'_, T> {
        let irq = IrqState::save_and_disable();
        IrqSpinLockGuard {
            guard: self.inner.lock(),
            irq,
        }
    }

    /// True if some CPU holds the lock (diagnostics and assertions only).
    pub fn is_locked(&self) -> bool {
        self.inner.is_locked()
    }
}

impl<T: ?Sized> Deref for IrqSpinLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T: ?Sized> DerefMut for IrqSpinLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

/// The saved interrupt flag of the current CPU.
struct IrqState {
    #[cfg_attr(not(target_os = "none"), allow(dead_code))]
    were_enabled: bool,
}

impl IrqState {
    #[cfg(target_os = "none")]
    fn save_and_disable() -> Self {
        let were_enabled = x86_64::instructions::interrupts::are_enabled();
        x86_64::instructions::interrupts::disable();
        Self { were_enabled }
    }

    #[cfg(not(target_os = "none"))]
    fn save_and_disable() -> Self {
        Self {
            were_enabled: false,
        }
    }
}

impl Drop for IrqState {
    fn drop(&mut self) {
        #[cfg(target_os = "none")]
        if self.were_enabled {
            x86_64::instructions::interrupts::enable();
        }
    }
}
