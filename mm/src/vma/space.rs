//! The address space as the VMA layer sees it: tree, mmap lock, map count, lock seq.
//!
//! Linux: the VMA-related part of `struct mm_struct` (`mm_mt`, `mmap_lock`,
//! `mm_lock_seq`, `map_count`) and `mm/mmap_lock.c` (`mmap_write_lock`,
//! `lock_vma_under_rcu`), `mm/mmap.c` (`find_vma`, `insert_vm_struct`).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::anon;
use super::area::{FileRef, PAGE_SHIFT, VmFlags, VmOperations, Vma, VmaRef, VmaStable};
use super::lock::{self, VmaReadError, VmaReadGuard};
use super::maple::{MaState, TreeView, TreeWriter, VmaTree};
use super::pool as valloc;
use super::rcu;
use super::stat::VmStat;
use crate::errno::Errno;
use crate::sync::lockdep::LockClass;
use crate::sync::{RwSem, RwSemReadGuard, RwSemWriteGuard};

/// Linux: `DEFAULT_MAX_MAP_COUNT` (`vm.max_map_count`).
pub const DEFAULT_MAX_MAP_COUNT: usize = 65530;

static NEXT_MM_ID: AtomicU64 = AtomicU64::new(1);

/// Kernel hooks the VMA layer calls at page-table-relevant moments (extension points).
#[derive(Clone, Copy, Default)]
pub struct MmHooks {
    /// Called by `__split_vma` for `VM_HUGETLB` VMAs after both halves are write-locked
    /// and before the ranges change (Linux: `hugetlb_split(vma, addr)`).
    pub hugetlb_split: Option<fn(VmaRef, usize)>,
    /// Does the task working on this address space have a fatal signal pending (Linux:
    /// `fatal_signal_pending(current)`)? Asked by the killable waits of fork
    /// (`mmap_write_lock_killable`, [`MmWriteGuard::vma_start_write_killable`]) and by
    /// `dup_mmap` before each VMA it copies. The process layer wires it; `None` means
    /// "never" (no signals yet).
    pub fatal_signal_pending: Option<fn() -> bool>,
}

/// Writer-side state, protected by the mmap lock.
pub(super) struct MmInner {
    pub(super) tw: TreeWriter,
    /// Linux: `mm->map_count`.
    pub(super) map_count: usize,
    /// Linux: `sysctl_max_map_count`.
    pub(super) max_map_count: usize,
    /// VMAs allocated for this mm and not yet freed.
    pub(super) live_vmas: usize,
    /// Fault injection: `anon_vma_clone` fails with ENOMEM.
    #[cfg(feature = "fault-inject")]
    pub(super) fail_anon_clone: bool,
    pub(super) hooks: MmHooks,
    /// Page counters, kept by link, commit, detach and `vma_set_flags`.
    pub(super) stat: VmStat,
}

/// An address space's VMA state (Linux: the VMA part of `struct mm_struct`).
pub struct Mm {
    pub(super) id: u64,
    /// Linux: `mm->mm_lock_seq`; odd while the mmap lock is write-held.
    pub(super) mm_lock_seq: AtomicU32,
    pub(super) tree: VmaTree,
    /// Linux: `mmap_lock`.
    lock: RwSem<MmInner>,
    /// Orders the first faults that give VMAs their anon_vma under the mmap read lock
    /// ([`MmReadGuard::anon_vma_prepare_shared`]). Linux uses `mm->page_table_lock`;
    /// here the page tables and their lock live in the `AddressSpace` above this layer,
    /// so the VMA layer keeps its own lock of that rank for this one job.
    anon_prepare_lock: crate::sync::Mutex<()>,
}

impl Default for Mm {
    fn default() -> Self {
        Self::new()
    }
}

impl Mm {
    /// An empty address space.
    pub fn new() -> Self {
        Mm {
            id: NEXT_MM_ID.fetch_add(1, Ordering::Relaxed),
            mm_lock_seq: AtomicU32::new(0),
            tree: VmaTree::new(),
            anon_prepare_lock: crate::sync::Mutex::new(LockClass::PageTable, ()),
            lock: RwSem::new(
                LockClass::MmapLock,
                MmInner {
                    tw: TreeWriter::new(),
                    map_count: 0,
                    max_map_count: DEFAULT_MAX_MAP_COUNT,
                    live_vmas: 0,
                    #[cfg(feature = "fault-inject")]
                    fail_anon_clone: false,
                    hooks: MmHooks::default(),
                    stat: VmStat::default(),
                },
            ),
        }
    }

    /// Identity stored in each VMA's `vm_mm`.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Current `mm_lock_seq` (diagnostics/tests).
    pub fn lock_seq(&self) -> u32 {
        self.mm_lock_seq.load(Ordering::Relaxed)
    }

