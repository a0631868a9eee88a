//! The VMA itself: `struct vm_area_struct`, its flags, operations and file handle.
//!
//! Linux: `include/linux/mm_types.h` (`struct vm_area_struct`), `include/linux/mm.h`
//! (`VM_*` flags, `struct vm_operations_struct`).
//!
//! # Concurrency model of the fields
//!
//! A [`Vma`] lives in type-stable memory (see [`super::pool`]) and is shared by
//! reference ([`VmaRef`] = `&'static Vma`) between the mmap-lock holder and lock-free
//! readers on the fault path. Fields are therefore split in two classes:
//!
//! * Word-sized fields a lock-free reader may look at before it holds any lock
//!   (range, flags, pgoff, page protection, owning mm, lock fields, ops, anon_vma, private
//!   data) are atomics. Writers store them only while holding the mmap write lock *and*
//!   the VMA write lock (or while the VMA is detached), so the relaxed ordering used for
//!   ordinary accesses is enough: publication to lock-free readers goes through the
//!   release/acquire pairs of `vm_refcnt` and `mm_lock_seq`.
//! * Multi-word fields (`vm_file`, the anon_vma chain, the anonymous name) sit in
//!   `UnsafeCell`s. Their safe accessors take a [`VmaStable`] proof: a guard showing
//!   that the caller holds the mmap lock or a VMA read lock, i.e. that no writer can be
//!   changing them (Linux: `vma_assert_stabilised()`). So does [`Vma::anon_vma`],
//!   which takes a reference on the anon_vma the VMA owns one on: without a lock a
//!   writer could be dropping the VMA's reference (the last one) under the reader.
//! * One exception, Linux's: the first anonymous fault gives a VMA its anon_vma under
//!   the mmap *read* lock (and the VMA read lock), serialised with other such faults
//!   by the mm's `anon_prepare_lock` (Linux: `page_table_lock` in `__anon_vma_prepare`). So while `anon_vma` is null
//!   its chain may be written under a read-level proof; the writer publishes
//!   `anon_vma` (release) only after the chain is complete, and never writes it again
//!   without the write locks. Readers under a read-level proof therefore load
//!   `anon_vma` (acquire) first and look at the chain only when it is set, which
//!   [`Vma::anon_vma_chain_len`] does.
//!
//! # What a proof proves
//!
//! A lock stabilises *some* VMAs, not every VMA: `VmaRef` is `&'static` and `Copy`, so
//! safe code can keep a handle to a VMA of another address space, or one freed and
//! reused since. Each proof therefore names what it covers
//! ([`VmaStable::stabilises`]), and every accessor asserts it (a real `assert!`: one
//! compare; a failure is a kernel bug, never user input):
//!
//! * the mmap lock of an [`Mm`](super::Mm), read or write
//!   ([`MmReadGuard`](super::MmReadGuard), [`MmWriteGuard`](super::MmWriteGuard)),
//!   stabilises the VMAs whose `vm_mm` is that mm. Every writer of such a VMA holds
//!   that mm's mmap write lock (attached VMAs are changed under it and their VMA write
//!   lock; detached ones are private to the write-lock holder that allocated or
//!   detached them), and freeing one happens under it too (or in `Mm::drop`, which no
//!   guard can outlive). Freeing (`vm_area_free`, see [`super::pool`]) clears
//!   `vm_mm` before the slot goes back to the pool, so a handle to a slot freed before
//!   the lock was taken, perhaps reused by another mm since, no longer reads as this
//!   mm's: the clearing store happens before the lock acquisition, so the check cannot
//!   see the stale id, and while the lock is held no slot of this mm can be freed. (A
//!   slot freed and reallocated by the same mm is that mm's new VMA: reading it through
//!   an old handle is the caller's logic error, but no data race.)
//! * a [`VmaReadGuard`](super::VmaReadGuard) stabilises its own VMA and no other: a
//!   writer must write-lock the VMA first, and `vma_start_write` waits for readers.
//!
//! The proof is a borrow of the guard for the duration of the call, so it cannot
//! outlive the lock; what the accessors return is owned (a counted `Arc` or
//! [`AnonVmaRef`]), valid after the lock is dropped. The writer side asserts the same
//! ownership: [`MmWriteGuard`](super::MmWriteGuard) refuses to write-lock, change,
//! duplicate or free a VMA whose `vm_mm` is not its mm. Crate-internal code that owns a
//! VMA without holding a guard (freeing a detached VMA, `Mm::drop`) uses the
//! `unsafe` `*_unchecked` readers and argues its exclusivity at the call site.
//!
//! What the type system says on its own (the examples fail to compile): no proof can
//! be made outside this crate, and a dropped guard is no proof.
//!
//! ```compile_fail,E0277
//! // Sealed: a type of another crate cannot claim to stabilise VMAs.
//! struct Fake;
//! impl mm::vma::VmaStable for Fake {
//!     fn stabilises(&self, _: &mm::vma::Vma) -> bool { true }
//! }
//! ```
//! ```compile_fail,E0624
//! // No guard is built out of nothing: the VMA read guard's constructor is private.
//! let mm = mm::vma::Mm::new();
//! let v = mm.write_lock().map_anon(0x1000, 0x2000, 1, mm::vma::VmFlags::RW_DEFAULT).unwrap();
//! let fake = mm::vma::VmaReadGuard::new(v);
//! ```
//! ```compile_fail,E0382
//! // A guard that has been released proves nothing.
//! let mm = mm::vma::Mm::new();
//! let v = mm.write_lock().map_anon(0x1000, 0x2000, 1, mm::vma::VmFlags::RW_DEFAULT).unwrap();
//! let g = mm.read_lock();
//! drop(g);
//! let _ = v.file(&g);
//! ```
//! ```compile_fail,E0061
//! // `anon_vma` takes a reference, so it wants a proof too.
//! let mm = mm::vma::Mm::new();
//! let v = mm.write_lock().map_anon(0x1000, 0x2000, 1, mm::vma::VmFlags::RW_DEFAULT).unwrap();
//! let _ = v.anon_vma();
//! ```
//! ```compile_fail,E0597
//! // A VMA read lock cannot outlive the address space it was taken in.
//! let r = {
//!     let mm = mm::vma::Mm::new();
//!     mm.write_lock().map_anon(0x1000, 0x2000, 1, mm::vma::VmFlags::RW_DEFAULT).unwrap();
//!     mm.lock_vma_under_rcu(0x1000).unwrap()
//! };
//! ```
//!
//! The same uses with the lock held compile and run:
//!
//! ```
//! let mm = mm::vma::Mm::new();
//! let v = mm.write_lock().map_anon(0x1000, 0x2000, 1, mm::vma::VmFlags::RW_DEFAULT).unwrap();
//! let g = mm.read_lock();
//! assert!(v.file(&g).is_none() && v.anon_vma(&g).is_none());
//! drop(g);
//! let r = mm.lock_vma_under_rcu(0x1000).unwrap();
//! assert_eq!(r.anon_vma_chain_len(&r), 0);
//! ```

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::fmt;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::anon::AnonVmaRef;
use crate::errno::Errno;

