//! exec's initial stack on the host (`AddressSpace::exec`, Linux `mm/vma_exec.c`,
//! `fs/exec.c` `setup_arg_pages`, `fs/binfmt_elf.c` `create_elf_tables`): the words at
//! the stack pointer against a layout computed here independently, the strings, the
//! final VMA, `relocate_vma_down` keeping the contents with its page tables moved, and
//! every frame back once the space is dropped.

mod common;

use common::{P, setup};
use mm::errno::Errno;
use mm::mmap::auxv::*;
use mm::mmap::*;
use mm::vma::VmFlags;

fn read_u64(asp: &AddressSpace, at: usize) -> u64 {
    let mut b = [0u8; 8];
    asp.copy_from_user(at, &mut b).unwrap();
    u64::from_le_bytes(b)
}

fn read_cstr(asp: &AddressSpace, at: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut b = [0u8];
        asp.copy_from_user(at + out.len(), &mut b).unwrap();
        if b[0] == 0 {
            return out;
        }
        out.push(b[0]);
    }
}

/// The layout Linux produces, computed from the rules alone: strings pushed down from
/// one word below `STACK_TOP_MAX` (file name, environment last to first, arguments
/// last to first), everything shifted to the final stack top, then the platform
/// string, 16 random bytes, and `argc`/`argv`/`envp`/auxv 16-byte aligned below.
fn expected(args: &ExecArgs<'_>) -> (usize, Vec<u64>) {
    let shift = STACK_TOP_MAX - (args.stack_top & !0xf).next_multiple_of(P);
    let mut p = STACK_TOP_MAX - 8;
    p -= args.filename.len() + 1;
    let execfn = p - shift;
    for e in args.envp.iter().rev() {
        p -= e.len() + 1;
    }
    for a in args.argv.iter().rev() {
        p -= a.len() + 1;
    }
    let arg_start = p - shift;
    let mut q = arg_start & !0xf;
    q -= args.platform.map_or(0, |s| s.len() + 1);
    let platform = q;
    q -= 16;
    let random = q;
    let a = &args.aux;
    let mut aux = vec![
        (AT_MINSIGSTKSZ, a.minsigstksz),
        (AT_HWCAP, a.hwcap),
        (AT_PAGESZ, 4096),
        (AT_CLKTCK, a.clktck),
        (AT_PHDR, a.phdr),
        (AT_PHENT, a.phent),
        (AT_PHNUM, a.phnum),
        (AT_BASE, a.base),
        (AT_FLAGS, a.flags),
        (AT_ENTRY, a.entry),
        (AT_UID, a.ids[0]),
        (AT_EUID, a.ids[1]),
        (AT_GID, a.ids[2]),
        (AT_EGID, a.ids[3]),
        (AT_SECURE, a.secure),
        (AT_RANDOM, random as u64),
        (AT_HWCAP2, a.hwcap2),
        (AT_EXECFN, execfn as u64),
    ];
    if args.platform.is_some() {
        aux.push((AT_PLATFORM, platform as u64));
    }
    aux.push((AT_NULL, 0));
    let items = args.argv.len() + 1 + args.envp.len() + 1 + 1;
    let sp = (q - 2 * aux.len() * 8 - items * 8) & !15;
    let mut w = vec![args.argv.len() as u64];
    let mut s = arg_start;
    for x in args.argv {
        w.push(s as u64);
        s += x.len() + 1;
    }
    w.push(0);
    for x in args.envp {
        w.push(s as u64);
        s += x.len() + 1;
    }
    w.push(0);
    for (t, v) in aux {
        w.push(t);
        w.push(v);
    }
    (sp, w)
}

