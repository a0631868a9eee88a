//! Helpers shared by the host test files, each of which includes this module with
//! `mod common;`: address spaces over simulated memory, VMAs linked straight into an
//! `Mm`, a counting `vm_ops->close`, and pictures of an address space drawn the way
//! Linux's `tools/testing/vma` draws them in its comments.
//!
//! Every test file is its own crate, so each gets its own copy of the statics here, and
//! uses only some of the helpers (hence the `allow`).
#![allow(dead_code, unused_imports)]

use core::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use mm::frame::FrameAllocator;
use mm::frame::sim::simulated;
use mm::mmap::{AddressSpace, MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE, zero_page};
use mm::vma::{MmWriteGuard, PAGE_SIZE, VmFlags, VmOperations, VmaRef};

pub use mm::conformance::vmas;

// ---- address spaces over simulated memory --------------------------------------------

/// The page size, as the syscalls count it.
pub const P: usize = 4096;
/// `PROT_READ | PROT_WRITE`.
pub const RW: u32 = PROT_READ | PROT_WRITE;
/// `MAP_PRIVATE | MAP_ANONYMOUS`.
pub const PA: u32 = MAP_PRIVATE | MAP_ANONYMOUS;

/// Simulated physical memory for one test, with the shared zero page taken (as the
/// kernel takes it at boot), the frames in use after that (the test's baseline), and an
/// empty address space.
pub fn setup() -> (&'static FrameAllocator, u64, AddressSpace) {
    let a = simulated(32 << 20);
    zero_page(a).unwrap();
    let base = a.allocated_frames_settled();
    let asp = AddressSpace::new(a).unwrap();
    (a, base, asp)
}

/// `n` user bytes at `addr`, faulted in as user loads would.
pub fn read(asp: &AddressSpace, addr: usize, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    asp.copy_from_user(addr, &mut b).unwrap();
    b
}

/// The user byte at `addr`, faulted in as a user load would.
pub fn read_byte(asp: &AddressSpace, addr: usize) -> u8 {
    read(asp, addr, 1)[0]
}

// ---- VMAs linked straight into an `Mm` ------------------------------------------------

/// The flags of an ordinary read-write anonymous mapping.
pub const F: VmFlags = VmFlags::RW_DEFAULT;

/// A new anonymous VMA `[start, end)` at `pgoff` with flags [`F`], linked without any
/// merge (the harness's `alloc_and_link_vma()`).
pub fn link(g: &mut MmWriteGuard<'_>, start: usize, end: usize, pgoff: usize) -> VmaRef {
    g.map_anon(start, end, pgoff, F).expect("link")
}

/// `vm_ops->close` calls counted by [`count_close`].
pub static CLOSES: AtomicUsize = AtomicUsize::new(0);

/// A `vm_ops->close` hook that counts its calls in [`CLOSES`].
pub fn count_close(_: VmaRef) {
    CLOSES.fetch_add(1, Ordering::SeqCst);
}

/// `vm_ops` with only a close hook ([`count_close`]): a VMA with it may not be deleted
/// by a merge (Linux: `can_merge_remove_vma()`).
pub static CLOSE_OPS: VmOperations = VmOperations {
    open: None,
    close: Some(count_close),
    may_split: None,
    fault: None,
    name: None,
};

// ---- pictures -------------------------------------------------------------------------

/// Page numbers of the ruler, one character a page.
const RULER: &str = "0123456789abcdefghijklmnopqrstuvwxyz";

