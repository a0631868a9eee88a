//! The GDT and TSS: kernel code/data segments and the interrupt stacks.
//!
//! The TSS gives the double-fault handler its own stack (IST slot 0): a kernel
//! stack overflow faults on the guard page, and without a fresh stack the CPU
//! would triple-fault instead of reporting it. User segments are installed now so
//! that ring-3 processes later need no GDT change.

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

// SAFETY: the memory is only ever accessed by the CPU as a stack during an exception on the (single, for now) boot CPU; Rust code only takes its address.
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

static GDT: Lazy<(GlobalDescriptorTable, Selectors)> = Lazy::new(|| {
    let mut gdt = GlobalDescriptorTable::new();
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    gdt.append(Descriptor::user_data_segment());
    gdt.append(Descriptor::user_code_segment());
    let tss = gdt.append(Descriptor::tss_segment(&TSS));
    (gdt, Selectors { code, data, tss })
});

/// Loads the GDT, reloads the segment registers and loads the TSS.
pub fn init() {
    GDT.0.load();
    let sel = &GDT.1;
    // SAFETY: the selectors index descriptors of the GDT just loaded, which stays alive forever (static); code/data are the flat 64-bit kernel segments.
    unsafe {
        CS::set_reg(sel.code);
        DS::set_reg(sel.data);
        ES::set_reg(sel.data);
        SS::set_reg(sel.data);
        load_tss(sel.tss);
    }
}
