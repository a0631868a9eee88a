//! The interrupt descriptor table and the CPU exception handlers.
//!
//! Every exception vector has a handler. Breakpoints log and return. Page faults
//! are decoded (CR2, error-code bits, RIP) and, for lower-half (user) addresses,
//! routed to the memory manager's fault entry; a fault it cannot resolve is a
//! segmentation fault, delivered to the faulting context: a probing access gets an
//! error value through its fix-up (see [`super::extable`]), anything else in kernel
//! mode is a kernel bug and panics. All other exceptions are fatal and panic with
//! the saved frame. The local APIC's vectors (timer, cross-call, wake-up, spurious)
//! and the masked legacy PIC's have their handlers here too.

use core::sync::atomic::{AtomicU64, Ordering};
use spin::Lazy;
use x86_64::VirtAddr;
use x86_64::registers::control::Cr2;
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame, PageFaultErrorCode};

use super::{apic, gdt};

/// Breakpoints taken so far (the breakpoint test checks it moves).
pub static BREAKPOINTS: AtomicU64 = AtomicU64::new(0);

static IDT: Lazy<InterruptDescriptorTable> = Lazy::new(|| {
    let mut idt = InterruptDescriptorTable::new();
    idt.divide_error.set_handler_fn(divide_error);
    idt.debug.set_handler_fn(debug);
    idt.non_maskable_interrupt.set_handler_fn(nmi);
    idt.breakpoint.set_handler_fn(breakpoint);
    idt.overflow.set_handler_fn(overflow);
    idt.bound_range_exceeded
        .set_handler_fn(bound_range_exceeded);
    idt.invalid_opcode.set_handler_fn(invalid_opcode);
    idt.device_not_available
        .set_handler_fn(device_not_available);
    // SAFETY: the IST slot is set up in the TSS by `gdt::init` and used by no other handler, so a double fault always lands on a fresh, valid stack.
    unsafe {
        idt.double_fault
            .set_handler_fn(double_fault)
            .set_stack_index(gdt::DOUBLE_FAULT_IST_INDEX);
    }
    idt.invalid_tss.set_handler_fn(invalid_tss);
    idt.segment_not_present.set_handler_fn(segment_not_present);
    idt.stack_segment_fault.set_handler_fn(stack_segment_fault);
    idt.general_protection_fault
        .set_handler_fn(general_protection_fault);
    idt.page_fault.set_handler_fn(page_fault);
    idt.x87_floating_point.set_handler_fn(x87_floating_point);
    idt.alignment_check.set_handler_fn(alignment_check);
    idt.machine_check.set_handler_fn(machine_check);
    idt.simd_floating_point.set_handler_fn(simd_floating_point);
    idt.virtualization.set_handler_fn(virtualization);
    idt.cp_protection_exception.set_handler_fn(cp_protection);
    idt.hv_injection_exception.set_handler_fn(hv_injection);
    idt.vmm_communication_exception
        .set_handler_fn(vmm_communication);
    idt.security_exception.set_handler_fn(security_exception);
    for v in apic::PIC_VECTOR_BASE..apic::PIC_VECTOR_BASE + 16 {
        idt[v].set_handler_fn(pic_spurious);
    }
    idt[apic::TIMER_VECTOR].set_handler_fn(apic_timer);
    idt[apic::CALL_FUNCTION_VECTOR].set_handler_fn(call_function);
    idt[apic::RESCHEDULE_VECTOR].set_handler_fn(reschedule);
    idt[apic::SPURIOUS_VECTOR].set_handler_fn(apic_spurious);
    idt
});

/// A legacy PIC line (all masked; a spurious IRQ 7/15 may still arrive). No EOI: the
/// PIC did not deliver a real interrupt.
extern "x86-interrupt" fn pic_spurious(_frame: InterruptStackFrame) {}

/// The APIC timer tick.
extern "x86-interrupt" fn apic_timer(_frame: InterruptStackFrame) {
    apic::timer_tick();
}

/// A cross-call IPI (Linux: `sysvec_call_function`).
extern "x86-interrupt" fn call_function(_frame: InterruptStackFrame) {
    crate::smp::call::call_function_interrupt();
}

/// Wakes a halted CPU to look at its work (Linux: `sysvec_reschedule_ipi`).
extern "x86-interrupt" fn reschedule(_frame: InterruptStackFrame) {
    apic::eoi();
}

/// The APIC's spurious vector: no EOI (SDM 11.9).
extern "x86-interrupt" fn apic_spurious(_frame: InterruptStackFrame) {}

/// Loads the IDT (one table shared by every CPU).
pub fn init() {
    IDT.load();
}

/// Generates a handler for a fatal exception without an error code.
macro_rules! fatal {
    ($name:ident, $what:literal) => {
        extern "x86-interrupt" fn $name(frame: InterruptStackFrame) {
            panic!("EXCEPTION: {}\n{:#?}", $what, frame);
        }
    };
}

