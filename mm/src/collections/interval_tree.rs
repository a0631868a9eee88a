//! Augmented interval tree over inclusive file-page ranges: the index behind `i_mmap`.
//!
//! Linux: `vma_interval_tree` (`mm/interval_tree.c`, generated from
//! `include/linux/interval_tree_generic.h`) over `mapping->i_mmap`.
//!
//! An inode's `i_mmap` must answer "which VMAs map file pages `[a, b]`?": truncate and
//! hole punch (`unmap_mapping_range`) zap exactly those VMAs, rmap walks visit them,
//! and hugetlb PMD sharing (`huge_pmd_share`) looks for another VMA that maps the same
//! file page (`vma_interval_tree_foreach(svma, &mapping->i_mmap, idx, idx)`) to share
//! its page table. A list answers that in `O(n)`; this tree answers it by visiting only
//! the root-to-entry paths of the entries that overlap.
//!
//! # Design
//!
//! - Each entry is `[first, last]` (inclusive, in file pages: `vm_pgoff` and
//!   `vma_last_pgoff`) plus a `Copy` value. The same interval may be stored any number
//!   of times, with equal or different values.
//! - **Order** is by `first`, then by insertion sequence: Linux's insert sends a node
//!   with an equal start to the right, so entries with the same start iterate in
//!   insertion order there too.
//! - **Augmentation**: every node stores the largest `last` in its subtree (Linux:
//!   `shared.rb_subtree_last`), recomputed bottom-up wherever links change (Linux: the
//!   `RB_DECLARE_CALLBACKS_MAX` propagate/copy/rotate callbacks). A subtree whose
//!   largest `last` is below the query's `first` cannot overlap and is skipped; so is
//!   everything whose `first` is beyond the query's `last`.
//! - **Balance**: an AVL tree (Linux uses a red-black tree; AVL is simpler to check and
//!   at least as shallow: height ≤ 1.44·log2(n + 2)).
//! - **Storage**: nodes live in an arena (`Vec`) addressed by `u32` indices, with a free
//!   list of removed slots. That keeps the module free of `unsafe`, and makes
//!   insertion fallible on stable Rust ([`IntervalTree::try_insert`],
//!   [`IntervalTree::try_reserve`] via `Vec::try_reserve`; `Box::try_new` is unstable).
//!   In Linux the node is embedded in the VMA (`vma->shared.rb`), so insertion never
//!   allocates; `try_reserve` before a batch gives the same guarantee here. The arena
//!   keeps its high-water capacity until the tree is dropped, like a `Vec`.
//!
//! # Complexity (n entries, k reported)
//! - `insert`/`try_insert`: `O(log n)` (amortised: the arena may grow).
//! - `remove`/`remove_by`: `O(log n + d)`, d = entries with the same `first` and a
//!   subtree that could hold the target (in Linux the caller passes the node, `O(log n)`).
//! - `overlapping`: `O(log n + k)` when the overlapping entries are contiguous in start
//!   order (the common `i_mmap` shape), `O((k + 1)·log n)` worst case — the same bound as
//!   Linux's search, which visits the same nodes. Iterators do not allocate: their stack
//!   is a fixed array of one root-to-leaf path.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cmp::Ordering;
use core::fmt;
use core::iter::FusedIterator;

use crate::errno::Errno;

/// "No node" index (and the arena's size limit: indices are below it).
const NIL: u32 = u32::MAX;

/// Bound on the height of the tree, hence on an iterator's stack. The sparsest AVL tree
/// of height h has F(h + 2) − 1 nodes (F = Fibonacci); for h = 46 that is
/// F(48) − 1 ≈ 4.8·10⁹ > `u32::MAX`, so a tree of at most `u32::MAX` nodes is at most
/// 45 levels high.
const MAX_HEIGHT: usize = 46;

/// One entry (or, when on the free list, one unused slot).
#[derive(Clone, Copy)]
struct Node<T> {
    /// Linux: `ITSTART(node)` (`vma->vm_pgoff`).
    first: usize,
    /// Linux: `ITLAST(node)` (`vma_last_pgoff(vma)`).
    last: usize,
    /// Largest `last` in this subtree. Linux: `vma->shared.rb_subtree_last`.
    subtree_last: usize,
    /// Insertion sequence: orders entries with the same `first`.
    seq: u64,
    value: T,
    left: u32,
    /// For a free slot: the next free slot.
    right: u32,
    /// AVL height (a leaf is 1); 0 marks a free slot.
    height: u8,
}

