//! hugetlbfs: files whose page cache holds huge pages (Linux: `fs/hugetlbfs/inode.c`,
//! `hugetlb_file_setup`, `hugetlb_reserve_pages` / `hugetlb_unreserve_pages` and the
//! `hugetlb_vm_ops` of `mm/hugetlb.c`).
//!
//! A hugetlbfs inode's page cache is indexed by huge page (index `i` is bytes
//! `i * size .. (i + 1) * size`) and each entry holds one reference on a pool page.
//! `mmap` goes through [`FileOperations::mmap_prepare`]: the VMA becomes `VM_HUGETLB |
//! VM_DONTEXPAND` (so it never merges, as in Linux), gets the hugetlb VMA operations and
//! takes its reservation. The fault is [`crate::hugetlb::fault`].

use alloc::sync::Arc;

use super::{File, FileOperations, Inode, OpenMode, VmAreaDesc};
use crate::errno::Errno;
use crate::frame::FrameAllocator;
use crate::hugetlb::{self, Hstate, HugeSize, ResvMap};
use crate::vma::{IMmap, PAGE_SIZE, VmFlags, VmOperations, VmaRef};

/// The name anonymous `MAP_HUGETLB` mappings show in maps (Linux: the dentry name
/// `HUGETLB_ANON_FILE` of an unlinked file, so `d_path` appends ` (deleted)`).
pub const ANON_HUGEPAGE_NAME: &str = "/anon_hugepage (deleted)";

/// The hugetlbfs part of an inode (Linux: `struct hugetlbfs_inode_info` and the
/// inode's `resv_map`).
pub struct HugeInode {
    hs: &'static Hstate,
    /// Shared mappings' reservations: indices reserved or cached (Linux:
    /// `inode_resv_map`).
    resv: ResvMap,
}

impl HugeInode {
    /// The hstate of the file's pages (Linux: `hstate_inode`).
    pub fn hstate(&self) -> &'static Hstate {
        self.hs
    }
    /// The inode's reservation map.
    pub fn resv_map(&self) -> &ResvMap {
        &self.resv
    }
    /// Inode eviction with `pages` pages still cached (their reservations were
    /// consumed): give back the rest (Linux: `hugetlb_unreserve_pages(inode, 0,
    /// LONG_MAX, freed)` from `hugetlbfs_evict_inode`).
    pub(super) fn evict(&self, pages: usize) {
        let chg = self.resv.region_count(0, usize::MAX);
        self.hs.unreserve(chg.saturating_sub(pages));
    }
}

/// hugetlbfs's file operations (Linux: `hugetlbfs_file_operations`).
pub static HUGETLBFS_FILE_OPERATIONS: FileOperations = FileOperations {
    mmap: None,
    mmap_prepare: Some(hugetlbfs_mmap_prepare),
};

/// VMA operations of 2 MiB hugetlb VMAs (Linux: `hugetlb_vm_ops`; one table per page
/// size, so that the size is known from the VMA alone, as `hstate_vma` knows it).
pub static HUGETLB_VM_OPS_2M: VmOperations = VmOperations {
    open: Some(hugetlb_vm_op_open),
    close: Some(hugetlb_vm_op_close),
    may_split: Some(hugetlb_vm_op_split_2m),
    fault: None,
    name: None,
};

/// VMA operations of 1 GiB hugetlb VMAs.
pub static HUGETLB_VM_OPS_1G: VmOperations = VmOperations {
    open: Some(hugetlb_vm_op_open),
    close: Some(hugetlb_vm_op_close),
    may_split: Some(hugetlb_vm_op_split_1g),
    fault: None,
    name: None,
};

/// The huge page size of a hugetlb VMA (Linux: `hstate_vma`); `None` for others.
pub fn vma_huge_size(vma: VmaRef) -> Option<HugeSize> {
    let ops = vma.ops()?;
    if core::ptr::eq(ops, &HUGETLB_VM_OPS_2M) {
        Some(HugeSize::Size2M)
    } else if core::ptr::eq(ops, &HUGETLB_VM_OPS_1G) {
        Some(HugeSize::Size1G)
    } else {
        None
    }
}

/// A private hugetlb mapping's reservation (Linux: the `resv_map` a private VMA owns,
/// `HPAGE_RESV_OWNER`): the indices whose reservation a fault consumed. Shared by the
/// pieces a split makes; each piece's close gives back what its range did not consume.
pub struct PrivateResv {
    hs: &'static Hstate,
    map: ResvMap,
}

