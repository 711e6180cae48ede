//! Forged and replayed control packets against established links between two of our daemons
//! (p2p over UDP): a hard reset that does not belong to the running session must never cut it,
//! with or without control-channel protection, and a TLS client listens to its own server only.
//!
//! ```text
//!   ns "a" (p2p, tls client)                          ns "b" (p2p, tls server)
//!   +------------------------------+     veth     +------------------------------+
//!   | a0  10.204.N.1/24, :1194     |--------------| b0  10.204.N.2/24, :1194     |
//!   | tun 10.99.N.1                |              | tun 10.99.N.2                |
//!   | forger: raw socket "from"    |              | forger: raw socket "from"    |
//!   |   10.204.N.1:1194 and :other |              |   10.204.N.2:1194 and :other |
//!   +------------------------------+              +------------------------------+
//! ```
//! N differs per test. The forgers send from the peer's own address (its very port through a
//! raw socket, and another port), which the WAN filter admits: only the session logic decides.

use std::{
    net::{SocketAddr, SocketAddrV4, UdpSocket},
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use vpn_daemon::proto::{
    control_codec::{ControlCodec, Protection},
    keys::StaticKey,
    packet::{ControlBody, ControlHeader, ControlPacket, KeyId, Opcode, SessionId},
    tls_crypt::TlsCrypt,
    vocabulary::TlsRole,
};
use vpn_tests::{
    daemon::Daemon,
    interop::{ip, start_daemon, tunnel_state, wait_established, TwoSites},
    packet::send_udp_from,
    pki::Pki,
    require_root,
    traffic::{ping_with_interval, wait_for_ping},
    veth_pair, wait_for,
};

/// This file's WAN prefix (see [`TwoSites`]).
const WAN: [u8; 2] = [10, 204];
/// The ping that must not notice the forgeries: 5 per second for 10 s.
const PINGS: u32 = 50;
const PING_INTERVAL: Duration = Duration::from_millis(200);
/// Replies the ping may miss (one in flight at an unlucky moment).
const UNAVOIDABLE_LOSS: u32 = 1;

/// How one end is configured.
struct End<'a> {
    side: &'static str,
    tls_client: bool,
    tls_crypt: bool,
    wan: &'a str,
    /// A config directory of its own (a restarted daemon gets a new one).
    dir_suffix: &'a str,
}

/// Writes the config of one p2p end of `site` and starts our daemon with it.
fn start_end(site: &TwoSites, end: &End<'_>) -> Daemon {
    let pki = Pki::shared().expect("PKI");
    let net = site.net;
    let dir = site
        .dir
        .path()
        .join(format!("{}{}", end.side, end.dir_suffix));
    std::fs::create_dir_all(&dir).expect("config dir");
    let (mine, theirs) = if end.tls_client { (1, 2) } else { (2, 1) };
    let (cert, key) = if end.tls_client {
        (&pki.client_cert, &pki.client_key)
    } else {
        (&pki.server_cert, &pki.server_key)
    };
    let mut text = format!(
        "version = 1\n[node]\nname = \"h{net}{side}\"\ncontrol_socket = {socket:?}\n\
         [pki]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n\
         [interfaces]\nwan = \"{wan}\"\nxdp_mode = \"generic\"\n\
         [[tunnel]]\nname = \"t\"\nrole = \"p2p\"\ntls = \"{tls}\"\ntransport = \"udp\"\n\
         device = \"vpn-t\"\nciphers = [\"AES-256-GCM\"]\n\
         keepalive = {{ interval = 2, timeout = 30 }}\n\
         local = \"10.204.{net}.{mine}:1194\"\nremote = [\"10.204.{net}.{theirs}:1194\"]\n\
         ifconfig = {{ local = \"10.99.{net}.{mine}\", remote = \"10.99.{net}.{theirs}\" }}\n",
        side = end.side,
        socket = dir.join("ctl.sock").display().to_string(),
        ca = pki.ca.display().to_string(),
        cert = cert.display().to_string(),
        key = key.display().to_string(),
        wan = end.wan,
        tls = if end.tls_client { "client" } else { "server" },
    );
    if end.tls_crypt {
        text.push_str(&format!(
            "tls_crypt = {:?}\n",
            pki.tls_crypt_key.display().to_string()
        ));
    }
    let config = dir.join("vpn.toml");
    std::fs::write(&config, &text).expect("writing config");
    start_daemon(ns_of(site, end.side), &config)
}

