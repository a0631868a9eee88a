//! VMAs and the machinery around them (Linux: `mm/vma.c`, `mm/mmap_lock.c`).
pub mod alloc;
pub mod anon;
pub mod area;
pub mod lock;
pub mod merge;
pub mod mm;
pub mod rcu;
pub mod tree;

pub use anon::{AnonVma, AnonVmaRef};
pub use area::{FileRef, PAGE_SIZE, VmFile, VmFlags, VmOperations, Vma, VmaRef, VmaStable};
pub use lock::{VM_REFCNT_EXCLUDE_READERS_FLAG, VM_REFCNT_LIMIT, VmaReadError, VmaReadGuard};
pub use merge::{VmaMergeState, VmaMergeStruct};
pub use mm::{
    DEFAULT_MAX_MAP_COUNT, DetachedVmas, Mm, MmHooks, MmReadGuard, MmWriteGuard, VmaIterator,
};
