//! Where a new mapping goes: the hint, the top-down search below `mmap_base`, the
//! bottom-up fallback, the stack guard gap.
//!
//! Linux: `mm/mmap.c` (`__get_unmapped_area`, `arch_get_unmapped_area_topdown`,
//! `vm_unmapped_area`), `security_mmap_addr`.

use super::{AddressSpace, page_align, vm_start_gap};
use crate::errno::Errno;
use crate::vma::{MmWriteGuard, PAGE_SIZE};

impl AddressSpace {
    /// Is `[addr, addr+len)` free, including the guard gap below a GROWSDOWN VMA?
    pub(super) fn range_fits(&self, g: &MmWriteGuard<'_>, addr: usize, len: usize) -> bool {
        let l = &self.layout;
        if addr < l.mmap_min_addr || l.task_size - len < addr {
            return false;
        }
        let (next, prev) = g.find_vma_prev(addr);
        next.is_none_or(|n| addr + len <= vm_start_gap(n, l.stack_guard_gap))
            && prev.is_none_or(|p| addr >= p.end())
    }

    pub(super) fn search_top_down(
        &self,
        g: &MmWriteGuard<'_>,
        len: usize,
        low: usize,
        high: usize,
        align: usize,
    ) -> Option<usize> {
        let mut hi = high;
        loop {
            let a = g.view().gap_top_down(len, low, hi, align)?;
            match g.vma_next_from(a + len) {
                Some(n) if a + len > vm_start_gap(n, self.layout.stack_guard_gap) => {
                    hi = hi.min(vm_start_gap(n, self.layout.stack_guard_gap));
                }
                _ => return Some(a),
            }
        }
    }

    pub(super) fn search_bottom_up(
        &self,
        g: &MmWriteGuard<'_>,
        len: usize,
        low: usize,
        high: usize,
        align: usize,
    ) -> Option<usize> {
        let mut lo = low;
        loop {
            let a = g.view().gap_bottom_up(len, lo, high, align)?;
            match g.vma_next_from(a + len) {
                Some(n) if a + len > vm_start_gap(n, self.layout.stack_guard_gap) => {
                    lo = n.end();
                }
                _ => return Some(a),
            }
        }
    }

    /// Linux: `__get_unmapped_area()` + `arch_get_unmapped_area_topdown()` +
    /// `security_mmap_addr()`, in that order.
    pub(super) fn get_unmapped_area(
        &self,
        g: &MmWriteGuard<'_>,
        addr: usize,
        len: usize,
        fixed: bool,
    ) -> Result<usize, Errno> {
        self.get_unmapped_area_aligned(g, addr, len, fixed, PAGE_SIZE)
    }

    /// [`get_unmapped_area`](Self::get_unmapped_area) for mappings whose start must be
    /// a multiple of `align` (a power of two): hugetlb's `hugetlb_get_unmapped_area`,
    /// which refuses an unaligned MAP_FIXED address or length (EINVAL), aligns a hint
    /// down, and searches for an aligned gap.
    pub(super) fn get_unmapped_area_aligned(
        &self,
        g: &MmWriteGuard<'_>,
        addr: usize,
        len: usize,
        fixed: bool,
        align: usize,
    ) -> Result<usize, Errno> {
        if align > PAGE_SIZE
            && (!len.is_multiple_of(align) || (fixed && !addr.is_multiple_of(align)))
        {
            return Err(Errno::EINVAL);
        }
        let l = &self.layout;
        if len > l.task_size {
            return Err(Errno::ENOMEM);
        }
        if len > l.task_size - l.mmap_min_addr {
            return Err(Errno::ENOMEM);
        }
        let addr = if fixed {
            addr
        } else {
            let mut found = None;
            if addr != 0
                && let Some(a) = page_align(addr).map(|a| {
                    if align > PAGE_SIZE {
                        addr & !(align - 1)
                    } else {
                        a
                    }
                })
                && self.range_fits(g, a, len)
            {
                found = Some(a);
            }
            if found.is_none() {
                let low = PAGE_SIZE.max(l.mmap_min_addr);
                found = self.search_top_down(g, len, low, l.mmap_base, align);
            }
            if found.is_none() {
                found = self.search_bottom_up(g, len, l.unmapped_base, l.task_size, align);
            }
            found.ok_or(Errno::ENOMEM)?
        };
        if addr > l.task_size - len {
            return Err(Errno::ENOMEM);
        }
        if addr % PAGE_SIZE != 0 {
            return Err(Errno::EINVAL);
        }
        if addr < l.mmap_min_addr {
            return Err(Errno::EPERM);
        }
        Ok(addr)
    }
}
