//! The mmap path with `.mmap_prepare` / legacy `.mmap` (Linux: `__mmap_region()`,
//! `mm/vma.c`; `compat_vma_mmap_prepare()`, `mm/util.c`): hook ordering,
//! descriptor fields, failure unwinding, secretmem merge, ENODEV, the compat layer
//! through a stacking file, device PFN mappings, and the EACCES/EPERM rules of
//! `do_mmap()`.

use alloc::sync::Arc;
use alloc::vec;
use core::sync::atomic::{AtomicUsize, Ordering};

use super::{Harness, vmas};
use crate::errno::Errno;
use crate::file::*;
use crate::mmap::*;
use crate::vma::{VmFlags, VmOperations, VmaRef};

const P: usize = 4096;
const RW: u32 = PROT_READ | PROT_WRITE;

// ---- hooks used by the cases (each case uses its own statics) ------------------------

static SEEN_LIVE: AtomicUsize = AtomicUsize::new(usize::MAX);
static SEEN_START: AtomicUsize = AtomicUsize::new(0);
static SEEN_END: AtomicUsize = AtomicUsize::new(0);
fn observe_prepare(_f: &Arc<File>, d: &mut VmAreaDesc) -> Result<(), Errno> {
    SEEN_LIVE.store(d.mm_live_vmas(), Ordering::SeqCst);
    SEEN_START.store(d.start(), Ordering::SeqCst);
    SEEN_END.store(d.end(), Ordering::SeqCst);
    Ok(())
}
static OBSERVE_FOPS: FileOperations = FileOperations {
    mmap: None,
    mmap_prepare: Some(observe_prepare),
};

/// `.mmap_prepare` sees the final range and runs before any VMA is allocated.
pub fn prepare_hook_runs_before_any_vma_exists(h: &dyn Harness) {
    let a = h.allocator();
    let space = h.space();
    let asp = space.asp();
    let f = File::new(Inode::new(a, 16 * P), OpenMode::RDWR, &OBSERVE_FOPS, "/obs");
    asp.mmap(
        0x1000_0000,
        P,
        PROT_READ,
        MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
        None,
        0,
    )
    .unwrap();
    let live = asp.live_vmas();
    let x = asp
        .mmap(0x2000_0000, 2 * P, RW, MAP_SHARED | MAP_FIXED, Some(&f), 0)
        .unwrap();
    assert_eq!(
        SEEN_LIVE.load(Ordering::SeqCst),
        live,
        "no VMA allocated before the hook"
    );
    assert_eq!(SEEN_START.load(Ordering::SeqCst), x);
    assert_eq!(SEEN_END.load(Ordering::SeqCst), x + 2 * P);
    assert_eq!(asp.live_vmas(), live + 1);
}

fn failing_prepare(_f: &Arc<File>, _d: &mut VmAreaDesc) -> Result<(), Errno> {
    Err(Errno::EAGAIN)
}
static FAIL_FOPS: FileOperations = FileOperations {
    mmap: None,
    mmap_prepare: Some(failing_prepare),
};

/// A failing `.mmap_prepare` leaves no VMA or `i_mmap` entry behind; under `MAP_FIXED`
/// the replaced range stays unmapped.
pub fn failing_hook_leaves_nothing_and_map_fixed_target_unmapped(h: &dyn Harness) {
    let a = h.allocator();
    let base = h.frames_in_use();
    let space = h.space();
    let asp = space.asp();
    {
        let f = File::new(Inode::new(a, 16 * P), OpenMode::RDWR, &FAIL_FOPS, "/fail");
        assert_eq!(
            asp.mmap(0, P, RW, MAP_SHARED, Some(&f), 0),
            Err(Errno::EAGAIN)
        );
        assert_eq!(asp.live_vmas(), 0);
        assert_eq!(f.inode().i_mmap_len(), 0);
        // Under MAP_FIXED the old range is left unmapped: `__mmap_region()` zaps and closes
        // the old VMAs before the hook runs (`vms_clean_up_area()`), so on failure
        // `vms_abort_munmap_vmas()` leaves a gap instead of putting them back.
        let x = asp
            .mmap(
                0x3000_0000,
                3 * P,
                RW,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                None,
                0,
            )
            .unwrap();
        space.write(x + P, b"gone").unwrap();
        assert_eq!(
            asp.mmap(x + P, P, RW, MAP_SHARED | MAP_FIXED, Some(&f), 0),
            Err(Errno::EAGAIN)
        );
        assert_eq!(vmas(asp), vec![(x, x + P), (x + 2 * P, x + 3 * P)]);
        assert!(asp.translate(x + P).is_none());
        assert_eq!(asp.live_vmas(), 2);
    }
    drop(space);
    assert_eq!(h.frames_in_use(), base);
}

