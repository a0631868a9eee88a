//! RCU: read-side critical sections, grace periods across CPUs, deferred callbacks.
//!
//! Linux: `kernel/rcu/tree.c` (Tree RCU in a non-preemptible kernel), with
//! `Documentation/RCU/whatisRCU.rst` and `Design/Requirements` for the contract. A
//! writer that unlinks an object from a structure readers walk without locks may free
//! it only after a *grace period*: a time after which every read-side critical section
//! that could have seen the object has ended. This module provides:
//!
//! - the read side, [`rcu_read_lock`] / [`RcuReadGuard`] (Linux: `rcu_read_lock()`,
//!   `rcu_read_unlock()`), which touches only the current CPU's own cache line, nests,
//!   and never blocks;
//! - grace periods numbered by a global sequence (Linux: `rcu_state.gp_seq`), with
//!   [`get_state_synchronize_rcu`], [`start_poll_synchronize_rcu`],
//!   [`poll_state_synchronize_rcu`] and [`synchronize_rcu`];
//! - callbacks, [`call_rcu`] with a caller-embedded [`RcuHead`] (so it never allocates)
//!   and [`kfree_rcu`], kept per CPU in lists segmented by grace period (Linux:
//!   `struct rcu_segcblist`), [`rcu_barrier`], and [`rcu_core`] for a writer whose
//!   callbacks pile up between ticks;
//! - the scheduling-clock hook [`rcu_sched_clock_irq`] the kernel's APIC timer calls
//!   on every CPU, and [`rcu_note_qs`] for other points outside read-side sections.
//!
//! # Contexts: CPUs in the kernel, registered threads on the host
//!
//! Each execution context has one `RcuData` (Linux: `struct rcu_data`, per CPU). In
//! the kernel a context is a CPU, named by the hook lockdep already has
//! ([`super::lockdep::set_cpu_id_hook`]); the kernel does not preempt, so a read-side
//! section starts and ends on one CPU and nothing else runs on that CPU meanwhile but
//! interrupt handlers, which nest like any reader. On the host (tests) a context is a
//! thread: on its first RCU call a thread claims a free entry of a bounded table
//! ([`MAX_CONTEXTS`]) and releases it when it exits; its queued callbacks stay in the
//! entry and are run by whoever next drives that entry (its next owner, or
//! [`rcu_barrier`]), as Linux hands an offline CPU's callbacks to another
//! (`rcutree_migrate_callbacks`).
//!
//! # Quiescent states
//!
//! A grace period is complete when every context has passed a *quiescent state* since
//! it started. A context's `RcuData` holds one word, `state`: its read-side nesting
//! depth (low half) and how many outermost sections it has left (high half). A
//! context has passed a quiescent state in the current grace period when:
//!
//! 1. it was outside any section when the grace period took its snapshot (nesting 0:
//!    Linux observes an idle CPU the same way, `rcu_watching_snap_save`), or
//! 2. it was seen later outside a section, or with a different exit count (it left
//!    the section it was in: Linux's `rcu_watching_snap_recheck`), or
//! 3. it reported one itself: the timer tick found it outside any section
//!    ([`rcu_sched_clock_irq`] → `rcu_qs`, Linux's `rcu_sched_clock_irq` →
//!    `rcu_qs()`), or [`rcu_note_qs`] was called (Linux: `rcu_note_context_switch`).
//!
//! Remote observation (1 and 2) is what lets grace periods complete on the host, where
//! there is no tick, and on idle CPUs halted in the idle loop.
//!
//! # Memory ordering
//!
//! The argument is the store-buffering pattern with sequentially consistent fences
//! (C++20 `[atomics.order]`); on x86 a fence is one `mfence`.
//!
//! - **Reader entry**: store `state` (nesting + 1, Release), then `fence(SeqCst)`,
//!   then the section's loads (Linux puts no barrier here because its quiescent states
//!   are reported by each CPU itself at context switch; we also let other CPUs observe
//!   ours, which needs the fence, as SRCU's `srcu_read_lock` does).
//! - **Writer**: publishes the new pointer, then takes a cookie or queues a callback,
//!   which starts with `fence(SeqCst)` and then loads `gp_seq` (SeqCst) (Linux:
//!   `rcu_seq_snap` begins with `smp_mb()`). The grace period the cookie waits for is
//!   started later by a SeqCst store of `gp_seq`, so the writer's fence precedes that
//!   start in the single total order S.
//! - **Grace-period start**: store `gp_seq` (SeqCst), `fence(SeqCst)`, then load every
//!   context's `state`. Either the reader's fence precedes this fence in S, and then
//!   the snapshot sees the reader's nesting (it waits for that section); or this fence
//!   precedes the reader's, and then the writer's publication (sequenced before its
//!   fence, which precedes the start) is visible to every load of the section: the
//!   reader finds the new pointer and cannot reach the retired object.
//! - **Reader exit**: store `state` (nesting - 1, and one more exit when outermost)
//!   with Release; every later store of `state` (the next entry) is Release too. The
//!   grace period loads `state` with Acquire, so whichever later value it sees, the
//!   section's loads happen before the end of the grace period, which is a Release
//!   store of `gp_seq` that callback invokers and pollers load with Acquire before they
//!   free anything.
//! - **Self-reported quiescent states** (tick, [`rcu_note_qs`]): outside any section,
//!   load `gp_seq` (SeqCst), `fence(SeqCst)`, store the observed value in `qs_gp`
//!   (Release). Earlier sections happen before the store (program order + Release);
//!   later sections come after the fence, which follows the grace period's start in
//!   S, hence after the writer's publication.
//!
//! Only the owning context writes its `state` (interrupt handlers on a CPU nest their
//! sections strictly inside whatever they interrupted and restore it), so a plain
//! load and store suffice: no read-modify-write, no shared cache line.
//!
//! # Callbacks
//!
//! [`call_rcu`] appends to the current context's list with the cookie of the grace
//! period it needs. The list has three segments (Linux `rcu_segcblist`, whose
//! `RCU_WAIT_TAIL`/`RCU_NEXT_READY_TAIL` are merged here into `wait`): `done` (grace
//! period over, ready to invoke), `wait` and `next` (each with its cookie). Callbacks
//! are invoked (Linux: `rcu_do_batch`) by the owning CPU's tick, by that context's own
//! RCU calls (so host tests without a tick make progress), and by [`rcu_barrier`].
//! One invoker at a time per list, in order, so the list's count of invoked
//! callbacks tells [`rcu_barrier`] exactly which have run.
//!
//! Callbacks may run in the timer interrupt (Linux runs them in softirq context): they
//! may take only leaf locks that disable interrupts (the frame allocator, the heap;
//! rank 8 of [`super`]'s table), and must not wait for anything.
//!
//! # Type-stable VMA slots
//!
//! VMAs are not freed through this module. Their slots are type-stable
//! ([`crate::vma::pool`], Linux's `SLAB_TYPESAFE_BY_RCU` cache `vm_area_cachep`): a
//! detached VMA's slot may be reused at once, by this or another address space, and
//! a lock-free reader that found it in an old tree must re-check what it locked
//! (`vma_start_read` checks the owner and the sequence, `lock_vma_under_rcu` the
//! range). Linux 6.15+ does the same: `vm_area_free` frees to the slab cache without
//! `call_rcu`, and only the slab's pages go back to the page allocator after a grace
//! period; our pool never returns slot memory at all.

