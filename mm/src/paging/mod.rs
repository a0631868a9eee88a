//! Four-level x86_64 page tables and the TLB gather (Linux: `arch/x86/mm`, `mm/memory.c`
//! page-table parts, `mm/mmu_gather.c`).
//!
//! # Model
//!
//! - [`PageTableRoot`] is the part of Linux's `mm_struct` that owns `pgd`: one PML4 page,
//!   the user half (PML4 slots 0..256) private to it, the kernel half (256..512) copied
//!   from the kernel's PML4 so that every address space shares the kernel's lower-level
//!   tables. Dropping it tears the user half down (Linux: `exit_mmap` + `free_pgtables`).
//! - Mapping primitives work on ranges of the user half: [`PageTableRoot::map`],
//!   [`PageTableRoot::map_frame`], [`PageTableRoot::unmap`], [`PageTableRoot::protect`],
//!   [`PageTableRoot::translate`], [`PageTableRoot::walk`],
//!   [`PageTableRoot::replace_frame`] (copy-on-write), and
//!   [`PageTableRoot::reserve_tables`] + [`PageTableRoot::map_reserved`] (table pages
//!   allocated before the page to map, as the fault path needs), for 4 KiB, 2 MiB (PS bit in
//!   the PD entry) and 1 GiB (PS bit in the PDPT entry) pages; `copy.rs`:
//!   [`PageTableRoot::copy_range_to`] (fork's `copy_page_range`) and
//!   [`PageTableRoot::move_range`] (exec's stack move).
//! - Page-table pages come from the [`FrameAllocator`](crate::frame::FrameAllocator),
//!   are marked [`FrameFlags::PAGETABLE`](crate::frame::FrameFlags::PAGETABLE) and are
//!   freed as soon as an unmap empties them (PT, PD and PDPT; never the PML4). So a
//!   present non-leaf entry in the user half always points at a table with at least one
//!   used entry, except briefly for a PD table another space shares with us.
//! - PD ("PMD") tables can be shared between address spaces (Linux hugetlb PMD sharing,
//!   `huge_pmd_share`/`huge_pmd_unshare`): [`PageTableRoot::share_pmd_with`],
//!   [`PageTableRoot::unshare_pmd`]. The table's
//!   [`FrameMeta::pt_share_count`](crate::frame::FrameMeta::pt_share_count) counts the
//!   *additional* sharers; the table is freed by whichever space drops it last.
//! - [`MmuGather`] (Linux `struct mmu_gather`) collects what an unmap or protect must
//!   flush and what it may free only after that flush; [`tlb`] holds the flush policy and
//!   the hardware/host backends.
//!
//! # Frame accounting (Linux: `_refcount` / `_mapcount`)
//!
//! - [`PageTableRoot::map_frame`] maps one page backed by an allocated block and *takes
//!   over* one reference the caller got from `alloc` (Linux: a freshly allocated anon page
//!   installed by `do_anonymous_page`); the block's map count goes up by one.
//! - [`PageTableRoot::map`] maps a physically contiguous range. Pages whose first frame is
//!   the head of an allocated block get an *extra* reference and one more map count
//!   (Linux: `vm_insert_page`); anything else (MMIO, reserved memory, tail frames of a
//!   larger block) is mapped without accounting (Linux: `remap_pfn_range`, `pte_special`).
//! - Either way the entry remembers whether it is accounted (software bit
//!   [`PTE_ACCOUNTED`]); unmapping an accounted entry drops the map count at once and puts
//!   the reference through the gather, after the TLB flush. The reference count decides
//!   when the frame is actually freed. Accounting of a huge leaf is on its first frame,
//!   the block head (Linux: the folio head).
//!
//! # PROT_NONE
//!
//! A leaf whose flags lack `PRESENT` is still a mapping: the hardware sees a not-present
//! entry, but the frame stays owned and [`PageTableRoot::translate`] still reports it,
//! with `PRESENT` clear (Linux: `_PAGE_PROTNONE`, here the software bit
//! [`PTE_PROTNONE`]).
//!
//! # What the kernel must do
//!
//! Set `EFER.NXE` before loading any table containing `NO_EXECUTE` (the bit is reserved
//! otherwise, so every walk would fault) and `CR0.WP` so that kernel-mode writes honour
//! read-only user mappings (copy-on-write relies on it). Both are the kernel's boot code's
//! job. PCIDs are not used: every CR3 load flushes all non-global entries, which is what
//! makes the "flush only the CPUs in the space's CPU mask" rule correct.
//!
//! # Locking
//!
//! Split page-table locks (`ptlock.rs`, Linux's `pte_lockptr`/`pmd_lockptr`/
//! `page_table_lock`): every entry change takes the lock that covers the entry, one
//! per PT page, one per PD page, the space's `page_table_lock` above; so faults on
//! different 2 MiB regions never take the same lock. Walks down need none: tables are
//! freed only when no VMA reaches into them ([`FreeTables`], Linux's `free_pgtables`
//! floor and ceiling), under the memory manager's mmap write lock. Entries are read and
//! written as atomics because the CPU sets accessed/dirty bits concurrently (Linux:
//! `ptep_get_and_clear`, `ptep_test_and_clear_young`). A shared PD table has one lock
//! for every space sharing it (it lives in the table page's metadata); sharing and
//! unsharing are serialised by the callers (Linux: `i_mmap_rwsem` and the hugetlb vma
//! lock).

