//! The 16 merge scenarios of Linux's `tools/testing/vma` against this VMA engine.
//!
//! Harness idea `vma_write_started(vma)` is modelled by doing each operation in a
//! fresh mmap write-lock hold and asking whether the VMA is write-locked in that hold
//! (setup happens in an earlier hold, whose locks are released on unlock).

use mm::errno::Errno;
use mm::vma::{
    AnonVmaRef, Mm, MmWriteGuard, VmFlags, VmOperations, VmaIterator, VmaMergeState,
    VmaMergeStruct, VmaRef,
};

const F: VmFlags = VmFlags::RW_DEFAULT;

fn dummy_close(_: VmaRef) {}
static CLOSE_OPS: VmOperations = VmOperations {
    open: None,
    close: Some(dummy_close),
    may_split: None,
    fault: None,
    name: None,
};

fn link(g: &mut MmWriteGuard<'_>, start: usize, end: usize, pgoff: usize) -> VmaRef {
    g.map_anon(start, end, pgoff, F).expect("link")
}

fn set_close(g: &mut MmWriteGuard<'_>, v: VmaRef) {
    g.vma_start_write(v);
    g.vma_set_ops(v, Some(&CLOSE_OPS)).unwrap();
}

fn give_anon(g: &mut MmWriteGuard<'_>, v: VmaRef, av: &AnonVmaRef) {
    g.vma_start_write(v);
    g.anon_vma_link(v, av).unwrap();
}

fn range(v: VmaRef) -> (usize, usize, usize) {
    (v.start(), v.end(), v.pgoff())
}

fn check_counts(g: &MmWriteGuard<'_>, n: usize) {
    assert_eq!(g.map_count(), n, "map_count");
    assert_eq!(g.tree_len(), n, "tree size");
    assert_eq!(g.live_vmas(), n, "live VMAs");
    for v in g.vmas() {
        assert_eq!(v.refcnt(), 1, "every linked VMA attached exactly once");
    }
}

/// The harness's `merge_new()`: fill prev/next from the tree, then merge.
fn merge_new(g: &mut MmWriteGuard<'_>, vmg: &mut VmaMergeStruct) -> Option<VmaRef> {
    vmg.prev = g.vma_prev_of(vmg.start);
    vmg.next = g.vma_next_from(vmg.end);
    vmg.vmi = VmaIterator::new(vmg.start);
    g.vma_merge_new_range(vmg)
}

/// The harness's `try_merge_new_vma()`: merge, or link a new VMA.
fn try_merge_new_vma(
    g: &mut MmWriteGuard<'_>,
    start: usize,
    end: usize,
    pgoff: usize,
) -> (VmaRef, bool) {
    let mut vmg = VmaMergeStruct::new(start, end, pgoff, F);
    if let Some(v) = merge_new(g, &mut vmg) {
        assert_eq!(vmg.state, VmaMergeState::Success);
        return (v, true);
    }
    assert_eq!(vmg.state, VmaMergeState::NoMerge);
    (link(g, start, end, pgoff), false)
}

fn merge_existing(
    g: &mut MmWriteGuard<'_>,
    prev: Option<VmaRef>,
    middle: VmaRef,
    start: usize,
    end: usize,
) -> (Option<VmaRef>, VmaMergeState) {
    let mut vmg = VmaMergeStruct::from_vma(g, prev, middle, start, end);
    vmg.vmi = VmaIterator::new(start);
    let r = g.vma_merge_existing_range(&mut vmg);
    (r, vmg.state)
}

fn same(a: Option<VmaRef>, b: VmaRef) -> bool {
    a.is_some_and(|a| core::ptr::eq(a, b))
}

#[test]
fn test_simple_merge() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let prev = link(&mut g, 0, 0x1000, 0);
    let next = link(&mut g, 0x2000, 0x3000, 2);
    drop(g);
    let mut g = mm.write_lock();
    let mut vmg = VmaMergeStruct::new(0x1000, 0x2000, 1, F);
    let v = merge_new(&mut g, &mut vmg).expect("merged");
    assert!(core::ptr::eq(v, prev));
    assert_eq!(vmg.state, VmaMergeState::Success);
    assert_eq!(range(v), (0, 0x3000, 0));
    assert_eq!(v.flags(), F);
    assert!(!next.is_attached(), "next was deleted");
    check_counts(&g, 1);
}

