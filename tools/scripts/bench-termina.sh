#!/usr/bin/env bash
# Whole-command timings for issue 4's targets, printed as a table:
#   1. the guest kernel booting to a trivial /init under plain QEMU/TCG (the baseline),
#   2. `vmc start --no-shell termina` to maitred's VmReady (from crosd's log) and to the end of
#      StartTermina (the command returning), with the same kernel and QEMU settings,
#   3. `vsh --vm_name termina -- true` round trips on the running VM (p50, p99),
#   4. from the hypervisor process's start to maitred's VmReady (both from crosd's log): issue
#      5's target for `crosvm run` on hardware KVM is <= 150 ms.
# Usage: tools/scripts/bench-termina.sh [RUNS]   (default 3 boots each, 30 vsh round trips)
#   HYPERVISOR=crosvm tools/scripts/bench-termina.sh   boots termina on our own VMM instead of
#   QEMU (needs a host whose /dev/kvm boots Linux: `crosvm probe`); the QEMU baseline still runs.
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
hypervisor="${HYPERVISOR:-qemu}"
start_crosd "$state" "$run" --log-format json --hypervisor "$hypervisor"
trap '"$BIN/vmc" stop termina >/dev/null 2>&1 || true; [ -n "$CROSD_PID" ] && kill "$CROSD_PID" 2>/dev/null || true' EXIT
ready=() running=() vmm_ready=()
for i in $(seq "$runs"); do
    "$BIN/vmc" stop termina >/dev/null 2>&1 || true
    lines_before=$(wc -l <"$run/crosd.log")
    t0=$(now_ms)
    "$BIN/vmc" start --no-shell termina >/dev/null 2>&1 || die "vmc start failed (log: $run/crosd.log)"
    running+=($(( $(now_ms) - t0 )))
    # Prints "<VmReady ms since epoch> <VmReady ms after the hypervisor process started>".
    read -r ready_at vmm_to_ready < <(tail -n +"$((lines_before + 1))" "$run/crosd.log" | python3 -c '
import sys, json, datetime
def ms(e):
    t = datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))
    return int(t.timestamp() * 1000)
started = None
for line in sys.stdin:
    try: e = json.loads(line)
    except ValueError: continue
    msg = e.get("fields", {}).get("message", "")
    if msg.startswith("starting ") and "cros_hypervisor" in e.get("target", ""):
        started = ms(e)
    if msg == "VmReady":
        print(ms(e), ms(e) - started if started is not None else -1); break')
    ready+=($(( ready_at - t0 )))
    vmm_ready+=("$vmm_to_ready")
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
v=$(median "${vmm_ready[@]}")
echo "termina boot on $hypervisor, $(nproc) cores, median of $runs (all runs in ms):"
printf '  %-52s %6d ms   [%s]\n' "plain QEMU, same kernel, to a trivial /init" "$b" "${baseline[*]}"
printf '  %-52s %6d ms   [%s]  = %s x baseline\n' "vmc start --no-shell termina, to VmReady" "$r" "${ready[*]}" "$(awk -v a="$r" -v b="$b" 'BEGIN {printf "%.2f", a/b}')"
printf '  %-52s %6d ms   [%s]\n' "vmc start --no-shell termina, command returns" "$s" "${running[*]}"
printf '  %-52s %6d ms   [%s]\n' "$hypervisor process started, to VmReady" "$v" "${vmm_ready[*]}"
printf '  %-52s p50 %d us, p99 %d us (30 runs)\n' "vsh --vm_name termina -- true" "$(pct 50 "${rt[@]}")" "$(pct 99 "${rt[@]}")"
