//! `mremap(2)`: shrink, grow in place, move, MREMAP_DONTUNMAP, and the move of a range
//! spanning several VMAs (Linux: `mm/mremap.c`, including the ≈6.17 multi-VMA move).
//!
//! The order of the checks is Linux's: the arguments alone (`check_mremap_params`),
//! then, under the mmap write lock, the map-count headroom, then the VMA at `addr`
//! (`check_prep_vma`), then the operation. A move copies the VMA first (which may merge
//! it into a neighbour at the destination), then moves the page-table entries, then
//! unmaps the source: if moving the entries runs out of memory, the copy is unmapped
//! instead and the source is left exactly as it was.

use super::{AddressSpace, page_align, va, zap_locked};
use crate::errno::Errno;
use crate::mmap::consts::*;
use crate::paging::FreeTables;
use crate::paging::PageTableRoot;
use crate::vma::{MmWriteGuard, PAGE_SIZE, VmFlags, VmaRef};

/// One mremap request, narrowed to one VMA's part while a multi-VMA move walks the
/// range (Linux: `struct vma_remap_struct`).
#[derive(Clone, Copy, Debug)]
struct Remap {
    addr: usize,
    old_len: usize,
    new_len: usize,
    flags: u32,
    new_addr: usize,
}

impl Remap {
    /// The caller named (MREMAP_FIXED) or forced (MREMAP_DONTUNMAP) a new address.
    /// Linux: `vrm_implies_new_addr()`.
    fn implies_new_addr(&self) -> bool {
        self.flags & (MREMAP_FIXED | MREMAP_DONTUNMAP) != 0
    }

    /// A pure move: a fixed destination and no resize. Only these may span several
    /// VMAs. Linux: `vrm_move_only()`.
    fn move_only(&self) -> bool {
        self.flags & MREMAP_FIXED != 0 && self.old_len == self.new_len
    }

    /// Will a mapping appear somewhere new (growth or move)? Linux: `vrm_will_map_new()`.
    fn will_map_new(&self) -> bool {
        self.new_len > self.old_len || self.implies_new_addr()
    }

    /// Source and fixed destination overlap. Linux: `vrm_overlaps()`, whose unsigned
    /// ends wrap: an old range running past the top of the address space has an end
    /// below its start there, and the errno that follows (EFAULT from the VMA checks,
    /// not EINVAL here) is Linux's. The wrap is deliberate, never an overflow panic;
    /// `new_addr + new_len` was validated not to exceed `task_size`.
    fn overlaps(&self) -> bool {
        let end_old = self.addr.wrapping_add(self.old_len);
        let end_new = self.new_addr.wrapping_add(self.new_len);
        end_old > self.new_addr && end_new > self.addr
    }
}

/// Flags cleared on the source VMA after a MREMAP_DONTUNMAP move (Linux: `VM_LOCKED_MASK`).
const LOCKED_MASK: VmFlags = VmFlags::LOCKED.union(VmFlags::LOCKONFAULT);