/// Generates a handler for a fatal exception with an error code.
macro_rules! fatal_code {
    ($name:ident, $what:literal) => {
        extern "x86-interrupt" fn $name(frame: InterruptStackFrame, code: u64) {
            panic!(
                "EXCEPTION: {} (error code {:#x})\n{:#?}",
                $what, code, frame
            );
        }
    };
}

fatal!(divide_error, "DIVIDE ERROR");
fatal!(debug, "DEBUG");
fatal!(nmi, "NON-MASKABLE INTERRUPT");
fatal!(overflow, "OVERFLOW");
fatal!(bound_range_exceeded, "BOUND RANGE EXCEEDED");
fatal!(invalid_opcode, "INVALID OPCODE");
fatal!(device_not_available, "DEVICE NOT AVAILABLE");
fatal_code!(invalid_tss, "INVALID TSS");
fatal_code!(segment_not_present, "SEGMENT NOT PRESENT");
fatal_code!(stack_segment_fault, "STACK-SEGMENT FAULT");
fatal_code!(general_protection_fault, "GENERAL PROTECTION FAULT");
fatal!(x87_floating_point, "x87 FLOATING POINT");
fatal_code!(alignment_check, "ALIGNMENT CHECK");
fatal!(simd_floating_point, "SIMD FLOATING POINT");
fatal!(virtualization, "VIRTUALIZATION");
fatal_code!(cp_protection, "CONTROL PROTECTION");
fatal!(hv_injection, "HYPERVISOR INJECTION");
fatal_code!(vmm_communication, "VMM COMMUNICATION");
fatal_code!(security_exception, "SECURITY EXCEPTION");

extern "x86-interrupt" fn breakpoint(frame: InterruptStackFrame) {
    BREAKPOINTS.fetch_add(1, Ordering::Relaxed);
    log::debug!("breakpoint at {:#x}", frame.instruction_pointer.as_u64());
}

extern "x86-interrupt" fn double_fault(frame: InterruptStackFrame, code: u64) -> ! {
    panic!("EXCEPTION: DOUBLE FAULT (error code {code:#x})\n{frame:#?}");
}

extern "x86-interrupt" fn machine_check(frame: InterruptStackFrame) -> ! {
    panic!("EXCEPTION: MACHINE CHECK\n{frame:#?}");
}

/// A page fault, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageFault {
    /// The faulting linear address (CR2).
    pub addr: VirtAddr,
    /// The instruction that faulted.
    pub rip: VirtAddr,
    /// Error-code bits: present, write, user, reserved-bit, instruction fetch, ...
    pub code: PageFaultErrorCode,
}

impl PageFault {
    /// True for addresses in the lower half: user address spaces live there.
    pub fn is_user_address(&self) -> bool {
        self.addr.as_u64() < 0x0000_8000_0000_0000
    }
}

extern "x86-interrupt" fn page_fault(mut frame: InterruptStackFrame, code: PageFaultErrorCode) {
    crate::percpu::this_block()
        .page_faults
        .fetch_add(1, Ordering::Relaxed);
    let fault = PageFault {
        // CR2 holds a canonical address whenever a page fault was raised.
        addr: Cr2::read().unwrap_or(VirtAddr::zero()),
        rip: frame.instruction_pointer,
        code,
    };
    // Interrupts on while the memory manager resolves the fault, if the faulting
    // context had them on (Linux: `do_user_addr_fault` → `local_irq_enable`): the fault
    // may spin on the page-table lock of a CPU that is waiting for our answer to a TLB
    // shootdown. CR2 is read above, before an interrupt could fault and replace it.
    let irqs = frame
        .cpu_flags
        .contains(x86_64::registers::rflags::RFlags::INTERRUPT_FLAG);
    if irqs {
        x86_64::instructions::interrupts::enable();
    }
    let resolved = fault.is_user_address() && crate::fault::handle_user_fault(&fault).is_ok();
    x86_64::instructions::interrupts::disable();
    if resolved {
        // Resolved: returning restarts the faulting instruction.
        return;
    }
    // Unresolved: a segmentation fault for the faulting context. A probing access
    // gets it as an error value through its fix-up.
    if let Some(fixup) = super::extable::fixup_for(fault.rip, fault.addr, code.bits()) {
        // SAFETY: the fix-up stub belongs to the very probe function that faulted; it expects the probe's stack frame unchanged (it just returns), so resuming there is exactly a return from the probe with an error.
        unsafe { frame.as_mut().update(|f| f.instruction_pointer = fixup) };
        return;
    }
    panic!(
        "EXCEPTION: PAGE FAULT (unhandled)\n  address: {:#x}\n  rip: {:#x}\n  error: {:?}\n{:#?}",
        fault.addr.as_u64(),
        fault.rip.as_u64(),
        code,
        frame
    );
}
