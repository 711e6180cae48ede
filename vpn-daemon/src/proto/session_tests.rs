//! Tier-2 tests of [`Session`]: two sans-IO sessions joined by a simulated link with seeded
//! loss, duplication and reordering, on a fake clock (`base + offset`), in the manner of
//! quinn-proto's `tests/util.rs` `Pair`.
//!
//! ```text
//!   Endpoint "client" (TLS client) --Link (loss/dup/jitter)--> Endpoint "server" (TLS server)
//!   Session events -> Transmit onto the link; keys -> data packets sealed/opened in-process
//! ```
//!
//! rustls draws its own randomness and checks certificate dates against the system clock;
//! everything else is deterministic (the session's randomness is a seeded xorshift).
use std::net::Ipv4Addr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use super::control_codec::{ControlCodec, Protection};
use super::data::{peek_data_key, DataError, DataFormat, ReceiveKey, Received, SendKey};
use super::keys::{StaticKey, STATIC_KEY_BYTES};
use super::options::{iv_proto, options_string, OccOptions, OccTransport, PeerInfo, PushOptions};
use super::packet::{peek_opcode, KeyId, Opcode, SessionId};
use super::session::{
    classify_first_packet, stateless_reset_reply, DataChannelParams, FirstPacket, FirstPacketError,
    LinkActivity, RandomSource, Session, SessionConfig, SessionEnd, SessionEvent, SessionMode,
    TlsSetup,
};
use super::tls::{self, PeerChecks, PkiMaterial};
use super::tls_auth::TlsAuth;
use super::tls_crypt::TlsCrypt;
use super::vocabulary::{
    Cipher, Keepalive, KeyDirection, TlsAuthDigest, TlsRole, Topology, Transport,
};

/// Wall-clock seconds at the simulated start (only the tls-auth/tls-crypt replay ids use it).
const START_UNIX: u32 = 1_750_000_000;
/// The peer id our test server gives its client.
const PUSHED_PEER_ID: u32 = 7;
/// OpenVPN's `hand-window`.
const HANDSHAKE_WINDOW: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Deterministic randomness

/// xorshift64*: small, seeded, good enough to drive loss decisions and session ids.
#[derive(Debug, Clone)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // Zero is xorshift's fixed point.
        Self(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64) / ((1u64 << 53) as f64) < p
    }

    fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.next_u64() % bound
        }
    }

    fn fill(&mut self, buffer: &mut [u8]) {
        for chunk in buffer.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

fn random_source(seed: u64) -> RandomSource {
    let mut rng = XorShift::new(seed);
    Box::new(move |buffer: &mut [u8]| rng.fill(buffer))
}

fn static_key(seed: u64) -> StaticKey {
    let mut bytes = [0u8; STATIC_KEY_BYTES];
    XorShift::new(seed).fill(&mut bytes);
    StaticKey::from_bytes(bytes)
}

// ---------------------------------------------------------------------------------------------
// Test PKI (made once per test binary)

struct TestPki {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    /// A client whose certificate comes from another CA (it trusts our CA, so only the server
    /// refuses).
    foreign_client: Arc<rustls::ClientConfig>,
}

struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2070, 1, 1);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A leaf certificate for `common_name` signed by this CA, bundled with `trusted`'s CA.
    fn issue(
        &self,
        common_name: &str,
        purpose: ExtendedKeyUsagePurpose,
        trusted: &str,
    ) -> PkiMaterial {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![purpose];
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2069, 1, 1);
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        PkiMaterial::from_pem(
            trusted.as_bytes(),
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
            None,
        )
        .unwrap()
    }
}

fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ca = TestCa::new("session-tests CA");
        let other_ca = TestCa::new("some other CA");
        let checks = PeerChecks::default();
        let server = ca.issue("server", ExtendedKeyUsagePurpose::ServerAuth, &ca.pem);
        let client = ca.issue("client", ExtendedKeyUsagePurpose::ClientAuth, &ca.pem);
        let foreign = other_ca.issue("intruder", ExtendedKeyUsagePurpose::ClientAuth, &ca.pem);
        TestPki {
            server: tls::server_config(&server, &checks).unwrap(),
            client: tls::client_config(&client, &checks).unwrap(),
            foreign_client: tls::client_config(&foreign, &checks).unwrap(),
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Configurations

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Roles {
    /// `SessionMode::Client` (TLS client) with `SessionMode::Server` (TLS server).
    ClientServer,
    /// `SessionMode::P2p` on both ends.
    P2p,
}

/// Control-channel protection, built per side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wrap {
    None,
    TlsAuth {
        digest: TlsAuthDigest,
        server_direction: Option<KeyDirection>,
        client_direction: Option<KeyDirection>,
    },
    TlsCrypt,
}

const WRAPS: [Wrap; 5] = [
    Wrap::None,
    Wrap::TlsAuth {
        digest: TlsAuthDigest::Sha1,
        server_direction: Some(KeyDirection::Normal),
        client_direction: Some(KeyDirection::Inverse),
    },
    Wrap::TlsAuth {
        digest: TlsAuthDigest::Sha256,
        server_direction: Some(KeyDirection::Inverse),
        client_direction: Some(KeyDirection::Normal),
    },
    Wrap::TlsAuth {
        digest: TlsAuthDigest::Sha256,
        server_direction: None,
        client_direction: None,
    },
    Wrap::TlsCrypt,
];

/// The shared static key of a pair; `key_seed` differs for "another key".
fn protection(wrap: Wrap, role: TlsRole, key_seed: u64) -> Protection {
    let key = static_key(key_seed);
    match wrap {
        Wrap::None => Protection::None,
        Wrap::TlsAuth {
            digest,
            server_direction,
            client_direction,
        } => {
            let direction = match role {
                TlsRole::Server => server_direction,
                TlsRole::Client => client_direction,
            };
            Protection::TlsAuth(TlsAuth::new(&key, direction, digest))
        }
        Wrap::TlsCrypt => Protection::TlsCrypt(TlsCrypt::new(&key, role)),
    }
}

fn server_push() -> PushOptions {
    PushOptions {
        ifconfig: Some((Ipv4Addr::new(10, 8, 0, 2), Ipv4Addr::new(255, 255, 255, 0))),
        topology: Some(Topology::Subnet),
        routes: vec![("10.1.0.0/16".parse::<Ipv4Net>().unwrap(), None)],
        route_gateway: Some(Ipv4Addr::new(10, 8, 0, 1)),
        ..PushOptions::default()
    }
}

/// A session configuration as the runtime builds it from a tunnel's config.
fn session_config(roles: Roles, role: TlsRole, ciphers: &[Cipher], wrap: Wrap) -> SessionConfig {
    let pki = pki();
    let tls = match role {
        TlsRole::Client => TlsSetup::Client(pki.client.clone()),
        TlsRole::Server => TlsSetup::Server(pki.server.clone()),
    };
    let mode = match (roles, role) {
        (Roles::P2p, _) => SessionMode::P2p,
        (Roles::ClientServer, TlsRole::Client) => SessionMode::Client,
        (Roles::ClientServer, TlsRole::Server) => SessionMode::Server {
            push: server_push(),
            peer_id: PUSHED_PEER_ID,
        },
    };
    let mut config = SessionConfig::new(tls, mode, Transport::Udp, ciphers.to_vec());
    let (tls_auth, key_direction) = match wrap {
        Wrap::TlsAuth {
            server_direction,
            client_direction,
            ..
        } => (
            true,
            match role {
                TlsRole::Server => server_direction,
                TlsRole::Client => client_direction,
            },
        ),
        _ => (false, None),
    };
    let ifconfig = (roles == Roles::P2p).then(|| match role {
        TlsRole::Server => (Ipv4Addr::new(10, 99, 0, 1), Ipv4Addr::new(10, 99, 0, 2)),
        TlsRole::Client => (Ipv4Addr::new(10, 99, 0, 2), Ipv4Addr::new(10, 99, 0, 1)),
    });
    config.options_string = options_string(&OccOptions {
        role,
        transport: OccTransport::Udp,
        tun_mtu: 1500,
        cipher: ciphers.first().copied(),
        ifconfig,
        tls_auth,
        key_direction,
    });
    config.peer_info = PeerInfo::ours(ciphers, roles == Roles::P2p, 1500);
    config.handshake_window = HANDSHAKE_WINDOW;
    config
}

