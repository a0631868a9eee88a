//! The GDT and TSS: kernel code/data segments and the interrupt stacks.
//!
//! The TSS gives the double-fault handler its own stack (IST slot 0): a kernel
//! stack overflow faults on the guard page, and without a fresh stack the CPU
//! would triple-fault instead of reporting it. User segments are installed now so
//! that ring-3 processes later need no GDT change.
//!
//! Every CPU has its own GDT, TSS and double-fault stack (Linux: the per-CPU
//! `gdt_page` and `cpu_tss_rw`): the boot CPU's are statics, each application
//! processor's are allocated when it starts ([`init_ap`]) and live forever.

use spin::Lazy;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

/// IST slot used by the double-fault handler.
pub const DOUBLE_FAULT_IST_INDEX: u16 = 0;
const IST_STACK_SIZE: usize = 32 * 1024;

/// A stack for one IST slot. Aligned so the CPU's 16-byte alignment holds.
#[repr(C, align(16))]
struct IstStack([u8; IST_STACK_SIZE]);

// The CPU writes to these stacks and Rust code only takes their address, so they
// live in an `UnsafeCell`.
static DOUBLE_FAULT_STACK: IstStackCell = IstStackCell::new();

/// Interior-mutable stack storage: the CPU is the only writer.
struct IstStackCell(core::cell::UnsafeCell<IstStack>);

// SAFETY: the memory is only ever accessed by the boot CPU as a stack during a double fault; Rust code only takes its address.
unsafe impl Sync for IstStackCell {}

impl IstStackCell {
    const fn new() -> Self {
        Self(core::cell::UnsafeCell::new(IstStack([0; IST_STACK_SIZE])))
    }

    /// The initial stack pointer: the top of the stack (stacks grow down).
    fn top(&self) -> VirtAddr {
        VirtAddr::from_ptr(self.0.get()) + IST_STACK_SIZE as u64
    }
}

static TSS: Lazy<TaskStateSegment> = Lazy::new(|| {
    let mut tss = TaskStateSegment::new();
    tss.interrupt_stack_table[DOUBLE_FAULT_IST_INDEX as usize] = DOUBLE_FAULT_STACK.top();
    tss
});

struct Selectors {
    code: SegmentSelector,
    data: SegmentSelector,
    tss: SegmentSelector,
}

static GDT: Lazy<(GlobalDescriptorTable, Selectors)> = Lazy::new(|| build(&TSS));

/// Loads the boot CPU's GDT, reloads the segment registers and loads the TSS.
pub fn init() {
    load(&GDT);
}

/// Gives an application processor its own TSS (with a fresh double-fault stack) and
/// GDT, and loads them (Linux: `cpu_init` → `load_direct_gdt`, `load_TR_desc`).
pub fn init_ap() {
    let stack = alloc::boxed::Box::leak(alloc::vec![0u8; IST_STACK_SIZE].into_boxed_slice());
    let top = VirtAddr::from_ptr(stack.as_ptr()) + IST_STACK_SIZE as u64;
    let mut tss = TaskStateSegment::new();
    tss.interrupt_stack_table[DOUBLE_FAULT_IST_INDEX as usize] = top.align_down(16u64);
    let tss: &'static TaskStateSegment = alloc::boxed::Box::leak(alloc::boxed::Box::new(tss));
    let gdt = alloc::boxed::Box::leak(alloc::boxed::Box::new(build(tss)));
    load(gdt);
}

fn build(tss: &'static TaskStateSegment) -> (GlobalDescriptorTable, Selectors) {
    let mut gdt = GlobalDescriptorTable::new();
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    gdt.append(Descriptor::user_data_segment());
    gdt.append(Descriptor::user_code_segment());
    let tss = gdt.append(Descriptor::tss_segment(tss));
    (gdt, Selectors { code, data, tss })
}

fn load(gdt: &'static (GlobalDescriptorTable, Selectors)) {
    gdt.0.load();
    let sel = &gdt.1;
    // SAFETY: the selectors index descriptors of the GDT just loaded, which stays alive forever (static or leaked); the TSS descriptor is this CPU's own, never loaded by another CPU (loading marks it busy); code/data are the flat 64-bit kernel segments.
    unsafe {
        CS::set_reg(sel.code);
        DS::set_reg(sel.data);
        ES::set_reg(sel.data);
        SS::set_reg(sel.data);
        load_tss(sel.tss);
    }
}