    /// Take the mmap lock for writing; `mm_lock_seq` becomes odd.
    /// Linux: `mmap_write_lock()`.
    #[track_caller]
    pub fn write_lock(&self) -> MmWriteGuard<'_> {
        self.write_locked(self.lock.write())
    }

    /// Take this address space's mmap lock for writing while holding another's, in an
    /// order the caller guarantees (Linux: `mmap_write_lock_nested(mm,
    /// SINGLE_DEPTH_NESTING)`, as `dup_mmap` locks the child under the parent).
    #[track_caller]
    pub fn write_lock_nested(&self) -> MmWriteGuard<'_> {
        self.write_locked(self.lock.write_nested())
    }

    fn write_locked<'a>(&'a self, inner: RwSemWriteGuard<'a, MmInner>) -> MmWriteGuard<'a> {
        // Linux: `mm_lock_seqcount_begin()`; plain increment, we are the only writer.
        let s = self.mm_lock_seq.load(Ordering::Relaxed);
        self.mm_lock_seq.store(s.wrapping_add(1), Ordering::Relaxed);
        core::sync::atomic::fence(Ordering::Release);
        MmWriteGuard {
            mm: self,
            inner: Some(inner),
        }
    }

    /// Take the mmap lock for reading. Linux: `mmap_read_lock()`.
    #[track_caller]
    pub fn read_lock(&self) -> MmReadGuard<'_> {
        MmReadGuard {
            mm: self,
            _inner: self.lock.read(),
        }
    }

    /// Take this address space's mmap lock for reading while holding another's, in an
    /// order the caller guarantees (Linux: `down_read_nested`).
    #[track_caller]
    pub fn read_lock_nested(&self) -> MmReadGuard<'_> {
        MmReadGuard {
            mm: self,
            _inner: self.lock.read_nested(),
        }
    }

    /// Take the mmap lock for reading if that needs no wait (Linux:
    /// `mmap_read_trylock()`): `None` while a writer holds it or waits for it. The
    /// fault path's one way to the mmap lock while it holds a VMA read lock.
    pub fn try_read_lock(&self) -> Option<MmReadGuard<'_>> {
        Some(MmReadGuard {
            mm: self,
            _inner: self.lock.try_read()?,
        })
    }

    /// Lock-free lookup of the VMA containing `addr`, read-locked.
    ///
    /// Linux: `lock_vma_under_rcu()`: RCU tree walk, `vma_start_read`, retry on
    /// `Detached` (EAGAIN), give up on other failures (caller falls back to the mmap
    /// lock), and re-check the range after locking (the slot may have been reused).
    pub fn lock_vma_under_rcu(&self, addr: usize) -> Option<VmaReadGuard<'_>> {
        loop {
            let g = rcu::rcu_read_lock();
            let e = self.tree.view_rcu(&g).lookup(addr)?;
            match lock::vma_start_read(self.id, &self.mm_lock_seq, e.vma) {
                Ok(()) => {
                    drop(g);
                    let rg = VmaReadGuard::new(e.vma);
                    if e.vma.start() <= addr && addr < e.vma.end() {
                        return Some(rg);
                    }
                    return None;
                }
                Err(VmaReadError::Detached) => continue,
                Err(_) => return None,
            }
        }
    }

    /// One lock-free read attempt on a VMA pointer the caller found itself (tests and
    /// the fault path). Linux: `vma_start_read()`.
    pub fn vma_start_read(&self, vma: VmaRef) -> Result<VmaReadGuard<'_>, VmaReadError> {
        lock::vma_start_read(self.id, &self.mm_lock_seq, vma).map(|()| VmaReadGuard::new(vma))
    }
}

impl Drop for Mm {
    fn drop(&mut self) {
        // Exclusive access: no guard, RCU reader or read lock can borrow `self`.
        let inner = self.lock.get_mut();
        // Linux: exit_mmap() → remove_vma() for each: the file forgets the VMA and its
        // close hook runs, as for munmap. Straight from the tree walk: releasing a VMA
        // never touches the tree (its nodes keep their own copy of the range), and
        // gathering the VMAs first would need memory that exit must not depend on.
        inner.tw.view().for_each(|e| {
            let v = e.vma;
            // Waits out a transient reader that found the slot through a stale handle
            // (no reader of this mm exists: they all borrow `self`).
            lock::vma_mark_detached(v);
            // SAFETY: `&mut self`: no guard of this mm exists, so no lock-holding reader or writer can reach `v`; it is detached (just above), so no lock-free reader can lock it either. It is ours to release.
            unsafe { super::commit::release_vma(v) };
        });
        // SAFETY: `&mut self`: nothing else can reach the tree.
        unsafe { inner.tw.destroy(&self.tree) };
    }
}

/// The attributes [`MmWriteGuard::vma_init`] gives a detached VMA before it is linked
/// (Linux: the fields `vma_init()` and `__mmap_new_vma()` fill in).
#[derive(Clone)]
pub struct VmaInit {
    /// Linux: `vm_start`.
    pub start: usize,
    /// Linux: `vm_end` (exclusive).
    pub end: usize,
    /// Linux: `vm_pgoff`.
    pub pgoff: usize,
    /// Linux: `vm_flags`.
    pub flags: VmFlags,
    /// Linux: `vm_file`.
    pub file: Option<FileRef>,
    /// Linux: `vm_ops` (`None`: anonymous).
    pub ops: Option<&'static VmOperations>,
}

/// The mmap lock held for reading.
pub struct MmReadGuard<'a> {
    mm: &'a Mm,
    _inner: RwSemReadGuard<'a, MmInner>,
}

impl super::area::sealed::Sealed for MmReadGuard<'_> {}
/// The mmap read lock stabilises the VMAs of its own address space (Linux:
/// `mmap_assert_locked(vma->vm_mm)`): their writers all hold the mmap write lock.
impl VmaStable for MmReadGuard<'_> {
    fn stabilises(&self, vma: &Vma) -> bool {
        vma.mm_id() == self.mm.id
    }
}

