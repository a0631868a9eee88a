//! exec for an address space: a fresh space with its initial stack (arguments,
//! environment, the ELF auxiliary vector) at its final place.
//!
//! Linux: `mm/vma_exec.c` (`create_init_stack_vma`, `relocate_vma_down`), `fs/exec.c`
//! (`bprm_mm_init`, `bprm_stack_limits`, `copy_strings`, `setup_arg_pages`,
//! `exec_mmap`), `fs/binfmt_elf.c` (`create_elf_tables`).
//!
//! The order is Linux's: a one-page stack VMA at [`STACK_TOP_MAX`] flagged
//! [`VM_STACK_INCOMPLETE_SETUP`]; the file name, then the environment strings, then the
//! argument strings copied downwards from its top (the stack grows as they need, as
//! `get_arg_page` grows it); `setup_arg_pages` gives the VMA its final flags, moves it
//! down to the binary's stack top with its page tables (`relocate_vma_down`: no page
//! is copied), clears `VM_STACK_INCOMPLETE_SETUP` and grows it by up to 128 KiB within
//! the stack limit; `create_elf_tables` then writes the platform string, the
//! `AT_RANDOM` bytes, and below them `argc`, `argv[]`, `envp[]` and the auxiliary
//! vector, 16-byte aligned. The caller switches to the new space and only then drops
//! the old one (Linux: `exec_mmap` → `mmput(old_mm)`), which frees all of it.

use alloc::vec::Vec;

use x86_64::VirtAddr;

use super::{AddressSpace, MmLayout, TASK_SIZE, page_align, va};
use crate::errno::Errno;
use crate::frame::FrameAllocator;
use crate::paging::MmuGather;
use crate::vma::{MmWriteGuard, PAGE_SIZE, VmFlags, VmaMergeStruct, VmaRef};

/// Linux x86_64 `STACK_TOP_MAX` (= `TASK_SIZE_MAX`): where the temporary stack is built.
pub const STACK_TOP_MAX: usize = TASK_SIZE;
/// Linux x86_64 `STACK_TOP` for a 64-bit task (`TASK_SIZE_LOW`), before randomisation.
pub const STACK_TOP: usize = TASK_SIZE;
/// Linux: `VM_STACK_FLAGS` on x86_64 = `VM_GROWSDOWN | VM_DATA_DEFAULT_FLAGS |
/// VM_ACCOUNT`, where `VM_DATA_DEFAULT_FLAGS` = `VM_DATA_FLAGS_TSK_EXEC` without
/// `READ_IMPLIES_EXEC`: read, write, and the three `MAY*` bits.
pub const VM_STACK_FLAGS: VmFlags = VmFlags::GROWSDOWN
    .union(VmFlags::READ)
    .union(VmFlags::WRITE)
    .union(VmFlags::MAYREAD)
    .union(VmFlags::MAYWRITE)
    .union(VmFlags::MAYEXEC)
    .union(VmFlags::ACCOUNT);
/// Linux: `VM_STACK_INCOMPLETE_SETUP` (`VM_RAND_READ | VM_SEQ_READ`): the stack is still
/// being set up (rmap walkers skip it while it may move).
pub const VM_STACK_INCOMPLETE_SETUP: VmFlags = VmFlags::RAND_READ.union(VmFlags::SEQ_READ);
/// Linux: `MAX_ARG_STRLEN`, the longest argument or environment string (32 pages).
pub const MAX_ARG_STRLEN: usize = 32 * PAGE_SIZE;
/// Linux: `_STK_LIM` (8 MiB), the default stack limit `bprm_stack_limits` scales from.
const STK_LIM: usize = 8 << 20;
/// Linux: `ARG_MAX` (32 pages), the least argument space `bprm_stack_limits` allows.
const ARG_MAX: usize = 32 * PAGE_SIZE;
/// Linux: `setup_arg_pages`' `stack_expand`, 128 KiB grown below the arguments at once.
const STACK_EXPAND: usize = 128 << 10;

