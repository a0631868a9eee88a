//! In-kernel tests of the memory manager under real concurrency (issue 12): page faults
//! through the real #PF handler on several CPUs while another CPU changes the same
//! address space (once through the per-CPU page lists, once with page poisoning on), the per-VMA lock's writer/reader protocol across CPUs, the lock-free
//! lookup against munmap and against a VMA slot reused by another address space, the
//! fault-vs-mprotect ABBA pair, user copies against munmap and MADV_DONTNEED with page
//! poisoning on, fork while other CPUs fault in the parent (issue 14), and lockdep-light
//! on an AP. Run with four CPUs:
//! `KERNEL_SMP=4 cargo ktest --test mm_smp` (`.ci/run` does).
//!
//! Each test runs its CPUs for a bounded time (about a second, [`RUN_MS`]; the storm
//! two, the fork test three) and the
//! harness's leak check applies (frames, page-table pages, VMAs back to baseline). A
//! CPU stuck on a lock makes the test fail rather than hang: where the deadlock could
//! hold the boot CPU, the locking work runs on the APs and CPU 0 is a watchdog that
//! panics when progress stops ([`watchdog`]); the panic path gives the APs 10 s to
//! stop and then ends the run as failed.
//!
//! Linux counterparts: the per-VMA lock races (`lock_vma_under_rcu` against
//! `vma_start_write`, `SLAB_TYPESAFE_BY_RCU` slot reuse), `dup_mmap` against page
//! faults (`copy_present_pte`'s write-protection and the parent's TLB flush),
//! `CONFIG_PAGE_POISONING`, and lockdep.
#![no_std]
#![no_main]
// Test cases are named for what they check; the custom test framework makes them
// items of the test crate, which `missing_docs` would otherwise ask to document.
#![allow(missing_docs)]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::run_tests)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use kernel::address_space;
use kernel::arch::extable::{probe_read_u64, probe_write, probe_write_u64};
use kernel::arch::tsc;
use kernel::memory::frames;
use kernel::percpu::{block, this_cpu};
use kernel::serial_println;
use kernel::smp::{self, online_mask, run_on};
use mm::mmap::*;
use mm::sync::lockdep::LockClass;
use mm::vma::{VM_REFCNT_EXCLUDE_READERS_FLAG, VmaReadError, VmaRef};
use x86_64::VirtAddr;

kernel::test_kernel_main!();

const P: usize = 4096;
const RW: u32 = PROT_READ | PROT_WRITE;
const RWX: u32 = RW | PROT_EXEC;
const FIXED: u32 = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
/// How long the concurrent phase of each test runs (the storm runs twice as long, the
/// fork test three times).
const RUN_MS: u64 = 1_000;

fn va(a: usize) -> VirtAddr {
    VirtAddr::new(a as u64)
}

fn now_ms() -> u64 {
    tsc::cycles_to_ns(tsc::rdtsc()) / 1_000_000
}

/// xorshift64*: a small deterministic generator per CPU.
struct Rng(u64);

