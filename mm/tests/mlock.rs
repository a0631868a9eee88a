//! `mlock`, `mlock2` and `munlock` (Linux: `mm/mlock.c`): lock bits set and cleared
//! with splits and re-merges, `locked_vm`, population, the errno rules, and the VMAs
//! Linux never marks locked (hugetlb: no split at an address that is not huge-page
//! aligned, its huge pages populated all the same).

mod common;

use common::{PA, RW, setup};
use mm::errno::Errno;
use mm::hugetlb::{self, HugeSize};
use mm::mmap::*;
use mm::vma::VmFlags;

const P: usize = 4096;
const X: usize = 0x1000_0000;

/// `(start, end, flags)` of every VMA.
fn vmas(asp: &AddressSpace) -> Vec<(usize, usize, VmFlags)> {
    let mut out = vec![];
    let mut a = 0;
    while let Some(q) = asp.query_vma(a, PROCMAP_QUERY_COVERING_OR_NEXT_VMA) {
        out.push((q.start, q.end, q.vm_flags));
        a = q.end;
    }
    out
}

fn locked_vm(asp: &AddressSpace) -> usize {
    asp.mm().read_lock().vm_stat().locked_vm
}

#[test]
fn mlock_splits_populates_and_munlock_remerges() {
    let (a, base, asp) = setup();
    asp.mmap(X, 8 * P, RW, PA | MAP_FIXED, None, 0).unwrap();
    // An unaligned start takes in its whole page (Linux: len += offset_in_page).
    asp.mlock(X + 2 * P + 100, 2 * P - 100).unwrap();
    let v = vmas(&asp);
    assert_eq!(v.len(), 3, "{v:x?}");
    assert_eq!((v[1].0, v[1].1), (X + 2 * P, X + 4 * P));
    assert!(v[1].2.contains(VmFlags::LOCKED) && !v[0].2.contains(VmFlags::LOCKED));
    assert_eq!(locked_vm(&asp), 2);
    // Populated: both pages present, nothing else.
    assert!(asp.translate(X + 2 * P).is_some() && asp.translate(X + 3 * P).is_some());
    assert!(asp.translate(X + P).is_none() && asp.translate(X + 4 * P).is_none());
    asp.validate_mm().unwrap();
    // Locking again changes nothing.
    asp.mlock(X + 2 * P, 2 * P).unwrap();
    assert_eq!(vmas(&asp).len(), 3);
    assert_eq!(locked_vm(&asp), 2);
    asp.munlock(X, 8 * P).unwrap();
    let v = vmas(&asp);
    assert_eq!(v.len(), 1, "munlock re-merges: {v:x?}");
    assert!(!v[0].2.intersects(VmFlags::LOCKED | VmFlags::LOCKONFAULT));
    assert_eq!(locked_vm(&asp), 0);
    asp.validate_mm().unwrap();
    drop(asp);
    assert_eq!(a.allocated_frames_settled(), base);
}

#[test]
fn mlock2_onfault_locks_without_populating() {
    let (_a, _base, asp) = setup();
    asp.mmap(X, 4 * P, RW, PA | MAP_FIXED, None, 0).unwrap();
    assert_eq!(asp.mlock2(X, 4 * P, 2), Err(Errno::EINVAL));
    asp.mlock2(X, 4 * P, MLOCK_ONFAULT).unwrap();
    let v = vmas(&asp);
    assert!(
        v[0].2.contains(VmFlags::LOCKED | VmFlags::LOCKONFAULT),
        "{v:x?}"
    );
    assert!(
        asp.translate(X).is_none(),
        "MLOCK_ONFAULT populates nothing"
    );
    assert_eq!(locked_vm(&asp), 4);
    // A plain mlock over it drops LOCKONFAULT and populates.
    asp.mlock(X, 4 * P).unwrap();
    assert!(!vmas(&asp)[0].2.contains(VmFlags::LOCKONFAULT));
    assert!(asp.translate(X + 3 * P).is_some());
    asp.validate_mm().unwrap();
}

#[test]
fn holes_and_unmapped_ranges_are_enomem() {
    let (_a, _base, asp) = setup();
    assert_eq!(asp.mlock(X, P), Err(Errno::ENOMEM));
    assert_eq!(asp.munlock(X, P), Err(Errno::ENOMEM));
    asp.mmap(X, 2 * P, RW, PA | MAP_FIXED, None, 0).unwrap();
    asp.mmap(X + 3 * P, 2 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    // The part before the hole is locked (Linux leaves it so), then ENOMEM.
    assert_eq!(asp.mlock(X, 5 * P), Err(Errno::ENOMEM));
    assert!(vmas(&asp)[0].2.contains(VmFlags::LOCKED));
    assert_eq!(asp.mlock(usize::MAX - P + 1, 2 * P), Err(Errno::EINVAL));
    assert_eq!(asp.mlock(X, usize::MAX), Err(Errno::ENOMEM));
    assert_eq!(asp.mlock(X, 0), Ok(()));
    asp.validate_mm().unwrap();
}

/// PROT_NONE ranges are locked but not populated; the population of a readable range
/// maps the zero page or the file's pages, of a writable private one private pages.
#[test]
fn population_follows_the_protection() {
    let (_a, _base, asp) = setup();
    asp.mmap(X, 2 * P, PROT_NONE, PA | MAP_FIXED, None, 0)
        .unwrap();
    asp.mmap(X + 2 * P, 2 * P, PROT_READ, PA | MAP_FIXED, None, 0)
        .unwrap();
    asp.mlock(X, 4 * P).unwrap();
    assert!(asp.translate(X).is_none());
    assert!(asp.translate(X + 2 * P).is_some());
    assert_eq!(locked_vm(&asp), 4);
    asp.validate_mm().unwrap();
}

/// Linux never marks a hugetlb VMA locked (`mlock_fixup` leaves it): mlock of a range
/// inside one, even at an address that is not huge-page aligned, succeeds, splits
/// nothing and counts nothing, and populates the huge pages.
#[test]
fn hugetlb_vmas_are_populated_but_never_split_or_marked() {
    let (a, _base, asp) = setup();
    let h = hugetlb::hstate(a, HugeSize::Size2M).unwrap();
    assert_eq!(h.set_nr_hugepages(2), 2);
    const M2: usize = 2 << 20;
    let at = 1usize << 40;
    asp.mmap(
        at,
        2 * M2,
        RW,
        MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_FIXED,
        None,
        0,
    )
    .unwrap();
    let before = vmas(&asp);
    asp.mlock(at + P, M2).unwrap();
    assert_eq!(vmas(&asp), before, "hugetlb VMA split or marked");
    assert_eq!(locked_vm(&asp), 0);
    // Both huge pages the range touches are in.
    assert_eq!(h.counters().free, 0);
    asp.munlock(at + P, P).unwrap();
    assert_eq!(vmas(&asp), before);
    asp.validate_mm().unwrap();
    drop(asp);
    assert_eq!(h.counters().free, 2);
}
