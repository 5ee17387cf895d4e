#!/usr/bin/env bash
# Issue 12's targets: folder sharing over 9P in one termina guest (QEMU/TCG), seneschal's server
# (crosd-9s, the p9 crate over hybrid vsock, trans=fd) against QEMU's own virtio-9p device
# (`-fsdev local,security_model=none` + virtio-9p-device, trans=virtio) on the same host folder,
# in the same run, plus the same work natively on the host:
#   1. sequential read of a 256 MiB file (dd bs=1M; the host's page cache warm),
#   2. sequential write of a 256 MiB file (dd bs=1M conv=fsync),
#   3. find + stat over a 10,000-file tree (100 directories of 100 files),
#   4. git status of a real repository checked out in the share (a clone of this one); git is
#      not in the termina image, so Debian's git package is fetched with apt-get download and
#      shared into the VM, and its binary copied into the guest's /tmp. Each mount gets one
#      untimed git status first: it refreshes the index for that mount's stat data, as a user's
#      first git status after checking out does.
# Each is timed inside the guest (/proc/uptime, 10 ms resolution), RUNS times (default 3);
# the median is printed. Both mounts use their transport's largest msize and the default cache
# mode (none), as Mount9P does.
# Usage: tools/scripts/bench-9p.sh [RUNS]     PROFILE=debug uses the debug build (faster to build);
#   TESTS="read write" runs only those of read, write, meta, git.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
runs="${1:-3}"
profile="${PROFILE:-release}"

ensure_host_packages git
[ "$(id -u)" -eq 0 ] || die "run as root: crosd mounts the shared folder into its 9P server's namespace"
work="$CROSD_CACHE/bench-9p"
state="$work/state" run="$work/run" share="$work/share" tools_dir="$work/tools"
rm -rf "$run" && mkdir -p "$state" "$run"
export CROSD_SOCKET="$run/crosd.sock"
if [ "$profile" = release ]; then
    build_release_and_component "$state"
else
    log "building crosd and the guest programs (debug)"
    cargo build --quiet -p cros-tools --bins || die "build failed"
    build_guest_binaries
    BIN="$REPO_ROOT/target/debug"
    GUEST_BIN="$REPO_ROOT/target/x86_64-unknown-linux-gnu/debug"
    "$BIN/crosimg" build-termina --force --version local --out "$state/components" --guest-bin-dir "$GUEST_BIN" \
        >/dev/null || die "crosimg build-termina failed"
fi

# The shared folder: a 256 MiB file and a 10,000-file tree, owned by the server's user (a root
# VM's server runs as nobody).
if [ ! -f "$share/data.bin" ] || [ "$(stat -c %s "$share/data.bin")" != 268435456 ]; then
    log "creating the 256 MiB file and the 10,000-file tree in $share"
    rm -rf "$share" && mkdir -p "$share/tree"
    head -c 268435456 /dev/urandom >"$share/data.bin"
    for d in $(seq -w 0 99); do
        mkdir "$share/tree/d$d"
        (cd "$share/tree/d$d" && for f in $(seq -w 0 99); do echo "$d$f" >"f$f"; done)
    done
fi
if [ ! -x "$tools_dir/usr/bin/git" ]; then
    log "fetching git for the guest (apt-get download)"
    rm -rf "$work/debs" "$tools_dir" && mkdir -p "$work/debs" "$tools_dir"
    (cd "$work/debs" && apt-get download git >/dev/null 2>&1) || die "apt-get download git failed"
    dpkg-deb -x "$work"/debs/git_*.deb "$tools_dir" || die "cannot unpack $(ls "$work"/debs/git_*.deb)"
fi
if [ ! -d "$share/repo/.git" ]; then
    log "checking out a clone of this repository in $share/repo"
    git clone --quiet --no-local "$REPO_ROOT" "$share/repo" || die "git clone of $REPO_ROOT failed"
fi
rm -f "$share/out.bin"
chown -R 65534:65534 "$share"

export CROSD_QEMU_EXTRA_ARGS="-fsdev local,id=b9p,path=$share,security_model=none -device virtio-9p-device,fsdev=b9p,mount_tag=b9p"
start_crosd "$state" "$run" --hypervisor qemu
trap '"$BIN/vmc" stop termina >/dev/null 2>&1 || true; [ -n "$CROSD_PID" ] && kill "$CROSD_PID" 2>/dev/null || true' EXIT
"$BIN/vmc" stop termina >/dev/null 2>&1 || true
"$BIN/vmc" start --no-shell --timeout 600 termina >/dev/null 2>&1 || die "vmc start failed (log: $run/crosd.log)"
# Shares a host folder with termina (vmc share's arguments) and prints where the VM sees it.
share_into_vm() { "$BIN/vmc" share "$@" | sed -n 's|.* at \(/mnt/shared/[^ ]*\) .*|\1|p'; }
ours=$(share_into_vm --writable termina "$share")
[ -n "$ours" ] || die "vmc share printed no path"
vsh() { "$BIN/vsh" --vm_name termina -- sh -c "$1"; }
vsh "mkdir -p /tmp/qemu9p && mount -t 9p -o trans=virtio,version=9p2000.L,msize=1048576 b9p /tmp/qemu9p" \
    || die "cannot mount QEMU's virtio-9p device in the guest"
