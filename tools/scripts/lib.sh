# Shared by the crosd scripts: host packages and the cache directory.
# shellcheck shell=bash

CROSD_CACHE="${CROSD_CACHE:-$HOME/.cache/crosd}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Debian packages the project needs on the host: QEMU (TCG backend), filesystem tools for the
# termina images, busybox for the guest's shell utilities.
HOST_PACKAGES=(qemu-system-x86 btrfs-progs busybox-static e2fsprogs zstd xz-utils kmod binutils)

# Installs whatever of HOST_PACKAGES is missing (needs root, as on the project's machines).
ensure_host_packages() {
    local missing=()
    for p in "${HOST_PACKAGES[@]}"; do
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
