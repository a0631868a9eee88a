//! In-kernel tests of the buddy frame allocator over the real boot memory map.
#![no_std]
#![no_main]
// Test cases are named for what they check; the custom test framework makes them
// items of the test crate, which `missing_docs` would otherwise ask to document.
#![allow(missing_docs)]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::run_tests)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::vec::Vec;
use kernel::memory::frames;
use mm::frame::{FrameError, MAX_ORDER, NR_ORDERS, PAGE_SIZE};

kernel::test_kernel_main!();

/// The smallest order with a free block, and that order's block count.
fn smallest_free_order() -> Option<usize> {
    let s = frames().stats();
    (0..NR_ORDERS).find(|&o| s.free_per_order[o] > 0)
}

#[test_case]
fn split_takes_one_block_and_leaves_a_buddy_at_each_lower_order() {
    // The exact buddy state: the per-CPU lists emptied and bypassed.
    let _buddy = frames().pcp_disable();
    // Take every free block below some order k first, so the next order-0 request
    // must split an order-k block.
    let mut held = Vec::new();
    let k = loop {
        let o = smallest_free_order().expect("memory");
        if o >= 4 {
            break o;
        }
        held.push((frames().alloc(o).unwrap(), o));
    };
    let before = frames().stats();
    let pa = frames().alloc(0).unwrap();
    let after = frames().stats();
    assert_eq!(
        after.free_per_order[k],
        before.free_per_order[k] - 1,
        "one order-{k} block split"
    );
    for (o, &blocks) in after.free_per_order.iter().enumerate().take(k) {
        assert_eq!(blocks, 1, "one free buddy left at order {o}");
    }
    assert_eq!(after.free_frames, before.free_frames - 1);
    frames().free(pa, 0).unwrap();
    for (pa, o) in held {
        frames().free(pa, o).unwrap();
    }
}

#[test_case]
fn freeing_buddies_coalesces_back_to_the_original_block() {
    // The exact buddy state: the per-CPU lists emptied and bypassed.
    let _buddy = frames().pcp_disable();
    let before = frames().stats();
    let a = frames().alloc(0).unwrap();
    let b = frames().alloc(0).unwrap();
    let c = frames().alloc(3).unwrap();
    assert_ne!(frames().stats(), before);
    frames().free(b, 0).unwrap();
    frames().free(a, 0).unwrap();
    frames().free(c, 3).unwrap();
    assert_eq!(frames().stats(), before, "all blocks coalesced again");
}

#[test_case]
fn blocks_are_aligned_to_their_order() {
    for order in [0, 1, 5, 9, 10] {
        let pa = frames().alloc(order).unwrap();
        assert_eq!(
            pa.as_u64() % (PAGE_SIZE << order) as u64,
            0,
            "order {order} block aligned"
        );
        frames().free(pa, order).unwrap();
    }
}

#[test_case]
fn exhaustion_returns_an_error_and_memory_comes_back() {
    // The exact buddy state: the per-CPU lists emptied and bypassed.
    let _buddy = frames().pcp_disable();
    // The bookkeeping vector is allocated before the snapshot: its 4 KiB come from the
    // `kmalloc-4k` slab, whose page stays cached with the class after the vector is
    // freed (as Linux keeps partial slabs), so it must not count as a leak.
    let mut held = Vec::with_capacity(256);
    let before = frames().stats();
    for order in (0..=MAX_ORDER).rev() {
        while let Ok(pa) = frames().alloc(order) {
            held.push((pa, order));
        }
    }
    assert_eq!(frames().alloc(0), Err(FrameError::OutOfMemory));
    assert_eq!(frames().alloc_zeroed(0), Err(FrameError::OutOfMemory));
    assert_eq!(frames().stats().free_frames, 0);
    for (pa, order) in held {
        frames().free(pa, order).unwrap();
    }
    assert_eq!(frames().stats(), before);
}

#[test_case]
fn double_free_is_rejected_and_changes_nothing() {
    // The exact buddy state: the per-CPU lists emptied and bypassed.
    let _buddy = frames().pcp_disable();
    let pa = frames().alloc(2).unwrap();
    frames().free(pa, 2).unwrap();
    let before = frames().stats();
    assert_eq!(frames().free(pa, 2), Err(FrameError::NotAllocated));
    assert_eq!(frames().stats(), before);
}

#[test_case]
fn wrong_order_free_is_rejected() {
    // The exact buddy state: the per-CPU lists emptied and bypassed.
    let _buddy = frames().pcp_disable();
    let pa = frames().alloc(3).unwrap();
    let before = frames().stats();
    assert_eq!(frames().free(pa, 2), Err(FrameError::WrongOrder));
    // Order 4 is wrong too; if the block isn't order-4 aligned it is also misaligned
    // for that order, which the allocator may report first.
    let too_big = frames().free(pa, 4);
    assert!(
        matches!(
            too_big,
            Err(FrameError::WrongOrder | FrameError::Misaligned)
        ),
        "{too_big:?}"
    );
    assert_eq!(frames().stats(), before);
    frames().free(pa, 3).unwrap();
}

#[test_case]
fn bad_order_is_rejected() {
    assert_eq!(frames().alloc(MAX_ORDER + 1), Err(FrameError::BadOrder));
}

#[test_case]
fn zeroed_allocation_is_really_zero() {
    // Dirty a block, free it, and ask for a zeroed one until we get the same frames.
    let order = 1;
    let pa = frames().alloc(order).unwrap();
    let bytes = PAGE_SIZE << order;
    // SAFETY: we own the block; it is mapped in the direct map.
    unsafe { core::ptr::write_bytes(frames().phys_to_virt(pa), 0xA5, bytes) };
    frames().free(pa, order).unwrap();
    let z = frames().alloc_zeroed(order).unwrap();
    assert_eq!(
        z, pa,
        "the buddy allocator hands the just-freed block back first"
    );
    // SAFETY: we own the block now; reading it through the direct map.
    let s = unsafe { core::slice::from_raw_parts(frames().phys_to_virt(z), bytes) };
    assert!(
        s.iter().all(|&b| b == 0),
        "zeroed allocation has non-zero bytes"
    );
    frames().free(z, order).unwrap();
}

#[test_case]
fn refcount_decides_when_a_frame_is_freed() {
    let pa = frames().alloc(0).unwrap();
    let meta = frames().meta(pa).unwrap();
    assert_eq!(meta.refcount(), 1);
    meta.get();
    assert_eq!(frames().put_frame(pa), Ok(false), "one reference left");
    assert_eq!(frames().put_frame(pa), Ok(true), "last reference frees");
    assert_eq!(frames().free(pa, 0), Err(FrameError::NotAllocated));
}

#[test_case]
fn order0_frames_cycle_through_this_cpus_list_without_the_zone() {
    let a = frames().alloc(0).unwrap();
    frames().free(a, 0).unwrap();
    let before = frames().stats();
    assert!(before.pcp_frames > 0, "the free went to this CPU's list");
    // The frame just freed is handed out next, and the buddy lists never move.
    let b = frames().alloc(0).unwrap();
    assert_eq!(b, a, "the hottest frame first");
    frames().free(b, 0).unwrap();
    assert_eq!(frames().stats().free_per_order, before.free_per_order);
    // Disabling the lists empties them into the zone.
    let buddy = frames().pcp_disable();
    let s = frames().stats();
    assert_eq!(s.pcp_frames, 0);
    assert_eq!(s.free_frames, before.free_frames);
    drop(buddy);
}
