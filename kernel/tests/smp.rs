//! In-kernel tests of SMP: every CPU up, cross-calls, per-CPU data, TLB shootdown on
//! the real (emulated) MMU of several CPUs, and no deadlock between a CPU spinning on
//! a lock and the holder's shootdown IPI. Run with several CPUs:
//! `KERNEL_SMP=4 cargo ktest --test smp` (`.ci/run` does).
#![no_std]
#![no_main]
// Test cases are named for what they check; the custom test framework makes them
// items of the test crate, which `missing_docs` would otherwise ask to document.
#![allow(missing_docs)]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::run_tests)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use kernel::address_space;
use kernel::arch::extable::{probe_read, probe_write};
use kernel::arch::{apic, tsc};
use kernel::memory::frames;
use kernel::percpu::{CacheLine, MAX_CPUS, PerCpu, block, this_block, this_cpu};
use kernel::smp::{self, call, online_mask, run_on};
use mm::mmap::{AddressSpace, MAP_ANONYMOUS, MAP_PRIVATE, MmLayout, PROT_READ, PROT_WRITE};
use x86_64::{PhysAddr, VirtAddr};

kernel::test_kernel_main!();

const P: usize = 4096;

/// Every online CPU but this one (the "B" CPUs of the shootdown tests).
fn others() -> u64 {
    online_mask() & !(1 << this_cpu())
}

#[test_case]
fn every_cpu_in_the_madt_is_online_with_distinct_ids() {
    let n = smp::online_cpus();
    assert!(
        n >= 2,
        "the SMP tests need several CPUs: run them with KERNEL_SMP=4 (got {n})"
    );
    assert_eq!(n, smp::madt_cpus(), "every CPU the MADT lists came up");
    assert_eq!(online_mask(), (1u64 << n) - 1, "CPU indices are 0..n");
    static SEEN: PerCpu<AtomicU64> =
        PerCpu::new([const { CacheLine(AtomicU64::new(u64::MAX)) }; MAX_CPUS]);
    let ran = run_on(u64::MAX, &|| {
        // The index from GS, the APIC id from the APIC itself.
        SEEN.get().store(apic::id() as u64, Ordering::SeqCst);
    });
    assert_eq!(ran, online_mask());
    let mut ids: Vec<u64> = (0..n).map(|c| SEEN.on(c).load(Ordering::SeqCst)).collect();
    for (cpu, &id) in ids.iter().enumerate() {
        assert_eq!(
            id,
            block(cpu).apic_id.load(Ordering::Relaxed) as u64,
            "CPU {cpu} ran the code (its APIC id matches its per-CPU block)"
        );
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "APIC ids are distinct");
}

#[test_case]
fn each_cpu_answers_a_cross_call_ipi() {
    static RAN_ON: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(usize::MAX) }; MAX_CPUS];
    fn mark(slot: usize) {
        RAN_ON[slot].store(this_cpu(), Ordering::SeqCst);
    }
    for cpu in call::cpus(others()) {
        let sent = call::IPIS_SENT.load(Ordering::Relaxed);
        call::smp_call_function_many(1 << cpu, mark, cpu, true);
        assert_eq!(RAN_ON[cpu].load(Ordering::SeqCst), cpu, "CPU {cpu} ran it");
        assert_eq!(call::IPIS_SENT.load(Ordering::Relaxed), sent + 1, "one IPI");
    }
    // Everyone at once, the caller excluded (Linux's smp_call_function_many).
    let me = this_cpu();
    RAN_ON[me].store(usize::MAX, Ordering::SeqCst);
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    fn count(_: usize) {
        COUNT.fetch_add(1, Ordering::SeqCst);
    }
    COUNT.store(0, Ordering::SeqCst);
    call::smp_call_function_many(u64::MAX, count, 0, true);
    assert_eq!(COUNT.load(Ordering::SeqCst), smp::online_cpus() - 1);
    // Without waiting: the calls still all run.
    COUNT.store(0, Ordering::SeqCst);
    call::smp_call_function_many(u64::MAX, count, 0, false);
    let start = tsc::rdtsc();
    while COUNT.load(Ordering::SeqCst) < smp::online_cpus() - 1 {
        assert!(
            tsc::cycles_to_ns(tsc::rdtsc() - start) < 5_000_000_000,
            "lost calls"
        );
    }
}

