//! Host tests of the page-table layer over simulated physical memory.

extern crate std;

use std::vec::Vec;

use x86_64::{PhysAddr, VirtAddr};

use super::entry::{Kind, Table};
use super::tlb::{FlushKind, Release, TlbEvent, flush_kind};
use super::*;
use crate::frame::FrameAllocator;
use crate::frame::sim::{SimulatedMemory, simulated};

const P: PageTableFlags = PageTableFlags::PRESENT;
const W: PageTableFlags = PageTableFlags::WRITABLE;
const U: PageTableFlags = PageTableFlags::USER_ACCESSIBLE;
const NX: PageTableFlags = PageTableFlags::NO_EXECUTE;
const RW: PageTableFlags = P.union(W).union(U);
const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
/// Physical memory the allocator does not describe (an MMIO-like window): mapped without
/// accounting.
const MMIO: u64 = 0x80_0000_0000;

fn va(x: u64) -> VirtAddr {
    VirtAddr::new(x)
}

fn r(a: u64, b: u64) -> core::ops::Range<VirtAddr> {
    va(a)..va(b)
}

fn mem(mib: usize) -> &'static FrameAllocator {
    simulated(mib << 20)
}

fn space(a: &'static FrameAllocator) -> PageTableRoot {
    PageTableRoot::new_user_only(a).unwrap()
}

/// Allocates every free frame: returns them so the test can give them back.
fn exhaust(a: &FrameAllocator, leave: usize) -> Vec<PhysAddr> {
    let mut v = Vec::new();
    while let Ok(pa) = a.alloc(0) {
        v.push(pa);
    }
    for _ in 0..leave {
        if let Some(pa) = v.pop() {
            a.free(pa, 0).unwrap();
        }
    }
    v
}

fn release(a: &FrameAllocator, v: Vec<PhysAddr>) {
    for pa in v {
        a.free(pa, 0).unwrap();
    }
}

fn flushes(s: &PageTableRoot) -> Vec<FlushKind> {
    s.tlb()
        .events()
        .into_iter()
        .filter_map(|e| match e {
            TlbEvent::Flush { kind, .. } => Some(kind),
            _ => None,
        })
        .collect()
}

/// Every present non-leaf entry of the user half points at a non-empty table, and every
/// such table page is marked PAGETABLE.
fn assert_no_empty_tables(s: &PageTableRoot) {
    fn walk(a: &FrameAllocator, t: Table, level: Level) {
        for i in 0..512 {
            if let Kind::Table(pa) = t.load(i).kind(level) {
                // SAFETY: `pa` was read from a present non-leaf entry of `t`, and the
                // space borrowed by the caller keeps its tables linked while we walk.
                let c = unsafe { t.child(pa) };
                assert!(
                    !c.is_empty(),
                    "empty {:?} table at {:#x}",
                    level.lower(),
                    pa.as_u64()
                );
                assert!(
                    a.meta(pa)
                        .unwrap()
                        .flags()
                        .contains(crate::frame::FrameFlags::PAGETABLE)
                );
                walk(a, c, level.lower().unwrap());
            }
        }
    }
    let root = s.root_table();
    for i in 0..256 {
        if let Kind::Table(pa) = root.load(i).kind(Level::Pml4) {
            // SAFETY: as above.
            let c = unsafe { root.child(pa) };
            assert!(!c.is_empty());
            walk(s.allocator(), c, Level::Pdpt);
        }
    }
}

#[test]
fn map_translate_unmap_4k() {
    let a = mem(8);
    let base = a.allocated_frames_settled();
    let s = space(a);
    let f = a.alloc(0).unwrap();
    s.map_frame(va(0x40_0000), f, PageSize::Size4K, RW | NX)
        .unwrap();
    // PML4 + PDPT + PD + PT + frame.
    assert_eq!(a.allocated_frames_settled(), base + 5);
    let t = s.translate(va(0x40_0123)).unwrap();
    assert_eq!(t.phys, f + 0x123u64);
    assert_eq!(t.frame, f);
    assert_eq!(t.size, PageSize::Size4K);
    assert_eq!(t.flags, RW | NX);
    assert_eq!(s.translate(va(0x40_0000 + K4)), None);
    assert_eq!(s.translate(va(0x40_0000 - K4)), None);
    let w = s.walk(va(0x40_0fff));
    assert_eq!(w.level, Level::Pt);
    assert_eq!(w.entry.addr(), f);
    assert_eq!(s.walk(va(0x40_1000)).level, Level::Pt);
    assert_eq!(s.walk(va(0x8000_0000)).level, Level::Pdpt);
    let m = a.meta(f).unwrap();
    assert_eq!((m.refcount(), m.mapcount()), (1, 1));
    assert_eq!(s.count_user(), (1, 3));

    let mut g = MmuGather::new(&s);
    s.unmap(r(0x40_0000, 0x40_1000), &mut g).unwrap();
    assert_eq!(s.translate(va(0x40_0000)), None);
    // Map count drops at once, the reference only after the flush.
    assert_eq!((m.refcount(), m.mapcount()), (1, 0));
    let st = g.finish();
    assert_eq!((st.frames_put, st.tables_freed), (1, 3));
    assert_eq!(a.allocated_frames_settled(), base + 1);
    assert_eq!(s.count_user(), (0, 0));
    drop(s);
    assert_eq!(a.allocated_frames_settled(), base);
}

/// Linux's `free_pgtables` floor and ceiling: an unmap frees an emptied table only if
/// its whole span lies between the neighbouring VMAs (a fault on a neighbour may be
/// walking into a table it shares), and MADV_DONTNEED's zap frees none.
#[test]
fn unmap_frees_only_tables_no_neighbour_reaches() {
    let a = mem(8);
    let base = a.allocated_frames_settled();
    let s = space(a);
    let f = a.alloc(0).unwrap();
    s.map_frame(va(0x40_0000), f, PageSize::Size4K, RW).unwrap();
    assert_eq!(s.count_user(), (1, 3));
    // A neighbouring VMA starts at 0x40_1000: the PT (span 0x40_0000..0x60_0000)
    // and everything above it reach into it.
    let neighbour = FreeTables::Within {
        floor: 0x40_0000,
        ceiling: 0x40_1000,
    };
    let mut g = MmuGather::new(&s);
    s.unmap_freeing(r(0x40_0000, 0x40_1000), neighbour, &mut g)
        .unwrap();
    assert_eq!(g.finish().tables_freed, 0);
    assert_eq!(
        s.count_user(),
        (0, 3),
        "the emptied PT stays for the neighbour"
    );
    // MADV_DONTNEED keeps tables whatever the bounds.
    let f2 = a.alloc(0).unwrap();
    s.map_frame(va(0x40_0000), f2, PageSize::Size4K, RW)
        .unwrap();
    let mut g = MmuGather::new(&s);
    s.unmap_freeing(r(0x40_0000, 0x40_1000), FreeTables::Keep, &mut g)
        .unwrap();
    assert_eq!(g.finish().tables_freed, 0);
    assert_eq!(s.count_user(), (0, 3));
    // No neighbour within 1 GiB: PT and PD go, the PDPT (512 GiB span) stays for a
    // VMA at 1 GiB.
    let far = FreeTables::Within {
        floor: 0,
        ceiling: 1 << 30,
    };
    let mut g = MmuGather::new(&s);
    s.unmap_freeing(r(0x40_0000, 0x40_1000), far, &mut g)
        .unwrap();
    assert_eq!(g.finish().tables_freed, 2);
    assert_eq!(s.count_user(), (0, 1));
    drop(s);
    assert_eq!(a.allocated_frames_settled(), base);
}

