//! hugetlb on the real MMU: 2 MiB leaves in the PD table, PMD table sharing between
//! two address spaces (both walk the same PD table page), the unshare when one of
//! them splits the VMA (the other still correct, the splitter's TLB flushed), and a
//! 1 GiB page in the PDPT. Every test gives its pool back, so the harness's leak check
//! (frames, page-table pages, VMAs) sees nothing left.
#![no_std]
#![no_main]
// Test cases are named for what they check; the custom test framework makes them
// items of the test crate, which `missing_docs` would otherwise ask to document.
#![allow(missing_docs)]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::run_tests)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::sync::Arc;
use kernel::address_space;
use kernel::arch::extable::{probe_read, probe_write};
use kernel::memory::frames;
use mm::file::OpenMode;
use mm::file::hugetlbfs::hugetlbfs_file;
use mm::hugetlb::{self, HugeSize};
use mm::mmap::*;
use mm::paging::PageSize;
use x86_64::VirtAddr;

kernel::test_kernel_main!();

const M2: usize = 2 << 20;
const G1: usize = 1 << 30;
/// A 1 GiB-aligned user address.
const BASE: usize = 1 << 40;
const RW: u32 = PROT_READ | PROT_WRITE;

fn at(a: usize) -> VirtAddr {
    VirtAddr::new(a as u64)
}

fn space() -> Arc<AddressSpace> {
    address_space::new_user_space(MmLayout::default()).unwrap()
}

/// Runs `f` with `mm` loaded in CR3, then switches back to the kernel's tables.
fn on<R>(mm: &Arc<AddressSpace>, f: impl FnOnce() -> R) -> R {
    address_space::activate(mm);
    let r = f();
    address_space::deactivate_current();
    r
}

fn pd_table(mm: &AddressSpace, addr: usize) -> Option<u64> {
    mm.with_page_tables(|pt| pt.pmd_table_at(at(addr)))
        .map(|p| p.as_u64())
}

fn share_count(table: u64) -> u32 {
    frames()
        .meta(x86_64::PhysAddr::new(table))
        .unwrap()
        .pt_share_count()
}

fn pool(n: usize) {
    let h = hugetlb::hstate(frames(), HugeSize::Size2M).unwrap();
    assert_eq!(h.set_nr_hugepages(n), n);
}

/// Two spaces mapping one 1 GiB hugetlbfs file MAP_SHARED at `BASE`; A writes through
/// the MMU first, then B reads through it (sharing A's PD table).
fn two_sharing() -> (Arc<AddressSpace>, Arc<AddressSpace>) {
    let f = hugetlbfs_file(
        frames(),
        HugeSize::Size2M,
        G1,
        "/hugetlbfs/k",
        OpenMode::RDWR,
    )
    .unwrap();
    let (a, b) = (space(), space());
    let fl = MAP_SHARED | MAP_FIXED | MAP_NORESERVE;
    assert_eq!(a.mmap(BASE, G1, RW, fl, Some(&f), 0), Ok(BASE));
    assert_eq!(b.mmap(BASE, G1, RW, fl, Some(&f), 0), Ok(BASE));
    on(&a, || probe_write(at(BASE + 5 * M2 + 7), 0xa5).unwrap());
    assert_eq!(on(&b, || probe_read(at(BASE + 5 * M2 + 7))), Ok(0xa5));
    (a, b)
}

#[test_case]
fn two_mib_leaf_in_the_pd_and_shared_pd_table() {
    pool(8);
    {
        let (a, b) = two_sharing();
        let t = a.translate(BASE + 5 * M2).unwrap();
        assert_eq!(t.size, PageSize::Size2M, "a 2 MiB leaf in the PD table");
        let ta = pd_table(&a, BASE).unwrap();
        assert_eq!(
            pd_table(&b, BASE),
            Some(ta),
            "B's PUD entry points at A's PD table"
        );
        assert_eq!(share_count(ta), 1);
        // B's write through the shared table is visible to A through the MMU.
        on(&b, || probe_write(at(BASE + 9 * M2), 0x5a).unwrap());
        assert_eq!(on(&a, || probe_read(at(BASE + 9 * M2))), Ok(0x5a));
        a.validate_mm().unwrap();
        b.validate_mm().unwrap();
    }
    pool(0);
}

