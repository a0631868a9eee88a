//! Regression cases for the defects that fuzzing, the fail-the-Nth-allocation sweep and
//! thread stress found in the syscall layer: each case is the reproducer, and fails on
//! the code before its fix.

use alloc::vec;

use super::{Harness, vmas};
use crate::errno::Errno;
use crate::mmap::*;
use crate::paging::{PageSize, PageTableFlags};
use crate::vma::{VmFlags, VmStat};

const P: usize = 4096;
const RW: u32 = PROT_READ | PROT_WRITE;
const PA: u32 = MAP_PRIVATE | MAP_ANONYMOUS;

/// The VMA flags at `addr` (through PROCMAP_QUERY).
fn flags_at(asp: &AddressSpace, addr: usize) -> VmFlags {
    asp.query_vma(addr, 0).expect("a VMA at addr").vm_flags
}

/// Clears a sticky flag of the VMA at `addr` as `/proc/PID/clear_refs` does for
/// `VM_SOFTDIRTY` (Linux: `clear_refs_write` → `vm_flags_clear`), so a case can build
/// neighbours that differ only in sticky flags.
fn clear_flag(asp: &AddressSpace, addr: usize, flag: VmFlags) {
    let mut g = asp.mm().write_lock();
    let v = g.vma_lookup(addr).expect("a VMA at addr");
    g.vma_start_write(v);
    g.vma_set_flags(v, v.flags() - flag).unwrap();
}

