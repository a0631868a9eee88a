//! Demand paging through real page faults: the #PF handler resolves faults on
//! `mmap`ed ranges of the active address space (zero page, copy on write, stack
//! growth, file mappings); unresolvable ones come back to the probing test as a
//! segmentation fault.
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
use kernel::memory::{self, frames};
use mm::file::{OpenMode, ramfs_file, stacking_file};
use mm::mmap::*;
use x86_64::VirtAddr;
use x86_64::structures::idt::PageFaultErrorCode as Code;

kernel::test_kernel_main!();

const P: usize = 4096;
const RW: u32 = PROT_READ | PROT_WRITE;
const ANON: u32 = MAP_PRIVATE | MAP_ANONYMOUS;

fn at(a: usize) -> VirtAddr {
    VirtAddr::new(a as u64)
}

/// A fresh address space, active for the duration of `f`.
fn in_new_space(f: impl FnOnce(&Arc<AddressSpace>)) {
    let mm = address_space::new_user_space(MmLayout::default()).unwrap();
    address_space::activate(&mm);
    f(&mm);
    address_space::deactivate_current();
}

fn vma_count(mm: &AddressSpace) -> usize {
    mm.maps().lines().count()
}

#[test_case]
fn untouched_anonymous_reads_are_zero_and_allocate_no_data_frames() {
    in_new_space(|mm| {
        let a = mm.mmap(0, 16 * P, RW, ANON, None, 0).unwrap();
        let zero = zero_page(frames()).unwrap();
        let before = memory::usage().frames;
        for i in 0..16 {
            assert_eq!(probe_read(at(a + i * P + 123)), Ok(0));
            assert_eq!(
                mm.translate(a + i * P).unwrap().frame,
                zero,
                "page {i} is the zero page"
            );
        }
        let grew = memory::usage().frames - before;
        assert!(
            grew <= 3,
            "only page-table pages were allocated, not 16 frames: {grew}"
        );
    });
}

#[test_case]
fn writes_get_a_private_frame_and_persist() {
    in_new_space(|mm| {
        let a = mm.mmap(0, 4 * P, RW, ANON, None, 0).unwrap();
        assert_eq!(probe_read(at(a)), Ok(0)); // zero page first
        probe_write(at(a), 0x42).unwrap(); // copy on write from the zero page
        probe_write(at(a + 3 * P + 7), 0x43).unwrap();
        assert_eq!(probe_read(at(a)), Ok(0x42));
        assert_eq!(probe_read(at(a + 3 * P + 7)), Ok(0x43));
        assert_ne!(mm.translate(a).unwrap().frame, zero_page(frames()).unwrap());
        assert_eq!(
            probe_read(at(a + P)),
            Ok(0),
            "untouched neighbour still zero"
        );
    });
}

#[test_case]
fn madv_dontneed_makes_the_next_read_zero() {
    in_new_space(|mm| {
        let a = mm.mmap(0, 2 * P, RW, ANON, None, 0).unwrap();
        probe_write(at(a), 9).unwrap();
        let before = memory::usage().frames;
        mm.madvise(a, 2 * P, MADV_DONTNEED).unwrap();
        assert!(
            memory::usage().frames < before,
            "the private frame was freed"
        );
        assert_eq!(probe_read(at(a)), Ok(0));
        assert_eq!(vma_count(mm), 1, "no split");
    });
}

#[test_case]
fn write_to_a_read_only_mapping_is_a_segv_until_mprotect() {
    in_new_space(|mm| {
        let a = mm.mmap(0, P, PROT_READ, ANON, None, 0).unwrap();
        assert_eq!(probe_read(at(a)), Ok(0));
        let e = probe_write(at(a), 1).expect_err("read-only");
        assert!(Code::from_bits_truncate(e.error_code).contains(Code::CAUSED_BY_WRITE));
        mm.mprotect(a, P, RW).unwrap();
        probe_write(at(a), 1).unwrap();
        assert_eq!(probe_read(at(a)), Ok(1));
    });
}

#[test_case]
fn unmapped_space_is_a_segv_and_munmap_gives_everything_back() {
    let before = memory::usage();
    in_new_space(|mm| {
        let a = mm.mmap(0, 8 * P, RW, ANON, None, 0).unwrap();
        for i in 0..8 {
            probe_write(at(a + i * P), i as u8).unwrap();
        }
        mm.munmap(a, 8 * P).unwrap();
        assert!(probe_read(at(a)).is_err(), "unmapped after munmap");
        assert!(probe_read(at(a + 8 * P)).is_err());
        assert_eq!(vma_count(mm), 0);
    });
    assert_eq!(
        memory::usage(),
        before,
        "frames, tables and VMAs back to baseline"
    );
}

