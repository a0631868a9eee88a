//! The memory manager's page-fault entry for user (lower-half) addresses.
//!
//! The IDT's page-fault handler calls [`handle_user_fault`] for every fault on a
//! lower-half address. `Ok` means the fault was resolved and the instruction is
//! restarted; `Err` is a segmentation fault for the faulting context.

use crate::arch::idt::PageFault;

/// Why a fault could not be resolved (Linux: the `si_code` of the SIGSEGV).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segv {
    /// No mapping covers the address (`SEGV_MAPERR`).
    MapErr,
    /// A mapping exists but does not allow the access (`SEGV_ACCERR`).
    AccErr,
}

/// Resolves a fault on a user address of the current address space.
pub fn handle_user_fault(fault: &PageFault) -> Result<(), Segv> {
    // No address space is active yet: the lower half holds only what the
    // bootloader left there, and nothing may fault it in.
    let _ = fault;
    Err(Segv::MapErr)
}
