//! The page-fault entry: demand paging, zero page, copy-on-write, stack growth.
//!
//! Linux: `arch/x86/mm/fault.c` (`do_user_addr_fault`, `access_error`), `mm/memory.c`
//! (`handle_mm_fault`, `do_anonymous_page`, `do_read_fault`, `do_cow_fault`,
//! `do_shared_fault`, `do_wp_page`), `mm/mmap.c` (`expand_downwards`).

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use x86_64::PhysAddr;

use super::{AddressSpace, pte_prot, va};
use crate::errno::Errno;
use crate::file;
use crate::frame::{FrameAllocator, FrameFlags};
use crate::paging::{MapError, MmuGather, PageSize, PageTableFlags, PageTableRoot, Translation};
use crate::vma::{MmWriteGuard, PAGE_SIZE, VmFlags, VmaMergeStruct, VmaRef, VmaStable};

/// Kind of access that faulted (Linux: `FAULT_FLAG_WRITE`, `X86_PF_INSTR`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Data read.
    Read,
    /// Data write.
    Write,
    /// Instruction fetch.
    Exec,
}

/// Why a fault could not be resolved: what the kernel sends to the task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultError {
    /// SIGSEGV / SEGV_MAPERR: no mapping at the address (incl. refused stack growth).
    MapErr,
    /// SIGSEGV / SEGV_ACCERR: the mapping does not permit the access.
    AccErr,
    /// SIGBUS: beyond the end of the file, or a PFN mapping with nothing mapped.
    Bus,
    /// Out of memory (Linux: `VM_FAULT_OOM`).
    Oom,
}

/// One shared zero frame per frame allocator (Linux: `ZERO_PAGE(0)`).
static ZERO_PAGES: spin::Mutex<Vec<(usize, u64)>> = spin::Mutex::new(Vec::new());

/// The zero page of `alloc`, allocated on first use and never freed: it is marked
/// [`FrameFlags::ZERO`] and the registry keeps one reference, so unmaps (which put the
/// mapping's own reference) never free it.
pub fn zero_page(alloc: &'static FrameAllocator) -> Result<PhysAddr, Errno> {
    let key = alloc as *const FrameAllocator as usize;
    let mut z = ZERO_PAGES.lock();
    if let Some(&(_, pa)) = z.iter().find(|(k, _)| *k == key) {
        return Ok(PhysAddr::new(pa));
    }
    z.try_reserve(1).map_err(|_| Errno::ENOMEM)?;
    let pa = alloc.alloc_zeroed(0).map_err(|_| Errno::ENOMEM)?;
    if let Some(m) = alloc.meta(pa) {
        m.set_flags(FrameFlags::ZERO);
    }
    z.push((key, pa.as_u64()));
    Ok(pa)
}

/// Linux: x86 `access_error()`.
fn access_error(vma: VmaRef, access: Access) -> bool {
    let f = vma.flags();
    match access {
        Access::Write => !f.contains(VmFlags::WRITE),
        Access::Exec => !f.contains(VmFlags::EXEC),
        Access::Read => !f.intersects(VmFlags::ACCESS),
    }
}

/// Does this fault need `anon_vma_prepare` first (a private page will be created)?
fn needs_anon_vma(vma: VmaRef, access: Access) -> bool {
    !vma.has_anon_vma()
        // hugetlb private mappings get a private page on a read too when the file
        // has none (Linux: hugetlb_no_page → vmf_anon_prepare).
        && (access == Access::Write || vma.flags().contains(VmFlags::HUGETLB))
        && !vma
            .flags()
            .intersects(VmFlags::SHARED | VmFlags::PFNMAP | VmFlags::IO)
}