/// Auxiliary vector types (Linux: `include/uapi/linux/auxvec.h`,
/// `arch/x86/include/uapi/asm/auxvec.h`).
pub mod auxv {
    /// End of the vector.
    pub const AT_NULL: u64 = 0;
    /// Program headers of the program.
    pub const AT_PHDR: u64 = 3;
    /// Size of one program header.
    pub const AT_PHENT: u64 = 4;
    /// Number of program headers.
    pub const AT_PHNUM: u64 = 5;
    /// System page size.
    pub const AT_PAGESZ: u64 = 6;
    /// Interpreter base address.
    pub const AT_BASE: u64 = 7;
    /// Flags.
    pub const AT_FLAGS: u64 = 8;
    /// Entry point of the program.
    pub const AT_ENTRY: u64 = 9;
    /// Real uid.
    pub const AT_UID: u64 = 11;
    /// Effective uid.
    pub const AT_EUID: u64 = 12;
    /// Real gid.
    pub const AT_GID: u64 = 13;
    /// Effective gid.
    pub const AT_EGID: u64 = 14;
    /// String identifying the CPU (`"x86_64"`).
    pub const AT_PLATFORM: u64 = 15;
    /// CPU capabilities.
    pub const AT_HWCAP: u64 = 16;
    /// Frequency of `times()`.
    pub const AT_CLKTCK: u64 = 17;
    /// Secure mode boolean.
    pub const AT_SECURE: u64 = 23;
    /// Address of 16 random bytes.
    pub const AT_RANDOM: u64 = 25;
    /// More CPU capabilities.
    pub const AT_HWCAP2: u64 = 26;
    /// File name of the program.
    pub const AT_EXECFN: u64 = 31;
    /// Minimal signal stack size (x86 `ARCH_DLINFO`).
    pub const AT_MINSIGSTKSZ: u64 = 51;
}

/// How the program asks for its stack's execute permission (Linux: `EXSTACK_*`, from
/// `PT_GNU_STACK`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExecStack {
    /// No `PT_GNU_STACK`: the architecture's default (not executable on x86_64).
    #[default]
    Default,
    /// Executable stack requested.
    EnableX,
    /// Non-executable stack requested.
    DisableX,
}

/// The values of the auxiliary vector entries the binary loader knows (Linux: what
/// `load_elf_binary` hands `create_elf_tables`, and the credentials).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElfAux {
    /// `AT_MINSIGSTKSZ` (x86 `get_sigframe_size()`).
    pub minsigstksz: u64,
    /// `AT_HWCAP` (`ELF_HWCAP`).
    pub hwcap: u64,
    /// `AT_CLKTCK` (`CLOCKS_PER_SEC`, 100).
    pub clktck: u64,
    /// `AT_PHDR`.
    pub phdr: u64,
    /// `AT_PHENT` (`sizeof(struct elf64_phdr)`, 56).
    pub phent: u64,
    /// `AT_PHNUM`.
    pub phnum: u64,
    /// `AT_BASE` (interpreter load address, 0 without one).
    pub base: u64,
    /// `AT_FLAGS`.
    pub flags: u64,
    /// `AT_ENTRY`.
    pub entry: u64,
    /// `AT_UID`, `AT_EUID`, `AT_GID`, `AT_EGID`.
    pub ids: [u64; 4],
    /// `AT_SECURE`.
    pub secure: u64,
    /// `AT_HWCAP2` (`ELF_HWCAP2`).
    pub hwcap2: u64,
}

impl Default for ElfAux {
    fn default() -> Self {
        ElfAux {
            minsigstksz: 2048,
            hwcap: 0,
            clktck: 100,
            phdr: 0,
            phent: 56,
            phnum: 0,
            base: 0,
            flags: 0,
            entry: 0,
            ids: [0; 4],
            secure: 0,
            hwcap2: 0,
        }
    }
}

