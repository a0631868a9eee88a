//! The hugetlb fault (Linux: `hugetlb_fault`, `hugetlb_no_page`, `hugetlb_wp`,
//! `huge_pte_alloc` in `mm/hugetlb.c`).
//!
//! Order of locks, as Linux's: the fault mutex of (file, index), the VMA's hugetlb
//! lock (read), then — only to share a PD table — the file's i_mmap lock (read), and
//! last the PD page's split lock (Linux: `huge_pte_lock` → `pmd_lockptr`), taken
//! inside the page-table calls. Pages are zeroed when they leave the pool; a shared
//! mapping maps the page-cache page; a private mapping maps a private copy for
//! writes (from the page cache if the file has the page, zeroed otherwise: hugetlb
//! private mappings never add pages to the cache) and the cache page read-only for
//! reads.

use x86_64::{PhysAddr, VirtAddr};

use super::share::{huge_pmd_share, want_pmd_share};
use super::{Hstate, HugeSize};
use crate::file::hugetlbfs::{self, vma_huge_size, vma_private_resv};
use crate::file::{self, Inode};
use crate::frame::{FrameAllocator, FrameFlags};
use crate::mmap::{Access, FaultError, pte_prot};
use crate::paging::{MmuGather, PageTableFlags, PageTableRoot, Translation};
use crate::vma::{PAGE_SIZE, VmFlags, VmaRef, VmaStable};

fn va(x: usize) -> VirtAddr {
    VirtAddr::new_truncate(x as u64)
}

/// Linux: `hugetlb_fault` — resolve a fault at `addr` in the hugetlb VMA `vma`, which
/// `stable` keeps stable (a VMA read lock or the mmap lock). `access_error` was
/// checked by the caller. The caller holds no page-table lock.
pub fn hugetlb_fault(
    pt: &PageTableRoot,
    stable: &dyn VmaStable,
    vma: VmaRef,
    addr: usize,
    access: Access,
) -> Result<(), FaultError> {
    let size = vma_huge_size(vma).ok_or(FaultError::Bus)?;
    let hb = size.bytes();
    let haddr = addr & !(hb - 1);
    let f = vma
        .file(stable)
        .and_then(|f| file::lookup(&f))
        .ok_or(FaultError::Bus)?;
    let inode = f.inode();
    let h = inode.hugetlb().ok_or(FaultError::Bus)?;
    let pph = hb / PAGE_SIZE;
    let idx = vma.pgoff() / pph + (haddr - vma.start()) / hb;
    let _fm = super::fault_mutex(&**inode as *const Inode as usize, idx).lock();
    let _vl = vma.hugetlb_vma_lock().read();
    // Linux: huge_pte_alloc → huge_pmd_share when the VMA may share.
    if want_pmd_share(vma, haddr) {
        huge_pmd_share(pt, vma, inode, haddr);
    }
    let p = pt;
    let write = access == Access::Write;
    let ctx = Ctx {
        alloc: h.hstate().allocator(),
        hs: h.hstate(),
        vma,
        inode,
        idx,
        haddr,
        size,
        write,
    };
    match p.translate(va(haddr)) {
        None => ctx.no_page(p),
        Some(t) if write && !t.flags.contains(PageTableFlags::WRITABLE) => ctx.wp(p, t),
        Some(_) => Ok(()),
    }
}

/// A page [`Ctx::alloc_private`] took, and whether it consumed a reservation.
struct Private {
    pa: PhysAddr,
    used_resv: bool,
}

struct Ctx<'a> {
    alloc: &'static FrameAllocator,
    hs: &'static Hstate,
    vma: VmaRef,
    inode: &'a Inode,
    idx: usize,
    haddr: usize,
    size: HugeSize,
    write: bool,
}

