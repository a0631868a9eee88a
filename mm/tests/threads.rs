//! Thread stress suites: several threads fault, look up and copy to and from user
//! memory while others mmap, mprotect (split and re-merge), mremap, munmap and
//! MADV_DONTNEED neighbouring and overlapping ranges of the same address space.
//!
//! Linux counterparts: the races the per-VMA lock work was validated against
//! (`lock_vma_under_rcu` vs `vma_start_write`, `tools/testing/selftests/mm/`
//! `mremap_test`/`migration` style stress), and `CONFIG_PAGE_POISONING` for catching
//! writes into freed pages.
//!
//! Every scenario runs its threads for [`scenario_secs`] (`MM_STRESS_SECS`, default
//! 2 s; a handful of iterations under Miri) and then asks them to stop. A thread still
//! running [`deadline_slack`] after that is deadlocked: deadlocked threads spin forever
//! and cannot be cancelled, so the harness prints the scenario, `deadlock (deadline
//! passed)` and the threads' progress to the real stderr and exits the test binary with
//! status 101 rather than leave spinning threads behind for the next scenario.
//!
//! Every scenario's simulated memory has page poisoning on
//! ([`FrameAllocator::enable_page_poisoning`]): a write into a frame after it was freed
//! is found when the frame is allocated again or by the final scan of the free frames.
//! At the end, the address space is dropped and the frames and VMAs must be back to
//! their baseline. Scenarios run one at a time (the VMA pool is global).
//!
//! Per-scenario figures are written to stdout (uncaptured) as `stress <name>: ...`.
//! `MM_STRESS_SEED` sets the random seed.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mm::frame::sim::SimulatedMemory;
use mm::frame::{FrameAllocator, PAGE_POISON};
use mm::mmap::*;
use mm::vma::VmFlags;
use mm::vma::pool::vma_pool_stats;

const P: usize = 4096;
const RW: u32 = PROT_READ | PROT_WRITE;
const RWX: u32 = PROT_READ | PROT_WRITE | PROT_EXEC;
const PA: u32 = MAP_PRIVATE | MAP_ANONYMOUS;
const FIXED: u32 = PA | MAP_FIXED;

/// How long after the stop request a thread may still run before it counts as
/// deadlocked: `MM_STRESS_SLACK` seconds, default 10 (under Miri, 120 after the start:
/// run it with `-Zmiri-disable-isolation`, its isolated clock does not advance while
/// deadlocked threads spin).
fn deadline_slack() -> Duration {
    let default = if cfg!(miri) { 120.0 } else { 10.0 };
    Duration::from_secs_f64(
        std::env::var("MM_STRESS_SLACK")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| *s > 0.0)
            .unwrap_or(default),
    )
}