#[test]
fn test_simple_modify() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let vma = link(&mut g, 0, 0x3000, 0);
    drop(g);
    let mut g = mm.write_lock();
    let r = g
        .vma_modify_flags(Some(vma), vma, 0x1000, 0x2000, &mut (F | VmFlags::EXEC))
        .unwrap();
    assert!(core::ptr::eq(r, vma), "returns the original object");
    assert_eq!(range(vma), (0x1000, 0x2000, 1));
    assert_eq!(vma.flags(), F, "vma_modify does not apply the flags");
    let all: Vec<_> = g.vmas().into_iter().map(range).collect();
    assert_eq!(
        all,
        vec![(0, 0x1000, 0), (0x1000, 0x2000, 1), (0x2000, 0x3000, 2)]
    );
    check_counts(&g, 3);
}

#[test]
fn test_simple_expand() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let vma = link(&mut g, 0, 0x1000, 0);
    drop(g);
    let mut g = mm.write_lock();
    let mut vmg = VmaMergeStruct::new(0, 0x3000, 0, F);
    vmg.target = Some(vma);
    assert_eq!(g.vma_expand(&mut vmg), Ok(()));
    assert_eq!(range(vma), (0, 0x3000, 0));
    assert!(g.vma_is_write_locked(vma));
    assert_eq!(
        g.find_vma(0x2fff).map(range),
        Some((0, 0x3000, 0)),
        "tree updated"
    );
    check_counts(&g, 1);
}

#[test]
fn test_simple_shrink() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let vma = link(&mut g, 0, 0x3000, 0);
    drop(g);
    let mut g = mm.write_lock();
    assert_eq!(g.vma_shrink(vma, 0, 0x1000, 0), Ok(()));
    assert_eq!(range(vma), (0, 0x1000, 0));
    assert!(g.vma_is_write_locked(vma));
    assert!(
        g.find_vma(0x1000).is_none(),
        "tree no longer covers the tail"
    );
    check_counts(&g, 1);
}

#[test]
fn test_merge_new() {
    let mm = Mm::new();
    let av = AnonVmaRef::new_root().unwrap();
    let (a, b, c);
    {
        let mut g = mm.write_lock();
        a = link(&mut g, 0, 0x2000, 0);
        b = link(&mut g, 0x3000, 0x4000, 3);
        c = link(&mut g, 0xb000, 0xc000, 0xb);
    }
    // 1. No merge: D is allocated.
    let d = {
        let mut g = mm.write_lock();
        let (d, merged) = try_merge_new_vma(&mut g, 0x7000, 0x9000, 7);
        assert!(!merged);
        assert_eq!(range(d), (0x7000, 0x9000, 7));
        check_counts(&g, 4);
        d
    };
    // 2. A (close: no effect, it is expanded) + new + B (faulted): B deleted.
    {
        let mut g = mm.write_lock();
        set_close(&mut g, a);
        give_anon(&mut g, b, &av);
    }
    {
        let mut g = mm.write_lock();
        let (v, merged) = try_merge_new_vma(&mut g, 0x2000, 0x3000, 2);
        assert!(merged && core::ptr::eq(v, a));
        assert_eq!(range(a), (0, 0x4000, 0));
        assert_eq!(a.anon_vma_ptr(), av.as_ptr());
        assert!(g.vma_is_write_locked(a));
        assert!(!b.is_attached());
        check_counts(&g, 3);
    }
    // 3. Extend A.
    {
        let mut g = mm.write_lock();
        let (v, merged) = try_merge_new_vma(&mut g, 0x4000, 0x5000, 4);
        assert!(merged && core::ptr::eq(v, a));
        assert_eq!(range(a), (0, 0x5000, 0));
        assert_eq!(a.anon_vma_ptr(), av.as_ptr());
        assert!(g.vma_is_write_locked(a));
        check_counts(&g, 3);
    }
    // 4. D faulted + close hook (no effect: D is expanded backwards).
    {
        let mut g = mm.write_lock();
        give_anon(&mut g, d, &av);
        set_close(&mut g, d);
    }
    {
        let mut g = mm.write_lock();
        let (v, merged) = try_merge_new_vma(&mut g, 0x6000, 0x7000, 6);
        assert!(merged && core::ptr::eq(v, d));
        assert_eq!(range(d), (0x6000, 0x9000, 6));
        assert_eq!(d.anon_vma_ptr(), av.as_ptr());
        assert!(g.vma_is_write_locked(d));
        check_counts(&g, 3);
    }
    // 5. Remove D's close hook so it can be deleted; fill the gap A..D.
    {
        let mut g = mm.write_lock();
        g.vma_start_write(d);
        g.vma_set_ops(d, None).unwrap();
    }
    {
        let mut g = mm.write_lock();
        let (v, merged) = try_merge_new_vma(&mut g, 0x5000, 0x6000, 5);
        assert!(merged && core::ptr::eq(v, a));
        assert_eq!(range(a), (0, 0x9000, 0));
        assert_eq!(a.anon_vma_ptr(), av.as_ptr());
        assert!(g.vma_is_write_locked(a));
        assert!(!d.is_attached());
        check_counts(&g, 2);
    }
    // 6. C faulted; merge backwards into C.
    {
        let mut g = mm.write_lock();
        give_anon(&mut g, c, &av);
    }
    {
        let mut g = mm.write_lock();
        let (v, merged) = try_merge_new_vma(&mut g, 0xa000, 0xb000, 0xa);
        assert!(merged && core::ptr::eq(v, c));
        assert_eq!(range(c), (0xa000, 0xc000, 0xa));
        assert_eq!(c.anon_vma_ptr(), av.as_ptr());
        assert!(g.vma_is_write_locked(c));
        check_counts(&g, 2);
    }
    // 7. Fill the last gap: A absorbs C.
    {
        let mut g = mm.write_lock();
        let (v, merged) = try_merge_new_vma(&mut g, 0x9000, 0xa000, 9);
        assert!(merged && core::ptr::eq(v, a));
        assert_eq!(range(a), (0, 0xc000, 0));
        assert_eq!(a.anon_vma_ptr(), av.as_ptr());
        assert!(g.vma_is_write_locked(a));
        assert!(!c.is_attached());
        check_counts(&g, 1);
        let all: Vec<_> = g.vmas().into_iter().map(range).collect();
        assert_eq!(all, vec![(0, 0xc000, 0)]);
    }
}