impl Rng {
    fn new(stream: u64) -> Self {
        Rng((0x9e37_79b9_7f4a_7c15 ^ stream.wrapping_mul(0x2545_f491_4f6c_dd1d)) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// A page-aligned sub-range of the `n` pages at `base`, 1 to `max` pages long.
    fn range(&mut self, base: usize, n: usize, max: usize) -> (usize, usize) {
        let len = 1 + self.below(max.min(n));
        let first = self.below(n - len + 1);
        (base + first * P, base + (first + len) * P)
    }
}

/// The test needs four CPUs (the boot CPU and three APs). Also switches page poisoning
/// on for the rest of the run (Linux: `page_poison=1`; the first call fills free memory
/// with the poison), so every test catches a write into a freed frame when the frame
/// is handed out again: [`poison_ok`] at its end. Returns the count of damaged frames
/// so far.
fn need_cpus() -> u64 {
    need_four_cpus();
    frames().enable_page_poisoning();
    frames().poison_corruptions()
}

fn need_four_cpus() {
    assert!(
        smp::online_cpus() >= 4,
        "the mm SMP tests need four CPUs: run them with KERNEL_SMP=4 (got {})",
        smp::online_cpus()
    );
}

/// No freed frame was written to since `before` ([`need_cpus`]).
fn poison_ok(before: u64) {
    assert_eq!(
        frames().poison_corruptions(),
        before,
        "a freed frame was written to (use after free): {:?}",
        frames().first_poison_corruption()
    );
}

/// A user address space loaded on the CPUs of `mask` (so their faults go to it); each
/// of them leaves it when dropped, and the last reference tears it down.
struct Space {
    mm: Arc<AddressSpace>,
    mask: u64,
}

impl Space {
    fn on(mask: u64) -> Self {
        let mm = address_space::new_user_space(MmLayout::default()).expect("no memory for an mm");
        run_on(mask, &|| address_space::activate(&mm));
        Self { mm, mask }
    }
}

impl Drop for Space {
    fn drop(&mut self) {
        run_on(self.mask, &address_space::deactivate_current);
    }
}

/// Progress counter the watchdog reads: every worker adds to it.
static PROGRESS: AtomicU64 = AtomicU64::new(0);
/// Set by the watchdog (or a failing worker) to stop every worker of the test.
static STOP: AtomicBool = AtomicBool::new(false);
/// First failure seen by a worker (0: none); workers report through it instead of
/// panicking on an AP while another CPU may be waiting for them in a lock.
static FAILED: AtomicU64 = AtomicU64::new(0);

fn running() -> bool {
    !STOP.load(SeqCst) && !smp::aborted()
}

/// The boot CPU's part in a test whose locking runs on the APs: stop the run after
/// `ms`, and panic if the workers stop making progress for 3 s (a deadlock), which
/// fails the test instead of hanging the run.
fn watchdog(ms: u64, done: &dyn Fn() -> bool) {
    let start = now_ms();
    let (mut last, mut since) = (PROGRESS.load(SeqCst), now_ms());
    while !done() {
        let t = now_ms();
        if t - start >= ms {
            STOP.store(true, SeqCst);
        }
        let p = PROGRESS.load(SeqCst);
        if p != last {
            (last, since) = (p, t);
        } else if t - since > 3_000 {
            panic!("no progress for 3 s: a CPU is stuck (deadlock); progress {p}");
        }
        // Sleep until the next tick (or IPI) instead of spinning: under TCG every
        // vCPU is a host thread, and a spinning watchdog takes host time from the
        // CPUs doing the work.
        if x86_64::instructions::interrupts::are_enabled() {
            x86_64::instructions::hlt();
        } else {
            core::hint::spin_loop();
        }
    }
}

fn reset() {
    PROGRESS.store(0, SeqCst);
    STOP.store(false, SeqCst);
    FAILED.store(0, SeqCst);
}

// ---- 1. fault storm against a writer ------------------------------------------------

/// Pages each owner CPU owns.
const K: usize = 16;

/// The record CPU `cpu` writes for the `ctr`-th time: never zero.
fn record(cpu: usize, ctr: u64) -> u64 {
    (cpu as u64) << 56 | (ctr & ((1 << 56) - 1))
}

/// Incremented before and after every MADV_DONTNEED of the owners' pages (odd while one
/// runs): an owner that reads zero back with no DONTNEED in between lost a write.
static ZAP_GEN: AtomicU64 = AtomicU64::new(0);

/// The storm with page poisoning off, so frames go through the per-CPU page lists
/// (poisoning bypasses them): an owner's fault takes a frame from its own CPU's list,
/// CPU 0's DONTNEED and munmap free the owners' frames onto CPU 0's list, and those
/// come back to the owners through the zone. A frame handed out twice, or freed while
/// mapped, shows up as another CPU's record or a lost write. Runs first (tests run in
/// name order, hence its name): page poisoning, once on, stays on for the run.
#[test_case]
fn a_fault_storm_against_a_writer_through_the_per_cpu_page_lists() {
    need_four_cpus();
    assert!(
        !frames().page_poisoning(),
        "this test must run before any test switches page poisoning on"
    );
    storm(None);
}

/// CPUs 1 to 3 each write records (CPU id, counter) as single 8-byte stores into
/// random pages of their own (first touches included: every page starts untouched and
/// MADV_DONTNEED drops them again), each through the real #PF handler and the
/// lock-free fault path, and read them back. CPU 0 meanwhile splits and re-merges
/// their VMAs and a neighbour with mprotect (sometimes read-only: the owners' writes
/// are refused), MADV_DONTNEEDs the owners' pages, and mremaps, munmaps and re-mmaps
/// the neighbouring VMAs. An owner must read back its last write, or zero after a
/// DONTNEED, never another CPU's record and never zero without a DONTNEED (a lost
/// write).
#[test_case]
fn fault_storm_against_a_writer() {
    let poison0 = need_cpus();
    storm(Some(poison0));
}

/// The storm (see [`fault_storm_against_a_writer`]); `poison0` is the poison count
/// before it, with page poisoning on.
fn storm(poison0: Option<u64>) {
    reset();
    ZAP_GEN.store(0, SeqCst);
    const OWNERS: usize = 3;
    const O: usize = 0x1000_0000;
    const OPAGES: usize = OWNERS * K;
    const W: usize = O + OPAGES * P;
    const WPAGES: usize = 32;
    const S: usize = 0x2000_0000;
    let s = Space::on(0b1111);
    let mm = &s.mm;
    mm.mmap(O, OPAGES * P, RW, FIXED, None, 0).unwrap();
    mm.mmap(W, WPAGES / 2 * P, RW, FIXED, None, 0).unwrap();
    let faults0: Vec<u64> = (0..4).map(|c| block(c).user_faults.load(SeqCst)).collect();
    let stats0 = mm.fault_stats();
    faults_pass_a_held_mmap_write_lock(mm, O);
    static WRITES: AtomicU64 = AtomicU64::new(0);
    static CHECKS: AtomicU64 = AtomicU64::new(0);
    static ZEROED: AtomicU64 = AtomicU64::new(0);
    static REFUSED: AtomicU64 = AtomicU64::new(0);
    static OPS: AtomicU64 = AtomicU64::new(0);
    for c in [&WRITES, &CHECKS, &ZEROED, &REFUSED, &OPS] {
        c.store(0, SeqCst);
    }
    let fail = |code: u64| {
        FAILED.compare_exchange(0, code, SeqCst, SeqCst).ok();
        STOP.store(true, SeqCst);
    };
    let start = now_ms();
    run_on(0b1111, &|| {
        let me = this_cpu();
        let mut rng = Rng::new(me as u64);
        if me == 0 {
            writer(mm, &mut rng, start, O, OPAGES, W, WPAGES, S, &OPS);
            STOP.store(true, SeqCst);
            return;
        }
        let t = me - 1;
        let page = |i: usize| O + (t * K + i) * P;
        // The last record written to each page, and ZAP_GEN as read before it.
        let mut last = [0u64; K];
        let mut gen_at = [0u64; K];
        let mut ctr = 0u64;
        while running() {
            let w = rng.below(K);
            let slot = page(w) + me * 8;
            ctr += 1;
            let rec = record(me, ctr);
            let g0 = ZAP_GEN.load(SeqCst);
            match probe_write_u64(va(slot), rec) {
                Ok(()) => {
                    last[w] = rec;
                    gen_at[w] = g0;
                    WRITES.fetch_add(1, SeqCst);
                }
                // Read-only for a moment (PROT_READ from the writer).
                Err(_) => {
                    REFUSED.fetch_add(1, SeqCst);
                }
            }
            // Read back this page, and now and then another of ours.
            let i = if rng.below(4) == 0 { rng.below(K) } else { w };
            let slot = page(i) + me * 8;
            let Ok(v) = probe_read_u64(va(slot)) else {
                fail(1 << 60 | slot as u64);
                break;
            };
            let g1 = ZAP_GEN.load(SeqCst);
            if v == 0 {
                if last[i] != 0 && gen_at[i] == g1 && g1 % 2 == 0 {
                    // Written, read back as zero, and no DONTNEED in between.
                    fail(2 << 60 | slot as u64);
                    break;
                }
                if last[i] != 0 {
                    ZEROED.fetch_add(1, SeqCst);
                }
                last[i] = 0;
            } else if v != last[i] {
                // Another CPU's record, or an old one of ours (a lost write).
                fail(3 << 60 | (v >> 56) << 32 | slot as u64 & 0xffff_ffff);
                break;
            }
            // The other owners' slots of this page, and a word outside every slot,
            // are never written: zero, whatever happened to the page.
            for other in (1..=OWNERS).filter(|&o| o != me) {
                if probe_read_u64(va(page(i) + other * 8)) != Ok(0) {
                    fail(4 << 60 | slot as u64);
                }
            }
            let off = 64 + rng.below((P - 64) / 8) * 8;
            if probe_read_u64(va(page(i) + off)) != Ok(0) {
                fail(5 << 60 | slot as u64);
            }
            CHECKS.fetch_add(1, SeqCst);
            PROGRESS.fetch_add(1, SeqCst);
        }
    });
    let secs_ms = now_ms() - start;
    let code = FAILED.load(SeqCst);
    let what = match code >> 60 {
        1 => "an owner's read faulted",
        2 => "a lost write: read back zero with no MADV_DONTNEED in between",
        3 => "read back neither its last write nor zero (another's record or an old one)",
        4 => "another owner's slot was written in this owner's page",
        5 => "a word outside every slot was written",
        _ => "",
    };
    assert_eq!(code, 0, "{what} (code {code:#x})");
    // The owners' pages are all still mapped, read-write.
    let mut a = O;
    while a < W {
        let q = mm.query_vma(a, 0).expect("an owner's page was unmapped");
        assert!(
            q.vm_flags
                .contains(mm::vma::VmFlags::READ | mm::vma::VmFlags::WRITE)
        );
        a = q.end;
    }
    let faults: Vec<u64> = (0..4)
        .map(|c| block(c).user_faults.load(SeqCst) - faults0[c])
        .collect();
    let st = mm.fault_stats();
    serial_println!(
        "mm_smp storm: {secs_ms} ms; #PF per CPU {faults:?}; {} owner writes, {} checks ({} zeroed by DONTNEED, {} writes refused); {} writer ops; VMA lock: {} success, {} abort, {} retry",
        WRITES.load(SeqCst),
        CHECKS.load(SeqCst),
        ZEROED.load(SeqCst),
        REFUSED.load(SeqCst),
        OPS.load(SeqCst),
        st.vma_lock_success - stats0.vma_lock_success,
        st.vma_lock_abort - stats0.vma_lock_abort,
        st.vma_lock_retry - stats0.vma_lock_retry,
    );
    assert!(faults[1..].iter().all(|&f| f > 0), "every owner faulted");
    assert!(OPS.load(SeqCst) > 0 && CHECKS.load(SeqCst) > 0);
    match poison0 {
        Some(p) => poison_ok(p),
        None => {
            let pcp = frames().stats().pcp_frames;
            serial_println!("mm_smp storm: {pcp} frames on the per-CPU lists at the end");
            assert!(pcp > 0, "the storm never used the per-CPU page lists");
        }
    }
    mm.munmap(O, S + 64 * P - O).unwrap();
    drop(s);
    if let Some(p) = poison0 {
        poison_ok(p);
    }
}

/// The storm's first phase: CPU 0 holds the mmap write lock (as a writer between two
/// VMA changes does, no VMA write-locked) while CPUs 1 to 3 first-touch a page each of
/// their own, reading and writing: with per-VMA locks the faults need no mmap lock, so
/// all of them complete while the lock is held (Linux 6.16+: `lock_vma_under_rcu`, the
/// anon_vma already prepared). A fault path that takes the mmap lock fails here.
fn faults_pass_a_held_mmap_write_lock(mm: &AddressSpace, o: usize) {
    // The first write gives the VMA its anon_vma (a fault that would need the mmap
    // lock's read trylock).
    mm.copy_to_user(o + 2 * P, &[0]).unwrap();
    static HOLDING: AtomicBool = AtomicBool::new(false);
    static DONE: AtomicUsize = AtomicUsize::new(0);
    HOLDING.store(false, SeqCst);
    DONE.store(0, SeqCst);
    run_on(0b1111, &|| {
        let me = this_cpu();
        if me == 0 {
            let g = mm.mm().write_lock();
            HOLDING.store(true, SeqCst);
            let t = now_ms();
            while DONE.load(SeqCst) < 3 && now_ms() - t < 2_000 && !smp::aborted() {
                core::hint::spin_loop();
            }
            let done = DONE.load(SeqCst);
            drop(g);
            assert_eq!(
                done, 3,
                "faults on CPUs 1-3 waited for the mmap lock CPU 0 held"
            );
            return;
        }
        while !HOLDING.load(SeqCst) && !smp::aborted() {
            core::hint::spin_loop();
        }
        let page = o + (me - 1) * K * P;
        assert_eq!(probe_read_u64(va(page + P)), Ok(0), "read fault");
        probe_write_u64(va(page), 0).expect("write fault");
        DONE.fetch_add(1, SeqCst);
    });
}

/// CPU 0's side of the storm: one random operation after another until [`RUN_MS`].
#[allow(clippy::too_many_arguments)]
fn writer(
    mm: &AddressSpace,
    rng: &mut Rng,
    start: u64,
    o: usize,
    opages: usize,
    w: usize,
    wpages: usize,
    s: usize,
    ops: &AtomicU64,
) {
    while now_ms() - start < 2 * RUN_MS && !STOP.load(SeqCst) {
        match rng.below(8) {
            // Split and re-merge across the owners and the neighbour (the neighbour
            // may have holes: ENOMEM after the mapped prefix, the same prefix both
            // times).
            0 | 1 => {
                let (a, b) = rng.range(o, opages + wpages, 12);
                let _ = mm.mprotect(a, b - a, RWX);
                let _ = mm.mprotect(a, b - a, RW);
            }
            // Read-only for a moment: the owners' writes there are refused.
            2 => {
                let (a, b) = rng.range(o, opages, 6);
                mm.mprotect(a, b - a, PROT_READ).expect("mprotect R");
                tsc::delay_us(20);
                mm.mprotect(a, b - a, RW).expect("mprotect RW");
            }
            // The storm's own pages dropped: they read zero until written again.
            3 => {
                let (a, b) = rng.range(o, opages, 6);
                ZAP_GEN.fetch_add(1, SeqCst);
                mm.madvise(a, b - a, MADV_DONTNEED).expect("DONTNEED");
                ZAP_GEN.fetch_add(1, SeqCst);
            }
            // A neighbour VMA moved away and back (its pages go with it).
            4 => {
                let at = w + rng.below(wpages) * P;
                if let Some(q) = mm.query_vma(at, 0)
                    && q.start >= w
                {
                    let len = q.end - q.start;
                    let f = MREMAP_MAYMOVE | MREMAP_FIXED;
                    mm.mremap(q.start, len, len, f, s).expect("mremap away");
                    mm.mremap(s, len, len, f, q.start).expect("mremap back");
                }
            }
            5 => {
                let (a, b) = rng.range(w, wpages, 8);
                mm.munmap(a, b - a).expect("munmap");
            }
            // Re-mmap and first-touch part of the neighbour.
            _ => {
                let (a, b) = rng.range(w, wpages, 8);
                mm.mmap(a, b - a, RW, FIXED, None, 0).expect("mmap");
                probe_write(va(a), 0x5a).expect("first touch of the neighbour");
            }
        }
        ops.fetch_add(1, SeqCst);
        PROGRESS.fetch_add(1, SeqCst);
    }
}

// ---- 2. a held VMA read lock makes the writer wait ----------------------------------

/// CPU 1 holds a VMA read lock (`lock_vma_under_rcu`); CPU 2 takes the mmap write lock
/// and calls `vma_start_write` on that VMA: it must not return while the read lock is
/// held. Meanwhile a lock-free lookup on CPU 0 falls back (the writer excludes new
/// readers), and a fault on CPU 3 falls back to the mmap lock (counted as an abort)
/// and completes only after the writer is done.
#[test_case]
fn a_held_vma_read_lock_makes_vma_start_write_wait() {
    let poison0 = need_cpus();
    reset();
    const X: usize = 0x3000_0000;
    let s = Space::on(0b1000);
    let mm = &s.mm;
    mm.mmap(X, 4 * P, RW, FIXED, None, 0).unwrap();
    mm.copy_to_user(X, &[1]).unwrap(); // the anon_vma exists: faults need no mmap lock
    let aborts0 = mm.fault_stats().vma_lock_abort;
    static HELD: AtomicBool = AtomicBool::new(false);
    static RELEASE: AtomicBool = AtomicBool::new(false);
    static RELEASED: AtomicBool = AtomicBool::new(false);
    static STARTING: AtomicBool = AtomicBool::new(false);
    static WROTE: AtomicBool = AtomicBool::new(false);
    static WROTE_BEFORE_RELEASE: AtomicBool = AtomicBool::new(false);
    static FAULTED: AtomicBool = AtomicBool::new(false);
    static FAULT_BEFORE_WRITER_DONE: AtomicBool = AtomicBool::new(false);
    static WRITER_DONE: AtomicBool = AtomicBool::new(false);
    for f in [
        &HELD,
        &RELEASE,
        &RELEASED,
        &STARTING,
        &WROTE,
        &WROTE_BEFORE_RELEASE,
        &FAULTED,
        &FAULT_BEFORE_WRITER_DONE,
        &WRITER_DONE,
    ] {
        f.store(false, SeqCst);
    }
    let wait = |f: &AtomicBool| {
        let t = now_ms();
        while !f.load(SeqCst) && !smp::aborted() {
            assert!(now_ms() - t < 5_000, "a step never came");
            core::hint::spin_loop();
        }
    };
    run_on(0b1111, &|| match this_cpu() {
        1 => {
            let g = mm.mm().lock_vma_under_rcu(X).expect("read lock");
            HELD.store(true, SeqCst);
            wait(&RELEASE);
            RELEASED.store(true, SeqCst);
            drop(g);
        }
        2 => {
            wait(&HELD);
            let mut wg = mm.mm().write_lock();
            let vma = wg.vma_lookup(X).expect("VMA");
            STARTING.store(true, SeqCst);
            wg.vma_start_write(vma);
            if !RELEASED.load(SeqCst) {
                WROTE_BEFORE_RELEASE.store(true, SeqCst);
            }
            WROTE.store(true, SeqCst);
            // Hold the write lock a moment: the fault on CPU 3 must wait for it.
            tsc::delay_us(50_000);
            WRITER_DONE.store(true, SeqCst);
            drop(wg);
        }
        3 => {
            wait(&STARTING);
            tsc::delay_us(20_000);
            // Not write-locked yet (still waiting for CPU 1) or write-locked: either
            // way no read lock for us; the fault takes the mmap read lock, which the
            // writer holds.
            mm.handle_fault(X + P, Access::Write).expect("fault");
            if !WRITER_DONE.load(SeqCst) {
                FAULT_BEFORE_WRITER_DONE.store(true, SeqCst);
            }
            FAULTED.store(true, SeqCst);
        }
        _ => {
            wait(&STARTING);
            // Give the writer time to reach its wait.
            tsc::delay_us(50_000);
            assert!(
                !WROTE.load(SeqCst),
                "vma_start_write returned while CPU 1 held the VMA's read lock"
            );
            let excluded = mm.mm().lock_vma_under_rcu(X + 2 * P).is_none();
            assert!(
                excluded,
                "a reader got the VMA while a writer waited for its readers"
            );
            tsc::delay_us(20_000);
            assert!(!FAULTED.load(SeqCst), "the fault passed the waiting writer");
            RELEASE.store(true, SeqCst);
            wait(&WROTE);
            wait(&FAULTED);
        }
    });
    assert!(
        !WROTE_BEFORE_RELEASE.load(SeqCst),
        "vma_start_write did not wait for the reader"
    );
    assert!(
        !FAULT_BEFORE_WRITER_DONE.load(SeqCst),
        "the fault completed under the writer's mmap write lock"
    );
    assert!(
        mm.fault_stats().vma_lock_abort > aborts0,
        "the fault did not fall back"
    );
    // After the writer, readers get the VMA again.
    assert!(mm.mm().lock_vma_under_rcu(X).is_some());
    mm.munmap(X, 4 * P).unwrap();
    drop(s);
    poison_ok(poison0);
}

// ---- 3. the lock-free lookup against munmap and slot reuse -------------------------

/// CPUs 1 to 3 look the VMA at `X` up lock-free (`lock_vma_under_rcu`) and, with a
/// stale pointer from an earlier lookup, try `vma_start_read` on it, while CPU 0
/// munmaps and re-mmaps that very VMA (and splits it) and, between the two, maps a VMA
/// of another address space, which takes the slot just freed (the pool is LIFO). A reader that gets a
/// lock must hold a live VMA of its own address space covering the address, whose
/// range does not change while it holds the lock.
#[test_case]
fn lock_vma_under_rcu_against_munmap_and_slot_reuse() {
    let poison0 = need_cpus();
    reset();
    const X: usize = 0x4000_0000;
    let a = address_space::new_user_space(MmLayout::default()).unwrap();
    let b = address_space::new_user_space(MmLayout::default()).unwrap();
    a.mmap(X, 8 * P, RW, FIXED, None, 0).unwrap();
    let id = a.mm().id();
    static HITS: AtomicU64 = AtomicU64::new(0);
    static MISSES: AtomicU64 = AtomicU64::new(0);
    static STALE: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];
    static CYCLES: AtomicU64 = AtomicU64::new(0);
    HITS.store(0, SeqCst);
    MISSES.store(0, SeqCst);
    CYCLES.store(0, SeqCst);
    for s in &STALE {
        s.store(0, SeqCst);
    }
    let fail = |code: u64| {
        FAILED.compare_exchange(0, code, SeqCst, SeqCst).ok();
        STOP.store(true, SeqCst);
    };
    let check = |v: VmaRef, addr: usize| -> bool {
        let (s0, e0) = (v.start(), v.end());
        if v.mm_id() != id || !(s0 <= addr && addr < e0) {
            return false;
        }
        // Held: the VMA cannot be detached, freed, reused or resized under us.
        for _ in 0..50 {
            let rc = v.refcnt() & !VM_REFCNT_EXCLUDE_READERS_FLAG;
            if v.mm_id() != id || v.start() != s0 || v.end() != e0 || rc < 2 {
                return false;
            }
            core::hint::spin_loop();
        }
        true
    };
    let start = now_ms();
    run_on(0b1111, &|| {
        let me = this_cpu();
        let mut rng = Rng::new(me as u64 + 30);
        match me {
            0 => {
                let mut theirs = Vec::new();
                while now_ms() - start < RUN_MS && running() {
                    a.munmap(X, 8 * P).unwrap();
                    // The slot just freed is the pool's first (LIFO): `b` takes it,
                    // under readers that may still hold pointers to it.
                    let anon = MAP_PRIVATE | MAP_ANONYMOUS;
                    theirs.push(b.mmap(0, P, PROT_READ, anon, None, 0).unwrap());
                    if theirs.len() == 8 {
                        for x in theirs.drain(..) {
                            b.munmap(x, P).unwrap();
                        }
                    }
                    a.mmap(X, 8 * P, RW, FIXED, None, 0).unwrap();
                    let (s0, e0) = rng.range(X, 8, 4);
                    let _ = a.mprotect(s0, e0 - s0, PROT_READ);
                    CYCLES.fetch_add(1, SeqCst);
                    PROGRESS.fetch_add(1, SeqCst);
                }
                for x in theirs {
                    b.munmap(x, P).unwrap();
                }
                STOP.store(true, SeqCst);
            }
            _ => {
                let mut stale: Option<VmaRef> = None;
                while running() {
                    let addr = X + rng.below(8) * P;
                    match a.mm().lock_vma_under_rcu(addr) {
                        Some(g) => {
                            if !check(g.vma(), addr) {
                                fail(1 << 60 | addr as u64);
                            }
                            stale = Some(g.vma());
                            HITS.fetch_add(1, SeqCst);
                        }
                        None => {
                            MISSES.fetch_add(1, SeqCst);
                        }
                    }
                    // A pointer from an earlier lookup: by now possibly unmapped, freed,
                    // or another address space's VMA.
                    if let Some(v) = stale {
                        let k = match a.mm().vma_start_read(v) {
                            Ok(g) => {
                                if g.vma().mm_id() != id {
                                    fail(2 << 60);
                                }
                                let (s0, e0) = (g.vma().start(), g.vma().end());
                                if !check(g.vma(), s0) || e0 <= s0 {
                                    fail(3 << 60);
                                }
                                0
                            }
                            Err(VmaReadError::Detached) => 1,
                            Err(VmaReadError::WriteLocked) => 2,
                            Err(VmaReadError::Excluded) => 3,
                            Err(VmaReadError::OtherMm) => 4,
                        };
                        STALE[k].fetch_add(1, SeqCst);
                    }
                }
            }
        }
    });
    let code = FAILED.load(SeqCst);
    assert_eq!(
        code, 0,
        "a reader held a VMA that was freed, foreign, or changed under its lock ({code:#x})"
    );
    let st: Vec<u64> = STALE.iter().map(|s| s.load(SeqCst)).collect();
    serial_println!(
        "mm_smp lookups: {} munmap/mmap cycles; {} locked, {} fell back; stale pointer: {} locked (own, live), {} detached, {} write-locked, {} excluded, {} another mm's",
        CYCLES.load(SeqCst),
        HITS.load(SeqCst),
        MISSES.load(SeqCst),
        st[0],
        st[1],
        st[2],
        st[3],
        st[4]
    );
    assert!(HITS.load(SeqCst) > 0 && MISSES.load(SeqCst) > 0);
    drop(a);
    drop(b);
    poison_ok(poison0);
}

// ---- 4. ABBA: faults against mprotect on one VMA ------------------------------------

/// Faults on CPUs 2 and 3 take the VMA read lock, then a page-table lock; mprotect on
/// CPU 1 takes the mmap write lock, write-locks the VMA (waiting for those readers)
/// and then the page-table locks, splitting and re-merging the VMA the faults are on.
/// The two orders must not deadlock: CPU 0 watches the progress and fails the test if
/// it stops.
///
/// Two phases. First, 2,000 rounds (or 4 s) with CPUs 2 and 3 entering the fault
/// handler and the user copies directly (`handle_fault`, `copy_to_user`,
/// `copy_from_user`: the same locks as the #PF path) while only CPU 1 has the space
/// loaded, so a round costs locking, not TLB-shootdown IPIs to vCPUs the host has
/// descheduled. Then 2 s with CPUs 2 and 3 running the space and faulting through the
/// real #PF handler (each round then also waits for their shootdown answers).
#[test_case]
fn abba_faults_against_mprotect_on_one_vma_across_cpus() {
    let poison0 = need_cpus();
    let direct = abba_phase(true, 2_000, 4_000);
    let hw = abba_phase(false, 2_000, 2_000);
    serial_println!(
        "mm_smp abba: {} rounds against direct fault-handler calls, {} against real #PFs",
        direct,
        hw
    );
    poison_ok(poison0);
}

/// One ABBA phase (see the test); returns the mprotect rounds done.
fn abba_phase(direct: bool, rounds: u64, ms: u64) -> u64 {
    reset();
    const X: usize = 0x5000_0000;
    const PAGES: usize = 64;
    let s = Space::on(if direct { 0b0010 } else { 0b1110 });
    let mm = &s.mm;
    mm.mmap(X, PAGES * P, RW, FIXED, None, 0).unwrap();
    static ROUNDS_DONE: AtomicU64 = AtomicU64::new(0);
    static FAULTS: AtomicU64 = AtomicU64::new(0);
    static WRITER_DONE: AtomicBool = AtomicBool::new(false);
    ROUNDS_DONE.store(0, SeqCst);
    FAULTS.store(0, SeqCst);
    WRITER_DONE.store(false, SeqCst);
    let faults0 = block(2).user_faults.load(SeqCst) + block(3).user_faults.load(SeqCst);
    let stats0 = mm.fault_stats();
    run_on(0b1111, &|| match this_cpu() {
        0 => watchdog(ms, &|| WRITER_DONE.load(SeqCst) && STOP.load(SeqCst)),
        1 => {
            let mut rng = Rng::new(41);
            while ROUNDS_DONE.load(SeqCst) < rounds && running() {
                let (a, b) = rng.range(X, PAGES, PAGES / 2);
                mm.mprotect(a, b - a, PROT_READ).expect("mprotect R");
                mm.mprotect(a, b - a, RW).expect("mprotect RW");
                if rng.below(16) == 0 {
                    mm.madvise(X, PAGES * P, MADV_DONTNEED).expect("DONTNEED");
                }
                ROUNDS_DONE.fetch_add(1, SeqCst);
                PROGRESS.fetch_add(1, SeqCst);
            }
            WRITER_DONE.store(true, SeqCst);
            STOP.store(true, SeqCst);
        }
        me => {
            let mut rng = Rng::new(me as u64 + 40);
            while running() {
                let addr = X + rng.below(PAGES) * P + rng.below(P / 8) * 8;
                // Refused while read-only: fine; every access must come back.
                match (direct, rng.below(3)) {
                    (true, 0) => {
                        let _ = mm.handle_fault(addr, Access::Write);
                    }
                    (true, 1) => {
                        let mut b = [0u8; 8];
                        mm.copy_from_user(addr, &mut b)
                            .expect("read of a mapped page");
                    }
                    (false, 0) => {
                        let _ = probe_write_u64(va(addr), me as u64);
                    }
                    (false, 1) => {
                        probe_read_u64(va(addr)).expect("read of a mapped page");
                    }
                    _ => {
                        let _ = mm.copy_to_user(addr, &[me as u8; 8]);
                    }
                }
                FAULTS.fetch_add(1, SeqCst);
                PROGRESS.fetch_add(1, SeqCst);
            }
        }
    });
    let pf = block(2).user_faults.load(SeqCst) + block(3).user_faults.load(SeqCst) - faults0;
    let st = mm.fault_stats();
    serial_println!(
        "mm_smp abba ({}): {} mprotect split/merge rounds against {} accesses ({pf} #PF) on CPUs 2 and 3; {} faults took the VMA lock, {} retried",
        if direct { "direct" } else { "#PF" },
        ROUNDS_DONE.load(SeqCst),
        FAULTS.load(SeqCst),
        st.vma_lock_success - stats0.vma_lock_success,
        st.vma_lock_retry - stats0.vma_lock_retry,
    );
    // Progress, not speed, is asserted: under TCG each round's TLB shootdowns wait for
    // the other vCPUs' threads to be scheduled on the host.
    assert!(ROUNDS_DONE.load(SeqCst) > 0 && FAULTS.load(SeqCst) > 0);
    assert!(direct || pf > 0, "no real #PF was taken");
    mm.munmap(X, PAGES * P).unwrap();
    ROUNDS_DONE.load(SeqCst)
}

// ---- 5. user copies against munmap and DONTNEED, with page poisoning ----------------

/// CPUs 1 to 3 copy to and from user memory (`copy_to_user`/`copy_from_user`, which
/// hold the page-table lock across the copy) while CPU 0 munmaps, re-mmaps and
/// MADV_DONTNEEDs the same pages. With page poisoning on in the kernel's frame
/// allocator (Linux: `page_poison=1`) a byte written into a frame after it was freed
/// is found when the frame is handed out again or by the final scan of every free
/// frame; a copy must also never read a freed frame (poison bytes) or another CPU's
/// bytes.
#[test_case]
fn user_copies_against_munmap_and_dontneed_never_touch_a_freed_frame() {
    reset();
    const X: usize = 0x6000_0000;
    const PAGES: usize = 16;
    let alloc = frames();
    let bad0 = need_cpus();
    // Loaded on no CPU: the copies go through the direct map, so CPU 0's unmaps need
    // no shootdown and churn the pages as fast as they can.
    let s = Space::on(0);
    let mm = &s.mm;
    mm.mmap(X, PAGES * P, RW, FIXED, None, 0).unwrap();
    static COPIES: AtomicU64 = AtomicU64::new(0);
    static REFUSED: AtomicU64 = AtomicU64::new(0);
    static OPS: AtomicU64 = AtomicU64::new(0);
    static BAD_READ: AtomicUsize = AtomicUsize::new(0);
    for c in [&COPIES, &REFUSED, &OPS] {
        c.store(0, SeqCst);
    }
    BAD_READ.store(0, SeqCst);
    let start = now_ms();
    run_on(0b1111, &|| {
        let me = this_cpu();
        let mut rng = Rng::new(me as u64 + 50);
        if me == 0 {
            while now_ms() - start < RUN_MS {
                let (a, b) = rng.range(X, PAGES, 8);
                match rng.below(3) {
                    0 => mm.munmap(a, b - a).expect("munmap"),
                    1 => {
                        mm.mmap(a, b - a, RW, FIXED, None, 0).expect("mmap");
                    }
                    _ => {
                        let _ = mm.madvise(a, b - a, MADV_DONTNEED);
                    }
                }
                OPS.fetch_add(1, SeqCst);
            }
            STOP.store(true, SeqCst);
            return;
        }
        // Each CPU its own 256-byte lane of every page: a lane holds 0 or its owner's
        // byte, nothing else.
        let lane = me * 256;
        let mut buf = vec![0u8; 1024];
        while running() {
            let page = X + rng.below(PAGES) * P;
            let r = if rng.below(2) == 0 {
                mm.copy_to_user(page + lane, &[me as u8; 256])
            } else {
                let r = mm.copy_from_user(page, &mut buf);
                if r.is_ok()
                    && buf
                        .chunks(256)
                        .enumerate()
                        .any(|(l, c)| c.iter().any(|&x| x != 0 && x as usize != l))
                {
                    BAD_READ.store(page, SeqCst);
                }
                r
            };
            match r {
                Ok(()) => COPIES.fetch_add(1, SeqCst),
                Err(FaultError::MapErr) => REFUSED.fetch_add(1, SeqCst),
                Err(e) => panic!("copy at {page:#x}: {e:?}"),
            };
        }
    });
    let bad_read = BAD_READ.load(SeqCst);
    assert_eq!(
        bad_read, 0,
        "a copy read bytes that were neither zero nor the lane owner's (a freed frame's poison?) at {bad_read:#x}"
    );
    mm.munmap(X, PAGES * P).unwrap();
    drop(s);
    let t = now_ms();
    alloc.check_free_poison();
    let bad = alloc.poison_corruptions() - bad0;
    serial_println!(
        "mm_smp copies: {} copies, {} refused (unmapped), {} munmap/mmap/DONTNEED ops; free-frame poison scan {} ms",
        COPIES.load(SeqCst),
        REFUSED.load(SeqCst),
        OPS.load(SeqCst),
        now_ms() - t
    );
    assert_eq!(
        bad,
        0,
        "a freed frame was written to (use after free): {:?}",
        alloc.first_poison_corruption()
    );
    assert!(COPIES.load(SeqCst) > 0 && REFUSED.load(SeqCst) > 0);
}

// ---- 6. fork against faulting writers ----------------------------------------------

/// Pages each writer CPU owns in the fork test.
const FK: usize = 16;
/// Words in a page.
const WORDS: usize = P / 8;
/// Marks a fork-test tag (so that poison, garbage or a record of another test is never
/// taken for one).
const FORK_MARK: u64 = 0xf0 << 56;

/// The word CPU `cpu` fills a whole page with on its `ctr`-th write: never zero.
fn fork_tag(cpu: usize, ctr: u64) -> u64 {
    FORK_MARK | (cpu as u64) << 40 | (ctr & ((1 << 40) - 1))
}

/// Why a child's page is wrong (`check_child_page`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bad {
    /// A word that is neither zero nor a tag its owner had begun to write.
    Foreign { word: usize, value: u64 },
    /// Neither whole nor a write in flight at the fork (one tag over an older value).
    Torn { word: usize, first: u64, value: u64 },
}