#[test]
fn map_translate_unmap_2m_both_ends() {
    let a = mem(16);
    let base = a.allocated_frames_settled();
    let s = space(a);
    let f = a.alloc(9).unwrap();
    let v = 0x4000_0000 - M2; // last 2M of the first GiB
    s.map_frame(va(v), f, PageSize::Size2M, RW).unwrap();
    let lo = s.translate(va(v)).unwrap();
    let hi = s.translate(va(v + M2 - 1)).unwrap();
    assert_eq!((lo.phys, lo.size), (f, PageSize::Size2M));
    assert_eq!(hi.phys, f + (M2 - 1));
    assert_eq!(hi.frame, f);
    assert_eq!(s.translate(va(v + M2)), None);
    assert_eq!(s.translate(va(v - 1)), None);
    let w = s.walk(va(v + 12345));
    assert_eq!(w.level, Level::Pd);
    assert!(w.entry.flags().contains(PageTableFlags::HUGE_PAGE));
    assert_eq!(a.meta(f).unwrap().mapcount(), 1);
    // A 4K map inside the 2M page and a partial unmap are refused, changing nothing.
    let g4 = a.alloc(0).unwrap();
    assert_eq!(
        s.map_frame(va(v + K4), g4, PageSize::Size4K, RW),
        Err(MapError::AlreadyMapped)
    );
    a.free(g4, 0).unwrap();
    let mut g = MmuGather::new(&s);
    assert_eq!(
        s.unmap(r(v, v + K4), &mut g),
        Err(MapError::PartialHugePage)
    );
    assert_eq!(
        s.protect(r(v + K4, v + M2), RW, &mut g),
        Err(MapError::PartialHugePage)
    );
    assert!(s.translate(va(v)).is_some());
    s.unmap(r(v, v + M2), &mut g).unwrap();
    g.finish();
    assert_eq!(s.translate(va(v)), None);
    drop(s);
    assert_eq!(a.allocated_frames_settled(), base);
}

#[test]
fn map_translate_unmap_1g_unaccounted() {
    let a = mem(8);
    let base = a.allocated_frames_settled();
    let s = space(a);
    let v = 5 * G1;
    s.map(
        r(v, v + 2 * G1),
        PhysAddr::new(MMIO),
        PageSize::Size1G,
        RW | NX,
    )
    .unwrap();
    assert_eq!(a.allocated_frames_settled(), base + 2); // PML4 + PDPT only
    let t = s.translate(va(v + G1 - 1)).unwrap();
    assert_eq!((t.phys.as_u64(), t.size), (MMIO + G1 - 1, PageSize::Size1G));
    let t = s.translate(va(v + G1)).unwrap();
    assert_eq!(t.phys.as_u64(), MMIO + G1);
    assert_eq!(
        s.translate(va(v + 2 * G1 - 1)).unwrap().phys.as_u64(),
        MMIO + 2 * G1 - 1
    );
    assert_eq!(s.translate(va(v + 2 * G1)), None);
    assert_eq!(s.walk(va(v)).level, Level::Pdpt);
    let mut g = MmuGather::new(&s);
    assert_eq!(
        s.unmap(r(v, v + M2), &mut g),
        Err(MapError::PartialHugePage)
    );
    s.unmap(r(v, v + G1), &mut g).unwrap();
    let st = g.finish();
    assert_eq!(st.frames_put, 0); // not accounted
    assert_eq!(s.translate(va(v)), None);
    assert!(s.translate(va(v + G1)).is_some());
    drop(s);
    assert_eq!(a.allocated_frames_settled(), base);
}

#[test]
fn map_frame_1g_real_block() {
    // 2 GiB of simulated RAM (lazily backed) so one order-18 block is free.
    let mem = SimulatedMemory::new((2 << 30) + (64 << 20));
    let a: &'static FrameAllocator = mem.leak();
    let base = a.allocated_frames_settled();
    let s = space(a);
    let f = a.alloc(18).unwrap();
    s.map_frame(va(G1), f, PageSize::Size1G, RW).unwrap();
    let t = s.translate(va(2 * G1 - 1)).unwrap();
    assert_eq!((t.phys, t.size), (f + (G1 - 1), PageSize::Size1G));
    assert_eq!(a.meta(f).unwrap().mapcount(), 1);
    drop(s); // puts the frame
    assert_eq!(a.allocated_frames_settled(), base);
}

#[test]
fn map_argument_errors_change_nothing() {
    let a = mem(8);
    let s = space(a);
    let before = a.allocated_frames_settled();
    let p = PhysAddr::new(MMIO);
    use MapError::*;
    assert_eq!(
        s.map(r(0x1001, 0x3000), p, PageSize::Size4K, RW),
        Err(Misaligned)
    );
    assert_eq!(
        s.map(r(0x1000, 0x3000), p + 8u64, PageSize::Size4K, RW),
        Err(Misaligned)
    );
    assert_eq!(
        s.map(r(M2, 2 * M2 + K4), p, PageSize::Size2M, RW),
        Err(Misaligned)
    );
    assert_eq!(
        s.map(r(0x3000, 0x1000), p, PageSize::Size4K, RW),
        Err(InvalidRange)
    );
    let kh = 0xffff_8000_0000_0000;
    assert_eq!(
        s.map(r(kh, kh + K4), p, PageSize::Size4K, RW),
        Err(OutOfRange)
    );
    assert_eq!(
        s.map(r(USER_END - K4, USER_END), p, PageSize::Size4K, RW),
        Ok(())
    );
    let mut g = MmuGather::new(&s);
    s.unmap(r(USER_END - K4, USER_END), &mut g).unwrap();
    g.finish();
    assert_eq!(
        s.map_frame(va(USER_END), p, PageSize::Size4K, RW),
        Err(OutOfRange)
    );
    assert_eq!(
        s.map_frame(va(USER_END + K4 - G1), p, PageSize::Size1G, RW),
        Err(OutOfRange)
    );
    assert_eq!(
        s.map(
            r(0x1000, 0x2000),
            p,
            PageSize::Size4K,
            RW | PageTableFlags::HUGE_PAGE
        ),
        Err(InvalidFlags)
    );
    assert_eq!(
        s.map(r(0x1000, 0x2000), p, PageSize::Size4K, RW | PTE_ACCOUNTED),
        Err(InvalidFlags)
    );
    assert_eq!(
        s.map(
            r(0x1000, 0x2000),
            PhysAddr::new((1 << 52) - K4),
            PageSize::Size4K,
            RW
        ),
        Ok(())
    );
    assert_eq!(
        s.map(
            r(0x2000, 0x4000),
            PhysAddr::new((1 << 52) - K4),
            PageSize::Size4K,
            RW
        ),
        Err(InvalidRange)
    );
    let after_one = a.allocated_frames_settled();
    // Overlap at the end of the range: nothing of the range is mapped.
    assert_eq!(
        s.map(r(0, 0x2000), p, PageSize::Size4K, RW),
        Err(AlreadyMapped)
    );
    assert_eq!(s.translate(va(0)), None);
    // A 2M page over a PT with entries.
    assert_eq!(s.map(r(0, M2), p, PageSize::Size2M, RW), Err(AlreadyMapped));
    // map_frame of something that is not an allocated block of the right order.
    let f = a.alloc(1).unwrap();
    assert_eq!(
        s.map_frame(va(M2), f, PageSize::Size4K, RW),
        Err(NotAllocated)
    );
    assert_eq!(
        s.map_frame(va(M2), f + K4, PageSize::Size4K, RW),
        Err(NotAllocated)
    );
    assert_eq!(
        s.map_frame(va(M2), p, PageSize::Size4K, RW),
        Err(NotAllocated)
    );
    a.free(f, 1).unwrap();
    assert_eq!(a.allocated_frames_settled(), after_one);
    assert!(before < after_one);
}

