//! The seeded syscall fuzzer: random and adversarial calls of the syscall-shaped API
//! with [`AddressSpace::validate_mm`] after every call, shared by the host
//! (`mm/tests/fuzz.rs`) and the kernel (`kernel/tests/fuzz.rs`).
//!
//! Linux has no in-tree counterpart; the closest are syzkaller's mm descriptions
//! (random `mmap`/`munmap`/`mprotect`/`mremap`/`madvise` with boundary values) and
//! `CONFIG_DEBUG_VM_MAPLE_TREE`'s `validate_mm()` after every VMA change.
//!
//! # What a seed does
//!
//! A seed drives a SplitMix64 generator. Each seed gets two fresh address spaces from
//! the [`Harness`] and a small set of files sharing inodes (ramfs read-write,
//! read-only, write-only and `noexec` opens of one inode, a second ramfs inode with a
//! partial last page, a stacking file over the first, a secretmem file); every fourth
//! seed lowers `max_map_count` to 16. Then it makes [`Config::calls`] calls, each one
//! of: `mmap` (anonymous private/shared, file private/shared/validate, every known
//! flag bit, unknown bits, MAP_FIXED/NOREPLACE, hints), `munmap`, `mprotect`
//! (PROT_GROWSDOWN/UP, PROT_SEM, unknown bits), `mremap` (every flag combination and
//! unknown bits), `madvise` (valid, unsupported and invalid advice), `handle_fault`
//! (read/write/exec), `copy_to_user`/`copy_from_user`, a user byte load or store
//! through the harness (real page faults in the kernel), the maps text and
//! PROCMAP_QUERY, `fork` of a space and the exit of one.
//!
//! Forks: about 3 calls in 100 fork a random live space (its child joins the set as
//! the last space; up to four live at once) and 2 in 100 end one (its process
//! exits: the space is dropped, parent or child, in either order) while more than two
//! are live; every other call goes to a random live space, so parents and children
//! both keep mapping, writing and unmapping around pages they share copy-on-write.
//!
//! Arguments mix addresses at and around live VMAs' boundaries, a few shared zones,
//! 0, `mmap_min_addr` ± a page, `TASK_SIZE` ± a page, 2^47, `usize::MAX` and its
//! page-aligned neighbours, random and unaligned values; lengths 0, 1, a page, page
//! multiples, distances to VMA boundaries, `TASK_SIZE`-relative, huge and
//! `usize::MAX`-ish values; file offsets that are unaligned, beyond the file, or
//! overflowing.
//!
//! # What is checked
//!
//! - After every call: [`AddressSpace::validate_mm`] on every live space and
//!   [`validate_i_mmap`] on every inode against all of them.
//! - Each call's result: errors only from the errno set Linux documents for the call;
//!   where the arguments alone decide the result in Linux, exactly that result
//!   ([`linux_argument_result`]); a fault's outcome as the VMAs dictate (no VMA:
//!   SEGV_MAPERR, unless a stack can grow; access not allowed: SEGV_ACCERR; else
//!   resolved or SIGBUS/OOM); successful calls leave what they promise (an mmap'd range is mapped, at the fixed
//!   address if one was asked for; an munmap'd range is empty; an mprotect'd range has
//!   the new protection; a resolved fault leaves a PTE allowing the access; bytes
//!   copied in read back unchanged; the maps text and PROCMAP_QUERY agree with the
//!   VMAs).
//! - A fork: the child's VMAs are the parent's without the `VM_DONTCOPY` ones and with
//!   `VM_LOCKED_MASK` and the userfaultfd flags cleared; the child reads the bytes the
//!   parent reads in up to eight pages the parent has present (zero in
//!   `VM_WIPEONFORK` VMAs); a failed fork (ENOMEM only) leaves the parent's VMAs as
//!   they were.
//! - A private write (user store or `copy_to_user` into a VMA without `VM_MAYSHARE`):
//!   every other live space reads the same byte at that address after it as before (a
//!   page shared copy-on-write was copied, not written through).
//! - At the end of a seed: after the spaces still live are dropped, no file's `i_mmap` holds a
//!   VMA; after the files are dropped too, the frames in use (and, when asked, the
//!   VMAs and anon_vmas allocated) are back to where they were before the seed.
//!
//! Any failure is returned as a [`Failure`] naming the seed, the call and the last
//! calls made; a panic inside the memory manager propagates (the host runner reports
//! the call it happened in through its [`Observer`]). [`Stats`] counts the calls,
//! their results by errno and fault kind, and prints as one `fuzz:` line.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use super::{Harness, Space};
use crate::errno::Errno;
use crate::file::{self, File, Inode, OpenMode};
use crate::mmap::*;
use crate::paging::PageTableFlags;
use crate::vma::VmFlags;

const P: usize = 4096;

/// How many calls of history a [`Failure`] carries.
const HISTORY: usize = 24;

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Seeds to run, one after the other.
    pub seeds: Range<u64>,
    /// Calls per seed.
    pub calls: usize,
    /// Also require the global VMA and anon_vma counts back to their baseline after
    /// each seed (only meaningful when nothing else allocates VMAs meanwhile).
    pub check_global_counts: bool,
    /// Do not make calls that hit defects known to be under repair elsewhere; they
    /// are counted in [`Stats::skipped`] instead. See [`known_defect`].
    pub skip_known_defects: bool,
}

/// One call the fuzzer makes (printed in failures and traces). The fields are the
/// call's arguments, named as in the syscall's man page, plus `space`: which of the
/// fuzzer's address spaces it goes to.
#[allow(missing_docs)]
#[derive(Clone, Debug)]
pub enum Op {
    /// `mmap(addr, len, prot, flags, file, off)`; `file` indexes the seed's files.
    Mmap {
        space: usize,
        addr: usize,
        len: usize,
        prot: u32,
        flags: u32,
        file: Option<usize>,
        off: u64,
    },
    /// `munmap(addr, len)`.
    Munmap {
        space: usize,
        addr: usize,
        len: usize,
    },
    /// `mprotect(addr, len, prot)`.
    Mprotect {
        space: usize,
        addr: usize,
        len: usize,
        prot: u32,
    },
    /// `mremap(addr, old_len, new_len, flags, new_addr)`.
    Mremap {
        space: usize,
        addr: usize,
        old_len: usize,
        new_len: usize,
        flags: u32,
        new_addr: usize,
    },
    /// `madvise(addr, len, advice)`.
    Madvise {
        space: usize,
        addr: usize,
        len: usize,
        advice: u32,
    },
    /// `mlock2(addr, len, flags)`, or `munlock(addr, len)` when `unlock`.
    Mlock {
        space: usize,
        addr: usize,
        len: usize,
        flags: u32,
        unlock: bool,
    },
    /// `handle_fault(addr, access)`.
    Fault {
        space: usize,
        addr: usize,
        access: Access,
    },
    /// `copy_to_user(addr, len bytes)` of a pattern starting at `fill`, then, if it
    /// worked and stayed in one page, `copy_from_user` of the same bytes.
    CopyTo {
        space: usize,
        addr: usize,
        len: usize,
        fill: u8,
    },
    /// `copy_from_user(addr, len bytes)`.
    CopyFrom {
        space: usize,
        addr: usize,
        len: usize,
    },
    /// One user byte load (or store of `fill`, then a load of it back) through the
    /// harness: a real page fault in the kernel. `addr` is taken modulo `TASK_SIZE`.
    Touch {
        space: usize,
        addr: usize,
        write: bool,
        fill: u8,
    },
    /// The `/proc/PID/maps` text.
    Maps { space: usize },
    /// PROCMAP_QUERY at `addr` with `flags`.
    Query {
        space: usize,
        addr: usize,
        flags: u64,
    },
    /// Set `vm.max_map_count` of the space (seed set-up, not counted as a call).
    SetMaxMapCount { space: usize, n: usize },
    /// `fork()` of the space: the child is added as the last space (Linux: `dup_mm`).
    Fork { space: usize },
    /// Exit of the space's process: the space is dropped (Linux: `exit_mmap`) and the
    /// ones after it move down one index.
    Exit { space: usize },
}

