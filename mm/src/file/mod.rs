//! A small VFS core: inodes with a page cache and `i_mmap`, open files, and the two
//! mmap hooks (Linux: `include/linux/fs.h`, `mm/filemap.c`, `mm/util.c`,
//! `mm/secretmem.c`, `fs/ramfs`, `mm/shmem.c`).
//!
//! # Model
//! - [`Inode`] (Linux: `struct inode` + its `struct address_space`): identity (dev,
//!   ino), size, a page cache (page index → frame, [`Inode::find_or_create_page`]) and
//!   `i_mmap`, the set of VMAs mapping it ([`Inode::i_mmap_vmas`]).
//! - [`File`] (Linux: `struct file`): an inode opened with an [`OpenMode`], a
//!   [`FileOperations`] table, the mount's `noexec`, and for stacking files the lower file.
//! - [`FileOperations`] provides either [`FileOperations::mmap`] (legacy, receives the
//!   new, still detached VMA through an [`MmapCtx`]) or [`FileOperations::mmap_prepare`]
//!   (receives a [`VmAreaDesc`] and never sees a VMA). Both or neither: `mmap` fails with
//!   ENODEV.
//! - File types: [`ramfs_file`] (shmem/ramfs), [`secretmem_file`] (`mmap_prepare` sets
//!   `VM_LOCKED | VM_DONTDUMP`), [`device_file`] (legacy `mmap` that maps device memory
//!   with `VM_PFNMAP | VM_IO`), [`stacking_file`] (legacy `mmap` forwarding to a lower file
//!   that only has `mmap_prepare`, through [`compat_vma_mmap_prepare`]).
//!
//! # VMA → file
//! The VMA layer stores files as `Arc<dyn VmFile>` ([`crate::vma::FileRef`]);
//! [`lookup`] recovers the `Arc<File>` by downcasting through `VmFile::into_any`.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use x86_64::{PhysAddr, VirtAddr};

use crate::errno::Errno;
use crate::frame::{FrameAllocator, FrameFlags};
use crate::paging::{MmuGather, PageSize, PageTableFlags, PageTableRoot};
pub mod hugetlbfs;

use crate::vma::{FileRef, IMmap, MmWriteGuard, PAGE_SIZE, VmFile, VmFlags, VmOperations, VmaRef};

static NEXT_INO: AtomicU64 = AtomicU64::new(1);

/// How a file was opened (Linux: `FMODE_READ` / `FMODE_WRITE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenMode {
    /// Opened for reading.
    pub read: bool,
    /// Opened for writing.
    pub write: bool,
}

impl OpenMode {
    /// `O_RDONLY`.
    pub const RDONLY: OpenMode = OpenMode {
        read: true,
        write: false,
    };
    /// `O_WRONLY`.
    pub const WRONLY: OpenMode = OpenMode {
        read: false,
        write: true,
    };
    /// `O_RDWR`.
    pub const RDWR: OpenMode = OpenMode {
        read: true,
        write: true,
    };
}

/// An inode and its page cache (Linux: `struct inode` + `struct address_space`).
pub struct Inode {
    ino: u64,
    dev: (u32, u32),
    alloc: &'static FrameAllocator,
    /// Size in bytes (Linux: `i_size`); faults beyond it get SIGBUS.
    size: AtomicUsize,
    /// Linux: `mapping->i_pages` — page index → frame (one reference held per page),
    /// sorted by index. A vector rather than the xarray, grown with `try_reserve` so an
    /// insertion can fail with ENOMEM (Linux: `xas_nomem`) instead of aborting.
    pages: crate::sync::Mutex<Vec<(usize, PhysAddr)>>,
    /// Linux: `mapping->i_mmap` — kept exact by the VMA engine (see [`IMmap`]).
    i_mmap: IMmap,
    /// hugetlbfs inodes: the hstate and the reservation map (Linux:
    /// `HUGETLBFS_I(inode)`, `inode->i_mapping->i_private_data`). Its page cache is
    /// indexed by huge page.
    hugetlb: Option<hugetlbfs::HugeInode>,
}

impl Inode {
    /// A new inode of `size` bytes whose page cache allocates from `alloc` (Linux:
    /// `new_inode()`); ENOMEM if it cannot be allocated.
    pub fn try_new(alloc: &'static FrameAllocator, size: usize) -> Result<Arc<Inode>, Errno> {
        Arc::try_new(Self::fields(alloc, size)).map_err(|_| Errno::ENOMEM)
    }

