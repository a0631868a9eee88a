//! In-kernel tests of RCU (`mm::sync::rcu`) across real CPUs: `synchronize_rcu` on
//! one CPU waits for a reader on another, callbacks complete on every CPU driven by the
//! APIC timer tick alone, and grace periods complete while the other CPUs are halted
//! in the idle loop. Run with four CPUs: `KERNEL_SMP=4 cargo ktest --test rcu`
//! (`.ci/run` does). Each test takes well under a second; waits are bounded and fail
//! with a message rather than hang.
//!
//! Linux counterparts: `rcutorture`'s basic checks (a reader holding back
//! `synchronize_rcu`, callbacks invoked after their grace period), and
//! `rcu_sched_clock_irq` as the engine of grace periods on otherwise idle CPUs.
#![no_std]
#![no_main]
// Test cases are named for what they check; the custom test framework makes them
// items of the test crate, which `missing_docs` would otherwise ask to document.
#![allow(missing_docs)]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::run_tests)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::boxed::Box;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use kernel::arch::tsc;
use kernel::percpu::{MAX_CPUS, block, this_cpu};
use kernel::smp::{self, online_mask, run_on};
use mm::sync::rcu::{
    RcuBox, RcuHead, call_rcu, poll_state_synchronize_rcu, rcu_read_lock,
    start_poll_synchronize_rcu, synchronize_rcu,
};

kernel::test_kernel_main!();

fn now_ms() -> u64 {
    tsc::cycles_to_ns(tsc::rdtsc()) / 1_000_000
}

fn need_cpus(n: usize) {
    assert!(
        smp::online_cpus() >= n,
        "the RCU tests need {n} CPUs: run them with KERNEL_SMP=4 (got {})",
        smp::online_cpus()
    );
}

/// Spins (interrupts on) until `done()`, failing after `ms` milliseconds with `what`.
fn wait_for(ms: u64, what: &str, done: &dyn Fn() -> bool) {
    let start = now_ms();
    while !done() {
        assert!(now_ms() - start < ms, "{what}: not within {ms} ms");
        core::hint::spin_loop();
    }
}

#[test_case]
fn synchronize_rcu_on_cpu0_waits_for_a_reader_on_cpu1() {
    need_cpus(2);
    static INSIDE: AtomicBool = AtomicBool::new(false);
    static LEFT: AtomicBool = AtomicBool::new(false);
    static WAITED_MS: AtomicU64 = AtomicU64::new(0);
    INSIDE.store(false, SeqCst);
    LEFT.store(false, SeqCst);
    run_on(0b11, &|| {
        if this_cpu() == 1 {
            let g = rcu_read_lock();
            INSIDE.store(true, SeqCst);
            // Stay inside for 300 ms of ticks (the tick sees us inside and reports
            // nothing).
            let t = now_ms();
            while now_ms() - t < 300 {
                core::hint::spin_loop();
            }
            LEFT.store(true, SeqCst);
            drop(g);
        } else {
            wait_for(2_000, "CPU 1 entering its read-side section", &|| {
                INSIDE.load(SeqCst)
            });
            let t = now_ms();
            synchronize_rcu();
            WAITED_MS.store(now_ms() - t, SeqCst);
            assert!(
                LEFT.load(SeqCst),
                "synchronize_rcu returned while CPU 1 was still in its read-side section"
            );
        }
    });
    let waited = WAITED_MS.load(SeqCst);
    assert!(waited >= 100, "synchronize_rcu waited only {waited} ms");
    kernel::serial_println!("(synchronize_rcu waited {waited} ms for CPU 1) ");
}

/// Per CPU: callbacks it queued that ran, and those that ran on that same CPU.
static RAN: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static RAN_HERE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// # Safety
/// `h` is the record of a leaked `Box<RcuBox<usize>>` holding the queuing CPU.
unsafe fn count(h: *mut RcuHead) {
    // SAFETY: contract.
    let b = unsafe { RcuBox::<usize>::from_head(h) };
    let cpu = b.value;
    RAN[cpu].fetch_add(1, SeqCst);
    if cpu == this_cpu() {
        RAN_HERE[cpu].fetch_add(1, SeqCst);
    }
}

const PER_CPU: u64 = 64;

fn queue_counted(n: u64) {
    for _ in 0..n {
        let b = Box::into_raw(Box::new(RcuBox::new(this_cpu())));
        // SAFETY: leaked to RCU until `count` reclaims it.
        unsafe { call_rcu(RcuBox::head_of(b), count) };
    }
}

#[test_case]
fn callbacks_complete_on_every_cpu_driven_by_the_tick_alone() {
    need_cpus(2);
    for c in 0..MAX_CPUS {
        RAN[c].store(0, SeqCst);
        RAN_HERE[c].store(0, SeqCst);
    }
    let mask = online_mask();
    run_on(mask, &|| {
        let me = this_cpu();
        let t0 = block(me).ticks.load(SeqCst);
        queue_counted(PER_CPU);
        // No RCU call from here on: only this CPU's timer tick (and the other CPUs'
        // ticks, for the grace periods) can run them.
        wait_for(3_000, "this CPU's callbacks, from its tick", &|| {
            RAN[me].load(SeqCst) == PER_CPU
        });
        assert!(
            block(me).ticks.load(SeqCst) > t0,
            "the callbacks ran without a tick"
        );
    });
    for c in smp::call::cpus(mask) {
        assert_eq!(RAN[c].load(SeqCst), PER_CPU, "CPU {c}'s callbacks");
        assert_eq!(
            RAN_HERE[c].load(SeqCst),
            PER_CPU,
            "CPU {c}'s callbacks ran on CPU {c} (its own tick)"
        );
    }
}

#[test_case]
fn grace_periods_and_callbacks_complete_while_the_other_cpus_idle() {
    need_cpus(2);
    // The other CPUs are halted in the idle loop: they are quiescent, and their
    // ticks move grace periods along without any call from us.
    for _ in 0..3 {
        let c = start_poll_synchronize_rcu();
        wait_for(2_000, "a grace period with every other CPU idle", &|| {
            poll_state_synchronize_rcu(c)
        });
    }
    // A CPU queues callbacks and goes idle: its tick runs them there.
    RAN[1].store(0, SeqCst);
    RAN_HERE[1].store(0, SeqCst);
    run_on(1 << 1, &|| queue_counted(PER_CPU));
    wait_for(3_000, "CPU 1's callbacks while it idles", &|| {
        RAN[1].load(SeqCst) == PER_CPU
    });
    assert_eq!(RAN_HERE[1].load(SeqCst), PER_CPU);
    // And synchronize_rcu returns with everyone idle.
    synchronize_rcu();
}
