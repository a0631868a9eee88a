//! Syscall-shaped API of `mm::mmap::AddressSpace` over simulated memory: errno cases
//! and their order (spec §9), placement, MAP_FIXED, munmap/mprotect/madvise/mremap,
//! maps and PROCMAP_QUERY, and frame/VMA baselines.
//!
//! The cases live in `mm::conformance::syscalls`, shared with the in-kernel runner
//! (`kernel/tests/mmap_api.rs`); this file runs each as one host test. mremap is
//! tested here only.

use mm::conformance::host::HostHarness;
use mm::conformance::syscalls;
use mm::errno::Errno;
use mm::frame::FrameAllocator;
use mm::frame::sim::simulated;
use mm::mmap::*;

const P: usize = 4096;
const RW: u32 = PROT_READ | PROT_WRITE;
const PA: u32 = MAP_PRIVATE | MAP_ANONYMOUS;

/// One `#[test]` per shared syscall case, run with a fresh host harness.
macro_rules! host_tests {
    (() syscalls: [$($name:ident),* $(,)?], $($other_groups:tt)*) => {
        $(
            #[test]
            fn $name() {
                syscalls::$name(&HostHarness::new());
            }
        )*
    };
}
mm::conformance_cases!(host_tests);

fn setup() -> (&'static FrameAllocator, u64, AddressSpace) {
    let a = simulated(32 << 20);
    zero_page(a).unwrap();
    let base = a.allocated_frames();
    let asp = AddressSpace::new(a).unwrap();
    (a, base, asp)
}

fn vmas(asp: &AddressSpace) -> Vec<(usize, usize)> {
    let mut out = vec![];
    let mut a = 0;
    while let Some(q) = asp.query_vma(a, PROCMAP_QUERY_COVERING_OR_NEXT_VMA) {
        out.push((q.start, q.end));
        a = q.end;
    }
    out
}

#[test]
fn mremap_errors() {
    let (_a, _b, asp) = setup();
    let x = asp
        .mmap(0x8000_0000, 2 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    assert_eq!(asp.mremap(x, P, P, 8, 0), Err(Errno::EINVAL));
    assert_eq!(
        asp.mremap(x, P, P, MREMAP_FIXED, x + 10 * P),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        asp.mremap(x, P, 2 * P, MREMAP_DONTUNMAP | MREMAP_MAYMOVE, 0),
        Err(Errno::EINVAL)
    );
    assert_eq!(asp.mremap(x, P, P, MREMAP_DONTUNMAP, 0), Err(Errno::EINVAL));
    assert_eq!(asp.mremap(x + 1, P, P, 0, 0), Err(Errno::EINVAL));
    assert_eq!(asp.mremap(x, P, 0, 0, 0), Err(Errno::EINVAL));
    assert_eq!(
        asp.mremap(0x10000, P, 2 * P, MREMAP_MAYMOVE, 0),
        Err(Errno::EFAULT)
    );
    // Old range beyond the VMA.
    assert_eq!(
        asp.mremap(x, 3 * P, 4 * P, MREMAP_MAYMOVE, 0),
        Err(Errno::EFAULT)
    );
    // Overlapping FIXED move.
    assert_eq!(
        asp.mremap(x, 2 * P, 2 * P, MREMAP_MAYMOVE | MREMAP_FIXED, x + P),
        Err(Errno::EINVAL)
    );
    // Growth blocked without MAYMOVE.
    asp.mmap(x + 2 * P, P, PROT_READ, PA | MAP_FIXED, None, 0)
        .unwrap();
    assert_eq!(asp.mremap(x, 2 * P, 3 * P, 0, 0), Err(Errno::ENOMEM));
}

#[test]
fn mremap_shrink_grow_move_dontunmap() {
    let (a, base, asp) = setup();
    let x = asp
        .mmap(0x9000_0000, 4 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    asp.copy_to_user(x, b"hello").unwrap();
    asp.copy_to_user(x + 3 * P, b"tail").unwrap();
    // Shrink in place.
    assert_eq!(asp.mremap(x, 4 * P, 2 * P, 0, 0), Ok(x));
    assert_eq!(vmas(&asp), vec![(x, x + 2 * P)]);
    // Grow in place.
    assert_eq!(asp.mremap(x, 2 * P, 6 * P, 0, 0), Ok(x));
    assert_eq!(vmas(&asp), vec![(x, x + 6 * P)]);
    let mut b = [0u8; 4];
    asp.copy_from_user(x + 3 * P, &mut b).unwrap();
    assert_eq!(b, [0; 4], "shrunk-away page is gone");
    // Move with MAYMOVE when blocked.
    asp.mmap(x + 6 * P, P, PROT_READ, PA | MAP_FIXED, None, 0)
        .unwrap();
    let n = asp.mremap(x, 6 * P, 8 * P, MREMAP_MAYMOVE, 0).unwrap();
    assert_ne!(n, x);
    let mut h = [0u8; 5];
    asp.copy_from_user(n, &mut h).unwrap();
    assert_eq!(&h, b"hello", "contents moved");
    assert!(asp.query_vma(x, 0).is_none(), "old range unmapped");
    // FIXED move.
    let t = 0xa000_0000;
    assert_eq!(
        asp.mremap(n, 8 * P, 8 * P, MREMAP_MAYMOVE | MREMAP_FIXED, t),
        Ok(t)
    );
    asp.copy_from_user(t, &mut h).unwrap();
    assert_eq!(&h, b"hello");
    // DONTUNMAP: old range stays mapped and reads zero.
    let d = asp
        .mremap(t, 8 * P, 8 * P, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, 0)
        .unwrap();
    asp.copy_from_user(d, &mut h).unwrap();
    assert_eq!(&h, b"hello");
    assert!(asp.query_vma(t, 0).is_some());
    asp.copy_from_user(t, &mut h).unwrap();
    assert_eq!(h, [0; 5]);
    drop(asp);
    assert_eq!(a.allocated_frames(), base);
}
