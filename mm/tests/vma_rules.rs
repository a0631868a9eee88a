//! Merge/split rules beyond the harness scenarios: fork-child anon_vma rules, the 2026
//! copied_from fix, sticky flags, max_map_count, may_split veto, open/close hooks,
//! hugetlb split hook, munmap-style removal, anon_vma reuse, scale, and the ASSUMPTIONS of
//! the engine's entry points (`mm/src/vma/merge.rs`), which debug builds check.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::{CLOSES, F, count_close, link};
use mm::errno::Errno;
use mm::vma::{
    Mm, MmHooks, MmWriteGuard, VmFlags, VmOperations, VmaIterator, VmaMergeState, VmaMergeStruct,
    VmaRef,
};

/// A fork child of a faulted parent VMA living in another mm.
fn fork_child(g: &mut MmWriteGuard<'_>, s: usize, e: usize, pg: usize) -> VmaRef {
    let parent_mm = Box::leak(Box::new(Mm::new()));
    // Held under the child's mmap lock: the nesting `dup_mmap` annotates.
    let mut pg_ = parent_mm.write_lock_nested();
    let parent = pg_.map_anon(s, e, pg, F).unwrap();
    pg_.anon_vma_prepare(parent).unwrap();
    let child = g.vm_area_alloc().unwrap();
    g.vma_init(
        child,
        mm::vma::VmaInit {
            start: s,
            end: e,
            pgoff: pg,
            flags: F,
            file: None,
            ops: None,
        },
    )
    .unwrap();
    // Linux's dup_mmap holds the parent's mmap lock while it forks the anon_vmas.
    g.anon_vma_fork(child, parent, &pg_).unwrap();
    drop(pg_);
    g.vma_link(child).unwrap();
    assert!(child.is_fork_child(&*g));
    child
}

#[test]
fn fork_child_refuses_case2_merge() {
    // Unfaulted new range next to a fork child: Case 2 refused.
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let prev = fork_child(&mut g, 0, 0x2000, 0);
    let mut vmg = VmaMergeStruct::new(0x2000, 0x3000, 2, F);
    vmg.prev = Some(prev);
    assert!(g.vma_merge_new_range(&mut vmg).is_none());
    assert_eq!(vmg.state, VmaMergeState::NoMerge);
    // Control: a non-forked faulted prev merges.
    let mm2 = Mm::new();
    let mut g2 = mm2.write_lock_nested();
    let p2 = link(&mut g2, 0, 0x2000, 0);
    g2.anon_vma_prepare(p2).unwrap();
    let mut vmg = VmaMergeStruct::new(0x2000, 0x3000, 2, F);
    vmg.prev = Some(p2);
    assert!(g2.vma_merge_new_range(&mut vmg).is_some());
}

#[test]
fn fork_child_refuses_case1_merge() {
    // Faulted fork-child middle into unfaulted prev: Case 1 refused.
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let prev = link(&mut g, 0, 0x2000, 0);
    let middle = fork_child(&mut g, 0x2000, 0x4000, 2);
    let mut vmg = VmaMergeStruct::from_vma(&g, Some(prev), middle, 0x2000, 0x4000);
    assert!(g.vma_merge_existing_range(&mut vmg).is_none());
    assert_eq!(vmg.state, VmaMergeState::NoMerge);
    assert_eq!(g.map_count(), 2);
}

#[test]
fn unfaulted_faulted_unfaulted_mprotect_merges() {
    // The 879bca0a2c4f case: prev and next unfaulted, middle faulted → all merge,
    // prev inherits middle's anon_vma.
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let prev = link(&mut g, 0, 0x2000, 0);
    let middle = link(&mut g, 0x2000, 0x4000, 2);
    let _next = link(&mut g, 0x4000, 0x6000, 4);
    g.anon_vma_prepare(middle).unwrap();
    let av = middle.anon_vma(&g).unwrap();
    let mut vmg = VmaMergeStruct::from_vma(&g, Some(prev), middle, 0x2000, 0x4000);
    let r = g.vma_merge_existing_range(&mut vmg).unwrap();
    assert!(core::ptr::eq(r, prev));
    assert_eq!((prev.start(), prev.end()), (0, 0x6000));
    assert_eq!(prev.anon_vma_ptr(), av.as_ptr());
    assert_eq!(g.map_count(), 1);
}

