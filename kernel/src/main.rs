//! The kernel binary: boots, brings the memory manager up and shows its state.
#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::run_tests)]
#![reexport_test_harness_main = "test_main"]

use bootloader_api::BootInfo;
use kernel::arch::qemu::{self, ExitCode};
use kernel::{heap, memory, serial_println};
use mm::frame::{NR_ORDERS, PAGE_SIZE};

bootloader_api::entry_point!(kernel_main, config = &kernel::BOOT_CONFIG);

fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info, false);
    #[cfg(test)]
    test_main();

    let s = memory::stats();
    serial_println!(
        "frame allocator: {} frames ({} MiB), {} free, {} reserved for metadata",
        s.total_frames,
        (s.total_frames as usize * PAGE_SIZE) >> 20,
        s.free_frames,
        s.reserved_frames
    );
    serial_println!("  free blocks per order:");
    for (order, &blocks) in s.free_per_order.iter().enumerate().take(NR_ORDERS) {
        if blocks > 0 {
            serial_println!(
                "    order {order:2} ({:>9} KiB): {blocks}",
                (PAGE_SIZE << order) >> 10
            );
        }
    }
    let h = heap::stats();
    serial_println!(
        "heap: {} chunk(s), {} KiB ({} slab pages), {} bytes in use",
        h.chunks,
        h.size >> 10,
        h.slab_pages,
        h.used
    );
    demo_address_space();
    demo_hugetlb_sharing();
    serial_println!("kernel: boot complete");
    qemu::exit(ExitCode::Success)
}

/// Builds a process-like address space step by step and shows `/proc/self/maps`
/// after each step: the memory manager at work.
fn demo_address_space() {
    use kernel::address_space;
    use kernel::arch::extable::{probe_read, probe_write};
    use mm::file::{OpenMode, ramfs_file, stacking_file};
    use mm::mmap::*;
    use x86_64::VirtAddr;

    const P: usize = 4096;
    let at = |a: usize| VirtAddr::new(a as u64);
    let show = |mm: &AddressSpace, step: &str| {
        serial_println!("\n== {step}\n{}", mm.maps());
    };
    let mm = address_space::new_user_space(MmLayout::default()).expect("demo: address space");
    address_space::activate(&mm);

    let lib = ramfs_file(memory::frames(), "/lib/libdemo.so", 4 * P, OpenMode::RDONLY);
    lib.inode().write(0, b"\x7fELF").expect("demo: file write");
    let text = mm
        .mmap(0, 2 * P, PROT_READ | PROT_EXEC, MAP_PRIVATE, Some(&lib), 0)
        .expect("demo: text");
    let heap = mm
        .mmap(
            0,
            16 * P,
            PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS,
            None,
            0,
        )
        .expect("demo: heap");
    let stack_top = 0x7fff_f000_0000usize;
    let stack = mm
        .mmap(
            stack_top - 4 * P,
            4 * P,
            PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN | MAP_FIXED,
            None,
            0,
        )
        .expect("demo: stack");
    show(&mm, "mmap: library text, anonymous heap, GROWSDOWN stack");

    let before = memory::usage().frames;
    let text_byte = probe_read(at(text + 1)).expect("demo: text fault");
    let zero = probe_read(at(heap + 5 * P)).expect("demo: heap read fault");
    probe_write(at(heap), 1).expect("demo: heap write fault");
    probe_write(at(stack - 2 * P), 2).expect("demo: stack growth fault");
    serial_println!(
        "\nfaults: text read {:#x} ('E' of ELF: {}), heap read {zero} (zero page), heap write, stack grew by 2 pages; {} frames allocated",
        text_byte,
        text_byte == b'E',
        memory::usage().frames - before
    );
    show(&mm, "after the faults (the stack VMA grew)");

    mm.mprotect(heap + 4 * P, 4 * P, PROT_READ)
        .expect("demo: mprotect");
    show(
        &mm,
        "mprotect(heap + 4 pages, 4 pages, PROT_READ): split in three",
    );
    let segv = probe_write(at(heap + 5 * P), 3).is_err();
    serial_println!(
        "write to the read-only part: {}",
        if segv {
            "SIGSEGV (as expected)"
        } else {
            "succeeded?!"
        }
    );
    mm.mprotect(heap + 4 * P, 4 * P, PROT_READ | PROT_WRITE)
        .expect("demo: mprotect back");
    show(&mm, "mprotect back to PROT_READ|PROT_WRITE: re-merged");

    let lower = ramfs_file(memory::frames(), "/lower/data", P, OpenMode::RDWR);
    lower
        .inode()
        .write(0, b"from the lower file")
        .expect("demo: lower write");
    let upper = stacking_file(&lower, "/overlay/data");
    let o = mm
        .mmap(0, P, PROT_READ, MAP_PRIVATE, Some(&upper), 0)
        .expect("demo: overlay mmap");
    let first = probe_read(at(o)).expect("demo: overlay fault");
    show(
        &mm,
        "mmap of a stacking (overlay) file: its legacy mmap forwards to the lower file's mmap_prepare (compat_vma_mmap_prepare)",
    );
    serial_println!(
        "first byte through the overlay mapping: {:?}",
        first as char
    );

    mm.munmap(heap, 16 * P).expect("demo: munmap");
    show(&mm, "munmap(heap)");
    address_space::deactivate_current();
    let used = memory::usage();
    drop(mm);
    let after = memory::usage();
    serial_println!(
        "address space dropped: frames {} -> {}, VMAs {} -> {}",
        used.frames,
        after.frames,
        used.vmas,
        after.vmas
    );
}