impl<'a> MmReadGuard<'a> {
    /// The tree as of now (stable while the read lock is held).
    pub fn view(&self) -> TreeView<'_> {
        self.mm.tree.view_locked()
    }
    /// Linux: `find_vma()`.
    pub fn find_vma(&self, addr: usize) -> Option<VmaRef> {
        self.view().find(addr).map(|e| e.vma)
    }
    /// Linux: `vma_lookup()`.
    pub fn vma_lookup(&self, addr: usize) -> Option<VmaRef> {
        self.view().lookup(addr).map(|e| e.vma)
    }
    /// The page counters (Linux: `mm->total_vm` and friends).
    pub fn vm_stat(&self) -> VmStat {
        self._inner.stat
    }
    /// Give `vma`, a VMA of this address space, an anon_vma under the mmap *read* lock:
    /// the first anonymous fault's preparation. Linux: `__anon_vma_prepare()` as
    /// `vmf_anon_prepare()` calls it (mmap read lock, or its trylock under the VMA read
    /// lock).
    ///
    /// A neighbour's anon_vma is reused if compatible (`find_mergeable_anon_vma`), else
    /// a new one is allocated; the chain's memory is allocated too, all before the
    /// address space's anon-prepare lock (Linux: `mm->page_table_lock`) is taken; under
    /// it the VMA is checked again and the anon_vma published. A fault that lost the
    /// race frees what it prepared, after the lock. Nothing changes on ENOMEM.
    ///
    /// # Panics
    /// If `vma` does not belong to this address space.
    #[track_caller]
    pub fn anon_vma_prepare_shared(&self, vma: VmaRef) -> Result<(), Errno> {
        assert!(
            self.stabilises(vma),
            "anon_vma_prepare_shared: VMA {vma:p} is not a VMA of the locked mm"
        );
        if vma.has_anon_vma() {
            return Ok(());
        }
        let av = match find_mergeable_anon_vma(&self.view(), vma, self) {
            Some(av) => av,
            None => anon::AnonVmaRef::new_root()?,
        };
        let mut chain = Vec::new();
        chain.try_reserve(1).map_err(|_| Errno::ENOMEM)?;
        #[cfg(feature = "fault-inject")]
        {
            // Copied out first: the hook may wait for another fault that reads it too.
            let hook = *ANON_PREPARE_WINDOW.lock();
            if let Some(hook) = hook {
                hook();
            }
        }
        let lock = self.mm.anon_prepare_lock.lock();
        // SAFETY: we hold this mm's mmap read lock (`self`, and `vma` is its, asserted
        // above), which excludes the write-lock holders, and `lock`, this mm's
        // anon-prepare lock, which every caller of `anon_vma_publish` for a VMA of this
        // mm holds (this method is its only caller).
        let lost = unsafe { anon::anon_vma_publish(vma, av, chain) };
        drop(lock);
        // The loser's anon_vma and vector are freed here, outside the lock.
        drop(lost);
        Ok(())
    }

    /// Read-lock `vma`, a VMA of this address space, for use beyond the mmap read lock.
    /// `None` if it is detached (no longer in the tree) or the reader count would
    /// overflow. Linux: `vma_start_read_locked()`.
    ///
    /// It cannot be write-locked: a VMA is write-locked only while `vm_lock_seq` equals
    /// `mm_lock_seq`, `vm_lock_seq` only ever holds the odd sequence of a write hold
    /// (or [`VM_LOCK_SEQ_NONE`](super::area::VM_LOCK_SEQ_NONE), odd too), and
    /// `mm_lock_seq` is odd only while the mmap write lock is held, which our read lock
    /// excludes (`downgrade` and unlock make it even first). Both are asserted, with
    /// the VMA's address space: a VMA of another mm could be write-locked right now.
    ///
    /// # Panics
    /// If `vma` does not belong to this address space, or (a broken invariant) it is
    /// write-locked.
    #[track_caller]
    pub fn vma_start_read_locked(&self, vma: VmaRef) -> Option<VmaReadGuard<'a>> {
        // Checked before taking a reference. The answer cannot change while the read
        // lock is held: a VMA of this mm is freed (its `vm_mm` cleared) only under the
        // write lock, and no other mm can allocate it before then.
        assert!(
            self.stabilises(vma),
            "vma_start_read_locked: VMA {:p} belongs to mm {}, not to the locked mm {}",
            vma,
            vma.mm_id(),
            self.mm.id
        );
        assert_ne!(
            vma.lock_seq(),
            self.mm.mm_lock_seq.load(Ordering::Relaxed),
            "vma_start_read_locked: VMA {vma:p} write-locked under the mmap read lock"
        );
        lock::refcnt_inc_limited(vma)
            .ok()
            .map(|()| VmaReadGuard::new(vma))
    }
}

/// The mmap lock held for writing; all VMA-tree changes go through it.
///
/// Dropping it is `mmap_write_unlock()`: `mm_lock_seq` becomes even, which releases
/// every VMA write lock taken during the hold.
pub struct MmWriteGuard<'a> {
    pub(super) mm: &'a Mm,
    inner: Option<RwSemWriteGuard<'a, MmInner>>,
}

impl super::area::sealed::Sealed for MmWriteGuard<'_> {}
/// The mmap write lock stabilises the VMAs of its own address space (Linux:
/// `mmap_assert_write_locked(vma->vm_mm)`): their only writer is its holder.
impl VmaStable for MmWriteGuard<'_> {
    fn stabilises(&self, vma: &Vma) -> bool {
        vma.mm_id() == self.mm.id
    }
}

impl Drop for MmWriteGuard<'_> {
    fn drop(&mut self) {
        // Linux: `vma_end_write_all()` — the release pairs with readers' acquire.
        let s = self.mm.mm_lock_seq.load(Ordering::Relaxed);
        self.mm
            .mm_lock_seq
            .store(s.wrapping_add(1), Ordering::Release);
        drop(self.inner.take());
    }
}

/// A positionable cursor over the VMA tree (Linux: `struct vma_iterator`, the
/// `vma_iter_*` / `vma_next` / `vma_prev` / `vma_find` helpers of `mm/vma.h`).
///
/// `index` is the position (Linux's `mas.index`); the maple state remembers the leaf
/// it last visited and its bounds, so `next`, `prev` and `find` step inside the leaf
/// and walk from the root only at a leaf boundary, as Linux's `ma_state` does.
/// The remembered leaf is used only while the tree is the one it was made on (the
/// same version, under the mmap lock); after any store, or on an RCU view, the next
/// step walks from the root (Linux: the store leaves the maple state reset).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VmaIterator {
    /// Current position (Linux: `vmi->mas.index`).
    pub index: usize,
    mas: MaState,
}

