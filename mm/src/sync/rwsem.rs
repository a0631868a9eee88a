//! The reader-writer lock of the memory manager's sleeping-lock ranks: the mmap lock
//! and each file's `i_mmap` lock.
//!
//! Linux: `struct rw_semaphore` (`kernel/locking/rwsem.c`). There is no scheduler to
//! sleep in, so waiters spin, with interrupts left as they are (enabled on every
//! memory-manager path: a waiting CPU keeps answering IPIs, so a CPU that holds the
//! lock and waits for a TLB-shootdown answer from us is never stuck).
//!
//! Fairness is Linux's in spirit: a waiting writer is not starved by a stream of
//! readers. A writer that cannot take the lock sets [`WRITER_WAITING`]; new readers
//! (blocking or try) then hold back until a writer has had its turn, as Linux's
//! `rwsem_read_trylock` refuses once `RWSEM_FLAG_WAITERS`/handoff is set. Readers
//! already inside finish normally. A reader must therefore never take the same lock
//! twice (Linux forbids recursive `down_read` for the same reason); lockdep-light
//! ([`super::lockdep`]) reports it.
//!
//! Readers are not starved either: a writer that releases the lock and takes it again
//! at once (a syscall loop) would otherwise always beat the readers spinning on another
//! CPU, which see the lock free only for the instant between the two. A reader that
//! has waited [`HANDOFF_SPINS`] rounds sets [`HANDOFF`] (Linux: `RWSEM_FLAG_HANDOFF`,
//! set by a waiter that waited longer than `RWSEM_WAIT_TIMEOUT`, which stops the lock
//! from being stolen): no writer takes the lock while it is set, and the reader that
//! gets in next clears it. While it is set a starved reader also passes a merely
//! waiting writer's [`WRITER_WAITING`], so the two flags cannot wait for each other;
//! readers that are not starved, and readers arriving while readers hold the lock and
//! a writer waits (no handoff then), still hold back: writers are not starved.
//!
//! Each lock carries its [`LockClass`] and reports its acquisitions and releases to
//! lockdep-light.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicUsize, Ordering};

use super::lockdep::{self, Acquire, LockClass};

/// Held by a writer.
const WRITER: usize = 1;
/// A writer is waiting: new readers hold back.
const WRITER_WAITING: usize = 2;
/// A reader has waited too long: writers must not take the lock before it got in.
const HANDOFF: usize = 4;
/// One reader.
const READER: usize = 8;
/// Failed attempts after which a waiting reader asks for the handoff.
pub const HANDOFF_SPINS: u32 = 64;

