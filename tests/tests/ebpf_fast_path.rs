//! The eBPF fast path with real traffic between real daemons in network namespaces: tun source
//! policing, XDP admission under a flood, per-flow steering over four parallel links, and the
//! WAN leak guard. Run one at a time: `cargo test -p vpn-tests --test ebpf_fast_path --
//! --test-threads=1 --nocapture` (the figures are printed).
//!
//! ```text
//!   ns "lan" (LAN host)          ns "a" (vpn-daemon A)                  ns "b" (vpn-daemon B)
//!   +------------------+  veth  +-------------------------+   veth   +------------------------+
//!   | lan0 10.1.N.2/24 |--------| la0 10.1.N.1/24  (LAN)  |          | lo 10.2.N.1 (site B)   |
//!   +------------------+        | a0  10.202.N.1/24 (WAN) |----------| b0 10.202.N.2/24       |
//!   (steering test only)        | vpn-* tuns              |          |    10.202.N.99 (flood)  |
//!                               +-------------------------+          | vpn-* tuns             |
//!                                                                    +------------------------+
//! ```
//! N differs per test. Namespaces are `vpne-<pid>-<seq>-<tag>`, deleted on drop.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use vpn_common::steer::{choose_link, flow_hash, link_id, FlowKey, Link, LinkGroup};
use vpn_tests::{
    daemon::Daemon,
    netns::EBPF_PREFIX,
    pki::Pki,
    require_root,
    traffic::{iperf3, ping, wait_for_ping, Iperf3Options, Iperf3Server},
    veth_pair, wait_for, NetNs,
};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(40);
/// Keepalive interval of every tunnel here; link-down steering must react well within it.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);

fn ns(tag: &str) -> NetNs {
    NetNs::with_prefix(EBPF_PREFIX, tag).expect("namespace")
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("literal address")
}

