//! Regression: one munmap over thousands of VMAs must not fail with ENOMEM.
//! The tree's preallocation bound was quadratic in the batch size (10,000 erases
//! asked for ~300 million nodes); it is linear now.

use mm::vma::{Mm, VmFlags};

#[test]
fn detach_range_over_ten_thousand_vmas_succeeds() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    const N: usize = 10_000;
    const P: usize = 0x1000;
    let base = 0x1000_0000;
    for i in 0..N {
        // Alternate EXEC so neighbours never merge.
        let flags = if i % 2 == 0 {
            VmFlags::RW_DEFAULT
        } else {
            VmFlags::RW_DEFAULT | VmFlags::EXEC
        };
        let a = base + i * P;
        g.map_anon(a, a + P, a >> 12, flags).unwrap();
    }
    assert_eq!(g.map_count(), N);
    let d = g
        .detach_range(base, base + N * P)
        .expect("one munmap over 10,000 VMAs");
    g.remove_vmas(d);
    assert_eq!(g.map_count(), 0);
}
