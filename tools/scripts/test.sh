#!/usr/bin/env bash
# Runs the whole crosd test suite on a fresh Debian machine: installs what it needs, checks
# formatting and lints, builds, fetches the guest kernel, runs every test, then fuzzes every
# fuzz target for 30 s (tools/scripts/fuzz.sh).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

ensure_host_packages

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --quiet --workspace --all-targets -- -D warnings

log "fetching the guest kernel"
eval "$(tools/scripts/guest-kernel.sh)"
export CROSD_GUEST_KERNEL="${KERNEL:?guest-kernel.sh printed no KERNEL}" CROSD_GUEST_MODULES="${MODULES_DIR:?}"

build_guest_binaries
log "building host binaries"
cargo build --quiet --workspace --bins

log "running tests"
# Tests that cannot run on this host (e.g. a Linux boot on our own VMM without hardware KVM)
# say why in this file; it is printed after the suite so they are never taken for passes.
not_run="$REPO_ROOT/target/debug/e2e/not-run.txt"
rm -f "$not_run"
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee "${CROSD_TEST_LOG:-/tmp/crosd-test.log}" || status=$?
if [[ -s "$not_run" ]]; then
    log "tests that did not run on this host, and why:"
    cat "$not_run" >&2
fi

# Fuzz smoke run: every target from its seeds and cached corpus, a crash fails the suite
# (without hiding a test failure's status). CROSD_FUZZ_SECONDS=0 skips it.
fuzz_secs="${CROSD_FUZZ_SECONDS:-30}"
if [[ "$fuzz_secs" != 0 ]]; then
    log "fuzz smoke run ($fuzz_secs s a target)"
    tools/scripts/fuzz.sh "$fuzz_secs" || { [[ $status -ne 0 ]] || status=1; }
fi
exit "$status"
