//! The VMA tree: address-ordered, augmented with gaps, readable without the mmap lock.
//!
//! Linux: the maple tree in its `mm->mm_mt` role (`vma_iter_*`, `mas_*`,
//! `vma_iter_prealloc`, `mas_empty_area`/`mas_empty_area_rev`).
//!
//! # Design
//!
//! A **persistent AVL tree** keyed by `vm_start`. Each node stores a copy of the VMA's
//! range (so the tree is self-consistent even while a write-locked VMA's fields are
//! being changed) and three augmentations of its subtree: lowest start, highest end,
//! and the largest gap between two consecutive entries. They make lookup, prev/next
//! and gap search `O(log n)` (height ≤ 1.44·log2 n, ≈ 23 for 65,530 VMAs).
//!
//! Writers (holding the mmap write lock) never modify a node that a reader can see:
//! a batch of inserts/erases copies the root-to-leaf paths it touches into fresh
//! nodes (nodes created in the same batch are modified in place), then publishes the
//! new root with one atomic store. Unlinked nodes are retired and reused only after an
//! RCU grace period ([`super::rcu`]). Hence a lock-free reader that loaded a root
//! inside an RCU read section walks an immutable snapshot: it may miss changes made
//! after its root load, but never sees a torn or freed node. Together with the VMA
//! refcount protocol (a lock-free reader must `vma_start_read` and then re-check the
//! range) this is the `lock_vma_under_rcu` contract.
//!
//! **Preallocation.** Before a batch the writer calls `TreeWriter::prealloc` with the
//! number of operations; it reserves enough nodes (3·(h+k+2) per op covers the copied
//! path plus rotation partners) and the bookkeeping capacity. After it succeeds the
//! batch cannot fail, so an allocation failure leaves the tree and every VMA untouched.
//! `fail_prealloc` injects that failure (the harness's knob; `fault-inject` feature only).

use alloc::alloc::{Layout, alloc, dealloc};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::marker::PhantomData;
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

use super::area::VmaRef;
use super::rcu;
use crate::errno::Errno;

/// Cap on the per-mm cache of free nodes kept after reclamation.
const NODE_CACHE_CAP: usize = 1024;

#[derive(Clone, Copy)]
pub(super) struct Node {
    start: usize,
    end: usize,
    vma: VmaRef,
    left: *mut Node,
    right: *mut Node,
    height: u32,
    /// Batch that created this node; nodes of the current batch are private.
    txn: u64,
    min_start: usize,
    max_end: usize,
    /// Largest gap between consecutive entries inside this subtree.
    max_gap: usize,
}

#[inline]
fn h(n: *const Node) -> u32 {
    if n.is_null() {
        0
    } else {
        // SAFETY: `h` is private to this module, whose callers pass null (handled above)
        // or a node they reached from a root they may read: the working root (the writer,
        // under the mmap write lock) or a published one (a view, whose nodes stay
        // allocated for its lifetime). Such a node is allocated; `height` is read only.
        unsafe { (*n).height }
    }
}

/// Recompute the augmentation of an owned node from its children.
///
/// # Safety
/// `n` is a live node owned by the writer in this batch (so no reader can see it); its
/// children are null or live.
unsafe fn update(n: *mut Node) {
    // SAFETY: `n` was created or copied in this batch (contract): it is unpublished, so
    // the writer, which holds the mmap write lock, is its only user and may write it.
    // Its children are only read, and live nodes stay allocated for the whole batch
    // (they are freed by `reclaim`, after `publish`, once no reader can reach them).
    unsafe {
        let (l, r) = ((*n).left, (*n).right);
        (*n).height = 1 + h(l).max(h(r));
        let mut gap = 0;
        (*n).min_start = (*n).start;
        (*n).max_end = (*n).end;
        if !l.is_null() {
            (*n).min_start = (*l).min_start;
            gap = gap.max((*l).max_gap).max((*n).start - (*l).max_end);
        }
        if !r.is_null() {
            (*n).max_end = (*r).max_end;
            gap = gap.max((*r).max_gap).max((*r).min_start - (*n).end);
        }
        (*n).max_gap = gap;
    }
}

