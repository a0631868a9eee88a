//! Host-side driver for profiling the mmap paths under callgrind:
//! `cargo run --release --example profile_mmap -- <mmap|mprotect|fork|fault10k>`.
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
        "mmap" => {
            for _ in 0..20_000 {
                let x = mm.mmap(0, P, RW, ANON, None, 0).unwrap();
                mm.munmap(x, P).unwrap();
            }
        }
        "fork" => {
            // A 16 MiB populated private mapping, forked and the child dropped 40 times
            // (the bench's dup_mmap_exit_16MiB without the kernel around it).
            let len = 16 << 20;
            let big = mm.mmap(0, len, RW, ANON | MAP_POPULATE, None, 0).unwrap();
            for _ in 0..40 {
                let child = mm.fork().unwrap();
                drop(child);
                // The parent's pages are writable again, as after the bench's rewrite.
                for off in (0..len).step_by(P) {
                    mm.handle_fault(big + off, Access::Write).unwrap();
                }
            }
        }
        "mprotect" => {
            let big = mm.mmap(0, 64 * P, RW, ANON, None, 0).unwrap();
            for _ in 0..20_000 {
                mm.mprotect(big + 32 * P, P, PROT_READ).unwrap();
                mm.mprotect(big + 32 * P, P, RW).unwrap();
            }
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
            for &i in &order {
                mm.handle_fault(base + i * P, Access::Write).unwrap();
            }
        }
    }
    mm.munmap(anchor, P).unwrap();
}
