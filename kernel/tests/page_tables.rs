//! In-kernel tests of page tables on the real MMU: bare page-table roots
//! (`mm::paging::PageTableRoot`, no VMAs, no address space) are loaded in CR3 through
//! the kernel's arch layer (`kernel::arch::mmu`) and touched by the CPU; faults are
//! real page faults.
//!
//! No address space is current while a root is loaded, so the kernel's fault handler
//! resolves nothing here: every fault comes back to the probing access
//! (`probe_read`/`probe_write`) as an error, and the tests that expect one check it.
#![no_std]
#![no_main]
// Test cases are named for what they check; the custom test framework makes them
// items of the test crate, which `missing_docs` would otherwise ask to document.
#![allow(missing_docs)]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::run_tests)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::vec::Vec;
use kernel::address_space;
use kernel::arch::extable::{probe_read, probe_write};
use kernel::arch::mmu;
use kernel::memory::{self, frames};
use mm::paging::{MmuGather, PageSize, PageTableFlags as F, PageTableRoot};
use x86_64::structures::idt::PageFaultErrorCode as Code;
use x86_64::{PhysAddr, VirtAddr};

kernel::test_kernel_main!();

const RW: F = F::PRESENT
    .union(F::WRITABLE)
    .union(F::USER_ACCESSIBLE)
    .union(F::NO_EXECUTE);
const RO: F = F::PRESENT.union(F::USER_ACCESSIBLE).union(F::NO_EXECUTE);
/// A user address far from anything the bootloader left in the lower half.
const BASE: u64 = 0x40_0000_0000; // 256 GiB, 1 GiB aligned

fn va(off: u64) -> VirtAddr {
    VirtAddr::new(BASE + off)
}

/// A new root sharing the kernel half, so it can be loaded.
fn new_root() -> PageTableRoot {
    mmu::new_root().expect("page-table root")
}

/// Allocates a frame of `size`, fills it with `tag` through the direct map, maps it.
fn map_tagged(t: &mut PageTableRoot, at: VirtAddr, size: PageSize, flags: F, tag: u8) -> PhysAddr {
    let order = match size {
        PageSize::Size4K => 0,
        PageSize::Size2M => 9,
        PageSize::Size1G => 18,
    };
    let pa = frames().alloc(order).expect("frame");
    // SAFETY: we own the fresh block; it is mapped in the direct map.
    unsafe { core::ptr::write_bytes(frames().phys_to_virt(pa), tag, size.bytes() as usize) };
    t.map_frame(at, pa, size, flags).expect("map_frame");
    pa
}

fn unmap(t: &mut PageTableRoot, range: core::ops::Range<VirtAddr>) {
    let mut g = MmuGather::new(t);
    t.unmap(range, &mut g).expect("unmap");
    g.finish();
}

fn protect(t: &mut PageTableRoot, range: core::ops::Range<VirtAddr>, flags: F) {
    let mut g = MmuGather::new(t);
    t.protect(range, flags, &mut g).expect("protect");
    g.finish();
}

/// Runs `f` with `t` loaded in CR3, then switches back to the kernel's tables.
fn with_active(t: &mut PageTableRoot, f: impl FnOnce(&mut PageTableRoot)) {
    assert!(
        address_space::current().is_none(),
        "an address space is current: faults would be resolved against it"
    );
    // SAFETY: `t` is borrowed for this whole call and CR3 leaves it below, before we return, so it lives while loaded (were `f` to swap another root in, `PageTableRoot`'s drop leaks a root still active on a CPU rather than freeing it).
    unsafe { mmu::switch_to(t) };
    assert_eq!(mmu::loaded_root(), t.root_phys());
    f(t);
    mmu::switch_to_kernel(t);
}

