//! Per-CPU data through the GS segment base (Linux: `this_cpu_*`, `%gs:`-relative
//! per-CPU variables, `cpu_number`).
//!
//! Each CPU's `IA32_GS_BASE` points at its own [`CpuBlock`], whose first field points
//! at itself (Linux: `pcpu_hot`/`irq_stack_union` reached through `%gs`). Reading the
//! CPU id or the block is then one `mov` from `gs:[..]`, with no CPUID and no table
//! lookup on hot paths. `IA32_KERNEL_GS_BASE` is left 0: it will hold the user's GS
//! base for `swapgs` once ring 3 runs.
//!
//! A [`PerCpu<T>`] holds one `T` per possible CPU, indexed by the CPU id read from GS
//! (CPU 0 is the boot CPU; application processors are numbered in MADT order by
//! [`crate::smp`]).

use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use x86_64::VirtAddr;
use x86_64::registers::model_specific::{GsBase, KernelGsBase};

/// Most CPUs the kernel supports: the memory manager's, whose page-table CPU mask
/// (Linux: `mm_cpumask`) has one bit per CPU.
pub use mm::paging::MAX_CPUS;

/// One CPU's own data, reached through its GS base (Linux: `struct pcpu_hot` and the
/// per-CPU section). Fields another CPU may read are atomics.
#[repr(C, align(64))]
pub struct CpuBlock {
    /// The block's own address: `gs:[0]` (Linux: `this_cpu_off`).
    this: AtomicUsize,
    /// The CPU's index: `gs:[8]` (Linux: `cpu_number`).
    id: AtomicUsize,
    /// Its local-APIC id.
    pub apic_id: AtomicU32,
    /// Set once the CPU runs kernel code with its own GDT, IDT and APIC.
    pub online: AtomicBool,
    /// The extable fix-up slot: the address of the last probe fault this CPU took.
    pub fault_addr: AtomicU64,
    /// The extable fix-up slot: its page-fault error code.
    pub fault_code: AtomicU64,
    /// APIC timer ticks taken (each one also runs RCU's per-tick work,
    /// `mm::sync::rcu::rcu_sched_clock_irq`).
    pub ticks: AtomicU64,
    /// Nesting depth of cross-call handlers running on this CPU (no cross-call may be
    /// issued from inside one).
    pub in_call: AtomicU32,
    /// TLB shootdowns this CPU answered (Linux: `NR_TLB_REMOTE_FLUSH_RECEIVED`).
    pub tlb_remote_flushes: AtomicU64,
    /// Page faults on user addresses this CPU handed to the memory manager (Linux: the
    /// per-CPU `PGFAULT` vm event).
    pub user_faults: AtomicU64,
    /// Page faults this CPU took, resolved or not (see [`page_faults`]).
    pub page_faults: AtomicU64,
}

impl CpuBlock {
    const fn new() -> Self {
        Self {
            this: AtomicUsize::new(0),
            id: AtomicUsize::new(0),
            apic_id: AtomicU32::new(0),
            online: AtomicBool::new(false),
            fault_addr: AtomicU64::new(0),
            fault_code: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            in_call: AtomicU32::new(0),
            tlb_remote_flushes: AtomicU64::new(0),
            user_faults: AtomicU64::new(0),
            page_faults: AtomicU64::new(0),
        }
    }

    /// The CPU's index.
    pub fn id(&self) -> usize {
        self.id.load(Ordering::Relaxed)
    }
}

static BLOCKS: [CpuBlock; MAX_CPUS] = [const { CpuBlock::new() }; MAX_CPUS];

/// Points this CPU's GS base at block `cpu` (Linux: `load_percpu_segment` /
/// `switch_gdt_and_percpu_base`). The first thing every CPU does in Rust: nothing
/// that reads per-CPU data may run before it.
///
/// # Panics
/// If `cpu >= MAX_CPUS`.
pub fn init_cpu(cpu: usize, apic_id: u32) {
    let block = &BLOCKS[cpu];
    block
        .this
        .store(block as *const _ as usize, Ordering::Relaxed);
    block.id.store(cpu, Ordering::Relaxed);
    block.apic_id.store(apic_id, Ordering::Relaxed);
    GsBase::write(VirtAddr::from_ptr(block));
    KernelGsBase::write(VirtAddr::zero());
}

/// The calling CPU's block (`gs:[0]`, Linux: `this_cpu_ptr`).
pub fn this_block() -> &'static CpuBlock {
    let p: usize;
    // SAFETY: `init_cpu` ran on this CPU before any Rust code that reads per-CPU data, so `gs:[0]` holds the address of this CPU's static block; the load has no side effects.
    unsafe { asm!("mov {}, gs:[0]", out(reg) p, options(nostack, readonly, preserves_flags)) };
    // SAFETY: `p` is the address of an element of the static `BLOCKS` (see above).
    unsafe { &*(p as *const CpuBlock) }
}

/// Page faults taken on every CPU so far, resolved or not: the sum of the per-CPU
/// counts (each fault counts on its own CPU's line, as Linux's vm events do, so
/// faulting CPUs never write a shared counter).
pub fn page_faults() -> u64 {
    BLOCKS
        .iter()
        .map(|b| b.page_faults.load(Ordering::Relaxed))
        .sum()
}

/// CPU `cpu`'s block.
pub fn block(cpu: usize) -> &'static CpuBlock {
    &BLOCKS[cpu]
}

/// The index of the CPU we run on, always `< MAX_CPUS` (`gs:[8]`, Linux:
/// `smp_processor_id`).
pub fn this_cpu() -> usize {
    let id: usize;
    // SAFETY: as in `this_block`: `gs:[8]` is this CPU's `id` field.
    unsafe { asm!("mov {}, gs:[8]", out(reg) id, options(nostack, readonly, preserves_flags)) };
    id
}

/// One value on a cache line of its own (Linux: `____cacheline_aligned_in_smp`), so
/// that CPUs writing their own values never write each other's line.
#[repr(align(64))]
pub struct CacheLine<T>(pub T);

/// One value per CPU, each on its own cache line (Linux: `DEFINE_PER_CPU`, where each
/// CPU's copy lives in that CPU's own per-CPU area).
pub struct PerCpu<T> {
    slots: [CacheLine<T>; MAX_CPUS],
}

impl<T> PerCpu<T> {
    /// The per-CPU values, `slots[cpu].0` for CPU `cpu` (a `const` array, so that a
    /// `PerCpu` can be a `static`).
    pub const fn new(slots: [CacheLine<T>; MAX_CPUS]) -> Self {
        Self { slots }
    }

    /// This CPU's value. Values that change must be `Sync` cells (atomics, locks):
    /// another CPU may read ours (e.g. a TLB shootdown looking at `current`).
    pub fn get(&self) -> &T {
        &self.slots[this_cpu()].0
    }

    /// CPU `cpu`'s value.
    pub fn on(&self, cpu: usize) -> &T {
        &self.slots[cpu].0
    }
}
