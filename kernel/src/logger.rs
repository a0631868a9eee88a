//! A `log` facade backend that writes to the serial console.
//!
//! Lines look like `[INFO  cpu0] message`, with the id of the CPU that logged
//! (from its per-CPU block).

use log::{LevelFilter, Metadata, Record};

struct SerialLogger;

static LOGGER: SerialLogger = SerialLogger;

impl log::Log for SerialLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            crate::serial_println!(
                "[{:<5} cpu{}] {}",
                record.level(),
                crate::percpu::this_cpu(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

/// Installs the logger. `level` is the most verbose level printed.
pub fn init(level: LevelFilter) {
    // `set_logger` fails only if a logger is already installed: keep the first one.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// The default level: `info` for the kernel, `warn` for test and bench kernels so
/// their libtest-format output stays readable.
pub const fn default_level(quiet: bool) -> LevelFilter {
    if quiet {
        LevelFilter::Warn
    } else {
        LevelFilter::Info
    }
}
