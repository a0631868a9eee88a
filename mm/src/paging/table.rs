//! Walking and changing the user half: walk, translate, map, unmap, protect, and the
//! accessed/dirty bits (Linux: `follow_page`/`walk_page_range`, `vm_insert_page`,
//! `remap_pfn_range`, `zap_page_range`, `change_protection`, `ptep_test_and_clear_young`).
//!
//! Every mutating operation first checks the whole range without changing anything, then
//! allocates what it needs, and only then mutates, so a failure leaves the tables exactly
//! as they were (the "preallocate, then commit" rule).

use core::ops::Range;

use x86_64::{PhysAddr, VirtAddr};

use super::entry::{ADDR_MASK, ENTRIES, Kind, PTE_PROTNONE, Pte, Table, leaf_pte, visible_flags};
use super::tlb::MmuGather;
use super::{
    LEAF_FLAGS, Level, MapError, PTE_ACCOUNTED, PageSize, PageTableEntry, PageTableFlags as F,
    PageTableRoot, TABLE_FLAGS, USER_END,
};
use crate::frame::{FrameAllocator, FrameFlags};

/// Where a walk stopped (Linux: the level `follow_page_mask`/`walk_page_range` reports).
#[derive(Debug, Clone)]
pub struct WalkResult {
    /// Level of the table holding `entry`.
    pub level: Level,
    /// Physical address of that table.
    pub table: PhysAddr,
    /// Index of the entry in it.
    pub index: usize,
    /// The entry: unused, a leaf (4K at `Pt`, huge at `Pd`/`Pdpt`), or a PROT_NONE leaf.
    pub entry: PageTableEntry,
}

/// Which tables an unmap may free once it has emptied them (Linux: the floor and
/// ceiling of `free_pgtables`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeTables {
    /// None: other CPUs may fault in the range meanwhile (MADV_DONTNEED under the mmap
    /// read lock: Linux's `zap_page_range_single` leaves the tables too).
    Keep,
    /// Those whose whole span lies in `floor..ceiling`: the addresses between the
    /// neighbouring VMAs, which no VMA covers, so no fault can be walking into them.
    Within {
        /// End of the previous VMA (0 if none).
        floor: u64,
        /// Start of the next VMA (the end of the user half if none).
        ceiling: u64,
    },
}

impl FreeTables {
    /// Every emptied table (exclusive callers only).
    pub const ALL: FreeTables = FreeTables::Within {
        floor: 0,
        ceiling: 1 << 47,
    };

    /// May a table spanning `start..end` go?
    pub(super) fn allows(self, start: u64, end: u64) -> bool {
        match self {
            FreeTables::Keep => false,
            FreeTables::Within { floor, ceiling } => floor <= start && end <= ceiling,
        }
    }
}

/// A mapped page as [`PageTableRoot::translate`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// Physical address of the byte at the virtual address asked for.
    pub phys: PhysAddr,
    /// Physical address of the start of the page.
    pub frame: PhysAddr,
    /// Page size.
    pub size: PageSize,
    /// Leaf flags as mapped, plus `ACCESSED`/`DIRTY` as the CPU set them. `PRESENT` is
    /// clear for a PROT_NONE mapping. Never `HUGE_PAGE` or the software bits.
    pub flags: F,
}

/// Bits `protect` keeps from the old entry (Linux: `_PAGE_CHG_MASK`).
const PROTECT_KEEP: u64 =
    ADDR_MASK | F::HUGE_PAGE.bits() | PTE_ACCOUNTED.bits() | F::ACCESSED.bits() | F::DIRTY.bits();

fn align_up(x: u64, a: u64) -> u64 {
    (x + a - 1) & !(a - 1)
}

fn align_down(x: u64, a: u64) -> u64 {
    x & !(a - 1)
}

/// Validates a user range aligned to `align`; returns it as integers.
pub(super) fn user_range(range: &Range<VirtAddr>, align: u64) -> Result<(u64, u64), MapError> {
    let (s, e) = (range.start.as_u64(), range.end.as_u64());
    if s > e {
        return Err(MapError::InvalidRange);
    }
    if !s.is_multiple_of(align) || !e.is_multiple_of(align) {
        return Err(MapError::Misaligned);
    }
    if e > USER_END {
        return Err(MapError::OutOfRange);
    }
    Ok((s, e))
}

/// Is `cur` (a leaf of `size`) the mapping `t` describes (see
/// [`Translation::same_mapping`])?
fn same_leaf(cur: Pte, size: PageSize, t: &Translation) -> bool {
    align_down(cur.addr().as_u64(), size.bytes()) == t.frame.as_u64()
        && Translation::same_permissions(visible_flags(cur), t.flags)
}

impl Translation {
    /// Does `other` describe the same mapping: same frame, same permission bits?
    /// Accessed and dirty bits do not count (the CPU sets them at will). Linux's
    /// `pte_same` compares the whole entry; ignoring A/D only spares a pointless retry.
    pub fn same_mapping(&self, other: &Translation) -> bool {
        self.frame == other.frame && Self::same_permissions(self.flags, other.flags)
    }

    fn same_permissions(a: F, b: F) -> bool {
        let ad = F::ACCESSED | F::DIRTY;
        a - ad == b - ad
    }
}

/// The entry bits `protect` installs for `flags` (PROT_NONE as [`PTE_PROTNONE`]).
fn protect_bits(flags: F) -> u64 {
    let mut prot = flags - F::ACCESSED - F::DIRTY;
    if !prot.contains(F::PRESENT) {
        prot |= PTE_PROTNONE;
    }
    prot.bits()
}

fn check_flags(flags: F) -> Result<(), MapError> {
    if LEAF_FLAGS.contains(flags) {
        Ok(())
    } else {
        Err(MapError::InvalidFlags)
    }
}