/// The published root, shared with lock-free readers.
pub(super) struct VmaTree {
    root: AtomicPtr<Node>,
}

impl VmaTree {
    pub(super) const fn new() -> Self {
        VmaTree {
            root: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// A view for a caller holding the mmap lock (read or write): the tree cannot be
    /// republished, and nodes of the current tree are not reclaimed, while it is held.
    pub(super) fn view_locked(&self) -> TreeView<'_> {
        TreeView {
            root: self.root.load(Ordering::Acquire),
            _p: PhantomData,
        }
    }

    /// A view for a lock-free reader; valid for the lifetime of the RCU section.
    pub(super) fn view_rcu<'a>(&'a self, _g: &'a rcu::RcuReadGuard) -> TreeView<'a> {
        TreeView {
            root: self.root.load(Ordering::SeqCst),
            _p: PhantomData,
        }
    }
}

/// A read-only snapshot of the tree.
#[derive(Clone, Copy)]
pub struct TreeView<'a> {
    root: *const Node,
    _p: PhantomData<&'a Node>,
}

/// One tree entry: the range as recorded in the tree and the VMA.
#[derive(Clone, Copy, Debug)]
pub struct TreeEntry {
    /// Start recorded in the tree.
    pub start: usize,
    /// End recorded in the tree.
    pub end: usize,
    /// The VMA.
    pub vma: VmaRef,
}