#[test_case]
fn write_and_read_through_an_activated_mapping() {
    let mut t = new_root();
    let frames_used: Vec<PhysAddr> = (0..4)
        .map(|i| map_tagged(&mut t, va(i * 4096), PageSize::Size4K, RW, 0))
        .collect();
    with_active(&mut t, |_| {
        for i in 0..4u64 {
            let p = (BASE + i * 4096 + 8 * i) as *mut u64;
            // SAFETY: the page is mapped writable in the loaded root; no Rust object lives there.
            unsafe { p.write_volatile(0x1111_0000 + i) };
            // SAFETY: as above, reading back what we wrote.
            assert_eq!(unsafe { p.read_volatile() }, 0x1111_0000 + i);
        }
    });
    for (i, pa) in frames_used.iter().enumerate() {
        // SAFETY: the frame is still mapped (and owned) by `t`; reading through the direct map.
        let v = unsafe { (frames().phys_to_virt(*pa).add(8 * i) as *const u64).read_volatile() };
        assert_eq!(v, 0x1111_0000 + i as u64, "the write reached frame {i}");
    }
}

#[test_case]
fn read_only_protection_makes_writes_fault() {
    let mut t = new_root();
    map_tagged(&mut t, va(0), PageSize::Size4K, RW, 0x33);
    with_active(&mut t, |t| {
        probe_write(va(0), 0x44).expect("writable before protect");
        protect(t, va(0)..va(4096), RO);
        let err = probe_write(va(0), 0x55).expect_err("write to a read-only page must fault");
        let code = Code::from_bits_truncate(err.error_code);
        assert!(
            code.contains(Code::PROTECTION_VIOLATION | Code::CAUSED_BY_WRITE),
            "{code:?}"
        );
        assert_eq!(
            probe_read(va(0)),
            Ok(0x44),
            "reads still work and see the old write"
        );
        protect(t, va(0)..va(4096), RW);
        probe_write(va(0), 0x66).expect("writable again");
    });
}

#[test_case]
fn unmapped_page_gives_a_not_present_fault() {
    let mut t = new_root();
    map_tagged(&mut t, va(0), PageSize::Size4K, RW, 0x7e);
    with_active(&mut t, |t| {
        assert_eq!(probe_read(va(0)), Ok(0x7e));
        unmap(t, va(0)..va(4096));
        let err = probe_read(va(0)).expect_err("unmapped");
        assert!(!Code::from_bits_truncate(err.error_code).contains(Code::PROTECTION_VIOLATION));
        assert_eq!(err.addr, va(0));
    });
}

#[test_case]
fn two_mib_page_both_ends() {
    let mut t = new_root();
    let at = va(0x20_0000);
    let pa = map_tagged(&mut t, at, PageSize::Size2M, RW, 0);
    with_active(&mut t, |_| {
        probe_write(at, 0xa1).unwrap();
        probe_write(at + (PageSize::Size2M.bytes() - 1), 0xa2).unwrap();
    });
    let tr = t.translate(at + 5u64).unwrap();
    assert_eq!(tr.size, PageSize::Size2M);
    assert_eq!(tr.phys, pa + 5u64);
    // SAFETY: the block is owned by `t`'s mapping; reading through the direct map.
    let (first, last) = unsafe {
        let p = frames().phys_to_virt(pa);
        (
            p.read_volatile(),
            p.add(PageSize::Size2M.bytes() as usize - 1).read_volatile(),
        )
    };
    assert_eq!((first, last), (0xa1, 0xa2));
}

#[test_case]
fn one_gib_page_both_ends() {
    let mut t = new_root();
    let at = va(1 << 30);
    let pa = map_tagged(&mut t, at, PageSize::Size1G, RW, 0);
    with_active(&mut t, |_| {
        probe_write(at, 0xb1).unwrap();
        probe_write(at + (PageSize::Size1G.bytes() - 1), 0xb2).unwrap();
        assert_eq!(probe_read(at + (PageSize::Size1G.bytes() / 2)), Ok(0));
    });
    let tr = t.translate(at + 0x1234_5678u64).unwrap();
    assert_eq!((tr.size, tr.phys), (PageSize::Size1G, pa + 0x1234_5678u64));
    // SAFETY: owned by the mapping; direct-map read.
    let last = unsafe { frames().phys_to_virt(pa).add((1 << 30) - 1).read_volatile() };
    assert_eq!(last, 0xb2);
}