/// What exec puts on the new stack (Linux: the `linux_binprm` inputs).
#[derive(Clone, Copy, Debug)]
pub struct ExecArgs<'a> {
    /// The program's file name (`bprm->filename`, `AT_EXECFN`).
    pub filename: &'a [u8],
    /// Argument strings, without their NULs.
    pub argv: &'a [&'a [u8]],
    /// Environment strings, without their NULs.
    pub envp: &'a [&'a [u8]],
    /// The 16 bytes `AT_RANDOM` points at (Linux: `get_random_bytes`).
    pub random: [u8; 16],
    /// `ELF_PLATFORM` (`"x86_64"`), or none.
    pub platform: Option<&'a [u8]>,
    /// Where the stack ends (Linux: `randomize_stack_top(STACK_TOP)`; below
    /// [`STACK_TOP_MAX`] the stack is moved there by `relocate_vma_down`).
    pub stack_top: usize,
    /// `PT_GNU_STACK`'s request.
    pub exec_stack: ExecStack,
    /// The auxiliary vector's values.
    pub aux: ElfAux,
}

/// Where exec put things on the new stack (Linux: `mm->arg_start` … `env_end`,
/// `mm->start_stack`, and the stack pointer the task starts with).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecImage {
    /// The initial stack pointer: the address of `argc` (16-byte aligned).
    pub sp: usize,
    /// Linux: `mm->start_stack` (the argument strings' start, `bprm->p` after the move).
    pub start_stack: usize,
    /// Linux: `mm->arg_start` / `arg_end`.
    pub arg_start: usize,
    /// End of the argument strings.
    pub arg_end: usize,
    /// Linux: `mm->env_start` / `env_end`.
    pub env_start: usize,
    /// End of the environment strings.
    pub env_end: usize,
    /// The file name string (`AT_EXECFN`).
    pub execfn: usize,
    /// The 16 random bytes (`AT_RANDOM`).
    pub random: usize,
    /// The platform string (`AT_PLATFORM`), 0 if none.
    pub platform: usize,
}

/// Linux: `struct linux_binprm`'s stack fields.
struct Bprm {
    vma: VmaRef,
    /// Current top of the strings (they are pushed below it).
    p: usize,
    /// Lowest `p` the strings may reach (Linux: `bprm->argmin`).
    argmin: usize,
    /// The file name string.
    exec: usize,
}

/// Linux x86: `arch_align_stack()` without randomisation (`ADDR_NO_RANDOMIZE`).
fn arch_align_stack(sp: usize) -> usize {
    sp & !0xf
}

impl AddressSpace {
    /// A fresh address space with `args` on its initial stack, as exec builds it
    /// (Linux: `bprm_mm_init`, `copy_strings`, `setup_arg_pages`, `create_elf_tables`).
    /// The caller switches to it and then drops the old space.
    ///
    /// Errors: E2BIG (a string longer than [`MAX_ARG_STRLEN`], or more than the stack
    /// limit allows, Linux: `bprm_stack_limits`), ENOMEM, EFAULT (the stack cannot take
    /// the tables).
    pub fn exec(
        alloc: &'static FrameAllocator,
        layout: MmLayout,
        args: &ExecArgs<'_>,
    ) -> Result<(AddressSpace, ExecImage), Errno> {
        let asp = AddressSpace::with_layout(alloc, layout)?;
        let img = asp.exec_into(args)?;
        Ok((asp, img))
    }

    /// [`exec`](Self::exec) into this (fresh, empty) space: the kernel builds one with
    /// its kernel half and calls this.
    pub fn exec_into(&self, args: &ExecArgs<'_>) -> Result<ExecImage, Errno> {
        let mut bprm = self.create_init_stack_vma()?;
        self.bprm_stack_limits(&mut bprm, args)?;
        bprm.exec = self.copy_string(&mut bprm, args.filename)?;
        for s in args.envp.iter().rev() {
            self.copy_string(&mut bprm, s)?;
        }
        for s in args.argv.iter().rev() {
            self.copy_string(&mut bprm, s)?;
        }
        self.setup_arg_pages(&mut bprm, args.stack_top, args.exec_stack)?;
        self.create_elf_tables(&bprm, args)
    }

