//! The syscall-shaped memory API of one address space: mmap, munmap, mprotect,
//! mremap, madvise, the page-fault entry, and the `/proc/PID/maps` / PROCMAP_QUERY views.
//!
//! Linux: `mm/mmap.c` (`do_mmap`, `get_unmapped_area`, `expand_downwards`), `mm/vma.c`
//! (`__mmap_region`, `do_vmi_munmap`), `mm/mprotect.c`, `mm/mremap.c`, `mm/madvise.c`,
//! `mm/memory.c` (`handle_mm_fault`), `fs/proc/task_mmu.c`.
//!
//! # Map
//! One file per operation, each an `impl AddressSpace` block:
//! - this file: [`AddressSpace`] (`struct mm_struct`: the VMAs and their mmap lock, the
//!   page tables and their lock, the layout), [`MmLayout`], the flag and PTE helpers,
//!   `zap`, and `exit_mmap` (its `Drop`);
//! - `placement.rs`: `get_unmapped_area` (hint, top-down, bottom-up, guard gap);
//! - `mmap.rs`: `mmap`, `do_mmap`, `mmap_region` (`__mmap_region`), populate;
//! - `munmap.rs`: `munmap` and `do_munmap` (`do_vmi_munmap`), which every path uses;
//! - `mprotect.rs`: `mprotect` and `mprotect_fixup`;
//! - `madvise.rs`: `madvise`;
//! - `mremap.rs`: `mremap` (`mm/mremap.c`, with the multi-VMA move);
//! - `fault.rs`: `handle_fault`, COW, stack growth, `copy_to_user`/`copy_from_user`;
//! - `fork.rs`: `fork` (`dup_mm`/`dup_mmap`, `copy_page_range`);
//! - `exec.rs`: `exec` (the initial stack: `create_init_stack_vma`, `setup_arg_pages`
//!   with `relocate_vma_down`, `create_elf_tables`);
//! - `account.rs`: `may_expand_vm` and the overcommit check;
//! - `query.rs`: `/proc/PID/maps` and PROCMAP_QUERY; `validate.rs`: `validate_mm`;
//! - `consts.rs`: the syscall ABI constants (`PROT_*`, `MAP_*`, `MREMAP_*`, `MADV_*`).
//!
//! # Kernel use
//! ```ignore
//! let asp = AddressSpace::new(frame_allocator)?;          // mm_alloc + pgd_alloc
//! let a = asp.mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, None, 0)?;
//! // #PF handler, user mode:
//! match asp.handle_fault(cr2, Access::Write) { Ok(()) => retry, Err(e) => send SIGSEGV/SIGBUS }
//! drop(asp);                                              // exit_mmap: everything freed
//! ```
//!
//! # Locking
//! In the order of [`crate::sync`]: syscalls take the mmap write lock, write-lock
//! each VMA they change, and only then take page-table locks (split per table, see
//! [`crate::paging`]) for each zap or protect, never across a VMA lock. The
//! fault fast path takes a VMA read lock ([`Mm::lock_vma_under_rcu`]) and then the
//! lock of the one page table it installs into; a first anonymous write prepares the anon_vma under a read
//! trylock of the mmap lock, and a fault that cannot use the fast path retries under
//! the mmap *read* lock. Only stack growth takes the mmap write lock (see
//! `handle_fault`).

mod account;
pub mod consts;
mod exec;
mod fault;
mod fork;
mod madvise;
mod mlock;
#[allow(clippy::module_inception)]
mod mmap;
mod mprotect;
mod mremap;
mod munmap;
mod placement;
mod query;
mod validate;

use alloc::sync::Arc;
use core::sync::atomic::{AtomicUsize, Ordering};

use x86_64::{PhysAddr, VirtAddr};

pub use consts::*;
pub use exec::{
    ElfAux, ExecArgs, ExecImage, ExecStack, MAX_ARG_STRLEN, STACK_TOP, STACK_TOP_MAX,
    VM_STACK_FLAGS, VM_STACK_INCOMPLETE_SETUP, auxv,
};
pub use fault::{Access, FaultError, zero_page};
pub use mlock::MLOCK_ONFAULT;
pub use query::VmaQuery;
pub use validate::validate_i_mmap;

