//! Regression tests for the syscall-layer defects of the fuzzing / OOM-sweep / thread
//! stress round: the shared cases of `mm::conformance::regress` (also run in the kernel
//! by `kernel/tests/mmap_api.rs`), one host test each.

use mm::conformance::host::HostHarness;
use mm::conformance::regress;

/// One `#[test]` per shared regression case, run with a fresh host harness.
macro_rules! host_tests {
    (() syscalls: $_s:tt, file: $_f:tt, mremap: $_m:tt, fork: $_k:tt, regress: [$($name:ident),* $(,)?] $(,)?) => {
        $(
            #[test]
            fn $name() {
                regress::$name(&HostHarness::new());
            }
        )*
    };
}
mm::conformance_cases!(host_tests);
