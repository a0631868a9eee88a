//! hugetlb: pools of 2 MiB and 1 GiB pages, reservations, the hugetlb fault, and PMD
//! page-table sharing (Linux: `mm/hugetlb.c`, `include/linux/hugetlb.h`; the file
//! system side, hugetlbfs, is [`crate::file::hugetlbfs`]).
//!
//! # Map
//! - this file: [`Hstate`] (Linux `struct hstate`: the pool of one page size and its
//!   counters, `nr_hugepages`, `/proc/meminfo` lines), the per-(file, index) fault
//!   mutex table, and the registry that finds an address space's page tables from a
//!   VMA (Linux: `vma->vm_mm->pgd`);
//! - `reserve.rs`: [`ResvMap`] (`struct resv_map` and its regions);
//! - `fault.rs`: `hugetlb_fault`, `hugetlb_no_page`, `hugetlb_wp`;
//! - `share.rs`: `want_pmd_share`, `huge_pmd_share`, the unshare paths
//!   (`hugetlb_unshare_pmds`, `hugetlb_split`) and the hugetlb zap.
//!
//! # Page ownership
//! Every page of a pool is an allocated buddy block of the page size, marked
//! [`FrameFlags::HUGETLB`], on which the pool itself keeps one reference. A page is
//! *free* exactly when that is the only reference left: the page cache, page-table
//! entries and gathers hold the others, and when the last of them is put the page is
//! back in the pool (Linux: `free_huge_folio`, the folio destructor, which puts it on
//! `hugepage_freelists`). Counting free pages is a scan of the pool, which is at most
//! a few thousand pages.

pub mod fault;
mod reserve;
pub mod share;

use alloc::boxed::Box;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::fmt::Write;

use x86_64::PhysAddr;

pub use reserve::ResvMap;

use crate::errno::Errno;
use crate::frame::{FrameAllocator, FrameFlags};
use crate::paging::{PageSize, PageTableRoot};

/// The huge page sizes (Linux: the registered hstates of x86_64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HugeSize {
    /// 2 MiB, a PD-level leaf (Linux: `HPAGE_PMD_SIZE`, the default hstate).
    Size2M,
    /// 1 GiB, a PDPT-level leaf (Linux: `PUD_SIZE`, `hugepagesz=1G`).
    Size1G,
}

impl HugeSize {
    /// The page-table leaf size.
    pub const fn page_size(self) -> PageSize {
        match self {
            HugeSize::Size2M => PageSize::Size2M,
            HugeSize::Size1G => PageSize::Size1G,
        }
    }
    /// Bytes per page (Linux: `huge_page_size`).
    pub const fn bytes(self) -> usize {
        self.page_size().bytes() as usize
    }
    /// Buddy order (Linux: `huge_page_order`).
    pub const fn order(self) -> usize {
        self.page_size().order()
    }
    /// The size `mmap` asks for in bits 26–31 of its flags (Linux: `MAP_HUGE_SHIFT`,
    /// the log2 of the size; 0 = the default size). `None`: no such hstate (EINVAL).
    pub fn from_map_flags(flags: u32) -> Option<HugeSize> {
        match (flags >> 26) & 0x3f {
            0 | 21 => Some(HugeSize::Size2M),
            30 => Some(HugeSize::Size1G),
            _ => None,
        }
    }
    /// Size in kB, as `/proc/meminfo` prints it.
    pub const fn kb(self) -> usize {
        self.bytes() >> 10
    }
}

/// The pool's bookkeeping (Linux: the counters of `struct hstate` under
/// `hugetlb_lock`).
struct Pool {
    /// Every page the pool owns (Linux: `nr_huge_pages` = its length).
    pages: Vec<PhysAddr>,
    /// Linux: `resv_huge_pages` — reservations not yet consumed by a fault.
    resv: usize,
    /// The persistent size asked for (Linux: `nr_huge_pages - surplus_huge_pages`);
    /// pages above it are freed to the buddy allocator as soon as they are free.
    target: usize,
}

/// One huge page size's pool and counters (Linux: `struct hstate`).
pub struct Hstate {
    size: HugeSize,
    alloc: &'static FrameAllocator,
    pool: spin::Mutex<Pool>,
}

/// A snapshot of an hstate's counters (Linux: `HugePages_*` in `/proc/meminfo`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HugeCounters {
    /// `HugePages_Total`: pages in the pool.
    pub total: usize,
    /// `HugePages_Free`: pages no one uses.
    pub free: usize,
    /// `HugePages_Rsvd`: free pages promised to mappings.
    pub rsvd: usize,
    /// `HugePages_Surp`: pages above the persistent size (in use; freed on release).
    pub surp: usize,
}

impl Hstate {
    fn new(alloc: &'static FrameAllocator, size: HugeSize) -> Self {
        Hstate {
            size,
            alloc,
            pool: spin::Mutex::new(Pool {
                pages: Vec::new(),
                resv: 0,
                target: 0,
            }),
        }
    }

    /// The page size.
    pub fn size(&self) -> HugeSize {
        self.size
    }

