//! The ACPI tables, read once at boot for the MADT's list of CPUs (Linux:
//! `acpi_boot_init` → `acpi_parse_madt_lapic_entries`).
//!
//! The bootloader hands over the RSDP's physical address; every table is read through
//! the direct map, so "mapping" a region is an address computation.

use alloc::vec::Vec;
use core::ptr::NonNull;

use acpi::{AcpiHandler, AcpiTables, PhysicalMapping, platform::ProcessorState};

use crate::memory;

/// Maps ACPI regions through the kernel's direct map of physical memory.
#[derive(Clone, Copy)]
struct DirectMap;

impl AcpiHandler for DirectMap {
    unsafe fn map_physical_region<T>(&self, pa: usize, size: usize) -> PhysicalMapping<Self, T> {
        let va = memory::frames().phys_to_virt(x86_64::PhysAddr::new(pa as u64));
        let va = NonNull::new(va as *mut T).expect("direct map of an ACPI table at 0");
        // SAFETY: the direct map covers all of physical memory the firmware reported, ACPI tables included, for the kernel's whole life; nothing needs undoing when the mapping is dropped.
        unsafe { PhysicalMapping::new(pa, va, size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// The local-APIC ids of the CPUs the MADT lists as usable: the boot CPU first, then
/// the application processors in table order (the order Linux brings them up in).
/// `None` if there is no usable MADT (the boot CPU then runs alone).
pub fn cpu_apic_ids(rsdp: u64) -> Option<Vec<u32>> {
    // SAFETY: `rsdp` is the address the bootloader found the RSDP at; the handler reads through the direct map.
    let tables = match unsafe { AcpiTables::from_rsdp(DirectMap, rsdp as usize) } {
        Ok(t) => t,
        Err(e) => {
            log::warn!("ACPI: no usable tables at {rsdp:#x}: {e:?}");
            return None;
        }
    };
    let info = match tables.platform_info() {
        Ok(i) => i,
        Err(e) => {
            log::warn!("ACPI: no MADT: {e:?}");
            return None;
        }
    };
    let procs = info.processor_info?;
    let mut ids = Vec::new();
    ids.push(procs.boot_processor.local_apic_id);
    ids.extend(
        procs
            .application_processors
            .iter()
            .filter(|p| p.state != ProcessorState::Disabled)
            .map(|p| p.local_apic_id),
    );
    Some(ids)
}
