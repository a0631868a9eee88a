//! The fail-the-Nth-allocation sweep (Linux: the `fail_page_alloc` / `failslab` fault
//! injection, driven the way the VMA userland tests drive `fail_prealloc`, but for every
//! allocation a syscall makes, one at a time).
//!
//! A scripted sequence of syscalls ([`SCRIPT`]: mmap of each kind, faults, MAP_FIXED
//! replacement, munmap and mprotect splits, mremap shrink/grow/move/DONTUNMAP, madvise,
//! exit) is run on an [`AddressSpace`] over simulated memory. For each step and each
//! N = 1, 2, … the step's prefix is replayed on a fresh address space, the Nth heap
//! allocation (first sweep) or the Nth frame allocation (second sweep) of the step is
//! made to fail, and then:
//!
//! - a failing call must return ENOMEM (a fault: [`FaultError::Oom`]);
//! - the VMAs, page-table entries and page contents must be exactly as before the call,
//!   except for the partial effects Linux documents ([`Partial`]);
//! - the frames, VMAs and anon_vmas in use must be what they were before the call (a
//!   failed call keeps nothing), and once the address space is dropped the heap, frames,
//!   VMAs and anon_vmas are all back to where they were before the point (no leak);
//! - the same call, repeated with memory back, must succeed and give exactly the state a
//!   clean run gives;
//! - a call that succeeds although an allocation failed (the failure was absorbed, e.g.
//!   by MAP_POPULATE, which ignores it as Linux does) must also give the clean state.
//!
//! N grows until the call makes fewer than N allocations. Heap failures come from the
//! `#[global_allocator]` of this binary, armed per thread; an *infallible* allocation
//! that fails aborts the process, and the allocation-error hook names the sweep point
//! first. Points the lead is fixing on `main` (mprotect, mremap) are listed in
//! [`KNOWN_LEAD`]; the test still checks everything else about them, and fails if a
//! listed point stops reproducing.
#![feature(alloc_error_hook)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;

use mm::errno::Errno;
use mm::file::{File, OpenMode, device_file, ramfs_file, secretmem_file, stacking_file};
use mm::frame::FrameAllocator;
use mm::frame::sim::simulated;
use mm::mmap::*;
use mm::paging::PageTableFlags;
use mm::vma::anon::anon_vma_live_count;
use mm::vma::pool::vma_pool_stats;

// ---- heap fault injection ---------------------------------------------------------

/// The system allocator, plus per-thread fault injection and accounting.
struct Injecting;

#[global_allocator]
static GLOBAL: Injecting = Injecting;

thread_local! {
    /// Heap allocations left before the failing one, counting it (0: disarmed).
    static COUNTDOWN: Cell<u64> = const { Cell::new(0) };
    /// Allocations counted while armed.
    static SEEN: Cell<u64> = const { Cell::new(0) };
    /// The armed failure happened.
    static FIRED: Cell<bool> = const { Cell::new(false) };
    /// Blocks this thread allocated minus blocks it freed.
    static LIVE_BLOCKS: Cell<i64> = const { Cell::new(0) };
    /// Bytes this thread allocated minus bytes it freed.
    static LIVE_BYTES: Cell<i64> = const { Cell::new(0) };
    /// The sweep point being run, for the allocation-error hook: (step, sweep, N).
    static POINT: Cell<Option<(usize, Inject, u64)>> = const { Cell::new(None) };
    /// Print where the injected heap failure happens (`OOM_SWEEP_WHERE=step:N`).
    static SHOW_WHERE: Cell<bool> = const { Cell::new(false) };
}

/// Counts one allocation if armed; true if it is the one to fail.
fn inject_fails() -> bool {
    COUNTDOWN
        .try_with(|c| match c.get() {
            0 => false,
            left => {
                c.set(left - 1);
                SEEN.with(|s| s.set(s.get() + 1));
                if left == 1 {
                    FIRED.with(|f| f.set(true));
                    if SHOW_WHERE.with(|w| w.replace(false)) {
                        // Disarmed by now, so the backtrace may allocate; the flag is
                        // cleared while it runs so this does not recurse.
                        let bt = std::backtrace::Backtrace::force_capture();
                        let _ = writeln!(std::io::stderr(), "injected heap failure at:\n{bt}");
                        SHOW_WHERE.with(|w| w.set(true));
                    }
                }
                left == 1
            }
        })
        .unwrap_or(false)
}

fn account(blocks: i64, bytes: i64) {
    let _ = LIVE_BLOCKS.try_with(|c| c.set(c.get() + blocks));
    let _ = LIVE_BYTES.try_with(|c| c.set(c.get() + bytes));
}

// SAFETY: every call is forwarded to `System` with the caller's arguments unchanged, or
// answered with null, which `GlobalAlloc` allows for any allocation; the bookkeeping
// touches only const-initialised thread-locals without destructors, which never allocate.
unsafe impl GlobalAlloc for Injecting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if inject_fails() {
            return core::ptr::null_mut();
        }
        // SAFETY: forwarded from the caller (non-zero size layout).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            account(1, layout.size() as i64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if inject_fails() {
            return core::ptr::null_mut();
        }
        // SAFETY: forwarded from the caller.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            account(1, layout.size() as i64);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded from the caller: `ptr` came from this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        account(-1, -(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A failed realloc leaves the old block alone, as `GlobalAlloc` requires.
        if inject_fails() {
            return core::ptr::null_mut();
        }
        // SAFETY: forwarded from the caller.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            account(0, new_size as i64 - layout.size() as i64);
        }
        p
    }
}

fn live_heap() -> (i64, i64) {
    (LIVE_BLOCKS.with(Cell::get), LIVE_BYTES.with(Cell::get))
}

/// An infallible allocation failed: the process is about to abort. Say where.
fn alloc_error_hook(layout: Layout) {
    let point = POINT.with(Cell::get);
    let mut err = std::io::stderr().lock();
    match point {
        Some((step, inject, n)) => {
            let _ = writeln!(
                err,
                "\noom_sweep: an infallible allocation of {} bytes failed at step {} `{}` \
                 ({:?} N={n}): it must fail with ENOMEM instead. Backtrace:\n{}",
                layout.size(),
                step,
                SCRIPT[step].name,
                inject,
                std::backtrace::Backtrace::force_capture()
            );
        }
        None => {
            let _ = writeln!(
                err,
                "oom_sweep: allocation of {} bytes failed",
                layout.size()
            );
        }
    }
}

// ---- the script ----------------------------------------------------------------------

const P: usize = 4096;
const R: u32 = PROT_READ;
const RW: u32 = PROT_READ | PROT_WRITE;
const PA: u32 = MAP_PRIVATE | MAP_ANONYMOUS;
const SA: u32 = MAP_SHARED | MAP_ANONYMOUS;
const FIX: u32 = MAP_FIXED;