/// Defect 1: a pure move (MREMAP_FIXED, same size) with MREMAP_DONTUNMAP leaves the
/// source VMA where it was; the walk over the source range must move past it, not find
/// it again (it looped to ENOMEM in release and overflowed in the dev profile).
pub fn pure_move_with_dontunmap_visits_each_vma_once(h: &dyn Harness) {
    let space = h.space();
    let asp = space.asp();
    let x = asp
        .mmap(0x7002_4000, 9 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    space.write(x + 4 * P, b"moved").unwrap();
    let flags = MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP;
    assert_eq!(
        asp.mremap(x + 4 * P, 2 * P, 2 * P, flags, 0x7002_0000),
        Ok(0x7002_0000)
    );
    assert_eq!(
        vmas(asp),
        vec![(0x7002_0000, 0x7002_2000), (x, x + 9 * P)],
        "the copy and the untouched source"
    );
    let mut b = [0u8; 5];
    space.read(0x7002_0000, &mut b).unwrap();
    assert_eq!(&b, b"moved");
    space.read(x + 4 * P, &mut b).unwrap();
    assert_eq!(b, [0; 5], "DONTUNMAP leaves the source empty");
}

/// Defect 2: an mremap shrink whose old range reaches past TASK_SIZE is EINVAL (the
/// range check of `do_vmi_munmap`), and unmaps nothing: before the fix it removed the
/// VMAs above the new end but left their pages mapped, so a fresh mapping there read
/// the old contents.
pub fn mremap_shrink_past_task_size_is_einval_and_leaks_nothing(h: &dyn Harness) {
    let space = h.space();
    let asp = space.asp();
    let x = asp
        .mmap(0x4000_0000, 4 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    let y = asp
        .mmap(0x5000_0000, P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    space.write(y, b"secret").unwrap();
    let before = vmas(asp);
    assert_eq!(
        asp.mremap(x, TASK_SIZE - x + P, P, 0, 0),
        Err(Errno::EINVAL)
    );
    assert_eq!(vmas(asp), before, "nothing unmapped");
    let mut b = [0u8; 6];
    space.read(y, &mut b).unwrap();
    assert_eq!(&b, b"secret");
    // A shrink inside the address space still works and leaves nothing mapped behind.
    assert_eq!(asp.mremap(x, 4 * P, P, 0, 0), Ok(x));
    assert!(asp.translate(x + P).is_none());
    // Replacing y with a fresh mapping reads zeros, never the old page.
    asp.mmap(y, P, RW, PA | MAP_FIXED, None, 0).unwrap();
    space.read(y, &mut b).unwrap();
    assert_eq!(b, [0; 6]);
}

/// Defect 3: user addresses and lengths whose sums overflow are errors with Linux's
/// errno, never an arithmetic panic (the kernel builds with overflow checks).
pub fn overflowing_mremap_arguments_are_errors(h: &dyn Harness) {
    let space = h.space();
    let asp = space.asp();
    let x = asp
        .mmap(0x7000_0000, 2 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    let fixed = MREMAP_MAYMOVE | MREMAP_FIXED;
    // `addr + old_len` wraps: Linux's overlap check sees no overlap, then no VMA at addr.
    assert_eq!(
        asp.mremap(0x1000, 0xffff_ffff_ffff_efff, 0x6000, fixed, 0x7003_8000),
        Err(Errno::EFAULT)
    );
    // A pure move whose range wraps walks no VMA: EFAULT.
    assert_eq!(
        asp.mremap(0xffff_ffff_ffff_f000, P, P, fixed, 0x10_0000),
        Err(Errno::EFAULT)
    );
    // An old_len within a page of the top wraps to 0 in Linux's PAGE_ALIGN: the
    // "duplicate" request, EFAULT with nothing mapped at addr, a copy of a shared one.
    assert_eq!(asp.mremap(0x10000, usize::MAX, P, 0, 0), Err(Errno::EFAULT));
    let sh = asp
        .mmap(
            0x7200_0000,
            P,
            RW,
            MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED,
            None,
            0,
        )
        .unwrap();
    let dup = asp.mremap(sh, usize::MAX, P, MREMAP_MAYMOVE, 0).unwrap();
    assert_ne!(dup, sh);
    asp.munmap(sh, P).unwrap();
    asp.munmap(dup, P).unwrap();
    // A shrink whose old range runs past the top: the munmap range check.
    assert_eq!(
        asp.mremap(x, usize::MAX & !0xfff, P, 0, 0),
        Err(Errno::EINVAL)
    );
    // The same sums through the other entry points.
    assert_eq!(asp.munmap(usize::MAX & !0xfff, 2 * P), Err(Errno::EINVAL));
    assert_eq!(asp.munmap(x, usize::MAX), Err(Errno::EINVAL));
    assert_eq!(
        asp.mprotect(usize::MAX & !0xfff, 2 * P, PROT_READ),
        Err(Errno::ENOMEM)
    );
    assert_eq!(
        asp.madvise(usize::MAX & !0xfff, 2 * P, MADV_DONTNEED),
        Err(Errno::EINVAL)
    );
    let mut b = [0u8; 2];
    assert!(asp.copy_from_user(usize::MAX, &mut b).is_err());
    assert!(asp.copy_to_user(usize::MAX, &b).is_err());
    assert_eq!(vmas(asp), vec![(x, x + 2 * P)]);
}

/// Defect 8: mprotect drops VM_ACCOUNT from an anonymous VMA made read-only while it
/// has no anon_vma (Linux's `mprotect_fixup`), so it merges with a read-only
/// neighbour as in Linux; once faulted (it has an anon_vma) it keeps VM_ACCOUNT and
/// does not.
pub fn mprotect_read_only_drops_vm_account_until_faulted(h: &dyn Harness) {
    let space = h.space();
    let asp = space.asp();
    // Never faulted: VM_ACCOUNT goes, and the next read-only mapping merges.
    let a = asp
        .mmap(0x6000_0000, 2 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    assert!(flags_at(asp, a).contains(VmFlags::ACCOUNT));
    asp.mprotect(a, 2 * P, PROT_READ).unwrap();
    assert!(!flags_at(asp, a).contains(VmFlags::ACCOUNT));
    asp.mmap(a + 2 * P, 2 * P, PROT_READ, PA | MAP_FIXED, None, 0)
        .unwrap();
    assert_eq!(vmas(asp), vec![(a, a + 4 * P)]);
    // Made writable again it is charged again.
    asp.mprotect(a, 4 * P, RW).unwrap();
    assert!(flags_at(asp, a).contains(VmFlags::ACCOUNT));

    // Faulted (an anon_vma exists): VM_ACCOUNT stays, so no merge with a new
    // read-only neighbour.
    let b = asp
        .mmap(0x6100_0000, 2 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    space.write_byte(b, 1).unwrap();
    asp.mprotect(b, 2 * P, PROT_READ).unwrap();
    assert!(flags_at(asp, b).contains(VmFlags::ACCOUNT));
    asp.mmap(b + 2 * P, 2 * P, PROT_READ, PA | MAP_FIXED, None, 0)
        .unwrap();
    assert_eq!(
        vmas(asp),
        vec![(a, a + 4 * P), (b, b + 2 * P), (b + 2 * P, b + 4 * P)]
    );
}

/// Defect 9: when mprotect or madvise merges the changed range into a neighbour, the
/// result keeps the sticky flags either side had (`VM_SOFTDIRTY` here); applying the
/// caller's own copy of the flags afterwards used to drop them.
pub fn mprotect_and_madvise_keep_sticky_flags_of_a_merge(h: &dyn Harness) {
    let space = h.space();
    let asp = space.asp();
    // mprotect: prev is soft-dirty, the changed VMA is not; the merge keeps it.
    let a = asp
        .mmap(0x6000_0000, 2 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    let b = asp
        .mmap(a + 2 * P, 2 * P, PROT_READ, PA | MAP_FIXED, None, 0)
        .unwrap();
    clear_flag(asp, b, VmFlags::SOFTDIRTY);
    assert!(flags_at(asp, a).contains(VmFlags::SOFTDIRTY));
    assert!(!flags_at(asp, b).contains(VmFlags::SOFTDIRTY));
    asp.mprotect(b, 2 * P, RW).unwrap();
    assert_eq!(vmas(asp), vec![(a, a + 4 * P)]);
    assert!(flags_at(asp, a).contains(VmFlags::SOFTDIRTY));

    // The sticky flag on the changed side survives too.
    let c = asp
        .mmap(0x6100_0000, 2 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    let d = asp
        .mmap(c + 2 * P, 2 * P, PROT_READ, PA | MAP_FIXED, None, 0)
        .unwrap();
    clear_flag(asp, c, VmFlags::SOFTDIRTY);
    asp.mprotect(d, 2 * P, RW).unwrap();
    assert_eq!(vmas(asp)[1], (c, c + 4 * P));
    assert!(flags_at(asp, c).contains(VmFlags::SOFTDIRTY));

    // madvise: the neighbour already has DONTCOPY and is soft-dirty; the advised VMA
    // is not soft-dirty. The merge keeps the flag.
    let e = asp
        .mmap(0x6200_0000, 2 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    asp.madvise(e, P, MADV_DONTFORK).unwrap();
    clear_flag(asp, e + P, VmFlags::SOFTDIRTY);
    assert!(flags_at(asp, e).contains(VmFlags::SOFTDIRTY));
    asp.madvise(e + P, P, MADV_DONTFORK).unwrap();
    assert_eq!(vmas(asp)[2], (e, e + 2 * P));
    let f = flags_at(asp, e);
    assert!(f.contains(VmFlags::DONTCOPY | VmFlags::SOFTDIRTY), "{f:?}");
}

/// Defects 2 and 10: a page-table step the page tables refuse (here: a range that cuts
/// a 2 MiB leaf, which this kernel does not split) fails the call before any VMA
/// changes, instead of being logged and skipped with the VMAs already changed.
pub fn refused_page_table_change_fails_before_vmas_change(h: &dyn Harness) {
    let space = h.space();
    let asp = space.asp();
    let huge = PageSize::Size2M.bytes() as usize;
    let x = asp
        .mmap(0x4000_0000, 2 * huge, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    // A write fault in the second half gives the VMA its anon_vma, as the fault that
    // made a huge anonymous page would have.
    space.write_byte(x + huge, 1).unwrap();
    // A 2 MiB anonymous leaf in the first half.
    let alloc = h.allocator();
    let frame = alloc.alloc_zeroed(9).expect("a 2 MiB block");
    // An anonymous page of this mapping, as a THP fault would make (validate_mm checks
    // that a writable private PTE maps an exclusive anonymous page).
    if let Some(m) = alloc.meta(frame) {
        m.set_flags(crate::frame::FrameFlags::ANON | crate::frame::FrameFlags::ANON_EXCLUSIVE);
    }
    let prot = PageTableFlags::PRESENT
        | PageTableFlags::WRITABLE
        | PageTableFlags::USER_ACCESSIBLE
        | PageTableFlags::NO_EXECUTE;
    asp.with_page_tables(|pt| {
        pt.map_frame(
            x86_64::VirtAddr::new(x as u64),
            frame,
            PageSize::Size2M,
            prot,
        )
    })
    .expect("map the 2 MiB leaf");
    let before = vmas(asp);
    assert_eq!(asp.mprotect(x + P, P, PROT_READ), Err(Errno::EINVAL));
    assert_eq!(asp.munmap(x + P, P), Err(Errno::EINVAL));
    assert_eq!(asp.madvise(x, P, MADV_DONTNEED), Err(Errno::EINVAL));
    assert_eq!(vmas(asp), before, "no split, no flag change");
    assert_eq!(
        flags_at(asp, x) & VmFlags::ACCESS,
        VmFlags::READ | VmFlags::WRITE
    );
    assert!(asp.translate(x).is_some(), "the leaf is still mapped");
    // Whole huge pages are fine: mprotect and munmap of the 2 MiB range work.
    asp.mprotect(x, huge, PROT_READ).unwrap();
    asp.munmap(x, huge).unwrap();
    assert!(asp.translate(x).is_none());
}

/// The counters `vm_stat_account` keeps, checked against a recount of the VMAs.
fn stat_matches_vmas(asp: &AddressSpace) -> VmStat {
    let g = asp.mm().write_lock();
    let s = g.vm_stat();
    assert_eq!(
        s,
        VmStat::recount(g.vmas()),
        "counters drifted from the VMAs"
    );
    s
}

/// Defect 8's accounting audit: `total_vm`/`data_vm`/`exec_vm`/`stack_vm` and the
/// commit charge follow every mmap, mprotect, mremap and munmap (Linux:
/// `vm_stat_account`), and the limits Linux checks refuse with ENOMEM before anything
/// changes: `RLIMIT_AS` and `RLIMIT_DATA` (`may_expand_vm`) and the overcommit
/// heuristic (a single charge larger than RAM).
pub fn accounting_follows_the_vmas_and_limits_refuse(h: &dyn Harness) {
    let layout = MmLayout {
        as_limit: 64 * P,
        data_limit: 16 * P,
        ..MmLayout::default()
    };
    let space = h.space_with_layout(layout);
    let asp = space.asp();
    assert_eq!(stat_matches_vmas(asp), VmStat::default());
    let a = asp
        .mmap(0x6000_0000, 4 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    asp.mmap(0x6100_0000, 2 * P, PROT_READ, PA | MAP_FIXED, None, 0)
        .unwrap();
    asp.mmap(
        0x6200_0000,
        P,
        PROT_READ | PROT_EXEC,
        PA | MAP_FIXED,
        None,
        0,
    )
    .unwrap();
    let sh = asp
        .mmap(
            0x6300_0000,
            2 * P,
            RW,
            MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED,
            None,
            0,
        )
        .unwrap();
    let s = stat_matches_vmas(asp);
    assert_eq!(
        (s.total_vm, s.data_vm, s.exec_vm, s.stack_vm, s.committed),
        (9, 4, 1, 0, 4)
    );
    // Read-only and never faulted: no longer data, no longer charged; and back.
    asp.mprotect(a, 4 * P, PROT_READ).unwrap();
    let s = stat_matches_vmas(asp);
    assert_eq!((s.data_vm, s.committed), (0, 0));
    asp.mprotect(a, 4 * P, RW).unwrap();
    assert_eq!(stat_matches_vmas(asp).committed, 4);
    // NORESERVE: data, not charged. GROWSDOWN: stack.
    asp.mmap(
        0x6400_0000,
        2 * P,
        RW,
        PA | MAP_FIXED | MAP_NORESERVE,
        None,
        0,
    )
    .unwrap();
    asp.mmap(
        0x6500_0000,
        2 * P,
        RW,
        PA | MAP_FIXED | MAP_GROWSDOWN,
        None,
        0,
    )
    .unwrap();
    let s = stat_matches_vmas(asp);
    assert_eq!(
        (s.total_vm, s.data_vm, s.stack_vm, s.committed),
        (13, 6, 2, 6)
    );
    // mremap growth in place and a move keep the counters exact.
    assert_eq!(asp.mremap(a, 4 * P, 6 * P, 0, 0), Ok(a));
    let moved = asp
        .mremap(a, 6 * P, 6 * P, MREMAP_MAYMOVE | MREMAP_FIXED, 0x6600_0000)
        .unwrap();
    let s = stat_matches_vmas(asp);
    assert_eq!((s.total_vm, s.data_vm, s.committed), (15, 8, 8));

    // RLIMIT_DATA (16 pages): 8 more private writable pages do not fit, read-only
    // ones do, and making those writable does not either.
    let before = vmas(asp);
    assert_eq!(
        asp.mmap(0x6700_0000, 9 * P, RW, PA | MAP_FIXED, None, 0),
        Err(Errno::ENOMEM)
    );
    assert_eq!(vmas(asp), before);
    let r = asp
        .mmap(0x6700_0000, 9 * P, PROT_READ, PA | MAP_FIXED, None, 0)
        .unwrap();
    assert_eq!(asp.mprotect(r, 9 * P, RW), Err(Errno::ENOMEM));
    assert_eq!(
        asp.mremap(moved, 6 * P, 15 * P, MREMAP_MAYMOVE, 0),
        Err(Errno::ENOMEM)
    );
    // RLIMIT_AS (64 pages, 24 in use): 41 more do not fit, 40 do; MAP_FIXED over
    // mapped pages counts them as given back.
    assert_eq!(stat_matches_vmas(asp).total_vm, 24);
    assert_eq!(
        asp.mmap(0x6800_0000, 41 * P, PROT_READ, PA | MAP_FIXED, None, 0),
        Err(Errno::ENOMEM)
    );
    asp.mmap(0x6800_0000, 40 * P, PROT_READ, PA | MAP_FIXED, None, 0)
        .unwrap();
    asp.mmap(r, 9 * P, PROT_READ, PA | MAP_FIXED, None, 0)
        .unwrap();
    assert_eq!(
        asp.mremap(sh, 2 * P, 3 * P, MREMAP_MAYMOVE, 0),
        Err(Errno::ENOMEM)
    );
    assert_eq!(stat_matches_vmas(asp).total_vm, 64);
    for (s, e) in vmas(asp) {
        asp.munmap(s, e - s).unwrap();
    }
    assert_eq!(stat_matches_vmas(asp), VmStat::default());
}

/// The overcommit heuristic (Linux's default `OVERCOMMIT_GUESS`): one charge larger
/// than all of RAM is ENOMEM at mmap, mprotect and mremap; MAP_NORESERVE and
/// read-only mappings are not charged.
pub fn overcommit_guess_refuses_a_charge_larger_than_ram(h: &dyn Harness) {
    let space = h.space();
    let asp = space.asp();
    let ram = h.allocator().total_frames() as usize;
    let big = (ram + 1) * P;
    assert_eq!(asp.mmap(0, big, RW, PA, None, 0), Err(Errno::ENOMEM));
    assert_eq!(asp.map_count(), 0);
    let nr = asp.mmap(0, big, RW, PA | MAP_NORESERVE, None, 0).unwrap();
    asp.munmap(nr, big).unwrap();
    let ro = asp.mmap(0, big, PROT_READ, PA, None, 0).unwrap();
    assert_eq!(asp.mprotect(ro, big, RW), Err(Errno::ENOMEM));
    assert_eq!(vmas(asp), vec![(ro, ro + big)]);
    asp.munmap(ro, big).unwrap();
    let small = asp.mmap(0, P, RW, PA, None, 0).unwrap();
    // The growth (not the new length) is what is charged.
    assert_eq!(
        asp.mremap(small, P, big + P, MREMAP_MAYMOVE, 0),
        Err(Errno::ENOMEM)
    );
    assert_eq!(stat_matches_vmas(asp).committed, 1);
}

// ---- found by the syscall fuzzer (`super::fuzz`) ---------------------------------------
//
// Each case makes the minimised call sequence the fuzzer printed (`mm/tests/fuzz.rs`
// replays the sequences themselves with every fuzzer check), then pins the behaviour
// down with direct assertions.

/// MAP_FIXED_NOREPLACE places exactly like MAP_FIXED (Linux's `do_mmap` sets MAP_FIXED
/// for it before `round_hint_to_min`): an unaligned address is EINVAL and one below
/// `mmap_min_addr` is EPERM. It used to be rounded as a hint and mapped elsewhere.
pub fn map_fixed_noreplace_address_is_not_a_hint(h: &dyn Harness) {
    let space = h.space();
    let asp = space.asp();
    let a = h.allocator();
    let lower = ramfs_for(a, 16);
    let upper = crate::file::stacking_file(&lower, "/fuzz/overlay/a");
    // The fuzzer's call: SHARED_VALIDATE | MAP_32BIT | NOREPLACE at an unaligned address.
    assert_eq!(
        asp.mmap(
            0x3da2_0638_9001,
            0x4000_0000,
            7,
            0x10_0043,
            Some(&upper),
            0x2000
        ),
        Err(Errno::EINVAL)
    );
    let anon = PA | MAP_FIXED_NOREPLACE;
    assert_eq!(
        asp.mmap(0x4000_0001, P, PROT_READ, anon, None, 0),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        asp.mmap(0x1000, P, PROT_READ, anon, None, 0),
        Err(Errno::EPERM)
    );
    assert_eq!(asp.map_count(), 0);
    assert_eq!(
        asp.mmap(0x4000_0000, P, PROT_READ, anon, None, 0),
        Ok(0x4000_0000)
    );
}

/// A read-write ramfs file of `pages` pages.
fn ramfs_for(
    a: &'static crate::frame::FrameAllocator,
    pages: usize,
) -> alloc::sync::Arc<crate::file::File> {
    crate::file::ramfs_file(a, "/fuzz/a", pages * P, crate::file::OpenMode::RDWR)
}

/// Populating (MAP_LOCKED / MAP_POPULATE) works VMA by VMA as Linux's `__mm_populate`:
/// a PROT_NONE VMA is skipped whole and a fault that fails (SIGBUS past the end of the
/// file) ends its VMA. It used to call the fault handler for every page of the length
/// asked for: 2^34 times for the fuzzer's 64 TiB PROT_NONE mapping (a hang), 2^28 for
/// a populated 1 TiB mapping of an 8-page secretmem file.
pub fn populate_is_bounded_by_what_it_can_populate(h: &dyn Harness) {
    let space = h.space();
    let asp = space.asp();
    let a = h.allocator();
    let other = crate::file::ramfs_file(a, "/fuzz/b", 4 * P + 100, crate::file::OpenMode::RDONLY);
    let x = asp
        .mmap(
            0x4002_d008,
            0x4000_0000_0000,
            PROT_GROWSUP,
            MAP_PRIVATE | MAP_LOCKED | MAP_UNINITIALIZED,
            Some(&other),
            0,
        )
        .unwrap();
    assert!(
        asp.translate(x).is_none(),
        "nothing to populate in PROT_NONE"
    );
    let secret = crate::file::secretmem_file(a, 8 * P);
    let y = asp
        .mmap(0, 1 << 40, RW, MAP_SHARED | MAP_POPULATE, Some(&secret), 0)
        .unwrap();
    for i in 0..8 {
        assert!(
            asp.translate(y + i * P).is_some(),
            "secretmem page {i} populated"
        );
    }
    assert!(
        asp.translate(y + 8 * P).is_none(),
        "nothing past the end of the file"
    );
    let f = ramfs_for(a, 3);
    let z = asp
        .mmap(
            0,
            1 << 40,
            PROT_READ,
            MAP_SHARED | MAP_POPULATE,
            Some(&f),
            0,
        )
        .unwrap();
    assert!((0..3).all(|i| asp.translate(z + i * P).is_some()));
    assert!(asp.translate(z + 3 * P).is_none());
}

/// A ramfs file mapped through a stacking file (legacy `.mmap` → the compat layer →
/// ramfs's `.mmap_prepare`) stays a file VMA: the compat layer copies the descriptor's
/// `vm_ops` into the VMA (Linux: `set_vma_from_desc`), and ramfs's hook sets them as
/// `generic_file_mmap_prepare` does. Without operations the VMA was taken for
/// anonymous, and a move gave it the anonymous `pgoff = addr >> PAGE_SHIFT`, mapping
/// the wrong file pages.
pub fn file_vma_through_the_compat_layer_keeps_its_file_offset_when_moved(h: &dyn Harness) {
    let space = h.space();
    let asp = space.asp();
    let lower = ramfs_for(h.allocator(), 16);
    let upper = crate::file::stacking_file(&lower, "/fuzz/overlay/a");
    // The fuzzer's calls: populate a private mapping, then grow part of it, which
    // moves it (the rest of the VMA is in the way).
    let p = asp
        .mmap(
            0x7fff_f7fe_8000,
            0x3b000,
            PROT_READ,
            MAP_PRIVATE | MAP_POPULATE,
            Some(&upper),
            0,
        )
        .unwrap();
    let moved = asp.mremap(p, 2 * P, 3 * P, MREMAP_MAYMOVE, 0).unwrap();
    assert_ne!(moved, p);
    assert_eq!(asp.query_vma(moved, 0).unwrap().pgoff, 0);
    lower.inode().write(5 * P, b"page five").unwrap();
    let x = asp
        .mmap(
            0x4000_0000,
            4 * P,
            PROT_READ,
            MAP_PRIVATE | MAP_FIXED,
            Some(&upper),
            4 * P as u64,
        )
        .unwrap();
    let y = asp
        .mremap(x + P, P, 2 * P, MREMAP_MAYMOVE | MREMAP_FIXED, 0x5000_0000)
        .unwrap();
    assert_eq!(
        asp.query_vma(y, 0).unwrap().pgoff,
        5,
        "the moved part maps file page 5"
    );
    let mut b = [0u8; 9];
    space.read(y, &mut b).unwrap();
    assert_eq!(&b, b"page five");
}

/// A file mapping with MAP_HUGETLB is EINVAL unless the file is on hugetlbfs (Linux:
/// `ksys_mmap_pgoff`), before `do_mmap`'s checks. It was mapped with base pages, or
/// failed later with another errno (EOVERFLOW for the fuzzer's offset).
pub fn map_hugetlb_with_a_file_is_einval(h: &dyn Harness) {
    let space = h.space();
    let asp = space.asp();
    let f = ramfs_for(h.allocator(), 1);
    let ro = f.reopen(crate::file::OpenMode::RDWR, true);
    assert_eq!(
        asp.mmap(
            0x4003_3000,
            0x7000,
            0x6ccf_a171,
            MAP_SHARED_VALIDATE | MAP_HUGETLB,
            Some(&ro),
            1 << 63
        ),
        Err(Errno::EINVAL)
    );
    let flags = MAP_PRIVATE | MAP_HUGETLB;
    assert_eq!(
        asp.mmap(0, P, PROT_READ, flags, Some(&f), 0),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        asp.mmap(0, 0, PROT_READ, flags, Some(&f), 0),
        Err(Errno::EINVAL)
    );
    assert_eq!(asp.map_count(), 0);
}

/// User copies check the range first (Linux: `access_ok()` → EFAULT): an address
/// outside the user half is refused before any translation. They used to translate
/// it in the space's page tables, whose upper half in the kernel is the kernel's own
/// memory: the fuzzer's `copy_to_user(0x48bc_8232_001d_42b4, ..)` (truncated to a
/// kernel-half address) wrote 3 KiB into kernel memory and reported success.
pub fn user_copies_refuse_addresses_outside_the_user_half(h: &dyn Harness) {
    let space = h.space();
    let asp = space.asp();
    let ts = asp.layout().task_size;
    let mut buf = [0u8; 0xc5e];
    assert_eq!(
        asp.copy_to_user(0x48bc_8232_001d_42b4, &buf),
        Err(FaultError::MapErr)
    );
    // A frame the kernel owns, through its direct-map address (upper half in the
    // kernel): neither copy may reach it.
    let frame = h.allocator().alloc_zeroed(0).unwrap();
    let kva = h.allocator().phys_to_virt(frame);
    // SAFETY: `frame` was just allocated for this case and is freed below; `kva` is its direct-map address, valid for PAGE_SIZE bytes.
    unsafe { kva.write_bytes(0x5a, P) };
    assert!(asp.copy_to_user(kva as usize, &[0; 16]).is_err());
    assert!(asp.copy_from_user(kva as usize, &mut buf[..16]).is_err());
    // SAFETY: as above: the frame is ours until freed below, and nobody else writes it.
    let bytes = unsafe { core::slice::from_raw_parts(kva, P) };
    assert!(bytes.iter().all(|&b| b == 0x5a));
    h.allocator().free(frame, 0).unwrap();
    // Ranges ending past TASK_SIZE are refused whole, even if their start is mapped.
    let x = asp
        .mmap(ts - 2 * P, 2 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    assert_eq!(
        asp.copy_to_user(x + P, &[1; P + 1]),
        Err(FaultError::MapErr)
    );
    assert_eq!(
        asp.copy_from_user(ts, &mut buf[..1]),
        Err(FaultError::MapErr)
    );
    asp.copy_to_user(x + P, &[1; P]).unwrap();
    assert_eq!(
        asp.copy_from_user(usize::MAX, &mut buf[..2]),
        Err(FaultError::MapErr)
    );
}

/// A user copy into a huge (2 MiB) leaf reaches the 4 KiB page its address names: the
/// copy used the leaf's frame start plus the offset within a 4 KiB page, so every
/// page of the huge page aliased its first one. (No syscall maps huge pages yet; the
/// leaf is installed as the hugetlb fault path would.)
pub fn user_copies_reach_the_right_page_of_a_huge_leaf(h: &dyn Harness) {
    let space = h.space();
    let asp = space.asp();
    let huge = PageSize::Size2M.bytes() as usize;
    let x = asp
        .mmap(0x4000_0000, huge, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    let alloc = h.allocator();
    let frame = alloc.alloc_zeroed(PageSize::Size2M.order()).unwrap();
    let flags = PageTableFlags::PRESENT
        | PageTableFlags::WRITABLE
        | PageTableFlags::USER_ACCESSIBLE
        | PageTableFlags::NO_EXECUTE;
    asp.with_page_tables(|pt| {
        pt.map_frame(
            x86_64::VirtAddr::new(x as u64),
            frame,
            PageSize::Size2M,
            flags,
        )
    })
    .unwrap();
    asp.copy_to_user(x + 5 * P + 0x10, b"page five").unwrap();
    let base = alloc.phys_to_virt(frame);
    let mut got = [0u8; 9];
    // SAFETY: the 2 MiB block stays mapped (and so allocated) until the space is dropped below; 5 pages in is inside it.
    unsafe { core::ptr::copy_nonoverlapping(base.add(5 * P + 0x10), got.as_mut_ptr(), 9) };
    assert_eq!(
        &got, b"page five",
        "the bytes landed in page 5 of the huge page"
    );
    // SAFETY: as above, the first page of the block.
    assert_eq!(unsafe { *base.add(0x10) }, 0, "not in page 0");
    let mut back = [0u8; 9];
    asp.copy_from_user(x + 5 * P + 0x10, &mut back).unwrap();
    assert_eq!(&back, b"page five");
    let mut b = [0u8; 9];
    space.read(x + 5 * P + 0x10, &mut b).unwrap();
    assert_eq!(&b, b"page five", "the MMU sees the same bytes");
}

/// Defect 1, second form (found by the fuzzer): a DONTUNMAP pure move whose
/// destination is just after the source VMA. The copy of an unfaulted anonymous VMA
/// gets the linear pgoff and merges into the source, which now reaches past the
/// range; the walk must stop at the range's end instead of finding it again (the
/// gap computation underflowed).
pub fn dontunmap_copy_merged_into_its_source_is_not_moved_again(h: &dyn Harness) {
    let space = h.space();
    let asp = space.asp();
    let x = asp
        .mmap(0x7100_0000, 4 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    let flags = MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP;
    assert_eq!(asp.mremap(x + P, P, P, flags, x + 4 * P), Ok(x + 4 * P));
    assert_eq!(
        vmas(asp),
        vec![(x, x + 5 * P)],
        "the copy merged into its source"
    );
}
