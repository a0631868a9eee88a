//! x86_64 specifics: CPU identity, GDT/TSS, the IDT and exception handlers,
//! fault fix-ups for probing accesses, the TSC clock and QEMU's exit device.

pub mod cpu;
pub mod extable;
pub mod gdt;
pub mod idt;
pub mod qemu;
pub mod tsc;