/// Anonymous area: 16 pages, grown to 20 by a merging mmap, then cut up.
const A: usize = 0x1000_0000;
/// Shared anonymous mapping.
const S: usize = 0x2000_0000;
/// Private file mapping, directly followed by a shared one of the same file (so the
/// private one cannot grow in place and mremap must move it).
const FP: usize = 0x3000_0000;
const FS: usize = FP + 4 * P;
/// GROWSDOWN stack.
const ST: usize = 0x4000_0000;
/// Device (legacy `->mmap`) and stacking (compat `->mmap_prepare`) files.
const DV: usize = 0x5000_0000;
const OV: usize = 0x5100_0000;
/// Three adjacent VMAs with different protections, for multi-VMA mprotect and move.
const MV: usize = 0x6000_0000;
/// mremap destinations.
const DST1: usize = 0x6800_0000;
const DST2: usize = 0x6900_0000;
/// A one-page mapping with a page table of its own.
const LONE: usize = 0x5300_0000;
/// secretmem mapping.
const SM: usize = 0x5200_0000;
/// hugetlb mapping (2 MiB aligned).
const HG: usize = 0x7800_0000;
/// 2 MiB.
const M2: usize = 2 << 20;
/// Hint of the non-fixed mmap.
const HINT: usize = 0x7000_0000;

/// Everything a point needs: the address space and the files it maps.
struct Env {
    alloc: &'static FrameAllocator,
    asp: Option<AddressSpace>,
    /// ramfs file of 16 pages; pages 0..4 hold data, the rest are holes.
    data: Arc<File>,
    dev: Arc<File>,
    overlay: Arc<File>,
    secret: Arc<File>,
    /// Where the hinted and the MAP_POPULATE mmaps landed.
    hinted: usize,
    populated: usize,
    /// The forked child, between the fork step and its exit step.
    child: Option<AddressSpace>,
}

impl Env {
    fn new(alloc: &'static FrameAllocator) -> Env {
        let data = ramfs_file(alloc, "/data", 16 * P, OpenMode::RDWR);
        for i in 0..4 {
            data.inode().write(i * P, &pattern(0xd0 + i as u8)).unwrap();
        }
        let lower = ramfs_file(alloc, "/lower", 4 * P, OpenMode::RDWR);
        lower.inode().write(0, &pattern(0x10)).unwrap();
        let overlay = stacking_file(&lower, "/overlay");
        Env {
            alloc,
            asp: Some(AddressSpace::new(alloc).unwrap()),
            data,
            dev: device_file(alloc, "/dev/mem0", 0xfee0_0000, 4 * P, OpenMode::RDWR),
            overlay,
            secret: secretmem_file(alloc, 2 * P),
            hinted: 0,
            populated: 0,
            child: None,
        }
    }

    fn asp(&self) -> &AddressSpace {
        self.asp.as_ref().expect("address space already torn down")
    }
}

/// One page of recognisable data.
fn pattern(seed: u8) -> Vec<u8> {
    (0..P).map(|i| seed.wrapping_add((i / 7) as u8)).collect()
}

/// Why a swept call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fail {
    Errno(Errno),
    Fault(FaultError),
}

type Call = fn(&mut Env) -> Result<usize, Fail>;

/// What a failed call may have changed besides nothing (Linux's documented partial
/// effects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Partial {
    /// Nothing: the state must be exactly as before.
    None,
    /// munmap (and mprotect, madvise): VMAs may have been split before the failure
    /// (Linux: `do_vmi_align_munmap` splits first; `vma_modify` splits before the merge).
    Splits,
    /// A stack-growth fault: once the VMA was expanded, a failure to allocate the page
    /// leaves it expanded (Linux expands in `lock_mm_and_find_vma`, before
    /// `handle_mm_fault` runs out of memory), so `[start, start + len)` may have become
    /// part of the stack, without PTEs.
    Grown { start: usize, len: usize },
    /// mprotect over several VMAs: the VMAs before the failure point keep the change
    /// (splits allowed), the rest are as before (Linux: `do_mprotect_pkey` stops at the
    /// first error).
    Prefix { start: usize, len: usize },
    /// MAP_FIXED over existing mappings: the old range may be gone entirely (Linux:
    /// `vms_abort_munmap_vmas` once the old PTEs were cleared), splits at its ends.
    Unmapped { start: usize, len: usize },
    /// mremap move: the source is as it was; the destination range (MREMAP_FIXED unmaps
    /// it first) may be unmapped. Once the move itself succeeded, unmapping the source
    /// may still run out of memory: Linux then keeps the (now empty) source VMA and
    /// reports success (`unmap_source_vma`: "OOM: unable to split vma, just get accounts
    /// right"), so `[src, src + src_len)` may stay mapped, without any PTE.
    MoveSource {
        src: usize,
        src_len: usize,
        dst: usize,
        dst_len: usize,
    },
    /// mremap move of a range spanning several VMAs (MREMAP_FIXED, no resize): each
    /// VMA is moved as its own request, and a failure part-way leaves the VMAs already
    /// moved at the destination (Linux: `remap_move()`); the rest is as it was. A moved
    /// VMA's source may stay mapped, empty, as for [`Partial::MoveSource`]. Repeating
    /// the call then fails with EFAULT (its first byte is unmapped), so the retry moves
    /// what is left.
    MultiMove { src: usize, dst: usize, len: usize },
    /// fork: the parent's VMAs, frames and contents are as before, but the private
    /// writable PTEs of the VMAs copied before the failure may have lost their write
    /// permission (Linux: `copy_present_pte` write-protects the parent's PTE for
    /// copy-on-write, and a failed `dup_mmap` does not undo it; the next write reuses
    /// the page in place).
    WriteProtected,
}

/// One swept syscall.
struct Step {
    name: &'static str,
    call: Call,
    /// Run unswept after the call succeeds (writes data to a just-faulted page).
    after: Option<fn(&mut Env)>,
    partial: Partial,
    /// The call is MAP_POPULATE: a fault failing inside it is ignored (Linux:
    /// `mm_populate` ignores errors), so pages may stay unpopulated.
    populate: bool,
    /// A fault that grows the stack: running out of memory while expanding is SIGSEGV
    /// (Linux: `expand_stack_locked` fails, `lock_mm_and_find_vma` returns no VMA,
    /// `bad_area_nosemaphore`), only the page allocation after it is `VM_FAULT_OOM`.
    stack_growth: bool,
}

const fn step(name: &'static str, call: Call) -> Step {
    Step {
        name,
        call,
        after: None,
        partial: Partial::None,
        populate: false,
        stack_growth: false,
    }
}

const fn with_after(mut s: Step, after: fn(&mut Env)) -> Step {
    s.after = Some(after);
    s
}

const fn with_partial(mut s: Step, partial: Partial) -> Step {
    s.partial = partial;
    s
}

fn mmap(e: &mut Env, addr: usize, len: usize, prot: u32, flags: u32) -> Result<usize, Fail> {
    e.asp()
        .mmap(addr, len, prot, flags, None, 0)
        .map_err(Fail::Errno)
}

fn mmap_file(
    e: &mut Env,
    addr: usize,
    len: usize,
    flags: u32,
    f: fn(&Env) -> &Arc<File>,
    off: u64,
) -> Result<usize, Fail> {
    let file = f(e).clone();
    e.asp()
        .mmap(addr, len, RW, flags | FIX, Some(&file), off)
        .map_err(Fail::Errno)
}

fn fault(e: &mut Env, addr: usize, access: Access) -> Result<usize, Fail> {
    e.asp()
        .handle_fault(addr, access)
        .map(|()| addr)
        .map_err(Fail::Fault)
}

fn write(e: &mut Env, addr: usize, seed: u8) {
    e.asp().copy_to_user(addr, &pattern(seed)).unwrap();
}

