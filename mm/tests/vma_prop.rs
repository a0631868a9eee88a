//! Property tests: random mmap / mprotect-style modify / split / munmap sequences
//! against a page-granular reference model of Linux's merge rules (anonymous,
//! unfaulted mappings, `pgoff = addr >> PAGE_SHIFT`, no close hooks).

use mm::vma::{Mm, MmWriteGuard, PAGE_SIZE, VmFlags, VmaRef, pool::vma_pool_stats};
use proptest::prelude::*;

const NPAGES: usize = 48;
const BASE: usize = 0x10_0000;

fn addr(p: usize) -> usize {
    BASE + p * PAGE_SIZE
}

fn flagvar(i: u8) -> VmFlags {
    let rw = VmFlags::RW_DEFAULT;
    match i % 3 {
        0 => rw,
        1 => rw - VmFlags::WRITE,
        _ => rw | VmFlags::EXEC | VmFlags::MAYEXEC,
    }
}

#[derive(Clone, Debug)]
enum Op {
    Map { page: usize, len: usize, f: u8 },
    Protect { page: usize, len: usize, f: u8 },
    Split { page: usize, below: bool },
    Unmap { page: usize, len: usize },
    Gap { len: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..NPAGES, 1..8usize, 0..3u8).prop_map(|(page, len, f)| Op::Map { page, len, f }),
        3 => (0..NPAGES, 1..12usize, 0..3u8).prop_map(|(page, len, f)| Op::Protect { page, len, f }),
        1 => (1..NPAGES, any::<bool>()).prop_map(|(page, below)| Op::Split { page, below }),
        1 => (0..NPAGES, 1..6usize).prop_map(|(page, len)| Op::Unmap { page, len }),
        1 => (1..6usize).prop_map(|len| Op::Gap { len }),
    ]
}

/// Reference model: sorted, non-overlapping `(start_page, end_page, flag_variant)`.
#[derive(Default)]
struct Model {
    v: Vec<(usize, usize, u8)>,
}

impl Model {
    fn free(&self, s: usize, e: usize) -> bool {
        self.v.iter().all(|&(a, b, _)| b <= s || a >= e)
    }
    fn idx_at(&self, p: usize) -> Option<usize> {
        self.v.iter().position(|&(a, b, _)| a <= p && p < b)
    }
    fn split_at(&mut self, p: usize) {
        if let Some(i) = self.idx_at(p) {
            let (a, b, f) = self.v[i];
            if a < p {
                self.v[i] = (a, p, f);
                self.v.insert(i + 1, (p, b, f));
            }
        }
    }
    /// Merge the entry `[s, e)` with same-flag neighbours touching it.
    fn coalesce(&mut self, s: usize) {
        let mut i = self.idx_at(s).unwrap();
        if i + 1 < self.v.len() && self.v[i + 1].0 == self.v[i].1 && self.v[i + 1].2 == self.v[i].2
        {
            self.v[i].1 = self.v[i + 1].1;
            self.v.remove(i + 1);
        }
        if i > 0 && self.v[i - 1].1 == self.v[i].0 && self.v[i - 1].2 == self.v[i].2 {
            self.v[i - 1].1 = self.v[i].1;
            self.v.remove(i);
            i -= 1;
        }
        let _ = i;
    }
    fn map(&mut self, s: usize, e: usize, f: u8) {
        let pos = self
            .v
            .iter()
            .position(|&(a, _, _)| a > s)
            .unwrap_or(self.v.len());
        self.v.insert(pos, (s, e, f));
        self.coalesce(s);
    }
    fn modify(&mut self, s: usize, e: usize, f: u8) {
        self.split_at(s);
        self.split_at(e);
        let i = self.idx_at(s).unwrap();
        self.v[i].2 = f;
        self.coalesce(s);
    }
    /// mprotect's loop over the VMAs of `[s, e)`.
    fn protect(&mut self, s: usize, e: usize, f: u8) {
        let mut cur = s;
        while cur < e {
            let Some(&(a, b, g)) = self.v.iter().find(|&&(_, b, _)| b > cur) else {
                break;
            };
            if a >= e {
                break;
            }
            let (ps, pe) = (cur.max(a), e.min(b));
            if g != f {
                self.modify(ps, pe, f);
            }
            cur = pe;
        }
    }
    fn unmap(&mut self, s: usize, e: usize) {
        self.split_at(s);
        self.split_at(e);
        self.v.retain(|&(a, b, _)| b <= s || a >= e);
    }
    fn gap_lowest(&self, len: usize) -> Option<usize> {
        (0..=NPAGES - len).find(|&p| self.free(p, p + len))
    }
    fn gap_highest(&self, len: usize) -> Option<usize> {
        (0..=NPAGES - len).rev().find(|&p| self.free(p, p + len))
    }
}

