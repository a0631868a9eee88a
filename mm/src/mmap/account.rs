//! Accounting checks before an address space grows: `RLIMIT_AS` / `RLIMIT_DATA`
//! (`may_expand_vm`) and the overcommit heuristic. The counters themselves
//! ([`VmStat`]) are kept by the VMA engine.
//!
//! Linux: `mm/mmap.c` (`may_expand_vm`, `vm_stat_account`), `mm/util.c`
//! (`__vm_enough_memory`).

use super::AddressSpace;
use crate::errno::Errno;
use crate::vma::stat::is_data_mapping;
use crate::vma::{MmWriteGuard, PAGE_SIZE, VmFlags, VmStat};

impl AddressSpace {
    /// The page counters (Linux: `mm->total_vm`, `data_vm`, `exec_vm`, `stack_vm`, and
    /// the commit charge of `VM_ACCOUNT` mappings).
    pub fn vm_stat(&self) -> VmStat {
        self.mm.read_lock().vm_stat()
    }

    /// May the address space grow by `npages` pages of a mapping with flags `flags`?
    /// Linux: `may_expand_vm()`: `RLIMIT_AS` bounds every page, `RLIMIT_DATA` the
    /// private writable ones.
    pub(super) fn may_expand_vm(
        &self,
        g: &MmWriteGuard<'_>,
        flags: VmFlags,
        npages: usize,
    ) -> bool {
        let s = g.vm_stat();
        let limit = |bytes: usize| bytes / PAGE_SIZE;
        if s.total_vm.saturating_add(npages) > limit(self.layout.as_limit) {
            return false;
        }
        !(is_data_mapping(flags)
            && s.data_vm.saturating_add(npages) > limit(self.layout.data_limit))
    }

    /// Can `npages` more pages be committed? Linux: `security_vm_enough_memory_mm()`
    /// under the default `OVERCOMMIT_GUESS` policy (`__vm_enough_memory`): a single
    /// charge larger than all of RAM (there is no swap) is refused with ENOMEM; below
    /// that, overcommit is allowed. The charge itself is the `VM_ACCOUNT` flag of the
    /// VMA, which the engine counts in [`VmStat::committed`].
    pub(super) fn vm_enough_memory(&self, npages: usize) -> Result<(), Errno> {
        let ram = self.alloc.total_frames();
        if npages as u64 > ram {
            return Err(Errno::ENOMEM);
        }
        Ok(())
    }
}