/// Number of tables at `level` (each spanning 512 entries) needed to cover `a..b`.
fn tables_covering(level: Level, a: u64, b: u64) -> usize {
    let span = level.entry_span() * ENTRIES as u64;
    ((align_up(b, span) - align_down(a, span)) / span) as usize
}

/// Page-table pages allocated up front for one map, linked through their first entry so
/// that holding any number of them needs no heap (Linux: the preallocated `pte_alloc`
/// pages of `__pte_alloc`, here for the whole range at once).
pub(super) struct Stash {
    alloc: &'static FrameAllocator,
    head: Option<Table>,
    /// Pages held.
    len: usize,
}

impl Stash {
    pub(super) fn fill(alloc: &'static FrameAllocator, n: usize) -> Result<Self, MapError> {
        let mut s = Stash {
            alloc,
            head: None,
            len: 0,
        };
        // On failure `s` drops and frees what it holds: nothing changed.
        s.top_up(n)?;
        Ok(s)
    }

    /// Allocates until at least `n` pages are held. On failure the stash keeps what it
    /// had and what it got so far (its drop frees them).
    pub(super) fn top_up(&mut self, n: usize) -> Result<(), MapError> {
        while self.len < n {
            let t = Table::alloc(self.alloc)?;
            if let Some(h) = self.head {
                t.store(0, Pte(h.pa().as_u64()));
            }
            self.head = Some(t);
            self.len += 1;
        }
        Ok(())
    }

    /// Gives back a page [`pop`](Self::pop) handed out but the map did not use (another
    /// CPU installed the same table first).
    pub(super) fn push(&mut self, t: Table) {
        if let Some(h) = self.head {
            t.store(0, Pte(h.pa().as_u64()));
        }
        self.head = Some(t);
        self.len += 1;
    }

    pub(super) fn pop(&mut self) -> Result<Table, MapError> {
        match self.head {
            Some(t) => {
                self.len -= 1;
                let next = t.load(0).0;
                self.head = if next == 0 {
                    None
                } else {
                    // SAFETY: `next` is a stash page we allocated and still own.
                    Some(unsafe { Table::from_phys(self.alloc, PhysAddr::new(next)) })
                };
                t.store(0, Pte(0));
                Ok(t)
            }
            None => {
                // The plan counted too few tables: a bug, but allocate rather than panic.
                debug_assert!(false, "paging: map plan undercounted tables");
                Ok(Table::alloc(self.alloc)?)
            }
        }
    }
}

impl Drop for Stash {
    fn drop(&mut self) {
        while let Some(t) = self.head {
            let next = t.load(0).0;
            t.store(0, Pte(0));
            t.free();
            self.head = if next == 0 {
                None
            } else {
                // SAFETY: as in `pop`.
                Some(unsafe { Table::from_phys(self.alloc, PhysAddr::new(next)) })
            };
        }
    }
}

/// Page-table pages set aside for one later map of a range (Linux: `vmf->prealloc_pte`,
/// which `__do_fault` allocates before calling `->fault`, so that once the file's page
/// is in hand, installing it cannot run out of memory). Made by
/// [`PageTableRoot::reserve_tables`], spent by [`PageTableRoot::map_reserved`] or
/// [`PageTableRoot::map_frame_reserved`]; dropping it frees the pages.
pub struct TableReservation {
    stash: Stash,
}

impl PageTableRoot {
    /// Allocates the table pages that mapping `range` with leaves of `size` needs now
    /// (Linux: `pte_alloc_one` for `vmf->prealloc_pte`). Errors as for
    /// [`map`](Self::map), checked before allocating; nothing changes either way. The
    /// reservation stays exact as long as the tables do not change before it is spent
    /// (the caller holds the page-table lock throughout); if they did, the map
    /// allocates the difference.
    pub fn reserve_tables(
        &self,
        range: Range<VirtAddr>,
        size: PageSize,
    ) -> Result<TableReservation, MapError> {
        let (start, end) = user_range(&range, size.bytes())?;
        let need = self.plan_map(start, end, size)?;
        Ok(TableReservation {
            stash: Stash::fill(self.allocator(), need)?,
        })
    }

    /// Descends from the PML4 towards `va` while entries point at tables, stopping at the
    /// first unused or leaf entry (Linux: `follow_page_mask`'s level-by-level walk).
    pub fn walk(&self, va: VirtAddr) -> WalkResult {
        let va = va.as_u64();
        let mut table = self.root_table();
        let mut level = Level::Pml4;
        loop {
            let index = level.index(va);
            let e = table.load(index);
            match (e.kind(level), level.lower()) {
                (Kind::Table(pa), Some(lower)) => {
                    // SAFETY: read from a present non-leaf entry; `&self` keeps the tables linked for the duration of the walk.
                    table = unsafe { table.child(pa) };
                    level = lower;
                }
                _ => {
                    return WalkResult {
                        level,
                        table: table.pa(),
                        index,
                        entry: e.to_entry(),
                    };
                }
            }
        }
    }

    /// The mapping of `va`, if any (Linux: `follow_page`/`walk_page_range` to the leaf).
    /// PROT_NONE mappings are reported too, with `PRESENT` clear in `flags`.
    pub fn translate(&self, va: VirtAddr) -> Option<Translation> {
        let w = self.walk(va);
        let e = Pte(w.entry.addr().as_u64() | w.entry.flags().bits());
        match e.kind(w.level) {
            Kind::Leaf(size) => {
                let frame = align_down(e.addr().as_u64(), size.bytes());
                Some(Translation {
                    phys: PhysAddr::new(frame + (va.as_u64() & (size.bytes() - 1))),
                    frame: PhysAddr::new(frame),
                    size,
                    flags: visible_flags(e),
                })
            }
            _ => None,
        }
    }

