//! Merge, split, expand, shrink, modify and copy of VMAs, with Linux's results.
//!
//! Linux: `mm/vma.c` (`vma_merge_new_range`, `vma_merge_existing_range`,
//! `vma_modify`, `__split_vma`, `split_vma`, `vma_expand`, `vma_shrink`,
//! `vma_merge_extend`, `copy_vma`, `dup_anon_vma`, `is_mergeable_anon_vma`),
//! `mm/vma.c`/`mm/mmap.c` (`__mmap_region`, anonymous part).
//!
//! Every operation write-locks each VMA whose range or anon_vma changes before
//! changing it, preallocates tree memory before the first change (so ENOMEM leaves
//! everything as it was, apart from VMA write locks, as in Linux), and keeps
//! `map_count` equal to the number of tree entries.

use alloc::sync::Arc;

use super::anon::{self, AnonVma, AnonVmaRef};
use super::area::{FileRef, PAGE_SIZE, VmFlags, VmaRef, opt_vma_eq, pages, same_file, vma_eq};
use super::space::{MmWriteGuard, VmaIterator};
use crate::errno::Errno;

/// Linux: `enum vma_merge_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmaMergeState {
    /// Nothing attempted yet.
    Start,
    /// No merge possible; nothing changed.
    NoMerge,
    /// Merged.
    Success,
    /// Out of memory; nothing changed (except write locks).
    ErrorNomem,
}

/// Parameters and results of a merge. Linux: `struct vma_merge_struct` ("vmg").
pub struct VmaMergeStruct {
    /// Iterator position (Linux: `vmg->vmi`).
    pub vmi: VmaIterator,
    /// VMA before the range (or `middle` itself when the range starts inside it).
    pub prev: Option<VmaRef>,
    /// Existing VMA being modified (existing-range merges).
    pub middle: Option<VmaRef>,
    /// VMA after the range.
    pub next: Option<VmaRef>,
    /// The VMA that survives (output).
    pub target: Option<VmaRef>,
    /// Range start (rewritten to the merged span on success).
    pub start: usize,
    /// Range end.
    pub end: usize,
    /// pgoff of `start`.
    pub pgoff: usize,
    /// Proposed flags.
    pub flags: VmFlags,
    /// Proposed file.
    pub file: Option<FileRef>,
    /// Proposed anon_vma.
    pub anon_vma: Option<AnonVmaRef>,
    /// Memory-policy identity.
    pub policy: usize,
    /// userfaultfd context identity.
    pub uffd_ctx: usize,
    /// Anonymous name.
    pub anon_name: Option<Arc<str>>,
    /// Outcome.
    pub state: VmaMergeState,
    /// Caller guarantees nothing to merge on the right; iterator already at prev (brk).
    pub just_expand: bool,
    /// On OOM, report NOMERGE rather than ERROR_NOMEM (caller falls back).
    pub give_up_on_oom: bool,
    /// mremap source (2026 fix "anon_vma UAF on mremap() faulted, unfaulted merge").
    pub copied_from: Option<VmaRef>,
    remove_middle: bool,
    remove_next: bool,
}

impl VmaMergeStruct {
    /// A proposal for a new range. Linux: `VMG_STATE()`.
    pub fn new(start: usize, end: usize, pgoff: usize, flags: VmFlags) -> Self {
        VmaMergeStruct {
            vmi: VmaIterator::new(start),
            prev: None,
            middle: None,
            next: None,
            target: None,
            start,
            end,
            pgoff,
            flags,
            file: None,
            anon_vma: None,
            policy: 0,
            uffd_ctx: 0,
            anon_name: None,
            state: VmaMergeState::Start,
            just_expand: false,
            give_up_on_oom: false,
            copied_from: None,
            remove_middle: false,
            remove_next: false,
        }
    }

    /// A proposal to change `[start, end)` of `vma`, with `vma`'s attributes.
    /// Linux: `VMG_VMA_STATE()`.
    pub fn from_vma(
        g: &MmWriteGuard<'_>,
        prev: Option<VmaRef>,
        vma: VmaRef,
        start: usize,
        end: usize,
    ) -> Self {
        let pgoff = vma.pgoff() + pages(start.saturating_sub(vma.start()));
        let mut m = Self::new(start, end, pgoff, vma.flags());
        m.prev = prev;
        m.middle = Some(vma);
        m.file = vma.file(g);
        m.anon_vma = vma.anon_vma(g);
        m.policy = vma.policy();
        m.uffd_ctx = vma.uffd_ctx();
        m.anon_name = vma.anon_name(g);
        m
    }

    fn anon_ptr(&self) -> *const AnonVma {
        self.anon_vma
            .as_ref()
            .map_or(core::ptr::null(), |a| a.as_ptr())
    }

    /// True if the last operation ran out of memory. Linux: `vmg_nomem()`.
    pub fn nomem(&self) -> bool {
        self.state == VmaMergeState::ErrorNomem
    }
}

fn name_eq(a: &Option<Arc<str>>, b: &Option<Arc<str>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || **a == **b,
        _ => false,
    }
}

/// Linux: `can_merge_remove_vma()` — a VMA with a close hook may not be deleted.
fn can_merge_remove_vma(v: VmaRef) -> bool {
    !v.has_close()
}

/// Linux: `is_mergeable_vma()`. `g` is the write lock of `tgt`'s mm (the reads of
/// `vm_file` and the name assert it).
fn is_mergeable_vma(g: &MmWriteGuard<'_>, vmg: &VmaMergeStruct, tgt: VmaRef) -> bool {
    tgt.policy() == vmg.policy
        && ((tgt.flags() ^ vmg.flags) & !VmFlags::IGNORE_MERGE).is_empty()
        && same_file(tgt.file(g).as_ref(), vmg.file.as_ref())
        && tgt.uffd_ctx() == vmg.uffd_ctx
        && name_eq(&tgt.anon_name(g), &vmg.anon_name)
}