fn without_tls_ekm(mut config: SessionConfig) -> SessionConfig {
    config.peer_info.proto_flags &= !iv_proto::TLS_KEY_EXPORT;
    config
}

// ---------------------------------------------------------------------------------------------
// Endpoint: one session and what its events told us

struct Endpoint {
    name: &'static str,
    session: Session,
    activity: LinkActivity,
    send_key: Option<Arc<SendKey>>,
    receive_keys: Vec<ReceiveKey>,
    activated: Vec<(Duration, KeyId)>,
    installed: Vec<KeyId>,
    retired: Vec<KeyId>,
    established: Option<(Duration, DataChannelParams, Option<String>)>,
    pushed: Option<PushOptions>,
    /// Common names from `PeerAuthenticated` (per-client push servers only).
    authenticated: Vec<Option<String>>,
    ended: Option<(Duration, SessionEnd)>,
    pings: usize,
    /// When each Transmit event appeared (offset from the pair's base), with the packet.
    transmits: Vec<(Duration, Vec<u8>)>,
}

impl Endpoint {
    fn new(name: &'static str, session: Session, now: Instant) -> Self {
        Self {
            name,
            session,
            activity: LinkActivity {
                last_received: now,
                last_sent: now,
            },
            send_key: None,
            receive_keys: Vec::new(),
            activated: Vec::new(),
            installed: Vec::new(),
            retired: Vec::new(),
            established: None,
            pushed: None,
            authenticated: Vec::new(),
            ended: None,
            pings: 0,
            transmits: Vec::new(),
        }
    }

    /// Drains the session's events; returns the packets to put on the wire.
    fn drain(&mut self, base: Instant, now: Instant) -> Vec<Vec<u8>> {
        let at = now - base;
        let mut outgoing = Vec::new();
        while let Some(event) = self.session.poll_event() {
            match event {
                SessionEvent::Transmit(bytes) => {
                    self.activity.last_sent = now;
                    self.transmits.push((at, bytes.clone()));
                    outgoing.push(bytes);
                }
                SessionEvent::InstallReceiveKey(key) => {
                    let key_id = key.key_id();
                    self.receive_keys.retain(|old| old.key_id() != key_id);
                    self.receive_keys.push(*key);
                    self.installed.push(key_id);
                }
                SessionEvent::ActivateSendKey(key) => {
                    self.activated.push((at, key.key_id()));
                    self.send_key = Some(key);
                }
                SessionEvent::RetireReceiveKey(key_id) => {
                    self.receive_keys.retain(|old| old.key_id() != key_id);
                    self.retired.push(key_id);
                }
                SessionEvent::Established {
                    params,
                    peer_common_name,
                } => {
                    assert!(
                        self.established.is_none(),
                        "{}: Established twice",
                        self.name
                    );
                    self.established = Some((at, params, peer_common_name));
                }
                SessionEvent::Pushed(options) => self.pushed = Some(options),
                SessionEvent::PeerAuthenticated { common_name } => {
                    self.authenticated.push(common_name)
                }
                SessionEvent::SendPing => self.pings += 1,
                SessionEvent::Ended(end) => {
                    assert!(self.ended.is_none(), "{}: Ended twice", self.name);
                    self.ended = Some((at, end));
                }
            }
        }
        outgoing
    }

    fn deadline(&self) -> Option<Instant> {
        if self.session.is_ended() {
            return None;
        }
        self.session.poll_timeout()
    }

    fn on_timeout(&mut self, now: Instant) {
        self.session.handle_timeout(now, self.activity);
        // The runtime sleeps until poll_timeout: one in the past after handle_timeout is a
        // busy loop.
        if let Some(next) = self.deadline() {
            assert!(
                next > now,
                "{}: poll_timeout {:?} is not after the handle_timeout that just ran",
                self.name,
                now.saturating_duration_since(next)
            );
        }
    }

    fn receive_key(&mut self, key_id: KeyId) -> Option<&mut ReceiveKey> {
        self.receive_keys
            .iter_mut()
            .find(|key| key.key_id() == key_id)
    }

    fn end_reason(&self) -> Option<&SessionEnd> {
        self.ended.as_ref().map(|(_, end)| end)
    }
}

// ---------------------------------------------------------------------------------------------
// Link and Pair

#[derive(Debug, Clone, Copy)]
struct LinkConfig {
    loss: f64,
    duplicate: f64,
    latency: Duration,
    /// Extra delay drawn uniformly per packet: packets of one flight overtake each other.
    jitter: Duration,
}

impl LinkConfig {
    fn clean() -> Self {
        Self {
            loss: 0.0,
            duplicate: 0.0,
            latency: Duration::from_millis(5),
            jitter: Duration::ZERO,
        }
    }

    fn lossy(loss: f64) -> Self {
        Self {
            loss,
            duplicate: 0.1,
            latency: Duration::from_millis(20),
            jitter: Duration::from_millis(40),
        }
    }
}

struct InFlight {
    at: Instant,
    order: u64,
    to_server: bool,
    bytes: Vec<u8>,
}

struct Pair {
    base: Instant,
    now: Instant,
    next_tick: Instant,
    /// The TLS client.
    client: Endpoint,
    /// The TLS server.
    server: Endpoint,
    link: LinkConfig,
    rng: XorShift,
    in_flight: Vec<InFlight>,
    order: u64,
    /// Packets the link dropped (loss and blackouts) and sent twice.
    lost: usize,
    duplicated: usize,
    /// The TLS client is in `SessionMode::Client` (it must receive a push).
    client_mode: bool,
    /// Packets towards the client sent before this instant are lost (a scripted outage).
    blackout_to_client_until: Option<Instant>,
}

impl Pair {
    /// `client_config` must be a TLS client, `server_config` a TLS server.
    fn new(
        client_config: SessionConfig,
        server_config: SessionConfig,
        wrap: Wrap,
        link: LinkConfig,
        seed: u64,
    ) -> Self {
        let base = Instant::now();
        let client_mode = matches!(client_config.mode, SessionMode::Client);
        let client = Session::new(
            client_config,
            ControlCodec::new(protection(wrap, TlsRole::Client, 1), START_UNIX),
            base,
            START_UNIX,
            random_source(seed.wrapping_mul(2)),
        )
        .unwrap();
        let server = Session::new(
            server_config,
            ControlCodec::new(protection(wrap, TlsRole::Server, 1), START_UNIX),
            base,
            START_UNIX,
            random_source(seed.wrapping_mul(2) + 1),
        )
        .unwrap();
        Self {
            base,
            now: base,
            next_tick: base + Duration::from_secs(1),
            client: Endpoint::new("client", client, base),
            server: Endpoint::new("server", server, base),
            link,
            rng: XorShift::new(seed),
            in_flight: Vec::new(),
            order: 0,
            lost: 0,
            duplicated: 0,
            client_mode,
            blackout_to_client_until: None,
        }
    }

    fn standard(roles: Roles, wrap: Wrap, link: LinkConfig, seed: u64) -> Self {
        Self::new(
            session_config(roles, TlsRole::Client, &Cipher::ALL, wrap),
            session_config(roles, TlsRole::Server, &Cipher::ALL, wrap),
            wrap,
            link,
            seed,
        )
    }

    fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    /// Moves session events onto the link, and checks that a send key is only activated once
    /// the peer can decrypt with it (the peer acked our key-method message, after which it
    /// installed the matching receive key).
    fn pump(&mut self) {
        let (base, now) = (self.base, self.now);
        let before = (self.client.activated.len(), self.server.activated.len());
        for packet in self.client.drain(base, now) {
            self.send(true, packet);
        }
        for packet in self.server.drain(base, now) {
            self.send(false, packet);
        }
        for (endpoint, peer, seen) in [
            (&self.client, &self.server, before.0),
            (&self.server, &self.client, before.1),
        ] {
            for (at, key_id) in &endpoint.activated[seen..] {
                assert!(
                    peer.receive_keys.iter().any(|key| key.key_id() == *key_id),
                    "{} activated {key_id:?} at {at:?} before {} installed it",
                    endpoint.name,
                    peer.name
                );
            }
        }
    }

