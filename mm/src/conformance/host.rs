//! The host level of the conformance suite: simulated memory, faults resolved by
//! calling the fault handler directly.

use alloc::boxed::Box;

use super::{Harness, Space, UserFault};
use crate::frame::FrameAllocator;
use crate::frame::sim::simulated;
use crate::mmap::{AddressSpace, MmLayout, zero_page};

/// Bytes of simulated physical memory per harness: room for every case.
const SIMULATED_BYTES: usize = 32 << 20;

/// A harness over its own simulated physical memory (leaked: cases keep
/// `&'static` references to the allocator in their files).
pub struct HostHarness {
    alloc: &'static FrameAllocator,
}

impl HostHarness {
    /// A harness with fresh simulated memory. The shared zero page is taken now so it
    /// is part of every baseline, as the kernel takes it at boot.
    pub fn new() -> Self {
        let alloc = simulated(SIMULATED_BYTES);
        zero_page(alloc).expect("no memory for the zero page");
        HostHarness { alloc }
    }
}

impl Default for HostHarness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness for HostHarness {
    fn allocator(&self) -> &'static FrameAllocator {
        self.alloc
    }

    fn frames_in_use(&self) -> u64 {
        self.alloc.allocated_frames_settled()
    }

    fn space_with_layout(&self, layout: MmLayout) -> Box<dyn Space + '_> {
        let asp = AddressSpace::with_layout(self.alloc, layout).expect("no memory for an mm");
        Box::new(HostSpace(asp))
    }
}

/// An address space whose user memory is reached through the direct map of the
/// simulated memory, faulting pages in with [`AddressSpace::handle_fault`].
struct HostSpace(AddressSpace);

impl Space for HostSpace {
    fn asp(&self) -> &AddressSpace {
        &self.0
    }

    fn read_byte(&self, addr: usize) -> Result<u8, UserFault> {
        let mut b = [0u8];
        self.0
            .copy_from_user(addr, &mut b)
            .map_err(|_| UserFault { addr })?;
        Ok(b[0])
    }

    fn write_byte(&self, addr: usize, value: u8) -> Result<(), UserFault> {
        self.0
            .copy_to_user(addr, &[value])
            .map_err(|_| UserFault { addr })
    }

    fn fork(&self) -> Result<Box<dyn Space>, crate::errno::Errno> {
        Ok(Box::new(HostSpace(self.0.fork()?)))
    }
}