impl Op {
    /// The address space the call is made on.
    pub fn space(&self) -> usize {
        match *self {
            Op::Mmap { space, .. }
            | Op::Munmap { space, .. }
            | Op::Mprotect { space, .. }
            | Op::Mremap { space, .. }
            | Op::Madvise { space, .. }
            | Op::Mlock { space, .. }
            | Op::Fault { space, .. }
            | Op::CopyTo { space, .. }
            | Op::CopyFrom { space, .. }
            | Op::Touch { space, .. }
            | Op::Maps { space }
            | Op::Query { space, .. }
            | Op::SetMaxMapCount { space, .. }
            | Op::Fork { space }
            | Op::Exit { space } => space,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Op::Mmap { .. } => "mmap",
            Op::Munmap { .. } => "munmap",
            Op::Mprotect { .. } => "mprotect",
            Op::Mremap { .. } => "mremap",
            Op::Madvise { .. } => "madvise",
            Op::Mlock { unlock: false, .. } => "mlock2",
            Op::Mlock { unlock: true, .. } => "munlock",
            Op::Fault { .. } => "fault",
            Op::CopyTo { .. } => "copy_to_user",
            Op::CopyFrom { .. } => "copy_from_user",
            Op::Touch { .. } => "touch",
            Op::Maps { .. } => "maps",
            Op::Query { .. } => "query",
            Op::SetMaxMapCount { .. } => "set_max_map_count",
            Op::Fork { .. } => "fork",
            Op::Exit { .. } => "exit",
        }
    }
}

/// Called before each call with (seed, call index, the call): a runner can trace or
/// remember it, to name the call a panic happened in.
pub type Observer<'a> = &'a mut dyn FnMut(u64, usize, &Op);

/// Counts of one run, printed as one line (see [`fmt::Display`]).
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Seeds run.
    pub seeds: Range<u64>,
    /// Calls made.
    pub calls: u64,
    /// Calls that succeeded.
    pub ok: u64,
    /// Failed syscall-shaped calls by errno, in first-seen order.
    pub errnos: Vec<(Errno, u64)>,
    /// Unresolved faults by kind: SEGV_MAPERR, SEGV_ACCERR, SIGBUS, OOM (from
    /// `handle_fault` and the user copies), then user byte accesses that faulted.
    pub faults: [u64; 5],
    /// Calls per kind, in first-seen order.
    pub per_op: Vec<(&'static str, u64)>,
    /// Calls not made because they would hit a defect under repair, by defect.
    pub skipped: Vec<(&'static str, u64)>,
    /// Pages a child read back right after its fork, compared with the parent's.
    pub fork_pages_compared: u64,
    /// Private writes after which every other live space was checked unchanged at
    /// the written address (copy-on-write isolation).
    pub isolation_checks: u64,
    /// Most address spaces live at once.
    pub max_spaces: usize,
}

fn bump<K: PartialEq>(v: &mut Vec<(K, u64)>, k: K) {
    match v.iter_mut().find(|(x, _)| *x == k) {
        Some((_, n)) => *n += 1,
        None => v.push((k, 1)),
    }
}

impl Stats {
    fn errno(&mut self, e: Errno) {
        bump(&mut self.errnos, e);
    }
    fn fault(&mut self, e: FaultError) {
        let i = match e {
            FaultError::MapErr => 0,
            FaultError::AccErr => 1,
            FaultError::Bus => 2,
            FaultError::Oom => 3,
        };
        self.faults[i] += 1;
    }
    /// Calls that failed (errno or unresolved fault).
    pub fn errors(&self) -> u64 {
        self.errnos.iter().map(|e| e.1).sum::<u64>() + self.faults.iter().sum::<u64>()
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fuzz: seeds {}..{}, {} calls, ok {}",
            self.seeds.start, self.seeds.end, self.calls, self.ok
        )?;
        let mut errnos = self.errnos.clone();
        errnos.sort_by_key(|e| core::cmp::Reverse(e.1));
        for (e, n) in errnos {
            write!(f, ", {} {n}", e.name())?;
        }
        for (name, n) in ["SEGV_MAPERR", "SEGV_ACCERR", "SIGBUS", "OOM", "touch-fault"]
            .iter()
            .zip(self.faults)
        {
            if n != 0 {
                write!(f, ", {name} {n}")?;
            }
        }
        write!(f, " (calls:")?;
        for (name, n) in &self.per_op {
            write!(f, " {name} {n}")?;
        }
        write!(f, ")")?;
        write!(
            f,
            "; fork: {} pages compared, {} isolation checks, up to {} spaces",
            self.fork_pages_compared, self.isolation_checks, self.max_spaces
        )?;
        if !self.skipped.is_empty() {
            write!(f, "; skipped, known defects:")?;
            for (name, n) in &self.skipped {
                write!(f, " {name} {n}")?;
            }
        }
        Ok(())
    }
}

/// A broken invariant or a wrong result.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// Index of the call after which the check failed (`calls` for the end-of-seed
    /// checks).
    pub call: usize,
    /// What is wrong.
    pub what: String,
    /// The last calls made, oldest first, with their results.
    pub history: Vec<String>,
    /// How the seed's address spaces were made: what [`replay`] takes, with `ops`.
    pub setup: Setup,
    /// Every call of the seed up to the failing one, set-up included: what
    /// [`replay`] takes to reproduce the failure.
    pub ops: Vec<Op>,
}

/// How a seed's address spaces are made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Setup {
    /// Small `RLIMIT_AS` (256 MiB), `RLIMIT_DATA` (64 MiB) and `RLIMIT_STACK` (1 MiB),
    /// so that `may_expand_vm` and stack growth refuse now and then.
    pub limited: bool,
}

impl Setup {
    /// The set-up of `seed`: every fourth seed (from 1) is limited.
    pub fn of_seed(seed: u64) -> Setup {
        Setup {
            limited: seed % 4 == 1,
        }
    }

    fn layout(self) -> MmLayout {
        let mut l = MmLayout::default();
        if self.limited {
            l.as_limit = 256 << 20;
            l.data_limit = 64 << 20;
            l.stack_limit = 1 << 20;
        }
        l
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "fuzz: seed {} call {}: {}\nlast calls (oldest first):",
            self.seed, self.call, self.what
        )?;
        for h in &self.history {
            writeln!(f, "  {h}")?;
        }
        Ok(())
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, well-mixed deterministic generator.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x6a09_e667_f3bc_c909)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    fn usize_below(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }
    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.usize_below(xs.len())]
    }
}

/// The files of one seed: several opens of one ramfs inode, a second inode, a
/// stacking file, a secretmem file, and a hugetlbfs file (indices
/// [`HUGETLBFS_FILES`]) with a pool of [`FUZZ_HUGEPAGES`] 2 MiB pages for the seed.
struct Files {
    files: Vec<Arc<File>>,
    inodes: Vec<Arc<Inode>>,
    pool: Option<&'static crate::hugetlb::Hstate>,
}

/// The indices of the hugetlbfs files in a seed's file list.
const HUGETLBFS_FILES: Range<usize> = 7..9;
/// The 2 MiB pool each seed runs with (small: reservations and SIGBUS get exercised).
const FUZZ_HUGEPAGES: usize = 2;

