//! `vpn-daemon import-openvpn` end to end: an existing OpenVPN config (p2p, client with inline
//! blocks, server) is imported, the daemon runs the imported TOML, and a stock OpenVPN 2.6 peer
//! with its usual config connects to it; pings cross the tunnel (and the routed LANs).
//!
//! ```text
//!   ns "ia" (our daemon, imported config)       ns "ib" (stock openvpn 2.6)
//!   +-------------------------------+   veth   +-------------------------------+
//!   | a0  10.203.N.1/24             |----------| b0  10.203.N.2/24             |
//!   | lo  10.1.N.1 (site A LAN)     |          | lo  10.2.N.1 (site B LAN)     |
//!   +-------------------------------+          +-------------------------------+
//! ```
//! For the server test the roles swap: our imported server runs in "ib", the stock client in
//! "ia". Run by name, one at a time:
//! `cargo test -p vpn-tests --test import_interop -- --test-threads=1`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use vpn_tests::{
    daemon,
    interop::{
        assert_lan_ping, assert_pings, start_daemon, tunnel_address, wait_established,
        wait_stock_up, TwoSites, HANDSHAKE_TIMEOUT,
    },
    openvpn::{OpenVpnConfig, OpenVpnPeer, OvpnRole, Protection, Topology, UP},
    pki::Pki,
    require_root,
};

/// This file's WAN prefix (see [`TwoSites`]).
const WAN: [u8; 2] = [10, 203];

/// Runs `vpn-daemon import-openvpn` on `openvpn_config` (plus `extra` arguments) and returns the
/// TOML, made runnable in a test namespace: a control socket in `dir` and generic XDP on the
/// veth. Those two keys are the only change to what the importer printed.
fn import(openvpn_config: &Path, wan: &str, node: &str, dir: &Path, extra: &[&str]) -> PathBuf {
    let output = Command::new(daemon::binary().expect("vpn-daemon binary"))
        .arg("import-openvpn")
        .arg(openvpn_config)
        .args(["--wan", wan, "--node", node, "--tunnel", "t"])
        .args(extra)
        .output()
        .expect("running import-openvpn");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "import-openvpn failed:\n{stderr}\nconfig:\n{}",
        std::fs::read_to_string(openvpn_config).unwrap_or_default()
    );
    let toml = String::from_utf8(output.stdout).expect("UTF-8 TOML");
    let socket = dir.join("ctl.sock");
    let node_line = format!("[node]\nname = \"{node}\"\n");
    let wan_line = format!("wan = \"{wan}\"\n");
    assert!(
        toml.contains(&node_line) && toml.contains(&wan_line),
        "{toml}"
    );
    let runnable = toml
        .replacen(
            &node_line,
            &format!(
                "{node_line}control_socket = {:?}\n",
                socket.display().to_string()
            ),
            1,
        )
        .replacen(&wan_line, &format!("{wan_line}xdp_mode = \"generic\"\n"), 1);
    let path = dir.join("imported.toml");
    std::fs::write(&path, runnable).expect("writing the imported config");
    path
}