mod copy;
mod entry;
pub(crate) mod ptlock;
mod share;
mod space;
mod table;
pub mod tlb;

#[cfg(test)]
mod tests;

pub use copy::{CopyMode, CopyStats};
pub use entry::{PTE_ACCOUNTED, PTE_PROTNONE};
pub use space::{MAX_CPUS, PageTableRoot};
pub use table::{FreeTables, Leaf, Leaves, TableReservation, Translation, WalkResult};
pub use tlb::{FlushKind, MmuGather, TLB_SINGLE_PAGE_FLUSH_CEILING};

pub use x86_64::structures::paging::PageTableFlags;
pub use x86_64::structures::paging::page_table::PageTableEntry;

use crate::errno::Errno;
use crate::frame::FrameError;

/// End of the user half that the mapping primitives accept: Linux's `TASK_SIZE_MAX`,
/// 2^47 minus one page (the last page stays unmapped, a guard against the non-canonical
/// hole and SYSRET quirks).
pub const USER_END: u64 = (1 << 47) - 4096;

/// Leaf flags a caller may ask for. `HUGE_PAGE` is derived from the page size, the
/// software bits are the layer's own.
pub const LEAF_FLAGS: PageTableFlags = PageTableFlags::PRESENT
    .union(PageTableFlags::WRITABLE)
    .union(PageTableFlags::USER_ACCESSIBLE)
    .union(PageTableFlags::WRITE_THROUGH)
    .union(PageTableFlags::NO_CACHE)
    .union(PageTableFlags::ACCESSED)
    .union(PageTableFlags::DIRTY)
    .union(PageTableFlags::GLOBAL)
    .union(PageTableFlags::NO_EXECUTE);

/// Flags of every non-leaf entry in the user half: the leaf decides permissions, so the
/// upper levels allow everything (Linux: `_PAGE_TABLE`).
pub const TABLE_FLAGS: PageTableFlags = PageTableFlags::PRESENT
    .union(PageTableFlags::WRITABLE)
    .union(PageTableFlags::USER_ACCESSIBLE);

/// Size of a leaf mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PageSize {
    /// 4 KiB, a PTE in a PT (Linux: `PAGE_SIZE`).
    Size4K,
    /// 2 MiB, a PD entry with PS set (Linux: `PMD_SIZE`).
    Size2M,
    /// 1 GiB, a PDPT entry with PS set (Linux: `PUD_SIZE`).
    Size1G,
}

impl PageSize {
    /// Bytes covered by one page.
    pub const fn bytes(self) -> u64 {
        1 << self.shift()
    }

    /// log2 of [`bytes`](Self::bytes).
    pub const fn shift(self) -> u32 {
        match self {
            PageSize::Size4K => 12,
            PageSize::Size2M => 21,
            PageSize::Size1G => 30,
        }
    }

    /// Frame-allocator order of a block of this size.
    pub const fn order(self) -> usize {
        (self.shift() - 12) as usize
    }