    /// A new inode's fields (Linux: `new_inode()`), for the file systems here.
    fn fields(alloc: &'static FrameAllocator, size: usize) -> Inode {
        Inode {
            ino: NEXT_INO.fetch_add(1, Ordering::Relaxed),
            dev: (0, 5),
            alloc,
            size: AtomicUsize::new(size),
            pages: crate::sync::Mutex::new(crate::sync::lockdep::LockClass::PageCache, Vec::new()),
            i_mmap: IMmap::new(),
            hugetlb: None,
        }
    }
    /// [`Inode::try_new`] for fixtures (tests, the boot demo), which treat running out of
    /// heap as fatal. Syscall paths use `try_new`.
    pub fn new(alloc: &'static FrameAllocator, size: usize) -> Arc<Inode> {
        Self::try_new(alloc, size).expect("inode fixture: out of memory")
    }
    /// Inode number.
    pub fn ino(&self) -> u64 {
        self.ino
    }
    /// Device (major, minor).
    pub fn dev(&self) -> (u32, u32) {
        self.dev
    }
    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.size.load(Ordering::Relaxed)
    }
    /// Set the size (Linux: `i_size_write`; no truncation of cached pages here).
    pub fn set_size(&self, size: usize) {
        self.size.store(size, Ordering::Relaxed);
    }
    /// Number of cached pages (Linux: `mapping->nrpages`).
    pub fn nr_pages(&self) -> usize {
        self.pages.lock().len()
    }
    /// The cached frame of page `index`, if any (Linux: `filemap_get_folio`).
    pub fn find_page(&self, index: usize) -> Option<PhysAddr> {
        let pages = self.pages.lock();
        pages
            .binary_search_by_key(&index, |&(i, _)| i)
            .ok()
            .map(|at| pages[at].1)
    }
    /// The cached frame of page `index`, allocating a zeroed one if absent (ramfs/shmem
    /// semantics: a hole reads as zeros). Linux: `filemap_fault` / `shmem_get_folio`.
    /// ENOMEM, with the cache unchanged, if the frame or the cache's room for it cannot
    /// be allocated.
    pub fn find_or_create_page(&self, index: usize) -> Result<PhysAddr, Errno> {
        let mut pages = self.pages.lock();
        let at = match pages.binary_search_by_key(&index, |&(i, _)| i) {
            Ok(at) => return Ok(pages[at].1),
            Err(at) => at,
        };
        // Room first (Linux: xas_nomem before the store), so nothing is left to undo.
        pages.try_reserve(1).map_err(|_| Errno::ENOMEM)?;
        let pa = self.alloc.alloc_zeroed(0).map_err(|_| Errno::ENOMEM)?;
        pages.insert(at, (index, pa));
        Ok(pa)
    }
    /// Copy `data` into the file at byte `offset` (Linux: `generic_perform_write`);
    /// grows the size.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), Errno> {
        let mut done = 0;
        while done < data.len() {
            let pos = offset + done;
            let pa = self.find_or_create_page(pos / PAGE_SIZE)?;
            let in_page = pos % PAGE_SIZE;
            let n = (PAGE_SIZE - in_page).min(data.len() - done);
            // SAFETY: `pa` is a page-cache frame we hold a reference on; the direct map reaches it and `in_page + n <= PAGE_SIZE`.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    data[done..].as_ptr(),
                    self.alloc.phys_to_virt(pa).add(in_page),
                    n,
                )
            };
            done += n;
        }
        let end = offset + data.len();
        self.size.fetch_max(end, Ordering::Relaxed);
        Ok(())
    }
    /// Read `buf.len()` bytes at `offset` from the page cache; holes read as zeros.
    pub fn read(&self, offset: usize, buf: &mut [u8]) {
        let mut done = 0;
        while done < buf.len() {
            let pos = offset + done;
            let in_page = pos % PAGE_SIZE;
            let n = (PAGE_SIZE - in_page).min(buf.len() - done);
            match self.find_page(pos / PAGE_SIZE) {
                // SAFETY: cached frame, reachable through the direct map, in bounds.
                Some(pa) => unsafe {
                    core::ptr::copy_nonoverlapping(
                        self.alloc.phys_to_virt(pa).add(in_page),
                        buf[done..].as_mut_ptr(),
                        n,
                    )
                },
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
    }

    /// VMAs mapping any page in `[first, last]`, in `vm_pgoff` order (Linux:
    /// `vma_interval_tree_foreach`).
    pub fn i_mmap_vmas(&self, first: usize, last: usize) -> Vec<VmaRef> {
        self.i_mmap.vmas_overlapping(first, last)
    }
    /// Number of VMAs mapping the file.
    pub fn i_mmap_len(&self) -> usize {
        self.i_mmap.len()
    }
    /// The file's `i_mmap` (Linux: `inode->i_mapping->i_mmap`).
    pub fn i_mmap(&self) -> &IMmap {
        &self.i_mmap
    }
}

impl Inode {
    /// The hugetlbfs part of the inode, if it is one.
    pub fn hugetlb(&self) -> Option<&hugetlbfs::HugeInode> {
        self.hugetlb.as_ref()
    }

    /// Adds `pa` at `index`, taking over one reference the caller holds (Linux:
    /// `hugetlb_add_to_page_cache`). EEXIST if the index is taken, ENOMEM if the cache
    /// cannot grow; the caller keeps its reference then.
    pub(crate) fn add_page(&self, index: usize, pa: PhysAddr) -> Result<(), Errno> {
        let mut pages = self.pages.lock();
        match pages.binary_search_by_key(&index, |&(i, _)| i) {
            Ok(_) => Err(Errno::EEXIST),
            Err(at) => {
                pages.try_reserve(1).map_err(|_| Errno::ENOMEM)?;
                pages.insert(at, (index, pa));
                Ok(())
            }
        }
    }

    /// Takes page `index` out of the cache and returns it with the cache's reference
    /// (Linux: `filemap_remove_folio`).
    pub(crate) fn remove_page(&self, index: usize) -> Option<PhysAddr> {
        let mut pages = self.pages.lock();
        let at = pages.binary_search_by_key(&index, |&(i, _)| i).ok()?;
        Some(pages.remove(at).1)
    }

    /// Cached indices in `[first, last]`.
    pub(crate) fn cached_indices(&self, first: usize, last: usize) -> Vec<usize> {
        self.pages
            .lock()
            .iter()
            .map(|&(i, _)| i)
            .filter(|&i| i >= first && i <= last)
            .collect()
    }
}

impl Drop for Inode {
    fn drop(&mut self) {
        // hugetlbfs: give back the reservations no page consumed (Linux:
        // hugetlbfs_evict_inode → remove_inode_hugepages → hugetlb_unreserve_pages).
        if let Some(h) = &self.hugetlb {
            let pages = self.pages.get_mut().len();
            h.evict(pages);
        }
        // Linux: truncate_inode_pages_final — drop the cache's reference on each page.
        for (_, pa) in core::mem::take(self.pages.get_mut()) {
            if let Err(e) = self.alloc.put_frame(pa) {
                log::error!("file: put of page-cache frame {:#x}: {e}", pa.as_u64());
            }
        }
    }
}

/// Legacy `->mmap`: gets the new VMA (detached, not yet in the tree) via [`MmapCtx`].
pub type MmapFn = fn(&Arc<File>, &mut MmapCtx<'_, '_>) -> Result<(), Errno>;
/// `->mmap_prepare`: gets only a [`VmAreaDesc`].
pub type MmapPrepareFn = fn(&Arc<File>, &mut VmAreaDesc) -> Result<(), Errno>;

/// File operations relevant to mapping (Linux: `struct file_operations`).
#[derive(Clone, Copy, Default)]
pub struct FileOperations {
    /// Legacy hook. Linux: `->mmap`.
    pub mmap: Option<MmapFn>,
    /// Descriptor hook. Linux: `->mmap_prepare`.
    pub mmap_prepare: Option<MmapPrepareFn>,
}

/// An open file (Linux: `struct file`).
pub struct File {
    inode: Arc<Inode>,
    mode: OpenMode,
    ops: &'static FileOperations,
    noexec: bool,
    name: String,
    /// Stacking files: the file underneath (Linux: `backing_file` / overlayfs realfile).
    lower: Option<Arc<File>>,
    /// Device files: physical base and length of the device memory.
    device: Option<(u64, usize)>,
}

impl File {
    /// Open `inode` with `mode` and `ops` (Linux: `alloc_file`).
    pub fn new(
        inode: Arc<Inode>,
        mode: OpenMode,
        ops: &'static FileOperations,
        name: &str,
    ) -> Arc<File> {
        Self::build(inode, mode, ops, name, None, None, false)
    }

    /// A file of a fixture (tests, the boot demo), which treat running out of heap as
    /// fatal. Syscall paths use [`File::try_build`].
    fn build(
        inode: Arc<Inode>,
        mode: OpenMode,
        ops: &'static FileOperations,
        name: &str,
        lower: Option<Arc<File>>,
        device: Option<(u64, usize)>,
        noexec: bool,
    ) -> Arc<File> {
        Self::try_build(inode, mode, ops, name, lower, device, noexec)
            .expect("file fixture: out of memory")
    }

    /// Linux: `alloc_file()`; ENOMEM if the file or its name cannot be allocated.
    fn try_build(
        inode: Arc<Inode>,
        mode: OpenMode,
        ops: &'static FileOperations,
        name: &str,
        lower: Option<Arc<File>>,
        device: Option<(u64, usize)>,
        noexec: bool,
    ) -> Result<Arc<File>, Errno> {
        let mut owned = String::new();
        owned
            .try_reserve_exact(name.len())
            .map_err(|_| Errno::ENOMEM)?;
        owned.push_str(name);
        Arc::try_new(File {
            inode,
            mode,
            ops,
            noexec,
            name: owned,
            lower,
            device,
        })
        .map_err(|_| Errno::ENOMEM)
    }

    /// The same inode opened again with another mode/mount flag (a new `struct file`).
    pub fn reopen(self: &Arc<Self>, mode: OpenMode, noexec: bool) -> Arc<File> {
        Self::build(
            self.inode.clone(),
            mode,
            self.ops,
            &self.name,
            self.lower.clone(),
            self.device,
            noexec,
        )
    }

    /// Linux: `file_inode()`.
    pub fn inode(&self) -> &Arc<Inode> {
        &self.inode
    }
    /// Open mode.
    pub fn mode(&self) -> OpenMode {
        self.mode
    }
    /// Operations.
    pub fn ops(&self) -> &'static FileOperations {
        self.ops
    }
    /// On a `noexec` mount (Linux: `path_noexec`).
    pub fn noexec(&self) -> bool {
        self.noexec
    }
    /// Path shown in maps.
    pub fn path(&self) -> &str {
        &self.name
    }
    /// The lower file of a stacking file.
    pub fn lower(&self) -> Option<&Arc<File>> {
        self.lower.as_ref()
    }
    /// Device memory (phys base, length) of a device file.
    pub fn device(&self) -> Option<(u64, usize)> {
        self.device
    }
    /// As the VMA layer's file handle.
    pub fn as_vm_file(self: &Arc<Self>) -> FileRef {
        self.clone()
    }
    /// Pointer identity.
    pub fn ptr_eq(a: &Arc<File>, b: &FileRef) -> bool {
        core::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
    }
}

