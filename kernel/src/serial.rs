//! The serial console (COM1), where every line the kernel prints goes.
//!
//! QEMU connects COM1 to its stdio (`-serial stdio`), so this is both the boot log
//! and the channel the test harness reports through.

use core::fmt::{self, Write};
use mm::sync::IrqSpinLock;
use uart_16550::SerialPort;

/// COM1's I/O port base.
const COM1: u16 = 0x3F8;

/// The console. An interrupt handler may print (exceptions log themselves), so the
/// lock disables interrupts while held.
static SERIAL: IrqSpinLock<Option<SerialPort>> = IrqSpinLock::new(None);

/// Programs the UART (115200 8N1, FIFOs on). Called first thing at boot.
pub fn init() {
    // SAFETY: COM1 is the standard PC serial port; nothing else in the kernel drives these I/O ports.
    let mut port = unsafe { SerialPort::new(COM1) };
    port.init();
    *SERIAL.lock() = Some(port);
}

/// Writes formatted text to the console.
#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    let mut guard = SERIAL.lock();
    if let Some(port) = guard.as_mut() {
        // A UART write cannot fail; `fmt::Error` could only come from a `Display` impl.
        let _ = port.write_fmt(args);
    }
}

/// Writes to the console even if the lock is held: for the panic path, where the
/// lock holder may be the very code that panicked (it will never release it).
pub fn emergency_print(args: fmt::Arguments) {
    // SAFETY: COM1 is always present; two writers can at worst interleave bytes, which is acceptable on the way down.
    let mut port = unsafe { SerialPort::new(COM1) };
    let _ = port.write_fmt(args);
}

/// Prints to the serial console.
#[macro_export]
macro_rules! serial_print {
    ($($arg:tt)*) => { $crate::serial::_print(format_args!($($arg)*)) };
}

/// Prints to the serial console, with a newline.
#[macro_export]
macro_rules! serial_println {
    () => ($crate::serial_print!("\n"));
    ($($arg:tt)*) => ($crate::serial_print!("{}\n", format_args!($($arg)*)));
}