use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::ptr;
#[cfg(not(target_os = "none"))]
use core::sync::atomic::AtomicUsize;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};

use super::IrqSpinLock;

// ---------------------------------------------------------------------------------
// Contexts
// ---------------------------------------------------------------------------------

/// How many contexts RCU tracks: CPUs in the kernel, concurrently live threads on
/// the host (a thread beyond this waits for another to exit).
#[cfg(target_os = "none")]
pub const MAX_CONTEXTS: usize = crate::paging::MAX_CPUS;
/// How many contexts RCU tracks: CPUs in the kernel, concurrently live threads on
/// the host (a thread beyond this waits for another to exit).
#[cfg(not(target_os = "none"))]
pub const MAX_CONTEXTS: usize = 256;

/// Nesting depth: the low 32 bits of `state`.
const NEST_MASK: u64 = 0xffff_ffff;
/// One outermost exit: the high 32 bits of `state` count them.
const EXIT_ONE: u64 = 1 << 32;

fn nesting(state: u64) -> u64 {
    state & NEST_MASK
}

fn exits(state: u64) -> u64 {
    state >> 32
}

/// The read side's word, alone on its cache line: the owner writes it on every
/// section entry and exit, others only read it once per grace period.
#[repr(align(64))]
struct ReadSide {
    /// Nesting depth (low half) and outermost exits (high half).
    state: AtomicU64,
    /// The `gp_seq` (in-progress value) of the last grace period this context
    /// reported a quiescent state for itself (tick, [`rcu_note_qs`]).
    qs_gp: AtomicU64,
}

/// One context's RCU state (Linux: `struct rcu_data`).
#[repr(align(64))]
struct RcuData {
    read: ReadSide,
    /// The callback list (Linux: `rdp->cblist`). Interrupts are off while it is held,
    /// since the tick takes it.
    cbs: IrqSpinLock<SegCbList>,
    /// Set while some context invokes this list's ready callbacks (one at a time).
    invoking: AtomicBool,
    /// Callbacks ever queued here.
    queued: AtomicU64,
    /// Callbacks ever invoked from here; the first `invoked` queued ones have run.
    invoked: AtomicU64,
    /// Host: a thread owns this entry.
    #[cfg(not(target_os = "none"))]
    owned: AtomicBool,
}