/// An augmented interval tree of inclusive `[first, last]` ranges with `Copy` values.
///
/// Linux: `struct rb_root_cached` used as `mapping->i_mmap`, with the
/// `vma_interval_tree_*` operations. Values are compared only by [`remove`]
/// (`T: Eq`) or by the caller's predicate ([`remove_by`]), so `&'static Vma` handles
/// can be stored directly and matched by pointer (`vma_eq`).
///
/// [`remove`]: IntervalTree::remove
/// [`remove_by`]: IntervalTree::remove_by
#[derive(Clone)]
pub struct IntervalTree<T> {
    /// Arena: live nodes and free slots.
    nodes: Vec<Node<T>>,
    root: u32,
    /// Head of the free-slot list (linked through `right`).
    free: u32,
    len: usize,
    next_seq: u64,
}

impl<T: Copy> Default for IntervalTree<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + fmt::Debug> fmt::Debug for IntervalTree<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: Copy> IntervalTree<T> {
    /// An empty tree; does not allocate.
    ///
    /// Linux: `RB_ROOT_CACHED` (`mapping->i_mmap` of a new `address_space`).
    pub const fn new() -> Self {
        IntervalTree {
            nodes: Vec::new(),
            root: NIL,
            free: NIL,
            len: 0,
            next_seq: 0,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the tree has no entries.
    ///
    /// Linux: `RB_EMPTY_ROOT(&mapping->i_mmap.rb_root)` (`mapping_mapped` is its negation).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Make sure the next `additional` insertions do not allocate.
    ///
    /// Linux has no counterpart (the node is embedded in the VMA); this is how a caller
    /// that must not fail halfway through a batch reserves up front.
    pub fn try_reserve(&mut self, additional: usize) -> Result<(), Errno> {
        let free_slots = self.nodes.len() - self.len;
        let need = additional.saturating_sub(free_slots);
        if self.nodes.len().saturating_add(need) > NIL as usize {
            return Err(Errno::ENOMEM);
        }
        self.nodes.try_reserve(need).map_err(|_| Errno::ENOMEM)
    }

    /// Add the entry `[first, last]` → `value` after any entries with the same `first`.
    ///
    /// Linux: `vma_interval_tree_insert`. May allocate one arena slot (amortised); on
    /// allocation failure it aborts like any infallible allocation, see [`try_insert`].
    /// `first <= last` is required.
    ///
    /// [`try_insert`]: IntervalTree::try_insert
    pub fn insert(&mut self, first: usize, last: usize, value: T) {
        if self.free == NIL {
            assert!(self.nodes.len() < NIL as usize, "interval tree full");
            self.nodes.reserve(1);
        }
        self.link(first, last, value);
    }

    /// [`insert`](IntervalTree::insert) that reports allocation failure instead of
    /// aborting. On `Err(ENOMEM)` the tree is unchanged.
    ///
    /// Linux: `vma_interval_tree_insert` (which cannot fail: the node is in the VMA).
    pub fn try_insert(&mut self, first: usize, last: usize, value: T) -> Result<(), Errno> {
        if self.free == NIL {
            self.try_reserve(1)?;
        }
        self.link(first, last, value);
        Ok(())
    }

    /// Remove the first entry (in iteration order) that is exactly `[first, last]` and
    /// whose value satisfies `pred`; return its value.
    ///
    /// Linux: `vma_interval_tree_remove` (there the caller passes the node itself).
    pub fn remove_by(
        &mut self,
        first: usize,
        last: usize,
        mut pred: impl FnMut(T) -> bool,
    ) -> Option<T> {
        let i = self.find(self.root, first, last, &mut pred)?;
        let Node { seq, value, .. } = self.nodes[i as usize];
        self.root = self.remove_at(self.root, first, seq);
        self.len -= 1;
        if self.len == 0 {
            // Every slot is free: forget the free list, keep the capacity.
            self.nodes.clear();
            self.free = NIL;
        }
        Some(value)
    }

    /// Remove one entry `[first, last]` → `value`; return whether there was one.
    ///
    /// Linux: `vma_interval_tree_remove`.
    pub fn remove(&mut self, first: usize, last: usize, value: T) -> bool
    where
        T: Eq,
    {
        self.remove_by(first, last, |v| v == value).is_some()
    }

    /// The entries overlapping `[first, last]` (both inclusive, so touching endpoints
    /// overlap), as `(first, last, value)` in iteration order. Empty if `first > last`.
    ///
    /// Linux: `vma_interval_tree_foreach` (`vma_interval_tree_iter_first` /
    /// `vma_interval_tree_iter_next`).
    pub fn overlapping(&self, first: usize, last: usize) -> Overlapping<'_, T> {
        let mut it = Overlapping {
            nodes: &self.nodes,
            first,
            last,
            stack: [NIL; MAX_HEIGHT],
            depth: 0,
            #[cfg(test)]
            visited: 0,
        };
        if first <= last {
            it.push_left(self.root);
        }
        it
    }

    /// All entries as `(first, last, value)`, ordered by `first`, then insertion.
    ///
    /// Linux: an in-order walk of `mapping->i_mmap` (`vma_interval_tree_foreach` over
    /// `[0, ULONG_MAX]`).
    pub fn iter(&self) -> Overlapping<'_, T> {
        self.overlapping(0, usize::MAX)
    }

