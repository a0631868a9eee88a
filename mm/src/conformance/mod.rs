//! The syscall conformance suite: one set of test cases run on the host and in the kernel.
//!
//! Each case is a plain function taking a [`Harness`], in one of five groups:
//!
//! - [`syscalls`]: the errno cases of `mmap`, `munmap`, `mprotect` and `madvise` with
//!   their check order, placement, `MAP_FIXED`, maps and PROCMAP_QUERY;
//! - [`file`](mod@file): the `.mmap_prepare` / legacy `.mmap` file paths;
//! - [`mremap`]: `mremap(2)`, the multi-VMA pure move included;
//! - [`fork`](mod@fork): `fork` of an address space (merge scenarios after a fork,
//!   copy-on-write, `MADV_DONTFORK`/`WIPEONFORK`, teardown in either order);
//! - [`regress`]: the reproducers of defects that fuzzing, the fail-the-Nth-allocation
//!   sweep and thread stress found, each failing on the code before its fix.
//!
//! The harness supplies what differs between the two levels:
//!
//! - on the host ([`host::HostHarness`], module [`host`]), simulated physical memory,
//!   and user memory touched through [`AddressSpace::copy_from_user`] /
//!   [`AddressSpace::copy_to_user`] (which call [`AddressSpace::handle_fault`] as the
//!   MMU would);
//! - in the kernel (`kernel/tests/mmap_api.rs`), the real kernel address space loaded
//!   in CR3, and user memory touched by single-byte probes, so every data access goes
//!   through the real page-fault handler.
//!
//! Both runners generate one named test per case from
//! [`conformance_cases!`](crate::conformance_cases) (on the host one test file per group:
//! `mm/tests/mmap_syscalls.rs`, `mmap_file.rs`, `mmap_mremap.rs` and `regressions.rs`;
//! in the kernel `kernel/tests/mmap_api.rs`); [`CASES`] is the same list as data.
//!
//! A case leaves nothing behind once it returns: every address space and file it made
//! is dropped, so the frames and VMAs in use are back to where they were (the kernel's
//! test harness checks this after every test).

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::frame::FrameAllocator;
use crate::mmap::{AddressSpace, MmLayout, PROCMAP_QUERY_COVERING_OR_NEXT_VMA};

pub mod file;
pub mod fork;
pub mod fuzz;
#[cfg(not(target_os = "none"))]
pub mod host;
pub mod mremap;
pub mod regress;
pub mod syscalls;

/// A user access that faulted and could not be resolved (the SIGSEGV/SIGBUS a user
/// program would get).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserFault {
    /// The address of the byte that faulted.
    pub addr: usize,
}

/// What a case needs from the level it runs at.
pub trait Harness {
    /// The frame allocator address spaces and files allocate from.
    fn allocator(&self) -> &'static FrameAllocator;
    /// Frames in use now, for baselines: everything a case allocates (mapped pages,
    /// page-table pages, page-cache pages) and nothing it does not (the kernel heap).
    fn frames_in_use(&self) -> u64;
    /// A fresh, empty address space with `layout`, ready for user accesses.
    fn space_with_layout(&self, layout: MmLayout) -> Box<dyn Space + '_>;
    /// A fresh, empty address space with the default layout.
    fn space(&self) -> Box<dyn Space + '_> {
        self.space_with_layout(MmLayout::default())
    }
}

/// An address space under test and the way this level touches its user memory.
/// Dropping it tears the address space down (Linux: `exit_mmap`).
pub trait Space {
    /// The address space, for the syscall-shaped calls.
    fn asp(&self) -> &AddressSpace;
    /// Reads the user byte at `addr` as a user load would, faulting it in.
    fn read_byte(&self, addr: usize) -> Result<u8, UserFault>;
    /// Writes the user byte at `addr` as a user store would, faulting it in.
    fn write_byte(&self, addr: usize, value: u8) -> Result<(), UserFault>;
    /// A child of this address space ([`AddressSpace::fork`]), ready for user accesses
    /// at this level.
    fn fork(&self) -> Result<Box<dyn Space>, crate::errno::Errno>;
}

impl dyn Space + '_ {
    /// Reads `buf.len()` user bytes from `addr`, one load per byte.
    pub fn read(&self, addr: usize, buf: &mut [u8]) -> Result<(), UserFault> {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.read_byte(addr + i)?;
        }
        Ok(())
    }

    /// Writes `data` to user memory at `addr`, one store per byte.
    pub fn write(&self, addr: usize, data: &[u8]) -> Result<(), UserFault> {
        for (i, &b) in data.iter().enumerate() {
            self.write_byte(addr + i, b)?;
        }
        Ok(())
    }
}

