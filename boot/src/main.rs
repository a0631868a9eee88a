//! Host tool: turns the kernel ELF into a bootable disk image.
//!
//! `boot image <kernel-elf> <out.img> [--uefi]` writes a BIOS (or UEFI) disk image
//! with the `bootloader` crate. Run with no arguments (`cargo run` at the top of the
//! workspace), it hands over to `run-qemu.sh`, which builds the kernel, makes the
//! image with this tool and boots it in QEMU.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn usage() -> ExitCode {
    eprintln!(
        "usage: boot image <kernel-elf> <out.img> [--uefi]\n       boot [run-qemu.sh options]"
    );
    ExitCode::from(2)
}

fn make_image(kernel: &Path, out: &Path, uefi: bool) -> Result<(), String> {
    if !kernel.is_file() {
        return Err(format!("kernel ELF {} not found", kernel.display()));
    }
    let result = if uefi {
        bootloader::UefiBoot::new(kernel).create_disk_image(out)
    } else {
        bootloader::BiosBoot::new(kernel).create_disk_image(out)
    };
    result.map_err(|e| format!("creating disk image {}: {e:#}", out.display()))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("image") => {
            let (Some(kernel), Some(out)) = (args.get(1), args.get(2)) else {
                return usage();
            };
            let uefi = args.iter().skip(3).any(|a| a == "--uefi");
            match make_image(Path::new(kernel), Path::new(out), uefi) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("boot: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("-h") | Some("--help") => usage(),
        _ => {
            // `cargo run`: boot the kernel the same way `./run-qemu.sh` does.
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
            let status = Command::new("bash")
                .arg(root.join("run-qemu.sh"))
                .args(&args)
                .status();
            match status {
                Ok(s) => ExitCode::from(s.code().unwrap_or(1) as u8),
                Err(e) => {
                    eprintln!("boot: cannot start run-qemu.sh: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