fn errno(r: Result<(), Errno>) -> Result<usize, Fail> {
    r.map(|()| 0).map_err(Fail::Errno)
}

/// The scripted sequence. Each step runs on the state all earlier steps left.
static SCRIPT: &[Step] = &[
    step("mmap private anon", |e| mmap(e, A, 16 * P, RW, PA | FIX)),
    with_after(
        step("write fault: anon_vma + new page", |e| {
            fault(e, A, Access::Write)
        }),
        |e| {
            for i in 0..10 {
                write(e, A + i * P, 0x40 + i as u8);
            }
        },
    ),
    step("read fault: zero page", |e| {
        fault(e, A + 12 * P, Access::Read)
    }),
    with_after(
        step("write fault: COW of the zero page", |e| {
            fault(e, A + 12 * P, Access::Write)
        }),
        |e| write(e, A + 12 * P, 0x4c),
    ),
    step("mmap private anon merging with its neighbour", |e| {
        mmap(e, A + 16 * P, 4 * P, RW, PA | FIX)
    }),
    step("mmap shared anon", |e| mmap(e, S, 4 * P, RW, SA | FIX)),
    with_after(
        step("write fault: shared anon page", |e| {
            fault(e, S + P, Access::Write)
        }),
        |e| write(e, S + P, 0x51),
    ),
    step("mmap private file", |e| {
        mmap_file(e, FP, 4 * P, MAP_PRIVATE, |e| &e.data, 0)
    }),
    step("mmap shared file", |e| {
        mmap_file(e, FS, 4 * P, MAP_SHARED, |e| &e.data, 8 * P as u64)
    }),
    step("read fault: private file, cached page", |e| {
        fault(e, FP + P, Access::Read)
    }),
    with_after(
        step("write fault: private file, COW of the cache page", |e| {
            fault(e, FP + 2 * P, Access::Write)
        }),
        |e| write(e, FP + 2 * P, 0x62),
    ),
    with_after(
        step("write fault: shared file, new cache page", |e| {
            fault(e, FS, Access::Write)
        }),
        |e| write(e, FS, 0x68),
    ),
    step("mmap GROWSDOWN stack", |e| {
        mmap(e, ST, 4 * P, RW, PA | FIX | MAP_GROWSDOWN)
    }),
    {
        let mut s = with_after(
            step("write fault: stack growth", |e| {
                fault(e, ST - P, Access::Write)
            }),
            |e| write(e, ST - P, 0x7f),
        );
        s.stack_growth = true;
        s.partial = Partial::Grown {
            start: ST - P,
            len: P,
        };
        s
    },
    step("mmap private anon, alone in its page table", |e| {
        mmap(e, LONE, P, RW, PA | FIX)
    }),
    step("read fault: zero page, alone in its page table", |e| {
        fault(e, LONE, Access::Read)
    }),
    with_after(
        step(
            "write fault: COW of a zero page alone in its page table",
            |e| fault(e, LONE, Access::Write),
        ),
        |e| write(e, LONE, 0x3c),
    ),
    step("mmap device file (legacy ->mmap)", |e| {
        mmap_file(e, DV, 2 * P, MAP_SHARED, |e| &e.dev, 0)
    }),
    step("mmap stacking file (compat ->mmap_prepare)", |e| {
        mmap_file(e, OV, 2 * P, MAP_SHARED, |e| &e.overlay, 0)
    }),
    step("read fault: stacking file", |e| fault(e, OV, Access::Read)),
    {
        let mut s = step("mmap MAP_POPULATE", |e| {
            let a = mmap(e, 0, 4 * P, RW, PA | MAP_POPULATE)?;
            e.populated = a;
            Ok(a)
        });
        s.populate = true;
        s
    },
    step("mmap with a hint", |e| {
        let a = mmap(e, HINT, 8 * P, RW, PA)?;
        e.hinted = a;
        Ok(a)
    }),
    with_partial(
        step("mmap MAP_FIXED over faulted pages", |e| {
            mmap(e, A + 2 * P, 2 * P, R, PA | FIX)
        }),
        Partial::Unmapped {
            start: A + 2 * P,
            len: 2 * P,
        },
    ),
    with_partial(
        step("munmap: hole in one VMA", |e| {
            errno(e.asp().munmap(A + 6 * P, P))
        }),
        Partial::Splits,
    ),
    with_partial(
        step("munmap: across two VMAs", |e| {
            errno(e.asp().munmap(A + 3 * P, 2 * P))
        }),
        Partial::Splits,
    ),
    with_partial(
        step("mprotect: split off the middle", |e| {
            errno(e.asp().mprotect(A + 11 * P, 2 * P, R))
        }),
        Partial::Splits,
    ),
    with_partial(
        step("mprotect: merge back", |e| {
            errno(e.asp().mprotect(A + 11 * P, 2 * P, RW))
        }),
        Partial::Splits,
    ),
    with_after(
        step(
            "write fault: read-only PTE of an exclusive anon page",
            |e| fault(e, A + 12 * P, Access::Write),
        ),
        |e| write(e, A + 12 * P, 0x4d),
    ),
    with_partial(
        step("mprotect: split a shared file VMA", |e| {
            errno(e.asp().mprotect(FS + P, P, R))
        }),
        Partial::Splits,
    ),
    with_partial(
        step("munmap: hole in a shared file VMA", |e| {
            errno(e.asp().munmap(FS + 2 * P, P))
        }),
        Partial::Splits,
    ),
    step("mmap shared file into the hole, merging", |e| {
        mmap_file(e, FS + 2 * P, P, MAP_SHARED, |e| &e.data, 10 * P as u64)
    }),
    with_partial(
        step("madvise: MADV_DONTFORK on part of a file VMA", |e| {
            errno(e.asp().madvise(FS + 3 * P, P, MADV_DONTFORK))
        }),
        Partial::Splits,
    ),
    step("mmap secretmem (->mmap_prepare sets flags)", |e| {
        mmap_file(e, SM, 2 * P, MAP_SHARED, |e| &e.secret, 0)
    }),
    with_after(
        step("write fault: secretmem page", |e| {
            fault(e, SM, Access::Write)
        }),
        |e| write(e, SM, 0x5e),
    ),
    step("mmap three VMAs: read-only", |e| {
        mmap(e, MV, 4 * P, R, PA | FIX)
    }),
    with_after(
        step("mmap three VMAs: read-write", |e| {
            mmap(e, MV + 4 * P, 4 * P, RW, PA | FIX)
        }),
        |e| {
            for i in 4..8 {
                write(e, MV + i * P, 0x90 + i as u8);
            }
        },
    ),
    step("mmap three VMAs: read-only again", |e| {
        mmap(e, MV + 8 * P, 4 * P, R, PA | FIX)
    }),
    with_partial(
        step("mprotect: across three VMAs", |e| {
            errno(e.asp().mprotect(MV + 2 * P, 8 * P, RW | PROT_EXEC))
        }),
        Partial::Prefix {
            start: MV + 2 * P,
            len: 8 * P,
        },
    ),
    with_partial(
        step("mremap: shrink", |e| {
            let h = e.hinted;
            e.asp().mremap(h, 8 * P, 4 * P, 0, 0).map_err(Fail::Errno)
        }),
        Partial::Splits,
    ),
    step("mremap: grow in place", |e| {
        let h = e.hinted;
        e.asp().mremap(h, 4 * P, 6 * P, 0, 0).map_err(Fail::Errno)
    }),
    with_partial(
        step("mremap: grow by moving", |e| {
            e.asp()
                .mremap(FP, 4 * P, 8 * P, MREMAP_MAYMOVE, 0)
                .map_err(Fail::Errno)
        }),
        Partial::MoveSource {
            src: FP,
            src_len: 4 * P,
            dst: 0,
            dst_len: 0,
        },
    ),
    with_partial(
        step("mremap: MREMAP_FIXED move of part of a VMA", |e| {
            e.asp()
                .mremap(A + 8 * P, 2 * P, 2 * P, MREMAP_MAYMOVE | MREMAP_FIXED, DST1)
                .map_err(Fail::Errno)
        }),
        Partial::MoveSource {
            src: A + 8 * P,
            src_len: 2 * P,
            dst: DST1,
            dst_len: 2 * P,
        },
    ),
    with_partial(
        step("mremap: MREMAP_DONTUNMAP", |e| {
            let p = e.populated;
            e.asp()
                .mremap(p, 4 * P, 4 * P, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, 0)
                .map_err(Fail::Errno)
        }),
        // DONTUNMAP keeps the source anyway.
        Partial::MoveSource {
            src: 0,
            src_len: 0,
            dst: 0,
            dst_len: 0,
        },
    ),
    with_partial(
        step("mremap: move across several VMAs", |e| {
            e.asp()
                .mremap(MV, 12 * P, 12 * P, MREMAP_MAYMOVE | MREMAP_FIXED, DST2)
                .map_err(Fail::Errno)
        }),
        Partial::MultiMove {
            src: MV,
            dst: DST2,
            len: 12 * P,
        },
    ),
    with_partial(
        step("mmap MAP_FIXED over several file VMAs", |e| {
            mmap(e, FS, 4 * P, RW, PA | FIX)
        }),
        Partial::Unmapped {
            start: FS,
            len: 4 * P,
        },
    ),
    step("madvise: MADV_DONTNEED", |e| {
        errno(e.asp().madvise(A + 11 * P, 2 * P, MADV_DONTNEED))
    }),
    with_partial(
        step("madvise: MADV_DONTFORK splits", |e| {
            let h = e.hinted;
            errno(e.asp().madvise(h + P, P, MADV_DONTFORK))
        }),
        Partial::Splits,
    ),
    with_partial(
        step("madvise: MADV_DOFORK merges back", |e| {
            let h = e.hinted;
            errno(e.asp().madvise(h + P, P, MADV_DOFORK))
        }),
        Partial::Splits,
    ),
    with_partial(
        step("mlock2: MLOCK_ONFAULT splits", |e| {
            let h = e.hinted;
            errno(e.asp().mlock2(h + P, P, MLOCK_ONFAULT))
        }),
        Partial::Splits,
    ),
    with_partial(
        step("munlock: merges back", |e| {
            let h = e.hinted;
            errno(e.asp().munlock(h + P, P))
        }),
        Partial::Splits,
    ),
    step("mmap MAP_HUGETLB shared anon (reserves 2 pages)", |e| {
        mmap(e, HG, 2 * M2, RW, SA | MAP_HUGETLB | FIX)
    }),
    with_after(
        step("write fault: hugetlb page", |e| {
            fault(e, HG + M2, Access::Write)
        }),
        |e| write(e, HG + M2, 0x68),
    ),
    with_partial(
        step("munmap: one page of a hugetlb VMA", |e| {
            errno(e.asp().munmap(HG, M2))
        }),
        Partial::Splits,
    ),
    step("read /proc/self/maps", |e| {
        e.asp().try_maps().map(|m| m.len()).map_err(Fail::Errno)
    }),
    step("PROCMAP_QUERY of a named VMA", |e| {
        e.asp()
            .try_query_vma(SM, 0)
            .map(|q| q.map_or(0, |q| q.start))
            .map_err(Fail::Errno)
    }),
    with_partial(
        step("fork: dup_mmap", |e| {
            let c = e.asp().fork().map_err(Fail::Errno)?;
            e.child = Some(c);
            Ok(0)
        }),
        Partial::WriteProtected,
    ),
    with_after(
        step("write fault after fork: COW copy of a shared page", |e| {
            fault(e, A, Access::Write)
        }),
        |e| write(e, A, 0x41),
    ),
    step("exit_mmap of the child", |e| {
        e.child = None;
        Ok(0)
    }),
    with_after(
        step("write fault after the child's exit: reuse in place", |e| {
            fault(e, A + P, Access::Write)
        }),
        |e| write(e, A + P, 0x42),
    ),
    step("exit_mmap", |e| {
        e.asp = None;
        Ok(0)
    }),
];