impl<'a> TreeView<'a> {
    #[inline]
    fn node(&self, p: *const Node) -> Option<&'a Node> {
        // SAFETY: `p` is null or was reached from this view's root. A view's root is
        // the writer's working tree (borrowed from the writer, so no batch ends under
        // it) or was loaded under the mmap lock or inside an RCU section (`view_locked`,
        // `view_rcu`, whose lifetimes bound `'a`). A published node is never written
        // again (writers copy it first, `TreeWriter::own`) and is freed only after a grace
        // period that outlasts every RCU section and mmap-lock hold that could have seen
        // it (`reclaim`), so it is allocated and unchanging for `'a`.
        unsafe { p.as_ref() }
    }

    fn entry(n: &Node) -> TreeEntry {
        TreeEntry {
            start: n.start,
            end: n.end,
            vma: n.vma,
        }
    }

    /// Lowest entry with `end > addr` (Linux: `find_vma()`).
    pub fn find(&self, addr: usize) -> Option<TreeEntry> {
        let mut cur = self.root;
        let mut best = None;
        while let Some(n) = self.node(cur) {
            if n.end > addr {
                best = Some(Self::entry(n));
                cur = n.left;
            } else {
                cur = n.right;
            }
        }
        best
    }

    /// Entry containing `addr` (Linux: `vma_lookup()`).
    pub fn lookup(&self, addr: usize) -> Option<TreeEntry> {
        self.find(addr).filter(|e| e.start <= addr)
    }

    /// Highest entry with `start < addr` (the entry at or before `addr - 1`).
    pub fn prev_before(&self, addr: usize) -> Option<TreeEntry> {
        let mut cur = self.root;
        let mut best = None;
        while let Some(n) = self.node(cur) {
            if n.start < addr {
                best = Some(Self::entry(n));
                cur = n.right;
            } else {
                cur = n.left;
            }
        }
        best
    }

    /// Highest entry with `end <= addr` (Linux: the `prev` of `find_vma_prev()`).
    pub fn last_ending_at_or_before(&self, addr: usize) -> Option<TreeEntry> {
        let mut cur = self.root;
        let mut best = None;
        while let Some(n) = self.node(cur) {
            if n.end <= addr {
                best = Some(Self::entry(n));
                cur = n.right;
            } else {
                cur = n.left;
            }
        }
        best
    }

    /// Lowest entry with `start >= addr`.
    pub fn next_from(&self, addr: usize) -> Option<TreeEntry> {
        let mut cur = self.root;
        let mut best = None;
        while let Some(n) = self.node(cur) {
            if n.start >= addr {
                best = Some(Self::entry(n));
                cur = n.left;
            } else {
                cur = n.right;
            }
        }
        best
    }

    /// Lowest entry intersecting `[start, end)` (Linux: `find_vma_intersection()`).
    pub fn intersection(&self, start: usize, end: usize) -> Option<TreeEntry> {
        self.find(start).filter(|e| e.start < end)
    }

    /// Visit entries in address order.
    pub fn for_each(&self, mut f: impl FnMut(TreeEntry)) {
        fn walk<'a>(v: &TreeView<'a>, p: *const Node, f: &mut dyn FnMut(TreeEntry)) {
            if let Some(n) = v.node(p) {
                walk(v, n.left, f);
                f(TreeView::entry(n));
                walk(v, n.right, f);
            }
        }
        walk(self, self.root, &mut f);
    }

    /// Height of the tree (diagnostics: shows lookup is logarithmic).
    pub fn height(&self) -> u32 {
        h(self.root)
    }

    /// Do two views show the same tree (the same root node)?
    pub(super) fn same_root(&self, other: &TreeView<'_>) -> bool {
        ptr::eq(self.root, other.root)
    }

    /// Check the tree's own invariants and return the number of entries: entries in
    /// address order, non-empty and non-overlapping; each node's copy of the range
    /// equal to its VMA's; AVL heights and balance; and the cached augmentation
    /// (lowest start, highest end, largest gap) of every subtree exact, so the gap
    /// searches cannot miss or invent free space. Linux: `mt_validate()`
    /// (`mas_validate_gaps`, `mas_validate_limits`) under `CONFIG_DEBUG_VM_MAPLE_TREE`.
    ///
    /// The caller holds the mmap lock (the VMA fields compared must be stable).
    pub fn validate(&self) -> Result<usize, String> {
        /// Subtree summary: (height, min_start, max_end, max_gap).
        type Sum = (u32, usize, usize, usize);
        fn walk(
            v: &TreeView<'_>,
            p: *const Node,
            prev_end: &mut Option<usize>,
            count: &mut usize,
        ) -> Result<Option<Sum>, String> {
            let Some(n) = v.node(p) else {
                return Ok(None);
            };
            let l = walk(v, n.left, prev_end, count)?;
            if n.start >= n.end {
                return Err(format!(
                    "tree: empty or inverted entry {:#x}..{:#x}",
                    n.start, n.end
                ));
            }
            if let Some(pe) = *prev_end
                && pe > n.start
            {
                return Err(format!(
                    "tree: entry {:#x}..{:#x} overlaps or precedes the previous one (ending {pe:#x})",
                    n.start, n.end
                ));
            }
            *prev_end = Some(n.end);
            *count += 1;
            if n.vma.start() != n.start || n.vma.end() != n.end {
                return Err(format!(
                    "tree: entry {:#x}..{:#x} but its VMA says {:#x}..{:#x}",
                    n.start,
                    n.end,
                    n.vma.start(),
                    n.vma.end()
                ));
            }
            let r = walk(v, n.right, prev_end, count)?;
            let (hl, hr) = (l.map_or(0, |s| s.0), r.map_or(0, |s| s.0));
            let height = 1 + hl.max(hr);
            if hl.abs_diff(hr) > 1 || n.height != height {
                return Err(format!(
                    "tree: node {:#x}: height {} (children {hl}, {hr})",
                    n.start, n.height
                ));
            }
            let mut gap = 0;
            let mut min_start = n.start;
            let mut max_end = n.end;
            if let Some((_, lmin, lmax, lgap)) = l {
                min_start = lmin;
                gap = gap.max(lgap).max(n.start - lmax);
            }
            if let Some((_, rmin, rmax, rgap)) = r {
                max_end = rmax;
                gap = gap.max(rgap).max(rmin - n.end);
            }
            if (n.min_start, n.max_end, n.max_gap) != (min_start, max_end, gap) {
                return Err(format!(
                    "tree: node {:#x}..{:#x}: cached (min_start {:#x}, max_end {:#x}, max_gap {:#x}), \
                     actual ({min_start:#x}, {max_end:#x}, {gap:#x})",
                    n.start, n.end, n.min_start, n.max_end, n.max_gap
                ));
            }
            Ok(Some((height, min_start, max_end, gap)))
        }
        let mut count = 0;
        walk(self, self.root, &mut None, &mut count)?;
        Ok(count)
    }

    /// Lowest `addr` with `[addr, addr+len)` free, inside `[low, high)`, aligned to
    /// `align` (a power of two). Linux: `mas_empty_area()` / bottom-up
    /// `vm_unmapped_area()`.
    pub fn gap_bottom_up(
        &self,
        len: usize,
        low: usize,
        high: usize,
        align: usize,
    ) -> Option<usize> {
        if len == 0 || high < low || high - low < len || !align.is_power_of_two() {
            return None;
        }
        let fit = |gs: usize, ge: usize| -> Option<usize> {
            let s = align_up(gs.max(low), align)?;
            let e = ge.min(high);
            (s <= e && e - s >= len).then_some(s)
        };
        if let Some(a) = self.gap_lo(self.root, 0, len, low, high, &fit) {
            return Some(a);
        }
        // The gap above the last entry.
        let last_end = self.node(self.root).map_or(0, |n| n.max_end);
        fit(last_end, usize::MAX)
    }

    /// Search the gaps owned by subtree `p` (the gap before each entry, starting from
    /// `pred_end`, the end of the entry preceding the subtree) in ascending order.
    fn gap_lo(
        &self,
        p: *const Node,
        pred_end: usize,
        len: usize,
        low: usize,
        high: usize,
        fit: &dyn Fn(usize, usize) -> Option<usize>,
    ) -> Option<usize> {
        let n = self.node(p)?;
        let biggest = n.max_gap.max(n.min_start.saturating_sub(pred_end));
        // Prune: no gap big enough, all gaps start at/above `high`, or all end below `low`.
        if biggest < len || pred_end >= high || n.max_end <= low {
            return None;
        }
        if let Some(a) = self.gap_lo(n.left, pred_end, len, low, high, fit) {
            return Some(a);
        }
        let before = self.node(n.left).map_or(pred_end, |l| l.max_end);
        if let Some(a) = fit(before, n.start) {
            return Some(a);
        }
        self.gap_lo(n.right, n.end, len, low, high, fit)
    }

    /// Highest `addr` with `[addr, addr+len)` free inside `[low, high)`, aligned.
    /// Linux: `mas_empty_area_rev()` / top-down `vm_unmapped_area()`.
    pub fn gap_top_down(&self, len: usize, low: usize, high: usize, align: usize) -> Option<usize> {
        if len == 0 || high < low || high - low < len || !align.is_power_of_two() {
            return None;
        }
        let fit = |gs: usize, ge: usize| -> Option<usize> {
            let e = ge.min(high);
            let s = gs.max(low);
            if e < s || e - s < len {
                return None;
            }
            let a = (e - len) & !(align - 1);
            (a >= s).then_some(a)
        };
        let last_end = self.node(self.root).map_or(0, |n| n.max_end);
        if let Some(a) = fit(last_end, usize::MAX) {
            return Some(a);
        }
        self.gap_hi(self.root, 0, len, low, high, &fit)
    }

    fn gap_hi(
        &self,
        p: *const Node,
        pred_end: usize,
        len: usize,
        low: usize,
        high: usize,
        fit: &dyn Fn(usize, usize) -> Option<usize>,
    ) -> Option<usize> {
        let n = self.node(p)?;
        let biggest = n.max_gap.max(n.min_start.saturating_sub(pred_end));
        if biggest < len || pred_end >= high || n.max_end <= low {
            return None;
        }
        if let Some(a) = self.gap_hi(n.right, n.end, len, low, high, fit) {
            return Some(a);
        }
        let before = self.node(n.left).map_or(pred_end, |l| l.max_end);
        if let Some(a) = fit(before, n.start) {
            return Some(a);
        }
        self.gap_hi(n.left, pred_end, len, low, high, fit)
    }
}

