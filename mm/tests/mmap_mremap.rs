//! mremap on the host: the shared cases of `mm::conformance::mremap` (also run in the
//! kernel by `kernel/tests/mmap_api.rs`), one host test each, plus rollback when moving
//! the page tables runs out of memory, which needs the whole frame allocator exhausted
//! and so runs here only.

mod common;

use common::{P, PA, RW, read, setup, vmas};
use mm::conformance::host::HostHarness;
use mm::conformance::mremap;
use mm::errno::Errno;
use mm::mmap::*;

const FIXED_MOVE: u32 = MREMAP_MAYMOVE | MREMAP_FIXED;

/// One `#[test]` per shared mremap case, run with a fresh host harness.
macro_rules! host_tests {
    (() syscalls: $_s:tt, file: $_f:tt, mremap: [$($name:ident),* $(,)?], $($other_groups:tt)*) => {
        $(
            #[test]
            fn $name() {
                mremap::$name(&HostHarness::new());
            }
        )*
    };
}
mm::conformance_cases!(host_tests);

#[test]
fn out_of_memory_while_moving_page_tables_leaves_the_source_intact() {
    let (alloc, _b, asp) = setup();
    let x = asp
        .mmap(0x4000_0000, 4 * P, RW, PA | MAP_FIXED, None, 0)
        .unwrap();
    asp.copy_to_user(x, b"keep").unwrap();
    asp.copy_to_user(x + 3 * P, b"me").unwrap();
    let before = vmas(&asp);
    let frames_before = alloc.allocated_frames_settled();
    // Exhaust the frames: the destination (another 512 GiB slot) needs new tables.
    let mut held = vec![];
    while let Ok(f) = alloc.alloc(0) {
        held.push(f);
    }
    let t = 0x80_0000_0000;
    assert_eq!(
        asp.mremap(x, 4 * P, 4 * P, FIXED_MOVE, t),
        Err(Errno::ENOMEM)
    );
    for f in held {
        alloc.free(f, 0).unwrap();
    }
    assert_eq!(
        vmas(&asp),
        before,
        "no VMA at the destination, source unchanged"
    );
    assert_eq!(
        alloc.allocated_frames_settled(),
        frames_before,
        "nothing leaked"
    );
    assert_eq!(read(&asp, x, 4), b"keep");
    assert_eq!(read(&asp, x + 3 * P, 2), b"me");
}
