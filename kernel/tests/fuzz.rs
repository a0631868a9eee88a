//! The seeded syscall fuzzer (`mm::conformance::fuzz`) in the kernel: the same calls
//! and checks as on the host (`mm/tests/fuzz.rs`), on real kernel address spaces
//! whose page tables the CPU walks: the fuzzer's user byte loads and stores are real
//! accesses through CR3 that fault into the kernel's page-fault handler.
//!
//! Fewer seeds than on the host (TCG is slow); the figures line is printed before
//! the test's `ok`. A failure names its seed and call: `MM_FUZZ_SEEDS=S cargo test
//! -p mm --test fuzz` replays the same seed on the host and minimises it. As on the
//! host, `MM_FUZZ_SEEDS=A..B` (or `N`), `MM_FUZZ_CALLS=N` and `MM_FUZZ_VERBOSE=1`
//! (print every call) choose the run; here they are read when the test kernel is
//! built: `MM_FUZZ_SEEDS=551..552 MM_FUZZ_VERBOSE=1 cargo ktest --test fuzz`.
#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::run_tests)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::boxed::Box;
use alloc::sync::Arc;
use kernel::address_space::{self, AddressSpace};
use kernel::arch::extable::{ProbeFault, probe_read, probe_write};
use kernel::arch::tsc;
use kernel::{memory, serial_println};
use mm::conformance::fuzz::{self, Config};
use mm::conformance::{Harness, Space, UserFault};
use mm::frame::FrameAllocator;
use mm::mmap::MmLayout;
use x86_64::VirtAddr;

kernel::test_kernel_main!();

/// Seeds and calls per seed: about a minute under TCG.
const SEEDS: u64 = 640;
const CALLS: usize = 300;

/// The kernel level (as in `kernel/tests/mmap_api.rs`): the global frame allocator,
/// address spaces made current on this CPU, user bytes touched with fault-probing
/// loads and stores.
struct KernelHarness;

impl Harness for KernelHarness {
    fn allocator(&self) -> &'static FrameAllocator {
        memory::frames()
    }

    fn frames_in_use(&self) -> u64 {
        // Not `allocated_frames()`: the heap may grow under a seed and never shrinks.
        memory::usage().frames
    }

    fn space_with_layout(&self, layout: MmLayout) -> Box<dyn Space + '_> {
        let mm = AddressSpace::with_layout(layout).expect("no memory for an mm");
        mm.activate();
        Box::new(KernelSpace { mm })
    }
}

/// A kernel address space under test, made current whenever a user byte is touched.
struct KernelSpace {
    mm: Arc<AddressSpace>,
}

impl KernelSpace {
    fn make_current(&self) {
        if !self.mm.is_current() {
            self.mm.activate();
        }
    }
}

fn user_fault(f: ProbeFault) -> UserFault {
    UserFault {
        addr: f.addr.as_u64() as usize,
    }
}

impl Space for KernelSpace {
    fn asp(&self) -> &mm::mmap::AddressSpace {
        &self.mm
    }

    fn read_byte(&self, addr: usize) -> Result<u8, UserFault> {
        self.make_current();
        probe_read(VirtAddr::new(addr as u64)).map_err(user_fault)
    }

    fn write_byte(&self, addr: usize, value: u8) -> Result<(), UserFault> {
        self.make_current();
        probe_write(VirtAddr::new(addr as u64), value).map_err(user_fault)
    }
}

impl Drop for KernelSpace {
    fn drop(&mut self) {
        // The CPU's `current` holds a reference: give it up so the space is torn down.
        if self.mm.is_current() {
            address_space::deactivate_current();
        }
    }
}

/// A number from a build-time setting.
fn number(s: &str) -> u64 {
    s.trim()
        .parse()
        .expect("MM_FUZZ_SEEDS / MM_FUZZ_CALLS: a number, or A..B")
}

#[test_case]
fn seeded_syscall_fuzz() {
    let seeds = match option_env!("MM_FUZZ_SEEDS").filter(|s| !s.is_empty()) {
        None => 0..SEEDS,
        Some(s) => match s.split_once("..") {
            Some((a, b)) => number(a)..number(b),
            None => 0..number(s),
        },
    };
    let cfg = Config {
        seeds,
        calls: option_env!("MM_FUZZ_CALLS")
            .filter(|s| !s.is_empty())
            .map_or(CALLS, |c| number(c) as usize),
        check_global_counts: true,
        skip_known_defects: option_env!("MM_FUZZ_ALL").is_none_or(str::is_empty),
    };
    let verbose = option_env!("MM_FUZZ_VERBOSE").is_some_and(|v| !v.is_empty());
    let start = tsc::rdtsc();
    let mut observe = |seed: u64, call: usize, op: &fuzz::Op| {
        if verbose {
            serial_println!("seed {seed} call {call}: {op:x?}");
        }
    };
    match fuzz::run(&KernelHarness, &cfg, &mut observe) {
        Ok(stats) => {
            let ms = tsc::cycles_to_ns(tsc::rdtsc() - start) / 1_000_000;
            serial_println!("\n{stats}; {}.{} s", ms / 1000, ms % 1000 / 100);
        }
        Err(f) => panic!("{f}"),
    }
}