fn align_up(x: usize, align: usize) -> Option<usize> {
    x.checked_add(align - 1).map(|v| v & !(align - 1))
}

/// Writer-side state of the tree (lives under the mmap write lock).
pub(super) struct TreeWriter {
    /// Working root: equal to the published root outside a batch.
    work: *mut Node,
    cache: Vec<*mut Node>,
    /// Published nodes unlinked by the current batch.
    pending: Vec<*mut Node>,
    /// Unlinked nodes waiting for a grace period, with their epoch tag (ascending).
    retired: Vec<(*mut Node, u64)>,
    txn: u64,
    /// Entries in the working tree.
    count: usize,
    /// Fault injection: the next `prealloc` fails with ENOMEM (Linux harness:
    /// `fail_prealloc`). Stays set until cleared.
    #[cfg(feature = "fault-inject")]
    pub(super) fail_prealloc: bool,
}

// SAFETY: the raw pointers are nodes the writer owns (unpublished, cached, pending or
// retired: no other thread writes them) or published nodes that readers share read-only
// under the RCU protocol; nothing in them is tied to a thread. Every `&mut` method runs
// under the mmap write lock (the writer lives in `Mm`'s lock), so two threads never
// mutate it at once.
unsafe impl Send for TreeWriter {}
// SAFETY: the `&self` methods (`len`, `view`) only read; mutation needs `&mut self`,
// which the mmap write lock makes exclusive.
unsafe impl Sync for TreeWriter {}

