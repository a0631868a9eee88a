//! The memory manager's page-fault entry for user (lower-half) addresses.
//!
//! The IDT's page-fault handler calls [`handle_user_fault`] for every fault on a
//! lower-half address. `Ok` means the fault was resolved and the instruction is
//! restarted; `Err` is a segmentation fault for the faulting context.
//!
//! Today the entry resolves spurious faults (the page tables already allow the
//! access: a stale TLB entry, Linux's `flush_tlb_fix_spurious_fault`) and reports
//! everything else as a segmentation fault: `MapErr` where nothing is mapped,
//! `AccErr` where a mapping forbids the access.

use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::structures::idt::PageFaultErrorCode as Code;
use x86_64::structures::paging::PageTableFlags as F;

use crate::address_space;
use crate::arch::idt::PageFault;
use crate::percpu::{MAX_CPUS, PerCpu};

/// Why a fault could not be resolved (Linux: the `si_code` of the SIGSEGV).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segv {
    /// No mapping covers the address (`SEGV_MAPERR`).
    MapErr,
    /// A mapping exists but does not allow the access (`SEGV_ACCERR`).
    AccErr,
}

/// The last address resolved as spurious on each CPU: a second spurious fault at
/// the same address in a row means the tables do not really allow the access
/// (e.g. a reserved bit), and it must not loop forever.
static LAST_SPURIOUS: PerCpu<AtomicU64> =
    PerCpu::new([const { AtomicU64::new(u64::MAX) }; MAX_CPUS]);

/// Resolves a fault on a user address of the current address space.
pub fn handle_user_fault(fault: &PageFault) -> Result<(), Segv> {
    let mm = address_space::current().ok_or(Segv::MapErr)?;
    let addr = fault.addr;
    let page = addr.align_down(4096u64).as_u64();
    let allowed = mm.with_tables(|t| {
        let tr = t.translate(addr).ok_or(Segv::MapErr)?;
        let f = tr.flags;
        let ok = f.contains(F::PRESENT)
            && (!fault.code.contains(Code::CAUSED_BY_WRITE) || f.contains(F::WRITABLE))
            && (!fault.code.contains(Code::INSTRUCTION_FETCH) || !f.contains(F::NO_EXECUTE))
            && (!fault.code.contains(Code::USER_MODE) || f.contains(F::USER_ACCESSIBLE));
        if !ok {
            return Err(Segv::AccErr);
        }
        t.flush_page(addr);
        Ok(())
    });
    let last = LAST_SPURIOUS.get();
    match allowed {
        Ok(()) if last.swap(page, Ordering::Relaxed) != page => Ok(()),
        Ok(()) => {
            last.store(u64::MAX, Ordering::Relaxed);
            Err(Segv::AccErr)
        }
        Err(e) => {
            last.store(u64::MAX, Ordering::Relaxed);
            Err(e)
        }
    }
}
