//! Per-VMA lock state machine (Linux: `mm/mmap_lock.c`): attach/detach, vma_start_read failure modes,
//! write locks released by mmap_write_unlock, readers excluded by FLAG.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mm::errno::Errno;
use mm::vma::{Mm, VM_REFCNT_EXCLUDE_READERS_FLAG, VmFlags, VmaReadError};

const F: VmFlags = VmFlags::RW_DEFAULT;

#[test]
fn flag_is_bit_30() {
    assert_eq!(VM_REFCNT_EXCLUDE_READERS_FLAG, 1 << 30);
    assert_eq!(mm::vma::VM_REFCNT_LIMIT, (1 << 30) - 1);
}

#[test]
fn attach_detach_refcount() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let v = g.vm_area_alloc().unwrap();
    assert_eq!(v.refcnt(), 0, "fresh VMA is detached");
    g.vma_init(
        v,
        mm::vma::VmaInit {
            start: 0x1000,
            end: 0x3000,
            pgoff: 1,
            flags: F,
            file: None,
            ops: None,
        },
    )
    .unwrap();
    g.vma_link(v).unwrap();
    assert_eq!(v.refcnt(), 1, "attached");
    assert!(g.vma_is_write_locked(v), "linking write-locks");
    let d = g.detach_range(0x1000, 0x3000).unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(v.refcnt(), 0, "detached before being freed");
    g.remove_vmas(d);
    assert_eq!(g.live_vmas(), 0);
}

#[test]
fn dup_is_detached_and_fieldwise() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let v = g.map_anon(0x1000, 0x3000, 1, F).unwrap();
    let d = g.vm_area_dup(v).unwrap();
    assert_eq!(d.refcnt(), 0);
    assert_eq!(d.lock_seq(), u32::MAX, "dup resets vm_lock_seq");
    assert_eq!(
        (d.start(), d.end(), d.pgoff(), d.flags()),
        (0x1000, 0x3000, 1, F)
    );
    g.vm_area_free(d);
}

#[test]
fn start_read_detached_is_eagain() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let v = g.vm_area_alloc().unwrap();
    drop(g);
    let e = mm.vma_start_read(v).err().unwrap();
    assert_eq!(e, VmaReadError::Detached);
    assert_eq!(e.errno(), Errno::EAGAIN);
    assert_eq!(
        v.refcnt(),
        0,
        "a failed read must not raise a detached count"
    );
    mm.write_lock().vm_area_free(v);
}

#[test]
fn start_read_write_locked_fails_until_unlock() {
    let mm = Mm::new();
    let v = mm.write_lock().map_anon(0x1000, 0x2000, 1, F).unwrap();
    {
        let r = mm.vma_start_read(v).expect("unlocked VMA is readable");
        assert_eq!(v.refcnt(), 2);
        drop(r);
        assert_eq!(v.refcnt(), 1);
    }
    let mut g = mm.write_lock();
    assert_eq!(mm.lock_seq() % 2, 1, "mm_lock_seq odd while write-held");
    assert!(!g.vma_is_write_locked(v));
    assert!(
        mm.vma_start_read(v).is_ok(),
        "mmap write lock alone does not block readers"
    );
    g.vma_start_write(v);
    assert!(g.vma_is_write_locked(v));
    assert_eq!(v.lock_seq(), mm.lock_seq());
    assert_eq!(mm.vma_start_read(v).err(), Some(VmaReadError::WriteLocked));
    assert!(mm.lock_vma_under_rcu(0x1000).is_none());
    assert_eq!(v.refcnt(), 1);
    drop(g); // mmap_write_unlock releases every VMA write lock
    assert_eq!(mm.lock_seq() % 2, 0);
    assert!(mm.vma_start_read(v).is_ok());
    let g = mm.write_lock();
    assert!(!g.vma_is_write_locked(v), "new hold: not write-locked");
}