/// May a write fault on a read-only PTE mapping the frame `m` make it writable in
/// place instead of copying it (Linux: `do_wp_page`'s reuse test)?
///
/// Only an anonymous page, never the zero page or a page-cache page. Linux's rule, per
/// page: an anon page marked exclusive (`PageAnonExclusive`) is reused at once; one that
/// is not (fork shared it, [`FrameFlags::ANON_EXCLUSIVE`] was cleared) is reused only
/// if its reference count shows no other user, i.e. the other mappings went away
/// (`wp_can_reuse_anon_folio`: `folio_ref_count(folio) == 1` for a small folio, with no
/// swap cache here), and then becomes exclusive again (`folio_move_anon_rmap` +
/// `SetPageAnonExclusive`). So after a fork child exits (or copied the page on its own
/// write), the parent's next write reuses its page without a copy; while the child still
/// maps it, both copy.
fn wp_can_reuse_anon(m: &crate::frame::FrameMeta) -> bool {
    let f = m.flags();
    if !f.contains(FrameFlags::ANON) || f.contains(FrameFlags::ZERO) {
        return false;
    }
    if f.contains(FrameFlags::ANON_EXCLUSIVE) {
        return true;
    }
    if m.refcount() != 1 {
        return false;
    }
    m.set_flags(FrameFlags::ANON_EXCLUSIVE);
    true
}

/// How page faults found their VMA (Linux: the `VMA_LOCK_*` vm events in
/// `/proc/vmstat`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Handled under a VMA read lock, no mmap lock (Linux: `VMA_LOCK_SUCCESS`).
    pub vma_lock_success: u64,
    /// The lock-free lookup found no VMA it could read-lock (absent, write-locked,
    /// detached or reused slot): handled under the mmap lock (`VMA_LOCK_ABORT`).
    pub vma_lock_abort: u64,
    /// Found and read-locked, but the fault needed the mmap lock it could not try-lock
    /// (a first anonymous write with no anon_vma while a writer holds or waits for the
    /// mmap lock): retried under the mmap read lock (Linux: `VM_FAULT_RETRY`,
    /// `VMA_LOCK_RETRY`).
    pub vma_lock_retry: u64,
    /// Faults below a stack VMA that took the mmap write lock to grow it.
    pub stack_expand: u64,
}

/// The atomic counters behind [`FaultStats`], and the per-VMA lock switch.
#[derive(Default)]
pub(super) struct FaultCounters {
    /// Per-CPU shards of [success, abort, retry, stack_expand], a cache line each, so
    /// that CPUs faulting in one address space do not bounce one line per fault
    /// (Linux counts these as per-CPU `vm_event`s, `count_vm_vma_lock_event`).
    shards: [FaultShard; FAULT_SHARDS],
    /// Per-VMA locks switched off ([`AddressSpace::set_per_vma_lock`]); off by
    /// default, i.e. the lock-free path is used.
    no_vma_lock: AtomicBool,
}

/// Counter shards per address space: CPUs beyond this share shards (still correct).
const FAULT_SHARDS: usize = 8;

#[derive(Default)]
#[repr(align(64))]
struct FaultShard([AtomicU64; 4]);

#[derive(Clone, Copy)]
enum FaultEvent {
    Success = 0,
    Abort = 1,
    Retry = 2,
    StackExpand = 3,
}

impl FaultCounters {
    // Inline: one add per fault, which should not cost a call wherever the code
    // generator happens to place this function.
    #[inline]
    fn bump(&self, e: FaultEvent) {
        let shard = &self.shards[crate::sync::lockdep::current_cpu() % FAULT_SHARDS];
        shard.0[e as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn sum(&self, e: FaultEvent) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0[e as usize].load(Ordering::Relaxed))
            .sum()
    }
}

/// A fault's install that lost a race (`AlreadyMapped`: another CPU mapped or changed
/// the PTE first) succeeded as far as the fault is concerned: the access is retried
/// and finds the other CPU's page. Anything else is out of memory.
fn raced_ok(r: Result<(), MapError>) -> Result<(), FaultError> {
    match r {
        Ok(()) | Err(MapError::AlreadyMapped) => Ok(()),
        Err(_) => Err(FaultError::Oom),
    }
}

impl AddressSpace {
    /// How this address space's faults have found their VMAs so far.
    pub fn fault_stats(&self) -> FaultStats {
        let c = &self.fault_counters;
        FaultStats {
            vma_lock_success: c.sum(FaultEvent::Success),
            vma_lock_abort: c.sum(FaultEvent::Abort),
            vma_lock_retry: c.sum(FaultEvent::Retry),
            stack_expand: c.sum(FaultEvent::StackExpand),
        }
    }