#[test]
fn copy_vma_propagates_anon_vma_copied_from() {
    // 61f67c230a5e: faulted source copied into a gap between unfaulted neighbours.
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let prev = link(&mut g, 0, 0x2000, 0xe);
    let _next = link(&mut g, 0x4000, 0x6000, 0x12);
    let mut src = link(&mut g, 0x10000, 0x12000, 0x10);
    g.anon_vma_prepare(src).unwrap();
    let av = src.anon_vma(&g).unwrap();
    let (new, _) = g.copy_vma(&mut src, 0x2000, 0x2000, 0x10).unwrap();
    assert!(core::ptr::eq(new, prev));
    assert_eq!((prev.start(), prev.end(), prev.pgoff()), (0, 0x6000, 0xe));
    assert_eq!(
        prev.anon_vma_ptr(),
        av.as_ptr(),
        "anon_vma must follow the copied pages"
    );
    assert_eq!(g.map_count(), 2);
}

#[test]
fn copy_vma_fork_child_source_does_not_merge() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let _prev = link(&mut g, 0, 0x2000, 0xe);
    let mut src = fork_child(&mut g, 0x10000, 0x12000, 0x10);
    let (new, need_rmap_locks) = g.copy_vma(&mut src, 0x2000, 0x2000, 0x10).unwrap();
    assert!(!need_rmap_locks);
    assert_eq!(
        (new.start(), new.end(), new.pgoff()),
        (0x2000, 0x4000, 0x10)
    );
    assert_eq!(new.anon_vma_ptr(), src.anon_vma_ptr());
    assert_eq!(g.map_count(), 3);
}

#[test]
fn sticky_softdirty_or_into_existing_merge() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let prev = link(&mut g, 0, 0x2000, 0);
    let middle = g
        .map_anon(0x2000, 0x3000, 2, F | VmFlags::SOFTDIRTY)
        .unwrap();
    let mut vmg = VmaMergeStruct::from_vma(&g, Some(prev), middle, 0x2000, 0x3000);
    vmg.flags = F;
    let r = g.vma_merge_existing_range(&mut vmg).unwrap();
    assert!(r.flags().contains(VmFlags::SOFTDIRTY));
    // A non-sticky difference (EXEC) prevents the merge.
    let other = g.map_anon(0x3000, 0x4000, 3, F | VmFlags::EXEC).unwrap();
    let mut vmg = VmaMergeStruct::from_vma(&g, Some(prev), other, 0x3000, 0x4000);
    assert!(g.vma_merge_existing_range(&mut vmg).is_none());
}

#[test]
fn split_respects_max_map_count_but_dunder_split_bypasses() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let v = link(&mut g, 0, 0x4000, 0);
    g.set_max_map_count(1);
    assert_eq!(g.split_vma(v, 0x1000, false).err(), Some(Errno::ENOMEM));
    assert_eq!(g.map_count(), 1);
    let new = g.__split_vma(v, 0x1000, false).unwrap();
    assert_eq!((v.start(), v.end(), v.pgoff()), (0, 0x1000, 0));
    assert_eq!((new.start(), new.end(), new.pgoff()), (0x1000, 0x4000, 1));
    assert!(g.vma_is_write_locked(v) && g.vma_is_write_locked(new));
    assert_eq!(g.map_count(), 2);
    // vma_modify needs a split → ENOMEM at the limit, nothing changed.
    let r = g.vma_modify_flags(Some(new), new, 0x2000, 0x3000, &mut (F | VmFlags::EXEC));
    assert_eq!(r.err(), Some(Errno::ENOMEM));
    assert_eq!(g.map_count(), 2);
    assert_eq!(g.split_vma(v, 0, false).err(), Some(Errno::ENOMEM));
    g.set_max_map_count(100);
    assert_eq!(
        g.split_vma(v, 0, false).err(),
        Some(Errno::EINVAL),
        "split at the edge"
    );
    assert_eq!(
        g.split_vma(v, 0x800, false).err(),
        Some(Errno::EINVAL),
        "unaligned"
    );
}