    /// The frame allocator the pool draws from.
    pub fn allocator(&self) -> &'static FrameAllocator {
        self.alloc
    }

    fn is_free(&self, pa: PhysAddr) -> bool {
        self.alloc.meta(pa).is_some_and(|m| m.refcount() == 1)
    }

    /// Frees surplus pages that have become free (Linux: `free_huge_folio` of a
    /// surplus folio → `update_and_free_hugetlb_folio`).
    fn shrink_surplus(&self, p: &mut Pool) {
        let mut i = 0;
        while p.pages.len() > p.target && i < p.pages.len() {
            let pa = p.pages[i];
            let free_count = p.pages.iter().filter(|&&q| self.is_free(q)).count();
            if self.is_free(pa) && free_count > p.resv {
                p.pages.swap_remove(i);
                self.release(pa);
            } else {
                i += 1;
            }
        }
    }

    fn release(&self, pa: PhysAddr) {
        if let Some(m) = self.alloc.meta(pa) {
            m.clear_flags(FrameFlags::HUGETLB);
        }
        if let Err(e) = self.alloc.put_frame(pa) {
            log::error!("hugetlb: freeing pool page {:#x}: {e}", pa.as_u64());
        }
    }

    /// Sets the persistent pool size (Linux: writing `nr_hugepages`,
    /// `set_max_huge_pages`): grows from the buddy allocator as far as it can, shrinks
    /// by freeing free pages that no reservation needs (in-use pages above the new size
    /// become surplus and go when released). Returns the new `HugePages_Total`.
    pub fn set_nr_hugepages(&self, n: usize) -> usize {
        let mut p = self.pool.lock();
        p.target = n;
        while p.pages.len() < n {
            if p.pages.try_reserve(1).is_err() {
                break;
            }
            let Ok(pa) = self.alloc.alloc(self.size.order()) else {
                break;
            };
            if let Some(m) = self.alloc.meta(pa) {
                m.set_flags(FrameFlags::HUGETLB);
            }
            p.pages.push(pa);
        }
        // Linux: min_count = resv + in-use; never below what reservations need.
        self.shrink_surplus(&mut p);
        p.pages.len()
    }

    /// The counters (Linux: `hugetlb_report_meminfo`).
    pub fn counters(&self) -> HugeCounters {
        let mut p = self.pool.lock();
        self.shrink_surplus(&mut p);
        let free = p.pages.iter().filter(|&&q| self.is_free(q)).count();
        HugeCounters {
            total: p.pages.len(),
            free,
            rsvd: p.resv,
            surp: p.pages.len().saturating_sub(p.target),
        }
    }

    /// Takes `delta` reservations (Linux: `hugetlb_acct_memory(h, delta)` →
    /// `gather_surplus_pages`, without overcommit): ENOMEM unless that many free pages
    /// are not yet promised.
    pub fn reserve(&self, delta: usize) -> Result<(), Errno> {
        if delta == 0 {
            return Ok(());
        }
        let mut p = self.pool.lock();
        let free = p.pages.iter().filter(|&&q| self.is_free(q)).count();
        if free < p.resv + delta {
            return Err(Errno::ENOMEM);
        }
        p.resv += delta;
        Ok(())
    }

    /// Gives back `delta` reservations never consumed (Linux: `hugetlb_acct_memory(h,
    /// -delta)`).
    pub fn unreserve(&self, delta: usize) {
        let mut p = self.pool.lock();
        debug_assert!(p.resv >= delta, "hugetlb: unreserving more than reserved");
        p.resv = p.resv.saturating_sub(delta);
        self.shrink_surplus(&mut p);
    }

    /// Gives back a reservation a failed fault consumed (Linux:
    /// `restore_reserve_on_error`): the page went back to the pool unused.
    pub fn restore_reserve(&self) {
        self.pool.lock().resv += 1;
    }

    /// A free page of the pool with one reference for the caller, zeroed (Linux:
    /// `alloc_hugetlb_folio` + `folio_zero_user`). With `use_resv` it consumes one
    /// reservation (the caller had one); without, it may only take a page no
    /// reservation promises. `None`: nothing to give (the fault's SIGBUS).
    pub fn alloc_page(&self, use_resv: bool) -> Option<PhysAddr> {
        let mut p = self.pool.lock();
        let free = p.pages.iter().filter(|&&q| self.is_free(q)).count();
        if !use_resv && free <= p.resv {
            return None;
        }
        let pa = *p.pages.iter().find(|&&q| self.is_free(q))?;
        let m = self.alloc.meta(pa)?;
        m.get();
        m.clear_flags(FrameFlags::ANON | FrameFlags::ANON_EXCLUSIVE);
        if use_resv {
            p.resv = p.resv.saturating_sub(1);
        }
        drop(p);
        // SAFETY: a free pool page is ours alone (the pool lock handed it to us and
        // took the reference that marks it used); the direct map reaches the whole
        // block of `bytes()` bytes.
        unsafe { core::ptr::write_bytes(self.alloc.phys_to_virt(pa), 0, self.size.bytes()) };
        Some(pa)
    }

    /// Appends this hstate's `/proc/meminfo` lines to `out` (Linux:
    /// `hugetlb_report_meminfo`: `HugePages_Total` … `Hugepagesize`).
    pub fn meminfo(&self, out: &mut alloc::string::String) {
        let c = self.counters();
        let _ = writeln!(out, "HugePages_Total: {:>6}", c.total);
        let _ = writeln!(out, "HugePages_Free:  {:>6}", c.free);
        let _ = writeln!(out, "HugePages_Rsvd:  {:>6}", c.rsvd);
        let _ = writeln!(out, "HugePages_Surp:  {:>6}", c.surp);
        let _ = writeln!(out, "Hugepagesize:   {:>8} kB", self.size.kb());
    }
}