    /// Leaf table and index for `va`, if the tables down to `size`'s level exist.
    pub(super) fn leaf_slot(&self, va: u64, size: PageSize) -> Option<(Table, usize)> {
        let mut table = self.root_table();
        let mut level = Level::Pml4;
        while level != size.level() {
            match table.load(level.index(va)).kind(level) {
                // SAFETY: present non-leaf entry, kept linked by `&self`.
                Kind::Table(pa) => table = unsafe { table.child(pa) },
                _ => return None,
            }
            level = level.lower()?;
        }
        Some((table, level.index(va)))
    }

    /// The leaf mapping `va` (any size): its table, index and size.
    pub(super) fn find_leaf(&self, va: u64) -> Option<(Table, usize, PageSize)> {
        let w = self.walk(VirtAddr::new_truncate(va));
        let e = Pte(w.entry.addr().as_u64() | w.entry.flags().bits());
        match e.kind(w.level) {
            Kind::Leaf(size) => {
                // SAFETY: `w.table` is a table reached by the walk, linked under `&self`.
                let t = unsafe { Table::from_phys(self.allocator(), w.table) };
                Some((t, w.index, size))
            }
            _ => None,
        }
    }

    /// Checks that `start..end` can take leaves of `size`, and counts the table pages
    /// that must be allocated.
    pub(super) fn plan_map(&self, start: u64, end: u64, size: PageSize) -> Result<usize, MapError> {
        let leaf_level = size.level();
        let mut need = 0;
        let mut va = start;
        'pages: while va < end {
            let mut table = self.root_table();
            let mut level = Level::Pml4;
            loop {
                let kind = table.load(level.index(va)).kind(level);
                if level == leaf_level {
                    if kind != Kind::Empty {
                        return Err(MapError::AlreadyMapped);
                    }
                    va += size.bytes();
                    continue 'pages;
                }
                match kind {
                    Kind::Leaf(_) => return Err(MapError::AlreadyMapped),
                    Kind::Table(pa) => {
                        // SAFETY: present non-leaf entry, kept linked by `&self`.
                        let child = unsafe { table.child(pa) };
                        let lower = level.lower().ok_or(MapError::AlreadyMapped)?;
                        // Only huge leaves may be added to a shared PD table: a PT under
                        // it would be owned by nobody in particular.
                        if lower == Level::Pd && leaf_level < Level::Pd && child.share_count() > 0 {
                            return Err(MapError::SharedTable);
                        }
                        table = child;
                        level = lower;
                    }
                    Kind::Empty => {
                        // Everything under this entry is new: count it in one go.
                        let span = level.entry_span();
                        let region_end = (align_down(va, span) + span).min(end);
                        let mut l = level.lower().ok_or(MapError::AlreadyMapped)?;
                        loop {
                            need += tables_covering(l, va, region_end);
                            if l == leaf_level {
                                break;
                            }
                            l = l.lower().ok_or(MapError::AlreadyMapped)?;
                        }
                        va = region_end;
                        continue 'pages;
                    }
                }
            }
        }
        Ok(need)
    }

    /// Installs one leaf; tables in the way come from `stash`. The range was planned,
    /// but other CPUs may have changed the tables since (a concurrent fault on a
    /// neighbouring page): a missing table is installed under the lock of the entry
    /// that links it, re-checked there (Linux: `pmd_install`, `__pud_alloc`), and the
    /// leaf is stored under its table's lock only if its slot is still empty
    /// (`AlreadyMapped` otherwise: another fault mapped the page first).
    pub(super) fn install(
        &self,
        va: u64,
        leaf: Pte,
        size: PageSize,
        stash: &mut Stash,
    ) -> Result<(), MapError> {
        let level = size.level();
        let table = self.table_for(va, level, stash)?;
        let i = level.index(va);
        let _l = self.lock_table(table, level);
        if table.load(i).0 != 0 {
            return Err(MapError::AlreadyMapped);
        }
        table.store(i, leaf);
        Ok(())
    }

    /// The table at `level` that holds the entry for `va`, with the tables above it
    /// installed from `stash` where missing, each under the lock of the entry that
    /// links it and re-checked there (Linux: `pte_alloc`/`pmd_alloc`: `__pte_alloc` →
    /// `pmd_install`, `__pmd_alloc`, `__pud_alloc`). `AlreadyMapped` if a huge leaf
    /// sits in the way.
    pub(super) fn table_for(
        &self,
        va: u64,
        leaf_level: Level,
        stash: &mut Stash,
    ) -> Result<Table, MapError> {
        let mut table = self.root_table();
        let mut level = Level::Pml4;
        while level != leaf_level {
            let i = level.index(va);
            let lower = level.lower().ok_or(MapError::AlreadyMapped)?;
            table = match table.load(i).kind(level) {
                // SAFETY: present non-leaf entry; tables are freed only once no VMA
                // covers them (see `ptlock`), and the caller maps into a VMA it holds.
                Kind::Table(pa) => unsafe { table.child(pa) },
                Kind::Empty => {
                    let t = stash.pop()?;
                    let _l = self.lock_table(table, level);
                    match table.load(i).kind(level) {
                        Kind::Empty => {
                            // Release store: the zeroed table is visible before the link.
                            table.store(i, Pte(t.pa().as_u64() | TABLE_FLAGS.bits()));
                            t
                        }
                        Kind::Table(pa) => {
                            stash.push(t);
                            // SAFETY: as above; read under the lock that covers it.
                            unsafe { table.child(pa) }
                        }
                        Kind::Leaf(_) => {
                            stash.push(t);
                            return Err(MapError::AlreadyMapped);
                        }
                    }
                }
                Kind::Leaf(_) => return Err(MapError::AlreadyMapped),
            };
            level = lower;
        }
        Ok(table)
    }

    /// Maps `range` to the physically contiguous memory at `phys` with leaves of `size`
    /// (Linux: `remap_pfn_range` for unaccounted memory, `vm_insert_pages` for allocated
    /// frames; see the module docs for accounting).
    ///
    /// `range`, `phys` must be `size`-aligned and the range inside the user half; `flags`
    /// within [`LEAF_FLAGS`] (no `PRESENT` = PROT_NONE). Nothing may be mapped in the
    /// range yet (`AlreadyMapped`; no silent replacement). Intermediate entries get
    /// [`TABLE_FLAGS`]. On any error, including `OutOfMemory`, nothing has changed.
    pub fn map(
        &self,
        range: Range<VirtAddr>,
        phys: PhysAddr,
        size: PageSize,
        flags: F,
    ) -> Result<(), MapError> {
        let stash = Stash::fill(self.allocator(), 0)?;
        self.map_with(range, phys, size, flags, stash)
    }

    /// [`map`](Self::map) with the table pages of `r` (from
    /// [`reserve_tables`](Self::reserve_tables) for this range): fails with
    /// `OutOfMemory` only if the tables changed since the reservation. Pages left over
    /// are freed.
    pub fn map_reserved(
        &self,
        range: Range<VirtAddr>,
        phys: PhysAddr,
        size: PageSize,
        flags: F,
        r: TableReservation,
    ) -> Result<(), MapError> {
        self.map_with(range, phys, size, flags, r.stash)
    }

    fn map_with(
        &self,
        range: Range<VirtAddr>,
        phys: PhysAddr,
        size: PageSize,
        flags: F,
        mut stash: Stash,
    ) -> Result<(), MapError> {
        let (start, end) = user_range(&range, size.bytes())?;
        check_flags(flags)?;
        if !phys.as_u64().is_multiple_of(size.bytes()) {
            return Err(MapError::Misaligned);
        }
        let len = end - start;
        if phys.as_u64().checked_add(len).is_none_or(|e| e > 1 << 52) {
            return Err(MapError::InvalidRange);
        }
        let need = self.plan_map(start, end, size)?;
        stash.top_up(need)?;
        let alloc = self.allocator();
        let mut off = 0;
        while off < len {
            let pa = PhysAddr::new(phys.as_u64() + off);
            // Accounted iff the page starts an allocated block someone holds.
            let accounted = match alloc.meta(pa) {
                Some(m) if m.flags().contains(FrameFlags::HEAD) && m.refcount() > 0 => {
                    m.get();
                    m.inc_mapcount();
                    Some(m)
                }
                _ => None,
            };
            let leaf = leaf_pte(pa, size, flags, accounted.is_some());
            if let Err(e) = self.install(start + off, leaf, size, &mut stash) {
                // Another CPU mapped this page between the plan and the install
                // (single-page maps from the fault path; multi-page maps are made
                // where nobody else can fault). Give back what was counted.
                if let Some(m) = accounted {
                    m.dec_mapcount();
                    m.put();
                }
                return Err(e);
            }
            off += size.bytes();
        }
        Ok(())
    }

    /// Maps one page of `size` at `va` backed by the allocated block at `pa`, whose order
    /// must equal `size`'s. Takes over one reference the caller holds (normally the one
    /// `alloc` returned) and adds one map count; `unmap` (or dropping the space) gives
    /// both back (Linux: `do_anonymous_page` -> `set_pte_at` + `folio_add_new_anon_rmap`).
    /// On error the caller keeps its reference.
    pub fn map_frame(
        &self,
        va: VirtAddr,
        pa: PhysAddr,
        size: PageSize,
        flags: F,
    ) -> Result<(), MapError> {
        let stash = Stash::fill(self.allocator(), 0)?;
        self.map_frame_with(va, pa, size, flags, stash)
    }

    /// [`map_frame`](Self::map_frame) with the table pages of `r` (see
    /// [`map_reserved`](Self::map_reserved)).
    pub fn map_frame_reserved(
        &self,
        va: VirtAddr,
        pa: PhysAddr,
        size: PageSize,
        flags: F,
        r: TableReservation,
    ) -> Result<(), MapError> {
        self.map_frame_with(va, pa, size, flags, r.stash)
    }

    fn map_frame_with(
        &self,
        va: VirtAddr,
        pa: PhysAddr,
        size: PageSize,
        flags: F,
        mut stash: Stash,
    ) -> Result<(), MapError> {
        let end = va
            .as_u64()
            .checked_add(size.bytes())
            .ok_or(MapError::OutOfRange)?;
        let (start, end) = user_range(&(va..VirtAddr::new_truncate(end)), size.bytes())?;
        check_flags(flags)?;
        if !pa.as_u64().is_multiple_of(size.bytes()) {
            return Err(MapError::Misaligned);
        }
        let alloc = self.allocator();
        let m = alloc.meta(pa).ok_or(MapError::NotAllocated)?;
        if !m.flags().contains(FrameFlags::HEAD) || m.refcount() == 0 || m.order() != size.order() {
            return Err(MapError::NotAllocated);
        }
        let need = self.plan_map(start, end, size)?;
        stash.top_up(need)?;
        // Counted before the store: a zap on another CPU may clear the leaf the moment
        // it is visible, and its decrement must find ours.
        m.inc_mapcount();
        let r = self.install(start, leaf_pte(pa, size, flags, true), size, &mut stash);
        if r.is_err() {
            m.dec_mapcount();
        }
        r
    }

    /// Replaces the leaf at `va` (of any size; `va` aligned to it, `pa` a block of the
    /// same size) by one mapping the allocated frame `pa`, in place (Linux:
    /// `wp_page_copy`: `ptep_clear_flush` + `set_pte_at` on the same PTE slot; for huge
    /// leaves `hugetlb_wp`'s `huge_ptep_clear_flush` + `set_huge_pte_at`). Takes over one reference the caller holds on `pa` and adds one map count;
    /// the old leaf's map count drops now and its reference is put by `g` after the TLB
    /// flush, as for an unmap. Needs no allocation: the leaf's table stays, so a
    /// copy-on-write can never lose the old page for want of a table page.
    ///
    /// Errors, with nothing changed: `NotMapped` (no leaf at `va`), `Misaligned` (`va`
    /// or `pa` not aligned to the leaf's size), `OutOfRange`, `InvalidFlags`,
    /// `NotAllocated` (not an allocated block head of the leaf's size).
    pub fn replace_frame(
        &self,
        va: VirtAddr,
        pa: PhysAddr,
        flags: F,
        g: &mut MmuGather,
    ) -> Result<(), MapError> {
        self.replace_frame_if(va, None, pa, flags, g).map(|_| ())
    }

    /// [`replace_frame`](Self::replace_frame) only if the leaf at `va` still is
    /// `expect` (frame and permission flags; Linux: `pte_same(vmf->orig_pte)` under the
    /// PTE lock in `wp_page_copy`): `Ok(false)`, with nothing changed, if another CPU
    /// changed it since the fault looked. The check and the swap are one critical
    /// section of the leaf's table lock.
    pub fn replace_frame_if_same(
        &self,
        va: VirtAddr,
        expect: &Translation,
        pa: PhysAddr,
        flags: F,
        g: &mut MmuGather,
    ) -> Result<bool, MapError> {
        self.replace_frame_if(va, Some(expect), pa, flags, g)
    }

    fn replace_frame_if(
        &self,
        va: VirtAddr,
        expect: Option<&Translation>,
        pa: PhysAddr,
        flags: F,
        g: &mut MmuGather,
    ) -> Result<bool, MapError> {
        let Some((table, i, size)) = self.find_leaf(va.as_u64()) else {
            return if expect.is_some() {
                Ok(false)
            } else {
                Err(MapError::NotMapped)
            };
        };
        let bytes = size.bytes();
        let end = va.as_u64().checked_add(bytes).ok_or(MapError::OutOfRange)?;
        let (start, _) = user_range(&(va..VirtAddr::new_truncate(end)), bytes)?;
        check_flags(flags)?;
        if !pa.as_u64().is_multiple_of(bytes) {
            return Err(MapError::Misaligned);
        }
        let alloc = self.allocator();
        let m = alloc.meta(pa).ok_or(MapError::NotAllocated)?;
        if !m.flags().contains(FrameFlags::HEAD) || m.refcount() == 0 || m.order() != size.order() {
            return Err(MapError::NotAllocated);
        }
        let _l = self.lock_table(table, size.level());
        let cur = table.load(i);
        if cur.kind(size.level()) != Kind::Leaf(size) {
            // Zapped (and perhaps refilled with a table) since we looked.
            return if expect.is_some() {
                Ok(false)
            } else {
                Err(MapError::NotMapped)
            };
        }
        if expect.is_some_and(|t| !same_leaf(cur, size, t)) {
            return Ok(false);
        }
        m.inc_mapcount();
        g.add_cpus(self.active_cpus());
        let (old, _) = table.update(i, |_| leaf_pte(pa, size, flags, true));
        g.remove_leaf(start, size, old);
        self.add_cpus_after_clear(g);
        Ok(true)
    }

    /// Gives the one leaf at `va` the protection `flags` if it still is `expect`
    /// (Linux: `wp_page_reuse` under the PTE lock after `pte_same`); `Ok(false)` with
    /// nothing changed otherwise. A flush of the old entry is queued in `g`.
    pub fn protect_leaf_if_same(
        &self,
        va: VirtAddr,
        expect: &Translation,
        flags: F,
        g: &mut MmuGather,
    ) -> Result<bool, MapError> {
        check_flags(flags)?;
        let Some((table, i, size)) = self.find_leaf(va.as_u64()) else {
            return Ok(false);
        };
        let _l = self.lock_table(table, size.level());
        let cur = table.load(i);
        if cur.kind(size.level()) != Kind::Leaf(size) || !same_leaf(cur, size, expect) {
            return Ok(false);
        }
        let prot = protect_bits(flags);
        g.add_cpus(self.active_cpus());
        let (old, new) = table.update(i, |old| Pte((old.0 & PROTECT_KEEP) | prot));
        if old != new && old.has(F::PRESENT) {
            g.flush_leaf(align_down(va.as_u64(), size.bytes()), size, old);
        }
        self.add_cpus_after_clear(g);
        Ok(true)
    }

    /// Runs `f` on the mapping of `va` (or `None`) with the lock of its leaf's table
    /// held, so that no zap or copy-on-write can clear the leaf, and so free its frame,
    /// until `f` returns (Linux: `follow_page_pte` under `pte_offset_map_lock`; GUP
    /// then pins the page, here the caller's access is short enough to keep the lock).
    /// `f` must not take page-table locks or wait for other CPUs.
    pub fn with_leaf_locked<R>(&self, va: VirtAddr, f: impl FnOnce(Option<Translation>) -> R) -> R {
        let w = self.walk(va);
        // SAFETY: `w.table` was reached by the walk; the caller holds a lock keeping the
        // VMA of `va` (hence its tables) in place, or `va` has no tables to free.
        let table = unsafe { Table::from_phys(self.allocator(), w.table) };
        let _l = self.lock_table(table, w.level);
        let e = table.load(w.index);
        match e.kind(w.level) {
            Kind::Leaf(size) => {
                let frame = align_down(e.addr().as_u64(), size.bytes());
                f(Some(Translation {
                    phys: PhysAddr::new(frame + (va.as_u64() & (size.bytes() - 1))),
                    frame: PhysAddr::new(frame),
                    size,
                    flags: visible_flags(e),
                }))
            }
            // Empty, or a table linked since the walk: nothing mapped there as of the
            // walk; the caller faults and retries.
            _ => f(None),
        }
    }

    /// Checks that an unmap/protect of `start..end` under `table` splits no huge page and
    /// touches no shared PD table (unless `shared_ok`: the caller unshares first).
    fn check_modify(
        &self,
        table: Table,
        level: Level,
        base: u64,
        (start, end): (u64, u64),
        shared_ok: bool,
    ) -> Result<(), MapError> {
        let span = level.entry_span();
        let lo = start.max(base);
        let hi = end.min(base + span * ENTRIES as u64);
        if lo >= hi {
            return Ok(());
        }
        for i in level.index(lo)..=level.index(hi - 1) {
            let va = base + i as u64 * span;
            match table.load(i).kind(level) {
                Kind::Empty => {}
                Kind::Leaf(_) => {
                    if start > va || end < va + span {
                        return Err(MapError::PartialHugePage);
                    }
                }
                Kind::Table(pa) => {
                    // SAFETY: present non-leaf entry, kept linked by `&self`.
                    let child = unsafe { table.child(pa) };
                    let lower = level.lower().ok_or(MapError::InvalidRange)?;
                    if lower == Level::Pd && child.share_count() > 0 {
                        if shared_ok {
                            continue;
                        }
                        return Err(MapError::SharedTable);
                    }
                    self.check_modify(child, lower, va, (start, end), shared_ok)?;
                }
            }
        }
        Ok(())
    }

    /// Clears leaves in `start..end` under `table`, each table's leaves under that
    /// table's lock (Linux: `zap_pte_range` under `pte_offset_map_lock`,
    /// `zap_huge_pmd` under `pmd_lock`), and frees the tables it empties that `free`
    /// allows, through `g`.
    pub(super) fn zap_level(
        &self,
        table: Table,
        level: Level,
        base: u64,
        (start, end): (u64, u64),
        free: FreeTables,
        g: &mut MmuGather,
    ) {
        let span = level.entry_span();
        let lo = start.max(base);
        let hi = end.min(base + span * ENTRIES as u64);
        if lo >= hi {
            return;
        }
        let range = level.index(lo)..=level.index(hi - 1);
        if level == Level::Pt {
            // One hold of the PTE lock for the whole table, as Linux's batch.
            let _l = self.lock_table(table, level);
            for i in range {
                if table.load(i).0 != 0 {
                    let old = table.take(i);
                    g.remove_leaf(base + i as u64 * span, PageSize::Size4K, old);
                }
            }
            return;
        }
        for i in range {
            let va = base + i as u64 * span;
            match table.load(i).kind(level) {
                Kind::Empty => {}
                Kind::Leaf(size) => {
                    let _l = self.lock_table(table, level);
                    let old = table.take(i);
                    if old.0 != 0 {
                        g.remove_leaf(va, size, old);
                    }
                }
                Kind::Table(pa) => {
                    // SAFETY: present non-leaf entry, linked until we clear it below
                    // (tables are freed only here, by a zap that `free` allows to).
                    let child = unsafe { table.child(pa) };
                    let Some(lower) = level.lower() else { continue };
                    self.zap_level(child, lower, va, (start, end), free, g);
                    if free.allows(va, va + span) && child.is_empty() {
                        let _l = self.lock_table(table, level);
                        table.take(i);
                        g.remove_table(va, pa);
                    }
                }
            }
        }
    }

    /// Would [`unmap`](Self::unmap) or [`protect`](Self::protect) accept `range`? The
    /// same checks, with nothing changed: callers run it before they change VMAs, so the
    /// page-table step after them cannot fail (validate, then mutate).
    pub fn check_modify_range(&self, range: Range<VirtAddr>) -> Result<(), MapError> {
        let (start, end) = user_range(&range, PageSize::Size4K.bytes())?;
        self.check_modify(self.root_table(), Level::Pml4, 0, (start, end), false)
    }

    /// [`check_modify_range`](Self::check_modify_range) for a caller that unshares the
    /// shared PD tables in the range first (hugetlb's unmap and protect): those pass.
    pub fn check_modify_range_unsharing(&self, range: Range<VirtAddr>) -> Result<(), MapError> {
        let (start, end) = user_range(&range, PageSize::Size4K.bytes())?;
        self.check_modify(self.root_table(), Level::Pml4, 0, (start, end), true)
    }

    /// ORs the CPU mask into `g` again after entries changed (Linux reads
    /// `mm_cpumask` at flush time): the fence orders our PTE stores before the mask
    /// read, against `activate`'s mask update before its CR3 load, so a CPU missing from
    /// the mask loaded CR3 after the change.
    pub(super) fn add_cpus_after_clear(&self, g: &mut MmuGather) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        g.add_cpus(self.active_cpus());
    }

    /// Unmaps everything in `range` (Linux: `zap_page_range_single` + `free_pgd_range`):
    /// holes are skipped, each cleared leaf's map count drops now and its reference is put
    /// by `g` after the TLB flush, and every table page the unmap empties is freed (also
    /// via `g`). The PML4 is never freed.
    ///
    /// Errors, with nothing changed: `Misaligned` (not 4 KiB aligned), `OutOfRange`,
    /// `PartialHugePage` (the range cuts a huge page; splitting is not implemented),
    /// `SharedTable` (the range touches a PD table shared with another space: call
    /// [`unshare_pmd`](Self::unshare_pmd) first), `WrongAllocator` (gather of another
    /// allocator).
    ///
    /// Every emptied table is freed, wherever its span reaches: for a caller that
    /// knows no other CPU walks these tables (tests, teardown). The memory manager,
    /// whose faults run concurrently with unmaps, uses
    /// [`unmap_freeing`](Self::unmap_freeing) with the neighbouring VMAs as bounds.
    pub fn unmap(&self, range: Range<VirtAddr>, g: &mut MmuGather) -> Result<(), MapError> {
        self.unmap_freeing(range, FreeTables::ALL, g)
    }

    /// [`unmap`](Self::unmap) that frees only the emptied tables `free` allows (Linux:
    /// `unmap_vmas` + `free_pgtables(floor, ceiling)`; `FreeTables::Keep` is
    /// `zap_page_range_single`, which frees none).
    pub fn unmap_freeing(
        &self,
        range: Range<VirtAddr>,
        free: FreeTables,
        g: &mut MmuGather,
    ) -> Result<(), MapError> {
        let (start, end) = user_range(&range, PageSize::Size4K.bytes())?;
        if !core::ptr::eq(g.allocator(), self.allocator()) {
            return Err(MapError::WrongAllocator);
        }
        let root = self.root_table();
        self.check_modify(root, Level::Pml4, 0, (start, end), false)?;
        g.add_cpus(self.active_cpus());
        self.zap_level(root, Level::Pml4, 0, (start, end), free, g);
        self.add_cpus_after_clear(g);
        Ok(())
    }

    fn protect_level(
        &self,
        table: Table,
        level: Level,
        base: u64,
        (start, end): (u64, u64),
        prot: u64,
        g: &mut MmuGather,
    ) {
        let span = level.entry_span();
        let lo = start.max(base);
        let hi = end.min(base + span * ENTRIES as u64);
        if lo >= hi {
            return;
        }
        // The PTE lock once per PT page (Linux: `change_pte_range`), the PMD or
        // `page_table_lock` per huge leaf (`change_huge_pmd`).
        let _pt = (level == Level::Pt).then(|| self.lock_table(table, level));
        for i in level.index(lo)..=level.index(hi - 1) {
            let va = base + i as u64 * span;
            match table.load(i).kind(level) {
                Kind::Empty => {}
                Kind::Leaf(size) => {
                    let _l = (level != Level::Pt).then(|| self.lock_table(table, level));
                    if table.load(i).kind(level) != Kind::Leaf(size) {
                        continue;
                    }
                    let (old, new) = table.update(i, |old| Pte((old.0 & PROTECT_KEEP) | prot));
                    if old != new && old.has(F::PRESENT) {
                        g.flush_leaf(va, size, old);
                    }
                }
                Kind::Table(pa) => {
                    // SAFETY: present non-leaf entry, kept linked by `&mut self`.
                    let child = unsafe { table.child(pa) };
                    if let Some(lower) = level.lower() {
                        self.protect_level(child, lower, va, (start, end), prot, g);
                    }
                }
            }
        }
    }

    /// Gives every leaf in `range` the protection `flags` (Linux: `change_protection`).
    ///
    /// The frame address, page size and the accessed/dirty bits are kept (Linux:
    /// `_PAGE_CHG_MASK`); `ACCESSED`/`DIRTY` in `flags` are ignored. Without `PRESENT` the
    /// leaves become PROT_NONE. Holes stay holes. Each changed leaf that was present is
    /// queued for a TLB flush in `g`. Errors as for [`unmap`](Self::unmap), plus
    /// `InvalidFlags`; nothing changes on error.
    pub fn protect(
        &self,
        range: Range<VirtAddr>,
        flags: F,
        g: &mut MmuGather,
    ) -> Result<(), MapError> {
        let (start, end) = user_range(&range, PageSize::Size4K.bytes())?;
        check_flags(flags)?;
        if !core::ptr::eq(g.allocator(), self.allocator()) {
            return Err(MapError::WrongAllocator);
        }
        let root = self.root_table();
        self.check_modify(root, Level::Pml4, 0, (start, end), false)?;
        g.add_cpus(self.active_cpus());
        self.protect_level(root, Level::Pml4, 0, (start, end), protect_bits(flags), g);
        self.add_cpus_after_clear(g);
        Ok(())
    }

    /// Clears the accessed bit of the leaf mapping `va`; returns whether it was set
    /// (Linux: `ptep_test_and_clear_young`). No flush, as on Linux x86: a stale TLB entry
    /// only delays the next accessed-bit update.
    pub fn test_and_clear_young(&self, va: VirtAddr) -> Result<bool, MapError> {
        let (t, i, _) = self.find_leaf(va.as_u64()).ok_or(MapError::NotMapped)?;
        // An atomic AND on a present leaf needs no lock (Linux: the young test of
        // `page_referenced_one` runs under the PTE lock only to find the PTE).
        Ok(t.clear_bits(i, F::ACCESSED).has(F::ACCESSED))
    }

    /// Clears the dirty bit of the leaf mapping `va`; returns whether it was set and, if
    /// so, queues a flush in `g` so the CPU sets it again on the next write (Linux:
    /// `ptep_clear_flush` + `pte_mkclean` in `page_mkclean_one`).
    pub fn test_and_clear_dirty(&self, va: VirtAddr, g: &mut MmuGather) -> Result<bool, MapError> {
        let (t, i, size) = self.find_leaf(va.as_u64()).ok_or(MapError::NotMapped)?;
        let _l = self.lock_table(t, size.level());
        let old = t.clear_bits(i, F::DIRTY);
        let was = old.has(F::DIRTY);
        if was && old.has(F::PRESENT) {
            g.add_cpus(self.active_cpus());
            let base = align_down(va.as_u64(), size.bytes());
            g.flush_leaf(base, size, old);
        }
        Ok(was)
    }

    /// Number of leaves and of table pages in the user half (diagnostics, tests,
    /// benchmarks).
    pub fn count_user(&self) -> (u64, u64) {
        fn count(t: Table, level: Level, acc: &mut (u64, u64)) {
            for i in 0..ENTRIES {
                match t.load(i).kind(level) {
                    Kind::Empty => {}
                    Kind::Leaf(_) => acc.0 += 1,
                    Kind::Table(pa) => {
                        acc.1 += 1;
                        if let Some(lower) = level.lower() {
                            // SAFETY: present non-leaf entry, kept linked by `&self`.
                            count(unsafe { t.child(pa) }, lower, acc);
                        }
                    }
                }
            }
        }
        let root = self.root_table();
        let mut acc = (0, 0);
        for i in 0..256 {
            if let Kind::Table(pa) = root.load(i).kind(Level::Pml4) {
                acc.1 += 1;
                // SAFETY: present non-leaf entry, kept linked by `&self`.
                count(unsafe { root.child(pa) }, Level::Pdpt, &mut acc);
            }
        }
        acc
    }

    /// Leaf slot lookup for sibling modules.
    pub(super) fn slot_for(&self, va: u64, size: PageSize) -> Option<(Table, usize)> {
        self.leaf_slot(va, size)
    }
}