#[test]
fn test_merge_new_sticky_permutations() {
    // ≈7.0: any sticky flag on a participant ends up on the merged VMA.
    for mask in 0..16u32 {
        let mm = Mm::new();
        let fl = |bit: u32| {
            if mask & (1 << bit) != 0 {
                F | VmFlags::SOFTDIRTY
            } else {
                F
            }
        };
        let mut g = mm.write_lock();
        let a = g.map_anon(0, 0x2000, 0, fl(1)).unwrap();
        let _b = g.map_anon(0x3000, 0x4000, 3, fl(2)).unwrap();
        let mut vmg = VmaMergeStruct::new(0x2000, 0x3000, 2, fl(0));
        let v = merge_new(&mut g, &mut vmg).expect("soft-dirty never prevents a merge");
        assert!(core::ptr::eq(v, a));
        assert_eq!(range(a), (0, 0x4000, 0));
        assert_eq!(
            a.flags().contains(VmFlags::SOFTDIRTY),
            mask & 0b111 != 0,
            "mask {mask:#b}"
        );
    }
}

#[test]
fn test_vma_merge_special_flags() {
    let specials = [
        VmFlags::IO,
        VmFlags::DONTEXPAND,
        VmFlags::PFNMAP,
        VmFlags::MIXEDMAP,
    ];
    let all = specials.iter().fold(VmFlags::empty(), |a, f| a | *f);
    assert_eq!(all, VmFlags::SPECIAL);
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let prev = link(&mut g, 0, 0x3000, 0);
    for sp in specials {
        g.vma_set_flags(prev, F | sp).unwrap();
        let mut vmg = VmaMergeStruct::new(0x3000, 0x4000, 3, F | sp);
        assert!(merge_new(&mut g, &mut vmg).is_none());
        assert_eq!(vmg.state, VmaMergeState::NoMerge);
        assert_eq!(range(prev), (0, 0x3000, 0));
    }
    let vma = link(&mut g, 0x3000, 0x4000, 3);
    for sp in specials {
        g.vma_set_flags(prev, F | sp).unwrap();
        g.vma_set_flags(vma, F | sp).unwrap();
        let (r, st) = merge_existing(&mut g, Some(prev), vma, 0x3000, 0x4000);
        assert!(r.is_none());
        assert_eq!(st, VmaMergeState::NoMerge);
    }
    check_counts(&g, 2);
    // Control: without the special flag the same request merges.
    g.vma_set_flags(prev, F).unwrap();
    g.vma_set_flags(vma, F).unwrap();
    let (r, st) = merge_existing(&mut g, Some(prev), vma, 0x3000, 0x4000);
    assert!(same(r, prev) && st == VmaMergeState::Success);
}