impl Files {
    fn new(h: &dyn Harness) -> Self {
        let a = h.allocator();
        let rw = file::ramfs_file(a, "/fuzz/a", 16 * P, OpenMode::RDWR);
        let other = file::ramfs_file(a, "/fuzz/b", 4 * P + 100, OpenMode::RDONLY);
        let secret = file::secretmem_file(a, 8 * P);
        let huge = file::hugetlbfs::hugetlbfs_file(
            a,
            crate::hugetlb::HugeSize::Size2M,
            8 << 20,
            "/fuzz/huge",
            OpenMode::RDWR,
        )
        .expect("hugetlbfs fixture: out of memory");
        let pool = crate::hugetlb::hstate(a, crate::hugetlb::HugeSize::Size2M).ok();
        if let Some(p) = pool {
            p.set_nr_hugepages(FUZZ_HUGEPAGES);
        }
        let files = vec![
            rw.clone(),
            rw.reopen(OpenMode::RDONLY, false),
            rw.reopen(OpenMode::WRONLY, false),
            rw.reopen(OpenMode::RDWR, true),
            other.clone(),
            file::stacking_file(&rw, "/fuzz/overlay/a"),
            secret.clone(),
            huge.clone(),
            huge.reopen(OpenMode::RDONLY, false),
        ];
        let inodes = vec![
            rw.inode().clone(),
            other.inode().clone(),
            secret.inode().clone(),
            huge.inode().clone(),
        ];
        Files {
            files,
            inodes,
            pool,
        }
    }
}

impl Drop for Files {
    /// The files go first (their page caches give the huge pages back), then the pool.
    fn drop(&mut self) {
        self.files.clear();
        self.inodes.clear();
        if let Some(p) = self.pool {
            p.set_nr_hugepages(0);
        }
    }
}

/// Is this call one that hits a defect known to be under repair on `main`? Returns
/// the defect's name. Only consulted with [`Config::skip_known_defects`].
pub fn known_defect(_op: &Op) -> Option<&'static str> {
    // None at present: the last one (a DONTUNMAP pure move whose copy merged into its
    // source, found again by the walk) is fixed and has its regression case
    // (`regress::dontunmap_copy_merged_into_its_source_is_not_moved_again`).
    None
}

/// The errnos Linux documents for each call (man-pages 6.x, plus what the model
/// returns for the same conditions): anything else is a wrong errno leaking out.
fn errno_allowed(op: &Op, e: Errno) -> bool {
    use Errno::*;
    let allowed: &[Errno] = match op {
        Op::Mmap { .. } => &[
            EINVAL, ENOMEM, EOVERFLOW, EPERM, EEXIST, EACCES, EOPNOTSUPP, ENODEV, EAGAIN,
        ],
        Op::Munmap { .. } => &[EINVAL, ENOMEM, EPERM],
        Op::Mprotect { .. } => &[EINVAL, ENOMEM, EACCES, EPERM],
        Op::Mremap { .. } => &[EINVAL, ENOMEM, EFAULT, EPERM, EAGAIN],
        Op::Madvise { .. } => &[EINVAL, ENOMEM, EPERM, EAGAIN],
        // mlock2(2): EAGAIN is a population that ran out of memory.
        Op::Mlock { .. } => &[EINVAL, ENOMEM, EAGAIN],
        // fork(2): ENOMEM (and EAGAIN/ENOSYS/ERESTARTNOINTR of the process layer,
        // which does not exist here).
        Op::Fork { .. } => &[ENOMEM],
        _ => &[],
    };
    allowed.contains(&e)
}

/// What Linux returns for `op` from its arguments alone, when they decide it: the
/// argument checks at the top of each syscall, in Linux's order (`sys_mmap` +
/// `ksys_mmap_pgoff` + the start of `do_mmap`; `__vm_munmap`; `do_mprotect_pkey`;
/// `is_valid_madvise` / `madvise_should_skip`; `check_mremap_params` up to the
/// overlap test). `None` when the address space decides, or where the model
/// deliberately differs (no file descriptors, so no EBADF; no hugetlb pool, so
/// anonymous MAP_HUGETLB; advice Linux has and the model does not implement).
pub fn linux_argument_result(op: &Op, task_size: usize) -> Option<Result<(), Errno>> {
    let ts = task_size;
    let einval = Some(Err(Errno::EINVAL));
    match *op {
        Op::Mmap {
            len,
            flags,
            file,
            off,
            ..
        } => {
            if off % P as u64 != 0 {
                return einval;
            }
            if flags & MAP_ANONYMOUS == 0 {
                // A hugetlbfs file: its page size rounds the length (the model decides).
                if HUGETLBFS_FILES.contains(&file?) {
                    return None;
                }
                // ksys_mmap_pgoff: MAP_HUGETLB needs a hugetlbfs file.
                if flags & MAP_HUGETLB != 0 {
                    return einval;
                }
            } else if flags & MAP_HUGETLB != 0 {
                return None;
            }
            if len == 0 {
                return einval;
            }
            let Some(alen) = align_up(len) else {
                return Some(Err(Errno::ENOMEM));
            };
            if ((off / P as u64) as usize).checked_add(alen / P).is_none() {
                return Some(Err(Errno::EOVERFLOW));
            }
            None
        }
        Op::Munmap { addr, len, .. } => {
            if addr % P != 0 || addr > ts || len > ts - addr || len == 0 {
                return einval;
            }
            None
        }
        Op::Mprotect {
            addr, len, prot, ..
        } => {
            let grows = PROT_GROWSDOWN | PROT_GROWSUP;
            if prot & grows == grows || addr % P != 0 {
                return einval;
            }
            if len == 0 {
                return Some(Ok(()));
            }
            if align_up(len).and_then(|l| addr.checked_add(l)).is_none() {
                return Some(Err(Errno::ENOMEM));
            }
            if prot & !grows & !(PROT_READ | PROT_WRITE | PROT_EXEC | PROT_SEM) != 0 {
                return einval;
            }
            None
        }
        Op::Mlock { flags, unlock, .. } => {
            if !unlock && flags & !MLOCK_ONFAULT != 0 {
                return einval;
            }
            None
        }
        Op::Madvise {
            addr, len, advice, ..
        } => {
            let linux_valid = matches!(advice, 0..=4 | 8..=25 | 100..=103);
            if !linux_valid {
                return einval;
            }
            let modelled = matches!(
                advice,
                MADV_NORMAL
                    | MADV_DONTNEED
                    | MADV_DONTFORK
                    | MADV_DOFORK
                    | MADV_WIPEONFORK
                    | MADV_KEEPONFORK
            );
            if !modelled {
                return None;
            }
            if addr % P != 0 {
                return einval;
            }
            let alen = align_up(len).unwrap_or(0);
            if len != 0 && alen == 0 {
                return einval;
            }
            match addr.checked_add(alen) {
                None => einval,
                Some(end) if end == addr => Some(Ok(())),
                Some(_) => None,
            }
        }
        Op::Mremap {
            addr,
            old_len,
            new_len,
            flags,
            new_addr,
            ..
        } => {
            if flags & !(MREMAP_FIXED | MREMAP_MAYMOVE | MREMAP_DONTUNMAP) != 0 || addr % P != 0 {
                return einval;
            }
            // PAGE_ALIGN wraps in Linux: a length within a page of the top is 0.
            let old = align_up(old_len).unwrap_or(0);
            let new = align_up(new_len).unwrap_or(0);
            if new == 0 || new > ts {
                return einval;
            }
            if flags & (MREMAP_FIXED | MREMAP_DONTUNMAP) != 0
                && (new_addr > ts - new
                    || new_addr % P != 0
                    || flags & MREMAP_MAYMOVE == 0
                    || (flags & MREMAP_DONTUNMAP != 0 && old != new))
            {
                return einval;
            }
            None
        }
        _ => None,
    }
}

fn align_up(x: usize) -> Option<usize> {
    x.checked_add(P - 1).map(|v| v & !(P - 1))
}

/// The argument generator: state-aware (it looks at the live VMAs) and adversarial.
/// A `sane` call (about half of them) has plausible arguments (page-aligned addresses
/// at VMA boundaries or in a shared zone, a few pages, valid flags), so that calls
/// succeed often enough to build up VMAs and page tables for the adversarial ones.
struct Gen<'a> {
    rng: &'a mut Rng,
    layout: MmLayout,
    vmas: Vec<(usize, usize)>,
    nfiles: usize,
    sane: bool,
}

