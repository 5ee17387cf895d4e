//! postcard encode/decode of a typical envelope (a StartVm request and a VmInfo reply).

use cros_messages::concierge::{ConciergeReply, ConciergeRequest, StartVm, VmInfo, VmStatus};
use cros_messages::framing::{decode, encode_frame};
use cros_messages::{Addr, Body, Envelope};

fn main() {
    divan::main();
}

fn start_vm() -> Envelope {
    Envelope::new(
        42,
        7,
        Addr::client(3),
        Addr::host("concierge"),
        Body::Concierge(ConciergeRequest::StartVm(StartVm {
            owner_id: "user".into(),
            kernel_params: vec!["quiet".into()],
            ..StartVm::named("termina")
        })),
    )
}

fn vm_info() -> Envelope {
    start_vm().reply(
        43,
        Body::ConciergeReply(ConciergeReply::VmInfo {
            vm_info: VmInfo {
                name: "termina".into(),
                owner_id: "user".into(),
                cid: 3,
                pid: 12345,
                ipv4: "100.115.92.2".into(),
                seneschal_handle: 1,
                status: VmStatus::Running,
                hypervisor: "qemu".into(),
                detail: String::new(),
                vsock_socket: "/run/crosd/vm.3/vsock.sock".into(),
            },
        }),
    )
}

#[divan::bench(args = ["StartVm", "VmInfo"])]
fn encode(b: divan::Bencher, which: &str) {
    let env = if which == "StartVm" {
        start_vm()
    } else {
        vm_info()
    };
    b.bench(|| encode_frame(divan::black_box(&env)).expect("encode"));
}

#[divan::bench(args = ["StartVm", "VmInfo"])]
fn decode_envelope(b: divan::Bencher, which: &str) {
    let env = if which == "StartVm" {
        start_vm()
    } else {
        vm_info()
    };
    let frame = encode_frame(&env).expect("encode");
    b.bench(|| decode::<Envelope>(divan::black_box(&frame[4..])).expect("decode"));
}