tools=$(share_into_vm termina "$tools_dir")
vsh "cp $tools/usr/bin/git /tmp/crosd-bench-git" || die "cannot copy git into the guest"
msize_of() { vsh "grep ' $1 ' /proc/mounts" | tr ',' '\n' | sed -n 's/^msize=//p'; }
log "msize: ours $(msize_of /mnt/shared), QEMU virtio-9p $(msize_of /tmp/qemu9p)"

# Seconds (to 10 ms) the guest spends on $1, the best of nothing: one run.
guest_time() {
    vsh "t0=\$(cut -d' ' -f1 /proc/uptime); $1 >/dev/null 2>&1 || echo FAILED; t1=\$(cut -d' ' -f1 /proc/uptime); echo \$t0 \$t1" \
        | awk '/FAILED/ {exit 1} {printf "%.2f\n", $2 - $1}'
}
host_time() {
    local t0 t1
    t0=$(date +%s%N)
    sh -c "$1" >/dev/null 2>&1 || return 1
    t1=$(date +%s%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f\n", (b - a) / 1e9}'
}
# Seconds $2 takes where $1 says (host, or in the guest).
time_on() { if [ "$1" = host ]; then host_time "$2"; else guest_time "$2"; fi; }
median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

read_cmd() { echo "dd if=$1/data.bin of=/dev/null bs=1M"; }
write_cmd() { echo "dd if=/dev/zero of=$1/out.bin bs=1M count=256 conv=fsync"; }
meta_cmd() { echo "find $1/tree -type f | xargs stat -c %s"; }
# The share's files belong to another uid than the one running git: safe.directory lets it in.
git_cmd() {
    local git=/tmp/crosd-bench-git
    [ "$2" = host ] && git=git
    echo "$git -C $1/repo -c safe.directory='*' status --porcelain"
}

cat "$share/data.bin" >/dev/null # warm the host's page cache
declare -A result
for what in ${TESTS:-read write meta git}; do
    for where in ours qemu host; do
        case $where in
            ours) dir="$ours" ;;
            qemu) dir=/tmp/qemu9p ;;
            host) dir="$share" ;;
        esac
        times=()
        cmd=$("${what}_cmd" "$dir" "$where")
        if [ "$what" = git ]; then
            time_on "$where" "$cmd" >/dev/null || die "git status on $where failed"
        fi
        for _ in $(seq "$runs"); do
            times+=("$(time_on "$where" "$cmd")") || die "$what on $where failed"
            [ "$what" = write ] && rm -f "$share/out.bin"
        done
        result[$what,$where]=$(printf '%s\n' "${times[@]}" | median)
    done
done

mibs() { awk -v t="$1" 'BEGIN {if (t > 0) printf "%.0f MiB/s", 256 / t; else print "-"}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a > 0) printf "%.2fx", b / a; else print "-"}'; }
printf '\n%-28s %14s %14s %14s %16s\n' "9P, median of $runs" "crosd-9s" "QEMU virtio-9p" "host native" "ours vs QEMU"
for what in read write; do
    [ -n "${result[$what,ours]:-}" ] || continue
    printf '%-28s %14s %14s %14s %16s\n' "sequential $what 256 MiB" \
        "$(mibs "${result[$what,ours]}")" "$(mibs "${result[$what,qemu]}")" "$(mibs "${result[$what,host]}")" \
        "$(ratio "${result[$what,ours]}" "${result[$what,qemu]}") speed"
done
[ -z "${result[meta,ours]:-}" ] || printf '%-28s %13ss %13ss %13ss %16s\n' "find+stat 10,000 files" \
    "${result[meta,ours]}" "${result[meta,qemu]}" "${result[meta,host]}" \
    "$(ratio "${result[meta,qemu]}" "${result[meta,ours]}") time"
[ -z "${result[git,ours]:-}" ] || printf '%-28s %13ss %13ss %13ss %16s\n' "git status ($(git -C "$share/repo" -c safe.directory='*' ls-files | wc -l) files)" \
    "${result[git,ours]}" "${result[git,qemu]}" "${result[git,host]}" \
    "$(ratio "${result[git,qemu]}" "${result[git,ours]}") time"
