#!/usr/bin/env bash
# The main job on a fresh machine: installs what crosd needs, builds it, starts the daemon and
# talks to it. Usage: tools/scripts/up.sh [--keep]   (--keep leaves crosd running)
#
# State and the control socket go under ~/.cache/crosd/up/ unless CROSD_STATE_DIR / CROSD_RUN_DIR
# say otherwise, so it runs without touching /var/lib or /run.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

keep=false
[ "${1:-}" = "--keep" ] && keep=true

ensure_host_packages
log "building crosd"
cargo build --quiet --release --bins
bin="$REPO_ROOT/target/release"

state="${CROSD_STATE_DIR:-$CROSD_CACHE/up/state}"
run="${CROSD_RUN_DIR:-$CROSD_CACHE/up/run}"
mkdir -p "$state" "$run"
export CROSD_SOCKET="$run/crosd.sock"

log "starting crosd (socket $CROSD_SOCKET, log $run/crosd.log)"
"$bin/crosd" --state-dir "$state" --run-dir "$run" --socket "$CROSD_SOCKET" --trace "$run/trace.bin" \
    >"$run/crosd.log" 2>&1 &
crosd_pid=$!
stop_crosd() { kill -TERM "$crosd_pid" 2>/dev/null && wait "$crosd_pid" 2>/dev/null || true; }
$keep || trap stop_crosd EXIT

for _ in $(seq 100); do
    [ -S "$CROSD_SOCKET" ] && break
    kill -0 "$crosd_pid" 2>/dev/null || { cat "$run/crosd.log" >&2; die "crosd exited during start-up"; }
    sleep 0.1
done
[ -S "$CROSD_SOCKET" ] || die "crosd did not create $CROSD_SOCKET within 10 s (log: $run/crosd.log)"

log "crosmsg list"
"$bin/crosmsg" list
log "crosmsg send concierge '{\"ListVms\":{}}'"
"$bin/crosmsg" send concierge '{"ListVms":{}}'
if $keep; then
    log "crosd keeps running (pid $crosd_pid); stop it with: kill $crosd_pid"
fi