    fn send(&mut self, to_server: bool, bytes: Vec<u8>) {
        if self.rng.chance(self.link.loss)
            || (!to_server
                && self
                    .blackout_to_client_until
                    .is_some_and(|end| self.now < end))
        {
            self.lost += 1;
            return;
        }
        let copies = if self.rng.chance(self.link.duplicate) {
            self.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let jitter_ns = self.rng.below(self.link.jitter.as_nanos() as u64);
            self.order += 1;
            self.in_flight.push(InFlight {
                at: self.now + self.link.latency + Duration::from_nanos(jitter_ns),
                order: self.order,
                to_server,
                bytes: bytes.clone(),
            });
        }
    }

    /// Runs the simulation until `done` holds (true) or `limit` after the base passed (false).
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Pair) -> bool) -> bool {
        let end = self.base + limit;
        let mut spins = 0u32;
        loop {
            self.pump();
            if done(self) {
                return true;
            }
            let next = [
                self.in_flight.iter().map(|packet| packet.at).min(),
                self.client.deadline(),
                self.server.deadline(),
                Some(self.next_tick),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(end);
            if next > end {
                self.now = end;
                return false;
            }
            if next <= self.now {
                spins += 1;
                assert!(
                    spins < 1000,
                    "the simulation does not advance at {:?}",
                    self.elapsed()
                );
            } else {
                spins = 0;
                self.now = next;
            }
            self.deliver_due();
            let tick = self.now >= self.next_tick;
            if tick {
                self.next_tick += Duration::from_secs(1);
            }
            let now = self.now;
            for endpoint in [&mut self.client, &mut self.server] {
                if tick || endpoint.deadline().is_some_and(|at| at <= now) {
                    endpoint.on_timeout(now);
                }
            }
        }
    }

    fn deliver_due(&mut self) {
        let now = self.now;
        let mut due: Vec<InFlight> = Vec::new();
        let mut index = 0;
        while index < self.in_flight.len() {
            if self.in_flight[index].at <= now {
                due.push(self.in_flight.swap_remove(index));
            } else {
                index += 1;
            }
        }
        due.sort_by_key(|packet| (packet.at, packet.order));
        for packet in due {
            let endpoint = if packet.to_server {
                &mut self.server
            } else {
                &mut self.client
            };
            endpoint.activity.last_received = now;
            endpoint.session.handle_control(now, &packet.bytes);
        }
    }

    fn both_established(&self) -> bool {
        self.client.established.is_some() && self.server.established.is_some()
    }

    fn any_ended(&self) -> bool {
        self.client.ended.is_some() || self.server.ended.is_some()
    }

    /// Runs until both ends are established (and a client has its push) or one ended.
    fn establish(&mut self, limit: Duration) -> bool {
        let client_mode = self.client_mode;
        self.run_until(limit, |pair| {
            pair.any_ended()
                || (pair.both_established() && (!client_mode || pair.client.pushed.is_some()))
        });
        !self.any_ended()
            && self.both_established()
            && (!client_mode || self.client.pushed.is_some())
    }

    fn describe(&self) -> String {
        format!(
            "t={:?} client: est={:?} ended={:?} stats={:?}; server: est={:?} ended={:?} stats={:?}",
            self.elapsed(),
            self.client.established.as_ref().map(|e| e.0),
            self.client.ended,
            self.client.session.stats(),
            self.server.established.as_ref().map(|e| e.0),
            self.server.ended,
            self.server.session.stats(),
        )
    }
}

/// Seals `payload` with `from`'s current send key and opens it with `to`'s receive key of the
/// same key id. Returns the key id used and the header's peer id.
fn send_data(
    from: &Endpoint,
    to: &mut Endpoint,
    now: Instant,
    payload: &[u8],
) -> Result<(KeyId, Option<u32>), String> {
    let key = from
        .send_key
        .as_ref()
        .ok_or_else(|| format!("{} has no send key", from.name))?;
    let mut packet = Vec::new();
    key.seal(payload, &mut packet)
        .map_err(|error| format!("seal: {error}"))?;
    let (opcode, key_id, peer_id) = peek_data_key(&packet).map_err(|error| error.to_string())?;
    let expected_opcode = if peer_id.is_some() {
        Opcode::DataV2
    } else {
        Opcode::DataV1
    };
    assert_eq!(opcode, expected_opcode);
    let to_name = to.name;
    let receive = to
        .receive_key(key_id)
        .ok_or_else(|| format!("{to_name} has no receive key {key_id:?}"))?;
    match receive.open(now, &mut packet) {
        Ok(Received::Ip(opened)) if opened == payload => Ok((key_id, peer_id)),
        Ok(other) => Err(format!("opened as {other:?}")),
        Err(error) => Err(format!("open with {key_id:?}: {error}")),
    }
}

