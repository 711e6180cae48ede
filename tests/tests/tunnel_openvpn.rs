//! Our daemon against stock OpenVPN 2.6 (and against itself) in network namespaces: every
//! role, over UDP and TCP, with tls-crypt and tls-auth, AES-256-GCM and CHACHA20-POLY1305
//! (covered pairwise), ping both ways and a 10-second iperf3 stream through the tunnel.
//!
//! ```text
//!   ns "a" (client / tls-client end)          ns "b" (server / tls-server end)
//!   +-----------------------------+   veth   +-----------------------------+
//!   | a0  10.202.N.1/24           |----------| b0  10.202.N.2/24           |
//!   | lo  10.1.N.1 (site A LAN)   |          | lo  10.2.N.1 (site B LAN)   |
//!   | tun (tunnel address)        |          | tun (tunnel address)        |
//!   +-----------------------------+          +-----------------------------+
//! ```
//! N differs per test so tests may run in parallel.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use vpn_tests::{
    daemon::Daemon,
    interop::{
        assert_lan_ping, assert_pings, ip, start_daemon, tunnel_address, tunnel_state,
        wait_established, wait_stock_up, TwoSites, HANDSHAKE_TIMEOUT,
    },
    openvpn::{
        Identity, OpenVpnConfig, OpenVpnPeer, OvpnRole, Protection, Topology, Transport, UP,
    },
    pki::Pki,
    require_root,
    traffic::{iperf3, Iperf3Options, Iperf3Server},
    wait_for, NetNs,
};

/// This file's WAN prefix (see [`TwoSites`]).
const WAN: [u8; 2] = [10, 202];

/// How our daemon is configured in one test.
struct Ours {
    side: &'static str,
    role: &'static str,
    transport: Transport,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    cert: (PathBuf, PathBuf),
    protection: Protection,
    cipher: &'static str,
    extra: Vec<String>,
}

fn protection_toml(pki: &Pki, protection: Protection) -> String {
    match protection {
        Protection::None => String::new(),
        Protection::TlsCrypt => format!(
            "tls_crypt = {:?}\n",
            pki.tls_crypt_key.display().to_string()
        ),
        Protection::TlsAuth { direction } => format!(
            "tls_auth = {{ key = {:?}{} }}\n",
            pki.tls_auth_key.display().to_string(),
            direction
                .map(|d| format!(", direction = {d}"))
                .unwrap_or_default()
        ),
    }
}

fn transport_name(transport: Transport) -> &'static str {
    match transport {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
    }
}

/// Writes our daemon's config into the site's temp dir and starts it in `ns` with WAN `wan`.
fn start_ours(site: &TwoSites, ns: &NetNs, wan: &str, ours: &Ours) -> Daemon {
    let pki = Pki::shared().expect("PKI");
    let dir = site.dir.path().join(ours.side);
    std::fs::create_dir_all(&dir).expect("config dir");
    let socket = dir.join("ctl.sock");
    let mut text = format!(
        "version = 1\n[node]\nname = \"t{net}{side}\"\ncontrol_socket = {socket:?}\n\
         [pki]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\ncrl = {crl:?}\n\
         [interfaces]\nwan = \"{wan}\"\nxdp_mode = \"generic\"\n\
         [[tunnel]]\nname = \"t\"\nrole = \"{role}\"\ntransport = \"{transport}\"\ndevice = \"vpn-t\"\n\
         ciphers = [\"{cipher}\"]\nkeepalive = {{ interval = 5, timeout = 30 }}\n",
        net = site.net,
        side = ours.side,
        socket = socket.display().to_string(),
        ca = pki.ca.display().to_string(),
        cert = ours.cert.0.display().to_string(),
        key = ours.cert.1.display().to_string(),
        crl = pki.crl.display().to_string(),
        role = ours.role,
        transport = transport_name(ours.transport),
        cipher = ours.cipher,
    );
    if let Some(local) = ours.local {
        text.push_str(&format!("local = \"{local}\"\n"));
    }
    if let Some(remote) = ours.remote {
        text.push_str(&format!("remote = [\"{remote}\"]\n"));
    }
    text.push_str(&protection_toml(pki, ours.protection));
    for line in &ours.extra {
        text.push_str(line);
        text.push('\n');
    }
    let config = dir.join("vpn.toml");
    std::fs::write(&config, &text).expect("writing config");
    start_daemon(ns, &config)
}