#[test]
fn downgrade_releases_write_locks() {
    let mm = Mm::new();
    let mut g = mm.write_lock();
    let v = g.map_anon(0x1000, 0x2000, 1, F).unwrap();
    assert_eq!(mm.vma_start_read(v).err(), Some(VmaReadError::WriteLocked));
    let r = g.downgrade();
    assert!(mm.vma_start_read(v).is_ok());
    assert!(r.vma_start_read_locked(v).is_some());
    assert!(r.find_vma(0).is_some());
}

#[test]
fn start_read_other_mm_fails() {
    let a = Mm::new();
    let b = Mm::new();
    let v = b.write_lock().map_anon(0x1000, 0x2000, 1, F).unwrap();
    assert_eq!(a.vma_start_read(v).err(), Some(VmaReadError::OtherMm));
    assert_eq!(v.refcnt(), 1, "reference dropped again");
}

#[test]
fn start_read_fails_while_writer_excludes_readers() {
    let mm = Mm::new();
    let v = mm.write_lock().map_anon(0x1000, 0x2000, 1, F).unwrap();
    let reader = mm.vma_start_read(v).unwrap();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut g = mm.write_lock();
            g.vma_start_write(v); // waits for `reader`
            done.store(true, Ordering::SeqCst);
        });
        // Wait until the writer has set FLAG.
        while v.refcnt() < VM_REFCNT_EXCLUDE_READERS_FLAG {
            std::thread::yield_now();
        }
        assert_eq!(v.refcnt(), VM_REFCNT_EXCLUDE_READERS_FLAG + 2);
        assert_eq!(mm.vma_start_read(v).err(), Some(VmaReadError::Excluded));
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !done.load(Ordering::SeqCst),
            "writer must wait for the reader"
        );
        drop(reader);
    });
    assert!(done.load(Ordering::SeqCst));
    assert_eq!(v.refcnt(), 1, "FLAG removed after the write lock is taken");
}

#[test]
fn detach_waits_for_transient_reader() {
    let mm = Mm::new();
    let v = mm.write_lock().map_anon(0x1000, 0x2000, 1, F).unwrap();
    let reader = mm.lock_vma_under_rcu(0x1000).expect("lock-free lookup");
    assert!(core::ptr::eq(reader.vma(), v));
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut g = mm.write_lock();
            let d = g.detach_range(0x1000, 0x2000).unwrap();
            done.store(true, Ordering::SeqCst);
            g.remove_vmas(d);
        });
        std::thread::sleep(Duration::from_millis(20));
        assert!(!done.load(Ordering::SeqCst));
        assert!(v.is_attached());
        drop(reader);
    });
    assert!(done.load(Ordering::SeqCst));
    assert!(mm.lock_vma_under_rcu(0x1000).is_none());
}

#[test]
fn lock_vma_under_rcu_lookup() {
    let mm = Mm::new();
    let v = mm.write_lock().map_anon(0x4000, 0x6000, 4, F).unwrap();
    assert!(mm.lock_vma_under_rcu(0x3fff).is_none(), "hole");
    assert!(mm.lock_vma_under_rcu(0x6000).is_none(), "end is exclusive");
    let r = mm.lock_vma_under_rcu(0x5fff).unwrap();
    assert!(core::ptr::eq(r.vma(), v));
    assert_eq!(v.refcnt(), 2);
    assert_eq!(r.anon_vma_chain_len(&r), 0, "read guard stabilises the VMA");
    drop(r);
    assert_eq!(v.refcnt(), 1);
}

#[test]
fn concurrent_rcu_readers_and_writer() {
    // Readers hammer lock-free lookups while a writer splits and re-merges: every
    // successful lookup must return a VMA that really contains the address.
    let mm = mm::vma::bench::build_mm(64).unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..2 {
            let (mm, stop) = (&mm, &stop);
            s.spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let a = mm::vma::bench::addr(i % 64) + 0x1000;
                    if let Some(r) = mm.lock_vma_under_rcu(a) {
                        assert!(r.start() <= a && a < r.end());
                    }
                    i += 1;
                }
            });
        }
        for k in 0..300 {
            mm::vma::bench::split_remerge(&mm, k % 64).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(mm.write_lock().map_count(), 64);
}