// Mutable fields: the hook moves pgoff and adds a flag; write-only fields set ops and
// private data.
static HOOK_VM_OPS: VmOperations = VmOperations {
    open: None,
    close: None,
    may_split: None,
    fault: None,
    name: None,
};
fn mutating_prepare(_f: &Arc<File>, d: &mut VmAreaDesc) -> Result<(), Errno> {
    d.pgoff += 1;
    d.vm_flags |= VmFlags::DONTDUMP;
    d.vm_ops = Some(&HOOK_VM_OPS);
    d.private_data = 0xabc;
    Ok(())
}
static MUT_FOPS: FileOperations = FileOperations {
    mmap: None,
    mmap_prepare: Some(mutating_prepare),
};

/// The hook's `pgoff` and flags are used for the merge and the fault; its `vm_ops` and
/// private data land on the merged VMA.
pub fn mutable_fields_are_applied_and_write_only_land_on_merged_vma(h: &dyn Harness) {
    let a = h.allocator();
    let space = h.space();
    let asp = space.asp();
    let f = File::new(Inode::new(a, 16 * P), OpenMode::RDWR, &MUT_FOPS, "/mut");
    f.inode().write(P, b"page1").unwrap();
    let x = asp
        .mmap(0x4000_0000, P, RW, MAP_SHARED | MAP_FIXED, Some(&f), 0)
        .unwrap();
    let q = asp.query_vma(x, 0).unwrap();
    assert_eq!(q.pgoff, 1, "hook's pgoff used");
    assert!(q.vm_flags.contains(VmFlags::DONTDUMP));
    let mut b = [0u8; 5];
    space.read(x, &mut b).unwrap();
    assert_eq!(&b, b"page1", "fault uses the hook's pgoff");
    // The next mapping (offset P → pgoff 2 after the hook) is contiguous: merges.
    let y = asp
        .mmap(x + P, P, RW, MAP_SHARED | MAP_FIXED, Some(&f), P as u64)
        .unwrap();
    assert_eq!(
        vmas(asp),
        vec![(x, y + P)],
        "merged with post-hook attributes"
    );
    // Write-only fields were applied to the merged VMA: check through the engine.
    let g = asp.mm().read_lock();
    let v = g.vma_lookup(x).unwrap();
    assert!(core::ptr::eq(v.ops().unwrap(), &HOOK_VM_OPS));
    assert_eq!(v.private_data(), 0xabc);
}

/// secretmem sets `VM_LOCKED | VM_DONTDUMP`, adjacent mappings merge, private ones are
/// refused.
pub fn secretmem_sets_flags_and_adjacent_mappings_merge(h: &dyn Harness) {
    let a = h.allocator();
    let space = h.space();
    let asp = space.asp();
    let f = secretmem_file(a, 16 * P);
    let x = asp
        .mmap(0x5000_0000, 2 * P, RW, MAP_SHARED | MAP_FIXED, Some(&f), 0)
        .unwrap();
    asp.mmap(
        x + 2 * P,
        2 * P,
        RW,
        MAP_SHARED | MAP_FIXED,
        Some(&f),
        2 * P as u64,
    )
    .unwrap();
    assert_eq!(vmas(asp), vec![(x, x + 4 * P)]);
    let q = asp.query_vma(x, 0).unwrap();
    assert!(q.vm_flags.contains(VmFlags::LOCKED | VmFlags::DONTDUMP));
    // Private secretmem mapping refused by the hook.
    assert_eq!(
        asp.mmap(0, P, RW, MAP_PRIVATE, Some(&f), 0),
        Err(Errno::EINVAL)
    );
}