impl RcuData {
    const fn new() -> Self {
        Self {
            read: ReadSide {
                state: AtomicU64::new(0),
                qs_gp: AtomicU64::new(0),
            },
            cbs: IrqSpinLock::new(SegCbList::new()),
            invoking: AtomicBool::new(false),
            queued: AtomicU64::new(0),
            invoked: AtomicU64::new(0),
            #[cfg(not(target_os = "none"))]
            owned: AtomicBool::new(false),
        }
    }
}

static RCU_DATA: [RcuData; MAX_CONTEXTS] = [const { RcuData::new() }; MAX_CONTEXTS];

/// Kernel: the current CPU, from lockdep's hook.
#[cfg(target_os = "none")]
fn this_ctx() -> usize {
    super::lockdep::current_cpu()
}

/// Kernel: every CPU's entry is scanned (offline ones are always quiescent).
#[cfg(target_os = "none")]
fn nr_contexts() -> usize {
    MAX_CONTEXTS
}

/// Host: entries `0..HIGH_WATER` have been claimed at some point.
#[cfg(not(target_os = "none"))]
static HIGH_WATER: AtomicUsize = AtomicUsize::new(0);

#[cfg(not(target_os = "none"))]
fn nr_contexts() -> usize {
    HIGH_WATER.load(Ordering::Acquire)
}

/// Host: the calling thread's claim on an entry, released when the thread exits.
#[cfg(not(target_os = "none"))]
struct Registration {
    idx: core::cell::Cell<usize>,
}

#[cfg(not(target_os = "none"))]
impl Drop for Registration {
    fn drop(&mut self) {
        let i = self.idx.get();
        if i != usize::MAX {
            let d = &RCU_DATA[i];
            assert_eq!(
                nesting(d.read.state.load(Ordering::Relaxed)),
                0,
                "rcu: thread exits inside a read-side critical section"
            );
            // Release: the next owner's entries follow our last exit.
            d.owned.store(false, Ordering::Release);
        }
    }
}

#[cfg(not(target_os = "none"))]
std::thread_local! {
    static REGISTRATION: Registration = const {
        Registration { idx: core::cell::Cell::new(usize::MAX) }
    };
}

/// Host: the calling thread's entry, claimed on first use.
#[cfg(not(target_os = "none"))]
fn this_ctx() -> usize {
    REGISTRATION
        .try_with(|r| {
            let i = r.idx.get();
            if i != usize::MAX {
                return i;
            }
            let i = claim();
            r.idx.set(i);
            i
        })
        .expect("rcu: used from a thread-local destructor after the thread's RCU entry went")
}

#[cfg(not(target_os = "none"))]
fn claim() -> usize {
    loop {
        for (i, d) in RCU_DATA.iter().enumerate() {
            if !d.owned.load(Ordering::Relaxed)
                && d.owned
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                HIGH_WATER.fetch_max(i + 1, Ordering::AcqRel);
                return i;
            }
        }
        std::thread::yield_now();
    }
}

/// Clears a try-taken flag when dropped, so a panicking callback (a failing test) does
/// not leave the machine or a list stuck for everyone else.
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

// ---------------------------------------------------------------------------------
// Read side
// ---------------------------------------------------------------------------------

/// An RCU read-side critical section (Linux: `rcu_read_lock()` …
/// `rcu_read_unlock()`); ends when dropped. Not `Send`: a section ends in the context
/// that began it.
pub struct RcuReadGuard {
    _not_send: PhantomData<*const ()>,
}

/// Enter a read-side critical section (Linux: `rcu_read_lock()`). Sections nest.
/// Touches only this context's cache line; never blocks.
pub fn rcu_read_lock() -> RcuReadGuard {
    let s = &RCU_DATA[this_ctx()].read.state;
    let v = s.load(Ordering::Relaxed);
    debug_assert!(nesting(v) < NEST_MASK, "rcu: read-side nesting overflow");
    // Release: a grace period that reads this value also sees our earlier sections
    // as finished (see "Memory ordering").
    s.store(v + 1, Ordering::Release);
    // Our nesting before any load of the section, against the grace period's
    // start-then-snapshot (the module's store-buffering argument).
    fence(Ordering::SeqCst);
    RcuReadGuard {
        _not_send: PhantomData,
    }
}

impl Drop for RcuReadGuard {
    /// Leave the section (Linux: `rcu_read_unlock()`).
    fn drop(&mut self) {
        let s = &RCU_DATA[this_ctx()].read.state;
        let v = s.load(Ordering::Relaxed);
        debug_assert!(nesting(v) > 0, "rcu: unlock without lock");
        let next = if nesting(v) == 1 {
            v - 1 + EXIT_ONE
        } else {
            v - 1
        };
        // Release: the section's loads happen before whatever the grace period that
        // sees this value lets a writer free.
        s.store(next, Ordering::Release);
    }
}