/// The child's copy of a page owned by CPU `owner`, read word by word: whole (every
/// word equal: zero or a tag `owner` had begun to write, per `issued`), or, when the
/// owner's write of the page was in flight at the fork, the new tag in words `[0, k)`
/// over the whole older value (zero or an older tag of the owner) in `[k, 512)`: x86
/// stores are seen in program order (TSO), and the parent's stores reach the shared
/// frame until the fork's flush of its write-protected entries, after which they
/// fault and go to the parent's copy. Returns `k` (512: whole).
fn check_child_page(w: &[u64], owner: usize, issued: &[AtomicU64]) -> Result<usize, Bad> {
    let ctr_of = |i: usize| -> Result<u64, Bad> {
        let v = w[i];
        let ctr = v & ((1 << 40) - 1);
        if v & (0xff << 56) != FORK_MARK
            || (v >> 40 & 0xffff) as usize != owner
            || ctr == 0
            || ctr > issued[owner].load(SeqCst)
        {
            return Err(Bad::Foreign { word: i, value: v });
        }
        Ok(ctr)
    };
    let first = w[0];
    let Some(k) = (1..WORDS).find(|&i| w[i] != first) else {
        if first != 0 {
            ctr_of(0)?;
        }
        return Ok(WORDS);
    };
    let new = ctr_of(0)?;
    let old = w[k];
    if let Some(j) = (k + 1..WORDS).find(|&j| w[j] != old) {
        return Err(Bad::Torn {
            word: j,
            first,
            value: w[j],
        });
    }
    if old != 0 && ctr_of(k)? >= new {
        return Err(Bad::Torn {
            word: k,
            first,
            value: old,
        });
    }
    Ok(k)
}