    /// The temporary stack VMA: one page below [`STACK_TOP_MAX`], flags
    /// `VM_SOFTDIRTY | VM_STACK_FLAGS | VM_STACK_INCOMPLETE_SETUP`; `p` starts one word
    /// below its end (Linux: `create_init_stack_vma`).
    fn create_init_stack_vma(&self) -> Result<Bprm, Errno> {
        let mut g = self.mm.write_lock();
        let end = STACK_TOP_MAX.min(self.layout.task_size);
        let start = end - PAGE_SIZE;
        let flags = VmFlags::SOFTDIRTY | VM_STACK_FLAGS | VM_STACK_INCOMPLETE_SETUP;
        let v = g.vm_area_alloc()?;
        let r = g
            .vma_init(
                v,
                crate::vma::VmaInit {
                    start,
                    end,
                    pgoff: 0,
                    flags,
                    file: None,
                    ops: None,
                },
            )
            .and_then(|()| g.vma_set_page_prot(v, super::vm_get_page_prot(flags)))
            .and_then(|()| g.insert_vm_struct(v));
        if let Err(e) = r {
            g.vm_area_free(v);
            return Err(e);
        }
        Ok(Bprm {
            vma: v,
            p: end - core::mem::size_of::<u64>(),
            argmin: 0,
            exec: 0,
        })
    }

    /// Linux: `bprm_stack_limits()` — the strings may take a quarter of the stack limit
    /// (at most ¾ of `_STK_LIM`, at least `ARG_MAX`) minus the pointers to them.
    fn bprm_stack_limits(&self, bprm: &mut Bprm, args: &ExecArgs<'_>) -> Result<(), Errno> {
        let mut limit = STK_LIM / 4 * 3;
        limit = limit.min(self.layout.stack_limit / 4);
        limit = limit.max(ARG_MAX);
        let ptr_size = (args.argv.len().max(1))
            .checked_add(args.envp.len())
            .and_then(|n| n.checked_mul(core::mem::size_of::<u64>()))
            .ok_or(Errno::E2BIG)?;
        if limit <= ptr_size {
            return Err(Errno::E2BIG);
        }
        limit -= ptr_size;
        bprm.argmin = bprm.p.saturating_sub(limit);
        Ok(())
    }

    /// Push `s` and its NUL below `bprm.p` (Linux: `copy_strings` for one string, the
    /// stack VMA growing down as the copy faults, as `get_arg_page` grows it).
    fn copy_string(&self, bprm: &mut Bprm, s: &[u8]) -> Result<usize, Errno> {
        let len = s.len().checked_add(1).ok_or(Errno::E2BIG)?;
        if len > MAX_ARG_STRLEN {
            return Err(Errno::E2BIG);
        }
        let pos = bprm.p.checked_sub(len).ok_or(Errno::E2BIG)?;
        if pos < bprm.argmin {
            return Err(Errno::E2BIG);
        }
        let mut buf = Vec::new();
        buf.try_reserve_exact(len).map_err(|_| Errno::ENOMEM)?;
        buf.extend_from_slice(s);
        buf.push(0);
        self.copy_to_user(pos, &buf).map_err(fault_errno)?;
        bprm.p = pos;
        Ok(pos)
    }