/// Forget the current context's open read-side sections and callback invocation
/// after a panic that is not unwound (the kernel: a test's panic continues with the
/// next test, an AP's goes back to the idle loop): their guards never drop, and a
/// nesting left above zero would hold every later grace period back forever.
/// Lockdep resets its counters the same way.
pub fn rcu_reset_after_panic() {
    let d = &RCU_DATA[this_ctx()];
    let v = d.read.state.load(Ordering::Relaxed);
    if nesting(v) != 0 {
        d.read.state.store((exits(v) + 1) << 32, Ordering::Release);
    }
    d.invoking.store(false, Ordering::Release);
}

/// True while the current context is inside a read-side critical section (Linux:
/// `rcu_read_lock_held()`).
pub fn rcu_read_lock_held() -> bool {
    nesting(RCU_DATA[this_ctx()].read.state.load(Ordering::Relaxed)) != 0
}

// ---------------------------------------------------------------------------------
// Grace periods
// ---------------------------------------------------------------------------------

/// Low bits of `gp_seq`: 0 = idle, 1 = a grace period in progress (Linux:
/// `RCU_SEQ_STATE_MASK`, `RCU_SEQ_CTR_SHIFT` = 2).
const SEQ_STATE_MASK: u64 = 3;

/// The grace-period sequence (Linux: `rcu_state.gp_seq`): the counter in the upper
/// bits counts completed grace periods, the low bits say whether one runs.
static GP_SEQ: AtomicU64 = AtomicU64::new(0);
/// The highest `gp_seq` anyone waits for (Linux: `rcu_state.gp_seq_needed`).
static GP_SEQ_NEEDED: AtomicU64 = AtomicU64::new(0);

/// The value `gp_seq` will have once a grace period that starts after now has ended
/// (Linux: `rcu_seq_snap`): the end of the next one if idle, of the one after the
/// current one if one runs.
fn seq_snap(s: u64) -> u64 {
    (s + 2 * SEQ_STATE_MASK + 1) & !SEQ_STATE_MASK
}

fn seq_in_progress(s: u64) -> bool {
    s & SEQ_STATE_MASK != 0
}

/// The grace-period machine's private state (Linux: what `rcu_gp_kthread` keeps in
/// the `rcu_node` tree): each context's `state` at the start of the grace period in
/// progress, or [`QS_DONE`] once it has passed a quiescent state.
struct GpScan {
    snap: UnsafeCell<[u64; MAX_CONTEXTS]>,
    /// Taken by try only: whoever holds it drives the machine; others move on.
    busy: AtomicBool,
}

// SAFETY: `snap` is touched only by the holder of `busy` (acquired with Acquire,
// released with Release), so accesses never overlap.
unsafe impl Sync for GpScan {}

/// A snapshot entry of a context that has passed its quiescent state.
const QS_DONE: u64 = u64::MAX;

static GP_SCAN: GpScan = GpScan {
    snap: UnsafeCell::new([QS_DONE; MAX_CONTEXTS]),
    busy: AtomicBool::new(false),
};

/// Grace periods completed (diagnostics and benchmarks).
pub fn completed_grace_periods() -> u64 {
    GP_SEQ.load(Ordering::Relaxed) >> 2
}

/// The current `gp_seq` (diagnostics; Linux: `rcu_get_gp_seq()`).
pub fn rcu_gp_seq() -> u64 {
    GP_SEQ.load(Ordering::Relaxed)
}

/// The current `gp_seq`, Acquire: everything the grace periods it counts as complete
/// waited for happens before the caller's next steps (the pairing of
/// [`poll_state_synchronize_rcu`]).
pub fn rcu_gp_seq_acquire() -> u64 {
    GP_SEQ.load(Ordering::Acquire)
}

/// A cookie for the current state of RCU (Linux: `get_state_synchronize_rcu()`):
/// once [`poll_state_synchronize_rcu`] returns true for it, a full grace period has
/// elapsed since this call. Does not start a grace period; see
/// [`start_poll_synchronize_rcu`].
pub fn get_state_synchronize_rcu() -> u64 {
    // Everything the caller did before (the unlink) precedes the grace period the
    // cookie names (Linux: `smp_mb()` in `rcu_seq_snap`).
    fence(Ordering::SeqCst);
    seq_snap(GP_SEQ.load(Ordering::SeqCst))
}

