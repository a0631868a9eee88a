//! The VMA tree: a maple-style range B-tree with NULL ranges and gaps, readable under RCU.
//!
//! Linux: the maple tree (`lib/maple_tree.c`, `include/linux/maple_tree.h`) in its
//! `mm->mm_mt` role (`vma_iter_*` in `mm/vma.h`, `mas_walk`, `mas_store_prealloc`,
//! `mas_preallocate`, `mas_empty_area` / `mas_empty_area_rev`, `mt_validate`).
//!
//! # Layout
//!
//! The tree maps every index of `[0, usize::MAX)` to an entry: a VMA or NULL (a gap),
//! as Linux's maple tree does. Every node is 256 bytes (four cache lines), as Linux's
//! `struct maple_node`: a header word (slot count, leaf flag) and 31 words.
//!
//! - A **leaf** (Linux: `maple_range_64`) has 16 slots and 15 pivots: slot `i` covers
//!   `[pivot[i-1], pivot[i])` (the node's lower bound for slot 0, its upper bound for
//!   the last slot), holding a VMA pointer or 0 for a NULL range. Pivots are exclusive
//!   ends here (Linux stores inclusive last indices).
//! - An **internal** node (Linux: `maple_arange_64`) has 10 children, 9 pivots and,
//!   per child, its **gap**: the largest NULL range in the child's subtree.
//!
//! A node's bounds are not stored in it: they come from its parent's pivots (the root
//! covers everything), so a node covers a fixed range for as long as it lives. Every
//! pivot word is written: the used ones, then the node's upper bound (where the node
//! has room), then `MAX`, so the slot covering an index is found by a branch-free
//! binary search of four probes with no slot count (`Node::search`; Linux scans the
//! pivots up to the node's end). Two
//! NULL ranges are never adjacent, not even across a leaf boundary: a store that
//! would leave them so takes the neighbouring NULL into its range (Linux merges them
//! within a node, `mas_wr_extend_null`). Every gap is therefore exactly one NULL
//! entry of one leaf, and the gap cache finds it exactly.
//!
//! Full leaves hold 16 entries; 65,530 VMAs separated by holes (the bench layout,
//! 131,061 entries) fit in a height of 5 (a height of 4 holds at most 16,000
//! entries), as in Linux. `vma_tree_bytes_per_vma_65530` reports the memory.
//!
//! # Writers and readers
//!
//! Every store (`TreeWriter::store`: Linux's `mas_store`) builds the entries of the
//! range it changes into new nodes and never writes a slot or pivot of a node a reader
//! can reach, with one exception: the **publication**, one pointer store per changed
//! level into the parent's slot (Linux: `rcu_assign_pointer` in `mas_replace_node`).
//!
//! - A change inside one leaf (a VMA's bounds move within the leaf, a VMA end moves
//!   into a gap, a VMA is inserted into a gap or erased, a merge or split of
//!   neighbours) builds one new leaf with the same bounds, so the parent's pivots stay
//!   right: the new leaf's pointer is stored (SeqCst) into the existing parent's slot.
//!   One node copied, as Linux's `mas_wr_node_store` / `mas_wr_slot_store`. This
//!   leaf-local path (`TreeWriter::store_leaf`, and `TreeWriter::store_one` for its
//!   two commonest shapes: a VMA into a gap, NULL over one VMA) writes the new leaf
//!   straight from the old one (one fixed-size copy of its words, then the new entries
//!   and the moved suffix) and the new entries, walking once: the writer keeps the
//!   path of its last walk, which a leaf-local store leaves current (only its leaf
//!   changed), so the lookups an operation makes before its store and the store itself
//!   share one descent. Anything else goes to `TreeWriter::store_nodes`. A slot is
//!   never stored in place, not even one whose bounds stay (Linux's in-place
//!   `mas_wr_slot_store`): a reader stepping from slot to slot would then see a leaf
//!   that is neither the old one nor the new one.
//! - A leaf that overflows is split, or pushes entries into its left sibling (Linux:
//!   `mas_split`, `mas_push_data`); one that underflows is merged with or refilled from
//!   a sibling (`mas_rebalance`); a store spanning leaves rebuilds both boundary leaves
//!   and cuts out the subtrees between (`mas_wr_spanning_store`). Each of these changes
//!   the parent's pivots, so the parent is rebuilt too, and so on up to the first level
//!   where one node replaces one node: there one pointer store publishes the whole new
//!   subtree (a new root is published with one store of the root pointer).
//! - The **gaps** of the ancestors above the publication are updated in place (Linux:
//!   `mas_update_gap`). That is sound because the only readers of gaps are the gap
//!   searches (`get_unmapped_area`), which run under the mmap lock and so never
//!   concurrently with a writer; lock-free readers (`view_rcu`, `lock_vma_under_rcu`)
//!   only look up entries, reading pivots and slots, never gaps. Gaps are atomics so
//!   the word-level accesses themselves are never a data race.
//!
//! A lock-free reader therefore walks a consistent tree: every node it reaches was
//! complete before the store that made it reachable (the SeqCst store pairs with the
//! reader's SeqCst load), pivots never change, and a leaf it reaches is wholly the old
//! one or wholly the new one. Between two stores of one batch (a split updates one VMA
//! and inserts another) a reader may see the first change without the second, as in
//! Linux; the VMA write locks and `lock_vma_under_rcu`'s range re-check cover that.
//! Replaced nodes are retired and come back after an RCU grace period (`retire` /
//! `publish` / `take_back`, the only code that knows about [`super::rcu`]): `publish`
//! hands them to `call_rcu` in node-sized records, a couple of dozen nodes per
//! callback (Linux: `ma_free_rcu` per node); the callback returns them to the writer,
//! which puts them back in its node cache when the cache runs low, driving RCU itself
//! (`rcu_core`) once a few dozen are out. A subtree cut out whole is retired as one
//! item and walked when it comes back. The engine's commit of a merge or split
//! is one store of the new layout over the old (`TreeWriter::store_layout`), as
//! Linux's `commit_merge` is one `vma_iter_store`.
//!
//! **Preallocation by height** (Linux: `mas_preallocate`, `vma_iter_prealloc`). A
//! store allocates at most three nodes per level of the tree (both boundary leaves of
//! a spanning store, or a split in three) and one new root; before a batch the writer
//! reserves that for the height the tree may reach, `3(h + k) + 1` nodes per store
//! among `k`. A range erase is one spanning store whatever the number of VMAs it
//! removes, so a 10,000-VMA munmap reserves as much as a 2-VMA one. After `prealloc`
//! succeeds the batch cannot fail, so an allocation failure leaves the tree and every
//! VMA untouched. `fail_prealloc` injects that failure (`fault-inject` feature only).
//!
//! **The cursor** ([`MaState`], Linux's `ma_state`) remembers its leaf and the leaf's
//! bounds: stepping to the next or previous entry stays in the leaf and walks from the
//! root only at a leaf boundary. It is only kept across calls on a stable view (the
//! mmap lock held) of the same tree version; otherwise it walks from the root.

use alloc::alloc::{Layout, alloc_zeroed, dealloc};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::marker::PhantomData;
use core::mem::MaybeUninit;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use super::area::{Vma, VmaRef};
use super::rcu;
use crate::errno::Errno;

/// Slots of a leaf (Linux: `MAPLE_RANGE64_SLOTS`).
pub const LEAF_SLOTS: usize = 16;
/// Slots of an internal node (Linux: `MAPLE_ARANGE64_SLOTS`).
pub const INT_SLOTS: usize = 10;
/// A node left with fewer entries than this by a store is refilled from or merged
/// with a sibling (Linux: `mt_min_slots`); the rightmost node of a level is exempt
/// (appends keep it small, as Linux's rightmost node).
const MIN_LEAF: usize = 6;
const MIN_INT: usize = 3;
/// Exclusive upper bound of the index space (the last byte is never mapped).
const MAX: usize = usize::MAX;
/// Deepest tree the writer's path arrays hold (10-ary internal nodes: far above any
/// reachable height).
const MAX_H: usize = 24;
/// Free nodes kept per address space after reclamation (an intrusive list: no heap).
const NODE_CACHE_CAP: usize = 256;
/// Bit 0 of a retired pointer: the whole subtree below it is retired.
const SUBTREE: usize = 1;

/// A writer's free nodes, linked through their first word (no heap bookkeeping).
struct NodeCache {
    head: *mut Node,
    len: usize,
}

impl NodeCache {
    const fn new() -> Self {
        Self {
            head: ptr::null_mut(),
            len: 0,
        }
    }

    /// # Safety
    /// `n` is allocated with `NODE` and reachable by no one (no tree, no reader).
    #[inline]
    unsafe fn push(&mut self, n: *mut Node) {
        // SAFETY: contract: nobody else reads `n`, so its first word may link it.
        unsafe { *(n as *mut *mut Node) = self.head };
        self.head = n;
        self.len += 1;
    }

    /// A cached node (its words hold stale integers). The cache is not empty.
    #[inline]
    fn pop(&mut self) -> *mut Node {
        let p = self.head;
        assert!(!p.is_null(), "VMA tree node cache empty");
        // SAFETY: the list head is a cached node; its first word is the link.
        self.head = unsafe { *(p as *mut *mut Node) };
        self.len -= 1;
        p
    }

    /// Keep `n` if there is room, else free it.
    ///
    /// # Safety
    /// As [`Self::push`].
    unsafe fn give(&mut self, n: *mut Node) {
        if self.len < NODE_CACHE_CAP {
            // SAFETY: contract.
            unsafe { self.push(n) };
        } else {
            // SAFETY: contract: allocated with `NODE`, ours alone.
            unsafe { dealloc(n as *mut u8, NODE) };
        }
    }

    /// Give back a retired node, or a whole retired subtree.
    ///
    /// # Safety
    /// `p` (with `subtree`: every node below it too) is unreachable by every reader
    /// and by the tree, and is given back by no one else.
    unsafe fn free_retired(&mut self, p: *mut Node, subtree: bool) {
        // SAFETY: contract. Children are read before `p` is reused or freed.
        unsafe {
            if subtree && !(*p).is_leaf() {
                for i in 0..(*p).len() {
                    self.free_retired((*p).child(i), true);
                }
            }
            self.give(p);
        }
    }

    /// Free every cached node.
    fn drain(&mut self) {
        while !self.head.is_null() {
            let n = self.pop();
            // SAFETY: a cached node is allocated with `NODE`, in no tree and no queue;
            // `pop` unlinked it, so it is freed once.
            unsafe { dealloc(n as *mut u8, NODE) };
        }
    }
}

/// Free a retired item (a node, or a subtree with `SUBTREE`; a record block is one
/// node) to the heap: what the last owner of a tree's return stack does once the
/// writer is gone.
///
/// # Safety
/// The item's grace period is over and no one else frees it.
unsafe fn free_retired_to_heap(x: usize) {
    // Gathered into a local cache (whose overflow goes straight to the heap), then
    // freed.
    let mut c = NodeCache::new();
    // SAFETY: contract.
    unsafe { c.free_retired((x & !SUBTREE) as *mut Node, x & SUBTREE != 0) };
    c.drain();
}

const LEAF_BIT: u64 = 1 << 8;
/// Words after the header.
const W: usize = 31;
/// Word offsets of the slot and gap arrays.
const LEAF_SLOT0: usize = LEAF_SLOTS - 1;
const INT_SLOT0: usize = INT_SLOTS - 1;
const INT_GAP0: usize = INT_SLOT0 + INT_SLOTS;

/// One 256-byte tree node (Linux: `struct maple_node`, as `maple_range_64` in a
/// leaf and `maple_arange_64` in an internal node; see the module doc). The words are
/// atomics because a published internal node's slots and gaps are stored in place
/// while lock-free readers read it; everything else is written only before the node is
/// published.
#[repr(C)]
pub(super) struct Node {
    /// Bits 0..8: slot count; bit 8: leaf.
    meta: u64,
    w: [AtomicUsize; W],
}

const _: () = assert!(core::mem::size_of::<Node>() == 256);
const _: () = assert!(LEAF_SLOT0 + LEAF_SLOTS == W && INT_GAP0 + INT_SLOTS <= W);