fn counter(daemon: &Daemon, name: &str) -> u64 {
    daemon.status().expect("status")["tunnels"][0]["runtime"]["counters"][name]
        .as_u64()
        .unwrap_or(0)
}

/// iperf3 runs one at a time: the tests run in parallel on a 2-core machine, and several
/// saturating streams at once would starve each other's tunnels of CPU for whole seconds.
static IPERF_ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A 10-second iperf3 stream from `client_ns` to `server_ns` at `target`; every interval moves data.
fn assert_iperf(client_ns: &NetNs, server_ns: &NetNs, target: &str, seconds: u32) -> f64 {
    let _turn = IPERF_ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let _server = Iperf3Server::start(server_ns, ip(target), 5201).expect("iperf3 server");
    let result = iperf3(
        client_ns,
        ip(target),
        &Iperf3Options {
            seconds,
            ..Iperf3Options::default()
        },
    )
    .expect("iperf3 run");
    result.check_no_stall().expect("iperf3 stream stalled");
    assert!(
        result.bits_per_second > 1e6,
        "iperf3 through the tunnel: {result:?}"
    );
    result.gbit_per_second()
}

fn stock_server(
    site: &TwoSites,
    transport: Transport,
    protection: Protection,
    cipher: &str,
    topology: Topology,
) -> OpenVpnPeer {
    let pki = Pki::shared().expect("PKI");
    let mut config = OpenVpnConfig::server(format!("10.8.{}.0/24", site.net).parse().unwrap());
    if let OvpnRole::Server {
        topology: t,
        push_routes,
        ..
    } = &mut config.role
    {
        *t = topology;
        push_routes.push(format!("10.2.{}.1/32", site.net).parse().unwrap());
    }
    config.transport = transport;
    config.protection = protection;
    config.cipher = cipher.to_owned();
    config.dev = "ovpn-s".into();
    let peer = OpenVpnPeer::start(&site.b, &config, pki).expect("stock server");
    peer.wait_for_log(UP, HANDSHAKE_TIMEOUT)
        .expect("stock server up");
    peer
}

fn client_to_stock_server(
    net: u8,
    transport: Transport,
    protection: Protection,
    cipher: &'static str,
    topology: Topology,
) {
    let pki = Pki::shared().expect("PKI");
    let site = TwoSites::new("", WAN, net);
    let server_protection = match protection {
        Protection::TlsAuth { .. } => Protection::TlsAuth { direction: Some(0) },
        other => other,
    };
    let server = stock_server(&site, transport, server_protection, cipher, topology);
    let ours = start_ours(
        &site,
        &site.a,
        "a0",
        &Ours {
            side: "a",
            role: "client",
            transport,
            local: None,
            remote: Some(site.b_wan()),
            cert: (pki.client_cert.clone(), pki.client_key.clone()),
            protection,
            cipher,
            extra: vec![
                "remote_cert_tls = \"server\"".into(),
                "verify_x509_name = \"server\"".into(),
            ],
        },
    );
    wait_established(&ours);
    server
        .wait_for_log(
            &format!("Data Channel: cipher '{cipher}'"),
            HANDSHAKE_TIMEOUT,
        )
        .unwrap_or_else(|error| panic!("{error:#}\nours:\n{}", ours.log()));
    // The pushed route to the server's LAN address and the server's tunnel address.
    let server_tunnel = format!("10.8.{net}.1");
    assert_pings(&site.a, &server_tunnel);
    assert_pings(&site.a, &format!("10.2.{net}.1"));
    let status = ours.status().expect("status");
    let client_address = tunnel_address(&site.a, "vpn-t");
    assert_pings(&site.b, &client_address);
    assert_iperf(&site.a, &site.b, &server_tunnel, 10);
    assert!(counter(&ours, "rx_packets") > 1000, "status: {status}");
    if transport == Transport::Udp {
        // Our client says goodbye with explicit-exit-notify; the stock server drops it at once.
        let mut ours = ours;
        ours.stop(Duration::from_secs(10))
            .expect("stopping our client");
        server
            .wait_for_log("remote-exit", Duration::from_secs(5))
            .expect("stock server saw our exit notification");
    }
}

#[test]
fn client_vs_stock_server_udp_tls_crypt_aes256_subnet() {
    if !require_root("client_vs_stock_server_udp_tls_crypt_aes256_subnet") {
        return;
    }
    client_to_stock_server(
        11,
        Transport::Udp,
        Protection::TlsCrypt,
        "AES-256-GCM",
        Topology::Subnet,
    );
}

