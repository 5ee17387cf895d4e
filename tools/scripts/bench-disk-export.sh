#!/usr/bin/env bash
# Disk export/import throughput (issue 6's target), printed as a table:
#   a 4 GiB sparse disk holding 200 MiB of data (100 MiB random, 100 MiB text) is exported with
#   `vmc export` and imported back with `vmc import` through a release crosd, and the same disk
#   file is compressed with `zstd -1` and decompressed with `zstd -d` in the same run.
#   Throughput is disk bytes (4 GiB) per second; sizes are the export files'.
# Usage: tools/scripts/bench-disk-export.sh [RUNS]   (default 3; the best run of each is shown)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
runs="${1:-3}"

command -v zstd >/dev/null || ensure_host_packages
log "building crosd and vmc (release)"
cargo build --quiet --release -p cros-tools --bin crosd --bin vmc || die "release build failed"
bin="$REPO_ROOT/target/release"

work="$CROSD_CACHE/bench-disk-export"
state="$work/state" run="$work/run"
rm -rf "$work" && mkdir -p "$state" "$run"
export CROSD_SOCKET="$run/crosd.sock"
"$bin/crosd" --state-dir "$state" --run-dir "$run" --hypervisor qemu 2>"$work/crosd.log" &
crosd_pid=$!
trap 'kill "$crosd_pid" 2>/dev/null || true; wait "$crosd_pid" 2>/dev/null || true' EXIT
for _ in $(seq 200); do [ -S "$CROSD_SOCKET" ] && break; sleep 0.05; done
[ -S "$CROSD_SOCKET" ] || die "crosd did not start (see $work/crosd.log)"

"$bin/vmc" create --size 4G bench >/dev/null
disk="$state/disks/bench.img"
# 20 extents of 10 MiB spread over the disk: even ones random, odd ones text.
text="$work/text"
for i in $(seq 200000); do echo "line $i of the crosd disk export benchmark: $((i * 7919 % 100003))"; done >"$text"
for i in $(seq 0 19); do
    if [ $((i % 2)) -eq 0 ]; then
        head -c 10M /dev/urandom
    else
        head -c 10M "$text"
    fi | dd of="$disk" bs=1M seek=$((i * 200)) conv=notrunc status=none
done
disk_bytes=$(stat -c %s "$disk")
log "disk: $(( disk_bytes >> 20 )) MiB, $(( $(stat -c %b "$disk") * 512 >> 20 )) MiB allocated"
cp --sparse=always "$disk" "$work/original.img"

now_ns() { date +%s%N; }
best() { printf '%s\n' "$@" | sort -n | head -1; }
mbps() { awk -v b="$disk_bytes" -v ns="$1" 'BEGIN { printf "%.0f", b / (ns / 1e9) / 1e6 }'; }

exp=() imp=() zc=() zd=()
for r in $(seq "$runs"); do
    log "run $r of $runs"
    sync
    t0=$(now_ns); "$bin/vmc" export --force bench "$work/bench.zst" 2>/dev/null; exp+=($(( $(now_ns) - t0 )))
    t0=$(now_ns); "$bin/vmc" import bench "$work/bench.zst" 2>/dev/null; imp+=($(( $(now_ns) - t0 )))
    t0=$(now_ns); zstd -1 -q -f "$work/original.img" -o "$work/ref.zst"; zc+=($(( $(now_ns) - t0 )))
    t0=$(now_ns); zstd -d -q -f "$work/ref.zst" -o "$work/ref.img"; zd+=($(( $(now_ns) - t0 )))
done
cmp "$disk" "$work/original.img" || die "the imported disk differs from the original"

e=$(best "${exp[@]}") i=$(best "${imp[@]}") c=$(best "${zc[@]}") d=$(best "${zd[@]}")
es=$(stat -c %s "$work/bench.zst") zs=$(stat -c %s "$work/ref.zst")
printf '\n%-28s %12s %12s %8s\n' "4 GiB disk, 200 MiB data" "crosd" "zstd -1" "ratio"
printf '%-28s %9s MB/s %9s MB/s %7s%%\n' "export vs compress" "$(mbps "$e")" "$(mbps "$c")" \
    "$(awk -v a="$c" -v b="$e" 'BEGIN { printf "%.0f", a / b * 100 }')"
printf '%-28s %9s MB/s %9s MB/s %7s%%\n' "import vs decompress" "$(mbps "$i")" "$(mbps "$d")" \
    "$(awk -v a="$d" -v b="$i" 'BEGIN { printf "%.0f", a / b * 100 }')"
printf '%-28s %12s %12s %7s%%\n' "export file size (bytes)" "$es" "$zs" \
    "$(awk -v a="$es" -v b="$zs" 'BEGIN { printf "%.1f", a / b * 100 }')"
printf '%-28s %12s %12s\n' "imported disk allocated" \
    "$(( $(stat -c %b "$disk") * 512 >> 20 )) MiB" "$(( $(stat -c %b "$work/ref.img") * 512 >> 20 )) MiB"
printf '(best of %s runs; ratio = crosd throughput / zstd throughput, size = crosd / zstd)\n' "$runs"
