//! Fault fix-ups: memory accesses that may fault and report it as a value.
//!
//! Linux's `get_user`/`copy_from_user` work the same way: the few instructions that
//! may touch a bad address are listed in an exception table, and when one of them
//! faults the page-fault handler, instead of oopsing, moves the saved instruction
//! pointer to a fix-up stub that returns an error. Here the probing functions are a
//! few lines of assembly; [`fixup_for`] is the table lookup the handler does.
//!
//! In-kernel tests use [`probe_read`] and [`probe_write`] to touch user addresses
//! and observe a segmentation fault as an `Err` instead of a kernel panic.

use core::arch::global_asm;
use core::sync::atomic::Ordering;
use x86_64::VirtAddr;

use crate::percpu::this_block;

// Each probe (one byte, or an aligned 8-byte word: a single access, so another CPU's
// zap or copy sees it whole or not at all): one access instruction that may fault, then `edx = 0; ret`.
// The fix-up stub returns `eax = 0, edx = 1`. The pair (rax, rdx) is the
// SysV return of a 16-byte `#[repr(C)]` struct, read as `ProbeRet` below.
global_asm!(
    ".pushsection .text.mm_probe, \"ax\"",
    ".global mm_probe_read_u8, mm_probe_read_u8_insn, mm_probe_read_u8_fixup",
    "mm_probe_read_u8:",
    "mm_probe_read_u8_insn:",
    "    movzx eax, byte ptr [rdi]",
    "    xor edx, edx",
    "    ret",
    "mm_probe_read_u8_fixup:",
    "    xor eax, eax",
    "    mov edx, 1",
    "    ret",
    ".global mm_probe_write_u8, mm_probe_write_u8_insn, mm_probe_write_u8_fixup",
    "mm_probe_write_u8:",
    "mm_probe_write_u8_insn:",
    "    mov byte ptr [rdi], sil",
    "    xor eax, eax",
    "    xor edx, edx",
    "    ret",
    "mm_probe_write_u8_fixup:",
    "    xor eax, eax",
    "    mov edx, 1",
    "    ret",
    ".global mm_probe_read_u64, mm_probe_read_u64_insn, mm_probe_read_u64_fixup",
    "mm_probe_read_u64:",
    "mm_probe_read_u64_insn:",
    "    mov rax, qword ptr [rdi]",
    "    xor edx, edx",
    "    ret",
    "mm_probe_read_u64_fixup:",
    "    xor eax, eax",
    "    mov edx, 1",
    "    ret",
    ".global mm_probe_write_u64, mm_probe_write_u64_insn, mm_probe_write_u64_fixup",
    "mm_probe_write_u64:",
    "mm_probe_write_u64_insn:",
    "    mov qword ptr [rdi], rsi",
    "    xor eax, eax",
    "    xor edx, edx",
    "    ret",
    "mm_probe_write_u64_fixup:",
    "    xor eax, eax",
    "    mov edx, 1",
    "    ret",
    ".popsection",
);

#[repr(C)]
struct ProbeRet {
    value: u64,
    faulted: u64,
}

unsafe extern "C" {
    fn mm_probe_read_u8(addr: u64) -> ProbeRet;
    fn mm_probe_read_u8_insn();
    fn mm_probe_read_u8_fixup();
    fn mm_probe_write_u8(addr: u64, value: u64) -> ProbeRet;
    fn mm_probe_write_u8_insn();
    fn mm_probe_write_u8_fixup();
    fn mm_probe_read_u64(addr: u64) -> ProbeRet;
    fn mm_probe_read_u64_insn();
    fn mm_probe_read_u64_fixup();
    fn mm_probe_write_u64(addr: u64, value: u64) -> ProbeRet;
    fn mm_probe_write_u64_insn();
    fn mm_probe_write_u64_fixup();
}

/// What the page-fault handler recorded when it redirected a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeFault {
    /// The faulting address (CR2).
    pub addr: VirtAddr,
    /// The raw page-fault error code (present, write, user, ... bits).
    pub error_code: u64,
}

// The last fix-up's details live in the CPU's own block (`CpuBlock::fault_addr`,
// `fault_code`): a probe and its fix-up run back to back on one CPU, with nothing
// in between on that CPU that could probe, so one slot per CPU is exact.

