//! The VMA tree: a maple-style range B-tree, augmented with gaps, readable under RCU.
//!
//! Linux: the maple tree (`lib/maple_tree.c`, `include/linux/maple_tree.h`) in its
//! `mm->mm_mt` role (`vma_iter_*` in `mm/vma.h`, `mas_walk`, `mas_store_prealloc`,
//! `mas_preallocate`, `mas_empty_area` / `mas_empty_area_rev`, `mt_validate`).
//!
//! # Layout
//!
//! Every node is 256 bytes (four cache lines), as Linux's `struct maple_node`: a
//! header word (entry count, leaf flag, the batch that created the node), the lowest
//! start in the subtree, and three arrays of [`SLOTS`] = 10 words.
//!
//! - A **leaf** (Linux: `maple_range_64`) holds up to 10 VMAs as (start, end, VMA),
//!   sorted. Gaps are *implied*, not stored as empty ranges as Linux does: the free
//!   space before an entry is the distance from the previous entry's end. That keeps
//!   10 VMAs per leaf where Linux's alternating VMA/NULL slots keep about 8.
//! - An **internal** node (Linux: `maple_arange_64`) holds up to 10 children with, per
//!   child, its pivot (the highest end in the child) and its gap: the largest free
//!   range owned by the child's entries, each entry owning the space between the
//!   previous entry's end and its own start. The space before child 0's first entry
//!   is owned by whatever precedes the node and is not counted in the node (so a
//!   change at the end of one subtree never rewrites the next one); the parent's
//!   slot for the node counts it, from the previous sibling's pivot and the node's
//!   lowest start (the header's `min`). The space above the last VMA belongs to no
//!   entry; the searches add it.
//!
//! With 10 entries per node, 65,530 VMAs fit in a height of 5 (a height of 4 holds
//! at most 10,000); Linux's tree, with about 8 VMAs per leaf and 10 children per
//! internal node, is 5 high there too. `vma_tree_bytes_per_vma_65530` reports the
//! memory (28 bytes per VMA with full leaves; the AVL tree it replaced used 80).
//!
//! The batch number lives in 48 bits of the header: at a batch per microsecond it
//! would wrap after nine years (debug builds assert it does not).
//!
//! # Writers and readers
//!
//! A writer (holding the mmap write lock) never modifies a node a reader can see. A
//! batch (`TreeWriter::prealloc` … `TreeWriter::publish`) copies each node it
//! changes, the leaf and its ancestors up to the root (copy-on-write of the path;
//! a node created earlier in the same batch is modified in place), and publishes the
//! new root with one atomic store. Copying the ancestors rather than storing the new
//! child pointer into the published parent (what Linux does when only a leaf is
//! replaced) costs four more 256-byte copies per batch, but every published node is
//! immutable: a lock-free reader that loaded the root inside an RCU read section
//! walks one consistent snapshot, with pivots, child pointers and entries of the same
//! version, and needs no re-check of a node's `dead` mark as Linux's `mas_walk`
//! does. Replaced nodes are retired and freed only after an RCU grace period
//! ([`super::rcu`]); a whole subtree cut out by a range erase is retired as one item
//! and freed by walking it then (Linux: `mas_destroy`/`mt_free_walk` by RCU).
//!
//! **Preallocation by height** (Linux: `mas_preallocate`, `vma_iter_prealloc`).
//! Before a batch the writer reserves the worst case of its operations for the
//! current height `h`: `3(h + k) + 2` nodes per insert or erase among `k` (the path,
//! a split and a sibling or a neighbour per level, a new root), `4h + 4` for a range erase (two
//! boundary paths, a neighbour for each), and the bookkeeping capacity. A range erase
//! cuts out the subtrees between its boundary paths whole, so its reservation does
//! not grow with the number of VMAs removed: a 10,000-VMA munmap reserves as much
//! as a 2-VMA one. After `prealloc` succeeds the batch cannot fail, so an allocation
//! failure leaves the tree and every VMA untouched. `fail_prealloc` injects that
//! failure (the harness's knob; `fault-inject` feature only).
//!
//! **Balance.** Before an insert makes a full node split, one of its slots (not the
//! one the insert goes to) is pushed into a sibling with room (Linux:
//! `mas_push_data`), so nodes stay nearly full where VMAs are split one after another
//! (64,000 VMAs made by mprotect: height 5 and 28 bytes per VMA, against 7 and 53
//! with plain half splits). A full node with full siblings splits in two halves,
//! except when the new entry goes after the last one of the node, where the old node
//! stays full and the new one starts with one entry (appends then fill nodes
//! completely; Linux's `mas_wr_append` and the rightmost-node split of
//! `mab_calc_split` play that role). A range change that takes only free space is
//! stored over in place (`TreeWriter::replace`: one walk, not an erase and an
//! insert). A node left with fewer
//! than [`MIN_FILL`] entries by an erase is merged with, or refilled from, a
//! neighbour (Linux: `mas_rebalance`); a root with one child is replaced by it.

use alloc::alloc::{Layout, alloc_zeroed, dealloc};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::marker::PhantomData;
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

use super::area::{Vma, VmaRef};
use super::rcu;
use crate::errno::Errno;

/// Entries per node (Linux: `MAPLE_ARANGE64_SLOTS` = 10 in an internal node with
/// gaps, `MAPLE_RANGE64_SLOTS` = 16 in a leaf holding VMAs and gaps alternately).
pub const SLOTS: usize = 10;
/// A node touched by an erase and left with fewer entries is rebalanced with a
/// neighbour (Linux: `mt_min_slots`).
pub const MIN_FILL: usize = 3;
/// Free nodes kept per address space after reclamation (an intrusive list: no heap).
const NODE_CACHE_CAP: usize = 256;
/// Bit 0 of a retired pointer: the whole subtree below it is retired.
const SUBTREE: usize = 1;

const LEAF_BIT: u64 = 1 << 8;
const TXN_SHIFT: u32 = 16;

/// One 256-byte tree node (Linux: `struct maple_node`). No `align(64)`: the heap's
/// 256-byte size class already places nodes on 256-byte boundaries, and the
/// over-aligned layout measurably slowed unrelated figures of the bench kernel
/// (`pt_protect_512_pages` about twice as slow in four runs out of four).
///
/// `a`, `b`, `c` are, in a leaf: start, end and VMA pointer of each entry; in an
/// internal node: pivot (highest end in the child), child pointer and gap of each
/// child (see the module doc).
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct Node {
    /// Bits 0..8: entry count; bit 8: leaf; bits 16..64: batch that created the node
    /// (nodes of the current batch are private to the writer).
    meta: u64,
    /// Lowest start in the subtree.
    min: usize,
    a: [usize; SLOTS],
    b: [usize; SLOTS],
    c: [usize; SLOTS],
}

const _: () = assert!(core::mem::size_of::<Node>() == 256);

