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
/// in the dev profile.
const SEEDS: u64 = 1000;
const CALLS: usize = 400;

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

// ---- regressions: the calls the fuzzer found, minimised -----------------------------

use mm::errno::Errno;
use mm::mmap::*;

const P: usize = 4096;

/// Replays `ops` with every fuzzer check (one at a time with the fuzz run: the checks
/// count VMAs globally).
fn replay(ops: &[Op]) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(f) = fuzz::replay(&HostHarness::new(), Setup::default(), ops, true) {
        panic!("{f}");
    }
}

/// MAP_FIXED_NOREPLACE places exactly like MAP_FIXED (Linux's do_mmap sets MAP_FIXED
/// for it before `round_hint_to_min`): an unaligned address is EINVAL and one below
/// `mmap_min_addr` is EPERM, not a hint rounded to somewhere else.
#[test]
fn regression_noreplace_address_is_not_a_hint() {
    replay(&[Op::Mmap {
        space: 1,
        addr: 0x3da2_0638_9001,
        len: 0x4000_0000,
        prot: 7,
        flags: 0x10_0043,
        file: Some(5),
        off: 0x2000,
    }]);
    let h = HostHarness::new();
    let space = mm::conformance::Harness::space(&h);
    let asp = space.asp();
    let anon = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE;
    assert_eq!(
        asp.mmap(0x4000_0001, P, PROT_READ, anon, None, 0),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        asp.mmap(0x1000, P, PROT_READ, anon, None, 0),
        Err(Errno::EPERM)
    );
    assert_eq!(
        asp.mmap(0x4000_0000, P, PROT_READ, anon, None, 0),
        Ok(0x4000_0000)
    );
}

/// Runs `f` on a thread of its own and fails the test if it takes more than `secs`
/// seconds (a hang would otherwise stall the whole run).
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

/// Populating (MAP_LOCKED / MAP_POPULATE) works VMA by VMA as Linux's `__mm_populate`:
/// a PROT_NONE VMA is skipped whole and a fault that fails (SIGBUS past the end of a
/// file) ends its VMA. It used to try every page of the length asked for: 2^34 calls
/// of the fault handler for this 64 TiB PROT_NONE mapping, 2^28 for the 1 TiB shared
/// file mapping.
#[test]
fn regression_populate_is_bounded_by_what_it_can_populate() {
    within(20, || {
        replay(&[
            Op::Mmap {
                space: 0,
                addr: 0x4002_d008,
                len: 0x4000_0000_0000,
                prot: 0x200_0000,
                flags: MAP_PRIVATE | MAP_LOCKED | MAP_UNINITIALIZED,
                file: Some(4),
                off: 0,
            },
            // The secretmem file (8 pages; `.mmap_prepare` sets VM_LOCKED).
            Op::Mmap {
                space: 1,
                addr: 0,
                len: 1 << 40,
                prot: PROT_READ | PROT_WRITE,
                flags: MAP_SHARED,
                file: Some(6),
                off: 0,
            },
        ])
    });
    let h = HostHarness::new();
    let space = mm::conformance::Harness::space(&h);
    let asp = space.asp();
    let f = mm::file::ramfs_file(
        mm::conformance::Harness::allocator(&h),
        "f",
        3 * P,
        mm::file::OpenMode::RDWR,
    );
    let a = asp
        .mmap(
            0,
            1 << 40,
            PROT_READ,
            MAP_SHARED | MAP_POPULATE,
            Some(&f),
            0,
        )
        .unwrap();
    for i in 0..3 {
        assert!(
            asp.translate(a + i * P).is_some(),
            "page {i} inside the file populated"
        );
    }
    assert!(
        asp.translate(a + 3 * P).is_none(),
        "nothing past the end of the file"
    );
}

/// A ramfs file mapped through a stacking file (legacy `.mmap` → the compat layer →
/// ramfs's `.mmap_prepare`) is still a file VMA: the compat layer copies the
/// descriptor's `vm_ops` into the VMA (Linux: `set_vma_from_desc`), and ramfs's hook
/// now sets them as Linux's `generic_file_mmap_prepare` does. Without operations the
/// VMA was taken for anonymous and a move (`copy_vma`) gave it the anonymous
/// `pgoff = addr >> PAGE_SHIFT`, mapping the wrong file pages.
#[test]
fn regression_file_vma_through_the_compat_layer_keeps_its_file_offset_when_moved() {
    replay(&[
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
    ]);
    let h = HostHarness::new();
    let space = mm::conformance::Harness::space(&h);
    let asp = space.asp();
    let a = mm::conformance::Harness::allocator(&h);
    let lower = mm::file::ramfs_file(a, "lower", 16 * P, mm::file::OpenMode::RDWR);
    lower.inode().write(5 * P, b"page five").unwrap();
    let upper = mm::file::stacking_file(&lower, "upper");
    let x = asp
        .mmap(
            0x4000_0000,
            4 * P,
            PROT_READ,
            MAP_PRIVATE | MAP_FIXED,
            Some(&upper),
            4 * P as u64,
        )
        .unwrap();
    assert!(!asp.query_vma(x, 0).unwrap().vm_flags.is_empty());
    let y = asp
        .mremap(x + P, P, 2 * P, MREMAP_MAYMOVE | MREMAP_FIXED, 0x5000_0000)
        .unwrap();
    assert_eq!(
        asp.query_vma(y, 0).unwrap().pgoff,
        5,
        "the moved part maps file page 5"
    );
    let mut b = [0u8; 9];
    asp.copy_from_user(y, &mut b).unwrap();
    assert_eq!(&b, b"page five");
}

/// A file mapping with MAP_HUGETLB is EINVAL unless the file is on hugetlbfs (Linux:
/// `ksys_mmap_pgoff`), before any of `do_mmap`'s checks: here it was mapped with base
/// pages, or failed later with another errno (EOVERFLOW for this offset).
#[test]
fn regression_map_hugetlb_with_a_file_is_einval() {
    replay(&[Op::Mmap {
        space: 1,
        addr: 0x4003_3000,
        len: 0x7000,
        prot: 0x6ccf_a171,
        flags: MAP_SHARED_VALIDATE | MAP_HUGETLB,
        file: Some(3),
        off: 1 << 63,
    }]);
    let h = HostHarness::new();
    let space = mm::conformance::Harness::space(&h);
    let asp = space.asp();
    let f = mm::file::ramfs_file(
        mm::conformance::Harness::allocator(&h),
        "f",
        P,
        mm::file::OpenMode::RDWR,
    );
    let flags = MAP_PRIVATE | MAP_HUGETLB;
    assert_eq!(
        asp.mmap(0, P, PROT_READ, flags, Some(&f), 0),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        asp.mmap(0, 0, PROT_READ, flags, Some(&f), 0),
        Err(Errno::EINVAL)
    );
    assert_eq!(asp.map_count(), 0);
}
