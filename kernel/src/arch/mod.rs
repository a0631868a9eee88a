//! x86_64 specifics: CPU identity, GDT/TSS, the IDT and exception handlers,
//! fault fix-ups for probing accesses, the MMU switch (CR3), the TSC clock and QEMU's
//! exit device.

pub mod cpu;
pub mod extable;
pub mod gdt;
pub mod idt;
pub mod mmu;
pub mod qemu;
pub mod tsc;
