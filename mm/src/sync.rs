//! Locks shared by the memory manager and the kernel.
//!
//! [`IrqSpinLock`] is the lock to use for anything an interrupt handler may also
//! take (the frame allocator, page-table locks): on the kernel target it disables
//! interrupts for as long as the guard lives, so a handler on the same CPU can never
//! spin on a lock its own CPU holds. On the host (tests) there are no interrupts and
//! it is a plain spin lock.

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
