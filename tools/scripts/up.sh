#!/usr/bin/env bash
# The main job on a fresh machine: install what crosd needs, build it, build the termina VM image,
# start the daemon, boot termina and run a command in it.
#
# Usage: tools/scripts/up.sh [--keep] [--shell] [-- CMD ARGS...]
#   (default command: uname -a)
#   --keep   leave crosd and the VM running afterwards (stop them with: vmc stop termina; kill crosd)
#   --shell  open an interactive shell in the VM instead of running a command
#
# State and the control socket live under ~/.cache/crosd/up/ unless CROSD_STATE_DIR /
# CROSD_RUN_DIR say otherwise, so nothing touches /var/lib or /run.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

keep=false shell=false
cmd=(uname -a)
while [ $# -gt 0 ]; do
    case "$1" in
        --keep) keep=true; shift ;;
        --shell) shell=true; shift ;;
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
start_crosd "$state" "$run"
crosd_pid="$CROSD_PID"
cleanup() {
    "$bin/vmc" stop termina >/dev/null 2>&1 || true
    if [ -n "$crosd_pid" ]; then kill -TERM "$crosd_pid" 2>/dev/null && wait "$crosd_pid" 2>/dev/null || true; fi
}
$keep || trap cleanup EXIT

log "crosmsg list (the actors crosd runs)"
"$bin/crosmsg" list
# GetVmInfo answers only for a running VM (`vmc list` also lists disks, under the same name).
if ! "$bin/crosmsg" send concierge '{"GetVmInfo":{"name":"termina"}}' >/dev/null 2>&1; then
    log "vmc start termina"
    "$bin/vmc" start --no-shell --timeout 300 termina
fi
if $shell; then
    "$bin/vsh" --vm_name termina
else
    log "vsh --vm_name termina -- ${cmd[*]}"
    "$bin/vsh" --vm_name termina -- "${cmd[@]}"
fi
if $keep; then
    log "termina keeps running; export CROSD_SOCKET=$CROSD_SOCKET and use target/release/{vmc,vsh,crosmsg}"
fi