#[test]
fn test_vma_merge_with_close() {
    // 1. merge_new: next has close → only prev expands.
    {
        let mm = Mm::new();
        let mut g = mm.write_lock();
        let prev = link(&mut g, 0, 0x3000, 0);
        let next = link(&mut g, 0x5000, 0x9000, 5);
        set_close(&mut g, next);
        drop(g);
        let mut g = mm.write_lock();
        let mut vmg = VmaMergeStruct::new(0x3000, 0x5000, 3, F);
        let v = merge_new(&mut g, &mut vmg);
        assert!(same(v, prev));
        assert_eq!(range(prev), (0, 0x5000, 0));
        assert_eq!(range(next), (0x5000, 0x9000, 5));
        assert!(!g.vma_is_write_locked(next));
        check_counts(&g, 2);
    }
    // 2. prev + middle(close), whole middle: middle would be deleted → NOMERGE.
    {
        let mm = Mm::new();
        let mut g = mm.write_lock();
        let prev = link(&mut g, 0, 0x3000, 0);
        let middle = link(&mut g, 0x3000, 0x5000, 3);
        set_close(&mut g, middle);
        drop(g);
        let mut g = mm.write_lock();
        let (r, st) = merge_existing(&mut g, Some(prev), middle, 0x3000, 0x5000);
        assert!(r.is_none());
        assert_eq!(st, VmaMergeState::NoMerge);
        assert_eq!(range(prev), (0, 0x3000, 0));
        check_counts(&g, 2);
    }
    // 3. middle(close) + next, no prev → NOMERGE.
    {
        let mm = Mm::new();
        let mut g = mm.write_lock();
        let middle = link(&mut g, 0x3000, 0x5000, 3);
        let next = link(&mut g, 0x5000, 0x9000, 5);
        set_close(&mut g, middle);
        drop(g);
        let mut g = mm.write_lock();
        let (r, st) = merge_existing(&mut g, None, middle, 0x3000, 0x5000);
        assert!(r.is_none());
        assert_eq!(st, VmaMergeState::NoMerge);
        assert_eq!(range(next), (0x5000, 0x9000, 5));
        check_counts(&g, 2);
    }
    // 4. prev + middle(close) + next → NOMERGE.
    {
        let mm = Mm::new();
        let mut g = mm.write_lock();
        let prev = link(&mut g, 0, 0x3000, 0);
        let middle = link(&mut g, 0x3000, 0x5000, 3);
        let _next = link(&mut g, 0x5000, 0x9000, 5);
        set_close(&mut g, middle);
        drop(g);
        let mut g = mm.write_lock();
        let (r, st) = merge_existing(&mut g, Some(prev), middle, 0x3000, 0x5000);
        assert!(r.is_none());
        assert_eq!(st, VmaMergeState::NoMerge);
        check_counts(&g, 3);
    }
    // 5. prev + middle + next(close) → degrade to prev + middle.
    {
        let mm = Mm::new();
        let mut g = mm.write_lock();
        let prev = link(&mut g, 0, 0x3000, 0);
        let middle = link(&mut g, 0x3000, 0x5000, 3);
        let next = link(&mut g, 0x5000, 0x9000, 5);
        set_close(&mut g, next);
        drop(g);
        let mut g = mm.write_lock();
        let (r, st) = merge_existing(&mut g, Some(prev), middle, 0x3000, 0x5000);
        assert!(same(r, prev));
        assert_eq!(st, VmaMergeState::Success);
        assert_eq!(range(prev), (0, 0x5000, 0));
        assert_eq!(range(next), (0x5000, 0x9000, 5));
        assert!(!middle.is_attached());
        check_counts(&g, 2);
    }
}

#[test]
fn test_vma_merge_new_with_close() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let prev = link(&mut g, 0, 0x2000, 0);
    let next = link(&mut g, 0x5000, 0x7000, 5);
    set_close(&mut g, prev);
    set_close(&mut g, next);
    drop(g);
    let mut g = mm.write_lock();
    let mut vmg = VmaMergeStruct::new(0x2000, 0x5000, 2, F);
    let v = merge_new(&mut g, &mut vmg);
    assert!(same(v, prev));
    assert_eq!(vmg.state, VmaMergeState::Success);
    assert_eq!(range(prev), (0, 0x5000, 0));
    assert!(prev.has_close(), "prev keeps its vm_ops");
    assert_eq!(range(next), (0x5000, 0x7000, 5));
    assert!(next.is_attached());
    assert!(g.vma_is_write_locked(prev));
    check_counts(&g, 2);
}