impl VmaIterator {
    /// Iterator at `addr`. Linux: `VMA_ITERATOR(vmi, mm, addr)`.
    pub fn new(addr: usize) -> Self {
        VmaIterator {
            index: addr,
            mas: MaState::default(),
        }
    }
    /// Reposition (the leaf is kept: a position inside it reuses it). Linux:
    /// `vma_iter_set()`.
    pub fn set(&mut self, addr: usize) {
        self.index = addr;
    }
    /// Next VMA ending above the position; moves to its end. Linux: `vma_next()`/`vma_find()`.
    pub fn next(&mut self, v: &TreeView<'_>) -> Option<VmaRef> {
        let e = self.mas.find(v, self.index)?;
        self.index = e.end;
        Some(e.vma)
    }
    /// VMA starting below the position; moves to its start. Linux: `vma_prev()`.
    pub fn prev(&mut self, v: &TreeView<'_>) -> Option<VmaRef> {
        let e = self.mas.prev(v, self.index)?;
        self.index = e.start;
        Some(e.vma)
    }
    /// Next VMA ending above the position and starting below `max`; moves to its end.
    /// Linux: `vma_find(vmi, max)`.
    pub fn find(&mut self, v: &TreeView<'_>, max: usize) -> Option<VmaRef> {
        // Once the position has reached `max`, nothing is left below it (Linux's
        // `mas_find` returns NULL once the index has passed the limit, with no walk).
        if self.index >= max {
            return None;
        }
        let e = self.mas.find(v, self.index).filter(|e| e.start < max)?;
        self.index = e.end;
        Some(e.vma)
    }
    /// Store `vma` over its range `[start, end)`, which holds no VMA, inside a
    /// preallocated batch; moves to its end. Linux: `vma_iter_store_new()`.
    pub(super) fn store(
        &mut self,
        tree: &VmaTree,
        tw: &mut TreeWriter,
        start: usize,
        end: usize,
        vma: VmaRef,
    ) {
        tw.insert(tree, start, end, vma);
        self.mas.reset();
        self.index = end;
    }
    /// Move the VMA starting at the position to `[start, end)` (and `vma`) with one
    /// store, inside a preallocated batch, if that range overlaps no other VMA; moves
    /// to `end`. Returns false, changing nothing, otherwise. Linux: `vma_iter_store()`
    /// of a VMA whose range changed.
    pub(super) fn store_changed(
        &mut self,
        tree: &VmaTree,
        tw: &mut TreeWriter,
        start: usize,
        end: usize,
        vma: VmaRef,
    ) -> bool {
        let ok = tw.replace(tree, self.index, start, end, vma);
        if ok {
            self.mas.reset();
            self.index = end;
        }
        ok
    }
    /// Erase the VMA starting at the position, inside a preallocated batch.
    /// Linux: `vma_iter_clear()` of one VMA's range.
    pub(super) fn clear(&mut self, tree: &VmaTree, tw: &mut TreeWriter) -> Option<VmaRef> {
        self.mas.reset();
        tw.erase(tree, self.index)
    }
    /// Erase the `n` VMAs that exactly fill `[start, end)` with one store, inside a
    /// batch preallocated with `prealloc_erase_range`; moves to `end`. Linux: the
    /// `vma_iter_clear_gfp()` of `vms_complete_munmap_vmas`.
    pub(super) fn clear_span(
        &mut self,
        tree: &VmaTree,
        tw: &mut TreeWriter,
        start: usize,
        end: usize,
        n: usize,
    ) {
        tw.erase_span(tree, start, end, n);
        self.mas.reset();
        self.index = end;
    }
}

impl<'a> MmWriteGuard<'a> {
    pub(super) fn inner(&mut self) -> &mut MmInner {
        self.inner.as_mut().expect("write guard alive")
    }
    pub(super) fn inner_ref(&self) -> &MmInner {
        self.inner.as_ref().expect("write guard alive")
    }

