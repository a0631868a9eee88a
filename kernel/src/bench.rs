//! Benchmark support: timing loops that print `BENCH <name> <ns_per_op> <ops>`.
//!
//! Cycles come from `rdtsc` and are converted with the PIT-calibrated TSC
//! frequency, so the figures are guest nanoseconds, comparable op for op with
//! Linux measured under the same QEMU flags. Speed is only ever measured here,
//! never asserted in tests.

use crate::arch::tsc;
use crate::serial_println;

/// Runs `op` `ops` times (after a short warm-up) and prints one `BENCH` line.
/// Returns nanoseconds per operation.
pub fn run(name: &str, ops: u64, mut op: impl FnMut(u64)) -> u64 {
    for i in 0..ops.min(64) {
        op(i);
    }
    let start = tsc::rdtsc();
    for i in 0..ops {
        op(i);
    }
    let cycles = tsc::rdtsc() - start;
    let ns = tsc::cycles_to_ns(cycles) / ops.max(1);
    report(name, ns, ops);
    ns
}

/// Prints one `BENCH` line for a figure measured elsewhere.
pub fn report(name: &str, ns_per_op: u64, ops: u64) {
    serial_println!("BENCH {name} {ns_per_op} {ops}");
}