static BOTH_FOPS: FileOperations = FileOperations {
    mmap: Some(legacy_noop),
    mmap_prepare: Some(observe_prepare),
};
static NEITHER_FOPS: FileOperations = FileOperations {
    mmap: None,
    mmap_prepare: None,
};
fn legacy_noop(_f: &Arc<File>, _c: &mut MmapCtx<'_, '_>) -> Result<(), Errno> {
    Ok(())
}

/// A file with both hooks, or neither, cannot be mapped: `ENODEV`.
pub fn both_or_neither_hook_is_enodev(h: &dyn Harness) {
    let a = h.allocator();
    let space = h.space();
    let asp = space.asp();
    let both = File::new(Inode::new(a, P), OpenMode::RDWR, &BOTH_FOPS, "/both");
    let neither = File::new(Inode::new(a, P), OpenMode::RDWR, &NEITHER_FOPS, "/neither");
    assert_eq!(
        asp.mmap(0, P, RW, MAP_SHARED, Some(&both), 0),
        Err(Errno::ENODEV)
    );
    assert_eq!(
        asp.mmap(0, P, PROT_READ, MAP_PRIVATE, Some(&neither), 0),
        Err(Errno::ENODEV)
    );
    assert_eq!(asp.live_vmas(), 0);
}

// A legacy mmap that changes flags to something mergeable is NOT re-merged (Linux: the
// merge attempt in `__mmap_region()` comes before a `.mmap` hook runs on the new VMA, and
// is not retried after it).
fn legacy_set_dontdump(_f: &Arc<File>, c: &mut MmapCtx<'_, '_>) -> Result<(), Errno> {
    let fl = c.vma().flags() | VmFlags::DONTDUMP;
    c.set_flags(fl)
}
static LEGACY_FOPS: FileOperations = FileOperations {
    mmap: Some(legacy_set_dontdump),
    mmap_prepare: None,
};

/// Flags changed by a legacy `.mmap` are not retried for a merge.
pub fn legacy_mmap_flag_change_is_not_remerged(h: &dyn Harness) {
    let a = h.allocator();
    let space = h.space();
    let asp = space.asp();
    let f = File::new(
        Inode::new(a, 16 * P),
        OpenMode::RDWR,
        &LEGACY_FOPS,
        "/legacy",
    );
    let x = asp
        .mmap(0x6000_0000, P, RW, MAP_SHARED | MAP_FIXED, Some(&f), 0)
        .unwrap();
    assert!(
        asp.query_vma(x, 0)
            .unwrap()
            .vm_flags
            .contains(VmFlags::DONTDUMP)
    );
    // Second mapping: pre-hook flags lack DONTDUMP so no merge before the hook, and no
    // retry-merge after it even though the flags now match.
    asp.mmap(x + P, P, RW, MAP_SHARED | MAP_FIXED, Some(&f), P as u64)
        .unwrap();
    assert_eq!(vmas(asp), vec![(x, x + P), (x + P, x + 2 * P)]);
}

