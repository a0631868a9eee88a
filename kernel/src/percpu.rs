//! Per-CPU data behind one small API.
//!
//! A [`PerCpu<T>`] holds one `T` per possible CPU, indexed by the CPU's id
//! ([`crate::arch::cpu::current_id`]). Only the boot CPU runs today; when
//! application processors start, every per-CPU value is already separate, so no
//! caller changes.

use crate::arch::cpu;

/// Most CPUs the kernel supports: the memory manager's, whose page-table CPU mask
/// (Linux: `mm_cpumask`) has one bit per CPU.
pub use mm::paging::MAX_CPUS;

/// One value per CPU.
pub struct PerCpu<T> {
    slots: [T; MAX_CPUS],
}

impl<T> PerCpu<T> {
    /// The per-CPU values, `slots[cpu]` for CPU `cpu` (a `const` array, so that a
    /// `PerCpu` can be a `static`).
    pub const fn new(slots: [T; MAX_CPUS]) -> Self {
        Self { slots }
    }

    /// This CPU's value. Values that change must be `Sync` cells (atomics, locks):
    /// another CPU may read ours (e.g. a TLB shootdown looking at `current`).
    pub fn get(&self) -> &T {
        &self.slots[this_cpu()]
    }

    /// CPU `cpu`'s value.
    pub fn on(&self, cpu: usize) -> &T {
        &self.slots[cpu]
    }
}

/// The index of the CPU we run on, always `< MAX_CPUS`.
pub fn this_cpu() -> usize {
    (cpu::current_id() as usize) % MAX_CPUS
}
