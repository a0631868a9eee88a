//! TLB flushing: Linux's range-flush policy, a hardware and a host backend, and the
//! `mmu_gather` that defers frees until after the flush (Linux: `arch/x86/mm/tlb.c`,
//! `mm/mmu_gather.c`, `include/asm-generic/tlb.h`).
//!
//! The backend is chosen by target: on the kernel target (`HwTlb`) flushes are `invlpg`
//! and CR3 reloads; on the host (`RecordingTlb`) every flush, CR3 load and deferred free
//! is appended to a log that tests read, and no privileged instruction is ever executed.

use alloc::sync::Arc;
use core::alloc::Layout;
use core::sync::atomic::{AtomicU64, Ordering, fence};
use x86_64::{PhysAddr, VirtAddr};

use super::entry::{Pte, free_table_page};
use super::{PTE_ACCOUNTED, PageSize, PageTableFlags as F, PageTableRoot};
use crate::frame::{FrameAllocator, FrameFlags};
use crate::sync::rcu::{RcuHead, call_rcu, synchronize_rcu};

/// Above this many pages a range flush becomes a full flush (Linux:
/// `tlb_single_page_flush_ceiling`, default 33).
pub const TLB_SINGLE_PAGE_FLUSH_CEILING: u64 = 33;

/// What one flush does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushKind {
    /// `invlpg` once per `stride`-sized page from `start`, `count` times. `invlpg` also
    /// drops global entries for that address and every paging-structure cache entry, so
    /// this is enough after freeing page tables too.
    Pages {
        /// First address.
        start: VirtAddr,
        /// Number of `invlpg`s.
        count: u64,
        /// Distance between them (the smallest page size cleared).
        stride: PageSize,
    },
    /// Everything: a CR3 reload, or with `global` a CR4.PGE toggle that also drops global
    /// entries (Linux: `flush_tlb_local` / `__flush_tlb_global`).
    All {
        /// Global entries must go too.
        global: bool,
    },
}

/// Linux's choice in `flush_tlb_mm_range`: per-page below the ceiling, else everything.
pub fn flush_kind(start: u64, end: u64, stride: PageSize, global: bool) -> FlushKind {
    let start = start & !(stride.bytes() - 1);
    let count = end.saturating_sub(start).div_ceil(stride.bytes());
    if count > TLB_SINGLE_PAGE_FLUSH_CEILING {
        FlushKind::All { global }
    } else {
        FlushKind::Pages {
            start: VirtAddr::new_truncate(start),
            count,
            stride,
        }
    }
}

/// The hardware-facing half of TLB maintenance.
pub trait TlbBackend: Clone {
    /// Performs `kind` on every CPU in `cpus` that may cache the space, always including
    /// the current CPU (Linux: `flush_tlb_mm_range` -> local flush + `flush_tlb_multi`).
    fn flush(&self, cpus: u64, kind: FlushKind);

    /// Loads `root` into CR3 on CPU `cpu` (Linux: `switch_mm_irqs_off`).
    ///
    /// # Safety
    /// `root` is a PML4 whose kernel half maps the running kernel, and which stays alive
    /// while loaded.
    unsafe fn load_root(&self, cpu: usize, root: PhysAddr);

    /// A deferred free is about to happen (host: recorded for ordering checks).
    fn note_release(&self, _r: Release) {}
}

/// A deferred free performed by [`MmuGather`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// A reference on a data frame was dropped.
    PutFrame(PhysAddr),
    /// A page-table page was handed to RCU, to be freed after a grace period.
    FreeTable(PhysAddr),
}

/// The real backend: `invlpg`, CR3 and CR4 (kernel target only).
#[cfg(target_os = "none")]
#[derive(Debug, Clone, Default)]
pub struct HwTlb;

/// The remote half of a flush, registered by the kernel once its other CPUs run
/// (Linux: `native_flush_tlb_multi`, the `pv_ops.mmu.flush_tlb_multi` hook): it must
/// perform `kind` on every other CPU in the mask (on every CPU for a kernel-range or
/// global flush) and return only when all of them have. Sending IPIs is the kernel's
/// business; this crate stays host-testable.
#[cfg(target_os = "none")]
static FLUSH_TLB_MULTI: spin::Once<fn(u64, FlushKind)> = spin::Once::new();

/// Registers the remote flush (see [`HwTlb`]); the first registration wins.
#[cfg(target_os = "none")]
pub fn set_flush_tlb_multi(f: fn(u64, FlushKind)) {
    FLUSH_TLB_MULTI.call_once(|| f);
}

