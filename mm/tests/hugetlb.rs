//! hugetlb on the host (simulated physical memory): pools and counters, hugetlbfs
//! shared mappings, reservations and SIGBUS, MAP_HUGETLB, the alignment rules, PMD
//! table sharing between two address spaces and its undoing (split, munmap,
//! mprotect, truncate), the CVE-2025-38084 ordering, private copy-on-write, 1 GiB
//! pages. Linux: `mm/hugetlb.c`, `fs/hugetlbfs/inode.c`, the `hugetlb-madvise` and
//! `hugepage-mremap` selftests.
//!
//! The hstates are per frame allocator and every test has its own simulated machine,
//! so tests running in parallel do not share pools.

use std::sync::Mutex;

use mm::errno::Errno;
use mm::file::OpenMode;
use mm::file::hugetlbfs::{self, hugetlbfs_file};
use mm::frame::FrameAllocator;
use mm::frame::sim::simulated;
use mm::hugetlb::{self, Hstate, HugeCounters, HugeSize};
use mm::mmap::*;
use mm::vma::PAGE_SIZE;

const M2: usize = 2 << 20;
const G1: usize = 1 << 30;
/// A 1 GiB-aligned address for MAP_FIXED mappings that may share tables.
const BASE: usize = 1 << 40;
const RW: u32 = PROT_READ | PROT_WRITE;

fn machine(mib: usize) -> (&'static FrameAllocator, u64) {
    let a = simulated(mib << 20);
    zero_page(a).unwrap();
    (a, a.allocated_frames_settled())
}

