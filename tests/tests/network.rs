//! End to end: a VM's and a container's network under QEMU/TCG (issue 14's "Checked by"),
//! strictly inside network namespaces this test makes: the test's thread moves into a fresh
//! namespace (the "host", where crosd, QEMU and the tap live), joined by a veth pair to a
//! second one (the "uplink", with an HTTP server); every address used is in those two
//! namespaces or on 127.0.0.0/8, and nothing routes beyond the uplink. The hosts file crosd
//! writes is a temporary file (`crosd --hosts-file`), read through `getent`/`curl` in a private
//! mount namespace where it is bind-mounted over /etc/hosts: the machine's own is never touched.
//!
//! One termina serves every step, in order; each says what it checks when it fails.
//!
//! Needs: root, nftables, iproute2, curl, qemu-system-x86_64, the termina component's inputs
//! (/work/notes/e2e.sh or tools/scripts prepares them).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use cros_e2e::containers::{ImageServer, busybox_images, stdout, vsh_in};
use cros_e2e::crosd::{Crosd, text, vmc_ok, wait_for};
use cros_e2e::net_vm::netns;
use cros_e2e::uplink::{GREETING, HOST_ADDR, UPLINK_ADDR, Uplink};

/// The first VM's /30 from crosd's default pool, and its containers' /28.
const TAP: &str = "crosdtap0";
const GATEWAY: &str = "100.115.92.1";
const CONTAINER_SUBNET: &str = "100.115.93.0/28";
/// Where the container's web server listens.
const PENGUIN_PORT: u16 = 8000;
const PENGUIN_PAGE: &str = "served by penguin";

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// `nft list table inet crosd`, or `None` when there is no such table.
fn crosd_table() -> Option<String> {
    let o = run("nft", &["list", "table", "inet", "crosd"]);
    o.status.success().then(|| stdout(&o))
}

fn links() -> String {
    stdout(&run("ip", &["-o", "link", "show"]))
}

fn routes() -> String {
    stdout(&run("ip", &["-4", "route", "show"]))
}

/// `sh -c SCRIPT` in a private mount namespace (of this network namespace) where `hosts` is
/// bind-mounted over /etc/hosts: how the test resolves names without touching the machine's.
fn with_hosts(hosts: &Path, script: &str) -> Output {
    let script = format!("mount --bind {} /etc/hosts && {script}", hosts.display());
    run(
        "unshare",
        &["--mount", "--propagation", "private", "sh", "-c", &script],
    )
}

/// The container's address as `GetContainerInfo` reports it.
fn container_info_ipv4(crosd: &Crosd, container: &str) -> String {
    let req = serde_json::json!({"GetContainerInfo": {"vm": "termina", "container": container}});
    let o = crosd.run("crosmsg", &["send", "cicerone", &req.to_string()]);
    assert!(o.status.success(), "GetContainerInfo: {}", text(&o));
    let reply: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("GetContainerInfo printed no JSON ({e}): {}", text(&o)));
    find_key(&reply, "ipv4")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no ipv4 in {reply}"))
}

fn find_key<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m
            .get(key)
            .or_else(|| m.values().find_map(|v| find_key(v, key))),
        serde_json::Value::Array(a) => a.iter().find_map(|v| find_key(v, key)),
        _ => None,
    }
}

fn in_container_subnet(addr: &str) -> bool {
    addr.parse::<Ipv4Addr>()
        .is_ok_and(|a| a.octets()[..3] == [100, 115, 93] && a.octets()[3] < 16)
}

/// An HTTP/1.0 GET of `/` at `addr`: the whole answer, or what went wrong.
fn http_get(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let answer = (|| {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok::<_, std::io::Error>(out)
    })();
    answer.unwrap_or_else(|e| format!("error: {e}"))
}

