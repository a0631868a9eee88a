//! `madvise(2)` for the advice that changes VMA flags or drops pages.
//!
//! Linux: `mm/madvise.c` (`do_madvise`, `madvise_walk_vmas`, `madvise_update_vma`).

use super::consts::*;
use super::{AddressSpace, page_align};
use crate::errno::Errno;
use crate::vma::{MmWriteGuard, PAGE_SIZE, VmFlags, VmaRef};

impl AddressSpace {
    /// `madvise(2)` for MADV_NORMAL, MADV_DONTNEED, MADV_DONTFORK/DOFORK,
    /// MADV_WIPEONFORK/KEEPONFORK (others: EINVAL). Holes give ENOMEM after the mapped
    /// parts were processed. Linux: `do_madvise()` / `madvise_walk_vmas()`.
    pub fn madvise(&self, start: usize, len: usize, advice: u32) -> Result<(), Errno> {
        if !matches!(
            advice,
            MADV_NORMAL
                | MADV_DONTNEED
                | MADV_DONTFORK
                | MADV_DOFORK
                | MADV_WIPEONFORK
                | MADV_KEEPONFORK
        ) {
            return Err(Errno::EINVAL);
        }
        if !start.is_multiple_of(PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        let alen = page_align(len).unwrap_or(0);
        if len != 0 && alen == 0 {
            return Err(Errno::EINVAL);
        }
        let end = start.checked_add(alen).ok_or(Errno::EINVAL)?;
        if end == start {
            return Ok(());
        }
        let mut g = self.mm.write_lock();
        let (first, p) = g.find_vma_prev(start);
        let mut vma = first;
        let mut prev = match vma {
            Some(v) if start > v.start() => Some(v),
            _ => p,
        };
        let mut unmapped = Ok(());
        let mut start = start;
        loop {
            let Some(v) = vma else {
                return Err(Errno::ENOMEM);
            };
            if start < v.start() {
                unmapped = Err(Errno::ENOMEM);
                start = v.start();
                if start >= end {
                    break;
                }
            }
            let tmp = v.end().min(end);
            let nv = self.madvise_vma(&mut g, prev, v, start, tmp, advice)?;
            prev = Some(nv);
            start = tmp;
            if start < nv.end() {
                start = nv.end();
            }
            if start >= end {
                break;
            }
            vma = g.find_vma(start);
        }
        unmapped
    }

    pub(super) fn madvise_vma(
        &self,
        g: &mut MmWriteGuard<'_>,
        prev: Option<VmaRef>,
        vma: VmaRef,
        start: usize,
        end: usize,
        advice: u32,
    ) -> Result<VmaRef, Errno> {
        let old = vma.flags();
        let new = match advice {
            MADV_DONTNEED => {
                // Linux: madvise_dontneed_free_valid_vma().
                if old.intersects(VmFlags::LOCKED | VmFlags::PFNMAP) {
                    return Err(Errno::EINVAL);
                }
                if let Some(size) = crate::file::hugetlbfs::vma_huge_size(vma) {
                    // Linux: madvise_dontneed_free_valid_vma() — the start must be
                    // huge-page aligned; the end is aligned down (callers may not know
                    // the VMA uses huge pages). Then __unmap_hugepage_range_final.
                    let hb = size.bytes();
                    if !start.is_multiple_of(hb) {
                        return Err(Errno::EINVAL);
                    }
                    let end = end - end % hb;
                    if start < end
                        && let Some(f) = vma.file(&*g).and_then(|f| crate::file::lookup(&f))
                    {
                        crate::hugetlb::share::unmap_vma_range(&self.pt, vma, &f, start, end);
                    }
                    return Ok(vma);
                }
                self.zap(start, end)?;
                return Ok(vma);
            }
            MADV_NORMAL => old - (VmFlags::SEQ_READ | VmFlags::RAND_READ),
            MADV_DONTFORK => old | VmFlags::DONTCOPY,
            MADV_DOFORK => {
                if old.contains(VmFlags::IO) {
                    return Err(Errno::EINVAL);
                }
                old - VmFlags::DONTCOPY
            }
            MADV_WIPEONFORK => {
                if !vma.is_anonymous() || old.contains(VmFlags::SHARED) {
                    return Err(Errno::EINVAL);
                }
                old | VmFlags::WIPEONFORK
            }
            MADV_KEEPONFORK => {
                if old.contains(VmFlags::DROPPABLE) {
                    return Err(Errno::EINVAL);
                }
                old - VmFlags::WIPEONFORK
            }
            _ => return Err(Errno::EINVAL),
        };
        if old.contains(VmFlags::SEALED) {
            return Err(Errno::EPERM);
        }
        if new == old {
            return Ok(vma);
        }
        // Linux: madvise_update_vma() → vma_modify_flags(); `new` picks up the sticky
        // flags of a merge.
        let mut new = new;
        let v = g.vma_modify_flags(prev, vma, start, end, &mut new)?;
        g.vma_start_write(v);
        g.vma_set_flags(v, new)?;
        Ok(v)
    }
}