impl VmFile for File {
    fn name(&self) -> &str {
        &self.name
    }
    fn i_mmap(&self) -> Option<&IMmap> {
        Some(&self.inode.i_mmap)
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn core::any::Any + Send + Sync> {
        self
    }
}

/// The [`File`] behind a VMA's file handle, if it is one of ours (a downcast: no
/// global table, no lock on the fault path).
pub fn lookup(f: &FileRef) -> Option<Arc<File>> {
    f.clone().into_any().downcast::<File>().ok()
}

/// Descriptor handed to `->mmap_prepare` (Linux: `struct vm_area_desc`).
///
/// Immutable fields (`mm`, `start`, `end`, the file being mapped) are readable only;
/// mutable fields are pre-filled and applied afterwards; write-only fields start empty
/// and are applied to the resulting VMA whether it was merged or newly allocated.
pub struct VmAreaDesc {
    mm_id: u64,
    start: usize,
    end: usize,
    file: Arc<File>,
    mm_live_vmas: usize,
    /// Mutable: file page offset.
    pub pgoff: usize,
    /// Mutable: the file the VMA will reference (Linux: `vm_file`).
    pub vm_file: Arc<File>,
    /// Mutable: VMA flags.
    pub vm_flags: VmFlags,
    /// Mutable: PTE protection bits.
    pub page_prot: u64,
    /// Write-only: VMA operations (applied only if set).
    pub vm_ops: Option<&'static VmOperations>,
    /// Write-only: `vm_private_data`.
    pub private_data: usize,
}

impl VmAreaDesc {
    pub(crate) fn new(
        mm_id: u64,
        range: core::ops::Range<usize>,
        file: Arc<File>,
        pgoff: usize,
        vm_flags: VmFlags,
        page_prot: u64,
        mm_live_vmas: usize,
    ) -> Self {
        VmAreaDesc {
            mm_id,
            start: range.start,
            end: range.end,
            vm_file: file.clone(),
            file,
            mm_live_vmas,
            pgoff,
            vm_flags,
            page_prot,
            vm_ops: None,
            private_data: 0,
        }
    }
    /// Immutable: the address space's id.
    pub fn mm_id(&self) -> u64 {
        self.mm_id
    }
    /// Immutable: start address.
    pub fn start(&self) -> usize {
        self.start
    }
    /// Immutable: end address.
    pub fn end(&self) -> usize {
        self.end
    }
    /// Immutable: the file being mapped (may differ from `vm_file` when stacked).
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }
    /// Diagnostics: VMAs allocated for this mm when the hook was called (tests check
    /// that the hook runs before any VMA for the new range exists).
    pub fn mm_live_vmas(&self) -> usize {
        self.mm_live_vmas
    }
}