#[cfg(target_os = "none")]
impl HwTlb {
    /// The backend (needs no memory).
    pub(super) fn try_new() -> Option<Self> {
        Some(HwTlb)
    }
}

#[cfg(target_os = "none")]
impl TlbBackend for HwTlb {
    /// Linux's `flush_tlb_mm_range`: the local flush, then the remote one on the other
    /// CPUs of `cpus` (the space's `mm_cpumask`), which returns only after every one of
    /// them flushed, so a gather frees pages and tables only afterwards.
    fn flush(&self, cpus: u64, kind: FlushKind) {
        flush_local(kind);
        if let Some(multi) = FLUSH_TLB_MULTI.get() {
            multi(cpus, kind);
        }
    }

    unsafe fn load_root(&self, _cpu: usize, root: PhysAddr) {
        // SAFETY: forwarded from the caller (the trait's contract is `load_cr3`'s).
        unsafe { load_cr3(root) };
    }
}

/// Performs `kind` on this CPU only (Linux: `flush_tlb_func`'s work:
/// `flush_tlb_one_user` per page below the ceiling, else `flush_tlb_local` /
/// `__flush_tlb_all`). Also what a CPU runs when it answers a shootdown IPI.
#[cfg(target_os = "none")]
pub fn flush_local(kind: FlushKind) {
    use x86_64::instructions::tlb;
    {
        match kind {
            FlushKind::Pages {
                start,
                count,
                stride,
            } => {
                for i in 0..count {
                    tlb::flush(start + i * stride.bytes());
                }
            }
            FlushKind::All { global: false } => tlb::flush_all(),
            FlushKind::All { global: true } => {
                use x86_64::registers::control::{Cr4, Cr4Flags};
                let cr4 = Cr4::read();
                if cr4.contains(Cr4Flags::PAGE_GLOBAL) {
                    // SAFETY: toggling PGE off and back on changes no translation; it only drops every TLB entry, global ones included (SDM 4.10.4.1).
                    unsafe {
                        Cr4::write(cr4 - Cr4Flags::PAGE_GLOBAL);
                        Cr4::write(cr4);
                    }
                } else {
                    tlb::flush_all();
                }
            }
        }
    }
}

/// Loads `root` into CR3 (Linux: `load_cr3` → `native_write_cr3`). No PCID and no
/// cache-control bits, so the write flushes every non-global TLB entry.
///
/// This is the only CR3 write in the tree. It lives here, not in the kernel's arch
/// layer, because [`PageTableRoot::activate`] (Linux: `switch_mm_irqs_off`) must load
/// CR3 and this crate cannot call into the kernel crate; the kernel calls this
/// function for the one root that is not a [`PageTableRoot`], its own boot PML4
/// (Linux: `switch_mm(…, &init_mm, …)` / `leave_mm`).
///
/// # Safety
/// `root` is a PML4 whose kernel half maps the running kernel (code, stack, the direct
/// map), and it stays alive (is neither freed nor reused) while loaded.
#[cfg(target_os = "none")]
pub unsafe fn load_cr3(root: PhysAddr) {
    use x86_64::registers::control::{Cr3, Cr3Flags};
    use x86_64::structures::paging::PhysFrame;
    let frame = PhysFrame::containing_address(root);
    // SAFETY: the caller guarantees `root` maps the running kernel and outlives its time in CR3, so every access after the switch still translates.
    unsafe { Cr3::write(frame, Cr3Flags::empty()) };
}

/// What the host backend records.
#[cfg(not(target_os = "none"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlbEvent {
    /// A flush on the CPUs in the mask.
    Flush {
        /// The space's CPU mask at the time.
        cpus: u64,
        /// What was flushed.
        kind: FlushKind,
    },
    /// CR3 was (pretend-)loaded.
    LoadRoot {
        /// CPU index.
        cpu: usize,
        /// PML4.
        root: PhysAddr,
    },
    /// A deferred free happened.
    Release(Release),
}

/// Host backend: records instead of executing privileged instructions. Clones share the
/// log, so a space and its gathers append to the same one.
#[cfg(not(target_os = "none"))]
#[derive(Debug, Clone, Default)]
pub struct RecordingTlb {
    log: alloc::sync::Arc<spin::Mutex<alloc::vec::Vec<TlbEvent>>>,
}

