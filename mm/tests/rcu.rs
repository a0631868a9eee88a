//! RCU (`mm::sync::rcu`) on host threads: grace periods wait for readers that began
//! before them and only for those, callbacks run after their grace period and not
//! before, `rcu_barrier`, nesting, and a many-thread stress with poisoned frees.
//!
//! Each host thread is an RCU context (a CPU in the kernel). Tests in this file run in
//! parallel threads of one process and share RCU's global state: a reader in one test
//! can only delay another test's grace periods, never hurry them, so every assertion
//! below is about "not before", or holds once the test's own readers have left.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use mm::sync::rcu::{
    RcuBox, RcuHead, call_rcu, get_state_synchronize_rcu, kfree_rcu, poll_state_synchronize_rcu,
    rcu_barrier, rcu_gp_advance, rcu_note_qs, rcu_read_lock, rcu_read_lock_held,
    start_poll_synchronize_rcu, synchronize_rcu,
};

/// Spawns a thread that enters a read-side section, tells us, and stays inside until
/// `release` is set; returns its handle and a flag it sets just before it leaves.
fn reader_holding(
    release: Arc<AtomicBool>,
    nested: bool,
) -> (thread::JoinHandle<()>, Arc<AtomicBool>) {
    let inside = Arc::new(Barrier::new(2));
    let left = Arc::new(AtomicBool::new(false));
    let (i, l) = (inside.clone(), left.clone());
    let h = thread::spawn(move || {
        let outer = rcu_read_lock();
        if nested {
            // An inner section ending does not end the outer one.
            let inner = rcu_read_lock();
            drop(inner);
            assert!(rcu_read_lock_held());
        }
        i.wait();
        while !release.load(Ordering::Acquire) {
            thread::sleep(Duration::from_millis(1));
        }
        l.store(true, Ordering::SeqCst);
        drop(outer);
        assert!(!rcu_read_lock_held());
    });
    inside.wait();
    (h, left)
}

fn synchronize_waits_for(nested: bool) {
    let release = Arc::new(AtomicBool::new(false));
    let (h, left) = reader_holding(release.clone(), nested);
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let waiter = thread::spawn(move || {
        synchronize_rcu();
        d.store(true, Ordering::SeqCst);
    });
    thread::sleep(Duration::from_millis(150));
    assert!(
        !done.load(Ordering::SeqCst),
        "synchronize_rcu returned while a reader that began before it was inside"
    );
    release.store(true, Ordering::Release);
    waiter.join().unwrap();
    assert!(left.load(Ordering::SeqCst), "the reader had not left");
    h.join().unwrap();
}

#[test]
fn synchronize_rcu_waits_for_a_reader_that_holds_the_lock() {
    synchronize_waits_for(false);
}

#[test]
fn an_inner_unlock_does_not_end_the_outer_section() {
    synchronize_waits_for(true);
}

#[test]
fn synchronize_rcu_does_not_wait_for_readers_that_begin_after_it() {
    // A reader that enters after the grace period a cookie names has started does not
    // hold it back: poll it done while that reader is still inside.
    let c = start_poll_synchronize_rcu();
    // The cookie's grace period has started (or ended) once gp_seq reaches c - 3.
    while mm::sync::rcu::rcu_gp_seq() + 3 < c {
        rcu_gp_advance();
        thread::yield_now();
    }
    let release = Arc::new(AtomicBool::new(false));
    let (h, _) = reader_holding(release.clone(), false);
    let t = Instant::now();
    while !poll_state_synchronize_rcu(c) {
        rcu_gp_advance();
        thread::yield_now();
        assert!(t.elapsed() < Duration::from_secs(20), "grace period stuck");
    }
    release.store(true, Ordering::Release);
    h.join().unwrap();
}

#[test]
fn polled_cookies_complete_only_after_the_reader_leaves() {
    let release = Arc::new(AtomicBool::new(false));
    let (h, left) = reader_holding(release.clone(), false);
    let c = get_state_synchronize_rcu();
    for _ in 0..200 {
        rcu_note_qs();
        assert!(!poll_state_synchronize_rcu(c) || left.load(Ordering::SeqCst));
        thread::sleep(Duration::from_micros(200));
    }
    release.store(true, Ordering::Release);
    h.join().unwrap();
    synchronize_rcu();
    assert!(poll_state_synchronize_rcu(c));
}

struct Flagged {
    head: RcuHead,
    ran: AtomicBool,
}

/// # Safety
/// `h` is the head of a live `Flagged`.
unsafe fn set_ran(h: *mut RcuHead) {
    let f = h
        .cast::<u8>()
        .wrapping_sub(std::mem::offset_of!(Flagged, head)) as *const Flagged;
    // SAFETY: contract: the `Flagged` outlives its queued head.
    unsafe { (*f).ran.store(true, Ordering::SeqCst) };
}

