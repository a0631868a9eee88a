#!/usr/bin/env bash
# Builds the kernel, makes a bootable disk image and runs it in QEMU; or runs
# every test. Installs what it needs first (pinned toolchain, QEMU), idempotently.
#
#   ./run-qemu.sh [options] [-- extra QEMU args]   build and boot the kernel
#   ./run-qemu.sh --test                           host tests + every in-kernel test kernel
#   ./run-qemu.sh --bench [--smp N]                boot the benchmark kernel (release)
#   ./run-qemu.sh --kernel ELF [options]           boot a given kernel ELF (cargo's runner)
#
# Options: --smp N (CPUs; default 2 for the main kernel, else $KERNEL_SMP or 1: the
#          cargo runner boots test kernels with KERNEL_SMP=N cargo ktest ...),
#          --mem SIZE (default 3G), --uefi (OVMF),
#          --gdb (wait for gdb on :1234), --timeout S (default 300), --release.
# Exit status: the kernel's (0 = success); 124 if it hung and was killed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TOOLCHAIN="$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$ROOT/rust-toolchain.toml")"

log() { printf 'run-qemu.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }

# --- set-up (idempotent, seconds when everything is present) ---------------------
need_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

ensure_toolchain() {
  command -v rustup >/dev/null || die "rustup not found: install it from your distribution or rustup.rs"
  local have
  have="$(rustup component list --toolchain "$TOOLCHAIN" --installed 2>/dev/null || true)"
  local c missing=0
  for c in rust-src llvm-tools rustfmt clippy; do grep -q "^$c" <<<"$have" || missing=1; done
  if [ "$missing" = 1 ]; then
    log "installing toolchain $TOOLCHAIN with rust-src, llvm-tools-preview, rustfmt, clippy"
    rustup toolchain install "$TOOLCHAIN" --profile minimal \
      --component rust-src --component llvm-tools-preview --component rustfmt --component clippy >&2
  fi
}

APT_UPDATED=0
apt_install() {
  if [ "$APT_UPDATED" = 0 ]; then need_root apt-get update -qq >&2; APT_UPDATED=1; fi
  log "installing $*"
  # A headless `-display none` run needs none of the recommended audio/video codecs.
  need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

ensure_qemu() {
  command -v qemu-system-x86_64 >/dev/null || apt_install qemu-system-x86
  if [ "$UEFI" = 1 ] && [ ! -f /usr/share/ovmf/OVMF.fd ]; then apt_install ovmf; fi
}

# --- arguments ---------------------------------------------------------------------
MODE=run; KERNEL=""; SMP=""; MEM=3G; UEFI=0; GDB=0; TIMEOUT=300; PROFILE=dev; EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --test) MODE=test ;;
    --bench) MODE=bench; PROFILE=release ;;
    --kernel) MODE=kernel; KERNEL="${2:?--kernel needs an ELF path}"; shift ;;
    --smp) SMP="${2:?--smp needs a number}"; shift ;;
    --mem) MEM="${2:?--mem needs a size}"; shift ;;
    --uefi) UEFI=1 ;;
    --gdb) GDB=1 ;;
    --timeout) TIMEOUT="${2:?--timeout needs seconds}"; shift ;;
    --release) PROFILE=release ;;
    --) shift; EXTRA+=("$@"); break ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) EXTRA+=("$1") ;;
  esac
  shift
done

if [ -z "$SMP" ]; then
  if [ "$MODE" = run ]; then SMP=2; else SMP="${KERNEL_SMP:-1}"; fi
fi
case "$SMP" in ''|*[!0-9]*) die "--smp needs a number, got '$SMP'" ;; esac

cd "$ROOT"
export RUSTUP_TOOLCHAIN="$TOOLCHAIN"
ensure_toolchain
ensure_qemu

BOOT_TOOL="$ROOT/target/release/boot"
build_boot_tool() { cargo build -q -p boot --release >&2; }

