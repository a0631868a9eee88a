//! The memory-manager core: a Rust model of Linux's `mm/`.
//!
//! This crate builds for the kernel target (`no_std`) and for the host, so its
//! pure logic (buddy allocator, page-table walks over simulated memory, the VMA
//! tree, merge rules and the per-VMA lock state machine) is tested with plain
//! `cargo test`, while the kernel crate tests the hardware-facing parts under QEMU.
//!
//! Module map, each with its Linux counterpart:
//! - `conformance` (feature `conformance`: test code, off in the kernel build): the
//!   syscall conformance suite, one set of cases run on the host and in the kernel's test
//!   kernels: errno cases and their order, placement, maps, `.mmap_prepare`, mremap, and
//!   the regression reproducers.
//! - [`collections`]: generic data structures apart from their policy: the augmented
//!   interval tree (`lib/interval_tree.c`).
//! - [`errno`]: Linux error numbers for syscall-shaped entry points
//!   (`include/uapi/asm-generic/errno-base.h`).
//! - [`file`](mod@file): a small VFS core: inodes with a page cache and `i_mmap`, the
//!   `.mmap` and `.mmap_prepare` hooks, ramfs/secretmem/device/stacking files
//!   (`include/linux/fs.h`, `mm/filemap.c`, `mm/util.c`).
//! - [`frame`]: buddy frame allocator and per-frame metadata (`mm/page_alloc.c`,
//!   `struct page`).
//! - [`mmap`]: the syscall-shaped API of one address space (`mmap`, `munmap`, `mprotect`,
//!   `mremap`, `madvise`), the page-fault handler, `/proc/PID/maps` and PROCMAP_QUERY
//!   (`mm/mmap.c`, `mm/mprotect.c`, `mm/mremap.c`, `mm/madvise.c`, `mm/memory.c`,
//!   `fs/proc/task_mmu.c`).
//! - [`paging`]: 4-level page tables, TLB gather, PMD table sharing (`arch/x86/mm`,
//!   `mm/mmu_gather.c`).
//! - [`sync`]: interrupt-safe spin lock, and the lock order of the whole crate.
//! - [`vma`]: VMAs, the VMA tree, merge/split, per-VMA locks, anon_vmas, `i_mmap`
//!   (`mm/vma.c`, `mm/mmap_lock.c`, `mm/rmap.c`, `mm/interval_tree.c`).
#![cfg_attr(target_os = "none", no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
// `Arc::try_new`: allocation on syscall paths fails with ENOMEM instead of aborting.
#![feature(allocator_ext)]

/// log2 of the base page size (x86_64: 4 KiB). Linux: `PAGE_SHIFT`. The one
/// definition: every layer (frames, page tables, VMAs, syscalls, the kernel) uses it.
pub const PAGE_SHIFT: u32 = 12;
/// The base page size in bytes. Linux: `PAGE_SIZE`.
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;

extern crate alloc;

pub mod collections;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod errno;
pub mod file;
pub mod frame;
pub mod hugetlb;
pub mod mmap;
pub mod paging;
pub mod sync;
pub mod vma;

/// The address space (Linux: `struct mm_struct`): the one type that owns a user
/// address space's VMAs, page tables and layout, with the syscall-shaped operations.
pub use mmap::AddressSpace;
