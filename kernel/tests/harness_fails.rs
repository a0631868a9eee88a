//! A test kernel that MUST fail: `run-qemu.sh --test` runs it and checks that
//! the harness reports exactly the failures below and makes the run fail.
//! (Not part of the ordinary `cargo ktest`: `test = false` in Cargo.toml.)
#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::run_tests)]
#![reexport_test_harness_main = "test_main"]

use bootloader_api::BootInfo;
use kernel::memory::frames;

bootloader_api::entry_point!(main, config = &kernel::BOOT_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info, true);
    test_main();
    kernel::hlt_loop()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    kernel::testing::on_panic(info)
}

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
