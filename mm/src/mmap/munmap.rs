//! `munmap(2)` and the unmap every other path uses (`do_vmi_munmap`): range check,
//! split and detach, zap, free.
//!
//! Linux: `mm/vma.c` (`do_vmi_munmap`, `do_vmi_align_munmap`).

use super::{AddressSpace, page_align};
use crate::errno::Errno;
use crate::vma::{MmWriteGuard, PAGE_SIZE, VmFlags};

impl AddressSpace {
    /// `munmap(2)`. EINVAL for an unaligned start, a range beyond TASK_SIZE or an empty
    /// length; ENOMEM if a hole punched in one VMA would exceed `max_map_count`;
    /// unmapping holes succeeds. Linux: `do_vmi_munmap()`.
    pub fn munmap(&self, addr: usize, len: usize) -> Result<(), Errno> {
        let len = page_align(len).ok_or(Errno::EINVAL)?;
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let mut g = self.mm.write_lock();
        self.do_munmap(&mut g, addr, len)
    }

    /// Unmap `[start, start + len)` under the mmap write lock (Linux:
    /// `do_vmi_munmap()`). The range check comes first, before any addition: EINVAL
    /// for an unaligned start or a range reaching past `task_size`, whatever the
    /// caller (munmap, mmap's MAP_FIXED, mremap's shrink and moves all come through
    /// here). Then the VMAs are split and detached, the page tables zapped and the VMAs
    /// freed. Lock order: the VMAs are write-locked (waiting for their readers) before
    /// the page-table lock is taken for the zap.
    pub(super) fn do_munmap(
        &self,
        g: &mut MmWriteGuard<'_>,
        start: usize,
        len: usize,
    ) -> Result<(), Errno> {
        let ts = self.layout.task_size;
        if !start.is_multiple_of(PAGE_SIZE) || start > ts || len > ts - start {
            return Err(Errno::EINVAL);
        }
        let len = page_align(len).ok_or(Errno::EINVAL)?;
        if len == 0 {
            return Ok(());
        }
        let end = start + len;
        self.check_pt_range(start, end)?;
        let d = g.detach_range(start, end)?;
        if d.is_empty() {
            return Ok(());
        }
        // hugetlb VMAs: unshare and zap under their locks first (Linux:
        // __unmap_hugepage_range_final); the zap below then finds only private tables.
        // (Nothing is allocated here: the VMAs are already detached.)
        let stable: &MmWriteGuard<'_> = g;
        self.zap_hugetlb_list(
            d.iter()
                .filter(|v| v.flags().contains(VmFlags::HUGETLB))
                .map(|v| (v, v.file(stable).and_then(|f| crate::file::lookup(&f)))),
            start,
            end,
        );
        let zapped = self.zap_unmapped(g, start, end);
        g.remove_vmas(d);
        zapped
    }
}
