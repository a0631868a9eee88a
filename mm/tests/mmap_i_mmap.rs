//! A file's `i_mmap` stays exact through every VMA change: mmap, split (mprotect),
//! merge back, partial munmap, mremap, a second address space, and exit — each entry
//! is a live VMA of the file keyed by the file pages it maps, and nothing stale is left.

mod common;

use std::sync::Arc;

use common::{CLOSE_OPS, CLOSES, P, setup};
use mm::file::{File, OpenMode, ramfs_file};
use mm::frame::sim::simulated;
use mm::mmap::*;

/// `(vm_start, vm_end, first file page, last file page)` of every indexed VMA.
fn index(f: &Arc<File>) -> Vec<(usize, usize, usize, usize)> {
    f.inode()
        .i_mmap_vmas(0, usize::MAX)
        .into_iter()
        .map(|v| {
            assert!(v.is_attached(), "only live VMAs are indexed");
            (v.start(), v.end(), v.pgoff(), v.pgoff() + v.pages() - 1)
        })
        .collect()
}

#[test]
fn splits_merges_and_unmaps_keep_the_index_exact() {
    let (a, _, asp) = setup();
    let f = ramfs_file(a, "/data", 16 * P, OpenMode::RDONLY);
    let x = asp
        .mmap(
            0x4000_0000,
            8 * P,
            PROT_READ,
            MAP_PRIVATE | MAP_FIXED,
            Some(&f),
            2 * P as u64,
        )
        .unwrap();
    assert_eq!(index(&f), vec![(x, x + 8 * P, 2, 9)]);

    // Split into three: each part keyed by its own file pages.
    asp.mprotect(x + 3 * P, P, PROT_NONE).unwrap();
    assert_eq!(
        index(&f),
        vec![
            (x, x + 3 * P, 2, 4),
            (x + 3 * P, x + 4 * P, 5, 5),
            (x + 4 * P, x + 8 * P, 6, 9)
        ]
    );
    // A point query finds exactly the VMA that maps that page.
    let hit = f.inode().i_mmap_vmas(5, 5);
    assert_eq!(hit.len(), 1);
    assert_eq!(hit[0].start(), x + 3 * P);
    assert!(f.inode().i_mmap_vmas(0, 1).is_empty());
    assert!(f.inode().i_mmap_vmas(10, 100).is_empty());

    // Merge back: the merged-away VMAs leave the index.
    asp.mprotect(x + 3 * P, P, PROT_READ).unwrap();
    assert_eq!(index(&f), vec![(x, x + 8 * P, 2, 9)]);

    // Unmap the head and the tail.
    asp.munmap(x, P).unwrap();
    asp.munmap(x + 7 * P, P).unwrap();
    assert_eq!(index(&f), vec![(x + P, x + 7 * P, 3, 8)]);
    asp.munmap(x, 8 * P).unwrap();
    assert_eq!(index(&f), vec![]);
}

#[test]
fn mremap_and_a_second_address_space() {
    let (a, _, asp) = setup();
    let f = ramfs_file(a, "/data", 16 * P, OpenMode::RDONLY);
    let x = asp
        .mmap(
            0x4000_0000,
            4 * P,
            PROT_READ,
            MAP_PRIVATE | MAP_FIXED,
            Some(&f),
            0,
        )
        .unwrap();
    let t = 0x5000_0000;
    asp.mremap(x, 4 * P, 4 * P, MREMAP_MAYMOVE | MREMAP_FIXED, t)
        .unwrap();
    assert_eq!(
        index(&f),
        vec![(t, t + 4 * P, 0, 3)],
        "moved VMA re-indexed"
    );

    let other = AddressSpace::new(a).unwrap();
    let y = other
        .mmap(0, 2 * P, PROT_READ, MAP_SHARED, Some(&f), 3 * P as u64)
        .unwrap();
    assert_eq!(f.inode().i_mmap_len(), 2);
    // Page 3 is mapped by both address spaces.
    let both = f.inode().i_mmap_vmas(3, 3);
    assert_eq!(both.len(), 2);
    assert!(both.iter().any(|v| v.start() == y));
    // Exit of one address space unlinks its VMAs.
    drop(other);
    assert_eq!(index(&f), vec![(t, t + 4 * P, 0, 3)]);
    drop(asp);
    assert_eq!(f.inode().i_mmap_len(), 0);
}

#[test]
fn failed_hook_and_map_fixed_replacement_leave_no_entry() {
    let (a, _, asp) = setup();
    let f = ramfs_file(a, "/data", 16 * P, OpenMode::RDONLY);
    let g = ramfs_file(a, "/other", 16 * P, OpenMode::RDONLY);
    let x = asp
        .mmap(
            0x4000_0000,
            4 * P,
            PROT_READ,
            MAP_PRIVATE | MAP_FIXED,
            Some(&f),
            0,
        )
        .unwrap();
    // Replace the middle of f's mapping with g.
    asp.mmap(
        x + P,
        2 * P,
        PROT_READ,
        MAP_PRIVATE | MAP_FIXED,
        Some(&g),
        0,
    )
    .unwrap();
    assert_eq!(
        index(&f),
        vec![(x, x + P, 0, 0), (x + 3 * P, x + 4 * P, 3, 3)]
    );
    assert_eq!(index(&g), vec![(x + P, x + 3 * P, 0, 1)]);
    // A write mapping of a read-only file is refused: nothing indexed.
    assert!(
        asp.mmap(0, P, PROT_READ | PROT_WRITE, MAP_SHARED, Some(&g), 0)
            .is_err()
    );
    assert_eq!(g.inode().i_mmap_len(), 1);
}

/// Dropping an `Mm` that still has VMAs (Linux: `exit_mmap`) runs each VMA's close
/// hook and unlinks it from its file's `i_mmap`, as munmap would.
#[test]
fn dropping_an_mm_closes_and_unlinks_its_vmas() {
    use mm::vma::{Mm, VmFlags};
    let a = simulated(4 << 20);
    let f = ramfs_file(a, "/data", 16 * P, OpenMode::RDONLY);
    let mm = Mm::new();
    {
        let mut g = mm.write_lock();
        for i in 0..3 {
            let v = g.vm_area_alloc().unwrap();
            let start = 0x1000_0000 + i * 4 * P;
            g.vma_init(
                v,
                mm::vma::VmaInit {
                    start,
                    end: start + 2 * P,
                    pgoff: i * 2,
                    flags: VmFlags::READ | VmFlags::MAYREAD,
                    file: Some(f.as_vm_file()),
                    ops: Some(&CLOSE_OPS),
                },
            )
            .unwrap();
            g.vma_link(v).unwrap();
        }
    }
    assert_eq!(f.inode().i_mmap_len(), 3);
    let before = CLOSES.load(std::sync::atomic::Ordering::SeqCst);
    drop(mm);
    assert_eq!(CLOSES.load(std::sync::atomic::Ordering::SeqCst) - before, 3);
    assert_eq!(f.inode().i_mmap_len(), 0);
}
