//! Which locks the page-fault path takes (Linux 6.16+: `lock_vma_under_rcu`,
//! `vmf_anon_prepare`, `lock_mm_and_find_vma`): no mmap write lock for an ordinary
//! fault, a read trylock for the first anonymous write, a retry under the mmap read
//! lock when that trylock fails, and exactly one anon_vma when several threads make the
//! first write to one VMA at once.

mod common;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use common::{PA, RW, setup};
use mm::mmap::*;
use mm::vma::anon::anon_vma_live_count;

const P: usize = 4096;
const X: usize = 0x1000_0000;

/// The anon_vma count is global: these tests run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Identity of the anon_vma of the VMA at `addr` (0: none).
fn anon_vma_id(asp: &AddressSpace, addr: usize) -> u64 {
    let g = asp.mm().read_lock();
    let vma = g.vma_lookup(addr).expect("a VMA");
    vma.anon_vma(&g).map_or(0, |av| av.id())
}

/// Another thread takes `asp`'s mmap write lock and holds it until the returned flag
/// is set; returns once the lock is held.
fn hold_mmap_write_lock(asp: &Arc<AddressSpace>) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let release = Arc::new(AtomicBool::new(false));
    let held = Arc::new(Barrier::new(2));
    let writer = {
        let (asp, release, held) = (asp.clone(), release.clone(), held.clone());
        std::thread::spawn(move || {
            let g = asp.mm().write_lock();
            held.wait();
            while !release.load(SeqCst) {
                std::hint::spin_loop();
            }
            drop(g);
        })
    };
    held.wait();
    (release, writer)
}

fn mapped(asp: &AddressSpace, addr: usize) -> bool {
    asp.query_vma(addr, 0).is_some() && asp.translate(addr).is_some()
}

/// The first write to an anonymous VMA gives it an anon_vma without the mmap write
/// lock: here the faulting thread itself holds the mmap *read* lock, so any attempt to
/// take the write lock (the old slow path) would deadlock, and lockdep-light reports
/// it as an inversion.
#[test]
fn first_anonymous_write_needs_no_mmap_write_lock() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_a, _base, asp) = setup();
    asp.mmap(X, 4 * P, RW, PA | MAP_FIXED, None, 0).unwrap();
    let before = anon_vma_live_count();
    {
        let _reader = asp.mm().read_lock();
        asp.handle_fault(X + P, Access::Write).unwrap();
        asp.handle_fault(X + 2 * P, Access::Write).unwrap();
    }
    assert_eq!(anon_vma_live_count(), before + 1);
    let st = asp.fault_stats();
    assert_eq!(
        (st.vma_lock_success, st.vma_lock_abort, st.vma_lock_retry),
        (2, 0, 0),
        "{st:?}"
    );
    asp.validate_mm().unwrap();
}

/// While a writer holds the mmap lock, a first anonymous write finds and read-locks
/// its VMA (not write-locked), cannot try-lock the mmap lock, drops the VMA lock and
/// retries under the mmap read lock (Linux: `VM_FAULT_RETRY`): it completes only once
/// the writer is gone, and is counted as a retry.
#[test]
fn first_anonymous_write_retries_while_a_writer_holds_the_mmap_lock() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_a, _base, asp) = setup();
    let asp = Arc::new(asp);
    asp.mmap(X, 4 * P, RW, PA | MAP_FIXED, None, 0).unwrap();
    let (release, writer) = hold_mmap_write_lock(&asp);
    let faulter = {
        let asp = asp.clone();
        std::thread::spawn(move || asp.handle_fault(X, Access::Write))
    };
    let t = Instant::now();
    while asp.fault_stats().vma_lock_retry == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the fault never retried"
        );
        std::hint::spin_loop();
    }
    // Waiting for the mmap read lock now; nothing mapped yet.
    std::thread::sleep(Duration::from_millis(20));
    assert!(
        !faulter.is_finished(),
        "the fault passed a held mmap write lock"
    );
    assert!(asp.translate(X).is_none());
    release.store(true, SeqCst);
    writer.join().unwrap();
    faulter.join().unwrap().unwrap();
    assert!(mapped(&asp, X));
    let st = asp.fault_stats();
    assert_eq!(
        (st.vma_lock_success, st.vma_lock_abort, st.vma_lock_retry),
        (0, 0, 1),
        "{st:?}"
    );
    asp.validate_mm().unwrap();
}