/// Site A's old OpenVPN p2p config (tls-client, tls-crypt, site B's LAN routed), imported and run
/// by our daemon; site B keeps stock OpenVPN with its matching config.
#[test]
fn imported_p2p_site_link_interoperates_with_stock_openvpn() {
    if !require_root("imported_p2p_site_link_interoperates_with_stock_openvpn") {
        return;
    }
    let pki = Pki::shared().expect("PKI");
    let net = 1;
    let site = TwoSites::new("import-", WAN, net);

    let mut old_a = OpenVpnConfig::p2p(
        false,
        Some(site.b_wan()),
        format!("10.99.{net}.1").parse().unwrap(),
        format!("10.99.{net}.2").parse().unwrap(),
    );
    if let OvpnRole::P2p { routes, .. } = &mut old_a.role {
        routes.push(format!("10.2.{net}.0/24").parse().unwrap());
    }
    old_a.protection = Protection::TlsCrypt;
    old_a.cipher = "AES-256-GCM:CHACHA20-POLY1305".into();
    old_a.dev = "tun-b".into();
    old_a.extra = [
        "keepalive 5 30",
        "persist-key",
        "persist-tun",
        "user nobody",
        "group nogroup",
        "explicit-exit-notify 1",
        "verify-x509-name server name",
    ]
    .map(str::to_owned)
    .to_vec();
    let old_a_path = site.dir.path().join("site-a.conf");
    std::fs::write(&old_a_path, old_a.render(pki)).unwrap();
    let ours_dir = site.dir.path().join("ours");
    std::fs::create_dir_all(&ours_dir).unwrap();
    let config = import(&old_a_path, "a0", &format!("imp{net}a"), &ours_dir, &[]);
    let ours = start_daemon(&site.a, &config);

    let mut stock_b = OpenVpnConfig::p2p(
        true,
        Some(site.a_wan()),
        format!("10.99.{net}.2").parse().unwrap(),
        format!("10.99.{net}.1").parse().unwrap(),
    );
    if let OvpnRole::P2p { routes, .. } = &mut stock_b.role {
        routes.push(format!("10.1.{net}.0/24").parse().unwrap());
    }
    stock_b.protection = Protection::TlsCrypt;
    stock_b.dev = "ovpn-b".into();
    let stock = OpenVpnPeer::start(&site.b, &stock_b, pki).expect("stock p2p peer");
    wait_stock_up(&stock, &ours);
    wait_established(&ours);
    assert_pings(&site.a, &format!("10.99.{net}.2"));
    assert_pings(&site.b, &format!("10.99.{net}.1"));
    assert_lan_ping(&site.a, &format!("10.1.{net}.1"), &format!("10.2.{net}.1"));
    assert_lan_ping(&site.b, &format!("10.2.{net}.1"), &format!("10.1.{net}.1"));
}

/// A provider-style client profile with inline `<ca>`, `<cert>`, `<key>`, `<tls-auth>` and
/// several remotes, imported with --write-inline, against a stock OpenVPN 2.6 server.
#[test]
fn imported_inline_client_interoperates_with_stock_server() {
    if !require_root("imported_inline_client_interoperates_with_stock_server") {
        return;
    }
    let pki = Pki::shared().expect("PKI");
    let net = 2;
    let site = TwoSites::new("import-", WAN, net);

    let mut server = OpenVpnConfig::server(format!("10.8.{net}.0/24").parse().unwrap());
    if let OvpnRole::Server {
        topology,
        push_routes,
        ..
    } = &mut server.role
    {
        *topology = Topology::Subnet;
        push_routes.push(format!("10.2.{net}.1/32").parse().unwrap());
    }
    server.protection = Protection::TlsAuth { direction: Some(0) };
    server.dev = "ovpn-s".into();
    server.extra = vec!["auth SHA256".into(), "keepalive 10 60".into()];
    let stock = OpenVpnPeer::start(&site.b, &server, pki).expect("stock server");
    stock
        .wait_for_log(UP, HANDSHAKE_TIMEOUT)
        .expect("stock server up");

    let read = |path: &Path| std::fs::read_to_string(path).expect("PKI file");
    let b = site.b_wan();
    let profile = format!(
        "client\ndev tun\nproto udp\nremote {} {}\nremote 10.203.{net}.3 1194\nresolv-retry infinite\n\
         nobind\npersist-key\npersist-tun\nremote-cert-tls server\nverify-x509-name server name\n\
         auth SHA256\nkey-direction 1\ndata-ciphers AES-256-GCM:AES-128-GCM\nverb 3\n\
         <ca>\n{}</ca>\n<cert>\n{}</cert>\n<key>\n{}</key>\n<tls-auth>\n{}</tls-auth>\n",
        b.ip(),
        b.port(),
        read(&pki.ca),
        read(&pki.client_cert),
        read(&pki.client_key),
        read(&pki.tls_auth_key),
    );
    let profile_path = site.dir.path().join("provider.ovpn");
    std::fs::write(&profile_path, profile).unwrap();
    let ours_dir = site.dir.path().join("ours");
    std::fs::create_dir_all(&ours_dir).unwrap();
    let keys = ours_dir.join("keys");
    let config = import(
        &profile_path,
        "a0",
        &format!("imp{net}a"),
        &ours_dir,
        &["--write-inline", keys.to_str().unwrap()],
    );
    let ours = start_daemon(&site.a, &config);
    wait_established(&ours);
    stock
        .wait_for_log("Data Channel: cipher 'AES-256-GCM'", HANDSHAKE_TIMEOUT)
        .unwrap_or_else(|error| panic!("{error:#}\nours:\n{}", ours.log()));
    // The server's tunnel address and the pushed route to its LAN address.
    assert_pings(&site.a, &format!("10.8.{net}.1"));
    assert_pings(&site.a, &format!("10.2.{net}.1"));
}

