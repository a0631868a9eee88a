//! Type-stable VMA allocation: slots are reused but never returned to the heap.
//!
//! Linux: `mm/vma_init.c` (`vm_area_alloc`, `vm_area_dup`, `vm_area_free`) over a
//! `SLAB_TYPESAFE_BY_RCU` cache.
//!
//! A lock-free reader may hold a pointer to a VMA that is freed and reused (even by
//! another mm) under it. That is harmless only if the memory stays a `Vma` forever and
//! a freed or reused VMA reads as *detached* (`vm_refcnt == 0`) until it is attached
//! again. So: every slot is allocated once from the global allocator and afterwards
//! lives on a free list; the list link lives in its own field (`free_next`, Linux's
//! `vm_freeptr`) so freeing never touches `vm_refcnt`; allocation and duplication
//! never touch `vm_refcnt` (it is already 0) and copy fields one by one.
//!
//! Unlike Linux, freeing clears `vm_mm` (to 0, no address space). In C nobody keeps a
//! VMA pointer past the lock it was found under; here a `VmaRef` is `&'static` and
//! `Copy`, so safe code can, and the lock proofs of [`super::area::VmaStable`] decide
//! "this VMA is stable under this mmap lock" by comparing `vm_mm`. A freed slot must
//! therefore stop reading as its old mm's before another mm can take it: the store
//! precedes the free-list push, both under the old mm's write lock (or in its drop),
//! so every later holder of that lock sees the cleared `vm_mm`.
//! Lock-free readers are unaffected: they see `vm_refcnt == 0` first and never get
//! to compare `vm_mm` on a free slot.

use alloc::alloc::{Layout, alloc};
use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};

use super::area::{VM_LOCK_SEQ_NONE, Vma, VmaRef};
use crate::errno::Errno;

/// Head of the free list of VMA slots.
struct FreeList {
    head: *mut Vma,
}
// SAFETY: `head` points at a free `Vma` slot (type-stable memory, never deallocated) or
// is null; it is read and written only through the `spin::Mutex` that owns this value,
// so moving it between threads lets two threads use it at once no more than the mutex
// does.
unsafe impl Send for FreeList {}

static FREE: spin::Mutex<FreeList> = spin::Mutex::new(FreeList {
    head: ptr::null_mut(),
});
static LIVE: AtomicUsize = AtomicUsize::new(0);
static SLOTS: AtomicUsize = AtomicUsize::new(0);
static FREED_ATTACHED: AtomicUsize = AtomicUsize::new(0);

/// Allocator statistics, for tests and leak checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmaPoolStats {
    /// VMAs handed out and not freed yet (all address spaces).
    pub live: usize,
    /// Slots ever taken from the global allocator.
    pub slots: usize,
    /// Attempts to free an attached VMA (a bug; the VMA was leaked instead).
    pub freed_attached: usize,
}

/// Current pool statistics.
pub fn vma_pool_stats() -> VmaPoolStats {
    VmaPoolStats {
        live: LIVE.load(Ordering::Relaxed),
        slots: SLOTS.load(Ordering::Relaxed),
        freed_attached: FREED_ATTACHED.load(Ordering::Relaxed),
    }
}

/// Take a slot (reused or new) and initialise it for `mm_id`: zeroed fields, anonymous,
/// detached (`vm_refcnt` 0), `vm_lock_seq` = never-locked.
///
/// Linux: `vm_area_alloc()` + `vma_init()`.
pub(super) fn vm_area_alloc(mm_id: u64) -> Result<VmaRef, Errno> {
    let slot: &'static Vma = {
        let mut fl = FREE.lock();
        if !fl.head.is_null() {
            // SAFETY: the free list holds only slots that `vm_area_free` pushed: `Vma`s
            // initialised by this function earlier and never deallocated, so a
            // `&'static` to one is valid. We hold the pool lock, so no other thread pops
            // the same slot.
            let v: &'static Vma = unsafe { &*fl.head };
            fl.head = v.cold.free_next.swap(ptr::null_mut(), Ordering::Relaxed);
            v
        } else {
            drop(fl);
            let layout = Layout::new::<Vma>();
            // SAFETY: `alloc` requires a layout of non-zero size; `Vma` has fields.
            let p = unsafe { alloc(layout) } as *mut Vma;
            if p.is_null() {
                return Err(Errno::ENOMEM);
            }
            // SAFETY: fresh allocation with `Vma`'s layout; never freed, hence `'static`.
            unsafe { p.write(Vma::empty()) };
            SLOTS.fetch_add(1, Ordering::Relaxed);
            // SAFETY: `p` was initialised just above, and VMA slots are never
            // deallocated (type-stable memory: a freed slot goes to the free list), so
            // a `&'static` to it stays valid.
            unsafe { &*p }
        }
    };
    debug_assert_eq!(slot.refcnt(), 0, "free VMA slot must be detached");
    // Field-by-field (re)initialisation; `vm_refcnt` stays 0 throughout, so a racing
    // lock-free reader that still holds this pointer sees a detached VMA.
    slot.vm_mm.store(mm_id, Ordering::Relaxed);
    slot.set_range(0, 0, 0);
    slot.vm_page_prot.store(0, Ordering::Relaxed);
    slot.vm_flags.store(0, Ordering::Relaxed);
    slot.vm_lock_seq.store(VM_LOCK_SEQ_NONE, Ordering::Relaxed);
    slot.set_ops_raw(None);
    slot.vm_private_data.store(0, Ordering::Relaxed);
    slot.vm_policy.store(0, Ordering::Relaxed);
    slot.cold.uffd_ctx.store(0, Ordering::Relaxed);
    // SAFETY: the slot is detached and owned by us alone (just taken off the free list).
    unsafe {
        debug_assert!(slot.chain_ref().is_empty());
        *slot.file_mut() = None;
        *slot.anon_name_mut() = None;
    }
    drop(slot.replace_anon_vma(None));
    LIVE.fetch_add(1, Ordering::Relaxed);
    Ok(slot)
}

