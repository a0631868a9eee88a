//! Lockdep-light: the lock order of [`super`]'s table, checked at run time in debug
//! builds.
//!
//! Linux: `kernel/locking/lockdep.c`, reduced to what this crate needs. Linux learns
//! the order from what it sees; here the order is known in advance (the table in
//! [`super`]), so each lock class carries its rank and each execution context (a
//! CPU in the kernel, a thread on the host) keeps one small counter per rank of the
//! classes it holds. Taking a lock that may *wait* while holding a lock of a higher
//! rank is an inversion and panics, naming both; so is waiting for a lock of the rank
//! already held, unless the caller says the nesting is ordered (Linux:
//! `mmap_write_lock_nested(mm, SINGLE_DEPTH_NESTING)`, `spin_lock_nested`). A
//! trylock never waits, so it is recorded but never checked (Linux does the same: the
//! fault path's `mmap_read_trylock` under a VMA read lock is legal).
//!
//! Release builds compile all of it away: the benchmark kernel and `--release` pay
//! nothing. Host tests (debug) and the test kernels (debug) run every lock through it,
//! so the fuzzer, the thread suites and the SMP tests check the order on every path
//! they reach.
//!
//! The per-context state is a CPU's in the kernel, which is right because the kernel
//! does not preempt: a lock is released on the CPU that took it. Interrupt handlers
//! take only leaf locks (rank 8, not tracked), so an interrupted context's counters
//! are not disturbed.

/// A lock class: one row of the lock-order table in [`super`] (Linux: a
/// `lock_class_key`). Lower ranks are taken first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum LockClass {
    /// Rank 1: the address space's mmap lock (Linux: `mmap_lock`).
    MmapLock = 1,
    /// Rank 2: a VMA lock (Linux: `vm_refcnt`/`vm_lock_seq`). Readers only ever try;
    /// a writer's wait for readers is a wait point of this rank.
    VmaLock = 2,
    /// Rank 3: the hugetlb VMA lock (Linux: `hugetlb_vma_lock`).
    HugetlbVmaLock = 3,
    /// Rank 4: a file's `i_mmap` lock (Linux: `i_mmap_rwsem`).
    IMmap = 4,
    /// Rank 5: an anon_vma's lock (Linux: `anon_vma->rwsem`).
    AnonVma = 5,
    /// Rank 6: a page-table lock (Linux: `page_table_lock`, split PTE/PMD locks).
    PageTable = 6,
    /// Rank 7: a file's page cache (Linux: the `i_pages` xarray lock).
    PageCache = 7,
}

/// Number of tracked ranks (1..=7; slot 0 unused).
const RANKS: usize = 8;

impl LockClass {
    fn rank(self) -> usize {
        self as usize
    }
}

/// How an acquisition may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// May wait: checked against everything held.
    Wait,
    /// May wait while one lock of the same class is held, in an order the caller
    /// guarantees (Linux: `SINGLE_DEPTH_NESTING`): checked against higher ranks only.
    Nested,
    /// Never waits: recorded, not checked.
    Try,
}

/// The counters of the current context: one byte per rank, packed.
mod context {
    #[cfg(not(target_os = "none"))]
    std::thread_local! {
        static HELD: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
    }

    #[cfg(not(target_os = "none"))]
    std::thread_local! {
        static ID: usize = {
            static NEXT: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
            NEXT.fetch_add(1, core::sync::atomic::Ordering::Relaxed) % crate::paging::MAX_CPUS
        };
    }

    /// The host's stand-in for a CPU number: each thread gets the next one, modulo
    /// `MAX_CPUS` (so two threads may share one; fine for what it indexes).
    #[cfg(not(target_os = "none"))]
    #[inline]
    pub(super) fn cpu() -> usize {
        ID.with(|i| *i)
    }

    /// The current context's packed counters.
    #[cfg(not(target_os = "none"))]
    pub(super) fn get() -> u64 {
        HELD.with(|h| h.get())
    }

    /// Replace the current context's packed counters.
    #[cfg(not(target_os = "none"))]
    pub(super) fn set(v: u64) {
        HELD.with(|h| h.set(v));
    }

    #[cfg(target_os = "none")]
    use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    #[cfg(target_os = "none")]
    static HELD: [AtomicU64; crate::paging::MAX_CPUS] =
        [const { AtomicU64::new(0) }; crate::paging::MAX_CPUS];

    /// The kernel's "which CPU am I" (see [`super::set_cpu_id_hook`]); 0 until set.
    #[cfg(target_os = "none")]
    static CPU_ID: AtomicUsize = AtomicUsize::new(0);

    #[cfg(target_os = "none")]
    #[inline]
    pub(super) fn cpu() -> usize {
        let f = CPU_ID.load(Ordering::Relaxed);
        if f == 0 {
            return 0;
        }
        // SAFETY: the only non-zero value ever stored is a `fn() -> usize` cast to
        // `usize` by `set_cpu_id_hook`, so transmuting it back yields that function.
        let f: fn() -> usize = unsafe { core::mem::transmute::<usize, fn() -> usize>(f) };
        f() % crate::paging::MAX_CPUS
    }

    #[cfg(target_os = "none")]
    pub(super) fn set_hook(f: fn() -> usize) {
        CPU_ID.store(f as usize, Ordering::Relaxed);
    }

    // Only the owning CPU touches its slot (no preemption, interrupt handlers take
    // no tracked lock), so Relaxed suffices: the atomics just avoid `static mut`.
    #[cfg(target_os = "none")]
    pub(super) fn get() -> u64 {
        HELD[cpu()].load(Ordering::Relaxed)
    }

