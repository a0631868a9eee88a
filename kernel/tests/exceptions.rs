//! In-kernel tests of the exception handlers and of the harness's should_panic.
#![no_std]
#![no_main]
// Test cases are named for what they check; the custom test framework makes them
// items of the test crate, which `missing_docs` would otherwise ask to document.
#![allow(missing_docs)]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::run_tests)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use kernel::arch::extable::{probe_read, probe_write};
use kernel::arch::idt::BREAKPOINTS;
use kernel::heap;
use kernel::percpu::page_faults;
use x86_64::VirtAddr;
use x86_64::structures::idt::PageFaultErrorCode;

kernel::test_kernel_main!();

#[test_case]
fn breakpoint_exception_returns() {
    let before = BREAKPOINTS.load(Ordering::Relaxed);
    x86_64::instructions::interrupts::int3();
    x86_64::instructions::interrupts::int3();
    assert_eq!(BREAKPOINTS.load(Ordering::Relaxed), before + 2);
}

#[test_case]
fn page_fault_on_unmapped_read_is_caught() {
    // 1 TiB + 4 KiB: nothing maps the lower half there.
    let addr = VirtAddr::new(0x100_0000_1000);
    let faults = page_faults();
    let err = probe_read(addr).expect_err("an unmapped read must fault");
    assert_eq!(err.addr, addr, "CR2 reported");
    let code = PageFaultErrorCode::from_bits_truncate(err.error_code);
    assert!(
        !code.contains(PageFaultErrorCode::PROTECTION_VIOLATION),
        "not-present fault"
    );
    assert!(!code.contains(PageFaultErrorCode::CAUSED_BY_WRITE));
    assert_eq!(page_faults(), faults + 1);
}

#[test_case]
fn page_fault_on_unmapped_write_is_caught_with_the_write_bit() {
    let addr = VirtAddr::new(0x200_0000_0123);
    let err = probe_write(addr, 7).expect_err("an unmapped write must fault");
    assert_eq!(err.addr, addr);
    let code = PageFaultErrorCode::from_bits_truncate(err.error_code);
    assert!(code.contains(PageFaultErrorCode::CAUSED_BY_WRITE));
}

#[test_case]
fn probe_of_mapped_memory_succeeds() {
    let value = 0x5Au8;
    let b = alloc::boxed::Box::new(value);
    let got = probe_read(VirtAddr::from_ptr(&*b)).expect("kernel heap is mapped");
    assert_eq!(got, value);
}

#[test_case]
fn heap_grows_past_its_first_chunk() {
    let before = heap::stats();
    // Far more than the 1 MiB first chunk.
    let mut v: Vec<u64> = Vec::new();
    v.resize(3 * 1024 * 1024 / 8, 0xdead_beef);
    let grown = heap::stats();
    assert!(
        grown.chunks > before.chunks,
        "heap grew: {before:?} -> {grown:?}"
    );
    assert!(grown.size >= before.size + 3 * 1024 * 1024);
    assert!(v.iter().all(|&x| x == 0xdead_beef));
    drop(v);
    // Many small allocations across chunks keep working.
    let boxes: Vec<alloc::boxed::Box<[u8; 256]>> = (0..2000)
        .map(|_| alloc::boxed::Box::new([1u8; 256]))
        .collect();
    assert_eq!(boxes.iter().map(|b| b[255] as usize).sum::<usize>(), 2000);
}

kernel::should_panic_test!(should_panic_test_passes_by_panicking, {
    panic!("expected");
});

kernel::should_panic_test!(failed_assertion_panics, {
    assert_eq!(1 + 1, 3, "arithmetic is broken");
});

#[test_case]
fn harness_continues_after_should_panic_tests() {
    // Runs after the two should_panic tests above: the harness resumed. Reaching this
    // line is the check; the black box keeps the assertion from being folded away.
    assert!(core::hint::black_box(true));
}
