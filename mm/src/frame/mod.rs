//! Buddy frame allocator and per-frame metadata (Linux: `mm/page_alloc.c`, `struct page`).
//!
//! - [`FrameAllocator`]: binary buddy allocator for orders 0..=[`MAX_ORDER`] (4 KiB to
//!   1 GiB), with split and coalesce, zeroed allocation, per-order statistics and checked
//!   frees (double, wrong-order, misaligned and out-of-range frees are errors that change
//!   nothing). It carves its own metadata array out of the usable memory it is given.
//! - Per-CPU page lists (`pcp`, Linux: `per_cpu_pages`): each CPU's own short list of
//!   free order-0 frames in front of the buddy lists, so single-frame allocations and
//!   frees on different CPUs do not meet on the zone lock; [`PcpDisabled`] bypasses
//!   them (Linux: `zone_pcp_disable()`).
//! - [`FrameMeta`]: one entry per physical frame (Linux: `struct page`/`mem_map`):
//!   reference count, map count, [`FrameFlags`], order and the page-table share count. The
//!   free-list links live here too, so free memory is never touched by the allocator.
//! - With the `fault-inject` feature (host tests only; so not linked from these docs,
//!   which are built without it): `FrameAllocator::fail_nth_alloc` fails exactly the Nth
//!   allocation (Linux: `fail_page_alloc`).
//! - `sim` (host only): [`sim::SimulatedMemory`], a host buffer posing as physical memory,
//!   for tests of this and the layers above.

mod buddy;
mod meta;
mod pcp;
#[cfg(not(target_os = "none"))]
pub mod sim;
#[cfg(test)]
mod tests;

#[cfg(feature = "fault-inject")]
pub use buddy::FailNthReport;
pub use buddy::{FrameAllocator, PAGE_POISON, PoisonReport};
pub use meta::{FrameFlags, FrameMeta};
pub use pcp::{PCP_BATCH, PCP_HIGH, PcpDisabled};

use crate::errno::Errno;

pub use crate::{PAGE_SHIFT, PAGE_SIZE};
/// Largest block order: 2^18 frames = 1 GiB, so a PUD-sized huge page fits one block
/// (Linux: `MAX_PAGE_ORDER`, which is 10 by default; ours is larger for 1 GiB hugetlb).
pub const MAX_ORDER: usize = 18;
/// Number of orders, 0..=[`MAX_ORDER`] (Linux: `NR_PAGE_ORDERS`).
pub const NR_ORDERS: usize = MAX_ORDER + 1;

/// Why a frame operation failed. Every failure leaves the allocator unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// No free block of the requested order or larger.
    OutOfMemory,
    /// Order above [`MAX_ORDER`].
    BadOrder,
    /// Not the head of an allocated block: double free, never allocated, a tail or
    /// reserved frame.
    NotAllocated,
    /// The block was allocated with a different order.
    WrongOrder,
    /// Address outside the memory this allocator describes (or, from `new`, invalid
    /// ranges).
    OutOfRange,
    /// Address not aligned to the block size (or, from `new`, an unaligned offset).
    Misaligned,
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            FrameError::OutOfMemory => "out of physical memory",
            FrameError::BadOrder => "block order above MAX_ORDER",
            FrameError::NotAllocated => "frame is not an allocated block head",
            FrameError::WrongOrder => "block freed with the wrong order",
            FrameError::OutOfRange => "physical address outside the allocator",
            FrameError::Misaligned => "physical address misaligned for the block size",
        })
    }
}

impl From<FrameError> for Errno {
    /// `OutOfMemory` is `ENOMEM`; the rest are caller bugs, reported as `EINVAL`.
    fn from(e: FrameError) -> Errno {
        match e {
            FrameError::OutOfMemory => Errno::ENOMEM,
            _ => Errno::EINVAL,
        }
    }
}

/// Allocator counters (Linux: `/proc/buddyinfo` for the per-order part,
/// `MemTotal`/`MemFree` of `/proc/meminfo` for the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameStats {
    /// Free *blocks* of each order (not frames), as in `/proc/buddyinfo`.
    pub free_per_order: [u64; NR_ORDERS],
    /// Usable frames given to the allocator, including `reserved_frames`; holes between
    /// ranges are not counted.
    pub total_frames: u64,
    /// Free frames: sum over orders of `free_per_order[o] << o`, plus `pcp_frames`.
    pub free_frames: u64,
    /// Free frames sitting on the CPUs' per-CPU page lists (Linux: the `count` of each
    /// `per_cpu_pages`, which `/proc/zoneinfo` shows per CPU). Counted as free, not in
    /// `free_per_order`.
    pub pcp_frames: u64,
    /// Usable frames taken by the allocator itself (the metadata array).
    pub reserved_frames: u64,
}