use crate::errno::Errno;
use crate::frame::FrameAllocator;
use crate::paging::{FreeTables, MmuGather, PageTableFlags, PageTableRoot, Translation};
use crate::vma::{Mm, MmWriteGuard, PAGE_SIZE, VmFlags, VmOperations, VmaRef};

/// Linux x86_64 `TASK_SIZE_MAX` (47-bit user space minus the guard page).
pub const TASK_SIZE: usize = 0x7fff_ffff_f000;
/// Linux `mmap_min_addr` default (`CONFIG_DEFAULT_MMAP_MIN_ADDR` = 64 KiB).
pub const MMAP_MIN_ADDR: usize = 0x1_0000;
/// Linux `stack_guard_gap`: 256 pages.
pub const STACK_GUARD_GAP: usize = 256 * PAGE_SIZE;
/// Default `RLIMIT_STACK` (8 MiB).
pub const RLIMIT_STACK: usize = 8 << 20;
/// Largest file offset (Linux: `MAX_LFS_FILESIZE`).
const MAX_LFS_FILESIZE: u64 = i64::MAX as u64;

/// Operations of ordinary file VMAs that set none (Linux: `vma_dummy_vm_ops`): their
/// presence is what makes a VMA non-anonymous.
pub static FILE_VM_OPS: VmOperations = VmOperations {
    open: None,
    close: None,
    may_split: None,
    fault: None,
    name: None,
};

/// Address-space layout parameters (Linux: `mm->mmap_base`, `mmap_min_addr`, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmLayout {
    /// Linux: `TASK_SIZE`.
    pub task_size: usize,
    /// Top of the top-down search (Linux: `mm->mmap_base`).
    pub mmap_base: usize,
    /// Bottom of the bottom-up fallback (Linux: `TASK_UNMAPPED_BASE`).
    pub unmapped_base: usize,
    /// Linux: `mmap_min_addr`.
    pub mmap_min_addr: usize,
    /// Linux: `stack_guard_gap`.
    pub stack_guard_gap: usize,
    /// Linux: `rlimit(RLIMIT_STACK)`.
    pub stack_limit: usize,
    /// Linux: `rlimit(RLIMIT_AS)` in bytes; `usize::MAX` is `RLIM_INFINITY`.
    pub as_limit: usize,
    /// Linux: `rlimit(RLIMIT_DATA)` in bytes; `usize::MAX` is `RLIM_INFINITY`.
    pub data_limit: usize,
}

impl Default for MmLayout {
    /// Linux's non-randomised x86_64 layout: `mmap_base = TASK_SIZE - 128 MiB`
    /// (`mmap_base()` clamps the stack gap to at least 128 MiB).
    fn default() -> Self {
        MmLayout {
            task_size: TASK_SIZE,
            mmap_base: TASK_SIZE - (128 << 20),
            unmapped_base: (TASK_SIZE / 3).next_multiple_of(PAGE_SIZE),
            mmap_min_addr: MMAP_MIN_ADDR,
            stack_guard_gap: STACK_GUARD_GAP,
            stack_limit: RLIMIT_STACK,
            as_limit: usize::MAX,
            data_limit: usize::MAX,
        }
    }
}

/// One user address space: VMAs plus page tables (Linux: `struct mm_struct`).
///
/// Dropping it unmaps everything (calling `vm_ops->close`, dropping files and
/// anon_vmas) and frees every page-table page and every anonymous frame (Linux:
/// `exit_mmap`). The kernel must have deactivated it on every CPU first.
pub struct AddressSpace {
    mm: Mm,
    /// Shared with [`crate::hugetlb`]'s registry, which finds it from a VMA's mm id
    /// (PMD sharing, truncation and the split need another space's tables).
    pt: Arc<PageTableRoot>,
    alloc: &'static FrameAllocator,
    zero: PhysAddr,
    layout: MmLayout,
    start_stack: AtomicUsize,
    fault_counters: fault::FaultCounters,
}

fn page_align(x: usize) -> Option<usize> {
    x.checked_add(PAGE_SIZE - 1).map(|v| v & !(PAGE_SIZE - 1))
}

fn va(x: usize) -> VirtAddr {
    VirtAddr::new_truncate(x as u64)
}