/// The fix-up address for a faulting instruction, if it is one of the probes.
/// Called by the page-fault handler with the saved instruction pointer.
pub fn fixup_for(rip: VirtAddr, addr: VirtAddr, error_code: u64) -> Option<VirtAddr> {
    let rip = rip.as_u64();
    let table: [(u64, u64); 4] = [
        (
            mm_probe_read_u8_insn as *const () as u64,
            mm_probe_read_u8_fixup as *const () as u64,
        ),
        (
            mm_probe_write_u8_insn as *const () as u64,
            mm_probe_write_u8_fixup as *const () as u64,
        ),
        (
            mm_probe_read_u64_insn as *const () as u64,
            mm_probe_read_u64_fixup as *const () as u64,
        ),
        (
            mm_probe_write_u64_insn as *const () as u64,
            mm_probe_write_u64_fixup as *const () as u64,
        ),
    ];
    let (_, fixup) = table.iter().find(|(insn, _)| *insn == rip)?;
    let cpu = this_block();
    cpu.fault_addr.store(addr.as_u64(), Ordering::Relaxed);
    cpu.fault_code.store(error_code, Ordering::Relaxed);
    Some(VirtAddr::new(*fixup))
}

fn last_fault() -> ProbeFault {
    let cpu = this_block();
    ProbeFault {
        addr: VirtAddr::new_truncate(cpu.fault_addr.load(Ordering::Relaxed)),
        error_code: cpu.fault_code.load(Ordering::Relaxed),
    }
}

/// Reads one byte at `addr`; a fault the memory manager cannot resolve comes back
/// as `Err` (Linux: `get_user`).
pub fn probe_read(addr: VirtAddr) -> Result<u8, ProbeFault> {
    // SAFETY: the probe only reads `addr`; if that faults, the page-fault handler resumes at the fix-up stub, which returns normally. No Rust reference to the memory is created, so no aliasing rule is involved.
    let ret = unsafe { mm_probe_read_u8(addr.as_u64()) };
    if ret.faulted == 0 {
        Ok(ret.value as u8)
    } else {
        Err(last_fault())
    }
}

/// Writes one byte at `addr`; an unresolvable fault comes back as `Err`
/// (Linux: `put_user`).
///
/// Writing is safe in the Rust sense only for addresses no Rust object lives at:
/// the caller passes user (lower-half) addresses.
pub fn probe_write(addr: VirtAddr, value: u8) -> Result<(), ProbeFault> {
    if addr.as_u64() >= 0x8000_0000_0000 {
        // Kernel memory is never probed for writing: it could corrupt Rust objects.
        return Err(ProbeFault {
            addr,
            error_code: u64::MAX,
        });
    }
    // SAFETY: `addr` is a lower-half (user) address, where no kernel object lives; a fault resumes at the fix-up stub as in `probe_read`.
    let ret = unsafe { mm_probe_write_u8(addr.as_u64(), value as u64) };
    if ret.faulted == 0 {
        Ok(())
    } else {
        Err(last_fault())
    }
}

/// Reads the 8-byte word at `addr` (8-aligned) with one instruction; a fault the
/// memory manager cannot resolve comes back as `Err` (Linux: `get_user` of a `u64`).
pub fn probe_read_u64(addr: VirtAddr) -> Result<u64, ProbeFault> {
    debug_assert!(addr.is_aligned(8u64), "probe_read_u64 of an unaligned word");
    // SAFETY: as in `probe_read`: the probe only reads `addr`, and a fault resumes at the fix-up stub.
    let ret = unsafe { mm_probe_read_u64(addr.as_u64()) };
    if ret.faulted == 0 {
        Ok(ret.value)
    } else {
        Err(last_fault())
    }
}

/// Writes the 8-byte word `value` at `addr` (8-aligned, lower half) with one
/// instruction; an unresolvable fault comes back as `Err` (Linux: `put_user` of a
/// `u64`). The same caveat as [`probe_write`]: user addresses only.
pub fn probe_write_u64(addr: VirtAddr, value: u64) -> Result<(), ProbeFault> {
    debug_assert!(
        addr.is_aligned(8u64),
        "probe_write_u64 of an unaligned word"
    );
    if addr.as_u64() >= 0x8000_0000_0000 {
        return Err(ProbeFault {
            addr,
            error_code: u64::MAX,
        });
    }
    // SAFETY: a lower-half (user) address, where no kernel object lives; a fault resumes at the fix-up stub as in `probe_read`.
    let ret = unsafe { mm_probe_write_u64(addr.as_u64(), value) };
    if ret.faulted == 0 {
        Ok(())
    } else {
        Err(last_fault())
    }
}
