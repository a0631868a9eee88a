//! anon_vma and the anon_vma chain: which anonymous "families" a VMA's pages belong to.
//!
//! Linux: `mm/rmap.c` (`anon_vma_clone`, `anon_vma_fork`, `unlink_anon_vmas`,
//! `anon_vma_prepare`), `mm/vma.c` (`dup_anon_vma`, `find_mergeable_anon_vma`).
//!
//! The reverse-map side (interval tree of VMAs per anon_vma) is later work; this module
//! keeps what the VMA layer's merge rules need: identity, the root/parent hierarchy
//! created by fork, and per-VMA chains whose length tells a fork child apart.
//! Allocation is fallible everywhere, which is why [`AnonVmaRef`] is a small
//! hand-rolled counted pointer rather than `Arc` (whose `try_new` is unstable).

use alloc::alloc::{Layout, alloc, dealloc};
use core::ops::Deref;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::area::{Vma, VmaRef, VmaStable};
use crate::errno::Errno;

static NEXT_ANON_ID: AtomicU64 = AtomicU64::new(1);
static LIVE_ANON_VMAS: AtomicUsize = AtomicUsize::new(0);

/// Number of anon_vma objects currently allocated (for leak checks).
pub fn anon_vma_live_count() -> usize {
    LIVE_ANON_VMAS.load(Ordering::Relaxed)
}

/// Linux: `struct anon_vma`.
pub struct AnonVma {
    refcount: AtomicUsize,
    id: u64,
    /// Root of the fork hierarchy (`None` = this is the root). Linux: `root`.
    root: Option<AnonVmaRef>,
    /// The anon_vma this one was forked from. Linux: `parent`.
    parent: Option<AnonVmaRef>,
    /// Chain entries (VMAs) linked to this anon_vma. Linux: `num_active_vmas`-like.
    num_links: AtomicUsize,
    /// Number of child anon_vmas plus VMAs using it as `anon_vma` (Linux: `degree`
    /// in older kernels; informational here).
    num_children: AtomicUsize,
    /// Times a chain entry pointing here was created by a clone (the harness's
    /// `was_cloned`).
    clones: AtomicUsize,
    /// Times a chain entry pointing here was unlinked (the harness's `was_unlinked`).
    unlinks: AtomicUsize,
}

impl AnonVma {
    /// Stable identity for diagnostics.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// Root of the fork hierarchy (self if none).
    pub fn root_id(&self) -> u64 {
        self.root.as_ref().map_or(self.id, |r| r.id)
    }
    /// Parent anon_vma id, if forked.
    pub fn parent_id(&self) -> Option<u64> {
        self.parent.as_ref().map(|p| p.id)
    }
    /// Chain entries currently linking a VMA to this anon_vma.
    pub fn num_links(&self) -> usize {
        self.num_links.load(Ordering::Relaxed)
    }
    /// Number of anon_vmas forked from this one.
    pub fn num_children(&self) -> usize {
        self.num_children.load(Ordering::Relaxed)
    }
    /// How many chain entries to this anon_vma were created by `anon_vma_clone`.
    pub fn clone_count(&self) -> usize {
        self.clones.load(Ordering::Relaxed)
    }
    /// How many chain entries to this anon_vma were unlinked.
    pub fn unlink_count(&self) -> usize {
        self.unlinks.load(Ordering::Relaxed)
    }
}

/// Counted reference to an [`AnonVma`] (Linux: `get_anon_vma`/`put_anon_vma`).
pub struct AnonVmaRef(NonNull<AnonVma>);

// SAFETY: an `AnonVmaRef` is a counted pointer to an `AnonVma`, which is freed by
// whichever thread drops the last reference (the atomic count decides which, with the
// Release/Acquire pair in `drop`). After construction the pointee changes only through
// its atomic fields; `root` and `parent` are set once, before the pointer is shared, and
// are themselves `AnonVmaRef`s. So moving a reference to another thread, or reading the
// pointee from several threads at once, races on nothing.
unsafe impl Send for AnonVmaRef {}
// SAFETY: as for `Send`: shared access is only loads and atomic updates.
unsafe impl Sync for AnonVmaRef {}

impl AnonVmaRef {
    /// Linux: `anon_vma_alloc()` — a fresh root anon_vma. `Err(ENOMEM)` on failure.
    pub fn new_root() -> Result<Self, Errno> {
        Self::alloc(None, None)
    }

