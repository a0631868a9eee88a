//! Soundness of the VMA field proofs (issue 9, defect 7): a lock stabilises the VMAs
//! of its own address space (mmap lock) or its own VMA (VMA read lock) and no others,
//! and every safe accessor and every writer-side entry point asserts it.
//!
//! Small enough for Miri, which reported data races for the misuses below before the
//! proofs were checked: `cargo miri test -p mm --test vma_sound`.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mm::vma::{FileRef, Mm, VmFile, VmFlags, VmaRef, VmaStable};

const F: VmFlags = VmFlags::RW_DEFAULT;

struct TestFile;
impl VmFile for TestFile {
    fn into_any(self: Arc<Self>) -> Arc<dyn core::any::Any + Send + Sync> {
        self
    }
}

fn file() -> FileRef {
    Arc::new(TestFile)
}

/// Frees a detached VMA of `mm` when dropped, also while a `should_panic` test
/// unwinds, so that Miri's leak check reports the library's leaks and not the tests'.
struct FreeOnDrop<'a> {
    mm: &'a Mm,
    vma: Cell<Option<VmaRef>>,
}

impl<'a> FreeOnDrop<'a> {
    fn new(mm: &'a Mm) -> Self {
        FreeOnDrop {
            mm,
            vma: Cell::new(None),
        }
    }
}

impl Drop for FreeOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(v) = self.vma.take() {
            self.mm.write_lock().vm_area_free(v);
        }
    }
}

// ---- what each proof covers -------------------------------------------------------

#[test]
fn each_lock_stabilises_exactly_its_own() {
    let x = Mm::new();
    let y = Mm::new();
    let (a, b) = {
        let mut g = x.write_lock();
        let a = g.map_anon(0x1000, 0x2000, 1, F).unwrap();
        let b = g.map_anon(0x4000, 0x5000, 4, F).unwrap();
        assert!(g.stabilises(a) && g.stabilises(b));
        (a, b)
    };
    let c = y.write_lock().map_anon(0x1000, 0x2000, 1, F).unwrap();
    let gx = x.read_lock();
    assert!(gx.stabilises(a) && gx.stabilises(b));
    assert!(!gx.stabilises(c), "another address space's VMA");
    drop(gx);
    let r = x.lock_vma_under_rcu(0x1000).unwrap();
    assert!(r.stabilises(a));
    assert!(!r.stabilises(b), "a VMA read lock covers its own VMA only");
    assert!(!r.stabilises(c));
    // And the accessors work under the right proof.
    assert!(a.file(&r).is_none() && a.anon_name(&r).is_none());
    assert_eq!(a.anon_vma_chain_len(&r), 0);
    assert!(a.anon_vma(&r).is_none() && !a.is_fork_child(&r));
}

#[test]
fn detached_vma_of_own_mm_is_readable_under_the_write_lock() {
    let x = Mm::new();
    let mut g = x.write_lock();
    let v = g.vm_area_alloc().unwrap();
    let f = file();
    g.vma_init(
        v,
        mm::vma::VmaInit {
            start: 0x1000,
            end: 0x2000,
            pgoff: 0,
            flags: F,
            file: Some(f.clone()),
            ops: None,
        },
    )
    .unwrap();
    assert!(Arc::ptr_eq(&v.file(&g).unwrap(), &f));
    g.vm_area_free(v);
}

// ---- accessors with a proof of something else ---------------------------------------

#[test]
#[should_panic(expected = "not stabilised")]
fn file_under_read_lock_of_another_mm_panics() {
    let x = Mm::new();
    let y = Mm::new();
    let v = y.write_lock().map_anon(0x1000, 0x2000, 1, F).unwrap();
    let gx = x.read_lock();
    let _ = v.file(&gx);
}

#[test]
#[should_panic(expected = "not stabilised")]
fn anon_name_under_write_lock_of_another_mm_panics() {
    let x = Mm::new();
    let y = Mm::new();
    let v = y.write_lock().map_anon(0x1000, 0x2000, 1, F).unwrap();
    let gx = x.write_lock();
    let _ = v.anon_name(&gx);
}

