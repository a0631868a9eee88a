//! Syscall-shaped API of [`AddressSpace`]: errno cases and their order (Linux's),
//! placement, MAP_FIXED, munmap/mprotect/madvise, maps and PROCMAP_QUERY, and
//! frame/VMA baselines.
//!
//! mremap has its own group, [`super::mremap`].

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use super::{Harness, UserFault, vmas};
use crate::errno::Errno;
use crate::mmap::*;
use crate::vma::VmFlags;

const P: usize = 4096;
const RW: u32 = PROT_READ | PROT_WRITE;
const PA: u32 = MAP_PRIVATE | MAP_ANONYMOUS;

/// mmap's anonymous errno cases, in Linux's check order.
pub fn mmap_errno_order(h: &dyn Harness) {
    let space = h.space();
    let asp = space.asp();
    // Offset alignment comes first, even with len 0.
    assert_eq!(asp.mmap(0, 0, RW, PA, None, 1), Err(Errno::EINVAL));
    assert_eq!(asp.mmap(0, 0, RW, PA, None, 0), Err(Errno::EINVAL));
    // Rounding overflow → ENOMEM.
    assert_eq!(asp.mmap(0, usize::MAX, RW, PA, None, 0), Err(Errno::ENOMEM));
    // No mapping type.
    assert_eq!(
        asp.mmap(0, P, RW, MAP_ANONYMOUS, None, 0),
        Err(Errno::EINVAL)
    );
    // Anonymous SHARED_VALIDATE is not a valid anonymous type.
    assert_eq!(
        asp.mmap(0, P, RW, MAP_SHARED_VALIDATE | MAP_ANONYMOUS, None, 0),
        Err(Errno::EINVAL)
    );
    // GROWSDOWN shared anonymous.
    assert_eq!(
        asp.mmap(
            0,
            P,
            RW,
            MAP_SHARED | MAP_ANONYMOUS | MAP_GROWSDOWN,
            None,
            0
        ),
        Err(Errno::EINVAL)
    );
    // MAP_FIXED unaligned → EINVAL; below mmap_min_addr → EPERM; beyond TASK_SIZE → ENOMEM.
    assert_eq!(
        asp.mmap(0x10_0001, P, RW, PA | MAP_FIXED, None, 0),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        asp.mmap(0x1000, P, RW, PA | MAP_FIXED, None, 0),
        Err(Errno::EPERM)
    );
    assert_eq!(
        asp.mmap(TASK_SIZE - P, 2 * P, RW, PA | MAP_FIXED, None, 0),
        Err(Errno::ENOMEM)
    );
    // Placement problems beat type problems (get_unmapped_area runs first).
    assert_eq!(
        asp.mmap(0x1000, P, RW, MAP_ANONYMOUS | MAP_FIXED, None, 0),
        Err(Errno::EPERM)
    );
    assert_eq!(asp.live_vmas(), 0);
}

/// A file offset whose end overflows, or lies beyond `MAX_LFS_FILESIZE`: `EOVERFLOW`.
pub fn mmap_pgoff_overflow(h: &dyn Harness) {
    let a = h.allocator();
    let space = h.space();
    let asp = space.asp();
    let f = crate::file::ramfs_file(a, "/f", 1 << 20, crate::file::OpenMode::RDWR);
    let off = (usize::MAX & !(P - 1)) as u64;
    assert_eq!(
        asp.mmap(0, 2 * P, RW, MAP_PRIVATE, Some(&f), off),
        Err(Errno::EOVERFLOW)
    );
    // Beyond MAX_LFS_FILESIZE but not wrapping: EOVERFLOW from file_mmap_ok.
    assert_eq!(
        asp.mmap(0, 2 * P, RW, MAP_PRIVATE, Some(&f), 1 << 63),
        Err(Errno::EOVERFLOW)
    );
}

/// Top-down placement under `mmap_base`, free and occupied hints, `mmap_min_addr`.
pub fn placement_top_down_hint_and_min_addr(h: &dyn Harness) {
    let space = h.space();
    let asp = space.asp();
    let l = asp.layout();
    let a1 = asp.mmap(0, P, RW, PA, None, 0).unwrap();
    assert_eq!(a1, l.mmap_base - P, "top-down below mmap_base");
    let a2 = asp.mmap(0, P, PROT_READ, PA, None, 0).unwrap();
    assert_eq!(a2, a1 - P);
    // A free hint is used.
    let h = asp.mmap(0x4000_0000, 3 * P, RW, PA, None, 0).unwrap();
    assert_eq!(h, 0x4000_0000);
    // An occupied hint is not; a low hint is raised to mmap_min_addr.
    let h2 = asp.mmap(0x4000_0000, P, RW, PA, None, 0).unwrap();
    assert_ne!(h2, 0x4000_0000);
    let low = asp.mmap(0x2000, P, RW, PA, None, 0).unwrap();
    assert_eq!(low, MMAP_MIN_ADDR);
    // Too big for the address space.
    assert_eq!(asp.mmap(0, TASK_SIZE, RW, PA, None, 0), Err(Errno::ENOMEM));
}