/// A read fault and a fault on a VMA that already has its anon_vma never touch the
/// mmap lock, even while a writer holds it.
#[test]
fn faults_that_need_no_anon_vma_pass_a_held_mmap_write_lock() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_a, _base, asp) = setup();
    let asp = Arc::new(asp);
    asp.mmap(X, 4 * P, RW, PA | MAP_FIXED, None, 0).unwrap();
    asp.handle_fault(X, Access::Write).unwrap();
    let (release, writer) = hold_mmap_write_lock(&asp);
    asp.handle_fault(X + P, Access::Read).unwrap();
    asp.handle_fault(X + 2 * P, Access::Write).unwrap();
    release.store(true, SeqCst);
    writer.join().unwrap();
    let st = asp.fault_stats();
    assert_eq!((st.vma_lock_success, st.vma_lock_retry), (3, 0), "{st:?}");
}

/// Two first writes to one VMA held together between their unlocked check and the
/// lock (the `fault-inject` window hook): both have prepared an anon_vma, one
/// publishes, the other must find it published and free its own.
#[test]
fn two_first_writes_held_in_the_window_publish_one_anon_vma() {
    static BOTH_IN: Barrier = Barrier::new(2);
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (a, base, asp) = setup();
    let asp = Arc::new(asp);
    asp.mmap(X, 8 * P, RW, PA | MAP_FIXED, None, 0).unwrap();
    let before = anon_vma_live_count();
    mm::vma::space::set_anon_prepare_window(Some(|| {
        BOTH_IN.wait();
    }));
    let ts: Vec<_> = (0..2)
        .map(|t| {
            let asp = asp.clone();
            std::thread::spawn(move || {
                asp.copy_to_user(X + t * P, &[t as u8 + 1; 64])?;
                Ok::<_, FaultError>(anon_vma_id(&asp, X))
            })
        })
        .collect();
    let seen: Vec<u64> = ts.into_iter().map(|t| t.join().unwrap().unwrap()).collect();
    mm::vma::space::set_anon_prepare_window(None);
    let now = anon_vma_id(&asp, X);
    assert_ne!(now, 0);
    assert!(
        seen.iter().all(|&id| id == now),
        "faults saw anon_vmas {seen:?}, the VMA has {now}: one was replaced"
    );
    assert_eq!(
        anon_vma_live_count(),
        before + 1,
        "the loser's anon_vma leaked"
    );
    asp.validate_mm().unwrap();
    drop(asp);
    assert_eq!(anon_vma_live_count(), before);
    assert_eq!(a.allocated_frames_settled(), base);
}