// ---- state snapshots ---------------------------------------------------------------------

/// One page-table entry: frame, permission bits, and a hash of the page's bytes when
/// the frame is simulated memory (device memory is not readable here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pte {
    frame: u64,
    flags: u64,
    zero_page: bool,
    hash: Option<u64>,
}

/// One page of a VMA: the VMA's attributes at that page, and its PTE if any.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PageState {
    addr: usize,
    vm_flags: u64,
    /// File page index (`pgoff` at this page), anonymous ones included.
    pgoff: usize,
    name: Option<String>,
    file_id: Option<usize>,
    pte: Option<Pte>,
}

/// Everything observable about an address space, read without faulting anything in.
#[derive(Debug, Clone)]
struct Snap {
    maps: String,
    vmas: Vec<VmaQuery>,
    pages: Vec<PageState>,
    /// Leaves (in 4 KiB pages) and table pages in the user half of the page tables.
    leaves: u64,
    tables: u64,
    frames: u64,
    map_count: usize,
    live_vmas: usize,
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

const FLAG_MASK: u64 = !(PageTableFlags::ACCESSED.bits() | PageTableFlags::DIRTY.bits());

fn snapshot(e: &Env) -> Snap {
    let asp = e.asp();
    let a = e.alloc;
    let zero = zero_page(a).unwrap();
    let mut vmas = Vec::new();
    let mut pages = Vec::new();
    let mut at = 0;
    while let Some(mut q) = asp.query_vma(at, PROCMAP_QUERY_COVERING_OR_NEXT_VMA) {
        at = q.end;
        // Whether a fault attached an anon_vma is not a visible state (Linux keeps one
        // that anon_vma_prepare attached before the page allocation failed).
        q.anon_vma_id = None;
        for (i, addr) in (q.start..q.end).step_by(P).enumerate() {
            let pte = asp.translate(addr).map(|t| {
                let hash = a.meta(t.frame).map(|_| {
                    // SAFETY: `t.phys` is this address's 4 KiB page inside a simulated
                    // frame (the allocator describes it) mapped by this address space,
                    // so it is allocated and stays so while we read: nothing else runs.
                    // The direct map reaches it.
                    let bytes = unsafe { std::slice::from_raw_parts(a.phys_to_virt(t.phys), P) };
                    fnv(bytes)
                });
                Pte {
                    frame: t.frame.as_u64(),
                    flags: t.flags.bits() & FLAG_MASK,
                    zero_page: t.frame == zero,
                    hash,
                }
            });
            pages.push(PageState {
                addr,
                vm_flags: q.vm_flags.bits(),
                pgoff: q.pgoff + i,
                name: q.name.clone(),
                file_id: q.file_id,
                pte,
            });
        }
        vmas.push(q);
    }
    // Leaves counted in 4 KiB pages, as `pages` counts them (a 2 MiB hugetlb leaf is
    // 512 of them).
    let (leaves, tables) = asp.with_page_tables(|pt| {
        let pages = pt.leaves().map(|l| l.size.bytes() / P as u64).sum();
        (pages, pt.count_user().1)
    });
    Snap {
        maps: asp.maps(),
        vmas,
        pages,
        leaves,
        tables,
        frames: a.allocated_frames_settled(),
        map_count: asp.map_count(),
        live_vmas: asp.live_vmas(),
    }
}

/// The snapshot without what differs between two runs of the same script (frame
/// addresses, file and inode identities), for comparing a point with the clean run.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Logical {
    /// start, end, vm_flags, pgoff, name.
    vmas: Vec<(usize, usize, u64, usize, Option<String>)>,
    pages: Vec<LogicalPage>,
}