impl Node {
    #[inline]
    fn len(&self) -> usize {
        (self.meta & 0xff) as usize
    }
    #[inline]
    fn is_leaf(&self) -> bool {
        self.meta & LEAF_BIT != 0
    }
    #[inline]
    fn txn(&self) -> u64 {
        self.meta >> TXN_SHIFT
    }
    #[inline]
    fn set_len(&mut self, n: usize) {
        debug_assert!(n <= SLOTS);
        self.meta = (self.meta & !0xff) | n as u64;
    }
    #[inline]
    fn child(&self, i: usize) -> *mut Node {
        self.b[i] as *mut Node
    }
    #[inline]
    fn vma(&self, i: usize) -> VmaRef {
        // SAFETY: leaf slot `i < len` holds a pointer made from a `VmaRef` (`&'static
        // Vma`) by `set_entry`; such a pointer is valid for `'static`.
        unsafe { &*(self.c[i] as *const Vma) }
    }
    /// Highest end in the subtree.
    #[inline]
    fn max(&self) -> usize {
        let n = self.len();
        if self.is_leaf() {
            self.b[n - 1]
        } else {
            self.a[n - 1]
        }
    }
    /// Largest free range between two entries of the subtree (not before its first).
    fn inner_gap(&self) -> usize {
        let n = self.len();
        let mut g = 0;
        if self.is_leaf() {
            for i in 1..n {
                g = g.max(self.a[i] - self.b[i - 1]);
            }
        } else {
            g = self.c[..n].iter().copied().max().unwrap_or(0);
        }
        g
    }
    fn entry(&self, i: usize) -> TreeEntry {
        TreeEntry {
            start: self.a[i],
            end: self.b[i],
            vma: self.vma(i),
        }
    }
    /// Insert the slot triple `(a, b, c)` at `i`, shifting the rest right.
    fn insert_slot(&mut self, i: usize, t: (usize, usize, usize)) {
        let n = self.len();
        debug_assert!(n < SLOTS && i <= n);
        self.a.copy_within(i..n, i + 1);
        self.b.copy_within(i..n, i + 1);
        self.c.copy_within(i..n, i + 1);
        (self.a[i], self.b[i], self.c[i]) = t;
        self.set_len(n + 1);
    }
    fn remove_slots(&mut self, i: usize, k: usize) {
        let n = self.len();
        debug_assert!(i + k <= n);
        self.a.copy_within(i + k..n, i);
        self.b.copy_within(i + k..n, i);
        self.c.copy_within(i + k..n, i);
        self.set_len(n - k);
    }
    fn slot(&self, i: usize) -> (usize, usize, usize) {
        (self.a[i], self.b[i], self.c[i])
    }
}

/// Summary of a subtree the parent keeps: (lowest start, highest end, inner gap).
///
/// # Safety
/// `p` is a live, non-empty node.
unsafe fn summary(p: *const Node) -> (usize, usize, usize) {
    // SAFETY: contract.
    let n = unsafe { &*p };
    (n.min, n.max(), n.inner_gap())
}