#[test]
fn client_vs_stock_server_tcp_tls_auth_chacha_net30() {
    if !require_root("client_vs_stock_server_tcp_tls_auth_chacha_net30") {
        return;
    }
    client_to_stock_server(
        12,
        Transport::Tcp,
        Protection::TlsAuth { direction: Some(1) },
        "CHACHA20-POLY1305",
        Topology::Net30,
    );
}

fn server_for_stock_client(
    net: u8,
    transport: Transport,
    protection: Protection,
    cipher: &'static str,
) {
    let pki = Pki::shared().expect("PKI");
    let site = TwoSites::new("", WAN, net);
    let ours_protection = match protection {
        Protection::TlsAuth { .. } => Protection::TlsAuth { direction: Some(0) },
        other => other,
    };
    let ours = start_ours(
        &site,
        &site.b,
        "b0",
        &Ours {
            side: "b",
            role: "server",
            transport,
            local: Some(site.b_wan()),
            remote: None,
            cert: (pki.server_cert.clone(), pki.server_key.clone()),
            protection: ours_protection,
            cipher,
            extra: vec![
                format!("server = \"10.8.{net}.0/24\""),
                format!("push_routes = [\"10.2.{net}.1/32\"]"),
                "remote_cert_tls = \"client\"".into(),
            ],
        },
    );
    let mut config = OpenVpnConfig::client(vec![site.b_wan()]);
    config.transport = transport;
    config.protection = protection;
    config.cipher = cipher.to_owned();
    config.dev = "ovpn-c".into();
    if transport == Transport::Udp {
        config.extra.push("explicit-exit-notify 1".into());
    }
    let mut client = OpenVpnPeer::start(&site.a, &config, pki).expect("stock client");
    wait_stock_up(&client, &ours);
    wait_established(&ours);
    client
        .wait_for_log(
            &format!("Data Channel: cipher '{cipher}'"),
            HANDSHAKE_TIMEOUT,
        )
        .expect("cipher");
    assert_pings(&site.a, &format!("10.8.{net}.1"));
    assert_pings(&site.a, &format!("10.2.{net}.1"));
    assert_pings(&site.b, &format!("10.8.{net}.2"));
    assert_iperf(&site.a, &site.b, &format!("10.8.{net}.1"), 10);
    // The client says goodbye (EXIT on the control channel, or explicit-exit-notify): our
    // server drops the session at once, long before the 30 s keepalive timeout.
    client.stop(Duration::from_secs(5));
    wait_for(
        "our server to notice the client left",
        Duration::from_secs(5),
        || (tunnel_state(&ours) != "established").then_some(()),
    )
    .unwrap_or_else(|error| panic!("{error:#}\nours:\n{}", ours.log()));
}

#[test]
fn server_vs_stock_client_udp_tls_auth_chacha() {
    if !require_root("server_vs_stock_client_udp_tls_auth_chacha") {
        return;
    }
    server_for_stock_client(
        13,
        Transport::Udp,
        Protection::TlsAuth { direction: Some(1) },
        "CHACHA20-POLY1305",
    );
}

#[test]
fn server_vs_stock_client_tcp_tls_crypt_aes256() {
    if !require_root("server_vs_stock_client_tcp_tls_crypt_aes256") {
        return;
    }
    server_for_stock_client(14, Transport::Tcp, Protection::TlsCrypt, "AES-256-GCM");
}