    /// Switches the fault path's per-VMA locks on (the default) or off (Linux: the
    /// build option `CONFIG_PER_VMA_LOCK`; here a run-time switch per address space so
    /// the benchmark kernel can measure both). Off, every fault takes the mmap read
    /// lock and finds its VMA under it (`lock_mm_and_find_vma`), as Linux did before
    /// 6.4 and still does without the option; the VMA-lock counters of
    /// [`fault_stats`](Self::fault_stats) then stay still. Changing it while faults
    /// run is harmless: each fault reads it once.
    pub fn set_per_vma_lock(&self, on: bool) {
        self.fault_counters
            .no_vma_lock
            .store(!on, Ordering::Relaxed);
    }

    /// Are the fault path's per-VMA locks on ([`set_per_vma_lock`](Self::set_per_vma_lock))?
    pub fn per_vma_lock(&self) -> bool {
        !self.fault_counters.no_vma_lock.load(Ordering::Relaxed)
    }

    /// Resolve a user page fault at `addr` (Linux: `do_user_addr_fault` →
    /// `handle_mm_fault`).
    ///
    /// As Linux 6.16+: the common path takes no mmap lock at all. The VMA is found and
    /// read-locked without it (`lock_vma_under_rcu`). A first anonymous write to a VMA
    /// without an anon_vma prepares one under a *trylock* of the mmap read lock
    /// (`vmf_anon_prepare`); if that fails (a writer holds or waits for the lock) the
    /// fault is retried under the mmap read lock (`VM_FAULT_RETRY`). Only a fault below
    /// a stack VMA takes the mmap write lock, to grow it (`lock_mm_and_find_vma` →
    /// `expand_stack`), and downgrades it before handling the fault. No path waits for
    /// the mmap lock while it holds a VMA read lock (the deadlock against a writer
    /// that waits for this VMA's readers).
    pub fn handle_fault(&self, addr: usize, access: Access) -> Result<(), FaultError> {
        if addr >= self.layout.task_size {
            return Err(FaultError::MapErr);
        }
        let c = &self.fault_counters;
        if c.no_vma_lock.load(Ordering::Relaxed) {
            // Linux without CONFIG_PER_VMA_LOCK: straight to lock_mm_and_find_vma().
        } else if let Some(vg) = self.mm.lock_vma_under_rcu(addr) {
            let vma = vg.vma();
            if access_error(vma, access) {
                c.bump(FaultEvent::Success);
                return Err(FaultError::AccErr);
            }
            let prepared = if needs_anon_vma(vma, access) {
                // Linux: vmf_anon_prepare().
                match self.mm.try_read_lock() {
                    Some(rg) => {
                        rg.anon_vma_prepare_shared(vma)
                            .map_err(|_| FaultError::Oom)?;
                        true
                    }
                    None => false,
                }
            } else {
                true
            };
            if prepared && crate::hugetlb::fault::is_hugetlb(vma) {
                // Linux: handle_mm_fault → hugetlb_fault, which takes its own locks
                // before the page-table lock.
                c.bump(FaultEvent::Success);
                return crate::hugetlb::fault::hugetlb_fault(&self.pt, &vg, vma, addr, access);
            }
            if prepared {
                c.bump(FaultEvent::Success);
                return self.do_fault(&vg, vma, addr, access, &self.pt);
            }
            // VM_FAULT_RETRY: drop the VMA lock before waiting for the mmap lock.
            c.bump(FaultEvent::Retry);
        } else {
            c.bump(FaultEvent::Abort);
        }
        // Linux: lock_mm_and_find_vma().
        let mut g = self.mm.read_lock();
        let found = g.find_vma(addr).ok_or(FaultError::MapErr)?;
        if found.start() > addr {
            if !found.flags().contains(VmFlags::GROWSDOWN) {
                return Err(FaultError::MapErr);
            }
            // Growing the stack changes the tree: upgrade by dropping the read lock and
            // taking the write lock, look again (anything may have changed in
            // between), grow, and downgrade for the fault itself.
            drop(g);
            c.bump(FaultEvent::StackExpand);
            let mut wg = self.mm.write_lock();
            let vma = wg.find_vma(addr).ok_or(FaultError::MapErr)?;
            if vma.start() > addr {
                if !vma.flags().contains(VmFlags::GROWSDOWN) {
                    return Err(FaultError::MapErr);
                }
                self.expand_stack(&mut wg, vma, addr)
                    .map_err(|_| FaultError::MapErr)?;
            }
            g = wg.downgrade();
        }
        let vma = g.find_vma(addr).ok_or(FaultError::MapErr)?;
        if vma.start() > addr {
            return Err(FaultError::MapErr);
        }
        if access_error(vma, access) {
            return Err(FaultError::AccErr);
        }
        if needs_anon_vma(vma, access) {
            g.anon_vma_prepare_shared(vma)
                .map_err(|_| FaultError::Oom)?;
        }
        if crate::hugetlb::fault::is_hugetlb(vma) {
            return crate::hugetlb::fault::hugetlb_fault(&self.pt, &g, vma, addr, access);
        }
        self.do_fault(&g, vma, addr, access, &self.pt)
    }