/// Several threads make the first write to one fresh VMA at the same moment, each
/// preparing an anon_vma under the mmap read lock: exactly one is published, the
/// losers free theirs, and the neighbouring VMA (compatible, not mergeable: it differs
/// in `VM_EXEC`) reuses it as Linux's `find_mergeable_anon_vma` decides.
#[test]
fn concurrent_first_writes_publish_exactly_one_anon_vma() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (a, base, asp) = setup();
    let asp = Arc::new(asp);
    const THREADS: usize = 4;
    for round in 0..200 {
        asp.mmap(X, 8 * P, RW, PA | MAP_FIXED, None, 0).unwrap();
        let before = anon_vma_live_count();
        let go = Arc::new(Barrier::new(THREADS));
        let ts: Vec<_> = (0..THREADS)
            .map(|t| {
                let (asp, go) = (asp.clone(), go.clone());
                std::thread::spawn(move || {
                    go.wait();
                    asp.copy_to_user(X + t * P, &[t as u8 + 1; 64])?;
                    // The anon_vma this thread's fault saw: the one published.
                    Ok::<_, FaultError>(anon_vma_id(&asp, X))
                })
            })
            .collect();
        let seen: Vec<u64> = ts.into_iter().map(|t| t.join().unwrap().unwrap()).collect();
        assert_eq!(anon_vma_live_count(), before + 1, "round {round}");
        let now = anon_vma_id(&asp, X);
        assert!(
            seen.iter().all(|&id| id == now),
            "round {round}: faults saw anon_vmas {seen:?}, the VMA has {now}: one was replaced"
        );
        for t in 0..THREADS {
            let mut b = [0u8; 64];
            asp.copy_from_user(X + t * P, &mut b).unwrap();
            assert_eq!(b, [t as u8 + 1; 64], "round {round}");
        }
        // A compatible neighbour (PROT_EXEC differs: no merge) reuses it.
        asp.mmap(X + 8 * P, 4 * P, RW | PROT_EXEC, PA | MAP_FIXED, None, 0)
            .unwrap();
        asp.handle_fault(X + 8 * P, Access::Write).unwrap();
        assert_eq!(anon_vma_live_count(), before + 1, "round {round}");
        asp.validate_mm().unwrap();
        asp.munmap(X, 12 * P).unwrap();
        assert_eq!(anon_vma_live_count(), before, "round {round}");
    }
    drop(asp);
    assert_eq!(a.allocated_frames_settled(), base);
}

/// With the per-VMA locks switched off (Linux: `CONFIG_PER_VMA_LOCK=n`), every fault
/// takes the mmap read lock: a fault that would pass a held mmap write lock on the
/// lock-free path waits for it, and the VMA-lock counters stay still.
#[test]
fn with_per_vma_locks_off_faults_take_the_mmap_lock() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_a, _base, asp) = setup();
    let asp = Arc::new(asp);
    assert!(asp.per_vma_lock(), "on by default");
    asp.mmap(X, 4 * P, RW, PA | MAP_FIXED, None, 0).unwrap();
    asp.handle_fault(X, Access::Write).unwrap();
    asp.set_per_vma_lock(false);
    let (release, writer) = hold_mmap_write_lock(&asp);
    let faulter = {
        let asp = asp.clone();
        std::thread::spawn(move || asp.handle_fault(X + P, Access::Read))
    };
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !faulter.is_finished(),
        "a fault passed the held mmap write lock with per-VMA locks off"
    );
    release.store(true, SeqCst);
    writer.join().unwrap();
    faulter.join().unwrap().unwrap();
    assert!(mapped(&asp, X + P));
    let st = asp.fault_stats();
    assert_eq!(
        (st.vma_lock_success, st.vma_lock_abort, st.vma_lock_retry),
        (1, 0, 0),
        "only the first fault, before the switch, used a VMA lock: {st:?}"
    );
    asp.set_per_vma_lock(true);
    asp.validate_mm().unwrap();
}

// ---- split page-table locks ---------------------------------------------------------

const M2: usize = 2 << 20;

/// Runs `f` on another thread and says whether it finished within `d`.
fn finishes_within(
    d: Duration,
    f: impl FnOnce() + Send + 'static,
) -> (bool, std::thread::JoinHandle<()>) {
    let done = Arc::new(AtomicBool::new(false));
    let h = {
        let done = done.clone();
        std::thread::spawn(move || {
            f();
            done.store(true, SeqCst);
        })
    };
    let t = Instant::now();
    while !done.load(SeqCst) && t.elapsed() < d {
        std::thread::sleep(Duration::from_millis(1));
    }
    (done.load(SeqCst), h)
}