impl Node {
    #[inline]
    fn len(&self) -> usize {
        (self.meta & 0xff) as usize
    }
    #[inline]
    fn is_leaf(&self) -> bool {
        self.meta & LEAF_BIT != 0
    }
    /// Exclusive end of slot `i < len - 1`.
    #[inline]
    fn piv(&self, i: usize) -> usize {
        self.w[i].load(Ordering::Relaxed)
    }
    /// Slot `i`: a VMA pointer or 0 in a leaf, a child pointer in an internal node.
    /// SeqCst: pairs with the writer's publication (see `rcu`'s protocol).
    #[inline]
    fn slot(&self, i: usize) -> usize {
        let base = if self.is_leaf() {
            LEAF_SLOT0
        } else {
            INT_SLOT0
        };
        self.w[base + i].load(Ordering::SeqCst)
    }
    /// Largest NULL range below child `i` (internal nodes).
    #[inline]
    fn gap(&self, i: usize) -> usize {
        self.w[INT_GAP0 + i].load(Ordering::Relaxed)
    }
    /// Child `i` of an internal node (SeqCst: pairs with the writer's publication).
    #[inline]
    fn child(&self, i: usize) -> *mut Node {
        debug_assert!(!self.is_leaf());
        self.w[INT_SLOT0 + i].load(Ordering::SeqCst) as *mut Node
    }
    /// Slot `i` of a leaf.
    #[inline]
    fn leaf_slot(&self, i: usize) -> usize {
        debug_assert!(self.is_leaf());
        self.w[LEAF_SLOT0 + i].load(Ordering::SeqCst)
    }
    /// Start of slot `i` in a node whose lower bound is `min`.
    #[inline]
    fn start(&self, i: usize, min: usize) -> usize {
        if i > 0 { self.piv(i - 1) } else { min }
    }
    /// End of slot `i` in a node whose upper bound is `max`: its pivot, which for the
    /// last slot of a node with room is the node's own upper bound (see `build`); a
    /// full node has no pivot for its last slot.
    #[inline]
    fn end(&self, i: usize, max: usize) -> usize {
        let cap = if self.is_leaf() {
            LEAF_SLOTS
        } else {
            INT_SLOTS
        };
        if i + 1 < cap { self.piv(i) } else { max }
    }
    /// The slot covering `idx` (which lies inside the node's bounds).
    #[inline(always)]
    fn offset_of(&self, idx: usize) -> usize {
        if self.is_leaf() {
            self.search::<LEAF_SLOTS>(idx)
        } else {
            self.search::<INT_SLOTS>(idx)
        }
    }
    /// Number of pivots `<= idx` among the `S - 1` of a node with `S` slots: the slot
    /// covering `idx`. A branch-free binary search (four probes for 16 or 10 slots): the
    /// pivot words form a sorted array, the used ones strictly increasing, then the
    /// node's upper bound, then `MAX` (`build` writes every pivot word), all of which
    /// are above any `idx` inside the node. Linux scans linearly (`mas_leaf_max_gap`,
    /// `mtree_range_walk`); probes of a sorted array read fewer words.
    #[inline(always)]
    fn search<const S: usize>(&self, idx: usize) -> usize {
        let p = self.w.as_ptr();
        let (mut base, mut n) = (0, S);
        while n > 1 {
            let half = n / 2;
            // SAFETY: `base + half - 1 <= base + n - 2 <= S - 2 < W`: a pivot word of
            // `w` (the range shrinks by `half` each round). Pivots are written only
            // before the node is published, so the read races with no write.
            let v = unsafe { (*p.add(base + half - 1)).load(Ordering::Relaxed) };
            base = if v <= idx { base + half } else { base };
            n -= half;
        }
        base
    }
    /// Largest gap of an internal node (max over its children).
    fn max_gap(&self) -> usize {
        (0..self.len()).map(|i| self.gap(i)).max().unwrap_or(0)
    }
    /// Slot `i` as an [`Item`] (bounds `max` for the last slot).
    fn item(&self, i: usize, max: usize) -> Item {
        Item {
            end: self.end(i, max),
            val: self.slot(i),
            gap: if self.is_leaf() { 0 } else { self.gap(i) },
        }
    }
}

/// One slot of a node being built: its exclusive end, its value (leaf: a VMA
/// pointer or 0; internal: a child pointer) and, internal, the child's gap.
#[derive(Clone, Copy, Default, Debug)]
struct Item {
    end: usize,
    val: usize,
    gap: usize,
}

/// Entries a level being rebuilt can hold: two boundary nodes' worth and the new
/// items (41 at most in a leaf), or one node and a sibling (32).
const BIG: usize = 48;

/// The entries of a level being rebuilt (Linux: `struct maple_big_node`). Only the
/// first `n` are initialised (not zeroing 1 KiB per level matters here).
struct Big {
    it: [MaybeUninit<Item>; BIG],
    n: usize,
}

impl Big {
    fn new() -> Self {
        Big {
            it: [const { MaybeUninit::uninit() }; BIG],
            n: 0,
        }
    }
    /// The entries.
    #[inline]
    fn items(&self) -> &[Item] {
        // SAFETY: the first `n` entries are initialised (`push`, `prepend_node`,
        // `normalize` keep that), and `MaybeUninit<Item>` has `Item`'s layout.
        unsafe { core::slice::from_raw_parts(self.it.as_ptr() as *const Item, self.n) }
    }
    #[inline]
    fn get(&self, i: usize) -> Item {
        self.items()[i]
    }
    #[inline]
    fn set(&mut self, i: usize, x: Item) {
        debug_assert!(i < self.n);
        self.it[i] = MaybeUninit::new(x);
    }
    #[inline]
    fn push(&mut self, i: Item) {
        self.it[self.n] = MaybeUninit::new(i);
        self.n += 1;
    }
    /// Slots `a..b` of `node` (upper bound `max`) in order.
    fn push_slots(&mut self, node: &Node, a: usize, b: usize, max: usize) {
        for i in a..b {
            self.push(node.item(i, max));
        }
    }
    /// Put the slots of `node` before the current entries.
    fn prepend_node(&mut self, node: &Node, max: usize) {
        let k = node.len();
        self.it.copy_within(0..self.n, k);
        for (i, x) in self.it[..k].iter_mut().enumerate() {
            *x = MaybeUninit::new(node.item(i, max));
        }
        self.n += k;
    }
    /// Merge adjacent NULL ranges (leaf level).
    fn normalize(&mut self) {
        let Some(first) = self
            .items()
            .windows(2)
            .position(|w| w[0].val == 0 && w[1].val == 0)
        else {
            return;
        };
        let mut out = first + 1;
        for i in first + 1..self.n {
            let x = self.get(i);
            if x.val == 0 && self.get(out - 1).val == 0 {
                let mut y = self.get(out - 1);
                y.end = x.end;
                self.set(out - 1, y);
            } else {
                self.set(out, x);
                out += 1;
            }
        }
        self.n = out;
    }
}

/// The published root, shared with lock-free readers (Linux: `mm->mm_mt.ma_root`),
/// and the tree's version (bumped by every store: a cursor's cached leaf is valid only
/// for the version it was made on).
pub(super) struct VmaTree {
    root: AtomicPtr<Node>,
    seq: AtomicU64,
}

impl VmaTree {
    pub(super) const fn new() -> Self {
        VmaTree {
            root: AtomicPtr::new(ptr::null_mut()),
            seq: AtomicU64::new(0),
        }
    }

    /// A view for a caller holding the mmap lock (read or write): no store can run,
    /// and no node of the tree is reclaimed, while it is held.
    pub(super) fn view_locked(&self) -> TreeView<'_> {
        TreeView {
            root: self.root.load(Ordering::Acquire),
            seq: self.seq.load(Ordering::Relaxed),
            stable: true,
            _p: PhantomData,
        }
    }

    /// A view for a lock-free reader; valid for the lifetime of the RCU section. Only
    /// lookups are meant for it (the gaps may be mid-update).
    pub(super) fn view_rcu<'a>(&'a self, _g: &'a rcu::RcuReadGuard) -> TreeView<'a> {
        TreeView {
            root: self.root.load(Ordering::SeqCst),
            seq: 0,
            stable: false,
            _p: PhantomData,
        }
    }
}

/// A read-only view of the tree.
#[derive(Clone, Copy)]
pub struct TreeView<'a> {
    root: *const Node,
    seq: u64,
    /// No writer can run while the view lives (mmap lock or the writer's own view):
    /// a cursor may keep its leaf across calls.
    stable: bool,
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

/// A slot of a leaf found by a walk: the leaf, the offset and the leaf's bounds.
#[derive(Clone, Copy)]
struct Pos<'a> {
    n: &'a Node,
    off: usize,
    min: usize,
    max: usize,
}

impl<'a> Pos<'a> {
    /// The VMA at this position, or else the next one (Linux: the step of `mas_find`
    /// past a NULL range): NULL ranges are never adjacent, so it is the next slot of
    /// the leaf, or the first entry of the next leaf, found with `walk(self.max)`.
    fn vma_or_next(self, walk: impl FnOnce(usize) -> Option<Pos<'a>>) -> Option<TreeEntry> {
        if self.val() != 0 {
            return self.entry();
        }
        if self.off + 1 < self.n.len() {
            return Pos {
                off: self.off + 1,
                ..self
            }
            .entry();
        }
        if self.max == MAX {
            return None;
        }
        walk(self.max)?.entry()
    }

    /// The VMA at this position, or else the previous one (Linux: the step of
    /// `mas_prev` past a NULL range): the previous slot of the leaf, or the last entry
    /// of the previous leaf, found with `walk(self.min - 1)`.
    fn vma_or_prev(self, walk: impl FnOnce(usize) -> Option<Pos<'a>>) -> Option<TreeEntry> {
        if self.val() != 0 {
            return self.entry();
        }
        if self.off > 0 {
            return Pos {
                off: self.off - 1,
                ..self
            }
            .entry();
        }
        if self.min == 0 {
            return None;
        }
        walk(self.min - 1)?.entry()
    }

    #[inline]
    fn start(&self) -> usize {
        self.n.start(self.off, self.min)
    }
    #[inline]
    fn end(&self) -> usize {
        if self.off + 1 < LEAF_SLOTS {
            self.n.piv(self.off)
        } else {
            self.max
        }
    }
    #[inline]
    fn val(&self) -> usize {
        self.n.leaf_slot(self.off)
    }
    fn entry(&self) -> Option<TreeEntry> {
        let v = self.val();
        (v != 0).then(|| TreeEntry {
            start: self.start(),
            end: self.end(),
            vma: vma_of(v),
        })
    }
}

fn vma_of(v: usize) -> VmaRef {
    // SAFETY: as in `Pos::entry`: `v` is a non-zero leaf slot.
    unsafe { &*(v as *const Vma) }
}