/// A page as two runs can compare it: the VMA's attributes there, and the PTE's
/// permission bits, whether it maps the zero page, and the hash of the contents.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LogicalPage {
    addr: usize,
    vm_flags: u64,
    pgoff: usize,
    name: Option<String>,
    pte: Option<(u64, bool, Option<u64>)>,
}

fn logical(s: &Snap) -> Logical {
    Logical {
        vmas: s
            .vmas
            .iter()
            .map(|q| (q.start, q.end, q.vm_flags.bits(), q.pgoff, q.name.clone()))
            .collect(),
        pages: s
            .pages
            .iter()
            .map(|p| LogicalPage {
                addr: p.addr,
                vm_flags: p.vm_flags,
                pgoff: p.pgoff,
                name: p.name.clone(),
                pte: p.pte.map(|t| (t.flags, t.zero_page, t.hash)),
            })
            .collect(),
    }
}

/// The state after the whole script, or at the end of a point.
#[derive(Debug, Clone)]
enum State {
    Live(Snap),
    /// The address space was torn down (exit_mmap).
    Gone,
}

fn state(e: &Env) -> State {
    match e.asp {
        Some(_) => State::Live(snapshot(e)),
        None => State::Gone,
    }
}

// ---- the checks ---------------------------------------------------------------------------

/// Which allocations a sweep fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inject {
    Heap,
    Frame,
}

/// What a point found wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// The call failed with something other than ENOMEM / `FaultError::Oom`.
    WrongError,
    /// The failed call changed VMAs, PTEs or contents beyond its allowed partial effect.
    StateChanged,
    /// The failed call left frames, VMAs or anon_vmas allocated that it did not keep.
    Kept,
    /// Repeating the call with memory back failed, or gave another state than a clean run.
    RetryDiffers,
    /// The call succeeded although an allocation failed, with another state than a
    /// clean run.
    AbsorbedDiffers,
    /// Nothing failed, yet the point's run differs from the clean run (the replay is
    /// not deterministic).
    CleanDiffers,
    /// Heap, frames, VMAs or anon_vmas not back to the baseline after teardown.
    Leak,
    /// The call panicked (the point's address space is then abandoned, unchecked).
    Panic,
}

/// Points the lead is fixing on `main`: at some N of `step`'s `inject` sweep, `check`
/// fails. Keyed by step rather than by N, because N shifts whenever the allocations
/// before the failing one change.
#[derive(Debug, Clone, Copy)]
struct Known {
    step: &'static str,
    inject: Inject,
    check: Check,
}

/// Sweep points whose defect lies in code the lead is rewriting on `main` (mprotect in
/// `mm/src/mmap/mod.rs`, `mm/src/mmap/mremap.rs`, syscall lock order). Each entry must
/// still reproduce (the test fails otherwise: remove it once fixed); everything else
/// about these points is checked as for any other.
const KNOWN_LEAD: &[Known] = &[];

/// A violation found at a point, with a short description written into the shared
/// report buffer (which is preallocated, so recording one never allocates inside a
/// point's heap accounting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Violation {
    step: usize,
    inject: Inject,
    n: u64,
    check: Check,
}

/// Room for the report text; writing beyond it is cut off.
const REPORT_CAP: usize = 1 << 20;

struct Sweep {
    alloc: &'static FrameAllocator,
    /// The clean run: each step's return value and the state after it.
    reference: Vec<(Result<usize, Fail>, State)>,
    violations: Vec<Violation>,
    report: String,
}

impl Sweep {
    fn note(&mut self, v: Violation, detail: std::fmt::Arguments<'_>) {
        if self.violations.len() < self.violations.capacity() {
            self.violations.push(v);
        }
        if self.report.len() + 512 < REPORT_CAP {
            let _ = writeln!(
                self.report,
                "step {} `{}`, {:?} N={}: {:?}: {}",
                v.step, SCRIPT[v.step].name, v.inject, v.n, v.check, detail
            );
        }
        // Cap the detail so one runaway line cannot eat the buffer.
        if self.report.len() > REPORT_CAP - 512 {
            self.report.truncate(REPORT_CAP - 512);
        }
    }
}

/// Replays steps `0..k` of the script on a fresh environment.
fn prefix(alloc: &'static FrameAllocator, k: usize) -> Env {
    let mut e = Env::new(alloc);
    for s in &SCRIPT[..k] {
        (s.call)(&mut e).unwrap_or_else(|f| panic!("clean step `{}` failed: {f:?}", s.name));
        if let Some(after) = s.after {
            after(&mut e);
        }
    }
    e
}

fn arm(alloc: &FrameAllocator, inject: Inject, n: u64) {
    match inject {
        Inject::Heap => {
            SEEN.with(|s| s.set(0));
            FIRED.with(|f| f.set(false));
            COUNTDOWN.with(|c| c.set(n));
        }
        Inject::Frame => alloc.fail_nth_alloc(n),
    }
}

/// Disarms; returns (allocations counted, fired).
fn disarm(alloc: &FrameAllocator, inject: Inject) -> (u64, bool) {
    match inject {
        Inject::Heap => {
            COUNTDOWN.with(|c| c.set(0));
            (SEEN.with(Cell::get), FIRED.with(Cell::get))
        }
        Inject::Frame => {
            let r = alloc.disarm_fail_nth();
            (r.allocations, r.fired)
        }
    }
}

/// The attributes of the VMA at page `p` that two runs share (not the file identity).
fn page_vma(p: &PageState) -> (usize, u64, usize, &Option<String>) {
    (p.addr, p.vm_flags, p.pgoff, &p.name)
}

