//! `i_mmap`: every VMA that maps a file, indexed by the file pages it maps (Linux:
//! `address_space::i_mmap` with `i_mmap_rwsem`).
//!
//! The VMA engine keeps it exact: a file VMA is inserted when it is linked into an
//! address space's tree, re-keyed (removed, then re-inserted) whenever a merge or split
//! changes its range or `vm_pgoff`, and removed when it is merged away or unmapped
//! (Linux: `vma_link_file`, `vma_prepare`/`vma_complete`, `unlink_file_vma`). Readers
//! (truncate, hugetlb PMD sharing, rmap) ask which VMAs map file pages `[first, last]`
//! under the read lock and never see a stale or half-updated entry.
//!
//! Lock order: rank 4 of the table in [`crate::sync`]. The engine takes the write side only while it
//! holds the mmap write lock and the affected VMAs' write locks.

use alloc::string::String;
use alloc::vec::Vec;

use super::area::VmaRef;
use crate::collections::IntervalTree;
use crate::errno::Errno;

/// The file page range a VMA maps, inclusive (Linux: `vm_pgoff` .. `vma_last_pgoff`).
fn key(vma: VmaRef) -> (usize, usize) {
    (vma.pgoff(), vma.pgoff() + vma.pages().max(1) - 1)
}

/// One file's `i_mmap` (Linux: `mapping->i_mmap` + `mapping->i_mmap_rwsem`).
pub struct IMmap {
    tree: crate::sync::RwSem<IntervalTree<VmaRef>>,
}

impl Default for IMmap {
    fn default() -> Self {
        Self::new()
    }
}

impl IMmap {
    /// An empty index.
    pub const fn new() -> Self {
        Self {
            tree: crate::sync::RwSem::new(
                crate::sync::lockdep::LockClass::IMmap,
                IntervalTree::new(),
            ),
        }
    }

    /// How many VMAs map the file.
    pub fn len(&self) -> usize {
        self.tree.read().len()
    }

    /// No VMA maps the file.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The VMAs mapping any of file pages `[first, last]`, in `vm_pgoff` order (Linux:
    /// `vma_interval_tree_foreach` under `i_mmap_lock_read`).
    pub fn vmas_overlapping(&self, first: usize, last: usize) -> Vec<VmaRef> {
        self.tree
            .read()
            .overlapping(first, last)
            .map(|(_, _, v)| v)
            .collect()
    }

    /// Every entry as `(first, last, vma)` in `vm_pgoff` order, after checking the
    /// index's structure (see [`IntervalTree::validate`]). For invariant checks
    /// (Linux: `validate_mm` and the `vma_interval_tree` debug checks).
    pub fn entries_validated(&self) -> Result<Vec<(usize, usize, VmaRef)>, String> {
        let t = self.tree.read();
        t.validate()?;
        let mut out = Vec::new();
        out.try_reserve(t.len())
            .map_err(|_| String::from("i_mmap: no memory to list entries"))?;
        out.extend(t.iter());
        Ok(out)
    }

    /// Takes the read side for a walk (Linux: `i_mmap_lock_read`), as hugetlb's
    /// `huge_pmd_share` does.
    pub fn lock_read(&self) -> IMmapRead<'_> {
        IMmapRead {
            tree: self.tree.read(),
        }
    }

    /// Takes the write side without changing the index (Linux: `i_mmap_lock_write`
    /// around hugetlb's unmap, unshare and truncate, which free page tables other
    /// address spaces may be about to share).
    pub fn lock_write(&self) -> IMmapHold<'_> {
        IMmapHold {
            tree: self.tree.write(),
        }
    }

    /// Tries [`lock_write`](Self::lock_write) once.
    pub fn try_lock_write(&self) -> Option<IMmapHold<'_>> {
        self.tree.try_write().map(|tree| IMmapHold { tree })
    }

    /// Takes the write side (Linux: `i_mmap_lock_write`). Engine only.
    pub(super) fn write(&self) -> IMmapWriter<'_> {
        IMmapWriter {
            tree: self.tree.write(),
        }
    }
}

/// The read side of an [`IMmap`] (Linux: `i_mmap_lock_read` held).
pub struct IMmapRead<'a> {
    tree: crate::sync::RwSemReadGuard<'a, IntervalTree<VmaRef>>,
}

impl IMmapRead<'_> {
    /// Calls `f` on each VMA mapping any of file pages `[first, last]` (Linux:
    /// `vma_interval_tree_foreach`); stops early when `f` returns false.
    pub fn for_each(&self, first: usize, last: usize, mut f: impl FnMut(VmaRef) -> bool) {
        for (_, _, v) in self.tree.overlapping(first, last) {
            if !f(v) {
                break;
            }
        }
    }
}

/// The write side of an [`IMmap`] held by a path that does not change the index
/// (hugetlb's unmap, unshare and truncate).
pub struct IMmapHold<'a> {
    tree: crate::sync::RwSemWriteGuard<'a, IntervalTree<VmaRef>>,
}

impl IMmapHold<'_> {
    /// As [`IMmapRead::for_each`].
    pub fn for_each(&self, first: usize, last: usize, mut f: impl FnMut(VmaRef) -> bool) {
        for (_, _, v) in self.tree.overlapping(first, last) {
            if !f(v) {
                break;
            }
        }
    }
}

/// The write side of an [`IMmap`], held while VMAs of the file change.
pub(super) struct IMmapWriter<'a> {
    tree: crate::sync::RwSemWriteGuard<'a, IntervalTree<VmaRef>>,
}

impl IMmapWriter<'_> {
    /// Make room for `n` insertions, so that they cannot fail afterwards.
    pub(super) fn reserve(&mut self, n: usize) -> Result<(), Errno> {
        self.tree.try_reserve(n)
    }

    /// Index `vma` under its current range (Linux: `vma_interval_tree_insert`). Room
    /// must have been reserved.
    pub(super) fn insert(&mut self, vma: VmaRef) {
        let (first, last) = key(vma);
        if self.tree.try_insert(first, last, vma).is_err() {
            // Unreachable when the caller reserved; keep the index consistent anyway.
            self.tree.insert(first, last, vma);
        }
    }

    /// Drop `vma`, keyed by its current range (Linux: `vma_interval_tree_remove`).
    /// Returns whether it was indexed.
    pub(super) fn remove(&mut self, vma: VmaRef) -> bool {
        let (first, last) = key(vma);
        self.tree
            .remove_by(first, last, |v| core::ptr::eq(v, vma))
            .is_some()
    }
}