/// As [`get_state_synchronize_rcu`], and makes sure a grace period will be started
/// for the cookie (Linux: `start_poll_synchronize_rcu()`).
pub fn start_poll_synchronize_rcu() -> u64 {
    let c = get_state_synchronize_rcu();
    GP_SEQ_NEEDED.fetch_max(c, Ordering::AcqRel);
    c
}

/// True once a full grace period has elapsed since `cookie` was taken (Linux:
/// `poll_state_synchronize_rcu()`). Only looks; see [`rcu_gp_advance`].
pub fn poll_state_synchronize_rcu(cookie: u64) -> bool {
    // Acquire: pairs with the Release end of the grace period, so the caller's frees
    // come after every section the grace period waited for.
    GP_SEQ.load(Ordering::Acquire) >= cookie
}

/// Drive the grace-period machine as far as it can go now, without waiting (Linux:
/// the work of `rcu_gp_kthread`: `rcu_gp_init`, the quiescent-state scan of
/// `rcu_gp_fqs`, `rcu_gp_cleanup`, done inline by whoever calls). Ends the grace period
/// in progress if every context has passed a quiescent state, and starts the next one
/// if someone needs it (checking it at once: contexts outside any section complete
/// it immediately). Returns the `gp_seq` it leaves. If another context is driving,
/// returns at once.
pub fn rcu_gp_advance() -> u64 {
    if GP_SCAN
        .busy
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return GP_SEQ.load(Ordering::Acquire);
    }
    let _busy = ClearOnDrop(&GP_SCAN.busy);
    // SAFETY: we hold `busy` (see `GpScan`).
    let snap = unsafe { &mut *GP_SCAN.snap.get() };
    // Entries past the count read at a grace period's start were never snapshotted
    // and still hold `QS_DONE`: contexts registered after the start (see below).
    let mut n = nr_contexts();
    let mut s = GP_SEQ.load(Ordering::Relaxed);
    loop {
        if seq_in_progress(s) {
            if !all_quiescent(snap, n, s) {
                break;
            }
            // rcu_gp_cleanup: the end (Release) follows every Acquire observation of
            // a quiescent state above.
            s = (s | SEQ_STATE_MASK) + 1;
            GP_SEQ.store(s, Ordering::SeqCst);
            continue;
        }
        if GP_SEQ_NEEDED.load(Ordering::Acquire) <= s {
            break;
        }
        // rcu_gp_init: start, then snapshot every context (see "Memory ordering").
        s += 1;
        GP_SEQ.store(s, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        // Read after the fence: a host thread registering later (its registration is
        // sequenced before its first section's fence) either is counted here or
        // starts its section after this fence, as any reader (the same argument).
        n = nr_contexts();
        for (i, e) in snap.iter_mut().enumerate().take(n) {
            let v = RCU_DATA[i].read.state.load(Ordering::Acquire);
            *e = if nesting(v) == 0 { QS_DONE } else { v };
        }
    }
    s
}

/// Has every context passed a quiescent state in the grace period `s` (in progress)?
/// Marks those that have (Linux: `force_qs_rnp` with `rcu_watching_snap_recheck`).
fn all_quiescent(snap: &mut [u64; MAX_CONTEXTS], n: usize, s: u64) -> bool {
    let mut all = true;
    for (i, e) in snap.iter_mut().enumerate().take(n) {
        if *e == QS_DONE {
            continue;
        }
        let d = &RCU_DATA[i].read;
        let v = d.state.load(Ordering::Acquire);
        if nesting(v) == 0 || exits(v) != exits(*e) || d.qs_gp.load(Ordering::Acquire) >= s {
            *e = QS_DONE;
        } else {
            all = false;
        }
    }
    all
}

/// Report a quiescent state for the current context, which must be outside any
/// read-side section (Linux: `rcu_qs()`); does nothing inside one.
fn rcu_qs(ctx: usize) -> bool {
    let d = &RCU_DATA[ctx].read;
    if nesting(d.state.load(Ordering::Relaxed)) != 0 {
        return false;
    }
    let s = GP_SEQ.load(Ordering::SeqCst);
    if seq_in_progress(s) && d.qs_gp.load(Ordering::Relaxed) < s {
        // Later sections after the grace period's start (see "Memory ordering").
        fence(Ordering::SeqCst);
        d.qs_gp.store(s, Ordering::Release);
    }
    true
}

/// A point outside any read-side section (the idle loop, a test harness's loop, a
/// long kernel loop): report a quiescent state, advance grace periods and run this
/// context's ready callbacks (Linux: `rcu_note_context_switch`, `cond_resched`'s
/// `rcu_all_qs`). Inside a section it only advances.
pub fn rcu_note_qs() {
    let me = this_ctx();
    let outside = rcu_qs(me);
    rcu_gp_advance();
    if outside {
        rcu_do_batch(me);
    }
}