    /// The address space.
    pub fn mm(&self) -> &'a Mm {
        self.mm
    }
    /// The (working) tree.
    pub fn view(&self) -> TreeView<'_> {
        self.inner_ref().tw.view()
    }
    /// Does `[start, end)` hold no VMA? (`find_vma_intersection(start, end).is_none()`
    /// with one walk.)
    pub fn range_is_free(&self, start: usize, end: usize) -> bool {
        self.view().is_free(start, end)
    }
    /// Linux: `mm->map_count`.
    pub fn map_count(&self) -> usize {
        self.inner_ref().map_count
    }
    /// Bytes of memory the VMA tree holds (its nodes, in use, cached or waiting for a
    /// grace period): the `vma_tree_bytes_per_vma` figure.
    pub fn tree_bytes(&self) -> usize {
        self.inner_ref().tw.bytes()
    }
    /// Number of tree entries (equals `map_count` unless a bug).
    pub fn tree_len(&self) -> usize {
        self.inner_ref().tw.len()
    }
    /// Linux: `sysctl_max_map_count`.
    pub fn max_map_count(&self) -> usize {
        self.inner_ref().max_map_count
    }
    /// Set the per-mm `max_map_count`.
    pub fn set_max_map_count(&mut self, n: usize) {
        self.inner().max_map_count = n;
    }
    /// VMAs allocated for this mm and not yet freed.
    pub fn live_vmas(&self) -> usize {
        self.inner_ref().live_vmas
    }
    /// The page counters (Linux: `mm->total_vm` and friends).
    pub fn vm_stat(&self) -> VmStat {
        self.inner_ref().stat
    }
    /// Test-only fault injection: make tree preallocation fail (Linux harness:
    /// `fail_prealloc`).
    #[cfg(feature = "fault-inject")]
    pub fn set_fail_prealloc(&mut self, fail: bool) {
        self.inner().tw.fail_prealloc = fail;
    }
    /// Test-only fault injection: make `anon_vma_clone` fail.
    #[cfg(feature = "fault-inject")]
    pub fn set_fail_anon_clone(&mut self, fail: bool) {
        self.inner().fail_anon_clone = fail;
    }
    /// Whether `anon_vma_clone` must fail (fault injection; always false without the
    /// `fault-inject` feature).
    pub(super) fn fail_anon_clone(&self) -> bool {
        #[cfg(feature = "fault-inject")]
        return self.inner_ref().fail_anon_clone;
        #[cfg(not(feature = "fault-inject"))]
        false
    }
    /// Test-only: return the tree's cached free nodes and spare bookkeeping capacity to
    /// the heap, so that the next change preallocates everything afresh, as every
    /// Linux maple-tree store does (its nodes come from a slab cache, not from a cache
    /// of the mm's). Fail-the-Nth-allocation sweeps use it to reach every allocation.
    /// Linux: `kmem_cache_shrink()` of the node cache.
    #[cfg(feature = "fault-inject")]
    pub fn shrink_caches(&mut self) {
        self.inner().tw.shrink_caches();
    }
    /// The kernel hooks installed (fork copies them to the child).
    pub fn hooks(&self) -> MmHooks {
        self.inner_ref().hooks
    }
    /// Install the kernel hooks (see [`MmHooks`]).
    pub fn set_hooks(&mut self, hooks: MmHooks) {
        self.inner().hooks = hooks;
    }
    /// Current odd `mm_lock_seq` of this hold.
    fn seq(&self) -> u32 {
        self.mm.mm_lock_seq.load(Ordering::Relaxed)
    }
    /// Panic unless `vma` belongs to this address space: every change of a VMA, and
    /// every unlocked read of its fields below, is sound only for VMAs whose writers
    /// all hold this lock (see `area`'s "What a proof proves"). A VMA of another mm,
    /// or a freed slot (`vm_mm` cleared), is a kernel bug here.
    #[track_caller]
    pub(super) fn assert_owns(&self, vma: VmaRef) {
        assert!(
            self.stabilises(vma),
            "VMA {:p} belongs to mm {}, not to the write-locked mm {}",
            vma,
            vma.mm_id(),
            self.mm.id
        );
    }

    // ---- lookups ------------------------------------------------------------------

    /// Linux: `find_vma()` — lowest VMA with `end > addr`.
    pub fn find_vma(&self, addr: usize) -> Option<VmaRef> {
        self.view().find(addr).map(|e| e.vma)
    }
    /// Linux: `vma_lookup()`.
    pub fn vma_lookup(&self, addr: usize) -> Option<VmaRef> {
        self.view().lookup(addr).map(|e| e.vma)
    }
    /// Linux: `find_vma_prev()` — (find_vma(addr), the VMA before it).
    pub fn find_vma_prev(&self, addr: usize) -> (Option<VmaRef>, Option<VmaRef>) {
        let v = self.view();
        (
            v.find(addr).map(|e| e.vma),
            v.last_ending_at_or_before(addr).map(|e| e.vma),
        )
    }
    /// Linux: `find_vma_intersection()`.
    pub fn find_vma_intersection(&self, start: usize, end: usize) -> Option<VmaRef> {
        self.view().intersection(start, end).map(|e| e.vma)
    }
    /// Linux: `vma_prev` from a position: the VMA ending at or before `addr`.
    pub fn vma_prev_of(&self, addr: usize) -> Option<VmaRef> {
        self.view().last_ending_at_or_before(addr).map(|e| e.vma)
    }
    /// The first VMA starting at or after `addr`.
    pub fn vma_next_from(&self, addr: usize) -> Option<VmaRef> {
        self.view().next_from(addr).map(|e| e.vma)
    }
    /// All VMAs in address order (tests, diagnostics).
    pub fn vmas(&self) -> Vec<VmaRef> {
        let mut out = Vec::new();
        let _ = out.try_reserve(self.tree_len());
        self.view().for_each(|e| out.push(e.vma));
        out
    }

    /// Check the VMA layer's invariants and describe the first broken one (Linux:
    /// `validate_mm()` in `mm/vma.c` under `CONFIG_DEBUG_VM_MAPLE_TREE`):
    ///
    /// - no batch is open: readers see the writer's tree;
    /// - the tree itself ([`TreeView::validate`]): sorted, non-overlapping, non-empty
    ///   entries matching their VMAs, exact gap cache;
    /// - `map_count` == tree entries == VMAs walked == VMAs allocated for this mm;
    /// - the `vm_stat` counters (`total_vm`, `data_vm`, `exec_vm`, `stack_vm`, the
    ///   commit charge) equal what the VMAs add up to (Linux: `vm_stat_account`);
    /// - each VMA page aligned, attached (`vm_refcnt` ≥ 1, no writer excluding readers)
    ///   and of this mm; `READ`/`WRITE`/`EXEC`/`SHARED` only with the matching `MAY*`
    ///   bit; its file page range does not overflow; an anon_vma only with a chain;
    /// - `i_mmap`: each file VMA indexed in its file's `i_mmap` exactly once, under its
    ///   current file page range; every entry of those `i_mmap`s that belongs to this
    ///   mm is a VMA of the tree under its current range (no stale entries). Each
    ///   index's own structure is checked too.
    pub fn validate(&self) -> Result<(), String> {
        use super::area::PAGE_SIZE;
        use super::lock::VM_REFCNT_EXCLUDE_READERS_FLAG;
        let inner = self.inner_ref();
        let view = inner.tw.view();
        if !self.mm.tree.view_locked().same_root(&view) {
            return Err(String::from(
                "tree: the published root is not the writer's root (unpublished batch)",
            ));
        }
        let n = view.validate()?;
        if n != inner.tw.len() || n != inner.map_count || n != inner.live_vmas {
            return Err(format!(
                "counts: {n} VMAs in the tree, tree len {}, map_count {}, live VMAs {}",
                inner.tw.len(),
                inner.map_count,
                inner.live_vmas
            ));
        }
        let mut files: Vec<FileRef> = Vec::new();
        let mut err = Ok(());
        view.for_each(|e| {
            if err.is_err() {
                return;
            }
            err = (|| {
                let v = e.vma;
                let (s, end) = (v.start(), v.end());
                if s % PAGE_SIZE != 0 || end % PAGE_SIZE != 0 {
                    return Err(format!("VMA {s:#x}..{end:#x} not page aligned"));
                }
                let rc = v.refcnt();
                if rc == 0 || rc & VM_REFCNT_EXCLUDE_READERS_FLAG != 0 {
                    return Err(format!(
                        "VMA {s:#x}..{end:#x} in the tree with vm_refcnt {rc:#x}"
                    ));
                }
                if v.mm_id() != self.mm.id {
                    return Err(format!(
                        "VMA {s:#x}..{end:#x} belongs to mm {} not {}",
                        v.mm_id(),
                        self.mm.id
                    ));
                }
                let f = v.flags();
                for (bit, may) in [
                    (VmFlags::READ, VmFlags::MAYREAD),
                    (VmFlags::WRITE, VmFlags::MAYWRITE),
                    (VmFlags::EXEC, VmFlags::MAYEXEC),
                    (VmFlags::SHARED, VmFlags::MAYSHARE),
                ] {
                    if f.contains(bit) && !f.contains(may) {
                        return Err(format!(
                            "VMA {s:#x}..{end:#x} has {bit:?} without {may:?}: {f:?}"
                        ));
                    }
                }
                if v.pgoff().checked_add(v.pages()).is_none() {
                    return Err(format!(
                        "VMA {s:#x}..{end:#x}: pgoff {:#x} + {} pages overflows",
                        v.pgoff(),
                        v.pages()
                    ));
                }
                if v.has_anon_vma() && v.anon_vma_chain_len(self) == 0 {
                    return Err(format!("VMA {s:#x}..{end:#x} has an anon_vma but no chain"));
                }
                if let Some(file) = v.file(self)
                    && let Some(im) = file.i_mmap()
                {
                    let key = (v.pgoff(), v.pgoff() + v.pages() - 1);
                    let hits = im
                        .vmas_overlapping(key.0, key.1)
                        .into_iter()
                        .filter(|&x| core::ptr::eq(x, v))
                        .count();
                    if hits != 1 {
                        return Err(format!(
                            "i_mmap: VMA {s:#x}..{end:#x} (pages {key:?}) indexed {hits} times"
                        ));
                    }
                    if !files
                        .iter()
                        .any(|g| super::area::same_file(Some(g), Some(&file)))
                    {
                        files
                            .try_reserve(1)
                            .map_err(|_| String::from("no memory"))?;
                        files.push(file);
                    }
                }
                Ok(())
            })();
        });
        err?;
        let want = VmStat::recount(self.vmas());
        if self.vm_stat() != want {
            return Err(format!(
                "vm_stat: counters {:?}, the VMAs add up to {want:?}",
                self.vm_stat()
            ));
        }
        // Distinct files may share one inode (and so one i_mmap): check each index once.
        let mut seen: Vec<*const super::i_mmap::IMmap> = Vec::new();
        for file in &files {
            let Some(im) = file.i_mmap() else { continue };
            if seen.iter().any(|&p| core::ptr::eq(p, im)) {
                continue;
            }
            seen.try_reserve(1).map_err(|_| String::from("no memory"))?;
            seen.push(im);
            for (first, last, v) in im.entries_validated()? {
                if v.mm_id() != self.mm.id {
                    continue;
                }
                let in_tree = view
                    .lookup(v.start())
                    .is_some_and(|e| core::ptr::eq(e.vma, v));
                let key = (v.pgoff(), v.pgoff().saturating_add(v.pages().max(1)) - 1);
                if !in_tree || v.refcnt() == 0 || key != (first, last) {
                    return Err(format!(
                        "i_mmap: stale entry [{first:#x}, {last:#x}] for VMA {:#x}..{:#x} \
                         (pages {key:?}, in tree {in_tree}, vm_refcnt {})",
                        v.start(),
                        v.end(),
                        v.refcnt()
                    ));
                }
            }
        }
        Ok(())
    }

    // ---- per-VMA write locks --------------------------------------------------------

    /// Linux: `vma_start_write()`. Waits for readers; idempotent within this hold.
    ///
    /// # Panics
    /// If `vma` is not a VMA of this address space.
    #[track_caller]
    pub fn vma_start_write(&mut self, vma: VmaRef) {
        self.assert_owns(vma);
        lock::vma_start_write(vma, self.seq());
    }
    /// [`vma_start_write`](Self::vma_start_write), killable (Linux:
    /// `vma_start_write_killable()`): `EINTR`, with the VMA left unlocked, if
    /// [`MmHooks::fatal_signal_pending`] reports a fatal signal while readers are
    /// being waited for.
    ///
    /// # Panics
    /// If `vma` is not a VMA of this address space.
    #[track_caller]
    pub fn vma_start_write_killable(&mut self, vma: VmaRef) -> Result<(), Errno> {
        self.assert_owns(vma);
        let seq = self.seq();
        let fatal = self.inner_ref().hooks.fatal_signal_pending;
        lock::vma_start_write_killable(vma, seq, &|| fatal.is_some_and(|f| f()))
    }
    /// Linux: `fatal_signal_pending(current)` through [`MmHooks::fatal_signal_pending`].
    pub fn fatal_signal_pending(&self) -> bool {
        self.inner_ref()
            .hooks
            .fatal_signal_pending
            .is_some_and(|f| f())
    }
    /// True if `vma` is a VMA of this address space write-locked in this hold (Linux:
    /// `__is_vma_write_locked`). Another mm's VMA is never write-locked by this hold,
    /// even if its `vm_lock_seq` happens to equal this mm's sequence.
    pub fn vma_is_write_locked(&self, vma: VmaRef) -> bool {
        self.stabilises(vma) && vma.lock_seq() == self.seq()
    }
    /// Linux: `vma_assert_write_locked()` (debug builds).
    pub fn vma_assert_write_locked(&self, vma: VmaRef) {
        debug_assert!(
            self.vma_is_write_locked(vma),
            "VMA not write-locked: {vma:?}"
        );
    }
    /// Linux: `mmap_write_downgrade()` — release all VMA write locks, keep reading.
    pub fn downgrade(mut self) -> MmReadGuard<'a> {
        let mm = self.mm;
        let w = self.inner.take().expect("write guard alive");
        let s = mm.mm_lock_seq.load(Ordering::Relaxed);
        mm.mm_lock_seq.store(s.wrapping_add(1), Ordering::Release);
        // The seq bump above replaces the one in `Drop`.
        core::mem::forget(self);
        MmReadGuard {
            mm,
            _inner: w.downgrade(),
        }
    }

    // ---- allocation -----------------------------------------------------------------

    /// A new detached VMA of this mm. Linux: `vm_area_alloc()`.
    pub fn vm_area_alloc(&mut self) -> Result<VmaRef, Errno> {
        let v = valloc::vm_area_alloc(self.mm.id)?;
        self.inner().live_vmas += 1;
        Ok(v)
    }
    /// Field-by-field copy, detached, empty anon chain. Linux: `vm_area_dup()`.
    ///
    /// # Panics
    /// If `orig` is not a VMA of this address space.
    #[track_caller]
    pub fn vm_area_dup(&mut self, orig: VmaRef) -> Result<VmaRef, Errno> {
        self.assert_owns(orig);
        // SAFETY: `orig` belongs to this mm (asserted above), whose mmap write lock we hold, so no one else writes its fields.
        let v = unsafe { valloc::vm_area_dup(orig)? };
        self.inner().live_vmas += 1;
        Ok(v)
    }
    /// The VMA half of one step of `dup_mmap`: copy `mpnt`, a VMA of the parent address
    /// space that `parent` (the parent's mmap write lock) keeps stable, into this (the
    /// child's) address space and link it here.
    ///
    /// Linux (`dup_mmap`, in its order): `vm_area_dup` (through `vm_area_init_from`, so
    /// the copy stays detached), `vma_dup_policy`, `tmp->vm_mm = mm`, `dup_userfaultfd`
    /// (no context here forwards fork events, so the copy loses the userfaultfd context
    /// and its `__VM_UFFD_FLAGS`), `VM_WIPEONFORK` starts without an anon_vma, anything
    /// else `anon_vma_fork`; `VM_LOCKED_MASK` cleared; a hugetlb copy loses
    /// `vm_private_data` (`hugetlb_dup_vma_private`: the parent's reservation map is not
    /// the child's); then linked (`vma_iter_bulk_store`, `map_count++`: the VMA is
    /// attached only now that it is in the child's tree), `vm_ops->open`, and the file's
    /// `i_mmap` learns of it (done by [`vma_link`](Self::vma_link)). On failure nothing
    /// of the copy is left: ENOMEM.
    ///
    /// # Panics
    /// If `parent` does not stabilise `mpnt`, or `parent` is this address space's lock.
    #[track_caller]
    pub fn dup_vma_for_fork(
        &mut self,
        mpnt: VmaRef,
        parent: &MmWriteGuard<'_>,
    ) -> Result<VmaRef, Errno> {
        assert!(
            parent.stabilises(mpnt) && !core::ptr::eq(parent.mm, self.mm),
            "dup_vma_for_fork: parent VMA {mpnt:p} is not stabilised by the parent lock"
        );
        // SAFETY: `mpnt` is stabilised by the parent's mmap write lock (asserted above).
        let tmp = unsafe { valloc::vm_area_dup_into(mpnt, self.mm.id)? };
        self.inner().live_vmas += 1;
        let mut flags = tmp.flags();
        if tmp.uffd_ctx() != 0 {
            tmp.cold.uffd_ctx.store(0, Ordering::Relaxed);
        }
        flags -= VmFlags::UFFD_MISSING | VmFlags::UFFD_WP | VmFlags::UFFD_MINOR;
        let r = if flags.contains(VmFlags::WIPEONFORK) {
            drop(tmp.replace_anon_vma(None));
            Ok(())
        } else {
            // SAFETY: `tmp` is detached and private to us (just made); `mpnt` is another
            // VMA, stable under the parent's lock (asserted above).
            unsafe { anon::anon_vma_fork(tmp, mpnt) }
        };
        if let Err(e) = r {
            self.vm_area_free(tmp);
            return Err(e);
        }
        flags -= VmFlags::LOCKED | VmFlags::LOCKONFAULT;
        tmp.set_flags_raw(flags);
        if flags.contains(VmFlags::HUGETLB) {
            tmp.vm_private_data.store(0, Ordering::Relaxed);
        }
        if let Err(e) = self.vma_link(tmp) {
            self.vm_area_free(tmp);
            return Err(e);
        }
        if let Some(open) = tmp.ops().and_then(|o| o.open) {
            open(tmp);
        }
        Ok(tmp)
    }
    /// Free a detached VMA (refused if attached). Linux: `vm_area_free()`.
    ///
    /// # Panics
    /// If `vma` is not a VMA of this address space, which includes a VMA freed already
    /// (freeing clears `vm_mm`): a double free would put the slot on the free list
    /// twice and hand it to two owners.
    #[track_caller]
    pub fn vm_area_free(&mut self, vma: VmaRef) {
        self.assert_owns(vma);
        if vma.refcnt() == 0 {
            self.inner().live_vmas -= 1;
        }
        valloc::vm_area_free(vma);
    }

    /// Set up a detached VMA's attributes before linking it.
    ///
    /// # Panics
    /// If `vma` is not a VMA of this address space.
    #[track_caller]
    pub fn vma_init(&mut self, vma: VmaRef, init: VmaInit) -> Result<(), Errno> {
        let VmaInit {
            start,
            end,
            pgoff,
            flags,
            file,
            ops,
        } = init;
        self.assert_owns(vma);
        if vma.is_attached()
            || start >= end
            || !start.is_multiple_of(super::area::PAGE_SIZE)
            || !end.is_multiple_of(super::area::PAGE_SIZE)
        {
            return Err(Errno::EINVAL);
        }
        vma.set_range(start, end, pgoff);
        vma.set_flags_raw(flags);
        vma.set_ops_raw(ops);
        // SAFETY: a detached VMA of this mm (asserted above), whose mmap write lock we hold: no reader can lock it, no other writer exists.
        unsafe { *vma.file_mut() = file };
        Ok(())
    }

    /// Set attributes of a VMA the caller owns (detached) or has write-locked.
    /// Panics if `vma` is not a VMA of this address space (see [`Self::assert_owns`]).
    #[track_caller]
    fn check_writable(&self, vma: VmaRef) -> Result<(), Errno> {
        self.assert_owns(vma);
        if vma.is_attached() && !self.vma_is_write_locked(vma) {
            return Err(Errno::EBUSY);
        }
        Ok(())
    }
    /// Set `vm_flags` (the VMA must be detached or write-locked). Linux: `vm_flags_reset`.
    pub fn vma_set_flags(&mut self, vma: VmaRef, flags: VmFlags) -> Result<(), Errno> {
        self.check_writable(vma)?;
        if vma.is_attached() {
            let stat = &mut self.inner().stat;
            stat.account(vma.flags(), vma.pages(), false);
            stat.account(flags, vma.pages(), true);
        }
        vma.set_flags_raw(flags);
        Ok(())
    }
    /// Set `vm_ops`.
    pub fn vma_set_ops(
        &mut self,
        vma: VmaRef,
        ops: Option<&'static VmOperations>,
    ) -> Result<(), Errno> {
        self.check_writable(vma)?;
        vma.set_ops_raw(ops);
        Ok(())
    }
    /// Set `vm_page_prot`.
    pub fn vma_set_page_prot(&mut self, vma: VmaRef, prot: u64) -> Result<(), Errno> {
        self.check_writable(vma)?;
        vma.vm_page_prot.store(prot, Ordering::Relaxed);
        Ok(())
    }
    /// Set `vm_private_data`.
    pub fn vma_set_private_data(&mut self, vma: VmaRef, data: usize) -> Result<(), Errno> {
        self.check_writable(vma)?;
        vma.vm_private_data.store(data, Ordering::Relaxed);
        Ok(())
    }
    /// Set the memory-policy identity.
    pub fn vma_set_policy(&mut self, vma: VmaRef, policy: usize) -> Result<(), Errno> {
        self.check_writable(vma)?;
        vma.vm_policy.store(policy, Ordering::Relaxed);
        Ok(())
    }
    /// Set the userfaultfd context identity.
    pub fn vma_set_uffd_ctx(&mut self, vma: VmaRef, ctx: usize) -> Result<(), Errno> {
        self.check_writable(vma)?;
        vma.cold.uffd_ctx.store(ctx, Ordering::Relaxed);
        Ok(())
    }
    /// Set the anonymous name. Linux: `anon_vma_name` via prctl.
    pub fn vma_set_anon_name(
        &mut self,
        vma: VmaRef,
        name: Option<alloc::sync::Arc<str>>,
    ) -> Result<(), Errno> {
        self.check_writable(vma)?;
        // SAFETY: `check_writable`: a VMA of this mm, detached or write-locked in this hold of its mmap write lock, so no reader or other writer can reach the name.
        unsafe { *vma.anon_name_mut() = name };
        Ok(())
    }

    // ---- anon_vma -----------------------------------------------------------------

    /// Give `vma` an anon_vma: reuse a compatible neighbour's (Linux:
    /// `find_mergeable_anon_vma`) or allocate a new one. Linux: `__anon_vma_prepare()`.
    /// (The first-fault path will call this under the VMA read lock + page-table lock
    /// later; here the caller holds the mmap write lock.)
    pub fn anon_vma_prepare(&mut self, vma: VmaRef) -> Result<(), Errno> {
        if vma.has_anon_vma() {
            return Ok(());
        }
        self.check_writable(vma)?;
        let reuse = self.find_mergeable_anon_vma(vma);
        // SAFETY: `check_writable` passed: `vma` is this mm's and detached or
        // write-locked in this hold of its mmap write lock, so no reader can lock it and
        // no other writer exists: the exclusive access `anon_vma_attach` needs.
        unsafe { anon::anon_vma_attach(vma, reuse) }
    }

    /// Give `vma` a brand-new anon_vma even if a neighbour's could be reused (tests use
    /// this to build "different anon_vma" layouts).
    pub fn anon_vma_new(&mut self, vma: VmaRef) -> Result<(), Errno> {
        if vma.has_anon_vma() {
            return Err(Errno::EEXIST);
        }
        self.check_writable(vma)?;
        // SAFETY: as in `anon_vma_prepare`: `check_writable` passed, so access is exclusive.
        unsafe { anon::anon_vma_attach(vma, None) }
    }

    /// Link `vma` to an existing anon_vma with a single chain entry, as
    /// `anon_vma_prepare` does when it reuses a neighbour's (tests build the harness's
    /// shared `dummy_anon_vma` layouts with it).
    pub fn anon_vma_link(&mut self, vma: VmaRef, av: &crate::vma::AnonVmaRef) -> Result<(), Errno> {
        if vma.has_anon_vma() {
            return Err(Errno::EEXIST);
        }
        self.check_writable(vma)?;
        // SAFETY: as in `anon_vma_prepare`: `check_writable` passed, so access is exclusive.
        unsafe { anon::anon_vma_attach(vma, Some(av.clone())) }
    }

    /// Drop `vma`'s anon_vma links (Linux: `unlink_anon_vmas()`), as mremap's
    /// MREMAP_DONTUNMAP does once every page of the VMA has moved away. The VMA must be
    /// detached or write-locked (EBUSY otherwise).
    pub fn unlink_anon_vmas(&mut self, vma: VmaRef) -> Result<(), Errno> {
        self.check_writable(vma)?;
        // SAFETY: as in `anon_vma_prepare`: `check_writable` passed, so no reader can lock
        // `vma` and no other writer exists.
        unsafe { anon::unlink_anon_vmas(vma) };
        Ok(())
    }

    /// Make `child` (detached) a fork child of `parent`, a VMA of the parent address
    /// space that `parent_lock` keeps stable. Linux: `anon_vma_fork()`, called by
    /// `dup_mmap()` with the parent's mmap lock and the child's (this guard) held.
    ///
    /// # Panics
    /// If `child` is not a VMA of this address space or `parent_lock` does not
    /// stabilise `parent`.
    #[track_caller]
    pub fn anon_vma_fork(
        &mut self,
        child: VmaRef,
        parent: VmaRef,
        parent_lock: &dyn VmaStable,
    ) -> Result<(), Errno> {
        assert!(
            parent_lock.stabilises(parent),
            "anon_vma_fork: parent VMA {parent:p} (mm {}) is not stabilised by the lock passed",
            parent.mm_id()
        );
        self.check_writable(child)?;
        // SAFETY: `child` is this mm's and detached or write-locked (checked above), so exclusive to us; `parent` is stabilised by `parent_lock` (asserted above), which the borrow keeps held for the call.
        unsafe { anon::anon_vma_fork(child, parent) }
    }

    /// Linux: `find_mergeable_anon_vma()` — a neighbour's anon_vma `vma` could share.
    pub fn find_mergeable_anon_vma(&self, vma: VmaRef) -> Option<crate::vma::AnonVmaRef> {
        find_mergeable_anon_vma(&self.view(), vma, self)
    }
}

