#!/usr/bin/env bash
# End-to-end vsock throughput through QEMU/TCG: our `crosvm vhost-user-vsock` beside rust-vmm's
# `vhost-device-vsock` (a benchmark reference only, never a dependency), driven by the same
# Debian kernel and the same static test guest in the same run.
#
# Usage: tools/scripts/bench-vsock-qemu.sh [--mib N] [--rounds N] [--no-reference]
#   --mib N          bytes per transfer in MiB (default 64)
#   --rounds N       measurements per backend and direction (default 3; the median is reported)
#   --no-reference   measure only our backend (skips installing vhost-device-vsock)
#
# Installs what it needs: qemu-system-x86 (apt-get), the guest kernel (guest-kernel.sh), and
# vhost-device-vsock (cargo install --locked into ~/.cache/crosd/vhost-device-vsock; the first
# time this compiles it, which takes several minutes on 2 cores). Builds crosvm and the static
# guest binaries in release mode, then runs `cargo bench -p cros-e2e --bench vsock_qemu`.
set -euo pipefail

die() { echo "bench-vsock-qemu.sh: error: $*" >&2; exit 1; }
log() { echo "bench-vsock-qemu.sh: $*" >&2; }

MIB=64
ROUNDS=3
REFERENCE=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --mib) [[ $# -ge 2 ]] || die "--mib needs a value"; MIB=$2; shift 2 ;;
        --rounds) [[ $# -ge 2 ]] || die "--rounds needs a value"; ROUNDS=$2; shift 2 ;;
        --no-reference) REFERENCE=0; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
done
[[ $MIB =~ ^[1-9][0-9]*$ ]] || die "--mib must be a positive number, got '$MIB'"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive number, got '$ROUNDS'"

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
CACHE="${CROSD_CACHE:-$HOME/.cache/crosd}"

if ! command -v qemu-system-x86_64 >/dev/null; then
    log "installing qemu-system-x86"
    apt-get install -y --no-install-recommends qemu-system-x86 >&2 || die "cannot install qemu-system-x86"
fi

eval "$(tools/scripts/guest-kernel.sh)"
export CROSD_GUEST_KERNEL="$KERNEL" CROSD_GUEST_MODULES="$MODULES_DIR"

if [[ $REFERENCE == 1 ]]; then
    REF="$CACHE/vhost-device-vsock/bin/vhost-device-vsock"
    if [[ ! -x $REF ]]; then
        log "installing vhost-device-vsock (benchmark reference) into $CACHE/vhost-device-vsock; this compiles it once"
        CARGO_TARGET_DIR="$CACHE/vhost-device-vsock-target" \
            cargo install vhost-device-vsock --locked --root "$CACHE/vhost-device-vsock" >&2 \
            || die "cargo install vhost-device-vsock failed (use --no-reference to measure ours alone)"
    fi
    export CROSD_VHOST_DEVICE_VSOCK="$REF"
    log "reference: $("$REF" --version 2>/dev/null || echo vhost-device-vsock)"
fi

log "building crosvm and the static test guest (release)"
cargo build --release -p cros-tools --bin crosvm >&2
RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release -p cros-guest --bin vsock_echo --target x86_64-unknown-linux-gnu >&2

log "host: $(nproc) cpus, load $(cut -d' ' -f1-3 /proc/loadavg); qemu: $(qemu-system-x86_64 --version | head -n1)"
CROSD_BENCH_MIB=$MIB CROSD_BENCH_ROUNDS=$ROUNDS cargo bench -p cros-e2e --bench vsock_qemu