/// p2p: our end in `a` or `b`, stock OpenVPN at the other, with each site's LAN routed
/// through the tunnel (a routed site link).
fn p2p_with_stock(
    net: u8,
    ours_tls_server: bool,
    transport: Transport,
    protection: Protection,
    cipher: &'static str,
    stock_extra: Vec<String>,
    iperf_seconds: u32,
) -> (Daemon, OpenVpnPeer, TwoSites) {
    let pki = Pki::shared().expect("PKI");
    let site = TwoSites::new("", WAN, net);
    let (ours_ns, ours_wan, stock_ns) = if ours_tls_server {
        (&site.b, "b0", &site.a)
    } else {
        (&site.a, "a0", &site.b)
    };
    let (ours_addr, stock_addr) = if ours_tls_server {
        (site.b_wan(), site.a_wan())
    } else {
        (site.a_wan(), site.b_wan())
    };
    // Tunnel addresses: the tls-server end is .2, the tls-client end .1.
    let (ours_tun, stock_tun) = if ours_tls_server {
        ("10.99.N.2", "10.99.N.1")
    } else {
        ("10.99.N.1", "10.99.N.2")
    };
    let ours_tun = ours_tun.replace('N', &net.to_string());
    let stock_tun = stock_tun.replace('N', &net.to_string());
    let (ours_lan, stock_lan) = if ours_tls_server {
        (format!("10.2.{net}.0/24"), format!("10.1.{net}.0/24"))
    } else {
        (format!("10.1.{net}.0/24"), format!("10.2.{net}.0/24"))
    };
    let tcp_server_without_remote = transport == Transport::Tcp && ours_tls_server;
    let ours = start_ours(
        &site,
        ours_ns,
        ours_wan,
        &Ours {
            side: if ours_tls_server { "b" } else { "a" },
            role: "p2p",
            transport,
            local: Some(ours_addr),
            remote: (!tcp_server_without_remote).then_some(stock_addr),
            cert: if ours_tls_server {
                (pki.server_cert.clone(), pki.server_key.clone())
            } else {
                (pki.client_cert.clone(), pki.client_key.clone())
            },
            protection: match protection {
                Protection::TlsAuth { .. } => Protection::TlsAuth {
                    direction: Some(if ours_tls_server { 0 } else { 1 }),
                },
                other => other,
            },
            cipher,
            extra: vec![
                format!(
                    "tls = \"{}\"",
                    if ours_tls_server { "server" } else { "client" }
                ),
                format!("ifconfig = {{ local = \"{ours_tun}\", remote = \"{stock_tun}\" }}"),
                format!("routes = [\"{stock_lan}\"]"),
                format!(
                    "remote_cert_tls = \"{}\"",
                    if ours_tls_server { "client" } else { "server" }
                ),
            ],
        },
    );
    let mut config = OpenVpnConfig::p2p(
        !ours_tls_server,
        (transport != Transport::Tcp || ours_tls_server).then_some(ours_addr),
        stock_tun.parse().unwrap(),
        ours_tun.parse().unwrap(),
    );
    if let OvpnRole::P2p { routes, .. } = &mut config.role {
        routes.push(ours_lan.parse().unwrap());
    }
    config.transport = transport;
    config.protection = match protection {
        Protection::TlsAuth { .. } => Protection::TlsAuth {
            direction: Some(if ours_tls_server { 1 } else { 0 }),
        },
        other => other,
    };
    config.cipher = cipher.to_owned();
    config.dev = "ovpn-p".into();
    config.extra = stock_extra;
    let stock = OpenVpnPeer::start(stock_ns, &config, pki).expect("stock p2p");
    wait_stock_up(&stock, &ours);
    wait_established(&ours);
    assert_pings(stock_ns, &ours_tun);
    assert_pings(ours_ns, &stock_tun);
    // Routed subnets behind each end: LAN to LAN, sourced from the LAN addresses.
    let (ours_lan_host, stock_lan_host) = if ours_tls_server {
        (format!("10.2.{net}.1"), format!("10.1.{net}.1"))
    } else {
        (format!("10.1.{net}.1"), format!("10.2.{net}.1"))
    };
    assert_lan_ping(stock_ns, &stock_lan_host, &ours_lan_host);
    if iperf_seconds > 0 {
        assert_iperf(stock_ns, ours_ns, &ours_tun, iperf_seconds);
    }
    (ours, stock, site)
}

#[test]
fn p2p_tls_server_vs_stock_udp_tls_crypt_aes256() {
    if !require_root("p2p_tls_server_vs_stock_udp_tls_crypt_aes256") {
        return;
    }
    p2p_with_stock(
        15,
        true,
        Transport::Udp,
        Protection::TlsCrypt,
        "AES-256-GCM",
        Vec::new(),
        10,
    );
}

#[test]
fn p2p_tls_client_vs_stock_tcp_tls_auth_chacha() {
    if !require_root("p2p_tls_client_vs_stock_tcp_tls_auth_chacha") {
        return;
    }
    p2p_with_stock(
        16,
        false,
        Transport::Tcp,
        Protection::TlsAuth { direction: None },
        "CHACHA20-POLY1305",
        Vec::new(),
        10,
    );
}

