//! How VMAs enter, change and leave the tree: link, the commit of a merge or split,
//! and the munmap gather (detach, then remove once the page tables are gone).
//!
//! Linux: `mm/vma.c` (`vma_link`, `vma_prepare` / `vma_complete` around
//! `commit_merge`, `vms_gather_munmap_vmas`, `vms_complete_munmap_vmas`,
//! `remove_vma`), `mm/mmap.c` (`insert_vm_struct`). Every change goes through here,
//! so the tree, `map_count`, the page counters ([`super::VmStat`]) and each file's
//! `i_mmap` change together, after the tree nodes they need were preallocated.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use super::area::{FileRef, PAGE_SHIFT, VmFlags, VmaRef};
use super::i_mmap::IMmapWriter;
use super::lock;
use super::pool as valloc;
use super::space::{MmWriteGuard, VmaIterator};
use crate::errno::Errno;

impl MmWriteGuard<'_> {
    // ---- linking ------------------------------------------------------------------

    /// Insert a detached VMA into the tree: write-lock, store, attach, map_count++.
    /// Fails with ENOMEM on overlap or preallocation failure (nothing changed).
    /// Linux: `vma_link()`.
    pub fn vma_link(&mut self, vma: VmaRef) -> Result<(), Errno> {
        if vma.is_attached() || vma.mm_id() != self.mm.id || vma.start() >= vma.end() {
            return Err(Errno::EINVAL);
        }
        if !self.range_is_free(vma.start(), vma.end()) {
            return Err(Errno::ENOMEM);
        }
        self.inner().tw.prealloc(1)?;
        // Linux: vma_link_file() — the file's i_mmap learns of the VMA as it attaches.
        let file = vma.file(&*self);
        let mut i_mmap = match file.as_ref().and_then(|f| f.i_mmap()) {
            Some(im) => {
                let mut w = im.write();
                w.reserve(1)?;
                Some(w)
            }
            None => None,
        };
        self.vma_start_write(vma);
        let mm = self.mm;
        let inner = self.inner();
        // Attached before the store makes it visible (Linux: `vma_iter_store_new`), so a
        // lock-free reader finding it sees it write-locked, not detached.
        lock::vma_mark_attached(vma);
        VmaIterator::new(vma.start()).store(&mm.tree, &mut inner.tw, vma.start(), vma.end(), vma);
        inner.tw.publish(&mm.tree);
        if let Some(w) = i_mmap.as_mut() {
            w.insert(vma);
        }
        let inner = self.inner();
        inner.map_count += 1;
        inner.stat.account(vma.flags(), vma.pages(), true);
        Ok(())
    }

    /// Linux: `insert_vm_struct()` — anonymous VMAs get `pgoff = start >> PAGE_SHIFT`;
    /// ENOMEM if the range is occupied.
    ///
    /// # Panics
    /// If `vma` is not a VMA of this address space.
    #[track_caller]
    pub fn insert_vm_struct(&mut self, vma: VmaRef) -> Result<(), Errno> {
        self.assert_owns(vma);
        if self.find_vma_intersection(vma.start(), vma.end()).is_some() {
            return Err(Errno::ENOMEM);
        }
        if vma.is_anonymous() && !vma.is_attached() {
            if vma.has_anon_vma() {
                return Err(Errno::EINVAL);
            }
            vma.vm_pgoff
                .store(vma.start() >> PAGE_SHIFT, Ordering::Relaxed);
        }
        self.vma_link(vma)
    }

    /// Allocate, initialise and link an anonymous VMA (tests, benchmarks, exec).
    pub fn map_anon(
        &mut self,
        start: usize,
        end: usize,
        pgoff: usize,
        flags: VmFlags,
    ) -> Result<VmaRef, Errno> {
        let v = self.vm_area_alloc()?;
        let r = self
            .vma_init(
                v,
                crate::vma::VmaInit {
                    start,
                    end,
                    pgoff,
                    flags,
                    file: None,
                    ops: None,
                },
            )
            .and_then(|()| self.vma_link(v));
        if let Err(e) = r {
            self.vm_area_free(v);
            return Err(e);
        }
        Ok(v)
    }

    // ---- committing range changes -------------------------------------------------

    /// Apply range changes atomically with respect to allocation failure: preallocate,
    /// then update VMA fields and the tree, publish, and finally detach, unlink and free
    /// the removed VMAs (Linux: `commit_merge()` / `vma_complete()`).
    ///
    /// Every VMA in `updates` and `removes` must already be write-locked.
    pub(super) fn commit(
        &mut self,
        updates: &[(VmaRef, usize, usize, usize)],
        removes: &[VmaRef],
        insert: Option<VmaRef>,
    ) -> Result<(), Errno> {
        self.commit_with(updates, removes, insert, None)
    }

    /// [`commit`](Self::commit) with the file's `i_mmap` write lock already taken by
    /// the caller (`__split_vma`, which must hold it across `hugetlb_split`); it is
    /// dropped at the end, as `vma_complete` does.
    pub(super) fn commit_with(
        &mut self,
        updates: &[(VmaRef, usize, usize, usize)],
        removes: &[VmaRef],
        insert: Option<VmaRef>,
        held: Option<IMmapWriter<'_>>,
    ) -> Result<(), Errno> {
        let nops = 2 * updates.len() + removes.len() + insert.is_some() as usize;
        self.inner().tw.prealloc(nops)?;
        for &(v, ..) in updates {
            self.vma_assert_write_locked(v);
        }
        for &v in removes {
            self.vma_assert_write_locked(v);
        }
        // Linux: vma_prepare() — take the file's i_mmap for the whole change and make
        // room for the re-inserted entries. A merge or split only ever involves VMAs
        // of one file (merging requires the same `vm_file`).
        let mm_id = self.mm.id;
        let indexed_file = |v: VmaRef| -> Option<FileRef> {
            // `Vma::file` with its proof checked inline (no call through the
            // `VmaStable` object per VMA: most VMAs here are anonymous).
            assert_eq!(v.mm_id(), mm_id, "commit: VMA {v:p} of another mm");
            // SAFETY: `v` belongs to this mm (asserted), whose mmap write lock we hold:
            // every writer of `vm_file` holds it too (an unattached `insert` is ours).
            unsafe { v.file_unchecked() }.filter(|f| f.i_mmap().is_some())
        };
        let mut file = None;
        for v in updates.iter().map(|u| u.0).chain(removes.iter().copied()) {
            file = indexed_file(v);
            if file.is_some() {
                break;
            }
        }
        if file.is_none() {
            file = insert.and_then(indexed_file);
        }
        let mut i_mmap = match (held, file.as_ref().and_then(|f| f.i_mmap())) {
            (Some(mut w), _) => {
                w.reserve(updates.len() + insert.is_some() as usize)?;
                Some(w)
            }
            (None, Some(im)) => {
                let mut w = im.write();
                w.reserve(updates.len() + insert.is_some() as usize)?;
                Some(w)
            }
            (None, None) => None,
        };
        // Is `v` in the `i_mmap` taken above? (Its file is read under our write lock.)
        let indexed = |g: &Self, v: VmaRef| match (&file, v.file(g)) {
            (Some(f), Some(h)) => Arc::ptr_eq(f, &h),
            _ => false,
        };
        let mm = self.mm;
        let mut vmi = VmaIterator::new(0);
        // The whole change as one store when the VMAs involved are all the tree holds
        // around it (a merge or split always: its VMAs are neighbours): the new ranges
        // over the span of the old and new ones (Linux: `commit_merge` and
        // `__split_vma` store the new layout over the old with one `vma_iter_store`).
        let any = updates
            .first()
            .map(|u| u.0)
            .or(insert)
            .or(removes.first().copied());
        let one = if let Some(any) = any
            && insert.is_some() as usize + updates.len() <= 4
        {
            let mut new = [(0, 0, any); 4];
            let mut k = 0;
            let (mut lo, mut hi) = (usize::MAX, 0);
            for &(v, s, e, _) in updates {
                new[k] = (s, e, v);
                k += 1;
                (lo, hi) = (lo.min(s).min(v.start()), hi.max(e).max(v.end()));
            }
            if let Some(v) = insert {
                new[k] = (v.start(), v.end(), v);
                k += 1;
                (lo, hi) = (lo.min(v.start()), hi.max(v.end()));
            }
            for &v in removes {
                (lo, hi) = (lo.min(v.start()), hi.max(v.end()));
            }
            let (lo, hi) = if lo < hi {
                (Some(lo), Some(hi))
            } else {
                (None, None)
            };
            match (lo, hi) {
                (Some(lo), Some(hi)) => {
                    if let Some(v) = insert {
                        // Attached before the store publishes it (`vma_iter_store_new`).
                        lock::vma_mark_attached(v);
                    }
                    let ok = self.inner().tw.store_layout(
                        &mm.tree,
                        lo,
                        hi,
                        &mut new[..k],
                        updates.len() + removes.len(),
                    );
                    if !ok && let Some(v) = insert {
                        lock::vma_mark_detached(v);
                    }
                    ok
                }
                _ => false,
            }
        } else {
            false
        };
        if !one {
            for &v in removes {
                vmi.set(v.start());
                vmi.clear(&mm.tree, &mut self.inner().tw);
            }
        }
        // An update whose new range only takes space that is free in the tree (or its
        // own) is stored over in place, one walk; the others leave and come back, as
        // Linux's `commit_merge` stores the changed ranges (`vma_iter_store`).
        let mut moved = [false; 4];
        debug_assert!(updates.len() <= moved.len(), "commit: too many updates");
        for (k, &(v, s, e, _)) in updates.iter().enumerate() {
            if one {
                continue;
            }
            vmi.set(v.start());
            moved[k] =
                k >= moved.len() || !vmi.store_changed(&mm.tree, &mut self.inner().tw, s, e, v);
        }
        for (k, &(v, ..)) in updates.iter().enumerate() {
            if moved.get(k).copied().unwrap_or(true) {
                vmi.set(v.start());
                vmi.clear(&mm.tree, &mut self.inner().tw);
            }
        }
        for (k, &(v, s, e, pg)) in updates.iter().enumerate() {
            // Re-key: the index is by file page range, which this update may change.
            let was_indexed = match i_mmap.as_mut() {
                Some(w) if indexed(self, v) => w.remove(v),
                _ => false,
            };
            self.inner().stat.account(v.flags(), v.pages(), false);
            v.set_range(s, e, pg);
            self.inner().stat.account(v.flags(), v.pages(), true);
            if was_indexed && let Some(w) = i_mmap.as_mut() {
                w.insert(v);
            }
            if moved.get(k).copied().unwrap_or(true) {
                vmi.set(s);
                vmi.store(&mm.tree, &mut self.inner().tw, s, e, v);
            }
        }
        if let Some(v) = insert.filter(|_| !one) {
            // Attached before the store publishes it (Linux: `vma_iter_store_new`).
            lock::vma_mark_attached(v);
            vmi.set(v.start());
            vmi.store(&mm.tree, &mut self.inner().tw, v.start(), v.end(), v);
        }
        self.inner().tw.publish(&mm.tree);
        if let Some(v) = insert {
            if let Some(w) = i_mmap.as_mut().filter(|_| indexed(self, v)) {
                w.insert(v);
            }
            let inner = self.inner();
            inner.map_count += 1;
            inner.stat.account(v.flags(), v.pages(), true);
        }
        for &v in removes {
            if let Some(w) = i_mmap.as_mut().filter(|_| indexed(self, v)) {
                w.remove(v);
            }
            lock::vma_mark_detached(v);
            let inner = self.inner();
            inner.map_count -= 1;
            inner.stat.account(v.flags(), v.pages(), false);
            self.vm_area_free(v);
        }
        // Linux: vma_complete() drops the i_mmap lock here.
        drop(i_mmap);
        Ok(())
    }

    // ---- removal ------------------------------------------------------------------

    /// Detach every VMA inside `[start, end)` after splitting the VMAs that straddle the
    /// boundaries, and return them still allocated: the caller zaps their page tables,
    /// then hands them to [`MmWriteGuard::remove_vmas`] (Linux: the gather half of
    /// `do_vmi_align_munmap()` + `vms_complete_munmap_vmas()`).
    ///
    /// Errors: EINVAL for an unaligned/empty range; ENOMEM if punching a hole in one
    /// VMA would exceed `max_map_count` or on allocation failure; EPERM if a VMA in the
    /// range is sealed. On error nothing is removed (splits already done may remain,
    /// as in Linux).
    pub fn detach_range(&mut self, start: usize, end: usize) -> Result<DetachedVmas, Errno> {
        use super::area::PAGE_SIZE;
        if start >= end || !start.is_multiple_of(PAGE_SIZE) || !end.is_multiple_of(PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        let mut list = Vec::new();
        // mseal: refuse before changing anything. The same pass gathers the VMAs,
        // which stand unless a boundary VMA is split below; its first and last are
        // the boundary VMAs (no walk of their own).
        {
            let v = self.view();
            let mut sealed = false;
            let mut it = VmaIterator::new(start);
            while let Some(x) = it.find(&v, end) {
                sealed |= x.flags().contains(VmFlags::SEALED);
                list.try_reserve(1).map_err(|_| Errno::ENOMEM)?;
                list.push(x);
            }
            if sealed {
                return Err(Errno::EPERM);
            }
        }
        let (Some(&first), Some(&last)) = (list.first(), list.last()) else {
            return Ok(DetachedVmas { vmas: list });
        };
        let mut split = false;
        if first.start() < start {
            // A hole inside one VMA adds one VMA net.
            if end < first.end() && self.map_count() >= self.max_map_count() {
                return Err(Errno::ENOMEM);
            }
            self.__split_vma(first, start, true)?;
            split = true;
        }
        // Splitting `first` below `start` kept the object on the high side, so
        // `last` is still the VMA covering `end - 1`.
        if last.end() > end {
            self.__split_vma(last, end, false)?;
            split = true;
        }
        if split {
            list.clear();
            let v = self.view();
            let mut it = VmaIterator::new(start);
            while let Some(x) = it.find(&v, end) {
                list.try_reserve(1).map_err(|_| Errno::ENOMEM)?;
                list.push(x);
            }
        }
        self.detach_listed(list)
    }

    /// Take the VMAs in `list` (consecutive in the tree, in address order) out of the
    /// tree in one published range erase and mark them detached. The reservation is
    /// that of one range erase whatever the number of VMAs (Linux: the
    /// `vma_iter_clear_gfp()` of `vms_complete_munmap_vmas`), and is made before
    /// anything changes, so an error changes nothing.
    fn detach_listed(&mut self, list: Vec<VmaRef>) -> Result<DetachedVmas, Errno> {
        let (Some(first), Some(last)) = (list.first(), list.last()) else {
            return Ok(DetachedVmas { vmas: list });
        };
        let (start, end) = (first.start(), last.end());
        self.inner().tw.prealloc_erase_range(0)?;
        for &x in &list {
            self.vma_start_write(x);
        }
        let mm = self.mm;
        let inner = self.inner();
        let mut vmi = VmaIterator::new(start);
        vmi.clear_span(&mm.tree, &mut inner.tw, start, end, list.len());
        inner.tw.publish(&mm.tree);
        for &x in &list {
            lock::vma_mark_detached(x);
        }
        let inner = self.inner();
        inner.map_count -= list.len();
        for &x in &list {
            inner.stat.account(x.flags(), x.pages(), false);
        }
        Ok(DetachedVmas { vmas: list })
    }

    /// Finish removing detached VMAs: unlink them from their file's `i_mmap`,
    /// `vm_ops->close`, drop file and anon_vmas, free. Call after their page tables
    /// are gone, so rmap walkers could reach the pages until then (Linux:
    /// `unlink_file_vma_batch_add()` in `free_pgtables()`, then `remove_vma()`).
    pub fn remove_vmas(&mut self, detached: DetachedVmas) {
        for v in detached.vmas {
            self.assert_owns(v);
            assert!(!v.is_attached(), "remove_vmas: VMA {v:p} was re-attached");
            self.inner().live_vmas -= 1;
            // SAFETY: `v` is this mm's and detached (both asserted above): no reader can lock it, and every writer of it would need the mmap write lock we hold, so it is ours to release.
            unsafe { release_vma(v) };
        }
    }

    /// `detach_range` + `remove_vmas` for callers with no page tables (tests).
    pub fn unmap_range(&mut self, start: usize, end: usize) -> Result<usize, Errno> {
        let d = self.detach_range(start, end)?;
        let n = d.len();
        self.remove_vmas(d);
        Ok(n)
    }
}