/// Both directions carry data, DATA_V2 with `peer_id`.
fn assert_data_flows(pair: &mut Pair, peer_id: u32) {
    let now = pair.now;
    for (from_client, payload) in [(true, &b"\x45 client to server"[..]), (false, b"\x45 back")] {
        let (from, to) = if from_client {
            (&pair.client, &mut pair.server)
        } else {
            (&pair.server, &mut pair.client)
        };
        let (_, header_peer_id) = send_data(from, to, now, payload).unwrap();
        assert_eq!(header_peer_id, Some(peer_id), "from client: {from_client}");
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Establishment for every role pair and protection

#[test]
fn every_role_pair_and_protection_establishes_with_matching_keys() {
    for (index, wrap) in WRAPS.into_iter().enumerate() {
        for roles in [Roles::ClientServer, Roles::P2p] {
            let mut pair = Pair::standard(roles, wrap, LinkConfig::clean(), 10 + index as u64);
            assert!(
                pair.establish(Duration::from_secs(5)),
                "{roles:?} {wrap:?}: {}",
                pair.describe()
            );
            let (_, client_params, server_cn) = pair.client.established.clone().unwrap();
            let (_, server_params, client_cn) = pair.server.established.clone().unwrap();
            assert_eq!(client_params, server_params, "{roles:?} {wrap:?}");
            assert_eq!(client_params.cipher, Cipher::ALL[0]);
            assert!(client_params.tls_ekm);
            assert_eq!(server_cn.as_deref(), Some("server"));
            assert_eq!(client_cn.as_deref(), Some("client"));
            assert_eq!(pair.client.session.params(), Some(client_params));
            assert!(pair.client.session.is_established() && pair.server.session.is_established());

            let peer_id = match (roles, client_params.format) {
                (Roles::ClientServer, DataFormat::V2 { peer_id }) => {
                    assert_eq!(peer_id, PUSHED_PEER_ID);
                    let pushed = pair.client.pushed.clone().unwrap();
                    let expected = server_push();
                    assert_eq!(pushed.ifconfig, expected.ifconfig);
                    assert_eq!(pushed.topology, expected.topology);
                    assert_eq!(pushed.routes, expected.routes);
                    assert_eq!(pushed.route_gateway, expected.route_gateway);
                    assert_eq!(pushed.peer_id, Some(PUSHED_PEER_ID));
                    assert_eq!(pushed.cipher, Some(Cipher::ALL[0]));
                    assert!(pushed.key_derivation_tls_ekm);
                    peer_id
                }
                (Roles::P2p, DataFormat::V2 { peer_id }) => {
                    assert!(pair.client.pushed.is_none() && pair.server.pushed.is_none());
                    peer_id
                }
                (_, DataFormat::V1) => panic!("{roles:?}: DATA_V1 negotiated"),
            };
            assert_eq!(pair.client.activated.len(), 1);
            assert_eq!(pair.server.activated.len(), 1);
            assert_eq!(pair.client.activated[0].1, KeyId::ZERO);
            assert_data_flows(&mut pair, peer_id);
            let stats = pair.server.session.stats();
            assert_eq!(stats.keys_negotiated, 1);
            assert_eq!(
                (stats.unauthenticated, stats.replayed, stats.malformed),
                (0, 0, 0)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Loss, duplication and reordering

#[test]
fn handshakes_survive_loss_duplication_and_reordering() {
    let mut times = Vec::new();
    let mut lost_and_duplicated = (0, 0);
    for seed in 0..6u64 {
        for (roles, wrap) in [
            (Roles::ClientServer, Wrap::TlsCrypt),
            (Roles::P2p, WRAPS[1]),
            (Roles::ClientServer, Wrap::None),
        ] {
            let loss = 0.2 + 0.02 * seed as f64;
            let mut pair = Pair::standard(roles, wrap, LinkConfig::lossy(loss), 100 + seed);
            assert!(
                pair.establish(HANDSHAKE_WINDOW),
                "seed {seed} {roles:?} {wrap:?} loss {loss}: {}",
                pair.describe()
            );
            let (_, client_params, _) = pair.client.established.clone().unwrap();
            let (_, server_params, _) = pair.server.established.clone().unwrap();
            assert_eq!(client_params, server_params);
            let DataFormat::V2 { peer_id } = client_params.format else {
                panic!("DATA_V1");
            };
            lost_and_duplicated.0 += pair.lost;
            lost_and_duplicated.1 += pair.duplicated;
            // The key activation may trail Established on the other side by the ack's trip.
            pair.run_until(pair.elapsed() + Duration::from_secs(5), |pair| {
                pair.client.send_key.is_some() && pair.server.send_key.is_some()
            });
            assert_data_flows(&mut pair, peer_id);
            times.push(pair.elapsed());
        }
    }
    // The link really lost and duplicated packets.
    assert!(
        lost_and_duplicated.0 > 20 && lost_and_duplicated.1 > 5,
        "{lost_and_duplicated:?}"
    );
    // The loss really bit: some handshake needed retransmission timers (>= 2 s).
    assert!(
        times.iter().any(|time| *time >= Duration::from_secs(2)),
        "{times:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Cipher negotiation

#[test]
fn server_cipher_order_wins_and_no_overlap_ends_with_a_reason() {
    let wrap = Wrap::None;
    // Client/server: the server's list decides.
    let mut pair = Pair::new(
        session_config(
            Roles::ClientServer,
            TlsRole::Client,
            &[Cipher::Aes256Gcm, Cipher::Chacha20Poly1305],
            wrap,
        ),
        session_config(
            Roles::ClientServer,
            TlsRole::Server,
            &[Cipher::Chacha20Poly1305],
            wrap,
        ),
        wrap,
        LinkConfig::clean(),
        3,
    );
    assert!(
        pair.establish(Duration::from_secs(5)),
        "{}",
        pair.describe()
    );
    assert_eq!(
        pair.client.established.as_ref().unwrap().1.cipher,
        Cipher::Chacha20Poly1305
    );
    assert_eq!(
        pair.server.established.as_ref().unwrap().1.cipher,
        Cipher::Chacha20Poly1305
    );
    assert_eq!(
        pair.client.pushed.as_ref().unwrap().cipher,
        Some(Cipher::Chacha20Poly1305)
    );
    assert_data_flows(&mut pair, PUSHED_PEER_ID);

    // p2p: the TLS server's order decides, whichever side computes it.
    let mut pair = Pair::new(
        session_config(
            Roles::P2p,
            TlsRole::Client,
            &[Cipher::Aes256Gcm, Cipher::Chacha20Poly1305],
            wrap,
        ),
        session_config(
            Roles::P2p,
            TlsRole::Server,
            &[Cipher::Chacha20Poly1305, Cipher::Aes256Gcm],
            wrap,
        ),
        wrap,
        LinkConfig::clean(),
        4,
    );
    assert!(
        pair.establish(Duration::from_secs(5)),
        "{}",
        pair.describe()
    );
    assert_eq!(
        pair.client.established.as_ref().unwrap().1.cipher,
        Cipher::Chacha20Poly1305
    );
    assert_eq!(
        pair.server.established.as_ref().unwrap().1.cipher,
        Cipher::Chacha20Poly1305
    );

    // No overlap, client/server: the server refuses with AUTH_FAILED and says why.
    let mut pair = Pair::new(
        session_config(
            Roles::ClientServer,
            TlsRole::Client,
            &[Cipher::Aes256Gcm],
            wrap,
        ),
        session_config(
            Roles::ClientServer,
            TlsRole::Server,
            &[Cipher::Chacha20Poly1305],
            wrap,
        ),
        wrap,
        LinkConfig::clean(),
        5,
    );
    pair.run_until(Duration::from_secs(10), |pair| {
        pair.client.ended.is_some() && pair.server.ended.is_some()
    });
    let Some(SessionEnd::Protocol(server_reason)) = pair.server.end_reason() else {
        panic!("server: {}", pair.describe());
    };
    assert!(
        server_reason.contains("no common data cipher"),
        "{server_reason}"
    );
    assert!(
        server_reason.contains("CHACHA20-POLY1305"),
        "{server_reason}"
    );
    let Some(SessionEnd::Protocol(client_reason)) = pair.client.end_reason() else {
        panic!("client: {}", pair.describe());
    };
    assert!(client_reason.contains("AUTH_FAILED"), "{client_reason}");
    assert!(pair.client.established.is_none() && pair.server.established.is_none());
    assert!(pair.client.send_key.is_none() && pair.server.send_key.is_none());

    // No overlap, p2p: both ends see it and end.
    let mut pair = Pair::new(
        session_config(Roles::P2p, TlsRole::Client, &[Cipher::Aes256Gcm], wrap),
        session_config(
            Roles::P2p,
            TlsRole::Server,
            &[Cipher::Chacha20Poly1305],
            wrap,
        ),
        wrap,
        LinkConfig::clean(),
        6,
    );
    pair.run_until(Duration::from_secs(10), |pair| {
        pair.client.ended.is_some() && pair.server.ended.is_some()
    });
    for endpoint in [&pair.client, &pair.server] {
        let Some(SessionEnd::Protocol(reason)) = endpoint.end_reason() else {
            panic!("{}: {}", endpoint.name, pair.describe());
        };
        assert!(reason.contains("no common data cipher"), "{reason}");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Legacy PRF

#[test]
fn peers_without_tls_ekm_derive_matching_keys_with_the_legacy_prf() {
    for roles in [Roles::ClientServer, Roles::P2p] {
        let wrap = WRAPS[1];
        let client = without_tls_ekm(session_config(roles, TlsRole::Client, &Cipher::ALL, wrap));
        let mut server = session_config(roles, TlsRole::Server, &Cipher::ALL, wrap);
        if roles == Roles::P2p {
            // A p2p peer decides from the other's bit alone (ssl_ncp.c p2p_ncp_set_options),
            // so a real pre-EKM pair lacks it on both ends.
            server = without_tls_ekm(server);
        }
        let mut pair = Pair::new(client, server, wrap, LinkConfig::clean(), 40);
        assert!(
            pair.establish(Duration::from_secs(5)),
            "{roles:?}: {}",
            pair.describe()
        );
        let (_, client_params, _) = pair.client.established.clone().unwrap();
        let (_, server_params, _) = pair.server.established.clone().unwrap();
        assert_eq!(client_params, server_params);
        assert!(!client_params.tls_ekm, "{roles:?}");
        let DataFormat::V2 { peer_id } = client_params.format else {
            panic!("DATA_V1");
        };
        if roles == Roles::ClientServer {
            assert!(!pair.client.pushed.as_ref().unwrap().key_derivation_tls_ekm);
        } else {
            // Without EKM the p2p peer id is the fixed 'vpn'.
            assert_eq!(peer_id, super::options::P2P_FIXED_PEER_ID);
        }
        assert_data_flows(&mut pair, peer_id);
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Renegotiation

/// Runs `pair` for `duration`, sending one packet each way every simulated second with the
/// current keys; every one must open.
fn run_with_data(pair: &mut Pair, duration: Duration) -> usize {
    let end = pair.elapsed() + duration;
    let mut sent = 0;
    while pair.elapsed() < end {
        let until = pair.elapsed() + Duration::from_secs(1);
        pair.run_until(until, |pair| pair.any_ended());
        assert!(!pair.any_ended(), "{}", pair.describe());
        let now = pair.now;
        let payload = format!("\x45 packet at {:?}", pair.elapsed()).into_bytes();
        send_data(&pair.client, &mut pair.server, now, &payload)
            .unwrap_or_else(|error| panic!("client->server at {:?}: {error}", pair.elapsed()));
        send_data(&pair.server, &mut pair.client, now, &payload)
            .unwrap_or_else(|error| panic!("server->client at {:?}: {error}", pair.elapsed()));
        sent += 2;
    }
    sent
}

#[test]
fn renegotiation_rotates_keys_without_losing_data() {
    // Client-initiated (client/server) and TLS-server-initiated (p2p), clean and lossy.
    let cases = [
        (
            Roles::ClientServer,
            TlsRole::Client,
            LinkConfig::clean(),
            Wrap::TlsCrypt,
        ),
        (Roles::P2p, TlsRole::Server, LinkConfig::clean(), WRAPS[2]),
        (
            Roles::ClientServer,
            TlsRole::Client,
            LinkConfig::lossy(0.2),
            Wrap::TlsCrypt,
        ),
        (
            Roles::P2p,
            TlsRole::Server,
            LinkConfig::lossy(0.25),
            Wrap::None,
        ),
        (
            Roles::P2p,
            TlsRole::Server,
            LinkConfig::lossy(0.3),
            Wrap::TlsCrypt,
        ),
        (
            Roles::ClientServer,
            TlsRole::Server,
            LinkConfig::lossy(0.3),
            WRAPS[1],
        ),
    ];
    for (case, (roles, initiator, link, wrap)) in cases.into_iter().enumerate() {
        // Lost packets delay a renegotiation by retransmission timeouts; give lossy cases time.
        let duration = if link.loss > 0.0 { 60 } else { 35 };
        let mut client = session_config(roles, TlsRole::Client, &Cipher::ALL, wrap);
        let mut server = session_config(roles, TlsRole::Server, &Cipher::ALL, wrap);
        client.reneg_interval = None;
        server.reneg_interval = None;
        match initiator {
            TlsRole::Client => client.reneg_interval = Some(Duration::from_secs(10)),
            TlsRole::Server => server.reneg_interval = Some(Duration::from_secs(10)),
        }
        let mut pair = Pair::new(client, server, wrap, link, 60 + case as u64);
        assert!(
            pair.establish(HANDSHAKE_WINDOW),
            "case {case}: {}",
            pair.describe()
        );
        pair.run_until(pair.elapsed() + Duration::from_secs(5), |pair| {
            pair.client.send_key.is_some() && pair.server.send_key.is_some()
        });
        let started = pair.elapsed();
        run_with_data(&mut pair, Duration::from_secs(duration));

        for endpoint in [&pair.client, &pair.server] {
            let ids: Vec<u8> = endpoint.activated.iter().map(|(_, id)| id.get()).collect();
            assert!(
                endpoint.activated.len() >= 4,
                "case {case} {}: activations {:?}",
                endpoint.name,
                endpoint.activated
            );
            // Consecutive key ids: no renegotiation was started twice or abandoned.
            let expected: Vec<u8> = (0..ids.len() as u8).collect();
            assert_eq!(ids, expected, "case {case} {}", endpoint.name);
            // The initiator starts the next renegotiation a full interval after the previous
            // key became active: never back to back. (The responder follows the initiator's
            // timeline, shifted by how late its own first key activated.)
            let initiator_name = match initiator {
                TlsRole::Client => "client",
                TlsRole::Server => "server",
            };
            for window in endpoint.activated.windows(2) {
                let gap = window[1].0 - window[0].0;
                assert!(
                    endpoint.name != initiator_name || gap >= Duration::from_secs(10),
                    "case {case} {}: keys {:?}",
                    endpoint.name,
                    endpoint.activated
                );
            }
            assert!(
                !endpoint.retired.is_empty(),
                "case {case} {}: no key retired",
                endpoint.name
            );
            assert!(endpoint.receive_keys.len() <= 3, "case {case}");
            // The retired keys are the oldest ones.
            assert_eq!(endpoint.retired[0], KeyId::ZERO, "case {case}");
        }
        let stats = pair.client.session.stats();
        assert_eq!(stats.keys_negotiated, pair.client.activated.len() as u64);
        assert!(pair.elapsed() >= started + Duration::from_secs(duration));
    }
}

/// The TLS server writes the last key-method message of a key state (only after the client's
/// Finished), so it holds installed keys while that message is on its way. Its send key must
/// wait for the client's ack (until then the client cannot decrypt), and while it waits a
/// renegotiation that is due must not start again, nor may `poll_timeout` return an instant
/// already past (the runtime sleeps until it: a busy loop).
#[test]
fn a_renegotiation_waiting_for_its_last_ack_is_not_restarted() {
    let wrap = Wrap::None;
    let mut client = session_config(Roles::P2p, TlsRole::Client, &Cipher::ALL, wrap);
    let mut server = session_config(Roles::P2p, TlsRole::Server, &Cipher::ALL, wrap);
    client.reneg_interval = None;
    server.reneg_interval = Some(Duration::from_secs(10));
    let mut pair = Pair::new(client, server, wrap, LinkConfig::clean(), 75);
    assert!(pair.establish(Duration::from_secs(5)));
    let one = KeyId::ZERO.next();
    assert!(pair.run_until(Duration::from_secs(20), |pair| {
        pair.server.installed.contains(&one)
    }));
    assert!(
        pair.server.activated.iter().all(|(_, id)| *id != one),
        "the server sends with key 1 before the client has its key-method message: {:?}",
        pair.server.activated
    );
    // Everything towards the client is lost for 5 s: the server's key-method message, its
    // retransmission 2 s later, and the pings of the data below.
    pair.blackout_to_client_until = Some(pair.now + Duration::from_secs(5));
    pair.in_flight.retain(|packet| packet.to_server);
    let soft_resets_before = soft_resets(&pair.server);
    run_with_data(&mut pair, Duration::from_secs(9));
    let activated: Vec<KeyId> = pair.server.activated.iter().map(|(_, id)| *id).collect();
    assert_eq!(
        activated,
        vec![KeyId::ZERO, one],
        "{:?}",
        pair.server.activated
    );
    assert_eq!(
        soft_resets(&pair.server),
        soft_resets_before,
        "a second renegotiation started while the first waited for its ack"
    );
}

/// SOFT_RESET_V1 packets an endpoint sent, by key id (retransmissions included).
fn soft_resets(endpoint: &Endpoint) -> Vec<KeyId> {
    let mut ids: Vec<KeyId> = endpoint
        .transmits
        .iter()
        .filter_map(|(_, bytes)| match peek_opcode(bytes) {
            Ok((Opcode::SoftResetV1, key_id)) => Some(key_id),
            _ => None,
        })
        .collect();
    ids.dedup();
    ids
}

#[test]
fn lame_duck_keys_retire_after_the_transition_window() {
    let wrap = Wrap::None;
    let mut client = session_config(Roles::ClientServer, TlsRole::Client, &Cipher::ALL, wrap);
    let mut server = session_config(Roles::ClientServer, TlsRole::Server, &Cipher::ALL, wrap);
    client.reneg_interval = Some(Duration::from_secs(10));
    server.reneg_interval = None;
    client.transition_window = Duration::from_secs(3);
    server.transition_window = Duration::from_secs(3);
    let mut pair = Pair::new(client, server, wrap, LinkConfig::clean(), 70);
    assert!(pair.establish(Duration::from_secs(5)));
    run_with_data(&mut pair, Duration::from_secs(15));
    for endpoint in [&pair.client, &pair.server] {
        assert_eq!(endpoint.retired, vec![KeyId::ZERO], "{}", endpoint.name);
        let activated_1 = endpoint.activated[1].0;
        assert!(pair.elapsed() >= activated_1 + Duration::from_secs(3));
        assert_eq!(endpoint.receive_keys.len(), 1, "{}", endpoint.name);
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Replays, corruption, foreign keys

#[test]
fn replayed_and_corrupted_data_packets_are_dropped_and_counted() {
    let mut pair = Pair::standard(Roles::ClientServer, Wrap::TlsCrypt, LinkConfig::clean(), 80);
    assert!(pair.establish(Duration::from_secs(5)));
    let now = pair.now;
    let key = pair.client.send_key.clone().unwrap();
    let mut packet = Vec::new();
    key.seal(b"\x45 once only", &mut packet).unwrap();
    let receive = pair.server.receive_key(KeyId::ZERO).unwrap();

    let mut first = packet.clone();
    assert_eq!(
        receive.open(now, &mut first),
        Ok(Received::Ip(&b"\x45 once only"[..]))
    );
    let mut again = packet.clone();
    assert_eq!(receive.open(now, &mut again), Err(DataError::Replay));
    assert_eq!(receive.stats().replayed, 1);
    assert_eq!(receive.stats().packets, 1);

    // A flipped byte in a fresh packet (header, packet id, tag or ciphertext): refused.
    for position in [2usize, 5, 10, 30] {
        let mut fresh = Vec::new();
        key.seal(b"\x45 corrupted on the way", &mut fresh).unwrap();
        fresh[position] ^= 0x20;
        let before = receive.stats().auth_failed;
        assert_eq!(
            receive.open(now, &mut fresh),
            Err(DataError::Unauthenticated),
            "byte {position}"
        );
        assert_eq!(receive.stats().auth_failed, before + 1);
    }
    // The refused packets did not move the window: the next genuine one opens.
    let mut next = Vec::new();
    key.seal(b"\x45 still fine", &mut next).unwrap();
    assert!(receive.open(now, &mut next).is_ok());
}

#[test]
fn replayed_control_packets_are_counted_under_tls_auth_and_tls_crypt() {
    for wrap in [WRAPS[1], WRAPS[2], Wrap::TlsCrypt] {
        let mut pair = Pair::standard(Roles::ClientServer, wrap, LinkConfig::clean(), 90);
        assert!(pair.establish(Duration::from_secs(5)), "{wrap:?}");
        // Let the last acks land.
        pair.run_until(pair.elapsed() + Duration::from_secs(1), |pair| {
            pair.in_flight.is_empty()
        });
        assert!(pair.in_flight.is_empty());
        assert_eq!(pair.server.session.stats().replayed, 0);
        let transmits_before = pair.server.transmits.len();
        // Every control packet the client sent, again.
        let replays: Vec<Vec<u8>> = pair
            .client
            .transmits
            .iter()
            .map(|(_, bytes)| bytes.clone())
            .collect();
        for bytes in &replays {
            pair.server.session.handle_control(pair.now, bytes);
        }
        let stats = pair.server.session.stats();
        assert_eq!(stats.replayed, replays.len() as u64, "{wrap:?}");
        assert_eq!((stats.unauthenticated, stats.malformed), (0, 0), "{wrap:?}");
        // Replays are dropped before the reliability layer: nothing is re-acked.
        pair.pump();
        assert_eq!(pair.server.transmits.len(), transmits_before, "{wrap:?}");
        assert!(pair.server.ended.is_none());
    }
}

#[test]
fn tls_crypt_packets_under_another_key_are_refused_silently() {
    let mut pair = Pair::standard(Roles::ClientServer, Wrap::TlsCrypt, LinkConfig::clean(), 95);
    assert!(pair.establish(Duration::from_secs(5)));

    // An intruder client with another tls-crypt key.
    let now = pair.now;
    let mut intruder = Session::new(
        session_config(
            Roles::ClientServer,
            TlsRole::Client,
            &Cipher::ALL,
            Wrap::TlsCrypt,
        ),
        ControlCodec::new(
            protection(Wrap::TlsCrypt, TlsRole::Client, 2),
            START_UNIX + 10,
        ),
        now,
        START_UNIX + 10,
        random_source(999),
    )
    .unwrap();
    let Some(SessionEvent::Transmit(reset)) = intruder.poll_event() else {
        panic!("the intruder sends its reset first");
    };
    assert!(matches!(
        peek_opcode(&reset),
        Ok((Opcode::HardResetClientV2, _))
    ));

    // The established server: counted, ignored, no answer, session untouched.
    let transmits_before = pair.server.transmits.len();
    pair.server.session.handle_control(now, &reset);
    assert_eq!(pair.server.session.stats().unauthenticated, 1);
    // The session-id check reads the clear header only; the runtime authenticates a candidate
    // session before switching to it.
    assert!(pair.server.session.is_new_session_reset(&reset));
    pair.pump();
    assert_eq!(pair.server.transmits.len(), transmits_before);
    assert!(pair.server.ended.is_none() && !pair.server.session.is_ended());

    // A fresh server waiting for its first client: same, and it learns no peer.
    let mut fresh = Session::new(
        session_config(
            Roles::ClientServer,
            TlsRole::Server,
            &Cipher::ALL,
            Wrap::TlsCrypt,
        ),
        ControlCodec::new(protection(Wrap::TlsCrypt, TlsRole::Server, 1), START_UNIX),
        now,
        START_UNIX,
        random_source(1000),
    )
    .unwrap();
    fresh.handle_control(now, &reset);
    fresh.handle_timeout(now + Duration::from_secs(1), pair.server.activity);
    assert_eq!(fresh.stats().unauthenticated, 1);
    assert!(fresh.remote_session_id().is_none());
    let events: Vec<SessionEvent> = std::iter::from_fn(|| fresh.poll_event()).collect();
    assert!(events.is_empty(), "{events:?}");
}

// ---------------------------------------------------------------------------------------------
// 7. Keepalive

#[test]
fn keepalive_pings_when_idle_and_ends_when_the_peer_is_silent() {
    let wrap = Wrap::None;
    let keepalive = Keepalive {
        interval: Duration::from_secs(2),
        timeout: Duration::from_secs(10),
    };
    let client = session_config(Roles::ClientServer, TlsRole::Client, &Cipher::ALL, wrap);
    let mut server = session_config(Roles::ClientServer, TlsRole::Server, &Cipher::ALL, wrap);
    server.keepalive = Some(keepalive);
    let mut pair = Pair::new(client, server, wrap, LinkConfig::clean(), 110);
    assert!(pair.establish(Duration::from_secs(5)));
    // The client had none configured and took the server's.
    let pushed = pair.client.pushed.as_ref().unwrap();
    assert_eq!((pushed.ping, pushed.ping_restart), (Some(2), Some(10)));
    assert_eq!(pair.client.session.keepalive(), Some(keepalive));

    for endpoint in [&mut pair.client, &mut pair.server] {
        let now = pair.now + Duration::from_secs(1);
        let base = pair.base;
        // Recent traffic both ways: nothing to do.
        endpoint.session.handle_timeout(
            now,
            LinkActivity {
                last_received: now - Duration::from_secs(1),
                last_sent: now - Duration::from_secs(1),
            },
        );
        endpoint.drain(base, now);
        assert_eq!(endpoint.pings, 0, "{}", endpoint.name);
        // Nothing sent for 3 s: ping.
        endpoint.session.handle_timeout(
            now,
            LinkActivity {
                last_received: now - Duration::from_secs(1),
                last_sent: now - Duration::from_secs(3),
            },
        );
        endpoint.drain(base, now);
        assert_eq!(endpoint.pings, 1, "{}", endpoint.name);
        assert!(endpoint.ended.is_none());
        // Silence from the peer for 9 s is still fine, 10 s is not.
        let later = now + Duration::from_secs(9);
        endpoint.session.handle_timeout(
            later,
            LinkActivity {
                last_received: now,
                last_sent: later,
            },
        );
        endpoint.drain(base, later);
        assert!(endpoint.ended.is_none(), "{}", endpoint.name);
        let later = now + Duration::from_secs(10);
        endpoint.session.handle_timeout(
            later,
            LinkActivity {
                last_received: now,
                last_sent: later,
            },
        );
        endpoint.drain(base, later);
        assert_eq!(endpoint.end_reason(), Some(&SessionEnd::PingTimeout));
        assert!(endpoint.session.is_ended());
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Handshake timeout

#[test]
fn a_client_without_peer_retransmits_with_backoff_and_times_out() {
    let wrap = Wrap::TlsCrypt;
    let base = Instant::now();
    let session = Session::new(
        session_config(Roles::ClientServer, TlsRole::Client, &Cipher::ALL, wrap),
        ControlCodec::new(protection(wrap, TlsRole::Client, 1), START_UNIX),
        base,
        START_UNIX,
        random_source(120),
    )
    .unwrap();
    let mut client = Endpoint::new("client", session, base);
    client.drain(base, base);
    let mut now = base;
    while client.ended.is_none() && now < base + Duration::from_secs(120) {
        let next = client.deadline().expect("a pending session has a deadline");
        assert!(next > now);
        now = next;
        client.on_timeout(now);
        client.drain(base, now);
    }
    let (ended_at, end) = client.ended.clone().expect("the session ends");
    assert_eq!(end, SessionEnd::HandshakeTimeout);
    assert_eq!(ended_at, HANDSHAKE_WINDOW);

    let times: Vec<Duration> = client.transmits.iter().map(|(at, _)| *at).collect();
    assert!(times.len() >= 5, "{times:?}");
    assert_eq!(times[0], Duration::ZERO);
    let gaps: Vec<Duration> = times.windows(2).map(|pair| pair[1] - pair[0]).collect();
    assert_eq!(gaps[0], Duration::from_secs(2), "{times:?}");
    for pair in gaps.windows(2) {
        assert!(pair[1] >= pair[0], "intervals shrink: {gaps:?}");
    }
    assert!(
        gaps.last().unwrap() > &gaps[0],
        "intervals do not grow: {gaps:?}"
    );
    assert!(times.iter().all(|time| *time < HANDSHAKE_WINDOW));
    // Every retransmission is the hard reset, each with a fresh tls-crypt replay id.
    for (_, bytes) in &client.transmits {
        assert!(matches!(
            peek_opcode(bytes),
            Ok((Opcode::HardResetClientV2, _))
        ));
    }
    assert_ne!(client.transmits[0].1, client.transmits[1].1);
}

// ---------------------------------------------------------------------------------------------
// 9. Certificate refusal

#[test]
fn a_client_certificate_from_another_ca_is_refused_by_the_server() {
    let wrap = Wrap::None;
    let mut client = session_config(Roles::ClientServer, TlsRole::Client, &Cipher::ALL, wrap);
    client.tls = TlsSetup::Client(pki().foreign_client.clone());
    let server = session_config(Roles::ClientServer, TlsRole::Server, &Cipher::ALL, wrap);
    let mut pair = Pair::new(client, server, wrap, LinkConfig::clean(), 130);
    pair.run_until(Duration::from_secs(10), |pair| {
        pair.server.ended.is_some() && pair.client.ended.is_some()
    });
    let Some(SessionEnd::TlsFailed(reason)) = pair.server.end_reason() else {
        panic!("{}", pair.describe());
    };
    assert!(reason.contains("configured CA"), "{reason}");
    assert!(reason.contains("UnknownIssuer"), "{reason}");
    // The server's alert reached the client, which ends too.
    let Some(SessionEnd::TlsFailed(client_reason)) = pair.client.end_reason() else {
        panic!("{}", pair.describe());
    };
    assert!(client_reason.contains("alert"), "{client_reason}");
    assert!(pair.server.established.is_none() && pair.server.receive_keys.is_empty());
    assert!(pair.client.established.is_none());
}

// ---------------------------------------------------------------------------------------------
// 10. Peer restart

#[test]
fn a_hard_reset_with_another_session_id_ends_the_server_session() {
    for wrap in [Wrap::None, WRAPS[1], Wrap::TlsCrypt] {
        let mut pair = Pair::standard(Roles::ClientServer, wrap, LinkConfig::clean(), 140);
        assert!(pair.establish(Duration::from_secs(5)), "{wrap:?}");
        // The client restarts a few seconds later (so its tls-auth/tls-crypt replay ids carry a
        // later time than everything the server has seen).
        pair.run_until(pair.elapsed() + Duration::from_secs(3), |_| false);
        let now = pair.now;
        let now_unix = START_UNIX + pair.elapsed().as_secs() as u32;
        let mut restarted = Session::new(
            session_config(Roles::ClientServer, TlsRole::Client, &Cipher::ALL, wrap),
            ControlCodec::new(protection(wrap, TlsRole::Client, 1), now_unix),
            now,
            now_unix,
            random_source(141),
        )
        .unwrap();
        let Some(SessionEvent::Transmit(reset)) = restarted.poll_event() else {
            panic!("the new session sends its reset");
        };
        assert_ne!(
            restarted.local_session_id(),
            pair.client.session.local_session_id()
        );
        assert!(pair.server.session.is_new_session_reset(&reset), "{wrap:?}");
        // The old client's own first packet is not a new session; clients never see one.
        let old_reset = pair.client.transmits[0].1.clone();
        assert!(!pair.server.session.is_new_session_reset(&old_reset));
        assert!(!pair.client.session.is_new_session_reset(&reset));

        pair.server.session.handle_control(now, &reset);
        pair.pump();
        assert_eq!(
            pair.server.end_reason(),
            Some(&SessionEnd::PeerNewSession),
            "{wrap:?}: {}",
            pair.describe()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Multi-client server: the push is decided per client, after TLS names it

fn per_client_push_pair(seed: u64) -> Pair {
    let wrap = WRAPS[0];
    let mut server_config =
        session_config(Roles::ClientServer, TlsRole::Server, &Cipher::ALL, wrap);
    server_config.push_per_client = true;
    Pair::new(
        session_config(Roles::ClientServer, TlsRole::Client, &Cipher::ALL, wrap),
        server_config,
        wrap,
        LinkConfig::clean(),
        seed,
    )
}

#[test]
fn a_per_client_push_waits_for_set_push_and_uses_its_address_and_peer_id() {
    let mut pair = per_client_push_pair(91);
    assert!(
        pair.run_until(Duration::from_secs(5), |pair| !pair
            .server
            .authenticated
            .is_empty()),
        "{}",
        pair.describe()
    );
    // Without a decision nothing is pushed and no key comes up, though the client asks.
    let wait_until = pair.elapsed() + Duration::from_millis(1500);
    assert!(
        !pair.run_until(wait_until, |pair| pair.client.pushed.is_some()
            || pair.server.established.is_some()
            || pair.any_ended())
    );
    let mut push = server_push();
    push.ifconfig = Some((Ipv4Addr::new(10, 8, 0, 77), Ipv4Addr::new(255, 255, 255, 0)));
    let now = pair.now;
    pair.server.session.set_push(now, push, 9);
    let limit = pair.elapsed() + Duration::from_secs(5);
    assert!(pair.establish(limit), "{}", pair.describe());
    let pushed = pair.client.pushed.clone().unwrap();
    assert_eq!(
        pushed.ifconfig,
        Some((Ipv4Addr::new(10, 8, 0, 77), Ipv4Addr::new(255, 255, 255, 0)))
    );
    assert_eq!(pushed.peer_id, Some(9));
    assert_data_flows(&mut pair, 9);
    // The name given with PeerAuthenticated is the certificate's, as Established reports it.
    let established_cn = pair.server.established.as_ref().unwrap().2.clone();
    assert!(established_cn.is_some());
    assert_eq!(pair.server.authenticated, vec![established_cn]);
}

#[test]
fn a_refused_client_gets_auth_failed_and_both_ends_stop() {
    let mut pair = per_client_push_pair(92);
    assert!(pair.run_until(Duration::from_secs(5), |pair| !pair
        .server
        .authenticated
        .is_empty()));
    let now = pair.now;
    pair.server.session.refuse(now, "client disabled");
    let limit = pair.elapsed() + Duration::from_secs(5);
    assert!(pair.run_until(limit, |pair| pair.client.ended.is_some()));
    match pair.client.end_reason() {
        Some(SessionEnd::Protocol(reason)) => {
            assert!(reason.contains("AUTH_FAILED client disabled"), "{reason}")
        }
        other => panic!("client ended with {other:?}"),
    }
    assert!(matches!(
        pair.server.end_reason(),
        Some(SessionEnd::Protocol(reason)) if reason.contains("client refused: client disabled")
    ));
    assert!(pair.client.pushed.is_none() && pair.client.established.is_none());
}

#[test]
fn a_server_restart_message_makes_the_client_restart() {
    let mut pair = per_client_push_pair(93);
    assert!(pair.run_until(Duration::from_secs(5), |pair| !pair
        .server
        .authenticated
        .is_empty()));
    let now = pair.now;
    pair.server.session.set_push(now, server_push(), 4);
    let limit = pair.elapsed() + Duration::from_secs(5);
    assert!(pair.establish(limit), "{}", pair.describe());
    let now = pair.now;
    assert!(pair.server.session.restart_peer(now, true));
    assert!(pair.server.session.is_ended());
    let limit = pair.elapsed() + Duration::from_secs(5);
    assert!(pair.run_until(limit, |pair| pair.client.ended.is_some()));
    assert!(matches!(
        pair.client.end_reason(),
        Some(SessionEnd::PeerRestart)
    ));
}

// ---------------------------------------------------------------------------------------------
// Stateless HMAC-cookie first packets (OpenVPN 2.6 UDP server)

const COOKIE_CLIENT: &str = "192.0.2.7:41000";

fn cookie_jar() -> super::server::SessionCookie {
    super::server::SessionCookie::new([0x5a; 32], 60)
}

/// The client's first packets through a stateless responder: its reset is answered with the
/// cookie reply (no state), and the first echo that verifies creates the server session.
/// Returns the pair with both sessions, or `None` if no echo verified.
fn pair_through_cookie(
    wrap: Wrap,
    jar: &super::server::SessionCookie,
    reply_cookie: Option<SessionId>,
    verify_at_unix: u32,
    seed: u64,
) -> Option<Pair> {
    let client_address: std::net::SocketAddr = COOKIE_CLIENT.parse().unwrap();
    let base = Instant::now();
    let client_config = session_config(Roles::ClientServer, TlsRole::Client, &Cipher::ALL, wrap);
    let server_config = session_config(Roles::ClientServer, TlsRole::Server, &Cipher::ALL, wrap);
    let client = Session::new(
        client_config,
        ControlCodec::new(protection(wrap, TlsRole::Client, 1), START_UNIX),
        base,
        START_UNIX,
        random_source(seed),
    )
    .unwrap();
    let mut client = Endpoint::new("client", client, base);
    // The responder keeps only a codec for authenticating (no replay state) and the key.
    let responder = ControlCodec::new(protection(wrap, TlsRole::Server, 1), START_UNIX);
    let resets = client.drain(base, base);
    assert_eq!(resets.len(), 1, "the client starts with one hard reset");
    let FirstPacket::Reset { client_session } =
        classify_first_packet(&responder, &resets[0]).unwrap()
    else {
        panic!("the client's first packet is not a reset");
    };
    let cookie = reply_cookie.unwrap_or_else(|| {
        jar.server_session_id(client_session, client_address, u64::from(START_UNIX))
    });
    let mut reply_codec = ControlCodec::new(protection(wrap, TlsRole::Server, 1), START_UNIX);
    let reply =
        stateless_reset_reply(&mut reply_codec, START_UNIX, cookie, client_session).unwrap();
    // The reply is a HARD_RESET_SERVER_V2 acking message 0 and carrying message 0.
    let mut scratch = Vec::new();
    let mut plain = ControlCodec::new(protection(wrap, TlsRole::Client, 1), START_UNIX);
    let decoded = plain.decode(base, &reply, &mut scratch).unwrap();
    assert_eq!(decoded.header.opcode, Opcode::HardResetServerV2);
    assert_eq!(decoded.header.session_id, cookie);
    assert_eq!(decoded.body.acks, vec![0]);
    assert_eq!(decoded.body.remote_session_id, Some(client_session));
    assert_eq!(decoded.body.message_id, Some(0));
    assert!(decoded.body.payload.is_empty());

    client.session.handle_control(base, &reply);
    let echoes = client.drain(base, base);
    assert!(!echoes.is_empty(), "the client answers the reset");
    let mut server: Option<Endpoint> = None;
    let mut pending = Vec::new();
    for packet in echoes {
        if server.is_some() {
            pending.push(packet);
            continue;
        }
        let Ok(FirstPacket::Echo {
            client_session: echo_client,
            echoed,
        }) = classify_first_packet(&responder, &packet)
        else {
            continue;
        };
        assert_eq!(echo_client, client_session);
        if !jar.verify(
            echoed,
            echo_client,
            client_address,
            u64::from(verify_at_unix),
        ) {
            continue;
        }
        let mut session = Session::new_server_after_cookie(
            server_config.clone(),
            ControlCodec::new(protection(wrap, TlsRole::Server, 1), START_UNIX),
            base,
            START_UNIX,
            random_source(seed + 1),
            echoed,
            echo_client,
        )
        .unwrap();
        assert_eq!(session.local_session_id(), cookie);
        session.handle_control(base, &packet);
        assert_eq!(session.stats(), Default::default(), "the echo is accepted");
        server = Some(Endpoint::new("server", session, base));
    }
    let server = server?;
    let mut pair = Pair {
        base,
        now: base,
        next_tick: base + Duration::from_secs(1),
        client,
        server,
        link: LinkConfig::clean(),
        rng: XorShift::new(seed),
        in_flight: Vec::new(),
        order: 0,
        lost: 0,
        duplicated: 0,
        client_mode: true,
        blackout_to_client_until: None,
    };
    for packet in pending {
        pair.send(true, packet);
    }
    Some(pair)
}

#[test]
fn a_cookie_server_session_completes_the_handshake_under_every_protection() {
    let jar = cookie_jar();
    for (index, wrap) in WRAPS.into_iter().enumerate() {
        let mut pair = pair_through_cookie(wrap, &jar, None, START_UNIX + 20, 40 + index as u64)
            .unwrap_or_else(|| panic!("{wrap:?}: no echo verified"));
        assert!(
            pair.establish(Duration::from_secs(30)),
            "{wrap:?}: {}",
            pair.describe()
        );
        assert_data_flows(&mut pair, PUSHED_PEER_ID);
        // No packet of either side was refused: replay ids and message ids line up with the
        // stateless reply.
        for endpoint in [&pair.client, &pair.server] {
            let stats = endpoint.session.stats();
            assert_eq!(
                (stats.unauthenticated, stats.replayed, stats.malformed),
                (0, 0, 0),
                "{wrap:?} {}: {stats:?}",
                endpoint.name
            );
        }
    }
}

#[test]
fn a_wrong_or_expired_cookie_creates_no_session() {
    let jar = cookie_jar();
    for wrap in [WRAPS[1], Wrap::TlsCrypt] {
        // The client echoes a cookie the server never made.
        let forged = SessionId([1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(pair_through_cookie(wrap, &jar, Some(forged), START_UNIX, 3).is_none());
        // A genuine cookie, echoed after the hand window: slots -2..=1 of 30 s each.
        assert!(pair_through_cookie(wrap, &jar, None, START_UNIX + 120, 4).is_none());
        // The same genuine cookie within the window does create one (the cases above fail
        // for the cookie alone).
        assert!(pair_through_cookie(wrap, &jar, None, START_UNIX + 30, 5).is_some());
    }
}

#[test]
fn only_resets_and_handshake_echoes_are_first_packets() {
    let codec = ControlCodec::new(protection(WRAPS[1], TlsRole::Server, 1), START_UNIX);
    let mut client = ControlCodec::new(protection(WRAPS[1], TlsRole::Client, 1), START_UNIX);
    let mut other_key = ControlCodec::new(protection(WRAPS[1], TlsRole::Client, 2), START_UNIX);
    let packet = |opcode, acks: Vec<u32>, message_id| super::packet::ControlPacket {
        header: super::packet::ControlHeader {
            opcode,
            key_id: KeyId::ZERO,
            session_id: SessionId([9; 8]),
        },
        body: super::packet::ControlBody {
            remote_session_id: (!acks.is_empty()).then_some(SessionId([7; 8])),
            acks,
            message_id,
            payload: &[],
        },
    };
    let wire = |codec: &mut ControlCodec, p: &super::packet::ControlPacket<'_>| {
        let mut out = Vec::new();
        codec.encode(START_UNIX, p, &mut out).unwrap();
        out
    };
    let reset = wire(
        &mut client,
        &packet(Opcode::HardResetClientV2, vec![], Some(0)),
    );
    assert_eq!(
        classify_first_packet(&codec, &reset),
        Ok(FirstPacket::Reset {
            client_session: SessionId([9; 8])
        })
    );
    let echo = wire(&mut client, &packet(Opcode::ControlV1, vec![0], Some(1)));
    assert_eq!(
        classify_first_packet(&codec, &echo),
        Ok(FirstPacket::Echo {
            client_session: SessionId([9; 8]),
            echoed: SessionId([7; 8])
        })
    );
    let ack = wire(&mut client, &packet(Opcode::AckV1, vec![0], None));
    assert!(matches!(
        classify_first_packet(&codec, &ack),
        Ok(FirstPacket::Echo { .. })
    ));
    for refused in [
        // No ack: nothing to check the cookie against.
        packet(Opcode::ControlV1, vec![], Some(1)),
        // Beyond the three-way handshake.
        packet(Opcode::ControlV1, vec![0], Some(2)),
        packet(Opcode::AckV1, vec![2], None),
        packet(Opcode::HardResetServerV2, vec![], Some(0)),
    ] {
        let bytes = wire(&mut client, &refused);
        assert_eq!(
            classify_first_packet(&codec, &bytes),
            Err(FirstPacketError::NotFirst),
            "{:?}",
            refused.header.opcode
        );
    }
    let forged = wire(
        &mut other_key,
        &packet(Opcode::HardResetClientV2, vec![], Some(0)),
    );
    assert!(matches!(
        classify_first_packet(&codec, &forged),
        Err(FirstPacketError::Codec(_))
    ));
}