    /// The level of the table whose entries are leaves of this size.
    pub const fn level(self) -> Level {
        match self {
            PageSize::Size4K => Level::Pt,
            PageSize::Size2M => Level::Pd,
            PageSize::Size1G => Level::Pdpt,
        }
    }
}

/// A page-table level, numbered as in the SDM (1 = PT ... 4 = PML4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Page table, entries map 4 KiB (Linux: PTE level).
    Pt = 1,
    /// Page directory, entries map 2 MiB (Linux: PMD level).
    Pd = 2,
    /// Page-directory-pointer table, entries map 1 GiB (Linux: PUD level).
    Pdpt = 3,
    /// Top level, entries map 512 GiB (Linux: PGD level; P4D is folded).
    Pml4 = 4,
}

impl Level {
    /// Bytes covered by one entry of a table at this level.
    pub const fn entry_span(self) -> u64 {
        1 << self.shift()
    }

    /// log2 of [`entry_span`](Self::entry_span).
    pub const fn shift(self) -> u32 {
        12 + 9 * (self as u32 - 1)
    }

    /// Index of `va` in a table at this level.
    pub const fn index(self, va: u64) -> usize {
        ((va >> self.shift()) & 511) as usize
    }

    /// The level below, `None` for the PT.
    pub const fn lower(self) -> Option<Level> {
        match self {
            Level::Pml4 => Some(Level::Pdpt),
            Level::Pdpt => Some(Level::Pd),
            Level::Pd => Some(Level::Pt),
            Level::Pt => None,
        }
    }

    /// Leaf size of an entry at this level, if leaves may live here.
    pub const fn leaf_size(self) -> Option<PageSize> {
        match self {
            Level::Pt => Some(PageSize::Size4K),
            Level::Pd => Some(PageSize::Size2M),
            Level::Pdpt => Some(PageSize::Size1G),
            Level::Pml4 => None,
        }
    }
}

/// Why a page-table operation failed. Every failing operation changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// An address or length is not aligned to the page size (or to 1 GiB for sharing).
    Misaligned,
    /// `start > end`, or the physical range overflows the 52-bit physical address space.
    InvalidRange,
    /// The range is not inside the user half `0..USER_END`.
    OutOfRange,
    /// Flags outside [`LEAF_FLAGS`].
    InvalidFlags,
    /// Something is already mapped (or a table is in the way of a huge page).
    AlreadyMapped,
    /// A page-table page could not be allocated.
    OutOfMemory,
    /// The range covers only part of a huge page (splitting is not implemented).
    PartialHugePage,
    /// The range touches a PD table shared with another space: unshare first.
    SharedTable,
    /// `map_frame` was given an address that is not an allocated block head.
    NotAllocated,
    /// Nothing (no PD table, for sharing) is mapped there.
    NotMapped,
    /// The two spaces do not use the same frame allocator.
    WrongAllocator,
}

impl From<FrameError> for MapError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::OutOfMemory => MapError::OutOfMemory,
            _ => MapError::NotAllocated,
        }
    }
}

impl From<MapError> for Errno {
    /// `ENOMEM` for allocation failure, `EEXIST` for a clash (as `MAP_FIXED_NOREPLACE`),
    /// `EFAULT` for nothing mapped, `EINVAL` for the rest.
    fn from(e: MapError) -> Errno {
        match e {
            MapError::OutOfMemory => Errno::ENOMEM,
            MapError::AlreadyMapped => Errno::EEXIST,
            MapError::NotMapped => Errno::EFAULT,
            _ => Errno::EINVAL,
        }
    }
}

impl core::fmt::Display for MapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            MapError::Misaligned => "address not aligned to the page size",
            MapError::InvalidRange => "invalid range",
            MapError::OutOfRange => "range outside the user half",
            MapError::InvalidFlags => "flags outside LEAF_FLAGS",
            MapError::AlreadyMapped => "already mapped",
            MapError::OutOfMemory => "out of memory for page tables",
            MapError::PartialHugePage => "range covers part of a huge page",
            MapError::SharedTable => "range touches a shared PMD table",
            MapError::NotAllocated => "frame is not an allocated block head",
            MapError::NotMapped => "nothing mapped there",
            MapError::WrongAllocator => "address spaces use different frame allocators",
        })
    }
}
