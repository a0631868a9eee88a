//! `/proc/PID/maps` text and PROCMAP_QUERY-style lookups.
//!
//! Linux: `fs/proc/task_mmu.c` (`show_map_vma`, `show_vma_header_prefix`,
//! `do_procmap_query`).

use alloc::string::String;
use core::fmt::Write;
use core::sync::atomic::Ordering;

use super::AddressSpace;
use super::consts::*;
use crate::PAGE_SHIFT;
use crate::errno::Errno;
use crate::file;
use crate::vma::{MmReadGuard, VmFlags, VmaIterator, VmaRef};

/// A `fmt::Write` into a `String` that grows with `try_reserve`, so formatting fails
/// (with `fmt::Error`, reported as ENOMEM) instead of aborting (Linux: `seq_file`
/// output, whose buffer allocation can fail).
struct TryWriter<'a>(&'a mut String);

impl Write for TryWriter<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.0.try_reserve(s.len()).map_err(|_| core::fmt::Error)?;
        self.0.push_str(s);
        Ok(())
    }
}

/// `format!` for syscall paths: ENOMEM instead of an abort.
fn try_format(args: core::fmt::Arguments<'_>) -> Result<String, Errno> {
    let mut s = String::new();
    TryWriter(&mut s)
        .write_fmt(args)
        .map_err(|_| Errno::ENOMEM)?;
    Ok(s)
}

/// One VMA as PROCMAP_QUERY reports it, plus pgoff and anon_vma identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmaQuery {
    /// `vma_start`.
    pub start: usize,
    /// `vma_end`.
    pub end: usize,
    /// `vma_flags`: PROCMAP_QUERY_VMA_{READABLE,WRITABLE,EXECUTABLE,SHARED}.
    pub flags: u64,
    /// The VMA's full flags.
    pub vm_flags: VmFlags,
    /// `vm_pgoff`.
    pub pgoff: usize,
    /// `vma_offset` (file offset in bytes, 0 for anonymous).
    pub offset: u64,
    /// `vma_page_size` (Linux: `vma_kernel_pagesize`: the huge page size of a
    /// hugetlb VMA, else 4096; smaps' `KernelPageSize`).
    pub page_size: u64,
    /// smaps' `MMUPageSize` (Linux: `vma_mmu_pagesize`, equal to the kernel page size
    /// on x86).
    pub mmu_page_size: u64,
    /// `inode` (0 for anonymous).
    pub inode: u64,
    /// `dev_major`, `dev_minor`.
    pub dev: (u32, u32),
    /// File identity (address of the `struct file`), if file-backed.
    pub file_id: Option<usize>,
    /// File path, if file-backed (`vma_name`).
    pub name: Option<String>,
    /// anon_vma identity, if faulted.
    pub anon_vma_id: Option<u64>,
}

/// Linux: `vma_kernel_pagesize` — the huge page size of a hugetlb VMA, else 4 KiB.
fn vma_kernel_pagesize(v: VmaRef) -> u64 {
    crate::file::hugetlbfs::vma_huge_size(v).map_or(4096, |h| h.bytes() as u64)
}

impl AddressSpace {
    /// `/proc/PID/smaps`, reduced to what this model tracks: each VMA's maps line
    /// followed by `Size`, `KernelPageSize` and `MMUPageSize` (Linux:
    /// `show_smap` → `__show_smap`'s first lines). ENOMEM if it cannot be allocated.
    pub fn try_smaps(&self) -> Result<String, Errno> {
        let maps = self.try_maps()?;
        let g = self.mm.read_lock();
        let view = g.view();
        let mut it = VmaIterator::new(0);
        let mut out = String::new();
        for line in maps.lines() {
            let Some(v) = it.next(&view) else { break };
            let ps = vma_kernel_pagesize(v) >> 10;
            let s = try_format(format_args!(
                "{line}\nSize:           {:>8} kB\nKernelPageSize: {ps:>8} kB\nMMUPageSize:    {ps:>8} kB\n",
                (v.end() - v.start()) >> 10
            ))?;
            out.try_reserve(s.len()).map_err(|_| Errno::ENOMEM)?;
            out.push_str(&s);
        }
        Ok(out)
    }

    /// The name maps shows for `v` (Linux: `get_vma_name`); ENOMEM if it cannot be
    /// allocated.
    fn vma_name(&self, g: &MmReadGuard<'_>, v: VmaRef) -> Result<Option<String>, Errno> {
        if let Some(f) = v.file(g) {
            return try_format(format_args!("{}", f.name())).map(Some);
        }
        if let Some(n) = v.anon_name(g) {
            return try_format(format_args!("[anon:{n}]")).map(Some);
        }
        let sp = self.start_stack.load(Ordering::Relaxed);
        if sp != 0 && v.start() <= sp && sp < v.end() {
            return try_format(format_args!("[stack]")).map(Some);
        }
        Ok(None)
    }

    /// `/proc/PID/maps` for diagnostics and tests, which treat running out of heap as
    /// fatal; the read(2) path is [`try_maps`](Self::try_maps).
    pub fn maps(&self) -> String {
        self.try_maps().expect("maps: out of memory")
    }

