//! mremap beyond the basics: the multi-VMA pure move (Linux ≈6.17 `remap_move`), its
//! EFAULT rules, MREMAP_DONTUNMAP's anon_vma and mlock clean-up, the shared
//! `old_len == 0` duplicate, and rollback when moving the page tables runs out of memory.

use mm::errno::Errno;
use mm::frame::FrameAllocator;
use mm::frame::sim::simulated;
use mm::mmap::*;
use mm::vma::VmFlags;

const P: usize = 4096;
const RW: u32 = PROT_READ | PROT_WRITE;
const PA: u32 = MAP_PRIVATE | MAP_ANONYMOUS;
const FIXED_MOVE: u32 = MREMAP_MAYMOVE | MREMAP_FIXED;

fn setup() -> (&'static FrameAllocator, u64, AddressSpace) {
    let a = simulated(32 << 20);
    zero_page(a).unwrap();
    let base = a.allocated_frames();
    (a, base, AddressSpace::new(a).unwrap())
}

fn vmas(asp: &AddressSpace) -> Vec<(usize, usize)> {
    let mut out = vec![];
    let mut a = 0;
    while let Some(q) = asp.query_vma(a, PROCMAP_QUERY_COVERING_OR_NEXT_VMA) {
        out.push((q.start, q.end));
        a = q.end;
    }
    out
}

fn read(asp: &AddressSpace, addr: usize, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    asp.copy_from_user(addr, &mut b).unwrap();
    b
}

