#!/usr/bin/env bash
# Whole-command timings for issue 4's targets, printed as a table:
#   1. the guest kernel booting to a trivial /init under plain QEMU/TCG (the baseline),
#   2. `vmc start --no-shell termina` to maitred's VmReady (from crosd's log) and to the end of
#      StartTermina (the command returning), with the same kernel and QEMU settings,
#   3. `vsh --vm_name termina -- true` round trips on the running VM (p50, p99).
# Usage: tools/scripts/bench-termina.sh [RUNS]   (default 3 boots each, 30 vsh round trips)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
runs="${1:-3}"

ensure_host_packages
dpkg-query -W cpio >/dev/null 2>&1 || apt-get install -y -qq --no-install-recommends cpio >/dev/null
work="$CROSD_CACHE/bench-termina"
state="$work/state" run="$work/run"
rm -rf "$run" && mkdir -p "$state" "$run"
export CROSD_SOCKET="$run/crosd.sock"
build_release_and_component "$state"
kernel="$state/components/cros-termina/local/vm_kernel"
tsc_khz=$(awk '/^cpu MHz/ {printf "%d", $4 * 1000; exit}' /proc/cpuinfo)

now_ms() { date +%s%3N; }

# 1. Baseline: same kernel, QEMU settings as crosd's qemu backend, /init = busybox printing a line.
init_dir="$work/trivial-init"
rm -rf "$init_dir" && mkdir -p "$init_dir/bin" "$init_dir/dev"
cp /bin/busybox "$init_dir/bin/busybox"
printf '#!/bin/busybox sh\necho CROSD-BENCH-INIT-REACHED\n/bin/busybox poweroff -f\n' >"$init_dir/init"
chmod +x "$init_dir/init"
(cd "$init_dir" && find . | cpio -o -H newc --quiet >"$work/trivial.cpio")
baseline=()
for i in $(seq "$runs"); do
    t0=$(now_ms)
    timeout 120 qemu-system-x86_64 -M microvm,accel=tcg -global virtio-mmio.force-legacy=false -cpu max -m 1024 -smp 2 \
        -nodefaults -no-user-config -display none -no-reboot -serial stdio -kernel "$kernel" -initrd "$work/trivial.cpio" \
        -append "console=ttyS0 panic=-1 quiet tsc_early_khz=$tsc_khz" 2>/dev/null | grep -m1 -q CROSD-BENCH-INIT-REACHED
    baseline+=($(( $(now_ms) - t0 )))
    pkill -f "initrd $work/trivial.cpio" 2>/dev/null || true
    sleep 1
done

# 2. vmc start to VmReady and to "running", read from crosd's JSON log.
start_crosd "$state" "$run" --log-format json
trap '"$BIN/vmc" stop termina >/dev/null 2>&1 || true; [ -n "$CROSD_PID" ] && kill "$CROSD_PID" 2>/dev/null || true' EXIT
ready=() running=()
for i in $(seq "$runs"); do
    "$BIN/vmc" stop termina >/dev/null 2>&1 || true
    lines_before=$(wc -l <"$run/crosd.log")
    t0=$(now_ms)
    "$BIN/vmc" start --no-shell termina >/dev/null 2>&1 || die "vmc start failed (log: $run/crosd.log)"
    running+=($(( $(now_ms) - t0 )))
    ready_at=$(tail -n +"$((lines_before + 1))" "$run/crosd.log" | python3 -c '
import sys, json, datetime
for line in sys.stdin:
    try: e = json.loads(line)
    except ValueError: continue
    if e.get("fields", {}).get("message") == "VmReady":
        t = datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))
        print(int(t.timestamp() * 1000)); break')
    ready+=($(( ready_at - t0 )))
done

# 3. vsh round trips on the running VM.
rt=()
for i in $(seq 30); do
    t0=$(date +%s%N)
    "$BIN/vsh" --vm_name termina -- true
    rt+=($(( ($(date +%s%N) - t0) / 1000 )))
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
pct() { local p=$1; shift; printf '%s\n' "$@" | sort -n | awk -v p="$p" '{a[NR]=$1} END {i=int(NR*p/100+0.999); if (i<1) i=1; print a[i]}'; }
b=$(median "${baseline[@]}") r=$(median "${ready[@]}") s=$(median "${running[@]}")
echo
echo "termina boot, QEMU/TCG, $(nproc) cores, median of $runs (all runs in ms):"
printf '  %-52s %6d ms   [%s]\n' "plain QEMU, same kernel, to a trivial /init" "$b" "${baseline[*]}"
printf '  %-52s %6d ms   [%s]  = %s x baseline\n' "vmc start --no-shell termina, to VmReady" "$r" "${ready[*]}" "$(awk -v a="$r" -v b="$b" 'BEGIN {printf "%.2f", a/b}')"
printf '  %-52s %6d ms   [%s]\n' "vmc start --no-shell termina, command returns" "$s" "${running[*]}"
printf '  %-52s p50 %d us, p99 %d us (30 runs)\n' "vsh --vm_name termina -- true" "$(pct 50 "${rt[@]}")" "$(pct 99 "${rt[@]}")"
