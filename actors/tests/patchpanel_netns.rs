//! patchpanel against the real kernel: taps, addresses and nftables rules, all inside a network
//! namespace this test makes (issue 14's hygiene rule: the root namespace's network is never
//! touched; the namespace and everything in it goes when the test's thread does). Needs root.

#[path = "../../vmm/tests/support/netns.rs"]
mod netns;

use actix::Actor;
use cros_actors::bus::{Deliver, Published};
use cros_actors::config::NetworkConfig;
use cros_actors::patchpanel::{Patchpanel, SharedState, nft, pool::Pool};
use cros_messages::cicerone::CiceroneEvent;
use cros_messages::patchpanel::{PatchpanelReply, PatchpanelRequest};
use cros_messages::{Addr, Body, Envelope};
use std::process::Command;
use std::time::Duration;

fn ask(p: &actix::Addr<Patchpanel>, req: PatchpanelRequest) -> impl Future<Output = Body> {
    let env = Envelope::new(
        1,
        1,
        Addr::client(1),
        Addr::host("patchpanel"),
        Body::Patchpanel(req),
    );
    let sent = p.send(Deliver::new(env, Duration::from_secs(30)));
    async move { sent.await.expect("patchpanel answers") }
}

/// `nft list table inet crosd`, or `None` when there is no such table.
fn crosd_table() -> Option<String> {
    let out = Command::new("nft")
        .args(["list", "table", "inet", "crosd"])
        .output()
        .expect("cannot run nft: install nftables");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn addresses(dev: &str) -> String {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show", "dev", dev])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn routes() -> String {
    let out = Command::new("ip").args(["-4", "route"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const USER_HOSTS: &str = "127.0.0.1 localhost\n# the user's own\n";

/// Publishes cicerone's ContainerStarted for `container` in termina at `ipv4` to `p`.
fn started(p: &actix::Addr<Patchpanel>, container: &str, ipv4: &str) {
    let event = Body::CiceroneEvent(CiceroneEvent::ContainerStarted {
        vm: "termina".into(),
        container: container.into(),
        username: String::new(),
        homedir: String::new(),
        ipv4: ipv4.into(),
    });
    let env = Envelope::new(
        1,
        1,
        Addr::host("cicerone"),
        Addr::host("patchpanel"),
        event,
    );
    p.do_send(Published(env));
}

/// The hosts file once patchpanel handled what was sent before (a request answered after).
async fn hosts_text(p: &actix::Addr<Patchpanel>, hosts: &tempfile::NamedTempFile) -> String {
    ask(p, PatchpanelRequest::ListNetworks {}).await;
    std::fs::read_to_string(hosts.path()).unwrap()
}

fn exists(dev: &str) -> bool {
    cros_actors::patchpanel::tap::exists(dev)
}

#[actix::test]
async fn a_vms_tap_and_rules_come_and_go_and_leftovers_are_cleared() {
    netns::enter_new_netns();
    // What a killed crosd leaves behind: a tap and the table.
    netns::ip(&["tuntap", "add", "dev", "crosdtap9", "mode", "tap"]);
    nft::apply("table inet crosd {\n chain stale {\n }\n}\n").unwrap();
    assert!(crosd_table().is_some());

    let hosts = tempfile::NamedTempFile::new().unwrap();
    let config = NetworkConfig {
        enabled: true,
        pool: Pool::default(),
        hosts_file: hosts.path().to_path_buf(),
        ..NetworkConfig::default()
    };
    let p = Patchpanel::new(config, SharedState::default()).start();
    let Body::PatchpanelReply(PatchpanelReply::NetworkAllocated { network }) = ask(
        &p,
        PatchpanelRequest::AllocateNetwork {
            vm: "termina".into(),
        },
    )
    .await
    else {
        panic!("no network allocated");
    };
    // The leftovers went before the first VM's network was made.
    assert!(!exists("crosdtap9"), "a killed crosd's tap is still there");
    assert_eq!(network.tap, "crosdtap0");
    assert_eq!(network.host_addr, "100.115.92.1");
    assert_eq!(network.guest_addr, "100.115.92.2");
    assert_eq!(network.gateway, "100.115.92.1");
    assert_eq!(network.netmask, "255.255.255.252");
    assert_eq!(network.mac, "02:00:64:73:5c:02");
    assert!(exists("crosdtap0"));
    assert!(
        addresses("crosdtap0").contains("inet 100.115.92.1/30"),
        "{}",
        addresses("crosdtap0")
    );
    let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    assert_eq!(forwarding.trim(), "1");
    let table = crosd_table().expect("inet crosd exists while a VM has a network");
    assert!(!table.contains("stale"), "{table}");
    assert!(table.contains("masquerade"), "{table}");
    assert!(table.contains("ip saddr 100.115.92.0/30"), "{table}");
    assert!(table.contains("iifname \"crosdtap0\""), "{table}");
    // The VM's containers' /28, routed through the VM.
    assert_eq!(network.container_subnet, "100.115.93.0/28");
    assert_eq!(network.lxd_ipv4_subnet, "100.115.93.1/28");
    assert!(
        routes().contains("100.115.93.0/28 via 100.115.92.2 dev crosdtap0"),
        "{}",
        routes()
    );

    // Names: what cicerone announces lands in the hosts file, checked against the subnet.
    std::fs::write(hosts.path(), USER_HOSTS).unwrap();
    started(&p, "penguin", "100.115.93.7");
    started(&p, "intruder", "192.0.2.1");
    let text = hosts_text(&p, &hosts).await;
    assert!(
        text.starts_with(USER_HOSTS)
            && text.contains("100.115.93.7 penguin.termina.linux.test penguin.linux.test\n"),
        "{text}"
    );
    assert!(!text.contains("intruder"), "{text}");

    // A second VM: the next /30, both in the rules.
    let Body::PatchpanelReply(PatchpanelReply::NetworkAllocated { network: second }) = ask(
        &p,
        PatchpanelRequest::AllocateNetwork { vm: "other".into() },
    )
    .await
    else {
        panic!("no second network");
    };
    assert_eq!(
        (second.tap.as_str(), second.guest_addr.as_str()),
        ("crosdtap1", "100.115.92.6")
    );
    let table = crosd_table().unwrap();
    assert!(
        table.contains("crosdtap0") && table.contains("crosdtap1"),
        "{table}"
    );

    // Asking again for the same VM changes nothing.
    let Body::PatchpanelReply(PatchpanelReply::NetworkAllocated { network: again }) = ask(
        &p,
        PatchpanelRequest::AllocateNetwork {
            vm: "termina".into(),
        },
    )
    .await
    else {
        panic!("no network on the second ask");
    };
    assert_eq!(again, network);

    // The VMs stop: their taps and, with the last one, the table go.
    let reply = ask(
        &p,
        PatchpanelRequest::ReleaseNetwork {
            vm: "termina".into(),
        },
    )
    .await;
    assert_eq!(
        reply,
        Body::PatchpanelReply(PatchpanelReply::NetworkReleased {
            vm: "termina".into()
        })
    );
    assert!(!exists("crosdtap0"));
    assert!(!routes().contains("100.115.93.0/28"), "{}", routes());
    assert_eq!(
        std::fs::read_to_string(hosts.path()).unwrap(),
        USER_HOSTS,
        "the stopped VM's names stayed"
    );
    let table = crosd_table().unwrap();
    assert!(
        !table.contains("crosdtap0") && table.contains("crosdtap1"),
        "{table}"
    );
    ask(&p, PatchpanelRequest::ReleaseNetwork { vm: "other".into() }).await;
    assert!(!exists("crosdtap1"));
    assert_eq!(
        crosd_table(),
        None,
        "inet crosd is left after the last VM stopped"
    );
    let Body::Error(e) = ask(&p, PatchpanelRequest::ReleaseNetwork { vm: "other".into() }).await
    else {
        panic!("a second release did not fail");
    };
    assert!(e.message.contains("\"other\" has no network"), "{e:?}");
}
