#!/usr/bin/env python3
"""Writes the committed seed corpus of every fuzz target: fuzz/seeds/<target>/ and
vmm/fuzz/seeds/<target>/. Each seed is a small valid input (a well-formed frame, request,
descriptor chain or register sequence), so the fuzzer starts past the first checks.

    tools/scripts/fuzz-seeds.py          # rewrite the seeds (deterministic)

The encodings here follow the Rust types by hand: postcard (LEB128 varints, length-prefixed
strings and vectors, enum variant index then fields), the u32 LE frame length of
messages/src/framing.rs, virtio split rings, the virtio-mmio registers. Variant indices are
the declaration order of the enums in messages/src/.
"""

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


# --- postcard -------------------------------------------------------------------------------

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def zigzag(n):
    return varint((n << 1) ^ (n >> 63))


def string(s):
    b = s.encode()
    return varint(len(b)) + b


def bytes_(b):
    return varint(len(b)) + b


def option(v):
    return b"\x00" if v is None else b"\x01" + v


def boolean(v):
    return b"\x01" if v else b"\x00"


def vec(items):
    return varint(len(items)) + b"".join(items)


def frame(payload):
    return struct.pack("<I", len(payload)) + payload


PROTOCOL_VERSION = 1


def addr(actor, vm=None, container=None):
    return string(actor) + option(vm and string(vm)) + option(container and string(container))


def hello(a, version=PROTOCOL_VERSION):
    return varint(version) + a


# Body variant indices (messages/src/envelope.rs).
BODY_CONCIERGE = 4
BODY_MAITRED = 14
BODY_MAITRED_REPLY = 15
BODY_MAITRED_EVENT = 16
BODY_ERROR = 25


def envelope(body, eid=1, trace=7, frm=None, to=None, reply_to=None):
    frm = frm or addr("client-1")
    to = to or addr("concierge")
    return (varint(PROTOCOL_VERSION) + varint(eid) + varint(trace) + frm + to
            + option(None if reply_to is None else varint(reply_to)) + body)


# MaitredRequest variants (messages/src/maitred.rs).
def m_mount(source, target, fstype, flags=0, options="", create=False, mkfs=False):
    return (varint(1) + string(source) + string(target) + string(fstype) + varint(flags)
            + string(options) + boolean(create) + boolean(mkfs))


def m_launch(argv, env=(), respawn=False, wait=False):
    return (varint(5) + vec([string(a) for a in argv])
            + vec([string(k) + string(v) for k, v in env]) + boolean(respawn) + boolean(wait))


MAITRED_REQUESTS = {
    "configure_network": varint(0) + string("10.0.0.2") + string("255.255.255.0") + string("10.0.0.1"),
    "mount": m_mount("/dev/vdb", "/mnt/stateful", "btrfs", flags=6, options="compress=zstd"),
    "mount9p": varint(2) + varint(5000) + string("/mnt/shared"),
    "start_termina": varint(3) + string("") + boolean(True),
    "shutdown": varint(4),
    "launch": m_launch(["/bin/true", "x"], [("LANG", "C")], wait=True),
    "set_time": varint(6) + varint(1_700_000_000) + varint(5),
    "set_time_bad": varint(6) + varint(1) + varint(2_000_000_000),
    "set_timezone": varint(7) + string("Europe/Paris"),
    "kernel_version": varint(8),
    "resize": varint(9) + varint(1 << 30),
    "resize_status": varint(10),
    "available_space": varint(11),
    "minimum_size": varint(12),
}

HOST = addr("concierge")
MAITRED = addr("maitred", "termina")


def maitred_env(req, eid):
    return envelope(bytes([BODY_MAITRED]) + req, eid=eid, frm=HOST, to=MAITRED)