/// Base of the zone most sane calls aim at, so that they meet.
const ZONE: usize = 0x4000_0000;

/// Most address spaces a seed keeps live at once (its two first ones and their
/// descendants): a fork is only made below this, an exit only above two.
const MAX_SPACES: usize = 4;
/// Percent of calls that fork a space (an exit instead when [`MAX_SPACES`] are live).
const FORK_PERCENT: u64 = 3;
/// Percent of calls that end a space (when more than two are live).
const EXIT_PERCENT: u64 = 2;
/// Pages of a fork's parent (present in its page tables) its child reads back.
const FORK_COMPARE_PAGES: usize = 8;

impl Gen<'_> {
    fn boundary(&mut self) -> Option<usize> {
        if self.vmas.is_empty() {
            return None;
        }
        let (s, e) = self.vmas[self.rng.usize_below(self.vmas.len())];
        let base = if self.rng.chance(50) { s } else { e };
        let delta = self.rng.pick(&[0isize, 0, 0, -1, 1, -2, 2, -3, 4]) * P as isize;
        Some(base.wrapping_add_signed(delta))
    }

    fn addr(&mut self) -> usize {
        if self.sane {
            return match self.boundary() {
                Some(b) if self.rng.chance(60) => b,
                _ => ZONE + self.rng.usize_below(64) * P,
            };
        }
        let l = self.layout;
        let ts = l.task_size;
        let max_page = usize::MAX & !(P - 1);
        let a = match self.rng.below(100) {
            0..30 => self
                .boundary()
                .unwrap_or_else(|| 0x4000_0000 + self.rng.usize_below(64) * P),
            30..45 => 0x4000_0000 + self.rng.usize_below(64) * P,
            45..52 => l.mmap_base - self.rng.usize_below(64) * P,
            52..77 => self.rng.pick(&[
                0,
                1,
                P,
                l.mmap_min_addr - P,
                l.mmap_min_addr,
                l.mmap_min_addr + P,
                ts - 2 * P,
                ts - P,
                ts,
                ts + P,
                1 << 47,
                (1 << 47) - 1,
                usize::MAX,
                max_page,
                max_page - P,
                1 << 63,
                (1 << 63) - P,
                l.mmap_base,
                l.unmapped_base,
                ts - (1 << 30),
            ]),
            77..87 => (self.rng.next_u64() as usize % (1 << 47)) & !(P - 1),
            87..90 => self.rng.next_u64() as usize,
            _ => 0,
        };
        if self.rng.chance(8) {
            a.wrapping_add(self.rng.pick(&[1, P - 1, 8, P / 2]))
        } else {
            a
        }
    }

    fn len(&mut self, addr: usize) -> usize {
        if self.sane {
            return match self.boundary() {
                Some(b) if self.rng.chance(15) && b > addr => b - addr,
                _ => (1 + self.rng.usize_below(16)) * P,
            };
        }
        let ts = self.layout.task_size;
        match self.rng.below(100) {
            0..30 => (1 + self.rng.usize_below(8)) * P,
            30..42 => (9 + self.rng.usize_below(56)) * P,
            42..50 => self.rng.pick(&[0, 1, P - 1, P + 1]),
            50..60 => match self.boundary() {
                Some(b) => b.wrapping_sub(addr),
                None => 2 * P,
            },
            60..68 => self.rng.pick(&[
                ts,
                ts - P,
                ts.wrapping_sub(addr),
                ts - self.layout.mmap_min_addr,
            ]),
            68..78 => self.rng.pick(&[
                usize::MAX,
                usize::MAX - P + 1,
                usize::MAX - P + 2,
                usize::MAX & !(P - 1),
                1 << 63,
                (1 << 63) + 1,
            ]),
            78..88 => self
                .rng
                .pick(&[1 << 30, 1 << 40, 1 << 46, (1 << 47) - P, 1 << 21]),
            _ => self.rng.usize_below(1 << 20),
        }
    }

    fn prot(&mut self) -> u32 {
        let base = self.rng.below(8) as u32; // every R/W/X combination
        if self.sane {
            return base;
        }
        match self.rng.below(100) {
            0..75 => base,
            75..83 => base | PROT_SEM,
            83..93 => {
                base | self
                    .rng
                    .pick(&[PROT_GROWSDOWN, PROT_GROWSUP, PROT_GROWSDOWN | PROT_GROWSUP])
            }
            93..97 => base | (1 << self.rng.below(32)),
            _ => self.rng.next_u64() as u32,
        }
    }

    fn mmap(&mut self, space: usize) -> Op {
        if self.sane {
            let mut flags = self.rng.pick(&[MAP_PRIVATE, MAP_PRIVATE, MAP_SHARED]);
            let file = if self.rng.chance(55) {
                flags |= MAP_ANONYMOUS;
                None
            } else {
                Some(self.rng.usize_below(self.nfiles))
            };
            if self.rng.chance(40) {
                flags |= MAP_FIXED;
            }
            for (bit, pct) in [(MAP_GROWSDOWN, 5), (MAP_POPULATE, 10), (MAP_NORESERVE, 5)] {
                if self.rng.chance(pct) {
                    flags |= bit;
                }
            }
            let addr = self.addr();
            let len = self.len(addr);
            let prot = self.prot();
            return Op::Mmap {
                space,
                addr,
                len: self.populate_len(flags, prot, len),
                prot,
                flags,
                file,
                off: self.rng.below(12) * P as u64,
            };
        }
        let ty = match self.rng.below(100) {
            0..45 => MAP_PRIVATE,
            45..70 => MAP_SHARED,
            70..80 => MAP_SHARED_VALIDATE,
            80..88 => 0,
            _ => self.rng.below(16) as u32,
        };
        let mut flags = ty;
        let file = if self.rng.chance(60) {
            flags |= MAP_ANONYMOUS;
            // A file with MAP_ANONYMOUS is ignored, as in Linux.
            self.rng
                .chance(5)
                .then(|| self.rng.usize_below(self.nfiles))
        } else if self.rng.chance(5) {
            None
        } else {
            Some(self.rng.usize_below(self.nfiles))
        };
        if self.rng.chance(25) {
            flags |= MAP_FIXED;
        }
        if self.rng.chance(10) {
            flags |= MAP_FIXED_NOREPLACE;
        }
        for bit in [
            MAP_32BIT,
            MAP_GROWSDOWN,
            MAP_DENYWRITE,
            MAP_EXECUTABLE,
            MAP_LOCKED,
            MAP_NORESERVE,
            MAP_POPULATE,
            MAP_NONBLOCK,
            MAP_STACK,
            MAP_HUGETLB,
            MAP_SYNC,
            MAP_UNINITIALIZED,
            21 << 26,
        ] {
            if self.rng.chance(4) {
                flags |= bit;
            }
        }
        if self.rng.chance(5) {
            // Bits no MAP_* flag uses.
            flags |= self
                .rng
                .pick(&[0x80, 0x200, 0x400, 1 << 21, 1 << 22, 1 << 25]);
        }
        if self.rng.chance(1) {
            flags = self.rng.next_u64() as u32;
        }
        let addr = self.addr();
        let len = self.len(addr);
        let prot = self.prot();
        let len = self.populate_len(flags, prot, len);
        let off = match self.rng.below(100) {
            0..60 => 0,
            60..85 => self.rng.below(20) * P as u64,
            85..90 => self.rng.pick(&[1u64, P as u64 - 1, 100]),
            _ => self.rng.pick(&[
                !(P as u64 - 1),
                (i64::MAX as u64) & !(P as u64 - 1),
                (i64::MAX as u64 + 1),
                1 << 62,
                ((i64::MAX as u64) & !(P as u64 - 1)) - 4 * P as u64,
            ]),
        };
        Op::Mmap {
            space,
            addr,
            len,
            prot,
            flags,
            file,
            off,
        }
    }

    /// Populating (MAP_POPULATE, MAP_LOCKED) faults in every page of an accessible
    /// mapping, as Linux does (until memory runs out); keep that to small mappings so
    /// a seed stays fast. (secretmem sets VM_LOCKED itself, but its file is 8 pages and
    /// population stops at the end of the file.)
    fn populate_len(&mut self, flags: u32, prot: u32, len: usize) -> usize {
        if flags & (MAP_POPULATE | MAP_LOCKED) != 0
            && prot & (PROT_READ | PROT_WRITE | PROT_EXEC) != 0
            && len > 64 * P
        {
            1 + self.rng.usize_below(64 * P)
        } else {
            len
        }
    }

    fn op(&mut self, space: usize) -> Op {
        match self.rng.below(100) {
            0..24 => self.mmap(space),
            24..34 => {
                let addr = self.addr();
                Op::Munmap {
                    space,
                    addr,
                    len: self.len(addr),
                }
            }
            34..46 => {
                let addr = self.addr();
                Op::Mprotect {
                    space,
                    addr,
                    len: self.len(addr),
                    prot: self.prot(),
                }
            }
            46..58 => {
                let addr = self.addr();
                let old_len = if self.rng.chance(8) {
                    0
                } else {
                    self.len(addr)
                };
                let new_len = if self.rng.chance(30) {
                    old_len
                } else {
                    self.len(addr)
                };
                let mut flags = self.rng.below(8) as u32;
                if self.sane {
                    flags = self.rng.pick(&[
                        0,
                        MREMAP_MAYMOVE,
                        MREMAP_MAYMOVE,
                        MREMAP_MAYMOVE | MREMAP_FIXED,
                        MREMAP_MAYMOVE | MREMAP_DONTUNMAP,
                        MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP,
                    ]);
                } else if self.rng.chance(6) {
                    flags |= self.rng.pick(&[8, 16, 1 << 31]);
                }
                let new_addr = self.addr();
                Op::Mremap {
                    space,
                    addr,
                    old_len,
                    new_len,
                    flags,
                    new_addr,
                }
            }
            58..66 if self.rng.chance(25) => {
                let addr = self.addr();
                let len = self.len(addr);
                let flags = if self.sane || !self.rng.chance(10) {
                    self.rng.pick(&[0, MLOCK_ONFAULT])
                } else {
                    self.rng.next_u64() as u32
                };
                Op::Mlock {
                    space,
                    addr,
                    len,
                    flags,
                    unlock: self.rng.chance(40),
                }
            }
            58..66 => {
                let addr = self.addr();
                let len = self.len(addr);
                let advice = match self.rng.below(if self.sane { 75 } else { 100 }) {
                    0..75 => self.rng.pick(&[
                        MADV_NORMAL,
                        MADV_DONTNEED,
                        MADV_DONTFORK,
                        MADV_DOFORK,
                        MADV_WIPEONFORK,
                        MADV_KEEPONFORK,
                    ]),
                    // Linux advice the model does not implement, then nonsense.
                    75..90 => self
                        .rng
                        .pick(&[1, 2, 3, 8, 9, 12, 14, 16, 20, 21, 22, 23, 25, 102]),
                    _ => self.rng.next_u64() as u32,
                };
                Op::Madvise {
                    space,
                    addr,
                    len,
                    advice,
                }
            }
            66..76 => Op::Fault {
                space,
                addr: self.addr(),
                access: self.rng.pick(&[Access::Read, Access::Write, Access::Exec]),
            },
            76..82 => Op::CopyTo {
                space,
                addr: self.addr(),
                len: 1 + self.rng.usize_below(3 * P),
                fill: self.rng.next_u64() as u8,
            },
            82..86 => Op::CopyFrom {
                space,
                addr: self.addr(),
                len: 1 + self.rng.usize_below(3 * P),
            },
            86..94 => Op::Touch {
                space,
                addr: self.addr(),
                write: self.rng.chance(50),
                fill: self.rng.next_u64() as u8,
            },
            94..96 => Op::Maps { space },
            _ => {
                let mut flags = self.rng.below(0x40);
                if self.rng.chance(5) {
                    flags |= 1 << (6 + self.rng.below(58));
                }
                Op::Query {
                    space,
                    addr: self.addr(),
                    flags,
                }
            }
        }
    }
}

