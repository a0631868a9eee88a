//! fork of an address space on real page tables: the `fork` group of the conformance
//! suite (`mm::conformance::fork`: merge scenarios after a fork, copy-on-write with
//! exact copy counts, reuse after the child exits, DONTFORK/WIPEONFORK, PFN mappings,
//! teardown in either order, 10,000 VMAs, 16 MiB touched), with parent and child
//! loaded in CR3 in turn and every user byte a real load or store through the
//! page-fault handler, so each copy-on-write is a real write-protection fault. The
//! harness checks frames, page-table pages and VMAs against the baseline after each
//! test.
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

/// exec on real page tables: the current space (with touched pages) is replaced by a
/// fresh one whose stack holds argc/argv/envp/auxv, read back with real loads; the
/// old space's frames come back once it is switched away from.
#[test_case]
fn exec_replaces_the_current_space_and_frees_the_old_one() {
    use kernel::address_space;
    use kernel::arch::extable::probe_read;
    use mm::mmap::{
        ElfAux, ExecArgs, ExecStack, MAP_ANONYMOUS, MAP_PRIVATE, MmLayout, PROT_READ, PROT_WRITE,
        STACK_TOP, auxv,
    };
    use x86_64::VirtAddr;

    let base = kernel::memory::usage().frames;
    let old = address_space::new_user_space(MmLayout::default()).unwrap();
    address_space::activate(&old);
    let x = old
        .mmap(
            0,
            16 * 4096,
            PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS,
            None,
            0,
        )
        .unwrap();
    for i in 0..16 {
        old.copy_to_user(x + i * 4096, &[1]).unwrap();
    }
    drop(old);
    let argv: [&[u8]; 2] = [b"/bin/sh", b"-c"];
    let envp: [&[u8]; 1] = [b"TERM=vt100"];
    let args = ExecArgs {
        filename: b"/bin/sh",
        argv: &argv,
        envp: &envp,
        random: [7; 16],
        platform: Some(b"x86_64"),
        stack_top: STACK_TOP - (3 << 20) - 0x123,
        exec_stack: ExecStack::Default,
        aux: ElfAux::default(),
    };
    let (mm, img) = address_space::exec(MmLayout::default(), &args).unwrap();
    let word = |a: usize| {
        let mut b = [0u8; 8];
        for (i, x) in b.iter_mut().enumerate() {
            *x = probe_read(VirtAddr::new((a + i) as u64)).unwrap();
        }
        u64::from_le_bytes(b)
    };
    assert_eq!(img.sp % 16, 0);
    assert_eq!(word(img.sp), 2, "argc");
    let argv0 = word(img.sp + 8) as usize;
    assert_eq!(probe_read(VirtAddr::new(argv0 as u64)).unwrap(), b'/');
    assert_eq!(word(img.sp + 24), 0, "argv ends");
    assert_eq!(word(img.sp + 40), 0, "envp ends");
    assert_eq!(word(img.sp + 48), auxv::AT_MINSIGSTKSZ);
    mm.validate_mm().unwrap();
    address_space::deactivate_current();
    drop(mm);
    assert_eq!(
        kernel::memory::usage().frames,
        base,
        "old and new space freed"
    );
}
