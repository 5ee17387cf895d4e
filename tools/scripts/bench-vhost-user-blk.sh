#!/usr/bin/env bash
# Sequential read throughput from a QEMU/TCG guest: our `crosvm vhost-user-blk` backend against
# QEMU's own virtio-blk on the same image file, both attached read-only to the same VM and read
# alternately in the same run (tests/benches/blk_qemu.rs: `dd if=/dev/vdX of=/dev/null bs=1M`
# through vsh, guest page cache dropped before each read; the median of the rounds is reported).
#
# Usage: tools/scripts/bench-vhost-user-blk.sh [--mib N] [--rounds N]
#   --mib N      image size in MiB (default 128)
#   --rounds N   reads per backend (default 3)
#
# Builds crosvm, vsh and the static vshd in release mode; fetches the guest kernel with the
# virtio_blk module (guest-kernel.sh --modules).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

MIB=128
ROUNDS=3
while [[ $# -gt 0 ]]; do
    case "$1" in
        --mib) [[ $# -ge 2 ]] || die "--mib needs a value"; MIB=$2; shift 2 ;;
        --rounds) [[ $# -ge 2 ]] || die "--rounds needs a value"; ROUNDS=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
done
[[ $MIB =~ ^[1-9][0-9]*$ ]] || die "--mib must be a positive number, got '$MIB'"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive number, got '$ROUNDS'"

# The bench guest loads its drivers as modules: vsock for vsh, virtio_blk for the disks.
eval "$(tools/scripts/guest-kernel.sh --quiet --modules "virtio_mmio vmw_vsock_virtio_transport virtio_blk")"
export CROSD_GUEST_KERNEL="$KERNEL" CROSD_GUEST_MODULES="$MODULES_DIR"

log "building crosvm, vsh and the static vshd (release)"
cargo build --quiet --release -p cros-tools --bin crosvm --bin vsh
RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --quiet --release -p cros-guest --bin vshd --target x86_64-unknown-linux-gnu

log "host: $(nproc) cpus, load $(cut -d' ' -f1-3 /proc/loadavg); qemu: $(qemu-system-x86_64 --version | head -n1)"
MIB=$MIB ROUNDS=$ROUNDS cargo bench --quiet -p cros-e2e --bench blk_qemu
