//! Buddy frame allocator and per-frame metadata (Linux: `mm/page_alloc.c`, `struct page`).