#[test_case]
fn cpus_cross_calling_each_other_do_not_deadlock() {
    // Every CPU sends a cross-call to every other at the same time, many times; the
    // waits answer the calls aimed at the waiter.
    static HITS: AtomicUsize = AtomicUsize::new(0);
    fn hit(_: usize) {
        HITS.fetch_add(1, Ordering::Relaxed);
    }
    HITS.store(0, Ordering::SeqCst);
    let n = smp::online_cpus();
    run_on(u64::MAX, &|| {
        for _ in 0..200 {
            call::smp_call_function_many(u64::MAX, hit, 0, true);
        }
    });
    assert_eq!(HITS.load(Ordering::SeqCst), 200 * n * (n - 1));
}

#[test_case]
fn per_cpu_data_is_really_per_cpu() {
    static VALUE: PerCpu<AtomicUsize> =
        PerCpu::new([const { CacheLine(AtomicUsize::new(0)) }; MAX_CPUS]);
    static ARRIVED: AtomicUsize = AtomicUsize::new(0);
    static BAD: AtomicUsize = AtomicUsize::new(0);
    ARRIVED.store(0, Ordering::SeqCst);
    let n = smp::online_cpus();
    run_on(u64::MAX, &|| {
        let me = this_cpu();
        VALUE.get().store(1000 + me, Ordering::SeqCst);
        // The block GS points at is this CPU's, and names it.
        if this_block().id() != me || !core::ptr::eq(this_block(), block(me)) {
            BAD.fetch_add(1, Ordering::SeqCst);
        }
        // Everyone has written before anyone reads.
        ARRIVED.fetch_add(1, Ordering::SeqCst);
        while ARRIVED.load(Ordering::SeqCst) < n && !smp::aborted() {
            core::hint::spin_loop();
        }
        if VALUE.get().load(Ordering::SeqCst) != 1000 + me {
            BAD.fetch_add(1, Ordering::SeqCst);
        }
    });
    assert_eq!(BAD.load(Ordering::SeqCst), 0);
    for cpu in 0..n {
        assert_eq!(VALUE.on(cpu).load(Ordering::SeqCst), 1000 + cpu);
    }
}

#[test_case]
fn a_frame_freed_on_one_cpu_waits_on_that_cpus_page_list() {
    use mm::frame::FrameFlags;
    static FREED: AtomicU64 = AtomicU64::new(0);
    static TAKEN: AtomicBool = AtomicBool::new(false);
    FREED.store(0, Ordering::SeqCst);
    TAKEN.store(false, Ordering::SeqCst);
    let mine = AtomicU64::new(0);
    run_on(0b11, &|| {
        if this_cpu() == 1 {
            // CPU 1 frees a frame: it goes to the head of CPU 1's list.
            let pa = frames().alloc(0).unwrap();
            frames().free(pa, 0).unwrap();
            FREED.store(pa.as_u64(), Ordering::SeqCst);
            // Stay here (no other work on this CPU) until CPU 0 has allocated.
            while !TAKEN.load(Ordering::SeqCst) && !smp::aborted() {
                core::hint::spin_loop();
            }
        } else {
            while FREED.load(Ordering::SeqCst) == 0 && !smp::aborted() {
                core::hint::spin_loop();
            }
            // CPU 0 allocates from its own list: one shared list would hand it the
            // frame CPU 1 just freed, its hottest.
            mine.store(frames().alloc(0).unwrap().as_u64(), Ordering::SeqCst);
            TAKEN.store(true, Ordering::SeqCst);
        }
    });
    let freed = PhysAddr::new(FREED.load(Ordering::SeqCst));
    let mine = PhysAddr::new(mine.into_inner());
    assert_ne!(mine, freed, "CPU 0 took the frame on CPU 1's list");
    let flags = frames().meta(freed).unwrap().flags();
    assert!(
        flags.contains(FrameFlags::PCP),
        "still on CPU 1's list: {flags:?}"
    );
    frames().free(mine, 0).unwrap();
}

#[test_case]
fn the_apic_timer_ticks_on_every_cpu() {
    let n = smp::online_cpus();
    let before: Vec<u64> = (0..n)
        .map(|c| block(c).ticks.load(Ordering::Relaxed))
        .collect();
    // Five ticks at 100 Hz, with margin for a slow emulator.
    tsc::delay_us(200_000);
    for (cpu, b) in before.iter().enumerate() {
        let after = block(cpu).ticks.load(Ordering::Relaxed);
        assert!(
            after > *b,
            "CPU {cpu}'s timer did not tick ({b} -> {after})"
        );
    }
}