def envelope_seeds():
    seeds = {
        "hello": hello(addr("concierge")),
        "hello_in_container": hello(addr("garcon", "termina", "penguin")),
        "hello_old_version": hello(addr("vmc"), version=0),
        "list_vms": envelope(bytes([BODY_CONCIERGE]) + varint(6)),
        "get_vm_info": envelope(bytes([BODY_CONCIERGE]) + varint(5) + string("termina") + string("1000")),
        "vm_ready": envelope(bytes([BODY_MAITRED_EVENT]) + varint(0), frm=MAITRED, to=HOST),
        "maitred_reply": envelope(bytes([BODY_MAITRED_REPLY]) + varint(0), reply_to=3),
        # CrosError { kind: ErrorKind (variant 0), message }
        "error": envelope(bytes([BODY_ERROR]) + varint(0) + string("no such vm")),
    }
    # A whole stream: Hello, then two envelopes.
    seeds["stream"] = (frame(seeds["hello"]) + frame(seeds["list_vms"])
                       + frame(seeds["get_vm_info"]))
    # crosmsg's JSON bodies: the first byte picks the actor (2: concierge, 6: maitred).
    seeds["json_concierge"] = b"\x02" + b'{"GetVmInfo":{"name":"termina"}}'
    seeds["json_maitred"] = b"\x06" + b'{"SetTimezone":{"name":"UTC"}}'
    return seeds


def trace_seeds():
    header = b"CROSTRC\x00" + struct.pack("<HH", 1, PROTOCOL_VERSION)
    recs = []
    for i, (frm, to, name, env) in enumerate([
        (addr("client-1"), HOST, "Concierge::ListVms",
         envelope(bytes([BODY_CONCIERGE]) + varint(6))),
        (HOST, MAITRED, "Maitred::GetKernelVersion",
         maitred_env(MAITRED_REQUESTS["kernel_version"], 2)),
    ]):
        rec = (varint(1000 * (i + 1)) + varint(1_700_000_000_000_000_000 + i) + frm + to
               + string(name) + bytes_(env))
        recs.append(frame(rec))
    return {
        "two_records": header + b"".join(recs),
        "empty": header,
        "truncated": header + recs[0][:-3],
    }


def vshd_seeds():
    def setup(user="", argv=(), env=(), nopty=False, rows=24, cols=80, target="/vm_shell"):
        return frame(string(target) + string(user)
                     + vec([string(k) + string(v) for k, v in env])
                     + vec([string(a) for a in argv]) + string("/")
                     + varint(rows) + varint(cols) + boolean(nopty))

    stdin = lambda data: frame(varint(0) + bytes_(data))
    resize = lambda r, c: frame(varint(1) + varint(r) + varint(c))
    signal = lambda s: frame(varint(2) + varint(s))
    return {
        "login_shell": setup() + stdin(b"echo hi\n") + resize(40, 120) + stdin(b""),
        "command": setup("chronos", ["ls", "-l"], [("LANG", "C")], nopty=True)
        + stdin(b"x") + signal(1) + signal(3),
        "unknown_user": setup("nobody"),
        "wrong_target": setup(target="penguin"),
        "bad_resize": setup() + resize(0, 80),
    }


def maitred_seeds():
    start = frame(hello(HOST))
    seeds = {}
    for i, (name, req) in enumerate(sorted(MAITRED_REQUESTS.items())):
        seeds[name] = start + frame(maitred_env(req, i + 1))
    seeds["all_side_effect_free"] = start + b"".join(
        frame(maitred_env(MAITRED_REQUESTS[n], i + 1))
        for i, n in enumerate(["kernel_version", "set_timezone", "configure_network", "mount9p",
                               "set_time_bad", "available_space", "resize_status", "shutdown"]))
    seeds["not_for_maitred"] = start + frame(envelope(bytes([BODY_CONCIERGE]) + varint(6)))
    seeds["malformed_then_valid"] = (start + frame(b"\xff\xff\xff")
                                     + frame(maitred_env(MAITRED_REQUESTS["kernel_version"], 2)))
    return seeds


def zstd(data, *args):
    return subprocess.run(["zstd", "-q", "-c", *args], input=data, stdout=subprocess.PIPE,
                          check=True).stdout