/// What a legacy `->mmap` may do with the new VMA (Linux: the `vma` argument plus
/// `remap_pfn_range`). The VMA is detached: not yet visible in the tree.
pub struct MmapCtx<'g, 'm> {
    pub(crate) g: &'g mut MmWriteGuard<'m>,
    /// The page tables, locked only around each page-table step (the page-table lock
    /// is innermost: see [`crate::mmap`]).
    pub(crate) pt: &'g PageTableRoot,
    pub(crate) vma: VmaRef,
}

impl MmapCtx<'_, '_> {
    /// The VMA being set up.
    pub fn vma(&self) -> VmaRef {
        self.vma
    }
    /// The VMA's current file.
    pub fn vm_file(&self) -> Option<Arc<File>> {
        self.vma.file(&*self.g).as_ref().and_then(lookup)
    }
    /// Linux: `vm_flags_set/reset`.
    pub fn set_flags(&mut self, flags: VmFlags) -> Result<(), Errno> {
        self.g.vma_set_flags(self.vma, flags)
    }
    /// Linux: `vma->vm_ops = ...`.
    pub fn set_ops(&mut self, ops: Option<&'static VmOperations>) -> Result<(), Errno> {
        self.g.vma_set_ops(self.vma, ops)
    }
    /// Linux: `vma->vm_private_data = ...`.
    pub fn set_private_data(&mut self, data: usize) -> Result<(), Errno> {
        self.g.vma_set_private_data(self.vma, data)
    }
    /// Linux: `vma->vm_page_prot = ...`.
    pub fn set_page_prot(&mut self, prot: u64) -> Result<(), Errno> {
        self.g.vma_set_page_prot(self.vma, prot)
    }
    /// Replace pgoff and file together (Linux: `vma->vm_pgoff = `, `vma_set_file`).
    pub fn set_pgoff_and_file(&mut self, pgoff: usize, file: &Arc<File>) -> Result<(), Errno> {
        let v = self.vma;
        self.g.vma_init(
            v,
            crate::vma::VmaInit {
                start: v.start(),
                end: v.end(),
                pgoff,
                flags: v.flags(),
                file: Some(file.as_vm_file()),
                ops: v.ops(),
            },
        )
    }
    /// Map the whole VMA to physical `phys` (Linux: `remap_pfn_range`): unaccounted
    /// PTEs with the VMA's protection. Also sets `VM_IO | VM_PFNMAP | VM_DONTEXPAND |
    /// VM_DONTDUMP`, as Linux does.
    pub fn remap_pfn_range(&mut self, phys: u64) -> Result<(), Errno> {
        let v = self.vma;
        let flags =
            v.flags() | VmFlags::IO | VmFlags::PFNMAP | VmFlags::DONTEXPAND | VmFlags::DONTDUMP;
        self.g.vma_set_flags(v, flags)?;
        let pte = PageTableFlags::from_bits_truncate(v.page_prot());
        self.pt
            .map(
                VirtAddr::new(v.start() as u64)..VirtAddr::new(v.end() as u64),
                PhysAddr::new(phys),
                PageSize::Size4K,
                pte,
            )
            .map_err(Errno::from)
    }
    /// Undo a partial driver mapping (Linux: `unmap_region` on the error path).
    pub(crate) fn zap_all(&mut self) {
        let v = self.vma;
        let pt = self.pt;
        let mut gather = MmuGather::new(pt);
        let r = pt.unmap(
            VirtAddr::new(v.start() as u64)..VirtAddr::new(v.end() as u64),
            &mut gather,
        );
        gather.finish();
        // The VMA was validated by mmap before the hook ran: its range is a plain
        // user range of 4 KiB pages, which unmap always accepts.
        debug_assert!(r.is_ok(), "mmap: undoing a driver mapping failed: {r:?}");
    }
}