/// One `[[tunnel]]` of a p2p pair between A (tls client) and B (tls server) on `port`.
struct P2p {
    name: String,
    port: u16,
    /// The tunnel addresses use 10.98.<index>.1 (A) and .2 (B).
    index: u8,
    /// A's side: `link_group`/`weight` lines, if any.
    group: Option<(&'static str, u32)>,
}

fn p2p_toml(net: u8, tunnel: &P2p, side_a: bool, routes: &str) -> String {
    let pki = Pki::shared().expect("PKI");
    let (mine, theirs, tls) = if side_a {
        (1, 2, "client")
    } else {
        (2, 1, "server")
    };
    let mut text = format!(
        "[[tunnel]]\nname = \"{name}\"\nrole = \"p2p\"\ntls = \"{tls}\"\ndevice = \"vpn-{name}\"\n\
         local = \"10.202.{net}.{mine}:{port}\"\nremote = [\"10.202.{net}.{theirs}:{port}\"]\n\
         ifconfig = {{ local = \"10.98.{index}.{mine}\", remote = \"10.98.{index}.{theirs}\" }}\n\
         routes = [\"{routes}\"]\nciphers = [\"AES-128-GCM\"]\ntls_crypt = {tc:?}\n\
         keepalive = {{ interval = {keepalive}, timeout = 10 }}\n",
        name = tunnel.name,
        port = tunnel.port,
        index = tunnel.index,
        tc = pki.tls_crypt_key.display().to_string(),
        keepalive = KEEPALIVE_INTERVAL.as_secs(),
    );
    if let (true, Some((group, weight))) = (side_a, tunnel.group) {
        text.push_str(&format!("link_group = \"{group}\"\nweight = {weight}\n"));
    }
    text
}

/// Writes a config (node `e<net><side>`) and starts the daemon in `ns`.
fn start_daemon(
    dir: &Path,
    ns: &NetNs,
    side: &str,
    net: u8,
    interfaces: &str,
    body: &str,
) -> (Daemon, PathBuf) {
    let pki = Pki::shared().expect("PKI");
    let dir = dir.join(side);
    std::fs::create_dir_all(&dir).expect("config dir");
    let socket = dir.join("ctl.sock");
    let (cert, key) = if side == "a" {
        (&pki.client_cert, &pki.client_key)
    } else {
        (&pki.server_cert, &pki.server_key)
    };
    let text = format!(
        "version = 1\n[node]\nname = \"e{net}{side}\"\ncontrol_socket = {socket:?}\n\
         [pki]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n[interfaces]\n{interfaces}\n{body}",
        socket = socket.display().to_string(),
        ca = pki.ca.display().to_string(),
        cert = cert.display().to_string(),
        key = key.display().to_string(),
    );
    let config = dir.join("vpn.toml");
    std::fs::write(&config, &text).expect("writing config");
    let mut daemon =
        Daemon::start(ns, &config, &socket, &dir.join("daemon.log")).expect("starting vpn-daemon");
    daemon
        .wait_ready(Duration::from_secs(30))
        .unwrap_or_else(|error| panic!("daemon not ready: {error:#}\nconfig:\n{text}"));
    (daemon, config)
}

fn tunnel_state(status: &serde_json::Value, name: &str) -> String {
    status["tunnels"]
        .as_array()
        .and_then(|tunnels| tunnels.iter().find(|tunnel| tunnel["name"] == name))
        .and_then(|tunnel| tunnel["state"].as_str())
        .unwrap_or_default()
        .to_owned()
}

fn wait_established(daemon: &Daemon, names: &[&str]) {
    let result = wait_for("tunnels to be established", HANDSHAKE_TIMEOUT, || {
        let status = daemon.status().ok()?;
        names
            .iter()
            .all(|name| tunnel_state(&status, name) == "established")
            .then_some(())
    });
    if let Err(error) = result {
        panic!(
            "{error:#}\nstatus: {:?}\nlog:\n{}",
            daemon.status(),
            daemon.log()
        );
    }
}

fn fast_path_counter(status: &serde_json::Value, program: &str, name: &str) -> u64 {
    status["fast_path"]["counters"][program][name]
        .as_u64()
        .unwrap_or(0)
}

fn tunnel_counter(status: &serde_json::Value, tunnel: &str, name: &str) -> u64 {
    status["tunnels"]
        .as_array()
        .and_then(|tunnels| tunnels.iter().find(|t| t["name"] == tunnel))
        .and_then(|t| t["runtime"]["counters"][name].as_u64())
        .unwrap_or(0)
}

/// Two namespaces joined by the WAN veth a0/b0, B's site address on its loopback.
fn wan_pair(net: u8) -> (NetNs, NetNs) {
    let a = ns("a");
    let b = ns("b");
    veth_pair(
        (&a, "a0", &format!("10.202.{net}.1/24")),
        (&b, "b0", &format!("10.202.{net}.2/24")),
    )
    .expect("WAN veth");
    b.ip(&["addr", "add", &format!("10.2.{net}.1/32"), "dev", "lo"])
        .expect("site B address");
    (a, b)
}

/// A spoofed inner source (an address B's tunnel may not send from) is dropped on A's tun and
/// counted, while B's legitimate LAN address gets through the same tunnel.
#[test]
fn spoofed_inner_source_is_dropped_while_legitimate_traffic_flows() {
    if !require_root("spoofed_inner_source_is_dropped_while_legitimate_traffic_flows") {
        return;
    }
    let net = 60;
    let (a, b) = wan_pair(net);
    a.ip(&["addr", "add", &format!("10.1.{net}.1/32"), "dev", "lo"])
        .unwrap();
    // B may send from 10.2.N.0/24 and its tunnel address; 192.0.2.99 is not allowed.
    b.ip(&["addr", "add", "192.0.2.99/32", "dev", "lo"])
        .unwrap();
    // New devices in A start with strict reverse-path filtering, as a host might configure; the
    // daemon turns it off on its tun once the source policing is attached there.
    a.exec(&["sysctl", "-qw", "net.ipv4.conf.default.rp_filter=1"])
        .unwrap();
    // New devices get IPv6 (the harness turns it off elsewhere): the daemon must turn it off on
    // its tuns, or the kernel's link-local chatter crosses the tunnel and counts as spoofed.
    for ns in [&a, &b] {
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=0"])
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let link = P2p {
        name: "s".into(),
        port: 1194,
        index: 60,
        group: None,
    };
    let (daemon_b, _) = start_daemon(
        dir.path(),
        &b,
        "b",
        net,
        "wan = \"b0\"\nxdp_mode = \"generic\"",
        &p2p_toml(net, &link, false, &format!("10.1.{net}.0/24")),
    );
    let (daemon_a, _) = start_daemon(
        dir.path(),
        &a,
        "a",
        net,
        "wan = \"a0\"\nxdp_mode = \"generic\"",
        &p2p_toml(net, &link, true, &format!("10.2.{net}.0/24")),
    );
    wait_established(&daemon_a, &["s"]);
    wait_established(&daemon_b, &["s"]);
    let status = daemon_a.status().unwrap();
    assert!(
        status["fast_path"]["attached"]
            .as_array()
            .unwrap()
            .iter()
            .any(|entry| entry == "tc_tun_ingress on vpn-s ingress"),
        "source policing on A's tun: {}",
        status["fast_path"]
    );
    let rp_filter = a
        .exec(&["cat", "/proc/sys/net/ipv4/conf/vpn-s/rp_filter"])
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&rp_filter.stdout).trim(),
        "0",
        "kernel rp_filter off on the policed tun"
    );
    for ns in [&a, &b] {
        let disabled = ns
            .exec(&["cat", "/proc/sys/net/ipv6/conf/vpn-s/disable_ipv6"])
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&disabled.stdout).trim(),
            "1",
            "IPv6 off on the tun in {}",
            ns.name()
        );
    }
    let before = daemon_a.status().unwrap();

    // Spoofed and legitimate pings at the same time, through the same tunnel.
    let spoofed = {
        let b_path = b.name().to_owned();
        let net_dst = format!("10.1.{net}.1");
        std::thread::spawn(move || {
            std::process::Command::new("ip")
                .args(["netns", "exec", &b_path, "ping", "-n", "-q", "-c", "20"])
                .args(["-i", "0.05", "-W", "1", "-I", "192.0.2.99", &net_dst])
                .output()
                .expect("spoofed ping")
        })
    };
    wait_for_ping(&b, ip(&format!("10.1.{net}.1")), Duration::from_secs(10)).unwrap();
    let legit = ping(&b, ip(&format!("10.1.{net}.1")), 20).unwrap();
    let spoofed = spoofed.join().unwrap();
    let after = daemon_a.status().unwrap();

    let spoofed_text = String::from_utf8_lossy(&spoofed.stdout);
    assert!(
        spoofed_text.contains(" 0 received"),
        "no reply to the spoofed source: {spoofed_text}"
    );
    assert_eq!(legit.received, 20, "legitimate pings: {legit:?}");
    let dropped = fast_path_counter(&after, "tc_tun_ingress", "dropped_spoofed")
        - fast_path_counter(&before, "tc_tun_ingress", "dropped_spoofed");
    let allowed = fast_path_counter(&after, "tc_tun_ingress", "allowed")
        - fast_path_counter(&before, "tc_tun_ingress", "allowed");
    assert_eq!(
        dropped, 20,
        "every spoofed echo request dropped and counted"
    );
    assert!(allowed >= 20, "legitimate packets allowed: {allowed}");
    // The tunnel itself decrypted the spoofed packets: the drop is the eBPF policy, not crypto.
    let decrypted =
        tunnel_counter(&after, "s", "rx_packets") - tunnel_counter(&before, "s", "rx_packets");
    assert!(
        decrypted >= 40,
        "both streams arrived through the tunnel: {decrypted}"
    );
    eprintln!("spoof: {dropped} spoofed packets dropped on vpn-s, {allowed} allowed, legit ping {legit:?}");
}