    #[cfg(target_os = "none")]
    pub(super) fn set(v: u64) {
        HELD[cpu()].store(v, Ordering::Relaxed);
    }
}

/// Tell lockdep how the kernel names the current CPU (its per-CPU id). Until it is
/// called every kernel context counts as CPU 0, which is right while only the boot
/// CPU runs. RCU's per-CPU state ([`super::rcu`]) is indexed by the same id. No
/// effect on the host, where each thread is its own context.
pub fn set_cpu_id_hook(f: fn() -> usize) {
    #[cfg(target_os = "none")]
    context::set_hook(f);
    #[cfg(not(target_os = "none"))]
    let _ = f;
}

/// The current CPU's number below [`crate::paging::MAX_CPUS`] (Linux:
/// `smp_processor_id()`): the kernel's per-CPU id through [`set_cpu_id_hook`], a
/// per-thread number on the host. For per-CPU data such as counters.
#[inline]
pub fn current_cpu() -> usize {
    context::cpu()
}

fn count(held: u64, rank: usize) -> u64 {
    (held >> (rank * 8)) & 0xff
}

/// The highest rank held in `held`, if any.
fn highest(held: u64) -> Option<usize> {
    (1..RANKS).rev().find(|&r| count(held, r) != 0)
}

/// Record that the current context takes a lock of `class`; panics on an inversion.
#[track_caller]
pub fn acquire(class: LockClass, how: Acquire) {
    if !cfg!(debug_assertions) {
        return;
    }
    let held = context::get();
    let r = class.rank();
    if how != Acquire::Try
        && let Some(h) = highest(held)
        && (h > r || (h == r && how == Acquire::Wait && class != LockClass::VmaLock))
    {
        // Reset first so the panic path (and a should-panic test's harness) does not
        // trip over the same state again.
        context::set(0);
        panic!(
            "lockdep: lock order inversion: waiting for {class:?} (rank {r}) while holding \
             a rank-{h} lock (held per rank: {:?}); the order is mm::sync's table",
            (1..RANKS)
                .map(|x| count(held, x))
                .collect::<alloc::vec::Vec<_>>()
        );
    }
    assert!(
        count(held, r) < 0xff,
        "lockdep: more than 255 {class:?} held"
    );
    context::set(held + (1 << (r * 8)));
}

/// A wait point of `class` that takes nothing (a VMA writer waiting for the VMA's
/// readers): checked as [`acquire`] with [`Acquire::Wait`], not recorded.
#[track_caller]
pub fn might_wait(class: LockClass) {
    acquire(class, Acquire::Nested);
    release(class);
}

/// Record that the current context released a lock of `class`.
#[track_caller]
pub fn release(class: LockClass) {
    if !cfg!(debug_assertions) {
        return;
    }
    let held = context::get();
    let r = class.rank();
    if count(held, r) == 0 {
        // A release without an acquire: a lock handed to another context (an owned
        // guard moved across threads). Not an ordering question; forget it.
        return;
    }
    context::set(held - (1 << (r * 8)));
}

/// How many locks of `class` the current context holds (tests and assertions).
pub fn held(class: LockClass) -> usize {
    if !cfg!(debug_assertions) {
        return 0;
    }
    count(context::get(), class.rank()) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_order_is_accepted_and_counters_return_to_zero() {
        acquire(LockClass::MmapLock, Acquire::Wait);
        acquire(LockClass::VmaLock, Acquire::Try);
        acquire(LockClass::IMmap, Acquire::Wait);
        acquire(LockClass::PageTable, Acquire::Wait);
        acquire(LockClass::PageTable, Acquire::Nested);
        acquire(LockClass::PageCache, Acquire::Wait);
        for c in [
            LockClass::PageCache,
            LockClass::PageTable,
            LockClass::PageTable,
            LockClass::IMmap,
            LockClass::VmaLock,
            LockClass::MmapLock,
        ] {
            release(c);
        }
        assert_eq!(context::get(), 0);
    }

    #[test]
    #[should_panic(expected = "lock order inversion")]
    fn waiting_for_the_mmap_lock_under_a_page_table_lock_panics() {
        acquire(LockClass::PageTable, Acquire::Wait);
        acquire(LockClass::MmapLock, Acquire::Wait);
    }

    #[test]
    #[should_panic(expected = "lock order inversion")]
    fn waiting_for_the_mmap_lock_under_a_vma_read_lock_panics() {
        // The deadlock per-VMA locks must avoid: a writer holding the mmap lock waits
        // for this VMA reader, which waits for the mmap lock.
        acquire(LockClass::VmaLock, Acquire::Try);
        acquire(LockClass::MmapLock, Acquire::Wait);
    }

    #[test]
    fn a_trylock_under_a_vma_read_lock_is_legal() {
        acquire(LockClass::VmaLock, Acquire::Try);
        acquire(LockClass::MmapLock, Acquire::Try);
        release(LockClass::MmapLock);
        release(LockClass::VmaLock);
        assert_eq!(context::get(), 0);
    }

    #[test]
    #[should_panic(expected = "lock order inversion")]
    fn unannotated_same_class_nesting_panics() {
        acquire(LockClass::MmapLock, Acquire::Wait);
        acquire(LockClass::MmapLock, Acquire::Wait);
    }

    #[test]
    #[should_panic(expected = "lock order inversion")]
    fn a_vma_writer_waiting_under_a_page_table_lock_panics() {
        acquire(LockClass::PageTable, Acquire::Wait);
        might_wait(LockClass::VmaLock);
    }
}