/// Call the `->mmap_prepare` of `lower` for a VMA being set up by a legacy `->mmap`
/// (Linux: `compat_vma_mmap_prepare()` / `__compat_vma_mmap_prepare()`).
///
/// Builds a descriptor from the VMA (range, pgoff, file, flags, page_prot; write-only
/// fields empty), calls the hook, then applies pgoff, file (replaced if changed),
/// flags, page_prot, and assigns `vm_ops` and `vm_private_data` unconditionally.
pub fn compat_vma_mmap_prepare(ctx: &mut MmapCtx<'_, '_>, lower: &Arc<File>) -> Result<(), Errno> {
    let prepare = lower.ops.mmap_prepare.ok_or(Errno::ENODEV)?;
    let v = ctx.vma;
    let cur = ctx.vm_file().unwrap_or_else(|| lower.clone());
    let live = ctx.g.live_vmas();
    let mut desc = VmAreaDesc::new(
        v.mm_id(),
        v.start()..v.end(),
        lower.clone(),
        v.pgoff(),
        v.flags(),
        v.page_prot(),
        live,
    );
    desc.vm_file = cur;
    prepare(lower, &mut desc)?;
    ctx.g.vma_init(
        v,
        crate::vma::VmaInit {
            start: v.start(),
            end: v.end(),
            pgoff: desc.pgoff,
            flags: desc.vm_flags,
            file: Some(desc.vm_file.as_vm_file()),
            ops: desc.vm_ops,
        },
    )?;
    ctx.g.vma_set_page_prot(v, desc.page_prot)?;
    ctx.g.vma_set_private_data(v, desc.private_data)?;
    Ok(())
}