/// Duplicate `orig` field by field into a new detached VMA of the same address space.
/// The anon_vma *pointer* is copied (as Linux does); the chain is left empty for
/// `anon_vma_clone` to fill.
///
/// Linux: `vm_area_dup()`.
///
/// # Safety
/// `orig` is stable (caller holds the mmap write lock).
pub(super) unsafe fn vm_area_dup(orig: &Vma) -> Result<VmaRef, Errno> {
    // SAFETY: our contract is `vm_area_dup_into`'s.
    unsafe { vm_area_dup_into(orig, orig.mm_id()) }
}

/// [`vm_area_dup`] for the address space `mm_id`, which may be another one than
/// `orig`'s (fork: Linux's `dup_mmap` sets `tmp->vm_mm = mm` right after the dup).
///
/// # Safety
/// `orig` is stable: the caller holds the mmap lock of `orig`'s address space.
pub(super) unsafe fn vm_area_dup_into(orig: &Vma, mm_id: u64) -> Result<VmaRef, Errno> {
    let new = vm_area_alloc(mm_id)?;
    // SAFETY: `new` came off the free list (or fresh from the heap) in `vm_area_alloc`
    // just above and has not been published anywhere: it is detached and only we have
    // its address. `orig` is stable by our contract.
    unsafe { vm_area_init_from(orig, new) };
    Ok(new)
}

/// Copy `src`'s fields into the fresh, detached `dest`, leaving `dest`'s `vm_refcnt`
/// (0: detached) and `vm_lock_seq` alone (Linux: `vm_area_init_from()`, which exists
/// so that the copy of a VMA never carries the original's attached refcount: a racing
/// `lock_vma_under_rcu` that still holds a stale pointer to `dest`'s slot must see it
/// detached until it is attached in its own tree). `vm_mm` stays `dest`'s.
///
/// # Safety
/// `src` is stable (its address space's mmap lock is held); `dest` is another VMA,
/// detached and private to the caller.
pub(super) unsafe fn vm_area_init_from(src: &Vma, dest: &Vma) {
    debug_assert!(!core::ptr::eq(src, dest), "vm_area_init_from into itself");
    debug_assert_eq!(dest.refcnt(), 0, "vm_area_init_from into an attached VMA");
    dest.set_range(src.start(), src.end(), src.pgoff());
    dest.vm_page_prot.store(src.page_prot(), Ordering::Relaxed);
    dest.set_flags_raw(src.flags());
    dest.set_ops_raw(src.ops());
    dest.vm_private_data
        .store(src.private_data(), Ordering::Relaxed);
    dest.vm_policy.store(src.policy(), Ordering::Relaxed);
    dest.cold.uffd_ctx.store(src.uffd_ctx(), Ordering::Relaxed);
    // SAFETY: `anon_vma_unchecked` needs that no one replaces `src.anon_vma` meanwhile:
    // every writer of it needs the mmap write lock our caller holds (contract).
    drop(dest.replace_anon_vma(unsafe { src.anon_vma_unchecked() }));
    // SAFETY: `dest` is detached and private to us (contract), so the `_mut` borrows are
    // exclusive; `src` is only read, and its writers need the lock our caller holds.
    // They are different slots (contract, asserted above).
    unsafe {
        *dest.file_mut() = src.file_unchecked();
        *dest.anon_name_mut() = (*src.cold.anon_name.get()).clone();
    }
}

/// Return a detached VMA to the pool, dropping its file, anon_vma chain and name.
///
/// Linux: `vm_area_free()`. Freeing an attached VMA is a bug: it is refused (and
/// counted, and asserted in debug builds) rather than corrupting a live tree.
pub(super) fn vm_area_free(vma: VmaRef) {
    if vma.refcnt() != 0 {
        FREED_ATTACHED.fetch_add(1, Ordering::Relaxed);
        debug_assert!(false, "vm_area_free of attached VMA {:?}", vma);
        return;
    }
    // SAFETY: `vma` is detached (checked above) and callers hand over a VMA they own:
    // no tree, `i_mmap` or detached set refers to it any more, and no writer other than
    // the caller can reach it. A lock-free reader may still hold a stale handle, but it
    // only reads atomics and fails to lock a VMA whose refcount is 0, so it never
    // touches the multi-word fields changed here.
    unsafe {
        super::anon::unlink_anon_vmas(vma);
        // The chain's buffer goes back to the heap with its entries (Linux frees each
        // `anon_vma_chain` object in unlink_anon_vmas); a pooled slot keeps no heap.
        *vma.chain_mut() = alloc::vec::Vec::new();
        *vma.file_mut() = None;
        *vma.anon_name_mut() = None;
    }
    vma.set_ops_raw(None);
    // No address space: the mmap-lock proofs of the old mm no longer cover the slot.
    vma.vm_mm.store(0, Ordering::Relaxed);
    LIVE.fetch_sub(1, Ordering::Relaxed);
    let mut fl = FREE.lock();
    vma.cold.free_next.store(fl.head, Ordering::Relaxed);
    fl.head = vma as *const Vma as *mut Vma;
}