#[test]
fn map_accounts_allocated_heads_only() {
    let a = mem(8);
    let base = a.allocated_frames_settled();
    let s = space(a);
    let blk = a.alloc(2).unwrap(); // 4 frames, one head
    s.map(r(0x10_0000, 0x10_4000), blk, PageSize::Size4K, RW)
        .unwrap();
    let m = a.meta(blk).unwrap();
    assert_eq!((m.refcount(), m.mapcount()), (2, 1));
    assert!(s.walk(va(0x10_0000)).entry.flags().contains(PTE_ACCOUNTED));
    assert!(!s.walk(va(0x10_1000)).entry.flags().contains(PTE_ACCOUNTED));
    let mut g = MmuGather::new(&s);
    s.unmap(r(0x10_0000, 0x10_4000), &mut g).unwrap();
    assert_eq!(g.finish().frames_put, 1);
    assert_eq!((m.refcount(), m.mapcount()), (1, 0));
    a.free(blk, 2).unwrap();
    drop(s);
    assert_eq!(a.allocated_frames_settled(), base);
}

#[test]
fn protect_changes_leaf_flags_and_queues_flush() {
    let a = mem(8);
    let s = space(a);
    // SAFETY: host backend: recorded only.
    unsafe { s.activate(0) };
    let v = 0x20_0000;
    s.map(
        r(v, v + 4 * K4),
        PhysAddr::new(MMIO),
        PageSize::Size4K,
        RW | P | PageTableFlags::DIRTY,
    )
    .unwrap();
    s.tlb().clear();
    let mut g = MmuGather::new(&s);
    s.protect(r(v + K4, v + 3 * K4), P | U | NX, &mut g)
        .unwrap();
    assert!(flushes(&s).is_empty(), "flush deferred to the gather");
    g.finish();
    assert_eq!(
        flushes(&s),
        [FlushKind::Pages {
            start: va(v + K4),
            count: 2,
            stride: PageSize::Size4K
        }]
    );
    assert_eq!(
        s.translate(va(v)).unwrap().flags,
        RW | PageTableFlags::DIRTY
    );
    // Dirty survives protect (Linux _PAGE_CHG_MASK).
    assert_eq!(
        s.translate(va(v + K4)).unwrap().flags,
        P | U | NX | PageTableFlags::DIRTY
    );
    assert_eq!(
        s.translate(va(v + 3 * K4)).unwrap().flags,
        RW | PageTableFlags::DIRTY
    );
    // PROT_NONE: still mapped, not present to the CPU.
    let mut g = MmuGather::new(&s);
    s.protect(r(v, v + K4), U, &mut g).unwrap();
    g.finish();
    let t = s.translate(va(v)).unwrap();
    assert!(!t.flags.contains(P));
    assert_eq!(t.phys.as_u64(), MMIO);
    assert!(!s.walk(va(v)).entry.flags().contains(P));
    // Back to present.
    let mut g = MmuGather::new(&s);
    s.protect(r(v, v + K4), RW, &mut g).unwrap();
    // A protnone -> present change needs no flush: nothing could be cached.
    assert!(!g.needs_flush());
    g.finish();
    assert!(s.translate(va(v)).unwrap().flags.contains(P));
    // Unchanged protection: no flush either.
    let mut g = MmuGather::new(&s);
    s.protect(r(v, v + K4), RW, &mut g).unwrap();
    assert!(!g.needs_flush());
    drop(g);
    assert_eq!(
        s.protect(
            r(v, v + K4),
            RW | PageTableFlags::BIT_11,
            &mut MmuGather::new(&s)
        ),
        Err(MapError::InvalidFlags)
    );
    s.deactivate(0);
}

#[test]
fn young_and_dirty_read_and_clear() {
    let a = mem(8);
    let s = space(a);
    let v = 0x30_0000;
    let ad = PageTableFlags::ACCESSED | PageTableFlags::DIRTY;
    s.map(r(v, v + K4), PhysAddr::new(MMIO), PageSize::Size4K, RW | ad)
        .unwrap();
    assert_eq!(s.translate(va(v)).unwrap().flags, RW | ad);
    assert_eq!(s.test_and_clear_young(va(v)), Ok(true));
    assert_eq!(s.test_and_clear_young(va(v)), Ok(false));
    let mut g = MmuGather::new(&s);
    assert_eq!(s.test_and_clear_dirty(va(v + 5), &mut g), Ok(true));
    assert!(g.needs_flush());
    assert_eq!(s.test_and_clear_dirty(va(v), &mut g), Ok(false));
    g.finish();
    assert_eq!(s.translate(va(v)).unwrap().flags, RW);
    assert_eq!(s.test_and_clear_young(va(v + K4)), Err(MapError::NotMapped));
}