/// Issue 14 on four CPUs: CPUs 1 to 3, the parent's address space loaded on them, write
/// whole pages of their own, each with one repeated tag (CPU id, counter) in 512 8-byte
/// stores through the user address and the real #PF handler: first touches (every page
/// starts untouched and each writer MADV_DONTNEEDs one of its pages now and then),
/// and write faults on the pages the last fork write-protected (COW while a child
/// lives, reuse after it exits). CPU 0 meanwhile forks the parent again and again
/// (`dup_mmap`: every VMA write-locked, the parent's PTEs write-protected, its TLB
/// flushed on CPUs 1 to 3), loads the child, reads every page through the child's page
/// tables ([`check_child_page`]: whole, zero or a tag begun, or a write in flight at
/// the fork as a prefix over the older whole value, never poison or a half-copied
/// page), waits a moment while the writers go on, reads every page again (it must not
/// have changed: the parent's writes never reach the child), checks the child with
/// `validate_mm` and drops it.
#[test_case]
fn fork_while_other_cpus_fault_never_shows_the_child_a_half_copied_page() {
    let poison0 = need_cpus();
    reset();
    const WRITERS: usize = 3;
    const X: usize = 0x7000_0000;
    const PAGES: usize = WRITERS * FK;
    /// How long CPU 0 forks.
    const FORK_MS: u64 = 3 * RUN_MS;
    let s = Space::on(0b1110);
    let mm = &s.mm;
    mm.mmap(X, PAGES * P, RW, FIXED, None, 0).unwrap();
    // Indexed by CPU (1 to 3): the counter of the write each has begun, published
    // before its first store.
    static ISSUED: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
    static WRITES: AtomicU64 = AtomicU64::new(0);
    static ZAPS: AtomicU64 = AtomicU64::new(0);
    static FORKS: AtomicU64 = AtomicU64::new(0);
    static CHECKED: AtomicU64 = AtomicU64::new(0);
    static ZERO: AtomicU64 = AtomicU64::new(0);
    static IN_FLIGHT: AtomicU64 = AtomicU64::new(0);
    for c in ISSUED
        .iter()
        .chain([&WRITES, &ZAPS, &FORKS, &CHECKED, &ZERO, &IN_FLIGHT])
    {
        c.store(0, SeqCst);
    }
    // The first failure: what, where (fork, page) and the words involved.
    /// The first failure: what, the round, the CPU, and the bad byte if any.
    type Failure = (String, u64, usize, Option<Bad>);
    static FAIL: spin::Mutex<Option<Failure>> = spin::Mutex::new(None);
    *FAIL.lock() = None;
    let fail = |what: &str, fork: u64, page: usize, bad: Option<Bad>| {
        FAIL.lock()
            .get_or_insert_with(|| (String::from(what), fork, page, bad));
        STOP.store(true, SeqCst);
    };
    let faults0: Vec<u64> = (0..4).map(|c| block(c).user_faults.load(SeqCst)).collect();
    let start = now_ms();
    run_on(0b1111, &|| {
        let me = this_cpu();
        if me == 0 {
            let mut first = vec![0u64; PAGES * WORDS];
            let mut again = vec![0u64; WORDS];
            while running() && now_ms() - start < FORK_MS {
                let child = address_space::fork(mm).expect("fork");
                let n = FORKS.fetch_add(1, SeqCst) + 1;
                address_space::activate(&child);
                'pages: for pass in 0..2 {
                    for i in 0..PAGES {
                        let page = X + i * P;
                        let w = if pass == 0 {
                            &mut first[i * WORDS..(i + 1) * WORDS]
                        } else {
                            &mut again[..]
                        };
                        for (j, v) in w.iter_mut().enumerate() {
                            match probe_read_u64(va(page + j * 8)) {
                                Ok(x) => *v = x,
                                Err(_) => {
                                    fail("a read of the child's page faulted", n, page, None);
                                    break 'pages;
                                }
                            }
                        }
                        if pass == 1 {
                            if again[..] != first[i * WORDS..(i + 1) * WORDS] {
                                let j = (0..WORDS)
                                    .find(|&j| again[j] != first[i * WORDS + j])
                                    .unwrap_or(0);
                                let bad = Bad::Torn {
                                    word: j,
                                    first: first[i * WORDS + j],
                                    value: again[j],
                                };
                                fail(
                                    "the child's page changed after the fork (a parent write reached it): word then, now",
                                    n,
                                    page,
                                    Some(bad),
                                );
                                break 'pages;
                            }
                            continue;
                        }
                        match check_child_page(w, 1 + i / FK, &ISSUED) {
                            Ok(k) => {
                                CHECKED.fetch_add(1, SeqCst);
                                if k < WORDS {
                                    IN_FLIGHT.fetch_add(1, SeqCst);
                                } else if w[0] == 0 {
                                    ZERO.fetch_add(1, SeqCst);
                                }
                            }
                            Err(bad) => {
                                fail("the child saw a bad page", n, page, Some(bad));
                                break 'pages;
                            }
                        }
                    }
                    // The writers go on in the parent (each rewrites one of its pages
                    // every few milliseconds under TCG) while the child's pages must
                    // stay put.
                    let t = tsc::cycles_to_ns(tsc::rdtsc());
                    while pass == 0 && tsc::cycles_to_ns(tsc::rdtsc()) - t < 200_000 {
                        core::hint::spin_loop();
                    }
                }
                if let Err(e) = child.validate_mm() {
                    fail(&alloc::format!("validate_mm(child): {e}"), n, 0, None);
                }
                address_space::deactivate_current();
                drop(child);
                PROGRESS.fetch_add(1, SeqCst);
            }
            STOP.store(true, SeqCst);
            return;
        }
        let mut rng = Rng::new(me as u64 + 60);
        let mut ctr = 0u64;
        'run: while running() {
            let page = X + ((me - 1) * FK + rng.below(FK)) * P;
            if rng.below(16) == 0 {
                if mm.madvise(page, P, MADV_DONTNEED).is_err() {
                    fail("MADV_DONTNEED failed", 0, page, None);
                    break;
                }
                ZAPS.fetch_add(1, SeqCst);
                continue;
            }
            ctr += 1;
            let tag = fork_tag(me, ctr);
            ISSUED[me].store(ctr, SeqCst);
            for j in 0..WORDS {
                if probe_write_u64(va(page + j * 8), tag).is_err() {
                    fail("a writer's store faulted", 0, page, None);
                    break 'run;
                }
            }
            // The parent's page is whole again: the stores after a fork's
            // write-protection went to the parent's copy.
            for j in [0, WORDS / 2, WORDS - 1] {
                if probe_read_u64(va(page + j * 8)) != Ok(tag) {
                    fail("a writer did not read back its page", 0, page, None);
                    break 'run;
                }
            }
            WRITES.fetch_add(1, SeqCst);
            PROGRESS.fetch_add(1, SeqCst);
        }
    });
    let ms = now_ms() - start;
    if let Some((what, fork, page, bad)) = FAIL.lock().take() {
        panic!("fork {fork}, page {page:#x}: {what}: {bad:x?}");
    }
    let faults: Vec<u64> = (0..4)
        .map(|c| block(c).user_faults.load(SeqCst) - faults0[c])
        .collect();
    serial_println!(
        "mm_smp fork: {ms} ms; {} forks, {} child pages checked ({} zero, {} with a write in flight at the fork), every one unchanged a moment later; {} page writes, {} DONTNEEDs; #PF per CPU {faults:?}",
        FORKS.load(SeqCst),
        CHECKED.load(SeqCst),
        ZERO.load(SeqCst),
        IN_FLIGHT.load(SeqCst),
        WRITES.load(SeqCst),
        ZAPS.load(SeqCst),
    );
    assert!(FORKS.load(SeqCst) > 0 && WRITES.load(SeqCst) > 0);
    assert!(faults[1..].iter().all(|&f| f > 0), "every writer faulted");
    // The parent ends with every page whole: zero or its owner's last tag.
    let mut buf = vec![0u8; P];
    for i in 0..PAGES {
        mm.copy_from_user(X + i * P, &mut buf).unwrap();
        let words: Vec<u64> = buf
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(
            check_child_page(&words, 1 + i / FK, &ISSUED),
            Ok(WORDS),
            "the parent's page {i} is not whole"
        );
    }
    mm.munmap(X, PAGES * P).unwrap();
    drop(s);
    poison_ok(poison0);
}

