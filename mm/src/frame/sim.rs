//! Host-only simulated physical memory for tests (no Linux counterpart; cf. the userland
//! stubs of Linux `tools/testing/vma`).
//!
//! [`SimulatedMemory`] allocates a host buffer aligned to 2 MiB and pretends it is
//! physical memory starting at [`SimulatedMemory::PHYS_BASE`] (1 GiB, so every block order
//! is physically aligned from the start of the buffer and physical address 0 is never
//! handed out). A [`FrameAllocator`] is built over it with
//! `phys_offset = buffer address - PHYS_BASE`, so [`FrameAllocator::phys_to_virt`] gives a
//! real, dereferenceable host pointer, and 2 MiB-aligned physical blocks are also 2 MiB
//! aligned in the host address space.
//!
//! ```
//! use mm::frame::sim::SimulatedMemory;
//! let mem = SimulatedMemory::new(4 << 20);
//! let fa = mem.allocator();
//! let pa = fa.alloc_zeroed(0).unwrap();
//! // SAFETY: `pa` is a frame we just allocated; the simulated direct map reaches it.
//! let first = unsafe { *fa.phys_to_virt(pa) };
//! assert_eq!(first, 0);
//! fa.free(pa, 0).unwrap();
//! ```

use core::ops::Range;
use core::ptr::NonNull;
use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::boxed::Box;

use super::{FrameAllocator, PAGE_SIZE};

/// Alignment of the host buffer: one PMD, so order-9 blocks are host-aligned as well.
const BUFFER_ALIGN: usize = 2 << 20;

/// Memories kept forever by [`SimulatedMemory::leak`]; never shrinks.
static LEAKED: spin::Mutex<std::vec::Vec<SimulatedMemory>> = spin::Mutex::new(std::vec::Vec::new());

/// A host buffer posing as physical RAM, plus the frame allocator that owns it.
///
/// Dropping it frees the buffer; [`leak`](Self::leak) keeps it forever instead (in a
/// global registry, so it stays reachable and Miri's leak check does not report it) and
/// gives a `&'static FrameAllocator`.
pub struct SimulatedMemory {
    allocator: Box<FrameAllocator>,
    buf: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the buffer is owned by this value alone and only reached through the allocator, which is itself `Send + Sync`.
unsafe impl Send for SimulatedMemory {}
// SAFETY: as above; shared access goes through the allocator's own synchronisation.
unsafe impl Sync for SimulatedMemory {}

impl SimulatedMemory {
    /// Physical address of the first byte of the buffer.
    pub const PHYS_BASE: u64 = 1 << 30;

    /// `bytes` (rounded up to whole pages) of simulated RAM, all usable.
    ///
    /// Panics if the host allocation fails or the memory is too small for the metadata
    /// array (a few pages): this is test scaffolding.
    pub fn new(bytes: usize) -> Self {
        let len = bytes.next_multiple_of(PAGE_SIZE) as u64;
        Self::with_ranges(len as usize, core::slice::from_ref(&(0..len)))
    }

    /// `bytes` of simulated RAM of which only `usable_offsets` (byte offsets into the
    /// buffer, sorted and non-overlapping; physical address = `PHYS_BASE` + offset) are
    /// given to the allocator, as a boot memory map with holes would.
    pub fn with_ranges(bytes: usize, usable_offsets: &[Range<u64>]) -> Self {
        let len = bytes.next_multiple_of(PAGE_SIZE).max(PAGE_SIZE);
        assert!(
            usable_offsets.iter().all(|r| r.end <= len as u64),
            "usable range beyond the simulated memory"
        );
        let layout = Layout::from_size_align(len, BUFFER_ALIGN).expect("simulated memory layout");
        // SAFETY: `layout` has a non-zero size.
        let buf = NonNull::new(unsafe { alloc_zeroed(layout) })
            .unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        let phys_offset = (buf.as_ptr() as u64).wrapping_sub(Self::PHYS_BASE);
        let ranges: std::vec::Vec<Range<u64>> = usable_offsets
            .iter()
            .map(|r| Self::PHYS_BASE + r.start..Self::PHYS_BASE + r.end)
            .collect();
        // SAFETY: the ranges lie inside `buf`, which nobody else uses and which lives as long as the allocator (freed only in `drop`, after the allocator is gone, or never after `leak`); phys + `phys_offset` is the matching address in `buf`.
        let allocator = match unsafe { FrameAllocator::new(phys_offset, &ranges) } {
            Ok(a) => a,
            Err(e) => {
                // SAFETY: allocated above with this layout; the allocator was not built.
                unsafe { dealloc(buf.as_ptr(), layout) };
                panic!("simulated memory: FrameAllocator::new failed: {e:?}");
            }
        };
        Self {
            allocator: Box::new(allocator),
            buf,
            layout,
        }
    }

    /// The allocator over this memory.
    pub fn allocator(&self) -> &FrameAllocator {
        &self.allocator
    }

    /// Host address of the first simulated byte (physical [`PHYS_BASE`](Self::PHYS_BASE)).
    pub fn host_base(&self) -> *mut u8 {
        self.buf.as_ptr()
    }

    /// Size of the simulated memory in bytes.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Never true: the buffer is at least a page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Keeps the memory forever and returns an allocator usable as `'static`.
    ///
    /// The memory is parked in a global registry rather than forgotten: it stays
    /// reachable from a static, which is what Miri's leak check asks of memory that is
    /// meant to live until the process exits.
    pub fn leak(self) -> &'static FrameAllocator {
        let mut leaked = LEAKED.lock();
        leaked.push(self);
        // Taken after the move into the registry, so no later move of the box retags it.
        let allocator: *const FrameAllocator = &*leaked.last().expect("just pushed").allocator;
        drop(leaked);
        // SAFETY: the allocator lives in its own heap box, which the registry's reallocations do not move (they move the box pointer only); the registry never removes or drops its entries, so the box (and the buffer it describes) lives until the process exits.
        unsafe { &*allocator }
    }
}

impl Drop for SimulatedMemory {
    fn drop(&mut self) {
        // SAFETY: allocated in `with_ranges` with `self.layout`; `&mut self` proves no borrow of the allocator (hence of the buffer) is alive, and the allocator field dropped afterwards does not touch the buffer.
        unsafe { dealloc(self.buf.as_ptr(), self.layout) };
    }
}

/// `bytes` of fully usable simulated memory, leaked: a `&'static FrameAllocator` for tests.
pub fn simulated(bytes: usize) -> &'static FrameAllocator {
    SimulatedMemory::new(bytes).leak()
}