/// Split page-table locks (Linux: `pte_offset_map_lock`): while one thread holds the
/// PTE lock of one 2 MiB region (the lock `copy_to_user` holds across its copy), a
/// fault in another 2 MiB region of the same VMA completes, and a fault in the held
/// region waits until the lock is dropped. With one lock per address space the first
/// fault would wait too.
#[test]
fn a_held_pte_lock_stalls_only_faults_in_its_own_2mib_region() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (a, base, asp) = setup();
    let asp = Arc::new(asp);
    let x = 0x4000_0000; // 1 GiB aligned: regions A = [x, x+2M), B = [x+2M, x+4M)
    asp.mmap(x, 2 * M2, RW, PA | MAP_FIXED, None, 0).unwrap();
    // One page in each region: both PTE tables exist, the anon_vma too.
    asp.handle_fault(x, Access::Write).unwrap();
    asp.handle_fault(x + M2, Access::Write).unwrap();

    let held = Arc::new(Barrier::new(2));
    let release = Arc::new(AtomicBool::new(false));
    let holder = {
        let (asp, held, release) = (asp.clone(), held.clone(), release.clone());
        std::thread::spawn(move || {
            asp.with_page_tables(|pt| {
                pt.with_leaf_locked(x86_64::VirtAddr::new(x as u64), |t| {
                    assert!(t.is_some());
                    held.wait();
                    while !release.load(SeqCst) {
                        std::hint::spin_loop();
                    }
                })
            })
        })
    };
    held.wait();
    // Region B: its own PT lock, free.
    let other = asp.clone();
    let (done, h) = finishes_within(Duration::from_secs(20), move || {
        other.handle_fault(x + M2 + 5 * P, Access::Write).unwrap();
    });
    if !done {
        release.store(true, SeqCst);
    }
    h.join().unwrap();
    assert!(
        done,
        "a fault in another 2 MiB region waited for region A's PTE lock"
    );
    // Region A: the held lock.
    let same = asp.clone();
    let (done, h) = finishes_within(Duration::from_millis(300), move || {
        same.handle_fault(x + 7 * P, Access::Write).unwrap();
    });
    assert!(!done, "a fault in region A went past its held PTE lock");
    release.store(true, SeqCst);
    holder.join().unwrap();
    h.join().unwrap();
    assert!(mapped(&asp, x + 7 * P) && mapped(&asp, x + M2 + 5 * P));
    asp.validate_mm().unwrap();
    drop(Arc::try_unwrap(asp).ok().expect("sole owner"));
    assert_eq!(a.allocated_frames_settled(), base);
}

/// Threads faulting the same fresh pages at once (reads and writes, Linux's racing
/// `do_anonymous_page`/`wp_page_copy`): each page ends up with exactly one frame that
/// holds the last write, every loser's page goes back (no leak), and every thread's
/// write can be read back by it while no one else writes that page.
#[test]
fn racing_faults_on_the_same_pages_install_one_frame_and_leak_none() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (a, base, asp) = setup();
    let asp = Arc::new(asp);
    let pages = 64;
    asp.mmap(X, pages * P, RW, PA | MAP_FIXED, None, 0).unwrap();
    let threads = 4;
    for round in 0..32u8 {
        let go = Arc::new(Barrier::new(threads));
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let (asp, go) = (asp.clone(), go.clone());
                std::thread::spawn(move || {
                    go.wait();
                    for i in 0..pages {
                        let addr = X + ((i + t * 7) % pages) * P;
                        // Reads map the zero page; writes then copy-on-write it, and
                        // racing writes on one page must not each install a copy.
                        if (i + t) % 3 == 0 {
                            asp.handle_fault(addr, Access::Read).unwrap();
                        }
                        asp.handle_fault(addr, Access::Write).unwrap();
                        asp.copy_to_user(addr + 8 * t, &[round, t as u8]).unwrap();
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        for i in 0..pages {
            for t in 0..threads {
                let mut b = [0u8; 2];
                asp.copy_from_user(X + i * P + 8 * t, &mut b).unwrap();
                assert_eq!(b, [round, t as u8], "page {i}, thread {t}'s bytes");
            }
        }
        asp.validate_mm().unwrap();
        asp.madvise(X, pages * P, MADV_DONTNEED).unwrap();
    }
    let st = asp.fault_stats();
    assert!(st.vma_lock_success > 0, "{st:?}");
    drop(Arc::try_unwrap(asp).ok().expect("sole owner"));
    assert_eq!(
        a.allocated_frames_settled(),
        base,
        "a losing fault's page leaked"
    );
}