// ---- 7. split page-table locks ----------------------------------------------------

/// Split page-table locks (Linux: `pte_offset_map_lock`, one lock per PTE-table page):
/// CPU 1 holds the PTE lock of 2 MiB region A of a VMA (as `copy_to_user` holds it
/// across a copy); meanwhile CPUs 2 and 3 first-touch 256 pages each of regions B and
/// C of the same VMA through the real #PF handler, and must finish while the lock is
/// still held. Then CPU 2 faults a page of region A, which must wait until CPU 1 lets
/// go. With one page-table lock per address space, B and C would wait too.
#[test_case]
fn faults_in_other_2mib_regions_pass_a_held_pte_lock() {
    let poison0 = need_cpus();
    reset();
    const X: usize = 0x40_0000_0000; // 1 GiB aligned: regions A, B, C of 2 MiB
    const M2: usize = 2 << 20;
    const N: usize = 256;
    let s = Space::on(0b1110);
    let mm = &s.mm;
    mm.mmap(X, 3 * M2, RW, FIXED, None, 0).unwrap();
    for r in 0..3 {
        // Each region's PTE table, and the VMA's anon_vma, exist before the race.
        mm.handle_fault(X + r * M2, Access::Write).unwrap();
    }
    static HELD: AtomicBool = AtomicBool::new(false);
    static RELEASE: AtomicBool = AtomicBool::new(false);
    static OTHERS_DONE: AtomicU64 = AtomicU64::new(0);
    static A_DONE: AtomicBool = AtomicBool::new(false);
    static A_WAITED: AtomicBool = AtomicBool::new(false);
    static OTHERS_PASSED: AtomicBool = AtomicBool::new(false);
    for f in [&HELD, &RELEASE, &A_DONE, &A_WAITED, &OTHERS_PASSED] {
        f.store(false, SeqCst);
    }
    OTHERS_DONE.store(0, SeqCst);
    run_on(0b1111, &|| match this_cpu() {
        0 => {
            while !HELD.load(SeqCst) {
                core::hint::spin_loop();
            }
            let t0 = now_ms();
            while OTHERS_DONE.load(SeqCst) < 2 && now_ms() - t0 < 20_000 {
                core::hint::spin_loop();
            }
            OTHERS_PASSED.store(OTHERS_DONE.load(SeqCst) == 2, SeqCst);
            // Give CPU 2's fault in region A time to get stuck on the held lock.
            let t1 = now_ms();
            while now_ms() - t1 < 300 {
                core::hint::spin_loop();
            }
            A_WAITED.store(!A_DONE.load(SeqCst), SeqCst);
            RELEASE.store(true, SeqCst);
        }
        1 => mm.with_page_tables(|pt| {
            pt.with_leaf_locked(va(X), |t| {
                assert!(t.is_some(), "region A's first page is mapped");
                HELD.store(true, SeqCst);
                while !RELEASE.load(SeqCst) {
                    core::hint::spin_loop();
                }
            })
        }),
        me => {
            while !HELD.load(SeqCst) {
                core::hint::spin_loop();
            }
            let region = X + (me - 1) * M2; // CPU 2: B, CPU 3: C
            for i in 1..=N {
                probe_write(va(region + i * P), me as u8).expect("first touch");
            }
            OTHERS_DONE.fetch_add(1, SeqCst);
            if me == 2 {
                while OTHERS_DONE.load(SeqCst) < 2 && !RELEASE.load(SeqCst) {
                    core::hint::spin_loop();
                }
                probe_write(va(X + 3 * P), 0xa).expect("fault in region A");
                A_DONE.store(true, SeqCst);
            }
        }
    });
    assert!(
        OTHERS_PASSED.load(SeqCst),
        "faults in regions B and C waited for region A's PTE lock"
    );
    assert!(
        A_WAITED.load(SeqCst),
        "a fault in region A went past its held PTE lock"
    );
    assert!(A_DONE.load(SeqCst));
    mm.validate_mm().unwrap();
    mm.munmap(X, 3 * M2).unwrap();
    drop(s);
    poison_ok(poison0);
}

