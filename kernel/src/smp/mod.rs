//! Symmetric multiprocessing: bringing every CPU up, the online mask, the idle loop of
//! application processors and work handed to them (Linux: `arch/x86/kernel/smpboot.c`,
//! `kernel/cpu.c`, `kernel/smp.c`).
//!
//! [`init`] (boot CPU) reads the CPUs from the ACPI MADT, installs the real-mode
//! trampoline ([`crate::arch::trampoline`]) and starts each application processor in
//! turn with INIT-SIPI-SIPI, waiting until it reports online before starting the next
//! (Linux's `do_boot_cpu` before parallel bring-up). Each AP gets its own kernel stack,
//! GDT, TSS and IST stack, loads the shared IDT, enables its local APIC and timer, and
//! then sits in [`ap_idle`], halting until an interrupt: it answers cross-calls
//! ([`call`]) and runs work posted with [`run_on`] (the test harness's way of running a
//! closure on chosen CPUs).
//!
//! CPU indices: 0 is the boot CPU, then the APs in MADT order; `crate::percpu` maps
//! each to its APIC id.

pub mod call;

use alloc::boxed::Box;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use x86_64::instructions::interrupts;

use crate::arch::{apic, cpu, gdt, idt, qemu, trampoline, tsc};
use crate::memory;
use crate::percpu::{self, CacheLine, MAX_CPUS, PerCpu, this_cpu};

/// Bit `n` set once CPU `n` is online (Linux: `cpu_online_mask`).
static ONLINE: AtomicU64 = AtomicU64::new(0);
/// Kernel stack of each application processor (Linux: `THREAD_SIZE` idle stacks; larger
/// here because test closures run on them).
const AP_STACK_SIZE: usize = 256 * 1024;
/// How long the boot CPU waits for one AP to come online.
const AP_BOOT_TIMEOUT_US: u64 = 2_000_000;

/// CPUs the MADT lists as usable (1 without a MADT).
static MADT_CPUS: AtomicUsize = AtomicUsize::new(1);

/// Number of usable CPUs the ACPI MADT lists.
pub fn madt_cpus() -> usize {
    MADT_CPUS.load(Ordering::Relaxed)
}

/// CPUs online now.
pub fn online_mask() -> u64 {
    ONLINE.load(Ordering::Acquire)
}

/// Number of CPUs online.
pub fn online_cpus() -> usize {
    online_mask().count_ones() as usize
}

/// Brings the machine's other CPUs up (boot CPU, after the heap and the APIC).
/// `rsdp` is the ACPI root pointer from the bootloader, if any.
pub fn init(rsdp: Option<u64>) {
    ONLINE.store(1, Ordering::Release);
    percpu::block(0).online.store(true, Ordering::Release);
    let ids = rsdp.and_then(crate::arch::acpi::cpu_apic_ids);
    let Some(ids) = ids else {
        log::info!("SMP: 1 CPU (no MADT)");
        return;
    };
    MADT_CPUS.store(ids.len(), Ordering::Relaxed);
    let bsp_apic = apic::id();
    let Some(area) = memory::trampoline_area() else {
        log::warn!("SMP: no free page below 1 MiB for the trampoline; 1 CPU");
        return;
    };
    trampoline::BSP_CR4.store(
        x86_64::registers::control::Cr4::read_raw(),
        Ordering::Relaxed,
    );
    let vector = trampoline::install(area);
    let mut cpu = 1;
    for &apic_id in ids.iter().filter(|&&id| id != bsp_apic) {
        if cpu == MAX_CPUS {
            log::warn!("SMP: more than {MAX_CPUS} CPUs; the rest stay off");
            break;
        }
        if boot_cpu(area, vector, cpu, apic_id) {
            cpu += 1;
        } else {
            log::warn!("SMP: CPU with APIC id {apic_id} did not come up");
        }
    }
    log::info!(
        "SMP: {} CPU{} online (of {} in the MADT)",
        online_cpus(),
        if online_cpus() == 1 { "" } else { "s" },
        ids.len()
    );
}