impl TreeWriter {
    pub(super) const fn new() -> Self {
        TreeWriter {
            work: ptr::null_mut(),
            cache: Vec::new(),
            pending: Vec::new(),
            retired: Vec::new(),
            txn: 1,
            count: 0,
            #[cfg(feature = "fault-inject")]
            fail_prealloc: false,
        }
    }

    /// Entries in the tree.
    pub(super) fn len(&self) -> usize {
        self.count
    }

    /// Bytes of node memory the tree holds: nodes in the tree, cached, pending and
    /// awaiting a grace period (diagnostics: the bytes-per-VMA figure).
    pub(super) fn bytes(&self) -> usize {
        (self.count + self.cache.len() + self.pending.len() + self.retired.len())
            * core::mem::size_of::<Node>()
    }

    /// Frees the cached nodes and the spare capacity of the bookkeeping vectors
    /// (outside a batch: nothing pending). Retired nodes still waiting for readers stay.
    #[cfg(feature = "fault-inject")]
    pub(super) fn shrink_caches(&mut self) {
        debug_assert!(self.pending.is_empty(), "shrink inside a batch");
        for n in self.cache.drain(..) {
            // SAFETY: a cached node was allocated with `Node`'s layout and is in no tree
            // a reader can reach: fresh, discarded before it was ever published, or
            // reclaimed after its grace period (`reclaim`). `drain` hands it over once.
            unsafe { dealloc(n as *mut u8, Layout::new::<Node>()) };
        }
        self.cache = Vec::new();
        self.pending = Vec::new();
        if self.retired.is_empty() {
            self.retired = Vec::new();
        }
    }

    /// Reserve everything a batch of `nops` inserts/erases needs and start the batch.
    ///
    /// Linux: `vma_iter_prealloc()`.
    pub(super) fn prealloc(&mut self, nops: usize) -> Result<(), Errno> {
        #[cfg(feature = "fault-inject")]
        if self.fail_prealloc {
            return Err(Errno::ENOMEM);
        }
        // Each insert or erase copies at most one root-to-leaf path (plus the path to
        // an erased node's successor, plus rotation nodes); the height during the
        // batch is bounded by the AVL height of the largest tree it can reach. Linear
        // in `nops`, so a munmap of thousands of VMAs reserves megabytes, not the
        // quadratic amount a per-op `+ nops` bound would.
        let max_h = avl_max_height(self.count + nops).max(h(self.work) as usize);
        let need = nops * 2 * (max_h + 3);
        self.pending.try_reserve(need).map_err(|_| Errno::ENOMEM)?;
        self.retired.try_reserve(need).map_err(|_| Errno::ENOMEM)?;
        self.cache
            .try_reserve(need.saturating_sub(self.cache.len()))
            .map_err(|_| Errno::ENOMEM)?;
        while self.cache.len() < need {
            // SAFETY: `alloc` requires a layout of non-zero size; `Node` has fields.
            let p = unsafe { alloc(Layout::new::<Node>()) } as *mut Node;
            if p.is_null() {
                return Err(Errno::ENOMEM);
            }
            self.cache.push(p);
        }
        self.txn += 1;
        Ok(())
    }