// ---- file types ---------------------------------------------------------------------

/// ramfs/shmem: `mmap_prepare` that only accepts the defaults (Linux:
/// `shmem_mmap_prepare` / `generic_file_mmap_prepare`).
pub static RAMFS_FOPS: FileOperations = FileOperations {
    mmap: None,
    mmap_prepare: Some(ramfs_mmap_prepare),
};

/// The page-cache VMA operations (Linux: `generic_file_vm_ops` / `shmem_vm_ops`): the
/// fault path finds pages through the file, so no hook is needed here, but a file
/// VMA must have operations, or it is taken for anonymous (`vma_is_anonymous`).
pub static GENERIC_FILE_VM_OPS: VmOperations = VmOperations {
    open: None,
    close: None,
    may_split: None,
    fault: None,
    name: None,
};

/// Linux: `generic_file_mmap_prepare()` / `shmem_mmap_prepare()`: set the VMA's
/// operations. Through the compat layer the descriptor's `vm_ops` replaces the VMA's
/// (Linux: `set_vma_from_desc`), so a hook that left it unset would turn the file
/// VMA anonymous.
fn ramfs_mmap_prepare(_f: &Arc<File>, d: &mut VmAreaDesc) -> Result<(), Errno> {
    d.vm_ops = Some(&GENERIC_FILE_VM_OPS);
    Ok(())
}

/// A ramfs/shmem file of `size` bytes.
pub fn ramfs_file(
    alloc: &'static FrameAllocator,
    name: &str,
    size: usize,
    mode: OpenMode,
) -> Arc<File> {
    File::new(Inode::new(alloc, size), mode, &RAMFS_FOPS, name)
}

/// secretmem: `mmap_prepare` that requires a shared mapping and sets
/// `VM_LOCKED | VM_DONTDUMP` and its operations (Linux: `secretmem_mmap_prepare`). Because the flags are
/// set on the descriptor, adjacent mappings of the same file merge.
pub static SECRETMEM_FOPS: FileOperations = FileOperations {
    mmap: None,
    mmap_prepare: Some(secretmem_mmap_prepare),
};

