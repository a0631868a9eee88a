//! fork for an address space: duplicate every VMA and share the pages copy-on-write.
//!
//! Linux: `kernel/fork.c` (`dup_mm`), `mm/mmap.c` (`dup_mmap`), `mm/memory.c`
//! (`copy_page_range`, `vma_needs_copy`), `mm/hugetlb.c` (`copy_hugetlb_page_range`).
//!
//! # Locking
//! The parent's mmap lock for writing, then the child's (nobody else can reach the
//! child yet: Linux's `mmap_write_lock_nested(mm, SINGLE_DEPTH_NESTING)`); each parent
//! VMA write-locked with `vma_start_write_killable` before it is copied, so no
//! lock-free fault can change its pages meanwhile; the copy is attached only once it
//! is in the child's tree. Page tables: the parent's lock, then the child's, per VMA,
//! after the VMA work (the lock order of [`crate::sync`]).
//!
//! # Failure
//! An allocation failing anywhere returns ENOMEM after the child, with whatever was
//! copied into it, has been torn down by `exit_mmap`. The parent keeps its VMAs and
//! contents; as in Linux (whose failed `dup_mmap` never undoes `copy_present_pte`'s
//! `wrprotect_ptes`), the private writable pages of the VMAs copied before the failure
//! stay write-protected in the parent. The next write to one of them takes a fault
//! that reuses the page in place (`do_wp_page`: the child's references are gone, so the
//! page is the parent's alone), so no content and no page is lost, only a fault spent.

use core::sync::atomic::Ordering;

use x86_64::VirtAddr;

use super::{AddressSpace, va};
use crate::errno::Errno;
use crate::paging::{CopyMode, MmuGather, PageTableRoot};
use crate::vma::{VmFlags, VmaRef};

/// 1 GiB: the span of one PD ("PMD") table, the unit of hugetlb PMD sharing.
const PUD_SIZE: usize = 1 << 30;

/// Linux: `is_cow_mapping()` — private and possibly writable.
pub(crate) fn is_cow_mapping(f: VmFlags) -> bool {
    f & (VmFlags::SHARED | VmFlags::MAYWRITE) == VmFlags::MAYWRITE
}

/// Must fork copy this VMA's page tables, or will faults in the child fill them in
/// correctly (Linux: `vma_needs_copy()`)? Always for a userfaultfd-wp VMA (its PTEs
/// carry the protection), a PFN or mixed mapping (no fault handler could rebuild them),
/// and a VMA with an anon_vma (its private pages exist nowhere else); never for
/// shared or read-only file mappings, which fault back in from the page cache.
fn vma_needs_copy(dst: VmaRef, src: VmaRef) -> bool {
    dst.flags().contains(VmFlags::UFFD_WP)
        || src.flags().intersects(VmFlags::PFNMAP | VmFlags::MIXEDMAP)
        || src.has_anon_vma()
}

impl AddressSpace {
    /// Duplicate this address space for a child process (Linux: `dup_mm` →
    /// `mm_init` + `dup_mmap`): same layout and kernel half, every VMA copied but those
    /// marked `VM_DONTCOPY` (`MADV_DONTFORK`), `VM_WIPEONFORK` ones empty, private
    /// pages shared copy-on-write.
    ///
    /// Errors: ENOMEM (nothing of the child is left; see the module docs for the
    /// parent), EINTR if [`MmHooks::fatal_signal_pending`] reports a fatal signal.
    ///
    /// [`MmHooks::fatal_signal_pending`]: crate::vma::MmHooks::fatal_signal_pending
    pub fn fork(&self) -> Result<AddressSpace, Errno> {
        let kernel = self.pt.kernel_pml4();
        // SAFETY: `kernel` is the kernel PML4 this space's own root was built from (or
        // none), under the contract of `PageTableRoot::new` its creator vouched for: a
        // live PML4 reachable through the same allocator's direct map whose upper-half
        // tables outlive every space made from it.
        let pt = unsafe { PageTableRoot::new(self.alloc, kernel) }.map_err(Errno::from)?;
        let child = AddressSpace::from_root(self.alloc, pt, self.layout)?;
        let sp = self.start_stack.load(Ordering::Relaxed);
        child.start_stack.store(sp, Ordering::Relaxed);
        // On failure `child` drops here: exit_mmap frees whatever was copied into it.
        self.dup_mmap(&child)?;
        Ok(child)
    }