impl PrivateResv {
    /// The consumed indices.
    pub fn map(&self) -> &ResvMap {
        &self.map
    }
}

/// The private reservation of `vma`, if it owns one (Linux: `vma_resv_map` with
/// `is_vma_resv_set(vma, HPAGE_RESV_OWNER)`).
pub fn vma_private_resv(vma: VmaRef) -> Option<&'static PrivateResv> {
    if vma_huge_size(vma).is_none() || vma.flags().contains(VmFlags::MAYSHARE) {
        return None;
    }
    let p = vma.private_data() as *const PrivateResv;
    // SAFETY: a private hugetlb VMA's `vm_private_data` is 0 or a pointer from
    // `Arc::into_raw` on which the VMA holds a count (taken in `mmap_prepare` or
    // `open`, dropped in `close`), so it lives as long as the VMA. The `'static`
    // lifetime is the caller's to respect: use it only while the VMA is stable.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// The huge-page index range `[from, to)` a hugetlb VMA maps.
pub fn vma_huge_range(vma: VmaRef, size: HugeSize) -> (usize, usize) {
    let pph = size.bytes() / PAGE_SIZE;
    let from = vma.pgoff() / pph;
    (from, from + (vma.end() - vma.start()) / size.bytes())
}

/// Linux: `clear_vma_resv_huge_pages` (from mremap's `move_vma`): the reservation
/// map stays with the moved copy; the source VMA, about to be unmapped, drops its count
/// on it and gives nothing back when it closes.
pub(crate) fn clear_vma_resv_huge_pages(
    g: &mut crate::vma::MmWriteGuard<'_>,
    vma: VmaRef,
) -> Result<(), Errno> {
    if vma_private_resv(vma).is_none() {
        return Ok(());
    }
    let p = vma.private_data() as *const PrivateResv;
    g.vma_set_private_data(vma, 0)?;
    // SAFETY: the VMA's own count (see `vma_private_resv`), which it no longer holds.
    drop(unsafe { Arc::from_raw(p) });
    Ok(())
}

/// Linux: `hugetlb_vm_op_open` — a new VMA copied from another (split): it holds its
/// own count on the private reservation map.
fn hugetlb_vm_op_open(vma: VmaRef) {
    if vma_private_resv(vma).is_some() {
        // SAFETY: see `vma_private_resv`: the pointer came from `Arc::into_raw` and the
        // VMA it was copied from still holds a count, so the Arc is alive.
        unsafe { Arc::increment_strong_count(vma.private_data() as *const PrivateResv) };
    }
}

/// Linux: `hugetlb_vm_op_close` — the reservations of this VMA's range that no fault
/// consumed go back (`hugetlb_acct_memory(h, -reserve)`), then its count on the map.
fn hugetlb_vm_op_close(vma: VmaRef) {
    let Some(size) = vma_huge_size(vma) else {
        return;
    };
    if let Some(r) = vma_private_resv(vma) {
        let (from, to) = vma_huge_range(vma, size);
        let reserve = (to - from) - r.map.region_count(from, to);
        r.hs.unreserve(reserve);
        // SAFETY: the VMA's own count, taken in `mmap_prepare` or `open`; the VMA is
        // being removed and no one reads its private data after `close`.
        drop(unsafe { Arc::from_raw(vma.private_data() as *const PrivateResv) });
    }
}