/// The scheduling-clock hook: the kernel's timer interrupt calls it on every CPU
/// (Linux: `rcu_sched_clock_irq` → `rcu_qs` when the tick interrupted the CPU
/// outside any read-side section, then `invoke_rcu_core` → `rcu_core`: advance the
/// grace period, invoke this CPU's ready callbacks). Interrupts are off.
pub fn rcu_sched_clock_irq() {
    let me = this_ctx();
    rcu_qs(me);
    rcu_gp_advance();
    // Callbacks run even if the tick interrupted a reader: they free only what a
    // finished grace period protected, which no current section can reach.
    rcu_do_batch(me);
}

/// Drive the grace-period machine as far as it goes now and run this context's ready
/// callbacks (Linux: `rcu_core()`, the RCU softirq the tick raises). For a writer whose
/// callbacks pile up between ticks: it frees memory sooner, never waits, and may be
/// called anywhere the tick's work may run.
pub fn rcu_core() {
    rcu_gp_advance();
    rcu_do_batch(this_ctx());
}

/// One pause in a wait for a grace period: on the host, let the reader's thread run;
/// in the kernel, spin with interrupts as they are (enabled: IPIs and the tick keep
/// being answered, [`super`]'s "Interrupts and other CPUs").
fn wait_relax() {
    #[cfg(not(target_os = "none"))]
    std::thread::yield_now();
    core::hint::spin_loop();
}

fn check_may_wait(what: &str) {
    assert!(
        !rcu_read_lock_held(),
        "rcu: {what} inside an RCU read-side critical section would wait for itself"
    );
    #[cfg(target_os = "none")]
    debug_assert!(
        x86_64::instructions::interrupts::are_enabled(),
        "rcu: {what} with interrupts disabled"
    );
}

/// Wait until a full grace period has elapsed: every read-side section that began
/// before the call has ended (Linux: `synchronize_rcu()`). Spins, driving the grace
/// period and running this context's ready callbacks; in the kernel with interrupts
/// enabled, so cross-calls and the tick keep being answered.
///
/// # Panics
/// Called inside a read-side section (it would wait for itself).
pub fn synchronize_rcu() {
    check_may_wait("synchronize_rcu");
    let c = start_poll_synchronize_rcu();
    let me = this_ctx();
    loop {
        rcu_gp_advance();
        if poll_state_synchronize_rcu(c) {
            break;
        }
        wait_relax();
    }
    rcu_do_batch(me);
}

// ---------------------------------------------------------------------------------
// Callbacks
// ---------------------------------------------------------------------------------

/// A callback record, embedded in the object it will free (Linux: `struct
/// rcu_head`, `struct callback_head`). Owned by RCU from [`call_rcu`] until its
/// function is called.
pub struct RcuHead {
    next: *mut RcuHead,
    func: Option<unsafe fn(*mut RcuHead)>,
}

impl RcuHead {
    /// An unqueued record.
    pub const fn new() -> Self {
        Self {
            next: ptr::null_mut(),
            func: None,
        }
    }
}

impl Default for RcuHead {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: an `RcuHead` is only a link; `call_rcu`'s contract makes the callback safe to
// run in any context.
unsafe impl Send for RcuHead {}

/// A FIFO of callback records.
struct CbQueue {
    head: *mut RcuHead,
    tail: *mut RcuHead,
}

impl CbQueue {
    const fn new() -> Self {
        Self {
            head: ptr::null_mut(),
            tail: ptr::null_mut(),
        }
    }

    fn is_empty(&self) -> bool {
        self.head.is_null()
    }

    /// # Safety
    /// `h` is a valid record owned by RCU and in no queue.
    unsafe fn push(&mut self, h: *mut RcuHead) {
        // SAFETY: contract; `tail` is a valid queued record when the queue is non-empty.
        unsafe {
            (*h).next = ptr::null_mut();
            if self.tail.is_null() {
                self.head = h;
            } else {
                (*self.tail).next = h;
            }
        }
        self.tail = h;
    }

    /// Moves all of `other` to the end of `self`.
    fn append(&mut self, other: &mut CbQueue) {
        if other.is_empty() {
            return;
        }
        if self.tail.is_null() {
            self.head = other.head;
        } else {
            // SAFETY: `self.tail` is a queued record, owned by RCU.
            unsafe { (*self.tail).next = other.head };
        }
        self.tail = other.tail;
        *other = CbQueue::new();
    }
}

/// One context's callbacks, segmented by grace period (Linux: `struct
/// rcu_segcblist`): `done` may run now; `wait` waits for `gp_seq >= wait_gp`, `next`
/// for `next_gp >= wait_gp`. A callback is only ever moved to a later or equal cookie
/// than its own, which is safe.
struct SegCbList {
    done: CbQueue,
    wait: CbQueue,
    wait_gp: u64,
    next: CbQueue,
    next_gp: u64,
}

// SAFETY: the records are owned by RCU (see `call_rcu`) and touched only under the
// list's lock.
unsafe impl Send for SegCbList {}

impl SegCbList {
    const fn new() -> Self {
        Self {
            done: CbQueue::new(),
            wait: CbQueue::new(),
            wait_gp: 0,
            next: CbQueue::new(),
            next_gp: 0,
        }
    }

