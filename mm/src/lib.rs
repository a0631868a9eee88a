//! The memory-manager core: a Rust model of Linux's `mm/`.
//!
//! This crate builds for the kernel target (`no_std`) and for the host, so its
//! pure logic (buddy allocator, page-table walks over simulated memory, the VMA
//! tree, merge rules and the per-VMA lock state machine) is tested with plain
//! `cargo test`, while the kernel crate tests the hardware-facing parts under QEMU.
//!
//! Module map (Linux counterpart in brackets):
//! - [`conformance`]: syscall and `.mmap_prepare` test cases, run on the host and in the kernel.
//! - [`errno`]: Linux error numbers for syscall-shaped entry points.
//! - [`frame`]: buddy frame allocator and per-frame metadata [`mm/page_alloc.c`, `struct page`].
//! - [`paging`]: 4-level page tables, TLB gather [`arch/x86/mm`, `mm/mmu_gather.c`].
//! - [`sync`]: interrupt-safe spin lock.
//! - [`vma`]: VMAs, the VMA tree, merge/split, per-VMA locks [`mm/vma.c`, `mm/mmap_lock.c`].
#![cfg_attr(target_os = "none", no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
// `Arc::try_new`: allocation on syscall paths fails with ENOMEM instead of aborting.
#![feature(allocator_ext)]

extern crate alloc;

pub mod conformance;
pub mod errno;
pub mod file;
pub mod frame;
pub mod mmap;
pub mod paging;
pub mod sync;
pub mod vma;