/// The published root, shared with lock-free readers (Linux: `mm->mm_mt.ma_root`).
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
        // again (writers copy it first, `TreeWriter::own`) and is freed only after a
        // grace period that outlasts every RCU section and mmap-lock hold that could have
        // seen it (`TreeWriter::reclaim`), so it is allocated and unchanging for `'a`.
        unsafe { p.as_ref() }
    }

    /// Last entry of the subtree `p` (non-empty).
    fn rightmost(&self, mut p: *const Node) -> Option<TreeEntry> {
        loop {
            let n = self.node(p)?;
            if n.is_leaf() {
                return Some(n.entry(n.len() - 1));
            }
            p = n.child(n.len() - 1);
        }
    }

    /// First entry of the subtree `p` (non-empty).
    fn leftmost(&self, mut p: *const Node) -> Option<TreeEntry> {
        loop {
            let n = self.node(p)?;
            if n.is_leaf() {
                return Some(n.entry(0));
            }
            p = n.child(0);
        }
    }

    /// Lowest entry with `end > addr` (Linux: `find_vma()`, `mas_find`).
    pub fn find(&self, addr: usize) -> Option<TreeEntry> {
        let mut n = self.node(self.root)?;
        loop {
            let len = n.len();
            if n.is_leaf() {
                let i = n.b[..len].iter().position(|&e| e > addr)?;
                return Some(n.entry(i));
            }
            let i = n.a[..len].iter().position(|&p| p > addr)?;
            n = self.node(n.child(i))?;
        }
    }

    /// Entry containing `addr` (Linux: `vma_lookup()`, `mas_walk`).
    pub fn lookup(&self, addr: usize) -> Option<TreeEntry> {
        self.find(addr).filter(|e| e.start <= addr)
    }

    /// Highest entry with `start < addr` (the entry at or before `addr - 1`;
    /// Linux: `mas_prev`).
    pub fn prev_before(&self, addr: usize) -> Option<TreeEntry> {
        let mut n = self.node(self.root)?;
        if n.min >= addr {
            return None;
        }
        loop {
            let len = n.len();
            if n.is_leaf() {
                let i = n.a[..len].iter().rposition(|&s| s < addr)?;
                return Some(n.entry(i));
            }
            // Children before the first one reaching `addr` hold only entries below it.
            let j = n.a[..len].iter().position(|&p| p >= addr).unwrap_or(len);
            if j < len {
                let c = self.node(n.child(j))?;
                if c.min < addr {
                    n = c;
                    continue;
                }
            }
            // `n.min < addr`, so `j > 0` here.
            return self.rightmost(n.child(j.checked_sub(1)?));
        }
    }

    /// Highest entry with `end <= addr` (Linux: the `prev` of `find_vma_prev()`).
    pub fn last_ending_at_or_before(&self, addr: usize) -> Option<TreeEntry> {
        let mut n = self.node(self.root)?;
        let mut fallback: *const Node = ptr::null();
        loop {
            let len = n.len();
            if n.is_leaf() {
                return match n.b[..len].iter().rposition(|&e| e <= addr) {
                    Some(i) => Some(n.entry(i)),
                    None => self.rightmost(fallback),
                };
            }
            let j = n.a[..len].iter().position(|&p| p > addr);
            let Some(j) = j else {
                return self.rightmost(n.child(len - 1));
            };
            if j > 0 {
                fallback = n.child(j - 1);
            }
            n = self.node(n.child(j))?;
        }
    }

    /// Lowest entry with `start >= addr` (Linux: `mas_next` from `addr`).
    pub fn next_from(&self, addr: usize) -> Option<TreeEntry> {
        let mut n = self.node(self.root)?;
        let mut fallback: *const Node = ptr::null();
        loop {
            let len = n.len();
            if n.is_leaf() {
                return match n.a[..len].iter().position(|&s| s >= addr) {
                    Some(i) => Some(n.entry(i)),
                    None => self.leftmost(fallback),
                };
            }
            let j = n.a[..len].iter().position(|&p| p > addr)?;
            if j + 1 < len {
                fallback = n.child(j + 1);
            }
            n = self.node(n.child(j))?;
        }
    }

    /// Lowest entry intersecting `[start, end)` (Linux: `find_vma_intersection()`).
    pub fn intersection(&self, start: usize, end: usize) -> Option<TreeEntry> {
        self.find(start).filter(|e| e.start < end)
    }

    /// Visit entries in address order.
    pub fn for_each(&self, mut f: impl FnMut(TreeEntry)) {
        fn walk<'a>(v: &TreeView<'a>, p: *const Node, f: &mut dyn FnMut(TreeEntry)) {
            let Some(n) = v.node(p) else { return };
            for i in 0..n.len() {
                if n.is_leaf() {
                    f(n.entry(i));
                } else {
                    walk(v, n.child(i), f);
                }
            }
        }
        walk(self, self.root, &mut f);
    }

    /// Height of the tree in nodes (diagnostics: shows lookup is logarithmic).
    pub fn height(&self) -> u32 {
        let mut h = 0;
        let mut p = self.root;
        while let Some(n) = self.node(p) {
            h += 1;
            if n.is_leaf() {
                break;
            }
            p = n.child(0);
        }
        h
    }

    /// Number of nodes (diagnostics: the memory figure).
    pub fn nodes(&self) -> usize {
        fn walk(v: &TreeView<'_>, p: *const Node) -> usize {
            let Some(n) = v.node(p) else { return 0 };
            if n.is_leaf() {
                return 1;
            }
            1 + (0..n.len()).map(|i| walk(v, n.child(i))).sum::<usize>()
        }
        walk(self, self.root)
    }

    /// Do two views show the same tree (the same root node)?
    pub(super) fn same_root(&self, other: &TreeView<'_>) -> bool {
        ptr::eq(self.root, other.root)
    }

    /// Check the tree's own invariants and return the number of entries: entries in
    /// address order, non-empty and non-overlapping; each entry's copy of the range
    /// equal to its VMA's; every node non-empty and within [`SLOTS`], all leaves at one
    /// depth; and every cached summary exact (a node's lowest start, each child's
    /// pivot = its highest end, each child's gap = the largest free range its entries
    /// own), so lookups and the gap searches cannot miss or invent anything. Linux:
    /// `mt_validate()` (`mas_validate_gaps`, `mas_validate_limits`,
    /// `mas_validate_child_slot`) under `CONFIG_DEBUG_VM_MAPLE_TREE`.
    ///
    /// The caller holds the mmap lock (the VMA fields compared must be stable).
    pub fn validate(&self) -> Result<usize, String> {
        struct Walk {
            prev_end: Option<usize>,
            count: usize,
            leaf_depth: Option<usize>,
        }
        fn walk(
            v: &TreeView<'_>,
            p: *const Node,
            depth: usize,
            w: &mut Walk,
        ) -> Result<(usize, usize, usize), String> {
            let n = v.node(p).ok_or("tree: null child")?;
            let len = n.len();
            if len == 0 || len > SLOTS {
                return Err(format!("tree: node at depth {depth} has {len} entries"));
            }
            let mut min = None;
            let mut max = 0;
            let mut gap = 0;
            if n.is_leaf() {
                if *w.leaf_depth.get_or_insert(depth) != depth {
                    return Err(format!(
                        "tree: leaves at depths {depth} and {:?}",
                        w.leaf_depth
                    ));
                }
                for i in 0..len {
                    let (s, e) = (n.a[i], n.b[i]);
                    if s >= e {
                        return Err(format!("tree: empty or inverted entry {s:#x}..{e:#x}"));
                    }
                    if let Some(pe) = w.prev_end
                        && pe > s
                    {
                        return Err(format!(
                            "tree: entry {s:#x}..{e:#x} overlaps or precedes the previous one (ending {pe:#x})"
                        ));
                    }
                    let vma = n.vma(i);
                    if vma.start() != s || vma.end() != e {
                        return Err(format!(
                            "tree: entry {s:#x}..{e:#x} but its VMA says {:#x}..{:#x}",
                            vma.start(),
                            vma.end()
                        ));
                    }
                    if i > 0 {
                        gap = gap.max(s - n.b[i - 1]);
                    }
                    w.prev_end = Some(e);
                    w.count += 1;
                    min.get_or_insert(s);
                    max = e;
                }
            } else {
                for i in 0..len {
                    let (cmin, cmax, cgap) = walk(v, n.child(i), depth + 1, w)?;
                    let want = if i == 0 {
                        cgap
                    } else {
                        cgap.max(cmin - n.a[i - 1])
                    };
                    if n.a[i] != cmax || n.c[i] != want {
                        return Err(format!(
                            "tree: node {:#x} child {i}: cached (pivot {:#x}, gap {:#x}), actual ({cmax:#x}, {want:#x})",
                            n.min, n.a[i], n.c[i]
                        ));
                    }
                    gap = gap.max(want);
                    min.get_or_insert(cmin);
                    max = cmax;
                }
            }
            let min = min.unwrap_or(0);
            if n.min != min {
                return Err(format!("tree: node min {:#x}, actual {min:#x}", n.min));
            }
            Ok((min, max, gap))
        }
        let mut w = Walk {
            prev_end: None,
            count: 0,
            leaf_depth: None,
        };
        if !self.root.is_null() {
            walk(self, self.root, 0, &mut w)?;
        }
        Ok(w.count)
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
        let Some(root) = self.node(self.root) else {
            return fit(0, usize::MAX);
        };
        if let Some(a) = self.gap_lo(root, 0, len, low, high, &fit) {
            return Some(a);
        }
        // The gap above the last entry.
        fit(root.max(), usize::MAX)
    }

    /// Search the gaps owned by the entries of `n` (the first one's from `pred_end`,
    /// the end of the entry preceding the subtree) in ascending order.
    fn gap_lo(
        &self,
        n: &Node,
        pred_end: usize,
        len: usize,
        low: usize,
        high: usize,
        fit: &dyn Fn(usize, usize) -> Option<usize>,
    ) -> Option<usize> {
        let cnt = n.len();
        if n.is_leaf() {
            for i in 0..cnt {
                let before = if i == 0 { pred_end } else { n.b[i - 1] };
                if before >= high {
                    return None;
                }
                if let Some(a) = fit(before, n.a[i]) {
                    return Some(a);
                }
            }
            return None;
        }
        for i in 0..cnt {
            let before = if i == 0 { pred_end } else { n.a[i - 1] };
            if before >= high {
                return None;
            }
            let biggest = if i == 0 {
                n.c[0].max(n.min - pred_end)
            } else {
                n.c[i]
            };
            // Prune: no gap big enough, or all of the child's gaps end below `low`.
            if biggest < len || n.a[i] <= low {
                continue;
            }
            let c = self.node(n.child(i))?;
            if let Some(a) = self.gap_lo(c, before, len, low, high, fit) {
                return Some(a);
            }
        }
        None
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
        let Some(root) = self.node(self.root) else {
            return fit(0, usize::MAX);
        };
        if let Some(a) = fit(root.max(), usize::MAX) {
            return Some(a);
        }
        self.gap_hi(root, 0, len, low, high, &fit)
    }

    /// As [`Self::gap_lo`], in descending order.
    fn gap_hi(
        &self,
        n: &Node,
        pred_end: usize,
        len: usize,
        low: usize,
        high: usize,
        fit: &dyn Fn(usize, usize) -> Option<usize>,
    ) -> Option<usize> {
        let cnt = n.len();
        if n.is_leaf() {
            for i in (0..cnt).rev() {
                if n.a[i] <= low {
                    return None;
                }
                let before = if i == 0 { pred_end } else { n.b[i - 1] };
                if let Some(a) = fit(before, n.a[i]) {
                    return Some(a);
                }
            }
            return None;
        }
        for i in (0..cnt).rev() {
            // All gaps of child `i` and before end below its pivot.
            if n.a[i] <= low {
                return None;
            }
            let before = if i == 0 { pred_end } else { n.a[i - 1] };
            let biggest = if i == 0 {
                n.c[0].max(n.min - pred_end)
            } else {
                n.c[i]
            };
            if biggest < len || before >= high {
                continue;
            }
            let c = self.node(n.child(i))?;
            if let Some(a) = self.gap_hi(c, before, len, low, high, fit) {
                return Some(a);
            }
        }
        None
    }
}

fn align_up(x: usize, align: usize) -> Option<usize> {
    x.checked_add(align - 1).map(|v| v & !(align - 1))
}

