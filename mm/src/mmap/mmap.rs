//! `mmap(2)`: the argument checks of `do_mmap`, the region set-up of
//! `__mmap_region` (limits, MAP_FIXED replacement, accounting, `.mmap_prepare` or the
//! legacy `->mmap`, merge or a new VMA), and `MAP_POPULATE`.
//!
//! Linux: `mm/mmap.c` (`do_mmap`), `mm/vma.c` (`__mmap_region`), `mm/gup.c`
//! (`__mm_populate`).

use alloc::sync::Arc;

use super::consts::*;
use super::fault::{Access, FaultError};
use super::{
    AddressSpace, FILE_VM_OPS, MAX_LFS_FILESIZE, calc_vm_flag_bits, calc_vm_prot_bits, page_align,
    vm_get_page_prot,
};
use crate::PAGE_SHIFT;
use crate::errno::Errno;
use crate::file::{self, File, MmapCtx, VmAreaDesc, hugetlbfs};
use crate::hugetlb::HugeSize;
use crate::vma::{MmWriteGuard, PAGE_SIZE, VmFlags, VmaMergeStruct};

impl AddressSpace {
    /// `mmap(2)`. Returns the mapped address.
    ///
    /// Check order (Linux: `sys_mmap` → `ksys_mmap_pgoff` → `do_mmap`): offset
    /// alignment (EINVAL); no file without MAP_ANONYMOUS (EINVAL; Linux: EBADF); a file
    /// with MAP_HUGETLB (EINVAL: no file here is on hugetlbfs; anonymous MAP_HUGETLB is
    /// mapped with base pages, Linux would use its hugetlb pool); length 0
    /// (EINVAL); page rounding overflow (ENOMEM); pgoff overflow (EOVERFLOW); map_count
    /// above the limit (ENOMEM); placement (`get_unmapped_area`: ENOMEM / EINVAL / EPERM);
    /// MAP_FIXED_NOREPLACE overlap (EEXIST); file checks: offset range (EOVERFLOW),
    /// MAP_SHARED_VALIDATE unknown flags (EOPNOTSUPP), shared writable needs FMODE_WRITE
    /// (EACCES), needs FMODE_READ (EACCES), noexec + PROT_EXEC (EPERM), hooks both or
    /// neither (ENODEV), GROWSDOWN (EINVAL), bad map type (EINVAL); anonymous: bad type
    /// or shared GROWSDOWN (EINVAL); then the region itself (hook errors, ENOMEM).
    pub fn mmap(
        &self,
        addr: usize,
        len: usize,
        prot: u32,
        flags: u32,
        file: Option<&Arc<File>>,
        off: u64,
    ) -> Result<usize, Errno> {
        if !off.is_multiple_of(PAGE_SIZE as u64) {
            return Err(Errno::EINVAL);
        }
        let mut len = len;
        let file = if flags & MAP_ANONYMOUS != 0 {
            if flags & MAP_HUGETLB != 0 {
                // Linux (ksys_mmap_pgoff): the size from bits 26–31 (EINVAL if there is
                // no such hstate), the length rounded up to it, and an internal
                // hugetlbfs file (`hugetlb_file_setup`, reserving nothing: the mmap
                // reserves).
                let hs = HugeSize::from_map_flags(flags).ok_or(Errno::EINVAL)?;
                if len == 0 {
                    return Err(Errno::EINVAL);
                }
                len = len
                    .checked_next_multiple_of(hs.bytes())
                    .ok_or(Errno::ENOMEM)?;
                Some(hugetlbfs::hugetlb_file_setup(self.alloc, hs, len)?)
            } else {
                None
            }
        } else {
            let f = file.ok_or(Errno::EINVAL)?;
            // Linux (ksys_mmap_pgoff): a hugetlbfs file's length is rounded up to its
            // page size; MAP_HUGETLB with any other file is EINVAL.
            if let Some(h) = f.inode().hugetlb() {
                len = len
                    .checked_next_multiple_of(h.hstate().size().bytes())
                    .ok_or(Errno::ENOMEM)?;
            } else if flags & MAP_HUGETLB != 0 {
                return Err(Errno::EINVAL);
            }
            Some(f.clone())
        };
        let pgoff = (off >> PAGE_SHIFT) as usize;
        let (a, populate) = self.do_mmap(file, addr, len, prot, flags, pgoff)?;
        if populate {
            // Linux: mm_populate() ignores errors: the mapping stands either way.
            let _ = self.mm_populate(a, page_align(len).unwrap_or(0), true);
        }
        Ok(a)
    }