#[test]
fn emptied_tables_are_freed() {
    let a = mem(8);
    let base = a.allocated_frames_settled();
    let s = space(a);
    let v = 0x7f00_0000_0000; // high in the user half
    let f1 = a.alloc(0).unwrap();
    let f2 = a.alloc(0).unwrap();
    s.map_frame(va(v), f1, PageSize::Size4K, RW).unwrap();
    s.map_frame(va(v + K4), f2, PageSize::Size4K, RW).unwrap();
    assert_eq!(a.allocated_frames_settled(), base + 1 + 3 + 2);
    assert_no_empty_tables(&s);
    let mut g = MmuGather::new(&s);
    s.unmap(r(v, v + K4), &mut g).unwrap();
    assert_eq!(g.finish().tables_freed, 0); // PT still holds f2
    assert_eq!(s.count_user(), (1, 3));
    let mut g = MmuGather::new(&s);
    // A wide unmap, mostly over holes, empties all three levels.
    s.unmap(r(v - G1, v + G1), &mut g).unwrap();
    assert_eq!(g.finish().tables_freed, 3);
    assert_eq!(a.allocated_frames_settled(), base + 1);
    assert_no_empty_tables(&s);
    // The PML4 is never freed: the space is still usable.
    s.map(r(v, v + K4), PhysAddr::new(MMIO), PageSize::Size4K, RW)
        .unwrap();
    drop(s);
    assert_eq!(a.allocated_frames_settled(), base);
}

#[test]
fn drop_returns_counters_to_baseline() {
    let a = mem(32);
    let base = a.allocated_frames_settled();
    let s = space(a);
    let mut frames = Vec::new();
    for i in 0..700u64 {
        let f = a.alloc(0).unwrap();
        // Spread over several PTs, PDs and PDPTs.
        let v = (i % 7) * (512 * G1) + (i / 7) * K4 * 3 + (i % 3) * M2;
        s.map_frame(va(v), f, PageSize::Size4K, RW).unwrap();
        frames.push(f);
    }
    let f2 = a.alloc(9).unwrap();
    s.map_frame(va(100 * G1), f2, PageSize::Size2M, RW).unwrap();
    s.map(
        r(200 * G1, 201 * G1),
        PhysAddr::new(MMIO),
        PageSize::Size1G,
        RW,
    )
    .unwrap();
    assert!(a.allocated_frames_settled() > base + 700);
    assert_no_empty_tables(&s);
    drop(s);
    assert_eq!(a.allocated_frames_settled(), base);
    for f in frames {
        assert_eq!(a.meta(f).unwrap().refcount(), 0);
    }
}

#[test]
fn oom_mid_map_changes_nothing() {
    let a = mem(8);
    let s = space(a);
    // One existing mapping, so part of the path already exists.
    s.map(r(0, K4), PhysAddr::new(MMIO), PageSize::Size4K, RW)
        .unwrap();
    let count_before = s.count_user();
    // A range needing many PT pages (and PDs across a GiB boundary).
    let (lo, hi) = (G1 - 8 * M2, G1 + 8 * M2);
    for leave in [0usize, 1, 3, 10] {
        let hoard = exhaust(a, leave);
        let before = a.allocated_frames_settled();
        assert_eq!(
            s.map(r(lo, hi), PhysAddr::new(MMIO), PageSize::Size4K, RW),
            Err(MapError::OutOfMemory)
        );
        assert_eq!(a.allocated_frames_settled(), before, "leave={leave}");
        assert_eq!(s.count_user(), count_before);
        assert_eq!(s.translate(va(lo)), None);
        release(a, hoard);
    }
    // With memory back it works, and needs exactly 16 PTs + 1 PD.
    let before = a.allocated_frames_settled();
    s.map(r(lo, hi), PhysAddr::new(MMIO), PageSize::Size4K, RW)
        .unwrap();
    assert_eq!(a.allocated_frames_settled(), before + 17);
    // map_frame on OOM: the caller keeps its reference.
    let f = a.alloc(0).unwrap();
    let hoard = exhaust(a, 0);
    assert_eq!(
        s.map_frame(va(3 * G1), f, PageSize::Size4K, RW),
        Err(MapError::OutOfMemory)
    );
    assert_eq!(
        (a.meta(f).unwrap().refcount(), a.meta(f).unwrap().mapcount()),
        (1, 0)
    );
    release(a, hoard);
    // And a new space cannot be created without memory.
    let hoard = exhaust(a, 0);
    assert!(matches!(
        PageTableRoot::new_user_only(a),
        Err(MapError::OutOfMemory)
    ));
    release(a, hoard);
    a.free(f, 0).unwrap();
}

#[test]
fn reserved_tables_make_the_map_infallible() {
    let a = mem(8);
    let before = a.allocated_frames_settled();
    let s = space(a);
    let frames = a.allocated_frames_settled();
    // An empty space: PDPT, PD and PT are needed.
    let res = s
        .reserve_tables(r(0x40_0000, 0x40_0000 + K4), PageSize::Size4K)
        .unwrap();
    assert_eq!(a.allocated_frames_settled(), frames + 3);
    assert_eq!(s.count_user(), (0, 0), "reserving changes no table");
    // With no free frame at all, the reserved map still succeeds.
    let f = a.alloc(0).unwrap();
    let hoard = exhaust(a, 0);
    s.map_frame_reserved(va(0x40_0000), f, PageSize::Size4K, RW, res)
        .unwrap();
    assert_eq!(s.count_user(), (1, 3));
    assert_eq!(s.translate(va(0x40_0000)).unwrap().frame, f);
    // A reservation for a range that needs nothing holds nothing; dropping an unspent
    // one frees its pages.
    release(a, hoard);
    let frames = a.allocated_frames_settled();
    let none = s
        .reserve_tables(r(0x40_1000, 0x40_2000), PageSize::Size4K)
        .unwrap();
    assert_eq!(a.allocated_frames_settled(), frames);
    s.map_reserved(
        r(0x40_1000, 0x40_2000),
        PhysAddr::new(MMIO),
        PageSize::Size4K,
        RW,
        none,
    )
    .unwrap();
    // Another GiB under the same PDPT: a PD and a PT.
    let unspent = s
        .reserve_tables(r(5 * G1, 5 * G1 + K4), PageSize::Size4K)
        .unwrap();
    assert_eq!(a.allocated_frames_settled(), frames + 2);
    drop(unspent);
    assert_eq!(a.allocated_frames_settled(), frames);
    // Reserving fails as map does, with nothing allocated.
    assert!(matches!(
        s.reserve_tables(r(0x40_0000, 0x40_1000), PageSize::Size4K),
        Err(MapError::AlreadyMapped)
    ));
    // One frame short of the PD and PT needed there.
    let hoard = exhaust(a, 1);
    let frames = a.allocated_frames_settled();
    assert!(matches!(
        s.reserve_tables(r(7 * G1, 7 * G1 + K4), PageSize::Size4K),
        Err(MapError::OutOfMemory)
    ));
    assert_eq!(a.allocated_frames_settled(), frames);
    release(a, hoard);
    drop(s);
    assert_eq!(a.allocated_frames_settled(), before);
}

