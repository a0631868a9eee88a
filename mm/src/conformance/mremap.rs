//! `mremap(2)` (Linux: `mm/mremap.c`): the errno cases in Linux's check order, shrink, growth in
//! place, moves with their contents, MREMAP_DONTUNMAP (the old range reads zero, its
//! anon_vma and mlock go when all of it moved), the shared `old_len == 0` duplicate,
//! and the ≈6.17 pure move across several VMAs with its gap and EFAULT rules.
//!
//! Rollback when moving the page tables runs out of memory is tested on the host only
//! (`mm/tests/mmap_mremap.rs`): it exhausts the frame allocator.

use alloc::vec;
use alloc::vec::Vec;

use super::{Harness, Space, vmas};
use crate::errno::Errno;
use crate::mmap::*;
use crate::vma::VmFlags;

const P: usize = 4096;
const RW: u32 = PROT_READ | PROT_WRITE;
const PA: u32 = MAP_PRIVATE | MAP_ANONYMOUS;
const FIXED_MOVE: u32 = MREMAP_MAYMOVE | MREMAP_FIXED;

fn read(space: &dyn Space, addr: usize, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    space.read(addr, &mut b).expect("user read faulted");
    b
}

fn write(space: &dyn Space, addr: usize, data: &[u8]) {
    space.write(addr, data).expect("user write faulted");
}