/// Placement keeps the stack guard gap below a `MAP_GROWSDOWN` VMA; `MAP_FIXED` may
/// enter it.
pub fn placement_respects_stack_guard_gap(h: &dyn Harness) {
    let space = h.space();
    let asp = space.asp();
    let l = asp.layout();
    // A GROWSDOWN VMA right under mmap_base: the next top-down mapping keeps the gap.
    let s = l.mmap_base - 16 * P;
    asp.mmap(s, 16 * P, RW, PA | MAP_FIXED | MAP_GROWSDOWN, None, 0)
        .unwrap();
    let a = asp.mmap(0, P, RW, PA, None, 0).unwrap();
    assert!(a + P <= s - STACK_GUARD_GAP, "{a:#x} inside the guard gap");
    // A hint inside the gap is refused.
    let b = asp.mmap(s - 2 * P, P, RW, PA, None, 0).unwrap();
    assert_ne!(b, s - 2 * P);
    // MAP_FIXED may go there (Linux allows it).
    asp.mmap(s - 2 * P, P, RW, PA | MAP_FIXED, None, 0).unwrap();
}

/// With no room below `mmap_base`, placement falls back to bottom-up from
/// `TASK_UNMAPPED_BASE`.
pub fn bottom_up_fallback(h: &dyn Harness) {
    let l = MmLayout {
        mmap_base: 0x100_0000,
        ..MmLayout::default()
    };
    let space = h.space_with_layout(l);
    let asp = space.asp();
    // Fill below mmap_base entirely.
    asp.mmap(
        l.mmap_min_addr,
        l.mmap_base - l.mmap_min_addr,
        RW,
        PA | MAP_FIXED,
        None,
        0,
    )
    .unwrap();
    let x = asp.mmap(0, P, RW, PA, None, 0).unwrap();
    assert_eq!(x, l.unmapped_base, "bottom-up from TASK_UNMAPPED_BASE");
}

