#!/usr/bin/env bash
# Fetch Debian's generic amd64 kernel (the guest kernel of the termina VM and of the QEMU tests)
# into a cache and extract what a guest needs: the kernel image and the loadable modules of the
# features we use, decompressed, with their load order resolved from modules.dep.
#
# Usage: tools/scripts/guest-kernel.sh [--modules "mod1 mod2 ..."] [--package PKG] [--quiet]
#
# Prints shell assignments a caller can eval:
#   KERNEL=/root/.cache/crosd/kernel/linux-image-6.1.0-NN-amd64/vmlinuz
#   KERNEL_RELEASE=6.1.0-NN-amd64
#   MODULES_DIR=.../modules-<hash>      flat directory of .ko files plus `load-order`
#                                       (one file name per line, dependencies first) and
#                                       `paths` (the same modules' paths in the module tree,
#                                       decompressed names, same order)
#   MODULES_TREE=.../root/lib/modules/6.1.0-NN-amd64   the whole extracted module tree
#
# Cached: a second run with the same package does no download and no extraction.
# Environment: CROSD_CACHE (default ~/.cache/crosd), CROSD_KERNEL_PACKAGE (default: the package
# that linux-image-amd64 depends on).
set -euo pipefail

die() { echo "guest-kernel.sh: error: $*" >&2; exit 1; }
log() { [[ $QUIET == 1 ]] || echo "guest-kernel.sh: $*" >&2; }

# The vsock transport over virtio-mmio, as QEMU microvm and our VMM expose it.
DEFAULT_MODULES="virtio_mmio vmw_vsock_virtio_transport"

