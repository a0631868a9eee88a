//! The syscall-shaped memory API of one address space: mmap, munmap, mprotect,
//! mremap, madvise, the page-fault entry, and the `/proc/PID/maps` / PROCMAP_QUERY views.
//!
//! Linux: `mm/mmap.c` (`do_mmap`, `get_unmapped_area`, `expand_downwards`), `mm/vma.c`
//! (`__mmap_region`, `do_vmi_munmap`), `mm/mprotect.c`, `mm/mremap.c`, `mm/madvise.c`,
//! `mm/memory.c` (`handle_mm_fault`), `fs/proc/task_mmu.c`.
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
//! each VMA they change, and only then take the page-table lock (the `spin::Mutex`
//! around [`PageTableRoot`]) for each zap or protect, never across a VMA lock. The
//! fault fast path takes a VMA read lock ([`Mm::lock_vma_under_rcu`]) and then the
//! page-table lock, and falls back to the mmap write lock when it must create an
//! anon_vma or grow a stack.

pub mod consts;
mod fault;
mod mremap;
mod query;
mod validate;

use alloc::sync::Arc;
use core::sync::atomic::{AtomicUsize, Ordering};

use x86_64::{PhysAddr, VirtAddr};

pub use consts::*;
pub use fault::{Access, FaultError, zero_page};
pub use query::VmaQuery;
pub use validate::validate_i_mmap;

use crate::errno::Errno;
use crate::file::{self, File, MmapCtx, VmAreaDesc};
use crate::frame::FrameAllocator;
use crate::paging::{MmuGather, PageTableFlags, PageTableRoot, Translation};
use crate::vma::stat::is_data_mapping;
use crate::vma::{
    Mm, MmWriteGuard, PAGE_SIZE, VmFlags, VmOperations, VmStat, VmaMergeStruct, VmaRef,
};

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
    pt: spin::Mutex<PageTableRoot>,
    alloc: &'static FrameAllocator,
    zero: PhysAddr,
    layout: MmLayout,
    start_stack: AtomicUsize,
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

