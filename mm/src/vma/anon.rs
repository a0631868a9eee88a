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

// SAFETY: the pointee is only mutated through atomics; the count is atomic.
unsafe impl Send for AnonVmaRef {}
// SAFETY: as above.
unsafe impl Sync for AnonVmaRef {}

impl AnonVmaRef {
    /// Linux: `anon_vma_alloc()` — a fresh root anon_vma. `Err(ENOMEM)` on failure.
    pub fn new_root() -> Result<Self, Errno> {
        Self::alloc(None, None)
    }

    fn alloc(root: Option<AnonVmaRef>, parent: Option<AnonVmaRef>) -> Result<Self, Errno> {
        let layout = Layout::new::<AnonVma>();
        // SAFETY: the layout has non-zero size.
        let p = unsafe { alloc(layout) } as *mut AnonVma;
        let p = NonNull::new(p).ok_or(Errno::ENOMEM)?;
        // SAFETY: freshly allocated, properly aligned for `AnonVma`.
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
        // SAFETY: live by the caller's contract.
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
        // SAFETY: we hold a reference, so the object is live.
        unsafe { self.0.as_ref() }
    }
}

impl Drop for AnonVmaRef {
    fn drop(&mut self) {
        if self.refcount.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        core::sync::atomic::fence(Ordering::Acquire);
        // SAFETY: we held the last reference; nobody else can reach the object.
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
/// Caller holds the mmap write lock; `dst` is write-locked or detached and private.
pub(super) unsafe fn anon_vma_clone(dst: &Vma, src: &Vma, fail: bool) -> Result<(), Errno> {
    // SAFETY: caller's contract: `src` stable, `dst` exclusive.
    let (src_chain, dst_chain) = unsafe { (src.chain_ref(), dst.chain_mut()) };
    if src_chain.is_empty() {
        return Ok(());
    }
    if fail || dst_chain.try_reserve(src_chain.len()).is_err() {
        drop(dst.replace_anon_vma(None));
        // SAFETY: as above.
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
/// Caller has exclusive access to `vma`'s chain (write-locked or detached).
pub(super) unsafe fn unlink_anon_vmas(vma: &Vma) {
    // SAFETY: caller's contract.
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
/// `child` is detached and private to the caller; `parent` is stable.
pub(super) unsafe fn anon_vma_fork(child: &Vma, parent: &Vma) -> Result<(), Errno> {
    // SAFETY: `parent` is stable by the caller's contract.
    let Some(pav) = (unsafe { parent.anon_vma_unchecked() }) else {
        return Ok(());
    };
    drop(child.replace_anon_vma(None));
    // SAFETY: caller's contract.
    unsafe { anon_vma_clone(child, parent, false)? };
    let root = match pav.root.as_ref() {
        Some(r) => r.clone(),
        None => pav.clone(),
    };
    let av = match AnonVmaRef::alloc(Some(root), Some(pav.clone())) {
        Ok(av) => av,
        Err(e) => {
            // SAFETY: caller's contract.
            unsafe { unlink_anon_vmas(child) };
            return Err(e);
        }
    };
    pav.num_children.fetch_add(1, Ordering::Relaxed);
    // SAFETY: caller's contract.
    let chain = unsafe { child.chain_mut() };
    if chain.try_reserve(1).is_err() {
        // SAFETY: caller's contract.
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
/// Caller has exclusive access to `vma`'s chain.
pub(super) unsafe fn anon_vma_attach(vma: &Vma, reuse: Option<AnonVmaRef>) -> Result<(), Errno> {
    let av = match reuse {
        Some(av) => av,
        None => AnonVmaRef::new_root()?,
    };
    // SAFETY: caller's contract.
    let chain = unsafe { vma.chain_mut() };
    chain.try_reserve(1).map_err(|_| Errno::ENOMEM)?;
    chain_link(chain, &av);
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
    if anon_vma_compatible(a, b, stable) && old.anon_vma_chain_len(stable) == 1 {
        return old.anon_vma(stable);
    }
    None
}
