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
        s.total_frames * PAGE_SIZE >> 20,
        s.free_frames,
        s.reserved_frames
    );
    serial_println!("  free blocks per order:");
    for order in 0..NR_ORDERS {
        if s.free_per_order[order] > 0 {
            serial_println!(
                "    order {order:2} ({:>9} KiB): {}",
                (PAGE_SIZE << order) >> 10,
                s.free_per_order[order]
            );
        }
    }
    let h = heap::stats();
    serial_println!(
        "heap: {} chunk(s), {} KiB, {} bytes in use",
        h.chunks,
        h.size >> 10,
        h.used
    );
    serial_println!("kernel: boot complete");
    qemu::exit(ExitCode::Success)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    #[cfg(test)]
    kernel::testing::on_panic(info);
    #[cfg(not(test))]
    {
        kernel::serial::emergency_print(format_args!("\nkernel panic: {info}\n"));
        qemu::exit(ExitCode::Failed)
    }
}