    // ---- internals -------------------------------------------------------------

    /// Take a slot (a free one, or a new one within the already reserved capacity),
    /// fill it and link it into the tree.
    fn link(&mut self, first: usize, last: usize, value: T) {
        debug_assert!(first <= last, "inverted interval [{first}, {last}]");
        let node = Node {
            first,
            last,
            subtree_last: last,
            seq: self.next_seq,
            value,
            left: NIL,
            right: NIL,
            height: 1,
        };
        self.next_seq += 1;
        let i = if self.free != NIL {
            let i = self.free;
            self.free = self.nodes[i as usize].right;
            self.nodes[i as usize] = node;
            i
        } else {
            debug_assert!(self.nodes.len() < self.nodes.capacity());
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        };
        self.root = self.insert_at(self.root, i);
        self.len += 1;
    }

    fn height(&self, i: u32) -> u8 {
        if i == NIL {
            0
        } else {
            self.nodes[i as usize].height
        }
    }

    fn subtree_last(&self, i: u32) -> usize {
        if i == NIL {
            0
        } else {
            self.nodes[i as usize].subtree_last
        }
    }

    /// Recompute `i`'s height and `subtree_last` from its children.
    ///
    /// Linux: `vma_interval_tree_compute_max` (the augmented callback).
    fn update(&mut self, i: u32) {
        let Node {
            left, right, last, ..
        } = self.nodes[i as usize];
        let height = 1 + self.height(left).max(self.height(right));
        let sub = last
            .max(self.subtree_last(left))
            .max(self.subtree_last(right));
        let n = &mut self.nodes[i as usize];
        n.height = height;
        n.subtree_last = sub;
    }

    fn rotate_right(&mut self, i: u32) -> u32 {
        let l = self.nodes[i as usize].left;
        self.nodes[i as usize].left = self.nodes[l as usize].right;
        self.nodes[l as usize].right = i;
        self.update(i);
        self.update(l);
        l
    }

    fn rotate_left(&mut self, i: u32) -> u32 {
        let r = self.nodes[i as usize].right;
        self.nodes[i as usize].right = self.nodes[r as usize].left;
        self.nodes[r as usize].left = i;
        self.update(i);
        self.update(r);
        r
    }

    /// Update `i` and restore the AVL balance at it; return the subtree's new root.
    fn rebalance(&mut self, i: u32) -> u32 {
        self.update(i);
        let Node { left, right, .. } = self.nodes[i as usize];
        let (hl, hr) = (self.height(left), self.height(right));
        if hl > hr + 1 {
            let ln = self.nodes[left as usize];
            if self.height(ln.left) < self.height(ln.right) {
                self.nodes[i as usize].left = self.rotate_left(left);
            }
            self.rotate_right(i)
        } else if hr > hl + 1 {
            let rn = self.nodes[right as usize];
            if self.height(rn.right) < self.height(rn.left) {
                self.nodes[i as usize].right = self.rotate_right(right);
            }
            self.rotate_left(i)
        } else {
            i
        }
    }

    /// Link node `new` into the subtree at `i`; return the subtree's new root.
    /// `new` has the largest sequence number, so it goes right of equal starts.
    fn insert_at(&mut self, i: u32, new: u32) -> u32 {
        if i == NIL {
            return new;
        }
        if self.nodes[new as usize].first < self.nodes[i as usize].first {
            let l = self.insert_at(self.nodes[i as usize].left, new);
            self.nodes[i as usize].left = l;
        } else {
            let r = self.insert_at(self.nodes[i as usize].right, new);
            self.nodes[i as usize].right = r;
        }
        self.rebalance(i)
    }