/// What a fault must do, from the VMAs alone (Linux: `do_user_addr_fault`: no VMA →
/// SEGV_MAPERR unless a stack below can grow; x86 `access_error` → SEGV_ACCERR; else
/// it is resolved, or fails for a reason of the backing: SIGBUS, OOM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FaultWant {
    MapErr,
    AccErr,
    Resolves,
    /// Below a VM_GROWSDOWN VMA: the stack may grow (then the access is checked).
    MaybeGrows,
}

fn fault_expectation(
    vmas: &[(usize, usize, VmFlags)],
    addr: usize,
    access: Access,
    task_size: usize,
) -> FaultWant {
    if addr >= task_size {
        return FaultWant::MapErr;
    }
    let Some(&(s, _, f)) = vmas.iter().find(|v| v.1 > addr) else {
        return FaultWant::MapErr;
    };
    if s > addr {
        return if f.contains(VmFlags::GROWSDOWN) {
            FaultWant::MaybeGrows
        } else {
            FaultWant::MapErr
        };
    }
    let denied = match access {
        Access::Write => !f.contains(VmFlags::WRITE),
        Access::Exec => !f.contains(VmFlags::EXEC),
        Access::Read => !f.intersects(VmFlags::ACCESS),
    };
    if denied {
        FaultWant::AccErr
    } else {
        FaultWant::Resolves
    }
}

/// The VMAs of `asp` as (start, end, flags), lowest first.
fn vma_list(asp: &AddressSpace) -> Vec<(usize, usize, VmFlags)> {
    let g = asp.mm().read_lock();
    let mut out = Vec::new();
    g.view()
        .for_each(|e| out.push((e.vma.start(), e.vma.end(), e.vma.flags())));
    out
}

/// Is all of `[start, end)` covered by VMAs?
fn covered(vmas: &[(usize, usize, VmFlags)], start: usize, end: usize) -> bool {
    let mut at = start;
    for &(s, e, _) in vmas {
        if e <= at {
            continue;
        }
        if s > at {
            return false;
        }
        at = e;
        if at >= end {
            return true;
        }
    }
    at >= end
}

fn intersects(vmas: &[(usize, usize, VmFlags)], start: usize, end: usize) -> bool {
    vmas.iter().any(|&(s, e, _)| s < end && start < e)
}

/// One seed's run state.
struct Run<'h> {
    spaces: Vec<Box<dyn Space + 'h>>,
    files: Files,
    stats: Stats,
    history: VecDeque<String>,
}

impl<'h> Run<'h> {
    fn asp(&self, i: usize) -> &AddressSpace {
        self.spaces[i].asp()
    }

