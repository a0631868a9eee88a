//! fork of an address space on real page tables: the `fork` group of the conformance
//! suite (`mm::conformance::fork`: merge scenarios after a fork, copy-on-write with
//! exact copy counts, reuse after the child exits, DONTFORK/WIPEONFORK, teardown in
//! either order, 10,000 VMAs, 16 MiB touched), with parent and child loaded in CR3 in
//! turn and every user byte a real load or store through the page-fault handler, so
//! each copy-on-write is a real write-protection fault. The harness checks frames,
//! page-table pages and VMAs against the baseline after each test.
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

kernel::test_kernel_main!();

/// One `#[test_case]` per shared fork case.
macro_rules! kernel_tests {
    (() syscalls: $_s:tt, file: $_f:tt, mremap: $_m:tt, fork: [$($name:ident),* $(,)?], $($other_groups:tt)*) => {
        $(
            #[test_case]
            fn $name() {
                mm::conformance::fork::$name(&KernelHarness);
            }
        )*
    };
}
mm::conformance_cases!(kernel_tests);
