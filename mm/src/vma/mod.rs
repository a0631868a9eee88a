//! VMAs and the machinery around them (Linux: `mm/vma.c`, `mm/mmap_lock.c`).