#[cfg(not(target_os = "none"))]
impl RecordingTlb {
    /// A backend with an empty log, or `None` if the host has no memory for it (a new
    /// address space must fail with ENOMEM then, not abort).
    pub(super) fn try_new() -> Option<Self> {
        let log = alloc::sync::Arc::try_new(spin::Mutex::new(alloc::vec::Vec::new())).ok()?;
        Some(RecordingTlb { log })
    }

    /// A copy of the log.
    pub fn events(&self) -> alloc::vec::Vec<TlbEvent> {
        self.log.lock().clone()
    }

    /// Empties the log.
    pub fn clear(&self) {
        self.log.lock().clear()
    }

    /// Records `e`. The log stands in for hardware, which needs no memory to flush: if
    /// the host cannot grow it, the event is dropped rather than aborting the flush.
    fn push(&self, e: TlbEvent) {
        let mut log = self.log.lock();
        if log.try_reserve(1).is_ok() {
            log.push(e);
        }
    }
}

#[cfg(not(target_os = "none"))]
impl TlbBackend for RecordingTlb {
    fn flush(&self, cpus: u64, kind: FlushKind) {
        self.push(TlbEvent::Flush { cpus, kind })
    }

    unsafe fn load_root(&self, cpu: usize, root: PhysAddr) {
        self.push(TlbEvent::LoadRoot { cpu, root })
    }

    fn note_release(&self, r: Release) {
        self.push(TlbEvent::Release(r))
    }
}

/// The backend of this build.
#[cfg(target_os = "none")]
pub type ArchTlb = HwTlb;
/// The backend of this build.
#[cfg(not(target_os = "none"))]
pub type ArchTlb = RecordingTlb;

/// Data frames batched before a forced flush (Linux: `MAX_GATHER_BATCH`, smaller here
/// because the batch lives inline, so gathering never allocates).
const FRAME_BATCH: usize = 128;
/// Table pages batched before a forced flush.
const TABLE_BATCH: usize = 32;

/// Counters of one gather, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatherStats {
    /// Flushes issued.
    pub flushes: u64,
    /// Frame references dropped.
    pub frames_put: u64,
    /// Table pages released (handed to RCU, freed after a grace period).
    pub tables_freed: u64,
}

/// Collects the range to flush, the frames to put and the table pages to free during an
/// unmap or protect, and frees them only after the flush (Linux: `struct mmu_gather`,
/// `tlb_gather_mmu` / `tlb_finish_mmu`).
///
/// Create one per operation (or per batch of operations on one space) with
/// [`MmuGather::new`], pass it to `unmap`/`protect`/`unshare_pmd`, then call
/// [`finish`](Self::finish) (dropping it does the same). When a batch fills up the
/// gather flushes early and releases what it holds (Linux: `tlb_flush_mmu`), so it
/// never allocates.
///
/// The CPU mask of every space it is used with is OR-ed in before and again after
/// entries are cleared (with a full fence between the clear and the second read), and
/// the mask of the space it was made for is read again at every flush, the early ones a
/// full batch forces in the middle of a walk included (Linux reads `mm_cpumask` in
/// `flush_tlb_mm_range`, at each `tlb_flush_mmu`, after the PTE changes): a CPU that
/// activates the space after that read loads CR3 after the clear and (without PCID)
/// cannot hold the old entry, so the flush's IPIs reach every CPU that may.
pub struct MmuGather {
    alloc: &'static FrameAllocator,
    tlb: ArchTlb,
    /// CPUs gathered so far (the masks OR-ed in by the walks).
    cpus: u64,
    /// The live `mm_cpumask` of the space the gather was made for, read again at every
    /// flush (`None`: a teardown gather, made when the space is active nowhere).
    mask: Option<Arc<AtomicU64>>,
    /// Pending flush range `start..end`; empty when `start >= end`.
    start: u64,
    end: u64,
    stride: PageSize,
    /// A global leaf was cleared: a full flush must drop global entries too.
    global: bool,
    /// Whole-space teardown (Linux: `tlb->fullmm`): no flush needed when the space is
    /// active nowhere and had no global leaves.
    fullmm: bool,
    frames: [PhysAddr; FRAME_BATCH],
    nr_frames: usize,
    tables: [PhysAddr; TABLE_BATCH],
    nr_tables: usize,
    stats: GatherStats,
}