fn ns_of<'a>(site: &'a TwoSites, side: &str) -> &'a vpn_tests::NetNs {
    if side == "a" {
        &site.a
    } else {
        &site.b
    }
}

/// Both ends up: `a` the TLS client, `b` the TLS server, established, pinging.
fn established_link(net: u8, tls_crypt: bool) -> (TwoSites, Daemon, Daemon) {
    let site = TwoSites::new("h", WAN, net);
    let b = start_end(
        &site,
        &End {
            side: "b",
            tls_client: false,
            tls_crypt,
            wan: "b0",
            dir_suffix: "",
        },
    );
    let a = start_end(
        &site,
        &End {
            side: "a",
            tls_client: true,
            tls_crypt,
            wan: "a0",
            dir_suffix: "",
        },
    );
    wait_established(&a);
    wait_established(&b);
    wait_for_ping(
        &site.a,
        ip(&format!("10.99.{net}.2")),
        Duration::from_secs(15),
    )
    .expect("the tunnel carries pings");
    (site, a, b)
}

fn runtime(daemon: &Daemon) -> serde_json::Value {
    daemon.status().expect("status")["tunnels"][0]["runtime"].clone()
}

fn peer_of(daemon: &Daemon) -> String {
    runtime(daemon)["peer"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn counter(daemon: &Daemon, name: &str) -> u64 {
    runtime(daemon)["counters"][name].as_u64().unwrap_or(0)
}

fn random_session_id() -> SessionId {
    use std::io::Read as _;
    let mut id = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut id))
        .expect("reading /dev/urandom");
    id[0] |= 1; // never the all-zero "unset" id
    SessionId(id)
}

/// A plain hard reset of a new session: no acks, message id 0, no payload (14 bytes).
fn hard_reset(opcode: Opcode, session_id: SessionId) -> ControlPacket<'static> {
    ControlPacket {
        header: ControlHeader {
            opcode,
            key_id: KeyId::ZERO,
            session_id,
        },
        body: ControlBody {
            acks: Vec::new(),
            remote_session_id: None,
            message_id: Some(0),
            payload: &[],
        },
    }
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as u32)
        .unwrap_or(0)
}

/// A HARD_RESET_CLIENT_V2 wrapped with the test PKI's tls-crypt key, as the TLS client end
/// would send it: it authenticates at the server.
fn tls_crypt_client_reset(key_file: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(key_file).expect("reading the tls-crypt key");
    let key = StaticKey::parse(&text).expect("parsing the tls-crypt key");
    let now = unix_now();
    let mut codec = ControlCodec::new(
        Protection::TlsCrypt(TlsCrypt::new(&key, TlsRole::Client)),
        now,
    );
    let mut wire = Vec::new();
    codec
        .encode(
            now,
            &hard_reset(Opcode::HardResetClientV2, random_session_id()),
            &mut wire,
        )
        .expect("wrapping the reset");
    wire
}

/// Sends `packet` to `target` from `source`'s very address and port (raw socket) and from
/// another port of its address, inside the namespace of `source`.
fn forge(site: &TwoSites, side: &str, source: SocketAddr, target: SocketAddr, packet: Vec<u8>) {
    let (SocketAddr::V4(source), SocketAddr::V4(target)) = (source, target) else {
        panic!("IPv4 only");
    };
    ns_of(site, side)
        .run(move || {
            send_udp_from(source, target, &packet)?;
            let other = UdpSocket::bind(SocketAddrV4::new(*source.ip(), 0))?;
            other.send_to(&packet, target)?;
            Ok(())
        })
        .expect("forging in the namespace");
}