/// A writer-fair reader-writer spin lock with a lockdep class (Linux:
/// `struct rw_semaphore`).
pub struct RwSem<T: ?Sized> {
    state: AtomicUsize,
    class: LockClass,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&T` to several threads at once (readers) and `&mut T`
// to one (a writer, excluding readers), which is sound for `T: Send + Sync` exactly as
// for `std::sync::RwLock`.
unsafe impl<T: ?Sized + Send> Send for RwSem<T> {}
// SAFETY: as above.
unsafe impl<T: ?Sized + Send + Sync> Sync for RwSem<T> {}

impl<T> RwSem<T> {
    /// A new unlocked lock of `class`.
    pub const fn new(class: LockClass, value: T) -> Self {
        Self {
            state: AtomicUsize::new(0),
            class,
            value: UnsafeCell::new(value),
        }
    }
}

impl<T: ?Sized> RwSem<T> {
    /// One attempt of a blocking reader; `starved`: it has waited [`HANDOFF_SPINS`]
    /// rounds, so it asks for the handoff while a writer holds the lock, and once the
    /// handoff is granted passes a writer that is only waiting.
    fn try_read_raw(&self, starved: bool) -> bool {
        let s = self.state.load(Ordering::Relaxed);
        if s & WRITER != 0 {
            if starved && s & HANDOFF == 0 {
                self.state.fetch_or(HANDOFF, Ordering::Relaxed);
            }
            return false;
        }
        if s & WRITER_WAITING != 0 && !(starved && s & HANDOFF != 0) {
            return false;
        }
        // Getting in ends the handoff: a writer has its turn again before the next
        // starved reader's.
        self.state
            .compare_exchange_weak(
                s,
                (s + READER) & !HANDOFF,
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Spins until a read hold is ours, asking for the handoff once starved.
    fn read_wait(&self) {
        let mut spins = 0u32;
        while !self.try_read_raw(spins >= HANDOFF_SPINS) {
            spins = spins.saturating_add(1);
            core::hint::spin_loop();
        }
    }

    fn try_write_raw(&self) -> bool {
        let s = self.state.load(Ordering::Relaxed);
        // Free, or free but for our (or another writer's) waiting flag; never while a
        // starved reader asked for the handoff.
        (s & !WRITER_WAITING) == 0
            && self
                .state
                .compare_exchange(s, WRITER, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
    }

    /// Take the lock for reading, waiting for writers (Linux: `down_read`).
    #[track_caller]
    pub fn read(&self) -> RwSemReadGuard<'_, T> {
        lockdep::acquire(self.class, Acquire::Wait);
        self.read_wait();
        RwSemReadGuard { lock: self }
    }

    /// Take a second lock of this class for reading while holding one, in an order the
    /// caller guarantees (Linux: `down_read_nested`).
    #[track_caller]
    pub fn read_nested(&self) -> RwSemReadGuard<'_, T> {
        lockdep::acquire(self.class, Acquire::Nested);
        self.read_wait();
        RwSemReadGuard { lock: self }
    }

    /// Take the lock for reading if that needs no wait (Linux: `down_read_trylock`);
    /// refuses while a writer holds it or waits for it.
    pub fn try_read(&self) -> Option<RwSemReadGuard<'_, T>> {
        // Retry only a CAS lost to another reader: that is not a wait.
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if s & (WRITER | WRITER_WAITING) != 0 {
                return None;
            }
            if self
                .state
                .compare_exchange_weak(s, s + READER, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                lockdep::acquire(self.class, Acquire::Try);
                return Some(RwSemReadGuard { lock: self });
            }
        }
    }

    /// Take the lock for writing (Linux: `down_write`).
    #[track_caller]
    pub fn write(&self) -> RwSemWriteGuard<'_, T> {
        self.write_with(Acquire::Wait)
    }

    /// Take a second lock of this class for writing while holding one, in an order the
    /// caller guarantees (Linux: `down_write_nested(.., SINGLE_DEPTH_NESTING)`, as
    /// fork takes the child's mmap lock under the parent's).
    #[track_caller]
    pub fn write_nested(&self) -> RwSemWriteGuard<'_, T> {
        self.write_with(Acquire::Nested)
    }

    #[track_caller]
    fn write_with(&self, how: Acquire) -> RwSemWriteGuard<'_, T> {
        lockdep::acquire(self.class, how);
        while !self.try_write_raw() {
            // Announce the wait so readers stop arriving (the handoff of Linux's rwsem).
            self.state.fetch_or(WRITER_WAITING, Ordering::Relaxed);
            core::hint::spin_loop();
        }
        RwSemWriteGuard { lock: self }
    }

    /// Take the lock for writing if it is free (Linux: `down_write_trylock`).
    pub fn try_write(&self) -> Option<RwSemWriteGuard<'_, T>> {
        if self.try_write_raw() {
            lockdep::acquire(self.class, Acquire::Try);
            Some(RwSemWriteGuard { lock: self })
        } else {
            None
        }
    }

    /// The value, through exclusive access to the lock itself.
    pub fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }

    /// True if a writer holds the lock (diagnostics and assertions only).
    pub fn is_write_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) & WRITER != 0
    }

    /// Number of readers inside (diagnostics and assertions only).
    pub fn reader_count(&self) -> usize {
        self.state.load(Ordering::Relaxed) / READER
    }
}

/// The lock held for reading.
pub struct RwSemReadGuard<'a, T: ?Sized> {
    lock: &'a RwSem<T>,
}

/// The lock held for writing.
pub struct RwSemWriteGuard<'a, T: ?Sized> {
    lock: &'a RwSem<T>,
}

impl<'a, T: ?Sized> RwSemWriteGuard<'a, T> {
    /// Turn the write hold into a read hold without letting another writer in between
    /// (Linux: `downgrade_write`).
    pub fn downgrade(self) -> RwSemReadGuard<'a, T> {
        let lock = self.lock;
        core::mem::forget(self);
        // WRITER → one reader; a waiting writer's flag stays, so new readers still
        // hold back for it.
        lock.state.fetch_add(READER - WRITER, Ordering::Release);
        RwSemReadGuard { lock }
    }
}

impl<T: ?Sized> Deref for RwSemReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: a read hold excludes writers, so no `&mut T` exists while this shared
        // borrow (tied to the guard) lives.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T: ?Sized> Deref for RwSemWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: a write hold excludes every other holder.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T: ?Sized> DerefMut for RwSemWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: a write hold excludes every other holder, and the `&mut self` borrow
        // makes this the only reference derived from the guard.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T: ?Sized> Drop for RwSemReadGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.state.fetch_sub(READER, Ordering::Release);
        lockdep::release(self.lock.class);
    }
}

impl<T: ?Sized> Drop for RwSemWriteGuard<'_, T> {
    fn drop(&mut self) {
        // Clear WRITER and any waiting flag: the waiters re-announce themselves if they
        // lose the race, and readers may come in meanwhile (they were held back only
        // while a writer was owed a turn, which this writer just had).
        self.lock
            .state
            .fetch_and(!(WRITER | WRITER_WAITING), Ordering::Release);
        lockdep::release(self.lock.class);
    }
}

/// A spin mutex with a lockdep class, for the page-table and page-cache ranks (Linux:
/// `spinlock_t`). It leaves interrupts as they are: no interrupt handler takes these
/// locks (see the interrupt rule in [`super`]).
pub struct Mutex<T: ?Sized> {
    class: LockClass,
    inner: spin::Mutex<T>,
}

/// Guard of a [`Mutex`].
pub struct MutexGuard<'a, T: ?Sized> {
    class: LockClass,
    guard: spin::MutexGuard<'a, T>,
}

impl<T> Mutex<T> {
    /// A new unlocked mutex of `class`.
    pub const fn new(class: LockClass, value: T) -> Self {
        Self {
            class,
            inner: spin::Mutex::new(value),
        }
    }
}

impl<T: ?Sized> Mutex<T> {
    /// Spin until the lock is ours (Linux: `spin_lock`).
    #[track_caller]
    pub fn lock(&self) -> MutexGuard<'_, T> {
        lockdep::acquire(self.class, Acquire::Wait);
        MutexGuard {
            class: self.class,
            guard: self.inner.lock(),
        }
    }

    /// Take a second lock of this class while holding one, in an order the caller
    /// guarantees (Linux: `spin_lock_nested`).
    #[track_caller]
    pub fn lock_nested(&self) -> MutexGuard<'_, T> {
        lockdep::acquire(self.class, Acquire::Nested);
        MutexGuard {
            class: self.class,
            guard: self.inner.lock(),
        }
    }

    /// Take the lock if it is free (Linux: `spin_trylock`).
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        let guard = self.inner.try_lock()?;
        lockdep::acquire(self.class, Acquire::Try);
        Some(MutexGuard {
            class: self.class,
            guard,
        })
    }

    /// True if some context holds the lock (diagnostics and assertions only).
    pub fn is_locked(&self) -> bool {
        self.inner.is_locked()
    }

    /// The value, through exclusive access to the lock itself.
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut()
    }
}

impl<T: ?Sized> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T: ?Sized> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T: ?Sized> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        lockdep::release(self.class);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn readers_share_and_a_writer_excludes_them() {
        let l = RwSem::new(LockClass::IMmap, 5);
        let a = l.read();
        let b = l.try_read().expect("readers share");
        assert_eq!(*a + *b, 10);
        assert!(l.try_write().is_none());
        drop((a, b));
        let mut w = l.write();
        *w = 6;
        assert!(l.try_read().is_none());
        let r = w.downgrade();
        assert_eq!(*r, 6);
        assert!(l.try_write().is_none());
        drop(r);
        assert!(l.try_write().is_some());
    }

    #[test]
    fn a_waiting_writer_holds_new_readers_back() {
        let l = Arc::new(RwSem::new(LockClass::IMmap, 0u32));
        let r = l.read();
        let got = Arc::new(AtomicBool::new(false));
        let t = {
            let (l, got) = (l.clone(), got.clone());
            std::thread::spawn(move || {
                *l.write() += 1;
                got.store(true, Ordering::SeqCst);
            })
        };
        // Wait until the writer has announced itself.
        while l.state.load(Ordering::SeqCst) & WRITER_WAITING == 0 {
            std::hint::spin_loop();
        }
        assert!(
            l.try_read().is_none(),
            "a new reader must not overtake a waiting writer"
        );
        assert!(!got.load(Ordering::SeqCst));
        drop(r);
        t.join().unwrap();
        assert_eq!(*l.read(), 1);
    }

    /// A writer that releases and retakes the lock in a loop does not starve a
    /// blocking reader: the reader asks for the handoff and gets in.
    #[test]
    fn a_writer_looping_does_not_starve_a_waiting_reader() {
        let l = Arc::new(RwSem::new(LockClass::IMmap, 0u64));
        let stop = Arc::new(AtomicBool::new(false));
        let w = {
            let (l, stop) = (l.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let mut g = l.write();
                    *g += 1;
                    // Hold it a while, as a syscall does: the reader sees it held.
                    for _ in 0..2_000 {
                        std::hint::spin_loop();
                    }
                    drop(g);
                    n += 1;
                }
                n
            })
        };
        while *l.read() == 0 {}
        let t = std::time::Instant::now();
        for _ in 0..200 {
            drop(l.read());
        }
        stop.store(true, Ordering::SeqCst);
        let writes = w.join().unwrap();
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "200 read locks took {:?} against a looping writer ({writes} writes)",
            t.elapsed()
        );
        assert_eq!(l.state.load(Ordering::SeqCst), 0);
    }
}