def import_seeds():
    disk = b"\x00" * 4096 + bytes(range(256)) * 16 + b"\x00" * 8192
    good = zstd(disk, "-1", "--check")
    return {
        "disk": good,
        "no_checksum": zstd(disk, "-1", "--no-check"),
        "two_frames": good + zstd(b"tail" * 100, "-1"),
        "truncated": good[: len(good) // 2],
        "trailing": good + b"garbage",
        "empty_disk": zstd(b""),
    }


def manifest_seeds():
    def manifest(files, fmt=1):
        return json.dumps({"format": fmt, "name": "termina", "version": "1.0",
                           "kernel_release": "6.6.0", "files": files}, indent=2).encode()

    # The harness's component directory holds vm_kernel ("kernel") and an empty vm_rootfs.img.
    sha = lambda b: hashlib.sha256(b).hexdigest()
    return {
        "valid": manifest([{"name": "vm_kernel", "size": 6, "sha256": sha(b"kernel")},
                           {"name": "vm_rootfs.img", "size": 0, "sha256": sha(b"")}]),
        "tampered": manifest([{"name": "vm_kernel", "size": 6, "sha256": sha(b"kernal")}]),
        "missing_file": manifest([{"name": "vm_tools.img", "size": 1, "sha256": "00"}]),
        "path_name": manifest([{"name": "../etc/passwd", "size": 1, "sha256": "00"}]),
        "future_format": manifest([], fmt=2),
    }


def op_record_seeds():
    def record(state, partial):
        return json.dumps({"info": {"uuid": "0b0b8c8e-0d5e-4b6f-9b63-1d2f3b4c5d6e",
                                    "kind": "Import", "name": "termina",
                                    "path": "/home/chronos/termina.zst", "state": state,
                                    "percent": 42, "processed_bytes": 1 << 20,
                                    "total_bytes": 1 << 30, "message": ""},
                           "partial_files": partial}, indent=2).encode()

    return {
        "running": record("Running", ["/var/lib/crosd/disks/termina.img.partial"]),
        "failed": record("Failed", []),
        "done": record("Done", []),
    }


# --- virtio ---------------------------------------------------------------------------------

F_NEXT, F_WRITE = 1, 2


class Memory:
    def __init__(self):
        self.buf = bytearray()

    def put(self, addr, data):
        end = addr + len(data)
        if len(self.buf) < end:
            self.buf.extend(b"\x00" * (end - len(self.buf)))
        self.buf[addr:end] = data


def ring(mem, desc, avail, chains, first_desc=0):
    """Writes `chains` (lists of (addr, len, flags)) to a split queue; returns the next index."""
    idx = first_desc
    heads = []
    for chain in chains:
        heads.append(idx)
        for j, (a, n, flags) in enumerate(chain):
            nxt = idx + 1 if j + 1 < len(chain) else 0
            flags |= F_NEXT if j + 1 < len(chain) else 0
            mem.put(desc + 16 * idx, struct.pack("<QIHH", a, n, flags, nxt))
            idx += 1
    mem.put(avail, struct.pack("<HH", 0, len(heads)))
    mem.put(avail + 4, b"".join(struct.pack("<H", h) for h in heads))
    return idx


BLK_T_IN, BLK_T_OUT, BLK_T_FLUSH, BLK_T_GET_ID, BLK_T_DISCARD, BLK_T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13


def blk_header(mem, addr, kind, sector):
    mem.put(addr, struct.pack("<IIQ", kind, 0, sector))


def blk_requests(mem, base):
    """Six requests with their buffers from `base`; returns the chains."""
    chains = []
    for i, (kind, sector, data) in enumerate([
        (BLK_T_IN, 0, [(512, F_WRITE), (512, F_WRITE)]),
        (BLK_T_OUT, 4, [(1024, 0)]),
        (BLK_T_FLUSH, 0, []),
        (BLK_T_GET_ID, 0, [(20, F_WRITE)]),
        (BLK_T_DISCARD, 0, [(16, 0)]),
        (BLK_T_WRITE_ZEROES, 0, [(16, 0)]),
    ]):
        at = base + 0x800 * i
        blk_header(mem, at, kind, sector)
        chain = [(at, 16, 0)]
        off = at + 0x10
        for n, flags in data:
            chain.append((off, n, flags))
            off += n
        chain.append((at + 0x7F0, 1, F_WRITE))
        chains.append(chain)
    # Discard / write-zeroes segments: sector 8, 4 sectors; the second with UNMAP.
    mem.put(base + 0x800 * 4 + 0x10, struct.pack("<QII", 8, 4, 0))
    mem.put(base + 0x800 * 5 + 0x10, struct.pack("<QII", 8, 4, 1))
    return chains


def blk_seeds():
    mem = Memory()
    ring(mem, 0x0, 0x100, blk_requests(mem, 0x1000)[:4])
    mem2 = Memory()
    ring(mem2, 0x0, 0x100, blk_requests(mem2, 0x1000)[4:])
    mem3 = Memory()
    # No status byte, and a header that is device-writable.
    ring(mem3, 0x0, 0x100, [[(0x1000, 16, 0), (0x1010, 512, F_WRITE)],
                            [(0x2000, 16, F_WRITE), (0x2010, 1, F_WRITE)]])
    return {
        "read_write_flush_id": b"\x00" + bytes(mem.buf),
        "discard_zeroes_event_idx": b"\x02" + bytes(mem2.buf),
        "read_only_malformed": b"\x01" + bytes(mem3.buf),
    }


VSOCK_OP_REQUEST, VSOCK_OP_RW = 1, 5


def vsock_header(dst_port, op, length=0, src_port=1024):
    return struct.pack("<QQIIIHHIII", 3, 2, src_port, dst_port, length, 1, op, 0, 65536, 0)


def vsock_memory(mem, txq, rxq):
    """A tx queue with a connect request and data to host port 8888, rx buffers to answer."""
    mem.put(0x3000, vsock_header(8888, VSOCK_OP_REQUEST))
    mem.put(0x3100, vsock_header(8888, VSOCK_OP_RW, length=5))
    mem.put(0x3140, b"hello")
    ring(mem, txq[0], txq[1], [[(0x3000, 44, 0)], [(0x3100, 44, 0), (0x3140, 5, 0)]])
    ring(mem, rxq[0], rxq[1], [[(0x4000, 44, F_WRITE), (0x4100, 256, F_WRITE)],
                               [(0x4200, 300, F_WRITE)]])


def vsock_packet_seeds():
    mem = Memory()
    vsock_memory(mem, (0x0, 0x100), (0x400, 0x500))
    return {"connect_and_data": bytes(mem.buf)}


# virtio-mmio registers (vmm/src/devices/virtio/mmio.rs).
R = dict(DEVICE_FEATURES=0x10, DEVICE_FEATURES_SEL=0x14, DRIVER_FEATURES=0x20,
         DRIVER_FEATURES_SEL=0x24, QUEUE_SEL=0x30, QUEUE_NUM_MAX=0x34, QUEUE_NUM=0x38,
         QUEUE_READY=0x44, QUEUE_NOTIFY=0x50, INTERRUPT_STATUS=0x60, INTERRUPT_ACK=0x64,
         STATUS=0x70, QUEUE_DESC_LOW=0x80, QUEUE_DRIVER_LOW=0x90, QUEUE_DEVICE_LOW=0xA0,
         CONFIG_GENERATION=0xFC, CONFIG=0x100)


def op_read(offset, width=4):
    return bytes([{4: 0, 1: 2, 2: 4, 8: 6}[width]]) + struct.pack("<HI", offset, 0)


def op_write(offset, value, width=4):
    return bytes([{4: 0, 1: 2, 2: 4, 8: 6}[width] | 1]) + struct.pack("<HI", offset, value)


def driver_init(queues):
    """A Linux-like virtio-mmio probe: features, queue setup (queue q at q * 0x400), DRIVER_OK."""
    ops = [op_write(R["STATUS"], 0), op_write(R["STATUS"], 1), op_write(R["STATUS"], 3),
           op_write(R["DEVICE_FEATURES_SEL"], 0), op_read(R["DEVICE_FEATURES"]),
           op_write(R["DEVICE_FEATURES_SEL"], 1), op_read(R["DEVICE_FEATURES"]),
           op_write(R["DRIVER_FEATURES_SEL"], 0), op_write(R["DRIVER_FEATURES"], 0),
           op_write(R["DRIVER_FEATURES_SEL"], 1), op_write(R["DRIVER_FEATURES"], 1),
           op_write(R["STATUS"], 11), op_read(R["STATUS"])]
    for q in range(queues):
        base = 0x400 * q
        ops += [op_write(R["QUEUE_SEL"], q), op_read(R["QUEUE_NUM_MAX"]),
                op_write(R["QUEUE_NUM"], 16), op_write(R["QUEUE_DESC_LOW"], base),
                op_write(R["QUEUE_DRIVER_LOW"], base + 0x100),
                op_write(R["QUEUE_DEVICE_LOW"], base + 0x200), op_write(R["QUEUE_READY"], 1)]
    ops += [op_write(R["STATUS"], 15), op_read(R["CONFIG"], 8), op_read(R["CONFIG"] + 8, 1),
            op_read(R["CONFIG_GENERATION"])]
    return ops


def mmio_seeds():
    end = b"\xff" + b"\x00" * 6
    irq = [op_read(R["INTERRUPT_STATUS"]), op_write(R["INTERRUPT_ACK"], 3)]

    vsock = Memory()
    vsock_memory(vsock, (0x400, 0x500), (0x0, 0x100))  # queue 0 is rx, queue 1 tx
    vsock_ops = driver_init(3) + [op_write(R["QUEUE_NOTIFY"], 1),
                                  op_write(R["QUEUE_NOTIFY"], 0)] + irq

    blk = Memory()
    ring(blk, 0x0, 0x100, blk_requests(blk, 0x1000)[:4])
    blk_ops = driver_init(1) + [op_write(R["QUEUE_NOTIFY"], 0)] + irq

    rng = Memory()
    ring(rng, 0x0, 0x100, [[(0x1000, 64, F_WRITE)], [(0x2000, 16, F_WRITE), (0x2010, 16, F_WRITE)]])
    rng_ops = driver_init(1) + [op_write(R["QUEUE_NOTIFY"], 0)] + irq

    odd = [op_read(0x2), op_write(0x71, 1, 1), op_read(R["CONFIG"] + 0x3F, 2),
           op_write(R["CONFIG"], 0xFFFFFFFF), op_write(R["QUEUE_NOTIFY"], 7),
           op_write(R["STATUS"], 4), op_write(R["STATUS"], 1), op_write(R["QUEUE_SEL"], 9),
           op_write(R["QUEUE_NUM"], 0xFFFF)]
    return {
        "vsock_probe_and_notify": b"\x00" + b"".join(vsock_ops) + end + bytes(vsock.buf),
        "blk_probe_and_notify": b"\x01" + b"".join(blk_ops) + end + bytes(blk.buf),
        "blk_read_only": b"\x81" + b"".join(blk_ops) + end + bytes(blk.buf),
        "rng_probe_and_notify": b"\x02" + b"".join(rng_ops) + end + bytes(rng.buf),
        "odd_accesses": b"\x01" + b"".join(odd) + end,
    }


def write(dir_, seeds):
    shutil.rmtree(dir_, ignore_errors=True)
    os.makedirs(dir_)
    for name, data in seeds.items():
        with open(os.path.join(dir_, name), "wb") as f:
            f.write(data)


def main():
    top = os.path.join(ROOT, "fuzz", "seeds")
    vmm = os.path.join(ROOT, "vmm", "fuzz", "seeds")
    write(os.path.join(top, "envelope"), envelope_seeds())
    write(os.path.join(top, "trace_reader"), trace_seeds())
    write(os.path.join(top, "vshd_client"), vshd_seeds())
    write(os.path.join(top, "maitred_requests"), maitred_seeds())
    write(os.path.join(top, "disk_import"), import_seeds())
    write(os.path.join(top, "manifest_json"), manifest_seeds())
    write(os.path.join(top, "op_record_json"), op_record_seeds())
    write(os.path.join(vmm, "vsock_packet"), vsock_packet_seeds())
    write(os.path.join(vmm, "blk_chain"), blk_seeds())
    write(os.path.join(vmm, "mmio_transport"), mmio_seeds())
    return 0


if __name__ == "__main__":
    sys.exit(main())