/// VMAs removed from the tree and detached but not yet freed (Linux: the detached
/// side tree of `struct vma_munmap_struct`). Hand them back to
/// [`MmWriteGuard::remove_vmas`] once their page tables are gone.
#[must_use = "detached VMAs must be passed to remove_vmas"]
pub struct DetachedVmas {
    vmas: Vec<VmaRef>,
}

impl DetachedVmas {
    /// The removed VMAs in address order (their ranges are still valid).
    pub fn iter(&self) -> impl Iterator<Item = VmaRef> + '_ {
        self.vmas.iter().copied()
    }
    /// How many.
    pub fn len(&self) -> usize {
        self.vmas.len()
    }
    /// None removed.
    pub fn is_empty(&self) -> bool {
        self.vmas.is_empty()
    }
}

/// The last steps for a VMA leaving its address space: out of its file's `i_mmap`,
/// `vm_ops->close`, then freed with its file and anon_vma references (Linux:
/// `unlink_file_vma()` + `remove_vma()`).
///
/// # Safety
/// `v` is detached and owned by the caller: no one else reads or writes its
/// multi-word fields until it is freed here.
pub(super) unsafe fn release_vma(v: VmaRef) {
    // SAFETY: the caller owns the detached VMA, so nothing writes `vm_file` meanwhile.
    if let Some(f) = unsafe { v.file_unchecked() }
        && let Some(im) = f.i_mmap()
    {
        im.write().remove(v);
    }
    if let Some(close) = v.ops().and_then(|o| o.close) {
        close(v);
    }
    valloc::vm_area_free(v);
}