#[test]
fn test_merge_existing() {
    // 1. Right, partial.
    {
        let mm = Mm::new();
        let av = AnonVmaRef::new_root().unwrap();
        let mut g = mm.write_lock();
        let middle = link(&mut g, 0x2000, 0x6000, 2);
        let next = link(&mut g, 0x6000, 0x9000, 6);
        set_close(&mut g, middle);
        set_close(&mut g, next);
        give_anon(&mut g, middle, &av);
        drop(g);
        let mut g = mm.write_lock();
        let (r, st) = merge_existing(&mut g, Some(middle), middle, 0x3000, 0x6000);
        assert!(same(r, next));
        assert_eq!(st, VmaMergeState::Success);
        assert_eq!(range(next), (0x3000, 0x9000, 3));
        assert_eq!(next.anon_vma_ptr(), av.as_ptr());
        assert_eq!(range(middle), (0x2000, 0x3000, 2));
        assert!(g.vma_is_write_locked(middle) && g.vma_is_write_locked(next));
        check_counts(&g, 2);
    }
    // 2. Right, full.
    {
        let mm = Mm::new();
        let av = AnonVmaRef::new_root().unwrap();
        let mut g = mm.write_lock();
        let middle = link(&mut g, 0x2000, 0x6000, 2);
        let next = link(&mut g, 0x6000, 0x9000, 6);
        set_close(&mut g, next);
        give_anon(&mut g, middle, &av);
        drop(g);
        let mut g = mm.write_lock();
        let (r, st) = merge_existing(&mut g, None, middle, 0x2000, 0x6000);
        assert!(same(r, next));
        assert_eq!(st, VmaMergeState::Success);
        assert_eq!(range(next), (0x2000, 0x9000, 2));
        assert_eq!(next.anon_vma_ptr(), av.as_ptr());
        assert!(g.vma_is_write_locked(next));
        assert!(!middle.is_attached());
        check_counts(&g, 1);
    }
    // 3. Left, partial.
    {
        let mm = Mm::new();
        let av = AnonVmaRef::new_root().unwrap();
        let mut g = mm.write_lock();
        let prev = link(&mut g, 0, 0x3000, 0);
        let middle = link(&mut g, 0x3000, 0x7000, 3);
        set_close(&mut g, prev);
        set_close(&mut g, middle);
        give_anon(&mut g, middle, &av);
        drop(g);
        let mut g = mm.write_lock();
        let (r, st) = merge_existing(&mut g, Some(prev), middle, 0x3000, 0x6000);
        assert!(same(r, prev));
        assert_eq!(st, VmaMergeState::Success);
        assert_eq!(range(prev), (0, 0x6000, 0));
        assert_eq!(prev.anon_vma_ptr(), av.as_ptr());
        assert_eq!(range(middle), (0x6000, 0x7000, 6));
        assert!(g.vma_is_write_locked(prev) && g.vma_is_write_locked(middle));
        check_counts(&g, 2);
    }
    // 4. Left, full.
    {
        let mm = Mm::new();
        let av = AnonVmaRef::new_root().unwrap();
        let mut g = mm.write_lock();
        let prev = link(&mut g, 0, 0x3000, 0);
        let middle = link(&mut g, 0x3000, 0x7000, 3);
        set_close(&mut g, prev);
        give_anon(&mut g, middle, &av);
        drop(g);
        let mut g = mm.write_lock();
        let (r, st) = merge_existing(&mut g, Some(prev), middle, 0x3000, 0x7000);
        assert!(same(r, prev));
        assert_eq!(st, VmaMergeState::Success);
        assert_eq!(range(prev), (0, 0x7000, 0));
        assert_eq!(prev.anon_vma_ptr(), av.as_ptr());
        assert!(g.vma_is_write_locked(prev));
        check_counts(&g, 1);
    }
    // 5. Both.
    {
        let mm = Mm::new();
        let av = AnonVmaRef::new_root().unwrap();
        let mut g = mm.write_lock();
        let prev = link(&mut g, 0, 0x3000, 0);
        let middle = link(&mut g, 0x3000, 0x7000, 3);
        let next = link(&mut g, 0x7000, 0x9000, 7);
        set_close(&mut g, prev);
        give_anon(&mut g, middle, &av);
        drop(g);
        let mut g = mm.write_lock();
        let (r, st) = merge_existing(&mut g, Some(prev), middle, 0x3000, 0x7000);
        assert!(same(r, prev));
        assert_eq!(st, VmaMergeState::Success);
        assert_eq!(range(prev), (0, 0x9000, 0));
        assert_eq!(prev.anon_vma_ptr(), av.as_ptr());
        assert!(g.vma_is_write_locked(prev));
        assert!(!middle.is_attached() && !next.is_attached());
        check_counts(&g, 1);
    }
    // 6. Ranges touching neither end of middle never merge.
    {
        let mm = Mm::new();
        let mut g = mm.write_lock();
        let prev = link(&mut g, 0, 0x3000, 0);
        let middle = link(&mut g, 0x3000, 0x8000, 3);
        let next = link(&mut g, 0x8000, 0xa000, 8);
        drop(g);
        let mut g = mm.write_lock();
        for (s, e) in [
            (0x4000, 0x5000),
            (0x5000, 0x6000),
            (0x6000, 0x7000),
            (0x4000, 0x7000),
            (0x4000, 0x6000),
            (0x5000, 0x6000),
        ] {
            let (r, st) = merge_existing(&mut g, Some(middle), middle, s, e);
            assert!(r.is_none());
            assert_eq!(st, VmaMergeState::NoMerge);
        }
        assert_eq!(range(prev), (0, 0x3000, 0));
        assert_eq!(range(middle), (0x3000, 0x8000, 3));
        assert_eq!(range(next), (0x8000, 0xa000, 8));
        assert!(!g.vma_is_write_locked(middle));
        check_counts(&g, 3);
    }
}

