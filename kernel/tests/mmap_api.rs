//! The syscall conformance suite (`mm::conformance`) in the kernel: the errno cases
//! and their check order, placement, maps, and the `.mmap_prepare` file paths, on a
//! real kernel address space loaded in CR3, with every user access a real load or
//! store that goes through the page-fault handler.
//!
//! The same cases run on the host (`mm/tests/mmap_syscalls.rs`, `mm/tests/mmap_file.rs`);
//! one `#[test_case]` per case is generated from `mm::conformance_cases!`.
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

/// One `#[test_case]` per shared case, in a module per group, so the test names read
/// `mmap_api::syscalls::mmap_errno_order`.
macro_rules! kernel_tests {
    (() $($group:ident: [$($name:ident),* $(,)?]),* $(,)?) => {
        $(
            mod $group {
                $(
                    #[test_case]
                    fn $name() {
                        mm::conformance::$group::$name(&super::KernelHarness);
                    }
                )*
            }
        )*
    };
}
mm::conformance_cases!(kernel_tests);