fn h2(a: &'static FrameAllocator) -> &'static Hstate {
    hugetlb::hstate(a, HugeSize::Size2M).unwrap()
}

fn counters(a: &'static FrameAllocator) -> HugeCounters {
    h2(a).counters()
}

fn c(total: usize, free: usize, rsvd: usize) -> HugeCounters {
    HugeCounters {
        total,
        free,
        rsvd,
        surp: 0,
    }
}

/// The physical address of the PD table covering `addr` in `asp`, if any.
fn pd_table(asp: &AddressSpace, addr: usize) -> Option<u64> {
    asp.with_page_tables(|pt| pt.pmd_table_at(x86_64::VirtAddr::new(addr as u64)))
        .map(|p| p.as_u64())
}

fn share_count(a: &'static FrameAllocator, table: u64) -> u32 {
    a.meta(x86_64::PhysAddr::new(table))
        .unwrap()
        .pt_share_count()
}

fn write(asp: &AddressSpace, addr: usize, b: &[u8]) {
    asp.copy_to_user(addr, b).unwrap();
}

fn read(asp: &AddressSpace, addr: usize, n: usize) -> Vec<u8> {
    let mut v = vec![0; n];
    asp.copy_from_user(addr, &mut v).unwrap();
    v
}

#[test]
fn pool_counters_and_meminfo() {
    let (a, base) = machine(64);
    let h = h2(a);
    assert_eq!(h.set_nr_hugepages(4), 4);
    assert_eq!(counters(a), c(4, 4, 0));
    let mi = hugetlb::meminfo(a).unwrap();
    assert!(mi.contains("HugePages_Total:      4"), "{mi}");
    assert!(mi.contains("HugePages_Free:       4"), "{mi}");
    assert!(mi.contains("HugePages_Rsvd:       0"), "{mi}");
    assert!(mi.contains("HugePages_Surp:       0"), "{mi}");
    assert!(mi.contains("Hugepagesize:       2048 kB"), "{mi}");
    assert!(mi.contains("Hugetlb:            8192 kB"), "{mi}");
    assert_eq!(a.allocated_frames_settled(), base + 4 * 512);
    assert_eq!(h.set_nr_hugepages(0), 0);
    assert_eq!(a.allocated_frames_settled(), base);
}

/// Test 1 of the issue on the host: two spaces map one file MAP_SHARED at the same
/// 1 GiB-aligned range; B's fault shares A's PD table; A's writes are visible in B.
fn two_sharing(
    a: &'static FrameAllocator,
) -> (AddressSpace, AddressSpace, std::sync::Arc<mm::file::File>) {
    let f = hugetlbfs_file(a, HugeSize::Size2M, G1, "/hugetlbfs/shared", OpenMode::RDWR).unwrap();
    let sa = AddressSpace::new(a).unwrap();
    let sb = AddressSpace::new(a).unwrap();
    let fl = MAP_SHARED | MAP_FIXED | MAP_NORESERVE;
    assert_eq!(sa.mmap(BASE, G1, RW, fl, Some(&f), 0), Ok(BASE));
    assert_eq!(sb.mmap(BASE, G1, RW, fl, Some(&f), 0), Ok(BASE));
    write(&sa, BASE + 5 * M2 + 7, b"from A");
    assert_eq!(read(&sb, BASE + 5 * M2 + 7, 6), b"from A");
    (sa, sb, f)
}

#[test]
fn shared_file_shares_the_pd_table() {
    let (a, base) = machine(64);
    h2(a).set_nr_hugepages(8);
    {
        let (sa, sb, _f) = two_sharing(a);
        let ta = pd_table(&sa, BASE).unwrap();
        assert_eq!(pd_table(&sb, BASE), Some(ta), "B maps through A's PD table");
        assert_eq!(share_count(a, ta), 1);
        // Each space walks PDPT → PD (the PD being the same page, asserted above).
        assert_eq!(sa.with_page_tables(|p| p.count_user()).1, 2);
        assert_eq!(sb.with_page_tables(|p| p.count_user()).1, 2);
        // B writes, A sees; another page faulted by B lands in the shared table.
        write(&sb, BASE + 9 * M2, b"from B");
        assert_eq!(read(&sa, BASE + 9 * M2, 6), b"from B");
        assert!(sa.translate(BASE + 9 * M2).is_some(), "A sees B's fault");
        sa.validate_mm().unwrap();
        sb.validate_mm().unwrap();
        assert_eq!(counters(a).free, 6);
    }
    assert_eq!(counters(a), c(8, 8, 0));
    h2(a).set_nr_hugepages(0);
    assert_eq!(a.allocated_frames_settled(), base);
}

/// Test 2: B splits with mprotect at a 2 MiB boundary inside the shared interval.
#[test]
fn mprotect_split_unshares_only_b() {
    let (a, base) = machine(64);
    h2(a).set_nr_hugepages(8);
    {
        let (sa, sb, _f) = two_sharing(a);
        let ta = pd_table(&sa, BASE).unwrap();
        assert_eq!(sb.mprotect(BASE + 4 * M2, M2, PROT_READ), Ok(()));
        assert_ne!(
            pd_table(&sb, BASE),
            Some(ta),
            "B no longer maps through A's table"
        );
        assert_eq!(share_count(a, ta), 0);
        assert_eq!(pd_table(&sa, BASE), Some(ta));
        assert_eq!(read(&sa, BASE + 5 * M2 + 7, 6), b"from A");
        // B refaults through its own table and sees the data.
        assert_eq!(read(&sb, BASE + 5 * M2 + 7, 6), b"from A");
        let tb = pd_table(&sb, BASE).unwrap();
        assert_ne!(tb, ta);
        assert_eq!(share_count(a, tb), 0);
        assert_eq!(
            sb.copy_to_user(BASE + 4 * M2, b"x"),
            Err(FaultError::AccErr)
        );
        sa.validate_mm().unwrap();
        sb.validate_mm().unwrap();
    }
    assert_eq!(counters(a), c(8, 8, 0));
    h2(a).set_nr_hugepages(0);
    assert_eq!(a.allocated_frames_settled(), base);
}

/// Test 2 with munmap of one 2 MiB page.
#[test]
fn munmap_one_page_unshares() {
    let (a, base) = machine(64);
    h2(a).set_nr_hugepages(8);
    {
        let (sa, sb, _f) = two_sharing(a);
        let ta = pd_table(&sa, BASE).unwrap();
        assert_eq!(sb.munmap(BASE + 5 * M2, M2), Ok(()));
        assert_eq!(share_count(a, ta), 0);
        assert_eq!(
            read(&sa, BASE + 5 * M2 + 7, 6),
            b"from A",
            "A's page survives"
        );
        assert_eq!(sb.translate(BASE + 5 * M2), None);
        assert_eq!(
            sb.copy_from_user(BASE + 5 * M2, &mut [0]),
            Err(FaultError::MapErr)
        );
        sa.validate_mm().unwrap();
        sb.validate_mm().unwrap();
    }
    assert_eq!(counters(a), c(8, 8, 0));
    h2(a).set_nr_hugepages(0);
    assert_eq!(a.allocated_frames_settled(), base);
}

/// Test 2 with the split at the interval's 1 GiB boundary: no unshare.
#[test]
fn split_at_1g_boundary_keeps_sharing() {
    let (a, base) = machine(64);
    h2(a).set_nr_hugepages(8);
    {
        let f = hugetlbfs_file(
            a,
            HugeSize::Size2M,
            2 * G1,
            "/hugetlbfs/two",
            OpenMode::RDWR,
        )
        .unwrap();
        let sa = AddressSpace::new(a).unwrap();
        let sb = AddressSpace::new(a).unwrap();
        let fl = MAP_SHARED | MAP_FIXED | MAP_NORESERVE;
        sa.mmap(BASE, 2 * G1, RW, fl, Some(&f), 0).unwrap();
        sb.mmap(BASE, 2 * G1, RW, fl, Some(&f), 0).unwrap();
        write(&sa, BASE, b"lo");
        write(&sa, BASE + G1, b"hi");
        assert_eq!(read(&sb, BASE, 2), b"lo");
        assert_eq!(read(&sb, BASE + G1, 2), b"hi");
        let (lo, hi) = (
            pd_table(&sa, BASE).unwrap(),
            pd_table(&sa, BASE + G1).unwrap(),
        );
        assert_eq!(share_count(a, lo), 1);
        assert_eq!(share_count(a, hi), 1);
        assert_eq!(sb.mprotect(BASE + G1, G1, PROT_READ), Ok(()));
        assert_eq!(
            pd_table(&sb, BASE),
            Some(lo),
            "no unshare at a 1 GiB boundary"
        );
        assert_eq!(share_count(a, lo), 1);
        // mprotect of the upper VMA itself unshares that interval only (Linux:
        // hugetlb_change_protection).
        assert_eq!(share_count(a, hi), 0);
        sa.validate_mm().unwrap();
        sb.validate_mm().unwrap();
    }
    h2(a).set_nr_hugepages(0);
    assert_eq!(a.allocated_frames_settled(), base);
}

/// The split's unshare, caught: with `hugetlb_split` skipping it, B keeps a shared
/// table under a VMA that no longer covers the interval, and `validate_mm` says so.
#[test]
fn split_without_unshare_is_caught() {
    let (a, _) = machine(64);
    h2(a).set_nr_hugepages(8);
    let (sa, sb, _f) = two_sharing(a);
    mm::hugetlb::share::SKIP_SPLIT_UNSHARE.store(true, std::sync::atomic::Ordering::SeqCst);
    // mprotect and munmap unshare the range they change themselves, which would hide
    // a missing split unshare; madvise(MADV_DONTFORK) splits and touches no page
    // table, so only the split's own unshare can end the sharing.
    let r = sb.madvise(BASE + 4 * M2, M2, MADV_DONTFORK);
    mm::hugetlb::share::SKIP_SPLIT_UNSHARE.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(r, Ok(()));
    let e = sb.validate_mm().unwrap_err();
    assert!(e.contains("shared PD table"), "{e}");
    sa.validate_mm().unwrap();
    // The correct split of the same kind unshares.
    drop((sa, sb));
    let (sa, sb, _f) = two_sharing(a);
    let ta = pd_table(&sa, BASE).unwrap();
    assert_eq!(sb.madvise(BASE + 4 * M2, M2, MADV_DONTFORK), Ok(()));
    assert_eq!(share_count(a, ta), 0);
    sb.validate_mm().unwrap();
    sa.validate_mm().unwrap();
    assert_eq!(read(&sb, BASE + 5 * M2 + 7, 6), b"from A");
}

/// Test 3: unaligned split, munmap, mprotect or madvise inside a hugetlb VMA fail
/// with EINVAL and change nothing.
#[test]
fn unaligned_operations_are_einval() {
    let (a, base) = machine(64);
    h2(a).set_nr_hugepages(4);
    {
        let asp = AddressSpace::new(a).unwrap();
        let p = asp
            .mmap(
                0,
                4 * M2,
                RW,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB,
                None,
                0,
            )
            .unwrap();
        assert_eq!(p % M2, 0);
        write(&asp, p + M2, b"data");
        let maps = asp.maps();
        assert_eq!(asp.munmap(p + PAGE_SIZE, M2), Err(Errno::EINVAL));
        assert_eq!(asp.munmap(p, PAGE_SIZE), Err(Errno::EINVAL));
        assert_eq!(
            asp.mprotect(p + PAGE_SIZE, M2, PROT_READ),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            asp.madvise(p + PAGE_SIZE, M2, MADV_DONTNEED),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            asp.madvise(p + PAGE_SIZE, M2, MADV_DONTFORK),
            Err(Errno::EINVAL)
        );
        assert_eq!(asp.maps(), maps);
        assert_eq!(read(&asp, p + M2, 4), b"data");
        // MAP_FIXED at an unaligned address.
        assert_eq!(
            asp.mmap(
                BASE + PAGE_SIZE,
                M2,
                RW,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_FIXED,
                None,
                0
            ),
            Err(Errno::EINVAL)
        );
        // An unsupported size.
        assert_eq!(
            asp.mmap(
                0,
                M2,
                RW,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | (20 << MAP_HUGE_SHIFT),
                None,
                0
            ),
            Err(Errno::EINVAL)
        );
        asp.validate_mm().unwrap();
    }
    assert_eq!(counters(a), c(4, 4, 0));
    h2(a).set_nr_hugepages(0);
    assert_eq!(a.allocated_frames_settled(), base);
}

/// MAP_HUGETLB: rounded length, `/anon_hugepage (deleted)`, smaps page sizes, PROCMAP_QUERY.
#[test]
fn map_hugetlb_anonymous() {
    let (a, base) = machine(64);
    h2(a).set_nr_hugepages(4);
    {
        let asp = AddressSpace::new(a).unwrap();
        let p = asp
            .mmap(
                0,
                M2 + 1,
                RW,
                MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_2MB,
                None,
                0,
            )
            .unwrap();
        assert_eq!(
            counters(a).rsvd,
            2,
            "length rounded to 2 pages, both reserved"
        );
        let maps = asp.maps();
        assert!(maps.contains("/anon_hugepage (deleted)"), "{maps}");
        assert!(
            maps.contains(&format!("{:08x}-{:08x} rw-s", p, p + 2 * M2)),
            "{maps}"
        );
        let sm = asp.try_smaps().unwrap();
        assert!(sm.contains("KernelPageSize:     2048 kB"), "{sm}");
        assert!(sm.contains("MMUPageSize:        2048 kB"), "{sm}");
        let q = asp.query_vma(p, 0).unwrap();
        assert_eq!(q.page_size, M2 as u64);
        write(&asp, p + M2 + 5, b"x");
        let t = asp.translate(p + M2).unwrap();
        assert_eq!(t.size, mm::paging::PageSize::Size2M);
        assert_eq!(counters(a), c(4, 3, 1));
        asp.validate_mm().unwrap();
        // The selftest's MADV_DONTNEED: start aligned, end aligned down.
        assert_eq!(asp.madvise(p, 2 * M2 - PAGE_SIZE, MADV_DONTNEED), Ok(()));
        assert!(
            asp.translate(p + M2).is_some(),
            "the last page stays (end aligned down)"
        );
        assert_eq!(asp.madvise(p, 2 * M2, MADV_DONTNEED), Ok(()));
        assert!(asp.translate(p + M2).is_none());
        // Shared: the page stays in the file; a refault finds the data.
        assert_eq!(read(&asp, p + M2 + 5, 1), b"x");
        asp.validate_mm().unwrap();
    }
    assert_eq!(counters(a), c(4, 4, 0));
    h2(a).set_nr_hugepages(0);
    assert_eq!(a.allocated_frames_settled(), base);
}

/// Test 5: pool exhaustion.
#[test]
fn reservations_and_sigbus() {
    let (a, base) = machine(64);
    h2(a).set_nr_hugepages(2);
    {
        let asp = AddressSpace::new(a).unwrap();
        let maps = asp.maps();
        let anon = MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB;
        assert_eq!(asp.mmap(0, 3 * M2, RW, anon, None, 0), Err(Errno::ENOMEM));
        assert_eq!(asp.maps(), maps, "nothing mapped");
        assert_eq!(counters(a), c(2, 2, 0));
        let p = asp.mmap(0, 2 * M2, RW, anon, None, 0).unwrap();
        assert_eq!(counters(a), c(2, 2, 2));
        write(&asp, p, b"1");
        assert_eq!(counters(a), c(2, 1, 1));
        // The pool is promised: a NORESERVE mapping gets SIGBUS at its fault.
        let q = asp.mmap(0, M2, RW, anon | MAP_NORESERVE, None, 0).unwrap();
        assert_eq!(counters(a), c(2, 1, 1));
        assert_eq!(asp.copy_to_user(q, b"2"), Err(FaultError::Bus));
        assert_eq!(asp.handle_fault(q, Access::Read), Err(FaultError::Bus));
        // The reserved page is still there for the first mapping.
        write(&asp, p + M2, b"3");
        assert_eq!(counters(a), c(2, 0, 0));
        assert_eq!(asp.munmap(p, 2 * M2), Ok(()));
        assert_eq!(counters(a), c(2, 2, 0));
        write(&asp, q, b"4");
        assert_eq!(counters(a), c(2, 1, 0));
        asp.validate_mm().unwrap();
        // A reserving mapping unmapped before any fault gives its reservation back.
        let r = asp.mmap(0, M2, RW, anon, None, 0).unwrap();
        assert_eq!(counters(a), c(2, 1, 1));
        asp.munmap(r, M2).unwrap();
        assert_eq!(counters(a), c(2, 1, 0));
    }
    assert_eq!(counters(a), c(2, 2, 0));
    h2(a).set_nr_hugepages(0);
    assert_eq!(a.allocated_frames_settled(), base);
}

/// Test 6: a private mapping of a file copies on write; the file's page is untouched.
#[test]
fn private_mapping_copies_on_write() {
    let (a, base) = machine(64);
    h2(a).set_nr_hugepages(4);
    {
        let f = hugetlbfs_file(
            a,
            HugeSize::Size2M,
            2 * M2,
            "/hugetlbfs/cow",
            OpenMode::RDWR,
        )
        .unwrap();
        let asp = AddressSpace::new(a).unwrap();
        let s = asp.mmap(0, 2 * M2, RW, MAP_SHARED, Some(&f), 0).unwrap();
        write(&asp, s + 100, b"file");
        let p = asp.mmap(0, 2 * M2, RW, MAP_PRIVATE, Some(&f), 0).unwrap();
        assert_eq!(read(&asp, p + 100, 4), b"file");
        assert_eq!(
            asp.translate(p).unwrap().frame,
            asp.translate(s).unwrap().frame
        );
        write(&asp, p + 100, b"priv");
        assert_ne!(
            asp.translate(p).unwrap().frame,
            asp.translate(s).unwrap().frame
        );
        assert_eq!(read(&asp, p + 100, 4), b"priv");
        assert_eq!(
            read(&asp, s + 100, 4),
            b"file",
            "the file's page is untouched"
        );
        // A private page where the file has none is a zeroed private page.
        write(&asp, p + M2, b"z");
        assert!(
            f.inode().find_page(1).is_none(),
            "private faults never fill the cache"
        );
        asp.validate_mm().unwrap();
    }
    assert_eq!(counters(a), c(4, 4, 0));
    h2(a).set_nr_hugepages(0);
    assert_eq!(a.allocated_frames_settled(), base);
}

/// Truncate and hole punch unmap every mapping and free the pages.
#[test]
fn truncate_and_punch_hole_unmap_everywhere() {
    let (a, base) = machine(64);
    h2(a).set_nr_hugepages(8);
    {
        let (sa, sb, f) = two_sharing(a);
        write(&sb, BASE + 6 * M2, b"six");
        assert_eq!(counters(a).free, 6);
        hugetlbfs::hugetlbfs_punch_hole(&f, 5 * M2, M2).unwrap();
        assert_eq!(counters(a).free, 7);
        assert!(sa.translate(BASE + 5 * M2).is_none());
        assert!(sb.translate(BASE + 5 * M2).is_none());
        assert_eq!(
            read(&sb, BASE + 5 * M2 + 7, 6),
            [0; 6],
            "a hole reads as zeros"
        );
        assert_eq!(read(&sa, BASE + 6 * M2, 3), b"six");
        assert_eq!(
            hugetlbfs::hugetlbfs_truncate(&f, PAGE_SIZE),
            Err(Errno::EINVAL)
        );
        hugetlbfs::hugetlbfs_truncate(&f, 0).unwrap();
        assert_eq!(counters(a).free, 8);
        assert!(sa.translate(BASE + 6 * M2).is_none());
        assert!(sb.translate(BASE + 6 * M2).is_none());
        assert_eq!(sa.handle_fault(BASE, Access::Read), Err(FaultError::Bus));
        sa.validate_mm().unwrap();
        sb.validate_mm().unwrap();
    }
    assert_eq!(counters(a), c(8, 8, 0));
    h2(a).set_nr_hugepages(0);
    assert_eq!(a.allocated_frames_settled(), base);
}

/// mremap of a hugetlb VMA (Linux's `hugepage-mremap` selftest): aligned moves keep
/// the data; unaligned addresses or sizes are refused.
#[test]
fn mremap_moves_aligned() {
    let (a, base) = machine(64);
    h2(a).set_nr_hugepages(4);
    {
        let asp = AddressSpace::new(a).unwrap();
        let anon = MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB;
        let p = asp.mmap(0, 2 * M2, RW, anon, None, 0).unwrap();
        write(&asp, p + 3, b"move");
        write(&asp, p + M2 + 3, b"too");
        let dst = BASE;
        assert_eq!(
            asp.mremap(
                p,
                2 * M2,
                2 * M2,
                MREMAP_MAYMOVE | MREMAP_FIXED,
                dst + PAGE_SIZE
            ),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            asp.mremap(
                p,
                2 * M2,
                2 * M2 + PAGE_SIZE,
                MREMAP_MAYMOVE | MREMAP_FIXED,
                dst
            ),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            asp.mremap(p, 2 * M2, 2 * M2, MREMAP_MAYMOVE | MREMAP_FIXED, dst),
            Ok(dst)
        );
        assert_eq!(read(&asp, dst + 3, 4), b"move");
        assert_eq!(read(&asp, dst + M2 + 3, 3), b"too");
        assert!(asp.translate(p).is_none());
        asp.validate_mm().unwrap();
    }
    assert_eq!(counters(a), c(4, 4, 0));
    h2(a).set_nr_hugepages(0);
    assert_eq!(a.allocated_frames_settled(), base);
}

/// Two threads fault the same index of a shared file: one page is allocated.
#[test]
fn fault_mutex_one_page_per_index() {
    let (a, base) = machine(64);
    h2(a).set_nr_hugepages(4);
    {
        let f = hugetlbfs_file(a, HugeSize::Size2M, M2, "/hugetlbfs/race", OpenMode::RDWR).unwrap();
        let sa = AddressSpace::new(a).unwrap();
        let sb = AddressSpace::new(a).unwrap();
        let pa = sa.mmap(0, M2, RW, MAP_SHARED, Some(&f), 0).unwrap();
        let pb = sb.mmap(0, M2, RW, MAP_SHARED, Some(&f), 0).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| sa.handle_fault(pa, Access::Write).unwrap());
            s.spawn(|| sb.handle_fault(pb, Access::Write).unwrap());
        });
        assert_eq!(counters(a).free, 3);
        assert_eq!(
            sa.translate(pa).unwrap().frame,
            sb.translate(pb).unwrap().frame
        );
    }
    h2(a).set_nr_hugepages(0);
    assert_eq!(a.allocated_frames_settled(), base);
}