# --- booting one kernel ELF ----------------------------------------------------------
boot_elf() {
  local elf="$1" img
  [ -x "$BOOT_TOOL" ] || build_boot_tool
  if [ "$UEFI" = 1 ]; then img="$elf.uefi.img"; else img="$elf.bios.img"; fi
  "$BOOT_TOOL" image "$elf" "$img" $([ "$UEFI" = 1 ] && echo --uefi)

  local args=(-drive "format=raw,file=$img" -m "$MEM" -cpu max -smp "$SMP"
              -serial stdio -display none -no-reboot -monitor none
              -device isa-debug-exit,iobase=0xf4,iosize=0x04)
  if [ "$SMP" -gt 1 ]; then args+=(-accel tcg,thread=multi); else args+=(-accel tcg); fi
  [ "$UEFI" = 1 ] && args+=(-bios /usr/share/ovmf/OVMF.fd)
  if [ "$GDB" = 1 ]; then
    args+=(-s -S)
    log "waiting for gdb on localhost:1234: gdb $elf -ex 'target remote :1234'"
    TIMEOUT=0
  fi

  log "booting $(basename "$elf") with $SMP CPU$([ "$SMP" = 1 ] || echo s)$([ "$UEFI" = 1 ] && echo ' (UEFI)')"
  local status=0
  if [ "$TIMEOUT" != 0 ]; then
    timeout --foreground -k 5 "$TIMEOUT" qemu-system-x86_64 "${args[@]}" "${EXTRA[@]}" </dev/null || status=$?
  else
    qemu-system-x86_64 "${args[@]}" "${EXTRA[@]}" || status=$?
  fi
  case "$status" in
    33) return 0 ;;                                   # kernel: success
    35) log "kernel reported failure"; return 1 ;;    # kernel: failure / panic
    124|137) log "kernel hung: killed after ${TIMEOUT}s (--timeout)"; return 124 ;;
    0) log "QEMU exited without the kernel's status (triple fault and reset?)"; return 3 ;;
    *) log "QEMU exited with status $status"; return "$status" ;;
  esac
}

cargo_profile_flag() { [ "$PROFILE" = release ] && echo --release || true; }

case "$MODE" in
  kernel)
    boot_elf "$KERNEL" ;;
  run)
    cargo kbuild $(cargo_profile_flag) --bin kernel >&2
    dir=debug; [ "$PROFILE" = release ] && dir=release
    boot_elf "$ROOT/target/x86_64-target/$dir/kernel" ;;
  bench)
    cargo kbuild --release --features bench --bin bench >&2
    boot_elf "$ROOT/target/x86_64-target/release/bench" ;;
  test)
    log "habits: rustfmt, clippy (host and kernel target) and rustdoc, warnings as errors"
    cargo fmt --all -- --check
    cargo clippy -q -p mm -p boot --all-targets --all-features -- -D warnings
    cargo kclippy -q --lib --bins --tests --features bench -- -D warnings
    # The SMP test kernels are not in `--tests` (they need several CPUs, `test = false`).
    cargo kclippy -q --test smp --test mm_smp --test rcu -- -D warnings
    RUSTDOCFLAGS="-D warnings" cargo doc -q -p mm --no-deps --all-features
    log "host tests (memory-manager core)"
    cargo test --workspace --exclude kernel
    build_boot_tool
    log "in-kernel tests (each test kernel boots in QEMU, 1 CPU)"
    cargo ktest
    log "SMP: the SMP, mm-concurrency and RCU test kernels with 4 CPUs; mmap_api, demand_paging and hugetlb with 2"
    KERNEL_SMP=4 cargo ktest --test smp
    KERNEL_SMP=4 cargo ktest --test mm_smp
    KERNEL_SMP=4 cargo ktest --test rcu
    KERNEL_SMP=2 cargo ktest --test mmap_api --test demand_paging --test hugetlb
    log "harness self-check: a failing test must fail the run"
    out="$(cargo ktest --test harness_fails 2>&1)" && hf=0 || hf=$?
    echo
    echo "running 1 test"
    if [ "$hf" != 0 ] && grep -q 'test result: FAILED. 1 passed; 3 failed' <<<"$out" \
       && grep -q 'this_test_fails ... FAILED' <<<"$out" && grep -q 'this_should_panic_test_returns ... FAILED' <<<"$out" && grep -q 'this_test_leaks_a_frame ... FAILED' <<<"$out"; then
      echo "test harness_self_check::failing_test_fails_the_run ... ok"
      echo
      echo "test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s"
    else
      echo "test harness_self_check::failing_test_fails_the_run ... FAILED"
      printf '%s\n' "$out" | tail -30
      echo
      echo "test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s"
      exit 1
    fi
    log "the main kernel boots under UEFI firmware (OVMF) too, with 2 CPUs"
    cargo kbuild --bin kernel >&2
    UEFI=1; SMP=2; ensure_qemu
    echo
    echo "running 1 test"
    if boot_elf "$ROOT/target/x86_64-target/debug/kernel" >/dev/null; then
      echo "test uefi_boot::main_kernel_boots_with_2_cpus_and_exits_0 ... ok"
      echo
      echo "test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s"
    else
      echo "test uefi_boot::main_kernel_boots_with_2_cpus_and_exits_0 ... FAILED"
      echo
      echo "test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s"
      exit 1
    fi ;;
esac