impl<'a> TreeView<'a> {
    #[inline]
    fn node(&self, p: *const Node) -> Option<&'a Node> {
        // SAFETY: `p` is null or was reached from this view's root. A view's root was
        // loaded under the mmap lock, by the writer, or inside an RCU section (whose
        // lifetimes bound `'a`). A node reachable from a root is freed only after a
        // grace period that outlasts every RCU section and mmap-lock hold that could
        // have reached it (`TreeWriter::publish`), so it is allocated for `'a`; its
        // header and pivots never change once published, and its slots and gaps are
        // atomics.
        unsafe { p.as_ref() }
    }

    /// The slot covering `idx` (Linux: `mas_walk`); `None` for an empty tree.
    #[inline]
    fn walk(&self, idx: usize) -> Option<Pos<'a>> {
        let mut n = self.node(self.root)?;
        let (mut min, mut max) = (0, MAX);
        while !n.is_leaf() {
            let i = n.search::<INT_SLOTS>(idx);
            if i > 0 {
                min = n.piv(i - 1);
            }
            if i + 1 < INT_SLOTS {
                max = n.piv(i);
            }
            n = self.node(n.child(i))?;
        }
        Some(Pos {
            n,
            off: n.search::<LEAF_SLOTS>(idx),
            min,
            max,
        })
    }

    /// Range and value of the entry covering `idx` (0: NULL).
    fn entry_at(&self, idx: usize) -> (usize, usize, usize) {
        match self.walk(idx) {
            Some(p) => (p.start(), p.end(), p.val()),
            None => (0, MAX, 0),
        }
    }

    /// Does `[start, end)` hold no VMA? NULL ranges never touch, so it is free exactly
    /// when it lies inside the NULL range covering `start`: one walk, no step to a
    /// neighbour (`intersection(start, end).is_none()`, cheaper).
    pub fn is_free(&self, start: usize, end: usize) -> bool {
        self.walk(start)
            .is_none_or(|p| p.val() == 0 && end <= p.end())
    }

    /// For a free `[start, end)`: the VMA ending last at or before `start` and the one
    /// starting first at or after `end` (`last_ending_at_or_before(start)` and
    /// `next_from(end)`), read from the NULL range covering it, whose neighbours they
    /// are: one walk (two only at a leaf boundary). `None` if the range is not free.
    pub fn around_free(
        &self,
        start: usize,
        end: usize,
    ) -> Option<(Option<TreeEntry>, Option<TreeEntry>)> {
        let Some(p) = self.walk(start) else {
            return Some((None, None));
        };
        if p.val() != 0 || end > p.end() {
            return None;
        }
        Some((
            p.vma_or_prev(|before| self.walk(before)),
            p.vma_or_next(|next| self.walk(next)),
        ))
    }

    /// Lowest VMA with `end > addr` (Linux: `find_vma()`, `mas_find`).
    pub fn find(&self, addr: usize) -> Option<TreeEntry> {
        self.walk(addr)?.vma_or_next(|next| self.walk(next))
    }

    /// Entry containing `addr` (Linux: `vma_lookup()`, `mas_walk`).
    pub fn lookup(&self, addr: usize) -> Option<TreeEntry> {
        self.walk(addr)?.entry()
    }

    /// Highest VMA with `start <= x`.
    fn vma_at_or_before(&self, x: usize) -> Option<TreeEntry> {
        self.walk(x)?.vma_or_prev(|before| self.walk(before))
    }

    /// Highest entry with `start < addr` (Linux: `mas_prev`).
    pub fn prev_before(&self, addr: usize) -> Option<TreeEntry> {
        self.vma_at_or_before(addr.checked_sub(1)?)
    }

    /// Highest entry with `end <= addr` (Linux: the `prev` of `find_vma_prev()`).
    pub fn last_ending_at_or_before(&self, addr: usize) -> Option<TreeEntry> {
        let e = self.vma_at_or_before(addr.checked_sub(1)?)?;
        if e.end <= addr {
            return Some(e);
        }
        self.vma_at_or_before(e.start.checked_sub(1)?)
    }

    /// Lowest entry with `start >= addr` (Linux: `mas_next` from `addr`).
    pub fn next_from(&self, addr: usize) -> Option<TreeEntry> {
        let e = self.find(addr)?;
        if e.start >= addr {
            return Some(e);
        }
        self.find(e.end)
    }

    /// Lowest entry intersecting `[start, end)` (Linux: `find_vma_intersection()`).
    pub fn intersection(&self, start: usize, end: usize) -> Option<TreeEntry> {
        self.find(start).filter(|e| e.start < end)
    }

    /// Visit the VMAs in address order.
    pub fn for_each(&self, mut f: impl FnMut(TreeEntry)) {
        self.for_each_in(0, MAX, &mut f);
    }

    /// Visit, in address order, the VMAs whose range meets `[s, e)`, skipping subtrees
    /// outside it.
    fn for_each_in(&self, s: usize, e: usize, f: &mut dyn FnMut(TreeEntry)) {
        fn rec<'a>(
            v: &TreeView<'a>,
            p: *const Node,
            min: usize,
            max: usize,
            s: usize,
            e: usize,
            f: &mut dyn FnMut(TreeEntry),
        ) {
            let Some(n) = v.node(p) else { return };
            for i in 0..n.len() {
                let (a, b) = (n.start(i, min), n.end(i, max));
                if b <= s {
                    continue;
                }
                if a >= e {
                    return;
                }
                if n.is_leaf() {
                    if let Some(x) = (Pos {
                        n,
                        off: i,
                        min,
                        max,
                    })
                    .entry()
                    {
                        f(x);
                    }
                } else {
                    rec(v, n.child(i), a, b, s, e, f);
                }
            }
        }
        rec(self, self.root, 0, MAX, s, e, f);
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

    /// Check the tree's own invariants and return the number of VMAs: pivots strictly
    /// increasing inside each node's bounds (so entries are sorted, non-empty and cover
    /// every index once, and each child covers exactly its parent slot's range); each
    /// VMA's recorded range equal to the VMA's own; no two NULL ranges adjacent, even
    /// across leaves; every node non-empty and within its slot count, a root with
    /// children has at least two, all leaves at one depth; every cached gap exact (the
    /// largest NULL range below the child). Linux: `mt_validate()`
    /// (`mas_validate_gaps`, `mas_validate_limits`, `mas_validate_child_slot`,
    /// `mt_validate_nulls`) under `CONFIG_DEBUG_VM_MAPLE_TREE`.
    ///
    /// The caller holds the mmap lock (the VMA fields compared must be stable).
    pub fn validate(&self) -> Result<usize, String> {
        struct Walk {
            prev_null: bool,
            count: usize,
            leaf_depth: Option<usize>,
        }
        fn walk(
            v: &TreeView<'_>,
            p: *const Node,
            min: usize,
            max: usize,
            depth: usize,
            w: &mut Walk,
        ) -> Result<usize, String> {
            let n = v.node(p).ok_or("tree: null child")?;
            let len = n.len();
            let cap = if n.is_leaf() { LEAF_SLOTS } else { INT_SLOTS };
            if len == 0 || len > cap {
                return Err(format!(
                    "tree: node {min:#x}..{max:#x} at depth {depth} has {len} slots"
                ));
            }
            // The pivot words past the used ones: the node's bound, then `MAX`
            // (what `search` relies on).
            for i in len.saturating_sub(1)..cap - 1 {
                let want = if i + 1 == len { max } else { MAX };
                if n.piv(i) != want {
                    return Err(format!(
                        "tree: node {min:#x}..{max:#x} pivot word {i} is {:#x}, not {want:#x}",
                        n.piv(i)
                    ));
                }
            }
            let mut gap = 0;
            for i in 0..len {
                let (a, b) = (n.start(i, min), n.end(i, max));
                if a >= b {
                    return Err(format!(
                        "tree: node {min:#x}..{max:#x} slot {i}: empty or inverted range {a:#x}..{b:#x}"
                    ));
                }
                if n.is_leaf() {
                    let x = n.slot(i);
                    if x == 0 {
                        if w.prev_null {
                            return Err(format!("tree: NULL range at {a:#x} follows a NULL range"));
                        }
                        gap = gap.max(b - a);
                    } else {
                        let vma = vma_of(x);
                        if vma.start() != a || vma.end() != b {
                            return Err(format!(
                                "tree: entry {a:#x}..{b:#x} but its VMA says {:#x}..{:#x}",
                                vma.start(),
                                vma.end()
                            ));
                        }
                        w.count += 1;
                    }
                    w.prev_null = x == 0;
                } else {
                    let g = walk(v, n.child(i), a, b, depth + 1, w)?;
                    if n.gap(i) != g {
                        return Err(format!(
                            "tree: node {min:#x}..{max:#x} child {i}: cached gap {:#x}, actual {g:#x}",
                            n.gap(i)
                        ));
                    }
                    gap = gap.max(g);
                }
            }
            if n.is_leaf() && *w.leaf_depth.get_or_insert(depth) != depth {
                return Err(format!(
                    "tree: leaves at depths {depth} and {:?}",
                    w.leaf_depth
                ));
            }
            if depth == 0 && !n.is_leaf() && len < 2 {
                return Err(String::from("tree: internal root with one child"));
            }
            Ok(gap)
        }
        let mut w = Walk {
            prev_null: false,
            count: 0,
            leaf_depth: None,
        };
        if !self.root.is_null() {
            walk(self, self.root, 0, MAX, 0, &mut w)?;
        }
        Ok(w.count)
    }

    /// Lowest `addr` with `[addr, addr+len)` free, inside `[low, high)`, aligned to
    /// `align` (a power of two). Linux: `mas_empty_area()` / bottom-up
    /// `vm_unmapped_area()`. Needs a stable view (the gaps).
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
        if self.root.is_null() {
            return fit(0, MAX);
        }
        self.gap_lo(self.root, 0, MAX, len, low, high, &fit)
    }

    /// Search the NULL ranges below `p` (bounds `min..max`) in ascending order. In a
    /// leaf the scan starts at the slot covering `low` (found by the pivot search, not
    /// by stepping over the slots below it).
    #[allow(clippy::too_many_arguments)]
    fn gap_lo<F: Fn(usize, usize) -> Option<usize>>(
        &self,
        p: *const Node,
        min: usize,
        max: usize,
        len: usize,
        low: usize,
        high: usize,
        fit: &F,
    ) -> Option<usize> {
        let n = self.node(p)?;
        if n.is_leaf() {
            // `low < max`: the parent descends only into children ending above it.
            let mut i = if low > min {
                n.search::<LEAF_SLOTS>(low)
            } else {
                0
            };
            while i < n.len() {
                let a = n.start(i, min);
                if a >= high {
                    return None;
                }
                if n.leaf_slot(i) == 0
                    && let Some(x) = fit(a, n.end(i, max))
                {
                    return Some(x);
                }
                i += 1;
            }
            return None;
        }
        for i in 0..n.len() {
            let (a, b) = (n.start(i, min), n.end(i, max));
            if b <= low {
                continue;
            }
            if a >= high {
                return None;
            }
            if n.gap(i) >= len
                && let Some(x) = self.gap_lo(n.child(i), a, b, len, low, high, fit)
            {
                return Some(x);
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
        if self.root.is_null() {
            return fit(0, MAX);
        }
        self.gap_hi(self.root, 0, MAX, len, low, high, &fit)
    }

    /// As [`Self::gap_lo`], in descending order (a leaf's scan starts at the slot
    /// covering `high - 1`).
    #[allow(clippy::too_many_arguments)]
    fn gap_hi<F: Fn(usize, usize) -> Option<usize>>(
        &self,
        p: *const Node,
        min: usize,
        max: usize,
        len: usize,
        low: usize,
        high: usize,
        fit: &F,
    ) -> Option<usize> {
        let n = self.node(p)?;
        if n.is_leaf() {
            // `min < high` (the parent descends only into children starting below
            // it; the root's `min` is 0 and `high >= len > 0`).
            let mut i = if high - 1 < max {
                n.search::<LEAF_SLOTS>(high - 1)
            } else {
                n.len() - 1
            };
            loop {
                let b = n.end(i, max);
                if b <= low {
                    return None;
                }
                if n.leaf_slot(i) == 0
                    && let Some(x) = fit(n.start(i, min), b)
                {
                    return Some(x);
                }
                if i == 0 {
                    return None;
                }
                i -= 1;
            }
        }
        for i in (0..n.len()).rev() {
            let (a, b) = (n.start(i, min), n.end(i, max));
            if a >= high {
                continue;
            }
            if b <= low {
                return None;
            }
            if n.gap(i) >= len
                && let Some(x) = self.gap_hi(n.child(i), a, b, len, low, high, fit)
            {
                return Some(x);
            }
        }
        None
    }
}

fn align_up(x: usize, align: usize) -> Option<usize> {
    x.checked_add(align - 1).map(|v| v & !(align - 1))
}

// ---- the cursor -----------------------------------------------------------------

/// A cursor into the tree (Linux: `struct ma_state`): the leaf it last visited with
/// its bounds and the slot there, kept across calls while the tree version is
/// unchanged, so stepping to a neighbouring entry reads the leaf it is in and walks
/// from the root only when it leaves that leaf (Linux: `mas_next_slot` /
/// `mas_prev_slot`; Linux climbs through parent pointers, which our nodes do not have,
/// so a leaf boundary costs a walk: one in eight entries). Pointers are kept as
/// integers: the cursor is only dereferenced through a [`TreeView`] it matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaState {
    /// Root and version the leaf belongs to (`leaf == 0`: no leaf).
    root: usize,
    seq: u64,
    leaf: usize,
    min: usize,
    max: usize,
}

impl MaState {
    /// Forget the leaf (Linux: `mas_reset`).
    pub fn reset(&mut self) {
        self.leaf = 0;
    }