/// Argument and VMA errors, in Linux's order.
pub fn mremap_errors(h: &dyn Harness) {
    let space = h.space();
    let asp = space.asp();
    let x = asp
        .mmap(0x8000_0000, 2 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    // Unknown flag.
    assert_eq!(asp.mremap(x, P, P, 8, 0), Err(Errno::EINVAL));
    // FIXED without MAYMOVE.
    assert_eq!(
        asp.mremap(x, P, P, MREMAP_FIXED, x + 10 * P),
        Err(Errno::EINVAL)
    );
    // DONTUNMAP resizing, and DONTUNMAP without MAYMOVE.
    assert_eq!(
        asp.mremap(x, P, 2 * P, MREMAP_DONTUNMAP | MREMAP_MAYMOVE, 0),
        Err(Errno::EINVAL)
    );
    assert_eq!(asp.mremap(x, P, P, MREMAP_DONTUNMAP, 0), Err(Errno::EINVAL));
    // Unaligned address, new_len 0.
    assert_eq!(asp.mremap(x + 1, P, P, 0, 0), Err(Errno::EINVAL));
    assert_eq!(asp.mremap(x, P, 0, 0, 0), Err(Errno::EINVAL));
    // Argument errors come before the VMA lookup: nothing at 0x10000, still EINVAL.
    assert_eq!(asp.mremap(0x10000, P, 0, 0, 0), Err(Errno::EINVAL));
    // No VMA.
    assert_eq!(
        asp.mremap(0x10000, P, 2 * P, MREMAP_MAYMOVE, 0),
        Err(Errno::EFAULT)
    );
    // Old range beyond the VMA.
    assert_eq!(
        asp.mremap(x, 3 * P, 4 * P, MREMAP_MAYMOVE, 0),
        Err(Errno::EFAULT)
    );
    // Overlapping FIXED move.
    assert_eq!(
        asp.mremap(x, 2 * P, 2 * P, FIXED_MOVE, x + P),
        Err(Errno::EINVAL)
    );
    // Destination below mmap_min_addr.
    assert_eq!(asp.mremap(x, P, P, FIXED_MOVE, 0x1000), Err(Errno::EPERM));
    // Growth blocked without MAYMOVE.
    asp.mmap(x + 2 * P, P, PROT_READ, PA | MAP_FIXED, None, 0)
        .unwrap();
    assert_eq!(asp.mremap(x, 2 * P, 3 * P, 0, 0), Err(Errno::ENOMEM));
    assert_eq!(vmas(asp), vec![(x, x + 2 * P), (x + 2 * P, x + 3 * P)]);
}

/// Shrink and grow in place, move when blocked, FIXED move, DONTUNMAP — contents
/// follow every move, and everything is given back at the end.
pub fn mremap_shrink_grow_move_dontunmap(h: &dyn Harness) {
    let base = h.frames_in_use();
    {
        let space = h.space();
        let s = &*space;
        let asp = space.asp();
        let x = asp
            .mmap(0x9000_0000, 4 * P, RW, PA | MAP_FIXED, None, 0)
            .unwrap();
        write(s, x, b"hello");
        write(s, x + 3 * P, b"tail");
        // Shrink in place.
        assert_eq!(asp.mremap(x, 4 * P, 2 * P, 0, 0), Ok(x));
        assert_eq!(vmas(asp), vec![(x, x + 2 * P)]);
        // Grow in place: the page that was shrunk away reads zero.
        assert_eq!(asp.mremap(x, 2 * P, 6 * P, 0, 0), Ok(x));
        assert_eq!(vmas(asp), vec![(x, x + 6 * P)]);
        assert_eq!(read(s, x + 3 * P, 4), [0; 4]);
        // Move with MAYMOVE when blocked.
        asp.mmap(x + 6 * P, P, PROT_READ, PA | MAP_FIXED, None, 0)
            .unwrap();
        let n = asp.mremap(x, 6 * P, 8 * P, MREMAP_MAYMOVE, 0).unwrap();
        assert_ne!(n, x);
        assert_eq!(read(s, n, 5), b"hello", "contents moved");
        assert!(asp.query_vma(x, 0).is_none(), "old range unmapped");
        assert!(space.read_byte(x).is_err(), "old range faults");
        // FIXED move.
        let t = 0xa000_0000;
        assert_eq!(asp.mremap(n, 8 * P, 8 * P, FIXED_MOVE, t), Ok(t));
        assert_eq!(read(s, t, 5), b"hello");
        // DONTUNMAP: the old range stays mapped and reads zero.
        let d = asp
            .mremap(t, 8 * P, 8 * P, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, 0)
            .unwrap();
        assert_eq!(read(s, d, 5), b"hello");
        assert!(asp.query_vma(t, 0).is_some());
        assert_eq!(read(s, t, 5), [0; 5]);
    }
    assert_eq!(h.frames_in_use(), base, "everything given back");
}

/// A (2 pages) | B (1 page, read-only) | 3-page gap | C (2 pages), each with data.
fn three_vmas(space: &dyn Space, at: usize) -> [usize; 3] {
    let asp = space.asp();
    let a = asp.mmap(at, 2 * P, RW, PA | MAP_FIXED, None, 0).unwrap();
    let b = asp
        .mmap(at + 2 * P, P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    let c = asp
        .mmap(at + 6 * P, 2 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    write(space, a + P, b"alpha");
    write(space, b, b"bravo");
    write(space, c + P, b"charlie");
    asp.mprotect(b, P, PROT_READ).unwrap();
    assert_eq!(vmas(asp), vec![(a, b), (b, b + P), (c, c + 2 * P)]);
    [a, b, c]
}

/// A pure move (MREMAP_FIXED, no resize) takes every VMA in the range along, keeping
/// each one's distance from the previous one; the source is left empty.
pub fn pure_move_spans_vmas_and_keeps_gaps(h: &dyn Harness) {
    let base = h.frames_in_use();
    {
        let space = h.space();
        let s = &*space;
        let asp = space.asp();
        let [a, _, c] = three_vmas(s, 0x4000_0000);
        let t = 0x5000_0000;
        let len = c + 2 * P - a;
        assert_eq!(asp.mremap(a, len, len, FIXED_MOVE, t), Ok(t));
        assert_eq!(
            vmas(asp),
            vec![
                (t, t + 2 * P),
                (t + 2 * P, t + 3 * P),
                (t + 6 * P, t + 8 * P)
            ]
        );
        assert_eq!(read(s, t + P, 5), b"alpha");
        assert_eq!(read(s, t + 2 * P, 5), b"bravo");
        assert_eq!(read(s, t + 7 * P, 7), b"charlie");
        let b2 = asp.query_vma(t + 2 * P, 0).unwrap();
        assert!(
            !b2.vm_flags.contains(VmFlags::WRITE),
            "attributes moved too"
        );
        assert!(space.write_byte(t + 2 * P, 1).is_err(), "still read-only");
        assert!(space.read_byte(a).is_err(), "source is empty");
    }
    assert_eq!(h.frames_in_use(), base, "nothing leaked by the move");
}

/// A pure move that starts inside A and ends inside C splits them and leaves their
/// outer parts in place.
pub fn pure_move_of_part_of_each_end_vma_splits_them(h: &dyn Harness) {
    let space = h.space();
    let s = &*space;
    let asp = space.asp();
    let [a, _, c] = three_vmas(s, 0x4000_0000);
    let t = 0x5000_0000;
    let len = (c + P) - (a + P);
    assert_eq!(asp.mremap(a + P, len, len, FIXED_MOVE, t), Ok(t));
    assert_eq!(
        vmas(asp),
        vec![
            (a, a + P),
            (c + P, c + 2 * P),
            (t, t + P),
            (t + P, t + 2 * P),
            (t + 5 * P, t + 6 * P)
        ]
    );
    assert_eq!(read(s, t, 5), b"alpha");
    assert_eq!(read(s, t + P, 5), b"bravo");
    assert_eq!(read(s, c + P, 7), b"charlie", "C's tail stayed");
}

/// The first byte of a pure move must be mapped (EFAULT, nothing changes).
pub fn pure_move_must_start_on_a_mapped_page(h: &dyn Harness) {
    let space = h.space();
    let asp = space.asp();
    let [a, _, c] = three_vmas(&*space, 0x4000_0000);
    let before = vmas(asp);
    assert_eq!(
        asp.mremap(c - P, 3 * P, 3 * P, FIXED_MOVE, 0x5000_0000),
        Err(Errno::EFAULT)
    );
    assert_eq!(
        asp.mremap(a - P, 2 * P, 2 * P, FIXED_MOVE, 0x5000_0000),
        Err(Errno::EFAULT)
    );
    assert_eq!(vmas(asp), before, "nothing changed");
}

/// Only a pure move may span VMAs: a resize or a move without MREMAP_FIXED across
/// VMAs is EFAULT (same size without a new address is a no-op).
pub fn resizing_or_non_fixed_moves_stay_within_one_vma(h: &dyn Harness) {
    let space = h.space();
    let asp = space.asp();
    let [a, _, c] = three_vmas(&*space, 0x4000_0000);
    let len = c + 2 * P - a;
    let before = vmas(asp);
    assert_eq!(
        asp.mremap(a, len, len + P, FIXED_MOVE, 0x5000_0000),
        Err(Errno::EFAULT)
    );
    assert_eq!(asp.mremap(a, len, len, MREMAP_MAYMOVE, 0), Ok(a), "no-op");
    assert_eq!(
        asp.mremap(a, len, len, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, 0),
        Err(Errno::EFAULT)
    );
    assert_eq!(vmas(asp), before);
}

/// Each part unmaps only its own destination: a mapping where the source gap lands
/// survives, as in Linux.
pub fn pure_move_unmaps_only_each_part_destination(h: &dyn Harness) {
    let space = h.space();
    let asp = space.asp();
    let [a, _, c] = three_vmas(&*space, 0x4000_0000);
    let t = 0x5000_0000;
    let keep = asp
        .mmap(t + 4 * P, P, PROT_READ, PA | MAP_FIXED, None, 0)
        .unwrap();
    let len = c + 2 * P - a;
    assert_eq!(asp.mremap(a, len, len, FIXED_MOVE, t), Ok(t));
    assert!(
        asp.query_vma(keep, 0).is_some(),
        "mapping in the gap survives"
    );
    assert_eq!(vmas(asp).len(), 4);
}

/// A userfaultfd-armed VMA moves only on its own (Linux: `vma_multi_allowed`).
pub fn userfaultfd_armed_vma_moves_only_alone(h: &dyn Harness) {
    let space = h.space();
    let s = &*space;
    let asp = space.asp();
    let [a, b, c] = three_vmas(s, 0x4000_0000);
    {
        let mut g = asp.mm().write_lock();
        let vb = g.vma_lookup(b).unwrap();
        g.vma_start_write(vb);
        g.vma_set_uffd_ctx(vb, 0x1234).unwrap();
    }
    let len = c + 2 * P - a;
    // A moves, then B (armed, not first) aborts the rest.
    assert_eq!(
        asp.mremap(a, len, len, FIXED_MOVE, 0x5000_0000),
        Err(Errno::EFAULT)
    );
    assert_eq!(read(s, 0x5000_0000 + P, 5), b"alpha", "A already moved");
    assert!(asp.query_vma(b, 0).is_some(), "B stayed");
    // Alone it may move, and back.
    assert_eq!(
        asp.mremap(b, P, P, FIXED_MOVE, 0x6000_0000),
        Ok(0x6000_0000)
    );
    assert_eq!(asp.mremap(0x6000_0000, P, P, FIXED_MOVE, b), Ok(b));
    // Armed and first, with more VMAs after it: refused before anything moves.
    assert_eq!(
        asp.mremap(b, c + 2 * P - b, c + 2 * P - b, FIXED_MOVE, 0x7000_0000),
        Err(Errno::EFAULT)
    );
    assert!(asp.query_vma(c, 0).is_some());
    assert_eq!(read(s, b, 5), b"bravo");
}

/// MREMAP_DONTUNMAP of a whole VMA drops the old VMA's anon_vma links and mlock; of
/// part of one, the old VMA keeps its anon_vma.
pub fn dontunmap_drops_anon_vma_and_mlock_only_when_all_moved(h: &dyn Harness) {
    let space = h.space();
    let s = &*space;
    let asp = space.asp();
    let x = asp
        .mmap(0x4000_0000, 4 * P, RW, PA | MAP_FIXED | MAP_LOCKED, None, 0)
        .unwrap();
    write(s, x, b"data");
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
    assert_eq!(read(s, n, 4), b"data");
    assert_eq!(read(s, x, 4), [0; 4], "old range reads zero");

    let y = asp
        .mmap(0x4800_0000, 4 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    write(s, y, b"data");
    write(s, y + 3 * P, b"tail");
    asp.mremap(y, P, P, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, 0)
        .unwrap();
    assert!(asp.query_vma(y, 0).unwrap().anon_vma_id.is_some());
    assert_eq!(read(s, y + 3 * P, 4), b"tail");
}

/// `old_len == 0` duplicates a shared mapping (both see the same pages) and is
/// refused for a private one.
pub fn zero_old_len_duplicates_a_shared_mapping_only(h: &dyn Harness) {
    let space = h.space();
    let s = &*space;
    let asp = space.asp();
    let p = asp
        .mmap(0x4000_0000, P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    assert_eq!(asp.mremap(p, 0, P, MREMAP_MAYMOVE, 0), Err(Errno::EINVAL));
    let sh = asp
        .mmap(0, P, RW, MAP_SHARED | MAP_ANONYMOUS, None, 0)
        .unwrap();
    write(s, sh, b"shared");
    let d = asp.mremap(sh, 0, P, MREMAP_MAYMOVE, 0).unwrap();
    assert_ne!(d, sh);
    assert!(asp.query_vma(sh, 0).is_some(), "the original stays");
    assert_eq!(read(s, d, 6), b"shared");
    write(s, d, b"SHARED");
    assert_eq!(read(s, sh, 6), b"SHARED", "both map the same pages");
}

/// A sealed VMA refuses (EPERM) before the range check would say EFAULT; exit still
/// tears it down.
pub fn sealed_vma_refuses_before_the_range_check(h: &dyn Harness) {
    let base = h.frames_in_use();
    {
        let space = h.space();
        let s = &*space;
        let asp = space.asp();
        let x = asp
            .mmap(0x4000_0000, 2 * P, RW, PA | MAP_FIXED, None, 0)
            .unwrap();
        write(s, x, b"sealed");
        {
            let mut g = asp.mm().write_lock();
            let v = g.vma_lookup(x).unwrap();
            g.vma_start_write(v);
            g.vma_set_flags(v, v.flags() | VmFlags::SEALED).unwrap();
        }
        assert_eq!(
            asp.mremap(x, 3 * P, 4 * P, MREMAP_MAYMOVE, 0),
            Err(Errno::EPERM)
        );
        assert_eq!(asp.munmap(x, P), Err(Errno::EPERM), "munmap refuses too");
        assert_eq!(read(s, x, 6), b"sealed");
    }
    // Dropping the space is exit_mmap: seals do not stop it.
    assert_eq!(h.frames_in_use(), base, "sealed VMA torn down at exit");
}
