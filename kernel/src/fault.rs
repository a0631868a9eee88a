//! The memory manager's page-fault entry for user (lower-half) addresses.
//!
//! The IDT's page-fault handler calls [`handle_user_fault`] for every fault on a
//! lower-half address. `Ok` means the fault was resolved and the instruction is
//! restarted; `Err` is a segmentation fault for the faulting context.
//!
//! The VMA path comes first: [`mm::mmap::AddressSpace::handle_fault`] (Linux:
//! `handle_mm_fault`, with the lock-free VMA lookup) does demand paging, copy on
//! write and stack growth. Where no VMA covers the address, the page tables may
//! still hold a mapping installed directly (page-table tests, kernel-internal
//! mappings): a fault there is resolved only if it is spurious (the tables already
//! allow the access, a stale TLB entry: Linux's `flush_tlb_fix_spurious_fault`).
//! Everything else is a segmentation fault: `MapErr` where nothing is mapped,
//! `AccErr` where a mapping forbids the access, `Bus` for SIGBUS.

use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::structures::idt::PageFaultErrorCode as Code;
use x86_64::structures::paging::PageTableFlags as F;

use crate::address_space;
use crate::arch::idt::PageFault;
use crate::percpu::{MAX_CPUS, PerCpu};
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

/// The last address resolved as spurious on each CPU: a second spurious fault at
/// the same address in a row means the tables do not really allow the access
/// (e.g. a reserved bit), and it must not loop forever.
static LAST_SPURIOUS: PerCpu<AtomicU64> =
    PerCpu::new([const { AtomicU64::new(u64::MAX) }; MAX_CPUS]);

/// Resolves a fault on a user address of the current address space.
pub fn handle_user_fault(fault: &PageFault) -> Result<(), Segv> {
    let mm = address_space::current().ok_or(Segv::MapErr)?;
    let access = if fault.code.contains(Code::INSTRUCTION_FETCH) {
        Access::Exec
    } else if fault.code.contains(Code::CAUSED_BY_WRITE) {
        Access::Write
    } else {
        Access::Read
    };
    match mm.handle_fault(fault.addr.as_u64() as usize, access) {
        Ok(()) => return Ok(()),
        Err(FaultError::AccErr) => return Err(Segv::AccErr),
        Err(FaultError::Bus | FaultError::Oom) => return Err(Segv::Bus),
        Err(FaultError::MapErr) => {}
    }
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