#[test]
fn replace_frame_swaps_in_place_without_table_memory() {
    let a = mem(8);
    let before = a.allocated_frames_settled();
    let s = space(a);
    // SAFETY: host backend: recorded only.
    unsafe { s.activate(0) };
    // The only page of its page table: an unmap would free the table.
    let old = a.alloc_zeroed(0).unwrap();
    s.map_frame(va(0x40_0000), old, PageSize::Size4K, P | U)
        .unwrap();
    a.meta(old).unwrap().get(); // the caller's own reference, to watch it drop
    let tables = s.count_user().1;
    let new = a.alloc(0).unwrap();
    let hoard = exhaust(a, 0);
    s.tlb().clear();
    let mut g = MmuGather::new(&s);
    s.replace_frame(va(0x40_0000), new, RW, &mut g).unwrap();
    g.finish();
    release(a, hoard);
    let t = s.translate(va(0x40_0000)).unwrap();
    assert_eq!((t.frame, t.flags & RW), (new, RW));
    assert_eq!(s.count_user(), (1, tables), "no table freed or allocated");
    let (mo, mn) = (a.meta(old).unwrap(), a.meta(new).unwrap());
    assert_eq!((mo.refcount(), mo.mapcount()), (1, 0), "old leaf released");
    assert_eq!(
        (mn.refcount(), mn.mapcount()),
        (1, 1),
        "new leaf took the reference"
    );
    // The old entry was flushed, then its frame released.
    assert_eq!(
        s.tlb().events(),
        [
            TlbEvent::Flush {
                cpus: 1,
                kind: FlushKind::Pages {
                    start: va(0x40_0000),
                    count: 1,
                    stride: PageSize::Size4K
                }
            },
            TlbEvent::Release(Release::PutFrame(old)),
        ]
    );
    // Errors change nothing: no leaf, wrong size, not an allocated head.
    let other = a.alloc(0).unwrap();
    let mut g = MmuGather::new(&s);
    s.map(r(4 * M2, 5 * M2), PhysAddr::new(MMIO), PageSize::Size2M, RW)
        .unwrap();
    assert_eq!(
        s.replace_frame(va(0x40_1000), other, RW, &mut g),
        Err(MapError::NotMapped)
    );
    // A 2 MiB leaf takes only a 2 MiB block (hugetlb_wp), at its own address.
    assert!(matches!(
        s.replace_frame(va(4 * M2), other, RW, &mut g),
        Err(MapError::Misaligned | MapError::NotAllocated)
    ));
    assert_eq!(
        s.replace_frame(va(4 * M2 + 4096), other, RW, &mut g),
        Err(MapError::Misaligned)
    );
    assert_eq!(
        s.replace_frame(va(0x40_0000), PhysAddr::new(MMIO), RW, &mut g),
        Err(MapError::NotAllocated)
    );
    g.finish();
    let mut g = MmuGather::new(&s);
    s.unmap(r(4 * M2, 5 * M2), &mut g).unwrap();
    g.finish();
    assert_eq!(s.translate(va(0x40_0000)).unwrap().frame, new);
    assert_eq!(a.meta(other).unwrap().mapcount(), 0);
    a.free(other, 0).unwrap();
    a.put_frame(old).unwrap();
    s.deactivate(0);
    drop(s);
    assert_eq!(a.allocated_frames_settled(), before);
}

#[test]
fn flush_policy_ceiling() {
    assert_eq!(
        flush_kind(0x1000, 0x1000 + 33 * K4, PageSize::Size4K, false),
        FlushKind::Pages {
            start: va(0x1000),
            count: 33,
            stride: PageSize::Size4K
        }
    );
    assert_eq!(
        flush_kind(0x1000, 0x1000 + 34 * K4, PageSize::Size4K, false),
        FlushKind::All { global: false }
    );
    assert_eq!(
        flush_kind(0, 33 * M2, PageSize::Size2M, true),
        FlushKind::Pages {
            start: va(0),
            count: 33,
            stride: PageSize::Size2M
        }
    );
    assert_eq!(
        flush_kind(0, 34 * M2, PageSize::Size2M, true),
        FlushKind::All { global: true }
    );

    let a = mem(8);
    let s = space(a);
    let v = 0x100_0000;
    s.map(r(v, v + 40 * K4), PhysAddr::new(MMIO), PageSize::Size4K, RW)
        .unwrap();
    s.tlb().clear();
    let mut g = MmuGather::new(&s);
    s.unmap(r(v, v + 33 * K4), &mut g).unwrap();
    g.finish();
    assert_eq!(
        flushes(&s),
        [FlushKind::Pages {
            start: va(v),
            count: 33,
            stride: PageSize::Size4K
        }]
    );
    s.tlb().clear();
    s.map(r(v, v + 33 * K4), PhysAddr::new(MMIO), PageSize::Size4K, RW)
        .unwrap();
    let mut g = MmuGather::new(&s);
    s.unmap(r(v, v + 34 * K4), &mut g).unwrap();
    g.finish();
    assert_eq!(flushes(&s), [FlushKind::All { global: false }]);
    // A global leaf forces a global full flush.
    let mut g = MmuGather::new(&s);
    s.unmap(r(v, v + 40 * K4), &mut g).unwrap();
    g.finish();
    s.map(
        r(v, v + 40 * K4),
        PhysAddr::new(MMIO),
        PageSize::Size4K,
        RW | PageTableFlags::GLOBAL,
    )
    .unwrap();
    s.tlb().clear();
    let mut g = MmuGather::new(&s);
    s.unmap(r(v, v + 40 * K4), &mut g).unwrap();
    g.finish();
    assert_eq!(flushes(&s), [FlushKind::All { global: true }]);
    // Direct flush helpers follow the same policy.
    s.tlb().clear();
    s.flush_page(va(v + 5));
    s.flush_range(va(v), va(v + 33 * K4), PageSize::Size4K);
    s.flush_range(va(v), va(v + 34 * K4), PageSize::Size4K);
    s.flush_all();
    assert_eq!(
        flushes(&s),
        [
            FlushKind::Pages {
                start: va(v),
                count: 1,
                stride: PageSize::Size4K
            },
            FlushKind::Pages {
                start: va(v),
                count: 33,
                stride: PageSize::Size4K
            },
            FlushKind::All { global: false },
            FlushKind::All { global: false },
        ]
    );
}