    /// Linux: `setup_arg_pages()` — final flags, the move to `stack_top`, the end of
    /// `VM_STACK_INCOMPLETE_SETUP`, and the first 128 KiB of growth.
    fn setup_arg_pages(
        &self,
        bprm: &mut Bprm,
        stack_top: usize,
        exec_stack: ExecStack,
    ) -> Result<(), Errno> {
        let stack_top = page_align(arch_align_stack(stack_top)).ok_or(Errno::ENOMEM)?;
        let vma = bprm.vma;
        let l = &self.layout;
        if stack_top < l.mmap_min_addr || vma.end() - vma.start() >= stack_top - l.mmap_min_addr {
            return Err(Errno::ENOMEM);
        }
        let stack_shift = vma.end().checked_sub(stack_top).ok_or(Errno::ENOMEM)?;
        bprm.p -= stack_shift;
        bprm.exec -= stack_shift;
        let mut g = self.mm.write_lock();
        let mut vm_flags = VM_STACK_FLAGS;
        match exec_stack {
            ExecStack::EnableX => vm_flags |= VmFlags::EXEC,
            ExecStack::DisableX => vm_flags -= VmFlags::EXEC,
            ExecStack::Default => {}
        }
        vm_flags |= VM_STACK_INCOMPLETE_SETUP;
        let prev = g.vma_prev_of(vma.start());
        let vma = self.mprotect_fixup(&mut g, prev, vma, vma.start(), vma.end(), vm_flags)?;
        if stack_shift != 0 {
            self.relocate_vma_down(&mut g, vma, stack_shift)?;
        }
        g.vma_start_write(vma);
        g.vma_set_flags(vma, vma.flags() - VM_STACK_INCOMPLETE_SETUP)?;
        let stack_size = vma.end() - vma.start();
        let rlim_stack = l.stack_limit & !(PAGE_SIZE - 1);
        let stack_expand = rlim_stack.min(stack_size + STACK_EXPAND);
        let stack_base = vma.end().saturating_sub(stack_expand);
        self.set_start_stack(bprm.p);
        if stack_base < vma.start() {
            self.expand_stack(&mut g, vma, stack_base)
                .map_err(|_| Errno::EFAULT)?;
        }
        Ok(())
    }

    /// Move the stack VMA down by `shift` with its page tables (Linux:
    /// `relocate_vma_down`): expand it to cover old and new range, move the page
    /// tables (the pages themselves stay where they are), free the tables the old
    /// range no longer needs, shrink the VMA to the new range. `pgoff` is kept.
    fn relocate_vma_down(
        &self,
        g: &mut MmWriteGuard<'_>,
        vma: VmaRef,
        shift: usize,
    ) -> Result<(), Errno> {
        let (old_start, old_end) = (vma.start(), vma.end());
        let length = old_end - old_start;
        let new_start = old_start.checked_sub(shift).ok_or(Errno::EFAULT)?;
        let new_end = old_end - shift;
        // Ensure there are no VMAs between where we want to go and where we are.
        if g.vma_next_from(new_start).map(|v| v as *const _) != Some(vma as *const _) {
            return Err(Errno::EFAULT);
        }
        if g.vma_prev_of(old_start)
            .is_some_and(|p| p.end() > new_start)
        {
            return Err(Errno::EFAULT);
        }
        // Linux keeps `vm_pgoff` through the move (`VMG_STATE(.., vma->vm_pgoff)`); this
        // engine holds every expansion to the file-offset rule (the pages that stay keep
        // their offsets), so the stack's `pgoff` moves down with its start instead. An
        // anonymous stack's `pgoff` is not visible to user space (maps shows 0).
        let pgoff = vma
            .pgoff()
            .checked_sub(shift / PAGE_SIZE)
            .ok_or(Errno::EFAULT)?;
        let mut vmg = VmaMergeStruct::new(new_start, old_end, pgoff, vma.flags());
        vmg.target = Some(vma);
        g.vma_expand(&mut vmg)?;
        {
            let pt = &*self.pt;
            let mut tlb = MmuGather::new(pt);
            let r = pt.move_range(
                va(old_start),
                VirtAddr::new(new_start as u64),
                length as u64,
                &mut tlb,
            );
            tlb.finish();
            // On failure Linux relies on the process cleanup too: the new space is
            // dropped by the caller.
            r.map_err(Errno::from)?;
        }
        g.vma_shrink(vma, new_start, new_end, vma.pgoff())
    }

