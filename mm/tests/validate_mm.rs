//! `AddressSpace::validate_mm` (Linux: `validate_mm()` under
//! `CONFIG_DEBUG_VM_MAPLE_TREE`) and `validate_i_mmap`: they accept what the syscalls
//! build and name the invariant when the state is corrupted behind their back (page
//! tables changed directly, VMAs linked outside the address-space layout).

use mm::conformance::Harness;
use mm::conformance::host::HostHarness;
use mm::file::{OpenMode, ramfs_file};
use mm::mmap::*;
use mm::paging::{MmuGather, PageSize, PageTableFlags as F};
use mm::vma::VmFlags;
use x86_64::VirtAddr;

const P: usize = 4096;
const RW: u32 = PROT_READ | PROT_WRITE;
const PA: u32 = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;

fn va(x: usize) -> VirtAddr {
    VirtAddr::new(x as u64)
}

fn err(asp: &AddressSpace) -> String {
    asp.validate_mm()
        .expect_err("validate_mm accepted a corrupted address space")
}

#[test]
fn accepts_what_the_syscalls_build() {
    let h = HostHarness::new();
    let space = h.space();
    let asp = space.asp();
    let f = ramfs_file(h.allocator(), "f", 8 * P, OpenMode::RDWR);
    asp.mmap(0x4000_0000, 4 * P, RW, PA, None, 0).unwrap();
    asp.mmap(0x4000_4000, 4 * P, RW, MAP_SHARED | MAP_FIXED, Some(&f), 0)
        .unwrap();
    asp.mmap(
        0x4000_8000,
        4 * P,
        PROT_READ,
        MAP_PRIVATE | MAP_FIXED,
        Some(&f),
        P as u64,
    )
    .unwrap();
    asp.mmap(0x4001_0000, 2 * P, PROT_NONE, PA, None, 0)
        .unwrap();
    for a in (0x4000_0000..0x4000_c000).step_by(P) {
        asp.copy_to_user(a, b"x").unwrap_or_else(|_| {
            let mut b = [0];
            asp.copy_from_user(a, &mut b).unwrap();
        });
    }
    asp.mprotect(0x4000_1000, P, PROT_READ).unwrap();
    asp.validate_mm().unwrap();
    validate_i_mmap(f.inode(), &[asp]).unwrap();
}

#[test]
fn pte_outside_every_vma() {
    let h = HostHarness::new();
    let space = h.space();
    let asp = space.asp();
    asp.mmap(0x4000_0000, P, RW, PA, None, 0).unwrap();
    let frame = h.allocator().alloc_zeroed(0).unwrap();
    let flags = F::PRESENT | F::USER_ACCESSIBLE | F::NO_EXECUTE;
    asp.with_page_tables(|pt| pt.map_frame(va(0x5000_0000), frame, PageSize::Size4K, flags))
        .unwrap();
    assert!(err(asp).contains("outside every VMA"), "{}", err(asp));
}

#[test]
fn writable_pte_in_a_read_only_vma_and_present_pte_in_a_prot_none_vma() {
    let h = HostHarness::new();
    let space = h.space();
    let asp = space.asp();
    let x = asp
        .mmap(0x4000_0000, 2 * P, PROT_READ, PA, None, 0)
        .unwrap();
    asp.handle_fault(x, Access::Read).unwrap();
    asp.handle_fault(x + P, Access::Read).unwrap();
    asp.validate_mm().unwrap();
    let rw = F::PRESENT | F::WRITABLE | F::USER_ACCESSIBLE | F::NO_EXECUTE;
    asp.with_page_tables(|pt| {
        let mut g = MmuGather::new(pt);
        pt.protect(va(x)..va(x + P), rw, &mut g).unwrap();
        g.finish();
    });
    assert!(
        err(asp).contains("writable without VM_WRITE"),
        "{}",
        err(asp)
    );
    asp.munmap(x, P).unwrap();
    asp.validate_mm().unwrap();
    // PROT_NONE VMA, present PTE (what an mprotect that skipped the PTEs would leave).
    let y = x + P;
    asp.with_page_tables(|pt| {
        let mut g = MmuGather::new(pt);
        pt.protect(
            va(y)..va(y + P),
            F::PRESENT | F::USER_ACCESSIBLE | F::NO_EXECUTE,
            &mut g,
        )
        .unwrap();
        g.finish();
    });
    asp.mm()
        .write_lock()
        .vmas()
        .iter()
        .for_each(|v| assert_eq!(v.start(), y));
    {
        let mut g = asp.mm().write_lock();
        let v = g.vma_lookup(y).unwrap();
        g.vma_start_write(v);
        g.vma_set_flags(v, VmFlags::MAYREAD | VmFlags::MAYWRITE)
            .unwrap();
    }
    assert!(
        err(asp).contains("present PTE in a PROT_NONE VMA"),
        "{}",
        err(asp)
    );
}