impl AddressSpace {
    /// `mremap(2)`. Returns the (new) address.
    ///
    /// Errors, in Linux's order: unknown flags, unaligned `addr`, `new_len` 0 or beyond
    /// the address space → EINVAL; with a new address (MREMAP_FIXED/DONTUNMAP): it is
    /// out of range or unaligned, MAYMOVE is missing, DONTUNMAP resizes, or the ranges
    /// overlap → EINVAL; too little `max_map_count` headroom → ENOMEM; no VMA at `addr`
    /// → EFAULT; sealed → EPERM; then the per-VMA rules (Linux: `check_prep_vma()`). A pure move
    /// (MREMAP_FIXED, `old_len == new_len`) may span several VMAs, gaps included, as
    /// long as `addr` itself is mapped; every other form needs the old range inside
    /// one VMA (EFAULT).
    pub fn mremap(
        &self,
        addr: usize,
        old_len: usize,
        new_len: usize,
        flags: u32,
        new_addr: usize,
    ) -> Result<usize, Errno> {
        let ts = self.layout.task_size;
        // Linux: check_mremap_params().
        if flags & !(MREMAP_FIXED | MREMAP_MAYMOVE | MREMAP_DONTUNMAP) != 0 {
            return Err(Errno::EINVAL);
        }
        if !addr.is_multiple_of(PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        // Linux's PAGE_ALIGN wraps: an old_len within a page of the top becomes 0, the
        // "duplicate a shared mapping" request (and EFAULT where nothing is mapped).
        let old_len = old_len.wrapping_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
        let new_len = page_align(new_len).ok_or(Errno::EINVAL)?;
        if new_len == 0 || new_len > ts {
            return Err(Errno::EINVAL);
        }
        let r = Remap {
            addr,
            old_len,
            new_len,
            flags,
            new_addr,
        };
        if r.implies_new_addr() {
            if new_addr > ts - new_len || !new_addr.is_multiple_of(PAGE_SIZE) {
                return Err(Errno::EINVAL);
            }
            if flags & MREMAP_MAYMOVE == 0 {
                return Err(Errno::EINVAL);
            }
            if flags & MREMAP_DONTUNMAP != 0 && old_len != new_len {
                return Err(Errno::EINVAL);
            }
            if flags & MREMAP_FIXED != 0 && r.overlaps() {
                return Err(Errno::EINVAL);
            }
        }

        let mut g = self.mm.write_lock();
        // Linux: check_map_count_against_split_early() — the destination unmap and a
        // shrink may each split one VMA, the copy adds one and the source unmap one.
        if g.map_count() + 4 > g.max_map_count() {
            return Err(Errno::ENOMEM);
        }
        // Linux (check_prep_vma / the hugetlb part of mremap): a hugetlb VMA's lengths
        // are rounded up to its page size, both addresses must be aligned to it, and it
        // cannot grow (EINVAL).
        let r = match g
            .vma_lookup(addr)
            .and_then(crate::file::hugetlbfs::vma_huge_size)
        {
            Some(h) => {
                let hb = h.bytes();
                let old_len = old_len.checked_next_multiple_of(hb).ok_or(Errno::EINVAL)?;
                let new_len = new_len.checked_next_multiple_of(hb).ok_or(Errno::EINVAL)?;
                if !addr.is_multiple_of(hb)
                    || (r.implies_new_addr() && !new_addr.is_multiple_of(hb))
                    || new_len > old_len
                {
                    return Err(Errno::EINVAL);
                }
                Remap {
                    old_len,
                    new_len,
                    ..r
                }
            }
            None => r,
        };
        if r.move_only() {
            return self.remap_move(&mut g, r);
        }
        let vma = g.vma_lookup(addr).ok_or(Errno::EFAULT)?;
        self.check_prep(&g, vma, &r)?;
        if r.implies_new_addr() {
            self.mremap_to(&mut g, r)
        } else {
            self.mremap_at(&mut g, vma, r)
        }
    }

    /// The per-VMA checks (Linux: `check_prep_vma()`): sealed → EPERM; for growth or a
    /// move: a private `old_len` of 0 (the "duplicate a mapping" trick only works for
    /// shared ones) → EINVAL, DONTUNMAP of a DONTEXPAND/PFNMAP VMA → EINVAL, the old
    /// range running past the VMA → EFAULT; for growth: `pgoff` overflow → EINVAL,
    /// DONTEXPAND/PFNMAP → EFAULT, growth beyond `RLIMIT_AS`/`RLIMIT_DATA` → ENOMEM.
    fn check_prep(&self, g: &MmWriteGuard<'_>, vma: VmaRef, r: &Remap) -> Result<(), Errno> {
        let flags = vma.flags();
        if flags.contains(VmFlags::SEALED) {
            return Err(Errno::EPERM);
        }
        if !r.will_map_new() {
            return Ok(());
        }
        if r.old_len == 0 && !flags.intersects(VmFlags::SHARED | VmFlags::MAYSHARE) {
            return Err(Errno::EINVAL);
        }
        let unmovable = VmFlags::DONTEXPAND | VmFlags::PFNMAP;
        if r.flags & MREMAP_DONTUNMAP != 0 && flags.intersects(unmovable) {
            return Err(Errno::EINVAL);
        }
        if r.old_len > vma.end() - r.addr {
            return Err(Errno::EFAULT);
        }
        if r.new_len <= r.old_len {
            return Ok(());
        }
        let pgoff = vma.pgoff() + (r.addr - vma.start()) / PAGE_SIZE;
        if pgoff.checked_add(r.new_len / PAGE_SIZE).is_none() {
            return Err(Errno::EINVAL);
        }
        if flags.intersects(unmovable) {
            return Err(Errno::EFAULT);
        }
        if !self.may_expand_vm(g, flags, (r.new_len - r.old_len) / PAGE_SIZE) {
            return Err(Errno::ENOMEM);
        }
        Ok(())
    }

    /// Resize without a new address (Linux: `mremap_at()`): same size is a no-op, a
    /// shrink unmaps the tail, growth extends in place when the space after the VMA
    /// is free, else moves (MREMAP_MAYMOVE) or fails with ENOMEM.
    fn mremap_at(&self, g: &mut MmWriteGuard<'_>, vma: VmaRef, r: Remap) -> Result<usize, Errno> {
        if r.new_len == r.old_len {
            return Ok(r.addr);
        }
        if r.new_len < r.old_len {
            // Linux: shrink_vma() → do_vmi_munmap(), whose range check refuses a tail
            // running past `task_size` (EINVAL) before anything is unmapped.
            self.do_munmap(g, r.addr + r.new_len, r.old_len - r.new_len)?;
            return Ok(r.addr);
        }
        // Linux: expand_vma().
        let delta = r.new_len - r.old_len;
        if r.old_len == vma.end() - r.addr && self.vma_expandable(g, vma, delta) {
            // Linux: vrm_calc_charge() — an accounted VMA is charged for the growth.
            if vma.flags().contains(VmFlags::ACCOUNT) {
                self.vm_enough_memory(delta / PAGE_SIZE)?;
            }
            return match g.vma_merge_extend(vma, delta) {
                Some(_) => Ok(r.addr),
                None => Err(Errno::ENOMEM),
            };
        }
        if r.flags & MREMAP_MAYMOVE == 0 {
            return Err(Errno::ENOMEM);
        }
        let target = self.get_unmapped_area(g, 0, r.new_len, false)?;
        self.move_vma(g, vma, r, target)
    }

    /// Can `vma` grow by `delta` bytes where it is? Linux: `vma_expandable()`.
    fn vma_expandable(&self, g: &MmWriteGuard<'_>, vma: VmaRef, delta: usize) -> bool {
        let Some(end) = vma.end().checked_add(delta) else {
            return false;
        };
        end <= self.layout.task_size && g.find_vma_intersection(vma.end(), end).is_none()
    }

    /// Move to a new address (Linux: `mremap_to()`): with MREMAP_FIXED, unmap the
    /// destination first; shrink the source if asked; pick the destination; move.
    fn mremap_to(&self, g: &mut MmWriteGuard<'_>, mut r: Remap) -> Result<usize, Errno> {
        let fixed = r.flags & MREMAP_FIXED != 0;
        if fixed {
            // Linux refuses this in get_unmapped_area (security_mmap_addr) after the
            // destination unmap; refusing before it loses nothing.
            if r.new_addr < self.layout.mmap_min_addr {
                return Err(Errno::EPERM);
            }
            self.do_munmap(g, r.new_addr, r.new_len)?;
        }
        if r.old_len > r.new_len {
            self.do_munmap(g, r.addr + r.new_len, r.old_len - r.new_len)?;
            r.old_len = r.new_len;
        }
        // The unmaps above may have split or replaced the VMA: look it up again.
        let vma = g.vma_lookup(r.addr).ok_or(Errno::EFAULT)?;
        // MREMAP_DONTUNMAP keeps the source, so the address space grows by old_len.
        if r.flags & MREMAP_DONTUNMAP != 0
            && !self.may_expand_vm(g, vma.flags(), r.old_len / PAGE_SIZE)
        {
            return Err(Errno::ENOMEM);
        }
        let target = if fixed {
            r.new_addr
        } else {
            self.get_unmapped_area(g, 0, r.new_len, false)?
        };
        self.move_vma(g, vma, r, target)
    }

    /// A pure move across every VMA in `[addr, addr + old_len)` (Linux: `remap_move()`,
    /// ≈6.17). The first byte must be mapped (EFAULT); later gaps are kept, so each
    /// VMA lands at the same distance from the previous one as before. Each part is
    /// moved as its own MREMAP_FIXED request; a failure part-way leaves the parts
    /// already moved where they went, as in Linux. A userfaultfd-armed VMA may only
    /// move alone (EFAULT otherwise). Returns the first part's new address.
    fn remap_move(&self, g: &mut MmWriteGuard<'_>, r: Remap) -> Result<usize, Errno> {
        // Linux's `end` wraps for a range past the top, and its VMA walk then finds
        // nothing: EFAULT.
        let start = r.addr;
        let end = r.addr.checked_add(r.old_len).ok_or(Errno::EFAULT)?;
        let mut result = Err(Errno::EFAULT);
        let mut target = r.new_addr;
        let mut last_end = 0;
        let mut seen = false;
        // The walk's position (Linux: the VMA iterator's index). It moves past each VMA
        // as found, before the VMA is moved: a VMA that stays where it was (DONTUNMAP,
        // or a source unmap that failed for lack of memory) is not visited again.
        let mut cursor = start;
        // The walk stops at the end of the range (Linux: `vma_find(vmi, end)` finds
        // nothing once the index has passed `end`): a DONTUNMAP copy placed just
        // after the source merges into it (an unfaulted anonymous copy gets the linear
        // pgoff), and that grown VMA, found again past the range, is not ours to move.
        while cursor < end {
            let Some(vma) = g.find_vma(cursor) else {
                break;
            };
            if vma.start() >= end {
                break;
            }
            // A VMA reaching back over the cursor would be moved twice; the overlap
            // check keeps destinations out of the range, so none can.
            debug_assert!(
                !seen || vma.start() >= last_end,
                "remap_move revisits {vma:?}"
            );
            if !seen && start < vma.start() {
                return Err(Errno::EFAULT);
            }
            let addr = vma.start().max(start);
            let len = end.min(vma.end()) - addr;
            let gap = if seen { vma.start() - last_end } else { 0 };
            last_end = vma.end();
            cursor = vma.end();
            let part = Remap {
                addr,
                old_len: len,
                new_len: len,
                flags: r.flags,
                new_addr: target + gap,
            };
            // Linux: vma_multi_allowed() — userfaultfd needs the lock dropped between
            // parts. (No file here has its own get_unmapped_area.)
            if vma.uffd_ctx() != 0 && (seen || vma.end() < end) {
                return Err(Errno::EFAULT);
            }
            self.check_prep(g, vma, &part)?;
            let moved_to = self.mremap_to(g, part)?;
            if !seen {
                result = Ok(moved_to);
            }
            seen = true;
            target = moved_to + len;
        }
        result
    }

    /// Copy the VMA to `new_addr`, move its page-table entries, then unmap the source
    /// (or, with MREMAP_DONTUNMAP, keep it, unlocked and without anon_vma if all of it
    /// moved). Linux: `move_vma()` with `copy_vma_and_data()`, `unmap_source_vma()`
    /// and `dontunmap_complete()`.
    fn move_vma(
        &self,
        g: &mut MmWriteGuard<'_>,
        vma: VmaRef,
        r: Remap,
        new_addr: usize,
    ) -> Result<usize, Errno> {
        // Linux: prep_move_vma() — the copy may add a VMA and the source unmap split one.
        if g.map_count() + 2 > g.max_map_count() {
            return Err(Errno::ENOMEM);
        }
        if let Some(may_split) = vma.ops().and_then(|o| o.may_split) {
            if vma.start() != r.addr {
                may_split(vma, r.addr)?;
            }
            if vma.end() != r.addr + r.old_len {
                may_split(vma, r.addr + r.old_len)?;
            }
        }
        // Linux: vrm_calc_charge() — an accounted VMA is charged for what the move adds:
        // all of the copy if the source stays (DONTUNMAP), else only the growth.
        if vma.flags().contains(VmFlags::ACCOUNT) {
            let added = if r.flags & MREMAP_DONTUNMAP != 0 {
                r.new_len
            } else {
                r.new_len.saturating_sub(r.old_len)
            };
            self.vm_enough_memory(added / PAGE_SIZE)?;
        }
        // Faults must not see the VMA half-moved.
        g.vma_start_write(vma);
        let new_pgoff = vma.pgoff() + (r.addr - vma.start()) / PAGE_SIZE;
        let mut src = vma;
        let (new_vma, _) = g.copy_vma(&mut src, new_addr, r.new_len, new_pgoff)?;
        let moved = r.old_len.min(r.new_len);
        // Both VMAs are write-locked (the copy is new, or a neighbour the merge locked):
        // the page-table lock, innermost, is taken only now.
        // hugetlb (Linux: move_hugetlb_page_tables): under the hugetlb lock and
        // i_mmap (write), shared PD tables of the source are unshared, not moved (the
        // pages refault at the new place from the page cache).
        let hfile = vma
            .flags()
            .contains(VmFlags::HUGETLB)
            .then(|| vma.file(&*g).and_then(|f| crate::file::lookup(&f)))
            .flatten();
        let pt_moved = {
            let _vl = hfile.as_ref().map(|_| vma.hugetlb_vma_lock().write());
            let _im = hfile
                .as_ref()
                .map(|f| crate::file::hugetlbfs::i_mmap_of(f.inode()).lock_write());
            let pt = &*self.pt;
            if hfile.is_some() {
                let mut gather = crate::paging::MmuGather::new(pt);
                crate::hugetlb::share::unshare_range(pt, r.addr, r.addr + moved, &mut gather);
                gather.finish();
            }
            // The tables either range may leave empty go only if no other VMA reaches
            // into them (faults on neighbours run meanwhile).
            let free = (
                super::free_bounds(g, r.addr, r.addr + moved),
                super::free_bounds(g, new_addr, new_addr + moved),
            );
            move_page_tables(pt, r.addr, new_addr, moved, free)
        };
        if let Err(e) = pt_moved {
            // Nothing of the source changed: drop the copy and keep the original.
            self.do_munmap(g, new_addr, r.new_len)?;
            return Err(e);
        }
        // Linux: move_vma → clear_vma_resv_huge_pages(vma): the private reservation
        // went with the copy.
        if !core::ptr::eq(vma, new_vma) {
            crate::file::hugetlbfs::clear_vma_resv_huge_pages(g, vma)?;
        }
        if r.flags & MREMAP_DONTUNMAP != 0 {
            if let Some(old) = g.vma_lookup(r.addr) {
                g.vma_start_write(old);
                let whole = old.start() == r.addr && old.end() == r.addr + r.old_len;
                g.vma_set_flags(old, old.flags() - LOCKED_MASK)?;
                if whole && !core::ptr::eq(old, new_vma) {
                    g.unlink_anon_vmas(old)?;
                }
            }
        } else if r.old_len > 0 {
            // Linux: unmap_source_vma() is best effort too; the move itself is done.
            if let Err(e) = self.do_munmap(g, r.addr, r.old_len) {
                log::warn!("mremap: unmapping the old range failed: {e}");
            }
        }
        Ok(new_addr)
    }
}

/// Moves the entries of `[old, old + len)` to `[new, new + len)` (Linux:
/// `move_page_tables()`). The destination is mapped first, each entry taking its own
/// reference on the frame; only when every entry is in place is the source zapped
/// (which puts the old references and flushes the TLB). If a page-table page cannot
/// be allocated, the entries made so far are zapped and the source is untouched.
fn move_page_tables(
    pt: &PageTableRoot,
    old: usize,
    new: usize,
    len: usize,
    (free_old, free_new): (FreeTables, FreeTables),
) -> Result<(), Errno> {
    let mut off = 0;
    while off < len {
        let Some(t) = pt.translate(va(old + off)) else {
            // Skip the whole span of the missing table, not page by page.
            let span = pt.walk(va(old + off)).level.entry_span() as usize;
            off = ((old + off) / span + 1) * span - old;
            continue;
        };
        // Huge leaves belong to hugetlb VMAs, which move by whole huge pages (Linux:
        // move_hugetlb_page_tables); both addresses are aligned to them.
        let size = t.size.bytes() as usize;
        if !(old + off).is_multiple_of(size)
            || !(new + off).is_multiple_of(size)
            || off + size > len
        {
            zap_locked(pt, new, new + off, free_new)?;
            return Err(Errno::EINVAL);
        }
        let flags = t.flags & crate::paging::LEAF_FLAGS;
        let at = va(new + off);
        if let Err(e) = pt.map(at..at + size as u64, t.frame, t.size, flags) {
            zap_locked(pt, new, new + off.min(len), free_new)?;
            return Err(Errno::from(e));
        }
        off += size;
    }
    zap_locked(pt, old, old + len, free_old)
}