/// The mprotect merge cases of Linux's selftests/mm/merge.c (879bca0a2c4f): after a
/// split and a fault on one side, restoring the protection re-merges the VMAs.
#[test_case]
fn mprotect_unfaulted_left_remerges() {
    in_new_space(|mm| {
        let a = mm
            .mmap(0, 10 * P, RW, ANON | MAP_NORESERVE, None, 0)
            .unwrap();
        mm.mprotect(a, 5 * P, PROT_READ).unwrap();
        assert_eq!(vma_count(mm), 2);
        probe_write(at(a + 5 * P), b'x').unwrap(); // fault in the RW (right) part
        mm.mprotect(a, 5 * P, RW).unwrap();
        assert_eq!(
            vma_count(mm),
            1,
            "unfaulted left + faulted right merge:\n{}",
            mm.maps()
        );
    });
}

#[test_case]
fn mprotect_unfaulted_right_remerges() {
    in_new_space(|mm| {
        let a = mm
            .mmap(0, 10 * P, RW, ANON | MAP_NORESERVE, None, 0)
            .unwrap();
        mm.mprotect(a + 5 * P, 5 * P, PROT_READ).unwrap();
        probe_write(at(a), b'x').unwrap(); // fault in the left part
        mm.mprotect(a + 5 * P, 5 * P, RW).unwrap();
        assert_eq!(
            vma_count(mm),
            1,
            "faulted left + unfaulted right merge:\n{}",
            mm.maps()
        );
    });
}

#[test_case]
fn mprotect_unfaulted_both_remerges() {
    in_new_space(|mm| {
        let a = mm
            .mmap(0, 9 * P, RW, ANON | MAP_NORESERVE, None, 0)
            .unwrap();
        mm.mprotect(a, 3 * P, PROT_READ).unwrap();
        mm.mprotect(a + 6 * P, 3 * P, PROT_READ).unwrap();
        assert_eq!(vma_count(mm), 3);
        probe_write(at(a + 3 * P), b'x').unwrap(); // fault in the middle
        assert!(probe_write(at(a), 1).is_err(), "left is read-only");
        mm.mprotect(a, 9 * P, RW).unwrap();
        assert_eq!(
            vma_count(mm),
            1,
            "unfaulted/faulted/unfaulted merge:\n{}",
            mm.maps()
        );
        assert_eq!(probe_read(at(a + 3 * P)), Ok(b'x'));
    });
}

#[test_case]
fn faulted_sides_with_different_anon_vmas_do_not_merge() {
    // Left and right each got their own anon_vma on their first write (no faulted
    // neighbour to reuse one from): Linux refuses the three-way merge and merges
    // only the left side.
    in_new_space(|mm| {
        let a = mm.mmap(0, 3 * P, RW, ANON, None, 0).unwrap();
        mm.mprotect(a + P, P, PROT_READ).unwrap();
        probe_write(at(a), 1).unwrap();
        probe_write(at(a + 2 * P), 3).unwrap();
        mm.mprotect(a + P, P, RW).unwrap();
        assert_eq!(vma_count(mm), 2, "left-only merge:\n{}", mm.maps());
        assert_eq!(mm.query_vma(a, 0).map(|q| q.end), Some(a + 2 * P));
    });
}

#[test_case]
fn growsdown_stack_grows_on_faults_and_respects_the_guard_gap() {
    in_new_space(|mm| {
        let top = 0x7000_0000usize;
        let s = mm
            .mmap(top - P, P, RW, ANON | MAP_GROWSDOWN | MAP_FIXED, None, 0)
            .unwrap();
        assert_eq!(s, top - P);
        probe_write(at(s - 3 * P), 7).expect("fault below the stack grows it");
        let q = mm.query_vma(s - 3 * P, 0).expect("grown VMA");
        assert_eq!((q.start, q.end), (s - 3 * P, top));
        // A mapping 512 KiB below the stack: inside the 1 MiB guard gap.
        let below = mm
            .mmap(s - 3 * P - 0x8_0000 - P, P, RW, ANON | MAP_FIXED, None, 0)
            .unwrap();
        assert!(
            probe_write(at(s - 4 * P), 1).is_err(),
            "growth into the guard gap is refused"
        );
        mm.munmap(below, P).unwrap();
        probe_write(at(s - 4 * P), 1).expect("gap clear again");
    });
}