/// Pings b's tunnel address from a for 10 s while `attack` runs; wants every reply but the
/// unavoidable.
fn assert_ping_survives(site: &TwoSites, a: &Daemon, b: &Daemon, attack: impl FnOnce()) {
    let target = ip(&format!("10.99.{}.2", site.net));
    let result = std::thread::scope(|scope| {
        let ping = scope.spawn(|| ping_with_interval(&site.a, target, PINGS, PING_INTERVAL));
        attack();
        ping.join().expect("ping thread")
    })
    .expect("ping");
    assert!(
        result.received + UNAVOIDABLE_LOSS >= PINGS,
        "the link lost pings under forged resets: {}/{PINGS} replies\nb:\n{}\na:\n{}",
        result.received,
        b.log(),
        a.log()
    );
}

/// Three rounds of forged resets against the TLS server end, 1.5 s apart, from the TLS
/// client's address; `packet` makes each round's bytes.
fn attack_server(site: &TwoSites, mut packet: impl FnMut() -> Vec<u8>) {
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..3 {
        forge(site, "a", site.a_wan(), site.b_wan(), packet());
        std::thread::sleep(Duration::from_millis(1500));
    }
}

/// Three rounds of HARD_RESET_SERVER_V2 with fresh random session ids, as if from b's address
/// (its port and another), to a; `pause` after each.
fn forge_server_resets(site: &TwoSites, pause: Duration) {
    for _ in 0..3 {
        let reset = hard_reset(Opcode::HardResetServerV2, random_session_id())
            .to_vec()
            .expect("encoding the reset");
        forge(site, "b", site.b_wan(), site.a_wan(), reset);
        std::thread::sleep(pause);
    }
}

fn assert_link_kept(site: &TwoSites, b: &Daemon) {
    assert_eq!(tunnel_state(b), "established", "b:\n{}", b.log());
    assert_eq!(
        peer_of(b),
        site.a_wan().to_string(),
        "the peer address moved\nb:\n{}",
        b.log()
    );
    // The forgeries got through to the session logic (nothing earlier dropped them).
    assert!(
        b.log().contains("started a new session"),
        "b never saw the forged resets:\n{}",
        b.log()
    );
}

/// Without tls-auth/tls-crypt a 14-byte HARD_RESET_CLIENT_V2 from the peer's address used to
/// replace the established session (its keys cleared, the peer address moved).
#[test]
fn forged_resets_do_not_cut_an_established_p2p_link() {
    if !require_root("forged_resets_do_not_cut_an_established_p2p_link") {
        return;
    }
    let (site, a, b) = established_link(1, false);
    assert_ping_survives(&site, &a, &b, || {
        attack_server(&site, || {
            hard_reset(Opcode::HardResetClientV2, random_session_id())
                .to_vec()
                .expect("encoding the reset")
        })
    });
    assert_link_kept(&site, &b);
}

/// With tls-crypt, an authenticated reset (made with the key, or a replay of the peer's own
/// captured one) passes every check a new session makes; sent twice each round (the second a
/// byte-exact replay), it must not replace the established session either.
#[test]
fn authenticated_and_replayed_tls_crypt_resets_do_not_cut_an_established_p2p_link() {
    if !require_root(
        "authenticated_and_replayed_tls_crypt_resets_do_not_cut_an_established_p2p_link",
    ) {
        return;
    }
    let pki = Pki::shared().expect("PKI");
    let (site, a, b) = established_link(2, true);
    let before = counter(&b, "control_unauthenticated");
    assert_ping_survives(&site, &a, &b, || {
        let reset = tls_crypt_client_reset(&pki.tls_crypt_key);
        attack_server(&site, || reset.clone());
    });
    assert_link_kept(&site, &b);
    assert_eq!(
        counter(&b, "control_unauthenticated"),
        before,
        "the forged resets authenticated"
    );
}

