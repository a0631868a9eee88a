//! The local APIC: interrupt acknowledgement, inter-processor interrupts and the
//! per-CPU timer (Linux: `arch/x86/kernel/apic/apic.c`, `ipi.c`, `x2apic_phys.c`).
//!
//! A thin layer of our own. x2APIC (MSR access) is used when the CPU has it; otherwise
//! xAPIC through its MMIO page, which [`init_bsp`] maps uncached (PCD|PWT) into the
//! kernel half. QEMU's TCG before 8.1 has no x2APIC, OVMF and SeaBIOS leave the APIC in
//! xAPIC mode, so both paths are real.
//!
//! The legacy 8259 PICs are remapped to vectors 0x20..0x30 and masked: every
//! interrupt the kernel takes comes from a local APIC. The timer ticks at [`HZ`] on
//! every CPU in periodic mode, its rate calibrated once against the TSC
//! (Linux: `calibrate_APIC_clock`); each tick counts in the CPU's
//! `CpuBlock::ticks`, the clock RCU will read quiescent states from.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use x86_64::PhysAddr;
use x86_64::instructions::port::Port;
use x86_64::registers::model_specific::Msr;

use super::tsc;
use crate::percpu::this_block;

/// Vector of the APIC timer (Linux: `LOCAL_TIMER_VECTOR`).
pub const TIMER_VECTOR: u8 = 0xec;
/// Vector of cross-calls (Linux: `CALL_FUNCTION_VECTOR`).
pub const CALL_FUNCTION_VECTOR: u8 = 0xfc;
/// Vector that only wakes a halted CPU (Linux: `RESCHEDULE_VECTOR`).
pub const RESCHEDULE_VECTOR: u8 = 0xfd;
/// The spurious-interrupt vector (Linux: `SPURIOUS_APIC_VECTOR`).
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// First vector of the (masked) legacy PICs.
pub const PIC_VECTOR_BASE: u8 = 0x20;
/// Timer ticks per second on every CPU (Linux: `CONFIG_HZ`). 100 keeps the interrupt
/// load low under TCG emulation.
pub const HZ: u64 = 100;

const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;

// Register offsets (xAPIC MMIO; the x2APIC MSR is 0x800 + offset / 16).
const REG_ID: u32 = 0x20;
const REG_TPR: u32 = 0x80;
const REG_EOI: u32 = 0xb0;
const REG_SVR: u32 = 0xf0;
const REG_ESR: u32 = 0x280;
const REG_ICR_LOW: u32 = 0x300;
const REG_ICR_HIGH: u32 = 0x310;
const REG_LVT_TIMER: u32 = 0x320;
const REG_LVT_LINT0: u32 = 0x350;
const REG_LVT_ERROR: u32 = 0x370;
const REG_TIMER_INIT: u32 = 0x380;
const REG_TIMER_CUR: u32 = 0x390;
const REG_TIMER_DIV: u32 = 0x3e0;

const SVR_ENABLE: u32 = 1 << 8;
const LVT_MASKED: u32 = 1 << 16;
const LVT_TIMER_PERIODIC: u32 = 1 << 17;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_INIT: u32 = 0b101 << 8;
const ICR_STARTUP: u32 = 0b110 << 8;
/// Divide configuration 0b0011: the timer counts at bus clock / 16.
const TIMER_DIV_16: u32 = 0b0011;

static X2APIC: AtomicBool = AtomicBool::new(false);
/// Virtual address of the xAPIC MMIO page (0 in x2APIC mode).
static MMIO: AtomicU64 = AtomicU64::new(0);
/// Timer counts per tick at divide-by-16, measured on the boot CPU.
static TIMER_COUNT: AtomicU32 = AtomicU32::new(0);

