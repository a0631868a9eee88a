//! `validate_mm`: the whole-address-space invariant check the fuzzer runs after every
//! call (Linux: `validate_mm()` in `mm/vma.c` under `CONFIG_DEBUG_VM_MAPLE_TREE`, plus
//! what `CONFIG_DEBUG_VM` / `page_table_check` assert about PTEs).
//!
//! Linux checks the tree, the counts and the anon_vma chains there; this model also
//! checks the page tables against the VMAs (every PTE inside a VMA that allows it,
//! frames of the right kind and counts) and each file's `i_mmap` against the VMAs of
//! the address spaces that map the file ([`validate_i_mmap`]).

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use super::AddressSpace;
use crate::file::{self, Inode, hugetlbfs};
use crate::frame::FrameFlags;
use crate::hugetlb::share::PUD_SIZE;
use crate::paging::PageTableRoot;
use crate::paging::{Leaf, PageTableFlags as F};
use crate::vma::{MmWriteGuard, PAGE_SIZE, VmFlags, VmaRef};

impl AddressSpace {
    /// Check every invariant of the address space and describe the first broken one.
    ///
    /// Takes the mmap write lock (Linux runs `validate_mm` with it held); with no
    /// fault running, the page tables read consistently without their locks. Checked:
    ///
    /// - the VMA layer ([`MmWriteGuard::validate`]): tree order and counts, the gap
    ///   cache, attachment and ownership of every VMA, `i_mmap` membership;
    /// - every VMA inside `[mmap_min_addr, task_size)`;
    /// - no empty page-table page is left linked (unmaps free what they empty);
    /// - every leaf (present or PROT_NONE) lies inside one VMA and is user-accessible;
    ///   present only if the VMA allows some access, PROT_NONE only if it allows none
    ///   (see `pte_prot`); writable only with `VM_WRITE`; executable (NX clear) only
    ///   with `VM_EXEC`; unaccounted only in a `VM_PFNMAP`/`VM_IO`/`VM_MIXEDMAP` VMA;
    /// - the frame behind each accounted leaf: the zero page never writable; in an
    ///   anonymous VMA the zero page or an anonymous page; in a file VMA an anonymous
    ///   (COW) page only if private, otherwise the file's page-cache page at exactly
    ///   the VMA's file offset for that address; a writable leaf of a private VMA
    ///   maps an anonymous page mapped once (never the zero or a page-cache page, never
    ///   one another PTE also maps: COW); an anonymous page only in a VMA with an
    ///   anon_vma (Linux: `folio_add_new_anon_rmap` needs `vma->anon_vma`);
    /// - per frame: references ≥ map count ≥ leaves of this space mapping it.
    pub fn validate_mm(&self) -> Result<(), String> {
        let g = self.mm.write_lock();
        g.validate()?;
        let vmas = g.vmas();
        let l = &self.layout;
        for v in &vmas {
            if v.start() < l.mmap_min_addr || v.end() > l.task_size {
                return Err(format!(
                    "VMA {:#x}..{:#x} outside [mmap_min_addr {:#x}, task_size {:#x})",
                    v.start(),
                    v.end(),
                    l.mmap_min_addr,
                    l.task_size
                ));
            }
        }
        // Page-cache lookups per VMA happen during the page-table walk below; resolve
        // each file VMA's inode first (no allocation under that lock beyond the map).
        let inodes: Vec<Option<Arc<Inode>>> = vmas
            .iter()
            .map(|v| {
                v.file(&g)
                    .as_ref()
                    .and_then(file::lookup)
                    .map(|f| f.inode().clone())
            })
            .collect();
        let pt = &*self.pt;
        check_hugetlb(&vmas, pt)?;
        // Empty tables may stay where a VMA still reaches (MADV_DONTNEED, an unmap
        // beside a neighbour), never where none does (a leak of `free_pgtables`).
        let needed = |s: u64, e: u64| {
            vmas.iter()
                .any(|v| (v.start() as u64) < e && s < v.end() as u64)
        };
        if let Some((level, va)) = pt.first_empty_table_where(needed) {
            return Err(format!(
                "page tables: empty {level:?} table linked at {va:#x}, under no VMA"
            ));
        }
        let mut mapped: BTreeMap<u64, u32> = BTreeMap::new();
        let mut i = 0;
        for leaf in pt.leaves() {
            let va = leaf.va as usize;
            let end = va + leaf.size.bytes() as usize;
            while i < vmas.len() && vmas[i].end() <= va {
                i += 1;
            }
            let Some(&v) = vmas.get(i).filter(|v| v.start() <= va && end <= v.end()) else {
                return Err(format!(
                    "PTE {va:#x} ({:?}, frame {:#x}, {:?}) outside every VMA",
                    leaf.size,
                    leaf.frame.as_u64(),
                    leaf.flags
                ));
            };
            self.check_leaf(&g, v, inodes[i].as_deref(), &leaf)?;
            if leaf.accounted {
                *mapped.entry(leaf.frame.as_u64()).or_insert(0) += 1;
            }
        }
        for (&pa, &n) in &mapped {
            let Some(m) = self.alloc.meta(x86_64::PhysAddr::new(pa)) else {
                return Err(format!("frame {pa:#x} mapped but unknown to the allocator"));
            };
            if !m.flags().contains(FrameFlags::HEAD)
                || m.refcount() < m.mapcount()
                || m.mapcount() < n
            {
                return Err(format!(
                    "frame {pa:#x}: {n} PTEs here, mapcount {}, refcount {}, flags {:?}",
                    m.mapcount(),
                    m.refcount(),
                    m.flags()
                ));
            }
        }
        Ok(())
    }