fn split_check(size: HugeSize, addr: usize) -> Result<(), Errno> {
    if !addr.is_multiple_of(size.bytes()) {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// Linux: `hugetlb_vm_op_split` — a split must fall on a huge page boundary.
fn hugetlb_vm_op_split_2m(_vma: VmaRef, addr: usize) -> Result<(), Errno> {
    split_check(HugeSize::Size2M, addr)
}

/// As [`hugetlb_vm_op_split_2m`] for 1 GiB pages.
fn hugetlb_vm_op_split_1g(_vma: VmaRef, addr: usize) -> Result<(), Errno> {
    split_check(HugeSize::Size1G, addr)
}

/// A new hugetlbfs file of `size` bytes with pages of `page` (Linux: creating a file
/// on a hugetlbfs mount with `pagesize=`). ENOMEM if it cannot be allocated.
pub fn hugetlbfs_file(
    alloc: &'static FrameAllocator,
    page: HugeSize,
    size: usize,
    name: &str,
    mode: OpenMode,
) -> Result<Arc<File>, Errno> {
    let hs = hugetlb::hstate(alloc, page)?;
    let mut inode = Inode::fields(alloc, size);
    inode.hugetlb = Some(HugeInode {
        hs,
        resv: ResvMap::new(),
    });
    let inode = Arc::try_new(inode).map_err(|_| Errno::ENOMEM)?;
    File::try_build(
        inode,
        mode,
        &HUGETLBFS_FILE_OPERATIONS,
        name,
        None,
        None,
        false,
    )
}

/// The internal file behind an anonymous `MAP_HUGETLB` mapping (Linux:
/// `hugetlb_file_setup(HUGETLB_ANON_FILE, len, VM_NORESERVE?, …)`): `len` rounded to
/// the page size by the caller.
pub fn hugetlb_file_setup(
    alloc: &'static FrameAllocator,
    page: HugeSize,
    len: usize,
) -> Result<Arc<File>, Errno> {
    hugetlbfs_file(alloc, page, len, ANON_HUGEPAGE_NAME, OpenMode::RDWR)
}

/// Linux: `hugetlb_reserve_pages` — reserve the pages `[from, to)` of the mapping
/// `desc` describes: nothing for `VM_NORESERVE`; for a shared mapping the indices the
/// inode's map lacks; for a private one all of them, in a new map the VMA owns.
fn hugetlb_reserve_pages(
    h: &HugeInode,
    from: usize,
    to: usize,
    desc: &mut VmAreaDesc,
) -> Result<(), Errno> {
    if desc.vm_flags.contains(VmFlags::NORESERVE) {
        return Ok(());
    }
    if desc.vm_flags.contains(VmFlags::MAYSHARE) {
        let chg = h.resv.region_chg(from, to);
        h.hs.reserve(chg)?;
        if let Err(e) = h.resv.region_add(from, to) {
            h.hs.unreserve(chg);
            return Err(e);
        }
        return Ok(());
    }
    let r = Arc::try_new(PrivateResv {
        hs: h.hs,
        map: ResvMap::new(),
    })
    .map_err(|_| Errno::ENOMEM)?;
    h.hs.reserve(to - from)?;
    desc.private_data = Arc::into_raw(r) as usize;
    Ok(())
}

/// Linux: `hugetlbfs_file_mmap` — `VM_HUGETLB | VM_DONTEXPAND`, the hugetlb VMA
/// operations, the offset aligned to the page size (EINVAL), the file grown to cover a
/// writable mapping, and the reservation (ENOMEM).
fn hugetlbfs_mmap_prepare(f: &Arc<File>, desc: &mut VmAreaDesc) -> Result<(), Errno> {
    let h = f.inode().hugetlb().ok_or(Errno::EINVAL)?;
    let size = h.hs.size();
    let pph = size.bytes() / PAGE_SIZE;
    if !desc.pgoff.is_multiple_of(pph) {
        return Err(Errno::EINVAL);
    }
    let len = desc.end() - desc.start();
    if !len.is_multiple_of(size.bytes()) {
        return Err(Errno::EINVAL);
    }
    desc.vm_flags |= VmFlags::HUGETLB | VmFlags::DONTEXPAND;
    desc.vm_ops = Some(match size {
        HugeSize::Size2M => &HUGETLB_VM_OPS_2M,
        HugeSize::Size1G => &HUGETLB_VM_OPS_1G,
    });
    let end = (desc.pgoff * PAGE_SIZE)
        .checked_add(len)
        .ok_or(Errno::EOVERFLOW)?;
    let from = desc.pgoff / pph;
    hugetlb_reserve_pages(h, from, from + len / size.bytes(), desc)?;
    if desc.vm_flags.contains(VmFlags::WRITE) && f.inode().size() < end {
        f.inode().set_size(end);
    }
    Ok(())
}

/// Undoes a private reservation [`hugetlbfs_mmap_prepare`] made when the mapping then
/// failed before a VMA took it over (Linux: the `vm_ops->close` of the VMA that
/// `__mmap_region`'s error path unmaps).
pub(crate) fn mmap_prepare_abort(flags: VmFlags, private_data: usize, pages: usize) {
    if private_data == 0 || flags.contains(VmFlags::MAYSHARE) {
        return;
    }
    // SAFETY: `private_data` is the `Arc::into_raw` of `hugetlb_reserve_pages`, never
    // handed to a VMA.
    let r = unsafe { Arc::from_raw(private_data as *const PrivateResv) };
    r.hs.unreserve(pages);
}

/// Truncates the file to `size` bytes, a multiple of the page size (EINVAL
/// otherwise): every mapping of the pages beyond is unmapped (shared page tables
/// unshared), the pages leave the cache and go back to the pool, and their
/// reservations are released (Linux: `hugetlbfs_setattr` → `hugetlb_vmtruncate`).
pub fn hugetlbfs_truncate(f: &File, size: usize) -> Result<(), Errno> {
    let inode = f.inode();
    let h = inode.hugetlb().ok_or(Errno::EINVAL)?;
    let hb = h.hs.size().bytes();
    if !size.is_multiple_of(hb) {
        return Err(Errno::EINVAL);
    }
    inode.set_size(size);
    let first = size / hb;
    hugetlb::share::hugetlb_vmdelete_list(inode, first, usize::MAX);
    remove_inode_hugepages(inode, h, first, usize::MAX);
    Ok(())
}

/// Punches a hole: the whole huge pages inside `[offset, offset + len)` are unmapped
/// everywhere and freed, partial pages at the edges are zeroed (Linux:
/// `hugetlbfs_punch_hole`, `hugetlbfs_zero_partial_page`).
pub fn hugetlbfs_punch_hole(f: &File, offset: usize, len: usize) -> Result<(), Errno> {
    let inode = f.inode();
    let h = inode.hugetlb().ok_or(Errno::EINVAL)?;
    let hb = h.hs.size().bytes();
    let end = offset.checked_add(len).ok_or(Errno::EINVAL)?;
    let hole_start = offset.next_multiple_of(hb);
    let hole_end = end - end % hb;
    zero_partial(inode, h, offset, hole_start.min(end));
    if hole_end > hole_start {
        zero_partial(inode, h, hole_end.max(offset), end);
    }
    if hole_start < hole_end {
        let (first, last) = (hole_start / hb, hole_end / hb - 1);
        hugetlb::share::hugetlb_vmdelete_list(inode, first, last);
        remove_inode_hugepages(inode, h, first, hole_end / hb);
    }
    Ok(())
}

fn zero_partial(inode: &Inode, h: &HugeInode, start: usize, end: usize) {
    if start >= end {
        return;
    }
    let hb = h.hs.size().bytes();
    let _m = hugetlb::fault_mutex(inode as *const Inode as usize, start / hb).lock();
    if let Some(pa) = inode.find_page(start / hb) {
        // SAFETY: a cached pool page the cache holds a reference on; `start % hb ..
        // start % hb + (end - start)` lies inside its block (both in one page).
        unsafe {
            core::ptr::write_bytes(inode.alloc.phys_to_virt(pa).add(start % hb), 0, end - start)
        };
    }
}

/// Linux: `remove_inode_hugepages` — each cached page in `[first, end)` leaves the
/// cache under its fault mutex (unmapped once more if a fault mapped it meanwhile) and
/// its cache reference is put; then `hugetlb_unreserve_pages`.
fn remove_inode_hugepages(inode: &Inode, h: &HugeInode, first: usize, end: usize) {
    let last = end.saturating_sub(1);
    let mut freed = 0;
    for idx in inode.cached_indices(first, last) {
        let _m = hugetlb::fault_mutex(inode as *const Inode as usize, idx).lock();
        let Some(pa) = inode.find_page(idx) else {
            continue;
        };
        if inode.alloc.meta(pa).is_some_and(|m| m.mapcount() > 0) {
            hugetlb::share::hugetlb_vmdelete_list(inode, idx, idx);
        }
        if let Some(pa) = inode.remove_page(idx) {
            freed += 1;
            if let Err(e) = inode.alloc.put_frame(pa) {
                log::error!("hugetlbfs: put of {:#x}: {e}", pa.as_u64());
            }
        }
    }
    // Linux: hugetlb_unreserve_pages — regions gone minus pages that had consumed
    // theirs. A failed region split (no memory) keeps the regions: the reservations
    // stay until eviction, nothing is lost.
    if let Ok(chg) = h.resv.region_del(first, end) {
        h.hs.unreserve(chg.saturating_sub(freed));
    }
}

/// The file's `i_mmap` (hugetlb's sharing and unmap walk it).
pub(crate) fn i_mmap_of(inode: &Inode) -> &IMmap {
    &inode.i_mmap
}
