#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), one after the other, and fails if any
# of them crashes (a panic, a sanitizer report, an input that hangs past the timeout, or one
# that runs out of memory). Prints a table of executions per target at the end.
#   tools/scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Two fuzz crates, each its own workspace (cargo-fuzz's sanitizer flags must not reach the main
# build): fuzz/ for the host and guest actors' parsers, vmm/fuzz/ for the device models. Both
# build into one target directory, so the dependencies they share compile once and stay cached
# between runs. Each target starts from its committed seeds (<crate>/seeds/<target>/, never
# written) plus its working corpus (<crate>/corpus/<target>/, ignored by git, where new inputs
# go). A crash leaves its input in <crate>/artifacts/<target>/; replay it with
#   cargo fuzz run --fuzz-dir <crate> --target-dir target/fuzz <target> <artifact>
# cargo-fuzz is installed if missing; on a stable toolchain RUSTC_BOOTSTRAP=1 enables the
# nightly flags it needs (-Zsanitizer).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

secs="${1:-60}"
[[ "$secs" =~ ^[0-9]+$ ]] || die "usage: $0 [SECONDS] [TARGET...]"
shift || true

# target:crate:extra libFuzzer flags. The device targets take guest memory images (64 KiB).
TARGETS=(
    envelope:fuzz:
    trace_reader:fuzz:
    vshd_client:fuzz:
    maitred_requests:fuzz:
    disk_import:fuzz:
    manifest_json:fuzz:
    op_record_json:fuzz:
    ninep_guard:fuzz:
    vsock_packet:vmm/fuzz:-max_len=65536
    blk_chain:vmm/fuzz:-max_len=65537
    net_chain:vmm/fuzz:-max_len=70000
    mmio_transport:vmm/fuzz:-max_len=70000
)
CARGO_FUZZ_VERSION=0.13.2

ensure_host_packages
if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --quiet \
        || die "installing cargo-fuzz failed"
fi
if ! rustc --version | grep -q nightly; then
    export RUSTC_BOOTSTRAP=1
fi
target_dir="$REPO_ROOT/target/fuzz"
logs="$target_dir/logs"
mkdir -p "$logs"

selected=()
for entry in "${TARGETS[@]}"; do
    name="${entry%%:*}"
    if [[ $# -eq 0 ]] || [[ " $* " == *" $name "* ]]; then
        selected+=("$entry")
    fi
done
[[ ${#selected[@]} -gt 0 ]] || die "no fuzz target named $*"

for crate in fuzz vmm/fuzz; do
    if printf '%s\n' "${selected[@]}" | grep -q ":$crate:"; then
        log "building the fuzz targets of $crate"
        cargo fuzz build --fuzz-dir "$crate" --target-dir "$target_dir" \
            || die "building the fuzz targets of $crate failed"
    fi
done

failed=()
summary=()
for entry in "${selected[@]}"; do
    IFS=: read -r name crate flags <<<"$entry"
    corpus="$REPO_ROOT/$crate/corpus/$name"
    mkdir -p "$corpus"
    log "fuzzing $name for $secs s"
    rc=0
    # shellcheck disable=SC2086 # $flags is a list of libFuzzer flags
    cargo fuzz run --fuzz-dir "$crate" --target-dir "$target_dir" "$name" \
        "$corpus" "$REPO_ROOT/$crate/seeds/$name" -- \
        -max_total_time="$secs" -timeout=25 -rss_limit_mb=4096 -print_final_stats=1 $flags \
        >"$logs/$name.log" 2>&1 || rc=$?
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$name.log" | tail -1)"
    corpus_size="$(find "$corpus" -type f | wc -l)"
    if [[ $rc -eq 0 ]]; then
        result=ok
    else
        result="CRASH (exit $rc)"
        failed+=("$name")
        log "$name failed; the end of its log ($logs/$name.log):"
        tail -n 60 "$logs/$name.log" >&2
        artifact="$(ls -t "$crate/artifacts/$name"/* 2>/dev/null | head -1 || true)"
        [[ -n "$artifact" ]] && log "the input that crashed it: $artifact"
    fi
    summary+=("$(printf '%-18s %6s s %12s execs %7s in corpus  %s' \
        "$name" "$secs" "${execs:-?}" "$corpus_size" "$result")")
done

log "fuzz summary"
printf '%s\n' "${summary[@]}" >&2
if [[ ${#failed[@]} -gt 0 ]]; then
    die "fuzz targets crashed: ${failed[*]}"
fi
