//! The mmap path with `.mmap_prepare` / legacy `.mmap` (Linux: `__mmap_region()`,
//! `mm/vma.c`; `compat_vma_mmap_prepare()`, `mm/util.c`): hook ordering,
//! descriptor fields, failure unwinding, secretmem merge, ENODEV, the compat layer
//! through a stacking file, device PFN mappings, and the EACCES/EPERM rules of
//! `do_mmap()`.
//!
//! The cases live in `mm::conformance::file`, shared with the in-kernel runner
//! (`kernel/tests/mmap_api.rs`); this file runs each as one host test.

use mm::conformance::file;
use mm::conformance::host::HostHarness;

/// One `#[test]` per shared file case, run with a fresh host harness.
macro_rules! host_tests {
    (() syscalls: [$($_syscall_case:ident),* $(,)?], file: [$($name:ident),* $(,)?], $($other_groups:tt)*) => {
        $(
            #[test]
            fn $name() {
                file::$name(&HostHarness::new());
            }
        )*
    };
}
mm::conformance_cases!(host_tests);
