//! Host-side driver for profiling the mmap paths under callgrind:
//! `cargo run --release --example profile_mmap -- <mmap|mprotect|anonfault|fork|fault10k|faultscale>`, and (with
//! `--features bench`) `<mprotect65k|find65k|findrcu65k|split65k|tree65k>`; the timed part is
//! `measured`, so `valgrind --tool=callgrind --collect-atstart=no
//! --toggle-collect='*measured*'` counts it alone.
use mm::frame::sim::simulated;
use mm::mmap::*;

const P: usize = 4096;
const RW: u32 = PROT_READ | PROT_WRITE;
const ANON: u32 = MAP_PRIVATE | MAP_ANONYMOUS;

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "mmap".into());
    let a = simulated(256 << 20);
    zero_page(a).unwrap();
    let mm = AddressSpace::new(a).unwrap();
    let anchor = mm.mmap(0, P, PROT_READ, ANON, None, 0).unwrap();
    match which.as_str() {
        #[cfg(feature = "bench")]
        "find65k" | "findrcu65k" | "split65k" => {
            use mm::vma::bench as vb;
            let n = 65_530;
            let m = vb::build_mm(n).unwrap();
            let pick = |i: usize| vb::addr((i.wrapping_mul(0x9e37_79b9) >> 7) % n) + 4096;
            measured(|| match which.as_str() {
                "find65k" => {
                    for i in 0..200_000 {
                        std::hint::black_box(vb::find(&m, pick(i)).unwrap());
                    }
                }
                "findrcu65k" => {
                    for i in 0..200_000 {
                        std::hint::black_box(vb::find_rcu(&m, pick(i)).unwrap());
                    }
                }
                _ => {
                    for i in 0..20_000 {
                        vb::split_remerge(&m, n / 2 + i % 64).unwrap();
                    }
                }
            });
        }
        #[cfg(feature = "bench")]
        "tree65k" => {
            // The tree's shape at 65,530 bench VMAs (the bench's vma_tree_* figures).
            let n = 65_530;
            let m = mm::vma::bench::build_mm(n).unwrap();
            let g = m.write_lock();
            eprintln!(
                "tree65k: height {}, {} bytes per VMA",
                g.view().height(),
                g.tree_bytes() / n
            );
        }
        "mprotect65k" => {
            const NBIG: usize = 64_000;
            let region = mm.mmap(0, NBIG * P, PROT_NONE, ANON, None, 0).unwrap();
            for i in (0..NBIG).step_by(2) {
                mm.mprotect(region + i * P, P, PROT_READ).unwrap();
            }
            let big = mm.mmap(0, 64 * P, RW, ANON, None, 0).unwrap();
            measured(|| {
                for _ in 0..20_000 {
                    mm.mprotect(big + 32 * P, P, PROT_READ).unwrap();
                    mm.mprotect(big + 32 * P, P, RW).unwrap();
                }
            });
        }
        "mmap" => {
            measured(|| {
                for _ in 0..20_000 {
                    let x = mm.mmap(0, P, RW, ANON, None, 0).unwrap();
                    mm.munmap(x, P).unwrap();
                }
            });
        }
        "faultscale" => {
            // Host threads faulting their own VMAs of one address space: throughput of
            // 2 threads over 1 (the kernel's fault_scaling_2cpus without QEMU), from the
            // first thread's start to the last one's end, median of 9 pairs. Needs a
            // quiet host.
            const PAGES: usize = 16_384;
            let round = |threads: usize| -> f64 {
                let vmas: Vec<usize> = (0..threads)
                    .map(|_| {
                        let a = mm.mmap(0, (PAGES + 1) * P, RW, ANON, None, 0).unwrap();
                        mm.mprotect(a + PAGES * P, P, PROT_NONE).unwrap();
                        a
                    })
                    .collect();
                let go = std::sync::Barrier::new(threads);
                let spans: Vec<(std::time::Instant, std::time::Instant)> =
                    std::thread::scope(|s| {
                        let hs: Vec<_> = vmas
                            .iter()
                            .map(|&a| {
                                let (mm, go) = (&mm, &go);
                                s.spawn(move || {
                                    go.wait();
                                    let t0 = std::time::Instant::now();
                                    for i in 0..PAGES {
                                        mm.handle_fault(a + i * P, Access::Write).unwrap();
                                    }
                                    (t0, std::time::Instant::now())
                                })
                            })
                            .collect();
                        hs.into_iter().map(|h| h.join().unwrap()).collect()
                    });
                for a in vmas {
                    mm.munmap(a, (PAGES + 1) * P).unwrap();
                }
                let t0 = spans.iter().map(|s| s.0).min().unwrap();
                let t1 = spans.iter().map(|s| s.1).max().unwrap();
                (t1 - t0).as_secs_f64()
            };
            round(2);
            let mut r: Vec<f64> = (0..9).map(|_| 2.0 * round(1) / round(2)).collect();
            r.sort_by(|a, b| a.partial_cmp(b).unwrap());
            eprintln!(
                "faultscale: 2 threads / 1 thread fault throughput {:.2} (median of 9: {r:.2?})",
                r[4]
            );
        }
        "anonfault" => {
            // `anon_fault_4k`: first-touch faults on one fresh 8,192-page mapping.
            const FAULT_PAGES: usize = 8_192;
            let a = mm.mmap(0, FAULT_PAGES * P, RW, ANON, None, 0).unwrap();
            measured(|| {
                for i in 0..FAULT_PAGES {
                    mm.handle_fault(a + i * P, Access::Write).unwrap();
                }
            });
            mm.munmap(a, FAULT_PAGES * P).unwrap();
        }
        "fork" => {
            // A 16 MiB populated private mapping, forked and the child dropped 40 times
            // (the bench's dup_mmap_exit_16MiB without the kernel around it).
            let len = 16 << 20;
            let big = mm.mmap(0, len, RW, ANON | MAP_POPULATE, None, 0).unwrap();
            measured(|| {
                for _ in 0..40 {
                    let child = mm.fork().unwrap();
                    drop(child);
                    // The parent's pages are writable again, as after the bench's rewrite.
                    for off in (0..len).step_by(P) {
                        mm.handle_fault(big + off, Access::Write).unwrap();
                    }
                }
            });
        }
        "mprotect" => {
            let big = mm.mmap(0, 64 * P, RW, ANON, None, 0).unwrap();
            measured(|| {
                for _ in 0..20_000 {
                    mm.mprotect(big + 32 * P, P, PROT_READ).unwrap();
                    mm.mprotect(big + 32 * P, P, RW).unwrap();
                }
            });
        }
        _ => {
            const N: usize = 10_000;
            let base = mm.mmap(0, N * P, RW, ANON, None, 0).unwrap();
            for i in (0..N).step_by(2) {
                mm.mprotect(base + i * P, P, RW | PROT_EXEC).unwrap();
            }
            let mut x = 0x2545_f491_4f6c_dd1du64;
            let mut order: Vec<usize> = (0..N).collect();
            for i in (1..N).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                order.swap(i, (x % (i as u64 + 1)) as usize);
            }
            measured(|| {
                for &i in &order {
                    mm.handle_fault(base + i * P, Access::Write).unwrap();
                }
            });
        }
    }
    mm.munmap(anchor, P).unwrap();
}

/// The timed part (a function of its own so that callgrind can count it alone).
#[inline(never)]
fn measured(f: impl FnOnce()) {
    let t = std::time::Instant::now();
    f();
    eprintln!("measured: {:?}", t.elapsed());
}
