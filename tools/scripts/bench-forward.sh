#!/usr/bin/env bash
# Forwarded localhost port throughput (issue 14's first target, the forwarder half): a stream
# of MIB MiB (default 1024) from a server in a busybox container in termina (QEMU/TCG) to the
# host, through
#   ours:  127.0.0.1:PORT -> chunneld -> the VM's hybrid vsock -> garcon -> 127.0.0.1:PORT in
#          the container (the port forwarded automatically, as garcon reported it);
#   socat: the VM's hybrid vsock (`CONNECT 5555`) -> Debian's socat 1.7.4 in the VM, in the
#          container's network namespace (nsenter), `VSOCK-LISTEN:5555 TCP:127.0.0.1:PORT`.
# Same VM, same vsock device, same server (busybox `nc -l -e dd if=/dev/zero`), same host
# reader (python, 1 MiB reads, timed from connect to EOF). Runs alternate, RUNS of each.
# socat is not in the termina image: its .deb and the two libraries termina lacks (libwrap0,
# libnsl2) are fetched with apt-get download, unpacked on the host and shared into the VM
# (`vmc share`), run there with LD_LIBRARY_PATH.
# The ssh -L reference of the issue needs the VM's network (patchpanel's part): not measured.
# Usage: tools/scripts/bench-forward.sh [RUNS] [MIB]   (CROSD_PROFILE=debug: dev builds;
# SOCAT_ARGS="-b 65536": options for socat, e.g. its buffer size [default: none, 8 KiB])
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
runs="${1:-3}" mib="${2:-1024}"

ensure_host_packages
work="$CROSD_CACHE/bench-forward"
state="$work/state" run="$work/run"
rm -rf "$run" "$state/disks" && mkdir -p "$state" "$run"
export CROSD_SOCKET="$run/crosd.sock"
build_release_and_component "$state"