/// Fault injection: a function [`MmReadGuard::anon_vma_prepare_shared`] calls between
/// its unlocked check and taking the lock, so a test can hold two first faults there
/// at once and make them race for the publication (feature `fault-inject`).
#[cfg(feature = "fault-inject")]
static ANON_PREPARE_WINDOW: spin::Mutex<Option<fn()>> = spin::Mutex::new(None);

/// Install (or remove) the hook [`MmReadGuard::anon_vma_prepare_shared`] calls between its
/// unlocked check and its lock, so a test can make two first faults race for the
/// publication (feature `fault-inject`).
#[cfg(feature = "fault-inject")]
pub fn set_anon_prepare_window(hook: Option<fn()>) {
    *ANON_PREPARE_WINDOW.lock() = hook;
}

/// Linux: `find_mergeable_anon_vma()` — a neighbour's anon_vma `vma` may share: the
/// next VMA's first, then the previous one's. `stable` is the mmap lock (read or write)
/// the view was taken under.
fn find_mergeable_anon_vma(
    v: &TreeView<'_>,
    vma: VmaRef,
    stable: &dyn VmaStable,
) -> Option<crate::vma::AnonVmaRef> {
    if let Some(next) = v
        .next_from(vma.end())
        .map(|e| e.vma)
        .filter(|n| n.start() == vma.end())
        && let Some(av) = anon::reusable_anon_vma(next, vma, next, stable)
    {
        return Some(av);
    }
    if let Some(prev) = v.last_ending_at_or_before(vma.start()).map(|e| e.vma)
        && let Some(av) = anon::reusable_anon_vma(prev, prev, vma, stable)
    {
        return Some(av);
    }
    None
}

/// `pgoff` an anonymous mapping at `addr` gets (Linux: `addr >> PAGE_SHIFT`).
pub fn anon_pgoff(addr: usize) -> usize {
    addr >> PAGE_SHIFT
}
