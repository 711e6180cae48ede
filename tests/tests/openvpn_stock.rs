//! Stock OpenVPN 2.6 against stock OpenVPN 2.6 in network namespaces: the baselines our
//! daemon's interop tests mirror, and the proof that the harness (PKI, config rendering,
//! process handling, ping) works.
//!
//! ```text
//!   ns "a" (client / tls-client end)          ns "b" (server / tls-server end)
//!   +-----------------------------+   veth   +-----------------------------+
//!   | a0  10.201.N.1/24           |----------| b0  10.201.N.2/24           |
//!   | ovpn0 (tunnel address)      |          | ovpn0 (tunnel address)      |
//!   +-----------------------------+          +-----------------------------+
//! ```
//! N differs per test so tests may run in parallel.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use vpn_tests::{
    openvpn::{Identity, OpenVpnConfig, OpenVpnPeer, Protection, Transport},
    pki::Pki,
    require_root,
    traffic::{ping, wait_for_ping},
    veth_pair, NetNs,
};

const UP: &str = "Initialization Sequence Completed";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// Two namespaces joined by a veth: `a` at 10.201.`net`.1, `b` at 10.201.`net`.2.
fn two_namespaces(net: u8) -> (NetNs, NetNs, SocketAddr) {
    let a = NetNs::new("a").expect("creating namespace a");
    let b = NetNs::new("b").expect("creating namespace b");
    veth_pair(
        (&a, "a0", &format!("10.201.{net}.1/24")),
        (&b, "b0", &format!("10.201.{net}.2/24")),
    )
    .expect("creating veth pair");
    (a, b, SocketAddr::from(([10, 201, net, 2], 1194)))
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("literal address")
}

fn assert_all_replies(ns: &NetNs, dst: &str) {
    wait_for_ping(ns, ip(dst), Duration::from_secs(10)).expect("first ping reply");
    let result = ping(ns, ip(dst), 5).expect("running ping");
    assert_eq!(
        result.received,
        5,
        "ping {dst} from {}: {result:?}",
        ns.name()
    );
    assert!(result.rtt_median.is_some());
}

#[test]
fn p2p_udp_tls_crypt_pings_both_ways() {
    if !require_root("p2p_udp_tls_crypt_pings_both_ways") {
        return;
    }
    let pki = Pki::shared().expect("PKI");
    let (a, b, server_addr) = two_namespaces(1);
    let client_addr = SocketAddr::from(([10, 201, 1, 1], 1194));

    let mut server_config = OpenVpnConfig::p2p(
        true,
        Some(client_addr),
        Ipv4Addr::new(10, 99, 1, 2),
        Ipv4Addr::new(10, 99, 1, 1),
    );
    server_config.protection = Protection::TlsCrypt;
    let mut client_config = OpenVpnConfig::p2p(
        false,
        Some(server_addr),
        Ipv4Addr::new(10, 99, 1, 1),
        Ipv4Addr::new(10, 99, 1, 2),
    );
    client_config.protection = Protection::TlsCrypt;

    let server = OpenVpnPeer::start(&b, &server_config, pki).expect("starting server");
    let client = OpenVpnPeer::start(&a, &client_config, pki).expect("starting client");
    server.wait_for_log(UP, HANDSHAKE_TIMEOUT).unwrap();
    client.wait_for_log(UP, HANDSHAKE_TIMEOUT).unwrap();
    // The negotiated data cipher is the one both configs allow.
    client
        .wait_for_log("Data Channel: cipher 'AES-256-GCM'", HANDSHAKE_TIMEOUT)
        .unwrap();

    assert_all_replies(&a, "10.99.1.2");
    assert_all_replies(&b, "10.99.1.1");
}

/// A server in `b` handing out 10.8.N.0/24 and one client in `a`, pinging each other.
fn server_and_client_ping(net: u8, transport: Transport) {
    let pki = Pki::shared().expect("PKI");
    let (a, b, server_addr) = two_namespaces(net);
    let mut server_config = OpenVpnConfig::server(format!("10.8.{net}.0/24").parse().unwrap());
    server_config.transport = transport;
    server_config.protection = Protection::TlsAuth { direction: Some(0) };
    let mut client_config = OpenVpnConfig::client(vec![server_addr]);
    client_config.transport = transport;
    client_config.protection = Protection::TlsAuth { direction: Some(1) };

    let server = OpenVpnPeer::start(&b, &server_config, pki).expect("starting server");
    server.wait_for_log(UP, HANDSHAKE_TIMEOUT).unwrap();
    let client = OpenVpnPeer::start(&a, &client_config, pki).expect("starting client");
    client.wait_for_log(UP, HANDSHAKE_TIMEOUT).unwrap();
    // topology subnet: the server is .1, the first client gets .2.
    assert_all_replies(&a, &format!("10.8.{net}.1"));
    assert_all_replies(&b, &format!("10.8.{net}.2"));
    assert!(
        server.log().contains("client/10.201."),
        "server log names the client by CN:\n{}",
        server.log_tail(20)
    );
}

#[test]
fn server_client_udp_tls_auth_pings_both_ways() {
    if !require_root("server_client_udp_tls_auth_pings_both_ways") {
        return;
    }
    server_and_client_ping(2, Transport::Udp);
}

#[test]
fn server_client_tcp_tls_auth_pings_both_ways() {
    if !require_root("server_client_tcp_tls_auth_pings_both_ways") {
        return;
    }
    server_and_client_ping(3, Transport::Tcp);
}

/// Starts a server (with the CRL) and a client presenting `identity`; checks the server logs
/// `refusal` and the client never comes up.
fn client_refused(net: u8, identity: Identity, refusal: &str) {
    let pki = Pki::shared().expect("PKI");
    let (a, b, server_addr) = two_namespaces(net);
    let mut server_config = OpenVpnConfig::server(format!("10.8.{net}.0/24").parse().unwrap());
    server_config.crl_verify = true;
    let mut client_config = OpenVpnConfig::client(vec![server_addr]);
    client_config.identity = identity;

    let server = OpenVpnPeer::start(&b, &server_config, pki).expect("starting server");
    server.wait_for_log(UP, HANDSHAKE_TIMEOUT).unwrap();
    let client = OpenVpnPeer::start(&a, &client_config, pki).expect("starting client");
    server.wait_for_log(refusal, HANDSHAKE_TIMEOUT).unwrap();
    // The refusal ends the TLS session ("TLS Error: TLS object -> incoming plaintext read error").
    server.wait_for_log("TLS Error", HANDSHAKE_TIMEOUT).unwrap();
    assert!(
        !client.log().contains(UP),
        "refused client came up anyway:\n{}",
        client.log_tail(30)
    );
}

#[test]
fn client_from_other_ca_is_refused() {
    if !require_root("client_from_other_ca_is_refused") {
        return;
    }
    client_refused(
        4,
        Identity::OtherCaClient,
        "VERIFY ERROR: depth=0, error=unable to get local issuer certificate",
    );
}

#[test]
fn expired_client_is_refused() {
    if !require_root("expired_client_is_refused") {
        return;
    }
    client_refused(
        5,
        Identity::ExpiredClient,
        "VERIFY ERROR: depth=0, error=certificate has expired",
    );
}

#[test]
fn revoked_client_is_refused_by_crl() {
    if !require_root("revoked_client_is_refused_by_crl") {
        return;
    }
    client_refused(6, Identity::RevokedClient, "certificate revoked");
}