/// The engine side of mprotect's loop (Linux: `do_mprotect_pkey` + `mprotect_fixup`).
fn protect(g: &mut MmWriteGuard<'_>, s: usize, e: usize, nf: VmFlags) {
    let mut cur = s;
    while cur < e {
        let Some(v) = g.find_vma(cur) else { break };
        if v.start() >= e {
            break;
        }
        let (ps, pe) = (cur.max(v.start()), e.min(v.end()));
        if v.flags() != nf {
            let prev = if ps == v.start() {
                g.vma_prev_of(ps)
            } else {
                Some(v)
            };
            let r = g
                .vma_modify_flags(prev, v, ps, pe, &mut { nf })
                .expect("modify");
            assert!(r.start() <= ps && r.end() >= pe, "modify covers the piece");
            g.vma_start_write(r);
            g.vma_set_flags(r, nf).unwrap();
        }
        cur = pe;
    }
}

fn check(g: &MmWriteGuard<'_>, model: &Model, canonical: bool) -> Result<(), TestCaseError> {
    let vmas: Vec<VmaRef> = g.vmas();
    let got: Vec<(usize, usize, VmFlags)> = vmas
        .iter()
        .map(|v| (v.start(), v.end(), v.flags()))
        .collect();
    let want: Vec<(usize, usize, VmFlags)> = model
        .v
        .iter()
        .map(|&(a, b, f)| (addr(a), addr(b), flagvar(f)))
        .collect();
    prop_assert_eq!(&got, &want);
    prop_assert_eq!(g.map_count(), vmas.len());
    prop_assert_eq!(g.tree_len(), vmas.len());
    prop_assert_eq!(
        g.live_vmas(),
        vmas.len(),
        "every removed VMA was freed, no more"
    );
    for w in vmas.windows(2) {
        prop_assert!(w[0].end() <= w[1].start(), "sorted, non-overlapping");
        if canonical && w[0].end() == w[1].start() {
            prop_assert!(
                w[0].flags() != w[1].flags(),
                "mergeable neighbours left unmerged"
            );
        }
    }
    for &v in &vmas {
        prop_assert_eq!(v.refcnt(), 1, "attached exactly once");
        prop_assert_eq!(v.pgoff(), v.start() >> 12);
        prop_assert!(g.vma_lookup(v.start()).is_some_and(|x| core::ptr::eq(x, v)));
        prop_assert!(
            g.vma_lookup(v.end() - 1)
                .is_some_and(|x| core::ptr::eq(x, v))
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    #[test]
    fn random_ops_match_model(ops in proptest::collection::vec(op(), 1..40)) {
        let mm = Mm::new();
        let mut model = Model::default();
        let mut canonical = true;
        for op in ops {
            let mut g = mm.write_lock();
            match op {
                Op::Map { page, len, f } => {
                    let r = g.map_new_range(addr(page), len * PAGE_SIZE, flagvar(f), addr(page) >> 12, None);
                    if model.free(page, page + len) {
                        prop_assert_eq!(r, Ok(addr(page)));
                        model.map(page, page + len, f);
                    } else {
                        prop_assert_eq!(r, Err(mm::errno::Errno::EEXIST));
                    }
                }
                Op::Protect { page, len, f } => {
                    protect(&mut g, addr(page), addr(page + len), flagvar(f));
                    model.protect(page, page + len, f);
                }
                Op::Split { page, below } => {
                    if let Some(i) = model.idx_at(page)
                        && model.v[i].0 < page {
                            let v = g.vma_lookup(addr(page)).unwrap();
                            let new = g.split_vma(v, addr(page), below).unwrap();
                            prop_assert_eq!(new.refcnt(), 1);
                            model.split_at(page);
                            canonical = false;
                        }
                }
                Op::Unmap { page, len } => {
                    g.unmap_range(addr(page), addr(page + len)).unwrap();
                    model.unmap(page, page + len);
                }
                Op::Gap { len } => {
                    let v = g.view();
                    let lo = v.gap_bottom_up(len * PAGE_SIZE, BASE, addr(NPAGES), PAGE_SIZE);
                    let hi = v.gap_top_down(len * PAGE_SIZE, BASE, addr(NPAGES), PAGE_SIZE);
                    prop_assert_eq!(lo, model.gap_lowest(len).map(addr));
                    prop_assert_eq!(hi, model.gap_highest(len).map(addr));
                }
            }
            check(&g, &model, canonical)?;
        }
        prop_assert_eq!(vma_pool_stats().freed_attached, 0);
    }
}