    fn take(&mut self) -> *mut Node {
        match self.cache.pop() {
            Some(p) => p,
            None => {
                // Only reachable if the `prealloc` bound is wrong: an internal bug.
                debug_assert!(false, "VMA tree preallocation budget exceeded");
                // SAFETY: as in `prealloc`: `Node`'s layout has a non-zero size.
                let p = unsafe { alloc(Layout::new::<Node>()) } as *mut Node;
                assert!(
                    !p.is_null(),
                    "VMA tree node allocation failed after prealloc"
                );
                p
            }
        }
    }

    /// A private (writable) version of `n`: itself if created in this batch, else a copy.
    ///
    /// # Safety
    /// `n` is a live node of the working tree.
    unsafe fn own(&mut self, n: *mut Node) -> *mut Node {
        // SAFETY: `n` is allocated (contract). A node of this batch (`txn`) is
        // unpublished, so returning it for writing gives the writer its only pointer in
        // use. An older node may be in the published tree, where RCU readers may be
        // reading it right now: it is only read here (copied into `c`, a cache node no
        // one else has), and queued in `pending` so that it is freed only after a grace
        // period, never written.
        unsafe {
            if (*n).txn == self.txn {
                return n;
            }
            let c = self.take();
            c.write(*n);
            (*c).txn = self.txn;
            self.pending.push(n);
            c
        }
    }

    /// Drop node `n` (unlinked from the working tree).
    fn discard(&mut self, n: *mut Node) {
        // SAFETY: `discard` is private and only `del` calls it, with a node it has just
        // unlinked from the working tree. A node of the working tree is allocated, and
        // stays so until this very call queues it (`cache` or `pending`); published
        // copies are not freed before a grace period. Reading `txn` alone races with no
        // one: readers never write nodes.
        if unsafe { (*n).txn } == self.txn {
            self.cache.push(n);
        } else {
            self.pending.push(n);
        }
    }

    /// # Safety
    /// `n` owned by this batch, children live.
    unsafe fn rotate_right(&mut self, n: *mut Node) -> *mut Node {
        // SAFETY: `n` is unpublished (contract), so the writer may write it; its left
        // child is live (contract, and non-null: a right rotation happens only when the
        // left subtree is the taller), and `own` turns it into a node of this batch
        // before it is written. `update` gets two nodes of this batch.
        unsafe {
            let l = self.own((*n).left);
            (*n).left = (*l).right;
            update(n);
            (*l).right = n;
            update(l);
            l
        }
    }

    /// # Safety
    /// As for `rotate_right`.
    unsafe fn rotate_left(&mut self, n: *mut Node) -> *mut Node {
        // SAFETY: the mirror image of `rotate_right`: `n` is ours to write, its right
        // child (non-null, the taller side) is made ours by `own` before it is written.
        unsafe {
            let r = self.own((*n).right);
            (*n).right = (*r).left;
            update(n);
            (*r).left = n;
            update(r);
            r
        }
    }

    /// # Safety
    /// `n` owned by this batch, children live.
    unsafe fn rebalance(&mut self, n: *mut Node) -> *mut Node {
        // SAFETY: `n` is ours to write (contract). Its children are live and only read
        // until `own` has made the one to rotate ours; each rotation gets a node of this
        // batch whose children are live, which is `rotate_*`'s contract. A child read for
        // its height is non-null whenever it is dereferenced: a subtree taller by two or
        // more has a root.
        unsafe {
            update(n);
            let (l, r) = ((*n).left, (*n).right);
            if h(l) > h(r) + 1 {
                if h((*l).left) < h((*l).right) {
                    let l = self.own(l);
                    (*n).left = self.rotate_left(l);
                }
                return self.rotate_right(n);
            }
            if h(r) > h(l) + 1 {
                if h((*r).right) < h((*r).left) {
                    let r = self.own(r);
                    (*n).right = self.rotate_right(r);
                }
                return self.rotate_left(n);
            }
            n
        }
    }

