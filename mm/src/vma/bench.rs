//! Benchmark-friendly entry points for the kernel's `--bench` mode.
//!
//! Layout built by [`build_mm`]: VMA `i` is `[addr(i), addr(i) + 4 pages)` with a
//! one-page hole after it, so no two VMAs merge and the tree holds exactly `n` entries.

use super::area::{PAGE_SHIFT, PAGE_SIZE, VmFlags, VmaRef};
use super::space::Mm;
use crate::errno::Errno;

/// First VMA address of a bench layout.
pub const BENCH_BASE: usize = 0x1000_0000;
/// Pages per bench VMA.
pub const BENCH_VMA_PAGES: usize = 4;
/// Flags of bench VMAs.
pub const BENCH_FLAGS: VmFlags = VmFlags::RW_DEFAULT;

/// Start address of bench VMA `i`.
pub const fn addr(i: usize) -> usize {
    BENCH_BASE + i * (BENCH_VMA_PAGES + 1) * PAGE_SIZE
}

/// An address space with `n` anonymous VMAs (see the module doc). Its
/// `max_map_count` is raised to `n + 16` when needed so that [`split_remerge`] still
/// works in a 65,530-VMA tree (Linux would refuse the split at the limit).
pub fn build_mm(n: usize) -> Result<Mm, Errno> {
    let mm = Mm::new();
    {
        let mut g = mm.write_lock();
        let limit = g.max_map_count().max(n + 16);
        g.set_max_map_count(limit);
        for i in 0..n {
            let a = addr(i);
            g.map_anon(
                a,
                a + BENCH_VMA_PAGES * PAGE_SIZE,
                a >> PAGE_SHIFT,
                BENCH_FLAGS,
            )?;
        }
    }
    Ok(mm)
}

/// `find_vma(addr)` under the mmap read lock (Linux's classic lookup).
pub fn find(mm: &Mm, addr: usize) -> Option<VmaRef> {
    mm.read_lock().find_vma(addr)
}

/// Lock-free lookup: `lock_vma_under_rcu(addr)` then `vma_end_read` (the fault path).
pub fn find_rcu(mm: &Mm, addr: usize) -> Option<VmaRef> {
    mm.lock_vma_under_rcu(addr).map(|g| g.vma())
}

/// One mprotect-style split + re-merge pair on bench VMA `i`: change the flags of its
/// second page (split into three VMAs), then change them back (merge into one).
/// Leaves the layout as it found it.
pub fn split_remerge(mm: &Mm, i: usize) -> Result<(), Errno> {
    let a = addr(i);
    let (s, e) = (a + PAGE_SIZE, a + 2 * PAGE_SIZE);
    let ro = BENCH_FLAGS - VmFlags::WRITE;
    let mut g = mm.write_lock();
    let vma = g.vma_lookup(s).ok_or(Errno::EFAULT)?;
    let prev = if vma.start() == s {
        g.vma_prev_of(s)
    } else {
        Some(vma)
    };
    let mid = g.vma_modify_flags(prev, vma, s, e, &mut { ro })?;
    g.vma_set_flags(mid, ro)?;
    drop(g);
    let mut g = mm.write_lock();
    let prev = g.vma_prev_of(s);
    let merged = g.vma_modify_flags(prev, mid, s, e, &mut { BENCH_FLAGS })?;
    g.vma_set_flags(merged, BENCH_FLAGS)?;
    Ok(())
}