    /// Position on the slot covering `idx` of `v`; `None` for an empty tree. Reuses the
    /// leaf when it belongs to `v` and covers `idx`.
    #[inline]
    fn seek<'a>(&mut self, v: &TreeView<'a>, idx: usize) -> Option<Pos<'a>> {
        if self.leaf != 0
            && v.stable
            && self.root == v.root as usize
            && self.seq == v.seq
            && self.min <= idx
            && idx < self.max
        {
            let n = v.node(self.leaf as *const Node)?;
            return Some(Pos {
                n,
                off: n.search::<LEAF_SLOTS>(idx),
                min: self.min,
                max: self.max,
            });
        }
        let p = v.walk(idx)?;
        if v.stable {
            *self = MaState {
                root: v.root as usize,
                seq: v.seq,
                leaf: p.n as *const Node as usize,
                min: p.min,
                max: p.max,
            };
        }
        Some(p)
    }

    /// Lowest VMA ending above `idx` (Linux: `mas_find`).
    pub(super) fn find<'a>(&mut self, v: &TreeView<'a>, idx: usize) -> Option<TreeEntry> {
        let p = self.seek(v, idx)?;
        p.vma_or_next(|next| self.seek(v, next))
    }

    /// Highest VMA starting below `idx` (Linux: `mas_prev`).
    pub(super) fn prev<'a>(&mut self, v: &TreeView<'a>, idx: usize) -> Option<TreeEntry> {
        let p = self.seek(v, idx.checked_sub(1)?)?;
        p.vma_or_prev(|before| self.seek(v, before))
    }
}

// ---- the writer -----------------------------------------------------------------

/// One level of a writer's walk: node, offset, the node's bounds.
#[derive(Clone, Copy)]
struct Level {
    node: *mut Node,
    off: usize,
    min: usize,
    max: usize,
}

/// Root-to-leaf path of a writer's walk (Linux: the `ma_state` of a store); the
/// first `height` levels are filled by `TreeWriter::walk`.
struct Path {
    lv: [MaybeUninit<Level>; MAX_H],
    height: usize,
}

impl Path {
    #[inline]
    fn at(&self, d: usize) -> Level {
        assert!(d < self.height);
        // SAFETY: levels below `height` were written by the walk.
        unsafe { self.lv[d].assume_init() }
    }
}

/// What [`TreeWriter::store_leaf`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum LeafStore {
    /// Stored and published.
    Stored,
    /// Not a leaf-local store: nothing changed (`store_nodes` does it).
    NotLocal,
    /// The replaced slots do not hold the expected number of VMAs: nothing changed.
    Mismatch,
}

/// Writer-side state of the tree (lives under the mmap write lock; Linux: the
/// `ma_state` of `vma_iter_prealloc` with its preallocated node list).
pub(super) struct TreeWriter {
    /// The root (equal to the published one: every store publishes at once).
    work: *mut Node,
    /// Height of the tree in nodes (0: empty).
    height: usize,
    /// Tree version, bumped by every store (mirrored in `VmaTree::seq`).
    seq: u64,
    /// Path of the last `leaf_walk` and its leaf level (kept apart: a leaf-local
    /// store changes only it), current while `path_seq == seq`.
    path: Path,
    leaf: Level,
    path_seq: u64,
    /// Free nodes (the reservation, and nodes back from their grace period).
    cache: NodeCache,
    /// Nodes unlinked since the last `publish` (capacity reserved by `prealloc`); bit 0
    /// set: the whole subtree.
    pending: Vec<usize>,
    /// Unlinked nodes handed to RCU, waiting for their grace period.
    retirement: rcu::Retirement,
    /// VMAs in the tree.
    count: usize,
    /// Nodes taken from the reservation so far (tests count the copies a store makes).
    pub(super) allocs: usize,
    /// Fault injection: the next `prealloc` fails with ENOMEM (Linux harness:
    /// `fail_prealloc`). Stays set until cleared.
    #[cfg(feature = "fault-inject")]
    pub(super) fail_prealloc: bool,
    /// Fault injection: keep no free nodes between batches (set by `shrink_caches`),
    /// so every batch allocates its reservation from the heap, as every Linux store
    /// does from its slab.
    #[cfg(feature = "fault-inject")]
    uncached: bool,
}

