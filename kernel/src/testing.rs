//! The in-kernel test harness (`custom_test_frameworks`), printing libtest's format.
//!
//! Every test kernel (`kernel/tests/*.rs` and the library's unit tests) runs its
//! tests with [`run_tests`]. Output is libtest's, line by line, so tools that read
//! cargo's output count the tests:
//!
//! ```text
//! running 3 tests
//! test kernel::tests::heap_box_and_vec ... ok
//! test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.12s
//! ```
//!
//! A panic inside a test is caught by the panic handler ([`on_panic`]), which
//! records the failure (or the success, for a [`ShouldPanic`] test) and continues
//! with the next test, as libtest does. After each test that returns, the memory
//! manager's usage must be back to what it was before the test: a leak fails it.
//! At the end the kernel exits QEMU with success only if every test passed.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use spin::{Mutex, Once};

use crate::arch::qemu::{self, ExitCode};
use crate::arch::tsc;
use crate::memory;
use crate::serial_println;

/// A test the harness can run.
pub trait Testable: Sync {
    /// The test's path, printed as libtest does (`crate::module::name`).
    fn name(&self) -> &'static str;
    /// Runs the test; a failure panics.
    fn run(&self);
    /// True if the test passes only by panicking (`#[should_panic]`).
    fn should_panic(&self) -> bool {
        false
    }
}

impl<T: Fn() + Sync> Testable for T {
    fn name(&self) -> &'static str {
        core::any::type_name::<T>()
    }
    fn run(&self) {
        self()
    }
}

/// A test that passes only if it panics (libtest's `#[should_panic]`).
/// Declare one with [`should_panic_test!`](crate::should_panic_test).
pub struct ShouldPanic {
    /// Full test path.
    pub name: &'static str,
    /// The body.
    pub body: fn(),
}

impl Testable for ShouldPanic {
    fn name(&self) -> &'static str {
        self.name
    }
    fn run(&self) {
        (self.body)()
    }
    fn should_panic(&self) -> bool {
        true
    }
}

/// Declares a `#[should_panic]` test: `should_panic_test!(name, { body });`.
///
/// A should-panic test must not hold locks when it panics: the harness continues
/// on the same CPU without unwinding.
#[macro_export]
macro_rules! should_panic_test {
    ($name:ident, $body:block) => {
        #[test_case]
        #[allow(non_upper_case_globals)]
        static $name: $crate::testing::ShouldPanic = $crate::testing::ShouldPanic {
            name: concat!(module_path!(), "::", stringify!($name)),
            body: || $body,
        };
    };
}

/// The boilerplate every integration test kernel (`kernel/tests/*.rs`) needs: the
/// bootloader entry point, which brings the kernel up quietly and runs the tests,
/// and the panic handler, which hands panics to the harness. Use it once per file,
/// after the `#![test_runner(kernel::testing::run_tests)]` and
/// `#![reexport_test_harness_main = "test_main"]` attributes.
#[macro_export]
macro_rules! test_kernel_main {
    () => {
        $crate::__bootloader_api::entry_point!(__test_kernel_entry, config = &$crate::BOOT_CONFIG);

        fn __test_kernel_entry(boot_info: &'static mut $crate::__bootloader_api::BootInfo) -> ! {
            $crate::init(boot_info, true);
            test_main();
            $crate::hlt_loop()
        }

        #[panic_handler]
        fn __test_kernel_panic(info: &core::panic::PanicInfo) -> ! {
            $crate::testing::on_panic(info)
        }
    };
}

type TestList = &'static [&'static dyn Testable];

static TESTS: Once<TestList> = Once::new();
/// Index of the test running now, or `usize::MAX` outside a test.
static CURRENT: AtomicUsize = AtomicUsize::new(usize::MAX);
static PASSED: AtomicUsize = AtomicUsize::new(0);
static FAILED: AtomicUsize = AtomicUsize::new(0);
static START_TSC: AtomicU64 = AtomicU64::new(0);
static IN_PANIC: AtomicBool = AtomicBool::new(false);
/// Names of the failed tests, listed again at the end as libtest does.
static FAILURES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
/// Usage before the current test, for the leak check.
static BASELINE: Mutex<Option<memory::Usage>> = Mutex::new(None);

/// The `#![test_runner]`: runs every test, prints the summary, exits QEMU.
/// Never returns.
pub fn run_tests(tests: &[&dyn Testable]) {
    // SAFETY: the generated `test_main` builds the list as a temporary in its own frame. That frame stays alive for the rest of the run: this function never returns (it ends in `qemu::exit`), and the panic handler continues the run on top of the same stack, below `test_main`'s frame. So the list outlives every use of the extended reference.
    let tests: TestList = unsafe { core::mem::transmute::<&[&dyn Testable], TestList>(tests) };
    TESTS.call_once(|| tests);
    START_TSC.store(tsc::rdtsc(), Ordering::Relaxed);
    serial_println!(
        "\nrunning {} test{}",
        tests.len(),
        if tests.len() == 1 { "" } else { "s" }
    );
    run_from(0)
}

