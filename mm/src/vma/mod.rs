//! VMAs and the machinery around them (Linux: `mm/vma.c`, `mm/mmap_lock.c`).
//!
//! # Map
//! - [`area`]: [`Vma`] (`struct vm_area_struct`, 192 bytes, refcount on its own line),
//!   [`VmFlags`] (Linux bit values), [`VmOperations`], [`VmFile`]/[`FileRef`].
//! - [`pool`]: type-stable VMA slots (`vm_area_alloc/dup/free`), [`pool::vma_pool_stats`].
//! - [`maple`]: the VMA tree, a maple-style range B-tree with gaps; readable under RCU.
//! - [`i_mmap`]: [`IMmap`], a file's VMAs by file page range, kept exact by the engine.
//! - [`IntervalTree`] (in [`crate::collections`]): the augmented interval tree by file
//!   page range (`vma_interval_tree`), the index of `i_mmap`.
//! - [`stat`]: [`VmStat`], the page counters (`total_vm`, `data_vm`, …, commit charge)
//!   the engine keeps exact at every change.
//! - [`rcu`]: the tree's use of [`crate::sync::rcu`] (cookies for retired nodes).
//! - [`lock`]: `vm_refcnt` state machine, [`VmaReadGuard`], [`VmaReadError`].
//! - [`anon`]: [`AnonVma`]/[`AnonVmaRef`] and chains (clone, fork, unlink, reuse).
//! - [`space`]: [`Mm`] (tree + mmap lock + `mm_lock_seq` + `map_count`),
//!   [`MmWriteGuard`] (every change), [`MmReadGuard`], [`VmaIterator`], [`DetachedVmas`].
//! - [`commit`]: how VMAs enter, change and leave the tree (`vma_link`, the commit of
//!   a merge or split, the munmap gather), [`DetachedVmas`].
//! - [`merge`]: [`VmaMergeStruct`] and the operations on [`MmWriteGuard`]:
//!   `vma_merge_new_range`, `vma_merge_existing_range`, `vma_modify`, `vma_modify_flags`,
//!   `split_vma`, `__split_vma`, `vma_expand`, `vma_shrink`, `vma_merge_extend`,
//!   `copy_vma`, `map_new_range` (the VMA half of `__mmap_region`).
//! - `bench` (feature `bench`): helpers for the kernel's `--bench` mode.
//!
//! # Typical kernel use
//! ```ignore
//! let mm = Mm::new();
//! let mut g = mm.write_lock();                 // mmap_write_lock
//! g.map_new_range(addr, len, flags, pgoff, None)?;
//! let d = g.detach_range(start, end)?;         // munmap: gather + detach
//! /* zap page tables of d.iter() */
//! g.remove_vmas(d);                            // close + free
//! drop(g);                                     // mmap_write_unlock: VMA write locks end
//! let r = mm.lock_vma_under_rcu(fault_addr);   // lock-free fault path
//! ```
//!
//! # Benchmarks (`bench` module, feature `bench`)
//! - `bench::build_mm(n)`: an [`Mm`] with `n` non-mergeable 4-page VMAs at
//!   `bench::addr(i)`; `n` = 10 / 1,000 / 65,530 for the `find` BENCH lines.
//! - `bench::find(&mm, addr)`: `find_vma` under the mmap read lock.
//! - `bench::find_rcu(&mm, addr)`: `lock_vma_under_rcu` + unlock (fault-path lookup).
//! - `bench::split_remerge(&mm, i)`: mprotect-style split of VMA `i` into three and
//!   re-merge into one (one BENCH "split+re-merge pair").
pub mod anon;
pub mod area;
#[cfg(feature = "bench")]
pub mod bench;
pub mod commit;
pub mod i_mmap;
pub mod lock;
pub mod maple;
pub mod merge;
pub mod pool;
pub mod rcu;
pub mod space;
pub mod stat;

pub use crate::collections::IntervalTree;
pub use anon::{AnonVma, AnonVmaRef};
pub use area::{FileRef, PAGE_SIZE, VmFile, VmFlags, VmOperations, Vma, VmaRef, VmaStable};
pub use commit::DetachedVmas;
pub use i_mmap::IMmap;
pub use lock::{VM_REFCNT_EXCLUDE_READERS_FLAG, VM_REFCNT_LIMIT, VmaReadError, VmaReadGuard};
#[cfg(feature = "fault-inject")]
pub use merge::{OLD_SPLIT_ORDER, SPLIT_WINDOW_HOOK};
pub use merge::{VmaMergeState, VmaMergeStruct};
pub use space::{
    DEFAULT_MAX_MAP_COUNT, Mm, MmHooks, MmReadGuard, MmWriteGuard, VmaInit, VmaIterator,
};
pub use stat::VmStat;