#[test_case]
fn split_unshares_b_and_flushes_its_tlb() {
    pool(8);
    {
        let (a, b) = two_sharing();
        let ta = pd_table(&a, BASE).unwrap();
        on(&b, || {
            // B's TLB holds the translation through A's table; the split must flush it.
            assert_eq!(probe_read(at(BASE + 5 * M2)), Ok(0));
            assert_eq!(b.mprotect(BASE + 4 * M2, M2, PROT_READ), Ok(()));
            assert_ne!(pd_table(&b, BASE), Some(ta), "B unshared");
            assert_eq!(share_count(ta), 0);
            // B's data is still there, through its own table after a fault.
            assert_eq!(probe_read(at(BASE + 5 * M2 + 7)), Ok(0xa5));
            assert!(probe_write(at(BASE + 4 * M2), 1).is_err(), "read-only now");
        });
        let tb = pd_table(&b, BASE).unwrap();
        assert_ne!(tb, ta);
        on(&a, || {
            assert_eq!(pd_table(&a, BASE), Some(ta));
            assert_eq!(probe_read(at(BASE + 5 * M2 + 7)), Ok(0xa5));
            probe_write(at(BASE + 4 * M2), 2).unwrap();
        });
        assert_eq!(on(&b, || probe_read(at(BASE + 4 * M2))), Ok(2));
        a.validate_mm().unwrap();
        b.validate_mm().unwrap();
    }
    pool(0);
}

/// The split's own unshare (`hugetlb_split` in `__split_vma`): MADV_DONTFORK splits
/// B's VMA and touches no page table itself.
#[test_case]
fn madvise_split_unshares_through_hugetlb_split() {
    pool(8);
    {
        let (a, b) = two_sharing();
        let ta = pd_table(&a, BASE).unwrap();
        on(&b, || {
            assert_eq!(probe_read(at(BASE + 5 * M2)), Ok(0));
            assert_eq!(b.madvise(BASE + 4 * M2, M2, MADV_DONTFORK), Ok(()));
            assert_ne!(pd_table(&b, BASE), Some(ta), "B unshared by the split");
            assert_eq!(share_count(ta), 0);
            assert_eq!(probe_read(at(BASE + 5 * M2 + 7)), Ok(0xa5));
        });
        on(&a, || {
            assert_eq!(probe_read(at(BASE + 5 * M2 + 7)), Ok(0xa5))
        });
        a.validate_mm().unwrap();
        b.validate_mm().unwrap();
    }
    pool(0);
}

#[test_case]
fn munmap_of_one_page_unshares_and_flushes() {
    pool(8);
    {
        let (a, b) = two_sharing();
        let ta = pd_table(&a, BASE).unwrap();
        // Another mapping under the same PDPT page keeps it alive after the unshare,
        // so the only flush of the interval is the unshare's own.
        let anon = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
        assert_eq!(b.mmap(BASE + G1, 4096, RW, anon, None, 0), Ok(BASE + G1));
        on(&b, || {
            probe_write(at(BASE + G1), 1).unwrap();
            assert_eq!(probe_read(at(BASE + 5 * M2)), Ok(0));
            assert_eq!(b.munmap(BASE + 5 * M2, M2), Ok(()));
            // A stale TLB entry would let this read through.
            assert!(probe_read(at(BASE + 5 * M2)).is_err(), "unmapped in B");
        });
        assert_eq!(share_count(ta), 0);
        assert_eq!(on(&a, || probe_read(at(BASE + 5 * M2 + 7))), Ok(0xa5));
        a.validate_mm().unwrap();
        b.validate_mm().unwrap();
    }
    pool(0);
}

#[test_case]
fn split_at_the_1g_boundary_needs_no_unshare() {
    pool(8);
    {
        let f = hugetlbfs_file(
            frames(),
            HugeSize::Size2M,
            2 * G1,
            "/hugetlbfs/k2",
            OpenMode::RDWR,
        )
        .unwrap();
        let (a, b) = (space(), space());
        let fl = MAP_SHARED | MAP_FIXED | MAP_NORESERVE;
        a.mmap(BASE, 2 * G1, RW, fl, Some(&f), 0).unwrap();
        b.mmap(BASE, 2 * G1, RW, fl, Some(&f), 0).unwrap();
        on(&a, || probe_write(at(BASE), 1).unwrap());
        assert_eq!(on(&b, || probe_read(at(BASE))), Ok(1));
        let lo = pd_table(&a, BASE).unwrap();
        assert_eq!(share_count(lo), 1);
        // MADV_DONTFORK splits at the boundary and touches no page table.
        assert_eq!(b.madvise(BASE + G1, G1, MADV_DONTFORK), Ok(()));
        assert_eq!(pd_table(&b, BASE), Some(lo), "still shared");
        assert_eq!(share_count(lo), 1);
        b.validate_mm().unwrap();
    }
    pool(0);
}