impl Ctx<'_> {
    /// A page for this private mapping: with the VMA's reservation for the index if it
    /// has one not yet consumed (Linux: `alloc_hugetlb_folio` →
    /// `vma_needs_reservation` / `vma_commit_reservation`).
    fn alloc_private(&self) -> Result<Private, FaultError> {
        let resv = vma_private_resv(self.vma).filter(|r| !r.map().contains(self.idx));
        // Record the consumption first, so that nothing is left to undo but that.
        if let Some(r) = resv {
            r.map()
                .region_add(self.idx, self.idx + 1)
                .map_err(|_| FaultError::Oom)?;
        }
        let Some(pa) = self.hs.alloc_page(resv.is_some()) else {
            if let Some(r) = resv {
                let _ = r.map().region_del(self.idx, self.idx + 1);
            }
            // Linux: no page → -ENOSPC → VM_FAULT_SIGBUS.
            return Err(FaultError::Bus);
        };
        if let Some(m) = self.alloc.meta(pa) {
            // Linux: hugetlb_add_new_anon_rmap → the folio is anon and exclusive.
            m.set_flags(FrameFlags::ANON | FrameFlags::ANON_EXCLUSIVE);
        }
        Ok(Private {
            pa,
            used_resv: resv.is_some(),
        })
    }

    /// A private page that could not be mapped goes back to the pool with its
    /// reservation (Linux: `restore_reserve_on_error` + `folio_put`).
    fn undo_private(&self, p: Private) {
        let _ = self.alloc.put_frame(p.pa);
        if p.used_resv {
            if let Some(r) = vma_private_resv(self.vma) {
                let _ = r.map().region_del(self.idx, self.idx + 1);
            }
            self.hs.restore_reserve();
        }
    }

    fn prot(&self, writable: bool) -> PageTableFlags {
        pte_prot(self.vma.flags(), writable)
    }

    /// Linux: `hugetlb_no_page`.
    fn no_page(&self, p: &PageTableRoot) -> Result<(), FaultError> {
        let hb = self.size.bytes();
        if self
            .idx
            .checked_mul(hb)
            .is_none_or(|o| o >= self.inode.size())
        {
            return Err(FaultError::Bus);
        }
        let flags = self.vma.flags();
        let shared = flags.contains(VmFlags::MAYSHARE);
        let ps = self.size.page_size();
        let cached = self.inode.find_page(self.idx);
        if shared {
            let pa = match cached {
                Some(pa) => pa,
                None => {
                    let h = self.inode.hugetlb().ok_or(FaultError::Bus)?;
                    let resv = h.resv_map().contains(self.idx);
                    // Linux: no page → -ENOSPC → VM_FAULT_SIGBUS.
                    // Every cached page has a region (Linux: vma_commit_reservation
                    // adds one for a page taken without a reservation too), so that
                    // truncation's count stays right; added before the page is taken.
                    if !resv {
                        h.resv_map()
                            .region_add(self.idx, self.idx + 1)
                            .map_err(|_| FaultError::Oom)?;
                    }
                    let undo_region = || {
                        if !resv {
                            let _ = h.resv_map().region_del(self.idx, self.idx + 1);
                        }
                    };
                    let Some(pa) = self.hs.alloc_page(resv) else {
                        undo_region();
                        // Linux: no page → -ENOSPC → VM_FAULT_SIGBUS.
                        return Err(FaultError::Bus);
                    };
                    if self.inode.add_page(self.idx, pa).is_err() {
                        let _ = self.alloc.put_frame(pa);
                        undo_region();
                        if resv {
                            self.hs.restore_reserve();
                        }
                        return Err(FaultError::Oom);
                    }
                    pa
                }
            };
            let writable = flags.contains(VmFlags::SHARED);
            p.map(
                va(self.haddr)..va(self.haddr + hb),
                pa,
                ps,
                self.prot(writable),
            )
            .map_err(|_| FaultError::Oom)?;
            if self.write {
                file::mark_dirty(self.alloc, pa);
            }
            return Ok(());
        }
        match cached {
            // A read maps the file's page read-only; a write copies it (hugetlb_wp).
            Some(pa) if !self.write => p
                .map(
                    va(self.haddr)..va(self.haddr + hb),
                    pa,
                    ps,
                    self.prot(false),
                )
                .map_err(|_| FaultError::Oom),
            src => {
                let new = self.alloc_private()?;
                if let Some(s) = src {
                    copy_huge(self.alloc, s, new.pa, hb);
                }
                let writable = self.write && flags.contains(VmFlags::WRITE);
                p.map_frame(va(self.haddr), new.pa, ps, self.prot(writable))
                    .map_err(|_| {
                        self.undo_private(new);
                        FaultError::Oom
                    })
            }
        }
    }

    /// Linux: `hugetlb_wp` — a write to a read-only present page of a private mapping:
    /// reuse an exclusive private page, else copy (from the cache page or the shared
    /// private page) into a new one.
    fn wp(&self, p: &PageTableRoot, t: Translation) -> Result<(), FaultError> {
        let hb = self.size.bytes();
        let flags = self.vma.flags();
        let mut g = MmuGather::new(p);
        if flags.contains(VmFlags::MAYSHARE) {
            // A shared writable mapping maps writable from the start; this is a stale
            // read-only entry (e.g. after mprotect): make it writable.
            let r = p.protect(va(self.haddr)..va(self.haddr + hb), self.prot(true), &mut g);
            g.finish();
            return r.map_err(|_| FaultError::Oom);
        }
        // Linux: hugetlb_wp reuses an anon folio mapped once (fork cleared its
        // exclusive mark if it shared it), marking it exclusive again.
        let m = self.alloc.meta(t.frame);
        let exclusive = m.is_some_and(|m| {
            let f = m.flags();
            f.contains(FrameFlags::ANON)
                && (f.contains(FrameFlags::ANON_EXCLUSIVE) || m.mapcount() == 1)
        }) && self.inode.find_page(self.idx) != Some(t.frame);
        if exclusive && let Some(m) = m {
            m.set_flags(FrameFlags::ANON_EXCLUSIVE);
        }
        if exclusive {
            let r = p.protect(va(self.haddr)..va(self.haddr + hb), self.prot(true), &mut g);
            g.finish();
            return r.map_err(|_| FaultError::Oom);
        }
        let new = self.alloc_private()?;
        copy_huge(self.alloc, t.frame, new.pa, hb);
        let r = p.replace_frame(va(self.haddr), new.pa, self.prot(true), &mut g);
        g.finish();
        r.map_err(|_| {
            self.undo_private(new);
            FaultError::Oom
        })
    }
}

fn copy_huge(alloc: &FrameAllocator, src: PhysAddr, dst: PhysAddr, bytes: usize) {
    // SAFETY: `src` is a pool page mapped by us or held by the page cache (the fault
    // mutex and the hugetlb vma lock, which every hugetlb unmap and truncation takes
    // for writing, keep it referenced); `dst` was just taken
    // from the pool and is ours alone; both blocks are `bytes` long in the direct map.
    unsafe {
        core::ptr::copy_nonoverlapping(alloc.phys_to_virt(src), alloc.phys_to_virt(dst), bytes)
    };
}

/// The fault path's entry: is `vma` a hugetlb VMA?
pub fn is_hugetlb(vma: VmaRef) -> bool {
    vma.flags().contains(VmFlags::HUGETLB) && hugetlbfs::vma_huge_size(vma).is_some()
}
