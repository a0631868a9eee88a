//! `/proc/PID/maps` text and PROCMAP_QUERY-style lookups.
//!
//! Linux: `fs/proc/task_mmu.c` (`show_map_vma`, `show_vma_header_prefix`,
//! `do_procmap_query`).

use alloc::format;
use alloc::string::String;
use core::fmt::Write;
use core::sync::atomic::Ordering;

use super::AddressSpace;
use super::consts::*;
use crate::file;
use crate::vma::{MmReadGuard, VmFlags, VmaIterator, VmaRef};

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
    /// `vma_page_size`.
    pub page_size: u64,
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

impl AddressSpace {
    fn vma_name(&self, g: &MmReadGuard<'_>, v: VmaRef) -> Option<String> {
        if let Some(f) = v.file(g) {
            return Some(String::from(f.name()));
        }
        if let Some(n) = v.anon_name(g) {
            return Some(format!("[anon:{n}]"));
        }
        let sp = self.start_stack.load(Ordering::Relaxed);
        if sp != 0 && v.start() <= sp && sp < v.end() {
            return Some(String::from("[stack]"));
        }
        None
    }

    /// `/proc/PID/maps`: one line per VMA, `start-end perms offset dev inode name`,
    /// formatted as Linux's `show_map_vma` (name padded to column 73).
    pub fn maps(&self) -> String {
        let g = self.mm.read_lock();
        let view = g.view();
        let mut out = String::new();
        let mut it = VmaIterator::new(0);
        while let Some(v) = it.next(&view) {
            let f = v.flags();
            let (mut dev, mut ino, mut off) = ((0, 0), 0u64, 0u64);
            if let Some(file) = v.file(&g).as_ref().and_then(file::lookup) {
                dev = file.inode().dev();
                ino = file.inode().ino();
                off = (v.pgoff() as u64) << 12;
            }
            let start_len = out.len();
            let _ = write!(
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
            );
            if let Some(name) = self.vma_name(&g, v) {
                // Linux: seq_setwidth(25 + 6 * sizeof(void *) - 1) then seq_pad(' ').
                let width = 25 + 6 * 8 - 1;
                while out.len() - start_len < width {
                    out.push(' ');
                }
                out.push(' ');
                out.push_str(&name);
            }
            out.push('\n');
        }
        out
    }

    /// PROCMAP_QUERY: the VMA containing `addr` (or, with
    /// [`PROCMAP_QUERY_COVERING_OR_NEXT_VMA`], the first one after it) that passes the
    /// flag filters in `query_flags`. `None` is Linux's ENOENT.
    pub fn query_vma(&self, addr: usize, query_flags: u64) -> Option<VmaQuery> {
        let g = self.mm.read_lock();
        let mut a = addr;
        loop {
            let v = g.find_vma(a)?;
            if v.start() > addr && query_flags & PROCMAP_QUERY_COVERING_OR_NEXT_VMA == 0 {
                return None;
            }
            let q = self.describe(&g, v);
            let want = query_flags
                & (PROCMAP_QUERY_VMA_READABLE
                    | PROCMAP_QUERY_VMA_WRITABLE
                    | PROCMAP_QUERY_VMA_EXECUTABLE
                    | PROCMAP_QUERY_VMA_SHARED);
            let ok = q.flags & want == want
                && (query_flags & PROCMAP_QUERY_FILE_BACKED_VMA == 0 || q.file_id.is_some());
            if ok {
                return Some(q);
            }
            if query_flags & PROCMAP_QUERY_COVERING_OR_NEXT_VMA == 0 {
                return None;
            }
            a = v.end();
        }
    }

    fn describe(&self, g: &MmReadGuard<'_>, v: VmaRef) -> VmaQuery {
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
        VmaQuery {
            start: v.start(),
            end: v.end(),
            flags,
            vm_flags: f,
            pgoff: v.pgoff(),
            offset: if vf.is_some() {
                (v.pgoff() as u64) << 12
            } else {
                0
            },
            page_size: 4096,
            inode: file.as_ref().map_or(0, |f| f.inode().ino()),
            dev: file.as_ref().map_or((0, 0), |f| f.inode().dev()),
            file_id: vf
                .as_ref()
                .map(|f| alloc::sync::Arc::as_ptr(f) as *const () as usize),
            name: self.vma_name(g, v),
            anon_vma_id: v.anon_vma(g).map(|a| a.id()),
        }
    }
}