pub use crate::{PAGE_SHIFT, PAGE_SIZE};

/// Number of pages in `len` bytes (Linux: `PHYS_PFN`).
#[inline]
pub const fn pages(len: usize) -> usize {
    len >> PAGE_SHIFT
}

bitflags::bitflags! {
    /// VMA flags with Linux's bit values (Linux: `vm_flags_t`, `VM_*` in `include/linux/mm.h`).
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
    pub struct VmFlags: u64 {
        /// Linux: `VM_READ`.
        const READ = 0x0000_0001;
        /// Linux: `VM_WRITE`.
        const WRITE = 0x0000_0002;
        /// Linux: `VM_EXEC`.
        const EXEC = 0x0000_0004;
        /// Linux: `VM_SHARED`.
        const SHARED = 0x0000_0008;
        /// Linux: `VM_MAYREAD`.
        const MAYREAD = 0x0000_0010;
        /// Linux: `VM_MAYWRITE`.
        const MAYWRITE = 0x0000_0020;
        /// Linux: `VM_MAYEXEC`.
        const MAYEXEC = 0x0000_0040;
        /// Linux: `VM_MAYSHARE`.
        const MAYSHARE = 0x0000_0080;
        /// Linux: `VM_GROWSDOWN`.
        const GROWSDOWN = 0x0000_0100;
        /// Linux: `VM_UFFD_MISSING`.
        const UFFD_MISSING = 0x0000_0200;
        /// Linux: `VM_PFNMAP`.
        const PFNMAP = 0x0000_0400;
        /// The VMA may contain guard regions (sticky, ≈6.19).
        const MAYBE_GUARD = 0x0000_0800;
        /// Linux: `VM_UFFD_WP`.
        const UFFD_WP = 0x0000_1000;
        /// Linux: `VM_LOCKED`.
        const LOCKED = 0x0000_2000;
        /// Linux: `VM_IO`.
        const IO = 0x0000_4000;
        /// Linux: `VM_SEQ_READ`.
        const SEQ_READ = 0x0000_8000;
        /// Linux: `VM_RAND_READ`.
        const RAND_READ = 0x0001_0000;
        /// Linux: `VM_DONTCOPY`.
        const DONTCOPY = 0x0002_0000;
        /// Linux: `VM_DONTEXPAND`.
        const DONTEXPAND = 0x0004_0000;
        /// Linux: `VM_LOCKONFAULT`.
        const LOCKONFAULT = 0x0008_0000;
        /// Linux: `VM_ACCOUNT`.
        const ACCOUNT = 0x0010_0000;
        /// Linux: `VM_NORESERVE`.
        const NORESERVE = 0x0020_0000;
        /// Linux: `VM_HUGETLB`.
        const HUGETLB = 0x0040_0000;
        /// Linux: `VM_SYNC`.
        const SYNC = 0x0080_0000;
        /// `VM_ARCH_1`; `VM_PAT` on x86.
        const PAT = 0x0100_0000;
        /// Linux: `VM_WIPEONFORK`.
        const WIPEONFORK = 0x0200_0000;
        /// Linux: `VM_DONTDUMP`.
        const DONTDUMP = 0x0400_0000;
        /// Linux: `VM_SOFTDIRTY`.
        const SOFTDIRTY = 0x0800_0000;
        /// Linux: `VM_MIXEDMAP`.
        const MIXEDMAP = 0x1000_0000;
        /// Linux: `VM_HUGEPAGE`.
        const HUGEPAGE = 0x2000_0000;
        /// Linux: `VM_NOHUGEPAGE`.
        const NOHUGEPAGE = 0x4000_0000;
        /// Linux: `VM_MERGEABLE`.
        const MERGEABLE = 0x8000_0000;
        /// x86 protection-key bits (`VM_HIGH_ARCH_0..3`).
        const PKEY_BIT0 = 1 << 32;
        /// Linux: `VM_PKEY_BIT1`.
        const PKEY_BIT1 = 1 << 33;
        /// Linux: `VM_PKEY_BIT2`.
        const PKEY_BIT2 = 1 << 34;
        /// Linux: `VM_PKEY_BIT3`.
        const PKEY_BIT3 = 1 << 35;
        /// x86 shadow stack (`VM_HIGH_ARCH_5`).
        const SHADOW_STACK = 1 << 37;
        /// Linux: `VM_ALLOW_ANY_UNCACHED`.
        const ALLOW_ANY_UNCACHED = 1 << 39;
        /// Linux: `VM_DROPPABLE`.
        const DROPPABLE = 1 << 40;
        /// Linux: `VM_UFFD_MINOR`.
        const UFFD_MINOR = 1 << 41;
        /// mseal()'d (64-bit only bit 42 since 6.12).
        const SEALED = 1 << 42;
    }
}