#[test]
fn test_anon_vma_non_mergeable() {
    // 1. Existing: prev and next have different anon_vmas → only the left merge.
    {
        let mm = Mm::new();
        let (av1, av2) = (
            AnonVmaRef::new_root().unwrap(),
            AnonVmaRef::new_root().unwrap(),
        );
        let mut g = mm.write_lock();
        let prev = link(&mut g, 0, 0x3000, 0);
        let middle = link(&mut g, 0x3000, 0x7000, 3);
        let next = link(&mut g, 0x7000, 0x9000, 7);
        give_anon(&mut g, prev, &av1);
        give_anon(&mut g, next, &av2);
        drop(g);
        let mut g = mm.write_lock();
        let (r, st) = merge_existing(&mut g, Some(prev), middle, 0x3000, 0x7000);
        assert!(same(r, prev));
        assert_eq!(st, VmaMergeState::Success);
        assert_eq!(range(prev), (0, 0x7000, 0));
        assert!(g.vma_is_write_locked(prev));
        assert!(!g.vma_is_write_locked(next));
        assert_eq!(range(next), (0x7000, 0x9000, 7));
        check_counts(&g, 2);
    }
    // 2. New range: same.
    {
        let mm = Mm::new();
        let (av1, av2) = (
            AnonVmaRef::new_root().unwrap(),
            AnonVmaRef::new_root().unwrap(),
        );
        let mut g = mm.write_lock();
        let prev = link(&mut g, 0, 0x3000, 0);
        let next = link(&mut g, 0x7000, 0x9000, 7);
        give_anon(&mut g, prev, &av1);
        give_anon(&mut g, next, &av2);
        drop(g);
        let mut g = mm.write_lock();
        let mut vmg = VmaMergeStruct::new(0x3000, 0x7000, 3, F);
        let v = merge_new(&mut g, &mut vmg);
        assert!(same(v, prev));
        assert_eq!(range(prev), (0, 0x7000, 0));
        assert!(!g.vma_is_write_locked(next));
        check_counts(&g, 2);
    }
}