/// Sends `P_DATA_V2`-looking datagrams from `source` to `target` until `stop`, 64 per
/// `sendmmsg` call so the sender is not the bottleneck; returns the count sent.
fn flood(
    ns: &NetNs,
    source: &str,
    target: SocketAddr,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    let path = ns.path();
    let source: SocketAddr = SocketAddr::new(ip(source), 0);
    std::thread::spawn(move || {
        let netns = std::fs::File::open(path).unwrap();
        // SAFETY: setns on a valid namespace fd affects only this thread.
        assert_eq!(
            unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&netns), libc::CLONE_NEWNET) },
            0
        );
        let socket = UdpSocket::bind(source).unwrap();
        socket.connect(target).unwrap();
        let mut payload = [0x5au8; 100];
        payload[0] = 9 << 3; // P_DATA_V2, key id 0
        const BATCH: usize = 64;
        let mut iov = libc::iovec {
            iov_base: payload.as_mut_ptr().cast(),
            iov_len: payload.len(),
        };
        // SAFETY: an all-zero mmsghdr is valid; each then points at the one iovec above.
        let mut messages: Vec<libc::mmsghdr> = (0..BATCH)
            .map(|_| unsafe { std::mem::zeroed::<libc::mmsghdr>() })
            .collect();
        for message in &mut messages {
            message.msg_hdr.msg_iov = &mut iov;
            message.msg_hdr.msg_iovlen = 1;
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: `messages` holds BATCH valid headers whose iovec and payload outlive the
            // call; the socket is connected, so no addresses are needed.
            let count = unsafe { libc::sendmmsg(fd, messages.as_mut_ptr(), BATCH as u32, 0) };
            if count > 0 {
                sent += count as u64;
            }
        }
        sent
    })
}

/// Counts datagrams on a plain socket bound to `bind` in `ns` until `stop`.
fn sink(
    ns: &NetNs,
    bind: SocketAddr,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    let path = ns.path();
    let ready = Arc::new(AtomicBool::new(false));
    let ready_in = ready.clone();
    let handle = std::thread::spawn(move || {
        let netns = std::fs::File::open(path).unwrap();
        // SAFETY: setns on a valid namespace fd affects only this thread.
        assert_eq!(
            unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&netns), libc::CLONE_NEWNET) },
            0
        );
        let socket = UdpSocket::bind(bind).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        ready_in.store(true, Ordering::Relaxed);
        let mut buffer = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if socket.recv(&mut buffer).is_ok() {
                received.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    wait_for("sink socket", Duration::from_secs(5), || {
        ready.load(Ordering::Relaxed).then_some(())
    })
    .unwrap();
    handle
}

fn tunnel_iperf(client: &NetNs, server: &NetNs, target: &str, seconds: u32) -> f64 {
    let _server = Iperf3Server::start(server, ip(target), 5201).expect("iperf3 server");
    let result = iperf3(
        client,
        ip(target),
        &Iperf3Options {
            seconds,
            ..Default::default()
        },
    )
    .expect("iperf3");
    result.check_no_stall().expect("stream stalled");
    result.bits_per_second
}

/// An unknown source floods A's tunnel port: XDP drops every flood packet before the stack,
/// the daemon's socket never sees one, and the tunnel keeps carrying iperf3 traffic.
#[test]
fn unknown_source_flood_is_dropped_at_xdp_while_the_tunnel_keeps_throughput() {
    if !require_root("unknown_source_flood_is_dropped_at_xdp_while_the_tunnel_keeps_throughput") {
        return;
    }
    let net = 61;
    let (a, b) = wan_pair(net);
    b.ip(&["addr", "add", &format!("10.202.{net}.99/24"), "dev", "b0"])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let link = P2p {
        name: "f".into(),
        port: 1194,
        index: 61,
        group: None,
    };
    let (daemon_b, _) = start_daemon(
        dir.path(),
        &b,
        "b",
        net,
        "wan = \"b0\"\nxdp_mode = \"generic\"",
        &p2p_toml(net, &link, false, &format!("10.1.{net}.0/24")),
    );
    let (daemon_a, _) = start_daemon(
        dir.path(),
        &a,
        "a",
        net,
        "wan = \"a0\"\nxdp_mode = \"generic\"",
        &p2p_toml(net, &link, true, &format!("10.2.{net}.0/24")),
    );
    wait_established(&daemon_a, &["f"]);
    wait_established(&daemon_b, &["f"]);
    let tunnel_a = "10.98.61.1";
    wait_for_ping(&b, ip(tunnel_a), Duration::from_secs(10)).unwrap();

    let baseline = tunnel_iperf(&b, &a, tunnel_a, 5);
    let before = daemon_a.status().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let flooder = flood(
        &b,
        &format!("10.202.{net}.99"),
        format!("10.202.{net}.1:1194").parse().unwrap(),
        stop.clone(),
    );
    let under_flood = tunnel_iperf(&b, &a, tunnel_a, 5);
    stop.store(true, Ordering::Relaxed);
    let sent = flooder.join().unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    // Counters are read after the last flood packet had time to arrive.
    std::thread::sleep(Duration::from_millis(300));
    let after = daemon_a.status().unwrap();
    let dropped = after["wan"]["counters"]["dropped_unknown_source"]
        .as_u64()
        .unwrap()
        - before["wan"]["counters"]["dropped_unknown_source"]
            .as_u64()
            .unwrap();
    let unauthenticated = tunnel_counter(&after, "f", "rx_unauthenticated")
        + tunnel_counter(&after, "f", "rx_malformed")
        + tunnel_counter(&after, "f", "control_unauthenticated")
        - tunnel_counter(&before, "f", "rx_unauthenticated")
        - tunnel_counter(&before, "f", "rx_malformed")
        - tunnel_counter(&before, "f", "control_unauthenticated");
    eprintln!(
        "flood: sent {sent} packets in {elapsed:.1} s ({:.0} pps), XDP dropped {dropped}; tunnel throughput {:.0} Mbit/s without flood, {:.0} Mbit/s under flood",
        sent as f64 / elapsed,
        baseline / 1e6,
        under_flood / 1e6
    );
    assert!(sent > 10_000, "the flood ran: {sent}");
    // veth may drop a few frames before XDP sees them under overload; none may pass.
    assert!(
        dropped * 100 >= sent * 95 && dropped <= sent,
        "XDP dropped {dropped} of {sent}"
    );
    assert_eq!(
        unauthenticated, 0,
        "no flood packet reached the daemon's socket"
    );
    assert!(
        under_flood > 1e6,
        "the tunnel carried traffic under the flood"
    );
}