    /// The first node in order, within the subtree at `i`, that is exactly
    /// `[first, last]` with a value satisfying `pred`.
    fn find(
        &self,
        i: u32,
        first: usize,
        last: usize,
        pred: &mut impl FnMut(T) -> bool,
    ) -> Option<u32> {
        if i == NIL {
            return None;
        }
        let n = &self.nodes[i as usize];
        if n.subtree_last < last {
            return None;
        }
        match first.cmp(&n.first) {
            Ordering::Less => self.find(n.left, first, last, pred),
            Ordering::Greater => self.find(n.right, first, last, pred),
            Ordering::Equal => self
                .find(n.left, first, last, pred)
                .or_else(|| (n.last == last && pred(n.value)).then_some(i))
                .or_else(|| self.find(n.right, first, last, pred)),
        }
    }

    /// Unlink the node keyed `(first, seq)` (which must exist) from the subtree at `i`
    /// and free its slot; return the subtree's new root.
    fn remove_at(&mut self, i: u32, first: usize, seq: u64) -> u32 {
        let n = self.nodes[i as usize];
        match (first, seq).cmp(&(n.first, n.seq)) {
            Ordering::Less => {
                let l = self.remove_at(n.left, first, seq);
                self.nodes[i as usize].left = l;
            }
            Ordering::Greater => {
                let r = self.remove_at(n.right, first, seq);
                self.nodes[i as usize].right = r;
            }
            Ordering::Equal => {
                self.release(i);
                if n.left == NIL {
                    return n.right;
                }
                if n.right == NIL {
                    return n.left;
                }
                // Replace the node by its successor (Linux: `rb_erase_augmented`).
                let (right, succ) = self.take_min(n.right);
                self.nodes[succ as usize].left = n.left;
                self.nodes[succ as usize].right = right;
                return self.rebalance(succ);
            }
        }
        self.rebalance(i)
    }

    /// Unlink the leftmost node of the subtree at `i` (non-empty); return the
    /// subtree's new root and the unlinked node.
    fn take_min(&mut self, i: u32) -> (u32, u32) {
        let Node { left, right, .. } = self.nodes[i as usize];
        if left == NIL {
            return (right, i);
        }
        let (l, min) = self.take_min(left);
        self.nodes[i as usize].left = l;
        (self.rebalance(i), min)
    }

    /// Put slot `i` on the free list.
    fn release(&mut self, i: u32) {
        let n = &mut self.nodes[i as usize];
        n.height = 0;
        n.left = NIL;
        n.right = self.free;
        self.free = i;
    }
}

impl<'a, T: Copy> IntoIterator for &'a IntervalTree<T> {
    type Item = (usize, usize, T);
    type IntoIter = Overlapping<'a, T>;

    fn into_iter(self) -> Overlapping<'a, T> {
        self.iter()
    }
}

/// Iterator over the entries overlapping a range, from [`IntervalTree::overlapping`]
/// and [`IntervalTree::iter`]. Does not allocate.
///
/// Linux: `vma_interval_tree_iter_first` / `vma_interval_tree_iter_next`
/// (`interval_tree_subtree_search`).
pub struct Overlapping<'a, T> {
    nodes: &'a [Node<T>],
    first: usize,
    last: usize,
    /// Nodes still to visit (each followed by its right subtree): a subset of one
    /// root-to-leaf path.
    stack: [u32; MAX_HEIGHT],
    depth: usize,
    /// Nodes visited so far (tests check the search prunes).
    #[cfg(test)]
    visited: usize,
}

impl<T> Overlapping<'_, T> {
    /// Push `i` and its left descendants that may hold an overlap: a subtree whose
    /// largest `last` is below `first` cannot, and a node starting after `last` can
    /// only have overlaps in its left subtree.
    fn push_left(&mut self, mut i: u32) {
        while i != NIL {
            let n = &self.nodes[i as usize];
            #[cfg(test)]
            {
                self.visited += 1;
            }
            if n.subtree_last < self.first {
                break;
            }
            if n.first <= self.last {
                self.stack[self.depth] = i;
                self.depth += 1;
            }
            i = n.left;
        }
    }
}

impl<T: Copy> Iterator for Overlapping<'_, T> {
    type Item = (usize, usize, T);

    fn next(&mut self) -> Option<(usize, usize, T)> {
        while self.depth > 0 {
            self.depth -= 1;
            let n = &self.nodes[self.stack[self.depth] as usize];
            // Nodes starting after `last` are never pushed (nor is anything after them
            // in order, which all start at least as late).
            debug_assert!(n.first <= self.last);
            self.push_left(n.right);
            if n.last >= self.first {
                return Some((n.first, n.last, n.value));
            }
        }
        None
    }
}