fn is_fork_child(g: &MmWriteGuard<'_>, v: Option<VmaRef>) -> bool {
    v.is_some_and(|v| v.is_fork_child(g))
}

/// Linux: `is_mergeable_anon_vma()` after 879bca0a2c4f and the 2026 `copied_from` fix.
fn is_mergeable_anon_vma(g: &MmWriteGuard<'_>, vmg: &VmaMergeStruct, tgt: VmaRef) -> bool {
    let tgt_anon = tgt.anon_vma_ptr();
    let src_anon = vmg.anon_ptr();
    match (tgt_anon.is_null(), src_anon.is_null()) {
        // Case 1: we will dup src's anon_vma into tgt.
        (true, false) => !is_fork_child(g, vmg.middle) && !is_fork_child(g, vmg.copied_from),
        // Case 2: the result simply keeps tgt's anon_vma.
        (false, true) => !tgt.is_fork_child(g),
        // Case 3: both or neither.
        _ => tgt_anon == src_anon,
    }
}

/// Linux: `can_vma_merge_left()` / `can_vma_merge_after()`.
fn can_vma_merge_left(g: &MmWriteGuard<'_>, vmg: &VmaMergeStruct) -> bool {
    let Some(prev) = vmg.prev else { return false };
    prev.end() == vmg.start
        && is_mergeable_vma(g, vmg, prev)
        && is_mergeable_anon_vma(g, vmg, prev)
        && prev.pgoff() + prev.pages() == vmg.pgoff
}

/// Linux: `can_vma_merge_right()` / `can_vma_merge_before()`, plus the three-way check.
fn can_vma_merge_right(g: &MmWriteGuard<'_>, vmg: &VmaMergeStruct, merge_left: bool) -> bool {
    let Some(next) = vmg.next else { return false };
    if vmg.end != next.start()
        || !is_mergeable_vma(g, vmg, next)
        || !is_mergeable_anon_vma(g, vmg, next)
        || next.pgoff() != vmg.pgoff + pages(vmg.end - vmg.start)
    {
        return false;
    }
    if !merge_left {
        return true;
    }
    // prev and next must also be compatible with each other.
    let (pa, na) = (
        vmg.prev.map_or(core::ptr::null(), |p| p.anon_vma_ptr()),
        next.anon_vma_ptr(),
    );
    pa.is_null() || na.is_null() || pa == na
}

fn aligned(x: usize) -> bool {
    x.is_multiple_of(PAGE_SIZE)
}