#[test_case]
fn translate_agrees_with_the_hardware() {
    let mut t = new_root();
    for i in 0..8u64 {
        map_tagged(&mut t, va(0x10_0000 + i * 0x3000), PageSize::Size4K, RW, 0);
    }
    map_tagged(&mut t, va(0x40_0000), PageSize::Size2M, RW, 0);
    let addrs: Vec<VirtAddr> = (0..8u64)
        .map(|i| va(0x10_0000 + i * 0x3000 + i * 17))
        .chain([va(0x40_0000 + 0x12345)])
        .collect();
    with_active(&mut t, |_| {
        for (i, a) in addrs.iter().enumerate() {
            probe_write(*a, 0xc0 + i as u8).unwrap();
        }
    });
    for (i, a) in addrs.iter().enumerate() {
        let tr = t.translate(*a).expect("mapped");
        // SAFETY: the frame is owned by the mapping; direct-map read of one byte.
        let b = unsafe { frames().phys_to_virt(tr.phys).read_volatile() };
        assert_eq!(
            b,
            0xc0 + i as u8,
            "translate({a:?}) points where the CPU wrote"
        );
        assert!(
            tr.flags.contains(F::DIRTY | F::ACCESSED),
            "hardware set A/D: {:?}",
            tr.flags
        );
    }
}

#[test_case]
fn emptied_page_table_pages_are_freed() {
    let before = memory::usage();
    let mut t = new_root();
    let after_root = memory::usage();
    assert_eq!(after_root.frames, before.frames + 1, "only the PML4");
    // Pages in three different PT tables, two PD tables and two PDPT tables.
    let spots = [va(0), va(0x20_0000), va(1 << 30), va(512 << 30)];
    for s in spots {
        map_tagged(&mut t, s, PageSize::Size4K, RW, 1);
    }
    let (leaves, tables) = t.count_user();
    assert_eq!(leaves, 4);
    assert!(
        tables >= 4 + 3 + 2,
        "PTs, PDs and PDPTs allocated: {tables}"
    );
    for s in spots {
        unmap(&mut t, s..s + 4096u64);
    }
    assert_eq!(t.count_user(), (0, 0), "every emptied table freed");
    assert_eq!(memory::usage(), after_root);
}

#[test_case]
fn shared_pmd_table_survives_one_sharer_and_is_freed_after_the_last() {
    let before = memory::usage();
    let mut a = new_root();
    let mut b = new_root();
    let at_a = va(0);
    let at_b = va(4 << 30);
    map_tagged(&mut a, at_a, PageSize::Size2M, RW, 0x5a);
    let table = a.pmd_table_at(at_a).expect("A has a PD table");
    b.share_pmd_with(at_b, &a, at_a).expect("share");
    assert_eq!(
        frames().meta(table).unwrap().pt_share_count(),
        1,
        "one additional sharer"
    );
    with_active(&mut b, |_| {
        assert_eq!(probe_read(at_b + 0x1000u64), Ok(0x5a))
    });
    drop(a); // the first sharer goes away: the table must stay for B
    assert_eq!(b.pmd_table_at(at_b), Some(table));
    assert_eq!(frames().meta(table).unwrap().pt_share_count(), 0);
    with_active(&mut b, |_| {
        probe_write(at_b + 0x1fffffu64, 0x5b).unwrap();
        assert_eq!(
            probe_read(at_b),
            Ok(0x5a),
            "B still sees the data through the table"
        );
    });
    drop(b);
    assert_eq!(
        memory::usage(),
        before,
        "table, data and roots all freed after the last sharer"
    );
}

#[test_case]
fn dropping_a_root_frees_everything() {
    let before = memory::usage();
    let mut t = new_root();
    for i in 0..600u64 {
        map_tagged(
            &mut t,
            va(i * 0x5000 + (i % 7) * (1 << 30)),
            PageSize::Size4K,
            RW,
            0,
        );
    }
    map_tagged(&mut t, va(100 << 30), PageSize::Size2M, RW, 0);
    assert!(memory::usage().frames > before.frames + 600);
    drop(t);
    assert_eq!(memory::usage(), before);
}

