#!/usr/bin/env bash
# The main job on a fresh machine: install what crosd needs, build it, build the termina VM image
# and a Debian container image (served on loopback), start the daemon, boot termina, create the
# container `penguin` in it and run a command there.
#
# Usage: tools/scripts/up.sh [--keep] [--shell] [--vm-only] [-- CMD ARGS...]
#   (default command: cat /etc/os-release)
#   --keep     leave crosd, the VM and the image server running afterwards
#              (stop them with: vmc stop termina; kill crosd)
#   --shell    open an interactive shell in penguin instead of running a command
#   --vm-only  no container: run the command (or shell) in the VM itself
#
# The first run builds and caches the images (~/.cache/crosd); later runs reuse them.
#
# State and the control socket live under ~/.cache/crosd/up/ unless CROSD_STATE_DIR /
# CROSD_RUN_DIR say otherwise, so nothing touches /var/lib or /run.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

keep=false shell=false vm_only=false
cmd=(cat /etc/os-release)
while [ $# -gt 0 ]; do
    case "$1" in
        --keep) keep=true; shift ;;
        --shell) shell=true; shift ;;
        --vm-only) vm_only=true; shift ;;
        --) shift; [ $# -gt 0 ] && cmd=("$@"); break ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
done

ensure_host_packages
state="${CROSD_STATE_DIR:-$CROSD_CACHE/up/state}"
run="${CROSD_RUN_DIR:-$CROSD_CACHE/up/run}"
mkdir -p "$state" "$run"
export CROSD_SOCKET="$run/crosd.sock"
build_release_and_component "$state"
bin="$BIN"
server_pid=""
if ! $vm_only; then
    images="$CROSD_CACHE/images/debian"
    if [ ! -f "$images/streams/v1/images.json" ]; then
        log "building the Debian container image (once; cached in $images)"
        "$bin/crosimg" build-container debian --release bookworm --out "$images" \
            || die "crosimg build-container debian failed"
    fi
    log "serving $images on loopback (crosimg serve)"
    exec 3< <("$bin/crosimg" serve "$images" --listen 127.0.0.1:0 2>"$run/image-server.log")
    server_pid=$!
    read -r -t 20 served <&3 || die "crosimg serve did not start (log: $run/image-server.log)"
    image_url=$(printf '%s\n' "$served" | grep -o 'http://[^ ]*' | head -n1)
    image_url="${image_url%/}"
    [ -n "$image_url" ] || die "crosimg serve printed no URL: $served"
fi
start_crosd "$state" "$run"
crosd_pid="$CROSD_PID"
cleanup() {
    "$bin/vmc" stop termina >/dev/null 2>&1 || true
    if [ -n "$crosd_pid" ]; then kill -TERM "$crosd_pid" 2>/dev/null && wait "$crosd_pid" 2>/dev/null || true; fi
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
}
$keep || trap cleanup EXIT

log "crosmsg list (the actors crosd runs)"
"$bin/crosmsg" list
# GetVmInfo answers only for a running VM (`vmc list` also lists disks, under the same name).
if ! "$bin/crosmsg" send concierge '{"GetVmInfo":{"name":"termina"}}' >/dev/null 2>&1; then
    log "vmc start termina"
    if $vm_only; then
        "$bin/vmc" start --no-shell --no-start-lxd --timeout 300 termina
    else
        "$bin/vmc" start --no-shell --mem 2048 --timeout 300 termina
    fi
elif ! $vm_only; then
    "$bin/crosmsg" send cicerone '{"StartLxd":{"vm":"termina"}}' >/dev/null
fi
target=(--vm_name termina)
if ! $vm_only; then
    log "vmc container termina penguin $image_url debian/bookworm"
    "$bin/vmc" container --no-shell termina penguin "$image_url" debian/bookworm
    target+=(--target_container penguin)
fi
if $shell; then
    "$bin/vsh" "${target[@]}"
else
    log "vsh ${target[*]} -- ${cmd[*]}"
    "$bin/vsh" "${target[@]}" -- "${cmd[@]}"
fi
if $keep; then
    log "termina keeps running; export CROSD_SOCKET=$CROSD_SOCKET and use target/release/{vmc,vsh,crosmsg}"
fi