/// A TLS client end hears only its own server: a forged server reset (from the server's address,
/// another session id) neither binds a connecting client to a bogus session nor disturbs an
/// established one; every forgery is dropped and counted.
#[test]
fn a_tls_client_ignores_forged_server_resets() {
    if !require_root("a_tls_client_ignores_forged_server_resets") {
        return;
    }
    let site = TwoSites::new("h", WAN, 3);
    let net = site.net;
    // The client dials a server that is not there yet; forged server resets arrive meanwhile.
    let a = start_end(
        &site,
        &End {
            side: "a",
            tls_client: true,
            tls_crypt: false,
            wan: "a0",
            dir_suffix: "",
        },
    );
    forge_server_resets(&site, Duration::from_millis(700));
    // Bound to a forged session id, the client would refuse the real server's reset until its
    // 60 s handshake window ran out; it must come up at once instead.
    let b = start_end(
        &site,
        &End {
            side: "b",
            tls_client: false,
            tls_crypt: false,
            wan: "b0",
            dir_suffix: "",
        },
    );
    wait_for(
        "the client to come up with the real server",
        Duration::from_secs(20),
        || (tunnel_state(&a) == "established").then_some(()),
    )
    .unwrap_or_else(|error| panic!("{error:#}\na:\n{}\nb:\n{}", a.log(), b.log()));
    wait_established(&b);
    wait_for_ping(
        &site.a,
        ip(&format!("10.99.{net}.2")),
        Duration::from_secs(15),
    )
    .expect("the tunnel carries pings");

    // Established: forged server resets from the server's address and port, and from another
    // port, while a ping runs from a.
    let dropped = counter(&a, "control_dropped");
    assert_ping_survives(&site, &a, &b, || {
        std::thread::sleep(Duration::from_secs(1));
        forge_server_resets(&site, Duration::from_millis(1500));
    });
    assert_eq!(tunnel_state(&a), "established", "a:\n{}", a.log());
    assert_eq!(peer_of(&a), site.b_wan().to_string());
    // Every forgery is counted as dropped (runtime/single.rs's unit tests check that those
    // from another port never reach the session at all).
    assert!(
        counter(&a, "control_dropped") >= dropped + 6,
        "the forged packets were not counted as dropped: {}",
        runtime(&a)
    );
}

/// A TLS client end that restarts without saying goodbye (SIGKILL) comes back while the TLS
/// server end's old session is still established: the new session runs beside it and takes
/// over once it is established.
#[test]
fn a_restarted_peer_takes_over_once_its_new_session_is_established() {
    if !require_root("a_restarted_peer_takes_over_once_its_new_session_is_established") {
        return;
    }
    let site = TwoSites::new("h", WAN, 4);
    let net = site.net;
    // a's WAN filter sits on a spare veth pair: a SIGKILLed daemon leaves its tc filters
    // behind, which must not stay on the path.
    veth_pair(
        (&site.a, "x0", "192.168.254.1/30"),
        (&site.a, "x1", "192.168.254.2/30"),
    )
    .expect("spare veth pair");
    let b = start_end(
        &site,
        &End {
            side: "b",
            tls_client: false,
            tls_crypt: true,
            wan: "b0",
            dir_suffix: "",
        },
    );
    let end_a = |dir_suffix| End {
        side: "a",
        tls_client: true,
        tls_crypt: true,
        wan: "x0",
        dir_suffix,
    };
    let mut a = start_end(&site, &end_a(""));
    wait_established(&a);
    wait_established(&b);
    let target = ip(&format!("10.99.{net}.2"));
    wait_for_ping(&site.a, target, Duration::from_secs(15)).expect("the tunnel carries pings");

    a.signal(libc::SIGKILL).expect("SIGKILL a");
    let _ = a.stop(Duration::from_secs(5));
    assert_eq!(tunnel_state(&b), "established");
    let a = start_end(&site, &end_a("-again"));
    wait_for(
        "b to take the restarted peer's new session",
        Duration::from_secs(20),
        || {
            b.log()
                .contains("the peer's new session is established and replaces the running one")
                .then_some(())
        },
    )
    .unwrap_or_else(|error| panic!("{error:#}\nb:\n{}\na:\n{}", b.log(), a.log()));
    wait_established(&a);
    assert_eq!(tunnel_state(&b), "established");
    assert_eq!(peer_of(&b), site.a_wan().to_string());
    wait_for_ping(&site.a, target, Duration::from_secs(10)).expect("pings after the restart");
    assert_ping_survives(&site, &a, &b, || {});
    assert!(
        !b.log().contains("session ended"),
        "b's session ended instead of being replaced:\n{}",
        b.log()
    );
}