fn secretmem_mmap_prepare(_f: &Arc<File>, d: &mut VmAreaDesc) -> Result<(), Errno> {
    if !d.vm_flags.contains(VmFlags::SHARED | VmFlags::MAYSHARE) {
        return Err(Errno::EINVAL);
    }
    d.vm_flags |= VmFlags::LOCKED | VmFlags::DONTDUMP;
    d.vm_ops = Some(&SECRETMEM_VM_OPS);
    Ok(())
}

/// Linux: `secretmem_vm_ops` (its `.fault` allocates and unmaps from the direct map;
/// here the page-cache fault path serves it).
pub static SECRETMEM_VM_OPS: VmOperations = VmOperations {
    open: None,
    close: None,
    may_split: None,
    fault: None,
    name: None,
};

/// A secretmem file (Linux: `memfd_secret`), opened read-write.
pub fn secretmem_file(alloc: &'static FrameAllocator, size: usize) -> Arc<File> {
    File::new(
        Inode::new(alloc, size),
        OpenMode::RDWR,
        &SECRETMEM_FOPS,
        "secretmem",
    )
}

/// A device: legacy `mmap` mapping device memory with `VM_PFNMAP | VM_IO` (Linux: a
/// character driver calling `remap_pfn_range`).
pub static DEVICE_FOPS: FileOperations = FileOperations {
    mmap: Some(device_mmap),
    mmap_prepare: None,
};

fn device_mmap(f: &Arc<File>, ctx: &mut MmapCtx<'_, '_>) -> Result<(), Errno> {
    let (base, len) = f.device.ok_or(Errno::ENODEV)?;
    let v = ctx.vma();
    let off = v.pgoff().checked_mul(PAGE_SIZE).ok_or(Errno::EINVAL)?;
    let size = v.end() - v.start();
    if off.checked_add(size).is_none_or(|e| e > len) {
        return Err(Errno::EINVAL);
    }
    ctx.remap_pfn_range(base + off as u64)
}

/// A device file exposing `len` bytes of device memory at physical `phys`.
pub fn device_file(
    alloc: &'static FrameAllocator,
    name: &str,
    phys: u64,
    len: usize,
    mode: OpenMode,
) -> Arc<File> {
    File::build(
        Inode::new(alloc, len),
        mode,
        &DEVICE_FOPS,
        name,
        None,
        Some((phys, len)),
        false,
    )
}

/// A stacking (overlayfs-like) file: legacy `mmap` that forwards to the lower file's
/// `mmap_prepare` via [`compat_vma_mmap_prepare`] and switches the VMA to the lower
/// file (Linux: `ovl_mmap` → `backing_file_mmap`).
pub static STACKING_FOPS: FileOperations = FileOperations {
    mmap: Some(stacking_mmap),
    mmap_prepare: None,
};

fn stacking_mmap(f: &Arc<File>, ctx: &mut MmapCtx<'_, '_>) -> Result<(), Errno> {
    let lower = f.lower.clone().ok_or(Errno::ENODEV)?;
    // Linux: vma_set_file(vma, realfile) before calling the lower hook.
    let pgoff = ctx.vma().pgoff();
    ctx.set_pgoff_and_file(pgoff, &lower)?;
    compat_vma_mmap_prepare(ctx, &lower)
}

/// A stacking file over `lower` (same mode).
pub fn stacking_file(lower: &Arc<File>, name: &str) -> Arc<File> {
    File::build(
        lower.inode.clone(),
        lower.mode,
        &STACKING_FOPS,
        name,
        Some(lower.clone()),
        None,
        false,
    )
}

/// The shmem file behind a shared anonymous mapping (Linux: `shmem_zero_setup`,
/// named `/dev/zero (deleted)` in maps). ENOMEM if the inode or file cannot be
/// allocated (Linux: `shmem_kernel_file_setup` failing in `shmem_zero_setup`).
pub fn shmem_zero_file(alloc: &'static FrameAllocator, size: usize) -> Result<Arc<File>, Errno> {
    File::try_build(
        Inode::try_new(alloc, size)?,
        OpenMode::RDWR,
        &RAMFS_FOPS,
        "/dev/zero (deleted)",
        None,
        None,
        false,
    )
}

/// Mark a page-cache frame dirty (Linux: `folio_mark_dirty`).
pub(crate) fn mark_dirty(alloc: &FrameAllocator, pa: PhysAddr) {
    if let Some(m) = alloc.meta(pa) {
        m.set_flags(FrameFlags::DIRTY);
    }
}