    /// Queue `h`, which needs the grace period ending at `cookie` (Linux:
    /// `rcu_segcblist_enqueue` + `rcu_accelerate_cbs`).
    ///
    /// # Safety
    /// As [`CbQueue::push`].
    unsafe fn enqueue(&mut self, h: *mut RcuHead, cookie: u64) {
        if !self.next.is_empty() && self.next_gp < cookie && self.wait.is_empty() {
            // The older batch moves up; the new one starts.
            self.wait_gp = self.next_gp;
            let mut n = core::mem::replace(&mut self.next, CbQueue::new());
            self.wait.append(&mut n);
        }
        // Either empty, or the same grace period, or `next` waits a little longer
        // than it needed to (merged with ours).
        self.next_gp = if self.next.is_empty() {
            cookie
        } else {
            self.next_gp.max(cookie)
        };
        // SAFETY: contract.
        unsafe { self.next.push(h) };
    }

    /// Move what the grace periods up to `gp_seq` completed to `done` (Linux:
    /// `rcu_segcblist_advance`).
    fn advance(&mut self, gp_seq: u64) {
        if !self.wait.is_empty() && gp_seq >= self.wait_gp {
            let mut w = core::mem::replace(&mut self.wait, CbQueue::new());
            self.done.append(&mut w);
        }
        if !self.next.is_empty() && self.wait.is_empty() {
            if gp_seq >= self.next_gp {
                let mut n = core::mem::replace(&mut self.next, CbQueue::new());
                self.done.append(&mut n);
            } else {
                self.wait_gp = self.next_gp;
                let mut n = core::mem::replace(&mut self.next, CbQueue::new());
                self.wait.append(&mut n);
            }
        }
    }

    fn pending(&self) -> bool {
        !(self.done.is_empty() && self.wait.is_empty() && self.next.is_empty())
    }
}

/// Queue `func(head)` to run after a grace period (Linux: `call_rcu()`). Never
/// allocates: the record is the caller's. Runs on this context's list; the tick, this
/// context's next RCU call or [`rcu_barrier`] invokes it once the grace period is over.
///
/// # Safety
/// `head` is valid, not queued already, and stays valid and untouched by the caller
/// until `func` is called with it. `func` may be called in any context, on any CPU,
/// in the timer interrupt: it may take only leaf locks and must not wait.
pub unsafe fn call_rcu(head: *mut RcuHead, func: unsafe fn(*mut RcuHead)) {
    let me = this_ctx();
    let cookie = start_poll_synchronize_rcu();
    let d = &RCU_DATA[me];
    {
        let mut l = d.cbs.lock();
        // SAFETY: contract: `head` is ours to use until `func` runs.
        unsafe {
            (*head).func = Some(func);
            l.enqueue(head, cookie);
        }
        d.queued.fetch_add(1, Ordering::Relaxed);
    }
    // Without a tick (the host), the writer's own paths move things along (Linux's
    // `__call_rcu_core` forces a quiescent state when callbacks pile up).
    #[cfg(not(target_os = "none"))]
    {
        rcu_gp_advance();
        rcu_do_batch(me);
    }
}

/// Invoke the ready callbacks of context `ctx` (Linux: `rcu_do_batch`). One invoker
/// per list: if another is at it, returns.
fn rcu_do_batch(ctx: usize) {
    let d = &RCU_DATA[ctx];
    if d.invoking.swap(true, Ordering::Acquire) {
        return;
    }
    let _invoking = ClearOnDrop(&d.invoking);
    loop {
        let mut ready = {
            let mut l = d.cbs.lock();
            if !l.pending() {
                break;
            }
            l.advance(GP_SEQ.load(Ordering::Acquire));
            core::mem::replace(&mut l.done, CbQueue::new())
        };
        if ready.is_empty() {
            break;
        }
        let mut p = ready.head;
        ready.head = ptr::null_mut();
        while !p.is_null() {
            // SAFETY: `p` was queued by `call_rcu`, whose caller gave it to us until
            // its function runs; we read the link before calling it.
            unsafe {
                let next = (*p).next;
                let f = (*p)
                    .func
                    .take()
                    .expect("rcu: queued record without a function");
                f(p);
                p = next;
            }
            // Release: rcu_barrier's Acquire sees the callback's effects.
            d.invoked.fetch_add(1, Ordering::Release);
        }
    }
}

/// Wait until every callback queued (by any context) before the call has run (Linux:
/// `rcu_barrier()`). Drives the grace periods and invokes other contexts' ready
/// callbacks itself where their owners are busy or gone. Leak checks call it first.
///
/// # Panics
/// Inside a read-side section.
pub fn rcu_barrier() {
    check_may_wait("rcu_barrier");
    let n = nr_contexts();
    let mut target = [0u64; MAX_CONTEXTS];
    for (i, t) in target.iter_mut().enumerate().take(n) {
        *t = RCU_DATA[i].queued.load(Ordering::Relaxed);
    }
    // The queue counts are read under no lock: a callback queued concurrently may or
    // may not be waited for, as in Linux.
    fence(Ordering::SeqCst);
    loop {
        rcu_gp_advance();
        let mut all = true;
        for (i, &t) in target.iter().enumerate().take(n) {
            let d = &RCU_DATA[i];
            if d.invoked.load(Ordering::Acquire) < t {
                rcu_do_batch(i);
                if d.invoked.load(Ordering::Acquire) < t {
                    all = false;
                }
            }
        }
        if all {
            return;
        }
        // Make sure the grace periods those callbacks need are asked for.
        GP_SEQ_NEEDED.fetch_max(seq_snap(GP_SEQ.load(Ordering::SeqCst)), Ordering::AcqRel);
        wait_relax();
    }
}

/// Callbacks queued and not yet invoked, over all contexts (diagnostics and tests).
pub fn rcu_pending_callbacks() -> u64 {
    RCU_DATA[..nr_contexts()]
        .iter()
        .map(|d| {
            d.queued
                .load(Ordering::Relaxed)
                .saturating_sub(d.invoked.load(Ordering::Relaxed))
        })
        .sum()
}

/// A heap object with its callback record, for [`kfree_rcu`] (Linux: a structure with
/// an embedded `struct rcu_head`).
#[repr(C)]
pub struct RcuBox<T> {
    // First field (`repr(C)`): the callback finds the box from the record's address.
    head: RcuHead,
    /// The object.
    pub value: T,
}

impl<T> RcuBox<T> {
    /// Wrap `value`.
    pub const fn new(value: T) -> Self {
        Self {
            head: RcuHead::new(),
            value,
        }
    }