/// A named case: `("group::name", function)`.
pub type Case = (&'static str, fn(&dyn Harness));

/// Calls `$callback!` with the name of every case, grouped by module:
///
/// ```text
/// $callback! { (extra tokens) syscalls: [name, ...], file: [...], mremap: [...], fork: [...], regress: [...] }
/// ```
///
/// The runners use it to generate one named test per case, so a case added here
/// runs at both levels, and a case missing here runs at neither (the list is the
/// suite). `extra tokens` are passed through for the callback's own use.
#[macro_export]
macro_rules! conformance_cases {
    ($callback:ident $(, $extra:tt)*) => {
        $callback! {
            ($($extra)*)
            syscalls: [
                mmap_errno_order,
                mmap_pgoff_overflow,
                placement_top_down_hint_and_min_addr,
                placement_respects_stack_guard_gap,
                bottom_up_fallback,
                map_fixed_replaces_and_noreplace_refuses,
                adjacent_anonymous_mappings_merge,
                munmap_errors_and_splits,
                max_map_count_rules,
                mprotect_errors,
                mprotect_split_and_remerge,
                madvise_errors_and_flags,
                maps_format_and_query,
            ],
            file: [
                prepare_hook_runs_before_any_vma_exists,
                failing_hook_leaves_nothing_and_map_fixed_target_unmapped,
                mutable_fields_are_applied_and_write_only_land_on_merged_vma,
                secretmem_sets_flags_and_adjacent_mappings_merge,
                both_or_neither_hook_is_enodev,
                legacy_mmap_flag_change_is_not_remerged,
                stacking_file_goes_through_compat_layer,
                device_file_maps_pfns,
                file_mode_rules,
                close_hook_is_called_on_munmap_and_replacement,
            ],
            mremap: [
                mremap_errors,
                mremap_shrink_grow_move_dontunmap,
                pure_move_spans_vmas_and_keeps_gaps,
                pure_move_of_part_of_each_end_vma_splits_them,
                pure_move_must_start_on_a_mapped_page,
                resizing_or_non_fixed_moves_stay_within_one_vma,
                pure_move_unmaps_only_each_part_destination,
                userfaultfd_armed_vma_moves_only_alone,
                dontunmap_drops_anon_vma_and_mlock_only_when_all_moved,
                zero_old_len_duplicates_a_shared_mapping_only,
                sealed_vma_refuses_before_the_range_check,
            ],
            fork: [
                forked_target_vma,
                forked_source_vma,
                mremap_faulted_to_unfaulted_prev,
                mremap_faulted_to_unfaulted_next,
                mremap_faulted_to_unfaulted_prev_unfaulted_next,
                mremap_faulted_to_unfaulted_prev_faulted_next,
                child_write_copies_and_parent_keeps_old_data,
                parent_write_after_child_exit_reuses_the_page,
                dontfork_wipeonfork_and_their_undo,
                locked_is_cleared_and_anon_vma_chains_follow_anon_vma_fork,
                file_and_shared_mappings_are_shared_with_the_child,
                exit_in_either_order_frees_everything,
                fork_of_ten_thousand_vmas,
                fork_with_16_mib_touched,
                fatal_signal_aborts_fork_with_eintr,
                pfn_mapping_is_copied_entry_for_entry,
            ],
            regress: [
                pure_move_with_dontunmap_visits_each_vma_once,
                mremap_shrink_past_task_size_is_einval_and_leaks_nothing,
                overflowing_mremap_arguments_are_errors,
                mprotect_read_only_drops_vm_account_until_faulted,
                mprotect_and_madvise_keep_sticky_flags_of_a_merge,
                refused_page_table_change_fails_before_vmas_change,
                accounting_follows_the_vmas_and_limits_refuse,
                overcommit_guess_refuses_a_charge_larger_than_ram,
                dontunmap_copy_merged_into_its_source_is_not_moved_again,
                map_fixed_noreplace_address_is_not_a_hint,
                populate_is_bounded_by_what_it_can_populate,
                file_vma_through_the_compat_layer_keeps_its_file_offset_when_moved,
                map_hugetlb_with_a_file_is_einval,
                user_copies_refuse_addresses_outside_the_user_half,
                user_copies_reach_the_right_page_of_a_huge_leaf,
            ],
        }
    };
}

/// Builds [`CASES`] from the list in [`conformance_cases!`].
macro_rules! case_table {
    (() $($group:ident: [$($name:ident),* $(,)?]),* $(,)?) => {
        &[$($(
            (
                concat!(stringify!($group), "::", stringify!($name)),
                $group::$name as fn(&dyn Harness),
            ),
        )*)*]
    };
}

/// Every case, in the order the runners run them.
pub const CASES: &[Case] = conformance_cases!(case_table);

/// The VMAs of `asp` as `(start, end)` pairs, lowest first (through PROCMAP_QUERY),
/// after checking the whole address space with `validate_mm` (Linux's habit of
/// validating after every operation a test looks at: the cases call this after each
/// step).
pub fn vmas(asp: &AddressSpace) -> Vec<(usize, usize)> {
    if let Err(e) = asp.validate_mm() {
        panic!("validate_mm: {e}");
    }
    let mut out = Vec::new();
    let mut a = 0;
    while let Some(q) = asp.query_vma(a, PROCMAP_QUERY_COVERING_OR_NEXT_VMA) {
        out.push((q.start, q.end));
        a = q.end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::CASES;

    #[test]
    fn case_names_are_unique_and_grouped() {
        let mut names: alloc::vec::Vec<&str> = CASES.iter().map(|c| c.0).collect();
        assert!(names.iter().all(|n| {
            ["syscalls::", "file::", "mremap::", "fork::", "regress::"]
                .iter()
                .any(|g| n.starts_with(g))
        }));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CASES.len(), "duplicate case names");
    }
}