fn args<'a>(argv: &'a [&'a [u8]], envp: &'a [&'a [u8]], stack_top: usize) -> ExecArgs<'a> {
    ExecArgs {
        filename: b"/bin/true",
        argv,
        envp,
        random: *b"0123456789abcdef",
        platform: Some(b"x86_64"),
        stack_top,
        exec_stack: ExecStack::Default,
        aux: ElfAux {
            entry: 0x40_1000,
            phdr: 0x40_0040,
            phnum: 9,
            ..ElfAux::default()
        },
    }
}

fn check(asp: &AddressSpace, img: &ExecImage, a: &ExecArgs<'_>) {
    asp.validate_mm().unwrap();
    let (sp, words) = expected(a);
    assert_eq!(img.sp, sp, "stack pointer");
    assert_eq!(sp % 16, 0, "16-byte aligned");
    for (i, w) in words.iter().enumerate() {
        assert_eq!(
            read_u64(asp, sp + 8 * i),
            *w,
            "word {i} at the stack pointer"
        );
    }
    for (i, s) in a.argv.iter().enumerate() {
        assert_eq!(&read_cstr(asp, read_u64(asp, sp + 8 + 8 * i) as usize), s);
    }
    for (i, s) in a.envp.iter().enumerate() {
        let at = sp + 8 * (a.argv.len() + 2 + i);
        assert_eq!(&read_cstr(asp, read_u64(asp, at) as usize), s);
    }
    assert_eq!(read_cstr(asp, img.execfn), a.filename);
    assert_eq!(read_cstr(asp, img.platform), b"x86_64");
    let mut r = [0u8; 16];
    asp.copy_from_user(img.random, &mut r).unwrap();
    assert_eq!(r, a.random);
    let q = asp.query_vma(sp, 0).expect("the stack VMA");
    assert!(
        q.vm_flags
            .contains(VmFlags::GROWSDOWN | VmFlags::READ | VmFlags::WRITE)
    );
    assert!(
        !q.vm_flags.intersects(VM_STACK_INCOMPLETE_SETUP),
        "setup complete"
    );
    assert!(!q.vm_flags.contains(VmFlags::EXEC));
    let top = (a.stack_top & !0xf).next_multiple_of(P);
    assert_eq!(q.end, top, "the stack ends at its final top");
    assert!(q.end - q.start >= 128 << 10, "grown by setup_arg_pages");
    assert_eq!(asp.map_count(), 1);
}

#[test]
fn stack_layout_matches_linux_without_a_move() {
    let (a, base, _unused) = setup();
    drop(_unused);
    let argv: [&[u8]; 3] = [b"/bin/true", b"-v", b"hello world"];
    let envp: [&[u8]; 2] = [b"HOME=/root", b"PATH=/bin:/usr/bin"];
    let ea = args(&argv, &envp, STACK_TOP);
    let (asp, img) = AddressSpace::exec(a, MmLayout::default(), &ea).unwrap();
    check(&asp, &img, &ea);
    drop(asp);
    assert_eq!(a.allocated_frames_settled(), base, "every frame back");
}

#[test]
fn relocate_vma_down_moves_the_pages_with_their_tables() {
    let (a, base, _unused) = setup();
    drop(_unused);
    // Strings over three pages, and a stack top 1 GiB + 36 KiB (odd bits) below the
    // temporary one: the move crosses page-table boundaries.
    let big = vec![b'a'; 3000];
    let big2 = vec![b'b'; 5000];
    let argv: [&[u8]; 3] = [b"prog", &big, &big2];
    let envp: [&[u8]; 1] = [b"X=1"];
    let top = STACK_TOP_MAX - (1 << 30) - 9 * P - 5;
    let ea = args(&argv, &envp, top);
    let (asp, img) = AddressSpace::exec(a, MmLayout::default(), &ea).unwrap();
    check(&asp, &img, &ea);
    // Nothing left at the temporary place: no leaf, and no page table either.
    assert!(asp.translate(STACK_TOP_MAX - P).is_none());
    asp.with_page_tables(|pt| {
        assert!(pt.first_empty_table().is_none(), "no empty table left");
        assert!(pt.leaves().all(|l| (l.va as usize) < img.sp + (64 << 10)));
    });
    drop(asp);
    assert_eq!(
        a.allocated_frames_settled(),
        base,
        "every frame back, none freed twice"
    );
}

#[test]
fn exec_refuses_oversized_arguments_with_e2big() {
    let (a, base, _unused) = setup();
    drop(_unused);
    let huge = vec![b'x'; MAX_ARG_STRLEN];
    let argv: [&[u8]; 1] = [&huge];
    let ea = args(&argv, &[], STACK_TOP);
    assert_eq!(
        AddressSpace::exec(a, MmLayout::default(), &ea).err(),
        Some(Errno::E2BIG)
    );
    // More than a quarter of a small stack limit (at least ARG_MAX, 128 KiB).
    let layout = MmLayout {
        stack_limit: 256 << 10,
        ..MmLayout::default()
    };
    let s = vec![b'y'; 40 << 10];
    let argv: [&[u8]; 4] = [&s, &s, &s, &s];
    let ea = args(&argv, &[], STACK_TOP);
    assert_eq!(AddressSpace::exec(a, layout, &ea).err(), Some(Errno::E2BIG));
    let argv: [&[u8]; 3] = [&s, &s, &s];
    let ea = args(&argv, &[], STACK_TOP);
    assert!(AddressSpace::exec(a, layout, &ea).is_ok(), "within ARG_MAX");
    assert_eq!(a.allocated_frames_settled(), base);
}

#[test]
fn exec_stack_request_sets_vm_exec() {
    let (a, _base, _unused) = setup();
    let mut ea = args(&[b"p"], &[], STACK_TOP);
    ea.exec_stack = ExecStack::EnableX;
    let (asp, img) = AddressSpace::exec(a, MmLayout::default(), &ea).unwrap();
    assert!(
        asp.query_vma(img.sp, 0)
            .unwrap()
            .vm_flags
            .contains(VmFlags::EXEC)
    );
}
