//! The VMA tree's use of RCU: the small interface the maple tree's writer calls.
//!
//! RCU itself lives in [`crate::sync::rcu`]; lock-free readers (`lock_vma_under_rcu`)
//! use its [`rcu_read_lock`]. A tree writer retires the nodes a publication unlinked
//! with a grace-period cookie (`retire_epoch`, Linux: `start_poll_synchronize_rcu`)
//! and frees those whose cookie is below `safe_bound` (Linux:
//! `poll_state_synchronize_rcu`), after driving the grace-period machine once
//! without waiting. Linux frees maple nodes with `call_rcu` (`ma_free_rcu` →
//! `mt_free_rcu`); the tree here keeps its own retired list, so a node can go back to
//! its writer's node cache.

pub use crate::sync::rcu::{RcuReadGuard, rcu_read_lock};

use crate::sync::rcu;

/// The grace-period cookie for nodes unlinked by the publication that just happened
/// (Linux: `start_poll_synchronize_rcu()`). Cookies never decrease.
pub(super) fn retire_epoch() -> u64 {
    rcu::start_poll_synchronize_rcu()
}

/// Every object retired with a cookie `< safe_bound()` may be reclaimed now: its grace
/// period is over (Linux: `poll_state_synchronize_rcu(cookie)` is
/// `cookie <= gp_seq`). Advances the grace-period machine first, without waiting.
pub(super) fn safe_bound() -> u64 {
    rcu::rcu_gp_advance();
    rcu::rcu_gp_seq_acquire() + 1
}
