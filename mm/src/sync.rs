//! Locks shared by the memory manager and the kernel, and the lock order.
//!
//! - [`RwSem`]: the reader-writer lock of the mmap lock and `i_mmap` (Linux:
//!   `rw_semaphore`), writer-fair, with a lockdep class.
//! - [`Mutex`]: a spin lock with a lockdep class, for the page-table and page-cache
//!   ranks (Linux: `spinlock_t`).
//! - [`IrqSpinLock`]: the lock for anything an interrupt handler may also take (the
//!   frame allocator): on the kernel target it disables interrupts for as long as the
//!   guard lives, so a handler on the same CPU can never spin on a lock its own CPU
//!   holds. On the host (tests) there are no interrupts and it is a plain spin lock.
//! - [`lockdep`]: lockdep-light, which checks the order below at run time in debug
//!   builds.
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
//! | 3 | hugetlb vma lock | `hugetlb_vma_lock` | not yet (hugetlb) | |
//! | 4 | file `i_mmap` | `i_mmap_rwsem` | [`crate::vma::IMmap`]'s [`RwSem`] | the VMA engine's link, commit and removal (write); rmap walkers (read) |
//! | 5 | anon_vma | `anon_vma->rwsem` | none: anon_vma chains change only under ranks 1 and 2 | |
//! | 6 | page-table lock | `page_table_lock` / split PTE locks | `AddressSpace`'s [`Mutex`]`<PageTableRoot>` | every page-table walk that changes or reads PTEs for a copy: zap, protect, the fault's PTE install, `copy_to_user`/`copy_from_user` (held across the copy so the frame cannot be freed under it); also serialises the fault path's `anon_vma` publication (Linux: `__anon_vma_prepare` under `page_table_lock`) |
//! | 7 | page cache | `i_pages` lock | `Inode`'s page map ([`Mutex`]) | the fault (under rank 6) and file writes |
//! | 8 | leaves | zone lock, slab | frame allocator (`IrqSpinLock`), zero-page registry, kernel heap | anywhere; they take nothing else |
//!
//! The rule that matters most for the per-VMA locks: nothing waits for a VMA lock
//! (rank 2) while holding the page-table lock (rank 6). The fault fast path holds a
//! VMA read lock and then takes the page-table lock; a syscall write-locks every VMA
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
//! # Interrupts
//!
//! Only locks an interrupt handler also takes disable interrupts ([`IrqSpinLock`]:
//! the frame allocator). The memory manager's own locks (ranks 1 to 7) are never
//! taken from interrupt context, so they leave interrupts enabled, and so does every
//! wait for them: a CPU spinning on the mmap lock, a VMA writer waiting for readers,
//! a CPU spinning on a page-table lock all keep answering IPIs. That is what lets the
//! holder of such a lock send a TLB shootdown and wait for every CPU's answer without
//! a deadlock. Conversely no one may wait for another CPU (a shootdown answer) while
//! holding an [`IrqSpinLock`].

use core::ops::{Deref, DerefMut};

pub mod lockdep;
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
