//! The memory manager's page-fault entry for user (lower-half) addresses.
//!
//! The IDT's page-fault handler calls [`handle_user_fault`] for every fault on a
//! lower-half address. `Ok` means the fault was resolved and the instruction is
//! restarted; `Err` is a segmentation fault for the faulting context.
//!
//! Every user fault goes to the current address space's
//! [`mm::mmap::AddressSpace::handle_fault`] (Linux: `do_user_addr_fault` →
//! `handle_mm_fault`, with the lock-free VMA lookup): demand paging, copy on write,
//! stack growth, and spurious faults, where the PTE already allows the access (a
//! stale TLB entry after a permission upgrade that skipped the flush): that path
//! returns `Ok` without a flush, as Linux's `handle_pte_fault` does on x86, where
//! `flush_tlb_fix_spurious_fault` is empty because the fault itself dropped the stale
//! entry (SDM Vol. 3A §4.10.4.1). There is no path for mappings outside a VMA: an
//! address no VMA covers is `SEGV_MAPERR`, as in Linux. With no current address
//! space, every user fault is `MapErr`.

use x86_64::structures::idt::PageFaultErrorCode as Code;

use crate::address_space;
use crate::arch::idt::PageFault;
use mm::mmap::{Access, FaultError};

/// Why a fault could not be resolved (Linux: the `si_code` of the SIGSEGV).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segv {
    /// No mapping covers the address (`SEGV_MAPERR`).
    MapErr,
    /// A mapping exists but does not allow the access (`SEGV_ACCERR`).
    AccErr,
    /// SIGBUS: beyond the end of a file, or out of memory for the fault.
    Bus,
}

/// Resolves a fault on a user address of the current address space.
pub fn handle_user_fault(fault: &PageFault) -> Result<(), Segv> {
    crate::percpu::this_block()
        .user_faults
        .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    let access = if fault.code.contains(Code::INSTRUCTION_FETCH) {
        Access::Exec
    } else if fault.code.contains(Code::CAUSED_BY_WRITE) {
        Access::Write
    } else {
        Access::Read
    };
    address_space::with_current(|mm| mm.handle_fault(fault.addr.as_u64() as usize, access))
        .ok_or(Segv::MapErr)?
        .map_err(|e| match e {
            FaultError::MapErr => Segv::MapErr,
            FaultError::AccErr => Segv::AccErr,
            FaultError::Bus | FaultError::Oom => Segv::Bus,
        })
}
