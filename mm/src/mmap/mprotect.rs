//! `mprotect(2)`: the walk over the range (`do_mprotect_pkey`) and the change of one
//! VMA's part (`mprotect_fixup`: accounting, split/merge, sticky flags, PTEs).
//!
//! Linux: `mm/mprotect.c`.

use super::consts::*;
use super::{AddressSpace, calc_vm_prot_bits, page_align, pte_prot, va, vm_get_page_prot};
use crate::errno::Errno;
use crate::paging::MmuGather;
use crate::vma::{MmWriteGuard, PAGE_SIZE, VmFlags, VmaRef};

impl AddressSpace {
    /// `mprotect(2)` (Linux: `do_mprotect_pkey` + `mprotect_fixup`).
    ///
    /// EINVAL: both PROT_GROWSDOWN and PROT_GROWSUP, unaligned start, unknown prot bits;
    /// 0 length succeeds; end overflow → ENOMEM; unmapped page in the range → ENOMEM
    /// (VMAs before the hole keep their change, as in Linux); PROT_WRITE/READ/EXEC
    /// beyond the VMA's MAY bits → EACCES; sealed → EPERM.
    pub fn mprotect(&self, start: usize, len: usize, prot: u32) -> Result<(), Errno> {
        let grows = prot & (PROT_GROWSDOWN | PROT_GROWSUP);
        let prot = prot & !(PROT_GROWSDOWN | PROT_GROWSUP);
        if grows == PROT_GROWSDOWN | PROT_GROWSUP {
            return Err(Errno::EINVAL);
        }
        if !start.is_multiple_of(PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        if len == 0 {
            return Ok(());
        }
        let len = page_align(len).ok_or(Errno::ENOMEM)?;
        let end = start.checked_add(len).ok_or(Errno::ENOMEM)?;
        if prot & !(PROT_READ | PROT_WRITE | PROT_EXEC | PROT_SEM) != 0 {
            return Err(Errno::EINVAL);
        }
        let mut g = self.mm.write_lock();
        let Some(mut vma) = g.find_vma(start) else {
            return Err(Errno::ENOMEM);
        };
        let mut start = start;
        if grows & PROT_GROWSDOWN != 0 {
            if vma.start() >= end {
                return Err(Errno::ENOMEM);
            }
            start = vma.start();
            if !vma.flags().contains(VmFlags::GROWSDOWN) {
                return Err(Errno::EINVAL);
            }
        } else if vma.start() > start {
            return Err(Errno::ENOMEM);
        }
        // mseal: refuse before changing anything.
        {
            let mut a = start;
            while let Some(v) = g.find_vma(a) {
                if v.start() >= end {
                    break;
                }
                if v.flags().contains(VmFlags::SEALED) {
                    return Err(Errno::EPERM);
                }
                a = v.end();
            }
        }
        let mut prev = if start > vma.start() {
            Some(vma)
        } else {
            g.vma_prev_of(start)
        };
        let newbits = calc_vm_prot_bits(prot);
        // `tmp`: where the next VMA must start for the range to have no hole (a
        // merge may have extended the previous result past it).
        let mut tmp = start;
        loop {
            if vma.start() > tmp {
                return Err(Errno::ENOMEM);
            }
            let old = vma.flags();
            let newflags = newbits | (old - VmFlags::ACCESS);
            // Linux: (newflags & ~(newflags >> 4)) & VM_ACCESS_FLAGS.
            let may = VmFlags::from_bits_retain(newflags.bits() >> 4);
            if !(newflags & !may & VmFlags::ACCESS).is_empty() {
                return Err(Errno::EACCES);
            }
            let vend = vma.end().min(end);
            let v = self.mprotect_fixup(&mut g, prev, vma, tmp, vend, newflags)?;
            tmp = vend;
            if tmp >= end {
                break;
            }
            prev = Some(v);
            match g.find_vma(tmp) {
                Some(n) => vma = n,
                None => return Err(Errno::ENOMEM),
            }
        }
        Ok(())
    }

    /// Apply `newflags` to `[start, end)` of `vma`, splitting or merging as needed.
    /// Linux: `mprotect_fixup()`.
    ///
    /// Commit accounting follows Linux: a private mapping made writable gains
    /// `VM_ACCOUNT` unless it was already accounted, writable, hugetlb, shared or
    /// NORESERVE; an anonymous mapping made read-only loses it while it has no
    /// anon_vma (nothing was ever charged against it that a fault could rely on). Both
    /// decide which neighbours the result can merge with; the engine moves the pages
    /// between the counters of [`VmStat`] as the flags change. The limits
    /// (`may_expand_vm`, the overcommit check) and the page tables are checked before
    /// any VMA changes, so nothing after them can fail.
    pub(super) fn mprotect_fixup(
        &self,
        g: &mut MmWriteGuard<'_>,
        prev: Option<VmaRef>,
        vma: VmaRef,
        start: usize,
        end: usize,
        mut newflags: VmFlags,
    ) -> Result<VmaRef, Errno> {
        let old = vma.flags();
        if newflags == old {
            return Ok(vma);
        }
        let nrpages = (end - start) / PAGE_SIZE;
        if newflags.contains(VmFlags::WRITE) {
            // Space limits when the range turns into data.
            if !self.may_expand_vm(g, newflags, nrpages) && self.may_expand_vm(g, old, nrpages) {
                return Err(Errno::ENOMEM);
            }
            let charged = VmFlags::ACCOUNT
                | VmFlags::WRITE
                | VmFlags::HUGETLB
                | VmFlags::SHARED
                | VmFlags::NORESERVE;
            if !old.intersects(charged) {
                self.vm_enough_memory(nrpages)?;
                newflags |= VmFlags::ACCOUNT;
            }
        } else if old.contains(VmFlags::ACCOUNT) && vma.is_anonymous() && !vma.has_anon_vma() {
            newflags -= VmFlags::ACCOUNT;
        }
        self.check_pt_range(start, end)?;
        // `newflags` picks up the sticky flags of a merge.
        let v = g.vma_modify_flags(prev, vma, start, end, &mut newflags)?;
        g.vma_start_write(v);
        g.vma_set_flags(v, newflags)?;
        g.vma_set_page_prot(v, vm_get_page_prot(newflags))?;
        // Linux: change_protection(). The VMA is write-locked, so no fault can install
        // a PTE with the old protection while the page-table lock is dropped.
        let pte = pte_prot(newflags, newflags.contains(VmFlags::SHARED));
        // Linux: hugetlb_change_protection() — under the hugetlb lock and i_mmap (both
        // write), a shared PD table is unshared (only this space changes; its pages
        // refault with the new protection), then the rest is changed.
        let file = newflags
            .contains(VmFlags::HUGETLB)
            .then(|| v.file(&*g).and_then(|f| crate::file::lookup(&f)))
            .flatten();
        let _vl = file.as_ref().map(|_| v.hugetlb_vma_lock().write());
        let _im = file
            .as_ref()
            .map(|f| crate::file::hugetlbfs::i_mmap_of(f.inode()).lock_write());
        let pt = &*self.pt;
        let mut gather = MmuGather::new(pt);
        if file.is_some() {
            crate::hugetlb::share::unshare_range(pt, start, end, &mut gather);
        }
        let r = pt.protect(va(start)..va(end), pte, &mut gather);
        gather.finish();
        r.map_err(Errno::from)?;
        Ok(v)
    }
}
