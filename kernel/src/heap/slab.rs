//! Size-class caches in front of the heap (Linux: the `kmalloc-<size>` SLUB caches).
//!
//! Small objects (tree nodes, anon_vmas, boxes of a few words) are the memory
//! manager's hot allocations. `linked_list_allocator` is first-fit over one sorted
//! free list, so its allocate *and* free walk every hole before the right one: once a
//! workload has left thousands of holes (a 10,000-VMA address space does), each
//! allocation costs tens of microseconds under TCG. Here each size class keeps its own
//! free list of equal-sized objects carved from whole pages, so allocation and free are
//! a pop and a push.
//!
//! Pages given to a class stay with it (Linux keeps partial slabs cached too); they
//! are counted as heap frames, so the tests' leak check sees them as the heap's and
//! not as leaked.

use core::alloc::Layout;
use core::sync::atomic::{AtomicU64, Ordering};
use mm::frame::PAGE_SIZE;
use mm::sync::IrqSpinLock;

/// Object sizes, as Linux's kmalloc caches (`kmalloc-8` … `kmalloc-8k`, with the 96
/// and 192 byte caches). An object of a power-of-two class is aligned to its size;
/// 96-byte objects are 32-aligned and 192-byte ones 64-aligned, since a slab page
/// starts page-aligned.
const CLASSES: [(usize, usize); 13] = [
    (8, 8),
    (16, 16),
    (32, 32),
    (64, 64),
    (96, 32),
    (128, 128),
    (192, 64),
    (256, 256),
    (512, 512),
    (1024, 1024),
    (2048, 2048),
    // `kmalloc-4k` and `kmalloc-8k`: the VMA tree's per-batch bookkeeping vectors reach
    // these sizes in a 65,530-VMA address space; left to the first-fit chunk heap they
    // walk its holes on every split (a 5x slowdown of the split+re-merge pair).
    (4096, 4096),
    (8192, 4096),
];

/// The largest request served here; bigger ones go to the chunk heap.
pub const MAX_SIZE: usize = 8192;

/// One size class: the address of its first free object (0 when empty). A free
/// object's first word holds the address of the next one.
struct Class {
    free: IrqSpinLock<usize>,
}

static CACHES: [Class; CLASSES.len()] = [const {
    Class {
        free: IrqSpinLock::new(0),
    }
}; CLASSES.len()];

/// Pages held by all classes.
static SLAB_PAGES: AtomicU64 = AtomicU64::new(0);

/// Pages the size classes hold.
pub fn pages() -> u64 {
    SLAB_PAGES.load(Ordering::Relaxed)
}

/// The class that serves `layout`, if any.
pub fn class_of(layout: Layout) -> Option<usize> {
    CLASSES
        .iter()
        .position(|&(size, align)| layout.size() <= size && layout.align() <= align)
}

/// Pops an object of class `class`, taking a fresh page from the frame allocator when
/// the class is empty. Null when memory is exhausted.
pub fn alloc(class: usize) -> *mut u8 {
    let mut head = CACHES[class].free.lock();
    if *head == 0 {
        let Some(first) = refill(CLASSES[class].0) else {
            return core::ptr::null_mut();
        };
        *head = first;
    }
    let obj = *head;
    // SAFETY: `obj` is a free object of this class (on its list, under its lock); a free object's first word holds the next free address and nothing else uses it.
    *head = unsafe { (obj as *const usize).read() };
    obj as *mut u8
}

/// Pushes `ptr` back on the free list of `class`.
///
/// # Safety
/// `ptr` must have come from [`alloc`] with the same `class` and not be used again.
pub unsafe fn free(ptr: *mut u8, class: usize) {
    let mut head = CACHES[class].free.lock();
    // SAFETY: the caller gives the object back; it is at least 8 bytes and 8-aligned (every class is), so its first word can link it into the list.
    unsafe { (ptr as *mut usize).write(*head) };
    *head = ptr as usize;
}

/// Carves a new page (a block of pages for `kmalloc-8k`) into objects of `size` bytes
/// and links them; returns the first.
fn refill(size: usize) -> Option<usize> {
    let frames = crate::memory::frames();
    // One page, or the smallest block of pages that holds one object (kmalloc-8k).
    let order = size.div_ceil(PAGE_SIZE).next_power_of_two().ilog2() as usize;
    let pa = frames.alloc(order).ok()?;
    SLAB_PAGES.fetch_add(1 << order, Ordering::Relaxed);
    super::note_frames(1 << order);
    let base = frames.phys_to_virt(pa) as usize;
    let count = (PAGE_SIZE << order) / size;
    for i in 0..count {
        let obj = base + i * size;
        let next = if i + 1 < count { obj + size } else { 0 };
        // SAFETY: the page was just allocated to this class and is mapped writable in the direct map; each object is in bounds and 8-aligned.
        unsafe { (obj as *mut usize).write(next) };
    }
    Some(base)
}
