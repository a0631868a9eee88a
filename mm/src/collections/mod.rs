//! Generic data structures the memory manager builds on, apart from the policy that
//! uses them (Linux: `lib/`).
//!
//! - [`interval_tree`]: [`IntervalTree`], an augmented interval tree (Linux:
//!   `lib/interval_tree.c`, `include/linux/interval_tree_generic.h`), the index
//!   behind each file's `i_mmap` ([`crate::vma::IMmap`]).
//!
//! The VMA tree ([`crate::vma::maple`]) stays with the VMAs: its nodes are published
//! to lock-free readers under the VMA layer's RCU scheme, which is policy, not a
//! generic container.

pub mod interval_tree;

pub use interval_tree::IntervalTree;