#[test]
fn test_dup_anon_vma() {
    // 1. vma_expand deleting a faulted next.
    {
        let mm = Mm::new();
        let av = AnonVmaRef::new_root().unwrap();
        let mut g = mm.write_lock();
        let target = link(&mut g, 0, 0x3000, 0);
        let next = link(&mut g, 0x3000, 0x5000, 3);
        give_anon(&mut g, next, &av);
        drop(g);
        let mut g = mm.write_lock();
        let mut vmg = VmaMergeStruct::new(0, 0x5000, 0, F);
        vmg.target = Some(target);
        vmg.next = Some(next);
        assert_eq!(g.vma_expand(&mut vmg), Ok(()));
        assert_eq!(range(target), (0, 0x5000, 0));
        assert_eq!(target.anon_vma_ptr(), av.as_ptr());
        assert!(av.clone_count() > 0, "was_cloned");
        check_counts(&g, 1);
    }
    // 2. Both sides, next faulted: prev gets next's anon_vma.
    // 3. Both sides, middle faulted: prev gets middle's.
    for middle_faulted in [false, true] {
        let mm = Mm::new();
        let av = AnonVmaRef::new_root().unwrap();
        let mut g = mm.write_lock();
        let prev = link(&mut g, 0, 0x3000, 0);
        let middle = link(&mut g, 0x3000, 0x5000, 3);
        let next = link(&mut g, 0x5000, 0x8000, 5);
        give_anon(&mut g, if middle_faulted { middle } else { next }, &av);
        drop(g);
        let mut g = mm.write_lock();
        let (r, st) = merge_existing(&mut g, Some(prev), middle, 0x3000, 0x5000);
        assert!(same(r, prev));
        assert_eq!(st, VmaMergeState::Success);
        assert_eq!(range(prev), (0, 0x8000, 0));
        assert_eq!(prev.anon_vma_ptr(), av.as_ptr());
        assert!(av.clone_count() > 0);
        check_counts(&g, 1);
    }
    // 4. Left partial with faulted middle.
    {
        let mm = Mm::new();
        let av = AnonVmaRef::new_root().unwrap();
        let mut g = mm.write_lock();
        let prev = link(&mut g, 0, 0x3000, 0);
        let middle = link(&mut g, 0x3000, 0x8000, 3);
        give_anon(&mut g, middle, &av);
        drop(g);
        let mut g = mm.write_lock();
        let (r, _) = merge_existing(&mut g, Some(prev), middle, 0x3000, 0x5000);
        assert!(same(r, prev));
        assert_eq!(range(prev), (0, 0x5000, 0));
        assert_eq!(range(middle), (0x5000, 0x8000, 5));
        assert_eq!(prev.anon_vma_ptr(), av.as_ptr());
        assert!(av.clone_count() > 0);
        check_counts(&g, 2);
    }
    // 5. Right partial with faulted middle.
    {
        let mm = Mm::new();
        let av = AnonVmaRef::new_root().unwrap();
        let mut g = mm.write_lock();
        let middle = link(&mut g, 0, 0x5000, 0);
        let next = link(&mut g, 0x5000, 0x8000, 5);
        give_anon(&mut g, middle, &av);
        drop(g);
        let mut g = mm.write_lock();
        let (r, _) = merge_existing(&mut g, Some(middle), middle, 0x3000, 0x5000);
        assert!(same(r, next));
        assert_eq!(range(next), (0x3000, 0x8000, 3));
        assert_eq!(range(middle), (0, 0x3000, 0));
        assert_eq!(next.anon_vma_ptr(), av.as_ptr());
        assert!(av.clone_count() > 0);
        check_counts(&g, 2);
    }
}

#[test]
fn test_vmi_prealloc_fail() {
    // 1. merge_existing with preallocation failure.
    {
        let mm = Mm::new();
        let av = AnonVmaRef::new_root().unwrap();
        let mut g = mm.write_lock();
        let prev = link(&mut g, 0, 0x3000, 0);
        let middle = link(&mut g, 0x3000, 0x5000, 3);
        give_anon(&mut g, middle, &av);
        drop(g);
        let mut g = mm.write_lock();
        g.set_fail_prealloc(true);
        let (r, st) = merge_existing(&mut g, Some(prev), middle, 0x3000, 0x5000);
        assert!(r.is_none());
        assert_eq!(st, VmaMergeState::ErrorNomem);
        assert!(
            av.clone_count() > 0 && av.unlink_count() > 0,
            "cloned then unlinked"
        );
        assert!(
            !prev.has_anon_vma(),
            "real unlink_anon_vmas clears the target's anon_vma"
        );
        assert_eq!(prev.anon_vma_chain_len(&g), 0);
        assert_eq!(range(prev), (0, 0x3000, 0));
        assert_eq!(range(middle), (0x3000, 0x5000, 3));
        assert_eq!(middle.anon_vma_ptr(), av.as_ptr());
        g.set_fail_prealloc(false);
        check_counts(&g, 2);
    }
    // 2. vma_expand with preallocation failure.
    {
        let mm = Mm::new();
        let av = AnonVmaRef::new_root().unwrap();
        let mut g = mm.write_lock();
        let target = link(&mut g, 0, 0x3000, 0);
        let next = link(&mut g, 0x3000, 0x5000, 3);
        give_anon(&mut g, next, &av);
        drop(g);
        let mut g = mm.write_lock();
        g.set_fail_prealloc(true);
        let mut vmg = VmaMergeStruct::new(0, 0x5000, 0, F);
        vmg.target = Some(target);
        vmg.next = Some(next);
        assert_eq!(g.vma_expand(&mut vmg), Err(Errno::ENOMEM));
        assert_eq!(vmg.state, VmaMergeState::ErrorNomem);
        assert!(av.clone_count() > 0 && av.unlink_count() > 0);
        assert!(!target.has_anon_vma());
        assert_eq!(range(target), (0, 0x3000, 0));
        assert_eq!(range(next), (0x3000, 0x5000, 3));
        assert!(next.is_attached());
        g.set_fail_prealloc(false);
        check_counts(&g, 2);
    }
}