/// A permission upgrade that skips the TLB flush (as Linux's `mprotect` may) leaves a
/// stale read-only entry. Nothing resolves faults here, so the probe sees any fault
/// it causes: x86 drops the faulting address's TLB entries on a page fault (SDM Vol.
/// 3A §4.10.4.1), so at most one write faults, with a write protection violation, and
/// the retried write (what restarting the instruction after a spurious fault does)
/// goes through without a flush. Under TCG the stale entry is re-walked on the write
/// and no fault happens at all.
#[test_case]
fn upgrade_without_flush_costs_at_most_one_fault() {
    let mut t = new_root();
    map_tagged(&mut t, va(0), PageSize::Size4K, RO, 9);
    with_active(&mut t, |t| {
        assert_eq!(probe_read(va(0)), Ok(9)); // the read-only entry may now be in the TLB
        let mut g = MmuGather::new(t);
        t.protect(va(0)..va(4096), RW, &mut g).unwrap();
        // Leave the TLB stale on purpose (Linux skips flushes on upgrades too).
        core::mem::forget(g);
        if let Err(e) = probe_write(va(0), 10) {
            let code = Code::from_bits_truncate(e.error_code);
            assert!(
                code.contains(Code::PROTECTION_VIOLATION | Code::CAUSED_BY_WRITE),
                "only a stale read-only entry may fault: {code:?}"
            );
            assert_eq!(e.addr, va(0));
            probe_write(va(0), 10).expect("the fault dropped the stale entry");
        }
        assert_eq!(probe_read(va(0)), Ok(10));
    });
}

#[test_case]
fn fault_with_no_address_space_is_a_segv() {
    assert!(address_space::current().is_none());
    assert!(probe_read(va(0)).is_err());
}

/// xorshift64*: a small deterministic generator for the randomised test.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test_case]
fn random_map_unmap_protect_matches_a_shadow_model() {
    const PAGES: usize = 48;
    // The window straddles a 2 MiB boundary so several tables come and go.
    let start = BASE + 0x20_0000 - 24 * 4096;
    let page = |i: usize| VirtAddr::new(start + i as u64 * 4096);
    let mut t = new_root();
    // Model: per page, None or Some((tag, writable)).
    let mut model: [Option<(u8, bool)>; PAGES] = [None; PAGES];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    with_active(&mut t, |t| {
        for step in 0..150 {
            let a = rng.below(PAGES as u64) as usize;
            let b = (a + 1 + rng.below(8) as usize).min(PAGES);
            match rng.below(3) {
                0 => {
                    for (i, slot) in model.iter_mut().enumerate().take(b).skip(a) {
                        if slot.is_none() {
                            let tag = (step as u8).wrapping_mul(7).wrapping_add(i as u8) | 1;
                            let w = rng.below(2) == 0;
                            map_tagged(t, page(i), PageSize::Size4K, if w { RW } else { RO }, tag);
                            *slot = Some((tag, w));
                        }
                    }
                }
                1 => {
                    unmap(t, page(a)..page(b));
                    model[a..b].iter_mut().for_each(|s| *s = None);
                }
                _ => {
                    let w = rng.below(2) == 0;
                    protect(t, page(a)..page(b), if w { RW } else { RO });
                    for (tag_w, _) in model[a..b].iter_mut().flatten().map(|m| (&mut m.1, ())) {
                        *tag_w = w;
                    }
                }
            }
            for (i, m) in model.iter().enumerate() {
                let got = probe_read(page(i));
                match m {
                    None => assert!(got.is_err(), "step {step}: page {i} should be unmapped"),
                    Some((tag, w)) => {
                        assert_eq!(got, Ok(*tag), "step {step}: page {i} content");
                        assert_eq!(
                            probe_write(page(i), *tag).is_ok(),
                            *w,
                            "step {step}: page {i} writability"
                        );
                    }
                }
            }
        }
    });
}