/// Linux: `calc_vm_prot_bits()`.
fn calc_vm_prot_bits(prot: u32) -> VmFlags {
    let mut f = VmFlags::empty();
    if prot & PROT_READ != 0 {
        f |= VmFlags::READ;
    }
    if prot & PROT_WRITE != 0 {
        f |= VmFlags::WRITE;
    }
    if prot & PROT_EXEC != 0 {
        f |= VmFlags::EXEC;
    }
    f
}

/// Linux: `calc_vm_flag_bits()`.
fn calc_vm_flag_bits(flags: u32) -> VmFlags {
    let mut f = VmFlags::empty();
    if flags & MAP_GROWSDOWN != 0 {
        f |= VmFlags::GROWSDOWN;
    }
    if flags & MAP_LOCKED != 0 {
        f |= VmFlags::LOCKED;
    }
    if flags & MAP_SYNC != 0 && flags & MAP_TYPE == MAP_SHARED_VALIDATE {
        f |= VmFlags::SYNC;
    }
    if flags & MAP_STACK != 0 {
        f |= VmFlags::NOHUGEPAGE;
    }
    f
}

/// PTE bits for a VMA's pages; `writable` only where a write needs no fault.
pub(crate) fn pte_prot(flags: VmFlags, writable: bool) -> PageTableFlags {
    let mut f = PageTableFlags::USER_ACCESSIBLE;
    if flags.intersects(VmFlags::ACCESS) {
        f |= PageTableFlags::PRESENT;
    }
    if writable && flags.contains(VmFlags::WRITE) {
        f |= PageTableFlags::WRITABLE;
    }
    if !flags.contains(VmFlags::EXEC) {
        f |= PageTableFlags::NO_EXECUTE;
    }
    f
}

/// Linux: `vm_get_page_prot()` — private writable mappings start read-only (COW).
pub fn vm_get_page_prot(flags: VmFlags) -> u64 {
    pte_prot(flags, flags.contains(VmFlags::SHARED)).bits()
}

/// Linux: `vm_start_gap()` (x86 has no VM_GROWSUP, so `vm_end_gap` is `vm_end`).
fn vm_start_gap(v: VmaRef, gap: usize) -> usize {
    if v.flags().contains(VmFlags::GROWSDOWN) {
        v.start().saturating_sub(gap)
    } else {
        v.start()
    }
}

/// Zap `[start, end)` (Linux: `zap_page_range_single` / `unmap_region`), each page
/// table under its own lock, freeing the emptied tables `free` allows.
///
/// Fails only on a range the page tables refuse (outside the user half, cutting a huge
/// page or touching a shared PMD table); nothing changes then. Callers check the range
/// before they change any VMA, so a failure here is a bug they must report, never
/// swallow: a VMA removed while its PTEs stay mapped would leak the pages' contents to
/// the next mapping of that range.
fn zap_locked(pt: &PageTableRoot, start: usize, end: usize, free: FreeTables) -> Result<(), Errno> {
    if start >= end {
        return Ok(());
    }
    let mut g = MmuGather::new(pt);
    let r = pt.unmap_freeing(va(start)..va(end), free, &mut g);
    g.finish();
    r.map_err(Errno::from)
}
/// The tables an unmap of `[start, end)` may free: those between the VMA before it and
/// the VMA after it (Linux: `free_pgtables`' floor and ceiling). VMAs overlapping the
/// range are the caller's own (write-locked or detached) and do not count.
fn free_bounds(g: &MmWriteGuard<'_>, start: usize, end: usize) -> FreeTables {
    // A range just emptied (the usual case) has both neighbours next to its NULL range
    // in the tree: one walk.
    let (prev, next) = g.view().around_free(start, end).map_or_else(
        || (g.vma_prev_of(start), g.vma_next_from(end)),
        |(p, n)| (p.map(|e| e.vma), n.map(|e| e.vma)),
    );
    FreeTables::Within {
        floor: prev.map_or(0, |p| p.end() as u64),
        ceiling: next.map_or(crate::paging::USER_END + PAGE_SIZE as u64, |n| {
            n.start() as u64
        }),
    }
}