#[test]
fn executable_pte_without_vm_exec_and_the_zero_page_writable() {
    let h = HostHarness::new();
    let space = h.space();
    let asp = space.asp();
    let x = asp.mmap(0x4000_0000, P, RW, PA, None, 0).unwrap();
    asp.handle_fault(x, Access::Read).unwrap(); // the zero page, read-only
    asp.validate_mm().unwrap();
    asp.with_page_tables(|pt| {
        let mut g = MmuGather::new(pt);
        pt.protect(va(x)..va(x + P), F::PRESENT | F::USER_ACCESSIBLE, &mut g)
            .unwrap();
        g.finish();
    });
    assert!(
        err(asp).contains("executable without VM_EXEC"),
        "{}",
        err(asp)
    );
    asp.with_page_tables(|pt| {
        let mut g = MmuGather::new(pt);
        let rw = F::PRESENT | F::WRITABLE | F::USER_ACCESSIBLE | F::NO_EXECUTE;
        pt.protect(va(x)..va(x + P), rw, &mut g).unwrap();
        g.finish();
    });
    assert!(err(asp).contains("writable zero page"), "{}", err(asp));
}

#[test]
fn file_pte_must_map_the_page_cache_page_at_its_offset() {
    let h = HostHarness::new();
    let space = h.space();
    let asp = space.asp();
    let f = ramfs_file(h.allocator(), "f", 8 * P, OpenMode::RDWR);
    let x = asp
        .mmap(0x4000_0000, 2 * P, RW, MAP_SHARED | MAP_FIXED, Some(&f), 0)
        .unwrap();
    asp.copy_to_user(x, b"a").unwrap();
    asp.copy_to_user(x + P, b"b").unwrap();
    asp.validate_mm().unwrap();
    // Swap the two PTEs' frames: each now maps the other file page.
    let (a, b) = (asp.translate(x).unwrap(), asp.translate(x + P).unwrap());
    asp.with_page_tables(|pt| {
        let mut g = MmuGather::new(pt);
        pt.unmap(va(x)..va(x + 2 * P), &mut g).unwrap();
        g.finish();
        pt.map(va(x)..va(x + P), b.frame, PageSize::Size4K, b.flags)
            .unwrap();
        pt.map(va(x + P)..va(x + 2 * P), a.frame, PageSize::Size4K, a.flags)
            .unwrap();
    });
    assert!(
        err(asp).contains("not the page-cache page of file index 0x0"),
        "{}",
        err(asp)
    );
}

#[test]
fn vma_below_mmap_min_addr_and_i_mmap_of_another_space() {
    let h = HostHarness::new();
    let space = h.space();
    let asp = space.asp();
    let other = h.space();
    let f = ramfs_file(h.allocator(), "f", 8 * P, OpenMode::RDWR);
    asp.mmap(
        0x4000_0000,
        P,
        PROT_READ,
        MAP_SHARED | MAP_FIXED,
        Some(&f),
        0,
    )
    .unwrap();
    other
        .asp()
        .mmap(
            0x4000_0000,
            P,
            PROT_READ,
            MAP_SHARED | MAP_FIXED,
            Some(&f),
            0,
        )
        .unwrap();
    validate_i_mmap(f.inode(), &[asp, other.asp()]).unwrap();
    let e = validate_i_mmap(f.inode(), &[asp]).expect_err("the other space's VMA is extra");
    assert!(e.contains("i_mmap of inode"), "{e}");
    // A VMA linked at page 1, under mmap_min_addr (only the VMA layer allows that).
    asp.mm()
        .write_lock()
        .map_anon(P, 2 * P, 1, VmFlags::READ | VmFlags::MAYREAD)
        .unwrap();
    assert!(err(asp).contains("outside [mmap_min_addr"), "{}", err(asp));
}