/// Packets per second XDP drops vs the same flood reaching a userspace socket (printed for the
/// closing note): `cargo test -p vpn-tests --test ebpf_fast_path measure -- --nocapture`.
#[test]
fn measure_xdp_drop_rate_vs_userspace_socket() {
    if !require_root("measure_xdp_drop_rate_vs_userspace_socket") {
        return;
    }
    let net = 64;
    let (a, b) = wan_pair(net);
    b.ip(&["addr", "add", &format!("10.202.{net}.99/24"), "dev", "b0"])
        .unwrap();
    let target: SocketAddr = format!("10.202.{net}.1:1194").parse().unwrap();
    let seconds = Duration::from_secs(3);

    // 1. No daemon: a plain socket on the port counts what reaches userspace.
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let sink_thread = sink(&a, target, stop.clone(), received.clone());
    let flood_stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let flooder = flood(&b, &format!("10.202.{net}.99"), target, flood_stop.clone());
    std::thread::sleep(seconds);
    flood_stop.store(true, Ordering::Relaxed);
    let sent_socket = flooder.join().unwrap();
    let socket_elapsed = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    sink_thread.join().unwrap();
    let reached_socket = received.load(Ordering::Relaxed);

    // 2. The daemon's XDP filter on the same port (p2p with a fixed remote: the flood source is
    // unknown), same flood.
    let dir = tempfile::tempdir().unwrap();
    let link = P2p {
        name: "m".into(),
        port: 1194,
        index: 64,
        group: None,
    };
    let (daemon_a, _) = start_daemon(
        dir.path(),
        &a,
        "a",
        net,
        "wan = \"a0\"\nxdp_mode = \"native\"",
        &p2p_toml(net, &link, true, &format!("10.2.{net}.0/24")),
    );
    let before = daemon_a.status().unwrap()["wan"]["counters"]["dropped_unknown_source"]
        .as_u64()
        .unwrap();
    let flood_stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let flooder = flood(&b, &format!("10.202.{net}.99"), target, flood_stop.clone());
    std::thread::sleep(seconds);
    flood_stop.store(true, Ordering::Relaxed);
    let sent_xdp = flooder.join().unwrap();
    let xdp_elapsed = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    let dropped = daemon_a.status().unwrap()["wan"]["counters"]["dropped_unknown_source"]
        .as_u64()
        .unwrap()
        - before;
    eprintln!(
        "measure: userspace socket received {:.0} pps of {:.0} pps sent; XDP dropped {:.0} pps of {:.0} pps sent",
        reached_socket as f64 / socket_elapsed,
        sent_socket as f64 / socket_elapsed,
        dropped as f64 / xdp_elapsed,
        sent_xdp as f64 / xdp_elapsed,
    );
    assert!(reached_socket > 0 && dropped > 0);
}

fn addr_words(text: &str) -> [u32; 4] {
    let IpAddr::V4(v4) = ip(text) else {
        unreachable!()
    };
    [0, 0, 0xffff, u32::from(v4)]
}

/// The link the eBPF program picks for a UDP flow, by the same functions.
fn predict(group: &LinkGroup, src: &str, dst: &str, src_port: u16, dst_port: u16) -> u32 {
    let key = FlowKey {
        src: addr_words(src),
        dst: addr_words(dst),
        src_port,
        dst_port,
        protocol: 17,
    };
    group.links[choose_link(group, flow_hash(&key)).expect("a live link")].id
}