static OPENS: AtomicUsize = AtomicUsize::new(0);
fn veto(_: VmaRef, addr: usize) -> Result<(), Errno> {
    if addr % 0x200000 != 0 {
        Err(Errno::EINVAL)
    } else {
        Ok(())
    }
}
fn count_open(_: VmaRef) {
    OPENS.fetch_add(1, Ordering::SeqCst);
}
static HOOK_OPS: VmOperations = VmOperations {
    open: Some(count_open),
    close: Some(count_close),
    may_split: Some(veto),
    fault: None,
    name: None,
};
static SPLITS: AtomicUsize = AtomicUsize::new(0);
fn hugetlb_split(_: VmaRef, addr: usize) {
    assert_eq!(addr, 0x400000);
    SPLITS.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn may_split_veto_open_close_and_hugetlb_hook() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    g.set_hooks(MmHooks {
        hugetlb_split: Some(hugetlb_split),
        ..MmHooks::default()
    });
    let v = g.vm_area_alloc().unwrap();
    g.vma_init(
        v,
        mm::vma::VmaInit {
            start: 0x200000,
            end: 0x800000,
            pgoff: 0x200,
            flags: F | VmFlags::HUGETLB,
            file: None,
            ops: Some(&HOOK_OPS),
        },
    )
    .unwrap();
    g.vma_link(v).unwrap();
    assert_eq!(
        g.split_vma(v, 0x201000, false).err(),
        Some(Errno::EINVAL),
        "vetoed"
    );
    assert_eq!(g.map_count(), 1);
    assert_eq!(OPENS.load(Ordering::SeqCst), 0);
    let new = g.split_vma(v, 0x400000, false).unwrap();
    assert_eq!(OPENS.load(Ordering::SeqCst), 1, "open(new)");
    assert_eq!(SPLITS.load(Ordering::SeqCst), 1, "hugetlb_split called");
    assert_eq!(
        (new.start(), new.end(), new.pgoff()),
        (0x400000, 0x800000, 0x400)
    );
    // Unmapping calls close once per VMA.
    assert_eq!(g.unmap_range(0x200000, 0x800000), Ok(2));
    assert_eq!(CLOSES.load(Ordering::SeqCst), 2);
    assert_eq!(g.live_vmas(), 0);
}

#[test]
fn detach_range_rules() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let a = link(&mut g, 0x1000, 0x5000, 1);
    let b = link(&mut g, 0x6000, 0x8000, 6);
    // Hole inside one VMA at the limit → ENOMEM, nothing changed.
    g.set_max_map_count(2);
    assert_eq!(g.detach_range(0x2000, 0x3000).err(), Some(Errno::ENOMEM));
    assert_eq!(g.map_count(), 2);
    g.set_max_map_count(100);
    // Straddling range: a is trimmed, b removed.
    let d = g.detach_range(0x3000, 0x9000).unwrap();
    let removed: Vec<_> = d.iter().map(|v| (v.start(), v.end(), v.refcnt())).collect();
    assert_eq!(removed, vec![(0x3000, 0x5000, 0), (0x6000, 0x8000, 0)]);
    // As in Linux, the split-off low part is the new VMA; `a` itself was removed.
    assert!(core::ptr::eq(d.iter().next().unwrap(), a));
    let low = g.vma_lookup(0x1000).unwrap();
    assert_eq!((low.start(), low.end(), low.pgoff()), (0x1000, 0x3000, 1));
    g.remove_vmas(d);
    assert_eq!(g.map_count(), 1);
    assert_eq!(g.live_vmas(), 1);
    let _ = b;
    // Sealed VMAs refuse.
    g.vma_start_write(low);
    g.vma_set_flags(low, F | VmFlags::SEALED).unwrap();
    assert_eq!(g.detach_range(0x1000, 0x2000).err(), Some(Errno::EPERM));
    assert_eq!(g.detach_range(0x1001, 0x2000).err(), Some(Errno::EINVAL));
    assert!(g.detach_range(0x10000, 0x20000).unwrap().is_empty());
}

