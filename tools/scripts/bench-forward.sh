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
#   ssh -L (Lima's forwarder design): the host's OpenSSH client `ssh -N -L 127.0.0.1:P:127.0.0.1:PORT`
#          over the VM's network (our virtio-net, the VM's /30, the route to the containers)
#          to Debian's dropbear 2022.83 in the VM, in the container's network namespace, its
#          default ciphers and windows.
# socat and dropbear are not in the termina image: their .debs and the libraries termina lacks
# are fetched with apt-get download, unpacked on the host and shared into the VM (`vmc share`),
# run there with LD_LIBRARY_PATH. Once built and fetched, the benchmark re-runs itself in a
# network namespace of its own (only its loopback up), where crosd runs with `--network` (the
# tap, routes and nft rules live and die in that namespace, names go to a hosts file of the
# run's): nothing is sent off the machine.
# Usage: tools/scripts/bench-forward.sh [RUNS] [MIB]   (CROSD_PROFILE=debug: dev builds;
# SOCAT_ARGS="-b 65536": options for socat, e.g. its buffer size [default: none, 8 KiB])
set -euo pipefail
self=$(realpath "$0")
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
runs="${1:-3}" mib="${2:-1024}"

work="$CROSD_CACHE/bench-forward"
state="$work/state" run="$work/run" tools_dir="$work/tools" key="$work/id_ed25519"
images="$CROSD_CACHE/images/busybox"
export CROSD_SOCKET="$run/crosd.sock"
if [ -z "${CROSD_BENCH_NETNS:-}" ]; then
    # Set-up, with the host's network (packages, crates, Debian's archive): done once, here.
    ensure_host_packages openssh-client
    rm -rf "$run" "$state/disks" && mkdir -p "$state" "$run"
    build_release_and_component "$state"
    if [ ! -x "$tools_dir/usr/bin/socat" ] || [ ! -x "$tools_dir/usr/sbin/dropbear" ]; then
        log "fetching socat and dropbear with the libraries termina lacks (apt-get download)"
        debs="$work/debs"
        rm -rf "$debs" "$tools_dir" && mkdir -p "$debs" "$tools_dir"
        (cd "$debs" && apt-get download socat libwrap0 libnsl2 dropbear-bin libtomcrypt1 libtommath1 \
            >/dev/null 2>&1) || die "apt-get download of socat and dropbear failed"
        for d in "$debs"/*.deb; do dpkg-deb -x "$d" "$tools_dir"; done
    fi
    [ -f "$key" ] || ssh-keygen -q -t ed25519 -N '' -f "$key" || die "ssh-keygen failed"
    [ -f "$images/streams/v1/images.json" ] || "$BIN/crosimg" build-container busybox --out "$images" >/dev/null
    log "re-running in a network namespace of its own"
    # The child finds the built programs through BIN (set by build_release_and_component).
    CROSD_BENCH_NETNS=1 BIN="$BIN" exec unshare --net -- bash -c 'ip link set lo up && exec "$@"' _ "$self" "$@"
fi
exec 3< <("$BIN/crosimg" serve "$images" --listen 127.0.0.1:0 2>/dev/null)
server_pid=$!
read -r -t 20 served <&3 || die "crosimg serve did not start"
url=$(printf '%s\n' "$served" | grep -o 'http://[^ ]*' | head -n1); url="${url%/}"
# With its network: the forwarder needs only vsock, ssh -L needs the VM's network.
start_crosd "$state" "$run" --network --hosts-file "$run/hosts"
ssh_pid=""
trap '[ -z "$ssh_pid" ] || kill "$ssh_pid" 2>/dev/null; "$BIN/vmc" stop termina >/dev/null 2>&1 || true; kill "$CROSD_PID" "$server_pid" 2>/dev/null || true' EXIT

"$BIN/vmc" start --no-shell --mem 2048 --timeout 300 termina >/dev/null 2>&1 || die "vmc start failed"
"$BIN/vmc" container --no-shell --user bench termina c0 "$url" busybox >/dev/null 2>&1 || die "vmc container failed"
shared=$("$BIN/vmc" share termina "$tools_dir" | grep -o '/mnt/shared/[^ ]*' | head -n1)
[ -n "$shared" ] || die "vmc share of $tools_dir failed"
uds=$("$BIN/vmc" list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["vms"][0]["vsock_socket"])')
vm() { "$BIN/vsh" --vm_name termina -- "$@"; }
ct() { "$BIN/vsh" --vm_name termina --target_container c0 --user root -- "$@"; }
ct_pid=$(vm env LXD_DIR=/mnt/stateful/lxd lxc list c0 --format csv -c p 2>/dev/null | grep -o '^[0-9]*$' | head -n1)
[ -n "$ct_pid" ] || die "no pid for container c0"
ct_ip=""
for _ in $(seq 60); do
    ct_ip=$(vm env LXD_DIR=/mnt/stateful/lxd lxc list c0 --format csv -c 4 2>/dev/null | grep -o '^[0-9.]*' | head -n1)
    [ -n "$ct_ip" ] && break
    sleep 1
done
[ -n "$ct_ip" ] || die "no IPv4 address for container c0 from LXD's dnsmasq"
log "c0: pid $ct_pid, address $ct_ip (host route: $(ip -4 route get "$ct_ip" 2>&1 | head -n1))"
libs="$shared/usr/lib/x86_64-linux-gnu"

# dropbear in c0's network namespace, with root's authorized key on a tmpfs over the VM's
# read-only /root (a mount namespace of its own).
vm sh -c "setsid unshare -m sh -c 'mount -t tmpfs -o mode=700 tmpfs /root && mkdir -m 700 /root/.ssh &&
    echo \"$(cat "$key.pub")\" > /root/.ssh/authorized_keys &&
    LD_LIBRARY_PATH=$libs $shared/usr/bin/dropbearkey -t ed25519 -f /tmp/dropbear_host_key >/dev/null &&
    exec nsenter -t $ct_pid -n env LD_LIBRARY_PATH=$libs $shared/usr/sbin/dropbear -F -E -s -p 2222 \
        -r /tmp/dropbear_host_key' </dev/null >/dev/null 2>/tmp/dropbear.err &"
ssh_opts=(-i "$key" -p 2222 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
    -o BatchMode=yes -o ExitOnForwardFailure=yes -o ConnectTimeout=5)
for _ in $(seq 30); do
    timeout 20 ssh "${ssh_opts[@]}" "root@$ct_ip" true </dev/null 2>/dev/null && break
    sleep 1
done
timeout 20 ssh "${ssh_opts[@]}" "root@$ct_ip" true </dev/null || { vm cat /tmp/dropbear.err >&2; die "ssh to dropbear in c0 ($ct_ip) failed"; }

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
ours=() theirs=() sshs=()
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
    vm sh -c "setsid nsenter -t $ct_pid -n env LD_LIBRARY_PATH=$libs \
        $shared/usr/bin/socat ${SOCAT_ARGS:-} VSOCK-LISTEN:5555,reuseaddr TCP:127.0.0.1:$port </dev/null >/dev/null 2>/tmp/socat.err &"
    sleep 1
    read -r n s < <(read_all vsock "$uds:5555" || vm cat /tmp/socat.err >&2)
    [ "$n" -eq "$want" ] || die "socat: $n bytes of $want"
    theirs+=("$(rate "$n" "$s")")
    log "run $i: socat $(rate "$n" "$s") MiB/s"

    port=$((23000 + i)) local_port=$((24000 + i))
    serve "$port"
    sleep 1
    ssh "${ssh_opts[@]}" -N -L "127.0.0.1:$local_port:127.0.0.1:$port" "root@$ct_ip" </dev/null &
    ssh_pid=$!
    for _ in $(seq 100); do
        python3 -c "import socket,sys; socket.socket().bind(('127.0.0.1', $local_port))" 2>/dev/null || break
        sleep 0.1
    done
    read -r n s < <(read_all tcp "$local_port")
    kill "$ssh_pid" 2>/dev/null; wait "$ssh_pid" 2>/dev/null || true; ssh_pid=""
    [ "$n" -eq "$want" ] || die "ssh -L: $n bytes of $want"
    sshs+=("$(rate "$n" "$s")")
    log "run $i: ssh -L $(rate "$n" "$s") MiB/s"
done

med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "forwarded port, $mib MiB from a busybox container in termina (QEMU/TCG, 2 vCPUs) to the host, $runs runs"
printf '%-52s %s\n' "ours (127.0.0.1 -> chunneld -> vsock -> garcon), MiB/s" "${ours[*]}"
printf '%-52s %s\n' "socat ${SOCAT_ARGS:+$SOCAT_ARGS }(vsock -> socat VSOCK-LISTEN in c0's netns), MiB/s" "${theirs[*]}"
printf '%-52s %s\n' "ssh -L (OpenSSH client -> dropbear in c0's netns over the VM network), MiB/s" "${sshs[*]}"
ratio() { awk -v a="$(med "${ours[@]}")" -v b="$1" 'BEGIN {printf "%.2fx", a / b}'; }
printf '%-52s %s / %s = %s\n' "  median ours / socat" "$(med "${ours[@]}")" "$(med "${theirs[@]}")" "$(ratio "$(med "${theirs[@]}")")"
printf '%-52s %s / %s = %s\n' "  median ours / ssh -L" "$(med "${ours[@]}")" "$(med "${sshs[@]}")" "$(ratio "$(med "${sshs[@]}")")"