#[test]
fn callbacks_run_after_their_grace_period_and_not_before() {
    let release = Arc::new(AtomicBool::new(false));
    let (h, left) = reader_holding(release.clone(), false);
    let obj = Box::leak(Box::new(Flagged {
        head: RcuHead::new(),
        ran: AtomicBool::new(false),
    }));
    // SAFETY: `obj` is leaked (lives forever) and queued once.
    unsafe { call_rcu(&mut obj.head, set_ran) };
    for _ in 0..100 {
        rcu_note_qs();
        rcu_gp_advance();
        thread::sleep(Duration::from_micros(500));
    }
    assert!(
        !obj.ran.load(Ordering::SeqCst),
        "a callback ran while a reader older than its call_rcu was inside"
    );
    release.store(true, Ordering::Release);
    h.join().unwrap();
    assert!(left.load(Ordering::SeqCst));
    rcu_barrier();
    assert!(
        obj.ran.load(Ordering::SeqCst),
        "rcu_barrier returned before the callback ran"
    );
}

static BARRIER_COUNT: AtomicUsize = AtomicUsize::new(0);

/// # Safety
/// `h` is the head of a leaked `Box<RcuBox<u64>>`.
unsafe fn count_and_free(h: *mut RcuHead) {
    BARRIER_COUNT.fetch_add(1, Ordering::SeqCst);
    // SAFETY: contract.
    drop(unsafe { RcuBox::<u64>::from_head(h) });
}