#[test]
fn p2p_tls_client_vs_stock_udp_tls_auth_aes256() {
    if !require_root("p2p_tls_client_vs_stock_udp_tls_auth_aes256") {
        return;
    }
    p2p_with_stock(
        17,
        false,
        Transport::Udp,
        Protection::TlsAuth { direction: None },
        "AES-256-GCM",
        Vec::new(),
        0,
    );
}

/// Stock OpenVPN renegotiates every 10 s during a 30-second iperf3 run: the stream never stalls.
#[test]
fn p2p_renegotiation_every_10s_never_stalls() {
    if !require_root("p2p_renegotiation_every_10s_never_stalls") {
        return;
    }
    let (ours, stock, site) = p2p_with_stock(
        18,
        true,
        Transport::Udp,
        Protection::TlsCrypt,
        "AES-256-GCM",
        vec!["reneg-sec 10".into()],
        0,
    );
    assert_iperf(&site.a, &site.b, "10.99.18.2", 30);
    let keys = ours.status().expect("status")["tunnels"][0]["runtime"]["keys_negotiated"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        keys >= 3,
        "expected at least 3 keys in 30+ s with reneg-sec 10, got {keys}\n{}",
        stock.log_tail(30)
    );
}

/// Our end renegotiates every 10 s (reneg_sec = 10) while stock OpenVPN keeps the default.
#[test]
fn p2p_our_renegotiation_every_10s_never_stalls() {
    if !require_root("p2p_our_renegotiation_every_10s_never_stalls") {
        return;
    }
    let pki = Pki::shared().expect("PKI");
    let site = TwoSites::new("", WAN, 19);
    let ours = start_ours(
        &site,
        &site.a,
        "a0",
        &Ours {
            side: "a",
            role: "p2p",
            transport: Transport::Udp,
            local: Some(site.a_wan()),
            remote: Some(site.b_wan()),
            cert: (pki.client_cert.clone(), pki.client_key.clone()),
            protection: Protection::TlsCrypt,
            cipher: "CHACHA20-POLY1305",
            extra: vec![
                "tls = \"client\"".into(),
                "ifconfig = { local = \"10.99.19.1\", remote = \"10.99.19.2\" }".into(),
                "reneg_sec = 10".into(),
            ],
        },
    );
    let mut config = OpenVpnConfig::p2p(
        true,
        Some(site.a_wan()),
        "10.99.19.2".parse().unwrap(),
        "10.99.19.1".parse().unwrap(),
    );
    config.protection = Protection::TlsCrypt;
    config.cipher = "CHACHA20-POLY1305".into();
    config.dev = "ovpn-p".into();
    let stock = OpenVpnPeer::start(&site.b, &config, pki).expect("stock p2p");
    wait_stock_up(&stock, &ours);
    wait_established(&ours);
    assert_iperf(&site.a, &site.b, "10.99.19.2", 30);
    let keys = ours.status().expect("status")["tunnels"][0]["runtime"]["keys_negotiated"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        keys >= 3,
        "expected at least 3 keys with reneg_sec 10, got {keys}\nours:\n{}",
        ours.log()
    );
}

