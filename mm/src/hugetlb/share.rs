//! PMD page-table sharing for hugetlb and the paths that undo it (Linux:
//! `want_pmd_share`, `page_table_shareable`, `huge_pmd_share`, `huge_pmd_unshare`,
//! `hugetlb_unshare_pmds`, `hugetlb_split`, `__unmap_hugepage_range`,
//! `hugetlb_vmdelete_list` in `mm/hugetlb.c` and `fs/hugetlbfs/inode.c`).
//!
//! # Who may free a hugetlb PD table
//! `huge_pmd_share` reads another address space's PD table under the file's i_mmap
//! lock (read) and installs it in ours. That is safe because every path that can
//! free or unlink a PD table under a hugetlb VMA holds that file's i_mmap lock for
//! writing: the hugetlb unmap ([`unmap_hugepage_range`] from munmap, MAP_FIXED,
//! MADV_DONTNEED and exit), mprotect's unshare, truncation ([`hugetlb_vmdelete_list`])
//! and the split ([`hugetlb_split`], under the engine's write lock).

use x86_64::VirtAddr;

use super::{HugeSize, mm_page_tables};
use crate::file::hugetlbfs::{self, vma_huge_size};
use crate::file::{File, Inode};
use crate::paging::{MmuGather, PageTableRoot};
use crate::vma::{IMmap, PAGE_SIZE, VmFlags, VmaRef};

/// Bytes a PD table maps (Linux: `PUD_SIZE`).
pub const PUD_SIZE: usize = 1 << 30;

/// Flags that may differ between sharers (Linux: `VM_LOCKED_MASK`).
const LOCKED_MASK: VmFlags = VmFlags::LOCKED.union(VmFlags::LOCKONFAULT);

fn va(x: usize) -> VirtAddr {
    VirtAddr::new_truncate(x as u64)
}

/// Linux: `want_pmd_share` + `pmd_sharing_possible`: a `VM_MAYSHARE` 2 MiB hugetlb
/// VMA covering the whole 1 GiB-aligned interval around `addr`.
pub fn want_pmd_share(vma: VmaRef, addr: usize) -> bool {
    if vma_huge_size(vma) != Some(HugeSize::Size2M) || !vma.flags().contains(VmFlags::MAYSHARE) {
        return false;
    }
    let base = addr & !(PUD_SIZE - 1);
    base >= vma.start() && base.checked_add(PUD_SIZE).is_some_and(|e| e <= vma.end())
}

/// Linux: `page_table_shareable` — where `svma` maps file page `idx` (4 KiB units), if
/// its table there could serve `vma` at `addr`: same offset within 1 GiB, same flags
/// apart from the mlock bits, and the whole interval inside `svma`.
fn page_table_shareable(svma: VmaRef, vma: VmaRef, addr: usize, idx: usize) -> Option<usize> {
    let saddr = idx.checked_sub(svma.pgoff())?.checked_mul(PAGE_SIZE)? + svma.start();
    let sbase = saddr & !(PUD_SIZE - 1);
    let pmd_index = |a: usize| (a >> 21) & 511;
    if pmd_index(addr) != pmd_index(saddr)
        || vma.flags() - LOCKED_MASK != svma.flags() - LOCKED_MASK
        || sbase < svma.start()
        || sbase + PUD_SIZE > svma.end()
        || vma_huge_size(svma) != Some(HugeSize::Size2M)
    {
        return None;
    }
    Some(saddr)
}

/// Linux: `huge_pmd_share` — for a fault at `addr` in `vma` (a [`want_pmd_share`]
/// VMA of file `inode`), under the file's i_mmap read lock: find another VMA mapping
/// the same file page with a shareable PD table and, if our PDPT entry is still empty
/// under our `page_table_lock`, install that table and count the share. Returns
/// whether it shared. The caller holds the VMA's hugetlb lock (read) and the fault
/// mutex, and no page-table lock (rank 6, taken here after i_mmap).
pub fn huge_pmd_share(pt: &PageTableRoot, vma: VmaRef, inode: &Inode, addr: usize) -> bool {
    let base = addr & !(PUD_SIZE - 1);
    if pt.pmd_table_at(va(base)).is_some() {
        return false;
    }
    let idx = (addr - vma.start()) / PAGE_SIZE + vma.pgoff();
    let im = hugetlbfs::i_mmap_of(inode).lock_read();
    let mut found = None;
    im.for_each(idx, idx, |svma| {
        if core::ptr::eq(svma, vma) {
            return true;
        }
        let Some(saddr) = page_table_shareable(svma, vma, addr, idx) else {
            return true;
        };
        let Some(spt) = mm_page_tables(svma.mm_id()) else {
            return true;
        };
        // Another space's PDPT entry, read without its lock: the table it points at
        // cannot be freed while we hold i_mmap (module docs).
        let table = spt.pmd_table_at(va(saddr & !(PUD_SIZE - 1)));
        match table {
            Some(t) => {
                found = Some(t);
                false
            }
            None => true,
        }
    });
    let Some(table) = found else {
        return false;
    };
    let p = pt;
    // Linux re-checks pud_none under the page-table lock: `share_pmd_table` does, and
    // fails with `AlreadyMapped` if another fault linked a table meanwhile.
    // SAFETY: `table` is a PD table linked in another space (read under its lock);
    // it stays alive while we hold the i_mmap read lock, since every path that frees
    // or unlinks a hugetlb PD table holds it for writing (module docs). Same allocator:
    // every address space registered here draws from the one the VMA's file uses.
    let r = unsafe { p.share_pmd_table(va(base), table) };
    drop(im);
    r.is_ok()
}

