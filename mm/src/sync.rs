//! Locks shared by the memory manager and the kernel.
//!
//! [`IrqSpinLock`] is the lock to use for anything an interrupt handler may also
//! take (the frame allocator, page-table locks): on the kernel target it disables
//! interrupts for as long as the guard lives, so a handler on the same CPU can never
//! spin on a lock its own CPU holds. On the host (tests) there are no interrupts and
//! it is a plain spin lock.
//!
//! # Lock order
//!
//! The one statement of the memory manager's lock order; every other module refers
//! here. It is Linux's (`mm/rmap.c`'s header): a path may take a lock only while it
//! holds none of a higher rank.
//!
//! | rank | lock | Linux | here | who takes it |
//! |---|---|---|---|---|
//! | 1 | mmap lock | `mmap_lock` | `Mm`'s `spin::RwLock` ([`crate::vma::Mm::write_lock`], `read_lock`) | syscalls (write), the fault slow path (write), populate (read) |
//! | 2 | VMA lock | `vm_refcnt` + `vm_lock_seq` | [`crate::vma::lock`] | write: under the mmap write lock, waits for the VMA's readers to leave; read: the fault fast path, never waits (a reader that cannot get it falls back to the mmap lock) |
//! | 3 | hugetlb vma lock | `hugetlb_vma_lock` | not yet (hugetlb) | |
//! | 4 | file `i_mmap` | `i_mmap_rwsem` | [`crate::vma::IMmap`]'s `RwLock` | the VMA engine's link, commit and removal (write); rmap walkers (read) |
//! | 5 | anon_vma | `anon_vma->rwsem` | none: anon_vma chains change only under ranks 1 and 2 | |
//! | 6 | page-table lock | `page_table_lock` / split PTE locks | `AddressSpace`'s `spin::Mutex<PageTableRoot>` | every page-table walk that changes or reads PTEs for a copy: zap, protect, the fault's PTE install, `copy_to_user`/`copy_from_user` (held across the copy so the frame cannot be freed under it) |
//! | 7 | page cache | `i_pages` lock | `Inode`'s page map | the fault (under rank 6) and file writes |
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
//! Interrupts: only locks an interrupt handler also takes disable interrupts
//! ([`IrqSpinLock`]: the frame allocator). The memory manager's own locks (ranks 1 to
//! 7) are never taken from interrupt context, so they leave interrupts enabled.

use core::ops::{Deref, DerefMut};

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