impl MmuGather {
    /// A gather for operations on `space` (Linux: `tlb_gather_mmu`).
    pub fn new(space: &PageTableRoot) -> Self {
        let mask = space.cpu_mask();
        let cpus = mask.load(Ordering::Acquire);
        let mut g = Self::with(space.allocator(), space.tlb().clone(), Some(mask), false);
        g.cpus = cpus;
        g
    }

    pub(super) fn with(
        alloc: &'static FrameAllocator,
        tlb: ArchTlb,
        mask: Option<Arc<AtomicU64>>,
        fullmm: bool,
    ) -> Self {
        Self {
            alloc,
            tlb,
            cpus: 0,
            mask,
            start: u64::MAX,
            end: 0,
            stride: PageSize::Size1G,
            global: false,
            fullmm,
            frames: [PhysAddr::zero(); FRAME_BATCH],
            nr_frames: 0,
            tables: [PhysAddr::zero(); TABLE_BATCH],
            nr_tables: 0,
            stats: GatherStats::default(),
        }
    }

    pub(super) fn allocator(&self) -> &'static FrameAllocator {
        self.alloc
    }

    /// Adds CPUs that may cache the space.
    pub(super) fn add_cpus(&mut self, cpus: u64) {
        self.cpus |= cpus;
    }

    /// CPUs the flush will target.
    pub fn cpus(&self) -> u64 {
        self.cpus
    }

    /// Counters so far.
    pub fn stats(&self) -> GatherStats {
        self.stats
    }

    /// True when a flush is pending.
    pub fn needs_flush(&self) -> bool {
        self.start < self.end
    }

    /// Records that `va..va+size` must be flushed (Linux: `tlb_flush_pte_range` and
    /// friends, which also track the smallest stride).
    pub(super) fn add_range(&mut self, va: u64, size: PageSize) {
        self.start = self.start.min(va);
        self.end = self.end.max(va + size.bytes());
        self.stride = self.stride.min(size);
    }

    /// The leaf `old` at `va` was changed or cleared: if the CPU could have cached it,
    /// queue its flush.
    pub(super) fn flush_leaf(&mut self, va: u64, size: PageSize, old: Pte) {
        if old.has(F::PRESENT) {
            self.add_range(va, size);
            if old.has(F::GLOBAL) {
                self.global = true;
            }
        }
    }

    /// A leaf `old` at `va` was cleared (Linux: `tlb_remove_tlb_entry` +
    /// `page_remove_rmap` + `tlb_remove_page`). The map count drops now; the reference
    /// is put after the flush.
    pub(super) fn remove_leaf(&mut self, va: u64, size: PageSize, old: Pte) {
        self.flush_leaf(va, size, old);
        if old.has(PTE_ACCOUNTED) {
            let pa = PhysAddr::new(old.addr().as_u64() & !(size.bytes() - 1));
            if let Some(m) = self.alloc.meta(pa) {
                m.dec_mapcount();
                if old.has(F::DIRTY) {
                    // Linux: zap_present_ptes -> folio_mark_dirty.
                    m.set_flags(FrameFlags::DIRTY);
                }
            }
            if self.nr_frames == FRAME_BATCH {
                self.flush();
            }
            self.frames[self.nr_frames] = pa;
            self.nr_frames += 1;
        }
    }

    /// An emptied table page covering `va` was unlinked; free it after the flush
    /// (Linux: `pte_free_tlb` -> `tlb_remove_table`).
    pub(super) fn remove_table(&mut self, va: u64, pa: PhysAddr) {
        if self.nr_tables == TABLE_BATCH {
            self.flush();
        }
        // The walk caches may hold the table even if no leaf under it was present:
        // make sure at least one invlpg (which drops all paging-structure caches) runs.
        if !self.needs_flush() {
            self.add_range(va, PageSize::Size4K);
        }
        self.tables[self.nr_tables] = pa;
        self.nr_tables += 1;
    }

    /// Flushes what is pending, then releases the batched frames and tables (Linux:
    /// `tlb_flush_mmu` = `tlb_flush_mmu_tlbonly` + `tlb_flush_mmu_free`).
    pub fn flush(&mut self) {
        if self.needs_flush() {
            if let Some(mask) = &self.mask {
                // Our PTE stores before the mask read, against `activate`'s mask
                // update before its CR3 load (see the type's doc).
                fence(Ordering::SeqCst);
                self.cpus |= mask.load(Ordering::Acquire);
            }
            let skip = self.fullmm && self.cpus == 0 && !self.global;
            if !skip {
                let kind = flush_kind(self.start, self.end, self.stride, self.global);
                self.tlb.flush(self.cpus, kind);
                self.stats.flushes += 1;
            }
            self.start = u64::MAX;
            self.end = 0;
            self.stride = PageSize::Size1G;
        }
        for i in 0..self.nr_frames {
            let pa = self.frames[i];
            self.tlb.note_release(Release::PutFrame(pa));
            if let Err(e) = self.alloc.put_frame(pa) {
                log::error!("paging: put of frame {:#x} failed: {e}", pa.as_u64());
            }
            self.stats.frames_put += 1;
        }
        self.nr_frames = 0;
        if self.nr_tables != 0 {
            self.free_tables();
        }
    }

    /// Hands the batched table pages, already unlinked and flushed, to RCU: they are
    /// freed after a grace period, so a lock-free page-table walker (Linux: GUP-fast,
    /// `pte_offset_map` under `rcu_read_lock`) that loaded an old upper entry never
    /// walks a reused page (Linux: `CONFIG_MMU_GATHER_RCU_TABLE_FREE`, `tlb_table_flush`
    /// → `tlb_remove_table_free` → `call_rcu(&batch->rcu, tlb_remove_table_rcu)`).
    /// The batch record is allocated without waiting; if that fails, Linux's
    /// `tlb_remove_table_one` fallback: wait for a grace period here, then free.
    fn free_tables(&mut self) {
        let n = self.nr_tables;
        for &pa in &self.tables[..n] {
            self.tlb.note_release(Release::FreeTable(pa));
        }
        self.stats.tables_freed += n as u64;
        self.nr_tables = 0;
        if self.fullmm && self.cpus == 0 {
            // Teardown of a space loaded on no CPU (`exit_mmap`, a failed fork's
            // child): no walker, locked or lock-free, can reach its tables any more (a
            // lock-free walk only ever covers the walking CPU's own active space), so
            // they go back now. Linux defers these too; freeing them at once keeps
            // `exit` from holding page-table pages across a grace period.
            for &pa in &self.tables[..n] {
                free_table_page(self.alloc, pa);
            }
            return;
        }
        let layout = Layout::new::<TableBatch>();
        // SAFETY: `TableBatch` has a non-zero size.
        let b = unsafe { alloc::alloc::alloc(layout) } as *mut TableBatch;
        if b.is_null() {
            synchronize_rcu();
            for &pa in &self.tables[..n] {
                free_table_page(self.alloc, pa);
            }
            return;
        }
        // SAFETY: `b` is a fresh allocation of `TableBatch`'s layout; after the write it
        // is leaked to RCU until `tlb_remove_table_rcu` frees it.
        unsafe {
            b.write(TableBatch {
                rcu: RcuHead::new(),
                alloc: self.alloc,
                nr: n,
                tables: self.tables,
            });
            call_rcu(b.cast::<RcuHead>(), tlb_remove_table_rcu);
        }
    }

    /// Flushes and frees everything gathered (Linux: `tlb_finish_mmu`); returns the
    /// counters.
    pub fn finish(mut self) -> GatherStats {
        self.flush();
        self.stats
    }
}