#[test_case]
fn private_file_mapping_reads_the_page_cache_and_copies_on_write() {
    let file = ramfs_file(frames(), "data", 2 * P, OpenMode::RDWR);
    file.inode().write(0, b"hello").unwrap();
    in_new_space(|mm| {
        let a = mm.mmap(0, 2 * P, RW, MAP_PRIVATE, Some(&file), 0).unwrap();
        assert_eq!(probe_read(at(a)), Ok(b'h'));
        probe_write(at(a), b'J').unwrap();
        assert_eq!(probe_read(at(a)), Ok(b'J'), "our private copy");
        let mut buf = [0u8; 5];
        file.inode().read(0, &mut buf);
        assert_eq!(&buf, b"hello", "the file is untouched");
    });
}

#[test_case]
fn shared_file_mapping_writes_through_to_the_page_cache() {
    let file = ramfs_file(frames(), "shared", P, OpenMode::RDWR);
    in_new_space(|mm| {
        let a = mm.mmap(0, P, RW, MAP_SHARED, Some(&file), 0).unwrap();
        probe_write(at(a + 10), b'Y').unwrap();
        let mut buf = [0u8; 1];
        file.inode().read(10, &mut buf);
        assert_eq!(buf[0], b'Y');
    });
}

#[test_case]
fn stacking_file_maps_the_lower_file_through_the_compat_layer() {
    let lower = ramfs_file(frames(), "lower", P, OpenMode::RDWR);
    lower.inode().write(0, b"L").unwrap();
    let upper = stacking_file(&lower, "overlay");
    in_new_space(|mm| {
        let a = mm
            .mmap(0, P, PROT_READ, MAP_PRIVATE, Some(&upper), 0)
            .unwrap();
        assert_eq!(probe_read(at(a)), Ok(b'L'));
        assert!(
            mm.maps().contains("lower"),
            "the VMA maps the lower file:\n{}",
            mm.maps()
        );
    });
}

/// A write fault on a PTE that already allows the write (a stale read-only TLB entry
/// after a permission upgrade that skipped the flush, as x86 Linux's `mprotect` does)
/// is spurious: the mm fault path resolves it, with neither a SIGSEGV nor a copy
/// (Linux: `handle_pte_fault`; x86's `flush_tlb_fix_spurious_fault` is empty because
/// the fault itself dropped the stale entry). Under TCG the write may not fault at
/// all; either way it must succeed in place.
#[test_case]
fn stale_read_only_tlb_entry_is_a_spurious_fault_not_a_segv() {
    use mm::paging::{MmuGather, PageTableFlags as F};
    const PTE_RW: F = F::PRESENT
        .union(F::WRITABLE)
        .union(F::USER_ACCESSIBLE)
        .union(F::NO_EXECUTE);
    const PTE_RO: F = F::PRESENT.union(F::USER_ACCESSIBLE).union(F::NO_EXECUTE);
    in_new_space(|mm| {
        let a = mm.mmap(0, P, RW, ANON, None, 0).unwrap();
        probe_write(at(a), 1).unwrap(); // an exclusive anonymous page, mapped writable
        let frame = mm.translate(a).unwrap().frame;
        let range = at(a)..at(a + P);
        mm.with_page_tables(|t| {
            let mut g = MmuGather::new(t);
            t.protect(range.clone(), PTE_RO, &mut g).unwrap();
            g.finish();
        });
        assert_eq!(probe_read(at(a)), Ok(1)); // the read-only entry may now be in the TLB
        mm.with_page_tables(|t| {
            let mut g = MmuGather::new(t);
            t.protect(range.clone(), PTE_RW, &mut g).unwrap();
            // Leave the TLB stale on purpose.
            core::mem::forget(g);
        });
        probe_write(at(a), 2).expect("a spurious fault is resolved, not a SIGSEGV");
        assert_eq!(probe_read(at(a)), Ok(2));
        let t = mm.translate(a).unwrap();
        assert_eq!(t.frame, frame, "written in place: no copy on write");
        assert!(t.flags.contains(F::WRITABLE));
    });
}