#[test]
fn gather_frees_only_after_flush() {
    let a = mem(16);
    let base = a.allocated_frames_settled();
    let s = space(a);
    // SAFETY: host backend: recorded only.
    unsafe { s.activate(3) };
    let v = 0x4000_0000;
    let mut frames = Vec::new();
    for i in 0..300u64 {
        let f = a.alloc(0).unwrap();
        s.map_frame(va(v + i * K4), f, PageSize::Size4K, RW)
            .unwrap();
        frames.push(f);
    }
    s.tlb().clear();
    let allocated = a.allocated_frames_settled();
    let mut g = MmuGather::new(&s);
    s.unmap(r(v, v + 300 * K4), &mut g).unwrap();
    // The batch (128) overflowed twice: those frames were flushed, then put.
    let ev = s.tlb().events();
    let puts_early = ev
        .iter()
        .filter(|e| matches!(e, TlbEvent::Release(_)))
        .count();
    assert_eq!(puts_early, 256);
    assert_eq!(a.allocated_frames_settled(), allocated - 256);
    // The rest is still allocated, with map count already gone.
    let last = frames[299];
    assert_eq!(
        (
            a.meta(last).unwrap().refcount(),
            a.meta(last).unwrap().mapcount()
        ),
        (1, 0)
    );
    g.finish();
    let ev = s.tlb().events();
    // Every release comes after a flush that followed the previous release batch.
    let mut flushed_since_clear = false;
    let mut releases = 0;
    for e in &ev {
        match e {
            TlbEvent::Flush { cpus, .. } => {
                assert_eq!(*cpus, 1 << 3);
                flushed_since_clear = true;
            }
            TlbEvent::Release(_) => {
                assert!(flushed_since_clear, "free before flush: {ev:?}");
                releases += 1;
            }
            TlbEvent::LoadRoot { .. } => {}
        }
    }
    assert_eq!(releases, 300 + 3);
    assert!(matches!(
        ev.last(),
        Some(TlbEvent::Release(Release::FreeTable(_)))
    ));
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, TlbEvent::Flush { .. }))
            .count(),
        3
    );
    assert_eq!(a.allocated_frames_settled(), base + 1);
    s.deactivate(3);
    drop(s);
    assert_eq!(a.allocated_frames_settled(), base);
}

#[test]
fn dropping_an_inactive_space_needs_no_flush() {
    let a = mem(8);
    let s = {
        let s = space(a);
        s.map(r(0, 8 * K4), PhysAddr::new(MMIO), PageSize::Size4K, RW)
            .unwrap();
        s
    };
    let tlb = s.tlb().clone();
    // SAFETY: `activate`'s contract is about loading CR3 on the kernel target; the host
    // backend only records the load.
    unsafe { s.activate(1) };
    s.deactivate(1);
    drop(s);
    let ev = tlb.events();
    assert!(matches!(ev[0], TlbEvent::LoadRoot { cpu: 1, .. }));
    assert!(!ev.iter().any(|e| matches!(e, TlbEvent::Flush { .. })));
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, TlbEvent::Release(_)))
            .count(),
        3
    );
}

#[test]
fn kernel_half_is_shared_not_owned() {
    let a = mem(8);
    let base = a.allocated_frames_settled();
    // A fake kernel PML4 with one upper-half PDPT holding a 1G leaf.
    let kpml4 = Table::alloc(a).unwrap();
    let kpdpt = Table::alloc(a).unwrap();
    kpdpt.store(
        0,
        entry::Pte(MMIO | (P | W | PageTableFlags::HUGE_PAGE).bits()),
    );
    kpml4.store(300, entry::Pte(kpdpt.pa().as_u64() | TABLE_FLAGS.bits()));
    let kva = 0xffff_0000_0000_0000 | (300u64 << 39);
    {
        // SAFETY: `kpml4` is a live table in this allocator's direct map; its upper-half tables outlive the space.
        let s = unsafe { PageTableRoot::new(a, Some(kpml4.pa())) }.unwrap();
        let t = s.translate(va(kva + 77)).unwrap();
        assert_eq!((t.phys.as_u64(), t.size), (MMIO + 77, PageSize::Size1G));
        // The mapping primitives refuse the kernel half.
        assert_eq!(
            s.map(r(kva, kva + K4), PhysAddr::new(MMIO), PageSize::Size4K, RW),
            Err(MapError::OutOfRange)
        );
        s.map(r(0, K4), PhysAddr::new(MMIO), PageSize::Size4K, RW)
            .unwrap();
    }
    // The kernel tables survived the space.
    assert_eq!(a.allocated_frames_settled(), base + 2);
    assert_eq!(kpml4.load(300).addr(), kpdpt.pa());
    assert_eq!(kpdpt.load(0).addr().as_u64(), MMIO);
    kpdpt.free();
    kpml4.free();
    assert_eq!(a.allocated_frames_settled(), base);
}

#[test]
fn shared_pmd_survives_unshare_of_one_sharer() {
    let a = mem(32);
    let base = a.allocated_frames_settled();
    let sa = space(a);
    let sb = space(a);
    let v = 2 * G1;
    let f1 = a.alloc(9).unwrap();
    let f2 = a.alloc(9).unwrap();
    sa.map_frame(va(v), f1, PageSize::Size2M, RW).unwrap();
    sa.map_frame(va(v + 2 * M2), f2, PageSize::Size2M, RW)
        .unwrap();
    let pd = sa.pmd_table_at(va(v)).unwrap();
    assert!(!sa.is_pmd_shared(va(v)));
    // B shares at another address with the same offset inside the GiB.
    let vb = 7 * G1;
    sb.share_pmd_with(va(vb), &sa, va(v)).unwrap();
    assert_eq!(a.meta(pd).unwrap().pt_share_count(), 1);
    assert!(sa.is_pmd_shared(va(v)) && sb.is_pmd_shared(va(vb)));
    assert_eq!(sb.pmd_table_at(va(vb)), Some(pd));
    assert_eq!(sb.translate(va(vb + 2 * M2 + 5)).unwrap().phys, f2 + 5u64);
    // A fault in B populates the shared table: A sees it too (hugetlb semantics).
    let f3 = a.alloc(9).unwrap();
    sb.map_frame(va(vb + 5 * M2), f3, PageSize::Size2M, RW)
        .unwrap();
    assert_eq!(sa.translate(va(v + 5 * M2)).unwrap().frame, f3);
    // Nothing may clear or change entries another space sees, nor hang a PT under it.
    let mut g = MmuGather::new(&sa);
    assert_eq!(sa.unmap(r(v, v + M2), &mut g), Err(MapError::SharedTable));
    assert_eq!(
        sa.unmap(r(v - K4, v + G1), &mut g),
        Err(MapError::SharedTable)
    );
    assert_eq!(
        sa.protect(r(v, v + M2), P | U, &mut g),
        Err(MapError::SharedTable)
    );
    g.finish();
    assert_eq!(
        sb.map(
            r(vb + 9 * M2, vb + 9 * M2 + K4),
            PhysAddr::new(MMIO),
            PageSize::Size4K,
            RW
        ),
        Err(MapError::SharedTable)
    );
    assert_eq!(sa.translate(va(v)).unwrap().flags, RW);
    // Sharing argument errors.
    assert_eq!(
        sb.share_pmd_with(va(vb), &sa, va(v)),
        Err(MapError::AlreadyMapped)
    );
    assert_eq!(
        sb.share_pmd_with(va(9 * G1), &sa, va(3 * G1)),
        Err(MapError::NotMapped)
    );
    assert_eq!(
        sb.share_pmd_with(va(vb + M2), &sa, va(v)),
        Err(MapError::Misaligned)
    );
    let other = mem(4);
    let sc = space(other);
    assert_eq!(
        sc.share_pmd_with(va(vb), &sa, va(v)),
        Err(MapError::WrongAllocator)
    );
    drop(sc);

    // A unshares: the whole GiB is flushed, the table lives on in B.
    sa.tlb().clear();
    let mut g = MmuGather::new(&sa);
    assert_eq!(sa.unshare_pmd(va(v), &mut g), Ok(true));
    g.finish();
    assert_eq!(flushes(&sa), [FlushKind::All { global: false }]);
    assert_eq!(a.meta(pd).unwrap().pt_share_count(), 0);
    assert_eq!(sa.translate(va(v)), None);
    // Its emptied PDPT stays, as Linux's PUD table does (a fault elsewhere in the
    // 512 GiB may be walking into it); the unmap of the range frees it.
    assert_eq!(sa.count_user(), (0, 1));
    let mut g = MmuGather::new(&sa);
    sa.unmap(va(v)..va(v + G1), &mut g).unwrap();
    g.finish();
    assert_eq!(sa.count_user(), (0, 0));
    assert_eq!(sb.translate(va(vb)).unwrap().frame, f1);
    for f in [f1, f2, f3] {
        assert_eq!(
            (a.meta(f).unwrap().refcount(), a.meta(f).unwrap().mapcount()),
            (1, 1)
        );
    }
    drop(sa);
    // B is the sole owner now: not shared, and a normal unmap frees table and frames.
    let mut g = MmuGather::new(&sb);
    assert_eq!(sb.unshare_pmd(va(vb), &mut g), Ok(false));
    sb.unmap(r(vb, vb + G1), &mut g).unwrap();
    let st = g.finish();
    assert_eq!((st.frames_put, st.tables_freed), (3, 2));
    drop(sb);
    assert_eq!(a.allocated_frames_settled(), base);
}