    /// # Safety
    /// `n` is null or a live node of the working tree.
    unsafe fn ins(&mut self, n: *mut Node, start: usize, end: usize, vma: VmaRef) -> *mut Node {
        if n.is_null() {
            let c = self.take();
            // SAFETY: `take` returns a node allocated with `Node`'s layout that is in no
            // tree and in no queue, so no one else reads it; `write` does not drop the
            // stale contents, which are plain data.
            unsafe {
                c.write(Node {
                    start,
                    end,
                    vma,
                    left: ptr::null_mut(),
                    right: ptr::null_mut(),
                    height: 1,
                    txn: self.txn,
                    min_start: start,
                    max_end: end,
                    max_gap: 0,
                });
            }
            return c;
        }
        // SAFETY: `n` is a live node of the working tree (contract, and non-null here),
        // which is `own`'s contract; the node it returns is of this batch, so it may be
        // written, and its children, live nodes of the working tree, are what the
        // recursive `ins` and `rebalance` need.
        unsafe {
            let n = self.own(n);
            if start < (*n).start {
                (*n).left = self.ins((*n).left, start, end, vma);
            } else {
                (*n).right = self.ins((*n).right, start, end, vma);
            }
            self.rebalance(n)
        }
    }

    /// Remove the minimum of subtree `n`; returns (new subtree, removed node).
    ///
    /// # Safety
    /// `n` is a live non-null node of the working tree.
    unsafe fn remove_min(&mut self, n: *mut Node) -> (*mut Node, *mut Node) {
        // SAFETY: `n` is a live non-null node of the working tree (contract): reading it
        // is sound, and `own` makes it ours before it is written. The recursion gets its
        // non-null left child, a live node of the working tree.
        unsafe {
            if (*n).left.is_null() {
                return ((*n).right, n);
            }
            let n = self.own(n);
            let (l, m) = self.remove_min((*n).left);
            (*n).left = l;
            (self.rebalance(n), m)
        }
    }

    /// # Safety
    /// `n` is null or a live node of the working tree.
    unsafe fn del(&mut self, n: *mut Node, start: usize, found: &mut Option<VmaRef>) -> *mut Node {
        if n.is_null() {
            return n;
        }
        // SAFETY: `n` is a live node of the working tree (contract, non-null here). It is
        // read as is, and written only through the copy `own` returns; the recursive
        // calls get its children (null or live); `remove_min` gets a non-null right
        // child; `discard` gets nodes just unlinked; `rebalance` gets nodes of this batch.
        unsafe {
            let s = (*n).start;
            if start < s {
                let n = self.own(n);
                (*n).left = self.del((*n).left, start, found);
                return self.rebalance(n);
            }
            if start > s {
                let n = self.own(n);
                (*n).right = self.del((*n).right, start, found);
                return self.rebalance(n);
            }
            *found = Some((*n).vma);
            let (l, r) = ((*n).left, (*n).right);
            if l.is_null() {
                self.discard(n);
                return r;
            }
            if r.is_null() {
                self.discard(n);
                return l;
            }
            let (new_r, m) = self.remove_min(r);
            let c = self.own(n);
            (*c).start = (*m).start;
            (*c).end = (*m).end;
            (*c).vma = (*m).vma;
            (*c).right = new_r;
            self.discard(m);
            self.rebalance(c)
        }
    }

    /// Insert `[start, end) → vma` into the working tree. Must be inside a batch, and the
    /// range must not overlap an entry (callers erase overlapping entries first).
    pub(super) fn insert(&mut self, start: usize, end: usize, vma: VmaRef) {
        debug_assert!(start < end);
        // SAFETY: `work` is the working root: null (empty tree) or a node of the working
        // tree, which stays allocated while the writer, borrowed mutably here, lives.
        self.work = unsafe { self.ins(self.work, start, end, vma) };
        self.count += 1;
    }