/// Writer-side state of the tree (lives under the mmap write lock; Linux: the
/// `ma_state` of `vma_iter_prealloc` with its preallocated node list).
pub(super) struct TreeWriter {
    /// Working root: equal to the published root outside a batch.
    work: *mut Node,
    /// Height of the working tree in nodes (0: empty).
    height: usize,
    /// Free nodes, linked through their first word (no heap bookkeeping).
    cache: *mut Node,
    cached: usize,
    /// Published nodes unlinked by the current batch (capacity reserved by
    /// `prealloc`); bit 0 set: the whole subtree.
    pending: Vec<usize>,
    /// Unlinked nodes waiting for a grace period, with their epoch tag (ascending).
    retired: Vec<(usize, u64)>,
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
// SAFETY: the `&self` methods (`len`, `view`, `bytes`) only read; mutation needs
// `&mut self`, which the mmap write lock makes exclusive.
unsafe impl Sync for TreeWriter {}

const NODE: Layout = Layout::new::<Node>();

impl TreeWriter {
    pub(super) const fn new() -> Self {
        TreeWriter {
            work: ptr::null_mut(),
            height: 0,
            cache: ptr::null_mut(),
            cached: 0,
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

    /// Bytes of node memory the tree holds: nodes in the tree, cached and waiting for
    /// a grace period (a retired subtree counts as one node; diagnostics only).
    pub(super) fn bytes(&self) -> usize {
        (self.view().nodes() + self.cached + self.pending.len() + self.retired.len()) * NODE.size()
    }

    /// Free every cached node.
    fn drain_cache(&mut self) {
        while !self.cache.is_null() {
            let n = self.cache;
            // SAFETY: a cached node is allocated with `NODE`, in no tree and no queue;
            // its first word links the list (`cache_push`). It is unlinked before it is
            // freed, so it is freed once.
            unsafe {
                self.cache = *(n as *mut *mut Node);
                dealloc(n as *mut u8, NODE);
            }
        }
        self.cached = 0;
    }

    /// # Safety
    /// `n` is allocated with `NODE` and reachable by no one (no tree, no reader).
    unsafe fn cache_push(&mut self, n: *mut Node) {
        // SAFETY: contract: nobody else reads `n`, so its first word may link it.
        unsafe { *(n as *mut *mut Node) = self.cache };
        self.cache = n;
        self.cached += 1;
    }

    /// Frees the cached nodes and the spare capacity of the bookkeeping vectors
    /// (outside a batch: nothing pending). Retired nodes still waiting for readers stay.
    #[cfg(feature = "fault-inject")]
    pub(super) fn shrink_caches(&mut self) {
        debug_assert!(self.pending.is_empty(), "shrink inside a batch");
        self.drain_cache();
        self.pending = Vec::new();
        if self.retired.is_empty() {
            self.retired = Vec::new();
        }
    }

    /// Nodes an insert or erase may need among `k` operations of a batch: the
    /// copied path, a split and a sibling taking a pushed slot (insert) or a
    /// neighbour (erase) per level, a new root. The height can grow
    /// by one per insert of the batch.
    fn per_op(&self, k: usize) -> usize {
        3 * (self.height + k) + 2
    }

    /// Reserve everything a batch of `nops` inserts/erases needs and start the batch.
    ///
    /// Linux: `vma_iter_prealloc()` / `mas_preallocate()`.
    pub(super) fn prealloc(&mut self, nops: usize) -> Result<(), Errno> {
        self.reserve(nops * self.per_op(nops), 0)
    }

    /// Reserve what one [`Self::erase_range`] (plus `nops` inserts/erases) needs and
    /// start the batch: two boundary paths with a neighbour per level, whatever the
    /// number of entries removed, and one retirement per cut-out subtree (at most a
    /// node's worth per level and side).
    pub(super) fn prealloc_erase_range(&mut self, nops: usize) -> Result<(), Errno> {
        let k = nops + 1;
        self.reserve(
            4 * (self.height + k) + 4 + nops * self.per_op(k),
            2 * SLOTS * (self.height + 1),
        )
    }

    fn reserve(&mut self, need: usize, subtrees: usize) -> Result<(), Errno> {
        #[cfg(feature = "fault-inject")]
        if self.fail_prealloc {
            return Err(Errno::ENOMEM);
        }
        // Every node replaced or cut out ends up in `pending`, then in `retired`.
        let retire = need + subtrees;
        self.pending
            .try_reserve(retire)
            .map_err(|_| Errno::ENOMEM)?;
        self.retired
            .try_reserve(retire)
            .map_err(|_| Errno::ENOMEM)?;
        while self.cached < need {
            // SAFETY: `NODE` has a non-zero size. Zeroed: `take` relies on every node's
            // bytes being initialised.
            let p = unsafe { alloc_zeroed(NODE) } as *mut Node;
            if p.is_null() {
                return Err(Errno::ENOMEM);
            }
            // SAFETY: just allocated, known to no one else.
            unsafe { self.cache_push(p) };
        }
        self.txn += 1;
        debug_assert!(
            self.txn < 1 << (64 - TXN_SHIFT),
            "VMA tree batch number wrapped"
        );
        Ok(())
    }

    /// A node from the reservation, initialised as an empty node of this batch.
    fn take(&mut self, leaf: bool) -> *mut Node {
        let p = self.take_raw();
        // SAFETY: `p` is allocated with `NODE` and known only to us. Its bytes are
        // initialised (nodes are allocated zeroed and only ever hold plain words), so
        // the stale slots are valid `usize`s; only slots below the count are read.
        unsafe {
            (*p).meta = (self.txn << TXN_SHIFT) | if leaf { LEAF_BIT } else { 0 };
            (*p).min = 0;
        }
        p
    }

    /// A node from the reservation, contents unspecified.
    fn take_raw(&mut self) -> *mut Node {
        if self.cache.is_null() {
            // Only reachable if the `prealloc` bound is wrong: an internal bug.
            debug_assert!(false, "VMA tree preallocation budget exceeded");
            // SAFETY: `NODE` has a non-zero size. Zeroed: `take` relies on every node's
            // bytes being initialised.
            let p = unsafe { alloc_zeroed(NODE) } as *mut Node;
            assert!(
                !p.is_null(),
                "VMA tree node allocation failed after prealloc"
            );
            p
        } else {
            let p = self.cache;
            // SAFETY: the list head is a cached node; its first word is the link.
            self.cache = unsafe { *(p as *mut *mut Node) };
            self.cached -= 1;
            p
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
            if (*n).txn() == self.txn {
                return n;
            }
            let c = self.take_raw();
            c.write(*n);
            (*c).meta = ((*n).meta & ((1 << TXN_SHIFT) - 1)) | (self.txn << TXN_SHIFT);
            self.pending.push(n as usize);
            c
        }
    }

    /// Drop node `n`, unlinked from the working tree (not its children).
    ///
    /// # Safety
    /// `n` was a live node of the working tree and is referenced from it no more.
    unsafe fn discard(&mut self, n: *mut Node) {
        // SAFETY: `n` is allocated (contract). A node of this batch was never
        // published: back to the cache. An older one may be read by RCU readers: it
        // waits for a grace period in `pending`.
        unsafe {
            if (*n).txn() == self.txn {
                self.cache_push(n);
            } else {
                self.pending.push(n as usize);
            }
        }
    }

    /// Recompute slot `i` of internal node `n` (pivot and gap) and the gap of slot
    /// `i + 1`, whose leading free range starts at pivot `i`; the node's `min` if `i`
    /// is 0.
    ///
    /// # Safety
    /// `n` is a private internal node whose children are live and non-empty.
    unsafe fn refresh_slot(n: *mut Node, i: usize) {
        // SAFETY: contract: `n` is ours to write, its children are read only.
        unsafe {
            let n = &mut *n;
            let len = n.len();
            let (cmin, cmax, cgap) = summary(n.child(i));
            n.a[i] = cmax;
            n.c[i] = if i == 0 {
                cgap
            } else {
                cgap.max(cmin - n.a[i - 1])
            };
            if i == 0 {
                n.min = cmin;
            }
            if i + 1 < len {
                let (nmin, _, ngap) = summary(n.child(i + 1));
                n.c[i + 1] = ngap.max(nmin - cmax);
            }
        }
    }

    /// Recompute every slot summary of private internal node `n` (after slots moved).
    ///
    /// # Safety
    /// As for `refresh_slot`.
    unsafe fn refresh_all(n: *mut Node) {
        // SAFETY: contract.
        unsafe {
            let len = (*n).len();
            for i in 0..len {
                let (cmin, cmax, cgap) = summary((*n).child(i));
                (*n).a[i] = cmax;
                (*n).c[i] = if i == 0 {
                    cgap
                } else {
                    cgap.max(cmin - (*n).a[i - 1])
                };
                if i == 0 {
                    (*n).min = cmin;
                }
            }
        }
    }

    /// Set the `min` of a private leaf from its first entry.
    ///
    /// # Safety
    /// `n` is a private, non-empty leaf.
    unsafe fn refresh_leaf(n: *mut Node) {
        // SAFETY: contract.
        unsafe { (*n).min = (*n).a[0] };
    }

    /// Insert slot triple `t` at `i` of private node `n`, splitting it if full.
    /// Returns the new right sibling or null. Summaries are left to the caller.
    ///
    /// # Safety
    /// `n` is private.
    unsafe fn insert_or_split(
        &mut self,
        n: *mut Node,
        i: usize,
        t: (usize, usize, usize),
    ) -> *mut Node {
        // SAFETY: `n` is private (contract); `r` is fresh from the reservation.
        unsafe {
            let len = (*n).len();
            if len < SLOTS {
                (*n).insert_slot(i, t);
                return ptr::null_mut();
            }
            let r = self.take((*n).is_leaf());
            if i == SLOTS {
                // Append: `n` stays full, `r` starts with the new slot.
                (*r).insert_slot(0, t);
                return r;
            }
            // The SLOTS + 1 slots in order, then the lower half (rounded up) stays.
            let mut all = [(0, 0, 0); SLOTS + 1];
            for (j, s) in all.iter_mut().enumerate() {
                *s = match j.cmp(&i) {
                    core::cmp::Ordering::Less => (*n).slot(j),
                    core::cmp::Ordering::Equal => t,
                    core::cmp::Ordering::Greater => (*n).slot(j - 1),
                };
            }
            let left = (SLOTS + 2) / 2;
            (*n).set_len(0);
            for (j, &s) in all[..left].iter().enumerate() {
                (*n).insert_slot(j, s);
            }
            for (j, &s) in all[left..].iter().enumerate() {
                (*r).insert_slot(j, s);
            }
            r
        }
    }

    /// Slot of node `n` an insert of `start` goes to: in a leaf, the new entry's
    /// position; in an internal node, the child it descends into.
    fn target(n: &Node, start: usize) -> usize {
        let len = n.len();
        if n.is_leaf() {
            n.a[..len].iter().position(|&s| s > start).unwrap_or(len)
        } else {
            n.a[..len]
                .iter()
                .position(|&p| p > start)
                .unwrap_or(len - 1)
        }
    }

    /// Would inserting `start` into the subtree of `p` add a slot to `p` itself (every
    /// node on the way down to the leaf is full)? Cheap in the common case: the first
    /// node with room ends the walk.
    ///
    /// # Safety
    /// `p` is live, its descendants too.
    unsafe fn path_full(mut p: *const Node, start: usize) -> bool {
        loop {
            // SAFETY: contract.
            let n = unsafe { &*p };
            if n.len() < SLOTS {
                return false;
            }
            if n.is_leaf() {
                return true;
            }
            p = n.child(Self::target(n, start));
        }
    }

    /// Make room in full child `i` of `n` before an insert of `start` reaches it, by
    /// moving its first slot to a left sibling with room, or its last one to a right
    /// sibling with room, whichever is not where `start` goes (Linux: `mas_push_data`,
    /// which pushes into a sibling rather than splitting). Keeps nodes full instead of
    /// half full where VMAs are split one after another, which keeps the tree low.
    /// Returns whether it moved a slot; the caller refreshes `n`.
    ///
    /// # Safety
    /// `n` and its child `i` are private, the other children live.
    unsafe fn push_out(&mut self, n: *mut Node, i: usize, start: usize) -> bool {
        // SAFETY: `n` and child `i` are private (contract); the sibling is made private
        // by `own` before it is written; moved slots keep address order.
        unsafe {
            let c = (*n).child(i);
            let len = (*c).len();
            let j = Self::target(&*c, start);
            let last_target = if (*c).is_leaf() { len } else { len - 1 };
            if i > 0 && j > 0 && (*(*n).child(i - 1)).len() < SLOTS {
                let l = self.own((*n).child(i - 1));
                (*n).b[i - 1] = l as usize;
                (*l).insert_slot((*l).len(), (*c).slot(0));
                (*c).remove_slots(0, 1);
                Self::refresh_node(l);
                Self::refresh_node(c);
                return true;
            }
            if i + 1 < (*n).len() && j < last_target && (*(*n).child(i + 1)).len() < SLOTS {
                let r = self.own((*n).child(i + 1));
                (*n).b[i + 1] = r as usize;
                (*r).insert_slot(0, (*c).slot(len - 1));
                (*c).set_len(len - 1);
                Self::refresh_node(r);
                Self::refresh_node(c);
                return true;
            }
            false
        }
    }

    /// Insert into the subtree of private node `n`; returns a new right sibling or null.
    ///
    /// # Safety
    /// `n` is private, non-empty, its children live.
    unsafe fn ins(&mut self, n: *mut Node, start: usize, end: usize, vma: usize) -> *mut Node {
        // SAFETY: `n` is private (contract); children are made private by `own` before
        // they are written; slots refreshed read live children.
        unsafe {
            let len = (*n).len();
            if (*n).is_leaf() {
                let i = (&(*n).a)[..len]
                    .iter()
                    .position(|&s| s > start)
                    .unwrap_or(len);
                let r = self.insert_or_split(n, i, (start, end, vma));
                Self::refresh_leaf(n);
                if !r.is_null() {
                    Self::refresh_leaf(r);
                }
                return r;
            }
            // The child whose range reaches past `start`, or the last one (append).
            let i = (&(*n).a)[..len]
                .iter()
                .position(|&p| p > start)
                .unwrap_or(len - 1);
            let c = self.own((*n).child(i));
            (*n).b[i] = c as usize;
            // The child would gain a slot and is full: push one to a sibling instead.
            if Self::path_full(c, start) && self.push_out(n, i, start) {
                Self::refresh_all(n);
            }
            let split = self.ins(c, start, end, vma);
            if split.is_null() {
                Self::refresh_slot(n, i);
                return ptr::null_mut();
            }
            let r = self.insert_or_split(n, i + 1, (0, split as usize, 0));
            Self::refresh_all(n);
            if !r.is_null() {
                Self::refresh_all(r);
            }
            r
        }
    }

    /// Insert `[start, end) → vma` into the working tree. Must be inside a batch, and the
    /// range must not overlap an entry (callers erase overlapping entries first).
    /// Linux: `vma_iter_store_new()` / `mas_store_prealloc()`.
    pub(super) fn insert(&mut self, start: usize, end: usize, vma: VmaRef) {
        debug_assert!(start < end);
        let v = vma as *const Vma as usize;
        // SAFETY: `work` is null or the live working root, which `own` makes private;
        // a new root gets two live private children.
        unsafe {
            if self.work.is_null() {
                let l = self.take(true);
                (*l).insert_slot(0, (start, end, v));
                Self::refresh_leaf(l);
                self.work = l;
                self.height = 1;
            } else {
                let root = self.own(self.work);
                let r = self.ins(root, start, end, v);
                self.work = root;
                if !r.is_null() {
                    let nr = self.take(false);
                    (*nr).insert_slot(0, (0, root as usize, 0));
                    (*nr).insert_slot(1, (0, r as usize, 0));
                    Self::refresh_all(nr);
                    self.work = nr;
                    self.height += 1;
                }
            }
        }
        self.count += 1;
    }

    /// Move the entry starting at `old` to `[start, end) → vma` in place, if the new
    /// range overlaps no other entry (the order stays the same, so the entry keeps its
    /// slot): one walk instead of an erase and an insert. Returns false, changing
    /// nothing, otherwise (or if there is no such entry). Counts as one operation of
    /// the batch. Linux: `vma_iter_store()` over a VMA's new range.
    pub(super) fn replace(&mut self, old: usize, start: usize, end: usize, vma: VmaRef) -> bool {
        debug_assert!(start < end);
        let v = self.view();
        if v.lookup(old).is_none_or(|e| e.start != old)
            || v.prev_before(old).is_some_and(|p| p.end > start)
            || old
                .checked_add(1)
                .and_then(|o| v.next_from(o))
                .is_some_and(|n| n.start < end)
        {
            return false;
        }
        let vma = vma as *const Vma as usize;
        // SAFETY: `work` is the live working root (non-null: the entry exists); `own`
        // makes it private, `rep` the rest of the path.
        unsafe {
            let root = self.own(self.work);
            self.work = root;
            self.rep(root, old, (start, end, vma))
        }
    }

    /// The walk of [`Self::replace`] below private node `n`.
    ///
    /// # Safety
    /// `n` is private, non-empty, its children live.
    unsafe fn rep(&mut self, n: *mut Node, old: usize, t: (usize, usize, usize)) -> bool {
        // SAFETY: as for `ins`.
        unsafe {
            let len = (*n).len();
            if (*n).is_leaf() {
                let Some(i) = (&(*n).a)[..len].iter().position(|&s| s == old) else {
                    return false;
                };
                ((*n).a[i], (*n).b[i], (*n).c[i]) = t;
                Self::refresh_leaf(n);
                return true;
            }
            let Some(i) = (&(*n).a)[..len].iter().position(|&p| p > old) else {
                return false;
            };
            let c = self.own((*n).child(i));
            (*n).b[i] = c as usize;
            let done = self.rep(c, old, t);
            Self::refresh_slot(n, i);
            done
        }
    }

    /// Child `i` of private internal node `n` has just been changed by an erase: drop
    /// it if empty, or merge it with / refill it from a neighbour if it fell below
    /// [`MIN_FILL`] (Linux: `mas_rebalance`); then refresh the summaries.
    ///
    /// # Safety
    /// `n` is private, child `i` private, the other children live.
    unsafe fn fix_child(&mut self, n: *mut Node, i: usize) {
        // SAFETY: `n` and child `i` are private (contract); the neighbour is made
        // private by `own` before it is written; a discarded node is unlinked first.
        unsafe {
            let c = (*n).child(i);
            let clen = (*c).len();
            if clen == 0 {
                (*n).remove_slots(i, 1);
                self.discard(c);
                if (*n).len() > 0 {
                    Self::refresh_all(n);
                }
                return;
            }
            let len = (*n).len();
            if clen >= MIN_FILL || len == 1 {
                Self::refresh_slot(n, i);
                return;
            }
            // Neighbour: the right one if any, else the left one; `l` before `r`.
            let (li, ri) = if i + 1 < len { (i, i + 1) } else { (i - 1, i) };
            let l = self.own((*n).child(li));
            let r = self.own((*n).child(ri));
            (*n).b[li] = l as usize;
            (*n).b[ri] = r as usize;
            let (ll, rl) = ((*l).len(), (*r).len());
            if ll + rl <= SLOTS {
                for j in 0..rl {
                    (*l).insert_slot(ll + j, (*r).slot(j));
                }
                (*n).remove_slots(ri, 1);
                self.discard(r);
            } else {
                // Refill: even halves.
                let want_l = (ll + rl) / 2;
                if ll < want_l {
                    let m = want_l - ll;
                    for j in 0..m {
                        (*l).insert_slot(ll + j, (*r).slot(j));
                    }
                    (*r).remove_slots(0, m);
                } else {
                    let m = ll - want_l;
                    for j in 0..m {
                        (*r).insert_slot(j, (*l).slot(want_l + j));
                    }
                    (*l).set_len(want_l);
                }
                Self::refresh_node(r);
            }
            Self::refresh_node(l);
            Self::refresh_all(n);
        }
    }

    /// Refresh a private node's own summaries after its slots moved.
    ///
    /// # Safety
    /// `n` is private and non-empty, its children live.
    unsafe fn refresh_node(n: *mut Node) {
        // SAFETY: contract.
        unsafe {
            if (*n).is_leaf() {
                Self::refresh_leaf(n);
            } else {
                Self::refresh_all(n);
            }
        }
    }

    /// Erase the entry starting at `start` from the subtree of private node `n`.
    ///
    /// # Safety
    /// `n` is private and non-empty, its children live.
    unsafe fn del(&mut self, n: *mut Node, start: usize) -> Option<VmaRef> {
        // SAFETY: as for `ins`.
        unsafe {
            let len = (*n).len();
            if (*n).is_leaf() {
                let i = (&(*n).a)[..len].iter().position(|&s| s == start)?;
                let v = (*n).vma(i);
                (*n).remove_slots(i, 1);
                if (*n).len() > 0 {
                    Self::refresh_leaf(n);
                }
                return Some(v);
            }
            let i = (&(*n).a)[..len].iter().position(|&p| p > start)?;
            let c = self.own((*n).child(i));
            (*n).b[i] = c as usize;
            let found = self.del(c, start);
            self.fix_child(n, i);
            found
        }
    }

    /// Replace a root with one child by the child, repeatedly; an empty root by null.
    fn shrink_root(&mut self) {
        // SAFETY: the working root is private after an erase (`own`), so it may be
        // discarded once the child replaces it.
        unsafe {
            while !self.work.is_null() {
                let r = self.work;
                if (*r).len() == 0 {
                    self.discard(r);
                    self.work = ptr::null_mut();
                    self.height = 0;
                } else if !(*r).is_leaf() && (*r).len() == 1 {
                    self.work = (*r).child(0);
                    self.discard(r);
                    self.height -= 1;
                } else {
                    break;
                }
            }
        }
    }

    /// Erase the entry starting at `start`; returns its VMA.
    /// Linux: `vma_iter_clear()` of one VMA.
    pub(super) fn erase(&mut self, start: usize) -> Option<VmaRef> {
        if self.work.is_null() {
            debug_assert!(false, "erase of missing VMA tree entry {start:#x}");
            return None;
        }
        // SAFETY: `work` is the live working root; `own` makes it private.
        let found = unsafe {
            let root = self.own(self.work);
            self.work = root;
            self.del(root, start)
        };
        self.shrink_root();
        if found.is_some() {
            self.count -= 1;
        }
        debug_assert!(
            found.is_some(),
            "erase of missing VMA tree entry {start:#x}"
        );
        found
    }

    /// Remove every entry whose start lies in `[start, end)` from the subtree of
    /// private node `n`; returns how many. Children entirely inside are cut out whole.
    ///
    /// # Safety
    /// `n` is private and non-empty, its children live.
    unsafe fn del_range(&mut self, n: *mut Node, start: usize, end: usize) -> usize {
        // SAFETY: as for `ins`; a cut-out child is unlinked before it is retired.
        unsafe {
            let len = (*n).len();
            if (*n).is_leaf() {
                let i = (&(*n).a)[..len]
                    .iter()
                    .position(|&s| s >= start)
                    .unwrap_or(len);
                let j = (&(*n).a)[..len]
                    .iter()
                    .position(|&s| s >= end)
                    .unwrap_or(len);
                (*n).remove_slots(i, j - i);
                if (*n).len() > 0 {
                    Self::refresh_leaf(n);
                }
                return j - i;
            }
            // Children that may hold a start in the range: from the first whose pivot
            // passes `start` to the last whose lowest start is below `end`.
            let Some(first) = (&(*n).a)[..len].iter().position(|&p| p > start) else {
                return 0;
            };
            let mut last = first;
            while last + 1 < len && (*(*n).child(last + 1)).min < end {
                last += 1;
            }
            if (*(*n).child(first)).min >= end {
                return 0;
            }
            let mut removed = 0;
            // Whole children strictly between the boundary ones, and boundary ones
            // that lie entirely inside the range, are cut out.
            let inside = |i: usize| (*(*n).child(i)).min >= start && (*n).a[i] <= end;
            let mut keep_first = true;
            let mut keep_last = first != last;
            if inside(first) {
                keep_first = false;
            }
            if first != last && inside(last) {
                keep_last = false;
            }
            let cut_from = if keep_first { first + 1 } else { first };
            let cut_to = if keep_last { last } else { last + 1 };
            for k in cut_from..cut_to {
                let c = (*n).child(k);
                removed += self.count_entries(c);
                self.pending.push(c as usize | SUBTREE);
            }
            // Boundary children that stay: erase inside them.
            let mut fix: [*mut Node; 2] = [ptr::null_mut(); 2];
            if keep_first {
                let c = self.own((*n).child(first));
                (*n).b[first] = c as usize;
                removed += self.del_range(c, start, end);
                fix[0] = c;
            }
            if keep_last {
                let c = self.own((*n).child(last));
                (*n).b[last] = c as usize;
                removed += self.del_range(c, start, end);
                fix[1] = c;
            }
            (*n).remove_slots(cut_from, cut_to - cut_from);
            for c in fix {
                if c.is_null() {
                    continue;
                }
                // Its index may have moved with an earlier fix; find it again.
                let len = (*n).len();
                if let Some(i) = (0..len).find(|&i| (*n).child(i) == c) {
                    self.fix_child(n, i);
                }
            }
            if (*n).len() > 0 {
                Self::refresh_all(n);
            }
            removed
        }
    }

    /// Entries in subtree `p`.
    ///
    /// # Safety
    /// `p` is live.
    unsafe fn count_entries(&self, p: *const Node) -> usize {
        // SAFETY: contract; the walk reads live children.
        unsafe {
            if (*p).is_leaf() {
                (*p).len()
            } else {
                (0..(*p).len())
                    .map(|i| self.count_entries((*p).child(i)))
                    .sum()
            }
        }
    }

    /// Erase every entry starting in `[start, end)` in one bounded operation; returns
    /// how many were erased. Needs [`Self::prealloc_erase_range`].
    /// Linux: `vma_iter_clear_gfp()` (a spanning `mas_store` of NULL).
    pub(super) fn erase_range(&mut self, start: usize, end: usize) -> usize {
        if self.work.is_null() || start >= end {
            return 0;
        }
        // SAFETY: `work` is the live working root; `own` makes it private.
        let removed = unsafe {
            let root = self.own(self.work);
            self.work = root;
            self.del_range(root, start, end)
        };
        self.shrink_root();
        self.count -= removed;
        removed
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

    /// Free a retired node, or a whole retired subtree.
    ///
    /// # Safety
    /// `p` (with `subtree`: every node below it too) is unreachable by every reader
    /// and by the working tree, and is freed by no one else.
    unsafe fn free_retired(&mut self, p: *mut Node, subtree: bool) {
        // SAFETY: contract. Children are read before `p` is reused or freed.
        unsafe {
            if subtree && !(*p).is_leaf() {
                for i in 0..(*p).len() {
                    self.free_retired((*p).child(i), true);
                }
            }
            if self.cached < NODE_CACHE_CAP {
                self.cache_push(p);
            } else {
                dealloc(p as *mut u8, NODE);
            }
        }
    }

    fn reclaim(&mut self) {
        if self.retired.is_empty() {
            return;
        }
        let bound = rcu::safe_bound();
        let k = self.retired.iter().take_while(|(_, t)| *t < bound).count();
        for i in 0..k {
            let n = self.retired[i].0;
            // SAFETY: `n` was unlinked from the published tree before epoch `t`, and
            // `t < safe_bound()` means every reader that could have loaded a root
            // containing it has left its RCU section (see `rcu`); mmap-lock readers are
            // excluded by our write lock. A subtree was cut out whole: its nodes are in
            // no other tree version's working set (each node of the working tree has
            // one parent) and were not retired one by one. The `drain` below removes
            // it from `retired`, so it is freed once.
            unsafe { self.free_retired((n & !SUBTREE) as *mut Node, n & SUBTREE != 0) };
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
            // SAFETY: `p` is a node of the working tree or of a retired subtree, which
            // `destroy`'s contract says no one else can reach; each node has one parent
            // there, so it is freed once, after its children were read.
            unsafe {
                if !(*p).is_leaf() {
                    for i in 0..(*p).len() {
                        free_rec((*p).child(i));
                    }
                }
                dealloc(p as *mut u8, NODE);
            }
        }
        tree.root.store(ptr::null_mut(), Ordering::SeqCst);
        // SAFETY: the root was unpublished just above and, by the contract, no reader or
        // lock holder can still be inside the tree; `work` is null or its live root.
        unsafe {
            if !self.work.is_null() {
                free_rec(self.work);
            }
        }
        self.work = ptr::null_mut();
        self.height = 0;
        self.count = 0;
        self.drain_cache();
        let pending: Vec<usize> = core::mem::take(&mut self.pending);
        let retired: Vec<(usize, u64)> = core::mem::take(&mut self.retired);
        for n in pending
            .into_iter()
            .chain(retired.into_iter().map(|(n, _)| n))
        {
            let p = (n & !SUBTREE) as *mut Node;
            // SAFETY: pending and retired nodes are unlinked from every tree, and the
            // contract says no reader that might still hold one exists. A subtree's
            // nodes belong to it alone; a single node is freed alone. Each queue entry
            // is visited once.
            unsafe {
                if n & SUBTREE != 0 {
                    free_rec(p);
                } else {
                    dealloc(p as *mut u8, NODE);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The tree alone against a model (a sorted set of slots), at sizes that make it
    //! split, merge, refill, grow and shrink: every query compared with a brute-force
    //! answer, `validate` after every batch, and the preallocation budget checked by
    //! `take`'s debug assertion (a batch needing more nodes than reserved panics).

    use super::*;
    use crate::vma::area::PAGE_SIZE;
    use crate::vma::pool;
    use alloc::collections::BTreeMap;
    use proptest::prelude::*;

    const P: usize = PAGE_SIZE;
    const BASE: usize = 0x1000_0000;
    /// Universe of slots; slot `k` is a fixed range, so absent slots widen the gaps.
    const N: usize = 4_000;

    fn range(k: usize) -> (usize, usize) {
        let s = BASE + k * 3 * P;
        (s, s + P * (1 + k % 2))
    }

    /// A tree with its own VMAs (one per slot, ranges fixed).
    struct Harness {
        tree: VmaTree,
        tw: TreeWriter,
        vmas: Vec<VmaRef>,
        /// Present slots and their current ranges.
        model: BTreeMap<usize, (usize, usize)>,
    }

    impl Harness {
        fn new() -> Self {
            let vmas = (0..N)
                .map(|k| {
                    let v = pool::vm_area_alloc(u64::MAX - 7).unwrap();
                    let (s, e) = range(k);
                    v.set_range(s, e, 0);
                    v
                })
                .collect();
            Harness {
                tree: VmaTree::new(),
                tw: TreeWriter::new(),
                vmas,
                model: BTreeMap::new(),
            }
        }

        fn insert(&mut self, k: usize) {
            if let alloc::collections::btree_map::Entry::Vacant(slot) = self.model.entry(k) {
                let (s, e) = range(k);
                slot.insert((s, e));
                self.vmas[k].set_range(s, e, 0);
                self.tw.insert(s, e, self.vmas[k]);
            }
        }

        fn erase(&mut self, k: usize) {
            if let Some((s, _)) = self.model.remove(&k) {
                let v = self.tw.erase(s).expect("present");
                assert!(ptr::eq(v, self.vmas[k]));
            }
        }

        /// Move slot `k` to `[base + ds pages, + len pages)` in place if that range is
        /// free (slots stay within `[base - 1, base + 3)` pages, so never pass another).
        fn replace(&mut self, k: usize, ds: i8, len: usize) {
            let Some(&(old, _)) = self.model.get(&k) else {
                return;
            };
            let s = (range(k).0 as isize + ds as isize * P as isize) as usize;
            let e = (s + len * P).min(range(k).0 + 3 * P);
            let free = self
                .model
                .iter()
                .all(|(&j, &(a, b))| j == k || b <= s || a >= e);
            self.tw.prealloc(1).unwrap();
            assert_eq!(self.tw.replace(old, s, e, self.vmas[k]), free);
            if free {
                self.model.insert(k, (s, e));
                self.vmas[k].set_range(s, e, 0);
            }
            self.tw.publish(&self.tree);
            self.check();
        }

        /// One batch of point operations (`true`: insert).
        fn batch(&mut self, ops: &[(bool, usize)]) {
            self.tw.prealloc(ops.len()).unwrap();
            for &(ins, k) in ops {
                if ins { self.insert(k) } else { self.erase(k) }
            }
            self.tw.publish(&self.tree);
            self.check();
        }

        fn erase_range(&mut self, a: usize, b: usize) {
            self.tw.prealloc_erase_range(0).unwrap();
            // Slots start at most a page below their base.
            let (s, e) = (range(a).0 - P, range(b).0 - P);
            let gone: Vec<usize> = self.model.range(a..b).map(|(&k, _)| k).collect();
            for k in &gone {
                self.model.remove(k);
            }
            assert_eq!(self.tw.erase_range(s, e), gone.len());
            self.tw.publish(&self.tree);
            self.check();
        }

        fn entries(&self) -> Vec<(usize, usize)> {
            self.model.values().copied().collect()
        }

        fn check(&self) {
            let v = self.tree.view_locked();
            assert!(v.same_root(&self.tw.view()));
            assert_eq!(v.validate(), Ok(self.model.len()));
            assert_eq!(self.tw.len(), self.model.len());
            let mut seen = Vec::new();
            v.for_each(|e| seen.push((e.start, e.end)));
            assert_eq!(seen, self.entries());
        }

        /// Compare every query at `addr` with the model.
        fn query(&self, addr: usize) {
            let v = self.tree.view_locked();
            let es = self.entries();
            let key = |e: Option<TreeEntry>| e.map(|e| (e.start, e.end));
            assert_eq!(key(v.find(addr)), es.iter().copied().find(|e| e.1 > addr));
            assert_eq!(
                key(v.lookup(addr)),
                es.iter().copied().find(|e| e.0 <= addr && addr < e.1)
            );
            assert_eq!(
                key(v.prev_before(addr)),
                es.iter().copied().rev().find(|e| e.0 < addr)
            );
            assert_eq!(
                key(v.last_ending_at_or_before(addr)),
                es.iter().copied().rev().find(|e| e.1 <= addr)
            );
            assert_eq!(
                key(v.next_from(addr)),
                es.iter().copied().find(|e| e.0 >= addr)
            );
        }

        /// Compare both gap searches with a brute force over the free ranges.
        fn gaps(&self, len: usize, low: usize, high: usize) {
            let v = self.tree.view_locked();
            let mut free = Vec::new();
            let mut prev = 0;
            for (s, e) in self.entries() {
                free.push((prev, s));
                prev = e;
            }
            free.push((prev, usize::MAX));
            let lo = free.iter().find_map(|&(gs, ge)| {
                let s = gs.max(low).next_multiple_of(P);
                let e = ge.min(high);
                (s <= e && e - s >= len).then_some(s)
            });
            let hi = free.iter().rev().find_map(|&(gs, ge)| {
                let s = gs.max(low);
                let e = ge.min(high);
                (e >= s && e - s >= len && (e - len) / P * P >= s).then(|| (e - len) / P * P)
            });
            assert_eq!(v.gap_bottom_up(len, low, high, P), lo, "bottom-up {len:#x}");
            assert_eq!(v.gap_top_down(len, low, high, P), hi, "top-down {len:#x}");
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            // SAFETY: the harness is the only user of its tree; no reader exists.
            unsafe { self.tw.destroy(&self.tree) };
            for &v in &self.vmas {
                pool::vm_area_free(v);
            }
        }
    }

    #[test]
    fn grows_to_height_four_and_shrinks_to_empty() {
        let mut h = Harness::new();
        for k in 0..N {
            h.batch(&[(true, k)]);
        }
        // Appends fill leaves completely: 400 leaves, 40, 4, 1 root.
        assert_eq!(h.tree.view_locked().height(), 4);
        assert_eq!(h.tw.view().nodes(), 400 + 40 + 4 + 1);
        for k in (0..N).step_by(7) {
            h.query(range(k).0 + P / 2);
            h.query(range(k).1);
        }
        for k in (0..N).rev() {
            h.batch(&[(false, k)]);
        }
        assert_eq!(h.tree.view_locked().height(), 0);
    }

    #[test]
    fn munmap_of_thousands_is_one_bounded_range_erase() {
        let mut h = Harness::new();
        for k in 0..N {
            h.batch(&[(true, k)]);
        }
        // The reservation of a range erase depends on the height only: 4(h + 1) + 4
        // nodes, 24 at height 4, whether 2 or 3,980 entries go.
        let before = h.tw.cached;
        assert_eq!(h.tree.view_locked().height(), 4);
        h.tw.prealloc_erase_range(0).unwrap();
        assert_eq!(h.tw.cached, before.max(24));
        h.tw.publish(&h.tree);
        h.erase_range(10, N - 10);
        assert_eq!(h.tw.len(), 20);
        h.erase_range(0, N);
        assert_eq!(h.tw.len(), 0);
    }

    #[test]
    fn a_published_snapshot_never_changes() {
        let mut h = Harness::new();
        for k in (0..2_000).step_by(2) {
            h.batch(&[(true, k)]);
        }
        let g = rcu::rcu_read_lock();
        // The view of `view_rcu`, detached from the borrow of the harness.
        let old: TreeView<'_> = TreeView {
            root: h.tree.view_rcu(&g).root,
            _p: PhantomData,
        };
        let mut before = Vec::new();
        old.for_each(|e| before.push(e.start));
        for k in (1..2_000).step_by(2) {
            h.batch(&[(true, k), (false, k - 1)]);
        }
        h.erase_range(100, 900);
        let mut after = Vec::new();
        old.for_each(|e| after.push(e.start));
        assert_eq!(before, after);
        assert_eq!(old.validate(), Ok(1_000));
        drop(g);
    }

    #[cfg(feature = "fault-inject")]
    #[test]
    fn failed_preallocation_changes_nothing() {
        let mut h = Harness::new();
        h.batch(&[(true, 1), (true, 2)]);
        h.tw.fail_prealloc = true;
        assert_eq!(h.tw.prealloc(1), Err(Errno::ENOMEM));
        assert_eq!(h.tw.prealloc_erase_range(0), Err(Errno::ENOMEM));
        h.tw.fail_prealloc = false;
        h.check();
    }

    #[derive(Clone, Debug)]
    enum Op {
        Batch(Vec<(bool, usize)>),
        Replace(usize, i8, usize),
        EraseRange(usize, usize),
        Query(usize),
        Gap(usize, usize, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let k = 0..N;
        prop_oneof![
            6 => proptest::collection::vec((any::<bool>(), k.clone()), 1..4).prop_map(Op::Batch),
            1 => (k.clone(), 0..400usize).prop_map(|(a, n)| Op::EraseRange(a, (a + n).min(N))),
            3 => (k.clone(), -1..=1i8, 1..4usize).prop_map(|(k, d, l)| Op::Replace(k, d, l)),
            3 => (0..N * 3 + 8).prop_map(Op::Query),
            2 => (1..8usize, 0..N * 3, 0..N * 3).prop_map(|(l, a, b)| Op::Gap(l, a.min(b), a.max(b))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

        /// Random batches, range erases, lookups and gap searches on a tree that
        /// starts with a random half of the slots (thousands of entries, height 4).
        #[test]
        fn random_ops_match_model(
            seed in proptest::collection::vec(any::<bool>(), N),
            ops in proptest::collection::vec(op(), 1..150),
        ) {
            let mut h = Harness::new();
            let present: Vec<usize> = (0..N).filter(|&k| seed[k]).collect();
            // Fill in an interleaved order so that splits happen mid-node too.
            for chunk in present.chunks(3) {
                let ops: Vec<(bool, usize)> = chunk.iter().rev().map(|&k| (true, k)).collect();
                h.batch(&ops);
            }
            for op in ops {
                match op {
                    Op::Batch(ops) => h.batch(&ops),
                    Op::Replace(k, d, l) => h.replace(k, d, l),
                    Op::EraseRange(a, b) => h.erase_range(a, b),
                    Op::Query(x) => h.query(BASE + x * P),
                    Op::Gap(l, a, b) => h.gaps(l * P, BASE + a * P, BASE + b * P),
                }
            }
        }
    }
}