#[test]
fn shared_pmd_freed_by_last_owner_on_drop() {
    let a = mem(32);
    let base = a.allocated_frames_settled();
    let sa = space(a);
    let sb = space(a);
    let sc = space(a);
    let f = a.alloc(9).unwrap();
    sa.map_frame(va(G1 + M2), f, PageSize::Size2M, RW).unwrap();
    let pd = sa.pmd_table_at(va(G1)).unwrap();
    sb.share_pmd_with(va(G1), &sa, va(G1)).unwrap();
    sc.share_pmd_with(va(3 * G1), &sb, va(G1)).unwrap();
    assert_eq!(a.meta(pd).unwrap().pt_share_count(), 2);
    drop(sa);
    assert_eq!(a.meta(pd).unwrap().pt_share_count(), 1);
    assert_eq!(sb.translate(va(G1 + M2)).unwrap().frame, f);
    drop(sc);
    assert_eq!(a.meta(pd).unwrap().pt_share_count(), 0);
    assert!(
        a.meta(pd)
            .unwrap()
            .flags()
            .contains(crate::frame::FrameFlags::PAGETABLE)
    );
    assert_eq!(a.meta(f).unwrap().refcount(), 1);
    assert_eq!(sb.translate(va(G1 + M2)).unwrap().frame, f);
    drop(sb);
    assert_eq!(a.meta(f).unwrap().refcount(), 0);
    assert_eq!(a.allocated_frames_settled(), base);
}

#[test]
fn raw_share_rejects_non_table_pages() {
    let a = mem(8);
    let s = space(a);
    let f = a.alloc(0).unwrap();
    // SAFETY: the call must refuse `f`, which is not marked as a page table.
    let r = unsafe { s.share_pmd_table(va(G1), f) };
    assert_eq!(r, Err(MapError::NotMapped));
    a.free(f, 0).unwrap();
}

/// Benchmark-shaped operations through the public API (what the kernel's bench mode
/// times), checked for leaks.
#[test]
fn bench_shapes() {
    let a = mem(64);
    let base = a.allocated_frames_settled();
    let s = space(a);
    // map + unmap one 4K page.
    for _ in 0..10 {
        let f = a.alloc(0).unwrap();
        s.map_frame(va(0x1000_0000), f, PageSize::Size4K, RW)
            .unwrap();
        let mut g = MmuGather::new(&s);
        s.unmap(r(0x1000_0000, 0x1000_1000), &mut g).unwrap();
        g.finish();
    }
    // protect a 512-page range.
    s.map(
        r(0x2000_0000, 0x2020_0000),
        PhysAddr::new(MMIO),
        PageSize::Size4K,
        RW,
    )
    .unwrap();
    let mut g = MmuGather::new(&s);
    s.protect(r(0x2000_0000, 0x2020_0000), P | U, &mut g)
        .unwrap();
    g.finish();
    // map a 2M page.
    let f = a.alloc(9).unwrap();
    s.map_frame(va(0x4000_0000), f, PageSize::Size2M, RW)
        .unwrap();
    // teardown of a space with N mapped pages.
    for i in 0..1000u64 {
        let f = a.alloc(0).unwrap();
        s.map_frame(va(0x8000_0000 + i * K4), f, PageSize::Size4K, RW)
            .unwrap();
    }
    drop(s);
    assert_eq!(a.allocated_frames_settled(), base);
}

mod model {
    //! Randomised map/unmap/protect sequences checked against a shadow model.

    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Window: 8 x 2 MiB straddling the first GiB boundary, so PDPT-, PD- and PT-level
    /// tables all come and go.
    const WIN: u64 = G1 - 4 * M2;
    const PAGES: u64 = 8 * 512;
    const FLAGS: [PageTableFlags; 5] = [RW, P.union(U), P.union(U).union(NX), U, RW.union(NX)];

    #[derive(Debug, Clone)]
    enum Op {
        Frame4K(u64),
        Range4K(u64, u64, usize),
        Frame2M(u64),
        Range2M(u64, u64, usize),
        Unmap(u64, u64),
        Unmap2M(u64, u64),
        Protect(u64, u64, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..PAGES).prop_map(Op::Frame4K),
            2 => (0..PAGES, 1..40u64, 0..5usize).prop_map(|(p, n, f)| Op::Range4K(p, n, f)),
            2 => (0..8u64).prop_map(Op::Frame2M),
            1 => (0..8u64, 1..3u64, 0..5usize).prop_map(|(p, n, f)| Op::Range2M(p, n, f)),
            2 => (0..PAGES, 1..600u64).prop_map(|(p, n)| Op::Unmap(p, n)),
            1 => (0..8u64, 1..4u64).prop_map(|(p, n)| Op::Unmap2M(p, n)),
            2 => (0..PAGES, 1..300u64, 0..5usize).prop_map(|(p, n, f)| Op::Protect(p, n, f)),
        ]
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    struct Leaf {
        pa: u64,
        size: PageSize,
        flags: PageTableFlags,
        /// Order of the allocated block behind it, if accounted.
        order: Option<usize>,
    }