impl VmFlags {
    /// Linux: `VM_SPECIAL` — mappings that never merge.
    pub const SPECIAL: VmFlags = VmFlags::IO
        .union(VmFlags::DONTEXPAND)
        .union(VmFlags::PFNMAP)
        .union(VmFlags::MIXEDMAP);
    /// Linux: `VM_STICKY` — OR'd into the result of a merge if any participant has them.
    pub const STICKY: VmFlags = VmFlags::SOFTDIRTY.union(VmFlags::MAYBE_GUARD);
    /// Linux: `VM_IGNORE_MERGE` — differences in these bits do not prevent a merge.
    pub const IGNORE_MERGE: VmFlags = VmFlags::STICKY;
    /// Linux: `VM_ACCESS_FLAGS`.
    pub const ACCESS: VmFlags = VmFlags::READ.union(VmFlags::WRITE).union(VmFlags::EXEC);
    /// Linux: `VM_DATA_DEFAULT_FLAGS`-like default for anonymous read/write memory
    /// (and the flags every `tools/testing/vma` scenario uses).
    pub const RW_DEFAULT: VmFlags = VmFlags::READ
        .union(VmFlags::WRITE)
        .union(VmFlags::MAYREAD)
        .union(VmFlags::MAYWRITE);
}

/// A file that can back a VMA, as the VMA layer sees it: an identity, a name, and the
/// `i_mmap` the engine keeps up to date as VMAs of the file come, change and go.
///
/// Linux: `struct file` as seen from `vm_file` (and `f_mapping->i_mmap`).
pub trait VmFile: Send + Sync {
    /// Name for diagnostics (`/proc/pid/maps`).
    fn name(&self) -> &str {
        ""
    }
    /// The index of the VMAs mapping this file, if the file keeps one (Linux:
    /// `file->f_mapping->i_mmap`). Files without one (test stand-ins) return `None`.
    fn i_mmap(&self) -> Option<&super::i_mmap::IMmap> {
        None
    }
    /// The concrete file, for the layers above that know their own type (the VFS
    /// recovers its `File` from a VMA's `vm_file` this way). Implement as `self`.
    fn into_any(self: Arc<Self>) -> Arc<dyn core::any::Any + Send + Sync>;
}