kernel::should_panic_test!(a_panic_on_another_cpu_fails_the_test, {
    // CPU 1 panics; the others spin until they see the abort and stop.
    run_on(u64::MAX, &|| {
        if this_cpu() == 1 {
            panic!("deliberate panic on CPU 1");
        }
        while !smp::aborted() {
            core::hint::spin_loop();
        }
    });
});

#[test_case]
fn every_cpu_runs_work_again_after_a_panic() {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.store(0, Ordering::SeqCst);
    run_on(u64::MAX, &|| {
        N.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(N.load(Ordering::SeqCst), smp::online_cpus());
}

/// A user address space active on every CPU (the "B" CPUs hold its TLB entries);
/// every CPU leaves it when dropped, so it is torn down.
struct SharedSpace {
    mm: Arc<AddressSpace>,
}

impl SharedSpace {
    fn new() -> Self {
        let mm = address_space::new_user_space(MmLayout::default()).expect("no memory for an mm");
        run_on(u64::MAX, &|| address_space::activate(&mm));
        assert_eq!(
            mm.with_page_tables(|t| t.active_cpus()),
            online_mask(),
            "the space's CPU mask names every CPU it is loaded on"
        );
        Self { mm }
    }

    fn anon(&self, len: usize, align: usize) -> usize {
        // Over-allocate and trim so the range is aligned (2 MiB for the big tests).
        let raw = self
            .mm
            .mmap(
                0,
                len + align,
                PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS,
                None,
                0,
            )
            .expect("mmap");
        let start = raw.next_multiple_of(align);
        if start > raw {
            self.mm.munmap(raw, start - raw).unwrap();
        }
        if raw + align > start {
            self.mm.munmap(start + len, raw + align - start).unwrap();
        }
        start
    }

    fn frame_of(&self, va: usize) -> PhysAddr {
        self.mm.translate(va).expect("mapped").frame
    }
}

impl Drop for SharedSpace {
    fn drop(&mut self) {
        run_on(u64::MAX, &address_space::deactivate_current);
        assert_eq!(self.mm.with_page_tables(|t| t.active_cpus()), 0);
    }
}

fn va(a: usize) -> VirtAddr {
    VirtAddr::new(a as u64)
}

/// Fills `pages` pages with `byte` on this CPU, then makes every other CPU read each
/// of them (so their TLBs hold the entries) and checks they read `byte`.
fn touch_everywhere(s: &SharedSpace, start: usize, pages: usize, byte: u8, write: bool) {
    for i in 0..pages {
        probe_write(va(start + i * P), byte).expect("fault-in");
    }
    static BAD: AtomicUsize = AtomicUsize::new(0);
    BAD.store(0, Ordering::SeqCst);
    run_on(others(), &|| {
        for i in 0..pages {
            let a = va(start + i * P);
            if probe_read(a) != Ok(byte) || (write && probe_write(a, byte).is_err()) {
                BAD.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    assert_eq!(BAD.load(Ordering::SeqCst), 0, "every CPU reads the page");
    let _ = s;
}

/// Room for the frames [`reallocate`] takes, made before the unmap: growing a vector
/// afterwards could hand one of the freed frames to the heap.
fn room(old: usize) -> Vec<PhysAddr> {
    Vec::with_capacity(old + 4096)
}

/// Takes the frames `old` back from the allocator (they were just freed) and fills
/// them with `byte`; returns every frame taken, to be freed by the caller. Fails if
/// the allocator did not hand the freed frames out again: the test would prove nothing.
fn reallocate(old: &[PhysAddr], byte: u8, mut taken: Vec<PhysAddr>) -> Vec<PhysAddr> {
    let mut found = 0;
    for _ in 0..old.len() + 4096 {
        let pa = frames().alloc(0).expect("alloc");
        // SAFETY: a frame just allocated is ours; the direct map reaches it.
        unsafe { core::ptr::write_bytes(frames().phys_to_virt(pa), byte, P) };
        taken.push(pa);
        if old.contains(&pa) {
            found += 1;
            if found == old.len() {
                break;
            }
        }
    }
    assert_eq!(
        found,
        old.len(),
        "the freed frames were not handed out again"
    );
    taken
}

fn free_all(taken: Vec<PhysAddr>) {
    for pa in taken {
        frames().free(pa, 0).expect("free");
    }
}

/// After CPU A unmapped and freed the pages and the frames hold other data, no other
/// CPU may read through a stale TLB entry: each access faults.
fn assert_no_cpu_reads(start: usize, pages: usize, forbidden: u8) {
    static READ_NEW: AtomicUsize = AtomicUsize::new(0);
    static NO_FAULT: AtomicUsize = AtomicUsize::new(0);
    READ_NEW.store(0, Ordering::SeqCst);
    NO_FAULT.store(0, Ordering::SeqCst);
    run_on(others(), &|| {
        for i in 0..pages {
            match probe_read(va(start + i * P)) {
                Ok(b) if b == forbidden => {
                    READ_NEW.fetch_add(1, Ordering::SeqCst);
                }
                Ok(_) => {
                    NO_FAULT.fetch_add(1, Ordering::SeqCst);
                }
                Err(_) => {}
            }
        }
    });
    assert_eq!(
        READ_NEW.load(Ordering::SeqCst),
        0,
        "a CPU read the reallocated frame's new data through a stale TLB entry"
    );
    assert_eq!(
        NO_FAULT.load(Ordering::SeqCst),
        0,
        "an access to the unmapped page did not fault"
    );
}

#[test_case]
fn shootdown_munmap_one_page_then_reuse_of_the_frame_is_invisible_to_other_cpus() {
    let s = SharedSpace::new();
    let a = s.anon(P, P);
    touch_everywhere(&s, a, 1, 0xaa, false);
    let frame = s.frame_of(a);
    let flushes: Vec<u64> = (0..MAX_CPUS)
        .map(|c| block(c).tlb_remote_flushes.load(Ordering::Relaxed))
        .collect();
    let room = room(1);
    s.mm.munmap(a, P).unwrap();
    for cpu in call::cpus(others()) {
        assert!(
            block(cpu).tlb_remote_flushes.load(Ordering::Relaxed) > flushes[cpu],
            "CPU {cpu} got the shootdown"
        );
    }
    let taken = reallocate(&[frame], 0xbb, room);
    assert_no_cpu_reads(a, 1, 0xbb);
    free_all(taken);
}

#[test_case]
fn shootdown_mprotect_read_only_makes_other_cpus_writes_fault() {
    let s = SharedSpace::new();
    let a = s.anon(P, P);
    touch_everywhere(&s, a, 1, 0x11, true);
    s.mm.mprotect(a, P, PROT_READ).unwrap();
    static WROTE: AtomicUsize = AtomicUsize::new(0);
    WROTE.store(0, Ordering::SeqCst);
    run_on(others(), &|| {
        if probe_write(va(a), 0x22).is_ok() {
            WROTE.fetch_add(1, Ordering::SeqCst);
        }
    });
    assert_eq!(
        WROTE.load(Ordering::SeqCst),
        0,
        "a CPU wrote through a stale writable entry"
    );
    assert_eq!(probe_read(va(a)), Ok(0x11));
}

#[test_case]
fn shootdown_munmap_of_a_2mib_range_takes_the_full_flush_path() {
    let s = SharedSpace::new();
    let pages = 512;
    let a = s.anon(pages * P, 2 << 20);
    touch_everywhere(&s, a, pages, 0x5a, false);
    let old: Vec<PhysAddr> = (0..pages).map(|i| s.frame_of(a + i * P)).collect();
    let room = room(pages);
    s.mm.munmap(a, pages * P).unwrap();
    let taken = reallocate(&old, 0xc3, room);
    assert_no_cpu_reads(a, pages, 0xc3);
    free_all(taken);
}

#[test_case]
fn shootdown_mprotect_of_512_pages_takes_the_full_flush_path() {
    let s = SharedSpace::new();
    let pages = 512;
    let a = s.anon(pages * P, P);
    touch_everywhere(&s, a, pages, 0x33, true);
    s.mm.mprotect(a, pages * P, PROT_READ).unwrap();
    static WROTE: AtomicUsize = AtomicUsize::new(0);
    WROTE.store(0, Ordering::SeqCst);
    run_on(others(), &|| {
        for i in 0..pages {
            if probe_write(va(a + i * P), 0x44).is_ok() {
                WROTE.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    assert_eq!(
        WROTE.load(Ordering::SeqCst),
        0,
        "a CPU wrote through a stale writable entry"
    );
}

#[test_case]
fn a_cpu_spinning_on_the_page_table_lock_answers_the_holders_shootdown() {
    // CPU A holds the PTE lock of a page table (as a user copy does) and sends a
    // shootdown to CPU B; B, meanwhile, page-faults on a page of that table and spins
    // on that lock. B must answer the IPI while it spins (interrupts on in the fault
    // path, the lock does not disable them), or A waits forever (the cross-call's 10 s
    // limit turns that into a failure).
    let s = SharedSpace::new();
    let a = s.anon(2 * P, P);
    touch_everywhere(&s, a, 1, 0x77, false);
    let b = 1usize;
    static GO: AtomicBool = AtomicBool::new(false);
    static SPINNING: AtomicBool = AtomicBool::new(false);
    static FAULTED: AtomicBool = AtomicBool::new(false);
    GO.store(false, Ordering::SeqCst);
    SPINNING.store(false, Ordering::SeqCst);
    FAULTED.store(false, Ordering::SeqCst);
    let mm = &s.mm;
    run_on(1 | 1 << b, &|| {
        if this_cpu() == 0 {
            mm.with_page_tables(|t| {
                // The lock of the PT holding `a` and `a + P`.
                t.with_leaf_locked(va(a), |leaf| {
                    assert!(leaf.is_some(), "the first page is mapped");
                    GO.store(true, Ordering::SeqCst);
                    while !SPINNING.load(Ordering::SeqCst) && !smp::aborted() {
                        core::hint::spin_loop();
                    }
                    // B is about to take the fault: give it time to reach the lock.
                    tsc::delay_us(20_000);
                    assert!(
                        !FAULTED.load(Ordering::SeqCst),
                        "B's fault did not wait for the lock"
                    );
                    let before = block(b).tlb_remote_flushes.load(Ordering::SeqCst);
                    t.flush_page(va(a));
                    assert!(block(b).tlb_remote_flushes.load(Ordering::SeqCst) > before);
                })
            });
        } else {
            while !GO.load(Ordering::SeqCst) && !smp::aborted() {
                core::hint::spin_loop();
            }
            SPINNING.store(true, Ordering::SeqCst);
            // Second page: not present yet, so the fault needs that PT's lock.
            probe_write(va(a + P), 1).expect("the fault resolves once A lets go");
            FAULTED.store(true, Ordering::SeqCst);
        }
    });
    assert!(FAULTED.load(Ordering::SeqCst));
}

#[test_case]
fn shootdowns_reach_the_spaces_cpus_only_and_kernel_flushes_reach_every_cpu() {
    use mm::paging::PageSize;
    use mm::paging::tlb::{FlushKind, TlbBackend};
    let count = |c: usize| block(c).tlb_remote_flushes.load(Ordering::SeqCst);
    let mm = address_space::new_user_space(MmLayout::default()).expect("mm");
    // Loaded on CPUs 0 and 1 only.
    run_on(0b11, &|| address_space::activate(&mm));
    let before: Vec<u64> = (0..MAX_CPUS).map(count).collect();
    mm.with_page_tables(|t| t.flush_page(va(0x1000)));
    for cpu in call::cpus(others()) {
        let got = count(cpu) - before[cpu];
        assert_eq!(
            got,
            u64::from(cpu == 1),
            "CPU {cpu}: IPIs only to the space's CPUs"
        );
    }
    // A kernel-half flush goes to every CPU, whatever the mask says.
    let before: Vec<u64> = (0..MAX_CPUS).map(count).collect();
    let kernel_page = VirtAddr::from_ptr(&before);
    mm.with_page_tables(|t| {
        t.tlb().flush(
            0,
            FlushKind::Pages {
                start: kernel_page.align_down(4096u64),
                count: 1,
                stride: PageSize::Size4K,
            },
        )
    });
    for cpu in call::cpus(others()) {
        assert_eq!(
            count(cpu),
            before[cpu] + 1,
            "CPU {cpu} flushed the kernel page"
        );
    }
    run_on(0b11, &address_space::deactivate_current);
}