#[test_case]
fn one_gib_page_in_the_pdpt() {
    let h = hugetlb::hstate(frames(), HugeSize::Size1G).unwrap();
    // The test kernels boot with 3 GiB, which leaves one free 1 GiB-aligned block.
    assert_eq!(h.set_nr_hugepages(1), 1, "no free 1 GiB block");
    {
        let mm = space();
        let fl = MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_1GB;
        let p = mm.mmap(0, G1, RW, fl, None, 0).unwrap();
        assert_eq!(p % G1, 0);
        on(&mm, || {
            probe_write(at(p + G1 - 1), 0x77).unwrap();
            assert_eq!(probe_read(at(p + G1 - 1)), Ok(0x77));
            assert_eq!(probe_read(at(p)), Ok(0), "zeroed");
        });
        assert_eq!(mm.translate(p).unwrap().size, PageSize::Size1G);
        assert!(mm.maps().contains("/anon_hugepage (deleted)"));
        mm.validate_mm().unwrap();
        assert_eq!(mm.munmap(p, G1), Ok(()));
        assert_eq!(h.counters().free, 1);
    }
    h.set_nr_hugepages(0);
}

/// Test 4 of the issue, racing, on several CPUs (`KERNEL_SMP=2 cargo ktest --test
/// hugetlb`; with one CPU it degenerates to the split loop): the other CPUs fault
/// through both address spaces while CPU 0 splits B's VMA (MADV_DONTFORK: only the
/// split's `hugetlb_split` unshares) and maps the interval again, checking after every
/// split that no VMA maps an interval through a shared table it does not cover.
#[test_case]
fn racing_faults_on_other_cpus_and_splits() {
    use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use kernel::percpu::this_cpu;
    use kernel::smp::{online_mask, run_on};
    pool(8);
    {
        let f = hugetlbfs_file(
            frames(),
            HugeSize::Size2M,
            G1,
            "/hugetlbfs/race",
            OpenMode::RDWR,
        )
        .unwrap();
        let (a, b) = (space(), space());
        let fl = MAP_SHARED | MAP_FIXED | MAP_NORESERVE;
        a.mmap(BASE, G1, RW, fl, Some(&f), 0).unwrap();
        b.mmap(BASE, G1, RW, fl, Some(&f), 0).unwrap();
        a.handle_fault(BASE, Access::Write).unwrap();
        let stop = AtomicBool::new(false);
        let faults = AtomicUsize::new(0);
        let splits = AtomicUsize::new(0);
        run_on(online_mask(), &|| {
            if this_cpu() == 0 {
                /// Stops the other CPUs however the loop ends (a failed check panics).
                struct StopOnDrop<'a>(&'a AtomicBool);
                impl Drop for StopOnDrop<'_> {
                    fn drop(&mut self) {
                        self.0.store(true, Ordering::Release);
                    }
                }
                let _stop = StopOnDrop(&stop);
                for _ in 0..40 {
                    assert_eq!(b.madvise(BASE + 4 * M2, M2, MADV_DONTFORK), Ok(()));
                    b.validate_mm().unwrap();
                    assert_eq!(b.mmap(BASE, G1, RW, fl, Some(&f), 0), Ok(BASE));
                    b.handle_fault(BASE, Access::Read).unwrap();
                    b.validate_mm().unwrap();
                    splits.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                while !stop.load(Ordering::Acquire) {
                    for i in 0..8 {
                        let s = if i % 2 == 0 { &a } else { &b };
                        if s.handle_fault(BASE + i * M2, Access::Read).is_ok() {
                            faults.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
        assert_eq!(splits.load(Ordering::Relaxed), 40);
        a.validate_mm().unwrap();
        b.validate_mm().unwrap();
        kernel::serial_println!(
            "hugetlb race: {} CPUs, 40 splits, {} faults on the other CPUs",
            online_mask().count_ones(),
            faults.load(Ordering::Relaxed)
        );
    }
    pool(0);
}
