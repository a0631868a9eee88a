//! `mlock`, `mlock2` and `munlock`: set or clear `VM_LOCKED` on a range, splitting and
//! merging VMAs as mprotect does, then populate it.
//!
//! Linux: `mm/mlock.c` (`do_mlock`, `apply_vma_lock_flags`, `mlock_fixup`,
//! `__mlock_posix_error_return`) and `mm/gup.c` (`__mm_populate`). There is no page
//! reclaim here, so "locked" changes no page's fate: what this models is the VMA side
//! (flags, splits and merges, `locked_vm`) and the population, including Linux's
//! exceptions: special mappings (`VM_IO`, `VM_PFNMAP`, `VM_MIXEDMAP`, `VM_DONTEXPAND`),
//! hugetlb VMAs, secretmem and `VM_DROPPABLE` are never marked locked (their pages are
//! populated all the same), so an mlock never splits a hugetlb VMA at an address that
//! is not huge-page aligned.
//!
//! `RLIMIT_MEMLOCK` is not modelled: the caller is treated as having `CAP_IPC_LOCK`.

use super::{AddressSpace, page_align};
use crate::errno::Errno;
use crate::vma::{MmWriteGuard, PAGE_SIZE, VmFlags, VmaRef};

/// `mlock2` flag: lock pages as they are faulted in, do not populate (Linux:
/// `MLOCK_ONFAULT`).
pub const MLOCK_ONFAULT: u32 = 0x01;

/// The flags `mlock` and `munlock` own (Linux: `VM_LOCKED_MASK`).
const LOCKED_MASK: VmFlags = VmFlags::LOCKED.union(VmFlags::LOCKONFAULT);

impl AddressSpace {
    /// Linux: `mlock(2)` = `do_mlock(start, len, VM_LOCKED)`.
    pub fn mlock(&self, start: usize, len: usize) -> Result<(), Errno> {
        self.do_mlock(start, len, VmFlags::LOCKED)
    }

    /// Linux: `mlock2(2)`: `flags` is 0 or [`MLOCK_ONFAULT`]; anything else is EINVAL.
    pub fn mlock2(&self, start: usize, len: usize, flags: u32) -> Result<(), Errno> {
        if flags & !MLOCK_ONFAULT != 0 {
            return Err(Errno::EINVAL);
        }
        let mut vm = VmFlags::LOCKED;
        if flags & MLOCK_ONFAULT != 0 {
            vm |= VmFlags::LOCKONFAULT;
        }
        self.do_mlock(start, len, vm)
    }

    /// Linux: `munlock(2)`: clear `VM_LOCKED`/`VM_LOCKONFAULT` on the range.
    pub fn munlock(&self, start: usize, len: usize) -> Result<(), Errno> {
        let (start, len) = lock_range(start, len)?;
        let mut g = self.mm.write_lock();
        self.apply_vma_lock_flags(&mut g, start, len, VmFlags::empty())
    }

    /// Linux: `do_mlock()`: apply the flags under the mmap write lock, then populate
    /// the range without it (`__mm_populate(start, len, 0)`: errors are reported, EFAULT
    /// as ENOMEM and ENOMEM as EAGAIN, POSIX's mlock errors).
    fn do_mlock(&self, start: usize, len: usize, flags: VmFlags) -> Result<(), Errno> {
        let (start, len) = lock_range(start, len)?;
        {
            let mut g = self.mm.write_lock();
            self.apply_vma_lock_flags(&mut g, start, len, flags)?;
        }
        self.mm_populate(start, len, false)
    }

    /// Linux: `apply_vma_lock_flags()`: every VMA of `[start, start + len)` gets
    /// `flags` in place of its lock bits; a hole is ENOMEM (the VMAs before it keep
    /// their new flags, as in Linux).
    fn apply_vma_lock_flags(
        &self,
        g: &mut MmWriteGuard<'_>,
        start: usize,
        len: usize,
        flags: VmFlags,
    ) -> Result<(), Errno> {
        let end = start.checked_add(len).ok_or(Errno::EINVAL)?;
        if end == start {
            return Ok(());
        }
        let Some(mut vma) = g.vma_lookup(start) else {
            return Err(Errno::ENOMEM);
        };
        let mut prev = if start > vma.start() {
            Some(vma)
        } else {
            g.vma_prev_of(start)
        };
        let mut nstart = start;
        let mut tmp = vma.start();
        loop {
            if vma.start() != tmp {
                return Err(Errno::ENOMEM);
            }
            let newflags = (vma.flags() - LOCKED_MASK) | flags;
            tmp = vma.end().min(end);
            let v = self.mlock_fixup(g, prev, vma, nstart, tmp, newflags)?;
            prev = Some(v);
            tmp = v.end().min(end).max(tmp);
            nstart = tmp;
            if tmp >= end {
                return Ok(());
            }
            match g.vma_lookup(tmp) {
                Some(n) => vma = n,
                None => return Err(Errno::ENOMEM),
            }
        }
    }

    /// Linux: `mlock_fixup()`: change the lock bits of `[start, end)` of `vma`,
    /// splitting or merging; special, hugetlb, secretmem and droppable VMAs are left
    /// as they are (and not counted). Returns the VMA now covering `start`.
    fn mlock_fixup(
        &self,
        g: &mut MmWriteGuard<'_>,
        prev: Option<VmaRef>,
        vma: VmaRef,
        start: usize,
        end: usize,
        newflags: VmFlags,
    ) -> Result<VmaRef, Errno> {
        let old = vma.flags();
        let secretmem = vma
            .ops()
            .is_some_and(|o| core::ptr::eq(o, &crate::file::SECRETMEM_VM_OPS));
        if newflags == old
            || old.intersects(VmFlags::SPECIAL | VmFlags::HUGETLB | VmFlags::DROPPABLE)
            || secretmem
        {
            return Ok(vma);
        }
        let mut newflags = newflags;
        let v = g.vma_modify_flags(prev, vma, start, end, &mut newflags)?;
        g.vma_start_write(v);
        // `locked_vm` follows the flags (the engine's page counters).
        g.vma_set_flags(v, newflags)?;
        Ok(v)
    }
}

/// Linux: the start of `do_mlock`/`munlock`: `len = PAGE_ALIGN(len +
/// offset_in_page(start)); start &= PAGE_MASK`; a range that wraps is EINVAL (Linux:
/// `end < start` in `apply_vma_lock_flags`), one too long to align ENOMEM.
fn lock_range(start: usize, len: usize) -> Result<(usize, usize), Errno> {
    let off = start % PAGE_SIZE;
    let len = page_align(len.checked_add(off).ok_or(Errno::ENOMEM)?).ok_or(Errno::ENOMEM)?;
    let start = start - off;
    start.checked_add(len).ok_or(Errno::EINVAL)?;
    Ok((start, len))
}
