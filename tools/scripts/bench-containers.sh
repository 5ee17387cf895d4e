#!/usr/bin/env bash
# Whole-command timings for the containers issue's targets, side by side in one run and one VM:
#   1. `vmc container termina cN URL busybox` from a cached image to a shell prompt (then
#      `vsh --target_container cN -- true`), against doing the same by hand in the VM:
#      `lxc launch` from the same cached image + `lxc exec … true`;
#   2. `vsh --target_container c0 -- true` against `vsh --vm_name termina -- true` (p50, p90);
#   3. 10 busybox containers running at once in one termina with 2 GiB: guest memory in use.
# Usage: tools/scripts/bench-containers.sh [RUNS]   (default 3 of each create, 20 round trips)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
runs="${1:-3}"
trips=20

ensure_host_packages
work="$CROSD_CACHE/bench-containers"
state="$work/state" run="$work/run"
# A fresh stateful disk each run: containers of an earlier run would make `vmc container` a no-op.
rm -rf "$run" "$state/disks" && mkdir -p "$state" "$run"
export CROSD_SOCKET="$run/crosd.sock"
build_release_and_component "$state"
images="$CROSD_CACHE/images/busybox"
[ -f "$images/streams/v1/images.json" ] || "$BIN/crosimg" build-container busybox --out "$images" >/dev/null
exec 3< <("$BIN/crosimg" serve "$images" --listen 127.0.0.1:0 2>/dev/null)
server_pid=$!
read -r -t 20 served <&3 || die "crosimg serve did not start"
url=$(printf '%s\n' "$served" | grep -o 'http://[^ ]*' | head -n1); url="${url%/}"
start_crosd "$state" "$run"
trap '"$BIN/vmc" stop termina >/dev/null 2>&1 || true; kill "$CROSD_PID" "$server_pid" 2>/dev/null || true' EXIT
now_ms() { date +%s%3N; }
lxc() { "$BIN/vsh" --vm_name termina -- env LXD_DIR=/mnt/stateful/lxd lxc "$@"; }
p() { sort -n | awk -v q="$1" '{a[NR]=$1} END {i=int((NR-1)*q)+1; print a[i]}'; }

"$BIN/vmc" start --no-shell --mem 2048 --timeout 300 termina >/dev/null 2>&1 || die "vmc start failed"
# Warm the image cache in LXD (the first create downloads it).
"$BIN/vmc" container --no-shell --user bench termina c0 "$url" busybox >/dev/null 2>&1 || die "first vmc container failed"
fp=$(lxc image list --format csv -c f | head -n1)

ours=() byhand=()
for i in $(seq "$runs"); do
    t0=$(now_ms)
    "$BIN/vmc" container --no-shell --user bench termina "c$i" "$url" busybox >/dev/null 2>&1
    "$BIN/vsh" --vm_name termina --target_container "c$i" -- true
    ours+=($(( $(now_ms) - t0 )))
    t0=$(now_ms)
    lxc launch "$fp" "h$i" >/dev/null 2>&1
    lxc exec "h$i" -- true
    byhand+=($(( $(now_ms) - t0 )))
done

vm=() ct=()
for i in $(seq "$trips"); do
    t0=$(now_ms); "$BIN/vsh" --vm_name termina -- true; vm+=($(( $(now_ms) - t0 )))
    t0=$(now_ms); "$BIN/vsh" --vm_name termina --target_container c0 -- true; ct+=($(( $(now_ms) - t0 )))
done

# Up to 10 running busybox containers (c0..c$runs and h1..h$runs count), then memory in use.
n=$(lxc list --format csv -c s | grep -c RUNNING || true)
i=100
while [ "$n" -lt 10 ]; do
    lxc launch "$fp" "m$i" >/dev/null 2>&1 || die "launching container $n of 10 failed"
    i=$((i + 1)); n=$((n + 1))
done
running=$(lxc list --format csv -c s | grep -c RUNNING || true)
used=$("$BIN/vsh" --vm_name termina -- free -m | awk '/^Mem:/ {print $3}')

echo
echo "containers, one termina under QEMU/TCG (2 vCPUs, 2 GiB), $runs runs, $trips round trips"
printf '%-58s %s\n' "vmc container (cached busybox) + vsh -- true, ms" "${ours[*]}"
printf '%-58s %s\n' "lxc launch (same image) + lxc exec -- true, ms" "${byhand[*]}"
printf '%-58s %s / %s\n' "  median ours / by hand, ms" "$(printf '%s\n' "${ours[@]}" | p 0.5)" "$(printf '%s\n' "${byhand[@]}" | p 0.5)"
printf '%-58s %s / %s\n' "vsh --target_container c0 -- true p50 / p90, ms" "$(printf '%s\n' "${ct[@]}" | p 0.5)" "$(printf '%s\n' "${ct[@]}" | p 0.9)"
printf '%-58s %s / %s\n' "vsh --vm_name termina -- true p50 / p90, ms" "$(printf '%s\n' "${vm[@]}" | p 0.5)" "$(printf '%s\n' "${vm[@]}" | p 0.9)"
printf '%-58s %s running, %s MiB in use\n' "busybox containers at once" "$running" "$used"
