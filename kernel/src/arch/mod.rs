//! x86_64 specifics: CPU identity, GDT/TSS, the IDT and exception handlers,
//! fault fix-ups for probing accesses, the MMU switch (CR3), the TSC clock, the local
//! APIC (timer, IPIs), the ACPI MADT, the application processors' real-mode
//! trampoline, TLB shootdown and QEMU's exit device.

pub mod acpi;
pub mod apic;
pub mod cpu;
pub mod extable;
pub mod gdt;
pub mod idt;
pub mod mmu;
pub mod qemu;
pub mod tlb;
pub mod trampoline;
pub mod tsc;
