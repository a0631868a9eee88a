//! Cross-calls: run a function on other CPUs through an IPI (Linux: `kernel/smp.c`,
//! `smp_call_function_many`, `on_each_cpu_mask`, `generic_smp_call_function_interrupt`).
//!
//! Each CPU has a lock-free call queue (Linux: `call_single_queue`, an `llist`).
//! A caller owns one call slot per target CPU (Linux: `cfd_data`'s per-CPU `csd`): it
//! fills the slot, marks it busy, pushes it on the target's queue and sends the
//! [`CALL_FUNCTION_VECTOR`](crate::arch::apic::CALL_FUNCTION_VECTOR) IPI. The target's
//! handler takes its whole queue, runs each function with interrupts disabled and
//! clears the slot's busy flag (Linux: `csd_unlock`). Slots are static, so a cross-call
//! never allocates.
//!
//! Waiting never deadlocks: every wait (for a slot to be free, for the targets to
//! finish) also runs this CPU's own queue, so two CPUs cross-calling each other, or a
//! CPU waiting with interrupts disabled, still answer each other. Functions run in
//! interrupt context: they must not take a lock that a CPU holds while cross-calling
//! (none of the memory manager's, see `mm::sync`), must not cross-call themselves, and
//! must be short (a TLB flush, a counter).

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use x86_64::instructions::interrupts;

use crate::arch::{apic, tsc};
use crate::percpu::{CacheLine, MAX_CPUS, PerCpu, block, this_block, this_cpu};

/// How long a caller waits for a target before it reports a lost cross-call (Linux:
/// `csd_lock_timeout`, a warning there; a panic here, which fails the test).
const CALL_TIMEOUT_US: u64 = 10_000_000;

/// One pending call on one target (Linux: `struct __call_single_data`).
struct CallSlot {
    func: AtomicUsize,
    info: AtomicUsize,
    busy: AtomicBool,
    next: AtomicPtr<CallSlot>,
}

impl CallSlot {
    const fn new() -> Self {
        Self {
            func: AtomicUsize::new(0),
            info: AtomicUsize::new(0),
            busy: AtomicBool::new(false),
            next: AtomicPtr::new(core::ptr::null_mut()),
        }
    }
}

/// `SLOTS.on(caller)[target]`: the caller's slot for calls to `target`.
static SLOTS: PerCpu<[CallSlot; MAX_CPUS]> =
    PerCpu::new([const { CacheLine([const { CallSlot::new() }; MAX_CPUS]) }; MAX_CPUS]);
/// Each CPU's queue of slots to run (Linux: `call_single_queue`).
static QUEUE: PerCpu<AtomicPtr<CallSlot>> =
    PerCpu::new([const { CacheLine(AtomicPtr::new(core::ptr::null_mut())) }; MAX_CPUS]);
/// Cross-call IPIs sent, for the figures.
pub static IPIS_SENT: AtomicU64 = AtomicU64::new(0);

/// Runs every call queued for this CPU (Linux: `__flush_smp_call_function_queue`).
/// Called by the IPI handler and by every wait loop.
pub fn flush_queue() {
    interrupts::without_interrupts(|| {
        let mut slot = QUEUE.get().swap(core::ptr::null_mut(), Ordering::Acquire);
        let me = this_block();
        me.in_call.fetch_add(1, Ordering::Relaxed);
        while !slot.is_null() {
            // SAFETY: queued slots are static `CallSlot`s, and the caller does not touch a busy slot until we clear `busy` below.
            let s = unsafe { &*slot };
            slot = s.next.load(Ordering::Relaxed);
            let func = s.func.load(Ordering::Relaxed);
            let info = s.info.load(Ordering::Relaxed);
            // SAFETY: `func` was stored from a `fn(usize)` by `queue_call` before the slot was published (Release/Acquire through the queue).
            let func: fn(usize) = unsafe { core::mem::transmute::<usize, fn(usize)>(func) };
            func(info);
            s.busy.store(false, Ordering::Release);
        }
        me.in_call.fetch_sub(1, Ordering::Relaxed);
    });
}