    type Model = BTreeMap<u64, Leaf>;

    fn intersecting(m: &Model, a: u64, b: u64) -> Vec<(u64, Leaf)> {
        let mut v: Vec<(u64, Leaf)> = Vec::new();
        if let Some((&s, l)) = m.range(..a).next_back()
            && s + l.size.bytes() > a
        {
            v.push((s, *l));
        }
        v.extend(m.range(a..b).map(|(&s, l)| (s, *l)));
        v
    }

    fn clamp(p: u64, n: u64, unit: u64) -> (u64, u64) {
        let a = WIN + p * unit;
        let b = (a + n * unit).min(WIN + PAGES * K4);
        (a, b.max(a))
    }

    fn expect_modify(m: &Model, a: u64, b: u64) -> Result<Vec<u64>, MapError> {
        let hits = intersecting(m, a, b);
        if hits.iter().any(|(s, l)| *s < a || s + l.size.bytes() > b) {
            return Err(MapError::PartialHugePage);
        }
        Ok(hits.into_iter().map(|(s, _)| s).collect())
    }

    fn check(s: &PageTableRoot, m: &Model, a: &FrameAllocator, base: u64) {
        for i in 0..PAGES {
            let v = WIN + i * K4;
            let got = s.translate(va(v));
            let want = intersecting(m, v, v + 1)
                .first()
                .map(|(st, l)| Translation {
                    phys: PhysAddr::new(l.pa + (v - st)),
                    frame: PhysAddr::new(l.pa),
                    size: l.size,
                    flags: l.flags,
                });
            assert_eq!(got, want, "at {v:#x}");
        }
        let (leaves, tables) = s.count_user();
        assert_eq!(leaves, m.len() as u64);
        let data: u64 = m.values().filter_map(|l| l.order).map(|o| 1u64 << o).sum();
        assert_eq!(
            a.allocated_frames_settled(),
            base + 1 + tables + data,
            "frame accounting"
        );
        for l in m.values() {
            if l.order.is_some() {
                let meta = a.meta(PhysAddr::new(l.pa)).unwrap();
                assert_eq!((meta.refcount(), meta.mapcount()), (1, 1));
            }
        }
        assert_no_empty_tables(s);
    }

    fn run(a: &'static FrameAllocator, ops: &[Op]) {
        let base = a.allocated_frames_settled();
        let s = space(a);
        let mut m = Model::new();
        for op in ops {
            match *op {
                Op::Frame4K(p) | Op::Frame2M(p) => {
                    let size = if matches!(op, Op::Frame4K(_)) {
                        PageSize::Size4K
                    } else {
                        PageSize::Size2M
                    };
                    let (v, e) = clamp(p, 1, size.bytes());
                    let f = a.alloc(size.order()).unwrap();
                    let want = if intersecting(&m, v, e).is_empty() {
                        Ok(())
                    } else {
                        Err(MapError::AlreadyMapped)
                    };
                    let got = s.map_frame(va(v), f, size, RW);
                    assert_eq!(got, want, "{op:?}");
                    if got.is_ok() {
                        m.insert(
                            v,
                            Leaf {
                                pa: f.as_u64(),
                                size,
                                flags: RW,
                                order: Some(size.order()),
                            },
                        );
                    } else {
                        a.free(f, size.order()).unwrap();
                    }
                }
                Op::Range4K(p, n, fl) | Op::Range2M(p, n, fl) => {
                    let size = if matches!(op, Op::Range4K(..)) {
                        PageSize::Size4K
                    } else {
                        PageSize::Size2M
                    };
                    let (v, e) = clamp(p, n, size.bytes());
                    let pa = MMIO + (v - WIN);
                    let want = if intersecting(&m, v, e).is_empty() {
                        Ok(())
                    } else {
                        Err(MapError::AlreadyMapped)
                    };
                    let got = s.map(r(v, e), PhysAddr::new(pa), size, FLAGS[fl]);
                    assert_eq!(got, want, "{op:?}");
                    if got.is_ok() {
                        let mut x = v;
                        while x < e {
                            let l = Leaf {
                                pa: pa + (x - v),
                                size,
                                flags: FLAGS[fl],
                                order: None,
                            };
                            m.insert(x, l);
                            x += size.bytes();
                        }
                    }
                }
                Op::Unmap(p, n) | Op::Unmap2M(p, n) => {
                    let unit = if matches!(op, Op::Unmap(..)) { K4 } else { M2 };
                    let (v, e) = clamp(p, n, unit);
                    let want = expect_modify(&m, v, e);
                    let mut g = MmuGather::new(&s);
                    let got = s.unmap(r(v, e), &mut g);
                    g.finish();
                    assert_eq!(got, want.clone().map(|_| ()), "{op:?}");
                    for st in want.unwrap_or_default() {
                        m.remove(&st);
                    }
                }
                Op::Protect(p, n, fl) => {
                    let (v, e) = clamp(p, n, K4);
                    let want = expect_modify(&m, v, e);
                    let mut g = MmuGather::new(&s);
                    let got = s.protect(r(v, e), FLAGS[fl], &mut g);
                    g.finish();
                    assert_eq!(got, want.clone().map(|_| ()), "{op:?}");
                    for st in want.unwrap_or_default() {
                        m.get_mut(&st).unwrap().flags = FLAGS[fl];
                    }
                }
            }
            check(&s, &m, a, base);
        }
        drop(s);
        assert_eq!(a.allocated_frames_settled(), base, "teardown leaked");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn random_sequences_match_model(ops in proptest::collection::vec(op(), 1..40)) {
            static ALLOC: std::sync::OnceLock<&'static FrameAllocator> = std::sync::OnceLock::new();
            let a = *ALLOC.get_or_init(|| mem(64));
            run(a, &ops);
        }
    }
}

/// A gather reads the space's CPU mask again at each flush (Linux: `mm_cpumask` read
/// in `flush_tlb_mm_range` at every `tlb_flush_mmu`), not only the mask of when it
/// was made: a CPU that loads the space between the gather's creation and an early
/// flush is flushed too.
#[test]
fn a_gathers_flush_reads_the_cpu_mask_again() {
    let a = mem(8);
    let s = space(a);
    // SAFETY: host: loading a root is only recorded.
    unsafe { s.activate(0) };
    let mut g = MmuGather::new(&s);
    assert_eq!(g.cpus(), 1);
    // SAFETY: as above.
    unsafe { s.activate(2) };
    g.add_range(0x40_0000, PageSize::Size4K);
    g.flush();
    let cpus: Vec<u64> = s
        .tlb()
        .events()
        .into_iter()
        .filter_map(|e| match e {
            TlbEvent::Flush { cpus, .. } => Some(cpus),
            _ => None,
        })
        .collect();
    assert_eq!(
        cpus,
        [0b101],
        "the flush reached the CPU that came in meanwhile"
    );
    g.finish();
    s.deactivate(0);
    s.deactivate(2);
}