/// Zap `[start, end)` in page tables the caller has locked (Linux:
/// `zap_page_range_single` / `unmap_region`).
///
/// Fails only on a range the page tables refuse (outside the user half, cutting a huge
/// page or touching a shared PMD table); nothing changes then. Callers check the range
/// before they change any VMA, so a failure here is a bug they must report, never
/// swallow: a VMA removed while its PTEs stay mapped would leak the pages' contents to
/// the next mapping of that range.
fn zap_locked(pt: &mut PageTableRoot, start: usize, end: usize) -> Result<(), Errno> {
    if start >= end {
        return Ok(());
    }
    let mut g = MmuGather::new(pt);
    let r = pt.unmap(va(start)..va(end), &mut g);
    g.finish();
    r.map_err(Errno::from)
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
        Ok(AddressSpace {
            mm: Mm::new(),
            pt: spin::Mutex::new(pt),
            alloc,
            zero,
            layout,
            start_stack: AtomicUsize::new(0),
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
        self.pt.lock().root_phys()
    }
    /// Run `f` on the page tables (activation, diagnostics). Takes the page-table lock.
    pub fn with_page_tables<R>(&self, f: impl FnOnce(&mut PageTableRoot) -> R) -> R {
        f(&mut self.pt.lock())
    }
    /// The mapping of `addr` in the page tables, if any.
    pub fn translate(&self, addr: usize) -> Option<Translation> {
        self.pt.lock().translate(va(addr))
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

    /// Zap `[start, end)` under the page-table lock (see [`zap_locked`]). The
    /// page-table lock is the innermost lock: callers hold the mmap lock and have
    /// write-locked or detached the VMAs of the range, and never hold it here.
    fn zap(&self, start: usize, end: usize) -> Result<(), Errno> {
        zap_locked(&mut self.pt.lock(), start, end)
    }

    /// Would the page tables accept a zap or protect of `[start, end)`? Checked before
    /// any VMA changes, so that the page-table step after them cannot fail.
    fn check_pt_range(&self, start: usize, end: usize) -> Result<(), Errno> {
        self.pt
            .lock()
            .check_modify_range(va(start)..va(end))
            .map_err(Errno::from)
    }

    // ---- accounting ----------------------------------------------------------------

    /// The page counters (Linux: `mm->total_vm`, `data_vm`, `exec_vm`, `stack_vm`, and
    /// the commit charge of `VM_ACCOUNT` mappings).
    pub fn vm_stat(&self) -> VmStat {
        self.mm.read_lock().vm_stat()
    }

    /// May the address space grow by `npages` pages of a mapping with flags `flags`?
    /// Linux: `may_expand_vm()`: `RLIMIT_AS` bounds every page, `RLIMIT_DATA` the
    /// private writable ones.
    fn may_expand_vm(&self, g: &MmWriteGuard<'_>, flags: VmFlags, npages: usize) -> bool {
        let s = g.vm_stat();
        let limit = |bytes: usize| bytes / PAGE_SIZE;
        if s.total_vm.saturating_add(npages) > limit(self.layout.as_limit) {
            return false;
        }
        !(is_data_mapping(flags)
            && s.data_vm.saturating_add(npages) > limit(self.layout.data_limit))
    }

    /// Can `npages` more pages be committed? Linux: `security_vm_enough_memory_mm()`
    /// under the default `OVERCOMMIT_GUESS` policy (`__vm_enough_memory`): a single
    /// charge larger than all of RAM (there is no swap) is refused with ENOMEM; below
    /// that, overcommit is allowed. The charge itself is the `VM_ACCOUNT` flag of the
    /// VMA, which the engine counts in [`VmStat::committed`].
    fn vm_enough_memory(&self, npages: usize) -> Result<(), Errno> {
        let ram = self.alloc.stats().total_frames;
        if npages as u64 > ram {
            return Err(Errno::ENOMEM);
        }
        Ok(())
    }

    // ---- placement ---------------------------------------------------------------

    /// Is `[addr, addr+len)` free, including the guard gap below a GROWSDOWN VMA?
    fn range_fits(&self, g: &MmWriteGuard<'_>, addr: usize, len: usize) -> bool {
        let l = &self.layout;
        if addr < l.mmap_min_addr || l.task_size - len < addr {
            return false;
        }
        let (next, prev) = g.find_vma_prev(addr);
        next.is_none_or(|n| addr + len <= vm_start_gap(n, l.stack_guard_gap))
            && prev.is_none_or(|p| addr >= p.end())
    }

    fn search_top_down(
        &self,
        g: &MmWriteGuard<'_>,
        len: usize,
        low: usize,
        high: usize,
    ) -> Option<usize> {
        let mut hi = high;
        loop {
            let a = g.view().gap_top_down(len, low, hi, PAGE_SIZE)?;
            match g.vma_next_from(a + len) {
                Some(n) if a + len > vm_start_gap(n, self.layout.stack_guard_gap) => {
                    hi = hi.min(vm_start_gap(n, self.layout.stack_guard_gap));
                }
                _ => return Some(a),
            }
        }
    }

    fn search_bottom_up(
        &self,
        g: &MmWriteGuard<'_>,
        len: usize,
        low: usize,
        high: usize,
    ) -> Option<usize> {
        let mut lo = low;
        loop {
            let a = g.view().gap_bottom_up(len, lo, high, PAGE_SIZE)?;
            match g.vma_next_from(a + len) {
                Some(n) if a + len > vm_start_gap(n, self.layout.stack_guard_gap) => {
                    lo = n.end();
                }
                _ => return Some(a),
            }
        }
    }

    /// Linux: `__get_unmapped_area()` + `arch_get_unmapped_area_topdown()` +
    /// `security_mmap_addr()`, in that order.
    fn get_unmapped_area(
        &self,
        g: &MmWriteGuard<'_>,
        addr: usize,
        len: usize,
        fixed: bool,
    ) -> Result<usize, Errno> {
        let l = &self.layout;
        if len > l.task_size {
            return Err(Errno::ENOMEM);
        }
        if len > l.task_size - l.mmap_min_addr {
            return Err(Errno::ENOMEM);
        }
        let addr = if fixed {
            addr
        } else {
            let mut found = None;
            if addr != 0
                && let Some(a) = page_align(addr)
                && self.range_fits(g, a, len)
            {
                found = Some(a);
            }
            if found.is_none() {
                let low = PAGE_SIZE.max(l.mmap_min_addr);
                found = self.search_top_down(g, len, low, l.mmap_base);
            }
            if found.is_none() {
                found = self.search_bottom_up(g, len, l.unmapped_base, l.task_size);
            }
            found.ok_or(Errno::ENOMEM)?
        };
        if addr > l.task_size - len {
            return Err(Errno::ENOMEM);
        }
        if addr % PAGE_SIZE != 0 {
            return Err(Errno::EINVAL);
        }
        if addr < l.mmap_min_addr {
            return Err(Errno::EPERM);
        }
        Ok(addr)
    }

    // ---- mmap ---------------------------------------------------------------------

    /// `mmap(2)`. Returns the mapped address.
    ///
    /// Check order (Linux: `sys_mmap` → `ksys_mmap_pgoff` → `do_mmap`): offset
    /// alignment (EINVAL); no file without MAP_ANONYMOUS (EINVAL; Linux: EBADF); a file
    /// with MAP_HUGETLB (EINVAL: no file here is on hugetlbfs; anonymous MAP_HUGETLB is
    /// mapped with base pages, Linux would use its hugetlb pool); length 0
    /// (EINVAL); page rounding overflow (ENOMEM); pgoff overflow (EOVERFLOW); map_count
    /// above the limit (ENOMEM); placement (`get_unmapped_area`: ENOMEM / EINVAL / EPERM);
    /// MAP_FIXED_NOREPLACE overlap (EEXIST); file checks: offset range (EOVERFLOW),
    /// MAP_SHARED_VALIDATE unknown flags (EOPNOTSUPP), shared writable needs FMODE_WRITE
    /// (EACCES), needs FMODE_READ (EACCES), noexec + PROT_EXEC (EPERM), hooks both or
    /// neither (ENODEV), GROWSDOWN (EINVAL), bad map type (EINVAL); anonymous: bad type
    /// or shared GROWSDOWN (EINVAL); then the region itself (hook errors, ENOMEM).
    pub fn mmap(
        &self,
        addr: usize,
        len: usize,
        prot: u32,
        flags: u32,
        file: Option<&Arc<File>>,
        off: u64,
    ) -> Result<usize, Errno> {
        if !off.is_multiple_of(PAGE_SIZE as u64) {
            return Err(Errno::EINVAL);
        }
        let file = if flags & MAP_ANONYMOUS != 0 {
            None
        } else {
            let f = file.ok_or(Errno::EINVAL)?;
            // Linux (ksys_mmap_pgoff): MAP_HUGETLB with a file needs a hugetlbfs file,
            // and no file here is one.
            if flags & MAP_HUGETLB != 0 {
                return Err(Errno::EINVAL);
            }
            Some(f.clone())
        };
        let pgoff = (off >> 12) as usize;
        let (a, populate) = self.do_mmap(file, addr, len, prot, flags, pgoff)?;
        if populate {
            self.populate(a, page_align(len).unwrap_or(0));
        }
        Ok(a)
    }

    fn do_mmap(
        &self,
        file: Option<Arc<File>>,
        addr: usize,
        len: usize,
        prot: u32,
        mut flags: u32,
        mut pgoff: usize,
    ) -> Result<(usize, bool), Errno> {
        let l = self.layout;
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let mut addr = addr;
        // MAP_FIXED_NOREPLACE is MAP_FIXED for placement (Linux: "force arch specific
        // MAP_FIXED handling"): its address is used as is, never rounded as a hint.
        if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) == 0 {
            // Linux: round_hint_to_min().
            addr &= !(PAGE_SIZE - 1);
            if addr != 0 && addr < l.mmap_min_addr {
                addr = l.mmap_min_addr.next_multiple_of(PAGE_SIZE);
            }
        }
        let len = page_align(len).filter(|&x| x != 0).ok_or(Errno::ENOMEM)?;
        let pages = len / PAGE_SIZE;
        if pgoff.checked_add(pages).is_none() {
            return Err(Errno::EOVERFLOW);
        }
        let mut g = self.mm.write_lock();
        if g.map_count() > g.max_map_count() {
            return Err(Errno::ENOMEM);
        }
        let mut vm_flags = calc_vm_prot_bits(prot)
            | calc_vm_flag_bits(flags)
            | VmFlags::MAYREAD
            | VmFlags::MAYWRITE
            | VmFlags::MAYEXEC;
        let fixed = flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) != 0;
        let addr = self.get_unmapped_area(&g, addr, len, fixed)?;
        if flags & MAP_FIXED_NOREPLACE != 0 && g.find_vma_intersection(addr, addr + len).is_some() {
            return Err(Errno::EEXIST);
        }
        if let Some(f) = &file {
            // Linux: file_mmap_ok().
            let maxpages = (MAX_LFS_FILESIZE >> 12) as usize;
            if pages > maxpages || pgoff > maxpages - pages {
                return Err(Errno::EOVERFLOW);
            }
            let mode = f.mode();
            let ty = flags & MAP_TYPE;
            if ty == MAP_SHARED || ty == MAP_SHARED_VALIDATE {
                if ty == MAP_SHARED {
                    flags &= LEGACY_MAP_MASK;
                }
                if flags & !(LEGACY_MAP_MASK | MAP_FIXED_NOREPLACE) != 0 {
                    return Err(Errno::EOPNOTSUPP);
                }
                if prot & PROT_WRITE != 0 && !mode.write {
                    return Err(Errno::EACCES);
                }
                vm_flags |= VmFlags::SHARED | VmFlags::MAYSHARE;
                if !mode.write {
                    vm_flags -= VmFlags::MAYWRITE | VmFlags::SHARED;
                }
            } else if ty != MAP_PRIVATE {
                return Err(Errno::EINVAL);
            }
            if !mode.read {
                return Err(Errno::EACCES);
            }
            if f.noexec() {
                if vm_flags.contains(VmFlags::EXEC) {
                    return Err(Errno::EPERM);
                }
                vm_flags -= VmFlags::MAYEXEC;
            }
            // Linux: can_mmap_file() — exactly one of the hooks.
            let ops = f.ops();
            if ops.mmap.is_some() == ops.mmap_prepare.is_some() {
                return Err(Errno::ENODEV);
            }
            if vm_flags.contains(VmFlags::GROWSDOWN) {
                return Err(Errno::EINVAL);
            }
        } else {
            match flags & MAP_TYPE {
                MAP_SHARED => {
                    if vm_flags.contains(VmFlags::GROWSDOWN) {
                        return Err(Errno::EINVAL);
                    }
                    pgoff = 0;
                    vm_flags |= VmFlags::SHARED | VmFlags::MAYSHARE;
                }
                MAP_PRIVATE => pgoff = addr >> 12,
                _ => return Err(Errno::EINVAL),
            }
        }
        if flags & MAP_NORESERVE != 0 {
            vm_flags |= VmFlags::NORESERVE;
        }
        let a = self.mmap_region(&mut g, file, addr, len, vm_flags, pgoff)?;
        let populate = vm_flags.contains(VmFlags::LOCKED)
            || flags & (MAP_POPULATE | MAP_NONBLOCK) == MAP_POPULATE;
        Ok((a, populate))
    }

    /// Linux: `__mmap_region()` (`mm/vma.c`).
    #[allow(clippy::too_many_arguments)]
    fn mmap_region(
        &self,
        g: &mut MmWriteGuard<'_>,
        file: Option<Arc<File>>,
        addr: usize,
        len: usize,
        mut vm_flags: VmFlags,
        mut pgoff: usize,
    ) -> Result<usize, Errno> {
        let end = addr + len;
        let pglen = len / PAGE_SIZE;
        // 1. Limits first, counting the pages a MAP_FIXED replaces as given back
        // (Linux: __mmap_setup: may_expand_vm(pglen - vms->nr_pages), then the commit
        // charge of pglen - vms->nr_accounted).
        let (mut nr_pages, mut nr_accounted) = (0, 0);
        let mut it = crate::vma::VmaIterator::new(addr);
        let view = g.view();
        while let Some(v) = it.next(&view) {
            if v.start() >= end {
                break;
            }
            let n = (v.end().min(end) - v.start().max(addr)) / PAGE_SIZE;
            nr_pages += n;
            if v.flags().contains(VmFlags::ACCOUNT) {
                nr_accounted += n;
            }
        }
        if !self.may_expand_vm(g, vm_flags, pglen - nr_pages) {
            return Err(Errno::ENOMEM);
        }
        // Linux: accountable_mapping() → VM_ACCOUNT for private writable memory.
        if vm_flags.contains(VmFlags::WRITE)
            && !vm_flags.intersects(VmFlags::SHARED | VmFlags::NORESERVE | VmFlags::HUGETLB)
        {
            self.vm_enough_memory(pglen - nr_accounted)?;
            vm_flags |= VmFlags::ACCOUNT;
        }
        // 2. Gather the overlapped VMAs and clear their page tables. They cannot be
        // restored after this point (Linux: vms_clear_ptes in __mmap_setup).
        if nr_pages != 0 {
            self.do_munmap(g, addr, len)?;
        }
        // New and expanded VMAs are soft-dirty (sticky: ignored for merging).
        vm_flags |= VmFlags::SOFTDIRTY;
        let mut file = file;
        if file.is_none() && vm_flags.contains(VmFlags::SHARED) {
            // Linux: shmem_zero_setup().
            file = Some(file::shmem_zero_file(self.alloc, len)?);
        }
        let mut page_prot = vm_get_page_prot(vm_flags);
        // 3. mmap_prepare.
        let mut wo_ops = None;
        let mut wo_private = 0;
        let mut used_prepare = false;
        let legacy = file.as_ref().and_then(|f| f.ops().mmap);
        if let Some(f) = file.clone()
            && let Some(prepare) = f.ops().mmap_prepare
        {
            let mut desc = VmAreaDesc::new(
                self.mm.id(),
                addr,
                end,
                f.clone(),
                pgoff,
                vm_flags,
                page_prot,
                g.live_vmas(),
            );
            prepare(&f, &mut desc)?;
            pgoff = desc.pgoff;
            file = Some(desc.vm_file);
            vm_flags = desc.vm_flags;
            page_prot = desc.page_prot;
            wo_ops = desc.vm_ops;
            wo_private = desc.private_data;
            used_prepare = true;
        }
        let vm_file = file.as_ref().map(|f| f.as_vm_file());
        // 5. Merge with the post-hook attributes.
        let mut vma = None;
        let prev = g.vma_prev_of(addr);
        let next = g.vma_next_from(end);
        if prev.is_some() || next.is_some() {
            let mut vmg = VmaMergeStruct::new(addr, end, pgoff, vm_flags);
            vmg.file = vm_file.clone();
            vmg.prev = prev;
            vmg.next = next;
            vmg.vmi = crate::vma::VmaIterator::new(addr);
            vma = g.vma_merge_new_range(&mut vmg);
            if vmg.nomem() {
                return Err(Errno::ENOMEM);
            }
        }
        // 6. Allocate a new VMA only if nothing merged.
        let vma = match vma {
            Some(v) => v,
            None => {
                let v = g.vm_area_alloc()?;
                let ops = file.as_ref().map(|_| &FILE_VM_OPS);
                let r = g
                    .vma_init(v, addr, end, pgoff, vm_flags, vm_file, ops)
                    .and_then(|()| g.vma_set_page_prot(v, page_prot));
                if let Err(e) = r {
                    g.vm_area_free(v);
                    return Err(e);
                }
                if let (Some(mmap), Some(f)) = (legacy, file.as_ref()) {
                    let mut ctx = MmapCtx {
                        g: &mut *g,
                        pt: &self.pt,
                        vma: v,
                    };
                    if let Err(e) = mmap(f, &mut ctx) {
                        ctx.zap_all();
                        g.vm_area_free(v);
                        return Err(e);
                    }
                }
                if let Err(e) = g.vma_link(v) {
                    // A legacy hook may have mapped PFNs into the range.
                    self.zap(addr, end)?;
                    g.vm_area_free(v);
                    return Err(e);
                }
                v
            }
        };
        // 7. Write-only descriptor fields, on a merged VMA too.
        if used_prepare {
            g.vma_start_write(vma);
            if wo_ops.is_some() {
                g.vma_set_ops(vma, wo_ops)?;
            }
            g.vma_set_private_data(vma, wo_private)?;
        }
        Ok(addr)
    }

    /// Prefault `[addr, addr+len)` (Linux: `mm_populate` → `__mm_populate(start, len,
    /// ignore_errors = 1)` → `populate_vma_page_range`), one VMA at a time: PFN maps,
    /// PROT_NONE and VM_LOCKONFAULT VMAs have nothing to populate and are skipped
    /// whole, and a fault that fails ends the population of its VMA (the rest is
    /// faulted on demand), so the work is bounded by the pages actually populated,
    /// never by the length asked for.
    fn populate(&self, addr: usize, len: usize) {
        let Some(end) = addr.checked_add(len) else {
            return;
        };
        let mut a = addr;
        while a < end {
            let (vstart, vend, flags) = {
                let g = self.mm.read_lock();
                match g.find_vma(a) {
                    Some(v) if v.start() < end => (v.start(), v.end(), v.flags()),
                    _ => return,
                }
            };
            a = a.max(vstart);
            let stop = vend.min(end);
            let skip = flags.intersects(VmFlags::PFNMAP | VmFlags::IO | VmFlags::LOCKONFAULT)
                || !flags.intersects(VmFlags::ACCESS);
            if !skip {
                let write = flags & (VmFlags::WRITE | VmFlags::SHARED) == VmFlags::WRITE;
                let access = if write { Access::Write } else { Access::Read };
                while a < stop && self.handle_fault(a, access).is_ok() {
                    a += PAGE_SIZE;
                }
            }
            a = stop;
        }
    }

    // ---- munmap -------------------------------------------------------------------

    /// `munmap(2)`. EINVAL for an unaligned start, a range beyond TASK_SIZE or an empty
    /// length; ENOMEM if a hole punched in one VMA would exceed `max_map_count`;
    /// unmapping holes succeeds. Linux: `do_vmi_munmap()`.
    pub fn munmap(&self, addr: usize, len: usize) -> Result<(), Errno> {
        let len = page_align(len).ok_or(Errno::EINVAL)?;
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let mut g = self.mm.write_lock();
        self.do_munmap(&mut g, addr, len)
    }

    /// Unmap `[start, start + len)` under the mmap write lock (Linux:
    /// `do_vmi_munmap()`). The range check comes first, before any addition: EINVAL
    /// for an unaligned start or a range reaching past `task_size`, whatever the
    /// caller (munmap, mmap's MAP_FIXED, mremap's shrink and moves all come through
    /// here). Then the VMAs are split and detached, the page tables zapped and the VMAs
    /// freed. Lock order: the VMAs are write-locked (waiting for their readers) before
    /// the page-table lock is taken for the zap.
    fn do_munmap(&self, g: &mut MmWriteGuard<'_>, start: usize, len: usize) -> Result<(), Errno> {
        let ts = self.layout.task_size;
        if !start.is_multiple_of(PAGE_SIZE) || start > ts || len > ts - start {
            return Err(Errno::EINVAL);
        }
        let len = page_align(len).ok_or(Errno::EINVAL)?;
        if len == 0 {
            return Ok(());
        }
        let end = start + len;
        self.check_pt_range(start, end)?;
        let d = g.detach_range(start, end)?;
        if d.is_empty() {
            return Ok(());
        }
        let zapped = self.zap(start, end);
        g.remove_vmas(d);
        zapped
    }

    // ---- mprotect -----------------------------------------------------------------

    /// `mprotect(2)` (Linux: `do_mprotect_pkey` + `mprotect_fixup`).
    ///
    /// EINVAL: both PROT_GROWSDOWN and PROT_GROWSUP, unaligned start, unknown prot bits;
    /// 0 length succeeds; end overflow → ENOMEM; unmapped page in the range → ENOMEM
    /// (VMAs before the hole keep their change, as in Linux); PROT_WRITE/READ/EXEC
    /// beyond the VMA's MAY bits → EACCES; sealed → EPERM.
    pub fn mprotect(&self, start: usize, len: usize, prot: u32) -> Result<(), Errno> {
        let grows = prot & (PROT_GROWSDOWN | PROT_GROWSUP);
        let prot = prot & !(PROT_GROWSDOWN | PROT_GROWSUP);
        if grows == PROT_GROWSDOWN | PROT_GROWSUP {
            return Err(Errno::EINVAL);
        }
        if !start.is_multiple_of(PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        if len == 0 {
            return Ok(());
        }
        let len = page_align(len).ok_or(Errno::ENOMEM)?;
        let end = start.checked_add(len).ok_or(Errno::ENOMEM)?;
        if prot & !(PROT_READ | PROT_WRITE | PROT_EXEC | PROT_SEM) != 0 {
            return Err(Errno::EINVAL);
        }
        let mut g = self.mm.write_lock();
        let Some(mut vma) = g.find_vma(start) else {
            return Err(Errno::ENOMEM);
        };
        let mut start = start;
        if grows & PROT_GROWSDOWN != 0 {
            if vma.start() >= end {
                return Err(Errno::ENOMEM);
            }
            start = vma.start();
            if !vma.flags().contains(VmFlags::GROWSDOWN) {
                return Err(Errno::EINVAL);
            }
        } else if vma.start() > start {
            return Err(Errno::ENOMEM);
        }
        // mseal: refuse before changing anything.
        {
            let mut a = start;
            while let Some(v) = g.find_vma(a) {
                if v.start() >= end {
                    break;
                }
                if v.flags().contains(VmFlags::SEALED) {
                    return Err(Errno::EPERM);
                }
                a = v.end();
            }
        }
        let mut prev = if start > vma.start() {
            Some(vma)
        } else {
            g.vma_prev_of(start)
        };
        let newbits = calc_vm_prot_bits(prot);
        // `tmp`: where the next VMA must start for the range to have no hole (a
        // merge may have extended the previous result past it).
        let mut tmp = start;
        loop {
            if vma.start() > tmp {
                return Err(Errno::ENOMEM);
            }
            let old = vma.flags();
            let newflags = newbits | (old - VmFlags::ACCESS);
            // Linux: (newflags & ~(newflags >> 4)) & VM_ACCESS_FLAGS.
            let may = VmFlags::from_bits_retain(newflags.bits() >> 4);
            if !(newflags & !may & VmFlags::ACCESS).is_empty() {
                return Err(Errno::EACCES);
            }
            let vend = vma.end().min(end);
            let v = self.mprotect_fixup(&mut g, prev, vma, tmp, vend, newflags)?;
            tmp = vend;
            if tmp >= end {
                break;
            }
            prev = Some(v);
            match g.find_vma(tmp) {
                Some(n) => vma = n,
                None => return Err(Errno::ENOMEM),
            }
        }
        Ok(())
    }

    /// Apply `newflags` to `[start, end)` of `vma`, splitting or merging as needed.
    /// Linux: `mprotect_fixup()`.
    ///
    /// Commit accounting follows Linux: a private mapping made writable gains
    /// `VM_ACCOUNT` unless it was already accounted, writable, hugetlb, shared or
    /// NORESERVE; an anonymous mapping made read-only loses it while it has no
    /// anon_vma (nothing was ever charged against it that a fault could rely on). Both
    /// decide which neighbours the result can merge with; the engine moves the pages
    /// between the counters of [`VmStat`] as the flags change. The limits
    /// (`may_expand_vm`, the overcommit check) and the page tables are checked before
    /// any VMA changes, so nothing after them can fail.
    fn mprotect_fixup(
        &self,
        g: &mut MmWriteGuard<'_>,
        prev: Option<VmaRef>,
        vma: VmaRef,
        start: usize,
        end: usize,
        mut newflags: VmFlags,
    ) -> Result<VmaRef, Errno> {
        let old = vma.flags();
        if newflags == old {
            return Ok(vma);
        }
        let nrpages = (end - start) / PAGE_SIZE;
        if newflags.contains(VmFlags::WRITE) {
            // Space limits when the range turns into data.
            if !self.may_expand_vm(g, newflags, nrpages) && self.may_expand_vm(g, old, nrpages) {
                return Err(Errno::ENOMEM);
            }
            let charged = VmFlags::ACCOUNT
                | VmFlags::WRITE
                | VmFlags::HUGETLB
                | VmFlags::SHARED
                | VmFlags::NORESERVE;
            if !old.intersects(charged) {
                self.vm_enough_memory(nrpages)?;
                newflags |= VmFlags::ACCOUNT;
            }
        } else if old.contains(VmFlags::ACCOUNT) && vma.is_anonymous() && !vma.has_anon_vma() {
            newflags -= VmFlags::ACCOUNT;
        }
        self.check_pt_range(start, end)?;
        // `newflags` picks up the sticky flags of a merge.
        let v = g.vma_modify_flags(prev, vma, start, end, &mut newflags)?;
        g.vma_start_write(v);
        g.vma_set_flags(v, newflags)?;
        g.vma_set_page_prot(v, vm_get_page_prot(newflags))?;
        // Linux: change_protection(). The VMA is write-locked, so no fault can install
        // a PTE with the old protection while the page-table lock is dropped.
        let pte = pte_prot(newflags, newflags.contains(VmFlags::SHARED));
        let mut pt = self.pt.lock();
        let mut gather = MmuGather::new(&pt);
        let r = pt.protect(va(start)..va(end), pte, &mut gather);
        gather.finish();
        r.map_err(Errno::from)?;
        Ok(v)
    }

    // ---- madvise ------------------------------------------------------------------

    /// `madvise(2)` for MADV_NORMAL, MADV_DONTNEED, MADV_DONTFORK/DOFORK,
    /// MADV_WIPEONFORK/KEEPONFORK (others: EINVAL). Holes give ENOMEM after the mapped
    /// parts were processed. Linux: `do_madvise()` / `madvise_walk_vmas()`.
    pub fn madvise(&self, start: usize, len: usize, advice: u32) -> Result<(), Errno> {
        if !matches!(
            advice,
            MADV_NORMAL
                | MADV_DONTNEED
                | MADV_DONTFORK
                | MADV_DOFORK
                | MADV_WIPEONFORK
                | MADV_KEEPONFORK
        ) {
            return Err(Errno::EINVAL);
        }
        if !start.is_multiple_of(PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        let alen = page_align(len).unwrap_or(0);
        if len != 0 && alen == 0 {
            return Err(Errno::EINVAL);
        }
        let end = start.checked_add(alen).ok_or(Errno::EINVAL)?;
        if end == start {
            return Ok(());
        }
        let mut g = self.mm.write_lock();
        let (first, p) = g.find_vma_prev(start);
        let mut vma = first;
        let mut prev = match vma {
            Some(v) if start > v.start() => Some(v),
            _ => p,
        };
        let mut unmapped = Ok(());
        let mut start = start;
        loop {
            let Some(v) = vma else {
                return Err(Errno::ENOMEM);
            };
            if start < v.start() {
                unmapped = Err(Errno::ENOMEM);
                start = v.start();
                if start >= end {
                    break;
                }
            }
            let tmp = v.end().min(end);
            let nv = self.madvise_vma(&mut g, prev, v, start, tmp, advice)?;
            prev = Some(nv);
            start = tmp;
            if start < nv.end() {
                start = nv.end();
            }
            if start >= end {
                break;
            }
            vma = g.find_vma(start);
        }
        unmapped
    }

    fn madvise_vma(
        &self,
        g: &mut MmWriteGuard<'_>,
        prev: Option<VmaRef>,
        vma: VmaRef,
        start: usize,
        end: usize,
        advice: u32,
    ) -> Result<VmaRef, Errno> {
        let old = vma.flags();
        let new = match advice {
            MADV_DONTNEED => {
                // Linux: madvise_dontneed_free_valid_vma().
                if old.intersects(VmFlags::LOCKED | VmFlags::PFNMAP) {
                    return Err(Errno::EINVAL);
                }
                self.zap(start, end)?;
                return Ok(vma);
            }
            MADV_NORMAL => old - (VmFlags::SEQ_READ | VmFlags::RAND_READ),
            MADV_DONTFORK => old | VmFlags::DONTCOPY,
            MADV_DOFORK => {
                if old.contains(VmFlags::IO) {
                    return Err(Errno::EINVAL);
                }
                old - VmFlags::DONTCOPY
            }
            MADV_WIPEONFORK => {
                if !vma.is_anonymous() || old.contains(VmFlags::SHARED) {
                    return Err(Errno::EINVAL);
                }
                old | VmFlags::WIPEONFORK
            }
            MADV_KEEPONFORK => {
                if old.contains(VmFlags::DROPPABLE) {
                    return Err(Errno::EINVAL);
                }
                old - VmFlags::WIPEONFORK
            }
            _ => return Err(Errno::EINVAL),
        };
        if old.contains(VmFlags::SEALED) {
            return Err(Errno::EPERM);
        }
        if new == old {
            return Ok(vma);
        }
        // Linux: madvise_update_vma() → vma_modify_flags(); `new` picks up the sticky
        // flags of a merge.
        let mut new = new;
        let v = g.vma_modify_flags(prev, vma, start, end, &mut new)?;
        g.vma_start_write(v);
        g.vma_set_flags(v, new)?;
        Ok(v)
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
        if let Err(e) = zap_locked(self.pt.get_mut(), 0, ts) {
            log::error!("exit_mmap: zap failed: {e}");
        }
    }
}