/// Our client against our server, and our p2p against our p2p.
#[test]
fn ours_client_vs_ours_server_udp_and_p2p_tcp() {
    if !require_root("ours_client_vs_ours_server_udp_and_p2p_tcp") {
        return;
    }
    let pki = Pki::shared().expect("PKI");
    let site = TwoSites::new("", WAN, 20);
    let server = start_ours(
        &site,
        &site.b,
        "b0",
        &Ours {
            side: "b",
            role: "server",
            transport: Transport::Udp,
            local: Some(site.b_wan()),
            remote: None,
            cert: (pki.server_cert.clone(), pki.server_key.clone()),
            protection: Protection::TlsCrypt,
            cipher: "AES-256-GCM",
            extra: vec![
                "server = \"10.8.20.0/24\"".into(),
                "remote_cert_tls = \"client\"".into(),
            ],
        },
    );
    let client = start_ours(
        &site,
        &site.a,
        "a0",
        &Ours {
            side: "a",
            role: "client",
            transport: Transport::Udp,
            local: None,
            remote: Some(site.b_wan()),
            cert: (pki.client_cert.clone(), pki.client_key.clone()),
            protection: Protection::TlsCrypt,
            cipher: "AES-256-GCM",
            extra: vec!["remote_cert_tls = \"server\"".into()],
        },
    );
    wait_established(&client);
    wait_established(&server);
    assert_pings(&site.a, "10.8.20.1");
    assert_pings(&site.b, "10.8.20.2");
    assert_iperf(&site.a, &site.b, "10.8.20.1", 10);
    drop(client);
    drop(server);

    let site = TwoSites::new("", WAN, 21);
    let b = start_ours(
        &site,
        &site.b,
        "b0",
        &Ours {
            side: "b",
            role: "p2p",
            transport: Transport::Tcp,
            local: Some(site.b_wan()),
            remote: None,
            cert: (pki.server_cert.clone(), pki.server_key.clone()),
            protection: Protection::TlsAuth { direction: Some(0) },
            cipher: "CHACHA20-POLY1305",
            extra: vec![
                "tls = \"server\"".into(),
                "ifconfig = { local = \"10.99.21.2\", remote = \"10.99.21.1\" }".into(),
                "routes = [\"10.1.21.0/24\"]".into(),
            ],
        },
    );
    let a = start_ours(
        &site,
        &site.a,
        "a0",
        &Ours {
            side: "a",
            role: "p2p",
            transport: Transport::Tcp,
            local: Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(10, 202, 21, 1)),
                0,
            )),
            remote: Some(site.b_wan()),
            cert: (pki.client_cert.clone(), pki.client_key.clone()),
            protection: Protection::TlsAuth { direction: Some(1) },
            cipher: "CHACHA20-POLY1305",
            extra: vec![
                "tls = \"client\"".into(),
                "ifconfig = { local = \"10.99.21.1\", remote = \"10.99.21.2\" }".into(),
                "routes = [\"10.2.21.0/24\"]".into(),
            ],
        },
    );
    wait_established(&a);
    wait_established(&b);
    assert_pings(&site.a, "10.99.21.2");
    assert_pings(&site.b, "10.99.21.1");
    assert_lan_ping(&site.a, "10.1.21.1", "10.2.21.1");
    assert_iperf(&site.a, &site.b, "10.99.21.2", 10);
}

/// A client whose certificate is from another CA, expired, or revoked gets no tunnel, and our
/// server logs why.
#[test]
fn server_refuses_bad_client_certificates() {
    if !require_root("server_refuses_bad_client_certificates") {
        return;
    }
    let pki = Pki::shared().expect("PKI");
    let site = TwoSites::new("", WAN, 22);
    let ours = start_ours(
        &site,
        &site.b,
        "b0",
        &Ours {
            side: "b",
            role: "server",
            transport: Transport::Udp,
            local: Some(site.b_wan()),
            remote: None,
            cert: (pki.server_cert.clone(), pki.server_key.clone()),
            protection: Protection::None,
            cipher: "AES-256-GCM",
            extra: vec![
                "server = \"10.8.22.0/24\"".into(),
                "remote_cert_tls = \"client\"".into(),
            ],
        },
    );
    for (identity, reason) in [
        (Identity::OtherCaClient, "UnknownIssuer"),
        (Identity::ExpiredClient, "expired"),
        (Identity::RevokedClient, "revoked"),
    ] {
        let mut config = OpenVpnConfig::client(vec![site.b_wan()]);
        config.identity = identity;
        config.dev = "ovpn-c".into();
        let client = OpenVpnPeer::start(&site.a, &config, pki).expect("stock client");
        let result = wait_for(
            "our server to log the refusal",
            Duration::from_secs(20),
            || {
                let log = ours.log();
                log.lines()
                    .any(|line| {
                        line.contains("session refused")
                            && line.to_lowercase().contains(&reason.to_lowercase())
                    })
                    .then_some(())
            },
        );
        result.unwrap_or_else(|error| panic!("{identity:?}: {error:#}\nours:\n{}", ours.log()));
        assert!(
            !client.log().contains(UP),
            "{identity:?} got a tunnel:\n{}",
            client.log_tail(20)
        );
        assert_ne!(tunnel_state(&ours), "established");
    }
}

