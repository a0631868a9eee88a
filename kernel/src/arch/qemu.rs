//! QEMU's `isa-debug-exit` device: how a kernel run ends with a status.
//!
//! Writing `v` to port 0xf4 makes QEMU exit with status `(v << 1) | 1`;
//! `run-qemu.sh` maps 33 (`Success`) to 0 and 35 (`Failed`) to 1.

use x86_64::instructions::port::Port;

/// The status a kernel run ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// Everything passed (QEMU exit status 33).
    Success = 0x10,
    /// A test failed or the kernel panicked (QEMU exit status 35).
    Failed = 0x11,
}

/// Ends the run. Halts forever if the device is missing (e.g. on real hardware).
pub fn exit(code: ExitCode) -> ! {
    // SAFETY: port 0xf4 is the debug-exit device `run-qemu.sh` always adds; on a machine without it the write goes nowhere.
    unsafe { Port::<u32>::new(0xf4).write(code as u32) };
    crate::hlt_loop()
}
