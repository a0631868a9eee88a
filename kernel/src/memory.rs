//! Physical memory at boot: the memory map, the global frame allocator and the
//! counters the test harness checks for leaks.
//!
//! The bootloader maps all of physical memory at `physical_memory_offset` in the
//! upper half (Linux's direct map, `__va`); the frame allocator reaches every frame
//! and every page-table page through it.

use bootloader_api::info::{MemoryRegionKind, MemoryRegions};
use mm::frame::{FrameAllocator, FrameStats};
use spin::Once;
use x86_64::PhysAddr;

/// Physical memory below 1 MiB is left alone, as Linux reserves it on x86: it
/// holds the real-mode IVT, BIOS data, EBDA and option ROM shadows.
const LOW_MEMORY_RESERVED: u64 = 0x10_0000;

/// Pages below 1 MiB kept for the application processors' real-mode trampoline: its
/// code page and three page-table pages (Linux: `reserve_real_mode`).
pub const TRAMPOLINE_PAGES: u64 = 4;

/// Most usable ranges a boot memory map may list that we keep.
const MAX_RANGES: usize = 64;

static FRAMES: Once<FrameAllocator> = Once::new();
/// The boot page table's root: the kernel's own address space, whose upper half
/// every user address space shares.
static KERNEL_PML4: Once<PhysAddr> = Once::new();
/// Physical address of the trampoline area (`None`: the map had no free low memory).
static TRAMPOLINE: Once<Option<PhysAddr>> = Once::new();

/// A summary of the boot memory map, for the boot log.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryMapSummary {
    /// Regions in the map.
    pub regions: usize,
    /// Bytes of usable RAM handed to the frame allocator.
    pub usable_bytes: u64,
    /// Bytes the bootloader used (kernel image, its page tables, boot info).
    pub bootloader_bytes: u64,
    /// Bytes firmware reserved or that are not RAM.
    pub reserved_bytes: u64,
    /// Highest physical address of any region.
    pub max_phys: u64,
}

/// The global frame allocator (Linux: the zone's buddy allocator).
///
/// # Panics
/// Before [`init`]: there is no memory manager without it.
pub fn frames() -> &'static FrameAllocator {
    FRAMES
        .get()
        .expect("frame allocator used before memory::init")
}

/// The kernel's PML4 (the boot page table).
pub fn kernel_pml4() -> PhysAddr {
    *KERNEL_PML4.get().expect("kernel_pml4 before memory::init")
}

/// The [`TRAMPOLINE_PAGES`] free pages below 1 MiB reserved for the application
/// processors' start-up code, if the boot memory map had them.
pub fn trampoline_area() -> Option<PhysAddr> {
    TRAMPOLINE.get().copied().flatten()
}

/// Builds the frame allocator from the boot memory map. Returns the map summary.
pub fn init(regions: &MemoryRegions, phys_offset: u64) -> MemoryMapSummary {
    let mut summary = MemoryMapSummary {
        regions: regions.len(),
        ..Default::default()
    };
    let mut usable = [const { 0u64..0u64 }; MAX_RANGES];
    let mut n = 0;
    let mut trampoline = None;
    for r in regions.iter() {
        let len = r.end - r.start;
        // The trampoline: the highest free pages below the EBDA (the map marks it
        // reserved) and above the real-mode IVT/BDA page. The frame allocator never
        // sees low memory, so nothing else can take them.
        if r.kind == MemoryRegionKind::Usable {
            let top = r.end.min(0xa_0000) & !0xfff;
            let start = (r.start.max(0x1000) + 0xfff) & !0xfff;
            if top >= start + TRAMPOLINE_PAGES * 4096 {
                trampoline = Some(PhysAddr::new(top - TRAMPOLINE_PAGES * 4096));
            }
        }
        summary.max_phys = summary.max_phys.max(r.end);
        match r.kind {
            MemoryRegionKind::Usable => {
                let start = r.start.max(LOW_MEMORY_RESERVED);
                if start >= r.end {
                    continue;
                }
                summary.usable_bytes += r.end - start;
                // The map is sorted; merge touching regions so big buddy blocks form.
                if n > 0 && usable[n - 1].end == start {
                    usable[n - 1].end = r.end;
                } else if n < MAX_RANGES {
                    usable[n] = start..r.end;
                    n += 1;
                } else {
                    log::warn!(
                        "memory map: more than {MAX_RANGES} usable ranges; ignoring {:#x}..{:#x}",
                        start,
                        r.end
                    );
                }
            }
            MemoryRegionKind::Bootloader => summary.bootloader_bytes += len,
            _ => summary.reserved_bytes += len,
        }
    }
    // SAFETY: the ranges are RAM the bootloader reports as usable (not holding the kernel, its stack, page tables or boot info), all mapped at `phys_offset`; the allocator owns them for the rest of the kernel's life.
    let alloc = unsafe { FrameAllocator::new(phys_offset, &usable[..n]) }
        .expect("cannot build the frame allocator from the boot memory map");
    FRAMES.call_once(|| alloc);
    KERNEL_PML4.call_once(crate::arch::mmu::loaded_root);
    TRAMPOLINE.call_once(|| trampoline);
    // The shared zero page lives forever; take it now so it is part of every test's
    // baseline rather than a "leak" of the first test that faults.
    mm::mmap::zero_page(frames()).expect("no memory for the zero page");
    summary
}

/// What the memory manager currently holds, for the harness's leak checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Frames allocated for anything but the kernel heap (which never shrinks):
    /// mapped frames and page-table pages included.
    pub frames: u64,
    /// VMAs allocated and not yet freed, in every address space.
    pub vmas: usize,
}

/// The current [`Usage`], once RCU's deferred frees queued so far have run
/// (`rcu_barrier`: page-table pages an unmap releases go back after a grace period,
/// so a count taken right after `munmap` would still hold them). Call it with
/// interrupts enabled and outside any RCU read-side section.
pub fn usage() -> Usage {
    mm::sync::rcu::rcu_barrier();
    let allocated = FRAMES.get().map_or(0, |f| f.allocated_frames());
    Usage {
        frames: allocated - crate::heap::frames(),
        vmas: mm::vma::pool::vma_pool_stats().live,
    }
}

/// Frame allocator statistics.
pub fn stats() -> FrameStats {
    frames().stats()
}