#[test]
fn rcu_barrier_waits_for_callbacks_of_threads_that_have_exited() {
    const THREADS: usize = 6;
    const EACH: usize = 500;
    let hs: Vec<_> = (0..THREADS)
        .map(|_| {
            thread::spawn(|| {
                for i in 0..EACH {
                    let b = Box::into_raw(Box::new(RcuBox::new(i as u64)));
                    // SAFETY: the box is leaked to RCU until `count_and_free`.
                    unsafe { call_rcu(RcuBox::head_of(b), count_and_free) };
                    let _g = rcu_read_lock();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    // The threads are gone; their callbacks may still be queued in their entries.
    rcu_barrier();
    assert!(BARRIER_COUNT.load(Ordering::SeqCst) >= THREADS * EACH);
}

// ---------------------------------------------------------------------------------
// Stress: readers dereference a pointer that a writer replaces and frees via call_rcu.
// ---------------------------------------------------------------------------------

const LIVE: u64 = 0x11fe_11fe_11fe_11fe;
const POISON: u64 = 0xdead_beef_dead_beef;

struct Payload {
    magic: AtomicU64,
    generation: u64,
}

/// Freed objects are poisoned and kept (not returned to the allocator) until the test
/// ends, so a reader that touches one after its callback always sees the poison.
static QUARANTINE: Mutex<Vec<usize>> = Mutex::new(Vec::new());
static FREED: AtomicU64 = AtomicU64::new(0);

/// # Safety
/// `h` is the head of a leaked `Box<RcuBox<Payload>>`.
unsafe fn poison_free(h: *mut RcuHead) {
    let b = h.cast::<RcuBox<Payload>>();
    // SAFETY: contract.
    unsafe { (*b).value.magic.store(POISON, Ordering::SeqCst) };
    QUARANTINE.lock().unwrap().push(b as usize);
    FREED.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn stress_readers_never_see_an_object_freed_by_call_rcu() {
    const READERS: usize = 6;
    let first = Box::into_raw(Box::new(RcuBox::new(Payload {
        magic: AtomicU64::new(LIVE),
        generation: 0,
    })));
    let cur = Arc::new(AtomicPtr::new(first));
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (cur, stop, reads) = (cur.clone(), stop.clone(), reads.clone());
            thread::spawn(move || {
                let mut last = 0;
                while !stop.load(Ordering::Relaxed) {
                    let g = rcu_read_lock();
                    let p = cur.load(Ordering::Acquire);
                    // SAFETY: `p` was published and is freed only after a grace period
                    // that this section holds back.
                    let (m, generation) = unsafe {
                        (
                            (*p).value.magic.load(Ordering::SeqCst),
                            (*p).value.generation,
                        )
                    };
                    if r % 2 == 0 {
                        // Some readers stay a while, nested, to widen the window.
                        let g2 = rcu_read_lock();
                        for _ in 0..200 {
                            std::hint::spin_loop();
                        }
                        // SAFETY: as above.
                        let m2 = unsafe { (*p).value.magic.load(Ordering::SeqCst) };
                        assert_eq!(m2, LIVE, "use after free (nested re-read)");
                        drop(g2);
                    }
                    assert_eq!(m, LIVE, "use after free: reader {r} saw a poisoned object");
                    assert!(generation >= last, "generations go back");
                    last = generation;
                    drop(g);
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let writer = {
        let cur = cur.clone();
        thread::spawn(move || {
            for generation in 1..=20_000u64 {
                let new = Box::into_raw(Box::new(RcuBox::new(Payload {
                    magic: AtomicU64::new(LIVE),
                    generation,
                })));
                let old = cur.swap(new, Ordering::AcqRel);
                // SAFETY: `old` is unreachable for new readers; RCU owns it until
                // `poison_free`.
                unsafe { call_rcu(RcuBox::head_of(old), poison_free) };
                if generation % 1000 == 0 {
                    synchronize_rcu();
                }
            }
        })
    };
    writer.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    rcu_barrier();
    assert_eq!(FREED.load(Ordering::SeqCst), 20_000);
    assert!(reads.load(Ordering::Relaxed) > 0);
    for p in QUARANTINE.lock().unwrap().drain(..) {
        // SAFETY: each quarantined pointer is a leaked box, freed once here.
        drop(unsafe { Box::from_raw(p as *mut RcuBox<Payload>) });
    }
    // SAFETY: the last published object, no reader left.
    drop(unsafe { Box::from_raw(cur.load(Ordering::Acquire)) });
}

// ---------------------------------------------------------------------------------
// Property: no callback runs while a reader that began before its call_rcu is inside.
// ---------------------------------------------------------------------------------

const PROP_READERS: usize = 4;
/// Per reader: its section count, odd while it is inside (set after `rcu_read_lock`,
/// bumped again before the guard drops).
static SECTIONS: [AtomicU64; PROP_READERS] = [const { AtomicU64::new(0) }; PROP_READERS];
static VIOLATIONS: AtomicU64 = AtomicU64::new(0);
static PROP_RUN: AtomicU64 = AtomicU64::new(0);

struct Witness {
    head: RcuHead,
    /// `SECTIONS` at the time of `call_rcu`.
    seen: [u64; PROP_READERS],
}

/// # Safety
/// `h` is the head of a leaked `Box<Witness>`.
unsafe fn check_witness(h: *mut RcuHead) {
    let w = h
        .cast::<u8>()
        .wrapping_sub(std::mem::offset_of!(Witness, head)) as *mut Witness;
    // SAFETY: contract.
    let w = unsafe { Box::from_raw(w) };
    for (i, &v) in w.seen.iter().enumerate() {
        // Inside at call time, and still in that same section now: a violation.
        if v % 2 == 1 && SECTIONS[i].load(Ordering::SeqCst) == v {
            VIOLATIONS.fetch_add(1, Ordering::SeqCst);
        }
    }
    PROP_RUN.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn property_no_callback_runs_inside_an_older_read_side_section() {
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..PROP_READERS)
        .map(|i| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ i as u64;
                while !stop.load(Ordering::Relaxed) {
                    let g = rcu_read_lock();
                    SECTIONS[i].fetch_add(1, Ordering::SeqCst);
                    // A random stay: from nothing to a few hundred microseconds.
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let spins = x % 4096;
                    for _ in 0..spins {
                        std::hint::spin_loop();
                    }
                    if x % 64 == 0 {
                        thread::sleep(Duration::from_micros(x % 300));
                    }
                    SECTIONS[i].fetch_add(1, Ordering::SeqCst);
                    drop(g);
                }
            })
        })
        .collect();
    const CALLS: u64 = 5_000;
    for n in 0..CALLS {
        let mut w = Box::new(Witness {
            head: RcuHead::new(),
            seen: [0; PROP_READERS],
        });
        for (s, c) in w.seen.iter_mut().zip(SECTIONS.iter()) {
            *s = c.load(Ordering::SeqCst);
        }
        let w = Box::into_raw(w);
        // SAFETY: leaked to RCU until `check_witness` reclaims it.
        unsafe { call_rcu(std::ptr::addr_of_mut!((*w).head), check_witness) };
        if n % 16 == 0 {
            rcu_note_qs();
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    rcu_barrier();
    assert_eq!(PROP_RUN.load(Ordering::SeqCst), CALLS);
    assert_eq!(
        VIOLATIONS.load(Ordering::SeqCst),
        0,
        "callbacks ran inside read-side sections older than their call_rcu"
    );
}

#[test]
fn kfree_rcu_frees_after_a_grace_period() {
    struct DropFlag(Arc<AtomicBool>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let release = Arc::new(AtomicBool::new(false));
    let (h, _) = reader_holding(release.clone(), false);
    kfree_rcu(Box::new(RcuBox::new(DropFlag(dropped.clone()))));
    for _ in 0..50 {
        rcu_note_qs();
        thread::sleep(Duration::from_micros(500));
    }
    assert!(!dropped.load(Ordering::SeqCst));
    release.store(true, Ordering::Release);
    h.join().unwrap();
    rcu_barrier();
    assert!(dropped.load(Ordering::SeqCst));
}