fn link_packets(status: &serde_json::Value) -> BTreeMap<String, u64> {
    status["fast_path"]["counters"]["links"]
        .as_object()
        .map(|links| {
            links
                .iter()
                .map(|(name, value)| (name.clone(), value.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// Sends one datagram per socket from the LAN host (one flow each); returns the source ports.
fn send_flows(lan: &NetNs, sockets: usize, dst: SocketAddr) -> Vec<u16> {
    let source = "10.1.62.2:0";
    lan.run(move || {
        let sockets: Vec<UdpSocket> = (0..sockets)
            .map(|_| UdpSocket::bind(source))
            .collect::<Result<_, _>>()?;
        let mut ports = Vec::new();
        for socket in &sockets {
            socket.send_to(b"flow", dst)?;
            ports.push(socket.local_addr()?.port());
            // Leave the LAN NIC's queues room: a burst of hundreds would be dropped before TC.
            std::thread::sleep(Duration::from_micros(300));
        }
        Ok(ports)
    })
    .expect("sending flows")
}

/// Four p2p tunnels A<->B in one link group with weights 1:1:2:4: LAN flows spread over them
/// exactly as the rendezvous hash predicts; taking one link down moves only its flows, within
/// one keepalive interval of the daemon declaring it down.
#[test]
fn flows_spread_over_four_links_by_weight_and_a_dead_link_moves_only_its_flows() {
    if !require_root("flows_spread_over_four_links_by_weight_and_a_dead_link_moves_only_its_flows")
    {
        return;
    }
    let net = 62;
    let (a, b) = wan_pair(net);
    let lan = ns("lan");
    veth_pair((&lan, "lan0", "10.1.62.2/24"), (&a, "la0", "10.1.62.1/24")).unwrap();
    lan.ip(&["route", "add", "default", "via", "10.1.62.1"])
        .unwrap();
    let weights = [1, 1, 2, 4];
    let links: Vec<P2p> = (0..4)
        .map(|index| P2p {
            name: format!("l{index}"),
            port: 1201 + index as u16,
            index: index as u8,
            group: Some(("b", weights[index])),
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let body_b = |links: &[P2p]| -> String {
        links
            .iter()
            .map(|link| p2p_toml(net, link, false, "10.1.62.0/24"))
            .collect()
    };
    let (daemon_b, config_b) = start_daemon(
        dir.path(),
        &b,
        "b",
        net,
        "wan = \"b0\"\nxdp_mode = \"generic\"",
        &body_b(&links),
    );
    let body_a: String = links
        .iter()
        .map(|link| p2p_toml(net, link, true, "10.2.62.0/24"))
        .collect();
    let (daemon_a, config_a) = start_daemon(
        dir.path(),
        &a,
        "a",
        net,
        "wan = \"a0\"\nlan = \"la0\"\nxdp_mode = \"generic\"",
        &body_a,
    );
    let names = ["l0", "l1", "l2", "l3"];
    wait_established(&daemon_a, &names);
    wait_established(&daemon_b, &names);

    let mut group = LinkGroup::default();
    for (slot, link) in links.iter().enumerate() {
        group.links[slot] = Link {
            ifindex: 0,
            weight: weights[slot],
            id: link_id(&link.name),
            mtu: 0,
        };
        group.count += 1;
    }
    let name_of = |id: u32| {
        links
            .iter()
            .find(|link| link_id(&link.name) == id)
            .map(|link| format!("vpn-{}", link.name))
            .unwrap()
    };
    let dst: SocketAddr = "10.2.62.1:9".parse().unwrap();

    // Phase 1: every flow on its predicted link.
    let before = link_packets(&daemon_a.status().unwrap());
    let b_before = daemon_b.status().unwrap();
    let ports = send_flows(&lan, 400, dst);
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut first_choice = Vec::new();
    for &port in &ports {
        let id = predict(&group, "10.1.62.2", "10.2.62.1", port, 9);
        first_choice.push(id);
        *expected.entry(name_of(id)).or_default() += 1;
    }
    let observed = wait_for("steered packets counted", Duration::from_secs(5), || {
        let now = link_packets(&daemon_a.status().ok()?);
        let delta: BTreeMap<String, u64> = now
            .iter()
            .map(|(name, value)| (name.clone(), value - before.get(name).copied().unwrap_or(0)))
            .filter(|(_, value)| *value > 0)
            .collect();
        (delta.values().sum::<u64>() >= ports.len() as u64).then_some(delta)
    })
    .unwrap_or_else(|error| {
        panic!(
            "{error:#}: {:?}",
            daemon_a.status().map(|status| status["fast_path"].clone())
        )
    });
    eprintln!(
        "steering: 400 flows, weights 1:1:2:4, per link {observed:?} (predicted {expected:?})"
    );
    assert_eq!(
        observed, expected,
        "every flow on the link the rendezvous hash predicts"
    );
    // The redirects really went through those tunnels: B decrypted them on the same links
    // (plus at most a few keepalive pings per link).
    let b_after = daemon_b.status().unwrap();
    for link in &links {
        let want = expected
            .get(&format!("vpn-{}", link.name))
            .copied()
            .unwrap_or(0);
        let got = tunnel_counter(&b_after, &link.name, "rx_packets")
            - tunnel_counter(&b_before, &link.name, "rx_packets");
        assert!(
            (want..=want + 5).contains(&got),
            "B received {got} packets on {}, {want} steered there",
            link.name
        );
    }
    let total_weight: u32 = weights.iter().sum();
    for (slot, link) in links.iter().enumerate() {
        let share = observed
            .get(&format!("vpn-{}", link.name))
            .copied()
            .unwrap_or(0) as f64
            / 400.0;
        let want = weights[slot] as f64 / total_weight as f64;
        assert!(
            (share - want).abs() < 0.1,
            "{} share {share:.2}, weight share {want:.2}",
            link.name
        );
    }

    // Phase 2: B drops link l3 (SIGHUP without it: explicit-exit-notify tells A at once).
    let probe_port = ports[first_choice
        .iter()
        .position(|&id| id == link_id("l3"))
        .expect("a flow on l3")];
    let text_b = std::fs::read_to_string(&config_b).unwrap();
    std::fs::write(
        &config_b,
        edit_tunnels(&text_b, |part| {
            (!part.contains("name = \"l3\"")).then(|| part.to_owned())
        }),
    )
    .unwrap();
    // Keep a probe flow of l3 running to see when it lands elsewhere.
    let stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let stop = stop.clone();
        let path = lan.path();
        std::thread::spawn(move || {
            let netns = std::fs::File::open(path).unwrap();
            // SAFETY: setns on a valid namespace fd affects only this thread.
            assert_eq!(
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&netns), libc::CLONE_NEWNET) },
                0
            );
            let socket = UdpSocket::bind(("10.1.62.2", probe_port)).unwrap();
            while !stop.load(Ordering::Relaxed) {
                let _ = socket.send_to(b"probe", dst);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let mut survivors = group;
    survivors.count = 3; // l3 is the last slot
    let probe_next = name_of(predict(&survivors, "10.1.62.2", "10.2.62.1", probe_port, 9));
    daemon_b.signal(libc::SIGHUP).unwrap();
    let down_at = wait_for("A to declare l3 down", Duration::from_secs(15), || {
        let status = daemon_a.status().ok()?;
        (tunnel_state(&status, "l3") != "established")
            .then(|| (Instant::now(), link_packets(&status)))
    })
    .unwrap();
    let moved_after = wait_for("the probe flow to move", Duration::from_secs(5), || {
        let now = link_packets(&daemon_a.status().ok()?);
        (now.get(&probe_next) > down_at.1.get(&probe_next).map(|value| value + 1).as_ref())
            .then(|| down_at.0.elapsed())
    })
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    probe.join().unwrap();
    eprintln!("link down: the l3 probe flow moved to {probe_next} {moved_after:?} after A's status showed l3 down");
    // The daemon's own timeline, free of the 50 ms status polling above: from A's tunnel
    // logging the session end to A writing the link group without l3.
    report_delay(
        "link down: from l3's session end to A's link group without it",
        log_delay(
            &daemon_a.log(),
            |words| log_line(words, "session ended", &["tunnel=l3"]),
            |words| log_line(words, "link group updated", &["live_links=3"]),
        ),
    );
    assert!(
        moved_after < KEEPALIVE_INTERVAL,
        "moved within one keepalive interval: {moved_after:?}"
    );

    // Phase 3: the same 400 flows again: those of l0-l2 stay, only l3's move (as predicted).
    std::thread::sleep(Duration::from_millis(100));
    let before = link_packets(&daemon_a.status().unwrap());
    let resent: Vec<u16> = lan
        .run({
            let ports = ports.clone();
            move || {
                for &port in &ports {
                    let socket = UdpSocket::bind(("10.1.62.2", port))?;
                    socket.send_to(b"flow", dst)?;
                    std::thread::sleep(Duration::from_micros(300));
                }
                Ok(ports)
            }
        })
        .unwrap();
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut moved = 0;
    for (&port, &first) in resent.iter().zip(&first_choice) {
        let id = predict(&survivors, "10.1.62.2", "10.2.62.1", port, 9);
        if first != link_id("l3") {
            assert_eq!(id, first, "a flow of a live link keeps its link");
        } else {
            moved += 1;
        }
        *expected.entry(name_of(id)).or_default() += 1;
    }
    let observed = wait_for("resent packets counted", Duration::from_secs(5), || {
        let now = link_packets(&daemon_a.status().ok()?);
        let delta: BTreeMap<String, u64> = now
            .iter()
            .map(|(name, value)| (name.clone(), value - before.get(name).copied().unwrap_or(0)))
            .filter(|(_, value)| *value > 0)
            .collect();
        (delta.values().sum::<u64>() >= 400).then_some(delta)
    })
    .unwrap();
    eprintln!("after l3 down: {moved} flows moved, per link {observed:?}");
    assert_eq!(
        observed, expected,
        "only l3's flows moved, each to its predicted link"
    );

    // Phase 4: A drops l3 and re-creates l2 (a new weight restarts the tunnel, with a new tun
    // device): the per-link counters and tun source entries of the old ifindexes are deleted,
    // the new l2 gets its own.
    let pins = Path::new("/sys/fs/bpf/e62a");
    let old_l2 = ifindex(&a, "vpn-l2");
    let old_l3 = ifindex(&a, "vpn-l3");
    let counter_keys = || -> Vec<u32> {
        pinned_map_keys(&pins.join("LINK_PACKETS"))
            .iter()
            .filter_map(|key| Some(u32::from_ne_bytes(key.get(..4)?.try_into().ok()?)))
            .collect()
    };
    let mut keys_before = counter_keys();
    keys_before.sort_unstable();
    let mut all_four: Vec<u32> = ["vpn-l0", "vpn-l1", "vpn-l2", "vpn-l3"]
        .iter()
        .map(|device| ifindex(&a, device))
        .collect();
    all_four.sort_unstable();
    assert_eq!(
        keys_before, all_four,
        "a counter per link, also the one that is down"
    );
    let text_a = std::fs::read_to_string(&config_a).unwrap();
    let edited = edit_tunnels(&text_a, |part| {
        if part.contains("name = \"l3\"") {
            None
        } else if part.contains("name = \"l2\"") {
            Some(part.replace("weight = 2", "weight = 3"))
        } else {
            Some(part.to_owned())
        }
    });
    assert_ne!(edited, text_a, "l2's weight changed");
    std::fs::write(&config_a, edited).unwrap();
    daemon_a.signal(libc::SIGHUP).unwrap();
    wait_for("A's vpn-l3 to be removed", Duration::from_secs(10), || {
        a.ip(&["link", "show", "vpn-l3"]).is_err().then_some(())
    })
    .unwrap();
    wait_established(&daemon_a, &["l0", "l1", "l2"]);
    let new_l2 = ifindex(&a, "vpn-l2");
    assert_ne!(new_l2, old_l2, "l2's tun was re-created");
    let mut wanted = vec![ifindex(&a, "vpn-l0"), ifindex(&a, "vpn-l1"), new_l2];
    wanted.sort_unstable();
    let keys_after = wait_for(
        "the link counters to follow",
        Duration::from_secs(5),
        || {
            let mut keys = counter_keys();
            keys.sort_unstable();
            (keys == wanted).then_some(keys)
        },
    )
    .unwrap_or_else(|error| {
        panic!(
            "{error:#}: LINK_PACKETS holds {:?}, want {wanted:?}\nlog:\n{}",
            counter_keys(),
            daemon_a.log()
        )
    });
    eprintln!(
        "reload: LINK_PACKETS keys {keys_before:?} -> {keys_after:?} (l2 {old_l2} -> {new_l2}, l3 {old_l3} removed)"
    );
    // TUN_ALLOWED keys: LPM prefix length (4 bytes), then the ifindex in network order.
    let policed: BTreeSet<u32> = pinned_map_keys(&pins.join("TUN_ALLOWED"))
        .iter()
        .filter_map(|key| Some(u32::from_be_bytes(key.get(4..8)?.try_into().ok()?)))
        .collect();
    assert!(
        !policed.contains(&old_l2) && !policed.contains(&old_l3),
        "no tun sources of removed devices: {policed:?}"
    );
    assert!(
        policed.contains(&new_l2),
        "the new l2 is policed: {policed:?}"
    );
    let links = link_packets(&daemon_a.status().unwrap());
    assert!(
        !links.contains_key("vpn-l3"),
        "status no longer reports l3's counter: {links:?}"
    );

    // Shutdown detaches every program and removes the pins. TCX links are not per-namespace
    // in bpftool 7.1's view, so the LAN steering link (only A has one) is found by program
    // name among all links; XDP shows on the interface; the tuns go with the daemon.
    assert_eq!(
        linked_programs("tc_lan_ingress"),
        1,
        "steering linked while A runs"
    );
    assert!(a.ip(&["link", "show", "a0"]).unwrap().contains("xdp"));
    let mut daemon_a = daemon_a;
    let exit = daemon_a.stop(Duration::from_secs(10)).unwrap();
    assert!(
        exit.success(),
        "daemon A exit {exit}; log:\n{}",
        daemon_a.log()
    );
    assert_eq!(linked_programs("tc_lan_ingress"), 0, "steering detached");
    assert!(
        !a.ip(&["link", "show", "a0"]).unwrap().contains("xdp"),
        "XDP detached"
    );
    assert!(a.ip(&["link", "show", "vpn-l0"]).is_err(), "tun removed");
    assert!(!Path::new("/sys/fs/bpf/e62a").exists(), "A's pins removed");
    drop(daemon_b);
}

/// A config with each `[[tunnel]]` section replaced by `edit` (dropped on `None`).
fn edit_tunnels(text: &str, edit: impl Fn(&str) -> Option<String>) -> String {
    text.split("[[tunnel]]")
        .enumerate()
        .filter_map(|(index, part)| {
            if index == 0 {
                Some(part.to_owned())
            } else {
                edit(part).map(|part| format!("[[tunnel]]{part}"))
            }
        })
        .collect()
}

/// The ifindex of `device` in `ns`.
fn ifindex(ns: &NetNs, device: &str) -> u32 {
    let line = ns
        .ip(&["-o", "link", "show", device])
        .unwrap_or_else(|error| panic!("{device}: {error:#}"));
    line.split(':')
        .next()
        .and_then(|index| index.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ifindex in {line:?}"))
}

/// The keys of a pinned BPF map, as raw bytes, from `bpftool -j map dump pinned`.
fn pinned_map_keys(path: &Path) -> Vec<Vec<u8>> {
    let output = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(path)
        .output()
        .expect("bpftool");
    assert!(
        output.status.success(),
        "bpftool map dump {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let entries: serde_json::Value = serde_json::from_slice(&output.stdout).expect("bpftool JSON");
    entries
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| {
            entry["key"]
                .as_array()
                .unwrap_or_else(|| panic!("no raw key in {entry}"))
                .iter()
                .map(|byte| {
                    let text = byte.as_str().unwrap_or_default();
                    u8::from_str_radix(text.trim_start_matches("0x"), 16)
                        .unwrap_or_else(|_| panic!("key byte {byte}"))
                })
                .collect()
        })
        .collect()
}

/// Seconds since midnight UTC of a log line's tracing timestamp (`2026-11-21T13:06:06.123456Z`).
fn log_seconds(line: &str) -> Option<f64> {
    let clock = line.split_whitespace().next()?.split_once('T')?.1;
    let clock = clock.trim_end_matches('Z');
    let mut parts = clock.split(':');
    let hours: f64 = parts.next()?.parse().ok()?;
    let minutes: f64 = parts.next()?.parse().ok()?;
    let seconds: f64 = parts.next()?.parse().ok()?;
    Some(hours * 3600.0 + minutes * 60.0 + seconds)
}

/// The words of a log line.
fn split(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// From a daemon log: the time between the last line matching `cause` and the first line
/// after it matching `effect`; with the two lines.
fn log_delay(
    log: &str,
    cause: impl Fn(&[&str]) -> bool,
    effect: impl Fn(&[&str]) -> bool,
) -> Option<(Duration, String, String)> {
    let lines: Vec<&str> = log.lines().collect();
    let first = lines.iter().rposition(|line| cause(&split(line)))?;
    let second = lines[first..].iter().find(|line| effect(&split(line)))?;
    let mut seconds = log_seconds(second)? - log_seconds(lines[first])?;
    if seconds < 0.0 {
        seconds += 86_400.0; // across midnight
    }
    Some((
        Duration::from_secs_f64(seconds),
        lines[first].to_owned(),
        (*second).to_owned(),
    ))
}

/// Whether a log line (as words) has `text` in its message and every `field=value` in `fields`.
fn log_line(words: &[&str], text: &str, fields: &[&str]) -> bool {
    words.join(" ").contains(text) && fields.iter().all(|field| words.contains(field))
}

/// Prints a [`log_delay`] result.
fn report_delay(what: &str, delay: Option<(Duration, String, String)>) {
    match delay {
        Some((delay, cause, effect)) => {
            eprintln!("{what}: {delay:?} (daemon log)\n  {cause}\n  {effect}")
        }
        None => eprintln!("{what}: the two log lines were not found"),
    }
}

/// A multi-client server admits a client's outer address at XDP exactly while the client is
/// connected: the server runtime signals the daemon on connect and on disconnect.
///
/// ```text
///   ns "a": vpn-daemon A, role client  --WAN 10.202.65.0/24-->  ns "b": vpn-daemon B, role server
/// ```
#[test]
fn server_admits_a_client_address_at_xdp_while_it_is_connected() {
    if !require_root("server_admits_a_client_address_at_xdp_while_it_is_connected") {
        return;
    }
    let net = 65;
    let (a, b) = wan_pair(net);
    let pki = Pki::shared().expect("PKI");
    let tunnel = |lines: &str| {
        format!(
            "[[tunnel]]\n{lines}ciphers = [\"AES-128-GCM\"]\ntls_crypt = {tc:?}\n\
             keepalive = {{ interval = 2, timeout = 10 }}\n",
            tc = pki.tls_crypt_key.display().to_string(),
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let (daemon_b, _) = start_daemon(
        dir.path(),
        &b,
        "b",
        net,
        "wan = \"b0\"\nxdp_mode = \"generic\"",
        &tunnel(&format!(
            "name = \"srv\"\nrole = \"server\"\ndevice = \"vpn-srv\"\n\
             local = \"10.202.{net}.2:1194\"\nserver = \"10.8.{net}.0/24\"\n"
        )),
    );
    let peers_map = PathBuf::from(format!("/sys/fs/bpf/e{net}b/WAN_PEERS"));
    let client_key = std::net::Ipv4Addr::new(10, 202, net, 1)
        .to_ipv6_mapped()
        .octets()
        .to_vec();
    assert_eq!(
        pinned_map_keys(&peers_map),
        Vec::<Vec<u8>>::new(),
        "no client, no admitted peer"
    );

    let (mut daemon_a, _) = start_daemon(
        dir.path(),
        &a,
        "a",
        net,
        "wan = \"a0\"\nxdp_mode = \"generic\"",
        &tunnel(&format!(
            "name = \"rw\"\nrole = \"client\"\ndevice = \"vpn-rw\"\n\
             remote = [\"10.202.{net}.2:1194\"]\n"
        )),
    );
    wait_established(&daemon_a, &["rw"]);
    wait_for("B to admit A's address", Duration::from_secs(5), || {
        (pinned_map_keys(&peers_map) == [client_key.clone()]).then_some(())
    })
    .unwrap_or_else(|error| panic!("{error:#}\nB's log:\n{}", daemon_b.log()));
    report_delay(
        "server: from the client connecting to its address in WAN_PEERS",
        log_delay(
            &daemon_b.log(),
            |words| log_line(words, "client connected", &["tunnel=srv"]),
            |words| log_line(words, "WAN peers updated", &["peers=1"]),
        ),
    );

    // A stops: explicit-exit-notify tells B, which forgets the client and its address.
    let exit = daemon_a.stop(Duration::from_secs(10)).unwrap();
    assert!(exit.success(), "daemon A exit {exit}");
    wait_for("B to drop A's address", Duration::from_secs(5), || {
        pinned_map_keys(&peers_map).is_empty().then_some(())
    })
    .unwrap_or_else(|error| panic!("{error:#}\nB's log:\n{}", daemon_b.log()));
    report_delay(
        "server: from the client disconnecting to its address leaving WAN_PEERS",
        log_delay(
            &daemon_b.log(),
            |words| log_line(words, "client disconnected", &["tunnel=srv"]),
            |words| log_line(words, "WAN peers updated", &["peers=0"]),
        ),
    );
}

/// How many BPF links (machine-wide) run a program named `name`.
fn linked_programs(name: &str) -> usize {
    let json = |args: &[&str]| -> serde_json::Value {
        let output = std::process::Command::new("bpftool")
            .arg("-j")
            .args(args)
            .output()
            .expect("bpftool");
        serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null)
    };
    let programs = json(&["prog", "show"]);
    let ids: Vec<u64> = programs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|program| program["name"] == name)
        .filter_map(|program| program["id"].as_u64())
        .collect();
    json(&["link", "show"])
        .as_array()
        .into_iter()
        .flatten()
        .filter(|link| link["prog_id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .count()
}

/// tcpdump on B's side of the WAN wire, counting packets that match `filter`.
struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    fn start(ns: &NetNs, interface: &str, filter: &str, dir: &Path) -> Capture {
        let file = dir.join("wan.pcap");
        let log = dir.join("tcpdump.log");
        let child = ns
            .command("tcpdump")
            .unwrap()
            .args(["-i", interface, "-n", "-U", "--immediate-mode", "-w"])
            .arg(&file)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting tcpdump");
        wait_for("tcpdump to listen", Duration::from_secs(10), || {
            std::fs::read_to_string(&log)
                .ok()?
                .contains("listening on")
                .then_some(())
        })
        .unwrap();
        Capture { child, file }
    }

    /// Stops tcpdump (SIGINT by PID) and returns the captured packets, one line each.
    fn stop(mut self) -> Vec<String> {
        // SAFETY: kill(2) on the PID of our own, unreaped child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        let output = std::process::Command::new("tcpdump")
            .args(["-n", "-r"])
            .arg(&self.file)
            .output()
            .expect("reading the capture");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// With the tunnel down and its route gone, A's default route points at the WAN: packets to the
/// protected prefix are dropped by the leak guard (a capture on the far end of the WAN wire sees
/// none), while unprotected destinations still leave (the capture works).
#[test]
fn protected_prefix_never_leaves_the_wan_when_the_tunnel_is_down() {
    if !require_root("protected_prefix_never_leaves_the_wan_when_the_tunnel_is_down") {
        return;
    }
    let net = 63;
    let (a, b) = wan_pair(net);
    a.ip(&["route", "add", "default", "via", &format!("10.202.{net}.2")])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let link = P2p {
        name: "p".into(),
        port: 1194,
        index: 63,
        group: None,
    };
    let protected = format!("[fast_path]\nprotected_prefixes = [\"10.2.{net}.0/24\"]\n");
    let (daemon_b, _) = start_daemon(
        dir.path(),
        &b,
        "b",
        net,
        "wan = \"b0\"\nxdp_mode = \"generic\"",
        &p2p_toml(net, &link, false, &format!("10.1.{net}.0/24")),
    );
    let (daemon_a, _) = start_daemon(
        dir.path(),
        &a,
        "a",
        net,
        "wan = \"a0\"\nxdp_mode = \"generic\"",
        &format!(
            "{protected}{}",
            p2p_toml(net, &link, true, &format!("10.2.{net}.0/24"))
        ),
    );
    wait_established(&daemon_a, &["p"]);
    wait_established(&daemon_b, &["p"]);

    // Tunnel up: the protected site is reached through it; only encrypted UDP on the wire.
    let capture = Capture::start(
        &b,
        "b0",
        &format!("dst net 10.2.{net}.0/24 or dst host 10.3.{net}.1"),
        dir.path(),
    );
    let through_tunnel = ping(&a, ip(&format!("10.2.{net}.1")), 5).unwrap();
    assert_eq!(
        through_tunnel.received, 5,
        "protected site reachable through the tunnel"
    );

    // Tunnel down: B's daemon stops (explicit-exit-notify) and A's tun goes down, which takes
    // the tunnel's route with it (a route merely deleted would be put back by A's route
    // reconciler), so the kernel would now route the protected prefix in the clear via the
    // default route.
    drop(daemon_b);
    wait_for("A's tunnel down", Duration::from_secs(15), || {
        (tunnel_state(&daemon_a.status().ok()?, "p") != "established").then_some(())
    })
    .unwrap();
    a.ip(&["link", "set", "vpn-p", "down"]).unwrap();
    let route = a.ip(&["route", "get", &format!("10.2.{net}.1")]).unwrap();
    assert!(
        route.contains("dev a0"),
        "the protected prefix now routes via the WAN: {route}"
    );
    let before = daemon_a.status().unwrap();
    let leaked = ping(&a, ip(&format!("10.2.{net}.1")), 10).unwrap();
    // UDP too, several destinations in the prefix.
    a.run(move || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        for host in 1..=10u8 {
            let _ = socket.send_to(b"secret", (format!("10.2.{net}.{host}").as_str(), 5000));
        }
        Ok(())
    })
    .unwrap();
    // The control: an unprotected destination does leave, so the capture would have seen leaks.
    let _ = ping(&a, ip(&format!("10.3.{net}.1")), 3).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let after = daemon_a.status().unwrap();
    let lines = capture.stop();

    let protected_on_wire: Vec<&String> = lines
        .iter()
        .filter(|line| line.contains(&format!("> 10.2.{net}.")))
        .collect();
    let control_on_wire = lines
        .iter()
        .filter(|line| line.contains(&format!("> 10.3.{net}.1")))
        .count();
    let dropped = fast_path_counter(&after, "tc_wan_egress", "dropped_protected")
        - fast_path_counter(&before, "tc_wan_egress", "dropped_protected");
    eprintln!("leak guard: {dropped} packets to the protected prefix dropped; capture: {} protected, {control_on_wire} control", protected_on_wire.len());
    assert_eq!(leaked.received, 0);
    assert!(
        protected_on_wire.is_empty(),
        "cleartext to the protected prefix on the wire: {protected_on_wire:?}"
    );
    assert!(
        control_on_wire >= 3,
        "the capture saw the unprotected control pings: {lines:?}"
    );
    assert!(
        dropped >= 20,
        "pings and UDP to the protected prefix dropped and counted: {dropped}"
    );
}
