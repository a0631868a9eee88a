//! Syscall-shaped API of `mm::mmap::AddressSpace` over simulated memory: errno cases
//! and their order (Linux's), placement, MAP_FIXED, munmap/mprotect/madvise, maps and
//! PROCMAP_QUERY, and frame/VMA baselines.
//!
//! The cases live in `mm::conformance::syscalls`, shared with the in-kernel runner
//! (`kernel/tests/mmap_api.rs`); this file runs each as one host test (mremap's are in
//! `mmap_mremap.rs`).

use mm::conformance::host::HostHarness;
use mm::conformance::syscalls;
/// One `#[test]` per shared syscall case, run with a fresh host harness.
macro_rules! host_tests {
    (() syscalls: [$($name:ident),* $(,)?], $($other_groups:tt)*) => {
        $(
            #[test]
            fn $name() {
                syscalls::$name(&HostHarness::new());
            }
        )*
    };
}
mm::conformance_cases!(host_tests);