/// Runs tests `first..` and finishes the run. Never returns: it is also the
/// continuation the panic handler jumps into after a test panics.
fn run_from(first: usize) -> ! {
    let tests = *TESTS.get().expect("run_from before run_tests");
    for (i, test) in tests.iter().enumerate().skip(first) {
        CURRENT.store(i, Ordering::SeqCst);
        crate::serial_print!("test {} ... ", test.name());
        // `usage` settles RCU first: deferred frees of earlier tests (page-table pages
        // after a grace period) are done before the baseline, this test's before the
        // check.
        *BASELINE.lock() = Some(memory::usage());
        test.run();
        if test.should_panic() {
            fail(test.name(), "note: test did not panic as expected");
        } else if let Some(leak) = leak_check() {
            fail(test.name(), &leak);
        } else {
            serial_println!("ok");
            PASSED.fetch_add(1, Ordering::SeqCst);
        }
    }
    CURRENT.store(usize::MAX, Ordering::SeqCst);
    finish()
}

/// Compares the memory manager's usage with the baseline taken before the test.
fn leak_check() -> Option<String> {
    let before = (*BASELINE.lock())?;
    let after = memory::usage();
    if after == before {
        return None;
    }
    let mut msg = String::new();
    let _ = write!(
        msg,
        "leak check: usage before the test {before:?}, after {after:?}"
    );
    Some(msg)
}

fn fail(name: &'static str, message: &str) {
    serial_println!("FAILED");
    serial_println!("\n---- {name} stdout ----\n{message}\n");
    FAILED.fetch_add(1, Ordering::SeqCst);
    FAILURES.lock().push(name);
}

fn finish() -> ! {
    let passed = PASSED.load(Ordering::SeqCst);
    let failed = FAILED.load(Ordering::SeqCst);
    let ns = tsc::cycles_to_ns(tsc::rdtsc() - START_TSC.load(Ordering::Relaxed));
    let secs = ns / 1_000_000_000;
    let centis = (ns / 10_000_000) % 100;
    if failed > 0 {
        serial_println!("\nfailures:");
        for name in FAILURES.lock().iter() {
            serial_println!("    {name}");
        }
    }
    serial_println!(
        "\ntest result: {}. {passed} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out; finished in {secs}.{centis:02}s\n",
        if failed == 0 { "ok" } else { "FAILED" },
    );
    qemu::exit(if failed == 0 {
        ExitCode::Success
    } else {
        ExitCode::Failed
    })
}

/// The panic handler of test kernels. Inside a test: records the outcome and
/// continues with the next test. Outside (boot, the runner itself): fatal.
pub fn on_panic(info: &PanicInfo) -> ! {
    if crate::percpu::this_cpu() != 0 {
        crate::smp::on_ap_panic(info)
    }
    let current = CURRENT.load(Ordering::SeqCst);
    let tests = TESTS.get();
    match tests {
        Some(tests) if current < tests.len() && !IN_PANIC.swap(true, Ordering::SeqCst) => {
            let test = tests[current];
            // The panicking code may hold the console lock forever: print around it.
            if test.should_panic() {
                crate::serial::emergency_print(format_args!("ok\n"));
                PASSED.fetch_add(1, Ordering::SeqCst);
            } else {
                crate::serial::emergency_print(format_args!(
                    "FAILED\n\n---- {} stdout ----\n{}\n\n",
                    test.name(),
                    info
                ));
                FAILED.fetch_add(1, Ordering::SeqCst);
                if let Some(mut f) = FAILURES.try_lock() {
                    f.push(test.name());
                }
            }
            // Work the test posted to other CPUs must stop before this stack is
            // reused; and the next test starts with interrupts on, as every test does.
            crate::smp::stop_others();
            // A panic inside a cross-call function never returned to clear this.
            crate::percpu::this_block()
                .in_call
                .store(0, Ordering::Relaxed);
            // Read-side sections the panic left open would hold every later grace
            // period (and the leak checks' rcu_barrier) back.
            mm::sync::rcu::rcu_reset_after_panic();
            x86_64::instructions::interrupts::enable();
            IN_PANIC.store(false, Ordering::SeqCst);
            run_from(current + 1)
        }
        _ => {
            crate::serial::emergency_print(format_args!("\nkernel panic: {info}\n"));
            qemu::exit(ExitCode::Failed)
        }
    }
}