#[test]
fn vm_and_container_reach_the_uplink_and_penguin_is_reached_by_name() {
    netns::enter_new_netns();
    let uplink = Uplink::start();
    let images = busybox_images();
    let server = ImageServer::start(images);
    let hosts_dir = tempfile::tempdir().unwrap();
    let hosts = hosts_dir.path().join("hosts");
    let user_hosts = "127.0.0.1 localhost\n# the user's own line\n";
    std::fs::write(&hosts, user_hosts).unwrap();
    let crosd = Crosd::start_networked(&[
        "--network",
        "--hosts-file",
        hosts.to_str().unwrap(),
        // The guests' resolver is the uplink, not whatever the machine's resolv.conf names.
        "--network-dns",
        &UPLINK_ADDR.to_string(),
    ]);
    let o = crosd.run(
        "vmc",
        &[
            "start",
            "--no-shell",
            "--mem",
            "2048",
            "--timeout",
            "300",
            "termina",
        ],
    );
    assert!(
        o.status.success(),
        "vmc start: {}\ncrosd log:\n{}",
        text(&o),
        crosd.log()
    );

    // 1. The VM's tap, its rules and the route to its containers exist on the host.
    assert!(links().contains(TAP), "no {TAP}: {}", links());
    let table = crosd_table().expect("inet crosd exists while the VM runs");
    assert!(table.contains("masquerade"), "{table}");
    assert!(
        routes().contains(&format!("{CONTAINER_SUBNET} via 100.115.92.2 dev {TAP}")),
        "{}",
        routes()
    );

    // 2. The VM pings its gateway.
    let o = crosd.vsh(&["ping", "-c1", "-W", "10", GATEWAY], b"");
    assert!(
        o.status.success(),
        "ping the gateway from the VM: {}",
        text(&o)
    );

    // 3. The VM fetches from the uplink, NATed to the host's uplink address.
    let o = crosd.vsh(&["wget", "-q", "-O", "-", &uplink.url], b"");
    assert!(
        stdout(&o).contains(GREETING) && stdout(&o).contains(&format!("from {HOST_ADDR}")),
        "the uplink from the VM: {}\ncrosd log:\n{}",
        text(&o),
        crosd.log()
    );

    // 4. A container gets an address on lxdbr0 from LXD's dnsmasq; GetContainerInfo and
    // ContainerStarted (which the hosts file is written from) carry it.
    vmc_ok(
        &crosd,
        &[
            "container",
            "--no-shell",
            "--user",
            "alice",
            "termina",
            "penguin",
            &server.url,
            "busybox",
        ],
    );
    let ipv4 = container_info_ipv4(&crosd, "penguin");
    assert!(
        in_container_subnet(&ipv4),
        "penguin's address {ipv4:?} is not in {CONTAINER_SUBNET}"
    );
    let o = vsh_in(
        &crosd,
        "penguin",
        Some("root"),
        &["ip", "addr", "show", "eth0"],
    );
    assert!(
        stdout(&o).contains(&format!("inet {ipv4}/28")),
        "eth0 in penguin: {}",
        text(&o)
    );
    let line = format!("{ipv4} penguin.termina.linux.test penguin.linux.test\n");
    let written = wait_for(
        "penguin's names in the hosts file",
        Duration::from_secs(60),
        || {
            let t = std::fs::read_to_string(&hosts).unwrap_or_default();
            t.contains(&line).then_some(t)
        },
    );
    assert!(
        written.starts_with(user_hosts),
        "the user's lines are kept: {written}"
    );

    // 5. The container reaches the uplink through the VM (lxdbr0's NAT, then the host's).
    let o = vsh_in(
        &crosd,
        "penguin",
        None,
        &["wget", "-q", "-O", "-", &uplink.url],
    );
    assert!(
        stdout(&o).contains(GREETING) && stdout(&o).contains(&format!("from {HOST_ADDR}")),
        "the uplink from penguin: {}",
        text(&o)
    );

    // 6. The host reaches a server in penguin by name, through the route to its subnet.
    let o = vsh_in(
        &crosd,
        "penguin",
        Some("root"),
        &[
            "sh",
            "-c",
            &format!(
                "mkdir -p /srv && echo '{PENGUIN_PAGE}' > /srv/index.html && \
                 httpd -p {PENGUIN_PORT} -h /srv"
            ),
        ],
    );
    assert!(o.status.success(), "httpd in penguin: {}", text(&o));
    let o = with_hosts(&hosts, "getent hosts penguin.linux.test");
    assert!(
        stdout(&o).split_whitespace().next() == Some(ipv4.as_str()),
        "getent hosts penguin.linux.test: {}",
        text(&o)
    );
    for name in ["penguin.linux.test", "penguin.termina.linux.test"] {
        let url = format!("http://{name}:{PENGUIN_PORT}/");
        let o = with_hosts(&hosts, &format!("curl -sS --max-time 30 {url}"));
        assert!(
            stdout(&o).contains(PENGUIN_PAGE),
            "curl {url} from the host: {}",
            text(&o)
        );
    }

    // 6b. And at 127.0.0.1:PORT of the host, through chunneld (over vsock, not the route):
    // garcon reports the new listening port, crosd listens on the same port.
    wait_for(
        "the forward of penguin's port",
        Duration::from_secs(60),
        || {
            let o = crosd.run("vmc", &["port-forward", "list", "termina"]);
            stdout(&o)
                .lines()
                .any(|l| {
                    l.contains("penguin")
                        && l.contains(&format!("listening on 127.0.0.1:{PENGUIN_PORT}"))
                })
                .then_some(())
        },
    );
    let page = http_get(std::net::SocketAddr::from((
        Ipv4Addr::LOCALHOST,
        PENGUIN_PORT,
    )));
    assert!(
        page.contains(PENGUIN_PAGE),
        "penguin's server through 127.0.0.1:{PENGUIN_PORT}: {page}"
    );

    // 7. A stopped container loses its names.
    vmc_ok(&crosd, &["container-stop", "termina", "penguin"]);
    wait_for("penguin's names to go", Duration::from_secs(60), || {
        (std::fs::read_to_string(&hosts).unwrap_or_default() == user_hosts).then_some(())
    });
    let o = with_hosts(&hosts, "getent hosts penguin.linux.test");
    assert!(
        !o.status.success(),
        "penguin.linux.test after stop: {}",
        text(&o)
    );

    // 8. After `vmc stop`, the tap, the route and crosd's table are gone.
    vmc_ok(&crosd, &["stop", "termina"]);
    wait_for(
        "the tap and the rules to go",
        Duration::from_secs(60),
        || (!links().contains(TAP) && crosd_table().is_none()).then_some(()),
    );
    assert!(!routes().contains(CONTAINER_SUBNET), "{}", routes());
    assert_eq!(std::fs::read_to_string(&hosts).unwrap(), user_hosts);
    drop(server);
}