#[test]
#[should_panic(expected = "not stabilised")]
fn chain_len_under_read_lock_of_another_vma_panics() {
    let x = Mm::new();
    let b = {
        let mut g = x.write_lock();
        g.map_anon(0x1000, 0x2000, 1, F).unwrap();
        g.map_anon(0x4000, 0x5000, 4, F).unwrap()
    };
    let r = x.lock_vma_under_rcu(0x1000).unwrap();
    let _ = b.anon_vma_chain_len(&r);
}

#[test]
#[should_panic(expected = "not stabilised")]
fn fork_child_under_read_lock_of_another_vma_panics() {
    let x = Mm::new();
    let b = {
        let mut g = x.write_lock();
        g.map_anon(0x1000, 0x2000, 1, F).unwrap();
        let b = g.map_anon(0x4000, 0x5000, 4, F).unwrap();
        g.anon_vma_prepare(b).unwrap();
        b
    };
    let r = x.lock_vma_under_rcu(0x1000).unwrap();
    let _ = b.is_fork_child(&r);
}

#[test]
#[should_panic(expected = "not stabilised")]
fn anon_vma_under_lock_of_another_mm_panics() {
    let x = Mm::new();
    let y = Mm::new();
    let v = {
        let mut g = y.write_lock();
        let v = g.map_anon(0x1000, 0x2000, 1, F).unwrap();
        g.anon_vma_prepare(v).unwrap();
        v
    };
    let gx = x.read_lock();
    let _ = v.anon_vma(&gx);
}

#[test]
#[should_panic(expected = "not stabilised")]
fn stale_handle_of_a_freed_vma_is_not_stabilised() {
    // The slot is back on the free list (another mm may take it any moment): the
    // lock of the mm it used to belong to must not vouch for it any more.
    let x = Mm::new();
    let v = {
        let mut g = x.write_lock();
        let v = g.map_anon(0x1000, 0x2000, 1, F).unwrap();
        g.unmap_range(0x1000, 0x2000).unwrap();
        v
    };
    let g = x.read_lock();
    let _ = v.file(&g);
}

// ---- vma_start_read_locked ----------------------------------------------------------

#[test]
fn start_read_locked_refuses_a_detached_vma() {
    let x = Mm::new();
    let v = x.write_lock().vm_area_alloc().unwrap();
    let g = x.read_lock();
    assert!(g.vma_start_read_locked(v).is_none());
    assert_eq!(v.refcnt(), 0, "no reference taken on a detached VMA");
    drop(g);
    x.write_lock().vm_area_free(v);
}

#[test]
fn start_read_locked_stabilises_its_vma_beyond_the_mmap_lock() {
    let x = Mm::new();
    let v = x.write_lock().map_anon(0x1000, 0x2000, 1, F).unwrap();
    let g = x.read_lock();
    let r = g
        .vma_start_read_locked(v)
        .expect("attached, not write-locked");
    drop(g);
    assert_eq!(v.refcnt(), 2);
    assert!(r.stabilises(v));
    assert!(v.file(&r).is_none());
}

#[test]
#[should_panic(expected = "belongs to mm")]
fn start_read_locked_on_a_vma_of_another_mm_panics() {
    let x = Mm::new();
    let y = Mm::new();
    let v = y.write_lock().map_anon(0x1000, 0x2000, 1, F).unwrap();
    let _ = x.read_lock().vma_start_read_locked(v);
}

// ---- the writer side ----------------------------------------------------------------

#[test]
fn write_lock_of_another_mm_is_not_this_holds() {
    // Two fresh mms are at the same `mm_lock_seq`: a VMA write-locked by one looks
    // write-locked by the other unless ownership is checked too.
    let x = Mm::new();
    let y = Mm::new();
    let mut gy = y.write_lock();
    let v = gy.map_anon(0x1000, 0x2000, 1, F).unwrap();
    let gx = x.write_lock_nested();
    assert_eq!(x.lock_seq(), y.lock_seq());
    assert!(gy.vma_is_write_locked(v));
    assert!(!gx.vma_is_write_locked(v));
}

