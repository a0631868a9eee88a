//! Linux's uapi constants for the memory syscalls (x86_64 values).
//!
//! Linux: `include/uapi/asm-generic/mman-common.h`, `mman.h`,
//! `include/uapi/linux/mman.h`, `include/uapi/linux/fs.h` (PROCMAP_QUERY).

/// Page can not be accessed.
pub const PROT_NONE: u32 = 0x0;
/// Page can be read.
pub const PROT_READ: u32 = 0x1;
/// Page can be written.
pub const PROT_WRITE: u32 = 0x2;
/// Page can be executed.
pub const PROT_EXEC: u32 = 0x4;
/// Page may be used for atomic ops.
pub const PROT_SEM: u32 = 0x8;
/// mprotect flag: extend change to start of growsdown VMA.
pub const PROT_GROWSDOWN: u32 = 0x0100_0000;
/// mprotect flag: extend change to end of growsup VMA.
pub const PROT_GROWSUP: u32 = 0x0200_0000;

/// Share changes.
pub const MAP_SHARED: u32 = 0x01;
/// Changes are private.
pub const MAP_PRIVATE: u32 = 0x02;
/// Share changes and validate extension flags.
pub const MAP_SHARED_VALIDATE: u32 = 0x03;
/// Mask for the mapping type.
pub const MAP_TYPE: u32 = 0x0f;
/// Interpret addr exactly.
pub const MAP_FIXED: u32 = 0x10;
/// Don't use a file.
pub const MAP_ANONYMOUS: u32 = 0x20;
/// Only give out 32-bit addresses (x86_64).
pub const MAP_32BIT: u32 = 0x40;
/// Stack-like segment.
pub const MAP_GROWSDOWN: u32 = 0x0100;
/// Ignored (ETXTBSY in the past).
pub const MAP_DENYWRITE: u32 = 0x0800;
/// Ignored.
pub const MAP_EXECUTABLE: u32 = 0x1000;
/// Pages are locked.
pub const MAP_LOCKED: u32 = 0x2000;
/// Don't check for reservations.
pub const MAP_NORESERVE: u32 = 0x4000;
/// Populate (prefault) page tables.
pub const MAP_POPULATE: u32 = 0x8000;
/// Do not block on IO.
pub const MAP_NONBLOCK: u32 = 0x1_0000;
/// Give out an address that is best suited for process/thread stacks.
pub const MAP_STACK: u32 = 0x2_0000;
/// Create a huge page mapping.
pub const MAP_HUGETLB: u32 = 0x4_0000;
/// Perform synchronous page faults for the mapping.
pub const MAP_SYNC: u32 = 0x8_0000;
/// MAP_FIXED which doesn't unmap underlying mapping.
pub const MAP_FIXED_NOREPLACE: u32 = 0x10_0000;
/// For anonymous mmap, memory could be uninitialized.
pub const MAP_UNINITIALIZED: u32 = 0x400_0000;

/// Flags plain `MAP_SHARED` keeps (Linux: `LEGACY_MAP_MASK`); `MAP_SHARED_VALIDATE`
/// with anything else is EOPNOTSUPP.
pub const LEGACY_MAP_MASK: u32 = MAP_SHARED
    | MAP_PRIVATE
    | MAP_FIXED
    | MAP_ANONYMOUS
    | MAP_DENYWRITE
    | MAP_EXECUTABLE
    | MAP_UNINITIALIZED
    | MAP_GROWSDOWN
    | MAP_LOCKED
    | MAP_NORESERVE
    | MAP_POPULATE
    | MAP_NONBLOCK
    | MAP_STACK
    | MAP_HUGETLB
    | MAP_32BIT
    | MAP_HUGE_MASK;
/// Shift of the huge page size in mmap's flags (Linux: `MAP_HUGE_SHIFT`): bits 26–31
/// hold its log2.
pub const MAP_HUGE_SHIFT: u32 = 26;
/// 2 MiB huge pages (Linux: `MAP_HUGE_2MB`).
pub const MAP_HUGE_2MB: u32 = 21 << MAP_HUGE_SHIFT;
/// 1 GiB huge pages (Linux: `MAP_HUGE_1GB`).
pub const MAP_HUGE_1GB: u32 = 30 << MAP_HUGE_SHIFT;
/// Huge page size encoding bits (Linux: `MAP_HUGE_MASK << MAP_HUGE_SHIFT`).
pub const MAP_HUGE_MASK: u32 = 0x3f << 26;

/// Move the mapping if it cannot grow in place.
pub const MREMAP_MAYMOVE: u32 = 1;
/// Move to `new_addr` exactly.
pub const MREMAP_FIXED: u32 = 2;
/// Leave the old range mapped (it reads as fresh memory).
pub const MREMAP_DONTUNMAP: u32 = 4;

/// No further special treatment.
pub const MADV_NORMAL: u32 = 0;
/// Don't need these pages.
pub const MADV_DONTNEED: u32 = 4;
/// Don't inherit across fork.
pub const MADV_DONTFORK: u32 = 10;
/// Do inherit across fork.
pub const MADV_DOFORK: u32 = 11;
/// Zero memory on fork, child only.
pub const MADV_WIPEONFORK: u32 = 18;
/// Undo MADV_WIPEONFORK.
pub const MADV_KEEPONFORK: u32 = 19;

/// PROCMAP_QUERY: VMA is readable.
pub const PROCMAP_QUERY_VMA_READABLE: u64 = 0x01;
/// PROCMAP_QUERY: VMA is writable.
pub const PROCMAP_QUERY_VMA_WRITABLE: u64 = 0x02;
/// PROCMAP_QUERY: VMA is executable.
pub const PROCMAP_QUERY_VMA_EXECUTABLE: u64 = 0x04;
/// PROCMAP_QUERY: VMA is shared.
pub const PROCMAP_QUERY_VMA_SHARED: u64 = 0x08;
/// PROCMAP_QUERY: return the VMA covering the address or, failing that, the next one.
pub const PROCMAP_QUERY_COVERING_OR_NEXT_VMA: u64 = 0x10;
/// PROCMAP_QUERY: only file-backed VMAs.
pub const PROCMAP_QUERY_FILE_BACKED_VMA: u64 = 0x20;