/// Starts one AP as CPU `cpu` (Linux: `do_boot_cpu` + `wakeup_secondary_cpu_via_init`:
/// INIT, 10 ms, STARTUP, 200 µs, STARTUP) and waits until it is online.
fn boot_cpu(area: x86_64::PhysAddr, vector: u8, cpu: usize, apic_id: u32) -> bool {
    let stack = Box::leak(alloc::vec![0u8; AP_STACK_SIZE].into_boxed_slice());
    let top = (stack.as_ptr() as u64 + AP_STACK_SIZE as u64) & !0xf;
    trampoline::prepare(area, top, cpu);
    percpu::block(cpu).apic_id.store(apic_id, Ordering::Relaxed);
    apic::send_init(apic_id);
    tsc::delay_us(10_000);
    let online = || percpu::block(cpu).online.load(Ordering::Acquire);
    for _ in 0..2 {
        apic::send_startup(apic_id, vector);
        tsc::delay_us(200);
        if online() {
            break;
        }
    }
    let start = tsc::rdtsc();
    while !online() {
        if tsc::cycles_to_ns(tsc::rdtsc() - start) > AP_BOOT_TIMEOUT_US * 1000 {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

/// The Rust entry of an application processor, called by the trampoline on the AP's
/// own stack with the kernel's page tables loaded (Linux: `start_secondary`).
pub extern "C" fn ap_main(cpu: usize) -> ! {
    let apic_id = percpu::block(cpu).apic_id.load(Ordering::Relaxed);
    percpu::init_cpu(cpu, apic_id);
    // SAFETY: the boot CPU's CR4 describes features this identical CPU has (QEMU gives every vCPU the same model); copying it makes paging behave the same everywhere (PGE, …).
    unsafe {
        x86_64::registers::control::Cr4::write_raw(trampoline::BSP_CR4.load(Ordering::Relaxed))
    };
    gdt::init_ap();
    idt::init();
    cpu::enable_paging_features();
    apic::init_local();
    apic::start_timer();
    ONLINE.fetch_or(1 << cpu, Ordering::AcqRel);
    percpu::block(cpu).online.store(true, Ordering::Release);
    ap_idle()
}

/// What a CPU does when it has nothing to do: run posted work, else halt until an
/// interrupt (Linux: `do_idle`). Also where an AP continues after a test panic.
pub fn ap_idle() -> ! {
    loop {
        // Outside any read-side section: a quiescent state, and this CPU's ready RCU
        // callbacks (Linux: `rcu_idle_enter` / the idle loop's `rcu_note_context_switch`).
        mm::sync::rcu::rcu_note_qs();
        interrupts::disable();
        let job = JOBS.get().load(Ordering::Acquire);
        if job.is_null() {
            // `sti; hlt` back to back: an IPI between the check and the halt still
            // wakes us (the interrupt shadow of `sti`).
            interrupts::enable_and_hlt();
            continue;
        }
        interrupts::enable();
        // SAFETY: the poster keeps the job alive until we set its state (it waits).
        let j = unsafe { &*job };
        RUNNING.get().store(job, Ordering::Release);
        JOBS.get().store(core::ptr::null_mut(), Ordering::Release);
        (j.f)();
        // The last touch of the job (it lives on the poster's stack), then the mark
        // `stop_others` waits for.
        j.state[this_cpu()].store(JOB_DONE, Ordering::Release);
        RUNNING
            .get()
            .store(core::ptr::null_mut(), Ordering::Release);
    }
}

/// Work posted to CPUs by [`run_on`].
struct Job<'a> {
    f: &'a (dyn Fn() + Sync),
    state: [AtomicU8; MAX_CPUS],
}

const JOB_IDLE: u8 = 0;
const JOB_POSTED: u8 = 1;
const JOB_DONE: u8 = 2;
const JOB_PANICKED: u8 = 3;

/// The job posted to each CPU (type-erased `Job`).
static JOBS: PerCpu<AtomicPtr<Job<'static>>> =
    PerCpu::new([const { CacheLine(AtomicPtr::new(core::ptr::null_mut())) }; MAX_CPUS]);
/// The job each CPU is running.
static RUNNING: PerCpu<AtomicPtr<Job<'static>>> =
    PerCpu::new([const { CacheLine(AtomicPtr::new(core::ptr::null_mut())) }; MAX_CPUS]);
/// Set when a CPU panicked in posted work: the others should stop
/// ([`aborted`]).
static ABORT: AtomicBool = AtomicBool::new(false);
/// Jobs in flight on application processors (the panic path waits for them).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// The first panic message of an AP in posted work.
static AP_PANIC: spin::Mutex<PanicMsg> = spin::Mutex::new(PanicMsg {
    cpu: usize::MAX,
    len: 0,
    buf: [0; 256],
});

/// A panic message kept without allocating (the heap lock may be what the panicking
/// CPU held).
#[derive(Clone, Copy)]
struct PanicMsg {
    cpu: usize,
    len: usize,
    buf: [u8; 256],
}

impl PanicMsg {
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("(message cut mid-character)")
    }
}

impl Write for PanicMsg {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// How long [`run_on`] and the panic path wait for the other CPUs to stop after a
/// panic before declaring the run dead.
const STOP_TIMEOUT_US: u64 = 10_000_000;

/// True once some CPU panicked in work posted by [`run_on`]: spin loops in test
/// closures poll it to stop early.
pub fn aborted() -> bool {
    ABORT.load(Ordering::Relaxed)
}

/// Runs `f` on every online CPU in `mask` (the caller too if in `mask`) and waits for
/// all, in ordinary (not interrupt) context with interrupts enabled. A panic on an AP
/// sets [`aborted`], waits for the other CPUs to finish and panics here with the AP's
/// message, so the test fails on the caller's CPU. Returns the CPUs it ran on.
///
/// # Panics
/// As said, and if called from an AP.
pub fn run_on(mask: u64, f: &(dyn Fn() + Sync)) -> u64 {
    assert_eq!(this_cpu(), 0, "run_on from an application processor");
    let mask = mask & online_mask();
    let job = Job {
        f,
        state: [const { AtomicU8::new(JOB_IDLE) }; MAX_CPUS],
    };
    let aps = mask & !1;
    IN_FLIGHT.fetch_add(aps.count_ones() as usize, Ordering::AcqRel);
    for cpu in call::cpus(aps) {
        job.state[cpu].store(JOB_POSTED, Ordering::Relaxed);
        let p = &job as *const Job<'_> as *mut Job<'static>;
        JOBS.on(cpu).store(p, Ordering::Release);
        apic::send_ipi(
            percpu::block(cpu).apic_id.load(Ordering::Relaxed),
            apic::RESCHEDULE_VECTOR,
        );
    }
    if mask & 1 != 0 {
        // A panic here goes to the harness, whose panic path calls `stop_others`
        // before it reuses this stack.
        f();
    }
    let panicked = wait_jobs(&job, aps);
    if panicked {
        let mut msg = AP_PANIC.lock();
        let (cpu, text) = (msg.cpu, *msg);
        msg.cpu = usize::MAX;
        drop(msg);
        panic!("CPU {cpu} panicked: {}", text.as_str());
    }
    mask
}

/// Waits until every CPU in `aps` finished `job`; true if one panicked.
fn wait_jobs(job: &Job<'_>, aps: u64) -> bool {
    let mut panicked = false;
    let start = tsc::rdtsc();
    for cpu in call::cpus(aps) {
        loop {
            match job.state[cpu].load(Ordering::Acquire) {
                JOB_DONE => break,
                JOB_PANICKED => {
                    panicked = true;
                    break;
                }
                _ => {}
            }
            call::flush_queue();
            core::hint::spin_loop();
            if tsc::cycles_to_ns(tsc::rdtsc() - start) > STOP_TIMEOUT_US * 1000 && aborted() {
                dead(cpu);
            }
        }
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
    if panicked || aborted() {
        ABORT.store(false, Ordering::SeqCst);
    }
    panicked
}

/// A CPU did not stop after a panic: the run cannot go on. Prints libtest's failure
/// summary and exits QEMU with failure.
fn dead(cpu: usize) -> ! {
    crate::serial::emergency_print(format_args!(
        "FAILED\n\nCPU {cpu} did not stop within {} s after a panic; stopping the run\n\ntest result: FAILED. (run aborted)\n",
        STOP_TIMEOUT_US / 1_000_000
    ));
    qemu::exit(qemu::ExitCode::Failed)
}

/// The boot CPU panicked in a test: tell the APs to stop and wait until the work
/// posted by [`run_on`] has finished everywhere, so the harness can reuse the stack
/// it lives on. Called by the test harness's panic handler.
pub fn stop_others() {
    if IN_FLIGHT.load(Ordering::Acquire) == 0 {
        return;
    }
    ABORT.store(true, Ordering::SeqCst);
    let start = tsc::rdtsc();
    for cpu in call::cpus(online_mask() & !1) {
        while !RUNNING.on(cpu).load(Ordering::Acquire).is_null()
            || !JOBS.on(cpu).load(Ordering::Acquire).is_null()
        {
            call::flush_queue();
            if tsc::cycles_to_ns(tsc::rdtsc() - start) > STOP_TIMEOUT_US * 1000 {
                dead(cpu);
            }
        }
    }
    IN_FLIGHT.store(0, Ordering::SeqCst);
    ABORT.store(false, Ordering::SeqCst);
}

/// The panic handler of an application processor. In posted work: records the
/// message for the poster, marks the job panicked and goes back to [`ap_idle`] (on
/// top of the same stack; locks the work held stay held, as with a should-panic test
/// on the boot CPU). Anywhere else: a kernel panic, which ends the run with failure.
pub fn on_ap_panic(info: &core::panic::PanicInfo) -> ! {
    let cpu = this_cpu();
    let job = RUNNING.get().load(Ordering::Acquire);
    if job.is_null() {
        crate::serial::emergency_print(format_args!("\nkernel panic on CPU {cpu}: {info}\n"));
        qemu::exit(qemu::ExitCode::Failed)
    }
    ABORT.store(true, Ordering::SeqCst);
    if let Some(mut slot) = AP_PANIC.try_lock()
        && slot.cpu == usize::MAX
    {
        slot.cpu = cpu;
        slot.len = 0;
        let _ = write!(slot, "{}", info.message());
        if let Some(l) = info.location() {
            let _ = write!(slot, " at {l}");
        }
    }
    // A panic inside a cross-call function never returned to clear this.
    percpu::this_block().in_call.store(0, Ordering::Relaxed);
    // Nor did the read-side sections it was in end.
    mm::sync::rcu::rcu_reset_after_panic();
    // SAFETY: the poster keeps the job alive until its state leaves POSTED.
    unsafe { (*job).state[cpu].store(JOB_PANICKED, Ordering::Release) };
    RUNNING
        .get()
        .store(core::ptr::null_mut(), Ordering::Release);
    ap_idle()
}