/// A stacking file maps its lower file through `compat_vma_mmap_prepare`; a lower file
/// without `.mmap_prepare` is `ENODEV`.
pub fn stacking_file_goes_through_compat_layer(h: &dyn Harness) {
    let a = h.allocator();
    let base = h.frames_in_use();
    let space = h.space();
    let asp = space.asp();
    {
        let lower = secretmem_file(a, 16 * P);
        lower.inode().write(0, b"lower").unwrap();
        let upper = stacking_file(&lower, "/overlay/file");
        let x = asp
            .mmap(
                0x7000_0000,
                2 * P,
                RW,
                MAP_SHARED | MAP_FIXED,
                Some(&upper),
                0,
            )
            .unwrap();
        let q = asp.query_vma(x, 0).unwrap();
        assert!(
            q.vm_flags.contains(VmFlags::LOCKED | VmFlags::DONTDUMP),
            "lower hook ran"
        );
        assert_eq!(
            q.name.as_deref(),
            Some("secretmem"),
            "VMA switched to the lower file"
        );
        assert!(Arc::ptr_eq(
            &lookup(&{
                let g = asp.mm().read_lock();
                g.vma_lookup(x).unwrap().file(&g).unwrap()
            })
            .unwrap(),
            &lower
        ));
        let mut b = [0u8; 5];
        space.read(x, &mut b).unwrap();
        assert_eq!(&b, b"lower");
        // Compat on a lower without mmap_prepare → ENODEV.
        let bad_lower = device_file(a, "/dev/x", 0xfee0_0000, P, OpenMode::RDWR);
        let bad = stacking_file(&bad_lower, "/overlay/dev");
        assert_eq!(
            asp.mmap(0, P, RW, MAP_SHARED, Some(&bad), 0),
            Err(Errno::ENODEV)
        );
        asp.munmap(x, 2 * P).unwrap();
    }
    drop(space);
    assert_eq!(h.frames_in_use(), base);
}

/// A device file maps its PFNs (`VM_PFNMAP | VM_IO`), which refuse DONTNEED and mremap
/// growth; an out-of-range offset leaves nothing behind.
pub fn device_file_maps_pfns(h: &dyn Harness) {
    let a = h.allocator();
    let base = h.frames_in_use();
    let space = h.space();
    let asp = space.asp();
    {
        let phys = 0xfee0_0000u64;
        let dev = device_file(a, "/dev/mem0", phys, 4 * P, OpenMode::RDWR);
        let x = asp
            .mmap(0, 2 * P, RW, MAP_SHARED, Some(&dev), P as u64)
            .unwrap();
        let q = asp.query_vma(x, 0).unwrap();
        assert!(q.vm_flags.contains(VmFlags::PFNMAP | VmFlags::IO));
        assert_eq!(asp.translate(x).unwrap().frame.as_u64(), phys + P as u64);
        assert_eq!(
            asp.translate(x + P).unwrap().frame.as_u64(),
            phys + 2 * P as u64
        );
        // PFN mappings refuse DONTNEED, never merge, and cannot grow by mremap.
        assert_eq!(asp.madvise(x, P, MADV_DONTNEED), Err(Errno::EINVAL));
        assert_eq!(
            asp.mremap(x, 2 * P, 3 * P, MREMAP_MAYMOVE, 0),
            Err(Errno::EFAULT)
        );
        // Out of the device's range: the driver refuses, nothing left behind.
        assert_eq!(
            asp.mmap(0, 2 * P, RW, MAP_SHARED, Some(&dev), 3 * P as u64),
            Err(Errno::EINVAL)
        );
        assert_eq!(asp.map_count(), 1);
        asp.munmap(x, 2 * P).unwrap();
        assert!(asp.translate(x).is_none());
    }
    drop(space);
    assert_eq!(h.frames_in_use(), base);
}