    /// `/proc/PID/maps`: one line per VMA, `start-end perms offset dev inode name`,
    /// formatted as Linux's `show_map_vma` (name padded to column 73). ENOMEM if the
    /// text cannot be allocated (Linux: `seq_read` failing to grow its buffer).
    pub fn try_maps(&self) -> Result<String, Errno> {
        let g = self.mm.read_lock();
        let view = g.view();
        let mut text = String::new();
        let mut out = TryWriter(&mut text);
        let mut it = VmaIterator::new(0);
        while let Some(v) = it.next(&view) {
            let f = v.flags();
            let (mut dev, mut ino, mut off) = ((0, 0), 0u64, 0u64);
            if let Some(file) = v.file(&g).as_ref().and_then(file::lookup) {
                dev = file.inode().dev();
                ino = file.inode().ino();
                off = (v.pgoff() as u64) << PAGE_SHIFT;
            }
            let start_len = out.0.len();
            write!(
                out,
                "{:08x}-{:08x} {}{}{}{} {:08x} {:02x}:{:02x} {} ",
                v.start(),
                v.end(),
                if f.contains(VmFlags::READ) { 'r' } else { '-' },
                if f.contains(VmFlags::WRITE) { 'w' } else { '-' },
                if f.contains(VmFlags::EXEC) { 'x' } else { '-' },
                if f.contains(VmFlags::MAYSHARE) {
                    's'
                } else {
                    'p'
                },
                off,
                dev.0,
                dev.1,
                ino
            )
            .map_err(|_| Errno::ENOMEM)?;
            if let Some(name) = self.vma_name(&g, v)? {
                // Linux: seq_setwidth(25 + 6 * sizeof(void *) - 1) then seq_pad(' ').
                let width: usize = 25 + 6 * 8 - 1;
                let pad = width.saturating_sub(out.0.len() - start_len);
                write!(out, "{:pad$} {name}", "").map_err(|_| Errno::ENOMEM)?;
            }
            out.write_char('\n').map_err(|_| Errno::ENOMEM)?;
        }
        Ok(text)
    }

    /// PROCMAP_QUERY: the VMA containing `addr` (or, with
    /// [`PROCMAP_QUERY_COVERING_OR_NEXT_VMA`], the first one after it) that passes the
    /// flag filters in `query_flags`. `None` is Linux's ENOENT.
    ///
    /// For diagnostics and tests, which treat running out of heap as fatal; the ioctl
    /// path is [`try_query_vma`](Self::try_query_vma).
    pub fn query_vma(&self, addr: usize, query_flags: u64) -> Option<VmaQuery> {
        self.try_query_vma(addr, query_flags)
            .expect("PROCMAP_QUERY: out of memory")
    }

    /// [`query_vma`](Self::query_vma) that fails with ENOMEM when the VMA's name cannot
    /// be allocated (Linux: `do_procmap_query`'s `kmalloc` of the name buffer).
    pub fn try_query_vma(&self, addr: usize, query_flags: u64) -> Result<Option<VmaQuery>, Errno> {
        let g = self.mm.read_lock();
        let mut a = addr;
        loop {
            let Some(v) = g.find_vma(a) else {
                return Ok(None);
            };
            if v.start() > addr && query_flags & PROCMAP_QUERY_COVERING_OR_NEXT_VMA == 0 {
                return Ok(None);
            }
            let q = self.describe(&g, v)?;
            let want = query_flags
                & (PROCMAP_QUERY_VMA_READABLE
                    | PROCMAP_QUERY_VMA_WRITABLE
                    | PROCMAP_QUERY_VMA_EXECUTABLE
                    | PROCMAP_QUERY_VMA_SHARED);
            let ok = q.flags & want == want
                && (query_flags & PROCMAP_QUERY_FILE_BACKED_VMA == 0 || q.file_id.is_some());
            if ok {
                return Ok(Some(q));
            }
            if query_flags & PROCMAP_QUERY_COVERING_OR_NEXT_VMA == 0 {
                return Ok(None);
            }
            a = v.end();
        }
    }

    fn describe(&self, g: &MmReadGuard<'_>, v: VmaRef) -> Result<VmaQuery, Errno> {
        let f = v.flags();
        let mut flags = 0;
        if f.contains(VmFlags::READ) {
            flags |= PROCMAP_QUERY_VMA_READABLE;
        }
        if f.contains(VmFlags::WRITE) {
            flags |= PROCMAP_QUERY_VMA_WRITABLE;
        }
        if f.contains(VmFlags::EXEC) {
            flags |= PROCMAP_QUERY_VMA_EXECUTABLE;
        }
        if f.contains(VmFlags::MAYSHARE) {
            flags |= PROCMAP_QUERY_VMA_SHARED;
        }
        let vf = v.file(g);
        let file = vf.as_ref().and_then(file::lookup);
        Ok(VmaQuery {
            start: v.start(),
            end: v.end(),
            flags,
            vm_flags: f,
            pgoff: v.pgoff(),
            offset: if vf.is_some() {
                (v.pgoff() as u64) << PAGE_SHIFT
            } else {
                0
            },
            page_size: vma_kernel_pagesize(v),
            mmu_page_size: vma_kernel_pagesize(v),
            inode: file.as_ref().map_or(0, |f| f.inode().ino()),
            dev: file.as_ref().map_or((0, 0), |f| f.inode().dev()),
            file_id: vf
                .as_ref()
                .map(|f| alloc::sync::Arc::as_ptr(f) as *const () as usize),
            name: self.vma_name(g, v)?,
            anon_vma_id: v.anon_vma(g).map(|a| a.id()),
        })
    }
}
