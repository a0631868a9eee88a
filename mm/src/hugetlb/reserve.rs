//! Reservation maps: which huge-page indices of a mapping hold a reservation (Linux:
//! `struct resv_map` and its `file_region` list, `region_add`, `region_chg`,
//! `region_del`, `region_count` in `mm/hugetlb.c`).
//!
//! For a shared mapping the map belongs to the inode and records the indices that are
//! reserved *or* already have a page in the page cache; for a private mapping it
//! belongs to the VMA (shared by the pieces a split makes) and records the indices
//! whose reservation a fault has *consumed* (Linux's inverted private semantics). The
//! global count of reservations not yet consumed is the hstate's `resv_huge_pages`.

use alloc::vec::Vec;

use crate::errno::Errno;

/// A set of huge-page indices kept as sorted, disjoint, non-adjacent `[from, to)`
/// regions (Linux: `resv_map->regions`).
#[derive(Default, Debug)]
pub struct ResvMap {
    regions: spin::Mutex<Vec<(usize, usize)>>,
}

impl ResvMap {
    /// An empty map (Linux: `resv_map_alloc`).
    pub const fn new() -> Self {
        ResvMap {
            regions: spin::Mutex::new(Vec::new()),
        }
    }

    /// Indices in `[from, to)` not yet in the map (Linux: `region_chg`'s count).
    pub fn region_chg(&self, from: usize, to: usize) -> usize {
        (to - from) - self.region_count(from, to)
    }

    /// Indices in `[from, to)` that are in the map (Linux: `region_count`).
    pub fn region_count(&self, from: usize, to: usize) -> usize {
        self.regions
            .lock()
            .iter()
            .map(|&(f, t)| t.min(to).saturating_sub(f.max(from)))
            .sum()
    }

    /// Is `idx` in the map?
    pub fn contains(&self, idx: usize) -> bool {
        self.region_count(idx, idx + 1) == 1
    }

    /// Adds `[from, to)`; returns how many indices were new (Linux: `region_add`).
    /// ENOMEM with nothing changed if the list cannot grow.
    pub fn region_add(&self, from: usize, to: usize) -> Result<usize, Errno> {
        if from >= to {
            return Ok(0);
        }
        let mut r = self.regions.lock();
        let added = (to - from)
            - r.iter()
                .map(|&(f, t)| t.min(to).saturating_sub(f.max(from)))
                .sum::<usize>();
        // Coalesce every region touching [from, to) into one.
        let (mut lo, mut hi) = (from, to);
        let first = r.partition_point(|&(_, t)| t < from);
        let mut last = first;
        while last < r.len() && r[last].0 <= to {
            lo = lo.min(r[last].0);
            hi = hi.max(r[last].1);
            last += 1;
        }
        if first == last {
            r.try_reserve(1).map_err(|_| Errno::ENOMEM)?;
            r.insert(first, (lo, hi));
        } else {
            r[first] = (lo, hi);
            r.drain(first + 1..last);
        }
        Ok(added)
    }

    /// Removes `[from, to)`; returns how many indices were removed (Linux:
    /// `region_del`). Cutting a hole in one region needs one more slot: ENOMEM with
    /// nothing changed if it cannot be had.
    pub fn region_del(&self, from: usize, to: usize) -> Result<usize, Errno> {
        if from >= to {
            return Ok(0);
        }
        let mut r = self.regions.lock();
        if r.iter().any(|&(f, t)| f < from && t > to) {
            r.try_reserve(1).map_err(|_| Errno::ENOMEM)?;
        }
        let mut removed = 0;
        let mut out = Vec::new();
        // Rebuild in place: at most one region grows into two.
        let mut i = 0;
        while i < r.len() {
            let (f, t) = r[i];
            let ov = t.min(to).saturating_sub(f.max(from));
            if ov == 0 {
                i += 1;
                continue;
            }
            removed += ov;
            match (f < from, t > to) {
                (true, true) => {
                    r[i] = (f, from);
                    out.push((to, t));
                    i += 1;
                }
                (true, false) => {
                    r[i] = (f, from);
                    i += 1;
                }
                (false, true) => {
                    r[i] = (to, t);
                    i += 1;
                }
                (false, false) => {
                    r.remove(i);
                }
            }
        }
        for reg in out {
            let at = r.partition_point(|&(f, _)| f < reg.0);
            r.insert(at, reg);
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::ResvMap;

    #[test]
    fn add_count_del() {
        let m = ResvMap::new();
        assert_eq!(m.region_add(0, 4).unwrap(), 4);
        assert_eq!(m.region_add(2, 6).unwrap(), 2);
        assert_eq!(m.region_chg(0, 8), 2);
        assert_eq!(m.region_add(10, 12).unwrap(), 2);
        assert_eq!(m.region_count(0, 20), 8);
        assert_eq!(m.region_del(3, 4).unwrap(), 1);
        assert_eq!(m.region_count(0, 20), 7);
        assert!(!m.contains(3) && m.contains(2) && m.contains(4));
        assert_eq!(m.region_del(0, 20).unwrap(), 7);
        assert_eq!(m.region_count(0, 20), 0);
    }
}