fn read(reg: u32) -> u32 {
    if X2APIC.load(Ordering::Relaxed) {
        // SAFETY: in x2APIC mode the APIC registers are the MSRs 0x800 + reg/16; reading one has no side effect.
        unsafe { Msr::new(0x800 + (reg >> 4)).read() as u32 }
    } else {
        let base = MMIO.load(Ordering::Relaxed);
        // SAFETY: `base` is the uncached mapping of this CPU's xAPIC page made by `init_bsp` (every CPU's APIC answers at the same physical address); `reg` is a register offset inside it.
        unsafe { ((base + reg as u64) as *const u32).read_volatile() }
    }
}

fn write(reg: u32, value: u32) {
    if X2APIC.load(Ordering::Relaxed) {
        // SAFETY: as in `read`; the callers write values the register's definition allows.
        unsafe { Msr::new(0x800 + (reg >> 4)).write(value as u64) }
    } else {
        let base = MMIO.load(Ordering::Relaxed);
        // SAFETY: as in `read`.
        unsafe { ((base + reg as u64) as *mut u32).write_volatile(value) }
    }
}

/// Remaps the legacy PICs away from the exception vectors and masks every line
/// (Linux: `legacy_pic->init(0)` + `mask_8259A`).
fn disable_pic() {
    let mut m_cmd: Port<u8> = Port::new(0x20);
    let mut m_data: Port<u8> = Port::new(0x21);
    let mut s_cmd: Port<u8> = Port::new(0xa0);
    let mut s_data: Port<u8> = Port::new(0xa1);
    // SAFETY: ports 0x20/0x21/0xa0/0xa1 are the two 8259s, used by nobody else; the ICW sequence reprograms them to vectors 0x20..0x30 and the final writes mask every line.
    unsafe {
        m_cmd.write(0x11);
        s_cmd.write(0x11);
        m_data.write(PIC_VECTOR_BASE);
        s_data.write(PIC_VECTOR_BASE + 8);
        m_data.write(4);
        s_data.write(2);
        m_data.write(1);
        s_data.write(1);
        m_data.write(0xff);
        s_data.write(0xff);
    }
}

/// True if the CPU implements x2APIC (CPUID.1:ECX[21]).
fn has_x2apic() -> bool {
    core::arch::x86_64::__cpuid(1).ecx & (1 << 21) != 0
}

/// Sets the APIC up on the boot CPU: the PICs masked, x2APIC or the xAPIC page mapped
/// uncached, the local APIC enabled, the timer calibrated against the TSC and started.
/// Needs the frame allocator (for the MMIO page table).
pub fn init_bsp() {
    disable_pic();
    if has_x2apic() {
        X2APIC.store(true, Ordering::Relaxed);
    } else {
        // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU; reading it has no side effects.
        let base = unsafe { Msr::new(IA32_APIC_BASE).read() } & 0x000f_ffff_ffff_f000;
        let va = super::mmu::map_mmio(PhysAddr::new(base));
        MMIO.store(va.as_u64(), Ordering::Relaxed);
    }
    init_local();
    calibrate_timer();
    start_timer();
}

/// Enables this CPU's local APIC (x2APIC mode if chosen): software-enabled with the
/// spurious vector, priority 0, LINT0 masked (the PIC's ExtINT line), errors cleared.
/// Every CPU runs it; application processors then call [`start_timer`].
pub fn init_local() {
    let mut msr = Msr::new(IA32_APIC_BASE);
    // SAFETY: setting the global-enable bit (and the x2APIC bit when the CPU has it, chosen by the boot CPU for all) keeps the APIC at its address; no other bit changes.
    unsafe {
        let v = msr.read();
        let mut want = v | APIC_BASE_ENABLE;
        if X2APIC.load(Ordering::Relaxed) {
            want |= APIC_BASE_X2APIC;
        }
        if want != v {
            msr.write(want);
        }
    }
    write(REG_TPR, 0);
    write(REG_LVT_LINT0, LVT_MASKED);
    write(REG_LVT_ERROR, LVT_MASKED);
    write(REG_ESR, 0);
    write(REG_ESR, 0);
    write(REG_SVR, SVR_ENABLE | SPURIOUS_VECTOR as u32);
    eoi();
}