/// A counted reference to a backing file.
pub type FileRef = Arc<dyn VmFile>;

/// Pointer identity of two optional files (Linux compares `vm_file` pointers).
pub fn same_file(a: Option<&FileRef>, b: Option<&FileRef>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => core::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b)),
        _ => false,
    }
}

/// Page-fault description handed to [`VmOperations::fault`] (Linux: `struct vm_fault`).
#[derive(Clone, Copy, Debug)]
pub struct VmFault {
    /// Faulting VMA.
    pub vma: VmaRef,
    /// Faulting address (page aligned).
    pub address: usize,
    /// File page offset of the address.
    pub pgoff: usize,
    /// `FAULT_FLAG_*` bits.
    pub flags: u32,
}

/// Result bits of a fault handler (Linux: `vm_fault_t`, `VM_FAULT_*`).
pub type VmFaultT = u32;

/// The `->may_split` hook: may `vma` be split at `addr`? (Linux: `may_split`.)
pub type MaySplitFn = fn(VmaRef, usize) -> Result<(), Errno>;

/// VMA operations (Linux: `struct vm_operations_struct`); all hooks optional.
///
/// A VMA with `ops == None` is anonymous (Linux: `vma_is_anonymous()`).
#[derive(Default)]
pub struct VmOperations {
    /// Called when a VMA is duplicated (split, fork, copy_vma). Linux: `->open`.
    pub open: Option<fn(VmaRef)>,
    /// Called before a VMA is removed. A VMA with this hook is never *deleted* by a merge.
    pub close: Option<fn(VmaRef)>,
    /// May veto a split at `addr`. Linux: `->may_split`.
    pub may_split: Option<MaySplitFn>,
    /// Page fault handler. Linux: `->fault`.
    pub fault: Option<fn(&VmFault) -> VmFaultT>,
    /// Name shown in maps. Linux: `->name`.
    pub name: Option<fn(VmaRef) -> &'static str>,
}

impl fmt::Debug for VmOperations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmOperations")
            .field("open", &self.open.is_some())
            .field("close", &self.close.is_some())
            .field("may_split", &self.may_split.is_some())
            .field("fault", &self.fault.is_some())
            .field("name", &self.name.is_some())
            .finish()
    }
}

/// A VMA handle. VMA memory is type-stable and never returned to the allocator, so a
/// `'static` reference is always safe to dereference; whether it still describes the
/// mapping you looked up is what the lock protocol of [`super::lock`] tells you.
pub type VmaRef = &'static Vma;

/// Pointer identity of two VMA handles.
#[inline]
pub fn vma_eq(a: VmaRef, b: VmaRef) -> bool {
    core::ptr::eq(a, b)
}

/// Pointer identity of two optional VMA handles.
#[inline]
pub fn opt_vma_eq(a: Option<VmaRef>, b: Option<VmaRef>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => vma_eq(a, b),
        _ => false,
    }
}

/// Proof that the caller holds a lock under which a VMA's multi-word fields cannot
/// change: the mmap lock (read or write) of the VMA's own address space, or a read
/// lock on that very VMA (see the module docs, "What a proof proves").
///
/// Linux: `vma_assert_stabilised()` (`mmap_assert_locked(vma->vm_mm)` or
/// `vma_assert_locked(vma)`). Sealed: only the lock guards of this module implement it.
pub trait VmaStable: sealed::Sealed {
    /// True if holding this lock keeps `vma`'s fields from changing: `vma` belongs to
    /// the locked address space (mmap lock), or is the read-locked VMA (VMA lock).
    fn stabilises(&self, vma: &Vma) -> bool;
}

pub(super) mod sealed {
    /// Seal of [`super::VmaStable`].
    pub trait Sealed {}
}

/// Sentinel for `vm_lock_seq` meaning "never write-locked" (Linux: `UINT_MAX`).
pub const VM_LOCK_SEQ_NONE: u32 = u32::MAX;

