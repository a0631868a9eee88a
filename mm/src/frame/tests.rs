//! Host tests of the frame allocator.