// SAFETY: the raw pointers are nodes the writer owns (cached, pending or retired: no
// other thread writes them) or nodes of the published tree, which readers only read
// and the writer changes only with atomic stores; nothing in them is tied to a thread.
// Every `&mut` method runs under the mmap write lock (the writer lives in `Mm`'s lock),
// so two threads never mutate it at once.
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
            seq: 0,
            path: Path {
                lv: [const { MaybeUninit::uninit() }; MAX_H],
                height: 0,
            },
            leaf: Level {
                node: ptr::null_mut(),
                off: 0,
                min: 0,
                max: 0,
            },
            path_seq: u64::MAX,
            cache: NodeCache::new(),
            pending: Vec::new(),
            retirement: rcu::Retirement::new(),
            count: 0,
            allocs: 0,
            #[cfg(feature = "fault-inject")]
            fail_prealloc: false,
            #[cfg(feature = "fault-inject")]
            uncached: false,
        }
    }

    /// VMAs in the tree.
    pub(super) fn len(&self) -> usize {
        self.count
    }

    /// Bytes of node memory the tree holds: nodes in the tree, cached, and waiting for
    /// a grace period with their records (a retired subtree counts as one node;
    /// diagnostics only).
    pub(super) fn bytes(&self) -> usize {
        (self.view().nodes() + self.cache.len + self.pending.len() + self.retirement.in_flight())
            * NODE.size()
    }

    /// Take back the retired nodes (and their records) whose grace period is over,
    /// driving RCU first when `drive` and enough of them are out.
    fn take_back(&mut self, drive: bool) {
        let cache = &mut self.cache;
        let give = |x: usize| {
            // SAFETY: `x` was retired by `publish` and its grace period is over:
            // `retire`'s contract (unlinked before the batch was published, so every
            // reader that could have reached it has left its RCU section; mmap-lock
            // readers are excluded by our write lock). Each item is given back once. A
            // record block is a node from this cache, given back as its address
            // (`SUBTREE` clear: one node).
            unsafe { cache.free_retired((x & !SUBTREE) as *mut Node, x & SUBTREE != 0) }
        };
        if drive && self.retirement.in_flight() >= 32 {
            self.retirement.drive(give);
        } else {
            self.retirement.take_done(give);
        }
    }

    /// Frees the cached nodes and the spare capacity of the bookkeeping vectors
    /// (outside a batch: nothing pending), and from then on keeps no free node between
    /// batches: what a batch leaves of its reservation, and every node reclaimed, goes
    /// back to the heap at `publish` (Linux: `mas_destroy` frees the unused
    /// preallocation). Retired nodes still waiting for readers stay.
    #[cfg(feature = "fault-inject")]
    pub(super) fn shrink_caches(&mut self) {
        debug_assert!(self.pending.is_empty(), "shrink inside a batch");
        self.uncached = true;
        self.cache.drain();
        self.pending = Vec::new();
    }

    /// Nodes one store may need when `k` stores of the batch precede it: three per
    /// level and a new root, the height growing by at most one per store.
    fn per_op(&self, k: usize) -> usize {
        3 * (self.height + k) + 1
    }

    /// Reserve everything a batch of `nops` stores needs.
    ///
    /// Linux: `vma_iter_prealloc()` / `mas_preallocate()`.
    pub(super) fn prealloc(&mut self, nops: usize) -> Result<(), Errno> {
        self.reserve(nops, nops * self.per_op(nops))
    }

    /// Reserve what one [`Self::erase_range`] (plus `nops` stores) needs: one spanning
    /// store, whatever the number of VMAs removed.
    pub(super) fn prealloc_erase_range(&mut self, nops: usize) -> Result<(), Errno> {
        let k = nops + 1;
        self.reserve(k, k * self.per_op(k))
    }

    fn reserve(&mut self, nops: usize, need: usize) -> Result<(), Errno> {
        #[cfg(feature = "fault-inject")]
        if self.fail_prealloc {
            return Err(Errno::ENOMEM);
        }
        // Every node replaced or cut out ends up in `pending`: per store and level the
        // boundary nodes and a sibling, and the children cut out between them. At
        // `publish` they go to RCU in records, taken from the reservation too.
        let retire = need + nops * 2 * INT_SLOTS * (self.height + nops + 1);
        self.pending
            .try_reserve(retire)
            .map_err(|_| Errno::ENOMEM)?;
        self.retirement.prepare(free_retired_to_heap)?;
        let need = need + rcu::Retirement::records_for(self.pending.len() + retire);
        if self.cache.len < need {
            self.take_back(true);
        }
        while self.cache.len < need {
            // SAFETY: `NODE` has a non-zero size. Zeroed: a node's words are plain
            // integers, valid when zero.
            let p = unsafe { alloc_zeroed(NODE) } as *mut Node;
            if p.is_null() {
                return Err(Errno::ENOMEM);
            }
            // SAFETY: just allocated, known to no one else.
            unsafe { self.cache.push(p) };
        }
        Ok(())
    }

    /// A node from the reservation (its words hold stale integers).
    #[inline]
    fn take_node(&mut self) -> *mut Node {
        self.allocs += 1;
        if self.cache.head.is_null() {
            // Only reachable if the `prealloc` bound is wrong: an internal bug.
            debug_assert!(false, "VMA tree preallocation budget exceeded");
            // SAFETY: `NODE` has a non-zero size.
            let p = unsafe { alloc_zeroed(NODE) } as *mut Node;
            assert!(
                !p.is_null(),
                "VMA tree node allocation failed after prealloc"
            );
            p
        } else {
            self.cache.pop()
        }
    }

    /// A node from the reservation, filled with `items` (its lower bound `min` for the
    /// leaf gap). Returns the node as an item of its parent.
    fn build(&mut self, leaf: bool, items: &[Item], min: usize) -> Item {
        let p = self.take_node();
        let n = items.len();
        debug_assert!(n >= 1 && n <= if leaf { LEAF_SLOTS } else { INT_SLOTS });
        // SAFETY: `p` is allocated with `NODE` and known only to us (from the cache or
        // fresh); its words are atomics, valid whatever their bytes (allocated zeroed,
        // only ever holding integers). It is published only after this returns.
        let node = unsafe {
            (*p).meta = n as u64 | if leaf { LEAF_BIT } else { 0 };
            &*p
        };
        let slot0 = if leaf { LEAF_SLOT0 } else { INT_SLOT0 };
        let mut gap = 0;
        let mut prev = min;
        let cap = if leaf { LEAF_SLOTS } else { INT_SLOTS };
        // Every pivot word: the ends of the slots (the last one's end is the node's
        // upper bound, kept where the node has room), then `MAX`, so `search` needs
        // no slot count.
        for w in &node.w[n.min(cap - 1)..cap - 1] {
            w.store(MAX, Ordering::Relaxed);
        }
        for (i, x) in items.iter().enumerate() {
            if i + 1 < cap {
                node.w[i].store(x.end, Ordering::Relaxed);
            }
            node.w[slot0 + i].store(x.val, Ordering::Relaxed);
            if leaf {
                if x.val == 0 {
                    gap = gap.max(x.end - prev);
                }
            } else {
                node.w[INT_GAP0 + i].store(x.gap, Ordering::Relaxed);
                gap = gap.max(x.gap);
            }
            prev = x.end;
        }
        Item {
            end: items[n - 1].end,
            val: p as usize,
            gap,
        }
    }

    /// Queue a node unlinked from the tree (`subtree`: with everything below it) for
    /// freeing after a grace period (Linux: `mas_free` / `ma_free_rcu`). With
    /// [`Self::publish`] and [`Self::take_back`], the only code that knows how nodes
    /// outlive their readers.
    fn retire(&mut self, p: *mut Node, subtree: bool) {
        // Capacity reserved by `prealloc`.
        self.pending.push(p as usize | subtree as usize);
    }

    /// Walk from the root to the slot covering `idx`, recording the path.
    fn walk(&self, idx: usize, path: &mut Path) {
        Self::walk_from(self.work, self.height, idx, path);
    }

    fn walk_from(root: *mut Node, height: usize, idx: usize, path: &mut Path) {
        assert!(height <= MAX_H, "VMA tree too high");
        path.height = height;
        let (mut p, mut min, mut max) = (root, 0, MAX);
        for l in path.lv[..height].iter_mut() {
            // SAFETY: the writer's root and its descendants are live nodes.
            let n = unsafe { &*p };
            let i = n.offset_of(idx);
            *l = MaybeUninit::new(Level {
                node: p,
                off: i,
                min,
                max,
            });
            let (a, b) = (n.start(i, min), n.end(i, max));
            min = a;
            max = b;
            p = if n.is_leaf() {
                ptr::null_mut()
            } else {
                n.child(i)
            };
        }
    }

    /// The leaf slot covering `idx` in a non-empty tree, with the path to it kept in
    /// `self.path` (Linux: the writer's `ma_state` after `mas_walk`). The path of the
    /// previous walk is reused when the tree changed only inside its leaf since (a
    /// leaf-local store keeps it current) and the leaf covers `idx`: no descent from
    /// the root for the lookups and the store of one operation.
    #[inline]
    fn leaf_walk(&mut self, idx: usize) -> Level {
        debug_assert!(self.height > 0);
        if self.path_seq == self.seq && self.leaf.min <= idx && idx < self.leaf.max {
            // SAFETY: the path is current (same version): a live leaf.
            self.leaf.off = unsafe { (*self.leaf.node).search::<LEAF_SLOTS>(idx) };
            return self.leaf;
        }
        Self::walk_from(self.work, self.height, idx, &mut self.path);
        self.path_seq = self.seq;
        self.leaf = self.path.at(self.height - 1);
        self.leaf
    }

    /// A store that stays inside one leaf: the leaf's entries with `items` over
    /// `[start, end)` fit in one leaf (no split, no underflow) and no NULL edge of the
    /// range touches a leaf boundary (where the neighbouring leaf's NULL would have to
    /// be taken in). One walk (or none: `leaf_walk`), one leaf built with the old one's
    /// bounds, published with one store of its pointer into the parent's slot (Linux:
    /// `mas_wr_node_store` / `mas_wr_slot_store` through `mas_wr_store_entry`). Returns
    /// [`LeafStore::NotLocal`], changing nothing, when the store is not leaf-local; with
    /// `CHECK`, [`LeafStore::Mismatch`], changing nothing, when
    /// the number of VMAs meeting `[start, end)` is not `meets` (`store_layout`'s check,
    /// read in the slots the store replaces).
    fn store_leaf<const CHECK: bool>(
        &mut self,
        tree: &VmaTree,
        start: usize,
        items: &[Item],
        meets: usize,
    ) -> LeafStore {
        let k = items.len();
        let end = items[k - 1].end;
        let h = self.height;
        let l = self.leaf_walk(start);
        if end > l.max
            || (items[0].val == 0 && start == l.min && l.min > 0)
            || (items[k - 1].val == 0 && end == l.max && l.max < MAX)
        {
            return LeafStore::NotLocal;
        }
        // SAFETY: a live leaf of the tree (`leaf_walk`).
        let old = unsafe { &*l.node };
        let len = old.len();
        // The end of old slot `i` (a leaf: its pivot, or the bound for slot 15).
        let old_end = |i: usize| {
            if i + 1 < LEAF_SLOTS {
                old.piv(i)
            } else {
                l.max
            }
        };
        // The new leaf is: the old slots before `start` (`keep` of them whole, and the
        // one `start` cuts, if it begins before `start`), the items, the old slots from
        // `c0` on (the first one cut at `end` if it reaches past it: its end stays).
        // A NULL item next to a NULL old slot takes it in.
        let off = l.off;
        let cut_left = old.start(off, l.min) < start;
        let e_off = old_end(off);
        // Most stores end inside the slot they start in (an insert into a gap): no
        // second search.
        let r = if end <= e_off {
            off
        } else {
            old.search::<LEAF_SLOTS>(end - 1)
        };
        if CHECK && (off..=r).filter(|&i| old.leaf_slot(i) != 0).count() != meets {
            return LeafStore::Mismatch;
        }
        let cut_right = (if r == off { e_off } else { old_end(r) }) > end;
        let c0 = if cut_right { r } else { r + 1 };
        let null0 = items[0].val == 0;
        let (keep, keep_cut) = if cut_left {
            (off, !(null0 && old.leaf_slot(off) == 0))
        } else {
            (
                off - usize::from(off > 0 && null0 && old.leaf_slot(off - 1) == 0),
                false,
            )
        };
        let c = len - c0;
        let drop_item = c > 0 && items[k - 1].val == 0 && old.leaf_slot(c0) == 0;
        let mid = keep + usize::from(keep_cut) + k - usize::from(drop_item);
        let n = mid + c;
        if n > LEAF_SLOTS || (n < MIN_LEAF && h > 1 && l.max != MAX) {
            return LeafStore::NotLocal;
        }
        if h == 1 && n == 1 && null0 {
            // An all-NULL root leaf gives way to the empty tree.
            self.empty_root(tree, l);
            return LeafStore::Stored;
        }
        let new = self.new_leaf(tree, l);
        let nw = new.1;
        let mut j = keep;
        // SAFETY: (`new_leaf`) `nw` is the new leaf's words, ours alone; the entries
        // written are `keep..mid`, `mid <= n <= LEAF_SLOTS`.
        unsafe {
            if keep_cut {
                // Slot `off` stays where it was, cut at `start`.
                *nw.add(j) = start;
                j += 1;
            }
            for x in &items[..k - usize::from(drop_item)] {
                if j + 1 < LEAF_SLOTS {
                    *nw.add(j) = x.end;
                }
                *nw.add(LEAF_SLOT0 + j) = x.val;
                j += 1;
            }
        }
        debug_assert_eq!(j, mid);
        // SAFETY: `nw` is from `new_leaf`, its entries `[0, mid)` written.
        unsafe { self.finish_leaf(tree, l, new, c0, n) };
        LeafStore::Stored
    }

    /// The leaf-local store of one entry (Linux: `mas_wr_node_store` of one range):
    /// a VMA stored into part or all of one NULL range (`vma_iter_store_new` into a
    /// gap), or NULL stored over exactly one VMA, taking in the NULL ranges beside it
    /// (`vma_iter_clear` of one VMA). The common shapes of [`Self::store_leaf`] with
    /// none of its general bookkeeping; false, changing nothing, for anything else
    /// (`store_leaf` then decides).
    #[inline]
    fn store_one(&mut self, tree: &VmaTree, start: usize, end: usize, val: usize) -> bool {
        let h = self.height;
        let l = self.leaf_walk(start);
        // SAFETY: a live leaf of the tree (`leaf_walk`).
        let old = unsafe { &*l.node };
        let len = old.len();
        let off = l.off;
        let e0 = if off + 1 < LEAF_SLOTS {
            old.piv(off)
        } else {
            l.max
        };
        let cur = old.leaf_slot(off);
        // The new leaf: old slots `[0, a)`, up to three new entries, old slots `[b, len)`.
        let (a, b, n);
        let mut mid = [(0usize, 0usize); 3];
        let m;
        if val != 0 {
            // Into a NULL range: NULL before and after it where the range is left over.
            if cur != 0 || end > e0 {
                return false;
            }
            let head = old.start(off, l.min) < start;
            let tail = end < e0;
            (a, b) = (off, off + 1);
            let mut k = 0;
            if head {
                mid[k] = (start, 0);
                k += 1;
            }
            mid[k] = (end, val);
            k += 1;
            if tail {
                mid[k] = (e0, 0);
                k += 1;
            }
            m = k;
            n = len - 1 + m;
        } else {
            // NULL over one whole VMA, merged with NULL neighbours in the leaf. At the
            // leaf's edge the neighbour is in the next leaf: `store_leaf` refuses it.
            if cur == 0
                || end != e0
                || old.start(off, l.min) != start
                || (off == 0 && l.min > 0)
                || (off + 1 == len && l.max < MAX)
            {
                return false;
            }
            let pn = usize::from(off > 0 && old.leaf_slot(off - 1) == 0);
            let nn = usize::from(off + 1 < len && old.leaf_slot(off + 1) == 0);
            let e = if nn == 1 { old.end(off + 1, l.max) } else { e0 };
            (a, b) = (off - pn, off + 1 + nn);
            mid[0] = (e, 0);
            m = 1;
            n = len - pn - nn;
            if h == 1 && n == 1 {
                self.empty_root(tree, l);
                return true;
            }
        }
        if n > LEAF_SLOTS || (n < MIN_LEAF && h > 1 && l.max != MAX) {
            return false;
        }
        let new = self.new_leaf(tree, l);
        let nw = new.1;
        for (i, &(e, v)) in mid[..m].iter().enumerate() {
            // SAFETY: (`new_leaf`) entries `a..a + m` of the new leaf's words, ours
            // alone; `a + m <= n <= LEAF_SLOTS`.
            unsafe {
                if a + i + 1 < LEAF_SLOTS {
                    *nw.add(a + i) = e;
                }
                *nw.add(LEAF_SLOT0 + a + i) = v;
            }
        }
        // SAFETY: `nw` is from `new_leaf`, its entries `[0, a + m)` written.
        unsafe { self.finish_leaf(tree, l, new, b, n) };
        true
    }

    /// A leaf-local store that leaves a root leaf all NULL: the tree becomes empty.
    fn empty_root(&mut self, tree: &VmaTree, l: Level) {
        self.seq += 1;
        tree.seq.store(self.seq, Ordering::Relaxed);
        self.retire(l.node, false);
        self.set_root(tree, ptr::null_mut(), 0);
    }

    /// Start replacing the leaf of `l` (the writer's current leaf) by a new one with
    /// the same bounds (Linux: the `mas_wr_node_store` / `mas_replace_node` pair): a
    /// node from the reservation holding a copy of the old leaf's words, returned as
    /// plain integers (`AtomicUsize` has the layout of `usize`; slots at
    /// `LEAF_SLOT0`). The old slots `[0, a)` stay where they are: the caller writes the
    /// new entries from `a` on, then calls [`Self::finish_leaf`]. The old leaf is
    /// retired here.
    #[inline(always)]
    fn new_leaf(&mut self, tree: &VmaTree, l: Level) -> (*mut Node, *mut usize) {
        self.seq += 1;
        tree.seq.store(self.seq, Ordering::Relaxed);
        self.retire(l.node, false);
        let p = self.take_node();
        // SAFETY: `p` is a node from the reservation, ours alone until `finish_leaf`
        // publishes it (so plain writes race with nothing); `l.node` is a live leaf
        // that only this writer ever writes (and not meanwhile), so plain reads of it
        // race with no write. The whole-node copy is cheaper than two copies of the
        // kept prefix; what does not stay is written over.
        unsafe {
            let nw = (*p).w.as_mut_ptr() as *mut usize;
            ptr::copy_nonoverlapping((*l.node).w.as_ptr() as *const usize, nw, W);
            (p, nw)
        }
    }

    /// Finish the leaf [`Self::new_leaf`] started: its entries before `n - (len - b)`
    /// are written; the old slots `[b, len)` follow with their ends, `n` entries in all.
    /// Publish it with one store of its pointer (into the parent's slot, or as the
    /// root) and update the gaps above; the path stays current.
    ///
    /// # Safety
    /// `(p, nw)` is the last `new_leaf`'s, for the leaf `l`, not yet finished; `n <=
    /// LEAF_SLOTS` and its first `n - (len - b)` entries are written.
    #[inline(always)]
    unsafe fn finish_leaf(
        &mut self,
        tree: &VmaTree,
        l: Level,
        (p, nw): (*mut Node, *mut usize),
        b: usize,
        n: usize,
    ) {
        let h = self.height;
        // SAFETY: the old leaf is retired but not freed before the next `publish`.
        let old = unsafe { &*l.node };
        let len = old.len();
        let c = len - b;
        // The suffix's new place.
        let mid_end = n - c;
        let ow = old.w.as_ptr() as *const usize;
        // SAFETY: as in `new_leaf`: the node is ours alone, the old leaf only read.
        // Every index is below `W`: pivots below `LEAF_SLOTS - 1`, slots `LEAF_SLOT0 +
        // i` for `i < LEAF_SLOTS` (`n <= LEAF_SLOTS`, `len <= LEAF_SLOTS`).
        unsafe {
            if mid_end != b {
                // The old slots from `b` move to `mid_end`: their ends (the last one's
                // is the leaf's bound), then every pivot word past them is `MAX`. (When
                // they stay in place the copy already holds them.)
                for i in 0..c {
                    if i + 1 < c {
                        *nw.add(mid_end + i) = *ow.add(b + i);
                    }
                    *nw.add(LEAF_SLOT0 + mid_end + i) = *ow.add(LEAF_SLOT0 + b + i);
                }
                if n < LEAF_SLOTS {
                    *nw.add(n - 1) = l.max;
                }
                // Growing, the words past `n` were past the old end too (`MAX`);
                // shrinking, those up to the old end need it.
                for i in n..len.min(LEAF_SLOTS - 1) {
                    *nw.add(i) = MAX;
                }
            }
            (*p).meta = n as u64 | LEAF_BIT;
        }
        // SAFETY: as above: not yet published; from here on read through atomics.
        let new = unsafe { &*p };
        if h == 1 {
            self.set_root(tree, p, 1);
        } else {
            let pa = self.path.at(h - 2);
            // SAFETY: `pa.node` is a live node of the tree; its slot words are atomics.
            // The new leaf is complete (built above) and covers the old one's range.
            let parent = unsafe { &*pa.node };
            parent.w[INT_SLOT0 + pa.off].store(p as usize, Ordering::SeqCst);
            // The leaf's largest NULL range, for the gaps above (a root leaf has
            // no parent to tell).
            let (mut prev, mut gap) = (l.min, 0);
            for i in 0..n {
                let e = new.end(i, l.max);
                if new.leaf_slot(i) == 0 {
                    gap = gap.max(e - prev);
                }
                prev = e;
            }
            self.update_gap(&self.path, h - 2, gap);
        }
        // The path stays current: only its leaf changed.
        self.leaf.node = p;
        self.path_seq = self.seq;
    }

    /// Store `items` (ends and values, covering `[start, end)` in order) over whatever
    /// the tree holds there, publishing the change as it goes. Linux: `mas_store`
    /// (`mas_wr_store_entry`: node store, split, rebalance or spanning store).
    #[inline]
    fn store(&mut self, tree: &VmaTree, start: usize, items_in: &[Item]) {
        if !self.work.is_null()
            && ((items_in.len() == 1
                && self.store_one(tree, start, items_in[0].end, items_in[0].val))
                || self.store_leaf::<false>(tree, start, items_in, 0) == LeafStore::Stored)
        {
            return;
        }
        self.store_nodes(tree, start, items_in);
    }

    /// The stores that change more than one leaf's contents (split, rebalance,
    /// spanning store, first root). Kept out of line: its kilobytes of level buffers
    /// would otherwise be set up on every leaf-local store's stack.
    #[inline(never)]
    fn store_nodes(&mut self, tree: &VmaTree, mut start: usize, items_in: &[Item]) {
        let mut items = [Item::default(); 2 * 4 + 1];
        let k = items_in.len();
        items[..k].copy_from_slice(items_in);
        let mut end = items[k - 1].end;
        debug_assert!(start < end);
        // NULL ranges never touch: take a neighbouring NULL range into a NULL edge.
        {
            let v = self.view();
            if items[0].val == 0 && start > 0 {
                let (s, _, x) = v.entry_at(start - 1);
                if x == 0 {
                    start = s;
                }
            }
            if items[k - 1].val == 0 && end < MAX {
                let (_, e, x) = v.entry_at(end);
                if x == 0 {
                    end = e;
                    items[k - 1].end = e;
                }
            }
        }
        self.seq += 1;
        tree.seq.store(self.seq, Ordering::Relaxed);
        if self.work.is_null() {
            let mut big = Big::new();
            if start > 0 {
                big.push(Item {
                    end: start,
                    ..Item::default()
                });
            }
            for x in &items[..k] {
                big.push(*x);
            }
            if end < MAX {
                big.push(Item {
                    end: MAX,
                    ..Item::default()
                });
            }
            big.normalize();
            if big.n == 1 && big.get(0).val == 0 {
                return;
            }
            let r = self.build(true, big.items(), 0);
            self.set_root(tree, r.val as *mut Node, 1);
            return;
        }
        // Filled in place: returning 768-byte paths by value costs copies.
        let mut lp = Path {
            lv: [const { MaybeUninit::uninit() }; MAX_H],
            height: 0,
        };
        let mut rp = Path {
            lv: [const { MaybeUninit::uninit() }; MAX_H],
            height: 0,
        };
        self.walk(start, &mut lp);
        self.walk(end - 1, &mut rp);
        let h = self.height;
        let mut d = h - 1;
        // The leaf level: the left leaf before `start`, the items, the right leaf
        // after `end`.
        let (mut ba, mut bb) = (Big::new(), Big::new());
        let (mut big, mut up) = (&mut ba, &mut bb);
        let (ll, rl) = (lp.at(d), rp.at(d));
        // SAFETY: path nodes are live nodes of the tree.
        let (lnode, rnode) = unsafe { (&*ll.node, &*rl.node) };
        big.push_slots(lnode, 0, ll.off, ll.max);
        if lnode.start(ll.off, ll.min) < start {
            big.push(Item {
                end: start,
                val: lnode.slot(ll.off),
                gap: 0,
            });
        }
        for x in &items[..k] {
            big.push(*x);
        }
        if rnode.end(rl.off, rl.max) > end {
            big.push(rnode.item(rl.off, rl.max));
        }
        big.push_slots(rnode, rl.off + 1, rnode.len(), rl.max);
        let (mut cmin, mut cmax) = (ll.min, rl.max);
        loop {
            let leaf = d == h - 1;
            let (cap, min_fill) = if leaf {
                (LEAF_SLOTS, MIN_LEAF)
            } else {
                (INT_SLOTS, MIN_INT)
            };
            let (lnode, rnode) = (lp.at(d).node, rp.at(d).node);
            self.retire(lnode, false);
            if rnode != lnode {
                self.retire(rnode, false);
            }
            let mut sib: *mut Node = ptr::null_mut();
            let mut left_full = cmax == MAX;
            let (mut pl, mut pr) = (0, 0);
            if d > 0 {
                let (pa, pb) = (lp.at(d - 1), rp.at(d - 1));
                // SAFETY: live path nodes.
                let (pln, prn) = unsafe { (&*pa.node, &*pb.node) };
                (pl, pr) = (pa.off, pb.off);
                if big.n < min_fill && cmax != MAX {
                    // Underflow: take in a sibling (Linux: `mas_rebalance`).
                    if pl > 0 {
                        sib = pln.child(pl - 1);
                        // SAFETY: a live child.
                        big.prepend_node(unsafe { &*sib }, cmin);
                        pl -= 1;
                        cmin = pln.start(pl, pa.min);
                    } else if pr + 1 < prn.len() {
                        sib = prn.child(pr + 1);
                        pr += 1;
                        let e = prn.end(pr, pb.max);
                        // SAFETY: a live child.
                        big.push_slots(unsafe { &*sib }, 0, unsafe { (*sib).len() }, e);
                        cmax = e;
                    }
                } else if big.n > cap && pa.node == pb.node && pl > 0 {
                    // Overflow: push into the left sibling if it has room (Linux:
                    // `mas_push_data`), filling it.
                    // SAFETY: a live child.
                    let s = unsafe { &*pln.child(pl - 1) };
                    if s.len() + big.n <= 2 * cap {
                        sib = pln.child(pl - 1);
                        big.prepend_node(s, cmin);
                        pl -= 1;
                        cmin = pln.start(pl, pa.min);
                        left_full = true;
                    }
                }
                if !sib.is_null() {
                    self.retire(sib, false);
                }
            }
            if leaf {
                big.normalize();
            }
            // Split into nodes (Linux: `mab_calc_split`): even parts, or full nodes
            // first where the level ends (appends) or after a push.
            let parts = big.n.div_ceil(cap);
            let mut out = [Item::default(); 4];
            let mut at = 0;
            let mut lo = cmin;
            for (j, o) in out[..parts].iter_mut().enumerate() {
                let take = if left_full {
                    if j + 1 < parts { cap } else { big.n - at }
                } else {
                    big.n / parts + usize::from(j < big.n % parts)
                };
                let (x, y) = (at, at + take);
                *o = self.build(leaf, &big.items()[x..y], lo);
                lo = o.end;
                at = y;
            }
            debug_assert_eq!(lo, cmax);
            if d == 0 {
                // The root level: one node is the new root, more get a new root above.
                let (mut r, mut height) = if parts == 1 {
                    (out[0].val as *mut Node, h)
                } else {
                    (self.build(false, &out[..parts], 0).val as *mut Node, h + 1)
                };
                // A root with one child gives way to the child; an all-NULL leaf root
                // to the empty tree.
                loop {
                    // SAFETY: `r` was built by this store or is a live node below it.
                    let n = unsafe { &*r };
                    if !n.is_leaf() && n.len() == 1 {
                        let c = n.child(0);
                        self.retire(r, false);
                        r = c;
                        height -= 1;
                    } else if n.is_leaf() && n.len() == 1 && n.slot(0) == 0 {
                        self.retire(r, false);
                        r = ptr::null_mut();
                        height = 0;
                        break;
                    } else {
                        break;
                    }
                }
                self.set_root(tree, r, height);
                return;
            }
            let (pa, pb) = (lp.at(d - 1), rp.at(d - 1));
            if parts == 1 && pa.node == pb.node && pl == pr {
                // One node for one node: publish it with one store into the parent's
                // slot, then fix the gaps above in place.
                // SAFETY: `pa.node` is a live node of the tree; its slot and gap words
                // are atomics. The new child is complete (built above).
                let parent = unsafe { &*pa.node };
                parent.w[INT_SLOT0 + pl].store(out[0].val, Ordering::SeqCst);
                self.update_gap(&lp, d - 1, out[0].gap);
                return;
            }
            // The parent level changes: rebuild it around the new nodes, cutting out
            // the children between the boundary ones.
            let (lnode, rnode) = (lp.at(d).node, rp.at(d).node);
            // SAFETY: live path nodes.
            let (pln, prn) = unsafe { (&*pa.node, &*pb.node) };
            up.n = 0;
            up.push_slots(pln, 0, pl, pa.max);
            for x in &out[..parts] {
                up.push(*x);
            }
            let cut = |c: *mut Node| c != lnode && c != rnode && c != sib;
            if pa.node == pb.node {
                for i in pl..=pr {
                    let c = pln.child(i);
                    if cut(c) {
                        self.retire(c, true);
                    }
                }
            } else {
                for i in pl..pln.len() {
                    let c = pln.child(i);
                    if cut(c) {
                        self.retire(c, true);
                    }
                }
                for i in 0..=pr {
                    let c = prn.child(i);
                    if cut(c) {
                        self.retire(c, true);
                    }
                }
            }
            up.push_slots(prn, pr + 1, prn.len(), pb.max);
            core::mem::swap(&mut big, &mut up);
            cmin = pa.min;
            cmax = pb.max;
            d -= 1;
        }
    }

    /// Child `off` of the node at level `d` of `path` now has gap `g`: store it and
    /// carry the change up while it changes the parent's figure (Linux:
    /// `mas_update_gap`). In place: see the module doc for why readers allow it.
    fn update_gap(&self, path: &Path, mut d: usize, mut g: usize) {
        loop {
            let l = path.at(d);
            // SAFETY: a live node of the tree; gaps are atomics.
            let n = unsafe { &*l.node };
            if n.gap(l.off) == g {
                return;
            }
            n.w[INT_GAP0 + l.off].store(g, Ordering::Relaxed);
            if d == 0 {
                return;
            }
            g = n.max_gap();
            d -= 1;
        }
    }

    fn set_root(&mut self, tree: &VmaTree, r: *mut Node, height: usize) {
        self.work = r;
        self.height = height;
        tree.root.store(r, Ordering::SeqCst);
    }

    /// Insert `[start, end) → vma` over NULL space. Linux: `vma_iter_store_new()`.
    pub(super) fn insert(&mut self, tree: &VmaTree, start: usize, end: usize, vma: VmaRef) {
        debug_assert!(start < end);
        debug_assert!(
            self.view().intersection(start, end).is_none(),
            "insert over a VMA"
        );
        self.store(
            tree,
            start,
            &[Item {
                end,
                val: vma as *const Vma as usize,
                gap: 0,
            }],
        );
        self.count += 1;
    }

    /// Move the VMA starting at `old` to `[start, end) → vma` in one store if the new
    /// range overlaps no other VMA; returns false, changing nothing, otherwise (or if
    /// there is no such VMA). Linux: `vma_iter_store()` over a VMA's new range.
    pub(super) fn replace(
        &mut self,
        tree: &VmaTree,
        old: usize,
        start: usize,
        end: usize,
        vma: VmaRef,
    ) -> bool {
        debug_assert!(start < end);
        if self.work.is_null() {
            return false;
        }
        // The VMA and the free space around it, read in its leaf where the leaf
        // holds its neighbours (NULL ranges never touch, so a NULL neighbour is all
        // the free space on that side), else from the tree.
        let l = self.leaf_walk(old);
        // SAFETY: a live leaf of the tree (`leaf_walk`).
        let node = unsafe { &*l.node };
        if node.leaf_slot(l.off) == 0 || node.start(l.off, l.min) != old {
            return false;
        }
        let e_end = node.end(l.off, l.max);
        let free_lo = match l.off {
            0 => None,
            o if node.leaf_slot(o - 1) == 0 => Some(node.start(o - 1, l.min)),
            _ => Some(old),
        };
        let free_hi = match l.off + 1 {
            o if o >= node.len() => None,
            o if node.leaf_slot(o) == 0 => Some(node.end(o, l.max)),
            _ => Some(e_end),
        };
        let v = self.view();
        let lo_ok = match free_lo {
            Some(f) => start >= f,
            None => !v.prev_before(old).is_some_and(|p| p.end > start),
        };
        let hi_ok = match free_hi {
            Some(f) => end <= f,
            None => !v.find(e_end).is_some_and(|n| n.start < end),
        };
        if !lo_ok || !hi_ok {
            return false;
        }
        let e = (old, e_end);
        // Everything between the old and new ranges is NULL: store over the union.
        let (us, ue) = (e.0.min(start), e.1.max(end));
        let mut items = [Item::default(); 3];
        let mut k = 0;
        if us < start {
            items[k].end = start;
            k += 1;
        }
        items[k] = Item {
            end,
            val: vma as *const Vma as usize,
            gap: 0,
        };
        k += 1;
        if end < ue {
            items[k].end = ue;
            k += 1;
        }
        self.store(tree, us, &items[..k]);
        true
    }

    /// Store the layout `new` (VMA ranges, in any order) over `[lo, hi)`, NULL
    /// between them, with one store, if the tree holds exactly `old` VMAs meeting
    /// `[lo, hi)` (those the layout replaces: the caller's updated and removed VMAs)
    /// and the new ranges lie inside it without overlapping; returns false, changing
    /// nothing, otherwise. Linux: the `vma_iter_store` of `commit_merge`.
    pub(super) fn store_layout(
        &mut self,
        tree: &VmaTree,
        lo: usize,
        hi: usize,
        new: &mut [(usize, usize, VmaRef)],
        old: usize,
    ) -> bool {
        // At most four ranges, usually in order already: an insertion sort, inline.
        for i in 1..new.len() {
            let mut j = i;
            while j > 0 && new[j - 1].0 > new[j].0 {
                new.swap(j - 1, j);
                j -= 1;
            }
        }
        let mut at = lo;
        for n in new.iter() {
            if n.0 < at || n.0 >= n.1 || n.1 > hi {
                return false;
            }
            at = n.1;
        }
        let mut items = [Item::default(); 2 * 4 + 1];
        let mut k = 0;
        let mut at = lo;
        for n in new.iter() {
            if at < n.0 {
                items[k].end = n.0;
                k += 1;
            }
            items[k] = Item {
                end: n.1,
                val: n.2 as *const Vma as usize,
                gap: 0,
            };
            k += 1;
            at = n.1;
        }
        if at < hi {
            items[k].end = hi;
            k += 1;
        }
        // The count is checked in the leaf the store replaces slots of, or by a walk
        // of the range when the store is not leaf-local.
        let local = if self.work.is_null() {
            LeafStore::NotLocal
        } else {
            self.store_leaf::<true>(tree, lo, &items[..k], old)
        };
        match local {
            LeafStore::Mismatch => return false,
            LeafStore::NotLocal => {
                if self.vmas_meeting(lo, hi) != old {
                    return false;
                }
                self.store_nodes(tree, lo, &items[..k]);
            }
            LeafStore::Stored => {}
        }
        self.count = self.count + new.len() - old;
        true
    }

    /// Erase the VMA starting at `start`; returns it. Linux: `vma_iter_clear()`.
    pub(super) fn erase(&mut self, tree: &VmaTree, start: usize) -> Option<VmaRef> {
        let found = !self.work.is_null() && {
            let l = self.leaf_walk(start);
            // SAFETY: a live leaf of the tree (`leaf_walk`).
            let node = unsafe { &*l.node };
            node.leaf_slot(l.off) != 0 && node.start(l.off, l.min) == start
        };
        debug_assert!(found, "erase of missing VMA tree entry {start:#x}");
        if !found {
            return None;
        }
        let l = self.leaf;
        // SAFETY: as above.
        let node = unsafe { &*l.node };
        let (end, vma) = (node.end(l.off, l.max), vma_of(node.leaf_slot(l.off)));
        self.clear_span(tree, start, end, 1);
        Some(vma)
    }

    /// Number of VMAs meeting `[lo, hi)`: counted in the leaf covering `lo` when the
    /// range ends inside it, else by a walk of the range.
    fn vmas_meeting(&mut self, lo: usize, hi: usize) -> usize {
        if self.work.is_null() || lo >= hi {
            return 0;
        }
        let l = self.leaf_walk(lo);
        if hi <= l.max {
            // SAFETY: a live leaf of the tree (`leaf_walk`).
            let node = unsafe { &*l.node };
            let mut n = 0;
            let mut i = l.off;
            while i < node.len() && node.start(i, l.min) < hi {
                n += usize::from(node.leaf_slot(i) != 0);
                i += 1;
            }
            return n;
        }
        let mut n = 0;
        self.view().for_each_in(lo, hi, &mut |_| n += 1);
        n
    }

    /// Erase every VMA starting in `[start, end)` in one spanning store; returns how
    /// many. Needs [`Self::prealloc_erase_range`]. Linux: `vma_iter_clear_gfp()`.
    /// (The engine erases listed VMAs with [`Self::erase_span`]; the tree's own tests
    /// drive arbitrary ranges through this.)
    #[cfg(test)]
    pub(super) fn erase_range(&mut self, tree: &VmaTree, start: usize, end: usize) -> usize {
        if self.work.is_null() || start >= end {
            return 0;
        }
        // The first and last VMAs starting in the range, from the leaf covering
        // `start` when the range ends inside it.
        let l = self.leaf_walk(start);
        // SAFETY: a live leaf of the tree (`leaf_walk`).
        let node = unsafe { &*l.node };
        let len = node.len();
        let mut i = l.off + usize::from(node.start(l.off, l.min) < start);
        if i < len && node.leaf_slot(i) == 0 {
            i += 1;
        }
        let (first, last, n) = if i < len && end <= l.max {
            let (mut last, mut n, mut j) = (None, 0, i);
            while j < len && node.start(j, l.min) < end {
                if node.leaf_slot(j) != 0 {
                    last = Some(j);
                    n += 1;
                }
                j += 1;
            }
            let Some(last) = last else { return 0 };
            (node.start(i, l.min), node.end(last, l.max), n)
        } else {
            let v = self.view();
            let Some(first) = v.next_from(start).filter(|e| e.start < end) else {
                return 0;
            };
            let Some(last) = v.prev_before(end) else {
                return 0;
            };
            let mut n = 0;
            v.for_each_in(first.start, last.end, &mut |_| n += 1);
            (first.start, last.end, n)
        };
        self.clear_span(tree, first, last, n);
        n
    }

    /// Erase the `n` VMAs that exactly fill `[start, end)` (the first starts at
    /// `start`, the last ends at `end`: the caller has them listed) in one store, with
    /// no walk to find or count them. Needs [`Self::prealloc_erase_range`]. Linux: the
    /// `vma_iter_clear_gfp()` of `vms_complete_munmap_vmas`, over the gathered range.
    pub(super) fn erase_span(&mut self, tree: &VmaTree, start: usize, end: usize, n: usize) {
        debug_assert!(start < end && n > 0);
        debug_assert_eq!(self.vmas_meeting(start, end), n, "erase_span: other VMAs");
        self.clear_span(tree, start, end, n);
    }

    /// Store NULL over `[start, end)`, which held `n` VMAs (one store, whatever `n`).
    fn clear_span(&mut self, tree: &VmaTree, start: usize, end: usize, n: usize) {
        self.store(
            tree,
            start,
            &[Item {
                end,
                ..Item::default()
            }],
        );
        self.count -= n;
    }

    /// End a batch: hand the nodes it unlinked to RCU (every store was published as it
    /// was made), in records from the reservation (Linux: `ma_free_rcu` per node).
    pub(super) fn publish(&mut self, _tree: &VmaTree) {
        if !self.pending.is_empty() {
            let pending = core::mem::take(&mut self.pending);
            let cache = &mut self.cache;
            // SAFETY: `prealloc` prepared the retirement and reserved the record blocks
            // (`records_for` the pending bound) on top of the stores' nodes, so `pop`
            // finds one each time; a cached node is a `RECORD_BYTES` block, ours alone.
            // Every pending node was unlinked by a store published before this point.
            unsafe { self.retirement.retire(&pending, || cache.pop().cast()) };
            self.pending = pending;
            self.pending.clear();
        }
        #[cfg(feature = "fault-inject")]
        if self.uncached {
            self.take_back(true);
            self.cache.drain();
        }
    }

    /// The tree as a view (the writer's own reads).
    pub(super) fn view(&self) -> TreeView<'_> {
        TreeView {
            root: self.work,
            seq: self.seq,
            stable: true,
            _p: PhantomData,
        }
    }

    /// Free every node. Only sound when no reader can reach the tree any more.
    ///
    /// # Safety
    /// No RCU reader or lock holder can access `tree` or this writer's nodes.
    pub(super) unsafe fn destroy(&mut self, tree: &VmaTree) {
        unsafe fn free_rec(p: *mut Node) {
            // SAFETY: `p` is a node of the tree or of a retired subtree, which
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
        self.path_seq = u64::MAX;
        self.count = 0;
        // What came back already goes to the cache, then everything cached to the heap;
        // batches still in flight are freed by the last of their callbacks.
        self.take_back(false);
        self.retirement.release();
        self.cache.drain();
        for n in core::mem::take(&mut self.pending) {
            // SAFETY: pending nodes are unlinked from the tree, and the contract says no
            // reader that might still hold one exists. Each is visited once.
            unsafe { free_retired_to_heap(n) };
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
    extern crate std;
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
                self.tw.insert(&self.tree, s, e, self.vmas[k]);
            }
        }

        fn erase(&mut self, k: usize) {
            if let Some((s, _)) = self.model.remove(&k) {
                let v = self.tw.erase(&self.tree, s).expect("present");
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
            assert_eq!(self.tw.replace(&self.tree, old, s, e, self.vmas[k]), free);
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
            assert_eq!(self.tw.erase_range(&self.tree, s, e), gone.len());
            self.tw.publish(&self.tree);
            self.check();
        }

        /// The present slots among `k..k + n` (at most four) merged into one VMA with one
        /// `store_layout`, then stored back as they were with another, the ranges given
        /// in reverse order; before that, the merge with a wrong count of old VMAs is
        /// refused and changes nothing.
        fn layout(&mut self, k: usize, n: usize) {
            let present: Vec<(usize, (usize, usize))> = self
                .model
                .range(k..k + n)
                .take(4)
                .map(|(&j, &r)| (j, r))
                .collect();
            let (Some(&(first, (lo, _))), Some(&(_, (_, hi)))) = (present.first(), present.last())
            else {
                return;
            };
            self.tw.prealloc(2).unwrap();
            let mut merged = [(lo, hi, self.vmas[first])];
            let c = present.len();
            for wrong in [c - 1, c + 1] {
                assert!(!self.tw.store_layout(&self.tree, lo, hi, &mut merged, wrong));
                self.check();
            }
            assert!(self.tw.store_layout(&self.tree, lo, hi, &mut merged, c));
            let mut want: Vec<(usize, usize)> = self
                .entries()
                .into_iter()
                .filter(|&(s, e)| e <= lo || s >= hi)
                .collect();
            want.push((lo, hi));
            want.sort_unstable();
            let mut seen = Vec::new();
            self.tree
                .view_locked()
                .for_each(|e| seen.push((e.start, e.end)));
            assert_eq!(seen, want);
            let mut back: Vec<(usize, usize, VmaRef)> = present
                .iter()
                .rev()
                .map(|&(j, (s, e))| (s, e, self.vmas[j]))
                .collect();
            assert!(self.tw.store_layout(&self.tree, lo, hi, &mut back, 1));
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
            for len in [1, P, 3 * P] {
                let end = addr + len;
                let free = es.iter().all(|e| e.1 <= addr || e.0 >= end);
                assert_eq!(v.is_free(addr, end), free, "is_free({addr:#x}, {end:#x})");
                assert_eq!(
                    v.around_free(addr, end).map(|(p, n)| (key(p), key(n))),
                    free.then(|| {
                        (
                            es.iter().copied().rev().find(|e| e.1 <= addr),
                            es.iter().copied().find(|e| e.0 >= end),
                        )
                    }),
                    "around_free({addr:#x}, {end:#x})"
                );
            }
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
        // 4,000 VMAs with holes: 8,001 entries (VMAs, NULL ranges between them and at
        // both ends). Appends fill leaves completely: 501 leaves, 51, 6, 1 root.
        assert_eq!(h.tree.view_locked().height(), 4);
        assert_eq!(h.tw.view().nodes(), 501 + 51 + 6 + 1);
        for k in (0..N).step_by(7) {
            h.query(range(k).0 + P / 2);
            h.query(range(k).1);
        }
        for k in (0..N).rev() {
            h.batch(&[(false, k)]);
        }
        assert_eq!(h.tree.view_locked().height(), 0);
    }

    /// `search` (the binary search every walk makes) against a linear scan, in leaves
    /// and internal nodes of every fill, at every slot boundary and inside every slot:
    /// catches a probe off by one and a `build` that leaves a pivot word unwritten
    /// (a stale word from the node's previous life misleads the search), which is why
    /// the nodes come dirty from the cache here.
    #[test]
    fn search_finds_the_covering_slot_at_every_fill() {
        let mut tw = TreeWriter::new();
        for leaf in [true, false] {
            let cap = if leaf { LEAF_SLOTS } else { INT_SLOTS };
            for n in 1..=cap {
                tw.reserve(1, 1).unwrap();
                // A node from the cache whose words hold stale values (zero: below
                // every index searched).
                let p = tw.cache.head;
                // SAFETY: a cached node, ours alone; its words are atomics.
                unsafe { (*p).w.iter().for_each(|w| w.store(0, Ordering::Relaxed)) };
                let (min, step) = (0x1000, 0x100);
                let items: Vec<Item> = (1..=n)
                    .map(|i| Item {
                        end: min + i * step,
                        val: if leaf { 0 } else { 8 * i },
                        gap: 0,
                    })
                    .collect();
                let made = tw.build(leaf, &items, min);
                // SAFETY: built above, not published: ours alone.
                let node = unsafe { &*(made.val as *const Node) };
                let max = min + n * step;
                for idx in (min..max).step_by(step / 4) {
                    let want = (0..n).find(|&i| idx < node.end(i, max)).unwrap();
                    assert_eq!(
                        node.offset_of(idx),
                        want,
                        "leaf {leaf}, {n} slots, {idx:#x}"
                    );
                }
                // SAFETY: never published; back to the cache for the next round.
                unsafe { tw.cache.push(made.val as *mut Node) };
            }
        }
        tw.cache.drain();
    }

    #[test]
    fn munmap_of_thousands_is_one_bounded_range_erase() {
        let mut h = Harness::new();
        for k in 0..N {
            h.batch(&[(true, k)]);
        }
        // The reservation of a range erase depends on the height only: 3(h + 1) + 1
        // nodes, 16 at height 4, whether 2 or 3,980 entries go, and the records that
        // hand at most 16 + 2 * 10 * (4 + 1 + 1) retired nodes to RCU.
        // Every retired node back first, so the reservation alone fills the cache.
        h.tw.retirement.seal();
        crate::sync::rcu::rcu_barrier();
        h.tw.take_back(false);
        assert_eq!(h.tw.retirement.in_flight(), 0);
        let before = h.tw.cache.len;
        assert_eq!(h.tree.view_locked().height(), 4);
        h.tw.prealloc_erase_range(0).unwrap();
        let records = rcu::Retirement::records_for(16 + 2 * INT_SLOTS * 6);
        assert_eq!(h.tw.cache.len, before.max(16 + records));
        h.tw.publish(&h.tree);
        let a0 = h.tw.allocs;
        h.erase_range(10, N - 10);
        assert!(h.tw.allocs - a0 <= 16);
        assert_eq!(h.tw.len(), 20);
        h.erase_range(0, N);
        assert_eq!(h.tw.len(), 0);
    }

    /// The leaf holding slot `k`'s VMA and the NULL range after it, if both are in
    /// one leaf with room around them (neither at the leaf's edge).
    fn inside_one_leaf(h: &Harness, k: usize) -> bool {
        let v = h.tree.view_locked();
        let (s, e) = range(k);
        let (a, b) = (v.walk(s).unwrap(), v.walk(e).unwrap());
        ptr::eq(a.n, b.n) && a.off > 0 && b.off + 1 < b.n.len()
    }

    #[test]
    fn a_change_inside_one_leaf_copies_one_node() {
        let mut h = Harness::new();
        for k in 0..N {
            h.batch(&[(true, k)]);
        }
        let k = (N / 2..N).find(|&k| inside_one_leaf(&h, k)).unwrap();
        let root = h.tree.view_locked().root;
        // The VMA's end moves into the gap after it: one new leaf, stored into the
        // parent's slot; the root (and every other internal node) stays.
        let a0 = h.tw.allocs;
        h.replace(k, 0, 1);
        assert_eq!(h.tw.allocs - a0, 1, "a VMA end moving into a gap");
        assert!(ptr::eq(root, h.tree.view_locked().root));
        // Its start moves down into the gap before it, and back.
        let a0 = h.tw.allocs;
        h.replace(k, -1, 2);
        h.replace(k, 0, 1);
        assert_eq!(h.tw.allocs - a0, 2, "two in-leaf moves");
        // Erasing a VMA in the middle of a leaf (its NULL neighbours merge).
        let a0 = h.tw.allocs;
        h.batch(&[(false, k)]);
        assert_eq!(h.tw.allocs - a0, 1, "an erase inside a leaf");
        let a0 = h.tw.allocs;
        h.batch(&[(true, k)]);
        assert_eq!(h.tw.allocs - a0, 1, "an insert into a leaf with room");
        assert!(ptr::eq(root, h.tree.view_locked().root));
        // A full leaf splits: two leaves and their parent, no more. (1,900 VMAs: 238
        // full leaves but the last, whose parent has 8 children: room for one more.)
        let mut h = Harness::new();
        for k in (0..N - 200).step_by(2) {
            h.batch(&[(true, k)]);
        }
        let a0 = h.tw.allocs;
        h.batch(&[(true, N - 200 - 29)]);
        assert_eq!(h.tw.allocs - a0, 3, "nodes for a split");
    }

    #[test]
    fn a_leaf_a_reader_reached_never_changes() {
        let mut h = Harness::new();
        for k in (0..2_000).step_by(2) {
            h.batch(&[(true, k)]);
        }
        let g = rcu::rcu_read_lock();
        let addr = range(500).0;
        let v: TreeView<'_> = TreeView {
            root: h.tree.view_rcu(&g).root,
            seq: 0,
            stable: false,
            _p: PhantomData,
        };
        let leaf = v.walk(addr).unwrap().n;
        let words =
            |n: &Node| -> Vec<usize> { n.w.iter().map(|w| w.load(Ordering::Relaxed)).collect() };
        let before = (leaf.meta, words(leaf));
        // A change inside the leaf (a new leaf stored into the parent's slot), then
        // splits, merges and a spanning store all around it.
        h.replace(500, 0, 2);
        assert_eq!((leaf.meta, words(leaf)), before);
        for k in (1..2_000).step_by(2) {
            h.batch(&[(true, k), (false, k - 1)]);
        }
        h.erase_range(100, 900);
        // Replaced long ago, still allocated (the guard holds it) and unchanged.
        assert_eq!((leaf.meta, words(leaf)), before);
        assert!(h.tw.retirement.in_flight() > 100);
        drop(g);
        h.batch(&[(true, 0)]);
    }

    #[test]
    fn lock_free_readers_see_consistent_leaves_during_writes() {
        use std::sync::atomic::AtomicBool;
        // Even slots stay; odd slots come and go, their ranges moving, and range erases
        // of odd runs happen: a reader looking up a stable VMA always finds exactly
        // it, and any lookup returns an entry that contains the address with its VMA.
        let mut h = Harness::new();
        for k in 0..1_200 {
            h.batch(&[(true, k)]);
        }
        let done = AtomicBool::new(false);
        let tree = &h.tree as *const VmaTree as usize;
        let vmas: Vec<usize> = h.vmas.iter().map(|v| *v as *const Vma as usize).collect();
        std::thread::scope(|s| {
            let readers: Vec<_> = (0..2)
                .map(|t| {
                    let (done, vmas) = (&done, &vmas);
                    s.spawn(move || {
                        // SAFETY: the harness outlives the scope; only RCU reads here.
                        let tree = unsafe { &*(tree as *const VmaTree) };
                        let mut n = 0u64;
                        while !done.load(Ordering::Relaxed) || n < 1000 {
                            let k = ((n as usize * 7 + t * 13) % 1_200) & !1;
                            let g = rcu::rcu_read_lock();
                            let v = tree.view_rcu(&g);
                            let e = v.lookup(range(k).0).expect("stable VMA lost");
                            assert_eq!(e.vma as *const Vma as usize, vmas[k]);
                            assert_eq!((e.start, e.end), range(k));
                            if let Some(e) = v.lookup(range(k + 1).0 + P) {
                                assert!(
                                    e.start <= range(k + 1).0 + P && range(k + 1).0 + P < e.end
                                );
                            }
                            drop(g);
                            n += 1;
                        }
                    })
                })
                .collect();
            for round in 0..40 {
                for k in (1..1_200).step_by(2) {
                    match (k / 2 + round) % 3 {
                        0 => h.batch(&[(false, k)]),
                        1 => h.batch(&[(true, k)]),
                        _ => h.replace(k, 0, 1 + round % 2),
                    }
                }
                h.batch(
                    &(1..1_200)
                        .step_by(2)
                        .take(3)
                        .map(|k| (true, k))
                        .collect::<Vec<_>>(),
                );
            }
            done.store(true, Ordering::Relaxed);
            for r in readers {
                r.join().unwrap();
            }
        });
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
        Layout(usize, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let k = 0..N;
        prop_oneof![
            6 => proptest::collection::vec((any::<bool>(), k.clone()), 1..4).prop_map(Op::Batch),
            1 => (k.clone(), 0..400usize).prop_map(|(a, n)| Op::EraseRange(a, (a + n).min(N))),
            3 => (k.clone(), -1..=1i8, 1..4usize).prop_map(|(k, d, l)| Op::Replace(k, d, l)),
            3 => (0..N * 3 + 8).prop_map(Op::Query),
            2 => (1..8usize, 0..N * 3, 0..N * 3).prop_map(|(l, a, b)| Op::Gap(l, a.min(b), a.max(b))),
            2 => (k.clone(), 1..6usize).prop_map(|(k, n)| Op::Layout(k, n)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

        /// Random batches, range erases, layouts, lookups and gap searches on a tree that
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
                    Op::Layout(k, n) => h.layout(k, n),
                }
            }
        }
    }
}