    /// Grow a GROWSDOWN VMA down to `addr` (Linux: `expand_downwards`): the new start
    /// must be ≥ `mmap_min_addr` (EPERM), keep `stack_guard_gap` from the previous
    /// accessible non-stack VMA (ENOMEM), and the size must stay ≤ RLIMIT_STACK (ENOMEM).
    pub(super) fn expand_stack(
        &self,
        g: &mut MmWriteGuard<'_>,
        vma: VmaRef,
        addr: usize,
    ) -> Result<(), Errno> {
        let l = &self.layout;
        let address = addr & !(PAGE_SIZE - 1);
        if address < l.mmap_min_addr {
            return Err(Errno::EPERM);
        }
        if let Some(p) = g.vma_prev_of(vma.start()) {
            if address < p.end() {
                return Err(Errno::ENOMEM);
            }
            if !p.flags().contains(VmFlags::GROWSDOWN)
                && p.flags().intersects(VmFlags::ACCESS)
                && address - p.end() < l.stack_guard_gap
            {
                return Err(Errno::ENOMEM);
            }
        }
        let grow = (vma.start() - address) / PAGE_SIZE;
        // Linux: acct_stack_growth() — address-space limit, stack limit, then the
        // commit charge (last: it is the one with a side effect in Linux).
        if !self.may_expand_vm(g, vma.flags(), grow) {
            return Err(Errno::ENOMEM);
        }
        if vma.end() - address > l.stack_limit {
            return Err(Errno::ENOMEM);
        }
        self.vm_enough_memory(grow)?;
        let pgoff = vma.pgoff().checked_sub(grow).ok_or(Errno::ENOMEM)?;
        g.vma_start_write(vma);
        g.anon_vma_prepare(vma)?;
        let mut vmg = VmaMergeStruct::new(address, vma.end(), pgoff, vma.flags());
        vmg.target = Some(vma);
        g.vma_expand(&mut vmg)
    }

    /// Linux: `handle_pte_fault` and the fault kinds below it.
    ///
    /// The PTE is read without a lock (Linux: `vmf->orig_pte = ptep_get_lockless`),
    /// the new page is prepared with no lock held, and the install re-checks the PTE
    /// under its table's lock (`pte_same`, or the slot still empty): if another CPU
    /// got there first (the same page faulted twice, or zapped meanwhile) the
    /// prepared page is dropped and the fault returns success, and the access is
    /// simply retried, as Linux's handlers do.
    fn do_fault(
        &self,
        stable: &dyn VmaStable,
        vma: VmaRef,
        addr: usize,
        access: Access,
        pt: &PageTableRoot,
    ) -> Result<(), FaultError> {
        let page = addr & !(PAGE_SIZE - 1);
        let flags = vma.flags();
        let write = access == Access::Write;
        let cur = pt.translate(va(page));
        if flags.intersects(VmFlags::PFNMAP | VmFlags::IO | VmFlags::MIXEDMAP) {
            return if cur.is_some() {
                Ok(())
            } else {
                Err(FaultError::Bus)
            };
        }
        let shared = flags.contains(VmFlags::SHARED);
        if let Some(vf) = vma.file(stable) {
            let f = file::lookup(&vf).ok_or(FaultError::Bus)?;
            let idx = vma.pgoff() + (page - vma.start()) / PAGE_SIZE;
            if idx.saturating_mul(PAGE_SIZE) >= f.inode().size() {
                return Err(FaultError::Bus);
            }
            if let Some(t) = cur {
                if !shared {
                    return self.wp(pt, page, t, flags, write);
                }
                // A shared mapping maps the page-cache page itself, writable if the VMA
                // is: nothing to do but note the write.
                if write {
                    file::mark_dirty(self.alloc, t.frame);
                }
                return Ok(());
            }
            return self.file_fault(pt, f.inode(), idx, page, flags, write);
        }
        if !vma.is_anonymous() {
            return Err(FaultError::Bus);
        }
        match cur {
            // Linux: do_anonymous_page — zero page for reads, a fresh frame for writes.
            None if !write => self.map_page(pt, page, self.zero, pte_prot(flags, false)),
            None => self.cow_into_new(pt, page, None, None, flags),
            Some(t) => self.wp(pt, page, t, flags, write),
        }
    }