#[test]
fn anon_vma_clone_failure_in_split_leaves_state() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let v = link(&mut g, 0, 0x4000, 0);
    g.anon_vma_prepare(v).unwrap();
    g.set_fail_anon_clone(true);
    assert_eq!(g.split_vma(v, 0x2000, false).err(), Some(Errno::ENOMEM));
    assert_eq!((v.start(), v.end()), (0, 0x4000));
    assert!(v.has_anon_vma());
    assert_eq!(g.map_count(), 1);
    assert_eq!(g.live_vmas(), 1);
    g.set_fail_prealloc(true);
    g.set_fail_anon_clone(false);
    assert_eq!(g.split_vma(v, 0x2000, false).err(), Some(Errno::ENOMEM));
    assert_eq!(g.live_vmas(), 1);
    g.set_fail_prealloc(false);
    assert!(g.split_vma(v, 0x2000, false).is_ok());
}

#[test]
fn anon_vma_reuse_for_first_fault() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let a = link(&mut g, 0, 0x2000, 0);
    let b = g.map_anon(0x2000, 0x3000, 2, F - VmFlags::WRITE).unwrap();
    let c = g.map_anon(0x3000, 0x4000, 3, F | VmFlags::LOCKED).unwrap();
    g.anon_vma_prepare(a).unwrap();
    g.anon_vma_prepare(b).unwrap();
    assert_eq!(
        b.anon_vma_ptr(),
        a.anon_vma_ptr(),
        "access-flag difference allows reuse"
    );
    g.anon_vma_prepare(c).unwrap();
    assert_ne!(
        c.anon_vma_ptr(),
        b.anon_vma_ptr(),
        "LOCKED differs: fresh anon_vma"
    );
}

#[test]
fn scales_to_max_map_count() {
    let n = mm::vma::DEFAULT_MAX_MAP_COUNT;
    let mm = mm::vma::bench::build_mm(n).unwrap();
    {
        let g = mm.write_lock();
        assert_eq!(g.map_count(), n);
        let h = g.view().height();
        assert!(h <= 24, "AVL height {h} must be logarithmic");
    }
    for i in (0..n).step_by(997) {
        let a = mm::vma::bench::addr(i);
        assert_eq!(
            mm::vma::bench::find(&mm, a + 0x1000).map(|v| v.start()),
            Some(a)
        );
        assert_eq!(mm::vma::bench::find_rcu(&mm, a).map(|v| v.start()), Some(a));
    }
    mm::vma::bench::split_remerge(&mm, n / 2).unwrap();
    let g = mm.write_lock();
    assert_eq!(g.map_count(), n);
    // Gap search in a big tree: the first hole and the space above everything.
    let v = g.view();
    let base = mm::vma::bench::BENCH_BASE;
    assert_eq!(
        v.gap_bottom_up(0x1000, base, usize::MAX, 0x1000),
        Some(base + 0x4000)
    );
    assert_eq!(
        v.gap_bottom_up(0x2000, base, mm::vma::bench::addr(n), 0x1000),
        None
    );
    let top = mm::vma::bench::addr(n - 1) + 0x4000;
    assert_eq!(v.gap_bottom_up(0x2000, base, usize::MAX, 0x1000), Some(top));
    assert_eq!(
        v.gap_top_down(0x1000, base, mm::vma::bench::addr(n), 0x1000),
        Some(mm::vma::bench::addr(n) - 0x1000)
    );
}