/// Table pages waiting for a grace period (Linux: `struct mmu_table_batch`, a page
/// with its `rcu_head`; here a small heap object).
#[repr(C)]
struct TableBatch {
    // First field (`repr(C)`): the callback finds the batch from the record.
    rcu: RcuHead,
    alloc: &'static FrameAllocator,
    nr: usize,
    tables: [PhysAddr; TABLE_BATCH],
}

/// The grace period is over: free the batch's table pages and the batch (Linux:
/// `tlb_remove_table_rcu` → `__tlb_remove_table_free`). May run in the timer
/// interrupt: it takes only the frame allocator's and the heap's locks, which disable
/// interrupts.
///
/// # Safety
/// `head` is the record of a `TableBatch` leaked to RCU by `MmuGather::free_tables`.
unsafe fn tlb_remove_table_rcu(head: *mut RcuHead) {
    let b = head.cast::<TableBatch>();
    // SAFETY: contract: `b` is a live batch, ours alone now; read, then freed once.
    unsafe {
        let batch = b.read();
        for &pa in &batch.tables[..batch.nr] {
            free_table_page(batch.alloc, pa);
        }
        alloc::alloc::dealloc(b.cast(), Layout::new::<TableBatch>());
    }
}

impl Drop for MmuGather {
    fn drop(&mut self) {
        self.flush();
    }
}
