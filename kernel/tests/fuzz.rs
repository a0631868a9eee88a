//! The seeded syscall fuzzer (`mm::conformance::fuzz`) in the kernel: the same calls
//! and checks as on the host (`mm/tests/fuzz.rs`), on real kernel address spaces
//! whose page tables the CPU walks: the fuzzer's user byte loads and stores are real
//! accesses through CR3 that fault into the kernel's page-fault handler.
//!
//! Fewer seeds than on the host (TCG is slow); the figures line is printed before
//! the test's `ok`. A failure names its seed and call: `MM_FUZZ_SEEDS=S cargo test
//! -p mm --test fuzz` replays the same seed on the host and minimises it. As on the
//! host, `MM_FUZZ_SEEDS=A..B` (or `N`), `MM_FUZZ_CALLS=N` and `MM_FUZZ_VERBOSE=1`
//! (print every call) choose the run; here they are read when the test kernel is
//! built: `MM_FUZZ_SEEDS=551..552 MM_FUZZ_VERBOSE=1 cargo ktest --test fuzz`.
#![no_std]
#![no_main]
// Test cases are named for what they check; the custom test framework makes them
// items of the test crate, which `missing_docs` would otherwise ask to document.
#![allow(missing_docs)]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::run_tests)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

mod common;

use common::KernelHarness;
use kernel::arch::tsc;
use kernel::serial_println;
use mm::conformance::fuzz::{self, Config};

kernel::test_kernel_main!();

/// Seeds and calls per seed: about a minute under TCG (260 calls since forks joined
/// the calls: up to four live spaces to validate after every call instead of two).
const SEEDS: u64 = 480;
const CALLS: usize = 260;

/// A number from a build-time setting.
fn number(s: &str) -> u64 {
    s.trim()
        .parse()
        .expect("MM_FUZZ_SEEDS / MM_FUZZ_CALLS: a number, or A..B")
}

#[test_case]
fn seeded_syscall_fuzz() {
    let seeds = match option_env!("MM_FUZZ_SEEDS").filter(|s| !s.is_empty()) {
        None => 0..SEEDS,
        Some(s) => match s.split_once("..") {
            Some((a, b)) => number(a)..number(b),
            None => 0..number(s),
        },
    };
    let cfg = Config {
        seeds,
        calls: option_env!("MM_FUZZ_CALLS")
            .filter(|s| !s.is_empty())
            .map_or(CALLS, |c| number(c) as usize),
        check_global_counts: true,
        skip_known_defects: option_env!("MM_FUZZ_ALL").is_none_or(str::is_empty),
    };
    let verbose = option_env!("MM_FUZZ_VERBOSE").is_some_and(|v| !v.is_empty());
    let start = tsc::rdtsc();
    let mut observe = |seed: u64, call: usize, op: &fuzz::Op| {
        if verbose {
            serial_println!("seed {seed} call {call}: {op:x?}");
        }
    };
    match fuzz::run(&KernelHarness, &cfg, &mut observe) {
        Ok(stats) => {
            let ms = tsc::cycles_to_ns(tsc::rdtsc() - start) / 1_000_000;
            serial_println!("\n{stats}; {}.{} s", ms / 1000, ms % 1000 / 100);
        }
        Err(f) => panic!("{f}"),
    }
}
