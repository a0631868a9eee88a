//! The kernel heap: size-class caches for small objects ([`slab`]) in front of
//! `linked_list_allocator` heaps over chunks of frames.
//!
//! The heap starts with one chunk and grows from the frame allocator whenever an
//! allocation does not fit, instead of being a fixed array that runs out. Chunks are
//! reached through the direct map, so growth needs no page-table change. A chunk is
//! never given back: the heap's footprint is its high-water mark, as with Linux's
//! slab pages that stay cached.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use linked_list_allocator::Heap;
use mm::frame::PAGE_SIZE;
use mm::sync::IrqSpinLock;
use x86_64::PhysAddr;

pub mod slab;

/// Smallest chunk: 2^8 pages = 1 MiB.
const MIN_CHUNK_ORDER: usize = 8;
/// Largest chunk grown at once when the heap is already big: 2^12 pages = 16 MiB.
const MAX_GROWTH_ORDER: usize = 12;
/// How many chunks the heap can hold.
const MAX_CHUNKS: usize = 64;

struct Chunk {
    heap: Heap,
    start: usize,
    end: usize,
}

struct Chunks {
    list: [Option<Chunk>; MAX_CHUNKS],
    count: usize,
}

/// The global allocator.
pub struct GrowableHeap {
    chunks: IrqSpinLock<Chunks>,
}

static HEAP_FRAMES: AtomicU64 = AtomicU64::new(0);
static HEAP_BYTES_USED: AtomicU64 = AtomicU64::new(0);

#[global_allocator]
static ALLOCATOR: GrowableHeap = GrowableHeap {
    chunks: IrqSpinLock::new(Chunks {
        list: [const { None }; MAX_CHUNKS],
        count: 0,
    }),
};

/// Frames the heap holds (all chunks).
pub fn frames() -> u64 {
    HEAP_FRAMES.load(Ordering::Relaxed)
}

/// Counts `n` more frames as the heap's (chunks and slab pages alike).
fn note_frames(n: u64) {
    HEAP_FRAMES.fetch_add(n, Ordering::Relaxed);
}

/// Heap state for the boot log.
#[derive(Debug, Clone, Copy)]
pub struct HeapStats {
    /// Chunks grown so far.
    pub chunks: usize,
    /// Bytes in all chunks.
    pub size: u64,
    /// Bytes currently allocated.
    pub used: u64,
    /// Pages held by the size-class caches (included in `size`).
    pub slab_pages: u64,
}

/// The current [`HeapStats`].
pub fn stats() -> HeapStats {
    let chunks = ALLOCATOR.chunks.lock().count;
    HeapStats {
        chunks,
        size: frames() * PAGE_SIZE as u64,
        used: HEAP_BYTES_USED.load(Ordering::Relaxed),
        slab_pages: slab::pages(),
    }
}

/// Gives the heap its first chunk. Call once the frame allocator exists.
pub fn init() {
    let mut chunks = ALLOCATOR.chunks.lock();
    if chunks.count == 0 {
        grow(&mut chunks, MIN_CHUNK_ORDER).expect("no memory for the first heap chunk");
    }
}

fn order_for(bytes: usize) -> usize {
    let pages = bytes.div_ceil(PAGE_SIZE).max(1);
    pages.next_power_of_two().trailing_zeros() as usize
}

/// Adds a chunk of `2^order` frames. Fails if the frame allocator is out of memory
/// or the chunk table is full.
fn grow(chunks: &mut Chunks, order: usize) -> Option<()> {
    if chunks.count == MAX_CHUNKS {
        return None;
    }
    let frames = crate::memory::frames();
    let pa: PhysAddr = frames.alloc(order).ok()?;
    let start = frames.phys_to_virt(pa);
    let size = PAGE_SIZE << order;
    let mut heap = Heap::empty();
    // SAFETY: the block was just allocated to us, is `size` bytes, mapped writable in the direct map, and belongs to this heap chunk forever (never freed).
    unsafe { heap.init(start, size) };
    let start = start as usize;
    chunks.list[chunks.count] = Some(Chunk {
        heap,
        start,
        end: start + size,
    });
    chunks.count += 1;
    note_frames(1 << order);
    Some(())
}

// SAFETY: small layouts are served by their size class, whose objects are at least as big and as aligned as the layout and never overlap; the rest come from a chunk's `Heap`, which hands out non-overlapping blocks of the requested layout. `dealloc` picks the same class from the same layout, or returns the block to the chunk that contains it. Locks serialise all access and disable interrupts, so a handler that allocates can't deadlock.
unsafe impl GlobalAlloc for GrowableHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if let Some(class) = slab::class_of(layout) {
            let p = slab::alloc(class);
            if !p.is_null() {
                HEAP_BYTES_USED.fetch_add(layout.size() as u64, Ordering::Relaxed);
            }
            return p;
        }
        let mut chunks = self.chunks.lock();
        let count = chunks.count;
        for chunk in chunks.list[..count].iter_mut().flatten() {
            if let Ok(p) = chunk.heap.allocate_first_fit(layout) {
                HEAP_BYTES_USED.fetch_add(layout.size() as u64, Ordering::Relaxed);
                return p.as_ptr();
            }
        }
        // Grow: at least big enough for this request with the allocator's own
        // bookkeeping, and doubling-ish so growth is rare.
        let needed = order_for(layout.size() + layout.align() + 64);
        let current = order_for(frames() as usize * PAGE_SIZE);
        let order = needed
            .max(MIN_CHUNK_ORDER)
            .max(current.min(MAX_GROWTH_ORDER));
        if grow(&mut chunks, order).is_none() {
            return core::ptr::null_mut();
        }
        let last = chunks.count - 1;
        let chunk = chunks.list[last].as_mut().expect("chunk just added");
        match chunk.heap.allocate_first_fit(layout) {
            Ok(p) => {
                HEAP_BYTES_USED.fetch_add(layout.size() as u64, Ordering::Relaxed);
                p.as_ptr()
            }
            Err(()) => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(class) = slab::class_of(layout) {
            // SAFETY: the same layout chose the same class in `alloc`, so `ptr` is an object of that class, and the caller gives it up.
            unsafe { slab::free(ptr, class) };
            HEAP_BYTES_USED.fetch_sub(layout.size() as u64, Ordering::Relaxed);
            return;
        }
        let mut chunks = self.chunks.lock();
        let addr = ptr as usize;
        let count = chunks.count;
        let chunk = chunks.list[..count]
            .iter_mut()
            .flatten()
            .find(|c| c.start <= addr && addr < c.end)
            .expect("dealloc of a pointer the heap never handed out");
        // SAFETY: `ptr` came from this chunk's `allocate_first_fit` with `layout` (GlobalAlloc's contract), and the chunk is the one containing it.
        unsafe { chunk.heap.deallocate(NonNull::new_unchecked(ptr), layout) };
        HEAP_BYTES_USED.fetch_sub(layout.size() as u64, Ordering::Relaxed);
    }
}
