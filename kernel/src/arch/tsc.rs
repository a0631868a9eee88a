//! The time-stamp counter, calibrated against the PIT, for benchmarks.
//!
//! Benchmarks read cycles with `rdtsc` and convert them with the frequency
//! measured here, so `BENCH` lines are in nanoseconds of guest time, as Linux's
//! clock would report them under the same QEMU.

use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::port::Port;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects and is allowed at CPL 0.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Measures the TSC frequency against PIT channel 2 (1.193182 MHz) over ~20 ms.
pub fn calibrate() -> u64 {
    const PIT_HZ: u64 = 1_193_182;
    const TICKS: u64 = PIT_HZ / 50; // 20 ms
    let mut gate: Port<u8> = Port::new(0x61);
    let mut cmd: Port<u8> = Port::new(0x43);
    let mut ch2: Port<u8> = Port::new(0x42);
    // SAFETY: ports 0x42/0x43/0x61 are the PIT and the speaker gate, used by nobody else; channel 2 is configured in one-shot mode with the speaker off.
    let cycles = unsafe {
        let g = gate.read();
        gate.write((g & !0x02) | 0x01); // gate high, speaker off
        cmd.write(0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
        ch2.write((TICKS & 0xff) as u8);
        ch2.write((TICKS >> 8) as u8);
        let start = rdtsc();
        // OUT2 (bit 5 of port 0x61) goes high when the count reaches zero.
        while gate.read() & 0x20 == 0 {}
        rdtsc() - start
    };
    let hz = cycles * PIT_HZ / TICKS;
    TSC_HZ.store(hz, Ordering::Relaxed);
    hz
}

/// The calibrated frequency (0 before [`calibrate`]).
pub fn hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Converts a cycle count to nanoseconds.
pub fn cycles_to_ns(cycles: u64) -> u64 {
    let hz = hz().max(1);
    ((cycles as u128 * 1_000_000_000) / hz as u128) as u64
}

/// Busy-waits `us` microseconds by the TSC (Linux: `udelay`). Needs [`calibrate`].
pub fn delay_us(us: u64) {
    let cycles = hz() * us / 1_000_000;
    let start = rdtsc();
    while rdtsc() - start < cycles {
        core::hint::spin_loop();
    }
}
