#!/usr/bin/env bash
# VM ↔ host TCP throughput through virtio-net under QEMU/TCG: our `crosvm vhost-user-net`
# backend against QEMU's own virtio-net with a tap (vhost=off), two cards of the same guest,
# measured alternately in the same run (tests/benches/net_qemu.rs: busybox nc in the guest,
# std TCP on the host, inside a network namespace the benchmark makes; the median of the
# rounds is reported).
#
# Usage: tools/scripts/bench-net-qemu.sh [--mib N] [--rounds N]
#   --mib N      MiB sent each way per round (default 32)
#   --rounds N   rounds per card (default 3)
#
# Needs root (the network namespace), qemu-system-x86_64 and busybox-static. Builds crosvm in
# release mode; fetches the guest kernel with the virtio_net module (guest-kernel.sh --modules).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

MIB=32
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
[[ $(id -u) -eq 0 ]] || die "run as root: the benchmark makes its own network namespace"

tools/scripts/guest-kernel.sh --quiet --modules "virtio_mmio virtio_net" >/dev/null

log "building crosvm (release)"
cargo build --quiet --release -p cros-tools --bin crosvm

log "host: $(nproc) cpus, load $(cut -d' ' -f1-3 /proc/loadavg); qemu: $(qemu-system-x86_64 --version | head -n1)"
MIB=$MIB ROUNDS=$ROUNDS cargo bench --quiet -p cros-e2e --bench net_qemu
