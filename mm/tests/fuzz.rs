//! The seeded syscall fuzzer (`mm::conformance::fuzz`) on the host, in the dev profile
//! (overflow checks on): a fixed range of seeds in CI, with `validate_mm` after every
//! call and frames, VMAs and anon_vmas back to baseline after every seed. The same
//! fuzzer runs in the kernel (`kernel/tests/fuzz.rs`).
//!
//! Environment, for local runs:
//! - `MM_FUZZ_SEEDS=N` or `A..B`: the seeds (default `0..SEEDS`);
//! - `MM_FUZZ_CALLS=N`: calls per seed (default `CALLS`);
//! - `MM_FUZZ_VERBOSE=1`: print every call before it is made;
//! - `MM_FUZZ_ALL=1`: also make the calls that hit defects known to be under repair.
//!
//! The figures (calls, results by errno and fault kind, seconds) are written to
//! stderr directly, so they show without `--nocapture`.

use std::cell::RefCell;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Mutex;
use std::time::Instant;

use mm::conformance::fuzz::{self, Config, Op, Setup};
use mm::conformance::host::HostHarness;

/// Seeds and calls per seed in CI (calls skipped as known defects count): about 25 s
/// in the dev profile (350 calls since forks joined the calls: up to four live spaces
/// to validate after every call instead of two).
const SEEDS: u64 = 1000;
const CALLS: usize = 350;

/// The tests of this file count VMAs globally: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn seeds() -> std::ops::Range<u64> {
    match env("MM_FUZZ_SEEDS") {
        None => 0..SEEDS,
        Some(s) => match s.split_once("..") {
            Some((a, b)) => {
                a.parse().expect("MM_FUZZ_SEEDS=A..B")..b.parse().expect("MM_FUZZ_SEEDS=A..B")
            }
            None => 0..s.parse().expect("MM_FUZZ_SEEDS=N"),
        },
    }
}

fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A failure's identity for minimisation: its kind and what broke, numbers left out
/// (addresses change as calls are removed).
fn signature(what: &str) -> String {
    let head = what.split(':').next().unwrap_or("");
    let tail = what.rsplit(": ").next().unwrap_or("");
    let mut out = String::new();
    let text = format!("{head}: {tail}");
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            while chars
                .peek()
                .is_some_and(|c| c.is_ascii_hexdigit() || *c == 'x')
            {
                chars.next();
            }
            out.push('#');
        } else {
            out.push(c);
        }
    }
    out
}

/// Where and why the last panic happened (recorded by the quiet hook of `minimise`).
static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

/// The signature of the failure `ops` cause, if they cause one.
fn outcome(h: &HostHarness, setup: Setup, ops: &[Op]) -> Option<String> {
    match catch_unwind(AssertUnwindSafe(|| fuzz::replay(h, setup, ops, false))) {
        Ok(Ok(_)) => None,
        Ok(Err(f)) => Some(signature(&f.what)),
        Err(_) => Some(signature(
            &LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()),
        )),
    }
}

/// Shrink `ops` to a short sequence that still fails the same way (delta debugging by
/// chunk removal) and print it: the reproducer for a regression test.
fn minimise(setup: Setup, ops: &[Op]) {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("?");
        let loc = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()));
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) =
            format!("panic at {}: {msg}", loc.unwrap_or_default());
    }));
    let h = HostHarness::new();
    let mut ops = ops.to_vec();
    if let Some(target) = outcome(&h, setup, &ops) {
        let mut chunk = ops.len().div_ceil(2);
        while chunk >= 1 {
            let mut i = 0;
            while i < ops.len() {
                let mut cand = ops.clone();
                cand.drain(i..(i + chunk).min(ops.len()));
                if outcome(&h, setup, &cand).as_deref() == Some(target.as_str()) {
                    ops = cand;
                } else {
                    i += chunk;
                }
            }
            if chunk == 1 {
                break;
            }
            chunk = chunk.div_ceil(2);
        }
        say(&format!(
            "fuzz: minimised reproducer ({setup:?}, {} calls), failing with `{target}`:",
            ops.len()
        ));
        for op in &ops {
            say(&format!("    {op:x?},"));
        }
    } else {
        say("fuzz: the failure does not reproduce by replay (it depends on earlier seeds?)");
    }
    std::panic::set_hook(prev);
}