/// One leaf of the user half as [`PageTableRoot::leaves`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    /// First virtual address the leaf maps.
    pub va: u64,
    /// Page size.
    pub size: PageSize,
    /// Physical address of the page.
    pub frame: PhysAddr,
    /// Flags as [`Translation::flags`] reports them (`PRESENT` clear for PROT_NONE).
    pub flags: F,
    /// The leaf holds a reference and a map count on its frame ([`PTE_ACCOUNTED`]).
    ///
    /// [`PTE_ACCOUNTED`]: super::PTE_ACCOUNTED
    pub accounted: bool,
}

/// Iterator over the leaves of the user half in address order (see
/// [`PageTableRoot::leaves`]). Holds one root-to-leaf path, no heap.
pub struct Leaves<'a> {
    _root: &'a PageTableRoot,
    /// Per depth (0 = PML4): the table, its level, the virtual base it covers and the
    /// next index to look at.
    stack: [Option<(Table, Level, u64, usize)>; 4],
    depth: usize,
}

impl Iterator for Leaves<'_> {
    type Item = Leaf;

    fn next(&mut self) -> Option<Leaf> {
        loop {
            let (table, level, base, next) = self.stack[self.depth]?;
            // The PML4's user half is slots 0..256; lower tables use all 512.
            let limit = if level == Level::Pml4 { 256 } else { ENTRIES };
            if next >= limit {
                self.stack[self.depth] = None;
                if self.depth == 0 {
                    return None;
                }
                self.depth -= 1;
                continue;
            }
            self.stack[self.depth] = Some((table, level, base, next + 1));
            let va = base + next as u64 * level.entry_span();
            let e = table.load(next);
            match e.kind(level) {
                Kind::Empty => {}
                Kind::Leaf(size) => {
                    return Some(Leaf {
                        va,
                        size,
                        frame: PhysAddr::new(align_down(e.addr().as_u64(), size.bytes())),
                        flags: visible_flags(e),
                        accounted: e.has(super::PTE_ACCOUNTED),
                    });
                }
                Kind::Table(pa) => {
                    if let Some(lower) = level.lower() {
                        // SAFETY: `pa` was read from a present non-leaf entry of a table reached from the root; the iterator holds `&PageTableRoot`, and freeing a table takes `&mut PageTableRoot` (unmap), so the child stays linked and allocated while it is used.
                        let child = unsafe { table.child(pa) };
                        self.depth += 1;
                        self.stack[self.depth] = Some((child, lower, va, 0));
                    }
                }
            }
        }
    }
}