/// Two address spaces map one hugetlbfs file and share a PD table; one of them splits
/// its VMA and the table is unshared for it (Linux: `huge_pmd_share`,
/// `hugetlb_split`).
fn demo_hugetlb_sharing() {
    use kernel::address_space;
    use kernel::arch::extable::{probe_read, probe_write};
    use mm::file::OpenMode;
    use mm::file::hugetlbfs::hugetlbfs_file;
    use mm::hugetlb::{self, HugeSize};
    use mm::mmap::*;
    use x86_64::VirtAddr;

    const M2: usize = 2 << 20;
    const G1: usize = 1 << 30;
    const BASE: usize = 1 << 40;
    let frames = memory::frames();
    let h = hugetlb::hstate(frames, HugeSize::Size2M).expect("demo: hstate");
    h.set_nr_hugepages(4);
    serial_println!(
        "\n== hugetlb: nr_hugepages = 4\n{}",
        hugetlb::meminfo(frames).unwrap_or_default()
    );
    let f = hugetlbfs_file(
        frames,
        HugeSize::Size2M,
        G1,
        "/dev/hugepages/shared",
        OpenMode::RDWR,
    )
    .expect("demo: hugetlbfs file");
    let (a, b) = (
        address_space::new_user_space(MmLayout::default()).expect("demo: space A"),
        address_space::new_user_space(MmLayout::default()).expect("demo: space B"),
    );
    let fl = MAP_SHARED | MAP_FIXED | MAP_NORESERVE;
    for s in [&a, &b] {
        s.mmap(BASE, G1, PROT_READ | PROT_WRITE, fl, Some(&f), 0)
            .expect("demo: mmap");
    }
    let at = |x: usize| VirtAddr::new(x as u64);
    let pd = |s: &AddressSpace| s.with_page_tables(|p| p.pmd_table_at(at(BASE)));
    let count = |s: &AddressSpace| {
        pd(s)
            .and_then(|t| frames.meta(t))
            .map_or(0, |m| m.pt_share_count())
    };
    let pd = |s: &AddressSpace| pd(s).map_or(0, |p| p.as_u64());
    address_space::activate(&a);
    probe_write(at(BASE + 3 * M2), b'A').expect("demo: write in A");
    address_space::activate(&b);
    let seen = probe_read(at(BASE + 3 * M2)).expect("demo: read in B");
    serial_println!(
        "A wrote {:?}, B reads {:?}; PD table of A {:#x}, of B {:#x}, share count {}",
        'A',
        seen as char,
        pd(&a),
        pd(&b),
        count(&a)
    );
    serial_println!("B's maps:\n{}", b.maps());
    b.mprotect(BASE + 2 * M2, M2, PROT_READ)
        .expect("demo: mprotect");
    let seen = probe_read(at(BASE + 3 * M2)).expect("demo: read in B");
    serial_println!(
        "B split its VMA (mprotect of one 2 MiB page): PD table of A {:#x}, of B {:#x}, share count {}; B still reads {:?}",
        pd(&a),
        pd(&b),
        count(&a),
        seen as char
    );
    serial_println!("B's maps:\n{}", b.maps());
    address_space::deactivate_current();
    drop((a, b, f));
    h.set_nr_hugepages(0);
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    #[cfg(test)]
    kernel::testing::on_panic(info);
    #[cfg(not(test))]
    {
        kernel::serial::emergency_print(format_args!(
            "\nkernel panic on CPU {}: {info}\n",
            kernel::percpu::this_cpu()
        ));
        qemu::exit(ExitCode::Failed)
    }
}