/// A 1 GiB page: map, fault (a PDPT leaf), unmap.
#[test]
fn one_gib_page() {
    let (a, base) = machine(2560);
    let h = hugetlb::hstate(a, HugeSize::Size1G).unwrap();
    assert_eq!(h.set_nr_hugepages(1), 1);
    {
        let asp = AddressSpace::new(a).unwrap();
        let p = asp
            .mmap(
                0,
                G1,
                RW,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_1GB,
                None,
                0,
            )
            .unwrap();
        assert_eq!(p % G1, 0);
        assert_eq!(h.counters().rsvd, 1);
        write(&asp, p + G1 - 4, b"end!");
        let t = asp.translate(p).unwrap();
        assert_eq!(t.size, mm::paging::PageSize::Size1G);
        assert_eq!(h.counters().free, 0);
        assert_eq!(asp.munmap(p, M2), Err(Errno::EINVAL));
        asp.validate_mm().unwrap();
        assert_eq!(asp.munmap(p, G1), Ok(()));
        assert_eq!(h.counters().free, 1);
    }
    h.set_nr_hugepages(0);
    assert_eq!(a.allocated_frames_settled(), base);
}

// ---- the CVE-2025-38084 ordering ------------------------------------------------------

static WINDOW: Mutex<Option<(usize, &'static AddressSpace)>> = Mutex::new(None);
static WINDOW_RESULT: Mutex<Option<bool>> = Mutex::new(None);

/// The hook `__split_vma` runs between the unshare and the range change: a fault in
/// the splitting VMA, if it can get in without waiting (a fault that would wait for
/// the mmap lock the splitter holds is one the real kernel would not run there).
fn window_fault(_vma: mm::vma::VmaRef, _addr: usize) {
    // Only the first split of the call: later ones find the VMA write-locked anyway.
    let Some((addr, asp)) = WINDOW.lock().unwrap().take() else {
        return;
    };
    let can = asp.mm().lock_vma_under_rcu(addr).is_some();
    if can {
        asp.handle_fault(addr, Access::Read).unwrap();
    }
    *WINDOW_RESULT.lock().unwrap() = Some(can);
}

/// Test 4: a fault in the window re-shares only in the old order; with today's
/// order the invariant holds.
#[test]
fn cve_2025_38084_split_order() {
    let (a, _) = machine(64);
    h2(a).set_nr_hugepages(8);
    *mm::vma::SPLIT_WINDOW_HOOK.lock() = Some(window_fault);
    for old in [false, true] {
        let (sa, sb, _f) = two_sharing(a);
        let sb: &'static AddressSpace = Box::leak(Box::new(sb));
        *WINDOW.lock().unwrap() = Some((BASE + 5 * M2, sb));
        mm::vma::OLD_SPLIT_ORDER.store(old, std::sync::atomic::Ordering::SeqCst);
        let r = sb.madvise(BASE + 4 * M2, M2, MADV_DONTFORK);
        mm::vma::OLD_SPLIT_ORDER.store(false, std::sync::atomic::Ordering::SeqCst);
        *WINDOW.lock().unwrap() = None;
        assert_eq!(r, Ok(()));
        let got_in = WINDOW_RESULT.lock().unwrap().take();
        if old {
            assert_eq!(got_in, Some(true), "old order: the fault ran in the window");
            let e = sb.validate_mm().unwrap_err();
            assert!(e.contains("shared PD table"), "{e}");
        } else {
            // The invariant first: this is what a wrong order breaks.
            sb.validate_mm().unwrap();
            assert_eq!(got_in, Some(false), "new order: the fault cannot get in");
        }
        sa.validate_mm().unwrap();
        drop(sa);
        // SAFETY: `sb` came from `Box::leak` above and the hook no longer sees it.
        drop(unsafe { Box::from_raw(sb as *const AddressSpace as *mut AddressSpace) });
    }
    *mm::vma::SPLIT_WINDOW_HOOK.lock() = None;
    assert_eq!(counters(a), c(8, 8, 0));
}

/// Test 4, racing: threads fault in both address spaces while another splits B's VMA
/// (MADV_DONTFORK, which touches no page table: only the split unshares) and maps the
/// whole interval again (hugetlb VMAs never re-merge: `VM_DONTEXPAND`), checking the
/// invariant after every split and every re-map.
#[test]
fn racing_faults_and_splits_keep_the_invariant() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let (a, base) = machine(64);
    h2(a).set_nr_hugepages(8);
    {
        let (sa, sb, f) = two_sharing(a);
        let stop = AtomicBool::new(false);
        let faults = AtomicUsize::new(0);
        let mut shared_again = 0;
        /// Stops the faulting threads however the splitter ends (a failed check
        /// panics; the scope would otherwise wait for them forever).
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        std::thread::scope(|s| {
            for asp in [&sa, &sb] {
                let (stop, faults) = (&stop, &faults);
                s.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        for i in 0..8 {
                            if asp.handle_fault(BASE + i * M2, Access::Read).is_ok() {
                                faults.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
            let _stop = StopOnDrop(&stop);
            for _ in 0..100 {
                assert_eq!(sb.madvise(BASE + 4 * M2, M2, MADV_DONTFORK), Ok(()));
                sb.validate_mm().unwrap();
                let fl = MAP_SHARED | MAP_FIXED | MAP_NORESERVE;
                assert_eq!(sb.mmap(BASE, G1, RW, fl, Some(&f), 0), Ok(BASE));
                // Let a fault re-share before the next split.
                let t0 = std::time::Instant::now();
                while pd_table(&sb, BASE).is_none() && t0.elapsed().as_millis() < 100 {
                    std::thread::yield_now();
                }
                if pd_table(&sb, BASE) == pd_table(&sa, BASE) {
                    shared_again += 1;
                }
                sb.validate_mm().unwrap();
            }
        });
        sa.validate_mm().unwrap();
        assert!(
            shared_again > 0,
            "the faults re-shared the table between splits"
        );
        assert!(faults.load(Ordering::Relaxed) > 0);
        assert_eq!(read(&sb, BASE + 5 * M2 + 7, 6), b"from A");
    }
    assert_eq!(counters(a), c(8, 8, 0));
    h2(a).set_nr_hugepages(0);
    assert_eq!(a.allocated_frames_settled(), base);
}

/// fork: a shared hugetlb mapping is not copied (faults refill it), so the child's
/// first fault shares the parent's PD table; a split in the child unshares only the
/// child. A private one is copied write-protected: the child's write copies the page
/// (without a reservation: Linux gives the child none), the parent's data stays.
#[test]
fn fork_shares_and_copies() {
    let (a, base) = machine(64);
    h2(a).set_nr_hugepages(8);
    {
        let (sa, sb, _f) = two_sharing(a);
        drop(sb);
        let p = sa
            .mmap(
                0,
                2 * M2,
                RW,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB,
                None,
                0,
            )
            .unwrap();
        write(&sa, p + 1, b"parent");
        let child = sa.fork().unwrap();
        let ta = pd_table(&sa, BASE).unwrap();
        assert_eq!(read(&child, BASE + 5 * M2 + 7, 6), b"from A");
        assert_eq!(
            pd_table(&child, BASE),
            Some(ta),
            "the child shares the parent's table"
        );
        assert_eq!(share_count(a, ta), 1);
        child.validate_mm().unwrap();
        assert_eq!(child.madvise(BASE + 4 * M2, M2, MADV_DONTFORK), Ok(()));
        assert_ne!(pd_table(&child, BASE), Some(ta));
        assert_eq!(share_count(a, ta), 0);
        // Private: the child sees the parent's page until it writes.
        assert_eq!(read(&child, p + 1, 6), b"parent");
        write(&child, p + 1, b"child!");
        assert_eq!(read(&sa, p + 1, 6), b"parent");
        assert_eq!(read(&child, p + 1, 6), b"child!");
        assert_ne!(
            sa.translate(p).unwrap().frame,
            child.translate(p).unwrap().frame
        );
        child.validate_mm().unwrap();
        sa.validate_mm().unwrap();
        drop(child);
        assert_eq!(read(&sa, p + 1, 6), b"parent");
        sa.validate_mm().unwrap();
    }
    assert_eq!(counters(a), c(8, 8, 0));
    h2(a).set_nr_hugepages(0);
    assert_eq!(a.allocated_frames_settled(), base);
}
