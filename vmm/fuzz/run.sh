#!/bin/sh
# Fuzzes the device models (vsock packets, virtio-blk and virtio-net chains, the virtio-mmio
# transport) for N seconds each (default 60); tools/scripts/fuzz.sh runs every target of the
# project.
#   vmm/fuzz/run.sh [SECONDS]
exec "$(dirname "$0")/../../tools/scripts/fuzz.sh" "${1:-60}" vsock_packet blk_chain net_chain mmio_transport