/// The refcount and the rarely used fields, on their own cache line (Linux 6.15's
/// `struct vm_area_struct` layout: readers bumping `vm_refcnt` do not bounce the lines
/// the tree walk and the fault path read).
#[repr(C, align(64))]
pub(super) struct ColdLine {
    /// Linux: `vm_refcnt` — 0 detached, 1 attached, +1 per reader, +FLAG while a
    /// writer or detacher excludes readers (the state table of `vma::lock`).
    pub(super) vm_refcnt: AtomicU32,
    /// Anonymous VMA name (Linux: `anon_name`); `None` = unnamed.
    pub(super) anon_name: UnsafeCell<Option<Arc<str>>>,
    /// userfaultfd context identity, 0 = none (Linux: `vm_userfaultfd_ctx`).
    pub(super) uffd_ctx: AtomicUsize,
    /// Free-list link while the slot is free (Linux: `vm_freeptr`). Kept away from
    /// the refcount and `vm_mm` so a freed VMA still reads as detached.
    pub(super) free_next: AtomicPtr<Vma>,
    /// The hugetlb vma lock (Linux: `struct hugetlb_vma_lock`'s `rw_sema`, which Linux
    /// allocates for each shareable hugetlb VMA and hangs off `vm_private_data`; here it
    /// is embedded, so it exists for every VMA and cannot fail to be allocated). Rank 3
    /// of [`crate::sync`]'s order: read in the hugetlb fault, write to unshare.
    pub(super) hugetlb_lock: crate::sync::RwSem<()>,
}

/// A virtual memory area: one contiguous range of an address space with uniform
/// attributes.
///
/// Linux: `struct vm_area_struct`. Layout follows the 6.15 repacking: everything the
/// tree walk and the fault path read sits in the first two cache lines, the refcount
/// starts the third one (see the const assertion below).
#[repr(C, align(64))]
pub struct Vma {
    // ---- cache line 0: tree walk / lookup -------------------------------------
    /// Linux: `vm_start`.
    pub(super) vm_start: AtomicUsize,
    /// Linux: `vm_end` (exclusive).
    pub(super) vm_end: AtomicUsize,
    /// Identity of the owning address space (Linux: `vm_mm`); 0 = none.
    pub(super) vm_mm: AtomicU64,
    /// Page protection bits for PTEs (Linux: `vm_page_prot`).
    pub(super) vm_page_prot: AtomicU64,
    /// Linux: `vm_flags`.
    pub(super) vm_flags: AtomicU64,
    /// Linux: `vm_lock_seq` — equals `mm_lock_seq` while write-locked.
    pub(super) vm_lock_seq: AtomicU32,
    /// Linux: `anon_vma_chain` — every anon_vma this VMA's pages may belong to.
    pub(super) anon_vma_chain: UnsafeCell<Vec<AnonVmaRef>>,
    // ---- cache line 1: fault path ----------------------------------------------
    /// Linux: `anon_vma`; owns one reference (raw pointer of an [`AnonVmaRef`]).
    pub(super) anon_vma: AtomicPtr<super::anon::AnonVma>,
    /// Linux: `vm_ops`; null = anonymous.
    pub(super) vm_ops: AtomicPtr<VmOperations>,
    /// Linux: `vm_pgoff` (in pages).
    pub(super) vm_pgoff: AtomicUsize,
    /// Linux: `vm_file`.
    pub(super) vm_file: UnsafeCell<Option<FileRef>>,
    /// Linux: `vm_private_data` (opaque to the VMA layer).
    pub(super) vm_private_data: AtomicUsize,
    /// Memory policy identity, 0 = default (Linux: `vm_policy`, compared by `mpol_equal`).
    pub(super) vm_policy: AtomicUsize,
    // ---- cache line 2: refcount and cold fields ---------------------------------
    pub(super) cold: ColdLine,
}

// Linux 6.15's layout of `struct vm_area_struct`: three cache lines, the refcount on its own
// line, the tree fields in line 0.
const _: () = assert!(core::mem::size_of::<Vma>() <= 192);
const _: () = assert!(core::mem::offset_of!(Vma, cold) == 128);
const _: () = assert!(core::mem::offset_of!(Vma, vm_end) < 64);

// SAFETY: all fields are atomics except the `UnsafeCell`s, whose safe accessors take a `VmaStable` proof and assert that it stabilises this very VMA (shared access excluded from writers by the lock protocol), the rest being `unsafe` and `pub(super)` with the caller's exclusivity argued at the call site.
unsafe impl Sync for Vma {}
// SAFETY: a VMA owns only `Send` data (Arcs of `Send + Sync` types, atomics).
unsafe impl Send for Vma {}