    /// Erase the entry starting at `start`; returns its VMA.
    pub(super) fn erase(&mut self, start: usize) -> Option<VmaRef> {
        let mut found = None;
        // SAFETY: as in `insert`: `work` is null or the live working root.
        self.work = unsafe { self.del(self.work, start, &mut found) };
        if found.is_some() {
            self.count -= 1;
        }
        debug_assert!(
            found.is_some(),
            "erase of missing VMA tree entry {start:#x}"
        );
        found
    }

    /// Publish the working tree to readers, retire the unlinked nodes and reclaim
    /// those whose grace period has passed. Ends the batch.
    pub(super) fn publish(&mut self, tree: &VmaTree) {
        tree.root.store(self.work, Ordering::SeqCst);
        // Nodes fresh in this batch are now visible: bump the batch so they are copied
        // before any further modification.
        self.txn += 1;
        if !self.pending.is_empty() {
            let tag = rcu::retire_epoch();
            // Capacity was reserved by `prealloc`.
            for n in self.pending.drain(..) {
                self.retired.push((n, tag));
            }
        }
        self.reclaim();
    }

    fn reclaim(&mut self) {
        if self.retired.is_empty() {
            return;
        }
        let bound = rcu::safe_bound();
        let k = self.retired.iter().take_while(|(_, t)| *t < bound).count();
        for i in 0..k {
            let n = self.retired[i].0;
            if self.cache.len() < NODE_CACHE_CAP && self.cache.try_reserve(1).is_ok() {
                self.cache.push(n);
            } else {
                // SAFETY: `n` was allocated with `Node`'s layout, was unlinked from the
                // published tree before epoch `t`, and `t < safe_bound()` means every
                // reader that could have loaded a root containing it has left its RCU
                // section (see `rcu`); mmap-lock readers are excluded by our write lock.
                // The `drain` below removes it from `retired`, so it is freed once.
                unsafe { dealloc(n as *mut u8, Layout::new::<Node>()) };
            }
        }
        self.retired.drain(..k);
    }

    /// The working root as a view (the writer's own reads inside a batch).
    pub(super) fn view(&self) -> TreeView<'_> {
        TreeView {
            root: self.work,
            _p: PhantomData,
        }
    }

    /// Free every node. Only sound when no reader can reach the tree any more.
    ///
    /// # Safety
    /// No RCU reader or lock holder can access `tree` or this writer's nodes.
    pub(super) unsafe fn destroy(&mut self, tree: &VmaTree) {
        unsafe fn free_rec(p: *mut Node) {
            if p.is_null() {
                return;
            }
            // SAFETY: `p` is a node of the working tree, which `destroy`'s contract says
            // no one else can reach; each node has one parent, so it is freed once, after
            // its children were read.
            unsafe {
                free_rec((*p).left);
                free_rec((*p).right);
                dealloc(p as *mut u8, Layout::new::<Node>());
            }
        }
        tree.root.store(ptr::null_mut(), Ordering::SeqCst);
        // SAFETY: the root was unpublished just above and, by the contract, no reader or
        // lock holder can still be inside the tree; `work` is null or its live root.
        unsafe { free_rec(self.work) };
        self.work = ptr::null_mut();
        self.count = 0;
        let layout = Layout::new::<Node>();
        for n in self.cache.drain(..).chain(self.pending.drain(..)) {
            // SAFETY: cached nodes are in no tree; pending ones were unlinked by a batch
            // that the contract says no reader can still observe. Each was allocated with
            // `layout` and is drained from its queue, so freed once. No node is in both
            // the working tree and a queue.
            unsafe { dealloc(n as *mut u8, layout) };
        }
        for (n, _) in self.retired.drain(..) {
            // SAFETY: retired nodes are unlinked from every tree, and the contract says
            // no reader that might still hold one exists: their grace periods need not
            // be waited for. Allocated with `layout`, drained once.
            unsafe { dealloc(n as *mut u8, layout) };
        }
    }
}

/// Upper bound on the height of an AVL tree with `n` nodes: `1.4405 * log2(n + 2)`,
/// over-approximated as `1.5 * ceil(log2(n + 2)) + 1`.
fn avl_max_height(n: usize) -> usize {
    let ceil_log2 = (usize::BITS - (n + 1).leading_zeros()) as usize;
    (3 * ceil_log2).div_ceil(2) + 1
}