#[test]
#[should_panic(expected = "belongs to mm")]
fn setting_a_field_of_another_mms_vma_panics() {
    let x = Mm::new();
    let y = Mm::new();
    let mut gy = y.write_lock();
    let v = gy.map_anon(0x1000, 0x2000, 1, F).unwrap();
    let mut gx = x.write_lock_nested();
    let _ = gx.vma_set_anon_name(v, Some(Arc::from("x")));
}

#[test]
#[should_panic(expected = "belongs to mm")]
fn vma_init_of_another_mms_detached_vma_panics() {
    let x = Mm::new();
    let y = Mm::new();
    let owned = FreeOnDrop::new(&y);
    let v = y.write_lock().vm_area_alloc().unwrap();
    owned.vma.set(Some(v));
    let _ = x.write_lock().vma_init(
        v,
        mm::vma::VmaInit {
            start: 0x1000,
            end: 0x2000,
            pgoff: 0,
            flags: F,
            file: Some(file()),
            ops: None,
        },
    );
}

#[test]
#[should_panic(expected = "belongs to mm")]
fn vma_start_write_of_another_mms_vma_panics() {
    let x = Mm::new();
    let y = Mm::new();
    let v = y.write_lock().map_anon(0x1000, 0x2000, 1, F).unwrap();
    x.write_lock().vma_start_write(v);
}

#[test]
#[should_panic(expected = "belongs to mm")]
fn vm_area_dup_of_another_mms_vma_panics() {
    let x = Mm::new();
    let y = Mm::new();
    let v = y.write_lock().map_anon(0x1000, 0x2000, 1, F).unwrap();
    let _ = x.write_lock().vm_area_dup(v);
}

#[test]
#[should_panic(expected = "belongs to mm")]
fn freeing_a_vma_twice_panics() {
    // A second free would push the slot twice and hand it to two owners.
    let x = Mm::new();
    let mut g = x.write_lock();
    let v = g.vm_area_alloc().unwrap();
    g.vm_area_free(v);
    g.vm_area_free(v);
}

#[test]
#[should_panic(expected = "belongs to mm")]
fn removing_another_mms_detached_vmas_panics() {
    let x = Mm::new();
    let y = Mm::new();
    let owned = FreeOnDrop::new(&y);
    let d = {
        let mut gy = y.write_lock();
        gy.map_anon(0x1000, 0x2000, 1, F).unwrap();
        gy.detach_range(0x1000, 0x2000).unwrap()
    };
    owned.vma.set(d.iter().next());
    x.write_lock().remove_vmas(d);
}

#[test]
#[should_panic(expected = "not stabilised by the lock passed")]
fn anon_vma_fork_with_a_lock_that_does_not_hold_the_parent_panics() {
    let parent_mm = Mm::new();
    let child_mm = Mm::new();
    let other = Mm::new();
    let parent = {
        let mut g = parent_mm.write_lock();
        let p = g.map_anon(0x1000, 0x2000, 1, F).unwrap();
        g.anon_vma_prepare(p).unwrap();
        p
    };
    let owned = FreeOnDrop::new(&child_mm);
    let mut g = child_mm.write_lock();
    let child = g.vm_area_alloc().unwrap();
    owned.vma.set(Some(child));
    g.vma_init(
        child,
        mm::vma::VmaInit {
            start: 0x1000,
            end: 0x2000,
            pgoff: 1,
            flags: F,
            file: None,
            ops: None,
        },
    )
    .unwrap();
    let wrong = other.read_lock_nested();
    let _ = g.anon_vma_fork(child, parent, &wrong);
}

// ---- concurrency (the races Miri reported, and the protocol they break) -------------