MODULES="$DEFAULT_MODULES"
PACKAGE="${CROSD_KERNEL_PACKAGE:-}"
QUIET=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --modules) [[ $# -ge 2 ]] || die "--modules needs a value"; MODULES="$2"; shift 2 ;;
        --package) [[ $# -ge 2 ]] || die "--package needs a value"; PACKAGE="$2"; shift 2 ;;
        --quiet) QUIET=1; shift ;;
        -h|--help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
            exit 0 ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
done

CACHE="${CROSD_CACHE:-$HOME/.cache/crosd}/kernel"
mkdir -p "$CACHE" || die "cannot create cache directory $CACHE"
# Parallel callers (test binaries run concurrently on a fresh cache) take turns: one downloads
# and extracts, the others then find it cached.
exec 9>"$CACHE/.lock" || die "cannot open the lock file $CACHE/.lock"
flock 9 || die "cannot lock $CACHE/.lock"

need_tool() { # tool debian-package
    command -v "$1" >/dev/null 2>&1 && return 0
    log "installing $2 (for $1)"
    if [[ $(id -u) -eq 0 ]]; then
        apt-get install -y --no-install-recommends "$2" >&2 || die "apt-get install $2 failed"
    else
        sudo apt-get install -y --no-install-recommends "$2" >&2 || die "apt-get install $2 failed (needs root or sudo)"
    fi
}
need_tool dpkg-deb dpkg
need_tool xz xz-utils
need_tool zstd zstd
need_tool depmod kmod

if [[ -z $PACKAGE ]]; then
    PACKAGE=$(apt-cache depends linux-image-amd64 2>/dev/null \
        | awk '/Depends: linux-image-[0-9]/ {print $2; exit}') || true
    if [[ -z $PACKAGE ]]; then
        # No apt lists (offline, or a non-Debian host): use what is already cached.
        PACKAGE=$(cat "$CACHE/current" 2>/dev/null) \
            || die "cannot resolve linux-image-amd64 with apt-cache (run apt-get update) and nothing is cached in $CACHE"
        log "apt-cache cannot resolve linux-image-amd64; using cached $PACKAGE"
    fi
fi
[[ $PACKAGE =~ ^linux-image-[0-9][A-Za-z0-9.+-]*$ ]] || die "'$PACKAGE' does not look like a linux-image package name"

PKGDIR="$CACHE/$PACKAGE"
if [[ ! -f $PKGDIR/.extracted ]]; then
    rm -rf "$PKGDIR.tmp"
    mkdir -p "$PKGDIR.tmp"
    if ! compgen -G "$CACHE/${PACKAGE}_*.deb" >/dev/null; then
        log "downloading $PACKAGE with apt-get download"
        (cd "$CACHE" && apt-get download "$PACKAGE" >&2) \
            || die "apt-get download $PACKAGE failed (is apt configured and the network reachable? try apt-get update)"
    fi
    DEB=$(compgen -G "$CACHE/${PACKAGE}_*.deb" | head -n1)
    log "extracting $DEB"
    dpkg-deb -x "$DEB" "$PKGDIR.tmp/root" || die "dpkg-deb -x $DEB failed (corrupt download? delete it and rerun)"
    VMLINUZ=$(compgen -G "$PKGDIR.tmp/root/boot/vmlinuz-*" | head -n1) || true
    [[ -n $VMLINUZ ]] || die "$DEB has no boot/vmlinuz-*: not a kernel image package?"
    cp "$VMLINUZ" "$PKGDIR.tmp/vmlinuz"
    basename "$VMLINUZ" | sed 's/^vmlinuz-//' > "$PKGDIR.tmp/release"
    # Debian generates modules.dep in the package's postinst; do the same for the extraction.
    depmod -b "$PKGDIR.tmp/root" "$(cat "$PKGDIR.tmp/release")" \
        || die "depmod on the extracted modules of $PACKAGE failed"
    rm -rf "$PKGDIR"
    mv "$PKGDIR.tmp" "$PKGDIR"
    touch "$PKGDIR/.extracted"
else
    log "using cached $PACKAGE"
fi
echo "$PACKAGE" > "$CACHE/current"

RELEASE=$(cat "$PKGDIR/release")
TREE="$PKGDIR/root/lib/modules/$RELEASE"
[[ -f $TREE/modules.dep ]] || die "$TREE/modules.dep missing: the cached extraction is broken; delete $PKGDIR and rerun"

# Resolve each wanted module to its file and dependencies (dependencies first), skipping the
# ones built into this kernel. modules.dep lines: "kernel/a/b.ko.xz: kernel/c.ko.xz kernel/d.ko.xz"
# where the listed dependencies must be loaded before, last one first.
declare -A SEEN=()
ORDER=()
mod_path() { # module name -> path relative to the tree ("" if built in); dies if unknown
    local name=$1 alt=${1//_/-} rel
    rel=$(awk -F: -v a="$name" -v b="$alt" '{ n=$1; sub(/.*\//, "", n); sub(/\.ko(\.xz|\.zst|\.gz)?$/, "", n);
              if (n == a || n == b) { print $1; exit } }' "$TREE/modules.dep")
    if [[ -n $rel ]]; then echo "$rel"; return 0; fi
    if grep -Eq "/($name|$alt)\.ko\$" "$TREE/modules.builtin"; then echo ""; return 0; fi
    die "module '$name' is neither a loadable module nor built into kernel $RELEASE"
}
visit_rel() { # path relative to the tree
    local rel=$1 deps dep i
    local -a deparr=()
    [[ -n ${SEEN[$rel]:-} ]] && return 0
    SEEN[$rel]=1
    deps=$(awk -F': *' -v r="$rel" '$1 == r { print $2; exit }' "$TREE/modules.dep")
    read -r -a deparr <<< "$deps"
    for (( i=${#deparr[@]}-1; i>=0; i-- )); do
        dep=${deparr[$i]}
        visit_rel "$dep"
    done
    ORDER+=("$rel")
}
for m in $MODULES; do
    rel=$(mod_path "$m")
    if [[ -z $rel ]]; then log "$m is built into $RELEASE"; continue; fi
    visit_rel "$rel"
done

KEY=$(printf '%s\n' "${ORDER[@]}" | sha256sum | cut -c1-12)
MODDIR="$PKGDIR/modules-$KEY"
if [[ ! -f $MODDIR/load-order || ! -f $MODDIR/paths ]]; then
    rm -rf "$MODDIR.tmp"
    mkdir -p "$MODDIR.tmp"
    for rel in "${ORDER[@]}"; do
        src="$TREE/$rel"
        base=$(basename "$rel")
        case "$base" in
            *.ko.xz) xz -dc "$src" > "$MODDIR.tmp/${base%.xz}" ;;
            *.ko.zst) zstd -qdc "$src" > "$MODDIR.tmp/${base%.zst}" ;;
            *.ko.gz) gzip -dc "$src" > "$MODDIR.tmp/${base%.gz}" ;;
            *.ko) cp "$src" "$MODDIR.tmp/$base" ;;
            *) die "unexpected module file $rel" ;;
        esac || die "cannot decompress $src"
        base=${base%.xz}; base=${base%.zst}; base=${base%.gz}
        echo "$base" >> "$MODDIR.tmp/load-order"
        path=${rel%.xz}; path=${path%.zst}; path=${path%.gz}
        echo "$path" >> "$MODDIR.tmp/paths"
    done
    touch "$MODDIR.tmp/load-order" "$MODDIR.tmp/paths"
    rm -rf "$MODDIR"
    mv "$MODDIR.tmp" "$MODDIR"
fi
log "modules in load order: $(tr '\n' ' ' < "$MODDIR/load-order")"

echo "KERNEL=$PKGDIR/vmlinuz"
echo "KERNEL_RELEASE=$RELEASE"
echo "MODULES_DIR=$MODDIR"
echo "MODULES_TREE=$TREE"