    pub(super) fn do_mmap(
        &self,
        file: Option<Arc<File>>,
        addr: usize,
        len: usize,
        prot: u32,
        mut flags: u32,
        mut pgoff: usize,
    ) -> Result<(usize, bool), Errno> {
        let l = self.layout;
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let mut addr = addr;
        // MAP_FIXED_NOREPLACE is MAP_FIXED for placement (Linux: "force arch specific
        // MAP_FIXED handling"): its address is used as is, never rounded as a hint.
        if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) == 0 {
            // Linux: round_hint_to_min().
            addr &= !(PAGE_SIZE - 1);
            if addr != 0 && addr < l.mmap_min_addr {
                addr = l.mmap_min_addr.next_multiple_of(PAGE_SIZE);
            }
        }
        let len = page_align(len).filter(|&x| x != 0).ok_or(Errno::ENOMEM)?;
        let pages = len / PAGE_SIZE;
        if pgoff.checked_add(pages).is_none() {
            return Err(Errno::EOVERFLOW);
        }
        let mut g = self.mm.write_lock();
        if g.map_count() > g.max_map_count() {
            return Err(Errno::ENOMEM);
        }
        let mut vm_flags = calc_vm_prot_bits(prot)
            | calc_vm_flag_bits(flags)
            | VmFlags::MAYREAD
            | VmFlags::MAYWRITE
            | VmFlags::MAYEXEC;
        let fixed = flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) != 0;
        let huge = file
            .as_ref()
            .and_then(|f| f.inode().hugetlb())
            .map(|h| h.hstate().size());
        let align = huge.map_or(PAGE_SIZE, |h| h.bytes());
        let addr = self.get_unmapped_area_aligned(&g, addr, len, fixed, align)?;
        if flags & MAP_FIXED_NOREPLACE != 0 && g.find_vma_intersection(addr, addr + len).is_some() {
            return Err(Errno::EEXIST);
        }
        if let Some(f) = &file {
            // Linux: file_mmap_ok().
            let maxpages = (MAX_LFS_FILESIZE >> PAGE_SHIFT) as usize;
            if pages > maxpages || pgoff > maxpages - pages {
                return Err(Errno::EOVERFLOW);
            }
            let mode = f.mode();
            let ty = flags & MAP_TYPE;
            if ty == MAP_SHARED || ty == MAP_SHARED_VALIDATE {
                if ty == MAP_SHARED {
                    flags &= LEGACY_MAP_MASK;
                }
                if flags & !(LEGACY_MAP_MASK | MAP_FIXED_NOREPLACE) != 0 {
                    return Err(Errno::EOPNOTSUPP);
                }
                if prot & PROT_WRITE != 0 && !mode.write {
                    return Err(Errno::EACCES);
                }
                vm_flags |= VmFlags::SHARED | VmFlags::MAYSHARE;
                if !mode.write {
                    vm_flags -= VmFlags::MAYWRITE | VmFlags::SHARED;
                }
            } else if ty != MAP_PRIVATE {
                return Err(Errno::EINVAL);
            }
            if !mode.read {
                return Err(Errno::EACCES);
            }
            if f.noexec() {
                if vm_flags.contains(VmFlags::EXEC) {
                    return Err(Errno::EPERM);
                }
                vm_flags -= VmFlags::MAYEXEC;
            }
            // Linux: can_mmap_file() — exactly one of the hooks.
            let ops = f.ops();
            if ops.mmap.is_some() == ops.mmap_prepare.is_some() {
                return Err(Errno::ENODEV);
            }
            if vm_flags.contains(VmFlags::GROWSDOWN) {
                return Err(Errno::EINVAL);
            }
        } else {
            match flags & MAP_TYPE {
                MAP_SHARED => {
                    if vm_flags.contains(VmFlags::GROWSDOWN) {
                        return Err(Errno::EINVAL);
                    }
                    pgoff = 0;
                    vm_flags |= VmFlags::SHARED | VmFlags::MAYSHARE;
                }
                MAP_PRIVATE => pgoff = addr >> PAGE_SHIFT,
                _ => return Err(Errno::EINVAL),
            }
        }
        if flags & MAP_NORESERVE != 0 {
            vm_flags |= VmFlags::NORESERVE;
        }
        if huge.is_some() {
            // The hugetlb layer finds these page tables from the VMA's mm id.
            crate::hugetlb::register_mm(self.mm.id(), &self.pt)?;
        }
        let a = self.mmap_region(&mut g, file, addr, len, vm_flags, pgoff)?;
        let populate = vm_flags.contains(VmFlags::LOCKED)
            || flags & (MAP_POPULATE | MAP_NONBLOCK) == MAP_POPULATE;
        Ok((a, populate))
    }

    /// Linux: `__mmap_region()` (`mm/vma.c`).
    pub(super) fn mmap_region(
        &self,
        g: &mut MmWriteGuard<'_>,
        file: Option<Arc<File>>,
        addr: usize,
        len: usize,
        mut vm_flags: VmFlags,
        mut pgoff: usize,
    ) -> Result<usize, Errno> {
        let end = addr + len;
        let pglen = len / PAGE_SIZE;
        // 1. Limits first, counting the pages a MAP_FIXED replaces as given back
        // (Linux: __mmap_setup: may_expand_vm(pglen - vms->nr_pages), then the commit
        // charge of pglen - vms->nr_accounted).
        let (mut nr_pages, mut nr_accounted) = (0, 0);
        if !g.range_is_free(addr, end) {
            let mut it = crate::vma::VmaIterator::new(addr);
            let view = g.view();
            while let Some(v) = it.find(&view, end) {
                let n = (v.end().min(end) - v.start().max(addr)) / PAGE_SIZE;
                nr_pages += n;
                if v.flags().contains(VmFlags::ACCOUNT) {
                    nr_accounted += n;
                }
            }
        }
        if !self.may_expand_vm(g, vm_flags, pglen - nr_pages) {
            return Err(Errno::ENOMEM);
        }
        // Linux: accountable_mapping() → VM_ACCOUNT for private writable memory, never
        // for hugetlbfs (`is_file_hugepages`: its pool is accounted by reservations).
        let hugetlbfs = file.as_ref().is_some_and(|f| f.inode().hugetlb().is_some());
        if vm_flags.contains(VmFlags::WRITE)
            && !hugetlbfs
            && !vm_flags.intersects(VmFlags::SHARED | VmFlags::NORESERVE | VmFlags::HUGETLB)
        {
            self.vm_enough_memory(pglen - nr_accounted)?;
            vm_flags |= VmFlags::ACCOUNT;
        }
        // 2. Gather the overlapped VMAs and clear their page tables. They cannot be
        // restored after this point (Linux: vms_clear_ptes in __mmap_setup).
        if nr_pages != 0 {
            self.do_munmap(g, addr, len)?;
        }
        // New and expanded VMAs are soft-dirty (sticky: ignored for merging).
        vm_flags |= VmFlags::SOFTDIRTY;
        let mut file = file;
        if file.is_none() && vm_flags.contains(VmFlags::SHARED) {
            // Linux: shmem_zero_setup().
            file = Some(file::shmem_zero_file(self.alloc, len)?);
        }
        let mut page_prot = vm_get_page_prot(vm_flags);
        // 3. mmap_prepare.
        let mut wo_ops = None;
        let mut wo_private = 0;
        let mut used_prepare = false;
        // A private hugetlb reservation taken by `mmap_prepare` goes back if the
        // mapping fails before the VMA owns it.
        let mut abort: Option<PrepareAbort> = None;
        let legacy = file.as_ref().and_then(|f| f.ops().mmap);
        if let Some(f) = file.clone()
            && let Some(prepare) = f.ops().mmap_prepare
        {
            let mut desc = VmAreaDesc::new(
                self.mm.id(),
                addr..end,
                f.clone(),
                pgoff,
                vm_flags,
                page_prot,
                g.live_vmas(),
            );
            prepare(&f, &mut desc)?;
            if desc.vm_flags.contains(VmFlags::HUGETLB) {
                abort = Some(PrepareAbort {
                    flags: desc.vm_flags,
                    private: desc.private_data,
                    huge_pages: f
                        .inode()
                        .hugetlb()
                        .map_or(0, |h| len / h.hstate().size().bytes()),
                });
            }
            pgoff = desc.pgoff;
            file = Some(desc.vm_file);
            vm_flags = desc.vm_flags;
            page_prot = desc.page_prot;
            wo_ops = desc.vm_ops;
            wo_private = desc.private_data;
            used_prepare = true;
        }
        let vm_file = file.as_ref().map(|f| f.as_vm_file());
        // 5. Merge with the post-hook attributes.
        let mut vma = None;
        let prev = g.vma_prev_of(addr);
        let next = g.vma_next_from(end);
        if prev.is_some() || next.is_some() {
            let mut vmg = VmaMergeStruct::new(addr, end, pgoff, vm_flags);
            vmg.file = vm_file.clone();
            vmg.prev = prev;
            vmg.next = next;
            vmg.vmi = crate::vma::VmaIterator::new(addr);
            vma = g.vma_merge_new_range(&mut vmg);
            if vmg.nomem() {
                return Err(Errno::ENOMEM);
            }
        }
        // 6. Allocate a new VMA only if nothing merged.
        let vma = match vma {
            Some(v) => v,
            None => {
                let v = g.vm_area_alloc()?;
                let ops = file.as_ref().map(|_| &FILE_VM_OPS);
                let r = g
                    .vma_init(
                        v,
                        crate::vma::VmaInit {
                            start: addr,
                            end,
                            pgoff,
                            flags: vm_flags,
                            file: vm_file,
                            ops,
                        },
                    )
                    .and_then(|()| g.vma_set_page_prot(v, page_prot));
                if let Err(e) = r {
                    g.vm_area_free(v);
                    return Err(e);
                }
                if let (Some(mmap), Some(f)) = (legacy, file.as_ref()) {
                    let mut ctx = MmapCtx {
                        g: &mut *g,
                        pt: &self.pt,
                        vma: v,
                    };
                    if let Err(e) = mmap(f, &mut ctx) {
                        ctx.zap_all();
                        g.vm_area_free(v);
                        return Err(e);
                    }
                }
                if let Err(e) = g.vma_link(v) {
                    // A legacy hook may have mapped PFNs into the range.
                    self.zap_unmapped(g, addr, end)?;
                    g.vm_area_free(v);
                    return Err(e);
                }
                v
            }
        };
        // 7. Write-only descriptor fields, on a merged VMA too.
        if used_prepare {
            g.vma_start_write(vma);
            if wo_ops.is_some() {
                g.vma_set_ops(vma, wo_ops)?;
            }
            g.vma_set_private_data(vma, wo_private)?;
        }
        if let Some(a) = abort.as_mut() {
            a.private = 0;
        }
        Ok(addr)
    }

    /// Prefault `[start, start + len)`, one VMA at a time (Linux: `__mm_populate` →
    /// `populate_vma_page_range`). Holes are skipped; PFN and I/O maps, PROT_NONE and
    /// `VM_LOCKONFAULT` VMAs have nothing to populate; a hugetlb VMA is faulted once
    /// per huge page. With `ignore_errors` (`mm_populate`, MAP_POPULATE/MAP_LOCKED) a
    /// failing fault ends the population of its VMA only, and the work is bounded by
    /// the pages actually populated; without it (mlock) the first failure is the
    /// result, as `__mlock_posix_error_return` reports it: ENOMEM for a refused access,
    /// EAGAIN for an out-of-memory fault.
    pub(super) fn mm_populate(
        &self,
        start: usize,
        len: usize,
        ignore_errors: bool,
    ) -> Result<(), Errno> {
        let Some(end) = start.checked_add(len) else {
            return Ok(());
        };
        let mut a = start;
        while a < end {
            let (vstart, vend, flags, huge) = {
                let g = self.mm.read_lock();
                match g.find_vma(a) {
                    Some(v) if v.start() < end => (
                        v.start(),
                        v.end(),
                        v.flags(),
                        hugetlbfs::vma_huge_size(v).map_or(PAGE_SIZE, |h| h.bytes()),
                    ),
                    _ => return Ok(()),
                }
            };
            a = a.max(vstart);
            let stop = vend.min(end);
            let skip = flags.intersects(VmFlags::PFNMAP | VmFlags::IO | VmFlags::LOCKONFAULT)
                || !flags.intersects(VmFlags::ACCESS);
            if !skip {
                let write = flags & (VmFlags::WRITE | VmFlags::SHARED) == VmFlags::WRITE;
                let access = if write { Access::Write } else { Access::Read };
                while a < stop {
                    match self.handle_fault(a, access) {
                        Ok(()) => a = (a - a % huge).saturating_add(huge),
                        Err(_) if ignore_errors => break,
                        Err(FaultError::Oom) => return Err(Errno::EAGAIN),
                        Err(_) => return Err(Errno::ENOMEM),
                    }
                }
            }
            a = stop;
        }
        Ok(())
    }
}

/// Gives back a private hugetlb reservation `mmap_prepare` made when `mmap_region`
/// fails before the VMA takes it over (disarmed by clearing `private`).
struct PrepareAbort {
    flags: VmFlags,
    private: usize,
    huge_pages: usize,
}

impl Drop for PrepareAbort {
    fn drop(&mut self) {
        hugetlbfs::mmap_prepare_abort(self.flags, self.private, self.huge_pages);
    }
}