/// Issue 9: `v.file(&guard_of_x)` on a VMA of mm `y` raced with `y`'s writer. Now the
/// reader stops at the proof check, before touching `vm_file`.
#[test]
#[should_panic(expected = "not stabilised")]
fn file_via_other_mms_lock_while_its_owner_writes_panics() {
    let x = Mm::new();
    let y = Mm::new();
    let v = y.write_lock().vm_area_alloc().unwrap();
    let ready = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut g = y.write_lock();
            ready.store(true, Ordering::Release);
            for _ in 0..3 {
                g.vma_init(
                    v,
                    mm::vma::VmaInit {
                        start: 0x1000,
                        end: 0x2000,
                        pgoff: 0,
                        flags: F,
                        file: Some(file()),
                        ops: None,
                    },
                )
                .unwrap();
            }
            g.vm_area_free(v);
        });
        while !ready.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
        let gx = x.read_lock();
        for _ in 0..3 {
            let _ = v.file(&gx);
        }
    });
}

/// Issue 9: `vma_start_read_locked` read-locked a VMA of another mm that its owner had
/// write-locked, and the "read lock" then raced with the owner's writes.
#[test]
#[should_panic(expected = "belongs to mm")]
fn start_read_locked_on_other_mms_write_locked_vma_panics() {
    let x = Mm::new();
    let y = Mm::new();
    let v = y.write_lock().map_anon(0x1000, 0x2000, 1, F).unwrap();
    let ready = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut g = y.write_lock();
            g.vma_start_write(v);
            ready.store(true, Ordering::Release);
            for i in 0..3 {
                g.vma_set_anon_name(v, Some(Arc::from(format!("n{i}"))))
                    .unwrap();
            }
        });
        while !ready.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
        let gx = x.read_lock();
        let r = gx.vma_start_read_locked(v);
        for _ in 0..3 {
            let _ = r.as_ref().map(|r| r.anon_name(r));
        }
    });
}

/// The protocol the proofs stand for: a VMA read lock keeps the VMA's fields, and the
/// anon_vma reference it owns, stable while the mmap write-lock holder changes other
/// VMAs; the writer waits for the reader before it changes this one (and drops the
/// anon_vma reference the reader cloned from).
#[test]
fn vma_read_lock_holds_off_the_writer_of_its_vma() {
    let mm = Mm::new();
    let (v1, v2) = {
        let mut g = mm.write_lock();
        let v1 = g.map_anon(0x1000, 0x2000, 1, F).unwrap();
        let v2 = g.map_anon(0x4000, 0x5000, 4, F).unwrap();
        g.anon_vma_prepare(v1).unwrap();
        g.vma_set_anon_name(v1, Some(Arc::from("a"))).unwrap();
        (v1, v2)
    };
    let r = mm.lock_vma_under_rcu(0x1000).unwrap();
    let started = AtomicBool::new(false);
    let av = std::thread::scope(|s| {
        s.spawn(|| {
            let mut g = mm.write_lock();
            g.vma_start_write(v2);
            g.vma_set_anon_name(v2, Some(Arc::from("b"))).unwrap();
            started.store(true, Ordering::Release);
            g.vma_start_write(v1); // waits for `r`
            g.vma_set_anon_name(v1, Some(Arc::from("c"))).unwrap();
            g.unlink_anon_vmas(v1).unwrap();
        });
        while !started.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
        assert_eq!(v1.anon_name(&r).as_deref(), Some("a"));
        let av = v1.anon_vma(&r).expect("faulted");
        assert_eq!(v1.anon_vma_chain_len(&r), 1);
        drop(r);
        av
    });
    // Our own reference keeps the anon_vma alive after the writer dropped the VMA's.
    assert_eq!(av.num_links(), 0, "unlinked by the writer");
    assert_eq!(av.unlink_count(), 1);
    let g = mm.read_lock();
    assert_eq!(v1.anon_name(&g).as_deref(), Some("c"));
    assert!(v1.anon_vma(&g).is_none());
    assert_eq!(v2.anon_name(&g).as_deref(), Some("b"));
}
