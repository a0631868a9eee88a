//! The kernel library: bring-up, the memory manager's hardware side, and the
//! in-kernel test harness shared by every test kernel.
//!
//! Boot order ([`init`]): the boot CPU's per-CPU block (GS base), serial console and
//! logger, GDT/TSS, IDT, paging features (NXE, WP), TSC calibration, the frame
//! allocator from the boot memory map, the heap; then the local APIC and its timer,
//! TLB shootdown, every other CPU (ACPI MADT, INIT-SIPI-SIPI) and interrupts on.
//! Everything after the heap may allocate.
#![no_std]
#![cfg_attr(test, no_main)]
#![feature(custom_test_frameworks, abi_x86_interrupt)]
// `Arc::try_new`: a new address space fails with ENOMEM instead of aborting.
#![feature(allocator_ext)]
#![test_runner(crate::testing::run_tests)]
#![reexport_test_harness_main = "test_main"]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

pub mod address_space;
pub mod arch;
#[cfg(feature = "bench")]
pub mod bench;
pub mod fault;
pub mod heap;
pub mod logger;
pub mod memory;
pub mod percpu;
pub mod serial;
pub mod smp;
pub mod testing;

use bootloader_api::BootInfo;

#[doc(hidden)]
pub use bootloader_api as __bootloader_api;
use bootloader_api::config::{BootloaderConfig, Mapping};

/// How the bootloader must lay out the kernel's virtual memory.
///
/// Everything the bootloader maps dynamically (kernel image, stack, boot info,
/// the direct map of physical memory) goes into the upper half, so the lower half
/// is free for user address spaces.
pub const BOOT_CONFIG: BootloaderConfig = {
    let mut config = BootloaderConfig::new_default();
    config.mappings.physical_memory = Some(Mapping::Dynamic);
    config.mappings.dynamic_range_start = Some(0xffff_8000_0000_0000);
    config.kernel_stack_size = 1024 * 1024;
    config
};

/// Brings the machine up. `quiet` keeps the log to warnings (test and bench kernels).
pub fn init(boot_info: &'static mut BootInfo, quiet: bool) {
    percpu::init_cpu(0, arch::cpu::initial_apic_id());
    // Lockdep-light counts held locks per CPU: tell it how to name this one (before any
    // application processor starts).
    mm::sync::lockdep::set_cpu_id_hook(percpu::this_cpu);
    serial::init();
    logger::init(logger::default_level(quiet));
    arch::gdt::init();
    arch::idt::init();
    arch::cpu::enable_paging_features();
    let hz = arch::tsc::calibrate();
    log::info!("TSC: {} MHz", hz / 1_000_000);
    let phys_offset = boot_info
        .physical_memory_offset
        .into_option()
        .expect("bootloader did not map physical memory (BOOT_CONFIG asks it to)");
    let map = memory::init(&boot_info.memory_regions, phys_offset);
    log::info!(
        "memory map: {} regions, {} MiB usable, {} KiB bootloader, {} MiB reserved, top {:#x}",
        map.regions,
        map.usable_bytes >> 20,
        map.bootloader_bytes >> 10,
        map.reserved_bytes >> 20,
        map.max_phys
    );
    heap::init();
    arch::apic::init_bsp();
    arch::tlb::init();
    smp::init(boot_info.rsdp_addr.into_option());
    x86_64::instructions::interrupts::enable();
}

/// Halts the CPU forever (waking only to halt again).
pub fn hlt_loop() -> ! {
    loop {
        x86_64::instructions::hlt();
    }
}

#[cfg(test)]
bootloader_api::entry_point!(test_kernel_main, config = &BOOT_CONFIG);

#[cfg(test)]
fn test_kernel_main(boot_info: &'static mut BootInfo) -> ! {
    init(boot_info, true);
    test_main();
    hlt_loop()
}

#[cfg(test)]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    testing::on_panic(info)
}

#[cfg(test)]
mod tests {
    use alloc::boxed::Box;
    use alloc::vec::Vec;

    #[test_case]
    fn heap_box_and_vec() {
        let b = Box::new(41u64);
        let mut v = Vec::new();
        for i in 0..1000u64 {
            v.push(i);
        }
        assert_eq!(*b + 1, 42);
        assert_eq!(v.iter().sum::<u64>(), 999 * 1000 / 2);
    }

    /// Every size class hands out aligned, disjoint objects, and a freed object is
    /// the next one that class hands out (LIFO free list, no list walk).
    #[test_case]
    fn slab_classes_are_aligned_disjoint_and_reuse_freed_objects() {
        use crate::heap::slab;
        use core::alloc::Layout;
        for (size, align) in [
            (8, 8),
            (24, 8),
            (64, 64),
            (96, 32),
            (100, 64),
            (2048, 8),
            (3000, 8),
            (4096, 4096),
            (8192, 8),
        ] {
            let layout = Layout::from_size_align(size, align).unwrap();
            let class = slab::class_of(layout).expect("small layouts have a class");
            let mut objs = Vec::new();
            for i in 0..=255u8 {
                let p = slab::alloc(class);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "size {size} align {align}");
                // SAFETY: `p` is a fresh object of at least `size` bytes.
                unsafe { core::ptr::write_bytes(p, i, size) };
                objs.push((p, i));
            }
            for &(p, i) in &objs {
                // SAFETY: each object is still ours; a neighbour writing into it would show here.
                let bytes = unsafe { core::slice::from_raw_parts(p, size) };
                assert!(bytes.iter().all(|&b| b == i), "objects overlap");
            }
            let (last, _) = objs[150];
            // SAFETY: `last` came from this class and is not used again below.
            unsafe { slab::free(last, class) };
            assert_eq!(slab::alloc(class), last, "a freed object is reused first");
            for (p, _) in objs {
                // SAFETY: every object (including the re-allocated one) is given back once.
                unsafe { slab::free(p, class) };
            }
        }
        // Past the largest class (kmalloc-8k, page-aligned): the chunk heap.
        assert_eq!(
            slab::class_of(Layout::from_size_align(8193, 8).unwrap()),
            None
        );
        assert_eq!(
            slab::class_of(Layout::from_size_align(8, 8192).unwrap()),
            None
        );
    }
}
