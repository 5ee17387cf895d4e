# Shared by the crosd scripts: host packages and the cache directory.
# shellcheck shell=bash

CROSD_CACHE="${CROSD_CACHE:-$HOME/.cache/crosd}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Debian packages the project needs on the host: QEMU (TCG backend), mmdebstrap for termina's
# Debian userland and the container images, filesystem tools for the images (squashfs-tools for
# crosimg build-container), kmod (depmod for the image's module tree), static busybox for the
# tests' minimal guests and the busybox container image, a C++ compiler for libFuzzer (fuzz.sh),
# iproute2 for the network tests' namespaces and taps.
HOST_PACKAGES=(qemu-system-x86 mmdebstrap squashfs-tools btrfs-progs busybox-static e2fsprogs zstd xz-utils kmod binutils g++ iproute2 nftables curl)

# Installs whatever of HOST_PACKAGES, and of the extra packages named as arguments (a script's
# own needs), is missing (needs root, as on the project's machines).
ensure_host_packages() {
    local missing=()
    for p in "${HOST_PACKAGES[@]}" "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        || die "apt-get install ${missing[*]} failed"
}

# Builds the static guest binaries (they run as PID 1 in a VM with no libraries).
build_guest_binaries() {
    log "building static guest binaries"
    (cd "$REPO_ROOT" && RUSTFLAGS='-C target-feature=+crt-static' \
        cargo build --quiet -p cros-guest --bins --target x86_64-unknown-linux-gnu) \
        || die "building the guest binaries failed"
}

# Builds crosd (release), the static guest programs (release) and the termina component under
# STATE/components/cros-termina/local, rebuilding the component when it fails verification or
# crosimg or a guest program is newer. Sets BIN (host binaries) and GUEST_BIN.
# CROSD_PROFILE=debug uses dev builds instead (a loaded machine where a release build of the
# workspace takes too long; the guest boot under TCG is the same kernel and image).
build_release_and_component() {
    local state="$1" profile="${CROSD_PROFILE:-release}" flag=""
    case "$profile" in
        release) flag="--release" ;;
        debug) ;;
        *) die "CROSD_PROFILE must be release or debug, not '$profile'" ;;
    esac
    log "building crosd ($profile)"
    (cd "$REPO_ROOT" && cargo build --quiet $flag --bins) || die "building crosd failed"
    log "building the static guest programs ($profile)"
    (cd "$REPO_ROOT" && RUSTFLAGS='-C target-feature=+crt-static' cargo build --quiet $flag \
        -p cros-guest --bins --target x86_64-unknown-linux-gnu) || die "building the guest programs failed"
    BIN="$REPO_ROOT/target/$profile"
    GUEST_BIN="$REPO_ROOT/target/x86_64-unknown-linux-gnu/$profile"
    local component="$state/components/cros-termina/local"
    mkdir -p "$state/components"
    if ! "$BIN/crosimg" verify "$component" >/dev/null 2>&1 \
        || [ -n "$(find "$BIN/crosimg" "$GUEST_BIN"/{maitred,vshd,vm_syslog,tremplin} -newer "$component/manifest.json" 2>/dev/null)" ]; then
        log "building the termina component (kernel and Debian userland from Debian, cached in $CROSD_CACHE)"
        "$BIN/crosimg" build-termina --force --version local --out "$state/components" --guest-bin-dir "$GUEST_BIN" \
            || die "crosimg build-termina failed"
    fi
}

# Starts crosd on $CROSD_SOCKET with STATE and RUN unless one already answers there; sets
# CROSD_PID when it started one. Extra arguments go to crosd.
start_crosd() {
    local state="$1" run="$2"
    shift 2
    CROSD_PID=""
    if [ -S "$CROSD_SOCKET" ] && "$BIN/crosmsg" list >/dev/null 2>&1; then
        log "crosd already runs on $CROSD_SOCKET"
        return 0
    fi
    log "starting crosd (socket $CROSD_SOCKET, log $run/crosd.log)"
    "$BIN/crosd" --state-dir "$state" --run-dir "$run" --socket "$CROSD_SOCKET" "$@" >"$run/crosd.log" 2>&1 &
    CROSD_PID=$!
    for _ in $(seq 100); do
        # The socket file appears at bind(), before crosd listens: ask it something instead.
        [ -S "$CROSD_SOCKET" ] && "$BIN/crosmsg" list >/dev/null 2>&1 && return 0
        kill -0 "$CROSD_PID" 2>/dev/null || { cat "$run/crosd.log" >&2; die "crosd exited during start-up"; }
        sleep 0.1
    done
    die "crosd did not create $CROSD_SOCKET within 10 s (log: $run/crosd.log)"
}