/// Linux: `huge_pmd_unshare` for every 1 GiB interval that `[start, end)` touches:
/// a shared PD table there is unlinked from this space (never emptied: the other
/// sharers keep their mappings), the whole interval queued for a flush in `g`.
/// Returns how many were unshared. The caller holds the file's i_mmap lock for
/// writing and flushes `g` before dropping it (`huge_pmd_unshare_flush`).
pub fn unshare_range(pt: &PageTableRoot, start: usize, end: usize, g: &mut MmuGather) -> usize {
    let mut n = 0;
    let mut b = start & !(PUD_SIZE - 1);
    while b < end {
        if pt.is_pmd_shared(va(b)) && pt.unshare_pmd(va(b), g) == Ok(true) {
            n += 1;
        }
        b = match b.checked_add(PUD_SIZE) {
            Some(x) => x,
            None => break,
        };
    }
    n
}

/// Linux: `__unmap_hugepage_range` for `[start, end)` (huge-page aligned) of a
/// hugetlb VMA: shared tables are unshared, the rest is zapped. The caller holds the
/// VMA's hugetlb lock and its file's i_mmap lock for writing.
pub fn unmap_hugepage_range(pt: &PageTableRoot, start: usize, end: usize, g: &mut MmuGather) {
    unshare_range(pt, start, end, g);
    // The tables stay (Linux: `__unmap_hugepage_range` frees none): a truncation
    // leaves the VMA in place, and munmap frees what no VMA reaches any more after.
    if let Err(e) = pt.unmap_freeing(va(start)..va(end), crate::paging::FreeTables::Keep, g) {
        log::error!("hugetlb: unmap {start:#x}..{end:#x}: {e}");
    }
}

/// Linux: `__split_vma`'s `hugetlb_split(vma, addr)` (6.16, the CVE-2025-38084 fix):
/// called with `vma` and the new VMA write-locked and the file's i_mmap write lock
/// held, before the ranges change. A split inside a 1 GiB interval that `vma` covers
/// ends sharing for that interval (neither half covers it afterwards); a split on a
/// 1 GiB boundary changes nothing. The hugetlb VMA lock is not taken: it ranks above
/// i_mmap, and the VMA write lock already keeps faults out.
pub fn hugetlb_split(vma: VmaRef, addr: usize) {
    if addr.is_multiple_of(PUD_SIZE) {
        return;
    }
    let floor = addr & !(PUD_SIZE - 1);
    let ceil = floor + PUD_SIZE;
    if floor < vma.start() || ceil > vma.end() {
        return;
    }
    #[cfg(feature = "fault-inject")]
    if SKIP_SPLIT_UNSHARE.load(core::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let Some(pt) = mm_page_tables(vma.mm_id()) else {
        return;
    };
    let p = &*pt;
    let mut g = MmuGather::new(p);
    unshare_range(p, floor, ceil, &mut g);
    // Linux: flush_hugetlb_tlb_range before the i_mmap lock is dropped.
    g.finish();
}

/// Test-only: make [`hugetlb_split`] skip the unshare (the broken implementation the
/// split tests must catch).
#[cfg(feature = "fault-inject")]
pub static SKIP_SPLIT_UNSHARE: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(false);

/// Linux: `hugetlb_vmdelete_list` (+ `unmap_hugepage_range` per VMA) — unmaps file
/// pages `[first, last]` (huge-page indices) from every VMA of every address space,
/// under the file's i_mmap write lock and each VMA's hugetlb lock (taken with a
/// trylock, as Linux does, since it ranks above i_mmap; on contention everything is
/// dropped and retried).
pub fn hugetlb_vmdelete_list(inode: &Inode, first: usize, last: usize) {
    let Some(h) = inode.hugetlb() else {
        return;
    };
    let hb = h.hstate().size().bytes();
    let pph = hb / PAGE_SIZE;
    let im: &IMmap = hugetlbfs::i_mmap_of(inode);
    let (f4, l4) = (
        first.saturating_mul(pph),
        last.saturating_mul(pph).saturating_add(pph - 1),
    );
    loop {
        let w = im.lock_write();
        let mut busy = false;
        w.for_each(f4, l4, |v| {
            let Some(_vl) = v.hugetlb_vma_lock().try_write() else {
                busy = true;
                return false;
            };
            let vfirst = v.pgoff() / pph;
            let s = first.max(vfirst);
            let e = (last.saturating_add(1)).min(vfirst + (v.end() - v.start()) / hb);
            if s >= e {
                return true;
            }
            let Some(pt) = mm_page_tables(v.mm_id()) else {
                return true;
            };
            let (start, end) = (v.start() + (s - vfirst) * hb, v.start() + (e - vfirst) * hb);
            let p = &*pt;
            let mut g = MmuGather::new(p);
            unmap_hugepage_range(p, start, end, &mut g);
            g.finish();
            true
        });
        drop(w);
        if !busy {
            return;
        }
        core::hint::spin_loop();
    }
}

/// The hugetlb part of an address space's unmap of `vma`'s `[start, end)`: under the
/// VMA's hugetlb lock and its file's i_mmap lock (both write), shared tables are
/// unshared and the rest zapped, and the flush is done before i_mmap is dropped
/// (Linux: `__unmap_hugepage_range_final`).
pub fn unmap_vma_range(pt: &PageTableRoot, vma: VmaRef, file: &File, start: usize, end: usize) {
    let _vl = vma.hugetlb_vma_lock().write();
    let _w = hugetlbfs::i_mmap_of(file.inode()).lock_write();
    let p = pt;
    let mut g = MmuGather::new(p);
    unmap_hugepage_range(p, start, end, &mut g);
    g.finish();
}