/// The `CALL_FUNCTION_VECTOR` handler's work (Linux:
/// `sysvec_call_function` → `generic_smp_call_function_interrupt`).
pub fn call_function_interrupt() {
    apic::eoi();
    flush_queue();
}

/// Spins until `done()`, running our own queue meanwhile; panics after
/// [`CALL_TIMEOUT_US`] naming `what` (a lost IPI or a target stuck with interrupts
/// off: a deadlock the caller would otherwise never report).
pub fn wait_until(what: &dyn Fn() -> (bool, usize), label: &str) {
    let start = tsc::rdtsc();
    let limit = tsc::hz() / 1_000_000 * CALL_TIMEOUT_US;
    loop {
        let (done, cpu) = what();
        if done {
            return;
        }
        flush_queue();
        core::hint::spin_loop();
        if tsc::rdtsc() - start > limit {
            panic!(
                "{label}: CPU {cpu} did not answer within {} s (stuck with interrupts disabled?)",
                CALL_TIMEOUT_US / 1_000_000
            );
        }
    }
}

fn queue_call(target: usize, func: fn(usize), info: usize) {
    let slot = &SLOTS.get()[target];
    // Linux: csd_lock_wait: a slot still busy from a call that did not wait.
    wait_until(
        &|| (!slot.busy.load(Ordering::Acquire), target),
        "cross-call slot",
    );
    slot.func.store(func as usize, Ordering::Relaxed);
    slot.info.store(info, Ordering::Relaxed);
    slot.busy.store(true, Ordering::Relaxed);
    let queue = QUEUE.on(target);
    let me = slot as *const CallSlot as *mut CallSlot;
    let mut head = queue.load(Ordering::Relaxed);
    loop {
        slot.next.store(head, Ordering::Relaxed);
        match queue.compare_exchange_weak(head, me, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => break,
            Err(h) => head = h,
        }
    }
    // Linux sends the IPI only when the queue was empty (`llist_add` returned true);
    // a non-empty queue already has one on the way.
    if head.is_null() {
        IPIS_SENT.fetch_add(1, Ordering::Relaxed);
        apic::send_ipi(
            block(target).apic_id.load(Ordering::Relaxed),
            apic::CALL_FUNCTION_VECTOR,
        );
    }
}

/// Runs `func(info)` on every online CPU in `mask` except the caller (Linux:
/// `smp_call_function_many`); with `wait`, returns only after all of them ran it.
///
/// # Panics
/// From inside a cross-call function (Linux warns: it can deadlock), or if a target
/// does not answer within 10 s.
pub fn smp_call_function_many(mask: u64, func: fn(usize), info: usize, wait: bool) {
    assert_eq!(
        this_block().in_call.load(Ordering::Relaxed),
        0,
        "cross-call from inside a cross-call function"
    );
    let me = this_cpu();
    let targets = mask & super::online_mask() & !(1u64 << me);
    for cpu in cpus(targets) {
        queue_call(cpu, func, info);
    }
    if wait {
        let slots = SLOTS.get();
        for cpu in cpus(targets) {
            let slot = &slots[cpu];
            wait_until(&|| (!slot.busy.load(Ordering::Acquire), cpu), "cross-call");
        }
    }
}

/// Runs `f` on every online CPU in `mask`, the caller included if it is in `mask`
/// (there first, with interrupts disabled like the others), and waits for all (Linux:
/// `on_each_cpu_mask` with `wait`).
pub fn on_each_cpu_mask(mask: u64, f: &(dyn Fn() + Sync)) {
    fn trampoline(info: usize) {
        // SAFETY: `info` is the address of the `&dyn Fn` below, alive until every target finished (we wait).
        let f = unsafe { &*(info as *const &(dyn Fn() + Sync)) };
        f()
    }
    let fref: &(dyn Fn() + Sync) = f;
    let info = &fref as *const &(dyn Fn() + Sync) as usize;
    if mask & (1u64 << this_cpu()) != 0 {
        interrupts::without_interrupts(f);
    }
    smp_call_function_many(mask, trampoline, info, true);
}

/// The CPU indices set in `mask`.
pub fn cpus(mask: u64) -> impl Iterator<Item = usize> {
    (0..MAX_CPUS).filter(move |&c| mask & (1u64 << c) != 0)
}