/// Iterations per thread under Miri (the host runs by time instead): `MM_STRESS_ITERS`,
/// default 4.
fn miri_iters() -> u64 {
    std::env::var("MM_STRESS_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4)
}

/// Scenarios share the global VMA pool (its live count is part of the baseline).
static SERIAL: Mutex<()> = Mutex::new(());

/// Seconds each scenario runs: `MM_STRESS_SECS` (default 2).
fn scenario_secs() -> f64 {
    std::env::var("MM_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(2.0)
}

fn seed() -> u64 {
    std::env::var("MM_STRESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15)
}

/// Writes a line to the real stdout, past libtest's capture.
fn figures(line: String) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Busy-waits for `d` (a short pause that keeps the CPU, unlike a sleep or a yield).
fn pause(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// xorshift64*: a small deterministic generator per thread.
struct Rng(u64);

impl Rng {
    fn new(stream: u64) -> Self {
        Rng((seed() ^ stream.wrapping_mul(0x2545_f491_4f6c_dd1d)) | 1)
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
    /// A page-aligned sub-range `[a, b)` of `n` pages starting at `base`, 1 to `max`
    /// pages long.
    fn range(&mut self, base: usize, n: usize, max: usize) -> (usize, usize) {
        let len = 1 + self.below(max.min(n));
        let first = self.below(n - len + 1);
        (base + first * P, base + (first + len) * P)
    }
}

// ---- the deadline harness ----------------------------------------------------------

/// What a worker sees: the stop request and its progress counter.
struct Ctl {
    stop: Arc<AtomicBool>,
    ticks: Arc<AtomicU64>,
    max_ticks: u64,
    started: Instant,
}

impl Ctl {
    /// Keep going? False once the stop is requested (or, under Miri, after
    /// [`miri_iters`] iterations).
    fn running(&self) -> bool {
        !self.stop.load(Relaxed) && self.ticks.load(Relaxed) < self.max_ticks
    }
    /// One iteration done (progress, seen by the watchdog).
    fn tick(&self) {
        self.ticks.fetch_add(1, Relaxed);
    }
    /// Seconds since the scenario started.
    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

type Job = Box<dyn FnOnce(&Ctl) -> Result<(), String> + Send + 'static>;

/// A running job: its name, progress counter and thread.
type Worker = (&'static str, Arc<AtomicU64>, JoinHandle<Result<(), String>>);

fn job(f: impl FnOnce(&Ctl) -> Result<(), String> + Send + 'static) -> Job {
    Box::new(f)
}

/// Runs `jobs` on their own threads for [`scenario_secs`], then stops them and waits
/// for them up to [`deadline_slack`]. A job returning `Err` or panicking stops the
/// others (under Miri they finish their few iterations) and fails the scenario (panic
/// with every message); a job still running at the deadline is a deadlock (report, exit
/// 101). Returns the elapsed seconds.
fn run_threads(scenario: &str, jobs: Vec<(&'static str, Job)>) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers: Vec<Worker> = vec![];
    for (name, f) in jobs {
        let ticks = Arc::new(AtomicU64::new(0));
        let ctl = Ctl {
            stop: stop.clone(),
            ticks: ticks.clone(),
            max_ticks: if cfg!(miri) { miri_iters() } else { u64::MAX },
            started,
        };
        let h = std::thread::Builder::new()
            .name(format!("{scenario}/{name}"))
            .spawn(move || f(&ctl))
            .expect("spawn a stress thread");
        workers.push((name, ticks, h));
    }
    let run_for = Duration::from_secs_f64(scenario_secs());
    let poll = Duration::from_millis(if cfg!(miri) { 100 } else { 20 });
    // Per worker: ticks last seen and when they last changed.
    let mut seen: Vec<(u64, Duration)> = vec![(0, Duration::ZERO); workers.len()];
    let mut stop_at = None;
    let slack = deadline_slack();
    loop {
        std::thread::sleep(poll);
        let t = started.elapsed();
        for (i, (_, ticks, _)) in workers.iter().enumerate() {
            let n = ticks.load(Relaxed);
            if n != seen[i].0 {
                seen[i] = (n, t);
            }
        }
        let finished = workers.iter().filter(|w| w.2.is_finished()).count();
        if finished == workers.len() {
            break;
        }
        // Under Miri every thread runs its few iterations; on the host, time is
        // up or a thread has ended (failed) early.
        if stop_at.is_none() && !cfg!(miri) && (t >= run_for || finished > 0) {
            stop.store(true, Relaxed);
            stop_at = Some(t);
        }
        if let Some(s) = stop_at.or(cfg!(miri).then_some(Duration::ZERO))
            && t >= s + slack
        {
            let mut msg = format!(
                "\nstress {scenario}: deadlock (deadline passed): {} of {} threads still \
                     running {:.1} s after the stop request at {:.1} s\n",
                workers.len() - finished,
                workers.len(),
                (t - s).as_secs_f64(),
                s.as_secs_f64()
            );
            for (i, (name, _, h)) in workers.iter().enumerate() {
                msg += &format!(
                    "  {name}: {}, {} iterations, last progress at {:.3} s\n",
                    if h.is_finished() { "finished" } else { "STUCK" },
                    seen[i].0,
                    seen[i].1.as_secs_f64()
                );
            }
            msg += &format!("test {scenario} ... FAILED (deadlock)\n");
            let _ = std::io::stderr().lock().write_all(msg.as_bytes());
            // The stuck threads spin forever; the binary must still end.
            std::process::exit(101);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut errors = vec![];
    for (name, _, h) in workers {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("{name}: {e}")),
            Err(p) => {
                let m = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                errors.push(format!("{name} panicked: {m}"));
            }
        }
    }
    assert!(
        errors.is_empty(),
        "stress {scenario}: {}",
        errors.join("\n  ")
    );
    elapsed
}

// ---- memory and baselines ----------------------------------------------------------

/// Bytes of simulated memory per scenario.
const MEMORY: usize = if cfg!(miri) { 1 << 20 } else { 16 << 20 };

/// Fresh simulated memory with the zero page taken and page poisoning on. Not under
/// Miri: there, every access to simulated memory is costly (the poison fill and checks
/// would take minutes), and Miri's data-race detector reports a copy racing with the
/// free or reuse of its frame by itself.
fn memory() -> &'static FrameAllocator {
    let a = SimulatedMemory::new(MEMORY).leak();
    zero_page(a).unwrap();
    if !cfg!(miri) {
        a.enable_page_poisoning();
    }
    a
}

/// Frames and VMAs in use before a scenario, to compare with after it.
struct Baseline {
    alloc: &'static FrameAllocator,
    frames: u64,
    vmas: usize,
}

impl Baseline {
    fn take(alloc: &'static FrameAllocator) -> Self {
        Baseline {
            alloc,
            frames: alloc.allocated_frames_settled(),
            vmas: vma_pool_stats().live,
        }
    }

    /// Drops the address spaces (the workers are gone, so these are the last
    /// references) and checks frames, VMAs and the poison of every free frame.
    fn check(self, scenario: &str, spaces: Vec<Arc<AddressSpace>>) {
        for s in spaces {
            let asp = Arc::try_unwrap(s).unwrap_or_else(|_| panic!("{scenario}: mm still shared"));
            assert_eq!(
                asp.live_vmas(),
                asp.map_count(),
                "{scenario}: VMAs allocated but not in the tree"
            );
            drop(asp);
        }
        assert_eq!(
            self.alloc.allocated_frames_settled(),
            self.frames,
            "{scenario}: frames leaked"
        );
        assert_eq!(vma_pool_stats().live, self.vmas, "{scenario}: VMAs leaked");
        assert_eq!(vma_pool_stats().freed_attached, 0, "{scenario}");
        self.alloc.check_free_poison();
        assert_eq!(
            self.alloc.poison_corruptions(),
            0,
            "{scenario}: a freed frame was written to (use after free): {:?}",
            self.alloc.first_poison_corruption()
        );
    }
}

/// `Err` if page poisoning has caught a write into a freed frame (checked by workers so
/// a scenario fails as soon as it happens).
fn poison_ok(alloc: &FrameAllocator, ctl: &Ctl) -> Result<(), String> {
    if alloc.poison_corruptions() == 0 {
        return Ok(());
    }
    Err(format!(
        "use after free: page poisoning found a freed frame written to at {:.3} s: {:?}",
        ctl.now(),
        alloc.first_poison_corruption()
    ))
}

/// The VMAs of `asp` as `(start, end, flags)`.
fn layout(asp: &AddressSpace) -> Vec<(usize, usize, VmFlags)> {
    let mut out = vec![];
    let mut a = 0;
    while let Some(q) = asp.query_vma(a, PROCMAP_QUERY_COVERING_OR_NEXT_VMA) {
        out.push((q.start, q.end, q.vm_flags));
        a = q.end;
    }
    out
}

fn fault_ok(r: Result<(), FaultError>, what: &str, addr: usize) -> Result<bool, String> {
    match r {
        Ok(()) => Ok(true),
        Err(FaultError::AccErr) => Ok(false),
        Err(e) => Err(format!("{what} at {addr:#x}: unexpected {e:?}")),
    }
}

// ---- a. ABBA: faults against mprotect on the same VMA ------------------------------

/// Fault threads take a VMA read lock (`lock_vma_under_rcu`) and then the page-table
/// lock; mprotect takes the mmap lock, the page-table lock, then write-locks the VMA
/// (waiting for its readers) to split and re-merge it. The two orders must not
/// deadlock.
#[test]
fn abba_faults_vs_mprotect_split_merge() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const NAME: &str = "abba_faults_vs_mprotect_split_merge";
    const PAGES: usize = 64;
    const X: usize = 0x1000_0000;
    let alloc = memory();
    let base = Baseline::take(alloc);
    let asp = Arc::new(AddressSpace::new(alloc).unwrap());
    asp.mmap(X, PAGES * P, RW, FIXED, None, 0).unwrap();
    let faults = Arc::new(AtomicU64::new(0));
    let copies = Arc::new(AtomicU64::new(0));
    let rounds = Arc::new(AtomicU64::new(0));
    let mut jobs = vec![];
    for t in 0..if cfg!(miri) { 2 } else { 3 } {
        let (asp, faults, copies) = (asp.clone(), faults.clone(), copies.clone());
        jobs.push((
            "fault",
            job(move |ctl| {
                let mut rng = Rng::new(t);
                while ctl.running() {
                    let addr = X + rng.below(PAGES) * P + rng.below(P / 8) * 8;
                    match rng.below(4) {
                        0 => fault_ok(asp.handle_fault(addr, Access::Read), "read fault", addr)?,
                        1 => fault_ok(asp.handle_fault(addr, Access::Write), "write fault", addr)?,
                        2 => {
                            copies.fetch_add(1, Relaxed);
                            let r = asp.copy_to_user(addr, &t.to_le_bytes());
                            fault_ok(r, "copy_to_user", addr)?
                        }
                        _ => {
                            copies.fetch_add(1, Relaxed);
                            let mut b = [0u8; 8];
                            let r = asp.copy_from_user(addr, &mut b);
                            fault_ok(r, "copy_from_user", addr)?
                        }
                    };
                    faults.fetch_add(1, Relaxed);
                    ctl.tick();
                }
                Ok(())
            }),
        ));
    }
    {
        let (asp, rounds) = (asp.clone(), rounds.clone());
        jobs.push((
            "mprotect",
            job(move |ctl| {
                let mut rng = Rng::new(100);
                while ctl.running() {
                    let (a, b) = rng.range(X, PAGES, PAGES / 2);
                    // Split (up to three VMAs), then restore: the pieces re-merge.
                    asp.mprotect(a, b - a, PROT_READ)
                        .map_err(|e| format!("mprotect R {a:#x}..{b:#x}: {e:?}"))?;
                    asp.mprotect(a, b - a, RW)
                        .map_err(|e| format!("mprotect RW {a:#x}..{b:#x}: {e:?}"))?;
                    // Fresh first touches now and then.
                    if rng.below(8) == 0 {
                        asp.madvise(X, PAGES * P, MADV_DONTNEED)
                            .map_err(|e| format!("DONTNEED: {e:?}"))?;
                    }
                    rounds.fetch_add(1, Relaxed);
                    ctl.tick();
                }
                Ok(())
            }),
        ));
    }
    let secs = run_threads(NAME, jobs);
    // Whatever the merges did, the range is still exactly mapped, read-write.
    let l = layout(&asp);
    assert_eq!(l.first().map(|v| v.0), Some(X), "{NAME}: {l:x?}");
    assert_eq!(l.last().map(|v| v.1), Some(X + PAGES * P), "{NAME}: {l:x?}");
    for w in l.windows(2) {
        assert_eq!(w[0].1, w[1].0, "{NAME}: hole in {l:x?}");
    }
    assert!(
        l.iter()
            .all(|v| v.2.contains(VmFlags::READ | VmFlags::WRITE)),
        "{NAME}: {l:x?}"
    );
    figures(format!(
        "stress {NAME}: {secs:.2} s: {} faults ({} copies), {} mprotect split/merge rounds, {} VMAs at the end; {:?}",
        faults.load(Relaxed),
        copies.load(Relaxed),
        rounds.load(Relaxed),
        l.len(),
        asp.fault_stats()
    ));
    base.check(NAME, vec![asp]);
}

// ---- b. owners' pages vs a remapping writer ---------------------------------------

/// Bytes of one owner record.
const REC: usize = 64;

/// The record owner `t` writes for the `ctr`-th time at `page`.
fn record(t: usize, ctr: u64, page: usize) -> [u8; REC] {
    let words = [
        0x6f77_6e65_725f_7265u64 ^ t as u64,
        t as u64,
        ctr,
        page as u64,
        !ctr,
        ctr ^ 0x5a5a_5a5a_5a5a_5a5a,
        page as u64 ^ t as u64,
        0x7265_636f_7264_2121,
    ];
    let mut r = [0u8; REC];
    for (i, w) in words.iter().enumerate() {
        r[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    r
}

/// Offset of owner `t`'s record in its pages.
fn rec_off(t: usize) -> usize {
    256 + t * REC
}

/// Owner `t` reads `page` back: every byte is 0 except its record slot, which is all
/// zero (the page was dropped or replaced) or exactly its last successful write.
fn check_owner_page(
    t: usize,
    page: usize,
    buf: &[u8],
    last: Option<&[u8; REC]>,
) -> Result<(), String> {
    let off = rec_off(t);
    let slot = &buf[off..off + REC];
    let rest_ok = buf[..off].iter().chain(&buf[off + REC..]).all(|&b| b == 0);
    let slot_ok = slot.iter().all(|&b| b == 0) || last.is_some_and(|l| slot == l);
    if rest_ok && slot_ok {
        return Ok(());
    }
    let bad = buf
        .iter()
        .enumerate()
        .find(|&(i, &b)| b != 0 && !(off..off + REC).contains(&i))
        .map(|(i, &b)| format!("byte {b:#04x} at +{i:#x} outside the record"));
    let what = if buf.contains(&PAGE_POISON) {
        " (page-poison bytes: the page read was a freed frame)"
    } else {
        ""
    };
    Err(format!(
        "owner {t} page {page:#x}: read back neither zero nor its last write{what}: {}; \
         slot {:02x?}, expected {:02x?}",
        bad.unwrap_or_else(|| "record slot differs".into()),
        &slot[..24],
        last.map(|l| &l[..24])
    ))
}

/// Owner threads write records into their own pages (copy_to_user) and read them back
/// (copy_from_user) while a writer splits and re-merges their VMA with mprotect,
/// MADV_DONTNEEDs, mremaps them away and back or with MREMAP_DONTUNMAP, maps over the
/// tail, and mmaps, munmaps, grows, shrinks and moves the neighbouring range. An owner
/// must read zero or its own last write, never another thread's data or freed memory.
#[test]
fn owners_copy_vs_remapping_writer() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const NAME: &str = "owners_copy_vs_remapping_writer";
    const OWNERS: usize = if cfg!(miri) { 2 } else { 3 };
    const K: usize = 8; // pages per owner
    const O: usize = 0x2000_0000; // owners' region
    const OPAGES: usize = OWNERS * K;
    const W: usize = O + OPAGES * P; // the neighbour
    const WPAGES: usize = 32;
    const WEND: usize = W + WPAGES * P;
    const S: usize = 0x2800_0000; // scratch destination of moves
    let alloc = memory();
    let base = Baseline::take(alloc);
    let asp = Arc::new(AddressSpace::new(alloc).unwrap());
    asp.mmap(O, OPAGES * P, RW, FIXED, None, 0).unwrap();
    asp.mmap(W, WPAGES / 2 * P, RW, FIXED, None, 0).unwrap();
    let copies = Arc::new(AtomicU64::new(0));
    let checks = Arc::new(AtomicU64::new(0));
    let zeroed = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let ops = Arc::new(AtomicU64::new(0));
    let mut jobs = vec![];
    for t in 0..OWNERS {
        let (asp, copies, checks, zeroed, refused) = (
            asp.clone(),
            copies.clone(),
            checks.clone(),
            zeroed.clone(),
            refused.clone(),
        );
        jobs.push((
            "owner",
            job(move |ctl| {
                let mut rng = Rng::new(t as u64);
                let mine = |i: usize| O + (t * K + i) * P;
                let mut last: Vec<Option<[u8; REC]>> = vec![None; K];
                let mut ctr = 0u64;
                let mut buf = vec![0u8; P];
                while ctl.running() {
                    let i = rng.below(K);
                    let page = mine(i);
                    ctr += 1;
                    let rec = record(t, ctr, page);
                    copies.fetch_add(1, Relaxed);
                    match asp.copy_to_user(page + rec_off(t), &rec) {
                        Ok(()) => last[i] = Some(rec),
                        // Moved away or read-only for a moment.
                        Err(FaultError::MapErr | FaultError::AccErr) => {
                            refused.fetch_add(1, Relaxed);
                        }
                        Err(e) => return Err(format!("copy_to_user {page:#x}: {e:?}")),
                    }
                    // Read back this page, and now and then another of ours.
                    let j = if rng.below(4) == 0 { rng.below(K) } else { i };
                    match asp.copy_from_user(mine(j), &mut buf) {
                        Ok(()) => {
                            check_owner_page(t, mine(j), &buf, last[j].as_ref())?;
                            checks.fetch_add(1, Relaxed);
                            if buf.iter().all(|&b| b == 0) {
                                zeroed.fetch_add(1, Relaxed);
                                // Dropped: a later read may only see zero or a newer write.
                                last[j] = None;
                            }
                        }
                        Err(FaultError::MapErr) => {
                            refused.fetch_add(1, Relaxed);
                        }
                        Err(e) => return Err(format!("copy_from_user {:#x}: {e:?}", mine(j))),
                    }
                    poison_ok(alloc, ctl)?;
                    ctl.tick();
                }
                Ok(())
            }),
        ));
    }
    {
        let (asp, ops) = (asp.clone(), ops.clone());
        jobs.push((
            "writer",
            job(move |ctl| {
                let mut rng = Rng::new(1000);
                let e = |what: &str, a: usize, b: usize, x: mm::errno::Errno| {
                    format!("{what} {a:#x}..{b:#x}: {x:?}")
                };
                // Between the two halves of a paired operation the owners may see the
                // intermediate state (moved away, read-only).
                let between = Duration::from_micros(20);
                while ctl.running() {
                    match rng.below(10) {
                        // Split and re-merge across the owners and the neighbour (the
                        // neighbour may have holes: ENOMEM after the mapped prefix).
                        0 => {
                            let (a, b) = rng.range(O, OPAGES + WPAGES, 12);
                            let _ = asp.mprotect(a, b - a, RWX);
                            pause(between);
                            let _ = asp.mprotect(a, b - a, RW);
                        }
                        // Read-only for a moment: owners' writes are refused.
                        1 => {
                            let (a, b) = rng.range(O, OPAGES, 6);
                            asp.mprotect(a, b - a, PROT_READ)
                                .map_err(|x| e("mprotect R", a, b, x))?;
                            pause(between);
                            asp.mprotect(a, b - a, RW)
                                .map_err(|x| e("mprotect RW", a, b, x))?;
                        }
                        2 => {
                            let (a, b) = rng.range(O, OPAGES, 6);
                            asp.madvise(a, b - a, MADV_DONTNEED)
                                .map_err(|x| e("DONTNEED", a, b, x))?;
                        }
                        // The pages go elsewhere, the range stays mapped and reads zero.
                        3 => {
                            let (a, b) = rng.range(O, OPAGES, 4);
                            let f = MREMAP_MAYMOVE | MREMAP_DONTUNMAP;
                            // S is a hint: the copy may land elsewhere.
                            if let Ok(to) = asp.mremap(a, b - a, b - a, f, S) {
                                pause(between);
                                asp.munmap(to, b - a)
                                    .map_err(|x| e("munmap", to, to + b - a, x))?;
                            }
                        }
                        // Away and back: the owners' data comes back with the pages.
                        4 => {
                            let (a, b) = rng.range(O, OPAGES, 6);
                            let f = MREMAP_MAYMOVE | MREMAP_FIXED;
                            asp.mremap(a, b - a, b - a, f, S)
                                .map_err(|x| e("mremap away", a, b, x))?;
                            pause(between);
                            asp.mremap(S, b - a, b - a, f, a)
                                .map_err(|x| e("mremap back", a, b, x))?;
                        }
                        // Fresh memory over the owners' tail and into the neighbour.
                        5 => {
                            let a = O + (OPAGES - 1 - rng.below(2)) * P;
                            let b = W + (1 + rng.below(4)) * P;
                            asp.mmap(a, b - a, RW, FIXED, None, 0)
                                .map_err(|x| e("mmap over", a, b, x))?;
                        }
                        6 => {
                            let (a, b) = rng.range(W, WPAGES, 8);
                            asp.mmap(a, b - a, RW, FIXED, None, 0)
                                .map_err(|x| e("mmap", a, b, x))?;
                            let _ = asp.copy_to_user(a, b"neighbour");
                        }
                        7 => {
                            let (a, b) = rng.range(W, WPAGES, 8);
                            asp.munmap(a, b - a).map_err(|x| e("munmap", a, b, x))?;
                        }
                        // Grow a neighbour VMA in place (into a hole) or shrink it.
                        8 => {
                            let at = W + rng.below(WPAGES) * P;
                            if let Some(q) = asp.query_vma(at, 0)
                                && q.start >= W
                            {
                                let len = q.end - q.start;
                                let grow = (1 + rng.below(3)) * P;
                                if rng.below(2) == 0 && q.end + grow <= WEND {
                                    let _ = asp.mremap(q.start, len, len + grow, 0, 0);
                                } else if len > P {
                                    asp.mremap(q.start, len, len - P, 0, 0)
                                        .map_err(|x| e("mremap shrink", q.start, q.end, x))?;
                                }
                            }
                        }
                        // Move a neighbour VMA out and back (or somewhere else in W).
                        _ => {
                            let at = W + rng.below(WPAGES) * P;
                            if let Some(q) = asp.query_vma(at, 0)
                                && q.start >= W
                            {
                                let len = q.end - q.start;
                                let f = MREMAP_MAYMOVE | MREMAP_FIXED;
                                asp.mremap(q.start, len, len, f, S)
                                    .map_err(|x| e("mremap W away", q.start, q.end, x))?;
                                let back = W + rng.below(WPAGES - len / P + 1) * P;
                                asp.mremap(S, len, len, f, back)
                                    .map_err(|x| e("mremap W back", back, back + len, x))?;
                            }
                        }
                    }
                    ops.fetch_add(1, Relaxed);
                    poison_ok(alloc, ctl)?;
                    ctl.tick();
                }
                Ok(())
            }),
        ));
    }
    let secs = run_threads(NAME, jobs);
    let l = layout(&asp);
    assert!(
        l.iter().all(|v| v.0 >= O && v.1 <= WEND),
        "{NAME}: a mapping escaped the owners' region and the neighbour: {l:x?}"
    );
    // The owners' pages are still all mapped (mremaps moved them back, DONTUNMAP
    // left the range mapped, MAP_FIXED replaced them).
    let mut covered = O;
    for v in l.iter().skip_while(|v| v.1 <= O) {
        if v.0 > covered {
            break;
        }
        covered = covered.max(v.1);
    }
    assert!(
        covered >= W,
        "{NAME}: the owners' pages are no longer all mapped: {l:x?}"
    );
    figures(format!(
        "stress {NAME}: {secs:.2} s: {} owner copies, {} read-back checks ({} zero, {} refused), {} writer ops, {} VMAs at the end",
        copies.load(Relaxed),
        checks.load(Relaxed),
        zeroed.load(Relaxed),
        refused.load(Relaxed),
        ops.load(Relaxed),
        l.len()
    ));
    base.check(NAME, vec![asp]);
}

// ---- c. lock-free and locked lookups vs split/merge/unmap -------------------------

/// Lookup threads use `lock_vma_under_rcu` and `find_vma` under the mmap read lock while
/// a writer splits and merges a range that always stays mapped, maps, unmaps and moves
/// the neighbouring range, and another address space churns VMAs (so freed VMA slots are
/// reused by another mm under the lock-free readers).
#[test]
fn lookups_vs_split_merge_unmap() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const NAME: &str = "lookups_vs_split_merge_unmap";
    const L: usize = 0x5000_0000; // always mapped, split and merged
    const LPAGES: usize = 64;
    const M: usize = L + LPAGES * P; // mapped and unmapped
    const MPAGES: usize = 64;
    const MEND: usize = M + MPAGES * P;
    let alloc = memory();
    let base = Baseline::take(alloc);
    let asp = Arc::new(AddressSpace::new(alloc).unwrap());
    let other = Arc::new(AddressSpace::new(alloc).unwrap());
    asp.mmap(L, LPAGES * P, PROT_READ, FIXED, None, 0).unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let misses = Arc::new(AtomicU64::new(0));
    let locked = Arc::new(AtomicU64::new(0));
    let ops = Arc::new(AtomicU64::new(0));
    let churn = Arc::new(AtomicU64::new(0));
    let mut jobs = vec![];
    for t in 0..2 {
        let (asp, hits, misses, locked) =
            (asp.clone(), hits.clone(), misses.clone(), locked.clone());
        jobs.push((
            "lookup",
            job(move |ctl| {
                let mut rng = Rng::new(t);
                let id = asp.mm().id();
                let check = |v: mm::vma::VmaRef, addr: usize, how: &str| -> Result<(), String> {
                    let (s, e, f) = (v.start(), v.end(), v.flags());
                    let bad = if v.mm_id() != id {
                        Some("belongs to another mm")
                    } else if !(s < e && s % P == 0 && e % P == 0) {
                        Some("has a bad range")
                    } else if s < L || e > MEND {
                        Some("lies outside the mapped window")
                    } else if !f.contains(VmFlags::READ) {
                        Some("is not readable")
                    } else if addr < L + LPAGES * P && f.contains(VmFlags::EXEC) {
                        Some("has flags the writer never set")
                    } else {
                        None
                    };
                    match bad {
                        Some(why) => Err(format!(
                            "{how}({addr:#x}) returned a VMA {s:#x}..{e:#x} {f:?} that {why}"
                        )),
                        None => Ok(()),
                    }
                };
                while ctl.running() {
                    let addr = L + rng.below(LPAGES + MPAGES) * P + rng.below(P);
                    match asp.mm().lock_vma_under_rcu(addr) {
                        Some(g) => {
                            let v = g.vma();
                            if !(v.start() <= addr && addr < v.end()) {
                                return Err(format!(
                                    "lock_vma_under_rcu({addr:#x}) returned {:#x}..{:#x}",
                                    v.start(),
                                    v.end()
                                ));
                            }
                            if !v.is_attached() {
                                return Err(format!("lock_vma_under_rcu({addr:#x}): detached VMA"));
                            }
                            check(v, addr, "lock_vma_under_rcu")?;
                            hits.fetch_add(1, Relaxed);
                        }
                        None => {
                            misses.fetch_add(1, Relaxed);
                        }
                    }
                    {
                        let g = asp.mm().read_lock();
                        match g.find_vma(addr) {
                            Some(v) => {
                                if v.end() <= addr {
                                    return Err(format!("find_vma({addr:#x}) ended at {:#x}", v.end()));
                                }
                                if addr < M && v.start() > addr {
                                    return Err(format!(
                                        "find_vma({addr:#x}) skipped the always-mapped range to {:#x}",
                                        v.start()
                                    ));
                                }
                                check(v, addr, "find_vma")?;
                                let r = g.vma_start_read_locked(v);
                                if r.is_none() {
                                    return Err(format!("vma_start_read_locked({addr:#x}) failed"));
                                }
                            }
                            None if addr < M => {
                                return Err(format!("find_vma({addr:#x}) found nothing in the always-mapped range"));
                            }
                            None => {}
                        }
                        // The whole tree under the read lock: sorted, disjoint, ours.
                        let mut a = 0;
                        let mut n = 0;
                        while let Some(v) = g.find_vma(a) {
                            if v.start() < a || v.mm_id() != id {
                                return Err(format!("VMA walk: {:#x}..{:#x} after {a:#x}", v.start(), v.end()));
                            }
                            a = v.end();
                            n += 1;
                        }
                        if n == 0 {
                            return Err("VMA walk: empty tree".into());
                        }
                        locked.fetch_add(1, Relaxed);
                    }
                    ctl.tick();
                }
                Ok(())
            }),
        ));
    }
    {
        let (asp, ops) = (asp.clone(), ops.clone());
        jobs.push((
            "writer",
            job(move |ctl| {
                let mut rng = Rng::new(200);
                while ctl.running() {
                    match rng.below(5) {
                        0 | 1 => {
                            let (a, b) = rng.range(L, LPAGES, 16);
                            asp.mprotect(a, b - a, RW)
                                .map_err(|e| format!("mprotect RW: {e:?}"))?;
                            asp.mprotect(a, b - a, PROT_READ)
                                .map_err(|e| format!("mprotect R: {e:?}"))?;
                        }
                        2 => {
                            let (a, b) = rng.range(M, MPAGES, 16);
                            let prot = if rng.below(2) == 0 { PROT_READ } else { RWX };
                            asp.mmap(a, b - a, prot, FIXED, None, 0)
                                .map_err(|e| format!("mmap: {e:?}"))?;
                        }
                        3 => {
                            let (a, b) = rng.range(M, MPAGES, 16);
                            asp.munmap(a, b - a).map_err(|e| format!("munmap: {e:?}"))?;
                        }
                        _ => {
                            // Move a mapping inside M (the destination is replaced).
                            let at = M + rng.below(MPAGES) * P;
                            if let Some(q) = asp.query_vma(at, 0)
                                && q.start >= M
                            {
                                let len = q.end - q.start;
                                let to = M + rng.below(MPAGES - len / P + 1) * P;
                                if to + len <= q.start || q.end <= to {
                                    asp.mremap(
                                        q.start,
                                        len,
                                        len,
                                        MREMAP_MAYMOVE | MREMAP_FIXED,
                                        to,
                                    )
                                    .map_err(|e| format!("mremap: {e:?}"))?;
                                }
                            }
                        }
                    }
                    ops.fetch_add(1, Relaxed);
                    ctl.tick();
                }
                Ok(())
            }),
        ));
    }
    {
        let (other, churn) = (other.clone(), churn.clone());
        jobs.push((
            "other-mm",
            job(move |ctl| {
                let mut rng = Rng::new(300);
                while ctl.running() {
                    let (a, b) = rng.range(L, LPAGES + MPAGES, 16);
                    other
                        .mmap(a, b - a, PROT_READ, FIXED, None, 0)
                        .map_err(|e| format!("mmap: {e:?}"))?;
                    let (a, b) = rng.range(L, LPAGES + MPAGES, 16);
                    let _ = other.mprotect(a, b - a, RW);
                    let (a, b) = rng.range(L, LPAGES + MPAGES, 16);
                    other
                        .munmap(a, b - a)
                        .map_err(|e| format!("munmap: {e:?}"))?;
                    churn.fetch_add(1, Relaxed);
                    ctl.tick();
                }
                Ok(())
            }),
        ));
    }
    let secs = run_threads(NAME, jobs);
    figures(format!(
        "stress {NAME}: {secs:.2} s: lock_vma_under_rcu {} hits {} misses, {} locked lookups + tree walks, {} writer ops, {} other-mm rounds",
        hits.load(Relaxed),
        misses.load(Relaxed),
        locked.load(Relaxed),
        ops.load(Relaxed),
        churn.load(Relaxed)
    ));
    base.check(NAME, vec![asp, other]);
}

// ---- d. use after free: copies vs frames freed under them --------------------------

/// The byte racers copy into their pages.
const RACER: u8 = 0xc3;
/// The byte the victim fills its pages with.
const VICTIM: u8 = 0x5a;

/// How the racers' frames are freed under them.
#[derive(Clone, Copy)]
enum Zap {
    /// MADV_DONTNEED of the whole range.
    DontNeed,
    /// munmap and a fresh MAP_FIXED mmap of the range.
    MunmapRemap,
}

/// Racers copy whole pages to and from a range whose frames another thread frees
/// (DONTNEED or munmap + mmap), while a victim in a second address space over the same
/// frame allocator takes frames, fills them with its own byte and checks them. A racer's
/// byte in the victim's page, a victim's or poison byte read by a racer, or damaged
/// poison in a free frame is a copy that touched a frame after it was freed.
fn uaf(name: &str, zap: Zap) {
    const U: usize = 0x4000_0000;
    const UPAGES: usize = if cfg!(miri) { 4 } else { 16 };
    const V: usize = 0x6000_0000;
    const VPAGES: usize = if cfg!(miri) { 2 } else { 16 };
    let alloc = memory();
    let base = Baseline::take(alloc);
    let asp = Arc::new(AddressSpace::new(alloc).unwrap());
    let victim_mm = Arc::new(AddressSpace::new(alloc).unwrap());
    asp.mmap(U, UPAGES * P, RW, FIXED, None, 0).unwrap();
    victim_mm.mmap(V, VPAGES * P, RW, FIXED, None, 0).unwrap();
    let copies = Arc::new(AtomicU64::new(0));
    let zaps = Arc::new(AtomicU64::new(0));
    let rounds = Arc::new(AtomicU64::new(0));
    let spurious = Arc::new(AtomicU64::new(0));
    let mut jobs = vec![];
    for t in 0..2 {
        let (asp, copies, spurious) = (asp.clone(), copies.clone(), spurious.clone());
        jobs.push((
            "racer",
            job(move |ctl| {
                let mut rng = Rng::new(t);
                let fill = vec![RACER; P];
                let mut buf = vec![0u8; P];
                while ctl.running() {
                    let page = U + rng.below(UPAGES) * P;
                    let r = if rng.below(2) == 0 {
                        asp.copy_to_user(page, &fill)
                    } else {
                        let r = asp.copy_from_user(page, &mut buf);
                        if let Some(i) = buf.iter().position(|&b| b != 0 && b != RACER) {
                            let b = buf[i];
                            let whose = match b {
                                VICTIM => "the victim's byte: the frame was freed and reused",
                                PAGE_POISON => "page poison: the frame was free",
                                _ => "an unknown byte",
                            };
                            return Err(format!(
                                "use after free: copy_from_user({page:#x}) read {b:#04x} at +{i:#x} at {:.3} s, {whose}",
                                ctl.now()
                            ));
                        }
                        buf.fill(0);
                        r
                    };
                    match r {
                        // The range is unmapped for a moment (munmap + mmap).
                        Ok(()) | Err(FaultError::MapErr) => {}
                        // A spurious failure of a copy into a read-write mapping is a
                        // defect of its own, which
                        // `copies_never_fail_spuriously_under_dontneed` asserts against;
                        // here it is only counted, so that this scenario keeps looking
                        // for use after free.
                        Err(FaultError::AccErr) => {
                            spurious.fetch_add(1, Relaxed);
                        }
                        Err(e) => {
                            return Err(format!(
                                "copy at {page:#x} (mapped read-write): {e:?} at {:.3} s",
                                ctl.now()
                            ));
                        }
                    }
                    copies.fetch_add(1, Relaxed);
                    poison_ok(alloc, ctl)?;
                    ctl.tick();
                }
                Ok(())
            }),
        ));
    }
    {
        let (asp, zaps) = (asp.clone(), zaps.clone());
        jobs.push((
            "zapper",
            job(move |ctl| {
                let mut rng = Rng::new(50);
                while ctl.running() {
                    match zap {
                        Zap::DontNeed => asp
                            .madvise(U, UPAGES * P, MADV_DONTNEED)
                            .map_err(|e| format!("DONTNEED: {e:?}"))?,
                        Zap::MunmapRemap => {
                            asp.munmap(U, UPAGES * P)
                                .map_err(|e| format!("munmap: {e:?}"))?;
                            asp.mmap(U, UPAGES * P, RW, FIXED, None, 0)
                                .map_err(|e| format!("mmap: {e:?}"))?;
                        }
                    }
                    zaps.fetch_add(1, Relaxed);
                    // Let the racers in (a yield would give them whole time slices,
                    // no pause would let the zapper take every lock hand-off).
                    pause(Duration::from_micros(1 + rng.below(8) as u64));
                    ctl.tick();
                }
                Ok(())
            }),
        ));
    }
    {
        let (victim_mm, rounds) = (victim_mm.clone(), rounds.clone());
        jobs.push((
            "victim",
            job(move |ctl| {
                let fill = vec![VICTIM; P];
                let mut buf = vec![0u8; P];
                while ctl.running() {
                    // Take frames (most likely the racers' freed ones: the free lists
                    // are LIFO), fill them, check them twice, give them back.
                    for pass in 0..3 {
                        for i in 0..VPAGES {
                            let page = V + i * P;
                            if pass == 0 {
                                victim_mm.copy_to_user(page, &fill).map_err(|e| format!("victim write: {e:?}"))?;
                                continue;
                            }
                            victim_mm.copy_from_user(page, &mut buf).map_err(|e| format!("victim read: {e:?}"))?;
                            if let Some(at) = buf.iter().position(|&b| b != VICTIM) {
                                let b = buf[at];
                                let whose = if b == RACER {
                                    "a racer's copy_to_user wrote into a frame after it was freed and reused"
                                } else {
                                    "unknown writer"
                                };
                                return Err(format!(
                                    "use after free: victim page {page:#x} has {b:#04x} at +{at:#x} (pass {pass}, {:.3} s): {whose}",
                                    ctl.now()
                                ));
                            }
                        }
                        std::thread::yield_now();
                    }
                    victim_mm
                        .madvise(V, VPAGES * P, MADV_DONTNEED)
                        .map_err(|e| format!("victim DONTNEED: {e:?}"))?;
                    rounds.fetch_add(1, Relaxed);
                    poison_ok(alloc, ctl)?;
                    ctl.tick();
                }
                Ok(())
            }),
        ));
    }
    let secs = run_threads(name, jobs);
    figures(format!(
        "stress {name}: {secs:.2} s: {} racer page copies ({} failed spuriously), {} zaps, {} victim rounds of {VPAGES} pages, {} free-frame poison checks failed",
        copies.load(Relaxed),
        spurious.load(Relaxed),
        zaps.load(Relaxed),
        rounds.load(Relaxed),
        alloc.check_free_poison()
    ));
    base.check(name, vec![asp, victim_mm]);
}

/// A copy into a mapping that permits it never fails, however often its pages are
/// dropped under it: the MMU faults and retries until the page is there (Linux's
/// `copy_to_user` fixup path and `handle_mm_fault` retry; the fault handler's result, not
/// a retry count, decides). Copy threads hammer one page that another thread
/// MADV_DONTNEEDs in a tight loop (two threads).
#[test]
fn copies_never_fail_spuriously_under_dontneed() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const NAME: &str = "copies_never_fail_spuriously_under_dontneed";
    const X: usize = 0x7000_0000;
    let alloc = memory();
    let base = Baseline::take(alloc);
    let asp = Arc::new(AddressSpace::new(alloc).unwrap());
    asp.mmap(X, P, RW, FIXED, None, 0).unwrap();
    let copies = Arc::new(AtomicU64::new(0));
    let zaps = Arc::new(AtomicU64::new(0));
    let mut jobs = vec![];
    for t in 0..2u8 {
        let (asp, copies) = (asp.clone(), copies.clone());
        jobs.push((
            "copy",
            job(move |ctl| {
                let mut b = [0u8; 64];
                while ctl.running() {
                    let r = if t == 0 {
                        asp.copy_to_user(X + 64, &[t + 1; 64])
                    } else {
                        asp.copy_from_user(X + 64, &mut b)
                    };
                    if let Err(e) = r {
                        return Err(format!(
                            "copy {} {X:#x} (mapped read-write) failed with {e:?} after {} copies, at {:.3} s",
                            if t == 0 { "to" } else { "from" },
                            copies.load(Relaxed),
                            ctl.now()
                        ));
                    }
                    copies.fetch_add(1, Relaxed);
                    ctl.tick();
                }
                Ok(())
            }),
        ));
    }
    // Two zappers: while one drops the page, the other waits for the page-table lock,
    // so every release of it by a copier has a contender.
    for _ in 0..2 {
        let (asp, zaps) = (asp.clone(), zaps.clone());
        jobs.push((
            "zapper",
            job(move |ctl| {
                while ctl.running() {
                    asp.madvise(X, P, MADV_DONTNEED)
                        .map_err(|e| format!("DONTNEED: {e:?}"))?;
                    zaps.fetch_add(1, Relaxed);
                    ctl.tick();
                }
                Ok(())
            }),
        ));
    }
    let secs = run_threads(NAME, jobs);
    figures(format!(
        "stress {NAME}: {secs:.2} s: {} copies, {} zaps",
        copies.load(Relaxed),
        zaps.load(Relaxed)
    ));
    base.check(NAME, vec![asp]);
}

#[test]
fn uaf_copies_vs_dontneed() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    uaf("uaf_copies_vs_dontneed", Zap::DontNeed);
}

#[test]
fn uaf_copies_vs_munmap_remap() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    uaf("uaf_copies_vs_munmap_remap", Zap::MunmapRemap);
}

// ---- e. fork while other threads fault and write the parent ----------------------

/// Marker in the top byte of every word a fork-stress writer stores.
const FORK_MARK: u64 = 0xa5 << 56;

/// The word writer `t` fills a page with on its `ctr`-th write: every word of the page
/// the same, so a page copied (or shared) half-way through a write is visible.
fn fork_word(t: usize, ctr: u64) -> u64 {
    FORK_MARK | (t as u64) << 40 | (ctr & ((1 << 40) - 1))
}

/// A page read back: every word equal, and either zero or a word some writer `t`
/// stored on a write it had begun (`ctr` at most what it has issued).
fn check_fork_page(buf: &[u8], issued: &[AtomicU64], what: &str) -> Result<u64, String> {
    let first = u64::from_le_bytes(buf[..8].try_into().unwrap());
    if let Some(i) =
        (1..P / 8).find(|&i| u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().unwrap()) != first)
    {
        let w = u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().unwrap());
        let poison = if buf.contains(&PAGE_POISON) {
            " (page-poison bytes)"
        } else {
            ""
        };
        return Err(format!(
            "{what}: a torn page: word 0 is {first:#x}, word {i} is {w:#x}{poison}"
        ));
    }
    if first == 0 {
        return Ok(0);
    }
    let t = (first >> 40 & 0xffff) as usize;
    let ctr = first & ((1 << 40) - 1);
    if first & (0xff << 56) != FORK_MARK
        || t >= issued.len()
        || ctr == 0
        || ctr > issued[t].load(Relaxed)
    {
        return Err(format!(
            "{what}: the page holds {first:#x}, a value no writer stored"
        ));
    }
    Ok(first)
}

/// One thread forks the address space again and again while writer threads fault and
/// write whole pages of it (Linux: the `fork()` of a multi-threaded process, the case
/// `dup_mmap` write-locks every VMA and `copy_present_pte` write-protects the parent
/// under the page-table lock for). The writers store pages of one repeated word
/// ([`fork_word`]) through `copy_to_user` (first touches, write faults on pages the
/// last fork write-protected, copies), read pages back, and MADV_DONTNEED them now and
/// then so first-touch faults keep coming. After each fork the child reads every page:
/// each must be whole (every word equal) and either zero or a value a writer stored,
/// and a second read of every page a moment later (the writers going on in the parent)
/// must give the same bytes: the child's pages are a snapshot, never written through
/// by the parent. Then `validate_mm` on the child, and it exits (dropped).
#[test]
fn fork_vs_faulting_writers() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const NAME: &str = "fork_vs_faulting_writers";
    const WRITERS: usize = if cfg!(miri) { 2 } else { 3 };
    const PAGES: usize = if cfg!(miri) { 8 } else { 64 };
    const X: usize = 0x3000_0000;
    let alloc = memory();
    let base = Baseline::take(alloc);
    let asp = Arc::new(AddressSpace::new(alloc).unwrap());
    asp.mmap(X, PAGES * P, RW, FIXED, None, 0).unwrap();
    let issued: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
    let writes = Arc::new(AtomicU64::new(0));
    let zaps = Arc::new(AtomicU64::new(0));
    let forks = Arc::new(AtomicU64::new(0));
    let checked = Arc::new(AtomicU64::new(0));
    let zero = Arc::new(AtomicU64::new(0));
    let mut jobs = vec![];
    for t in 0..WRITERS {
        let (asp, issued, writes, zaps) =
            (asp.clone(), issued.clone(), writes.clone(), zaps.clone());
        jobs.push((
            "writer",
            job(move |ctl| {
                let mut rng = Rng::new(t as u64 + 500);
                let mut buf = vec![0u8; P];
                let mut ctr = 0u64;
                while ctl.running() {
                    let page = X + rng.below(PAGES) * P;
                    match rng.below(16) {
                        0 => {
                            asp.madvise(page, P, MADV_DONTNEED)
                                .map_err(|e| format!("DONTNEED {page:#x}: {e:?}"))?;
                            zaps.fetch_add(1, Relaxed);
                        }
                        1..4 => {
                            asp.copy_from_user(page, &mut buf)
                                .map_err(|e| format!("copy_from_user {page:#x}: {e:?}"))?;
                            check_fork_page(&buf, &issued, &format!("parent page {page:#x}"))?;
                        }
                        _ => {
                            ctr += 1;
                            // Published before the write starts: a reader may see it.
                            issued[t].store(ctr, Relaxed);
                            let w = fork_word(t, ctr).to_le_bytes();
                            for c in buf.as_chunks_mut::<8>().0 {
                                *c = w;
                            }
                            asp.copy_to_user(page, &buf)
                                .map_err(|e| format!("copy_to_user {page:#x}: {e:?}"))?;
                            writes.fetch_add(1, Relaxed);
                        }
                    }
                    poison_ok(alloc, ctl)?;
                    ctl.tick();
                }
                Ok(())
            }),
        ));
    }
    {
        let (asp, issued, forks, checked, zero) = (
            asp.clone(),
            issued.clone(),
            forks.clone(),
            checked.clone(),
            zero.clone(),
        );
        jobs.push((
            "forker",
            job(move |ctl| {
                let mut buf = vec![0u8; P];
                let mut again = vec![0u8; P];
                while ctl.running() {
                    let child = asp.fork().map_err(|e| format!("fork: {e:?}"))?;
                    let n = forks.fetch_add(1, Relaxed) + 1;
                    let mut seen = vec![0u64; PAGES];
                    for (i, s) in seen.iter_mut().enumerate() {
                        let page = X + i * P;
                        child
                            .copy_from_user(page, &mut buf)
                            .map_err(|e| format!("fork {n}: child copy_from_user {page:#x}: {e:?}"))?;
                        *s = check_fork_page(&buf, &issued, &format!("fork {n}: child page {page:#x}"))?;
                        checked.fetch_add(1, Relaxed);
                        if *s == 0 {
                            zero.fetch_add(1, Relaxed);
                        }
                    }
                    // The parent's writers go on (each page is rewritten about every
                    // millisecond); the child's pages must not follow.
                    pause(Duration::from_micros(200));
                    for (i, &was) in seen.iter().enumerate() {
                        let page = X + i * P;
                        child.copy_from_user(page, &mut again).map_err(|e| {
                            format!("fork {n}: child re-read {page:#x}: {e:?}")
                        })?;
                        let w = check_fork_page(
                            &again,
                            &issued,
                            &format!("fork {n}: child page {page:#x} re-read"),
                        )?;
                        if w != was {
                            return Err(format!(
                                "fork {n}: child page {page:#x} changed from {was:#x} to {w:#x}: a parent write reached the child"
                            ));
                        }
                    }
                    child
                        .validate_mm()
                        .map_err(|e| format!("fork {n}: validate_mm(child): {e}"))?;
                    drop(child);
                    poison_ok(alloc, ctl)?;
                    ctl.tick();
                }
                Ok(())
            }),
        ));
    }
    let secs = run_threads(NAME, jobs);
    asp.validate_mm()
        .unwrap_or_else(|e| panic!("{NAME}: validate_mm(parent): {e}"));
    let mut buf = vec![0u8; P];
    for i in 0..PAGES {
        asp.copy_from_user(X + i * P, &mut buf).unwrap();
        check_fork_page(
            &buf,
            &issued,
            &format!("{NAME}: parent page {:#x} at the end", X + i * P),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
    figures(format!(
        "stress {NAME}: {secs:.2} s: {} forks, {} child pages checked ({} zero), {} page writes, {} DONTNEEDs",
        forks.load(Relaxed),
        checked.load(Relaxed),
        zero.load(Relaxed),
        writes.load(Relaxed),
        zaps.load(Relaxed)
    ));
    base.check(NAME, vec![asp]);
}

// ---- the harness itself ------------------------------------------------------------

/// A worker's error stops the others at once and fails the scenario with its message.
#[test]
#[should_panic(expected = "stress harness_reports_errors: boom: invariant broken")]
fn harness_reports_errors() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let spin = job(|ctl| {
        while ctl.running() {
            ctl.tick();
            std::thread::yield_now();
        }
        Ok(())
    });
    let fail = job(|_| Err("invariant broken".into()));
    run_threads(
        "harness_reports_errors",
        vec![("spin", spin), ("boom", fail)],
    );
}

/// A thread that does not stop by the deadline fails the binary with the scenario's
/// name and "deadlock (deadline passed)": runs [`harness_deadlock_child`] in a child
/// process of this test binary.
#[test]
#[cfg_attr(miri, ignore = "Miri cannot spawn processes")]
fn harness_detects_a_deadlock() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "harness_deadlock_child",
            "--ignored",
            "--nocapture",
        ])
        .env("MM_STRESS_SECS", "0.1")
        .env("MM_STRESS_SLACK", "0.5")
        // Under ThreadSanitizer the stuck thread left at exit is a "thread leak" report,
        // which would replace the exit status.
        .env("TSAN_OPTIONS", "report_thread_leaks=0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(101), "stderr: {err}");
    assert!(
        err.contains("stress harness_deadlock_child: deadlock (deadline passed): 1 of 2 threads"),
        "stderr: {err}"
    );
    assert!(err.contains("stuck: STUCK"), "stderr: {err}");
    assert!(err.contains("fine: finished"), "stderr: {err}");
}

/// A scenario with a thread that never stops (run by [`harness_detects_a_deadlock`]).
#[test]
#[ignore = "must fail: run by harness_detects_a_deadlock"]
fn harness_deadlock_child() {
    let fine = job(|ctl| {
        while ctl.running() {
            ctl.tick();
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    });
    let stuck = job(|_| {
        loop {
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    run_threads(
        "harness_deadlock_child",
        vec![("fine", fine), ("stuck", stuck)],
    );
}