/// Measures the APIC timer against the TSC over 10 ms (Linux: `calibrate_APIC_clock`).
fn calibrate_timer() {
    const MEASURE_MS: u64 = 10;
    write(REG_TIMER_DIV, TIMER_DIV_16);
    write(REG_LVT_TIMER, LVT_MASKED | TIMER_VECTOR as u32);
    write(REG_TIMER_INIT, u32::MAX);
    tsc::delay_us(MEASURE_MS * 1000);
    let elapsed = u32::MAX - read(REG_TIMER_CUR);
    write(REG_TIMER_INIT, 0);
    let per_sec = elapsed as u64 * (1000 / MEASURE_MS);
    let count = (per_sec / HZ).clamp(1, u32::MAX as u64) as u32;
    TIMER_COUNT.store(count, Ordering::Relaxed);
    log::info!(
        "APIC: {} mode, timer {} kHz (/16), {HZ} Hz tick = {count} counts",
        if X2APIC.load(Ordering::Relaxed) {
            "x2APIC"
        } else {
            "xAPIC"
        },
        per_sec / 1000
    );
}

/// Starts this CPU's timer: periodic, [`HZ`] ticks per second.
pub fn start_timer() {
    write(REG_TIMER_DIV, TIMER_DIV_16);
    write(REG_LVT_TIMER, LVT_TIMER_PERIODIC | TIMER_VECTOR as u32);
    write(REG_TIMER_INIT, TIMER_COUNT.load(Ordering::Relaxed));
}

/// The timer interrupt's work: count the tick, then RCU's per-tick work (Linux:
/// `local_apic_timer_interrupt` → `tick_handle_periodic` → `update_process_times` →
/// `rcu_sched_clock_irq`): a quiescent state if the tick interrupted this CPU outside
/// any read-side section, grace-period progress, and this CPU's ready callbacks.
pub fn timer_tick() {
    this_block().ticks.fetch_add(1, Ordering::Relaxed);
    eoi();
    mm::sync::rcu::rcu_sched_clock_irq();
}

/// Signals end of interrupt to this CPU's APIC.
pub fn eoi() {
    write(REG_EOI, 0);
}

/// This CPU's APIC id, read from the APIC (bring-up only; later from the per-CPU
/// block).
pub fn id() -> u32 {
    let v = read(REG_ID);
    if X2APIC.load(Ordering::Relaxed) {
        v
    } else {
        v >> 24
    }
}

/// Writes the interrupt command register and waits until the APIC accepted it.
fn send(dest: u32, low: u32) {
    if X2APIC.load(Ordering::Relaxed) {
        // SAFETY: the x2APIC ICR (MSR 0x830) takes the destination in the high half and the command in the low half; writing it sends the IPI.
        unsafe { Msr::new(0x830).write(((dest as u64) << 32) | low as u64) };
    } else {
        // Two writes that must not be split by another IPI sent from this CPU (an
        // interrupt handler sending one between them would change the destination).
        x86_64::instructions::interrupts::without_interrupts(|| {
            write(REG_ICR_HIGH, dest << 24);
            write(REG_ICR_LOW, low);
            while read(REG_ICR_LOW) & ICR_DELIVERY_PENDING != 0 {
                core::hint::spin_loop();
            }
        });
    }
}

/// Sends a fixed interrupt with `vector` to the CPU whose APIC id is `apic_id`
/// (Linux: `__default_send_IPI_dest_field`).
pub fn send_ipi(apic_id: u32, vector: u8) {
    send(apic_id, ICR_LEVEL_ASSERT | vector as u32);
}

/// Sends INIT to `apic_id` (Linux: `wakeup_secondary_cpu_via_init`, first step).
pub fn send_init(apic_id: u32) {
    send(apic_id, ICR_INIT | ICR_LEVEL_ASSERT);
}

/// Sends a STARTUP IPI: the CPU starts in real mode at `page * 4096`.
pub fn send_startup(apic_id: u32, page: u8) {
    send(apic_id, ICR_STARTUP | ICR_LEVEL_ASSERT | page as u32);
}