/// A stock-style OpenVPN server config (`server`, topology subnet, pushed route, tls-crypt,
/// keepalive) imported and run by our daemon; a stock OpenVPN 2.6 client connects.
#[test]
fn imported_server_accepts_stock_client() {
    if !require_root("imported_server_accepts_stock_client") {
        return;
    }
    let pki = Pki::shared().expect("PKI");
    let net = 3;
    let site = TwoSites::new("import-", WAN, net);

    let mut old_server = OpenVpnConfig::server(format!("10.8.{net}.0/24").parse().unwrap());
    if let OvpnRole::Server {
        topology,
        push_routes,
        ..
    } = &mut old_server.role
    {
        *topology = Topology::Subnet;
        push_routes.push(format!("10.2.{net}.1/32").parse().unwrap());
    }
    old_server.protection = Protection::TlsCrypt;
    old_server.dev = "tun-clients".into();
    old_server.extra = [
        "keepalive 10 60",
        "ifconfig-pool-persist ipp.txt",
        "persist-key",
        "persist-tun",
        "status /var/log/openvpn-status.log",
        "management 127.0.0.1 7505",
        "explicit-exit-notify 1",
    ]
    .map(str::to_owned)
    .to_vec();
    let old_path = site.dir.path().join("server.conf");
    std::fs::write(&old_path, old_server.render(pki)).unwrap();
    let ours_dir = site.dir.path().join("ours");
    std::fs::create_dir_all(&ours_dir).unwrap();
    let config = import(&old_path, "b0", &format!("imp{net}b"), &ours_dir, &[]);
    let ours = start_daemon(&site.b, &config);

    let mut client = OpenVpnConfig::client(vec![site.b_wan()]);
    client.protection = Protection::TlsCrypt;
    client.dev = "ovpn-c".into();
    let stock = OpenVpnPeer::start(&site.a, &client, pki).expect("stock client");
    wait_stock_up(&stock, &ours);
    // The stock client is up and traffic flows; our status layout is the server runtime's.
    assert_pings(&site.a, &format!("10.8.{net}.1"));
    assert_pings(&site.a, &format!("10.2.{net}.1"));
}

/// A server config with a client-config-dir (fixed address for CN "client"), client-to-client
/// and max-clients, imported and run; the stock client gets its ccd address.
#[test]
fn imported_server_with_ccd_gives_the_fixed_address() {
    if !require_root("imported_server_with_ccd_gives_the_fixed_address") {
        return;
    }
    let pki = Pki::shared().expect("PKI");
    let net = 4;
    let site = TwoSites::new("import-", WAN, net);

    let mut old_server = OpenVpnConfig::server(format!("10.8.{net}.0/24").parse().unwrap());
    if let OvpnRole::Server { topology, .. } = &mut old_server.role {
        *topology = Topology::Subnet;
    }
    old_server.protection = Protection::TlsAuth { direction: Some(0) };
    old_server.dev = "tun-ccd".into();
    old_server.extra = [
        "client-config-dir ccd",
        "client-to-client",
        "max-clients 10",
        "keepalive 10 60",
        "persist-key",
    ]
    .map(str::to_owned)
    .to_vec();
    let ccd = site.dir.path().join("ccd");
    std::fs::create_dir_all(&ccd).unwrap();
    std::fs::write(
        ccd.join("client"),
        format!("ifconfig-push 10.8.{net}.50 255.255.255.0\n"),
    )
    .unwrap();
    let old_path = site.dir.path().join("server.conf");
    std::fs::write(&old_path, old_server.render(pki)).unwrap();
    let ours_dir = site.dir.path().join("ours");
    std::fs::create_dir_all(&ours_dir).unwrap();
    let config = import(&old_path, "b0", &format!("imp{net}b"), &ours_dir, &[]);
    let ours = start_daemon(&site.b, &config);

    let mut client = OpenVpnConfig::client(vec![site.b_wan()]);
    client.protection = Protection::TlsAuth { direction: Some(1) };
    client.dev = "ovpn-c".into();
    let stock = OpenVpnPeer::start(&site.a, &client, pki).expect("stock client");
    wait_stock_up(&stock, &ours);
    assert_eq!(tunnel_address(&site.a, "ovpn-c"), format!("10.8.{net}.50"));
    assert_pings(&site.a, &format!("10.8.{net}.1"));
    assert_pings(&site.b, &format!("10.8.{net}.50"));
}
