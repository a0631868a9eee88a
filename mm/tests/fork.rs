//! fork of an address space on the host: the `fork` group of the conformance suite
//! (`mm::conformance::fork`, also run in the kernel by `kernel/tests/fork.rs`), one
//! host test per case.

use mm::conformance::fork;
use mm::conformance::host::HostHarness;

/// One `#[test]` per shared fork case, run with a fresh host harness.
macro_rules! host_tests {
    (() syscalls: $_s:tt, file: $_f:tt, mremap: $_m:tt, fork: [$($name:ident),* $(,)?], $($other_groups:tt)*) => {
        $(
            #[test]
            fn $name() {
                fork::$name(&HostHarness::new());
            }
        )*
    };
}
mm::conformance_cases!(host_tests);
