//! TLB shootdown: the remote half of the memory manager's flushes (Linux:
//! `arch/x86/mm/tlb.c`, `native_flush_tlb_multi`, `flush_tlb_func`,
//! `flush_tlb_kernel_range`).
//!
//! `mm::paging::tlb::HwTlb` flushes the local CPU and then calls
//! [`flush_tlb_multi`] (registered by [`init`]), which cross-calls the other CPUs of the
//! address space's CPU mask and waits until each has run the same flush: per-page
//! `invlpg` up to the 33-page ceiling, a full flush above it, decided once by the
//! initiator for every CPU. Kernel-range and global flushes go to every online CPU.
//!
//! The CPU mask: a CPU that switches CR3 away from a space leaves its mask
//! (`PageTableRoot::deactivate`, called by `address_space::activate` and
//! `deactivate_current`), so it gets no more IPIs for it; without PCIDs its CR3 load
//! dropped every entry of the old space. This is the simple rule, not Linux's lazy TLB
//! (which keeps the bit and skips the CR3 switch for kernel threads): there are no
//! kernel threads borrowing a user space here.

use core::sync::atomic::Ordering;
use mm::paging::tlb::{FlushKind, flush_local};

use crate::percpu::{this_block, this_cpu};
use crate::smp;

/// First address of the kernel half.
const KERNEL_HALF: u64 = 0xffff_8000_0000_0000;

/// Registers [`flush_tlb_multi`] with the memory manager (boot CPU, before the APs
/// start: from then on every flush reaches them).
pub fn init() {
    mm::paging::tlb::set_flush_tlb_multi(flush_tlb_multi);
}

/// True if `kind` may drop translations every CPU shares (global or kernel-half).
fn is_kernel(kind: FlushKind) -> bool {
    match kind {
        FlushKind::All { global } => global,
        FlushKind::Pages { start, .. } => start.as_u64() >= KERNEL_HALF,
    }
}

/// Performs `kind` on every other online CPU in `cpus` (all of them for kernel
/// flushes) and returns when all have (Linux: `native_flush_tlb_multi` with
/// `wait = true`).
pub fn flush_tlb_multi(cpus: u64, kind: FlushKind) {
    let online = smp::online_mask();
    let targets = if is_kernel(kind) {
        online
    } else {
        cpus & online
    };
    let others = targets & !(1u64 << this_cpu());
    if others == 0 {
        return;
    }
    smp::call::smp_call_function_many(others, flush_func, &kind as *const FlushKind as usize, true);
}

/// What a target runs (Linux: `flush_tlb_func`).
fn flush_func(info: usize) {
    // SAFETY: `info` points at the initiator's `FlushKind`, alive until every target answered (the initiator waits).
    let kind = unsafe { *(info as *const FlushKind) };
    flush_local(kind);
    this_block()
        .tlb_remote_flushes
        .fetch_add(1, Ordering::Relaxed);
}
