//! CPU identity and control-register set-up.

use x86_64::registers::control::{Cr0, Cr0Flags};
use x86_64::registers::model_specific::{Efer, EferFlags};

/// The initial local-APIC id of the CPU we run on (CPUID leaf 1, EBX[31:24]).
///
/// Used once per CPU at bring-up; afterwards the CPU's index and APIC id come from
/// its per-CPU block ([`crate::percpu`]), without CPUID.
pub fn initial_apic_id() -> u32 {
    // `__cpuid` is safe on every x86_64 CPU (CPUID always exists in long mode).
    let leaf1 = core::arch::x86_64::__cpuid(1);
    leaf1.ebx >> 24
}

/// Turns on the paging features the memory manager relies on:
/// - `EFER.NXE`, so the NX bit in page-table entries is honoured (and legal);
/// - `CR0.WP`, so kernel-mode writes respect read-only entries: copy-on-write and
///   write faults on read-only mappings must trigger even when the kernel touches
///   user memory on a process's behalf.
pub fn enable_paging_features() {
    // SAFETY: setting NXE only makes the NX bit meaningful; the bootloader's tables either don't use it or rely on it being set. Preserves every other EFER bit.
    unsafe { Efer::update(|f| f.insert(EferFlags::NO_EXECUTE_ENABLE)) };
    // SAFETY: WP makes supervisor writes to read-only pages fault; the kernel never writes through read-only mappings of its own (its data is mapped writable).
    unsafe { Cr0::update(|f| f.insert(Cr0Flags::WRITE_PROTECT)) };
}
