//! The benchmark kernel (`./run-qemu.sh --bench`): one `BENCH` line per figure.
#![no_std]
#![no_main]

use bootloader_api::BootInfo;
use kernel::arch::qemu::{self, ExitCode};
use kernel::bench;
use kernel::memory::frames;

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