/// `MAP_FIXED` replaces (the old page is gone); `MAP_FIXED_NOREPLACE` refuses with
/// `EEXIST` and changes nothing.
pub fn map_fixed_replaces_and_noreplace_refuses(h: &dyn Harness) {
    let base = h.frames_in_use();
    let space = h.space();
    let asp = space.asp();
    let x = asp
        .mmap(0x1000_0000, 4 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    space.write(x + P, b"old").unwrap();
    let used = h.frames_in_use();
    // NOREPLACE over an existing mapping: EEXIST, nothing changes.
    assert_eq!(
        asp.mmap(x + P, P, PROT_READ, PA | MAP_FIXED_NOREPLACE, None, 0),
        Err(Errno::EEXIST)
    );
    assert_eq!(vmas(asp), vec![(x, x + 4 * P)]);
    assert_eq!(h.frames_in_use(), used);
    let mut buf = [0u8; 3];
    space.read(x + P, &mut buf).unwrap();
    assert_eq!(&buf, b"old");
    // MAP_FIXED replaces the middle: the old page is gone and reads zero.
    assert_eq!(
        asp.mmap(x + P, P, PROT_READ, PA | MAP_FIXED, None, 0),
        Ok(x + P)
    );
    assert_eq!(
        vmas(asp),
        vec![(x, x + P), (x + P, x + 2 * P), (x + 2 * P, x + 4 * P)]
    );
    space.read(x + P, &mut buf).unwrap();
    assert_eq!(buf, [0; 3]);
    // NOREPLACE into free space works.
    assert_eq!(
        asp.mmap(x + 8 * P, P, RW, PA | MAP_FIXED_NOREPLACE, None, 0),
        Ok(x + 8 * P)
    );
    drop(space);
    assert_eq!(h.frames_in_use(), base);
}

/// Adjacent private anonymous mappings merge; different protections and shared
/// anonymous mappings do not.
pub fn adjacent_anonymous_mappings_merge(h: &dyn Harness) {
    let space = h.space();
    let asp = space.asp();
    let x = 0x2000_0000;
    asp.mmap(x, P, RW, PA | MAP_FIXED, None, 0).unwrap();
    asp.mmap(x + 2 * P, P, RW, PA | MAP_FIXED, None, 0).unwrap();
    assert_eq!(asp.map_count(), 2);
    asp.mmap(x + P, P, RW, PA | MAP_FIXED, None, 0).unwrap();
    assert_eq!(vmas(asp), vec![(x, x + 3 * P)]);
    assert_eq!(asp.live_vmas(), 1);
    // Different protection does not merge.
    asp.mmap(x + 3 * P, P, PROT_READ, PA | MAP_FIXED, None, 0)
        .unwrap();
    assert_eq!(asp.map_count(), 2);
    // Shared anonymous mappings never merge (each gets its own shmem file).
    let s1 = asp
        .mmap(
            x + 10 * P,
            P,
            RW,
            MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED,
            None,
            0,
        )
        .unwrap();
    asp.mmap(
        s1 + P,
        P,
        RW,
        MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED,
        None,
        0,
    )
    .unwrap();
    assert_eq!(asp.map_count(), 4);
}

/// munmap's errno cases, splits, freed frames, and the baseline after teardown.
pub fn munmap_errors_and_splits(h: &dyn Harness) {
    let base = h.frames_in_use();
    let space = h.space();
    let asp = space.asp();
    assert_eq!(asp.munmap(0x1001, P), Err(Errno::EINVAL));
    assert_eq!(asp.munmap(0x10000, 0), Err(Errno::EINVAL));
    assert_eq!(asp.munmap(TASK_SIZE, P), Err(Errno::EINVAL));
    assert_eq!(asp.munmap(0x10000, TASK_SIZE), Err(Errno::EINVAL));
    // Unmapping nothing succeeds.
    assert_eq!(asp.munmap(0x10000, P), Ok(()));
    let x = asp
        .mmap(0x3000_0000, 5 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    for i in 0..5 {
        space.write(x + i * P, &[i as u8 + 1]).unwrap();
    }
    let full = h.frames_in_use();
    asp.munmap(x + 2 * P, P).unwrap();
    assert_eq!(vmas(asp), vec![(x, x + 2 * P), (x + 3 * P, x + 5 * P)]);
    assert_eq!(
        h.frames_in_use(),
        full - 1,
        "the unmapped page's frame is freed"
    );
    assert!(asp.translate(x + 2 * P).is_none());
    assert_eq!(
        asp.handle_fault(x + 2 * P, Access::Read),
        Err(FaultError::MapErr)
    );
    // The same through a user load; the pages either side keep their data.
    assert_eq!(
        space.read_byte(x + 2 * P),
        Err(UserFault { addr: x + 2 * P })
    );
    assert_eq!(space.read_byte(x + P), Ok(2));
    assert_eq!(space.read_byte(x + 3 * P), Ok(4));
    // Spanning unmap across the hole.
    asp.munmap(x + P, 3 * P).unwrap();
    assert_eq!(vmas(asp), vec![(x, x + P), (x + 4 * P, x + 5 * P)]);
    asp.munmap(x, 5 * P).unwrap();
    assert_eq!(asp.live_vmas(), 0);
    asp.with_page_tables(|pt| assert_eq!(pt.count_user(), (0, 0)));
    drop(space);
    assert_eq!(h.frames_in_use(), base);
}

/// `vm.max_map_count` as Linux applies it to mmap, mprotect, madvise and munmap splits.
pub fn max_map_count_rules(h: &dyn Harness) {
    let space = h.space();
    let asp = space.asp();
    let x = 0x4000_0000;
    // Three non-mergeable VMAs, limit 3.
    asp.mmap(x, 3 * P, PROT_READ, PA | MAP_FIXED, None, 0)
        .unwrap();
    asp.mmap(x + 4 * P, 3 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    asp.mmap(x + 8 * P, 3 * P, PROT_READ, PA | MAP_FIXED, None, 0)
        .unwrap();
    asp.set_max_map_count(3);
    // mmap fails only when map_count > max: at == max it still works.
    asp.mmap(x + 20 * P, P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    assert_eq!(asp.map_count(), 4);
    assert_eq!(
        asp.mmap(x + 30 * P, P, PROT_EXEC, PA | MAP_FIXED, None, 0),
        Err(Errno::ENOMEM)
    );
    asp.munmap(x + 20 * P, P).unwrap();
    assert_eq!(asp.map_count(), 3);
    // mprotect needing a split at map_count == max → ENOMEM.
    assert_eq!(asp.mprotect(x + P, P, RW), Err(Errno::ENOMEM));
    // madvise needing a split → ENOMEM.
    assert_eq!(asp.madvise(x + P, P, MADV_DONTFORK), Err(Errno::ENOMEM));
    // munmap punching a hole (net +1) → ENOMEM; trimming one end is fine.
    assert_eq!(asp.munmap(x + P, P), Err(Errno::ENOMEM));
    assert_eq!(asp.map_count(), 3);
    asp.munmap(x, P).unwrap();
    assert_eq!(asp.map_count(), 3);
    // A munmap spanning two VMAs that splits both ends: goes transiently one over.
    asp.munmap(x + 2 * P, 3 * P).unwrap();
    assert_eq!(
        vmas(asp),
        vec![
            (x + P, x + 2 * P),
            (x + 5 * P, x + 7 * P),
            (x + 8 * P, x + 11 * P)
        ]
    );
}

/// mprotect's errno cases, partial success before a hole, and the shared read-only file.
pub fn mprotect_errors(h: &dyn Harness) {
    let a = h.allocator();
    let space = h.space();
    let asp = space.asp();
    assert_eq!(asp.mprotect(0x10001, P, RW), Err(Errno::EINVAL));
    assert_eq!(asp.mprotect(0x10000, 0, RW), Ok(()));
    assert_eq!(
        asp.mprotect(0x10000, P, PROT_READ | PROT_GROWSDOWN | PROT_GROWSUP),
        Err(Errno::EINVAL)
    );
    assert_eq!(asp.mprotect(0x10000, P, 0x10), Err(Errno::EINVAL));
    assert_eq!(asp.mprotect(0x10000, P, RW), Err(Errno::ENOMEM));
    assert_eq!(
        asp.mprotect(usize::MAX & !(P - 1), 2 * P, RW),
        Err(Errno::ENOMEM)
    );
    let x = asp
        .mmap(0x5000_0000, 2 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    // A hole after the VMA: ENOMEM, but the mapped part already changed (Linux).
    assert_eq!(asp.mprotect(x, 4 * P, PROT_READ), Err(Errno::ENOMEM));
    assert_eq!(
        asp.query_vma(x, 0).unwrap().flags & PROCMAP_QUERY_VMA_WRITABLE,
        0
    );
    // Shared mapping of a read-only file: PROT_WRITE → EACCES.
    let f = crate::file::ramfs_file(a, "/ro", 4 * P, crate::file::OpenMode::RDONLY);
    let y = asp.mmap(0, P, PROT_READ, MAP_SHARED, Some(&f), 0).unwrap();
    assert_eq!(asp.mprotect(y, P, RW), Err(Errno::EACCES));
    assert_eq!(asp.mprotect(y, P, PROT_READ | PROT_EXEC), Ok(()));
}

/// mprotect splits and re-merges; a read-only mapping made writable gains
/// `VM_ACCOUNT` and merges with writable neighbours.
pub fn mprotect_split_and_remerge(h: &dyn Harness) {
    let space = h.space();
    let asp = space.asp();
    let x = asp
        .mmap(0x6000_0000, 4 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    asp.mprotect(x + P, 2 * P, PROT_READ).unwrap();
    assert_eq!(
        vmas(asp),
        vec![(x, x + P), (x + P, x + 3 * P), (x + 3 * P, x + 4 * P)]
    );
    assert_eq!(
        asp.handle_fault(x + P, Access::Write),
        Err(FaultError::AccErr)
    );
    assert_eq!(
        space.write_byte(x + P, 1),
        Err(UserFault { addr: x + P }),
        "a user store to the read-only part faults"
    );
    asp.mprotect(x + P, 2 * P, RW).unwrap();
    assert_eq!(vmas(asp), vec![(x, x + 4 * P)]);
    assert_eq!(asp.live_vmas(), 1);
    // PROT_READ-only mapping made writable gains VM_ACCOUNT and then matches RW neighbours.
    let y = asp
        .mmap(x + 4 * P, P, PROT_READ, PA | MAP_FIXED, None, 0)
        .unwrap();
    assert_eq!(asp.map_count(), 2);
    asp.mprotect(y, P, RW).unwrap();
    assert_eq!(vmas(asp), vec![(x, x + 5 * P)]);
    assert!(
        asp.query_vma(x, 0)
            .unwrap()
            .vm_flags
            .contains(VmFlags::ACCOUNT)
    );
}

/// madvise's errno cases, the fork flags' splits and re-merges, DONTNEED over a hole
/// and on `VM_LOCKED`.
pub fn madvise_errors_and_flags(h: &dyn Harness) {
    let space = h.space();
    let asp = space.asp();
    assert_eq!(asp.madvise(0x10000, P, 9999), Err(Errno::EINVAL));
    assert_eq!(asp.madvise(0x10001, P, MADV_DONTNEED), Err(Errno::EINVAL));
    assert_eq!(asp.madvise(0x10000, 0, MADV_DONTNEED), Ok(()));
    assert_eq!(asp.madvise(0x10000, P, MADV_DONTNEED), Err(Errno::ENOMEM));
    let x = asp
        .mmap(0x7000_0000, 4 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    asp.madvise(x + P, P, MADV_DONTFORK).unwrap();
    assert_eq!(asp.map_count(), 3);
    assert!(
        asp.query_vma(x + P, 0)
            .unwrap()
            .vm_flags
            .contains(VmFlags::DONTCOPY)
    );
    asp.madvise(x + P, P, MADV_DOFORK).unwrap();
    assert_eq!(vmas(asp), vec![(x, x + 4 * P)], "re-merged");
    asp.madvise(x, 2 * P, MADV_WIPEONFORK).unwrap();
    assert!(
        asp.query_vma(x, 0)
            .unwrap()
            .vm_flags
            .contains(VmFlags::WIPEONFORK)
    );
    asp.madvise(x, 2 * P, MADV_KEEPONFORK).unwrap();
    assert_eq!(asp.map_count(), 1);
    // WIPEONFORK on shared → EINVAL.
    let s = asp
        .mmap(0, P, RW, MAP_SHARED | MAP_ANONYMOUS, None, 0)
        .unwrap();
    assert_eq!(asp.madvise(s, P, MADV_WIPEONFORK), Err(Errno::EINVAL));
    // A hole in the middle: ENOMEM but the mapped parts were processed.
    let y = asp.mmap(x + 6 * P, P, RW, PA | MAP_FIXED, None, 0).unwrap();
    space.write(y, b"z").unwrap();
    assert_eq!(asp.madvise(x, 7 * P, MADV_DONTNEED), Err(Errno::ENOMEM));
    assert!(asp.translate(y).is_none(), "page after the hole zapped");
    assert_eq!(space.read_byte(y), Ok(0), "and reads zero again");
    // DONTNEED on VM_LOCKED → EINVAL.
    let l = asp.mmap(0, P, RW, PA | MAP_LOCKED, None, 0).unwrap();
    assert_eq!(asp.madvise(l, P, MADV_DONTNEED), Err(Errno::EINVAL));
}

/// The `/proc/PID/maps` line format and PROCMAP_QUERY.
pub fn maps_format_and_query(h: &dyn Harness) {
    let a = h.allocator();
    let space = h.space();
    let asp = space.asp();
    let x = asp
        .mmap(0x1_0000_0000, 2 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    let f = crate::file::ramfs_file(a, "/data/file", 8 * P, crate::file::OpenMode::RDWR);
    let y = asp
        .mmap(
            0x1_0001_0000,
            P,
            PROT_READ | PROT_EXEC,
            MAP_SHARED | MAP_FIXED,
            Some(&f),
            2 * P as u64,
        )
        .unwrap();
    let m = asp.maps();
    let lines: Vec<&str> = m.lines().collect();
    assert_eq!(lines[0], "100000000-100002000 rw-p 00000000 00:00 0 ");
    let want = format!(
        "{:08x}-{:08x} r-xs {:08x} 00:05 {} ",
        y,
        y + P,
        2 * P,
        f.inode().ino()
    );
    assert!(lines[1].starts_with(&want), "{}", lines[1]);
    assert_eq!(lines[1].find("/data/file"), Some(73));
    // PROCMAP_QUERY.
    assert!(asp.query_vma(x + 2 * P, 0).is_none());
    let q = asp
        .query_vma(x + 2 * P, PROCMAP_QUERY_COVERING_OR_NEXT_VMA)
        .unwrap();
    assert_eq!((q.start, q.pgoff, q.offset), (y, 2, 2 * P as u64));
    assert_eq!(q.inode, f.inode().ino());
    assert!(q.file_id.is_some());
    assert_eq!(
        q.flags,
        PROCMAP_QUERY_VMA_READABLE | PROCMAP_QUERY_VMA_EXECUTABLE | PROCMAP_QUERY_VMA_SHARED
    );
    let q0 = asp
        .query_vma(
            x,
            PROCMAP_QUERY_FILE_BACKED_VMA | PROCMAP_QUERY_COVERING_OR_NEXT_VMA,
        )
        .unwrap();
    assert_eq!(q0.start, y);
    let qa = asp.query_vma(x, 0).unwrap();
    assert_eq!(qa.anon_vma_id, None);
    space.write(x, b"1").unwrap();
    assert!(asp.query_vma(x, 0).unwrap().anon_vma_id.is_some());
}