    fn check_leaf(
        &self,
        g: &MmWriteGuard<'_>,
        v: VmaRef,
        inode: Option<&Inode>,
        leaf: &Leaf,
    ) -> Result<(), String> {
        let f = v.flags();
        let va = leaf.va as usize;
        let fl = leaf.flags;
        let bad = |what: &str| {
            Err(format!(
                "PTE {va:#x} (frame {:#x}, {fl:?}, accounted {}) in VMA {:#x}..{:#x} {f:?}: {what}",
                leaf.frame.as_u64(),
                leaf.accounted,
                v.start(),
                v.end()
            ))
        };
        if !fl.contains(F::USER_ACCESSIBLE) {
            return bad("not user-accessible");
        }
        if let Some(h) = hugetlbfs::vma_huge_size(v)
            && h.page_size() != leaf.size
        {
            return bad("hugetlb VMA maps a leaf of another size");
        }
        let access = f.intersects(VmFlags::ACCESS);
        if fl.contains(F::PRESENT) != access {
            return bad(if access {
                "PROT_NONE PTE in an accessible VMA"
            } else {
                "present PTE in a PROT_NONE VMA"
            });
        }
        if fl.contains(F::WRITABLE) && !f.contains(VmFlags::WRITE) {
            return bad("writable without VM_WRITE");
        }
        if !fl.contains(F::NO_EXECUTE) && !f.contains(VmFlags::EXEC) {
            return bad("executable without VM_EXEC");
        }
        let special = f.intersects(VmFlags::PFNMAP | VmFlags::IO | VmFlags::MIXEDMAP);
        if !leaf.accounted {
            return if special {
                Ok(())
            } else {
                bad("unaccounted PTE outside a PFN mapping")
            };
        }
        if special {
            return Ok(());
        }
        let frame = leaf.frame;
        let kind = self
            .alloc
            .meta(frame)
            .map_or(FrameFlags::empty(), |m| m.flags());
        let zero = frame == self.zero;
        if zero && !kind.contains(FrameFlags::ZERO) {
            return bad("the zero page lost its ZERO mark");
        }
        if zero && fl.contains(F::WRITABLE) {
            return bad("writable zero page");
        }
        let anon = kind.contains(FrameFlags::ANON) && !zero;
        let shared = f.contains(VmFlags::SHARED);
        if fl.contains(F::WRITABLE) && !shared {
            if !anon {
                return bad("writable PTE of a private mapping maps a shared page (missed COW)");
            }
            let mapcount = self.alloc.meta(frame).map_or(0, |m| m.mapcount());
            if mapcount != 1 {
                return bad(&format!(
                    "writable PTE of a private mapping maps an anonymous page mapped {mapcount} times"
                ));
            }
            // Linux: a writable anonymous PTE maps a PageAnonExclusive page.
            if !kind.contains(FrameFlags::ANON_EXCLUSIVE) {
                return bad(
                    "writable PTE of a private mapping maps a non-exclusive anonymous page",
                );
            }
        }
        if anon && !v.has_anon_vma() {
            return bad("anonymous page in a VMA without an anon_vma (no rmap to it)");
        }
        match v.file(g) {
            None => {
                if !zero && !anon {
                    return bad("anonymous VMA maps neither the zero page nor an anonymous page");
                }
            }
            Some(_) if anon && !shared => {}
            Some(_) => {
                let Some(inode) = inode else {
                    return bad("file VMA whose file is not a VFS file");
                };
                let idx = match hugetlbfs::vma_huge_size(v) {
                    // hugetlbfs caches by huge page.
                    Some(h) => v.pgoff() / (h.bytes() / PAGE_SIZE) + (va - v.start()) / h.bytes(),
                    None => v.pgoff() + (va - v.start()) / PAGE_SIZE,
                };
                if inode.find_page(idx) != Some(frame) {
                    return bad(&format!(
                        "not the page-cache page of file index {idx:#x} ({:?})",
                        inode.find_page(idx).map(|p| p.as_u64())
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The hugetlb invariants (Linux: what `want_pmd_share` and the CVE-2025-38084 fix
/// guarantee): every hugetlb VMA is aligned to its page size, and a PD table shared
/// with another space sits only under a `VM_MAYSHARE` 2 MiB hugetlb VMA that covers
/// the whole 1 GiB interval.
fn check_hugetlb(vmas: &[VmaRef], pt: &PageTableRoot) -> Result<(), String> {
    for v in vmas {
        if let Some(h) = hugetlbfs::vma_huge_size(v)
            && (!v.start().is_multiple_of(h.bytes()) || !v.end().is_multiple_of(h.bytes()))
        {
            return Err(format!(
                "hugetlb VMA {:#x}..{:#x} not aligned to {:?}",
                v.start(),
                v.end(),
                h
            ));
        }
    }
    // Every shared PD table sits under one VMA that covers its whole interval and may
    // share it.
    let mut bad = None;
    pt.for_each_shared_pmd(|b| {
        let b = b.as_u64() as usize;
        let end = b + PUD_SIZE;
        let first = vmas.partition_point(|v| v.end() <= b);
        let ok = vmas
            .get(first)
            .is_some_and(|v| crate::hugetlb::share::want_pmd_share(v, b));
        if !ok && bad.is_none() {
            bad = Some(match vmas.get(first).filter(|v| v.start() < end) {
                Some(v) => format!(
                    "VMA {:#x}..{:#x} {:?} maps the 1 GiB at {b:#x} through a shared PD table \
                     without covering it as a shareable hugetlb VMA",
                    v.start(),
                    v.end(),
                    v.flags()
                ),
                None => format!("a shared PD table at {b:#x} under no VMA"),
            });
        }
    });
    if let Some(e) = bad {
        return Err(e);
    }
    Ok(())
}

/// Check that `inode`'s `i_mmap` holds exactly the VMAs of `spaces` that map it
/// (through any file opened on the inode), each once and under its current file
/// page range, and that the index's structure is sound. The caller passes every live
/// address space that may map the inode. Linux: the rmap invariant `validate_mm`
/// relies on (`vma_interval_tree_*` with `CONFIG_DEBUG_VM_RB`).
pub fn validate_i_mmap(inode: &Inode, spaces: &[&AddressSpace]) -> Result<(), String> {
    let mut want: Vec<(usize, usize, usize)> = Vec::new();
    for asp in spaces {
        let g = asp.mm.write_lock();
        for v in g.vmas() {
            let Some(f) = v.file(&g).as_ref().and_then(file::lookup) else {
                continue;
            };
            if core::ptr::eq(f.inode().as_ref(), inode) {
                let last = v.pgoff().saturating_add(v.pages()) - 1;
                want.push((v.pgoff(), last, v as *const _ as usize));
            }
        }
    }
    let mut got: Vec<(usize, usize, usize)> = inode
        .i_mmap()
        .entries_validated()?
        .into_iter()
        .map(|(first, last, v)| (first, last, v as *const _ as usize))
        .collect();
    want.sort_unstable();
    got.sort_unstable();
    if want != got {
        return Err(format!(
            "i_mmap of inode {}: holds {got:x?}, the address spaces map {want:x?} \
             (first page, last page, VMA)",
            inode.ino()
        ));
    }
    Ok(())
}
