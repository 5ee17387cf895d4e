#!/bin/sh
# Fuzzes the vsock packet/descriptor parser and device for N seconds (default 60).
#   vmm/fuzz/run.sh [SECONDS]
# Installs cargo-fuzz if needed. cargo-fuzz needs nightly rustc flags (-Zsanitizer); on a stable
# toolchain RUSTC_BOOTSTRAP=1 enables them. Crashes land in vmm/fuzz/artifacts/vsock_packet/.
set -eu
secs="${1:-60}"
cd "$(dirname "$0")"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz..." >&2
    cargo install cargo-fuzz --locked
fi
if ! rustc --version | grep -q nightly; then
    export RUSTC_BOOTSTRAP=1
fi
mkdir -p corpus/vsock_packet
exec cargo fuzz run vsock_packet corpus/vsock_packet -- -max_total_time="$secs" -max_len=65536 -rss_limit_mb=4096