    /// Make one call; `Err` describes a wrong result.
    fn call(&mut self, op: &Op) -> Result<String, String> {
        if op.space() >= self.spaces.len() {
            // Only in a replay of a minimised sequence, whose fork was removed.
            return Ok(String::from("no such space"));
        }
        match *op {
            Op::Mmap {
                space,
                addr,
                len,
                prot,
                flags,
                file,
                off,
            } => {
                let f = file.map(|i| self.files.files[i].clone());
                let r = self
                    .asp(space)
                    .mmap(addr, len, prot, flags, f.as_ref(), off);
                if let Ok(a) = r {
                    let alen = align_up(len).ok_or("mmap succeeded with an overflowing length")?;
                    let v = vma_list(self.asp(space));
                    let l = self.asp(space).layout();
                    if a % P != 0
                        || a < l.mmap_min_addr
                        || a.checked_add(alen).is_none_or(|e| e > l.task_size)
                    {
                        return Err(format!("mmap returned {a:#x} for {alen:#x} bytes"));
                    }
                    if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) != 0 && a != addr {
                        return Err(format!("fixed mmap at {addr:#x} returned {a:#x}"));
                    }
                    if !covered(&v, a, a + alen) {
                        return Err(format!(
                            "mmap returned {a:#x} but {a:#x}..{:#x} is not all mapped",
                            a + alen
                        ));
                    }
                }
                self.result(op, r.map(|a| format!("{a:#x}")))
            }
            Op::Munmap { space, addr, len } => {
                let r = self.asp(space).munmap(addr, len);
                if r.is_ok() {
                    let end = addr.saturating_add(align_up(len).unwrap_or(usize::MAX));
                    if intersects(&vma_list(self.asp(space)), addr, end) {
                        return Err(format!(
                            "munmap succeeded but {addr:#x}..{end:#x} is still mapped"
                        ));
                    }
                }
                self.result(op, r.map(|()| String::from("0")))
            }
            Op::Mprotect {
                space,
                addr,
                len,
                prot,
            } => {
                let r = self.asp(space).mprotect(addr, len, prot);
                if r.is_ok() && len != 0 && prot & (PROT_GROWSDOWN | PROT_GROWSUP) == 0 {
                    let end = align_up(len)
                        .and_then(|l| addr.checked_add(l))
                        .ok_or("mprotect succeeded with an overflowing range")?;
                    let want = prot & (PROT_READ | PROT_WRITE | PROT_EXEC);
                    for (s, e, f) in vma_list(self.asp(space)) {
                        if s < end && addr < e {
                            let got = f.bits() as u32 & 7;
                            if got != want {
                                return Err(format!(
                                    "mprotect succeeded but VMA {s:#x}..{e:#x} has prot {got:#x}, not {want:#x}"
                                ));
                            }
                        }
                    }
                    if !covered(&vma_list(self.asp(space)), addr, end) {
                        return Err(format!(
                            "mprotect succeeded over a hole in {addr:#x}..{end:#x}"
                        ));
                    }
                }
                self.result(op, r.map(|()| String::from("0")))
            }
            Op::Mremap {
                space,
                addr,
                old_len,
                new_len,
                flags,
                new_addr,
            } => {
                let r = self
                    .asp(space)
                    .mremap(addr, old_len, new_len, flags, new_addr);
                if let Ok(na) = r {
                    let v = vma_list(self.asp(space));
                    if na % P != 0 || (flags & MREMAP_FIXED != 0 && na != new_addr) {
                        return Err(format!("mremap returned {na:#x}"));
                    }
                    if !covered(&v, na, na + P) {
                        return Err(format!("mremap returned {na:#x}, which is not mapped"));
                    }
                    let ol = align_up(old_len).unwrap_or(0);
                    if na != addr
                        && flags & MREMAP_DONTUNMAP == 0
                        && ol != 0
                        && intersects(&v, addr, addr.saturating_add(ol))
                    {
                        return Err(format!(
                            "mremap moved to {na:#x} but the old range is still mapped"
                        ));
                    }
                }
                self.result(op, r.map(|a| format!("{a:#x}")))
            }
            Op::Madvise {
                space,
                addr,
                len,
                advice,
            } => {
                let r = self.asp(space).madvise(addr, len, advice);
                self.result(op, r.map(|()| String::from("0")))
            }
            Op::Mlock {
                space,
                addr,
                len,
                flags,
                unlock,
            } => {
                let asp = self.asp(space);
                let r = if unlock {
                    asp.munlock(addr, len)
                } else {
                    asp.mlock2(addr, len, flags)
                };
                self.result(op, r.map(|()| String::from("0")))
            }
            Op::Fault {
                space,
                addr,
                access,
            } => {
                let ts = self.asp(space).layout().task_size;
                let want = fault_expectation(&vma_list(self.asp(space)), addr, access, ts);
                let r = self.asp(space).handle_fault(addr, access);
                let agrees = match (want, r) {
                    (FaultWant::MapErr, e) => e == Err(FaultError::MapErr),
                    (FaultWant::AccErr, e) => e == Err(FaultError::AccErr),
                    (FaultWant::Resolves, e) => {
                        e != Err(FaultError::MapErr) && e != Err(FaultError::AccErr)
                    }
                    (FaultWant::MaybeGrows, _) => true,
                };
                if !agrees {
                    return Err(format!("fault returned {r:?}; the VMAs say {want:?}"));
                }
                if r.is_ok() {
                    let t = self
                        .asp(space)
                        .translate(addr & !(P - 1))
                        .ok_or("fault resolved but nothing is mapped")?;
                    let fl = t.flags;
                    let ok = fl.contains(PageTableFlags::PRESENT)
                        && (access != Access::Write || fl.contains(PageTableFlags::WRITABLE))
                        && (access != Access::Exec || !fl.contains(PageTableFlags::NO_EXECUTE));
                    if !ok {
                        return Err(format!("fault resolved but the PTE is {fl:?}"));
                    }
                }
                self.fault_result(r.map(|()| String::from("ok")))
            }
            Op::CopyTo {
                space,
                addr,
                len,
                fill,
            } => {
                let data: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
                let probe = self.isolation_probe(space, addr);
                let r = self.asp(space).copy_to_user(addr, &data);
                self.user_range_refused(space, addr, len, r.is_ok())?;
                if r.is_ok() {
                    self.isolation_verify(space, addr, probe)?;
                }
                if r.is_ok() && addr % P + len <= P {
                    // One page: no alias of the same file page inside the range.
                    let mut back = vec![0u8; len];
                    self.asp(space)
                        .copy_from_user(addr, &mut back)
                        .map_err(|e| format!("copy_to_user worked, copy_from_user then {e:?}"))?;
                    if back != data {
                        return Err(String::from("bytes copied in do not read back"));
                    }
                }
                self.fault_result(r.map(|()| String::from("ok")))
            }
            Op::CopyFrom { space, addr, len } => {
                let mut buf = vec![0u8; len];
                let r = self.asp(space).copy_from_user(addr, &mut buf);
                self.user_range_refused(space, addr, len, r.is_ok())?;
                self.fault_result(r.map(|()| String::from("ok")))
            }
            Op::Touch {
                space,
                addr,
                write,
                fill: value,
            } => {
                let ts = self.asp(space).layout().task_size;
                // Only canonical user addresses: a kernel-half access is no user access.
                let addr = addr % ts;
                let access = if write { Access::Write } else { Access::Read };
                let want = fault_expectation(&vma_list(self.asp(space)), addr, access, ts);
                let probe = if write {
                    self.isolation_probe(space, addr)
                } else {
                    None
                };
                let sp = &self.spaces[space];
                let r = if write {
                    sp.write_byte(addr, value)
                        .map(|()| sp.read_byte(addr).map(|b| b == value))
                } else {
                    sp.read_byte(addr).map(|_| Ok(true))
                };
                if r.is_ok() && matches!(want, FaultWant::MapErr | FaultWant::AccErr) {
                    // The MMU allowed what the VMAs forbid: a stale TLB entry or a PTE
                    // left behind.
                    return Err(format!(
                        "a user {} at {addr:#x} worked; the VMAs say {want:?}",
                        if write { "store" } else { "load" }
                    ));
                }
                match r {
                    Ok(Ok(true)) => {
                        self.isolation_verify(space, addr, probe)?;
                        self.stats.ok += 1;
                        Ok(String::from("ok"))
                    }
                    Ok(Ok(false)) => Err(String::from("a stored byte does not read back")),
                    Ok(Err(f)) => Err(format!(
                        "a store worked, the load after it faulted at {:#x}",
                        f.addr
                    )),
                    Err(f) => {
                        self.stats.faults[4] += 1;
                        Ok(format!("fault at {:#x}", f.addr))
                    }
                }
            }
            Op::Maps { space } => {
                let text = self.asp(space).maps();
                let v = vma_list(self.asp(space));
                let lines: Vec<&str> = text.lines().collect();
                if lines.len() != v.len() {
                    return Err(format!(
                        "maps has {} lines for {} VMAs",
                        lines.len(),
                        v.len()
                    ));
                }
                for (line, &(s, e, _)) in lines.iter().zip(&v) {
                    let range = line.split(' ').next().unwrap_or("");
                    if range != format!("{s:08x}-{e:08x}") {
                        return Err(format!("maps line {line:?} for VMA {s:#x}..{e:#x}"));
                    }
                }
                self.stats.ok += 1;
                Ok(format!("{} lines", lines.len()))
            }
            Op::Query { space, addr, flags } => {
                let got = self
                    .asp(space)
                    .query_vma(addr, flags)
                    .map(|q| (q.start, q.end));
                let want = query_model(self.asp(space), addr, flags);
                if got != want {
                    return Err(format!(
                        "PROCMAP_QUERY gave {got:x?}, the VMAs say {want:x?}"
                    ));
                }
                self.stats.ok += 1;
                Ok(format!("{got:x?}"))
            }
            Op::SetMaxMapCount { space, n } => {
                self.asp(space).set_max_map_count(n);
                Ok(String::from("set"))
            }
            Op::Fork { space } => {
                let before = vma_list(self.asp(space));
                match self.spaces[space].fork() {
                    Ok(child) => {
                        self.check_child(space, &*child)?;
                        self.spaces.push(child);
                        self.stats.max_spaces = self.stats.max_spaces.max(self.spaces.len());
                        self.stats.ok += 1;
                        Ok(format!("child is space {}", self.spaces.len() - 1))
                    }
                    Err(e) => {
                        if vma_list(self.asp(space)) != before {
                            return Err(format!("fork failed ({e}) and changed the parent's VMAs"));
                        }
                        self.result(op, Err(e))
                    }
                }
            }
            Op::Exit { space } => {
                drop(self.spaces.remove(space));
                self.stats.ok += 1;
                Ok(format!("{} spaces left", self.spaces.len()))
            }
        }
    }

    /// Right after `fork` of space `parent`: the child has the parent's VMAs but the
    /// `VM_DONTCOPY` ones, with the flags fork drops cleared (`VM_LOCKED_MASK`, the
    /// userfaultfd flags), and reads what the parent reads in the pages the parent has
    /// present (zero in a `VM_WIPEONFORK` VMA), or faults the same way.
    fn check_child(&mut self, parent: usize, child: &dyn Space) -> Result<(), String> {
        let dropped = VmFlags::LOCKED
            | VmFlags::LOCKONFAULT
            | VmFlags::UFFD_MISSING
            | VmFlags::UFFD_WP
            | VmFlags::UFFD_MINOR;
        let want: Vec<(usize, usize, VmFlags)> = vma_list(self.asp(parent))
            .into_iter()
            .filter(|v| !v.2.contains(VmFlags::DONTCOPY))
            .map(|(s, e, f)| (s, e, f - dropped))
            .collect();
        let got = vma_list(child.asp());
        if got != want {
            return Err(format!(
                "the child's VMAs are {got:x?}, the parent's (DONTCOPY left out) {want:x?}"
            ));
        }
        let (mut pb, mut cb) = (vec![0u8; P], vec![0u8; P]);
        let mut compared = 0;
        'vmas: for &(s, e, f) in &want {
            for a in (s..e).step_by(P).take(64) {
                if compared == FORK_COMPARE_PAGES {
                    break 'vmas;
                }
                if self.asp(parent).translate(a).is_none() {
                    continue;
                }
                let pr = self.asp(parent).copy_from_user(a, &mut pb);
                let cr = child.asp().copy_from_user(a, &mut cb);
                let wiped = f.contains(VmFlags::WIPEONFORK);
                match (pr, cr) {
                    (Ok(()), Ok(())) if wiped => {
                        if cb.iter().any(|&b| b != 0) {
                            return Err(format!("WIPEONFORK page {a:#x} is not zero in the child"));
                        }
                    }
                    (Ok(()), Ok(())) => {
                        if let Some(i) = (0..P).find(|&i| pb[i] != cb[i]) {
                            return Err(format!(
                                "after fork the child reads {:#04x} at {:#x}, the parent {:#04x}",
                                cb[i],
                                a + i,
                                pb[i]
                            ));
                        }
                    }
                    (Err(x), Err(y)) if x == y => {}
                    (pr, cr) => {
                        return Err(format!(
                            "after fork a read of page {a:#x}: parent {pr:?}, child {cr:?}"
                        ));
                    }
                }
                compared += 1;
            }
        }
        self.stats.fork_pages_compared += compared as u64;
        Ok(())
    }

    /// Before a write at `addr` in `space`: if the VMA there is private (so the write
    /// must stay invisible to every other space, forked or not), the byte every other
    /// space reads at `addr` (`None` where it cannot read it).
    fn isolation_probe(&self, space: usize, addr: usize) -> Option<Vec<Option<u8>>> {
        let private = vma_list(self.asp(space))
            .iter()
            .any(|&(s, e, f)| s <= addr && addr < e && !f.intersects(VmFlags::MAYSHARE));
        if !private || self.spaces.len() < 2 {
            return None;
        }
        Some(
            (0..self.spaces.len())
                .map(|i| {
                    let mut b = [0u8];
                    (i != space && self.asp(i).copy_from_user(addr, &mut b).is_ok()).then_some(b[0])
                })
                .collect(),
        )
    }

    /// After a private write at `addr` in `space` worked: every other space still
    /// reads what it read before (a page shared copy-on-write was copied, not written).
    fn isolation_verify(
        &mut self,
        space: usize,
        addr: usize,
        before: Option<Vec<Option<u8>>>,
    ) -> Result<(), String> {
        let Some(before) = before else { return Ok(()) };
        for (i, was) in before.into_iter().enumerate() {
            let Some(was) = was else { continue };
            let mut b = [0u8];
            let now = self.asp(i).copy_from_user(addr, &mut b).map(|()| b[0]);
            if now != Ok(was) {
                return Err(format!(
                    "a private write at {addr:#x} in space {space} changed space {i}: \
                     it read {was:#04x}, now {now:x?}"
                ));
            }
        }
        self.stats.isolation_checks += 1;
        Ok(())
    }

    /// A user copy of `[addr, addr + len)` reaching outside the user half must fail
    /// (Linux: `access_ok()`).
    fn user_range_refused(
        &self,
        space: usize,
        addr: usize,
        len: usize,
        ok: bool,
    ) -> Result<(), String> {
        let ts = self.asp(space).layout().task_size;
        let inside = len <= ts && addr <= ts - len;
        if ok && !inside {
            return Err(format!(
                "a user copy of {len:#x} bytes at {addr:#x} worked, outside the user half"
            ));
        }
        Ok(())
    }

    fn result(&mut self, op: &Op, r: Result<String, Errno>) -> Result<String, String> {
        let ts = self.asp(op.space()).layout().task_size;
        if let Some(want) = linux_argument_result(op, ts) {
            let agrees = match (&want, &r) {
                (Ok(()), Ok(_)) => true,
                (Err(w), Err(e)) => w == e,
                _ => false,
            };
            if !agrees {
                return Err(format!(
                    "{} returned {r:?}; from its arguments Linux returns {want:?}",
                    op.name()
                ));
            }
        }
        match r {
            Ok(s) => {
                self.stats.ok += 1;
                Ok(s)
            }
            Err(e) => {
                if !errno_allowed(op, e) {
                    return Err(format!(
                        "{} returned {e}, not an errno Linux documents for it",
                        op.name()
                    ));
                }
                self.stats.errno(e);
                Ok(format!("{e}"))
            }
        }
    }

    fn fault_result(&mut self, r: Result<String, FaultError>) -> Result<String, String> {
        match r {
            Ok(s) => {
                self.stats.ok += 1;
                Ok(s)
            }
            Err(e) => {
                self.stats.fault(e);
                Ok(format!("{e:?}"))
            }
        }
    }

    /// Every invariant of both spaces and every inode.
    fn validate(&self) -> Result<(), String> {
        for (i, s) in self.spaces.iter().enumerate() {
            s.asp()
                .validate_mm()
                .map_err(|e| format!("validate_mm(space {i}): {e}"))?;
        }
        let asps: Vec<&AddressSpace> = self.spaces.iter().map(|s| s.asp()).collect();
        for inode in &self.files.inodes {
            validate_i_mmap(inode, &asps)?;
        }
        Ok(())
    }
}