    fn alloc(root: Option<AnonVmaRef>, parent: Option<AnonVmaRef>) -> Result<Self, Errno> {
        let layout = Layout::new::<AnonVma>();
        // SAFETY: `alloc` requires a layout of non-zero size; `AnonVma` has fields.
        let p = unsafe { alloc(layout) } as *mut AnonVma;
        let p = NonNull::new(p).ok_or(Errno::ENOMEM)?;
        // SAFETY: `p` is non-null and was allocated just above with `AnonVma`'s layout
        // (so it is aligned and large enough), and nothing else has it yet: writing
        // without dropping the uninitialised old contents is the right thing.
        unsafe {
            p.as_ptr().write(AnonVma {
                refcount: AtomicUsize::new(1),
                id: NEXT_ANON_ID.fetch_add(1, Ordering::Relaxed),
                root,
                parent,
                num_links: AtomicUsize::new(0),
                num_children: AtomicUsize::new(0),
                clones: AtomicUsize::new(0),
                unlinks: AtomicUsize::new(0),
            })
        };
        LIVE_ANON_VMAS.fetch_add(1, Ordering::Relaxed);
        Ok(AnonVmaRef(p))
    }

    /// Raw identity.
    pub fn as_ptr(&self) -> *const AnonVma {
        self.0.as_ptr()
    }

    /// Pointer identity.
    pub fn ptr_eq(a: &AnonVmaRef, b: &AnonVmaRef) -> bool {
        a.0 == b.0
    }

    pub(super) fn into_raw(self) -> *mut AnonVma {
        let p = self.0.as_ptr();
        core::mem::forget(self);
        p
    }

    /// # Safety
    /// `p` is null or came from [`AnonVmaRef::into_raw`] and its reference is handed over.
    pub(super) unsafe fn from_raw(p: *mut AnonVma) -> Option<Self> {
        NonNull::new(p).map(AnonVmaRef)
    }

    /// # Safety
    /// `p` is null or points to a live `AnonVma` whose reference cannot be dropped
    /// concurrently (its owner is stable under the caller's lock).
    pub(super) unsafe fn clone_raw(p: *mut AnonVma) -> Option<Self> {
        let nn = NonNull::new(p)?;
        // SAFETY: by the contract, `p` carries a reference its owner holds and cannot
        // drop while we run (the owner's lock excludes the writer that would drop it),
        // so the count is at least one and the object stays allocated at least until
        // the increment below has given us our own reference.
        unsafe { nn.as_ref() }
            .refcount
            .fetch_add(1, Ordering::Relaxed);
        Some(AnonVmaRef(nn))
    }
}

impl Clone for AnonVmaRef {
    fn clone(&self) -> Self {
        self.refcount.fetch_add(1, Ordering::Relaxed);
        AnonVmaRef(self.0)
    }
}

impl Deref for AnonVmaRef {
    type Target = AnonVma;
    fn deref(&self) -> &AnonVma {
        // SAFETY: `self` owns one counted reference, so the count cannot reach zero (and
        // the object cannot be freed) before `self` is dropped, which the borrow of
        // `self` in the returned reference rules out.
        unsafe { self.0.as_ref() }
    }
}

impl Drop for AnonVmaRef {
    fn drop(&mut self) {
        if self.refcount.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        core::sync::atomic::fence(Ordering::Acquire);
        // SAFETY: the count went from 1 to 0 in our `fetch_sub`, so ours was the last
        // reference: no other `AnonVmaRef` exists, none can be made (`clone_raw` needs a
        // reference held by a VMA, which would have been counted), and the Acquire fence
        // orders every other holder's last use of the object before the drop and free.
        unsafe {
            let p = self.0.as_ptr();
            if let Some(parent) = (*p).parent.as_ref() {
                parent.num_children.fetch_sub(1, Ordering::Relaxed);
            }
            core::ptr::drop_in_place(p);
            dealloc(p as *mut u8, Layout::new::<AnonVma>());
        }
        LIVE_ANON_VMAS.fetch_sub(1, Ordering::Relaxed);
    }
}

impl core::fmt::Debug for AnonVmaRef {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "AnonVma#{}", self.id)
    }
}

/// Link `vma` to `av` (Linux: `anon_vma_chain_link`). Capacity must be reserved.
fn chain_link(chain: &mut alloc::vec::Vec<AnonVmaRef>, av: &AnonVmaRef) {
    av.num_links.fetch_add(1, Ordering::Relaxed);
    chain.push(av.clone());
}