/// The two hstates of one frame allocator.
struct Hstates {
    key: usize,
    h2m: Hstate,
    h1g: Hstate,
}

/// Hstates per frame allocator (the kernel has one allocator; host tests have one per
/// simulated machine). Entries are leaked: allocators are `'static` too.
static HSTATES: spin::Mutex<Vec<&'static Hstates>> = spin::Mutex::new(Vec::new());

/// The hstate of `size` for `alloc` (Linux: `size_to_hstate`), created on first use.
pub fn hstate(alloc: &'static FrameAllocator, size: HugeSize) -> Result<&'static Hstate, Errno> {
    let key = alloc as *const FrameAllocator as usize;
    let mut all = HSTATES.lock();
    let hs = match all.iter().find(|h| h.key == key) {
        Some(h) => *h,
        None => {
            all.try_reserve(1).map_err(|_| Errno::ENOMEM)?;
            let b = Box::try_new(Hstates {
                key,
                h2m: Hstate::new(alloc, HugeSize::Size2M),
                h1g: Hstate::new(alloc, HugeSize::Size1G),
            })
            .map_err(|_| Errno::ENOMEM)?;
            let h: &'static Hstates = Box::leak(b);
            all.push(h);
            h
        }
    };
    Ok(match size {
        HugeSize::Size2M => &hs.h2m,
        HugeSize::Size1G => &hs.h1g,
    })
}

/// `/proc/meminfo`'s hugetlb lines for `alloc` (the default 2 MiB hstate's counters,
/// then `Hugetlb:`, the memory of every pool, as Linux prints them).
pub fn meminfo(alloc: &'static FrameAllocator) -> Result<alloc::string::String, Errno> {
    let mut s = alloc::string::String::new();
    let h2 = hstate(alloc, HugeSize::Size2M)?;
    let h1 = hstate(alloc, HugeSize::Size1G)?;
    h2.meminfo(&mut s);
    let kb = h2.counters().total * h2.size.kb() + h1.counters().total * h1.size.kb();
    let _ = writeln!(s, "Hugetlb:        {kb:>8} kB");
    Ok(s)
}

// ---- the fault mutex table -----------------------------------------------------------

/// Linux: `num_fault_mutexes` (a power of two).
const FAULT_MUTEXES: usize = 64;

/// Linux: `hugetlb_fault_mutex_table` — serialises faults (and truncation) of one
/// (file, index), so two CPUs faulting the same index allocate one page.
static FAULT_MUTEX: [spin::Mutex<()>; FAULT_MUTEXES] =
    [const { spin::Mutex::new(()) }; FAULT_MUTEXES];

/// The fault mutex of page `idx` of the file whose mapping is at `mapping` (Linux:
/// `hugetlb_fault_mutex_hash`).
pub fn fault_mutex(mapping: usize, idx: usize) -> &'static spin::Mutex<()> {
    let h = (mapping >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ idx.wrapping_mul(0xff51_afd7_ed55_8ccd);
    &FAULT_MUTEX[(h >> 32) % FAULT_MUTEXES]
}

// ---- address space registry ----------------------------------------------------------

/// Page tables of an address space, shared with the registry below.
pub type PtHandle = Arc<PageTableRoot>;

/// The page tables of every address space with a hugetlb VMA, by mm id: what
/// `svma->vm_mm` gives Linux's `huge_pmd_share`, truncation and `hugetlb_split`.
static MMS: spin::Mutex<Vec<(u64, Weak<PageTableRoot>)>> = spin::Mutex::new(Vec::new());

/// Records `pt` as the page tables of mm `id` (idempotent). ENOMEM if the registry
/// cannot grow.
pub fn register_mm(id: u64, pt: &PtHandle) -> Result<(), Errno> {
    let mut m = MMS.lock();
    if m.iter().any(|(i, _)| *i == id) {
        return Ok(());
    }
    m.try_reserve(1).map_err(|_| Errno::ENOMEM)?;
    m.push((id, Arc::downgrade(pt)));
    Ok(())
}

/// Forgets mm `id` (its address space is going away).
pub fn unregister_mm(id: u64) {
    MMS.lock().retain(|(i, _)| *i != id);
}

/// The page tables of mm `id`, if it is registered and alive.
pub fn mm_page_tables(id: u64) -> Option<PtHandle> {
    MMS.lock()
        .iter()
        .find(|(i, _)| *i == id)
        .and_then(|(_, w)| w.upgrade())
}