/// PROCMAP_QUERY's answer computed from the VMA list (the reference for the check).
fn query_model(asp: &AddressSpace, addr: usize, flags: u64) -> Option<(usize, usize)> {
    let g = asp.mm().read_lock();
    let want = flags
        & (PROCMAP_QUERY_VMA_READABLE
            | PROCMAP_QUERY_VMA_WRITABLE
            | PROCMAP_QUERY_VMA_EXECUTABLE
            | PROCMAP_QUERY_VMA_SHARED);
    let mut found = None;
    g.view().for_each(|e| {
        if found.is_some() || e.end <= addr {
            return;
        }
        if e.start > addr && flags & PROCMAP_QUERY_COVERING_OR_NEXT_VMA == 0 {
            found = Some(None);
            return;
        }
        let f = e.vma.flags();
        let mut have = 0;
        if f.contains(VmFlags::READ) {
            have |= PROCMAP_QUERY_VMA_READABLE;
        }
        if f.contains(VmFlags::WRITE) {
            have |= PROCMAP_QUERY_VMA_WRITABLE;
        }
        if f.contains(VmFlags::EXEC) {
            have |= PROCMAP_QUERY_VMA_EXECUTABLE;
        }
        if f.contains(VmFlags::MAYSHARE) {
            have |= PROCMAP_QUERY_VMA_SHARED;
        }
        let file_ok = flags & PROCMAP_QUERY_FILE_BACKED_VMA == 0 || e.vma.file(&g).is_some();
        if have & want == want && file_ok {
            found = Some(Some((e.start, e.end)));
        } else if flags & PROCMAP_QUERY_COVERING_OR_NEXT_VMA == 0 {
            found = Some(None);
        }
    });
    found.flatten()
}

