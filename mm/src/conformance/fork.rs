//! fork cases: the merge scenarios of Linux's `tools/testing/selftests/mm/merge.c` that
//! need a fork (`forked_target_vma`, `forked_source_vma`, the `merge_with_fork`
//! variants of `mremap_faulted_to_unfaulted_*`), copy-on-write with exact copy counts,
//! the parent's reuse after the child exits, `MADV_DONTFORK`/`WIPEONFORK`, inherited
//! and dropped flags, file, shared and PFN mappings, teardown in either order, and
//! large address spaces.
//!
//! In the merge scenarios the selftest's child does the checking and the parent just
//! waits; here the child is the forked [`Space`], and the parent stays alive meanwhile.

use alloc::vec::Vec;

use super::{Harness, Space, vmas};
use crate::errno::Errno;
use crate::file::{OpenMode, device_file, ramfs_file};
use crate::mmap::*;
use crate::paging::PageTableFlags;
use crate::vma::{MmHooks, VmFlags};

const P: usize = 4096;
const RW: u32 = PROT_READ | PROT_WRITE;
const PA: u32 = MAP_PRIVATE | MAP_ANONYMOUS;

/// merge.c's carveout: 30 PROT_NONE pages to map over.
fn carveout(space: &dyn Space) -> usize {
    space
        .asp()
        .mmap(0, 30 * P, PROT_NONE, PA, None, 0)
        .expect("carveout")
}

/// `(vma_start, vma_end)` of the VMA containing `addr` (merge.c's `find_vma_procmap`),
/// after `validate_mm`.
fn vma_at(space: &dyn Space, addr: usize) -> (usize, usize) {
    vmas(space.asp());
    let q = space.asp().query_vma(addr, 0).expect("a VMA at addr");
    (q.start, q.end)
}

fn fork(space: &dyn Space) -> alloc::boxed::Box<dyn Space> {
    let child = space.fork().expect("fork");
    vmas(space.asp());
    vmas(child.asp());
    child
}

