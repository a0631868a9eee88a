//! The address space's page counters: how much of it is mapped, as data, code or
//! stack, and how much is charged as committed memory.
//!
//! Linux: the `mm_struct` fields `total_vm`, `data_vm`, `exec_vm`, `stack_vm` kept by
//! `vm_stat_account()` (`mm/mmap.c`), and the pages of `VM_ACCOUNT` mappings that
//! this address space adds to `vm_committed_as` (`security_vm_enough_memory_mm()` /
//! `vm_unacct_memory()`).
//!
//! Linux updates these counters by hand at each call site (mmap, munmap, mprotect,
//! mremap, stack growth), and a missed site makes them drift. Here the VMA engine
//! updates them at the only places where a VMA enters or leaves the tree, changes its
//! range, or changes its flags while attached ([`super::MmWriteGuard`]'s link, commit,
//! detach and `vma_set_flags`), so they always equal what a walk over the VMAs would
//! count ([`VmStat::recount`] checks that). The syscall layer checks the limits
//! against them *before* it changes anything (`may_expand_vm`, the overcommit check).

use super::area::{VmFlags, VmaRef, pages};

/// Page counters of one address space (Linux: `mm->total_vm`, `data_vm`, `exec_vm`,
/// `stack_vm`, and this mm's share of `vm_committed_as`). All in pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmStat {
    /// Every mapped page (Linux: `total_vm`, `VmSize` in `/proc/PID/status`).
    pub total_vm: usize,
    /// Private writable, non-stack pages (Linux: `data_vm`, `VmData`; limited by
    /// `RLIMIT_DATA`).
    pub data_vm: usize,
    /// Executable, non-writable, non-stack pages (Linux: `exec_vm`, `VmExe`).
    pub exec_vm: usize,
    /// Stack pages (`VM_GROWSDOWN`) (Linux: `stack_vm`, `VmStk`).
    pub stack_vm: usize,
    /// Pages of `VM_ACCOUNT` mappings: the commit charge this mm holds (Linux: its
    /// part of `vm_committed_as`, `Committed_AS` in `/proc/meminfo`).
    pub committed: usize,
    /// Pages of `VM_LOCKED` mappings (Linux: `locked_vm`, `VmLck`; limited by
    /// `RLIMIT_MEMLOCK`).
    pub locked_vm: usize,
}

/// Linux: `VM_STACK` on x86 (no `VM_GROWSUP`).
const STACK: VmFlags = VmFlags::GROWSDOWN;

/// Linux: `is_exec_mapping()`.
pub fn is_exec_mapping(f: VmFlags) -> bool {
    f & (VmFlags::EXEC | VmFlags::WRITE | STACK) == VmFlags::EXEC
}

/// Linux: `is_stack_mapping()`.
pub fn is_stack_mapping(f: VmFlags) -> bool {
    f.contains(STACK) || f.contains(VmFlags::SHADOW_STACK)
}

/// Linux: `is_data_mapping()`.
pub fn is_data_mapping(f: VmFlags) -> bool {
    f & (VmFlags::WRITE | VmFlags::SHARED | STACK) == VmFlags::WRITE
}

impl VmStat {
    /// Add (`add`) or remove `npages` pages of a mapping with flags `f`. Linux:
    /// `vm_stat_account()`, plus the commit charge of `VM_ACCOUNT`.
    pub(super) fn account(&mut self, f: VmFlags, npages: usize, add: bool) {
        let upd = |c: &mut usize| {
            *c = if add {
                *c + npages
            } else {
                debug_assert!(*c >= npages, "vm_stat underflow");
                c.saturating_sub(npages)
            }
        };
        upd(&mut self.total_vm);
        if is_exec_mapping(f) {
            upd(&mut self.exec_vm);
        } else if is_stack_mapping(f) {
            upd(&mut self.stack_vm);
        } else if is_data_mapping(f) {
            upd(&mut self.data_vm);
        }
        if f.contains(VmFlags::ACCOUNT) {
            upd(&mut self.committed);
        }
        if f.contains(VmFlags::LOCKED) {
            upd(&mut self.locked_vm);
        }
    }

    /// The counters a walk over `vmas` gives (the invariant check's reference).
    pub fn recount(vmas: impl IntoIterator<Item = VmaRef>) -> VmStat {
        let mut s = VmStat::default();
        for v in vmas {
            s.account(v.flags(), pages(v.end() - v.start()), true);
        }
        s
    }
}