    /// A fault on a file page with no PTE (Linux: `do_read_fault`, `do_cow_fault`,
    /// `do_shared_fault`), in Linux's order: the private copy first (`do_cow_fault`'s
    /// `folio_prealloc`), then the page table (`__do_fault`'s `vmf->prealloc_pte`), and
    /// only then the file's page (`->fault`), so running out of memory at any step
    /// leaves nothing behind, not even a page in the page cache.
    fn file_fault(
        &self,
        pt: &PageTableRoot,
        inode: &file::Inode,
        idx: usize,
        page: usize,
        flags: VmFlags,
        write: bool,
    ) -> Result<(), FaultError> {
        let shared = flags.contains(VmFlags::SHARED);
        let cow = if write && !shared {
            Some(self.alloc.alloc_zeroed(0).map_err(|_| FaultError::Oom)?)
        } else {
            None
        };
        let put_cow = || {
            if let Some(new) = cow {
                let _ = self.alloc.put_frame(new);
            }
        };
        let reserved = match pt.reserve_tables(va(page)..va(page + PAGE_SIZE), PageSize::Size4K) {
            Ok(r) => r,
            Err(_) => {
                put_cow();
                return Err(FaultError::Oom);
            }
        };
        let pc = match inode.find_or_create_page(idx) {
            Ok(pc) => pc,
            Err(_) => {
                put_cow();
                return Err(FaultError::Oom);
            }
        };
        let Some(new) = cow else {
            // Linux: do_read_fault maps the cache page read-only in a private mapping;
            // do_shared_fault maps it writable if the VMA is.
            raced_ok(pt.map_reserved(
                va(page)..va(page + PAGE_SIZE),
                pc,
                PageSize::Size4K,
                pte_prot(flags, shared),
                reserved,
            ))?;
            if shared && write {
                file::mark_dirty(self.alloc, pc);
            }
            return Ok(());
        };
        // Linux: do_cow_fault — the private copy of the cache page.
        self.fill_anon(new, Some(pc));
        let prot = pte_prot(flags, true);
        let r = pt.map_frame_reserved(va(page), new, PageSize::Size4K, prot, reserved);
        if r.is_err() {
            let _ = self.alloc.put_frame(new);
        }
        raced_ok(r)
    }

    /// A fault on a present PTE: spurious unless it is a write to a read-only one
    /// (Linux: `do_wp_page`: reuse an exclusive anonymous page, else copy; see
    /// [`wp_can_reuse_anon`]).
    fn wp(
        &self,
        pt: &PageTableRoot,
        page: usize,
        t: Translation,
        flags: VmFlags,
        write: bool,
    ) -> Result<(), FaultError> {
        if !write || t.flags.contains(PageTableFlags::WRITABLE) {
            return Ok(());
        }
        let m = self.alloc.meta(t.frame);
        if m.is_some_and(wp_can_reuse_anon) {
            // Linux: wp_page_reuse, under the PTE lock after pte_same; a PTE changed
            // meanwhile (zapped, replaced) is left alone and the access retried.
            let mut g = MmuGather::new(pt);
            let r = pt.protect_leaf_if_same(va(page), &t, pte_prot(flags, true), &mut g);
            g.finish();
            return r.map(|_| ()).map_err(|_| FaultError::Oom);
        }
        let Some(m) = m.filter(|m| !m.flags().contains(FrameFlags::ZERO)) else {
            return self.cow_into_new(pt, page, None, Some(&t), flags);
        };
        // Linux: do_wp_page takes a reference on the old page under the PTE lock
        // (`folio_get`), so the copy reads a page nobody can free under it even if a
        // MADV_DONTNEED on another CPU zaps the PTE meanwhile.
        let pinned = pt.with_leaf_locked(va(page), |cur| {
            let same = cur.is_some_and(|c| c.same_mapping(&t));
            if same {
                m.get();
            }
            same
        });
        if !pinned {
            return Ok(());
        }
        let r = self.cow_into_new(pt, page, Some(t.frame), Some(&t), flags);
        let _ = self.alloc.put_frame(t.frame);
        r
    }