impl MmWriteGuard<'_> {
    fn attached_here(&self, v: VmaRef) -> bool {
        v.is_attached() && v.mm_id() == self.mm().id()
    }

    /// Debug check of a VMA an entry point was given: linked in this mm's tree at the
    /// range its fields say. The engine edits the tree by those fields (an entry is
    /// erased by its start), so a VMA whose fields and tree entry disagree would corrupt
    /// it. One tree lookup, in debug builds only.
    #[track_caller]
    fn debug_assert_linked(&self, v: VmaRef, what: &str) {
        debug_assert!(
            self.attached_here(v)
                && self.view().find(v.start()).is_some_and(|e| {
                    vma_eq(e.vma, v) && e.start == v.start() && e.end == v.end()
                }),
            "{what} {v:?} is not linked in this mm's tree at its range"
        );
    }

    /// Linux: `dup_anon_vma()` — if `src` is faulted and `dst` is not, give `dst` src's
    /// anon_vma and chain; record `dst` in `dup` so an abort can unlink it.
    fn dup_anon_vma(
        &mut self,
        dst: VmaRef,
        src: VmaRef,
        dup: &mut Option<VmaRef>,
    ) -> Result<(), Errno> {
        if src.has_anon_vma() && !dst.has_anon_vma() {
            self.vma_assert_write_locked(dst);
            drop(dst.replace_anon_vma(src.anon_vma(&*self)));
            let fail = self.fail_anon_clone();
            // SAFETY: `anon_vma_clone`'s contract: `src` is stable, its writers needing
            // the mmap write lock we hold; `dst` is write-locked in this hold (asserted
            // just above), which excludes its readers and leaves us its only writer; and
            // they differ, since `src` has an anon_vma and `dst` has none.
            unsafe { anon::anon_vma_clone(dst, src, fail)? };
            *dup = Some(dst);
        }
        Ok(())
    }

    fn abort_anon_dup(&mut self, dup: Option<VmaRef>) {
        if let Some(d) = dup {
            // SAFETY: `d` is a `dst` of `dup_anon_vma`, which write-locked it in this hold
            // of the mmap write lock: no reader can lock it and no other writer exists,
            // the exclusive access `unlink_anon_vmas` needs.
            unsafe { anon::unlink_anon_vmas(d) };
        }
    }

    /// Check that `[start, end)` holds no VMA other than those in `allowed`.
    fn range_only_contains(&self, start: usize, end: usize, allowed: &[Option<VmaRef>]) -> bool {
        let v = self.view();
        let mut it = VmaIterator::new(start);
        while let Some(x) = it.find(&v, end) {
            if !allowed.iter().any(|a| a.is_some_and(|a| vma_eq(a, x))) {
                return false;
            }
        }
        true
    }

    /// Expand `vmg.target` to `[vmg.start, vmg.end)`, deleting `vmg.next` if the range
    /// covers it entirely. Linux: `vma_expand()`.
    ///
    /// `T` the target, `N` next, `-` the rest of `[vmg.start, vmg.end)`:
    ///
    /// ```text
    /// before   ----TTTT----NNNN      the range ends at next's end
    /// after    TTTTTTTTTTTTTTTT      target expanded both ways, next deleted
    ///
    /// before   ----TTTT--  NNNN      next not reached (or none)
    /// after    TTTTTTTTTT  NNNN      target expanded, next untouched
    /// ```
    ///
    /// Whether target and next may merge is the caller's decision (Linux's too):
    /// this only carries it out. anon_vma propagation: from a removed `next`, and
    /// (2026 fix) from `vmg.copied_from`. Errors: ENOMEM (state ERROR_NOMEM unless
    /// `give_up_on_oom`), EINVAL for an inconsistent request.
    ///
    /// ASSUMPTIONS (checked with `debug_assert!`):
    /// - The caller holds the mmap write lock (`&mut self` proves it).
    /// - `vmg.target` is linked in this mm's tree at its range.
    /// - `vmg.next`, if set, is a VMA of this mm; if the range ends at its end, so that
    ///   it is deleted, it has no `vm_ops->close` (the caller checked
    ///   `can_merge_remove_vma()`, as Linux's callers do).
    /// - `vmg.pgoff` is the file page of `vmg.start` in target's numbering: the pages
    ///   target already maps keep their offsets.
    ///
    /// Refused, not assumed (EINVAL, nothing changed): no target, a target that is not
    /// an attached VMA of this mm, an empty or unaligned range, a range that does not
    /// contain the target, a range holding a VMA other than the target and a deleted
    /// next.
    pub fn vma_expand(&mut self, vmg: &mut VmaMergeStruct) -> Result<(), Errno> {
        let Some(target) = vmg.target else {
            return Err(Errno::EINVAL);
        };
        if !self.attached_here(target)
            || vmg.start >= vmg.end
            || !aligned(vmg.start)
            || !aligned(vmg.end)
            || target.start() < vmg.start
            || target.end() > vmg.end
        {
            return Err(Errno::EINVAL);
        }
        let next = vmg.next.filter(|n| !vma_eq(n, target));
        let remove_next = next.is_some_and(|n| vmg.end == n.end());
        let allowed = [Some(target), if remove_next { next } else { None }];
        if !self.range_only_contains(vmg.start, vmg.end, &allowed) {
            return Err(Errno::EINVAL);
        }
        // ASSUMPTIONS.
        self.debug_assert_linked(target, "vma_expand: target");
        debug_assert!(
            next.is_none_or(|n| self.attached_here(n)),
            "vma_expand: next is not a VMA of this mm"
        );
        debug_assert!(
            !remove_next || next.is_some_and(can_merge_remove_vma),
            "vma_expand: next would be deleted but has a close hook"
        );
        debug_assert_eq!(
            target.pgoff(),
            vmg.pgoff.wrapping_add(pages(target.start() - vmg.start)),
            "vma_expand: vmg.pgoff moves the pages target maps"
        );
        let mut sticky = (vmg.flags | target.flags()) & VmFlags::STICKY;
        self.vma_start_write(target);
        let mut dup = None;
        let mut res = Ok(());
        if let Some(n) = next.filter(|_| remove_next) {
            sticky |= n.flags() & VmFlags::STICKY;
            self.vma_start_write(n);
            res = self.dup_anon_vma(target, n, &mut dup);
        }
        if res.is_ok()
            && let Some(src) = vmg.copied_from
        {
            res = self.dup_anon_vma(target, src, &mut dup);
        }
        vmg.remove_next = remove_next;
        if res.is_ok() {
            let removes: &[VmaRef] = match next {
                Some(n) if remove_next => &[n],
                _ => &[],
            };
            res = self.commit(&[(target, vmg.start, vmg.end, vmg.pgoff)], removes, None);
        }
        if let Err(e) = res {
            self.abort_anon_dup(dup);
            if !vmg.give_up_on_oom {
                vmg.state = VmaMergeState::ErrorNomem;
            }
            return Err(e);
        }
        target.set_flags_raw(target.flags() | sticky);
        Ok(())
    }

    /// Merge a new, empty range `[vmg.start, vmg.end)` into `vmg.prev` and/or
    /// `vmg.next`. Returns the expanded VMA, or `None` with `vmg.state` NOMERGE or
    /// ERROR_NOMEM. Linux: `vma_merge_new_range()`.
    ///
    /// The cases, `-` the new range, `P` prev, `N` next:
    ///
    /// ```text
    ///              before          after
    /// left         PPPP----        PPPPPPPP          prev expanded
    /// right            ----NNNN        NNNNNNNN      next expanded down
    /// both         PPPP----NNNN    PPPPPPPPPPPP      prev expanded, next deleted
    /// none         PPPP ---- NN    PPPP ---- NN      nothing changes: the caller links
    ///                                                a new VMA
    /// ```
    ///
    /// "both" is reduced to "left" (`PPPPPPPPNNNN`) when next has a `vm_ops->close`
    /// hook, which a merge may not skip by deleting it. With `just_expand` (brk) only
    /// "left" is tried, and the iterator is already at prev.
    ///
    /// ASSUMPTIONS (Linux's, checked with `debug_assert!`):
    /// - The caller holds the mmap write lock (`&mut self` proves it).
    /// - `[vmg.start, vmg.end)` holds no VMA.
    /// - `vmg.prev` is the VMA below the range (the last one ending at or before
    ///   `vmg.start`), `None` only if there is none.
    /// - `vmg.next` is the VMA above the range (the first one starting at or after
    ///   `vmg.end`), `None` only if there is none or with `just_expand`.
    /// - `vmg.vmi` is at or before the end of the range.
    ///
    /// Refused, not assumed (NOMERGE, nothing changed): `vmg.middle` set, an empty or
    /// inverted range, a prev or next that is not an attached VMA of this mm or that
    /// overlaps the range.
    pub fn vma_merge_new_range(&mut self, vmg: &mut VmaMergeStruct) -> Option<VmaRef> {
        vmg.state = VmaMergeState::NoMerge;
        let (prev, next, end) = (vmg.prev, vmg.next, vmg.end);
        // Malformed requests never merge (no panics at the API boundary).
        if vmg.middle.is_some()
            || vmg.start >= vmg.end
            || prev.is_some_and(|p| !self.attached_here(p) || p.end() > vmg.start)
            || next.is_some_and(|n| !self.attached_here(n) || n.start() < vmg.end)
        {
            return None;
        }
        // ASSUMPTIONS.
        debug_assert!(
            vmg.vmi.index <= vmg.end,
            "vma_merge_new_range: vmi {:#x} is past the range [{:#x}, {:#x})",
            vmg.vmi.index,
            vmg.start,
            vmg.end
        );
        debug_assert!(
            self.find_vma_intersection(vmg.start, vmg.end).is_none(),
            "vma_merge_new_range: [{:#x}, {:#x}) is not empty",
            vmg.start,
            vmg.end
        );
        debug_assert!(
            opt_vma_eq(prev, self.vma_prev_of(vmg.start)),
            "vma_merge_new_range: prev is not the VMA below {:#x}",
            vmg.start
        );
        debug_assert!(
            (vmg.just_expand && next.is_none()) || opt_vma_eq(next, self.vma_next_from(end)),
            "vma_merge_new_range: next is not the VMA above {end:#x}"
        );
        if vmg.flags.intersects(VmFlags::SPECIAL) || (prev.is_none() && next.is_none()) {
            return None;
        }
        let left = can_vma_merge_left(self, vmg);
        let right = !vmg.just_expand && can_vma_merge_right(self, vmg, left);
        vmg.target = None;
        if right {
            //     ----NNNN   →   NNNNNNNN   (next expanded down, unless left also merges)
            let n = next?;
            vmg.end = n.end();
            vmg.target = Some(n);
        }
        if left {
            // PPPP----       →   PPPPPPPP
            // PPPP----NNNN   →   PPPPPPPPPPPP   (with right: next deleted by vma_expand)
            let p = prev?;
            vmg.start = p.start();
            vmg.pgoff = p.pgoff();
            vmg.target = Some(p);
            // PPPP----NNNN   →   PPPPPPPPNNNN   next has a close hook and may not be
            // deleted: reduce to prev + the new range.
            if right && !can_merge_remove_vma(next?) {
                vmg.end = end;
            }
            if !vmg.just_expand {
                vmg.vmi.prev(&self.view());
            }
        }
        let target = vmg.target?;
        match self.vma_expand(vmg) {
            Ok(()) => {
                vmg.state = VmaMergeState::Success;
                vmg.vmi.set(vmg.start);
                Some(target)
            }
            Err(_) => {
                vmg.target = None;
                None
            }
        }
    }

    /// Change attributes of `[vmg.start, vmg.end)` inside `vmg.middle` by merging it
    /// into a neighbour when the rules allow. Returns the surviving VMA, or `None` with
    /// state NOMERGE (caller splits instead) or ERROR_NOMEM.
    /// Linux: `vma_merge_existing_range()`.
    ///
    /// The cases, `-` the range (part or all of middle `M`), `P` prev, `N` next:
    ///
    /// ```text
    ///                  before          after
    /// left, partial    PPPP--MM        PPPPPPMM        prev expanded, middle shrunk
    /// left, full       PPPP----        PPPPPPPP        prev expanded, middle deleted
    /// right, partial   MM--NNNN        MMNNNNNN        next expanded down, middle shrunk
    /// right, full      ----NNNN        NNNNNNNN        next expanded down, middle deleted
    /// both             PPPP----NNNN    PPPPPPPPPPPP    prev expanded, middle and next
    ///                                                  deleted
    /// neither end      MM--MM          MM--MM          never merges: the caller splits
    /// ```
    ///
    /// "both" is reduced to "left, full" (`PPPPPPPPNNNN`) when next has a
    /// `vm_ops->close` hook or when prev's and next's anon_vmas differ. A middle with a
    /// close hook is never deleted, so a full-span case with one does not merge.
    ///
    /// ASSUMPTIONS (Linux's, checked with `debug_assert!`):
    /// - The caller holds the mmap write lock (`&mut self` proves it).
    /// - `vmg.middle` is linked in this mm's tree at its range.
    /// - `vmg.prev` is middle itself when the range starts inside it, else the VMA below
    ///   middle (`None` only if there is none).
    /// - `vmg.next` is not set: this function finds it.
    /// - `vmg.vmi` is inside middle.
    ///
    /// Refused, not assumed (NOMERGE, nothing changed): no middle, a middle or prev that
    /// is not an attached VMA of this mm, an empty range or one not inside middle, a prev
    /// other than middle that does not start below the range, a target already set.
    pub fn vma_merge_existing_range(&mut self, vmg: &mut VmaMergeStruct) -> Option<VmaRef> {
        vmg.state = VmaMergeState::NoMerge;
        let middle = vmg.middle?;
        let (start, end) = (vmg.start, vmg.end);
        if !self.attached_here(middle)
            || start >= end
            || start < middle.start()
            || end > middle.end()
            || vmg.target.is_some()
            || vmg
                .prev
                .is_some_and(|p| !self.attached_here(p) || p.start() >= start && !vma_eq(p, middle))
        {
            return None;
        }
        // ASSUMPTIONS.
        self.debug_assert_linked(middle, "vma_merge_existing_range: middle");
        debug_assert!(
            if start > middle.start() {
                vmg.prev.is_some_and(|p| vma_eq(p, middle))
            } else {
                opt_vma_eq(vmg.prev, self.vma_prev_of(middle.start()))
            },
            "vma_merge_existing_range: prev is neither middle (range inside it) nor the VMA \
             below it"
        );
        debug_assert!(
            vmg.next.is_none(),
            "vma_merge_existing_range: next is set by this function, not the caller"
        );
        debug_assert!(
            (middle.start()..middle.end()).contains(&vmg.vmi.index),
            "vma_merge_existing_range: vmi {:#x} is outside middle",
            vmg.vmi.index
        );
        let left_side = start == middle.start();
        let right_side = end == middle.end();
        if vmg.flags.intersects(VmFlags::SPECIAL) || (!left_side && !right_side) {
            return None;
        }
        let mut sticky = vmg.flags & VmFlags::STICKY;
        let merge_left = left_side && can_vma_merge_left(self, vmg);
        let mut merge_right = false;
        let mut next = None;
        if right_side {
            next = self.vma_next_from(middle.end());
            vmg.next = next;
            merge_right = can_vma_merge_right(self, vmg, merge_left);
        }
        if merge_left {
            vmg.vmi.prev(&self.view());
        } else if !merge_right {
            return None;
        }
        let mut merge_both = merge_left && merge_right;
        vmg.remove_middle = left_side && right_side;
        if vmg.remove_middle && !can_merge_remove_vma(middle) {
            return None;
        }
        if vmg.remove_middle {
            // A deleted middle is a participant too: its sticky flags survive.
            sticky |= middle.flags() & VmFlags::STICKY;
        }
        vmg.remove_next = merge_both;
        if vmg.remove_next && next.is_some_and(|n| !can_merge_remove_vma(n)) {
            vmg.remove_next = false;
            merge_right = false;
            merge_both = false;
        }

        // Middle changes in every outcome.
        self.vma_start_write(middle);
        let prev = vmg.prev;
        if merge_right {
            let n = next?;
            self.vma_start_write(n);
            vmg.target = Some(n);
            sticky |= n.flags() & VmFlags::STICKY;
        }
        if merge_left {
            let p = prev?;
            self.vma_start_write(p);
            vmg.target = Some(p);
            sticky |= p.flags() & VmFlags::STICKY;
        }
        let mut dup = None;
        let mut updates: [(VmaRef, usize, usize, usize); 2] = [(middle, 0, 0, 0); 2];
        let nupd;
        let mut removes: [VmaRef; 2] = [middle; 2];
        let nrem;

        let res = if merge_both {
            //     |<-->|
            // PPPP------NNNN   →   PPPPPPPPPPPPPP
            // prev  mid  next
            //      delete delete
            let (p, n) = (prev?, next?);
            updates[0] = (p, p.start(), n.end(), p.pgoff());
            nupd = 1;
            removes = [middle, n];
            nrem = 2;
            let src = if n.has_anon_vma() { n } else { middle };
            self.dup_anon_vma(p, src, &mut dup)
        } else if merge_left {
            //     |<>|              |<-->|
            // PPPP--MM   →   PPPPPPMM   or   PPPP----   →   PPPPPPPP
            // prev expanded; middle shrunk from below, or deleted
            let p = prev?;
            updates[0] = (p, p.start(), end, p.pgoff());
            if vmg.remove_middle {
                nupd = 1;
                nrem = 1;
            } else {
                updates[1] = (
                    middle,
                    end,
                    middle.end(),
                    middle.pgoff() + pages(end - middle.start()),
                );
                nupd = 2;
                nrem = 0;
            }
            self.dup_anon_vma(p, middle, &mut dup)
        } else {
            //   |<>|                |<-->|
            // MM--NNNN   →   MMNNNNNN   or   ----NNNN   →   NNNNNNNN
            // next expanded down; middle shrunk from above, or deleted. The one case
            // where the surviving VMA is not the one whose range was asked for.
            let n = next?;
            let newpg = n.pgoff().wrapping_sub(pages(n.start() - start));
            if vmg.remove_middle {
                updates[0] = (n, start, n.end(), newpg);
                nupd = 1;
                nrem = 1;
            } else {
                updates[0] = (middle, middle.start(), start, middle.pgoff());
                updates[1] = (n, start, n.end(), newpg);
                nupd = 2;
                nrem = 0;
            }
            self.dup_anon_vma(n, middle, &mut dup)
        };
        let res = res.and_then(|()| self.commit(&updates[..nupd], &removes[..nrem], None));
        if res.is_err() {
            vmg.vmi.set(start);
            self.abort_anon_dup(dup);
            vmg.target = None;
            if !vmg.give_up_on_oom {
                vmg.state = VmaMergeState::ErrorNomem;
            }
            return None;
        }
        let target = vmg.target?;
        target.set_flags_raw(target.flags() | sticky);
        vmg.start = target.start();
        vmg.end = target.end();
        vmg.pgoff = target.pgoff();
        vmg.state = VmaMergeState::Success;
        Some(target)
    }

    /// Make `[vmg.start, vmg.end)` of `vmg.middle` exactly one VMA, by merging or by
    /// splitting; the caller then applies its attribute change to the returned VMA.
    /// Linux: `vma_modify()`.
    ///
    /// `-` the range inside middle `M`:
    ///
    /// ```text
    /// merge    PPPP--MM    →   PPPPPPMM      any case of vma_merge_existing_range
    /// split    MM--MMMM    →   AAMMBBBB      middle keeps just the range; A and B are
    ///                                        new VMAs with its old attributes
    /// ```
    ///
    /// ASSUMPTIONS: those of [`vma_merge_existing_range`](Self::vma_merge_existing_range),
    /// which checks them.
    ///
    /// Refused, not assumed (EINVAL, nothing changed): no middle, a middle that is not an
    /// attached VMA of this mm, an empty range or one not inside middle. ENOMEM from
    /// the merge or a split (a first split may have happened, as in Linux).
    pub fn vma_modify(&mut self, vmg: &mut VmaMergeStruct) -> Result<VmaRef, Errno> {
        let Some(vma) = vmg.middle else {
            return Err(Errno::EINVAL);
        };
        let (start, end) = (vmg.start, vmg.end);
        if !self.attached_here(vma) || start >= end || start < vma.start() || end > vma.end() {
            return Err(Errno::EINVAL);
        }
        if let Some(m) = self.vma_merge_existing_range(vmg) {
            return Ok(m);
        }
        if vmg.nomem() {
            return Err(Errno::ENOMEM);
        }
        if vma.start() < start {
            self.split_vma(vma, start, true)?;
        }
        if vma.end() > end {
            self.split_vma(vma, end, false)?;
        }
        Ok(vma)
    }

    /// Linux: `vma_modify_flags()` — `vma_modify` with `*flags` as the proposal. The
    /// flags are *not* applied: the caller sets `*flags` on the returned (write-locked)
    /// VMA. When a merge succeeded, `*flags` becomes the merged VMA's flags, which may
    /// carry sticky flags ([`VmFlags::STICKY`]) a neighbour contributed; the caller
    /// must not drop them by applying its own copy (Linux passes `vm_flags_ptr` for this).
    pub fn vma_modify_flags(
        &mut self,
        prev: Option<VmaRef>,
        vma: VmaRef,
        start: usize,
        end: usize,
        flags: &mut VmFlags,
    ) -> Result<VmaRef, Errno> {
        let mut vmg = VmaMergeStruct::from_vma(self, prev, vma, start, end);
        vmg.flags = *flags;
        let v = self.vma_modify(&mut vmg)?;
        if vmg.state == VmaMergeState::Success {
            *flags = v.flags();
        }
        Ok(v)
    }

    /// Split with the `max_map_count` check. Linux: `split_vma()`.
    pub fn split_vma(
        &mut self,
        vma: VmaRef,
        addr: usize,
        new_below: bool,
    ) -> Result<VmaRef, Errno> {
        if self.map_count() >= self.max_map_count() {
            return Err(Errno::ENOMEM);
        }
        self.__split_vma(vma, addr, new_below)
    }

    /// Split `vma` at `addr`; returns the new VMA (the low part if `new_below`, else the
    /// high part; the original object keeps the other part). No `max_map_count` check.
    ///
    /// ```text
    ///              addr
    /// VVVV|VVVV    →   NNNNVVVV  (new_below)   or   VVVVNNNN
    ///                  N: the new VMA, V: `vma`, the same object as before
    /// ```
    ///
    /// Linux: `__split_vma()`: `may_split` veto, dup, preallocate, clone anon_vmas,
    /// `open(new)`, write-lock both, `hugetlb_split` hook, adjust, insert.
    ///
    /// ASSUMPTIONS (checked with `debug_assert!`):
    /// - The caller holds the mmap write lock (`&mut self` proves it) and has checked
    ///   `max_map_count` where that matters ([`split_vma`](Self::split_vma) does).
    /// - `vma` is linked in this mm's tree at its range.
    ///
    /// Refused, not assumed (nothing changed): EINVAL for a `vma` that is not an
    /// attached VMA of this mm or an `addr` not page aligned and strictly inside it
    /// (Linux's `WARN_ON`s); the `may_split` hook's error; ENOMEM.
    #[allow(non_snake_case)]
    pub fn __split_vma(
        &mut self,
        vma: VmaRef,
        addr: usize,
        new_below: bool,
    ) -> Result<VmaRef, Errno> {
        if !self.attached_here(vma) || addr <= vma.start() || addr >= vma.end() || !aligned(addr) {
            return Err(Errno::EINVAL);
        }
        // ASSUMPTIONS.
        self.debug_assert_linked(vma, "__split_vma: vma");
        if let Some(may_split) = vma.ops().and_then(|o| o.may_split) {
            may_split(vma, addr)?;
        }
        let new = self.vm_area_dup(vma)?;
        let (vs, ve, vp) = (vma.start(), vma.end(), vma.pgoff());
        if new_below {
            new.set_range(vs, addr, vp);
        } else {
            new.set_range(addr, ve, vp + pages(addr - vs));
        }
        // Preallocate before anything observable (erase + insert of vma, insert new).
        if let Err(e) = self.inner().tw.prealloc(3) {
            drop(new.replace_anon_vma(None));
            self.vm_area_free(new);
            return Err(e);
        }
        // Room in the file's i_mmap for the commit, before anything observable, so
        // that taking the lock for real below cannot fail.
        if let Some(f) = vma.file(&*self)
            && let Some(im) = f.i_mmap()
            && let Err(e) = im.write().reserve(2)
        {
            drop(new.replace_anon_vma(None));
            self.vm_area_free(new);
            return Err(e);
        }
        let fail = self.fail_anon_clone();
        // SAFETY: `anon_vma_clone`'s contract: `new` was made by `vm_area_dup` just above
        // and is detached and known to no one else, so exclusively ours; `vma` is
        // another VMA of this mm, stable because its writers need the mmap write lock
        // we hold.
        if let Err(e) = unsafe { anon::anon_vma_clone(new, vma, fail) } {
            self.vm_area_free(new);
            return Err(e);
        }
        if let Some(open) = vma.ops().and_then(|o| o.open) {
            open(new);
        }
        let hugetlb_hook = self
            .inner_ref()
            .hooks
            .hugetlb_split
            .filter(|_| vma.flags().contains(VmFlags::HUGETLB));
        #[cfg(feature = "fault-inject")]
        let old_order = OLD_SPLIT_ORDER.load(core::sync::atomic::Ordering::Relaxed);
        #[cfg(feature = "fault-inject")]
        if old_order && let Some(hook) = hugetlb_hook {
            // Test-only: the pre-6.16 order, where the unshare ran from `may_split`,
            // before the VMAs were write-locked and before i_mmap was taken.
            hook(vma, addr);
            if let Some(h) = *SPLIT_WINDOW_HOOK.lock() {
                h(vma, addr);
            }
        }
        self.vma_start_write(vma);
        self.vma_start_write(new);
        // Linux: vma_prepare() takes the file's i_mmap write lock here, and only then
        // (6.16, the CVE-2025-38084 fix) hugetlb_split() unshares the PD tables the
        // split cuts: with both VMAs write-locked and i_mmap held, no fault can re-share
        // a table between the unshare and the range change. The lock is held on
        // through the commit.
        let file = vma.file(&*self).filter(|f| f.i_mmap().is_some());
        let held = match file.as_ref().and_then(|f| f.i_mmap()) {
            Some(im) => {
                let mut w = im.write();
                if let Err(e) = w.reserve(2) {
                    drop(w);
                    if let Some(close) = new.ops().and_then(|o| o.close) {
                        close(new);
                    }
                    self.vm_area_free(new);
                    return Err(e);
                }
                Some(w)
            }
            None => None,
        };
        #[cfg(feature = "fault-inject")]
        let hugetlb_hook = hugetlb_hook.filter(|_| !old_order);
        if let Some(hook) = hugetlb_hook {
            hook(vma, addr);
            #[cfg(feature = "fault-inject")]
            if let Some(h) = *SPLIT_WINDOW_HOOK.lock() {
                h(vma, addr);
            }
        }
        let upd = if new_below {
            (vma, addr, ve, vp + pages(addr - vs))
        } else {
            (vma, vs, addr, vp)
        };
        if let Err(e) = self.commit_with(&[upd], &[], Some(new), held) {
            // Unreachable after the preallocation above; undo anyway.
            if let Some(close) = new.ops().and_then(|o| o.close) {
                close(new);
            }
            self.vm_area_free(new);
            return Err(e);
        }
        Ok(new)
    }

    /// Shrink `vma` to `[start, end)` (one end must stay). Linux: `vma_shrink()`.
    ///
    /// ```text
    /// VVVVVVVV   →   VVVV        (end moves down)   or   VVVV   (start moves up)
    /// ```
    ///
    /// ASSUMPTIONS (checked with `debug_assert!`):
    /// - The caller holds the mmap write lock (`&mut self` proves it).
    /// - `vma` is linked in this mm's tree at its range.
    /// - `pgoff` is the file page of `start` in `vma`'s numbering: the pages that stay
    ///   keep their offsets.
    ///
    /// Refused, not assumed (EINVAL, nothing changed): a `vma` that is not an attached
    /// VMA of this mm, a range that is empty, unaligned, not inside `vma` or moves both
    /// ends (Linux's `WARN_ON`). ENOMEM with nothing changed.
    pub fn vma_shrink(
        &mut self,
        vma: VmaRef,
        start: usize,
        end: usize,
        pgoff: usize,
    ) -> Result<(), Errno> {
        if !self.attached_here(vma)
            || start >= end
            || start < vma.start()
            || end > vma.end()
            || (start != vma.start() && end != vma.end())
            || !aligned(start)
            || !aligned(end)
        {
            return Err(Errno::EINVAL);
        }
        // ASSUMPTIONS.
        self.debug_assert_linked(vma, "vma_shrink: vma");
        debug_assert_eq!(
            pgoff,
            vma.pgoff() + pages(start - vma.start()),
            "vma_shrink: pgoff moves the pages that stay"
        );
        self.inner().tw.prealloc(2)?;
        self.vma_start_write(vma);
        self.commit(&[(vma, start, end, pgoff)], &[], None)
    }

    /// Grow `vma` in place by `delta` bytes, merging with the following VMA if possible.
    /// Linux: `vma_merge_extend()` (mremap in-place growth).
    ///
    /// ```text
    /// VVVV++++NNNN   →   VVVVVVVVNNNN   or, if next merges too,   VVVVVVVVVVVV
    /// ```
    ///
    /// ASSUMPTIONS (checked with `debug_assert!`):
    /// - The caller holds the mmap write lock (`&mut self` proves it).
    /// - `vma` is linked in this mm's tree at its range.
    /// - `delta` is a non-zero multiple of the page size, and `[vma.end(), vma.end() +
    ///   delta)` is free (the caller checked, Linux: `vma_expandable()`).
    ///
    /// Refused, not assumed: an end that overflows (`None`). The rest is
    /// [`vma_merge_new_range`](Self::vma_merge_new_range)'s.
    pub fn vma_merge_extend(&mut self, vma: VmaRef, delta: usize) -> Option<VmaRef> {
        let end = vma.end().checked_add(delta)?;
        // ASSUMPTIONS.
        self.debug_assert_linked(vma, "vma_merge_extend: vma");
        debug_assert!(
            delta != 0 && aligned(delta),
            "vma_merge_extend: delta {delta:#x} is not a non-zero number of pages"
        );
        debug_assert!(
            self.find_vma_intersection(vma.end(), end).is_none(),
            "vma_merge_extend: [{:#x}, {end:#x}) is not free",
            vma.end()
        );
        let mut vmg = VmaMergeStruct::from_vma(self, Some(vma), vma, vma.end(), end);
        vmg.pgoff = vma.pgoff() + vma.pages();
        vmg.next = self.vma_next_from(vma.end());
        vmg.vmi = VmaIterator::new(vma.start());
        vmg.middle = None;
        self.vma_merge_new_range(&mut vmg)
    }

    /// Copy `*vma` to `[addr, addr + len)` at `pgoff` (mremap move): merge into a
    /// neighbour if possible, else link a duplicate. Returns the new VMA and
    /// `need_rmap_locks`; `*vma` is updated if the source itself was merged into it.
    /// Linux: `copy_vma()` via `vma_merge_copied_range()` (copied_from rule).
    ///
    /// `S` the source, `-` the destination:
    ///
    /// ```text
    /// SSSS   PPPP----NNNN   →   SSSS   PPPPPPPPPPPP   merged as vma_merge_new_range
    /// SSSS   PP  ----  NN   →   SSSS   PP  CCCC  NN   C: a new VMA, a copy of S
    /// ```
    ///
    /// ASSUMPTIONS (checked with `debug_assert!`):
    /// - The caller holds the mmap write lock (`&mut self` proves it).
    /// - `*vma` is linked in this mm's tree at its range.
    ///
    /// Refused, not assumed (nothing changed): EINVAL for an empty, unaligned or
    /// overflowing destination or a source that is not an attached VMA of this mm;
    /// ENOMEM for a destination that is not free (Linux: "should never get here") or
    /// out of memory.
    pub fn copy_vma(
        &mut self,
        vma: &mut VmaRef,
        addr: usize,
        len: usize,
        pgoff: usize,
    ) -> Result<(VmaRef, bool), Errno> {
        let src = *vma;
        let end = addr.checked_add(len).ok_or(Errno::EINVAL)?;
        if len == 0 || !aligned(addr) || !aligned(len) || !self.attached_here(src) {
            return Err(Errno::EINVAL);
        }
        // ASSUMPTIONS.
        self.debug_assert_linked(src, "copy_vma: source");
        let vma_start = src.start();
        let mut pgoff = pgoff;
        let mut faulted_in_anon_vma = true;
        if src.is_anonymous() && !src.has_anon_vma() {
            pgoff = addr >> super::area::PAGE_SHIFT;
            faulted_in_anon_vma = false;
        }
        if self.find_vma_intersection(addr, end).is_some() {
            return Err(Errno::ENOMEM);
        }
        let mut vmg = VmaMergeStruct::from_vma(self, None, src, addr, end);
        vmg.prev = self.vma_prev_of(addr);
        vmg.vmi = VmaIterator::new(addr);
        vmg.pgoff = pgoff;
        vmg.next = self.vma_next_from(end);
        // Linux: vma_merge_copied_range().
        vmg.copied_from = vmg.middle.take();
        if let Some(new) = self.vma_merge_new_range(&mut vmg) {
            if vma_start >= new.start() && vma_start < new.end() {
                debug_assert!(!faulted_in_anon_vma);
                *vma = new;
            }
            return Ok((new, new.pgoff() <= vma.pgoff()));
        }
        let new = self.vm_area_dup(src)?;
        new.set_range(addr, end, pgoff);
        let fail = self.fail_anon_clone();
        // SAFETY: as in `__split_vma`: `new` is a fresh duplicate, detached and known
        // only to us; `src` is stable under the mmap write lock we hold.
        if let Err(e) = unsafe { anon::anon_vma_clone(new, src, fail) } {
            self.vm_area_free(new);
            return Err(e);
        }
        if let Some(open) = new.ops().and_then(|o| o.open) {
            open(new);
        }
        if let Err(e) = self.vma_link(new) {
            if let Some(close) = new.ops().and_then(|o| o.close) {
                close(new);
            }
            self.vm_area_free(new);
            return Err(e);
        }
        Ok((new, false))
    }

    /// Map `[addr, addr + len)`: merge with a neighbour or link a new VMA. The range must
    /// be free (EEXIST otherwise: MAP_FIXED replacement is the caller's detach + zap +
    /// remove). ENOMEM past `max_map_count`. Linux: the VMA half of `__mmap_region()`
    /// (`vma_merge_new_range()`, else `__mmap_new_vma()`), without the gather/unmap,
    /// accounting and driver steps; the syscall level's is
    /// `mmap::AddressSpace::mmap_region`.
    pub fn map_new_range(
        &mut self,
        addr: usize,
        len: usize,
        flags: VmFlags,
        pgoff: usize,
        file: Option<FileRef>,
    ) -> Result<usize, Errno> {
        let end = addr.checked_add(len).ok_or(Errno::ENOMEM)?;
        if len == 0 || !aligned(addr) || !aligned(len) {
            return Err(Errno::EINVAL);
        }
        if self.find_vma_intersection(addr, end).is_some() {
            return Err(Errno::EEXIST);
        }
        if self.map_count() > self.max_map_count() {
            return Err(Errno::ENOMEM);
        }
        let mut vmg = VmaMergeStruct::new(addr, end, pgoff, flags);
        vmg.file = file.clone();
        vmg.prev = self.vma_prev_of(addr);
        vmg.next = self.vma_next_from(end);
        vmg.vmi = VmaIterator::new(addr);
        if (vmg.prev.is_some() || vmg.next.is_some())
            && self.vma_merge_new_range(&mut vmg).is_some()
        {
            return Ok(addr);
        }
        if vmg.nomem() {
            return Err(Errno::ENOMEM);
        }
        let v = self.vm_area_alloc()?;
        let r = self
            .vma_init(
                v,
                crate::vma::VmaInit {
                    start: addr,
                    end,
                    pgoff,
                    flags,
                    file,
                    ops: None,
                },
            )
            .and_then(|()| self.vma_link(v));
        if let Err(e) = r {
            self.vm_area_free(v);
            return Err(e);
        }
        Ok(addr)
    }
}

/// Test-only: run `__split_vma`'s hugetlb unshare in the pre-6.16 order (before the
/// i_mmap lock), the order CVE-2025-38084 was about.
#[cfg(feature = "fault-inject")]
pub static OLD_SPLIT_ORDER: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(false);

/// Test-only: called by `__split_vma` right after `hugetlb_split` (in the old order
/// before the VMA and i_mmap locks, in the current one under them), to run a fault in
/// the window between the unshare and the range change.
#[cfg(feature = "fault-inject")]
pub static SPLIT_WINDOW_HOOK: spin::Mutex<Option<SplitWindowHook>> = spin::Mutex::new(None);

/// The type of [`SPLIT_WINDOW_HOOK`]: the splitting VMA and the split address.
#[cfg(feature = "fault-inject")]
pub type SplitWindowHook = fn(VmaRef, usize);