#[test]
fn test_merge_extend() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let first = link(&mut g, 0, 0x1000, 0);
    let _second = link(&mut g, 0x3000, 0x4000, 3);
    drop(g);
    let mut g = mm.write_lock();
    let r = g.vma_merge_extend(first, 0x2000);
    assert!(same(r, first));
    assert_eq!(range(first), (0, 0x4000, 0));
    assert!(g.vma_is_write_locked(first));
    check_counts(&g, 1);
}

#[test]
fn test_copy_vma() {
    // 1. No neighbour to merge with: a new VMA, pgoff re-derived (unfaulted anon).
    {
        let mm = Mm::new();
        let mut g = mm.write_lock();
        let mut vma = link(&mut g, 0x3000, 0x5000, 3);
        let src = vma;
        let (new, _) = g.copy_vma(&mut vma, 0, 0x2000, 0).unwrap();
        assert!(!core::ptr::eq(new, src));
        assert!(core::ptr::eq(vma, src));
        assert_eq!(range(new), (0, 0x2000, 0));
        assert!(new.is_attached());
        check_counts(&g, 2);
    }
    // 2. Merges into next.
    {
        let mm = Mm::new();
        let mut g = mm.write_lock();
        let mut vma = link(&mut g, 0, 0x2000, 0);
        let next = link(&mut g, 0x6000, 0x8000, 6);
        let (new, _) = g.copy_vma(&mut vma, 0x4000, 0x2000, 4).unwrap();
        assert!(core::ptr::eq(new, next));
        assert_eq!(range(next), (0x4000, 0x8000, 4));
        check_counts(&g, 2);
    }
}

#[test]
fn test_expand_only_mode() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let _first = link(&mut g, 0, 0x2000, 0);
    let prev = link(&mut g, 0x3000, 0x5000, 3);
    drop(g);
    let mut g = mm.write_lock();
    let mut vmg = VmaMergeStruct::new(0x5000, 0x9000, 5, F);
    vmg.vmi = VmaIterator::new(0x3000);
    vmg.prev = Some(prev);
    vmg.just_expand = true;
    let v = g.vma_merge_new_range(&mut vmg);
    assert!(same(v, prev));
    assert_eq!(vmg.state, VmaMergeState::Success);
    assert_eq!(range(prev), (0x3000, 0x9000, 3));
    assert!(g.vma_is_write_locked(prev));
    assert_eq!(vmg.vmi.index, 0x3000);
    check_counts(&g, 2);
}

#[test]
fn test_mmap_region_basic() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    assert_eq!(
        g.mmap_region(0x300000, 0x3000, F, 0x300, None),
        Ok(0x300000)
    );
    assert_eq!(
        g.mmap_region(0x250000, 0x3000, F, 0x250, None),
        Ok(0x250000)
    );
    assert_eq!(
        g.mmap_region(0x303000, 0x3000, F, 0x303, None),
        Ok(0x303000)
    );
    assert_eq!(
        g.mmap_region(0x24d000, 0x3000, F, 0x24d, None),
        Ok(0x24d000)
    );
    check_counts(&g, 2);
    let all: Vec<_> = g.vmas().into_iter().map(range).collect();
    assert_eq!(
        all,
        vec![(0x24d000, 0x253000, 0x24d), (0x300000, 0x306000, 0x300)]
    );
}