impl Vma {
    pub(super) const fn empty() -> Self {
        Vma {
            vm_start: AtomicUsize::new(0),
            vm_end: AtomicUsize::new(0),
            vm_mm: AtomicU64::new(0),
            vm_page_prot: AtomicU64::new(0),
            vm_flags: AtomicU64::new(0),
            vm_lock_seq: AtomicU32::new(VM_LOCK_SEQ_NONE),
            anon_vma_chain: UnsafeCell::new(Vec::new()),
            anon_vma: AtomicPtr::new(core::ptr::null_mut()),
            vm_ops: AtomicPtr::new(core::ptr::null_mut()),
            vm_pgoff: AtomicUsize::new(0),
            vm_file: UnsafeCell::new(None),
            vm_private_data: AtomicUsize::new(0),
            vm_policy: AtomicUsize::new(0),
            cold: ColdLine {
                vm_refcnt: AtomicU32::new(0),
                anon_name: UnsafeCell::new(None),
                uffd_ctx: AtomicUsize::new(0),
                free_next: AtomicPtr::new(core::ptr::null_mut()),
                hugetlb_lock: crate::sync::RwSem::new(
                    crate::sync::lockdep::LockClass::HugetlbVmaLock,
                    (),
                ),
            },
        }
    }

    /// Linux: `vm_start`. Racy snapshot unless the VMA is stable.
    #[inline]
    pub fn start(&self) -> usize {
        self.vm_start.load(Ordering::Relaxed)
    }
    /// Linux: `vm_end`.
    #[inline]
    pub fn end(&self) -> usize {
        self.vm_end.load(Ordering::Relaxed)
    }
    /// Linux: `vma_pages()`.
    #[inline]
    pub fn pages(&self) -> usize {
        pages(self.end() - self.start())
    }
    /// Linux: `vm_pgoff`.
    #[inline]
    pub fn pgoff(&self) -> usize {
        self.vm_pgoff.load(Ordering::Relaxed)
    }
    /// Linux: `vm_flags`.
    #[inline]
    pub fn flags(&self) -> VmFlags {
        VmFlags::from_bits_retain(self.vm_flags.load(Ordering::Relaxed))
    }
    /// Linux: `vm_page_prot`.
    #[inline]
    pub fn page_prot(&self) -> u64 {
        self.vm_page_prot.load(Ordering::Relaxed)
    }
    /// Identity of the owning address space (Linux: `vm_mm`).
    #[inline]
    pub fn mm_id(&self) -> u64 {
        self.vm_mm.load(Ordering::Relaxed)
    }
    /// The hugetlb vma lock (Linux: `hugetlb_vma_lock_read` / `_write` on
    /// `vma->vm_private_data`); see [`crate::sync`] for its rank.
    pub fn hugetlb_vma_lock(&self) -> &crate::sync::RwSem<()> {
        &self.cold.hugetlb_lock
    }
    /// Linux: `vm_private_data`.
    #[inline]
    pub fn private_data(&self) -> usize {
        self.vm_private_data.load(Ordering::Relaxed)
    }
    /// Memory policy identity (0 = default).
    #[inline]
    pub fn policy(&self) -> usize {
        self.vm_policy.load(Ordering::Relaxed)
    }
    /// userfaultfd context identity (0 = none).
    #[inline]
    pub fn uffd_ctx(&self) -> usize {
        self.cold.uffd_ctx.load(Ordering::Relaxed)
    }
    /// Linux: `vm_ops`.
    #[inline]
    pub fn ops(&self) -> Option<&'static VmOperations> {
        let p = self.vm_ops.load(Ordering::Acquire);
        // SAFETY: `vm_ops` only ever holds null or a pointer derived from a `&'static VmOperations` (see `set_ops`).
        unsafe { p.as_ref() }
    }
    /// Linux: `vma_is_anonymous()`.
    #[inline]
    pub fn is_anonymous(&self) -> bool {
        self.vm_ops.load(Ordering::Relaxed).is_null()
    }
    /// True if the VMA has a `close` hook (and so may not be deleted by a merge).
    #[inline]
    pub fn has_close(&self) -> bool {
        self.ops().is_some_and(|o| o.close.is_some())
    }
    /// Current `vm_refcnt` (diagnostics and tests).
    #[inline]
    pub fn refcnt(&self) -> u32 {
        self.cold.vm_refcnt.load(Ordering::Acquire)
    }
    /// Current `vm_lock_seq` (diagnostics and tests).
    #[inline]
    pub fn lock_seq(&self) -> u32 {
        self.vm_lock_seq.load(Ordering::Relaxed)
    }
    /// Linux: `vma_is_attached()` — refcnt != 0.
    #[inline]
    pub fn is_attached(&self) -> bool {
        self.refcnt() != 0
    }

    /// Linux: `anon_vma`; a new counted reference (Linux: `get_anon_vma(vma->anon_vma)`
    /// under a lock that keeps the VMA's own reference alive).
    ///
    /// Panics if `stable` does not stabilise this VMA.
    #[track_caller]
    pub fn anon_vma(&self, stable: &dyn VmaStable) -> Option<AnonVmaRef> {
        self.assert_stable(stable);
        // SAFETY: asserted just above: `stable` is a lock under which no writer can replace or drop this VMA's anon_vma reference.
        unsafe { self.anon_vma_unchecked() }
    }
    /// [`Vma::anon_vma`] without a proof.
    ///
    /// # Safety
    /// No one may replace `anon_vma` concurrently: the caller holds the mmap lock of
    /// `vm_mm` or a read lock on this VMA, or owns the VMA (detached and private).
    pub(super) unsafe fn anon_vma_unchecked(&self) -> Option<AnonVmaRef> {
        let p = self.anon_vma.load(Ordering::Acquire);
        // SAFETY: a non-null `anon_vma` pointer carries a reference owned by this VMA, released only by a writer replacing the slot; the caller's contract excludes such writers, so that reference is still held while `clone_raw` takes its own.
        unsafe { AnonVmaRef::clone_raw(p) }
    }
    /// True if `anon_vma` is set ("faulted").
    #[inline]
    ///
    /// Acquire: once it answers true, the chain the first fault built before publishing
    /// the anon_vma is visible (see the module doc).
    pub fn has_anon_vma(&self) -> bool {
        !self.anon_vma.load(Ordering::Acquire).is_null()
    }
    /// Raw identity of the anon_vma (null = none), for pointer comparisons.
    #[inline]
    pub fn anon_vma_ptr(&self) -> *const super::anon::AnonVma {
        self.anon_vma.load(Ordering::Relaxed)
    }

    /// Panic unless `stable` stabilises this VMA (Linux: `vma_assert_stabilised()`,
    /// here always on: a proof of another address space or another VMA is a kernel bug).
    #[inline]
    #[track_caller]
    fn assert_stable(&self, stable: &dyn VmaStable) {
        assert!(
            stable.stabilises(self),
            "VMA {:p} (vm_mm {}) is not stabilised by the lock passed as proof",
            self,
            self.mm_id()
        );
    }

    /// Linux: `vm_file`. Panics if `stable` does not stabilise this VMA.
    #[track_caller]
    pub fn file(&self, stable: &dyn VmaStable) -> Option<FileRef> {
        self.assert_stable(stable);
        // SAFETY: asserted just above: `stable` is a lock that excludes every writer of this VMA's `vm_file`.
        unsafe { self.file_unchecked() }
    }
    /// [`Vma::file`] without a proof.
    ///
    /// # Safety
    /// No one may write `vm_file` concurrently: the caller holds the mmap lock of
    /// `vm_mm` or a read lock on this VMA, or owns the VMA (detached and private).
    pub(super) unsafe fn file_unchecked(&self) -> Option<FileRef> {
        // SAFETY: a shared read of the cell races only with a write, and the contract
        // rules writers out: they hold the mmap write lock of `vm_mm` and this VMA's
        // write lock (or own it detached), which the caller's lock or ownership
        // excludes. The borrow ends with the `clone`.
        unsafe { (*self.vm_file.get()).clone() }
    }
    /// Linux: `anon_vma_name()`. Panics if `stable` does not stabilise this VMA.
    #[track_caller]
    pub fn anon_name(&self, stable: &dyn VmaStable) -> Option<Arc<str>> {
        self.assert_stable(stable);
        // SAFETY: asserted just above: `stable` is a lock that stabilises this VMA, and
        // every writer of the name (`vma_set_anon_name`, under the mmap write lock and
        // this VMA's write lock, or on a detached VMA of its own) is excluded by it. The
        // borrow ends with the `clone`.
        unsafe { (*self.cold.anon_name.get()).clone() }
    }
    /// Number of `anon_vma_chain` entries. Panics if `stable` does not stabilise this VMA.
    #[track_caller]
    ///
    /// 0 while the VMA has no anon_vma (the chain is then empty, and may be being
    /// filled by a concurrent first fault, which this does not look at).
    pub fn anon_vma_chain_len(&self, stable: &dyn VmaStable) -> usize {
        self.assert_stable(stable);
        if !self.has_anon_vma() {
            return 0;
        }
        // SAFETY: asserted just above: `stable` is a lock that stabilises this VMA, and
        // every writer of the chain that `stable` does not exclude (the fault path's
        // `anon_vma_prepare_shared`, under a read lock) writes it only while `anon_vma`
        // is null and publishes `anon_vma` with release after its last write; the
        // acquire load in `has_anon_vma` saw it set, so that writing is over and no new
        // one can start. The writers that do change a set chain (the functions of
        // `anon`, with the mmap write lock and this VMA's write lock held, or on a
        // detached VMA of their own) are excluded by `stable`. The borrow ends with
        // `len`.
        unsafe { (*self.anon_vma_chain.get()).len() }
    }
    /// Linux: `vma_is_fork_child()` — faulted and the chain is not a single entry.
    /// Panics if `stable` does not stabilise this VMA.
    #[track_caller]
    pub fn is_fork_child(&self, stable: &dyn VmaStable) -> bool {
        self.has_anon_vma() && self.anon_vma_chain_len(stable) != 1
    }

    // ---- writer-side setters; callers hold the mmap write lock and the VMA write lock
    //      (or own a detached VMA). They are `pub(super)`: the rest of the kernel
    //      changes VMAs through `MmWriteGuard`.

    pub(super) fn set_range(&self, start: usize, end: usize, pgoff: usize) {
        self.vm_start.store(start, Ordering::Relaxed);
        self.vm_end.store(end, Ordering::Relaxed);
        self.vm_pgoff.store(pgoff, Ordering::Relaxed);
    }
    pub(super) fn set_flags_raw(&self, flags: VmFlags) {
        self.vm_flags.store(flags.bits(), Ordering::Relaxed);
    }
    pub(super) fn set_ops_raw(&self, ops: Option<&'static VmOperations>) {
        let p = ops.map_or(core::ptr::null_mut(), |o| {
            o as *const _ as *mut VmOperations
        });
        self.vm_ops.store(p, Ordering::Release);
    }
    /// # Safety
    /// Caller has exclusive access to the multi-word fields (mmap write lock and VMA
    /// write lock, or the VMA is detached and private to the caller).
    // The exclusive borrow comes from an `UnsafeCell`; exclusivity is the contract.
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn file_mut(&self) -> &mut Option<FileRef> {
        // SAFETY: the contract makes the caller the only user of the multi-word fields
        // for as long as the returned borrow lives: every other writer needs the mmap
        // write lock it holds, and every reader a lock (mmap lock, or a VMA read lock
        // that a write-locked or detached VMA does not grant) that excludes it.
        unsafe { &mut *self.vm_file.get() }
    }
    /// # Safety
    /// As for [`Vma::file_mut`].
    // The exclusive borrow comes from an `UnsafeCell`; exclusivity is the contract.
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn anon_name_mut(&self) -> &mut Option<Arc<str>> {
        // SAFETY: as in `file_mut`: the contract leaves the caller as the only user of
        // the name while the borrow lives.
        unsafe { &mut *self.cold.anon_name.get() }
    }
    /// # Safety
    /// As for [`Vma::file_mut`].
    // The exclusive borrow comes from an `UnsafeCell`; exclusivity is the contract.
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn chain_mut(&self) -> &mut Vec<AnonVmaRef> {
        // SAFETY: as in `file_mut`: the contract leaves the caller as the only user of
        // the chain while the borrow lives.
        unsafe { &mut *self.anon_vma_chain.get() }
    }
    /// # Safety
    /// No one may change the chain while the returned borrow lives: the caller holds the
    /// mmap lock of `vm_mm` or a read lock on this VMA, or owns the VMA (detached and
    /// private), and takes no `chain_mut` of it meanwhile.
    pub(super) unsafe fn chain_ref(&self) -> &Vec<AnonVmaRef> {
        // SAFETY: the contract rules out every writer of the chain (they need the mmap
        // write lock and this VMA's write lock, or to own it) for the borrow's lifetime,
        // so a shared borrow cannot overlap a mutation.
        unsafe { &*self.anon_vma_chain.get() }
    }
    /// Replace `anon_vma`, returning the previous reference.
    pub(super) fn replace_anon_vma(&self, new: Option<AnonVmaRef>) -> Option<AnonVmaRef> {
        let p = new.map_or(core::ptr::null_mut(), AnonVmaRef::into_raw);
        let old = self.anon_vma.swap(p, Ordering::AcqRel);
        // SAFETY: the slot held either null or a pointer produced by `into_raw`, whose reference is transferred back to us by the swap.
        unsafe { AnonVmaRef::from_raw(old) }
    }
}

impl fmt::Debug for Vma {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Vma[{:#x},{:#x}) pgoff={:#x} flags={:?} anon={:p} refcnt={}",
            self.start(),
            self.end(),
            self.pgoff(),
            self.flags(),
            self.anon_vma_ptr(),
            self.refcnt()
        )
    }
}