/// Compares the state after a failed call with the state before it, allowing the step's
/// partial effect; returns a description of the first difference.
fn allowed_after_failure(
    partial: Partial,
    pre: &Snap,
    post: &Snap,
    clean_post: Option<&Snap>,
) -> Result<(), String> {
    let exact_vmas = |pre: &Snap, post: &Snap| -> Result<(), String> {
        if pre.vmas != post.vmas || pre.maps != post.maps {
            return Err(format!(
                "maps before:\n{}maps after:\n{}",
                pre.maps, post.maps
            ));
        }
        Ok(())
    };
    let same_pages = |pre: &[PageState], post: &[PageState]| -> Result<(), String> {
        if pre.len() != post.len() {
            return Err(format!(
                "{} pages in VMAs before, {} after\nbefore: {:x?}\nafter: {:x?}",
                pre.len(),
                post.len(),
                pre.first().map(|p| p.addr),
                post.first().map(|p| p.addr)
            ));
        }
        for (a, b) in pre.iter().zip(post) {
            if a != b {
                return Err(format!("page {:#x}: before {a:x?}, after {b:x?}", a.addr));
            }
        }
        Ok(())
    };
    let in_range =
        |p: &PageState, start: usize, len: usize| p.addr >= start && p.addr < start + len;
    // No PTE outside a VMA, whatever the partial effect.
    let mapped = post.pages.iter().filter(|p| p.pte.is_some()).count() as u64;
    if post.leaves != mapped {
        return Err(format!(
            "{} leaves in the page tables, {mapped} pages mapped inside VMAs",
            post.leaves
        ));
    }
    match partial {
        Partial::None => {
            exact_vmas(pre, post)?;
            same_pages(&pre.pages, &post.pages)?;
        }
        Partial::Splits => same_pages(&pre.pages, &post.pages)?,
        Partial::WriteProtected => {
            exact_vmas(pre, post)?;
            let w = PageTableFlags::WRITABLE.bits();
            let unprotected: Vec<PageState> = post
                .pages
                .iter()
                .zip(&pre.pages)
                .map(|(a, b)| {
                    let mut a = a.clone();
                    if let (Some(x), Some(y)) = (a.pte.as_mut(), b.pte)
                        && x.flags | w == y.flags
                    {
                        x.flags = y.flags;
                    }
                    a
                })
                .collect();
            same_pages(&pre.pages, &unprotected)?;
        }
        Partial::Grown { start, len } => {
            let grown: Vec<PageState> = post
                .pages
                .iter()
                .filter(|p| !in_range(p, start, len) || pre.pages.iter().any(|q| q.addr == p.addr))
                .cloned()
                .collect();
            same_pages(&pre.pages, &grown)?;
            if post
                .pages
                .iter()
                .any(|p| in_range(p, start, len) && p.pte.is_some())
            {
                return Err(format!("PTE in the grown part:\n{}", post.maps));
            }
        }
        Partial::Unmapped { start, len } => {
            let outside = |s: &Snap| -> Vec<PageState> {
                s.pages
                    .iter()
                    .filter(|p| !in_range(p, start, len))
                    .cloned()
                    .collect()
            };
            same_pages(&outside(pre), &outside(post))?;
            let inside_post: Vec<_> = post
                .pages
                .iter()
                .filter(|p| in_range(p, start, len))
                .collect();
            let inside_pre: Vec<_> = pre
                .pages
                .iter()
                .filter(|p| in_range(p, start, len))
                .collect();
            if !inside_post.is_empty() && inside_post != inside_pre {
                return Err(format!(
                    "range {start:#x}+{len:#x} neither as before nor unmapped:\n{}",
                    post.maps
                ));
            }
        }
        Partial::MoveSource {
            dst, dst_len: len, ..
        } => {
            let outside = |s: &Snap| -> Vec<PageState> {
                s.pages
                    .iter()
                    .filter(|p| len == 0 || !in_range(p, dst, len))
                    .cloned()
                    .collect()
            };
            same_pages(&outside(pre), &outside(post))?;
            if post.pages.iter().any(|p| len != 0 && in_range(p, dst, len)) {
                let inside_pre: Vec<_> =
                    pre.pages.iter().filter(|p| in_range(p, dst, len)).collect();
                let inside_post: Vec<_> = post
                    .pages
                    .iter()
                    .filter(|p| in_range(p, dst, len))
                    .collect();
                if inside_pre != inside_post {
                    return Err(format!("destination half-mapped:\n{}", post.maps));
                }
            }
        }
        Partial::MultiMove { src, dst, len } => {
            let at = |s: &Snap, a: usize| s.pages.iter().find(|p| p.addr == a).cloned();
            let outside = |s: &Snap| -> Vec<PageState> {
                s.pages
                    .iter()
                    .filter(|p| !in_range(p, src, len) && !in_range(p, dst, len))
                    .cloned()
                    .collect()
            };
            same_pages(&outside(pre), &outside(post))?;
            let moved_like = |from: &PageState, to: &PageState| {
                from.vm_flags == to.vm_flags
                    && from.name == to.name
                    && from.pte.map(|t| (t.frame, t.flags, t.hash))
                        == to.pte.map(|t| (t.frame, t.flags, t.hash))
            };
            let mut moving = true;
            for a in (src..src + len).step_by(P) {
                let d = dst + (a - src);
                let (before, now, there) = (at(pre, a), at(post, a), at(post, d));
                match (before, there) {
                    // A hole between the VMAs: it moves with them, as a hole.
                    (None, None) if now.is_none() => {}
                    (Some(b), Some(t)) if moving && moved_like(&b, &t) => {
                        // Moved; the source may only have stayed as an empty VMA.
                        if now.is_some_and(|n| n.pte.is_some()) {
                            return Err(format!("page {a:#x} moved but still mapped"));
                        }
                    }
                    (b, None) => {
                        moving = false;
                        if b != now {
                            return Err(format!(
                                "page {a:#x} not moved but changed: {b:x?} -> {now:x?}"
                            ));
                        }
                    }
                    (b, t) => {
                        return Err(format!(
                            "page {a:#x} ({b:x?}) and its destination {d:#x} ({t:x?}) disagree"
                        ));
                    }
                }
            }
        }
        Partial::Prefix { start, len } => {
            let Some(clean) = clean_post else {
                return Err(String::from("no clean state to compare the prefix with"));
            };
            // Pages of the range: a prefix as in the clean run, the rest as before.
            // The VMA attributes come from the clean run's pages; the PTE bits too.
            let pick = |s: &Snap, a: usize| s.pages.iter().find(|p| p.addr == a).cloned();
            let mut changed = true;
            if pre.pages.len() != post.pages.len() {
                return Err(String::from("pages appeared or vanished"));
            }
            for (b, a) in pre.pages.iter().zip(&post.pages) {
                if b.addr != a.addr {
                    return Err(format!("page {:#x} vs {:#x}", b.addr, a.addr));
                }
                if !in_range(a, start, len) {
                    if a != b {
                        return Err(format!("page {:#x} outside the range changed", a.addr));
                    }
                    continue;
                }
                let c = pick(clean, a.addr).ok_or("page missing in the clean run")?;
                // The clean run's VMA attributes and PTE bits, this run's frame and data.
                let like_clean = page_vma(a) == page_vma(&c)
                    && match (a.pte, b.pte, c.pte) {
                        (Some(x), Some(y), Some(z)) => {
                            x.frame == y.frame && x.hash == y.hash && x.flags == z.flags
                        }
                        (None, None, _) => true,
                        _ => false,
                    };
                let like_before = a == b;
                if changed && !like_clean {
                    changed = false;
                }
                if !changed && !like_before {
                    return Err(format!(
                        "page {:#x}: neither a prefix of the change nor as before",
                        a.addr
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Runs one point: step `k` with the `n`th allocation of kind `inject` failing. Returns
/// whether the injected failure happened (false: the call made fewer than `n`
/// allocations, so the sweep of this step is complete).
fn run_point(sw: &mut Sweep, k: usize, inject: Inject, n: u64) -> bool {
    let alloc = sw.alloc;
    let s = &SCRIPT[k];
    let frames0 = alloc.allocated_frames_settled();
    let heap0 = live_heap();
    let slots0 = vma_pool_stats().slots;
    let pool0 = vma_pool_stats().live;
    let anon0 = anon_vma_live_count();
    let mut found: Vec<(Check, String)> = Vec::new();
    let fired;
    {
        let mut e = prefix(alloc, k);
        // As in Linux, where every tree store allocates its nodes: no warm node cache
        // hides the tree's allocations from the sweep.
        e.asp().shrink_caches();
        let pre = state(&e);
        let pre_anon = anon_vma_live_count();
        POINT.with(|p| p.set(Some((k, inject, n))));
        let show = std::env::var("OOM_SWEEP_WHERE").is_ok_and(|w| w == format!("{k}:{n}"));
        SHOW_WHERE.with(|w| w.set(show && inject == Inject::Heap));
        arm(alloc, inject, n);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (s.call)(&mut e)));
        let (_count, f) = disarm(alloc, inject);
        POINT.with(|p| p.set(None));
        fired = f;
        let r = match r {
            Ok(r) => r,
            Err(_) => {
                // Whatever the panic left half-done must not be torn down (it could
                // panic again): abandon the address space, and skip the leak checks.
                std::mem::forget(e);
                let v = Violation {
                    step: k,
                    inject,
                    n,
                    check: Check::Panic,
                };
                sw.note(v, format_args!("panicked (message above)"));
                return fired;
            }
        };
        let (clean_r, clean_state) = &sw.reference[k];
        match r {
            Ok(v) if !fired => {
                // The last N: nothing failed, so this is the clean run again.
                if let Some(after) = s.after {
                    after(&mut e);
                }
                let post = state(&e);
                if let Err(d) = same_as_clean(s, &Ok(v), clean_r, &post, clean_state) {
                    found.push((Check::CleanDiffers, d));
                }
            }
            Ok(v) => {
                // The failure was absorbed: the result must be the clean one.
                if let Some(after) = s.after {
                    after(&mut e);
                }
                let post = state(&e);
                if let Err(d) = same_as_clean(s, &Ok(v), clean_r, &post, clean_state) {
                    found.push((Check::AbsorbedDiffers, d));
                }
            }
            Err(err) => {
                if !fired {
                    found.push((
                        Check::WrongError,
                        format!("failed with {err:?} although no allocation failed"),
                    ));
                }
                let oom = matches!(
                    err,
                    Fail::Errno(Errno::ENOMEM) | Fail::Fault(FaultError::Oom)
                ) || (s.stack_growth && err == Fail::Fault(FaultError::MapErr));
                if !oom {
                    found.push((Check::WrongError, format!("{err:?}, not ENOMEM")));
                }
                let post = state(&e);
                if let (State::Live(pre), State::Live(post)) = (&pre, &post) {
                    let clean = match clean_state {
                        State::Live(c) => Some(c),
                        State::Gone => None,
                    };
                    if let Err(d) = allowed_after_failure(s.partial, pre, post, clean) {
                        found.push((Check::StateChanged, d));
                    }
                    // Nothing kept: frames only go down (a partial unmap frees some),
                    // every VMA allocated is in the tree, no anon_vma appeared beyond
                    // one attached by a fault.
                    let frames_ok = match s.partial {
                        Partial::Unmapped { .. } | Partial::MoveSource { .. } => {
                            post.frames <= pre.frames
                        }
                        // The VMAs moved before the failure sit at the destination with
                        // their pages, in page tables there that may be new (Linux's
                        // `remap_move` keeps them too): every other frame is as it was.
                        // Before anything moved, nothing may have changed.
                        Partial::MultiMove { .. } if post.maps != pre.maps => {
                            post.frames - post.tables == pre.frames - pre.tables
                        }
                        _ => post.frames == pre.frames,
                    };
                    if !frames_ok || post.live_vmas != post.map_count {
                        found.push((
                            Check::Kept,
                            format!(
                                "frames {} -> {}, page tables {} -> {}, VMAs allocated {} for {} in the tree",
                                pre.frames, post.frames, pre.tables, post.tables, post.live_vmas, post.map_count
                            ),
                        ));
                    }
                    let anon_now = anon_vma_live_count();
                    if anon_now > pre_anon + 1 {
                        found.push((Check::Kept, format!("anon_vmas {pre_anon} -> {anon_now}")));
                    }
                }
                // Memory is back: the same call must now succeed, as in the clean run.
                let again = match (s.partial, &post) {
                    (Partial::MultiMove { src, dst, len }, State::Live(post)) => {
                        resume_multi_move(&mut e, post, src, dst, len, clean_r)
                    }
                    _ => (s.call)(&mut e),
                };
                if let (Ok(_), Some(after)) = (again, s.after) {
                    after(&mut e);
                }
                let post = state(&e);
                if let Err(d) = same_as_clean(s, &again, clean_r, &post, clean_state) {
                    found.push((Check::RetryDiffers, d));
                }
            }
        }
    }
    // VMA slots never go back to the heap (type-stable memory, Linux's
    // SLAB_TYPESAFE_BY_RCU): ones the pool had to take during the point are not leaks.
    // Deferred frees (page-table pages and their RCU batch records) run first.
    let frames1 = alloc.allocated_frames_settled();
    let new_slots = (vma_pool_stats().slots - slots0) as i64;
    let vma_size = std::mem::size_of::<mm::vma::Vma>() as i64;
    let heap1 = live_heap();
    let heap1 = (heap1.0 - new_slots, heap1.1 - new_slots * vma_size);
    let pool1 = vma_pool_stats().live;
    let anon1 = anon_vma_live_count();
    let leak = frames1 != frames0 || pool1 != pool0 || anon1 != anon0;
    // `found` holds heap of its own once it has an entry; the point is reported then
    // anyway, so the heap comparison is only exact (and only made) while it is empty.
    if leak || (found.is_empty() && heap1 != heap0) {
        found.push((
            Check::Leak,
            format!(
                "heap blocks {} -> {}, bytes {} -> {}; frames {frames0} -> {frames1}; \
                 VMAs {pool0} -> {pool1}; anon_vmas {anon0} -> {anon1}",
                heap0.0, heap1.0, heap0.1, heap1.1
            ),
        ));
    }
    for (check, d) in found {
        let v = Violation {
            step: k,
            inject,
            n,
            check,
        };
        sw.note(v, format_args!("{d}"));
    }
    fired
}

/// The retry of a multi-VMA move that failed part-way: move what has not moved yet
/// (the VMAs from the first page without a counterpart at the destination on), and
/// report the whole call's result as the clean run would.
fn resume_multi_move(
    e: &mut Env,
    post: &Snap,
    src: usize,
    dst: usize,
    len: usize,
    clean_r: &Result<usize, Fail>,
) -> Result<usize, Fail> {
    let moved = |a: usize| post.pages.iter().any(|p| p.addr == dst + (a - src));
    let Some(first) = (src..src + len).step_by(P).find(|&a| !moved(a)) else {
        return *clean_r;
    };
    let rest = src + len - first;
    e.asp()
        .mremap(
            first,
            rest,
            rest,
            MREMAP_MAYMOVE | MREMAP_FIXED,
            dst + (first - src),
        )
        .map_err(Fail::Errno)?;
    if first == src { Ok(dst) } else { *clean_r }
}

/// Compares a call's result and the state after it with the clean run's.
fn same_as_clean(
    s: &Step,
    r: &Result<usize, Fail>,
    clean_r: &Result<usize, Fail>,
    post: &State,
    clean: &State,
) -> Result<(), String> {
    if r != clean_r {
        return Err(format!("returned {r:?}, the clean run {clean_r:?}"));
    }
    match (post, clean) {
        (State::Gone, State::Gone) => Ok(()),
        (State::Live(p), State::Live(c)) => {
            let (mut lp, lc) = (logical(p), logical(c));
            let kept_source = match s.partial {
                Partial::MoveSource { src, src_len, .. } => Some((src, src_len)),
                Partial::MultiMove { src, len, .. } => Some((src, len)),
                _ => None,
            };
            // Absorbed: the source VMA may have stayed, empty and unsplit, where the clean
            // run unmapped it (see `Partial::MoveSource`): compare page by page, without
            // those pages.
            let mut page_level = false;
            if let (Some((src, src_len)), Ok(_)) = (kept_source, r) {
                let kept = |a: usize| a >= src && a < src + src_len;
                let clean_has = |a: usize| lc.pages.iter().any(|q| q.addr == a);
                let stale = |q: &LogicalPage| kept(q.addr) && !clean_has(q.addr);
                if lp.pages.iter().any(|q| stale(q) && q.pte.is_some()) {
                    return Err(format!("PTEs left at the moved-from range:\n{}", p.maps));
                }
                page_level = lp.pages.iter().any(stale);
                lp.pages.retain(|q| !stale(q));
            }
            if !page_level && lp.vmas != lc.vmas {
                return Err(format!("maps:\n{}clean run:\n{}", p.maps, c.maps));
            }
            if lp.pages.len() != lc.pages.len() {
                return Err(format!("pages:\n{}clean run:\n{}", p.maps, c.maps));
            }
            for (a, b) in lp.pages.iter().zip(&lc.pages) {
                // MAP_POPULATE may leave pages unpopulated when a fault inside it fails.
                if s.populate && a.pte.is_none() && a.addr == b.addr {
                    continue;
                }
                if a != b {
                    return Err(format!("page {:#x}: {a:x?}, clean run {b:x?}", a.addr));
                }
            }
            Ok(())
        }
        _ => Err(String::from("address space torn down in one run only")),
    }
}

fn sweep(inject: Inject) -> (u64, Sweep) {
    let alloc = simulated(32 << 20);
    zero_page(alloc).unwrap();
    // The hugetlb steps' pool (Linux: nr_hugepages), filled before any sweep point.
    mm::hugetlb::hstate(alloc, mm::hugetlb::HugeSize::Size2M)
        .unwrap()
        .set_nr_hugepages(2);
    let mut reference = Vec::new();
    let mut e = Env::new(alloc);
    for s in SCRIPT {
        let r = (s.call)(&mut e);
        assert!(r.is_ok(), "clean step `{}` failed: {r:?}", s.name);
        if let Some(after) = s.after {
            after(&mut e);
        }
        let st = state(&e);
        if let (Some(_), State::Live(s1)) = (std::env::var_os("OOM_SWEEP_TRACE"), &st) {
            println!("after `{}` -> {r:x?}:\n{}", s.name, s1.maps);
        }
        reference.push((r, st));
    }
    drop(e);
    let mut sw = Sweep {
        alloc,
        reference,
        violations: Vec::with_capacity(4096),
        report: String::with_capacity(REPORT_CAP),
    };
    let mut points = 0;
    for (k, s) in SCRIPT.iter().enumerate() {
        let mut n = 1;
        while run_point(&mut sw, k, inject, n) {
            points += 1;
            n += 1;
            assert!(
                n < 100_000,
                "step `{}` never ran out of allocations",
                s.name
            );
        }
        if std::env::var_os("OOM_SWEEP_TRACE").is_some() {
            println!("{inject:?} sweep: step {k} `{}`: {} points", s.name, n - 1);
        }
    }
    (points, sw)
}

/// Checks the violations against [`KNOWN_LEAD`]; returns what is unexpected, and known
/// entries that no longer reproduce.
fn judge(inject: Inject, sw: &Sweep) -> String {
    let mut msg = String::new();
    let matches = |k: &Known, v: &Violation| {
        k.inject == v.inject && k.step == SCRIPT[v.step].name && k.check == v.check
    };
    for v in &sw.violations {
        if !KNOWN_LEAD.iter().any(|k| matches(k, v)) {
            let _ = writeln!(msg, "unexpected: {v:?} (`{}`)", SCRIPT[v.step].name);
        }
    }
    for k in KNOWN_LEAD.iter().filter(|k| k.inject == inject) {
        let ns: Vec<u64> = sw
            .violations
            .iter()
            .filter(|v| matches(k, v))
            .map(|v| v.n)
            .collect();
        if ns.is_empty() {
            let _ = writeln!(msg, "known point no longer reproduces, remove it: {k:?}");
        } else {
            // Visible with --nocapture: where the known defects are today.
            println!("known (lead): {k:?} at N = {ns:?}");
        }
    }
    if !msg.is_empty() {
        let _ = write!(msg, "--- details ---\n{}", sw.report);
    }
    msg
}

/// Heap and frame sweeps share the global VMA pool and anon_vma counters: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn oom_sweep() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    std::alloc::set_alloc_error_hook(alloc_error_hook);
    let (heap, hsw) = sweep(Inject::Heap);
    let (frame, fsw) = sweep(Inject::Frame);
    // Straight to stdout, past libtest's capture: the figures belong in every run's log.
    let _ = writeln!(
        std::io::stdout().lock(),
        "oom sweep: {} calls, {heap} heap points, {frame} frame points",
        SCRIPT.len()
    );
    let msg = judge(Inject::Heap, &hsw) + &judge(Inject::Frame, &fsw);
    assert!(msg.is_empty(), "{msg}");
}

/// The injector itself: exactly the Nth allocation fails (growth by realloc included),
/// the others succeed, and the live-heap accounting balances.
#[test]
fn heap_injector_fails_exactly_the_nth() {
    let (blocks0, bytes0) = live_heap();
    COUNTDOWN.with(|c| c.set(0));
    SEEN.with(|s| s.set(0));
    FIRED.with(|f| f.set(false));
    COUNTDOWN.with(|c| c.set(3));
    let mut v: Vec<u64> = Vec::new();
    let first = v.try_reserve_exact(1); // 1st: alloc
    let second = v.try_reserve_exact(8); // 2nd: realloc
    let third = v.try_reserve_exact(64); // 3rd: realloc, fails
    let fourth = v.try_reserve_exact(64); // 4th: realloc, succeeds
    COUNTDOWN.with(|c| c.set(0));
    assert!(first.is_ok() && second.is_ok() && fourth.is_ok());
    assert!(third.is_err());
    assert!(FIRED.with(Cell::get));
    assert_eq!(
        SEEN.with(Cell::get),
        3,
        "counting stops once the failure fired"
    );
    assert!(v.capacity() >= 64);
    drop(v);
    assert_eq!(live_heap(), (blocks0, bytes0));
}