    /// Install a new private anonymous page at `page`, copied from `src` (or zeroed):
    /// into an empty PTE (`replace` = `None`), or in place of the leaf `replace` if it
    /// is still there (Linux: `wp_page_copy`'s `pte_same` under the PTE lock).
    fn cow_into_new(
        &self,
        pt: &PageTableRoot,
        page: usize,
        src: Option<PhysAddr>,
        replace: Option<&Translation>,
        flags: VmFlags,
    ) -> Result<(), FaultError> {
        let new = self.alloc.alloc_zeroed(0).map_err(|_| FaultError::Oom)?;
        self.fill_anon(new, src);
        let prot = pte_prot(flags, true);
        let r = if let Some(old) = replace {
            // Linux: wp_page_copy() swaps the PTE in place, so no table page is needed.
            let mut g = MmuGather::new(pt);
            let r = pt.replace_frame_if_same(va(page), old, new, prot, &mut g);
            g.finish();
            match r {
                Ok(true) => Ok(()),
                // Another CPU changed the PTE first: ours is not needed.
                Ok(false) => Err(MapError::AlreadyMapped),
                Err(e) => Err(e),
            }
        } else {
            pt.map_frame(va(page), new, PageSize::Size4K, prot)
        };
        if r.is_err() {
            let _ = self.alloc.put_frame(new);
        }
        raced_ok(r)
    }