socat_dir="$work/socat"
if [ ! -x "$socat_dir/usr/bin/socat" ]; then
    log "fetching socat, libwrap0 and libnsl2 (apt-get download)"
    debs="$work/debs"
    rm -rf "$debs" "$socat_dir" && mkdir -p "$debs" "$socat_dir"
    (cd "$debs" && apt-get download socat libwrap0 libnsl2 >/dev/null 2>&1) || die "apt-get download socat failed"
    for d in "$debs"/*.deb; do dpkg-deb -x "$d" "$socat_dir"; done
fi

images="$CROSD_CACHE/images/busybox"
[ -f "$images/streams/v1/images.json" ] || "$BIN/crosimg" build-container busybox --out "$images" >/dev/null
exec 3< <("$BIN/crosimg" serve "$images" --listen 127.0.0.1:0 2>/dev/null)
server_pid=$!
read -r -t 20 served <&3 || die "crosimg serve did not start"
url=$(printf '%s\n' "$served" | grep -o 'http://[^ ]*' | head -n1); url="${url%/}"
# --no-network: the forwarder needs no VM network; vsock is all it uses.
start_crosd "$state" "$run" --no-network
trap '"$BIN/vmc" stop termina >/dev/null 2>&1 || true; kill "$CROSD_PID" "$server_pid" 2>/dev/null || true' EXIT

"$BIN/vmc" start --no-shell --mem 2048 --timeout 300 termina >/dev/null 2>&1 || die "vmc start failed"
"$BIN/vmc" container --no-shell --user bench termina c0 "$url" busybox >/dev/null 2>&1 || die "vmc container failed"
shared=$("$BIN/vmc" share termina "$socat_dir" | grep -o '/mnt/shared/[^ ]*' | head -n1)
[ -n "$shared" ] || die "vmc share of $socat_dir failed"
uds=$("$BIN/vmc" list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["vms"][0]["vsock_socket"])')
vm() { "$BIN/vsh" --vm_name termina -- "$@"; }
ct() { "$BIN/vsh" --vm_name termina --target_container c0 --user root -- "$@"; }
ct_pid=$(vm env LXD_DIR=/mnt/stateful/lxd lxc list c0 --format csv -c p | tr -d '\r\n ')
[ -n "$ct_pid" ] || die "no pid for container c0"

# A one-shot server on PORT in c0 that sends MIB MiB and closes.
serve() {
    ct sh -c "setsid nc -l -p $1 -e dd if=/dev/zero bs=65536 count=$((mib * 16)) </dev/null >/dev/null 2>&1 &"
}

# Reads to EOF from `tcp PORT` (127.0.0.1) or `vsock UDS:PORT` (hybrid vsock CONNECT); prints
# "BYTES SECONDS".
read_all() {
    python3 - "$1" "$2" <<'EOF'
import socket, sys, time
mode, addr = sys.argv[1], sys.argv[2]
t0 = time.monotonic()
if mode == "tcp":
    s = socket.create_connection(("127.0.0.1", int(addr)))
else:
    # socat in the guest may not listen yet (it starts over 9P under TCG): the VMM then closes
    # the connection. Try again for a while; the time counts from the attempt that connected.
    path, port = addr.rsplit(":", 1)
    for attempt in range(100):
        t0 = time.monotonic()
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        s.sendall(f"CONNECT {port}\n".encode())
        line = b""
        while not line.endswith(b"\n"):
            c = s.recv(1)
            if not c:
                break
            line += c
        if line.startswith(b"OK "):
            break
        s.close()
        time.sleep(0.2)
    else:
        sys.exit(f"CONNECT {port} never answered OK (last: {line!r})")
buf = bytearray(1 << 20)
n = 0
while True:
    k = s.recv_into(buf)
    if k == 0:
        break
    n += k
print(n, f"{time.monotonic() - t0:.3f}")
EOF
}

rate() { awk -v b="$1" -v s="$2" 'BEGIN {printf "%.1f", b / 1048576 / s}'; }
want=$((mib * 1048576))
ours=() theirs=()
for i in $(seq "$runs"); do
    port=$((21000 + i))
    serve "$port"
    for _ in $(seq 100); do
        "$BIN/vmc" port-forward list termina | grep -q "listening on 127.0.0.1:$port" && break
        sleep 0.2
    done
    read -r n s < <(read_all tcp "$port")
    [ "$n" -eq "$want" ] || die "ours: $n bytes of $want"
    ours+=("$(rate "$n" "$s")")
    log "run $i: ours $(rate "$n" "$s") MiB/s"

    port=$((22000 + i))
    serve "$port"
    sleep 1
    vm sh -c "setsid nsenter -t $ct_pid -n env LD_LIBRARY_PATH=$shared/usr/lib/x86_64-linux-gnu \
        $shared/usr/bin/socat ${SOCAT_ARGS:-} VSOCK-LISTEN:5555,reuseaddr TCP:127.0.0.1:$port </dev/null >/dev/null 2>/tmp/socat.err &"
    sleep 1
    read -r n s < <(read_all vsock "$uds:5555" || vm cat /tmp/socat.err >&2)
    [ "$n" -eq "$want" ] || die "socat: $n bytes of $want"
    theirs+=("$(rate "$n" "$s")")
    log "run $i: socat $(rate "$n" "$s") MiB/s"
done

med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "forwarded port, $mib MiB from a busybox container in termina (QEMU/TCG, 2 vCPUs) to the host, $runs runs"
printf '%-52s %s\n' "ours (127.0.0.1 -> chunneld -> vsock -> garcon), MiB/s" "${ours[*]}"
printf '%-52s %s\n' "socat ${SOCAT_ARGS:+$SOCAT_ARGS }(vsock -> socat VSOCK-LISTEN in c0's netns), MiB/s" "${theirs[*]}"
printf '%-52s %s / %s = %s\n' "  median ours / socat" "$(med "${ours[@]}")" "$(med "${theirs[@]}")" \
    "$(awk -v a="$(med "${ours[@]}")" -v b="$(med "${theirs[@]}")" 'BEGIN {printf "%.2fx", a / b}')"