impl<T: Copy> FusedIterator for Overlapping<'_, T> {}

impl<T: Copy> IntervalTree<T> {
    /// Check every structural invariant and describe the first broken one: order by
    /// `(first, seq)`, `first <= last`, stored heights and `subtree_last` correct, AVL
    /// balance, `len`, and a free list holding exactly the unused slots.
    ///
    /// Linux: `CONFIG_DEBUG_VM_RB`'s `vma_interval_tree` checks (`validate_mm` →
    /// `anon_vma_interval_tree_verify`, the augmented rbtree's `RB_DECLARE_CALLBACKS`
    /// invariants).
    pub fn validate(&self) -> Result<(), String> {
        fn walk<T: Copy>(
            t: &IntervalTree<T>,
            i: u32,
            depth: usize,
            prev: &mut Option<(usize, u64)>,
            count: &mut usize,
        ) -> Result<(u8, usize), String> {
            if i == NIL {
                return Ok((0, 0));
            }
            if depth > MAX_HEIGHT {
                return Err(format!(
                    "interval tree: deeper than {MAX_HEIGHT} (a cycle?)"
                ));
            }
            let n = *t
                .nodes
                .get(i as usize)
                .ok_or_else(|| format!("interval tree: link to slot {i} beyond the arena"))?;
            if n.height == 0 {
                return Err(format!("interval tree: free slot {i} linked into the tree"));
            }
            let (hl, sl) = walk(t, n.left, depth + 1, prev, count)?;
            let key = (n.first, n.seq);
            if prev.is_some_and(|p| p >= key) {
                return Err(format!("interval tree: order {prev:?} !< {key:?}"));
            }
            *prev = Some(key);
            *count += 1;
            if n.first > n.last || n.seq >= t.next_seq {
                return Err(format!(
                    "interval tree: bad entry [{}, {}] seq {}",
                    n.first, n.last, n.seq
                ));
            }
            let (hr, sr) = walk(t, n.right, depth + 1, prev, count)?;
            if hl.abs_diff(hr) > 1 || n.height != 1 + hl.max(hr) {
                return Err(format!(
                    "interval tree: height {} at {key:?} (children {hl}, {hr})",
                    n.height
                ));
            }
            let sub = n.last.max(sl).max(sr);
            if n.subtree_last != sub {
                return Err(format!(
                    "interval tree: subtree_last {} at {key:?}, actual {sub}",
                    n.subtree_last
                ));
            }
            Ok((n.height, sub))
        }
        let mut count = 0;
        walk(self, self.root, 0, &mut None, &mut count)?;
        if count != self.len {
            return Err(format!(
                "interval tree: {count} entries linked, len {}",
                self.len
            ));
        }
        let mut free = 0;
        let mut f = self.free;
        while f != NIL {
            let n = self
                .nodes
                .get(f as usize)
                .ok_or_else(|| format!("interval tree: free slot {f} beyond the arena"))?;
            if n.height != 0 {
                return Err(format!("interval tree: live slot {f} on the free list"));
            }
            free += 1;
            if free > self.nodes.len() {
                return Err(String::from("interval tree: free list cycle"));
            }
            f = n.right;
        }
        if free + self.len != self.nodes.len() {
            return Err(format!(
                "interval tree: {} slots, {} live, {free} free: slots leaked",
                self.nodes.len(),
                self.len
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
impl<T: Copy> IntervalTree<T> {
    /// [`validate`](Self::validate), panicking, plus the exact AVL height bound.
    fn check_invariants(&self) {
        if let Err(e) = self.validate() {
            panic!("{e}");
        }
        let mut height = 0u8;
        if self.root != NIL {
            height = self.nodes[self.root as usize].height;
        }
        // AVL bound: height < 1.4405·log2(n + 2) − 0.3277.
        let bound = 1.4405 * ((self.len + 2) as f64).log2() - 0.3277;
        assert!(
            f64::from(height) < bound,
            "height {height} for {} nodes",
            self.len
        );
        assert!(usize::from(height) <= MAX_HEIGHT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;

    fn all<T: Copy>(t: &IntervalTree<T>) -> Vec<(usize, usize, T)> {
        t.iter().collect()
    }

    fn over<T: Copy>(t: &IntervalTree<T>, a: usize, b: usize) -> Vec<(usize, usize, T)> {
        t.overlapping(a, b).collect()
    }

    #[test]
    fn empty_tree() {
        let mut t = IntervalTree::<u32>::new();
        t.check_invariants();
        assert!(t.is_empty());
        assert_eq!(t.len(), 0);
        assert!(all(&t).is_empty());
        assert!(over(&t, 0, usize::MAX).is_empty());
        assert!(!t.remove(0, 0, 1));
        assert_eq!(t.remove_by(0, 0, |_| true), None);
        assert!(IntervalTree::<u32>::default().is_empty());
        assert_eq!(format!("{t:?}"), "[]");
        t.check_invariants();
    }

    #[test]
    fn single_entry_boundaries() {
        let mut t = IntervalTree::new();
        t.insert(10, 20, 'a');
        t.check_invariants();
        assert_eq!(t.len(), 1);
        assert!(!t.is_empty());
        let hit = vec![(10, 20, 'a')];
        assert!(over(&t, 0, 9).is_empty());
        assert_eq!(over(&t, 0, 10), hit, "touching the start overlaps");
        assert_eq!(over(&t, 20, 30), hit, "touching the end overlaps");
        assert!(over(&t, 21, 30).is_empty());
        assert_eq!(over(&t, 15, 15), hit);
        assert_eq!(over(&t, 12, 18), hit, "query inside the entry");
        assert_eq!(over(&t, 0, usize::MAX), hit, "entry inside the query");
        assert!(over(&t, 20, 10).is_empty(), "inverted query");
        assert_eq!(format!("{t:?}"), "[(10, 20, 'a')]");
    }

    #[test]
    fn touching_endpoints_overlap() {
        let mut t = IntervalTree::new();
        for (i, s) in [0usize, 5, 10, 15].into_iter().enumerate() {
            t.insert(s, s + 4, i);
        }
        t.check_invariants();
        assert_eq!(over(&t, 4, 5), vec![(0, 4, 0), (5, 9, 1)]);
        assert_eq!(over(&t, 9, 10), vec![(5, 9, 1), (10, 14, 2)]);
        assert_eq!(over(&t, 14, 14), vec![(10, 14, 2)]);
        assert_eq!(over(&t, 19, 19), vec![(15, 19, 3)]);
        assert!(over(&t, 20, usize::MAX).is_empty());
        assert_eq!(over(&t, 3, 16).len(), 4);
    }

    #[test]
    fn extreme_endpoints() {
        let mut t = IntervalTree::new();
        t.insert(0, 0, 1);
        t.insert(usize::MAX, usize::MAX, 2);
        t.insert(0, usize::MAX, 3);
        t.check_invariants();
        assert_eq!(over(&t, 0, 0), vec![(0, 0, 1), (0, usize::MAX, 3)]);
        assert_eq!(
            over(&t, usize::MAX, usize::MAX),
            vec![(0, usize::MAX, 3), (usize::MAX, usize::MAX, 2)]
        );
        assert_eq!(over(&t, 1, usize::MAX - 1), vec![(0, usize::MAX, 3)]);
    }

    #[test]
    fn duplicates_keep_insertion_order() {
        let mut t = IntervalTree::new();
        t.insert(3, 9, 'x');
        t.insert(3, 9, 'y');
        t.insert(3, 9, 'x');
        t.insert(3, 4, 'z');
        t.insert(1, 2, 'w');
        t.check_invariants();
        assert_eq!(t.len(), 5);
        assert_eq!(
            all(&t),
            vec![
                (1, 2, 'w'),
                (3, 9, 'x'),
                (3, 9, 'y'),
                (3, 9, 'x'),
                (3, 4, 'z')
            ]
        );
        assert_eq!(over(&t, 5, 5), vec![(3, 9, 'x'), (3, 9, 'y'), (3, 9, 'x')]);
    }

    #[test]
    fn remove_exact_entry() {
        let mut t = IntervalTree::new();
        t.insert(0, 9, 'a');
        t.insert(0, 9, 'b');
        t.insert(0, 10, 'a');
        t.insert(1, 9, 'b');
        assert!(!t.remove(0, 9, 'c'), "value differs");
        assert!(!t.remove(0, 8, 'a'), "last differs");
        assert!(!t.remove(2, 9, 'b'), "first differs");
        assert_eq!(t.len(), 4);
        assert!(t.remove(0, 9, 'b'));
        t.check_invariants();
        assert!(!t.remove(0, 9, 'b'), "already removed");
        assert_eq!(all(&t), vec![(0, 9, 'a'), (0, 10, 'a'), (1, 9, 'b')]);
        assert!(t.remove(0, 10, 'a'));
        assert!(t.remove(0, 9, 'a'));
        assert!(t.remove(1, 9, 'b'));
        t.check_invariants();
        assert!(t.is_empty());
    }

    #[test]
    fn remove_one_of_identical_duplicates() {
        let mut t = IntervalTree::new();
        for _ in 0..3 {
            t.insert(4, 8, 7u8);
        }
        assert!(t.remove(4, 8, 7));
        t.check_invariants();
        assert_eq!(all(&t), vec![(4, 8, 7), (4, 8, 7)]);
    }

    /// `&'static` values without `Eq`, matched by pointer identity (how `i_mmap` holds VMAs).
    #[test]
    fn remove_by_pointer_identity() {
        struct Area(#[allow(dead_code)] u32);
        static A: Area = Area(1);
        static B: Area = Area(1);
        let mut t: IntervalTree<&'static Area> = IntervalTree::new();
        t.insert(0, 15, &A);
        t.insert(0, 15, &B);
        let got = t.remove_by(0, 15, |v| core::ptr::eq(v, &B));
        assert!(got.is_some_and(|v| core::ptr::eq(v, &B)));
        t.check_invariants();
        let left: Vec<_> = t.overlapping(7, 7).map(|(_, _, v)| v).collect();
        assert_eq!(left.len(), 1);
        assert!(core::ptr::eq(left[0], &A));
        assert!(t.remove_by(0, 15, |v| core::ptr::eq(v, &B)).is_none());
    }

    #[test]
    fn iteration_is_by_first_then_insertion() {
        let mut t = IntervalTree::new();
        // A fixed pseudo-random permutation of starts, with repeats.
        let mut x = 12345u64;
        let mut inserted = Vec::new();
        for i in 0..500usize {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let s = (x >> 40) as usize % 100;
            t.insert(s, s + i % 7, i);
            inserted.push((s, s + i % 7, i));
        }
        t.check_invariants();
        inserted.sort_by_key(|&(s, _, i)| (s, i)); // stable order within equal starts
        assert_eq!(all(&t), inserted);
        assert_eq!((&t).into_iter().count(), 500);
    }

    #[test]
    fn sequential_inserts_stay_balanced() {
        let mut t = IntervalTree::new();
        for i in 0..4096usize {
            t.insert(i, i + 3, i);
        }
        t.check_invariants();
        for i in (0..4096usize).rev() {
            t.insert(i, i, i);
        }
        t.check_invariants();
        assert_eq!(over(&t, 100, 100).len(), 5);
        for i in (0..4096usize).step_by(2) {
            assert!(t.remove(i, i + 3, i));
            assert!(t.remove(i, i, i));
        }
        t.check_invariants();
        for i in (1..4096usize).step_by(2) {
            assert!(t.remove(i, i + 3, i));
            assert!(t.remove(i, i, i));
        }
        t.check_invariants();
        assert!(t.is_empty());
    }

    /// `(hits, nodes visited)` of one query.
    fn visits(t: &IntervalTree<usize>, a: usize, b: usize) -> (usize, usize) {
        let mut it = t.overlapping(a, b);
        let k = it.by_ref().count();
        (k, it.visited)
    }

    /// The augmentation prunes: a query visits the paths to its hits, not the tree.
    #[test]
    fn queries_visit_only_paths_to_hits() {
        let mut t = IntervalTree::new();
        let n = 1usize << 16;
        for i in 0..n {
            t.insert(4 * i, 4 * i + 1, i);
        }
        t.check_invariants();
        let h = usize::from(t.nodes[t.root as usize].height);
        let (k, v) = visits(&t, 4 * 777 + 2, 4 * 777 + 3);
        assert_eq!(k, 0);
        assert!(v <= 2 * h, "miss: {v} visits");
        let (k, v) = visits(&t, 4 * 777, 4 * 777);
        assert_eq!(k, 1);
        assert!(v <= 2 * h, "point hit: {v} visits");
        let (k, v) = visits(&t, 4 * 1000, 4 * 1100);
        assert_eq!(k, 101);
        assert!(v <= 2 * k + 2 * h, "range: {v} visits for {k} hits");
        // One entry spanning everything: `subtree_last` no longer prunes anything on
        // the root path, yet starts beyond the query still stop the search.
        t.insert(0, usize::MAX, n);
        let (k, v) = visits(&t, 4 * 5, 4 * 5);
        assert_eq!(k, 2);
        assert!(v <= 2 * k + 2 * h, "spanning entry: {v} visits");
        let (k, v) = visits(&t, 4 * (n - 1), 4 * (n - 1));
        assert_eq!(k, 2);
        assert!(v <= 2 * k + 4 * h, "spanning entry, far end: {v} visits");
    }

    #[test]
    fn slots_are_reused_and_reset_when_empty() {
        let mut t = IntervalTree::new();
        for i in 0..100usize {
            t.insert(i, i, i);
        }
        for i in 0..50usize {
            assert!(t.remove(i, i, i));
        }
        t.check_invariants();
        for i in 0..50usize {
            t.insert(i, i, i);
        }
        t.check_invariants();
        assert_eq!(t.nodes.len(), 100, "freed slots reused");
        for i in 0..100usize {
            assert!(t.remove(i, i, i));
        }
        t.check_invariants();
        assert!(t.nodes.is_empty());
        assert_eq!(t.free, NIL);
    }

    #[test]
    fn try_reserve_then_try_insert() {
        let mut t = IntervalTree::new();
        t.try_reserve(8).unwrap();
        let cap = t.nodes.capacity();
        assert!(cap >= 8);
        for i in 0..8usize {
            t.try_insert(i, i + 1, i).unwrap();
        }
        assert_eq!(
            t.nodes.capacity(),
            cap,
            "reserved insertions did not allocate"
        );
        t.check_invariants();
        assert!(t.remove(3, 4, 3));
        t.try_reserve(1).unwrap();
        assert_eq!(
            t.nodes.capacity(),
            cap,
            "a free slot satisfies the reservation"
        );
        assert_eq!(t.try_reserve(usize::MAX), Err(Errno::ENOMEM));
        t.check_invariants();
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(usize, usize, u8),
        /// Remove the model's entry at this index (modulo its length), if any.
        RemoveExisting(usize),
        /// Remove an arbitrary (usually absent) triple.
        RemoveAny(usize, usize, u8),
        Query(usize, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..64usize, 0..16usize, 0..4u8).prop_map(|(s, l, v)| Op::Insert(s, s + l, v)),
            2 => any::<usize>().prop_map(Op::RemoveExisting),
            1 => (0..64usize, 0..16usize, 0..4u8).prop_map(|(s, l, v)| Op::RemoveAny(s, s + l, v)),
            3 => (0..80usize, 0..24usize).prop_map(|(s, l)| Op::Query(s, s + l)),
        ]
    }

    /// The naive model: `(first, last, value, seq)` in insertion order.
    fn model_overlapping(
        m: &[(usize, usize, u8, u64)],
        a: usize,
        b: usize,
    ) -> Vec<(usize, usize, u8)> {
        let mut v: Vec<_> = m.iter().filter(|e| e.0 <= b && a <= e.1).copied().collect();
        v.sort_by_key(|e| (e.0, e.3));
        v.into_iter().map(|(s, l, x, _)| (s, l, x)).collect()
    }

    fn model_remove(m: &mut Vec<(usize, usize, u8, u64)>, s: usize, l: usize, x: u8) -> bool {
        // The tree removes the first match in order, i.e. the oldest identical entry.
        match m.iter().position(|e| (e.0, e.1, e.2) == (s, l, x)) {
            Some(p) => {
                m.remove(p);
                true
            }
            None => false,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn random_ops_match_vec_model(ops in proptest::collection::vec(op(), 1..200)) {
            let mut t = IntervalTree::new();
            let mut m: Vec<(usize, usize, u8, u64)> = Vec::new();
            let mut seq = 0u64;
            for op in &ops {
                match *op {
                    Op::Insert(s, l, x) => {
                        t.insert(s, l, x);
                        m.push((s, l, x, seq));
                        seq += 1;
                    }
                    Op::RemoveExisting(k) => {
                        if !m.is_empty() {
                            let (s, l, x, _) = m[k % m.len()];
                            prop_assert!(model_remove(&mut m, s, l, x));
                            prop_assert!(t.remove(s, l, x), "{op:?}");
                        }
                    }
                    Op::RemoveAny(s, l, x) => {
                        let want = model_remove(&mut m, s, l, x);
                        prop_assert_eq!(t.remove(s, l, x), want, "{:?}", op);
                    }
                    Op::Query(a, b) => {
                        prop_assert_eq!(over(&t, a, b), model_overlapping(&m, a, b), "{:?}", op);
                    }
                }
                t.check_invariants();
                prop_assert_eq!(t.len(), m.len());
                prop_assert_eq!(t.is_empty(), m.is_empty());
            }
            prop_assert_eq!(all(&t), model_overlapping(&m, 0, usize::MAX));
        }
    }
}