/// Open-mode, noexec and `MAP_SHARED_VALIDATE` rules of `do_mmap()`, with their check order.
pub fn file_mode_rules(h: &dyn Harness) {
    let a = h.allocator();
    let space = h.space();
    let asp = space.asp();
    let ro = ramfs_file(a, "/ro", 4 * P, OpenMode::RDONLY);
    let wo = ramfs_file(a, "/wo", 4 * P, OpenMode::WRONLY);
    // Shared writable needs FMODE_WRITE.
    assert_eq!(
        asp.mmap(0, P, RW, MAP_SHARED, Some(&ro), 0),
        Err(Errno::EACCES)
    );
    // Any mapping needs FMODE_READ.
    assert_eq!(
        asp.mmap(0, P, PROT_READ, MAP_PRIVATE, Some(&wo), 0),
        Err(Errno::EACCES)
    );
    // Private writable of a read-only file is fine.
    asp.mmap(0, P, RW, MAP_PRIVATE, Some(&ro), 0).unwrap();
    // Shared read-only mapping of a read-only file: no VM_MAYWRITE, no VM_SHARED.
    let x = asp.mmap(0, P, PROT_READ, MAP_SHARED, Some(&ro), 0).unwrap();
    let q = asp.query_vma(x, 0).unwrap();
    assert!(!q.vm_flags.intersects(VmFlags::MAYWRITE | VmFlags::SHARED));
    assert!(q.vm_flags.contains(VmFlags::MAYSHARE));
    // noexec mount: PROT_EXEC → EPERM, and no VM_MAYEXEC otherwise.
    let nx = ro.reopen(OpenMode::RDONLY, true);
    assert_eq!(
        asp.mmap(0, P, PROT_READ | PROT_EXEC, MAP_PRIVATE, Some(&nx), 0),
        Err(Errno::EPERM)
    );
    let y = asp
        .mmap(0, P, PROT_READ, MAP_PRIVATE, Some(&nx), 0)
        .unwrap();
    assert_eq!(
        asp.mprotect(y, P, PROT_READ | PROT_EXEC),
        Err(Errno::EACCES)
    );
    // MAP_SHARED_VALIDATE with an unknown flag → EOPNOTSUPP; plain MAP_SHARED ignores it.
    let rw = ramfs_file(a, "/rw", 4 * P, OpenMode::RDWR);
    assert_eq!(
        asp.mmap(0, P, RW, MAP_SHARED_VALIDATE | 0x40_0000, Some(&rw), 0),
        Err(Errno::EOPNOTSUPP)
    );
    asp.mmap(0, P, RW, MAP_SHARED | 0x40_0000, Some(&rw), 0)
        .unwrap();
    // GROWSDOWN file mapping → EINVAL; bad type → EINVAL.
    assert_eq!(
        asp.mmap(0, P, RW, MAP_PRIVATE | MAP_GROWSDOWN, Some(&rw), 0),
        Err(Errno::EINVAL)
    );
    assert_eq!(asp.mmap(0, P, RW, 0, Some(&rw), 0), Err(Errno::EINVAL));
    // Check order: EOPNOTSUPP before EACCES (both wrong).
    assert_eq!(
        asp.mmap(0, P, RW, MAP_SHARED_VALIDATE | 0x40_0000, Some(&ro), 0),
        Err(Errno::EOPNOTSUPP)
    );
    // EACCES (write) before ENODEV.
    let both = File::new(Inode::new(a, P), OpenMode::RDONLY, &BOTH_FOPS, "/both");
    assert_eq!(
        asp.mmap(0, P, RW, MAP_SHARED, Some(&both), 0),
        Err(Errno::EACCES)
    );
}

/// `vm_ops->close` runs when a VMA is replaced by `MAP_FIXED` and when it is unmapped.
pub fn close_hook_is_called_on_munmap_and_replacement(h: &dyn Harness) {
    static CLOSES: AtomicUsize = AtomicUsize::new(0);
    fn count_close(_: VmaRef) {
        CLOSES.fetch_add(1, Ordering::SeqCst);
    }
    static COUNT_OPS: VmOperations = VmOperations {
        open: None,
        close: Some(count_close),
        may_split: None,
        fault: None,
        name: None,
    };
    fn prep(_f: &Arc<File>, d: &mut VmAreaDesc) -> Result<(), Errno> {
        d.vm_ops = Some(&COUNT_OPS);
        Ok(())
    }
    static F: FileOperations = FileOperations {
        mmap: None,
        mmap_prepare: Some(prep),
    };
    let a = h.allocator();
    let space = h.space();
    let asp = space.asp();
    let f = File::new(Inode::new(a, 16 * P), OpenMode::RDWR, &F, "/c");
    // Counted from here, so the case holds however often it runs in one boot.
    let before = CLOSES.load(Ordering::SeqCst);
    let x = asp
        .mmap(0x9000_0000, 2 * P, RW, MAP_SHARED | MAP_FIXED, Some(&f), 0)
        .unwrap();
    asp.mmap(x, P, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, None, 0)
        .unwrap();
    assert_eq!(CLOSES.load(Ordering::SeqCst) - before, 1);
    asp.munmap(x, 2 * P).unwrap();
    assert_eq!(CLOSES.load(Ordering::SeqCst) - before, 2);
}