    /// Linux: `dup_mmap()`.
    fn dup_mmap(&self, child: &AddressSpace) -> Result<(), Errno> {
        // Linux: mmap_write_lock_killable(oldmm). A spin lock here: nothing to kill
        // while waiting for it.
        let mut pg = self.mm.write_lock();
        // Linux: mmap_write_lock_nested(mm, SINGLE_DEPTH_NESTING): the child's lock
        // under the parent's (no one else can reach the child yet).
        let mut cg = child.mm.write_lock_nested();
        cg.set_max_map_count(pg.max_map_count());
        cg.set_hooks(pg.hooks());
        let mut addr = 0;
        while let Some(mpnt) = pg.vma_next_from(addr) {
            addr = mpnt.end();
            pg.vma_start_write_killable(mpnt)?;
            if mpnt.flags().contains(VmFlags::DONTCOPY) {
                continue;
            }
            // Linux: don't duplicate many VMAs if we've been OOM-killed.
            if pg.fatal_signal_pending() {
                return Err(Errno::EINTR);
            }
            if mpnt.flags().contains(VmFlags::ACCOUNT) {
                self.vm_enough_memory(mpnt.pages())?;
            }
            // The hugetlb layer finds the child's page tables by its mm id (PMD
            // sharing, truncation, the split's unshare).
            if mpnt.flags().contains(VmFlags::HUGETLB) {
                crate::hugetlb::register_mm(child.mm.id(), &child.pt)?;
            }
            let tmp = cg.dup_vma_for_fork(mpnt, &pg)?;
            if !tmp.flags().contains(VmFlags::WIPEONFORK) {
                self.copy_page_range(child, tmp, mpnt)?;
            }
        }
        Ok(())
    }

    /// Copy `src`'s page tables into the child for its copy `dst` (Linux:
    /// `copy_page_range()`), if they need copying at all.
    fn copy_page_range(&self, child: &AddressSpace, dst: VmaRef, src: VmaRef) -> Result<(), Errno> {
        if !vma_needs_copy(dst, src) {
            return Ok(());
        }
        // Linux holds the child's PTE lock and, nested, the parent's; here the copy
        // takes one table lock at a time (`paging::copy`): the parent's VMA is
        // write-locked and the child is not reachable yet.
        let dpt = &*child.pt;
        let spt = &*self.pt;
        if src.flags().contains(VmFlags::HUGETLB) {
            return copy_hugetlb_page_range(dpt, spt, dst, src);
        }
        copy_range(dpt, spt, src, src.start(), src.end())
    }
}

/// The copy of `[start, end)` of `src` (Linux: `copy_p4d_range` … `copy_pte_range` with
/// `copy_present_pte`), flushing the parent's write-protected entries at the end
/// (Linux: `flush_tlb_mm(oldmm)` once `dup_mmap` is done; per VMA here).
fn copy_range(
    dpt: &PageTableRoot,
    spt: &PageTableRoot,
    src: VmaRef,
    start: usize,
    end: usize,
) -> Result<(), Errno> {
    let f = src.flags();
    let mode = CopyMode {
        cow: is_cow_mapping(f),
        shared: f.contains(VmFlags::SHARED),
    };
    let mut g = MmuGather::new(spt);
    let r = spt.copy_range_to(dpt, va(start)..va(end), mode, &mut g);
    g.finish();
    r.map(|_| ()).map_err(Errno::from)
}

/// Copy a hugetlb VMA's page tables into the child (Linux: `copy_hugetlb_page_range`).
///
/// The plug point of the hugetlb work: where the child's table for an address would be
/// made by `huge_pte_alloc`, a shareable VMA (`VM_MAYSHARE`, the whole 1 GiB inside it:
/// `want_pmd_share`) shares the parent's PD table instead (`huge_pmd_share`, after which
/// Linux skips the entries: `dst_pte == src_pte`); everything else is copied leaf by
/// leaf as for any VMA, huge leaves whole, private ones write-protected in both
/// (`huge_ptep_set_wrprotect`). The hugetlb reservation and `hugetlb_vma_lock` rules
/// of the real function belong to the hugetlb layer and are not modelled here.
pub(crate) fn copy_hugetlb_page_range(
    dpt: &PageTableRoot,
    spt: &PageTableRoot,
    dst: VmaRef,
    src: VmaRef,
) -> Result<(), Errno> {
    let (start, end) = (src.start(), src.end());
    let mayshare = dst.flags().contains(VmFlags::MAYSHARE);
    let mut a = start;
    while a < end {
        let chunk_end = ((a / PUD_SIZE) + 1).saturating_mul(PUD_SIZE).min(end);
        let whole = a.is_multiple_of(PUD_SIZE) && chunk_end - a == PUD_SIZE;
        if mayshare && whole && spt.pmd_table_at(VirtAddr::new(a as u64)).is_some() {
            dpt.share_pmd_with(va(a), spt, va(a)).map_err(Errno::from)?;
        } else {
            copy_range(dpt, spt, src, a, chunk_end)?;
        }
        a = chunk_end;
    }
    Ok(())
}
