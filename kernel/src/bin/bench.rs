//! The benchmark kernel (`./run-qemu.sh --bench`): one `BENCH` line per figure.
#![no_std]
#![no_main]

use bootloader_api::BootInfo;
use kernel::address_space::AddressSpace;
use kernel::arch::qemu::{self, ExitCode};
use kernel::arch::tsc;
use kernel::bench;
use kernel::memory::frames;
use mm::paging::{MmuGather, PageSize, PageTableFlags as F};
use x86_64::VirtAddr;

const RW: F = F::PRESENT
    .union(F::WRITABLE)
    .union(F::USER_ACCESSIBLE)
    .union(F::NO_EXECUTE);
const RO: F = F::PRESENT.union(F::USER_ACCESSIBLE).union(F::NO_EXECUTE);
const BASE: u64 = 0x40_0000_0000;

bootloader_api::entry_point!(bench_main, config = &kernel::BOOT_CONFIG);

fn bench_main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info, true);
    kernel::serial_println!("bench: TSC {} MHz", kernel::arch::tsc::hz() / 1_000_000);

    for order in [0usize, 9] {
        let name = alloc_free_name(order);
        bench::run(name, 100_000, |_| {
            let pa = frames().alloc(order).expect("bench: out of memory");
            frames().free(pa, order).expect("bench: free");
        });
    }

    page_table_benches();
    vma_benches();

    kernel::serial_println!("bench: done");
    qemu::exit(ExitCode::Success)
}

fn alloc_free_name(order: usize) -> &'static str {
    match order {
        0 => "frame_alloc_free_order0",
        _ => "frame_alloc_free_order9",
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    kernel::serial::emergency_print(format_args!("\nbench kernel panic: {info}\n"));
    qemu::exit(ExitCode::Failed)
}

/// Issue 3's figures: map+unmap of one 4 KiB page, protect of a 512-page range,
/// map of a 2 MiB page, and address-space teardown per mapped page.
fn page_table_benches() {
    let mm = AddressSpace::new().expect("bench: address space");
    let at = VirtAddr::new(BASE);
    // Keep one page mapped nearby so the map+unmap pair measures the leaf work, not
    // allocating and freeing the whole table path each time.
    let anchor = frames().alloc(0).unwrap();
    mm.with_tables(|t| t.map_frame(at + 0x10_0000u64, anchor, PageSize::Size4K, RW))
        .unwrap();
    bench::run("pt_map_unmap_4k", 20_000, |_| {
        let pa = frames().alloc(0).unwrap();
        mm.with_tables(|t| {
            t.map_frame(at, pa, PageSize::Size4K, RW).unwrap();
            let mut g = MmuGather::new(t);
            t.unmap(at..at + 4096u64, &mut g).unwrap();
            g.finish();
        });
    });

    for i in 0..512u64 {
        let pa = frames().alloc(0).unwrap();
        mm.with_tables(|t| t.map_frame(at + (0x20_0000 + i * 4096), pa, PageSize::Size4K, RW))
            .unwrap();
    }
    let range = at + 0x20_0000u64..at + (0x20_0000 + 512 * 4096u64);
    bench::run("pt_protect_512_pages", 2_000, |i| {
        let flags = if i % 2 == 0 { RO } else { RW };
        mm.with_tables(|t| {
            let mut g = MmuGather::new(t);
            t.protect(range.clone(), flags, &mut g).unwrap();
            g.finish();
        });
    });

    let huge = at + 0x4000_0000u64;
    let mut total = 0u64;
    let ops = 2_000u64;
    for _ in 0..ops {
        let pa = frames().alloc(9).unwrap();
        let start = tsc::rdtsc();
        mm.with_tables(|t| t.map_frame(huge, pa, PageSize::Size2M, RW))
            .unwrap();
        total += tsc::rdtsc() - start;
        mm.with_tables(|t| {
            let mut g = MmuGather::new(t);
            t.unmap(huge..huge + PageSize::Size2M.bytes(), &mut g)
                .unwrap();
            g.finish();
        });
    }
    bench::report("pt_map_2m", tsc::cycles_to_ns(total) / ops, ops);
    drop(mm);

    const PAGES: u64 = 10_000;
    let mut total = 0u64;
    let rounds = 5;
    for _ in 0..rounds {
        let mm = AddressSpace::new().unwrap();
        for i in 0..PAGES {
            let pa = frames().alloc(0).unwrap();
            mm.with_tables(|t| t.map_frame(at + i * 4096, pa, PageSize::Size4K, RW))
                .unwrap();
        }
        let start = tsc::rdtsc();
        drop(mm);
        total += tsc::rdtsc() - start;
    }
    bench::report(
        "pt_teardown_per_page_10000",
        tsc::cycles_to_ns(total) / (rounds * PAGES),
        rounds * PAGES,
    );
}

/// Issue 4's figures: VMA lookup at 10, 1,000 and 65,530 VMAs (under the mmap read
/// lock and lock-free, as the fault path does it), and an mprotect-style
/// split+re-merge pair in the middle of the largest tree.
fn vma_benches() {
    use mm::vma::bench as vb;
    for (n, find_name, rcu_name) in [
        (10usize, "vma_find_10", "vma_find_rcu_10"),
        (1_000, "vma_find_1000", "vma_find_rcu_1000"),
        (65_530, "vma_find_65530", "vma_find_rcu_65530"),
    ] {
        let mm = vb::build_mm(n).expect("bench: build_mm");
        // Spread the lookups over the whole tree with a multiplicative hash.
        let pick = |i: u64| vb::addr(((i.wrapping_mul(0x9e37_79b9) >> 7) as usize) % n) + 4096;
        bench::run(find_name, 200_000, |i| {
            core::hint::black_box(vb::find(&mm, pick(i)).expect("bench: VMA present"));
        });
        bench::run(rcu_name, 200_000, |i| {
            core::hint::black_box(vb::find_rcu(&mm, pick(i)).expect("bench: VMA present"));
        });
    }
    // `build_mm` raises max_map_count a little above n: at exactly 65,530 VMAs
    // Linux's default limit would refuse the split with ENOMEM.
    let n = 65_530;
    let mm = vb::build_mm(n).expect("bench: build_mm");
    bench::run("vma_split_remerge_pair_65530", 20_000, |i| {
        vb::split_remerge(&mm, n / 2 + (i as usize % 64)).expect("bench: split+re-merge");
    });
}