    /// The record of the box at `b` (for [`call_rcu`] with a function of one's own).
    pub fn head_of(b: *mut Self) -> *mut RcuHead {
        // `head` is the first field of a `repr(C)` struct: same address.
        b.cast()
    }

    /// The box whose record is `h`.
    ///
    /// # Safety
    /// `h` is [`Self::head_of`] a box leaked with `Box::into_raw` and not reclaimed.
    pub unsafe fn from_head(h: *mut RcuHead) -> alloc::boxed::Box<Self> {
        // SAFETY: contract.
        unsafe { alloc::boxed::Box::from_raw(h.cast()) }
    }
}

/// Free `b` after a grace period (Linux: `kfree_rcu(ptr, rhf)`). Never allocates.
pub fn kfree_rcu<T: Send + 'static>(b: alloc::boxed::Box<RcuBox<T>>) {
    /// # Safety
    /// `h` is the head of a leaked `Box<RcuBox<T>>`.
    unsafe fn free<T>(h: *mut RcuHead) {
        // SAFETY: contract.
        drop(unsafe { RcuBox::<T>::from_head(h) });
    }
    let h = RcuBox::head_of(alloc::boxed::Box::into_raw(b));
    // SAFETY: the box is leaked to RCU until `free` reclaims it; `T: Send` lets it be
    // dropped on another CPU or thread.
    unsafe { call_rcu(h, free::<T>) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_snap_names_the_end_of_a_grace_period_that_starts_later() {
        assert_eq!(seq_snap(0), 4); // idle: the next one
        assert_eq!(seq_snap(1), 8); // one running: the one after it
        assert_eq!(seq_snap(4), 8);
        assert_eq!(seq_snap(5), 12);
    }

    #[test]
    fn segments_keep_fifo_order_and_never_run_early() {
        let mut heads: [RcuHead; 3] = [RcuHead::new(), RcuHead::new(), RcuHead::new()];
        let mut l = SegCbList::new();
        let [a, b, c] = heads.each_mut().map(|h| h as *mut RcuHead);
        // SAFETY: the heads outlive the list and are queued once.
        unsafe {
            l.enqueue(a, 4);
            l.enqueue(b, 8);
            l.enqueue(c, 8);
        }
        l.advance(1);
        assert!(l.done.is_empty());
        l.advance(4);
        assert_eq!(l.done.head, a);
        l.advance(7);
        assert_eq!(l.done.tail, a);
        l.advance(8);
        assert_eq!(l.done.tail, c);
        assert!(l.wait.is_empty() && l.next.is_empty());
    }
}