/// A tls-crypt packet made with another key gets no answer at all, and is counted.
#[test]
fn tls_crypt_wrong_key_gets_no_answer() {
    if !require_root("tls_crypt_wrong_key_gets_no_answer") {
        return;
    }
    let pki = Pki::shared().expect("PKI");
    let site = TwoSites::new("", WAN, 23);
    let ours = start_ours(
        &site,
        &site.b,
        "b0",
        &Ours {
            side: "b",
            role: "server",
            transport: Transport::Udp,
            local: Some(site.b_wan()),
            remote: None,
            cert: (pki.server_cert.clone(), pki.server_key.clone()),
            protection: Protection::TlsCrypt,
            cipher: "AES-256-GCM",
            extra: vec!["server = \"10.8.23.0/24\"".into()],
        },
    );
    let target = site.b_wan();
    let answered = site
        .a
        .run(move || {
            let socket = std::net::UdpSocket::bind("10.202.23.1:0").expect("bind");
            socket
                .set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            // HARD_RESET_CLIENT_V2, session id, replay id, then a tag and body no key made.
            let mut packet = vec![7 << 3];
            packet.extend_from_slice(&[0x11; 8]);
            packet.extend_from_slice(&1u32.to_be_bytes());
            packet.extend_from_slice(&0x5f00_0000u32.to_be_bytes());
            packet.extend((0..32 + 14).map(|byte| byte as u8 ^ 0xa5));
            for _ in 0..5 {
                socket.send_to(&packet, target).expect("send");
            }
            let mut buffer = [0u8; 2048];
            Ok(socket.recv_from(&mut buffer).is_ok())
        })
        .expect("running in namespace a");
    assert!(
        !answered,
        "a tls-crypt packet with the wrong key was answered"
    );
    let refused = counter(&ours, "control_unauthenticated");
    assert_eq!(refused, 5, "status: {:?}", ours.status());
}

/// Peers configured with compression interoperate through the framing alone: stock p2p with
/// `comp-lzo`, and a stock client of our server with `compress stub-v2` (we push it).
#[test]
fn compression_framing_interoperates() {
    if !require_root("compression_framing_interoperates") {
        return;
    }
    let pki = Pki::shared().expect("PKI");
    let site = TwoSites::new("", WAN, 24);
    let ours = start_ours(
        &site,
        &site.a,
        "a0",
        &Ours {
            side: "a",
            role: "p2p",
            transport: Transport::Udp,
            local: Some(site.a_wan()),
            remote: Some(site.b_wan()),
            cert: (pki.client_cert.clone(), pki.client_key.clone()),
            protection: Protection::TlsCrypt,
            cipher: "AES-256-GCM",
            extra: vec![
                "tls = \"client\"".into(),
                "ifconfig = { local = \"10.99.24.1\", remote = \"10.99.24.2\" }".into(),
                "compress = \"comp-lzo\"".into(),
            ],
        },
    );
    let mut config = OpenVpnConfig::p2p(
        true,
        Some(site.a_wan()),
        "10.99.24.2".parse().unwrap(),
        "10.99.24.1".parse().unwrap(),
    );
    config.protection = Protection::TlsCrypt;
    config.dev = "ovpn-p".into();
    config.extra = vec!["comp-lzo".into()];
    let stock = OpenVpnPeer::start(&site.b, &config, pki).expect("stock p2p");
    wait_stock_up(&stock, &ours);
    wait_established(&ours);
    assert_pings(&site.a, "10.99.24.2");
    assert_pings(&site.b, "10.99.24.1");
    assert_eq!(counter(&ours, "rx_malformed"), 0);
    drop(stock);
    drop(ours);

    let site = TwoSites::new("", WAN, 25);
    let ours = start_ours(
        &site,
        &site.b,
        "b0",
        &Ours {
            side: "b",
            role: "server",
            transport: Transport::Udp,
            local: Some(site.b_wan()),
            remote: None,
            cert: (pki.server_cert.clone(), pki.server_key.clone()),
            protection: Protection::TlsCrypt,
            cipher: "AES-256-GCM",
            extra: vec![
                "server = \"10.8.25.0/24\"".into(),
                "compress = \"stub-v2\"".into(),
            ],
        },
    );
    let mut config = OpenVpnConfig::client(vec![site.b_wan()]);
    config.protection = Protection::TlsCrypt;
    config.dev = "ovpn-c".into();
    config.extra = vec!["compress stub-v2".into()];
    let client = OpenVpnPeer::start(&site.a, &config, pki).expect("stock client");
    wait_stock_up(&client, &ours);
    wait_established(&ours);
    assert_pings(&site.a, "10.8.25.1");
    assert_pings(&site.b, "10.8.25.2");
    assert_eq!(counter(&ours, "rx_malformed"), 0);
}