/// merge.c `forked_target_vma`: a forked child's faulted VMA does not merge with a new
/// unfaulted neighbour mapped after it (it would have to share the child's anon_vma
/// hierarchy).
pub fn forked_target_vma(h: &dyn Harness) {
    let parent = h.space();
    let c = carveout(&*parent);
    let ptr = parent
        .asp()
        .mmap(c + P, 5 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    parent.write_byte(ptr, b'x').unwrap();
    let child = fork(&*parent);
    // unCOWing everything does not make the chain go away.
    for i in 0..5 {
        child.write_byte(ptr + i * P, b'x').unwrap();
    }
    let ptr2 = child
        .asp()
        .mmap(ptr + 5 * P, 5 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    assert_eq!(ptr2, ptr + 5 * P);
    assert_eq!(vma_at(&*child, ptr), (ptr, ptr + 5 * P), "not merged");
}

/// merge.c `forked_source_vma`: nor does it merge as the source of an mprotect merge.
pub fn forked_source_vma(h: &dyn Harness) {
    let parent = h.space();
    let c = carveout(&*parent);
    let ptr = parent
        .asp()
        .mmap(c + P, 5 * P, RW, PA | MAP_FIXED | MAP_NORESERVE, None, 0)
        .unwrap();
    parent.write_byte(ptr, b'x').unwrap();
    let child = fork(&*parent);
    for i in 0..5 {
        child.write_byte(ptr + i * P, b'x').unwrap();
    }
    let rwx = RW | PROT_EXEC;
    let ptr2 = child
        .asp()
        .mmap(
            c + 6 * P,
            5 * P,
            rwx,
            PA | MAP_FIXED | MAP_NORESERVE,
            None,
            0,
        )
        .unwrap();
    assert_eq!(vma_at(&*child, ptr2), (ptr2, ptr2 + 5 * P), "not merged");
    child.asp().mprotect(ptr, 5 * P, rwx).unwrap();
    assert_eq!(
        vma_at(&*child, ptr2),
        (ptr2, ptr2 + 5 * P),
        "still not merged"
    );
}

/// The body of merge.c's `merge_with_fork` scenarios: set up with `setup` in the
/// parent, fork if `forked`, then `rest` runs in the child (or in the parent).
fn with_fork(
    h: &dyn Harness,
    forked: bool,
    setup: impl Fn(&dyn Space, usize),
    rest: impl Fn(&dyn Space, usize),
) {
    let parent = h.space();
    let c = carveout(&*parent);
    setup(&*parent, c);
    if forked {
        let child = fork(&*parent);
        rest(&*child, c);
    } else {
        rest(&*parent, c);
    }
}

const FIX: u32 = MREMAP_FIXED | MREMAP_MAYMOVE;

fn map_fixed(s: &dyn Space, at: usize, len: usize) -> usize {
    s.asp().mmap(at, len, RW, PA | MAP_FIXED, None, 0).unwrap()
}

/// merge.c `merge_with_fork/mremap_faulted_to_unfaulted_prev`, both variants.
pub fn mremap_faulted_to_unfaulted_prev(h: &dyn Harness) {
    for forked in [false, true] {
        with_fork(
            h,
            forked,
            |s, c| {
                let a = map_fixed(s, c + 4 * P, 3 * P);
                s.write_byte(a, b'x').unwrap();
            },
            |s, c| {
                let a = s
                    .asp()
                    .mremap(c + 4 * P, 3 * P, 3 * P, FIX, c + 20 * P)
                    .unwrap();
                let b = map_fixed(s, c + P, 3 * P);
                s.asp()
                    .mremap(a, 3 * P, 3 * P, FIX | MREMAP_DONTUNMAP, c + 4 * P)
                    .unwrap();
                let want = if forked { 3 * P } else { 6 * P };
                assert_eq!(vma_at(s, b), (b, b + want), "forked={forked}");
            },
        );
    }
}

/// merge.c `merge_with_fork/mremap_faulted_to_unfaulted_next`, both variants.
pub fn mremap_faulted_to_unfaulted_next(h: &dyn Harness) {
    for forked in [false, true] {
        with_fork(
            h,
            forked,
            |s, c| {
                let a = map_fixed(s, c + P, 3 * P);
                s.write_byte(a, b'x').unwrap();
            },
            |s, c| {
                let a = s
                    .asp()
                    .mremap(c + P, 3 * P, 3 * P, FIX, c + 20 * P)
                    .unwrap();
                map_fixed(s, c + 4 * P, 3 * P);
                let a = s
                    .asp()
                    .mremap(a, 3 * P, 3 * P, FIX | MREMAP_DONTUNMAP, c + P)
                    .unwrap();
                let want = if forked { 3 * P } else { 6 * P };
                assert_eq!(vma_at(s, a), (a, a + want), "forked={forked}");
            },
        );
    }
}

/// merge.c `merge_with_fork/mremap_faulted_to_unfaulted_prev_unfaulted_next`.
pub fn mremap_faulted_to_unfaulted_prev_unfaulted_next(h: &dyn Harness) {
    for forked in [false, true] {
        with_fork(
            h,
            forked,
            |s, c| {
                let b = map_fixed(s, c + 4 * P, 3 * P);
                s.write_byte(b, b'x').unwrap();
            },
            |s, c| {
                let b = s
                    .asp()
                    .mremap(c + 4 * P, 3 * P, 3 * P, FIX, c + 20 * P)
                    .unwrap();
                let a = map_fixed(s, c + P, 3 * P);
                map_fixed(s, c + 7 * P, 3 * P);
                let b = s
                    .asp()
                    .mremap(b, 3 * P, 3 * P, FIX | MREMAP_DONTUNMAP, c + 4 * P)
                    .unwrap();
                let want = if forked { 3 * P } else { 9 * P };
                assert_eq!(vma_at(s, a), (a, a + want), "forked={forked}");
                if forked {
                    assert_eq!(vma_at(s, b), (b, b + 3 * P), "B and C not merged");
                }
            },
        );
    }
}

/// merge.c `merge_with_fork/mremap_faulted_to_unfaulted_prev_faulted_next`.
pub fn mremap_faulted_to_unfaulted_prev_faulted_next(h: &dyn Harness) {
    for forked in [false, true] {
        with_fork(
            h,
            forked,
            |s, c| {
                let bc = map_fixed(s, c + 4 * P, 6 * P);
                s.write_byte(bc, b'x').unwrap();
            },
            |s, c| {
                let b = s
                    .asp()
                    .mremap(c + 4 * P, 3 * P, 3 * P, FIX, c + 20 * P)
                    .unwrap();
                let a = map_fixed(s, c + P, 3 * P);
                let b = s
                    .asp()
                    .mremap(b, 3 * P, 3 * P, FIX | MREMAP_DONTUNMAP, c + 4 * P)
                    .unwrap();
                if forked {
                    assert_eq!(vma_at(s, b), (b, b + 6 * P), "B, C merge");
                } else {
                    assert_eq!(vma_at(s, a), (a, a + 9 * P), "A, B, C merge");
                }
            },
        );
    }
}

/// Fork, then the child writes: each write to a shared page copies it exactly once
/// (one new frame per page, none on the second write), the parent still reads the old
/// data, the child its own; the zero page is shared, not copied, until written.
pub fn child_write_copies_and_parent_keeps_old_data(h: &dyn Harness) {
    let base = h.frames_in_use();
    {
        let parent = h.space();
        let n = 8;
        let x = parent.asp().mmap(0, (n + 2) * P, RW, PA, None, 0).unwrap();
        for i in 0..n {
            parent.write_byte(x + i * P, i as u8 + 1).unwrap();
        }
        // One page only read: the zero page.
        assert_eq!(parent.read_byte(x + n * P).unwrap(), 0);
        let child = fork(&*parent);
        let before = h.frames_in_use();
        for i in 0..n {
            assert_eq!(child.read_byte(x + i * P).unwrap(), i as u8 + 1);
        }
        assert_eq!(h.frames_in_use(), before, "reads copy nothing");
        for i in 0..n {
            child.write_byte(x + i * P, 0xc0 + i as u8).unwrap();
        }
        assert_eq!(
            h.frames_in_use(),
            before + n as u64,
            "one copy per page written"
        );
        for i in 0..n {
            child.write_byte(x + i * P + 1, 0xee).unwrap();
        }
        assert_eq!(
            h.frames_in_use(),
            before + n as u64,
            "a copied page is not copied again"
        );
        for i in 0..n {
            assert_eq!(
                parent.read_byte(x + i * P).unwrap(),
                i as u8 + 1,
                "parent's data"
            );
            assert_eq!(
                child.read_byte(x + i * P).unwrap(),
                0xc0 + i as u8,
                "child's data"
            );
        }
        assert_eq!(child.read_byte(x + n * P).unwrap(), 0, "zero page shared");
        assert_eq!(h.frames_in_use(), before + n as u64);
        vmas(parent.asp());
        vmas(child.asp());
    }
    assert_eq!(h.frames_in_use(), base);
}

/// After the child exits, the parent's writes to the pages it shared with the child
/// reuse them in place: no copy, the same frame (Linux: `PageAnonExclusive` cleared
/// by fork, `wp_can_reuse_anon_folio` on a reference count back at one). While the
/// child lives, the parent's write copies.
pub fn parent_write_after_child_exit_reuses_the_page(h: &dyn Harness) {
    let base = h.frames_in_use();
    {
        let parent = h.space();
        let x = parent.asp().mmap(0, 4 * P, RW, PA, None, 0).unwrap();
        for i in 0..4 {
            parent.write_byte(x + i * P, 7).unwrap();
        }
        let frame = |i: usize| parent.asp().translate(x + i * P).unwrap().frame;
        let old: Vec<_> = (0..4).map(frame).collect();
        let child = fork(&*parent);
        // Page 0: the parent writes while the child maps it: a copy.
        let before = h.frames_in_use();
        parent.write_byte(x, 8).unwrap();
        assert_eq!(h.frames_in_use(), before + 1);
        assert_ne!(frame(0), old[0]);
        assert_eq!(child.read_byte(x).unwrap(), 7);
        drop(child);
        // Pages 1..4: the child is gone (its mapping of page 0's old frame too).
        let before = h.frames_in_use();
        for (i, &was) in old.iter().enumerate().skip(1) {
            parent.write_byte(x + i * P, 9).unwrap();
            assert_eq!(frame(i), was, "page {i} reused in place");
        }
        assert_eq!(h.frames_in_use(), before, "no copy after the child exited");
        vmas(parent.asp());
    }
    assert_eq!(h.frames_in_use(), base);
}

/// MADV_DONTFORK: the range is not in the child; MADV_WIPEONFORK: it is, empty (reads
/// zero) while the parent keeps its data; MADV_DOFORK / MADV_KEEPONFORK undo them;
/// WIPEONFORK is refused on anything but private anonymous memory.
pub fn dontfork_wipeonfork_and_their_undo(h: &dyn Harness) {
    let base = h.frames_in_use();
    {
        let parent = h.space();
        let asp = parent.asp();
        let x = asp.mmap(0, 9 * P, RW, PA, None, 0).unwrap();
        for i in 0..9 {
            parent.write_byte(x + i * P, 0x55).unwrap();
        }
        asp.madvise(x, 3 * P, MADV_DONTFORK).unwrap();
        asp.madvise(x + 6 * P, 3 * P, MADV_WIPEONFORK).unwrap();
        let child = fork(&*parent);
        assert!(child.asp().query_vma(x, 0).is_none());
        assert_eq!(
            child.asp().query_vma(x + 3 * P, 0).map(|q| q.start),
            Some(x + 3 * P)
        );
        assert!(
            child.read_byte(x).is_err(),
            "DONTFORK range absent in the child"
        );
        assert_eq!(child.read_byte(x + 3 * P).unwrap(), 0x55, "copied range");
        assert_eq!(
            child.read_byte(x + 6 * P).unwrap(),
            0,
            "WIPEONFORK reads zero"
        );
        assert_eq!(
            parent.read_byte(x + 6 * P).unwrap(),
            0x55,
            "parent keeps its data"
        );
        let q = child.asp().query_vma(x + 6 * P, 0).unwrap();
        assert!(
            q.vm_flags.contains(VmFlags::WIPEONFORK),
            "the flag is inherited"
        );
        assert_eq!(
            q.anon_vma_id, None,
            "a wiped VMA starts without an anon_vma"
        );
        drop(child);
        asp.madvise(x, 3 * P, MADV_DOFORK).unwrap();
        asp.madvise(x + 6 * P, 3 * P, MADV_KEEPONFORK).unwrap();
        let child = fork(&*parent);
        assert_eq!(child.read_byte(x).unwrap(), 0x55, "DOFORK: copied again");
        assert_eq!(
            child.read_byte(x + 8 * P).unwrap(),
            0x55,
            "KEEPONFORK: copied"
        );
        drop(child);
        // Linux: WIPEONFORK only on private anonymous memory.
        let s = asp
            .mmap(0, P, RW, MAP_SHARED | MAP_ANONYMOUS, None, 0)
            .unwrap();
        assert_eq!(asp.madvise(s, P, MADV_WIPEONFORK), Err(Errno::EINVAL));
        let f = ramfs_file(h.allocator(), "/wipe", P, OpenMode::RDWR);
        let m = asp.mmap(0, P, RW, MAP_PRIVATE, Some(&f), 0).unwrap();
        assert_eq!(asp.madvise(m, P, MADV_WIPEONFORK), Err(Errno::EINVAL));
        vmas(asp);
    }
    assert_eq!(h.frames_in_use(), base);
}

/// What the child inherits: VM_LOCKED/VM_LOCKONFAULT cleared; a faulted VMA becomes a
/// fork child (its chain: the parent's anon_vma plus its own, whose parent is the
/// parent's); an unfaulted one stays without an anon_vma; the layout and counters match.
pub fn locked_is_cleared_and_anon_vma_chains_follow_anon_vma_fork(h: &dyn Harness) {
    let parent = h.space();
    let asp = parent.asp();
    let l = asp.mmap(0, 2 * P, RW, PA | MAP_LOCKED, None, 0).unwrap();
    let f = asp.mmap(0, 2 * P, RW, PA, None, 0).unwrap();
    let u = asp.mmap(0, 2 * P, PROT_READ, PA, None, 0).unwrap();
    parent.write_byte(f, 1).unwrap();
    let child = fork(&*parent);
    let c = child.asp();
    assert!(
        asp.query_vma(l, 0)
            .unwrap()
            .vm_flags
            .contains(VmFlags::LOCKED)
    );
    assert!(
        !c.query_vma(l, 0)
            .unwrap()
            .vm_flags
            .intersects(VmFlags::LOCKED | VmFlags::LOCKONFAULT)
    );
    let pq = asp.query_vma(f, 0).unwrap();
    let cq = c.query_vma(f, 0).unwrap();
    assert!(cq.anon_vma_id.is_some() && cq.anon_vma_id != pq.anon_vma_id);
    {
        let pg = asp.mm().read_lock();
        let cg = c.mm().read_lock_nested();
        let pv = pg.vma_lookup(f).unwrap();
        let cv = cg.vma_lookup(f).unwrap();
        assert_eq!(pv.anon_vma_chain_len(&pg), 1);
        assert_eq!(cv.anon_vma_chain_len(&cg), 2, "parent's anon_vma + its own");
        assert!(cv.is_fork_child(&cg));
        let cav = cv.anon_vma(&cg).unwrap();
        let pav = pv.anon_vma(&pg).unwrap();
        assert_eq!(cav.parent_id(), Some(pav.id()));
        assert_eq!(cav.root_id(), pav.root_id());
    }
    assert_eq!(c.query_vma(u, 0).unwrap().anon_vma_id, None);
    assert_eq!(vmas(asp), vmas(c), "same layout");
    assert_eq!(asp.vm_stat().total_vm, c.vm_stat().total_vm);
}

/// Shared and file mappings: the child's file VMAs are in the file's `i_mmap`, a
/// shared page written by one is seen by the other, a private file mapping's copied
/// page stays private, `vm_ops->open` runs for each copy.
pub fn file_and_shared_mappings_are_shared_with_the_child(h: &dyn Harness) {
    let base = h.frames_in_use();
    {
        let parent = h.space();
        let asp = parent.asp();
        let f = ramfs_file(h.allocator(), "/shared", 4 * P, OpenMode::RDWR);
        let s = asp.mmap(0, 4 * P, RW, MAP_SHARED, Some(&f), 0).unwrap();
        let p = asp.mmap(0, 4 * P, RW, MAP_PRIVATE, Some(&f), 0).unwrap();
        let sa = asp
            .mmap(0, 2 * P, RW, MAP_SHARED | MAP_ANONYMOUS, None, 0)
            .unwrap();
        parent.write_byte(s, 1).unwrap();
        parent.write_byte(p + P, 2).unwrap();
        parent.write_byte(sa, 3).unwrap();
        let child = fork(&*parent);
        validate_i_mmap(f.inode(), &[asp, child.asp()]).unwrap();
        assert_eq!(f.inode().i_mmap_len(), 4, "two VMAs per space");
        child.write_byte(s + 1, 0x11).unwrap();
        assert_eq!(parent.read_byte(s + 1).unwrap(), 0x11, "MAP_SHARED file");
        child.write_byte(sa + 1, 0x22).unwrap();
        assert_eq!(
            parent.read_byte(sa + 1).unwrap(),
            0x22,
            "MAP_SHARED anonymous"
        );
        assert_eq!(child.read_byte(p + P).unwrap(), 2, "private copy inherited");
        child.write_byte(p + P, 0x33).unwrap();
        assert_eq!(
            parent.read_byte(p + P).unwrap(),
            2,
            "private copy stays private"
        );
        drop(child);
        validate_i_mmap(f.inode(), &[asp]).unwrap();
        assert_eq!(f.inode().i_mmap_len(), 2);
    }
    assert_eq!(h.frames_in_use(), base);
}

/// `exit_mmap` of parent and child in either order gives back every frame and
/// page-table page, with pages shared, copied, or still shared by one side only.
pub fn exit_in_either_order_frees_everything(h: &dyn Harness) {
    let base = h.frames_in_use();
    for parent_first in [true, false] {
        let parent = h.space();
        let x = parent.asp().mmap(0, 64 * P, RW, PA, None, 0).unwrap();
        for i in 0..64 {
            parent.write_byte(x + i * P, i as u8).unwrap();
        }
        let child = fork(&*parent);
        for i in (0..64).step_by(3) {
            child.write_byte(x + i * P, 0xff).unwrap();
        }
        for i in (0..64).step_by(5) {
            parent.write_byte(x + i * P, 0xfe).unwrap();
        }
        if parent_first {
            drop(parent);
            assert_eq!(child.read_byte(x + P).unwrap(), 1);
            child.write_byte(x + P, 0).unwrap();
            vmas(child.asp());
            drop(child);
        } else {
            drop(child);
            assert_eq!(parent.read_byte(x + 3 * P).unwrap(), 3);
            vmas(parent.asp());
            drop(parent);
        }
        assert_eq!(h.frames_in_use(), base, "parent first: {parent_first}");
    }
}

/// Fork of an address space with 10,000 VMAs: the same layout in the child.
pub fn fork_of_ten_thousand_vmas(h: &dyn Harness) {
    let base = h.frames_in_use();
    {
        let parent = h.space();
        let asp = parent.asp();
        // MAP_NORESERVE: 80 MB of address space, more than the host harness's memory.
        let x = asp
            .mmap(0, 20_000 * P, RW, PA | MAP_NORESERVE, None, 0)
            .unwrap();
        // Every other page PROT_READ: 20,000 alternating VMAs would be too many for a
        // quick test; 10,000 VMAs of two pages each, alternating protections.
        for i in (0..10_000).step_by(2) {
            asp.mprotect(x + i * 2 * P, 2 * P, PROT_READ).unwrap();
        }
        assert_eq!(asp.map_count(), 10_000);
        parent.write_byte(x + 3 * P, 1).unwrap();
        let child = fork(&*parent);
        assert_eq!(child.asp().map_count(), 10_000);
        assert_eq!(vmas(asp), vmas(child.asp()));
        assert_eq!(child.read_byte(x + 3 * P).unwrap(), 1);
    }
    assert_eq!(h.frames_in_use(), base);
}

/// Fork of an address space with 16 MiB touched: every page shared (no copy at fork),
/// the child reads the parent's data, and a write copies exactly one page.
pub fn fork_with_16_mib_touched(h: &dyn Harness) {
    let base = h.frames_in_use();
    {
        let parent = h.space();
        let n = (16 << 20) / P;
        let x = parent.asp().mmap(0, n * P, RW, PA, None, 0).unwrap();
        for i in 0..n {
            parent.write_byte(x + i * P, (i % 251) as u8).unwrap();
        }
        let before = h.frames_in_use();
        let child = fork(&*parent);
        let tables = h.frames_in_use() - before;
        assert!(
            tables <= 16,
            "fork allocated only page tables ({tables} frames)"
        );
        for i in (0..n).step_by(97) {
            assert_eq!(child.read_byte(x + i * P).unwrap(), (i % 251) as u8);
        }
        child.write_byte(x, 0xaa).unwrap();
        assert_eq!(h.frames_in_use(), before + tables + 1);
        assert_eq!(parent.read_byte(x).unwrap(), 0);
    }
    assert_eq!(h.frames_in_use(), base);
}

fn always_fatal() -> bool {
    true
}

/// A fatal signal pending for the forking task aborts the fork with EINTR (Linux:
/// `dup_mmap` checks `fatal_signal_pending` before each VMA), leaving nothing of the
/// child and the parent intact.
pub fn fatal_signal_aborts_fork_with_eintr(h: &dyn Harness) {
    let base = h.frames_in_use();
    {
        let parent = h.space();
        let asp = parent.asp();
        let x = asp.mmap(0, 2 * P, RW, PA, None, 0).unwrap();
        parent.write_byte(x, 5).unwrap();
        let vmas_before = vmas(asp);
        asp.mm().write_lock().set_hooks(MmHooks {
            fatal_signal_pending: Some(always_fatal),
            ..Default::default()
        });
        assert_eq!(parent.fork().err(), Some(Errno::EINTR));
        asp.mm().write_lock().set_hooks(MmHooks::default());
        assert_eq!(vmas(asp), vmas_before);
        assert_eq!(parent.read_byte(x).unwrap(), 5);
    }
    assert_eq!(h.frames_in_use(), base);
}

/// A PFN mapping (a device file's legacy `->mmap`, `remap_pfn_range`) is copied into
/// the child entry for entry (Linux: `vma_needs_copy` is true for `VM_PFNMAP`, since
/// no fault handler could rebuild the entries): the child maps the same device frames
/// with the same permissions, a shared one stays writable, no frame is referenced or
/// copied, and either side's exit leaves the other's mapping as it was.
pub fn pfn_mapping_is_copied_entry_for_entry(h: &dyn Harness) {
    let base = h.frames_in_use();
    {
        let phys = 0xfee0_0000u64;
        let dev = device_file(h.allocator(), "/dev/mem0", phys, 4 * P, OpenMode::RDWR);
        let parent = h.space();
        let x = parent
            .asp()
            .mmap(0, 2 * P, RW, MAP_SHARED, Some(&dev), P as u64)
            .unwrap();
        let before: Vec<_> = (0..2)
            .map(|i| parent.asp().translate(x + i * P).unwrap())
            .collect();
        let child = fork(&*parent);
        let q = child.asp().query_vma(x, 0).unwrap();
        assert!(q.vm_flags.contains(VmFlags::PFNMAP | VmFlags::IO));
        for (i, t) in before.iter().enumerate() {
            let c = child.asp().translate(x + i * P).expect("copied at fork");
            assert_eq!(c.frame.as_u64(), phys + (1 + i as u64) * P as u64);
            assert!(
                c.flags.contains(PageTableFlags::WRITABLE),
                "shared: not write-protected"
            );
            assert_eq!(parent.asp().translate(x + i * P).unwrap().frame, t.frame);
            assert!(
                parent
                    .asp()
                    .translate(x + i * P)
                    .unwrap()
                    .flags
                    .contains(PageTableFlags::WRITABLE)
            );
        }
        drop(child);
        assert_eq!(parent.asp().translate(x).unwrap().frame, before[0].frame);
        let child = fork(&*parent);
        drop(parent);
        assert_eq!(
            child.asp().translate(x + P).unwrap().frame,
            before[1].frame,
            "the parent's exit leaves the child's entries"
        );
        vmas(child.asp());
    }
    assert_eq!(h.frames_in_use(), base);
}