    /// Makes the fresh, zeroed frame `new` a private anonymous page holding a copy of
    /// `src` (Linux: `copy_mc_user_highpage` + `__folio_set_anon`).
    fn fill_anon(&self, new: PhysAddr, src: Option<PhysAddr>) {
        if let Some(s) = src {
            // SAFETY: `s` is a frame we hold a reference on (`wp` took one under the PTE lock) or one the page cache holds, so it is not freed while we read; `new` is ours alone; both are reachable through the direct map and one page long.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    self.alloc.phys_to_virt(s),
                    self.alloc.phys_to_virt(new),
                    PAGE_SIZE,
                )
            };
        }
        if let Some(m) = self.alloc.meta(new) {
            // Linux: folio_add_new_anon_rmap(.., RMAP_EXCLUSIVE) — a new page belongs
            // to the one mapping it is made for.
            m.set_flags(FrameFlags::ANON | FrameFlags::ANON_EXCLUSIVE);
        }
    }

    fn map_page(
        &self,
        pt: &PageTableRoot,
        page: usize,
        pa: PhysAddr,
        prot: PageTableFlags,
    ) -> Result<(), FaultError> {
        raced_ok(pt.map(va(page)..va(page + PAGE_SIZE), pa, PageSize::Size4K, prot))
    }

    /// Is `[addr, addr + len)` inside the user half (Linux: `access_ok()`, i.e.
    /// `__access_ok`: `size <= TASK_SIZE_MAX && addr <= TASK_SIZE_MAX - size`)? A user
    /// copy must never translate an address outside it: in the kernel the upper half
    /// of every space's page tables is the kernel's own memory.
    fn access_ok(&self, addr: usize, len: usize) -> bool {
        let ts = self.layout.task_size;
        len <= ts && addr <= ts - len
    }

    /// Copy `data` to user address `addr`, faulting pages in as a write would (Linux:
    /// `copy_to_user` with fault handling). Fails with the fault's error; a range
    /// reaching outside the user half fails with `MapErr` before anything is touched
    /// (Linux: `access_ok()`, EFAULT).
    pub fn copy_to_user(&self, addr: usize, data: &[u8]) -> Result<(), FaultError> {
        if !self.access_ok(addr, data.len()) {
            return Err(FaultError::MapErr);
        }
        let mut done = 0;
        while done < data.len() {
            let a = addr.checked_add(done).ok_or(FaultError::MapErr)?;
            let n = (PAGE_SIZE - a % PAGE_SIZE).min(data.len() - done);
            let src = &data[done..done + n];
            self.with_user_page(a, Access::Write, |p| {
                // SAFETY: `p` points at byte `a % PAGE_SIZE` of a frame mapped writable
                // at `a`'s page, and `n` bytes stay within that page. The lock of the
                // PTE's table is held for the whole copy, and frames are freed only after
                // their PTE was cleared under that lock: the frame cannot be freed and
                // reused by someone else while we write.
                unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), p, n) }
            })?;
            done += n;
        }
        Ok(())
    }

    /// Copy from user address `addr` into `buf`, faulting pages in as a read would. A
    /// range reaching outside the user half fails with `MapErr` (Linux: `access_ok()`).
    pub fn copy_from_user(&self, addr: usize, buf: &mut [u8]) -> Result<(), FaultError> {
        if !self.access_ok(addr, buf.len()) {
            return Err(FaultError::MapErr);
        }
        let mut done = 0;
        while done < buf.len() {
            let a = addr.checked_add(done).ok_or(FaultError::MapErr)?;
            let n = (PAGE_SIZE - a % PAGE_SIZE).min(buf.len() - done);
            let dst = &mut buf[done..done + n];
            self.with_user_page(a, Access::Read, |p| {
                // SAFETY: as in `copy_to_user`: `p..p + n` lies in a frame mapped at `a`'s
                // page, kept from being freed by its PTE's table lock held across the copy.
                unsafe { core::ptr::copy_nonoverlapping(p.cast_const(), dst.as_mut_ptr(), n) }
            })?;
            done += n;
        }
        Ok(())
    }

    /// Run `f` on a direct-map pointer to `addr`'s byte in the frame mapped there, once
    /// the mapping permits `access` (faulting as the MMU would if the PTE is absent or
    /// lacks the permission). The translation and `f` run under one hold of the lock
    /// of the PTE's table: an unmap, MADV_DONTNEED or copy-on-write replacing the PTE
    /// cannot free the frame in between (Linux pins the page with GUP for the same
    /// reason; here the copy is short enough to hold the lock instead).
    fn with_user_page(
        &self,
        addr: usize,
        access: Access,
        f: impl FnOnce(*mut u8),
    ) -> Result<(), FaultError> {
        // Never translate outside the user half (the callers checked the whole range).
        if addr >= self.layout.task_size {
            return Err(FaultError::MapErr);
        }
        let mut f = Some(f);
        // Linux retries the access after every fault that succeeded (`fixup_user_fault`
        // and the uaccess fault path): a concurrent MADV_DONTNEED or munmap may take the
        // page away again between the fault and the retry, any number of times. Only
        // the fault handler's own error ends the loop; each successful fault made the
        // access possible, so the loop ends as soon as no one races it.
        loop {
            {
                // The VMA's read lock (or the mmap read lock) keeps the tables of
                // `addr` from being freed while we walk them; the leaf's table lock
                // keeps the frame mapped (so referenced) while `f` copies.
                let vg = self.mm.lock_vma_under_rcu(addr);
                let mg = if vg.is_none() {
                    Some(self.mm.read_lock())
                } else {
                    None
                };
                let mapped = mg.as_ref().is_none_or(|g| g.vma_lookup(addr).is_some());
                let done = mapped
                    && self.pt.with_leaf_locked(va(addr & !(PAGE_SIZE - 1)), |t| {
                        let Some(t) = t else { return false };
                        let ok = t.flags.contains(PageTableFlags::PRESENT)
                            && (access != Access::Write
                                || t.flags.contains(PageTableFlags::WRITABLE));
                        if ok && let Some(f) = f.take() {
                            // SAFETY: `t.phys` is the start of `addr`'s 4 KiB page inside the mapped frame (of any page size); the offset is below PAGE_SIZE, so the pointer stays inside that frame's direct-map window.
                            f(unsafe { self.alloc.phys_to_virt(t.phys).add(addr % PAGE_SIZE) });
                        }
                        ok
                    });
                if done {
                    return Ok(());
                }
            }
            self.handle_fault(addr, access)?;
        }
    }
}