// ---- 8. lockdep-light on an AP ------------------------------------------------------

/// The documented order (mmap lock, then a page-table lock) passes on every CPU.
#[test_case]
fn lockdep_accepts_the_documented_order_on_every_cpu() {
    static MMAP: mm::sync::RwSem<()> = mm::sync::RwSem::new(LockClass::MmapLock, ());
    static PTL: [mm::sync::Mutex<()>; 4] =
        [const { mm::sync::Mutex::new(LockClass::PageTable, ()) }; 4];
    run_on(online_mask(), &|| {
        let _m = MMAP.read();
        let _p = PTL[this_cpu() % 4].lock();
        assert_eq!(mm::sync::lockdep::held(LockClass::PageTable), 1);
    });
}

kernel::should_panic_test!(lockdep_panics_on_an_inverted_pair_on_an_ap, {
    // CPU 1 holds a page-table lock (rank 6) and then waits for an mmap lock (rank 1):
    // the inversion behind the ABBA deadlock. Lockdep-light (debug builds: the test
    // kernels) panics on CPU 1; run_on reports it here.
    static MMAP: mm::sync::RwSem<()> = mm::sync::RwSem::new(LockClass::MmapLock, ());
    static PTL: mm::sync::Mutex<()> = mm::sync::Mutex::new(LockClass::PageTable, ());
    run_on(0b10, &|| {
        let p = PTL.lock();
        let m = MMAP.read();
        drop(m);
        drop(p);
    });
});
