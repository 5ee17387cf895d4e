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
log "building crosd (release)"
cargo build --quiet --release --bins
log "building the static guest programs (release)"
(RUSTFLAGS='-C target-feature=+crt-static' cargo build --quiet --release -p cros-guest --bins \
    --target x86_64-unknown-linux-gnu) || die "building the guest programs failed"
bin="$REPO_ROOT/target/release"
guest_bin="$REPO_ROOT/target/x86_64-unknown-linux-gnu/release"

state="${CROSD_STATE_DIR:-$CROSD_CACHE/up/state}"
run="${CROSD_RUN_DIR:-$CROSD_CACHE/up/run}"
mkdir -p "$state/components" "$run"
export CROSD_SOCKET="$run/crosd.sock"

# The termina component: rebuilt when it fails verification or a guest program changed.
component="$state/components/cros-termina/local"
if ! "$bin/crosimg" verify "$component" >/dev/null 2>&1 \
    || [ -n "$(find "$guest_bin"/{maitred,vshd,vm_syslog} -newer "$component/manifest.json" 2>/dev/null)" ]; then
    log "building the termina component (kernel from Debian, cached in $CROSD_CACHE)"
    "$bin/crosimg" build-termina --force --version local --out "$state/components" --guest-bin-dir "$guest_bin"
fi

crosd_pid=""
if [ -S "$CROSD_SOCKET" ] && "$bin/crosmsg" list >/dev/null 2>&1; then
    log "crosd already runs on $CROSD_SOCKET"
else
    log "starting crosd (socket $CROSD_SOCKET, log $run/crosd.log)"
    "$bin/crosd" --state-dir "$state" --run-dir "$run" --socket "$CROSD_SOCKET" >"$run/crosd.log" 2>&1 &
    crosd_pid=$!
    for _ in $(seq 100); do
        [ -S "$CROSD_SOCKET" ] && break
        kill -0 "$crosd_pid" 2>/dev/null || { cat "$run/crosd.log" >&2; die "crosd exited during start-up"; }
        sleep 0.1
    done
    [ -S "$CROSD_SOCKET" ] || die "crosd did not create $CROSD_SOCKET within 10 s (log: $run/crosd.log)"
fi
cleanup() {
    "$bin/vmc" stop termina >/dev/null 2>&1 || true
    if [ -n "$crosd_pid" ]; then kill -TERM "$crosd_pid" 2>/dev/null && wait "$crosd_pid" 2>/dev/null || true; fi
}
$keep || trap cleanup EXIT

log "crosmsg list (the actors crosd runs)"
"$bin/crosmsg" list
if ! "$bin/vmc" list | grep -q '^termina '; then
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
