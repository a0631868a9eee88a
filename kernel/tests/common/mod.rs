//! The kernel-level [`Harness`] shared by the test kernels that run `mm::conformance`
//! code (`mmap_api`, `fuzz`): the global frame allocator, real address spaces loaded
//! in CR3, user bytes touched with fault-probing loads and stores.

use alloc::boxed::Box;
use alloc::sync::Arc;
use kernel::address_space;
use kernel::arch::extable::{ProbeFault, probe_read, probe_write};
use kernel::memory;
use mm::conformance::{Harness, Space, UserFault};
use mm::errno::Errno;
use mm::frame::FrameAllocator;
use mm::mmap::{AddressSpace, MmLayout};
use x86_64::VirtAddr;

/// The kernel level: the global frame allocator, address spaces made current on this
/// CPU, user bytes touched with fault-probing loads and stores.
pub struct KernelHarness;

impl Harness for KernelHarness {
    fn allocator(&self) -> &'static FrameAllocator {
        memory::frames()
    }

    fn frames_in_use(&self) -> u64 {
        // Not `allocated_frames()`: the heap may grow under a case and never shrinks.
        memory::usage().frames
    }

    fn space_with_layout(&self, layout: MmLayout) -> Box<dyn Space + '_> {
        let mm = address_space::new_user_space(layout).expect("no memory for an mm");
        address_space::activate(&mm);
        Box::new(KernelSpace { mm })
    }
}

/// A kernel address space under test. It is the CPU's current space whenever a user
/// access is made, and stops being current when dropped, so that its last reference
/// goes and it is torn down.
struct KernelSpace {
    mm: Arc<AddressSpace>,
}

impl KernelSpace {
    /// Loads this space into CR3 if another one (or none) is current.
    fn make_current(&self) {
        if !address_space::is_current(&self.mm) {
            address_space::activate(&self.mm);
        }
    }
}

/// The faulting byte of a probe the fault handler could not resolve.
fn user_fault(f: ProbeFault) -> UserFault {
    UserFault {
        addr: f.addr.as_u64() as usize,
    }
}

impl Space for KernelSpace {
    fn asp(&self) -> &AddressSpace {
        &self.mm
    }

    fn read_byte(&self, addr: usize) -> Result<u8, UserFault> {
        self.make_current();
        probe_read(VirtAddr::new(addr as u64)).map_err(user_fault)
    }

    fn write_byte(&self, addr: usize, value: u8) -> Result<(), UserFault> {
        self.make_current();
        probe_write(VirtAddr::new(addr as u64), value).map_err(user_fault)
    }

    fn fork(&self) -> Result<Box<dyn Space>, Errno> {
        let mm = address_space::fork(&self.mm)?;
        Ok(Box::new(KernelSpace { mm }))
    }
}

impl Drop for KernelSpace {
    fn drop(&mut self) {
        // The CPU's `current` holds a reference: give it up, or the space outlives
        // the case and its frames count as a leak.
        if address_space::is_current(&self.mm) {
            address_space::deactivate_current();
        }
    }
}
