//! The VMA engine in the kernel: a subset of the host scenarios, run on the
//! kernel's heap, locks and atomics, with VMA counts checked by the harness.
#![no_std]
#![no_main]
// Test cases are named for what they check; the custom test framework makes them
// items of the test crate, which `missing_docs` would otherwise ask to document.
#![allow(missing_docs)]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::run_tests)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use mm::errno::Errno;
use mm::vma::{Mm, VmFlags};

kernel::test_kernel_main!();

const P: usize = 0x1000;
const RW: VmFlags = VmFlags::RW_DEFAULT;

fn layout(mm: &Mm) -> alloc::vec::Vec<(usize, usize, usize)> {
    mm.write_lock()
        .vmas()
        .iter()
        .map(|v| (v.start(), v.end(), v.pgoff()))
        .collect()
}

#[test_case]
fn mmap_region_basic_merges_adjacent_anonymous_ranges() {
    // tools/testing/vma test_mmap_region_basic.
    let mm = Mm::new();
    let mut g = mm.write_lock();
    assert_eq!(
        g.map_new_range(0x300000, 0x3000, RW, 0x300, None),
        Ok(0x300000)
    );
    assert_eq!(
        g.map_new_range(0x250000, 0x3000, RW, 0x250, None),
        Ok(0x250000)
    );
    assert_eq!(
        g.map_new_range(0x303000, 0x3000, RW, 0x303, None),
        Ok(0x303000)
    );
    assert_eq!(
        g.map_new_range(0x24d000, 0x3000, RW, 0x24d, None),
        Ok(0x24d000)
    );
    assert_eq!(g.map_count(), 2);
    drop(g);
    assert_eq!(
        layout(&mm),
        [(0x24d000, 0x253000, 0x24d), (0x300000, 0x306000, 0x300)]
    );
}

#[test_case]
fn mprotect_style_split_then_remerge() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let v = g.map_anon(0x10_0000, 0x10_0000 + 8 * P, 0x100, RW).unwrap();
    let ro = RW - VmFlags::WRITE;
    let mid = g
        .vma_modify_flags(Some(v), v, 0x10_0000 + 2 * P, 0x10_0000 + 4 * P, &mut {
            ro
        })
        .unwrap();
    g.vma_set_flags(mid, ro).unwrap();
    assert_eq!(g.map_count(), 3);
    assert!(g.vma_is_write_locked(mid));
    drop(g);
    assert_eq!(
        layout(&mm),
        [
            (0x10_0000, 0x10_2000, 0x100),
            (0x10_2000, 0x10_4000, 0x102),
            (0x10_4000, 0x10_8000, 0x104)
        ]
    );
    let mut g = mm.write_lock();
    let prev = g.vma_prev_of(0x10_2000);
    let merged = g
        .vma_modify_flags(prev, mid, 0x10_2000, 0x10_4000, &mut { RW })
        .unwrap();
    g.vma_set_flags(merged, RW).unwrap();
    assert_eq!(g.map_count(), 1);
    drop(g);
    assert_eq!(layout(&mm), [(0x10_0000, 0x10_8000, 0x100)]);
}

#[test_case]
fn split_refused_at_max_map_count() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let v = g.map_anon(0x20_0000, 0x20_0000 + 4 * P, 0x200, RW).unwrap();
    g.set_max_map_count(1);
    assert_eq!(
        g.split_vma(v, 0x20_0000 + P, false).err(),
        Some(Errno::ENOMEM)
    );
    assert_eq!(g.map_count(), 1, "nothing changed");
    assert_eq!((v.start(), v.end()), (0x20_0000, 0x20_0000 + 4 * P));
}

#[test_case]
fn lockless_lookup_respects_the_vma_write_lock() {
    let mm = Mm::new();
    let v = mm
        .write_lock()
        .map_anon(0x40_0000, 0x40_0000 + 2 * P, 0x400, RW)
        .unwrap();
    {
        let r = mm
            .lock_vma_under_rcu(0x40_0000 + 5)
            .expect("unlocked VMA is found lock-free");
        assert!(core::ptr::eq(r.vma(), v));
    }
    let mut g = mm.write_lock();
    g.vma_start_write(v);
    assert!(
        mm.lock_vma_under_rcu(0x40_0000).is_none(),
        "write-locked VMA: fall back to mmap_lock"
    );
    drop(g); // mmap_write_unlock ends every VMA write lock at once
    assert!(mm.lock_vma_under_rcu(0x40_0000).is_some());
    assert!(
        mm.lock_vma_under_rcu(0x40_0000 + 2 * P).is_none(),
        "no VMA there"
    );
}

#[test_case]
fn unmapping_frees_the_vmas() {
    let before = kernel::memory::usage().vmas;
    let mm = Mm::new();
    let mut g = mm.write_lock();
    for i in 0..100usize {
        let a = 0x100_0000 + i * 3 * P;
        g.map_anon(a, a + P, a >> 12, RW).unwrap();
    }
    assert_eq!(kernel::memory::usage().vmas, before + 100);
    let d = g.detach_range(0x100_0000, 0x100_0000 + 150 * P).unwrap();
    g.remove_vmas(d);
    assert_eq!(g.map_count(), 50);
    assert_eq!(kernel::memory::usage().vmas, before + 50);
}