/// Runs `cfg`, naming the call a panic happened in and minimising any failure, and
/// returns the figures line.
fn run(cfg: &Config) -> String {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let verbose = env("MM_FUZZ_VERBOSE").is_some();
    let seed_ops: RefCell<(u64, Vec<Op>)> = RefCell::new((u64::MAX, Vec::new()));
    let h = HostHarness::new();
    let t = Instant::now();
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut observe = |seed: u64, call: usize, op: &Op| {
            if verbose {
                say(&format!("seed {seed} call {call}: {op:x?}"));
            }
            let mut s = seed_ops.borrow_mut();
            if s.0 != seed {
                *s = (seed, Vec::new());
            }
            s.1.push(op.clone());
        };
        fuzz::run(&h, cfg, &mut observe)
    }));
    match r {
        Ok(Ok(stats)) => format!("{stats}; {:.1} s", t.elapsed().as_secs_f64()),
        Ok(Err(failure)) => {
            say(&format!("{failure}"));
            minimise(failure.setup, &failure.ops);
            panic!(
                "fuzz: seed {} call {}: {}",
                failure.seed, failure.call, failure.what
            );
        }
        Err(p) => {
            let (seed, ops) = seed_ops.take();
            say(&format!(
                "fuzz: the memory manager panicked in seed {seed}, call {}: {:x?}",
                ops.len().saturating_sub(1),
                ops.last()
            ));
            minimise(Setup::of_seed(seed), &ops);
            resume_unwind(p)
        }
    }
}

#[test]
fn seeded_syscall_fuzz() {
    let cfg = Config {
        seeds: seeds(),
        calls: env("MM_FUZZ_CALLS").map_or(CALLS, |c| c.parse().expect("MM_FUZZ_CALLS=N")),
        check_global_counts: true,
        skip_known_defects: env("MM_FUZZ_ALL").is_none(),
    };
    let line = run(&cfg);
    say(&line);
}

// ---- the calls the fuzzer found, minimised --------------------------------------------

use mm::mmap::*;

/// Runs `f` on a thread of its own and fails if it takes more than `secs` seconds (a
/// reintroduced hang fails the test instead of stalling the run).
fn within(secs: u64, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(secs)) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("did not finish in {secs} s"),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("panicked"),
    }
}

/// Every minimised sequence the fuzzer reported, replayed with all of its checks (the
/// defects they found have a regression case each in `mm::conformance::regress`, run
/// at both levels by `mm/tests/regressions.rs` and `kernel/tests/mmap_api.rs`).
#[test]
fn minimised_reproducers_replay_clean() {
    let reproducers: Vec<(&str, Vec<Op>)> = vec![
        (
            "map_fixed_noreplace_address_is_not_a_hint",
            vec![Op::Mmap {
                space: 1,
                addr: 0x3da2_0638_9001,
                len: 0x4000_0000,
                prot: 7,
                flags: MAP_SHARED_VALIDATE | MAP_32BIT | MAP_FIXED_NOREPLACE,
                file: Some(5),
                off: 0x2000,
            }],
        ),
        (
            // Hung (2^34 fault calls) before the fix.
            "populate_is_bounded_by_what_it_can_populate",
            vec![
                Op::Mmap {
                    space: 0,
                    addr: 0x4002_d008,
                    len: 0x4000_0000_0000,
                    prot: PROT_GROWSUP,
                    flags: MAP_PRIVATE | MAP_LOCKED | MAP_UNINITIALIZED,
                    file: Some(4),
                    off: 0,
                },
                Op::Mmap {
                    space: 1,
                    addr: 0,
                    len: 1 << 40,
                    prot: PROT_READ | PROT_WRITE,
                    flags: MAP_SHARED | MAP_POPULATE,
                    file: Some(6),
                    off: 0,
                },
            ],
        ),
        (
            "file_vma_through_the_compat_layer_keeps_its_file_offset_when_moved",
            vec![
                Op::Mmap {
                    space: 1,
                    addr: 0x4003_2000,
                    len: 0x32000,
                    prot: PROT_EXEC,
                    flags: MAP_SHARED_VALIDATE,
                    file: Some(5),
                    off: 0,
                },
                Op::Mmap {
                    space: 1,
                    addr: 0x4003_1000,
                    len: 0x6000,
                    prot: PROT_SEM,
                    flags: MAP_PRIVATE | MAP_ANONYMOUS,
                    file: None,
                    off: 0,
                },
                Op::Mmap {
                    space: 1,
                    addr: 0x7fff_f7fe_8000,
                    len: 0x3b000,
                    prot: PROT_READ,
                    flags: MAP_PRIVATE | MAP_POPULATE,
                    file: Some(5),
                    off: 0,
                },
                Op::Mremap {
                    space: 1,
                    addr: 0x7fff_f7fb_e000,
                    old_len: 0x2000,
                    new_len: 0x3000,
                    flags: MREMAP_MAYMOVE,
                    new_addr: 0x7fff_f7ff_7000,
                },
            ],
        ),
        (
            "map_hugetlb_with_a_file_is_einval",
            vec![Op::Mmap {
                space: 1,
                addr: 0x4003_3000,
                len: 0x7000,
                prot: 0x6ccf_a171,
                flags: MAP_SHARED_VALIDATE | MAP_HUGETLB,
                file: Some(3),
                off: 1 << 63,
            }],
        ),
    ];
    // Serialised with the big run before the clock starts: the deadline is for the
    // replays alone, not for the wait behind a fuzz run on a loaded machine.
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    within(60, move || {
        for (name, ops) in reproducers {
            if let Err(f) = fuzz::replay(&HostHarness::new(), Setup::default(), &ops, true) {
                panic!("{name}: {f}");
            }
        }
    });
}
