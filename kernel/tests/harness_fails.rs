//! A test kernel that MUST fail: `run-qemu.sh --test` runs it and checks that
//! the harness reports exactly the failures below and makes the run fail.
//! (Not part of the ordinary `cargo ktest`: `test = false` in Cargo.toml.)
#![no_std]
#![no_main]
// Test cases are named for what they check; the custom test framework makes them
// items of the test crate, which `missing_docs` would otherwise ask to document.
#![allow(missing_docs)]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::run_tests)]
#![reexport_test_harness_main = "test_main"]

use kernel::memory::frames;

kernel::test_kernel_main!();

#[test_case]
fn this_test_passes() {}

#[test_case]
fn this_test_fails() {
    assert_eq!(2 + 2, 5, "deliberate failure");
}

kernel::should_panic_test!(this_should_panic_test_returns, {});

#[test_case]
fn this_test_leaks_a_frame() {
    // Allocated and never freed: the leak check must fail this test.
    let _ = frames().alloc(0).unwrap();
}
