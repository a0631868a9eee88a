//! The benchmark kernel (`./run-qemu.sh --bench`): one `BENCH` line per figure.
#![no_std]
#![no_main]

extern crate alloc;

use bootloader_api::BootInfo;
use kernel::arch::mmu;
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

    // `SMP_ONLY=1 ./run-qemu.sh --bench --smp 2`: the fault-scaling figures alone.
    if option_env!("SMP_ONLY").is_some() {
        smp_fault_benches();
        qemu::exit(ExitCode::Success)
    }
    for order in [0usize, 9] {
        let name = alloc_free_name(order);
        bench::run(name, 100_000, |_| {
            let pa = frames().alloc(order).expect("bench: out of memory");
            frames().free(pa, order).expect("bench: free");
        });
    }

    page_table_benches();
    vma_benches();
    mmap_benches();
    fork_benches();
    smp_benches();
    rcu_benches();
    smp_fault_benches();
    hugetlb_benches();

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
    kernel::serial::emergency_print(format_args!(
        "\nbench kernel panic on CPU {}: {info}\n",
        kernel::percpu::this_cpu()
    ));
    qemu::exit(ExitCode::Failed)
}

/// Issue 3's figures: map+unmap of one 4 KiB page, protect of a 512-page range,
/// map of a 2 MiB page, and address-space teardown per mapped page, on a bare
/// page-table root (the page-table layer alone, no VMAs).
fn page_table_benches() {
    let t = mmu::new_root().expect("bench: page-table root");
    let at = VirtAddr::new(BASE);
    // Keep one page mapped nearby so the map+unmap pair measures the leaf work, not
    // allocating and freeing the whole table path each time.
    let anchor = frames().alloc(0).unwrap();
    t.map_frame(at + 0x10_0000u64, anchor, PageSize::Size4K, RW)
        .unwrap();
    bench::run("pt_map_unmap_4k", 20_000, |_| {
        let pa = frames().alloc(0).unwrap();
        t.map_frame(at, pa, PageSize::Size4K, RW).unwrap();
        let mut g = MmuGather::new(&t);
        t.unmap(at..at + 4096u64, &mut g).unwrap();
        g.finish();
    });

    for i in 0..512u64 {
        let pa = frames().alloc(0).unwrap();
        t.map_frame(at + (0x20_0000 + i * 4096), pa, PageSize::Size4K, RW)
            .unwrap();
    }
    let range = at + 0x20_0000u64..at + (0x20_0000 + 512 * 4096u64);
    bench::run("pt_protect_512_pages", 2_000, |i| {
        let flags = if i % 2 == 0 { RO } else { RW };
        let mut g = MmuGather::new(&t);
        t.protect(range.clone(), flags, &mut g).unwrap();
        g.finish();
    });

    let huge = at + 0x4000_0000u64;
    let mut total = 0u64;
    let ops = 2_000u64;
    for _ in 0..ops {
        let pa = frames().alloc(9).unwrap();
        let start = tsc::rdtsc();
        t.map_frame(huge, pa, PageSize::Size2M, RW).unwrap();
        total += tsc::rdtsc() - start;
        let mut g = MmuGather::new(&t);
        t.unmap(huge..huge + PageSize::Size2M.bytes(), &mut g)
            .unwrap();
        g.finish();
    }
    bench::report("pt_map_2m", tsc::cycles_to_ns(total) / ops, ops);
    drop(t);

    const PAGES: u64 = 10_000;
    let mut total = 0u64;
    let rounds = 5;
    for _ in 0..rounds {
        let t = mmu::new_root().unwrap();
        for i in 0..PAGES {
            let pa = frames().alloc(0).unwrap();
            t.map_frame(at + i * 4096, pa, PageSize::Size4K, RW)
                .unwrap();
        }
        let start = tsc::rdtsc();
        drop(t);
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
    // Not a time: the tree's memory (nodes in the tree, cached and awaiting a grace
    // period) divided by the VMAs it indexes, in bytes, printed in the ns column.
    let g = mm.write_lock();
    let bytes = g.tree_bytes();
    bench::report("vma_tree_bytes_per_vma_65530", (bytes / n) as u64, n as u64);
    // Not a time either: the tree's height in nodes, in the ns column.
    bench::report("vma_tree_height_65530", g.view().height() as u64, n as u64);
}

/// Issue 5's figures, op for op with Linux 6.12 under the same QEMU: an anonymous
/// 4 KiB mmap+munmap pair, an mprotect split+re-merge pair (one page in the middle
/// of a 64-page VMA), first-touch write faults (8,192 pages, through the real #PF
/// handler), and first touches spread over 10,000 separate VMAs; then (issue 15) the
/// mprotect pair again among 64,000 VMAs.
fn mmap_benches() {
    use kernel::address_space;
    use kernel::arch::extable::probe_write;
    use mm::mmap::*;
    const P: usize = 4096;
    const RW: u32 = PROT_READ | PROT_WRITE;
    const ANON: u32 = MAP_PRIVATE | MAP_ANONYMOUS;

    let mm = address_space::new_user_space(MmLayout::default()).expect("bench: address space");
    address_space::activate(&mm);
    // A neighbour keeps the page-table path alive, as in a real process.
    let anchor = mm.mmap(0, P, PROT_READ, ANON, None, 0).unwrap();
    bench::run("mmap_munmap_4k", 20_000, |_| {
        let a = mm.mmap(0, P, RW, ANON, None, 0).expect("bench: mmap");
        mm.munmap(a, P).expect("bench: munmap");
    });

    let big = mm.mmap(0, 64 * P, RW, ANON, None, 0).unwrap();
    bench::run("mprotect_split_merge_pair", 20_000, |_| {
        mm.mprotect(big + 32 * P, P, PROT_READ)
            .expect("bench: mprotect");
        mm.mprotect(big + 32 * P, P, RW)
            .expect("bench: mprotect back");
    });
    mm.munmap(big, 64 * P).unwrap();

    const FAULT_PAGES: usize = 8_192;
    let mut total = 0u64;
    let rounds = 4u64;
    for _ in 0..rounds {
        let a = mm.mmap(0, FAULT_PAGES * P, RW, ANON, None, 0).unwrap();
        let start = tsc::rdtsc();
        for i in 0..FAULT_PAGES {
            probe_write(VirtAddr::new((a + i * P) as u64), 1).expect("bench: fault");
        }
        total += tsc::rdtsc() - start;
        mm.munmap(a, FAULT_PAGES * P).unwrap();
    }
    let ops = rounds * FAULT_PAGES as u64;
    bench::report("anon_fault_4k", tsc::cycles_to_ns(total) / ops, ops);

    // 10,000 separate VMAs: alternate protections so neighbours never merge.
    const NVMAS: usize = 10_000;
    let base = mm.mmap(0, NVMAS * P, RW, ANON, None, 0).unwrap();
    for i in (0..NVMAS).step_by(2) {
        mm.mprotect(base + i * P, P, PROT_READ | PROT_WRITE | PROT_EXEC)
            .unwrap();
    }
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut order: alloc::vec::Vec<usize> = (0..NVMAS).collect();
    for i in (1..NVMAS).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let start = tsc::rdtsc();
    for &i in &order {
        probe_write(VirtAddr::new((base + i * P) as u64), 1).expect("bench: fault");
    }
    let ns = tsc::cycles_to_ns(tsc::rdtsc() - start) / NVMAS as u64;
    bench::report("fault_among_10000_vmas", ns, NVMAS as u64);
    mm.munmap(base, NVMAS * P).unwrap();

    // Issue 15: the same syscall-shaped pair in an address space of 64,000 VMAs, made
    // as Linux's peer makes them: a PROT_NONE region of 64,000 pages with every other
    // page made PROT_READ (32,000 readable and 32,000 PROT_NONE VMAs alternate); the
    // pair then splits and re-merges one page of a separate 64-page RW mapping.
    const NBIG: usize = 64_000;
    let region = mm.mmap(0, NBIG * P, PROT_NONE, ANON, None, 0).unwrap();
    for i in (0..NBIG).step_by(2) {
        mm.mprotect(region + i * P, P, PROT_READ).unwrap();
    }
    let big = mm.mmap(0, 64 * P, RW, ANON, None, 0).unwrap();
    bench::run("mprotect_split_merge_pair_65k", 20_000, |_| {
        mm.mprotect(big + 32 * P, P, PROT_READ)
            .expect("bench: mprotect");
        mm.mprotect(big + 32 * P, P, RW)
            .expect("bench: mprotect back");
    });
    {
        // Not times: the tree's height and bytes per VMA in that space.
        let g = mm.mm().read_lock();
        let n = g.view().validate().expect("bench: tree") as u64;
        bench::report("vma_tree_height_64k_mprotect", g.view().height() as u64, n);
    }
    mm.munmap(big, 64 * P).unwrap();
    mm.munmap(region, NBIG * P).unwrap();
    mm.munmap(anchor, P).unwrap();
    address_space::deactivate_current();
}

/// Issue 14's figures: fork of an address space (Linux: `dup_mm` → `dup_mmap`) then
/// teardown of the child (`exit_mmap`), with nothing and with 16 MiB of anonymous
/// memory touched, and one copy-on-write fault (`do_wp_page` copying a page the parent
/// shares with a live child). Linux's `fork_exit_*` figures also create and schedule a
/// process, so these are not the same work and are printed without a ratio.
///
/// The parent has a typical small-process layout ([`typical_layout`]): a program and
/// three libraries mapped from files (text, read-only data, data), a heap, an
/// anonymous mapping with a guard page, and a stack.
fn fork_benches() {
    use kernel::address_space;
    use kernel::arch::extable::probe_write;
    use mm::mmap::*;
    const P: usize = 4096;
    const TOUCHED: usize = 16 << 20;
    const PAGES: usize = TOUCHED / P;

    let (mm, _files) = typical_layout();
    address_space::activate(&mm);
    let nvmas = mm.map_count();
    kernel::serial_println!("bench: fork parent has {nvmas} VMAs");
    bench::run("dup_mmap_exit_0MiB", 2_000, |_| {
        let child = address_space::fork(&mm).expect("bench: fork");
        drop(child);
    });

    // 16 MiB written: every page present, writable and exclusive to the parent.
    let big = mm
        .mmap(
            0,
            TOUCHED,
            PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS,
            None,
            0,
        )
        .expect("bench: mmap 16 MiB");
    let write_all = |v: u8| {
        for i in 0..PAGES {
            probe_write(VirtAddr::new((big + i * P) as u64), v).expect("bench: write");
        }
    };
    write_all(1);
    // Each fork write-protects the parent's pages; rewriting them (untimed) after the
    // child is gone makes them writable again (reused in place, no copy), so every
    // timed fork starts from freshly written memory, as a process forking between
    // bursts of work does.
    let rounds = 40u64;
    let mut total = 0u64;
    for r in 0..rounds + 2 {
        let start = tsc::rdtsc();
        let child = address_space::fork(&mm).expect("bench: fork");
        drop(child);
        if r >= 2 {
            total += tsc::rdtsc() - start;
        }
        write_all(r as u8);
    }
    bench::report(
        "dup_mmap_exit_16MiB",
        tsc::cycles_to_ns(total) / rounds,
        rounds,
    );

    // Copy-on-write: fork (untimed) shares the 16 MiB with a child, then every timed
    // write in the parent copies one page; the child is dropped untimed.
    let rounds = 4u64;
    let mut total = 0u64;
    for r in 0..rounds + 1 {
        let child = address_space::fork(&mm).expect("bench: fork");
        // Table pages of earlier rounds go back after a grace period, from the tick:
        // settle them so they do not show in the count below.
        mm::sync::rcu::rcu_barrier();
        let frames0 = kernel::memory::usage().frames;
        let start = tsc::rdtsc();
        write_all(0x80 | r as u8);
        if r >= 1 {
            total += tsc::rdtsc() - start;
        }
        // Every write copied its page (one new frame each).
        assert_eq!(
            kernel::memory::usage().frames - frames0,
            PAGES as u64,
            "bench: a copy per write"
        );
        drop(child);
    }
    let ops = rounds * PAGES as u64;
    bench::report("cow_fault_4k", tsc::cycles_to_ns(total) / ops, ops);

    mm.munmap(big, TOUCHED).unwrap();
    address_space::deactivate_current();
}

/// A small process's address space for the fork figures: a program and three
/// libraries from files, each as text (r-x), read-only data (r--) and data (rw-,
/// private); a heap low in the space, an anonymous mapping split by a PROT_NONE guard
/// page, and a 32-page GROWSDOWN stack. Nothing is touched. Returns the space and its files
/// (kept alive with it).
fn typical_layout() -> (
    alloc::sync::Arc<mm::mmap::AddressSpace>,
    alloc::vec::Vec<alloc::sync::Arc<mm::file::File>>,
) {
    use kernel::address_space;
    use mm::file::{OpenMode, ramfs_file};
    use mm::mmap::*;
    const P: usize = 4096;
    let mm = address_space::new_user_space(MmLayout::default()).expect("bench: address space");
    let mut files = alloc::vec::Vec::new();
    for name in ["/bin/prog", "/lib/libc.so", "/lib/libm.so", "/lib/ld.so"] {
        let f = ramfs_file(frames(), name, 16 * P, OpenMode::RDONLY);
        // Text, read-only data and data at consecutive offsets, placed together.
        let base = mm
            .mmap(0, 16 * P, PROT_READ, MAP_PRIVATE, Some(&f), 0)
            .expect("bench: reserve");
        let segs = [
            (0, 8, PROT_READ | PROT_EXEC),
            (8, 4, PROT_READ),
            (12, 4, PROT_READ | PROT_WRITE),
        ];
        for (off, n, prot) in segs {
            mm.mmap(
                base + off * P,
                n * P,
                prot,
                MAP_PRIVATE | MAP_FIXED,
                Some(&f),
                (off * P) as u64,
            )
            .expect("bench: segment");
        }
        files.push(f);
    }
    const ANON: u32 = MAP_PRIVATE | MAP_ANONYMOUS;
    const RW: u32 = PROT_READ | PROT_WRITE;
    // The heap low, after where a program would be loaded (brk's place).
    mm.mmap(0x0100_0000, 64 * P, RW, ANON | MAP_FIXED, None, 0)
        .expect("bench: heap");
    let a = mm.mmap(0, 33 * P, RW, ANON, None, 0).expect("bench: anon");
    mm.mprotect(a + 16 * P, P, PROT_NONE).expect("bench: guard");
    let top = 0x7fff_f000_0000usize;
    mm.mmap(
        top - 32 * P,
        32 * P,
        RW,
        ANON | MAP_GROWSDOWN | MAP_FIXED,
        None,
        0,
    )
    .expect("bench: stack");
    (mm, files)
}

/// hugetlb: the first touch of a 2 MiB page (zeroing included), a fault that shares an
/// existing PD table, and the page-table pages 16 address spaces use for one 1 GiB
/// file with and without PMD sharing (those two print a page count, not ns, in the
/// `ns_per_op` column).
fn hugetlb_benches() {
    use kernel::address_space;
    use kernel::arch::extable::probe_write;
    use mm::file::OpenMode;
    use mm::file::hugetlbfs::hugetlbfs_file;
    use mm::hugetlb::{self, HugeSize};
    use mm::mmap::*;
    const M2: usize = 2 << 20;
    const G1: usize = 1 << 30;
    const HBASE: usize = 1 << 40;
    const RW: u32 = PROT_READ | PROT_WRITE;

    let h = hugetlb::hstate(frames(), HugeSize::Size2M).expect("bench: hstate");
    const NPAGES: usize = 512;
    assert_eq!(
        h.set_nr_hugepages(NPAGES),
        NPAGES,
        "bench: 1 GiB of 2 MiB pages"
    );

    // First touch of a 2 MiB page: hugetlb_fault → hugetlb_no_page (zeroing 2 MiB).
    let mm = address_space::new_user_space(MmLayout::default()).expect("bench: address space");
    address_space::activate(&mm);
    const FAULTS: usize = 64;
    let (mut total, rounds) = (0u64, 4u64);
    for _ in 0..rounds {
        let fl = MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB;
        let a = mm.mmap(0, FAULTS * M2, RW, fl, None, 0).unwrap();
        let start = tsc::rdtsc();
        for i in 0..FAULTS {
            probe_write(VirtAddr::new((a + i * M2) as u64), 1).expect("bench: fault");
        }
        total += tsc::rdtsc() - start;
        mm.munmap(a, FAULTS * M2).unwrap();
    }
    let ops = rounds * FAULTS as u64;
    bench::report("hugetlb_fault_2m", tsc::cycles_to_ns(total) / ops, ops);
    address_space::deactivate_current();
    drop(mm);

    // A fault that shares an existing PD table (the page is in the page cache).
    let f = hugetlbfs_file(
        frames(),
        HugeSize::Size2M,
        G1,
        "/bench/huge",
        OpenMode::RDWR,
    )
    .expect("bench: file");
    let fl = MAP_SHARED | MAP_FIXED;
    let owner = address_space::new_user_space(MmLayout::default()).unwrap();
    owner.mmap(HBASE, G1, RW, fl, Some(&f), 0).unwrap();
    owner.handle_fault(HBASE, Access::Read).unwrap();
    let (mut total, rounds) = (0u64, 200u64);
    for _ in 0..rounds {
        let b = address_space::new_user_space(MmLayout::default()).unwrap();
        b.mmap(HBASE, G1, RW, fl, Some(&f), 0).unwrap();
        let start = tsc::rdtsc();
        b.handle_fault(HBASE, Access::Read).unwrap();
        total += tsc::rdtsc() - start;
        assert!(b.with_page_tables(|p| p.is_pmd_shared(VirtAddr::new(HBASE as u64))));
    }
    bench::report(
        "hugetlb_share_fault_2m",
        tsc::cycles_to_ns(total) / rounds,
        rounds,
    );
    drop(owner);

    // Page-table pages of 16 spaces mapping the whole file: MAP_SHARED shares one PD
    // table; MAP_PRIVATE (read faults map the cache pages; MAP_NORESERVE, as the pool
    // is all in the page cache by then) never shares.
    for (name, flags) in [
        ("pt_pages_16x1g_shared", MAP_SHARED | MAP_FIXED),
        (
            "pt_pages_16x1g_private",
            MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE,
        ),
    ] {
        // Fill the page cache first, so only page-table pages are counted.
        let warm = address_space::new_user_space(MmLayout::default()).unwrap();
        warm.mmap(HBASE, G1, RW, MAP_SHARED | MAP_FIXED, Some(&f), 0)
            .unwrap();
        for i in 0..G1 / M2 {
            warm.handle_fault(HBASE + i * M2, Access::Read).unwrap();
        }
        drop(warm);
        let mut spaces = alloc::vec::Vec::new();
        for _ in 0..16 {
            let s = address_space::new_user_space(MmLayout::default()).unwrap();
            s.mmap(HBASE, G1, PROT_READ, flags, Some(&f), 0).unwrap();
            for i in 0..G1 / M2 {
                s.handle_fault(HBASE + i * M2, Access::Read).unwrap();
            }
            spaces.push(s);
        }
        // User-half table pages (each space's PML4 is there either way), a shared PD
        // table counted once.
        let mut pds: alloc::vec::Vec<u64> = spaces
            .iter()
            .filter_map(|s| s.with_page_tables(|p| p.pmd_table_at(VirtAddr::new(HBASE as u64))))
            .map(|pa| pa.as_u64())
            .collect();
        let per_space: u64 = spaces
            .iter()
            .map(|s| s.with_page_tables(|p| p.count_user().1))
            .sum();
        let listed = pds.len() as u64;
        pds.sort_unstable();
        pds.dedup();
        let tables = per_space - (listed - pds.len() as u64);
        bench::report(name, tables, 16);
        drop(spaces);
    }
    drop(f);
    h.set_nr_hugepages(0);
}

/// RCU's figures (issue 12): a read-side section entered and left
/// (`rcu_read_lock_unlock`: this CPU's own cache line and one fence), and a
/// `synchronize_rcu` on CPU 0 while every other online CPU idles (`synchronize_rcu`:
/// start a grace period, observe each CPU outside any section, end it; with `--smp N`
/// the N - 1 idle CPUs are observed, not interrupted).
fn rcu_benches() {
    use mm::sync::rcu::{rcu_read_lock, synchronize_rcu};
    bench::run("rcu_read_lock_unlock", 1_000_000, |_| {
        drop(core::hint::black_box(rcu_read_lock()));
    });
    bench::run("synchronize_rcu", 20_000, |_| synchronize_rcu());
}

/// Issue 11's figures (`./run-qemu.sh --bench --smp 4`): a cross-call to one other CPU
/// and back (`ipi_roundtrip`), and a TLB shootdown of one page and a full one of an
/// address space loaded on every online CPU (`_<N>cpus`: N CPUs in its mask, N - 1
/// IPIs per flush). With one CPU only the local flushes are measured.
fn smp_benches() {
    use kernel::address_space;
    use kernel::smp::{self, call, run_on};
    use mm::mmap::{MAP_ANONYMOUS, MAP_PRIVATE, MmLayout, PROT_READ, PROT_WRITE};
    use mm::paging::tlb::{FlushKind, TlbBackend};

    let n = smp::online_cpus();
    kernel::serial_println!("bench: {n} CPU{} online", if n == 1 { "" } else { "s" });
    if n > 1 {
        fn noop(_: usize) {}
        bench::run("ipi_roundtrip", 20_000, |_| {
            call::smp_call_function_many(1 << 1, noop, 0, true)
        });
    }
    let mm = address_space::new_user_space(MmLayout::default()).expect("bench: mm");
    run_on(u64::MAX, &|| address_space::activate(&mm));
    let va = mm
        .mmap(
            0,
            4096,
            PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS,
            None,
            0,
        )
        .expect("bench: mmap");
    mm.with_page_tables(|t| {
        let cpus = t.active_cpus();
        let one = alloc::format!("tlb_shootdown_1page_{n}cpus");
        bench::run(&one, 20_000, |_| t.flush_page(VirtAddr::new(va as u64)));
        let full = alloc::format!("tlb_shootdown_full_{n}cpus");
        bench::run(&full, 20_000, |_| {
            t.tlb().flush(cpus, FlushKind::All { global: false })
        });
    });
    mm.munmap(va, 4096).expect("bench: munmap");
    run_on(u64::MAX, &address_space::deactivate_current);
}

/// Issue 12's figures (`./run-qemu.sh --bench --smp N`): first-touch write faults on
/// several CPUs at once, each CPU faulting its own VMA of one address space.
///
/// - `anon_fault_4k_cpus<k>`: k CPUs (0..k) fault 2,048 fresh pages each; the figure
///   is the wall time from the common start to the last CPU's end divided by the
///   pages per CPU, i.e. the time per fault as each CPU sees it (equal to the 1-CPU
///   figure if faults scale perfectly). The ops column is the total faults.
/// - `fault_scaling_2cpus`: fault throughput with 2 CPUs divided by that with 1,
///   ×1000 in the ns column (an integer column: 1850 means 1.85); the median of five
///   back-to-back (1 CPU, 2 CPUs) pairs, as is the control below.
/// - `fault_scaling_2cpus_each_cpu`: the two CPUs' fault throughputs while both fault,
///   each from its own loop time, divided by their mean throughput when each faults
///   alone (median of five (CPU 0 alone, CPU 1 alone, both) triples), ×1000: scaling
///   with the unequal speed of QEMU's vCPU threads on a shared host taken out.
/// - `..._with_writer`: the same with CPU 0 looping an mprotect split/re-merge pair on
///   an unrelated VMA of the same space (the faulting CPUs are 1..=k; needs k + 1
///   CPUs), as a process whose other thread mprotects.
/// - `..._no_vma_lock`: the same with the per-VMA locks switched off
///   ([`mm::mmap::AddressSpace::set_per_vma_lock`], Linux's `CONFIG_PER_VMA_LOCK=n`):
///   every fault under the mmap read lock.
/// - `fault_vma_lock_gain_<k>cpus_with_writer`: throughput with per-VMA locks divided
///   by throughput without, ×1000, with the writer running.
///
/// - `cpu_loop_scaling_2cpus`: the control, a register-only loop on 2 CPUs against 1
///   (×1000): the parallelism the host gives QEMU's vCPU threads at all.
///
/// With more guest CPUs than host cores the vCPUs share the host's cores: the figures
/// then measure QEMU's scheduling as much as the kernel.
fn smp_fault_benches() {
    use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    use kernel::address_space;
    use kernel::arch::extable::probe_write;
    use kernel::percpu::this_cpu;
    use kernel::smp::{self, run_on};
    use mm::mmap::*;
    const P: usize = 4096;
    const PAGES: usize = 2048;
    const ROUNDS: u64 = 3;
    const RW: u32 = PROT_READ | PROT_WRITE;
    const ANON: u32 = MAP_PRIVATE | MAP_ANONYMOUS;

    static GO: AtomicBool = AtomicBool::new(false);
    static DONE: AtomicU64 = AtomicU64::new(0);
    static START: AtomicU64 = AtomicU64::new(0);
    static END: AtomicU64 = AtomicU64::new(0);
    static WRITER_OPS: AtomicU64 = AtomicU64::new(0);
    /// Each faulting CPU's own time in its fault loops, summed over a measurement's
    /// rounds (CPUs 0 and 1).
    static OWN: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

    let n = smp::online_cpus();
    let mm = address_space::new_user_space(MmLayout::default()).expect("bench: mm");
    run_on(u64::MAX, &|| address_space::activate(&mm));
    // The writer's VMA, unrelated to the faulting ones.
    let other = mm.mmap(0, 64 * P, RW, ANON, None, 0).expect("bench: mmap");

    // Cycles for `faulters` (a CPU mask) to fault PAGES fresh pages each, summed over
    // ROUNDS, with CPU 0 as the mprotect writer if `writer`.
    let measure = |faulters: u64, writer: bool| -> u64 {
        let mut total = 0;
        for c in &OWN {
            c.store(0, SeqCst);
        }
        for _ in 0..ROUNDS {
            // One VMA per CPU, kept from merging with the next by a PROT_NONE page.
            let mut vmas = [0usize; 64];
            for cpu in kernel::smp::call::cpus(faulters) {
                let a = mm
                    .mmap(0, (PAGES + 1) * P, RW, ANON, None, 0)
                    .expect("bench: mmap");
                mm.mprotect(a + PAGES * P, P, PROT_NONE)
                    .expect("bench: guard");
                vmas[cpu] = a;
            }
            GO.store(false, SeqCst);
            DONE.store(0, SeqCst);
            END.store(0, SeqCst);
            let nf = faulters.count_ones() as u64;
            run_on(faulters | 1, &|| {
                let me = this_cpu();
                if me == 0 {
                    START.store(tsc::rdtsc(), SeqCst);
                    GO.store(true, SeqCst);
                }
                if faulters & (1 << me) != 0 {
                    while !GO.load(SeqCst) {
                        core::hint::spin_loop();
                    }
                    let t0 = tsc::rdtsc();
                    for i in 0..PAGES {
                        probe_write(VirtAddr::new((vmas[me] + i * P) as u64), 1)
                            .expect("bench: fault");
                    }
                    let t1 = tsc::rdtsc();
                    if let Some(own) = OWN.get(me) {
                        own.fetch_add(t1 - t0, SeqCst);
                    }
                    END.fetch_max(t1, SeqCst);
                    DONE.fetch_add(1, SeqCst);
                } else if writer {
                    while DONE.load(SeqCst) < nf {
                        mm.mprotect(other + 32 * P, P, PROT_READ)
                            .expect("bench: mprotect");
                        mm.mprotect(other + 32 * P, P, RW)
                            .expect("bench: mprotect back");
                        WRITER_OPS.fetch_add(1, SeqCst);
                    }
                }
            });
            total += END.load(SeqCst) - START.load(SeqCst);
            for cpu in kernel::smp::call::cpus(faulters) {
                mm.munmap(vmas[cpu], (PAGES + 1) * P)
                    .expect("bench: munmap");
            }
        }
        total
    };
    let report = |name: &str, cycles: u64, cpus: u64| {
        let ns = tsc::cycles_to_ns(cycles) / (ROUNDS * PAGES as u64);
        bench::report(name, ns, ROUNDS * PAGES as u64 * cpus);
    };
    // Throughput ratio ×1000 of `k` CPUs taking `tk` against 1 CPU taking `t1`.
    let ratio = |t1: u64, tk: u64, k: u64| (1000 * k * t1) / tk.max(1);
    // The 2-CPU scaling ratio as the median of PAIRS back-to-back measurements of
    // (1 CPU, 2 CPUs): the host's load on this shared box changes from second to
    // second, and each pair sees nearly the same load in both halves.
    const PAIRS: usize = 5;
    let median_ratio = |pair: &dyn Fn() -> (u64, u64)| -> u64 {
        let mut r = [0u64; PAIRS];
        for slot in r.iter_mut() {
            let (t1, t2) = pair();
            *slot = ratio(t1, t2, 2);
        }
        r.sort_unstable();
        r[PAIRS / 2]
    };

    // The control: how much two CPUs gain on work that shares nothing (a register-only
    // loop). Under TCG each vCPU is a host thread; this says how much parallelism the
    // host gives at all, which bounds every scaling figure below.
    if n >= 2 {
        let spin = |mask: u64| -> u64 {
            GO.store(false, SeqCst);
            END.store(0, SeqCst);
            run_on(mask | 1, &|| {
                let me = this_cpu();
                if me == 0 {
                    START.store(tsc::rdtsc(), SeqCst);
                    GO.store(true, SeqCst);
                }
                if mask & (1 << me) != 0 {
                    while !GO.load(SeqCst) {
                        core::hint::spin_loop();
                    }
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ me as u64;
                    for _ in 0..20_000_000u64 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                    }
                    core::hint::black_box(x);
                    END.fetch_max(tsc::rdtsc(), SeqCst);
                }
            });
            END.load(SeqCst) - START.load(SeqCst)
        };
        let r = median_ratio(&|| (spin(0b1), spin(0b11)));
        bench::report("cpu_loop_scaling_2cpus", r, 2);
    }

    // Warm-up, not reported: the first round after boot pays for splitting the
    // allocator's large free blocks and for growing the tree's node cache.
    measure(1, false);

    // Per-VMA-lock times (alone, with the writer) the gains divide by.
    let mut base = (0u64, 0u64);
    for vma_lock in [true, false] {
        mm.set_per_vma_lock(vma_lock);
        let tag = if vma_lock { "" } else { "_no_vma_lock" };
        let mut alone = [0u64; 65];
        for (k, slot) in alone.iter_mut().enumerate().take(n + 1).skip(1) {
            let t = measure((1u64 << k) - 1, false);
            *slot = t;
            report(&alloc::format!("anon_fault_4k_cpus{k}{tag}"), t, k as u64);
        }
        if n >= 2 {
            let r = median_ratio(&|| (measure(1, false), measure(0b11, false)));
            bench::report(&alloc::format!("fault_scaling_2cpus{tag}"), r, 2);
            // Each CPU against itself alone: QEMU's vCPU threads do not run equally
            // fast on this shared host (one of them often ran memory-heavy guest code
            // at half the other's speed for a whole run while the register-only
            // control still scaled), so the plain ratio above measures which host CPU
            // CPU 0 landed on as much as the fault path. Here the two CPUs' fault
            // throughputs together are divided by their mean throughput alone:
            // 2 * (1/d0 + 1/d1) / (1/a0 + 1/a1), with a_i CPU i alone and d_i its own
            // loop time while both fault.
            let mut r = [0u64; PAIRS];
            for slot in r.iter_mut() {
                measure(0b01, false);
                let a0 = OWN[0].load(SeqCst) as u128;
                measure(0b10, false);
                let a1 = OWN[1].load(SeqCst) as u128;
                measure(0b11, false);
                let (d0, d1) = (OWN[0].load(SeqCst) as u128, OWN[1].load(SeqCst) as u128);
                let num = 2000 * (d0 + d1) * a0 * a1;
                let den = (d0 * d1 * (a0 + a1)).max(1);
                *slot = (num / den) as u64;
            }
            r.sort_unstable();
            bench::report(
                &alloc::format!("fault_scaling_2cpus_each_cpu{tag}"),
                r[PAIRS / 2],
                2,
            );
        }
        let mut with = [0u64; 65];
        WRITER_OPS.store(0, SeqCst);
        for (k, slot) in with.iter_mut().enumerate().take(n).skip(1) {
            // Faulters 1..=k, the writer on CPU 0.
            let t = measure(((1u64 << k) - 1) << 1, true);
            *slot = t;
            report(
                &alloc::format!("anon_fault_4k_cpus{k}_with_writer{tag}"),
                t,
                k as u64,
            );
        }
        if n >= 3 {
            let r = ratio(with[1], with[2], 2);
            bench::report(
                &alloc::format!("fault_scaling_2cpus_with_writer{tag}"),
                r,
                2,
            );
        }
        kernel::serial_println!(
            "bench: the writer did {} mprotect split/merge pairs meanwhile ({})",
            WRITER_OPS.load(SeqCst),
            if vma_lock {
                "per-VMA locks"
            } else {
                "no per-VMA locks"
            }
        );
        if vma_lock {
            // Kept for the gains below.
            base = (alone[n.min(2)], with[n.saturating_sub(1).min(2)]);
        } else {
            let k = n.min(2);
            bench::report(
                &alloc::format!("fault_vma_lock_gain_{k}cpus"),
                (1000 * alone[k]) / base.0.max(1),
                k as u64,
            );
            if n >= 2 {
                let k = (n - 1).min(2);
                let lock = base.1;
                bench::report(
                    &alloc::format!("fault_vma_lock_gain_{k}cpus_with_writer"),
                    (1000 * with[k]) / lock.max(1),
                    k as u64,
                );
            }
        }
    }
    mm.set_per_vma_lock(true);
    mm.munmap(other, 64 * P).expect("bench: munmap");
    run_on(u64::MAX, &address_space::deactivate_current);
}