impl AddressSpace {
    /// A new, empty address space whose page tables and pages come from `alloc`
    /// (Linux: `mm_alloc` + `pgd_alloc`). The kernel half of the PML4 is empty; see
    /// [`AddressSpace::with_kernel_pml4`].
    pub fn new(alloc: &'static FrameAllocator) -> Result<Self, Errno> {
        let pt = PageTableRoot::new_user_only(alloc).map_err(Errno::from)?;
        Self::from_root(alloc, pt, MmLayout::default())
    }

    /// As [`AddressSpace::new`], copying the kernel half from `kernel_pml4`.
    ///
    /// # Safety
    /// As [`PageTableRoot::new`]: `kernel_pml4` is a live PML4 reachable through
    /// `alloc`'s direct map whose upper-half tables outlive this address space.
    pub unsafe fn with_kernel_pml4(
        alloc: &'static FrameAllocator,
        kernel_pml4: PhysAddr,
        layout: MmLayout,
    ) -> Result<Self, Errno> {
        // SAFETY: this function's contract is `PageTableRoot::new`'s for `kernel_pml4`
        // (live, reachable through `alloc`'s direct map, upper half outliving the space),
        // and our caller vouches for it.
        let pt = unsafe { PageTableRoot::new(alloc, Some(kernel_pml4)) }.map_err(Errno::from)?;
        Self::from_root(alloc, pt, layout)
    }

    /// With a custom layout (tests, exec).
    pub fn with_layout(alloc: &'static FrameAllocator, layout: MmLayout) -> Result<Self, Errno> {
        let pt = PageTableRoot::new_user_only(alloc).map_err(Errno::from)?;
        Self::from_root(alloc, pt, layout)
    }

    fn from_root(
        alloc: &'static FrameAllocator,
        pt: PageTableRoot,
        layout: MmLayout,
    ) -> Result<Self, Errno> {
        let zero = zero_page(alloc)?;
        let mm = Mm::new();
        // Linux: __split_vma calls hugetlb_split for VM_HUGETLB VMAs.
        {
            let mut g = mm.write_lock();
            let mut hooks = g.hooks();
            hooks.hugetlb_split = Some(crate::hugetlb::share::hugetlb_split);
            g.set_hooks(hooks);
        }
        Ok(AddressSpace {
            mm,
            pt: Arc::try_new(pt).map_err(|_| Errno::ENOMEM)?,
            alloc,
            zero,
            layout,
            start_stack: AtomicUsize::new(0),
            fault_counters: fault::FaultCounters::default(),
        })
    }