/// A (2 pages, RW) | B (1 page, R) | gap of 3 pages | C (2 pages, RW), each with data.
fn three_vmas(asp: &AddressSpace, at: usize) -> [usize; 3] {
    let a = asp.mmap(at, 2 * P, RW, PA | MAP_FIXED, None, 0).unwrap();
    let b = asp
        .mmap(at + 2 * P, P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    let c = asp
        .mmap(at + 6 * P, 2 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    asp.copy_to_user(a + P, b"alpha").unwrap();
    asp.copy_to_user(b, b"bravo").unwrap();
    asp.copy_to_user(c + P, b"charlie").unwrap();
    asp.mprotect(b, P, PROT_READ).unwrap();
    assert_eq!(vmas(asp), vec![(a, b), (b, b + P), (c, c + 2 * P)]);
    [a, b, c]
}

#[test]
fn pure_move_spans_vmas_and_keeps_gaps() {
    let (alloc, base, asp) = setup();
    let [a, b, c] = three_vmas(&asp, 0x4000_0000);
    let t = 0x5000_0000;
    let len = c + 2 * P - a;
    assert_eq!(asp.mremap(a, len, len, FIXED_MOVE, t), Ok(t));
    // Same shapes, same distances, same attributes, same data; the source is empty.
    assert_eq!(
        vmas(&asp),
        vec![
            (t, t + 2 * P),
            (t + 2 * P, t + 3 * P),
            (t + 6 * P, t + 8 * P)
        ]
    );
    assert_eq!(read(&asp, t + P, 5), b"alpha");
    assert_eq!(read(&asp, t + 2 * P, 5), b"bravo");
    assert_eq!(read(&asp, t + 7 * P, 7), b"charlie");
    assert!(
        !asp.query_vma(t + 2 * P, 0)
            .unwrap()
            .vm_flags
            .contains(VmFlags::WRITE)
    );
    assert!(
        asp.query_vma(a, PROCMAP_QUERY_COVERING_OR_NEXT_VMA)
            .unwrap()
            .start
            >= t
    );
    let _ = b;
    drop(asp);
    assert_eq!(alloc.allocated_frames(), base, "nothing leaked by the move");
}

#[test]
fn pure_move_of_part_of_each_end_vma_splits_them() {
    let (_a, _b, asp) = setup();
    let [a, _b, c] = three_vmas(&asp, 0x4000_0000);
    let t = 0x5000_0000;
    // From the second page of A to the first page of C.
    let len = (c + P) - (a + P);
    assert_eq!(asp.mremap(a + P, len, len, FIXED_MOVE, t), Ok(t));
    assert_eq!(
        vmas(&asp),
        vec![
            (a, a + P),
            (c + P, c + 2 * P),
            (t, t + P),
            (t + P, t + 2 * P),
            (t + 5 * P, t + 6 * P)
        ]
    );
    assert_eq!(read(&asp, t, 5), b"alpha");
    assert_eq!(read(&asp, t + P, 5), b"bravo");
    assert_eq!(read(&asp, c + P, 7), b"charlie", "C's tail stayed");
}

#[test]
fn pure_move_must_start_on_a_mapped_page() {
    let (_a, _b, asp) = setup();
    let [a, _b, c] = three_vmas(&asp, 0x4000_0000);
    let before = vmas(&asp);
    // Starting in the gap before C.
    assert_eq!(
        asp.mremap(c - P, 3 * P, 3 * P, FIXED_MOVE, 0x5000_0000),
        Err(Errno::EFAULT)
    );
    // Starting before A.
    assert_eq!(
        asp.mremap(a - P, 2 * P, 2 * P, FIXED_MOVE, 0x5000_0000),
        Err(Errno::EFAULT)
    );
    assert_eq!(vmas(&asp), before, "nothing changed");
}

#[test]
fn resizing_or_non_fixed_moves_stay_within_one_vma() {
    let (_a, _b, asp) = setup();
    let [a, _b, c] = three_vmas(&asp, 0x4000_0000);
    let len = c + 2 * P - a;
    let before = vmas(&asp);
    // A resize across VMAs: EFAULT (check_prep_vma).
    assert_eq!(
        asp.mremap(a, len, len + P, FIXED_MOVE, 0x5000_0000),
        Err(Errno::EFAULT)
    );
    // Not fixed: EFAULT too.
    assert_eq!(asp.mremap(a, len, len, MREMAP_MAYMOVE, 0), Ok(a), "no-op");
    assert_eq!(
        asp.mremap(a, len, len, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, 0),
        Err(Errno::EFAULT)
    );
    assert_eq!(vmas(&asp), before);
}

#[test]
fn pure_move_unmaps_only_each_part_destination() {
    let (_a, _b, asp) = setup();
    let [a, _b, c] = three_vmas(&asp, 0x4000_0000);
    let t = 0x5000_0000;
    // Something already sits where the source gap lands: Linux unmaps each part's
    // destination only, so it survives.
    let keep = asp
        .mmap(t + 4 * P, P, PROT_READ, PA | MAP_FIXED, None, 0)
        .unwrap();
    let len = c + 2 * P - a;
    assert_eq!(asp.mremap(a, len, len, FIXED_MOVE, t), Ok(t));
    assert!(
        asp.query_vma(keep, 0).is_some(),
        "mapping in the gap survives"
    );
    assert_eq!(vmas(&asp).len(), 4);
}

#[test]
fn userfaultfd_armed_vma_moves_only_alone() {
    let (_a, _b, asp) = setup();
    let [a, b, c] = three_vmas(&asp, 0x4000_0000);
    {
        let mut g = asp.mm().write_lock();
        let vb = g.vma_lookup(b).unwrap();
        g.vma_start_write(vb);
        g.vma_set_uffd_ctx(vb, 0x1234).unwrap();
    }
    let len = c + 2 * P - a;
    // A moves, then B (armed, not first) aborts the rest, as Linux does.
    assert_eq!(
        asp.mremap(a, len, len, FIXED_MOVE, 0x5000_0000),
        Err(Errno::EFAULT)
    );
    assert_eq!(read(&asp, 0x5000_0000 + P, 5), b"alpha", "A already moved");
    assert!(asp.query_vma(b, 0).is_some(), "B stayed");
    // Alone it may move.
    assert_eq!(
        asp.mremap(b, P, P, FIXED_MOVE, 0x6000_0000),
        Ok(0x6000_0000)
    );
    // Armed and first, with more VMAs after it: refused before anything moves.
    let v = asp.mremap(0x6000_0000, P, P, FIXED_MOVE, b).unwrap();
    assert_eq!(v, b);
    assert_eq!(
        asp.mremap(b, c + 2 * P - b, c + 2 * P - b, FIXED_MOVE, 0x7000_0000),
        Err(Errno::EFAULT)
    );
    assert!(asp.query_vma(c, 0).is_some());
}

#[test]
fn dontunmap_of_a_whole_vma_drops_its_anon_vma_and_mlock() {
    let (_a, _b, asp) = setup();
    let x = asp
        .mmap(0x4000_0000, 4 * P, RW, PA | MAP_FIXED | MAP_LOCKED, None, 0)
        .unwrap();
    asp.copy_to_user(x, b"data").unwrap();
    assert!(asp.query_vma(x, 0).unwrap().anon_vma_id.is_some());
    let n = asp
        .mremap(x, 4 * P, 4 * P, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, 0)
        .unwrap();
    let old = asp.query_vma(x, 0).unwrap();
    assert_eq!(
        (old.start, old.end),
        (x, x + 4 * P),
        "old range stays mapped"
    );
    assert_eq!(old.anon_vma_id, None, "anon_vma links dropped");
    assert!(
        !old.vm_flags
            .intersects(VmFlags::LOCKED | VmFlags::LOCKONFAULT)
    );
    let new = asp.query_vma(n, 0).unwrap();
    assert!(new.anon_vma_id.is_some());
    assert!(
        new.vm_flags.contains(VmFlags::LOCKED),
        "the moved VMA keeps mlock"
    );
    assert_eq!(read(&asp, n, 4), b"data");
    assert_eq!(read(&asp, x, 4), [0; 4], "old range reads zero");
}

#[test]
fn dontunmap_of_part_of_a_vma_keeps_its_anon_vma() {
    let (_a, _b, asp) = setup();
    let x = asp
        .mmap(0x4000_0000, 4 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    asp.copy_to_user(x, b"data").unwrap();
    asp.copy_to_user(x + 3 * P, b"tail").unwrap();
    asp.mremap(x, P, P, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, 0)
        .unwrap();
    assert!(asp.query_vma(x, 0).unwrap().anon_vma_id.is_some());
    assert_eq!(read(&asp, x + 3 * P, 4), b"tail");
}

#[test]
fn zero_old_len_duplicates_a_shared_mapping_only() {
    let (_a, _b, asp) = setup();
    let p = asp
        .mmap(0x4000_0000, P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    assert_eq!(asp.mremap(p, 0, P, MREMAP_MAYMOVE, 0), Err(Errno::EINVAL));
    let s = asp
        .mmap(0, P, RW, MAP_SHARED | MAP_ANONYMOUS, None, 0)
        .unwrap();
    asp.copy_to_user(s, b"shared").unwrap();
    let d = asp.mremap(s, 0, P, MREMAP_MAYMOVE, 0).unwrap();
    assert_ne!(d, s);
    assert!(asp.query_vma(s, 0).is_some(), "the original stays");
    assert_eq!(read(&asp, d, 6), b"shared");
    asp.copy_to_user(d, b"SHARED").unwrap();
    assert_eq!(read(&asp, s, 6), b"SHARED", "both map the same pages");
}

#[test]
fn sealed_vma_refuses_before_the_range_check() {
    let (_a, _b, asp) = setup();
    let x = asp
        .mmap(0x4000_0000, 2 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    {
        let mut g = asp.mm().write_lock();
        let v = g.vma_lookup(x).unwrap();
        g.vma_start_write(v);
        g.vma_set_flags(v, v.flags() | VmFlags::SEALED).unwrap();
    }
    // The old range also runs past the VMA (EFAULT), but the seal is checked first.
    assert_eq!(
        asp.mremap(x, 3 * P, 4 * P, MREMAP_MAYMOVE, 0),
        Err(Errno::EPERM)
    );
}

#[test]
fn out_of_memory_while_moving_page_tables_leaves_the_source_intact() {
    let (alloc, _b, asp) = setup();
    let x = asp
        .mmap(0x4000_0000, 4 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    asp.copy_to_user(x, b"keep").unwrap();
    asp.copy_to_user(x + 3 * P, b"me").unwrap();
    let before = vmas(&asp);
    let frames_before = alloc.allocated_frames();
    // Exhaust the frames: the destination (another 512 GiB slot) needs new tables.
    let mut held = vec![];
    while let Ok(f) = alloc.alloc(0) {
        held.push(f);
    }
    let t = 0x80_0000_0000;
    assert_eq!(
        asp.mremap(x, 4 * P, 4 * P, FIXED_MOVE, t),
        Err(Errno::ENOMEM)
    );
    for f in held {
        alloc.free(f, 0).unwrap();
    }
    assert_eq!(
        vmas(&asp),
        before,
        "no VMA at the destination, source unchanged"
    );
    assert_eq!(alloc.allocated_frames(), frames_before, "nothing leaked");
    assert_eq!(read(&asp, x, 4), b"keep");
    assert_eq!(read(&asp, x + 3 * P, 2), b"me");
}