/// Give `dst` chain entries for every anon_vma in `src`'s chain.
///
/// Linux: `anon_vma_clone()`. On failure `dst`'s chain and `anon_vma` are cleared
/// (Linux sets `dst->anon_vma = NULL` and unlinks). `fail` injects the allocation failure.
///
/// # Safety
/// - `src` is stable: no one changes its chain or `anon_vma` while this runs (the
///   caller holds the mmap lock of `src`'s address space, or owns `src`).
/// - The caller has exclusive access to `dst`, a different VMA: it is write-locked in
///   this hold of its address space's mmap write lock, or detached and private to the
///   caller.
pub(super) unsafe fn anon_vma_clone(dst: &Vma, src: &Vma, fail: bool) -> Result<(), Errno> {
    debug_assert!(
        !core::ptr::eq(dst, src),
        "anon_vma_clone of a VMA into itself"
    );
    // SAFETY: the two borrows are of different VMAs' chains (contract, asserted above),
    // so the `&mut` does not alias the `&`. `src`'s chain is only read, and its writers
    // need the lock the caller holds. `dst`'s chain has no other user: a writer would
    // need the mmap write lock the caller holds, and a reader would need either that
    // lock or a VMA read lock, which a write-locked VMA (readers drained by
    // `vma_start_write`) or a detached one (refcount 0) does not grant. Both borrows end
    // before this function returns.
    let (src_chain, dst_chain) = unsafe { (src.chain_ref(), dst.chain_mut()) };
    if src_chain.is_empty() {
        return Ok(());
    }
    if fail || dst_chain.try_reserve(src_chain.len()).is_err() {
        drop(dst.replace_anon_vma(None));
        // SAFETY: `unlink_anon_vmas` needs exclusive access to `dst`, which our own
        // contract gives; `dst_chain` is not used after this call.
        unsafe { unlink_anon_vmas(dst) };
        return Err(Errno::ENOMEM);
    }
    for av in src_chain.iter() {
        chain_link(dst_chain, av);
        av.clones.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Drop every chain entry of `vma` and clear `anon_vma`.
///
/// Linux: `unlink_anon_vmas()` (the real one clears `vma->anon_vma`; the harness stub
/// did not).
///
/// # Safety
/// The caller has exclusive access to `vma`: it is write-locked in this hold of its
/// address space's mmap write lock, or detached and private to the caller.
pub(super) unsafe fn unlink_anon_vmas(vma: &Vma) {
    // SAFETY: no one else touches `vma`'s chain while this `&mut` lives (to the end of
    // the function): other writers need the mmap write lock the caller holds, and
    // readers need a lock that a write-locked (readers drained) or detached (refcount
    // 0) VMA does not grant.
    let chain = unsafe { vma.chain_mut() };
    for av in chain.drain(..) {
        av.num_links.fetch_sub(1, Ordering::Relaxed);
        av.unlinks.fetch_add(1, Ordering::Relaxed);
    }
    drop(vma.replace_anon_vma(None));
}

/// Give a fork child its anon_vmas: clone the parent's chain, then a new anon_vma whose
/// parent is the parent VMA's (so the child is a "fork child").
///
/// Linux: `anon_vma_fork()`. Used by `dup_mmap` (later work) and by tests.
///
/// # Safety
/// - The caller has exclusive access to `child` (write-locked in this hold of its
///   address space's mmap write lock, or detached and private to the caller).
/// - `parent` is another VMA, stable while this runs (the caller holds the mmap lock
///   of the parent's address space: Linux's `dup_mmap` holds it).
pub(super) unsafe fn anon_vma_fork(child: &Vma, parent: &Vma) -> Result<(), Errno> {
    // SAFETY: `anon_vma_unchecked` needs that no one replaces `parent.anon_vma` while it
    // takes its reference; every writer of it needs the parent's mmap write lock, which
    // the caller's hold of that lock (read or write) excludes.
    let Some(pav) = (unsafe { parent.anon_vma_unchecked() }) else {
        return Ok(());
    };
    drop(child.replace_anon_vma(None));
    // SAFETY: `anon_vma_clone`'s contract is ours: `parent` stable, `child` a different
    // VMA we have exclusive access to.
    unsafe { anon_vma_clone(child, parent, false)? };
    let root = match pav.root.as_ref() {
        Some(r) => r.clone(),
        None => pav.clone(),
    };
    let av = match AnonVmaRef::alloc(Some(root), Some(pav.clone())) {
        Ok(av) => av,
        Err(e) => {
            // SAFETY: our exclusive access to `child` (contract) is what
            // `unlink_anon_vmas` needs; no borrow of its chain is alive here.
            unsafe { unlink_anon_vmas(child) };
            return Err(e);
        }
    };
    pav.num_children.fetch_add(1, Ordering::Relaxed);
    // SAFETY: exclusive access to `child` (contract): no other reader or writer of its
    // chain can exist while this `&mut` lives, and `anon_vma_clone`'s borrow has ended.
    let chain = unsafe { child.chain_mut() };
    if chain.try_reserve(1).is_err() {
        // SAFETY: as for the `Err` arm above; `chain` is not used after this call.
        unsafe { unlink_anon_vmas(child) };
        return Err(Errno::ENOMEM);
    }
    chain_link(chain, &av);
    drop(child.replace_anon_vma(Some(av)));
    Ok(())
}

/// Give an unfaulted VMA a brand-new anon_vma (or `reuse`) with a single chain entry.
///
/// # Safety
/// The caller has exclusive access to `vma` (write-locked in this hold of its address
/// space's mmap write lock, or detached and private to the caller).
pub(super) unsafe fn anon_vma_attach(vma: &Vma, reuse: Option<AnonVmaRef>) -> Result<(), Errno> {
    let av = match reuse {
        Some(av) => av,
        None => AnonVmaRef::new_root()?,
    };
    // SAFETY: with exclusive access to `vma` (contract) no one else reads or writes its
    // chain while this `&mut` lives: writers need the mmap write lock the caller holds,
    // readers a lock a write-locked or detached VMA does not grant.
    let chain = unsafe { vma.chain_mut() };
    chain.try_reserve(1).map_err(|_| Errno::ENOMEM)?;
    chain_link(chain, &av);
    drop(vma.replace_anon_vma(Some(av)));
    Ok(())
}

/// Publish `av` as the anon_vma of an unfaulted `vma` with a single chain entry, the
/// chain's memory (`chain`, empty, capacity ≥ 1) allocated by the caller beforehand.
///
/// Linux: the locked part of `__anon_vma_prepare()`: under the page-table lock,
/// `if (!vma->anon_vma) { vma->anon_vma = anon_vma; anon_vma_chain_link(..); }`.
/// Returns `Err((av, chain))` if another fault published one first.
///
/// # Safety
/// The caller holds the mmap lock of `vma`'s address space (read is enough) and the
/// lock that serialises every caller of this function for that address space (its
/// `anon_prepare_lock`, which plays Linux's `mm->page_table_lock` here), so: no writer of the chain holding the write locks can exist,
/// and another caller cannot be between its null check and its publication.
pub(super) unsafe fn anon_vma_publish(
    vma: &Vma,
    av: AnonVmaRef,
    chain: alloc::vec::Vec<AnonVmaRef>,
) -> Result<(), (AnonVmaRef, alloc::vec::Vec<AnonVmaRef>)> {
    if vma.has_anon_vma() {
        return Err((av, chain));
    }
    debug_assert!(chain.is_empty() && chain.capacity() >= 1);
    // SAFETY: `anon_vma` is null, and (contract) we are the only caller between that
    // check and the publication below, and write-lock holders are excluded. Readers
    // under read-level proofs look at the chain only once `anon_vma` is set (see
    // `Vma::anon_vma_chain_len`), which happens after this borrow ends. So this is the
    // only reference to the chain while it lives.
    let slot = unsafe { vma.chain_mut() };
    debug_assert!(slot.is_empty(), "a VMA without anon_vma has an empty chain");
    let mut chain = chain;
    chain_link(&mut chain, &av);
    // The old (empty) vector goes; the prepared one takes its place.
    drop(core::mem::replace(slot, chain));
    // Release (the swap is AcqRel): the chain above happens-before any reader that
    // sees the pointer.
    drop(vma.replace_anon_vma(Some(av)));
    Ok(())
}

/// Linux: `anon_vma_compatible()` — could `a` (left) and `b` (right) share an anon_vma?
pub(super) fn anon_vma_compatible(a: &Vma, b: &Vma, stable: &dyn VmaStable) -> bool {
    a.end() == b.start()
        && a.policy() == b.policy()
        && super::area::same_file(a.file(stable).as_ref(), b.file(stable).as_ref())
        && ((a.flags() ^ b.flags())
            & !(super::area::VmFlags::ACCESS | super::area::VmFlags::SOFTDIRTY))
            .is_empty()
        && b.pgoff() == a.pgoff() + super::area::pages(b.start() - a.start())
}

/// Linux: `reusable_anon_vma()` — `old`'s anon_vma if `a`/`b` are compatible and `old`
/// is not a fork child (single chain entry).
pub(super) fn reusable_anon_vma(
    old: VmaRef,
    a: &Vma,
    b: &Vma,
    stable: &dyn VmaStable,
) -> Option<AnonVmaRef> {
    // `anon_vma` first: under the mmap read lock a neighbour's chain may be being built
    // by a concurrent first fault, and is only looked at once its anon_vma is set (the
    // same order as Linux's `READ_ONCE(old->anon_vma)` before `list_is_singular`).
    let av = old.anon_vma(stable)?;
    if anon_vma_compatible(a, b, stable) && old.anon_vma_chain_len(stable) == 1 {
        return Some(av);
    }
    None
}