    /// The VMA layer's view (for the kernel's lock-free paths and diagnostics).
    pub fn mm(&self) -> &Mm {
        &self.mm
    }
    /// Layout parameters.
    pub fn layout(&self) -> MmLayout {
        self.layout
    }
    /// The frame allocator.
    pub fn allocator(&self) -> &'static FrameAllocator {
        self.alloc
    }
    /// Physical address of the PML4 (CR3), for the context switch.
    pub fn root_phys(&self) -> PhysAddr {
        self.pt.root_phys()
    }
    /// Run `f` on the page tables (activation, diagnostics). Each page-table
    /// operation takes the locks it needs.
    pub fn with_page_tables<R>(&self, f: impl FnOnce(&PageTableRoot) -> R) -> R {
        f(&self.pt)
    }
    /// The mapping of `addr` in the page tables, if any.
    pub fn translate(&self, addr: usize) -> Option<Translation> {
        self.pt.translate(va(addr))
    }
    /// Linux: `mm->map_count`.
    pub fn map_count(&self) -> usize {
        self.mm.write_lock().map_count()
    }
    /// VMAs allocated for this mm and not yet freed.
    pub fn live_vmas(&self) -> usize {
        self.mm.write_lock().live_vmas()
    }
    /// Test-only: see [`MmWriteGuard::shrink_caches`](crate::vma::MmWriteGuard::shrink_caches).
    #[cfg(feature = "fault-inject")]
    pub fn shrink_caches(&self) {
        self.mm.write_lock().shrink_caches();
    }
    /// Set `vm.max_map_count` for this mm.
    pub fn set_max_map_count(&self, n: usize) {
        self.mm.write_lock().set_max_map_count(n);
    }
    /// Record the initial stack pointer (Linux: `mm->start_stack`, names `[stack]`).
    pub fn set_start_stack(&self, addr: usize) {
        self.start_stack.store(addr, Ordering::Relaxed);
    }

    /// Zap the pages of `[start, end)` and keep the page tables (Linux:
    /// `zap_page_range_single`, MADV_DONTNEED): faults may run in the range meanwhile.
    /// Page-table locks are innermost: callers hold the mmap lock and never a
    /// page-table lock here.
    fn zap(&self, start: usize, end: usize) -> Result<(), Errno> {
        zap_locked(&self.pt, start, end, FreeTables::Keep)
    }

    /// Zap `[start, end)`, whose VMAs are detached or write-locked, and free the
    /// tables left empty that no other VMA reaches into (Linux: `unmap_region` →
    /// `free_pgtables` with the previous VMA's end as floor and the next one's start
    /// as ceiling).
    fn zap_unmapped(&self, g: &MmWriteGuard<'_>, start: usize, end: usize) -> Result<(), Errno> {
        zap_locked(&self.pt, start, end, free_bounds(g, start, end))
    }

    /// Would the page tables accept a zap or protect of `[start, end)`? Checked before
    /// any VMA changes, so that the page-table step after them cannot fail. Shared PD
    /// tables pass: the hugetlb paths unshare them first.
    fn check_pt_range(&self, start: usize, end: usize) -> Result<(), Errno> {
        self.pt
            .check_modify_range_unsharing(va(start)..va(end))
            .map_err(Errno::from)
    }

    /// Unmaps the hugetlb VMAs inside `[start, end)` (each clipped to it) through
    /// [`crate::hugetlb::share::unmap_vma_range`]: hugetlb lock and i_mmap write
    /// held, shared tables unshared. `vmas` are the VMAs (attached or just detached)
    /// covering the range.
    fn zap_hugetlb_list(
        &self,
        vmas: impl Iterator<Item = (VmaRef, Option<Arc<crate::file::File>>)>,
        start: usize,
        end: usize,
    ) {
        for (v, f) in vmas {
            if !v.flags().contains(VmFlags::HUGETLB) {
                continue;
            }
            let (s, e) = (v.start().max(start), v.end().min(end));
            if let Some(f) = f
                && s < e
            {
                crate::hugetlb::share::unmap_vma_range(&self.pt, v, &f, s, e);
            }
        }
    }

    /// [`zap_hugetlb_list`](Self::zap_hugetlb_list) over the attached VMAs of
    /// `[start, end)` (exit). Allocates nothing: exit cannot fail.
    fn zap_hugetlb_vmas(&self, start: usize, end: usize) {
        let g = self.mm.write_lock();
        let view = g.view();
        let mut it = crate::vma::VmaIterator::new(start);
        while let Some(v) = it.next(&view) {
            if v.start() >= end {
                break;
            }
            if v.flags().contains(VmFlags::HUGETLB) {
                let f = v.file(&g).and_then(|f| crate::file::lookup(&f));
                self.zap_hugetlb_list(core::iter::once((v, f)), start, end);
            }
        }
    }
}

impl Drop for AddressSpace {
    /// Linux: `exit_mmap()`. The pages and page-table pages go first (`unmap_vmas`,
    /// `free_pgtables`), then every VMA (`remove_vma`), which `Mm`'s own drop does
    /// straight from the tree walk. Exit allocates nothing, so it cannot fail for lack
    /// of memory; and with `&mut self` no lock-free reader can still reach this
    /// address space, so nothing needs detaching first.
    fn drop(&mut self) {
        let ts = self.layout.task_size;
        // hugetlb VMAs first, each under its file's i_mmap write lock: their shared
        // PD tables are unshared, not freed, and no other space may be sharing a
        // table of ours while it goes (Linux: unmap_vmas → __unmap_hugepage_range_final).
        self.zap_hugetlb_vmas(0, ts);
        crate::hugetlb::unregister_mm(self.mm.id());
        if let Err(e) = zap_locked(&self.pt, 0, ts, FreeTables::ALL) {
            log::error!("exit_mmap: zap failed: {e}");
        }
    }
}