#[test]
fn iterator_positions() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    link(&mut g, 0x1000, 0x2000, 1);
    link(&mut g, 0x3000, 0x4000, 3);
    let v = g.view();
    let mut it = VmaIterator::new(0);
    assert_eq!(it.next(&v).map(|x| x.start()), Some(0x1000));
    assert_eq!(it.next(&v).map(|x| x.start()), Some(0x3000));
    assert!(it.next(&v).is_none());
    it.set(0x3000);
    assert_eq!(it.prev(&v).map(|x| x.start()), Some(0x1000));
    assert_eq!(g.find_vma_prev(0x2500).1.map(|x| x.start()), Some(0x1000));
}

#[test]
fn pool_returns_to_baseline() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    for i in 0..100 {
        link(&mut g, i * 0x2000, i * 0x2000 + 0x1000, i * 2);
    }
    assert_eq!(g.live_vmas(), 100);
    g.unmap_range(0, 100 * 0x2000).unwrap();
    assert_eq!(g.live_vmas(), 0);
    assert_eq!(g.map_count(), 0);
    assert_eq!(mm::vma::pool::vma_pool_stats().freed_attached, 0);
}

// ---- the engine's ASSUMPTIONS, checked in debug builds -------------------------------
//
// A request that breaks one is a bug of the caller, not a request to refuse: debug
// builds stop at it with the assumption's message, where Linux's VM_WARN_ON would warn.
// (What the engine refuses instead, with an error, is tested above.)

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "prev is not the VMA below")]
fn merge_new_range_assumes_prev_is_the_vma_below() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let a = link(&mut g, 0, 0x2000, 0);
    let _b = link(&mut g, 0x3000, 0x5000, 3);
    // 0x7000..0x8000 lies above B, but A is passed as prev.
    let mut vmg = VmaMergeStruct::new(0x7000, 0x8000, 7, F);
    vmg.prev = Some(a);
    g.vma_merge_new_range(&mut vmg);
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "next is set by this function")]
fn merge_existing_range_assumes_next_unset() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let prev = link(&mut g, 0, 0x2000, 0);
    let middle = link(&mut g, 0x2000, 0x4000, 2);
    let next = link(&mut g, 0x4000, 0x6000, 4);
    let mut vmg = VmaMergeStruct::from_vma(&g, Some(prev), middle, 0x2000, 0x4000);
    vmg.next = Some(next);
    g.vma_merge_existing_range(&mut vmg);
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "prev is neither middle")]
fn merge_existing_range_assumes_prev_given_when_there_is_one() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let _prev = link(&mut g, 0, 0x2000, 0);
    let middle = link(&mut g, 0x2000, 0x4000, 2);
    let mut vmg = VmaMergeStruct::from_vma(&g, None, middle, 0x2000, 0x4000);
    g.vma_merge_existing_range(&mut vmg);
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "vmg.pgoff moves the pages target maps")]
fn expand_assumes_target_pages_keep_their_offsets() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let target = link(&mut g, 0x1000, 0x2000, 1);
    // Page 0x1000 is file page 1; expanding down to 0 must make page 0 file page 0.
    let mut vmg = VmaMergeStruct::new(0, 0x2000, 5, F);
    vmg.target = Some(target);
    let _ = g.vma_expand(&mut vmg);
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "pgoff moves the pages that stay")]
fn shrink_assumes_remaining_pages_keep_their_offsets() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let v = link(&mut g, 0, 0x3000, 0);
    // The pages that stay start at file page 1, not 0.
    let _ = g.vma_shrink(v, 0x1000, 0x3000, 0);
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "is not free")]
fn merge_extend_assumes_the_growth_is_free() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let first = link(&mut g, 0, 0x1000, 0);
    let _second = link(&mut g, 0x2000, 0x3000, 2);
    g.vma_merge_extend(first, 0x2000);
}