    /// Linux: `create_elf_tables()` (the x86_64 subset: no vDSO, no rseq entries).
    fn create_elf_tables(&self, bprm: &Bprm, args: &ExecArgs<'_>) -> Result<ExecImage, Errno> {
        use auxv::*;
        let arg_start = bprm.p;
        let mut p = arch_align_stack(bprm.p);
        let mut u_platform = 0;
        if let Some(plat) = args.platform {
            let len = plat.len() + 1;
            p -= len;
            u_platform = p;
            let mut buf = Vec::new();
            buf.try_reserve_exact(len).map_err(|_| Errno::ENOMEM)?;
            buf.extend_from_slice(plat);
            buf.push(0);
            self.copy_to_user(p, &buf).map_err(|_| Errno::EFAULT)?;
        }
        p -= args.random.len();
        let u_rand = p;
        self.copy_to_user(u_rand, &args.random)
            .map_err(|_| Errno::EFAULT)?;
        let a = &args.aux;
        let mut aux: [(u64, u64); 22] = [(0, 0); 22];
        let mut n = 0;
        let mut push = |t: u64, v: u64| {
            aux[n] = (t, v);
            n += 1;
        };
        push(AT_MINSIGSTKSZ, a.minsigstksz);
        push(AT_HWCAP, a.hwcap);
        push(AT_PAGESZ, PAGE_SIZE as u64);
        push(AT_CLKTCK, a.clktck);
        push(AT_PHDR, a.phdr);
        push(AT_PHENT, a.phent);
        push(AT_PHNUM, a.phnum);
        push(AT_BASE, a.base);
        push(AT_FLAGS, a.flags);
        push(AT_ENTRY, a.entry);
        push(AT_UID, a.ids[0]);
        push(AT_EUID, a.ids[1]);
        push(AT_GID, a.ids[2]);
        push(AT_EGID, a.ids[3]);
        push(AT_SECURE, a.secure);
        push(AT_RANDOM, u_rand as u64);
        push(AT_HWCAP2, a.hwcap2);
        push(AT_EXECFN, bprm.exec as u64);
        if args.platform.is_some() {
            push(AT_PLATFORM, u_platform as u64);
        }
        push(AT_NULL, 0);
        let ei_index = 2 * n;
        let argc = args.argv.len();
        let envc = args.envp.len();
        let items = (argc + 1) + (envc + 1) + 1;
        let sp = p - ei_index * 8;
        let sp = (sp - items * 8) & !15;
        // Linux: find_extend_vma_locked(mm, bprm->p) — the tables may reach below the
        // stack VMA; grow it now.
        {
            let mut g = self.mm.write_lock();
            let v = g.find_vma(sp).ok_or(Errno::EFAULT)?;
            if v.start() > sp {
                if !v.flags().contains(VmFlags::GROWSDOWN) {
                    return Err(Errno::EFAULT);
                }
                self.expand_stack(&mut g, v, sp)
                    .map_err(|_| Errno::EFAULT)?;
            }
        }
        let mut words: Vec<u64> = Vec::new();
        words
            .try_reserve_exact(items + ei_index)
            .map_err(|_| Errno::ENOMEM)?;
        words.push(argc as u64);
        let mut s = arg_start;
        for arg in args.argv {
            words.push(s as u64);
            s += arg.len() + 1;
        }
        words.push(0);
        let arg_end = s;
        let env_start = s;
        for e in args.envp {
            words.push(s as u64);
            s += e.len() + 1;
        }
        words.push(0);
        let env_end = s;
        for &(t, v) in &aux[..n] {
            words.push(t);
            words.push(v);
        }
        let mut bytes = Vec::new();
        bytes
            .try_reserve_exact(words.len() * 8)
            .map_err(|_| Errno::ENOMEM)?;
        for w in &words {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
        self.copy_to_user(sp, &bytes).map_err(|_| Errno::EFAULT)?;
        Ok(ExecImage {
            sp,
            start_stack: arg_start,
            arg_start,
            arg_end,
            env_start,
            env_end,
            execfn: bprm.exec,
            random: u_rand,
            platform: u_platform,
        })
    }
}

/// The errno of a fault while copying the strings (Linux: `copy_strings` → EFAULT,
/// ENOMEM when the stack page cannot be had; a refused stack growth is E2BIG there).
fn fault_errno(e: super::FaultError) -> Errno {
    match e {
        super::FaultError::Oom => Errno::ENOMEM,
        super::FaultError::MapErr => Errno::E2BIG,
        _ => Errno::EFAULT,
    }
}