impl PageTableRoot {
    /// Every leaf of the user half, present or PROT_NONE, in address order; empty
    /// upper-level entries are skipped whole (Linux: `walk_page_range` over the user
    /// range with a `pte_entry`/`pmd_entry` callback).
    pub fn leaves(&self) -> Leaves<'_> {
        Leaves {
            _root: self,
            stack: [
                Some((self.root_table(), Level::Pml4, 0, 0)),
                None,
                None,
                None,
            ],
            depth: 0,
        }
    }

    /// The first page-table page of the user half (PDPT, PD or PT) that has no used
    /// entry, as (its level, the first address it covers). Unmaps free the tables
    /// they empty, so a private space has none; a PD table shared with another space
    /// (hugetlb PMD sharing) may be empty for a while and is not reported. Linux has
    /// no direct counterpart: `free_pgtables` keeps this true there too.
    pub fn first_empty_table(&self) -> Option<(Level, u64)> {
        self.first_empty_table_where(|_, _| false)
    }

    /// The first linked table that is empty although `needed(start, end)` says
    /// nothing needs its span `start..end` (shared PD tables excepted). Unmaps that
    /// run beside concurrent faults keep emptied tables a live VMA reaches into
    /// (Linux's `free_pgtables` floor and ceiling) and MADV_DONTNEED keeps them all,
    /// so the memory manager's invariant is "no empty table outside every VMA".
    pub fn first_empty_table_where(
        &self,
        needed: impl Fn(u64, u64) -> bool,
    ) -> Option<(Level, u64)> {
        fn walk(
            t: Table,
            level: Level,
            base: u64,
            limit: usize,
            needed: &dyn Fn(u64, u64) -> bool,
        ) -> Option<(Level, u64)> {
            for i in 0..limit {
                if let Kind::Table(pa) = t.load(i).kind(level) {
                    let lower = level.lower()?;
                    let va = base + i as u64 * level.entry_span();
                    // SAFETY: `pa` was read from a present non-leaf entry of a table
                    // reached from the root; the caller (validation, tests) holds the
                    // mmap lock, which every path that frees tables holds for writing.
                    let child = unsafe { t.child(pa) };
                    if child.is_empty()
                        && !(lower == Level::Pd && child.share_count() > 0)
                        && !needed(va, va + level.entry_span())
                    {
                        return Some((lower, va));
                    }
                    if let Some(found) = walk(child, lower, va, ENTRIES, needed) {
                        return Some(found);
                    }
                }
            }
            None
        }
        walk(self.root_table(), Level::Pml4, 0, 256, &needed)
    }
}