/// The VMAs of `g` over the first `width` pages, as Linux's `tools/testing/vma` draws
/// them in comments:
///
/// ```text
///    <->          a line marking `range` where it covers mapped pages
/// 0123456789abc   the ruler: page i is [i * PAGE_SIZE, (i + 1) * PAGE_SIZE)
/// AA*B   DD  CC   each page: the letter `names` gives its VMA, ' ' unmapped,
///                 '*' unmapped but in `range`, '?' a VMA `names` does not name
/// ```
///
/// The marker line is there only if `range` covers a mapped page; it spans all of
/// `range`: `-` for one page, else `<`, `-`s and `>`. Lines carry no trailing blanks.
/// `names` matches VMAs by identity: a deleted VMA's slot may be reused by the next
/// allocation, so a test that allocates again after a deletion drops the old name.
///
/// Panics if a VMA or `range` reaches past `width` pages.
pub fn draw(
    g: &MmWriteGuard<'_>,
    names: &[(char, VmaRef)],
    range: Option<Range<usize>>,
    width: usize,
) -> String {
    assert!(
        width <= RULER.len(),
        "pictures are at most {} pages",
        RULER.len()
    );
    let limit = width * PAGE_SIZE;
    let mut row = vec![' '; width];
    let mut mapped = vec![false; width];
    for v in g.vmas() {
        assert!(
            v.end() <= limit,
            "VMA [{:#x}, {:#x}) is past the picture's {width} pages",
            v.start(),
            v.end()
        );
        let name = names
            .iter()
            .find(|(_, n)| core::ptr::eq(*n, v))
            .map_or('?', |(c, _)| *c);
        for p in v.start() / PAGE_SIZE..v.end() / PAGE_SIZE {
            row[p] = name;
            mapped[p] = true;
        }
    }
    let mut marker = String::new();
    if let Some(r) = range {
        assert!(
            r.end <= limit,
            "range {r:#x?} is past the picture's {width} pages"
        );
        let pages = r.start / PAGE_SIZE..r.end.div_ceil(PAGE_SIZE);
        for p in pages.clone() {
            if !mapped[p] {
                row[p] = '*';
            }
        }
        if pages.clone().any(|p| mapped[p]) {
            marker = " ".repeat(pages.start);
            match pages.len() {
                1 => marker.push('-'),
                n => {
                    marker.push('<');
                    marker.push_str(&"-".repeat(n - 2));
                    marker.push('>');
                }
            }
            marker.push('\n');
        }
    }
    let row: String = row.into_iter().collect();
    format!("{marker}{}\n{}", &RULER[..width], row.trim_end())
}

/// Asserts that `g`'s address space is `picture`: the lines [`draw`] makes, with the
/// ruler as wide as the picture should be, written as an indented block (the ruler's
/// indentation is removed from every line; blank first and last lines are ignored):
///
/// ```ignore
/// assert_drawn(&g, &[('A', a), ('B', b)], Some(0x2000..0x3000), "
///     0123456789
///     AA*B
/// ");
/// ```
#[track_caller]
pub fn assert_drawn(
    g: &MmWriteGuard<'_>,
    names: &[(char, VmaRef)],
    range: Option<Range<usize>>,
    picture: &str,
) {
    // Linux's habit: `validate_mm()` after every operation a test draws.
    if let Err(e) = g.validate() {
        panic!("validate_mm: {e}");
    }
    let lines: Vec<&str> = picture.lines().collect();
    let first = lines.iter().position(|l| !l.trim().is_empty());
    let last = lines.iter().rposition(|l| !l.trim().is_empty());
    let lines = match (first, last) {
        (Some(f), Some(l)) => &lines[f..=l],
        _ => panic!("empty picture"),
    };
    let ruler = lines
        .iter()
        .find(|l| l.trim_start().starts_with("0123"))
        .expect("a picture has a ruler line, 0123…");
    let indent = ruler.len() - ruler.trim_start().len();
    let width = ruler.trim().len();
    assert!(
        RULER.starts_with(ruler.trim()),
        "the ruler counts pages 0123456789abc…: {ruler:?}"
    );
    let want: Vec<&str> = lines
        .iter()
        .map(|l| {
            assert!(
                l.len() <= indent || l[..indent].trim().is_empty(),
                "picture line {l:?} is indented less than the ruler"
            );
            l.get(indent..).unwrap_or("").trim_end()
        })
        .collect();
    let want = want.join("\n");
    let got = draw(g, names, range, width);
    assert!(
        got == want,
        "the address space is not the picture\nwant:\n{want}\ngot:\n{got}\n"
    );
}