/// Run the fuzzer: every seed of `cfg.seeds`, `cfg.calls` calls each, checking after
/// every call. `observe` sees each call before it is made.
pub fn run(h: &dyn Harness, cfg: &Config, observe: Observer<'_>) -> Result<Stats, Failure> {
    let mut stats = Stats {
        seeds: cfg.seeds.clone(),
        ..Stats::default()
    };
    for seed in cfg.seeds.clone() {
        let mut rng = Rng::new(seed);
        let mut setup = Vec::new();
        if seed % 4 == 3 {
            setup.push(Op::SetMaxMapCount { space: 0, n: 16 });
            setup.push(Op::SetMaxMapCount { space: 1, n: 16 });
        }
        let mut next = |run: &Run<'_>, _call: usize| -> Option<Op> {
            if !setup.is_empty() {
                return Some(setup.remove(0));
            }
            let n = run.spaces.len();
            let roll = rng.below(100);
            if roll < FORK_PERCENT {
                let space = rng.usize_below(n);
                return Some(if n < MAX_SPACES {
                    Op::Fork { space }
                } else {
                    Op::Exit { space }
                });
            }
            if roll < FORK_PERCENT + EXIT_PERCENT && n > 2 {
                return Some(Op::Exit {
                    space: rng.usize_below(n),
                });
            }
            let space = rng.usize_below(n);
            let vmas = vma_list(run.asp(space))
                .into_iter()
                .map(|(s, e, _)| (s, e))
                .collect();
            let mut gen_rng = Rng::new(rng.next_u64());
            let sane = gen_rng.chance(50);
            Some(
                Gen {
                    rng: &mut gen_rng,
                    layout: run.asp(space).layout(),
                    vmas,
                    nfiles: run.files.files.len(),
                    sane,
                }
                .op(space),
            )
        };
        execute(
            h,
            cfg,
            seed,
            Setup::of_seed(seed),
            &mut next,
            &mut stats,
            observe,
        )?;
    }
    Ok(stats)
}

/// Make exactly the calls `ops` on a fresh pair of spaces and files, with every check
/// of [`run`]: how a [`Failure`] (or a minimised part of its calls) is reproduced.
pub fn replay(
    h: &dyn Harness,
    setup: Setup,
    ops: &[Op],
    check_global_counts: bool,
) -> Result<Stats, Failure> {
    let cfg = Config {
        seeds: 0..1,
        calls: ops.len(),
        check_global_counts,
        skip_known_defects: false,
    };
    let mut stats = Stats::default();
    let mut it = ops.iter().cloned();
    let mut next = |_: &Run<'_>, _call: usize| it.next();
    execute(h, &cfg, 0, setup, &mut next, &mut stats, &mut |_, _, _| {})?;
    Ok(stats)
}

/// One seed: make the calls `next` produces (up to `cfg.calls` of them, set-up
/// included), checking after each, then tear everything down and check the baselines.
fn execute(
    h: &dyn Harness,
    cfg: &Config,
    seed: u64,
    setup: Setup,
    next: &mut dyn FnMut(&Run<'_>, usize) -> Option<Op>,
    total: &mut Stats,
    observe: Observer<'_>,
) -> Result<(), Failure> {
    let frames0 = h.frames_in_use();
    let vmas0 = crate::vma::pool::vma_pool_stats().live;
    let anon0 = crate::vma::anon::anon_vma_live_count();
    let mut ops: Vec<Op> = Vec::new();
    let mut run = Run {
        spaces: vec![
            h.space_with_layout(setup.layout()),
            h.space_with_layout(setup.layout()),
        ],
        files: Files::new(h),
        stats: core::mem::take(total),
        history: VecDeque::new(),
    };
    let mut result = Ok(());
    let mut call = 0;
    while call < cfg.calls {
        let Some(op) = next(&run, call) else { break };
        let setup = matches!(op, Op::SetMaxMapCount { .. });
        if cfg.skip_known_defects
            && let Some(d) = known_defect(&op)
        {
            bump(&mut run.stats.skipped, d);
            call += 1;
            continue;
        }
        observe(seed, call, &op);
        ops.push(op.clone());
        if !setup {
            run.stats.calls += 1;
            bump(&mut run.stats.per_op, op.name());
        }
        let r = run.call(&op);
        if run.history.len() == HISTORY {
            run.history.pop_front();
        }
        run.history.push_back(format!(
            "#{call} {op:x?} -> {}",
            match &r {
                Ok(s) => s.as_str(),
                Err(_) => "WRONG RESULT",
            }
        ));
        if let Err(e) = r.and_then(|_| run.validate()) {
            result = Err((call, e));
            break;
        }
        if !setup {
            call += 1;
        }
    }
    let Run {
        spaces,
        files,
        stats,
        history,
        ..
    } = run;
    *total = stats;
    let fail = |call: usize, what: String| Failure {
        seed,
        call,
        what,
        history: history.iter().cloned().collect(),
        setup,
        ops: ops.clone(),
    };
    drop(spaces);
    if let Err((call, e)) = result {
        return Err(fail(call, e));
    }
    for inode in &files.inodes {
        if inode.i_mmap_len() != 0 {
            return Err(fail(
                call,
                format!(
                    "inode {}: {} i_mmap entries left after every space is gone",
                    inode.ino(),
                    inode.i_mmap_len()
                ),
            ));
        }
    }
    drop(files);
    let frames = h.frames_in_use();
    if frames != frames0 {
        return Err(fail(
            call,
            format!("frames in use: {frames0} before the seed, {frames} after"),
        ));
    }
    if cfg.check_global_counts {
        let vmas = crate::vma::pool::vma_pool_stats().live;
        let anon = crate::vma::anon::anon_vma_live_count();
        if vmas != vmas0 || anon != anon0 {
            return Err(fail(
                call,
                format!("VMAs {vmas0} -> {vmas}, anon_vmas {anon0} -> {anon} over the seed"),
            ));
        }
    }
    Ok(())
}
