//! One configured tunnel at run time: a tokio control task driving the sans-IO
//! [`Session`](crate::proto::session::Session), and blocking data-path threads that move packets
//! between the tun device and the wire without locks shared with other tunnels.
//!
//! ```text
//!            tun ──read──► [tun→wire thread] ──seal (current SendKey)──► UDP / TCP
//!            tun ◄─write── [wire→tun thread] ◄─open (ReceiveKeys)─────── UDP / TCP
//!                                   │ control packets                       ▲
//!                                   ▼                                       │
//!                          [control task: Session] ──── Transmit ───────────┘
//! ```
//!
//! The session hands out keys as events; the data path reads the current send key through an
//! `ArcSwap` (no lock per packet) and the receive keys under a per-tunnel mutex that only the
//! one receiving thread takes per batch.
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arc_swap::ArcSwapOption;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::netlink::Netlink;
use super::offload;
use super::tun::{TunDevice, TunOptions, TunQueue, OFFLOAD_TCP, VNET_HDR_LEN};
use super::udp_batch::{set_socket_buffers, RecvBatch, SendBatch};
use crate::config::{
    Addressing, Compress, Config, ControlProtection, Role, TlsRole, Topology, Transport, Tunnel,
};
use crate::proto::control_codec::{ControlCodec, Protection};
use crate::proto::data::{
    peek_data_key, CompressionFraming, ReceiveKey, Received, ReplayConfig, SendKey,
};
use crate::proto::framing::{encode_frame, FrameDecoder};
use crate::proto::keys::StaticKey;
use crate::proto::options::{options_string, OccOptions, OccTransport, PeerInfo, PushOptions};
use crate::proto::packet::{peek_opcode, KeyId};
use crate::proto::session::{
    LinkActivity, Session, SessionConfig, SessionEnd, SessionEvent, SessionMode, TlsSetup,
};
use crate::proto::tls::{self, PeerChecks, PkiMaterial};
use crate::proto::tls_auth::TlsAuth;
use crate::proto::tls_crypt::TlsCrypt;

/// Longest we keep sending with the old key after renegotiating (see `pending_send_key`).
const KEY_SWITCH_GRACE: Duration = Duration::from_secs(3);
/// How long a client waits before reconnecting after a session ended.
const RECONNECT_DELAY: Duration = Duration::from_secs(2);
/// Largest packet we read from tun or the wire.
const MAX_PACKET: usize = 65_535;
/// How often blocking data-path threads look at the stop flag.
const POLL_INTERVAL_MS: i32 = 200;
/// Outer packet size TCP MSS clamping aims at: OpenVPN's default `mssfix 1492`. Full-sized
/// tunnelled segments then need no IP fragmentation and can go out as UDP GSO runs.
const MSSFIX_OUTER: usize = 1492;
/// Datagrams per `sendmmsg`: room for two 64 KiB TCP super-segments split into ~1.4 KiB
/// packets, so a GSO run is rarely cut by a flush.
const SEND_BATCH: usize = 128;
/// Receive slots of one `recvmmsg`; with UDP GRO each slot holds up to 64 KiB of datagrams.
const RECV_BATCH: usize = 32;
const RECV_SLOT: usize = 65_536;

/// Data-path counters of one tunnel. Aligned to a cache line, and the hot tx and rx counters
/// kept on separate lines, so the two data-path threads do not bounce one line between cores.
#[derive(Debug, Default)]
#[repr(C, align(64))]
pub struct Counters {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    _tx_line: [u64; 6],
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub rx_replayed: AtomicU64,
    pub rx_unauthenticated: AtomicU64,
    pub rx_malformed: AtomicU64,
    pub rx_compressed: AtomicU64,
    pub rx_unknown_key: AtomicU64,
    pub tx_no_key: AtomicU64,
    pub tx_errors: AtomicU64,
    /// Control packets refused by tls-auth/tls-crypt: never answered.
    pub control_unauthenticated: AtomicU64,
    /// Control packets dropped as replays or as not belonging to the session.
    pub control_dropped: AtomicU64,
}

/// A snapshot of a tunnel for `vpn-daemon status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelRuntimeStatus {
    pub state: String,
    pub peer: Option<String>,
    pub peer_common_name: Option<String>,
    pub cipher: Option<String>,
    pub key_derivation: Option<String>,
    pub keys_negotiated: u64,
    pub last_error: Option<String>,
    pub counters: std::collections::BTreeMap<String, u64>,
}

/// Where data packets go: the UDP socket and peer, or the TCP connection.
enum Wire {
    Udp {
        socket: Arc<UdpSocket>,
        peer: SocketAddr,
    },
    Tcp {
        stream: Arc<Mutex<TcpStream>>,
    },
}

/// What the data-path threads share with the control task.
struct DataPlane {
    send_key: ArcSwapOption<SendKey>,
    /// A renegotiated key the session has activated, not yet sent with: we switch once the peer
    /// sends on it (so it can surely decrypt it) or at `pending_deadline_ms`, whichever is first.
    /// A 2.6 peer enables a new key only once it saw our ack of its key-method message; if that
    /// ack is lost, switching at once would blackhole our traffic until its 2 s retransmit.
    pending_send_key: ArcSwapOption<SendKey>,
    pending_deadline_ms: AtomicU64,
    receive_keys: Mutex<Vec<ReceiveKey>>,
    wire: ArcSwapOption<Wire>,
    counters: Counters,
    anchor: Instant,
    last_received_ms: AtomicU64,
    last_sent_ms: AtomicU64,
    /// The peer sent explicit-exit-notify on the data channel; the control task ends the session.
    peer_exited: AtomicBool,
    stop: AtomicBool,
}

impl DataPlane {
    fn millis(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.anchor).as_millis() as u64
    }

    fn mark_received(&self) {
        self.last_received_ms
            .store(self.millis(Instant::now()), Ordering::Relaxed);
    }

    fn mark_sent(&self) {
        self.last_sent_ms
            .store(self.millis(Instant::now()), Ordering::Relaxed);
    }

    fn activity(&self) -> LinkActivity {
        let at = |ms: u64| self.anchor + Duration::from_millis(ms);
        LinkActivity {
            last_received: at(self.last_received_ms.load(Ordering::Relaxed)),
            last_sent: at(self.last_sent_ms.load(Ordering::Relaxed)),
        }
    }

    /// Starts sending with the pending renegotiated key once the peer used it (`used` is the key
    /// id a packet just authenticated under) or its grace period is over (`used` None: a tick).
    fn promote_pending_key(&self, used: Option<KeyId>) {
        let pending = self.pending_send_key.load();
        let Some(key) = pending.as_ref() else { return };
        let due = match used {
            Some(key_id) => key_id == key.key_id(),
            None => self.millis(Instant::now()) >= self.pending_deadline_ms.load(Ordering::Relaxed),
        };
        if due {
            self.send_key.store(Some(key.clone()));
            self.pending_send_key.store(None);
        }
    }

    /// Sends one already-sealed or control packet to the peer.
    fn send_packet(&self, packet: &[u8]) -> std::io::Result<()> {
        let wire = self.wire.load();
        match wire.as_deref() {
            Some(Wire::Udp { socket, peer }) => socket.send_to(packet, peer).map(|_| ()),
            Some(Wire::Tcp { stream }) => {
                let mut framed = Vec::with_capacity(packet.len() + 2);
                encode_frame(packet, &mut framed).map_err(std::io::Error::other)?;
                let mut stream = stream
                    .lock()
                    .map_err(|_| std::io::Error::other("poisoned"))?;
                stream.write_all(&framed)
            }
            None => Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "no peer yet",
            )),
        }?;
        self.mark_sent();
        Ok(())
    }

    /// Decrypts one data packet and writes it to tun.
    fn receive_data(&self, keys: &mut [ReceiveKey], packet: &mut [u8], tun: &TunQueue) -> bool {
        let (ok, payload) = self.open_data(keys, packet);
        if let Some(payload) = payload {
            let _ = tun.write_packet(payload);
        }
        ok
    }

    /// Decrypts one data packet in place and counts it: whether it authenticated, and the IP
    /// packet to write to tun if it carries one.
    fn open_data<'a>(
        &self,
        keys: &mut [ReceiveKey],
        packet: &'a mut [u8],
    ) -> (bool, Option<&'a [u8]>) {
        let Ok((_, key_id, _)) = peek_data_key(packet) else {
            self.counters.rx_malformed.fetch_add(1, Ordering::Relaxed);
            return (false, None);
        };
        let Some(key) = keys.iter_mut().find(|key| key.key_id() == key_id) else {
            self.counters.rx_unknown_key.fetch_add(1, Ordering::Relaxed);
            return (false, None);
        };
        let opened = key.open(Instant::now(), packet);
        if opened.is_ok() {
            self.promote_pending_key(Some(key_id));
        }
        match opened {
            Ok(Received::Ip(payload)) => {
                self.counters.rx_packets.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .rx_bytes
                    .fetch_add(payload.len() as u64, Ordering::Relaxed);
                (true, Some(payload))
            }
            Ok(Received::Ping) | Ok(Received::Occ(_)) => (true, None),
            Ok(Received::OccExit) => {
                self.peer_exited.store(true, Ordering::Relaxed);
                (true, None)
            }
            Ok(Received::Compressed) => {
                self.counters.rx_compressed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("dropped a compressed data packet: compression is not supported, only its framing");
                (true, None)
            }
            Err(error) => {
                use crate::proto::data::DataError;
                match error {
                    DataError::Replay => self.counters.rx_replayed.fetch_add(1, Ordering::Relaxed),
                    DataError::Unauthenticated => self
                        .counters
                        .rx_unauthenticated
                        .fetch_add(1, Ordering::Relaxed),
                    _ => self.counters.rx_malformed.fetch_add(1, Ordering::Relaxed),
                };
                (false, None)
            }
        }
    }
}

/// Input to the control task.
enum ControlInput {
    Packet { bytes: Vec<u8>, from: SocketAddr },
    ConnectionLost,
    TcpConnected { stream: TcpStream, peer: SocketAddr },
}

/// A running client or p2p tunnel; `role = "server"` tunnels run in
/// [`ServerRuntime`](super::server::ServerRuntime) instead.
pub struct TunnelRuntime {
    name: String,
    status: Arc<Mutex<TunnelRuntimeStatus>>,
    plane: Arc<DataPlane>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TunnelRuntime {
    /// Creates the tun device and sockets and starts the tunnel. Refuses a `role = "server"`
    /// tunnel: that is [`ServerRuntime`](super::server::ServerRuntime)'s. `link_changed` is
    /// notified whenever the status changes in a way the eBPF fast path reads (state, peer).
    pub async fn start(
        config: &Config,
        tunnel: &Tunnel,
        netlink: Arc<Netlink>,
        link_changed: Arc<tokio::sync::Notify>,
    ) -> anyhow::Result<TunnelRuntime> {
        let tls_role = tls_role(tunnel)?;
        let pki = PkiMaterial::load(&config.pki).context("loading the PKI")?;
        let checks = PeerChecks {
            remote_cert_tls: tunnel.remote_cert_tls,
            verify_x509_name: tunnel.verify_x509_name.clone(),
        };
        let tls_setup = match tls_role {
            TlsRole::Client => TlsSetup::Client(tls::client_config(&pki, &checks)?),
            TlsRole::Server => TlsSetup::Server(tls::server_config(&pki, &checks)?),
        };
        let protection_source = load_protection(&tunnel.control_protection)?;
        let session_config = session_config(tunnel, tls_setup)?;

        let device = create_tun(&tunnel.device)?;
        let index = device.ifindex();
        netlink
            .set_link_up(index, Some(u32::from(tunnel.mtu)))
            .await?;
        configure_static_addresses(&netlink, index, tunnel).await?;

        let plane = Arc::new(DataPlane {
            send_key: ArcSwapOption::empty(),
            pending_send_key: ArcSwapOption::empty(),
            pending_deadline_ms: AtomicU64::new(0),
            receive_keys: Mutex::new(Vec::new()),
            wire: ArcSwapOption::empty(),
            counters: Counters::default(),
            anchor: Instant::now(),
            last_received_ms: AtomicU64::new(0),
            last_sent_ms: AtomicU64::new(0),
            peer_exited: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let (input_tx, input_rx) = mpsc::channel::<ControlInput>(1024);
        let queue = device.queue(0).context("the tun device has no queue")?;
        let tun_read = queue.try_clone().context("cloning the tun queue")?;
        let tun_write = queue.try_clone().context("cloning the tun queue")?;
        let mut threads = Vec::new();

        let udp = match tunnel.transport {
            Transport::Udp => {
                let bind = tunnel
                    .local
                    .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
                let socket =
                    UdpSocket::bind(bind).with_context(|| format!("binding UDP {bind}"))?;
                socket.set_nonblocking(true)?;
                if let Err(error) = set_socket_buffers(&socket, 4 << 20) {
                    tracing::warn!(%error, "cannot enlarge the UDP socket buffers");
                }
                let socket = Arc::new(socket);
                let plane_rx = plane.clone();
                let socket_rx = socket.clone();
                let tx = input_tx.clone();
                threads.push(spawn_named(format!("{}-rx", tunnel.name), move || {
                    udp_receive_loop(&plane_rx, &socket_rx, &tun_write, &tx)
                })?);
                Some(socket)
            }
            Transport::Tcp => {
                let tun_for_tcp = tun_write;
                let plane_tcp = plane.clone();
                let tx = input_tx.clone();
                // Only a p2p TLS server without a remote accepts; everyone else dials out.
                let listener = match tunnel.local {
                    Some(local) if tls_role == TlsRole::Server && tunnel.remotes.is_empty() => {
                        Some(
                            TcpListener::bind(local)
                                .with_context(|| format!("listening on TCP {local}"))?,
                        )
                    }
                    _ => None,
                };
                let remotes = tunnel.remotes.clone();
                threads.push(spawn_named(format!("{}-tcp", tunnel.name), move || {
                    tcp_connection_loop(&plane_tcp, listener, remotes, &tun_for_tcp, &tx)
                })?);
                None
            }
        };
        let plane_tx = plane.clone();
        threads.push(spawn_named(format!("{}-tx", tunnel.name), move || {
            tun_send_loop(&plane_tx, &tun_read)
        })?);

        let status = Arc::new(Mutex::new(TunnelRuntimeStatus {
            // A TLS client with a remote dials out; everyone else waits for the peer.
            state: if tls_role == TlsRole::Client && !tunnel.remotes.is_empty() {
                "connecting"
            } else {
                "waiting for peer"
            }
            .into(),
            ..Default::default()
        }));
        let (stop, stop_rx) = watch::channel(false);
        let control = ControlTask {
            name: tunnel.name.clone(),
            tunnel: tunnel.clone(),
            tls_role,
            session_config,
            protection_source,
            plane: plane.clone(),
            udp,
            netlink,
            ifindex: index,
            status: status.clone(),
            link_changed,
            session: None,
            peer: None,
            device: Some(device),
            threads,
        };
        let task = tokio::spawn(control.run(input_rx, stop_rx));
        Ok(TunnelRuntime {
            name: tunnel.name.clone(),
            status,
            plane,
            stop,
            task,
        })
    }

    /// The tunnel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A status snapshot.
    pub fn status(&self) -> TunnelRuntimeStatus {
        let mut status = self
            .status
            .lock()
            .map(|status| status.clone())
            .unwrap_or_default();
        let counters = &self.plane.counters;
        let pairs = [
            ("tx_packets", &counters.tx_packets),
            ("tx_bytes", &counters.tx_bytes),
            ("rx_packets", &counters.rx_packets),
            ("rx_bytes", &counters.rx_bytes),
            ("rx_replayed", &counters.rx_replayed),
            ("rx_unauthenticated", &counters.rx_unauthenticated),
            ("rx_malformed", &counters.rx_malformed),
            ("rx_compressed", &counters.rx_compressed),
            ("rx_unknown_key", &counters.rx_unknown_key),
            ("tx_no_key", &counters.tx_no_key),
            ("tx_errors", &counters.tx_errors),
            ("control_unauthenticated", &counters.control_unauthenticated),
            ("control_dropped", &counters.control_dropped),
        ];
        status.counters = pairs
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value.load(Ordering::Relaxed)))
            .collect();
        status
    }

    /// Says goodbye to the peer, stops the threads and removes the tun device.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

pub(super) fn spawn_named(
    name: String,
    body: impl FnOnce() + Send + 'static,
) -> anyhow::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.chars().take(15).collect())
        .spawn(body)
        .context("spawning a data-path thread")
}

/// This end's TLS role; an error for a server tunnel, which [`TunnelRuntime`] does not run.
fn tls_role(tunnel: &Tunnel) -> anyhow::Result<TlsRole> {
    match (&tunnel.role, &tunnel.addressing) {
        (Role::Server, _) | (_, Addressing::Server { .. }) => Err(not_single_peer(tunnel)),
        (Role::Client, _) => Ok(TlsRole::Client),
        (Role::P2p, Addressing::P2p { tls, .. }) => Ok(*tls),
        (Role::P2p, _) => Ok(TlsRole::Server),
    }
}

/// The refusal of a `role = "server"` tunnel, which the multi-client runtime runs.
fn not_single_peer(tunnel: &Tunnel) -> anyhow::Error {
    anyhow::anyhow!(
        "tunnel `{}` has role = \"server\": it runs in the multi-client ServerRuntime, \
         not the single-peer TunnelRuntime",
        tunnel.name
    )
}

/// The static key material of the control-channel protection, read once.
#[derive(Clone)]
pub(super) enum ProtectionSource {
    None,
    TlsAuth(
        Arc<StaticKey>,
        Option<crate::config::KeyDirection>,
        crate::config::TlsAuthDigest,
    ),
    TlsCrypt(Arc<StaticKey>),
}

pub(super) fn load_protection(protection: &ControlProtection) -> anyhow::Result<ProtectionSource> {
    let read_key = |path: &std::path::Path| -> anyhow::Result<Arc<StaticKey>> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Arc::new(
            StaticKey::parse(&text).with_context(|| format!("parsing {}", path.display()))?,
        ))
    };
    Ok(match protection {
        ControlProtection::None => ProtectionSource::None,
        ControlProtection::TlsAuth {
            key,
            direction,
            digest,
        } => ProtectionSource::TlsAuth(read_key(key)?, *direction, *digest),
        ControlProtection::TlsCrypt { key } => ProtectionSource::TlsCrypt(read_key(key)?),
    })
}

impl ProtectionSource {
    pub(super) fn build(&self, role: TlsRole) -> Protection {
        match self {
            ProtectionSource::None => Protection::None,
            ProtectionSource::TlsAuth(key, direction, digest) => {
                Protection::TlsAuth(TlsAuth::new(key, *direction, *digest))
            }
            ProtectionSource::TlsCrypt(key) => Protection::TlsCrypt(TlsCrypt::new(key, role)),
        }
    }
}

fn session_config(tunnel: &Tunnel, tls: TlsSetup) -> anyhow::Result<SessionConfig> {
    let tls_role = match &tls {
        TlsSetup::Client(_) => TlsRole::Client,
        TlsSetup::Server(_) => TlsRole::Server,
    };
    let mode = match &tunnel.addressing {
        Addressing::Client => SessionMode::Client,
        Addressing::P2p { .. } => SessionMode::P2p,
        Addressing::Server { .. } => return Err(not_single_peer(tunnel)),
    };
    let mut config = SessionConfig::new(tls, mode, tunnel.transport, tunnel.ciphers.clone());
    let ifconfig = match &tunnel.addressing {
        Addressing::P2p { local, remote, .. } => Some((*local, *remote)),
        _ => None,
    };
    let occ_transport = match (tunnel.transport, tls_role) {
        (Transport::Udp, _) => OccTransport::Udp,
        // OCC names the TCP end by TLS role, as OpenVPN's tcp-client / tcp-server.
        (Transport::Tcp, TlsRole::Client) => OccTransport::TcpClient,
        (Transport::Tcp, TlsRole::Server) => OccTransport::TcpServer,
    };
    let (tls_auth, key_direction) = match &tunnel.control_protection {
        ControlProtection::TlsAuth { direction, .. } => (true, *direction),
        _ => (false, None),
    };
    config.options_string = options_string(&OccOptions {
        role: tls_role,
        transport: occ_transport,
        tun_mtu: tunnel.mtu,
        cipher: tunnel.ciphers.first().copied(),
        ifconfig,
        tls_auth,
        key_direction,
    });
    config.tun_mtu = tunnel.mtu;
    config.peer_info = PeerInfo::ours(
        &tunnel.ciphers,
        matches!(tunnel.addressing, Addressing::P2p { .. }),
        tunnel.mtu,
    );
    config.keepalive = tunnel.keepalive;
    config.reneg_interval = (!tunnel.reneg_interval.is_zero()).then_some(tunnel.reneg_interval);
    config.compression = match tunnel.compress {
        None => CompressionFraming::None,
        Some(Compress::LzoStub) => CompressionFraming::LzoStub,
        Some(Compress::Stub) => CompressionFraming::StubV1,
        Some(Compress::StubV2) => CompressionFraming::StubV2,
    };
    config.replay = ReplayConfig {
        tcp: tunnel.transport == Transport::Tcp,
        ..ReplayConfig::default()
    };
    Ok(config)
}

/// Addresses and routes known before any peer connects (p2p).
async fn configure_static_addresses(
    netlink: &Netlink,
    index: u32,
    tunnel: &Tunnel,
) -> anyhow::Result<()> {
    match &tunnel.addressing {
        Addressing::P2p { local, remote, .. } => {
            netlink
                .add_address(index, IpAddr::V4(*local), 32, Some(IpAddr::V4(*remote)))
                .await?;
        }
        // `start` refused a server before getting here.
        Addressing::Server { .. } | Addressing::Client => {}
    }
    for route in &tunnel.routes {
        netlink.replace_route(*route, None, index, None).await?;
    }
    Ok(())
}

/// Addresses and routes a client learns from PUSH_REPLY.
async fn configure_pushed(
    netlink: &Netlink,
    index: u32,
    pushed: &PushOptions,
) -> anyhow::Result<()> {
    if let Some((address, second)) = pushed.ifconfig {
        match pushed.topology.unwrap_or(Topology::Net30) {
            Topology::Subnet => {
                let prefix = u32::from(second).leading_ones() as u8;
                netlink
                    .add_address(index, IpAddr::V4(address), prefix, None)
                    .await?;
            }
            Topology::Net30 => {
                netlink
                    .add_address(index, IpAddr::V4(address), 32, Some(IpAddr::V4(second)))
                    .await?;
            }
        }
    }
    for (route, _gateway) in &pushed.routes {
        netlink
            .replace_route(IpNet::V4(*route), None, index, None)
            .await?;
    }
    Ok(())
}

/// The tokio side of a tunnel.
struct ControlTask {
    name: String,
    tunnel: Tunnel,
    tls_role: TlsRole,
    session_config: SessionConfig,
    protection_source: ProtectionSource,
    plane: Arc<DataPlane>,
    udp: Option<Arc<UdpSocket>>,
    netlink: Arc<Netlink>,
    ifindex: u32,
    status: Arc<Mutex<TunnelRuntimeStatus>>,
    /// Told after every status change, so the daemon updates the live-link map at once.
    link_changed: Arc<tokio::sync::Notify>,
    session: Option<Session>,
    peer: Option<SocketAddr>,
    device: Option<TunDevice>,
    threads: Vec<JoinHandle<()>>,
}

impl ControlTask {
    async fn run(
        mut self,
        mut input: mpsc::Receiver<ControlInput>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut reconnect_at: Option<Instant> = Some(Instant::now());
        let mut remote_index = 0usize;
        loop {
            // Clients (and p2p TLS clients over UDP) start sessions on their own.
            if self.session.is_none() && self.initiates() && self.tunnel.transport == Transport::Udp
            {
                if let Some(at) = reconnect_at {
                    if Instant::now() >= at {
                        reconnect_at = None;
                        if let Some(&remote) = self
                            .tunnel
                            .remotes
                            .get(remote_index % self.tunnel.remotes.len().max(1))
                        {
                            remote_index += 1;
                            self.set_udp_peer(remote);
                            self.new_session();
                        }
                    }
                }
            }
            // reconnect_at only matters while the branch above can act on it: on a side that
            // never initiates it stays at its start-up instant, and waking for a past instant
            // made this loop spin a whole core for the tunnel's lifetime.
            let can_reconnect = self.session.is_none()
                && self.initiates()
                && self.tunnel.transport == Transport::Udp;
            let deadline = self
                .session
                .as_ref()
                .and_then(Session::poll_timeout)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1))
                .min(Instant::now() + Duration::from_secs(1))
                .min(
                    reconnect_at
                        .filter(|_| can_reconnect)
                        .unwrap_or(Instant::now() + Duration::from_secs(1)),
                );
            tokio::select! {
                _ = stop.changed() => break,
                message = input.recv() => match message {
                    Some(ControlInput::Packet { bytes, from }) => self.on_packet(bytes, from),
                    Some(ControlInput::ConnectionLost) => {
                        if let Some(mut session) = self.session.take() {
                            session.close(Instant::now());
                        }
                        self.on_session_end(SessionEnd::Protocol("the TCP connection closed".into()));
                    }
                    Some(ControlInput::TcpConnected { stream, peer }) => {
                        self.plane.wire.store(Some(Arc::new(Wire::Tcp { stream: Arc::new(Mutex::new(stream)) })));
                        self.peer = Some(peer);
                        self.set_state("connecting", None);
                        if self.tls_role == TlsRole::Client {
                            self.new_session();
                        }
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if let Some(session) = self.session.as_mut() {
                        session.handle_timeout(Instant::now(), self.plane.activity());
                    }
                }
            }
            self.plane.promote_pending_key(None);
            if self.plane.peer_exited.swap(false, Ordering::Relaxed) && self.session.is_some() {
                self.session = None;
                self.on_session_end(SessionEnd::PeerExit);
                if self.initiates() {
                    reconnect_at = Some(Instant::now() + RECONNECT_DELAY);
                }
            }
            if let Some(end) = self.drain_events().await {
                self.on_session_end(end);
                if self.initiates() {
                    reconnect_at = Some(Instant::now() + RECONNECT_DELAY);
                }
            }
        }
        self.shutdown().await;
    }

    fn initiates(&self) -> bool {
        self.tls_role == TlsRole::Client && !self.tunnel.remotes.is_empty()
    }

    fn set_udp_peer(&mut self, peer: SocketAddr) {
        if let Some(socket) = &self.udp {
            self.peer = Some(peer);
            self.plane.wire.store(Some(Arc::new(Wire::Udp {
                socket: socket.clone(),
                peer,
            })));
        }
    }

    fn new_session(&mut self) {
        self.session = self.make_session();
    }

    fn make_session(&mut self) -> Option<Session> {
        let now = Instant::now();
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs() as u32)
            .unwrap_or(0);
        let codec = ControlCodec::new(self.protection_source.build(self.tls_role), now_unix);
        let random = Box::new(|buffer: &mut [u8]| {
            use ring::rand::SecureRandom;
            // The system RNG failing is not recoverable; zeroes would be worse than stopping.
            ring::rand::SystemRandom::new()
                .fill(buffer)
                .expect("the system random number generator failed");
        });
        self.plane.mark_received();
        match Session::new(self.session_config.clone(), codec, now, now_unix, random) {
            Ok(session) => Some(session),
            Err(end) => {
                tracing::error!(tunnel = %self.name, reason = %end, "cannot start a session");
                self.set_state("failed", Some(end.to_string()));
                None
            }
        }
    }

    fn on_packet(&mut self, bytes: Vec<u8>, from: SocketAddr) {
        let now = Instant::now();
        let udp = self.tunnel.transport == Transport::Udp;
        let belongs = self.session.as_ref().is_some_and(|session| {
            !session.is_ended()
                && !session.is_new_session_reset(&bytes)
                && (!udp || Some(from) == self.peer)
        });
        if belongs || (self.initiates() && self.session.is_some()) {
            if let Some(mut session) = self.session.take() {
                self.feed(&mut session, now, &bytes);
                self.session = Some(session);
            }
            return;
        }
        let is_reset = matches!(
            peek_opcode(&bytes),
            Ok((crate::proto::packet::Opcode::HardResetClientV2, _))
        );
        if self.tls_role != TlsRole::Server || !is_reset {
            self.plane
                .counters
                .control_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        // A new peer session: try it on the side and switch only once its reset authenticated,
        // so a forged reset cannot tear down the running session.
        let Some(mut candidate) = self.make_session() else {
            return;
        };
        self.feed(&mut candidate, now, &bytes);
        if candidate.remote_session_id().is_none() {
            return;
        }
        if self.session.is_some() {
            tracing::info!(tunnel = %self.name, peer = %from, "peer started a new session");
            self.clear_keys();
        }
        if udp {
            self.set_udp_peer(from);
        }
        self.session = Some(candidate);
        // Until the new session is established the link carries nothing: the fast path must
        // not steer flows onto it meanwhile.
        self.set_state("connecting", None);
    }

    /// Hands one control packet to `session` and counts what it refused.
    fn feed(&self, session: &mut Session, now: Instant, bytes: &[u8]) {
        let before = session.stats();
        session.handle_control(now, bytes);
        let after = session.stats();
        let counters = &self.plane.counters;
        counters.control_unauthenticated.fetch_add(
            after.unauthenticated - before.unauthenticated,
            Ordering::Relaxed,
        );
        counters.control_dropped.fetch_add(
            (after.replayed - before.replayed) + (after.malformed - before.malformed),
            Ordering::Relaxed,
        );
    }

    fn clear_keys(&mut self) {
        self.plane.send_key.store(None);
        self.plane.pending_send_key.store(None);
        if let Ok(mut keys) = self.plane.receive_keys.lock() {
            keys.clear();
        }
    }

    fn set_state(&self, state: &str, error: Option<String>) {
        if let Ok(mut status) = self.status.lock() {
            status.state = state.to_owned();
            if error.is_some() {
                status.last_error = error;
            }
            status.peer = self.peer.map(|peer| peer.to_string());
        }
        self.link_changed.notify_one();
    }

    /// Acts on the session's events; returns how it ended, if it did.
    async fn drain_events(&mut self) -> Option<SessionEnd> {
        let mut ended = None;
        loop {
            let Some(event) = self.session.as_mut().and_then(Session::poll_event) else {
                break;
            };
            match event {
                SessionEvent::Transmit(bytes) => {
                    if let Err(error) = self.plane.send_packet(&bytes) {
                        tracing::debug!(tunnel = %self.name, %error, "control packet not sent");
                    }
                }
                SessionEvent::InstallReceiveKey(key) => {
                    if let Ok(mut keys) = self.plane.receive_keys.lock() {
                        keys.retain(|existing| existing.key_id() != key.key_id());
                        keys.push(*key);
                    }
                }
                SessionEvent::ActivateSendKey(key) => {
                    if self.plane.send_key.load().is_none() {
                        // The first key: nothing else to send with.
                        self.plane.send_key.store(Some(key));
                    } else {
                        let deadline = self.plane.millis(Instant::now() + KEY_SWITCH_GRACE);
                        self.plane
                            .pending_deadline_ms
                            .store(deadline, Ordering::Relaxed);
                        self.plane.pending_send_key.store(Some(key));
                    }
                }
                SessionEvent::RetireReceiveKey(key_id) => {
                    if let Ok(mut keys) = self.plane.receive_keys.lock() {
                        keys.retain(|existing| existing.key_id() != key_id);
                    }
                }
                SessionEvent::Established {
                    params,
                    peer_common_name,
                } => {
                    tracing::info!(
                        tunnel = %self.name,
                        peer = ?self.peer,
                        cn = ?peer_common_name,
                        cipher = %params.cipher,
                        tls_ekm = params.tls_ekm,
                        "tunnel established"
                    );
                    if let Ok(mut status) = self.status.lock() {
                        status.state = "established".into();
                        status.peer = self.peer.map(|peer| peer.to_string());
                        status.peer_common_name = peer_common_name;
                        status.cipher = Some(params.cipher.to_string());
                        status.key_derivation =
                            Some(if params.tls_ekm { "tls-ekm" } else { "prf" }.into());
                    }
                    self.link_changed.notify_one();
                }
                SessionEvent::Pushed(options) => {
                    if let Err(error) =
                        configure_pushed(&self.netlink, self.ifindex, &options).await
                    {
                        tracing::error!(tunnel = %self.name, error = %format!("{error:#}"), "applying pushed options");
                    }
                }
                // Only emitted with push_per_client, which the multi-client server sets.
                SessionEvent::PeerAuthenticated { .. } => {}
                SessionEvent::SendPing => {
                    if let Some(key) = self.plane.send_key.load_full() {
                        let mut packet = Vec::new();
                        if key.seal_ping(&mut packet).is_ok() {
                            let _ = self.plane.send_packet(&packet);
                        }
                    }
                }
                SessionEvent::Ended(end) => ended = Some(end),
            }
        }
        if let (Some(session), Ok(mut status)) = (&self.session, self.status.lock()) {
            status.keys_negotiated = session.stats().keys_negotiated;
        }
        ended
    }

    fn on_session_end(&mut self, end: SessionEnd) {
        match &end {
            SessionEnd::TlsFailed(reason) => {
                tracing::error!(tunnel = %self.name, peer = ?self.peer, "session refused: {reason}")
            }
            other => {
                tracing::warn!(tunnel = %self.name, peer = ?self.peer, "session ended: {other}")
            }
        }
        self.session = None;
        self.clear_keys();
        let state = if self.initiates() {
            "connecting"
        } else {
            "waiting for peer"
        };
        self.set_state(state, Some(end.to_string()));
    }

    async fn shutdown(mut self) {
        if let Some(session) = self.session.as_mut() {
            let sent_exit = session.close(Instant::now());
            let _ = self.drain_events().await;
            if !sent_exit && self.tunnel.transport == Transport::Udp {
                // explicit-exit-notify: tell the peer on the data channel.
                if let Some(key) = self.plane.send_key.load_full() {
                    let mut packet = Vec::new();
                    if key.seal_occ_exit(&mut packet).is_ok() {
                        for _ in 0..2 {
                            let _ = self.plane.send_packet(&packet);
                        }
                    }
                }
            }
        }
        self.plane.stop.store(true, Ordering::Relaxed);
        if let Some(Wire::Tcp { stream }) = self.plane.wire.load().as_deref() {
            if let Ok(stream) = stream.lock() {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        }
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
        // Closing the last tun fd deletes the device, its addresses and its routes.
        drop(self.device.take());
        // Also when the task ends on its own: the link must leave the live-link map.
        self.set_state("stopped", None);
        tracing::info!(tunnel = %self.name, "tunnel stopped");
    }
}

/// Waits until `fd` is readable or the poll interval passes.
pub(super) fn wait_readable(fd: i32) -> bool {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let ready = unsafe { libc::poll(&mut pollfd, 1, POLL_INTERVAL_MS) };
    ready > 0
}

/// Opens the tun with TCP offloads (virtio-net header, TSO in both directions), so the data
/// path moves 64 KiB super-segments through one syscall; falls back to a plain tun if the
/// kernel refuses.
fn create_tun(name: &str) -> anyhow::Result<TunDevice> {
    let options = TunOptions {
        queues: 1,
        vnet_hdr: true,
        offload: OFFLOAD_TCP,
    };
    let device = match TunDevice::create_with(name, options) {
        Ok(device) => device,
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "tun offloads unavailable, one packet per syscall");
            TunDevice::create(name, 1).with_context(|| format!("creating tun {name}"))?
        }
    };
    disable_ipv6(name);
    Ok(device)
}

/// IPv6 off on a new (still down) tun: tunnels carry IPv4 only, and otherwise the kernel's own
/// link-local chatter (DAD, router solicitations, MLD reports) would cross the tunnel and land
/// in the peer's `dropped_spoofed` counter.
pub(super) fn disable_ipv6(device: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{device}/disable_ipv6");
    match std::fs::write(&path, "1") {
        Ok(()) => {}
        // A kernel without IPv6 has nothing to turn off.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(device, %error, "could not turn off IPv6 on the tun"),
    }
}

/// tun → seal → wire, in batches: read every packet tun has (with offloads: TCP super-segments,
/// split here), then send them with one sendmmsg in UDP GSO runs.
fn tun_send_loop(plane: &DataPlane, tun: &TunQueue) {
    let mut buffer = vec![0u8; MAX_PACKET + VNET_HDR_LEN];
    let mut scratch = Vec::with_capacity(MAX_PACKET);
    let mut out = Outgoing {
        sealed: Vec::with_capacity(MAX_PACKET),
        syn: Vec::new(),
        batch: SendBatch::new(SEND_BATCH, 2048),
        tcp_out: Vec::new(),
    };
    out.batch.set_udp_gso(true);
    let mut gso_refused = 0;
    let fd = tun.as_raw_fd();
    set_nonblocking(fd);
    while !plane.stop.load(Ordering::Relaxed) {
        if !wait_readable(fd) {
            continue;
        }
        let key = plane.send_key.load_full();
        let wire = plane.wire.load_full();
        loop {
            let read = match tun.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let (Some(key), Some(wire)) = (&key, &wire) else {
                plane.counters.tx_no_key.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let Some(frame) = buffer.get(..read) else {
                continue;
            };
            let outer_ipv6 = matches!(
                wire.as_ref(),
                Wire::Udp {
                    peer: SocketAddr::V6(_),
                    ..
                }
            );
            if !tun.vnet_hdr() {
                out.seal_and_queue(plane, key, wire, outer_ipv6, frame);
                continue;
            }
            let split = offload::split(frame, &mut scratch, |packet| {
                out.seal_and_queue(plane, key, wire, outer_ipv6, packet)
            });
            if split.is_err() {
                plane.counters.tx_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(wire) = &wire {
            flush_batch(plane, wire, &mut out.batch, &mut out.tcp_out);
        }
        let refused = out.batch.stats().gso_refused;
        if refused != gso_refused {
            gso_refused = refused;
            tracing::debug!(refused, gso = out.batch.udp_gso(), error = ?out.batch.last_error(), "the kernel refused UDP GSO sends");
        }
    }
}

/// The tun→wire thread's buffers between reading a packet and sending it.
struct Outgoing {
    sealed: Vec<u8>,
    /// A copy of a TCP SYN whose MSS option is being clamped.
    syn: Vec<u8>,
    batch: SendBatch,
    tcp_out: Vec<u8>,
}

impl Outgoing {
    /// Seals one IP packet and queues it for the wire, flushing when the batch is full.
    fn seal_and_queue(
        &mut self,
        plane: &DataPlane,
        key: &SendKey,
        wire: &Wire,
        outer_ipv6: bool,
        packet: &[u8],
    ) {
        let packet = if offload::is_tcp_syn(packet) {
            let inner_ipv6 = packet.first().is_some_and(|b| b >> 4 == 6);
            let mss = offload::mss_for(MSSFIX_OUTER, outer_ipv6, inner_ipv6, key.overhead());
            self.syn.clear();
            self.syn.extend_from_slice(packet);
            offload::clamp_mss(&mut self.syn, mss);
            &self.syn[..]
        } else {
            packet
        };
        if key.seal(packet, &mut self.sealed).is_err() {
            plane.counters.tx_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        plane.counters.tx_packets.fetch_add(1, Ordering::Relaxed);
        plane
            .counters
            .tx_bytes
            .fetch_add(packet.len() as u64, Ordering::Relaxed);
        match wire {
            Wire::Udp { peer, .. } => {
                if self.batch.push(&self.sealed, *peer).is_err() {
                    plane.counters.tx_errors.fetch_add(1, Ordering::Relaxed);
                }
                if self.batch.is_full() {
                    flush_batch(plane, wire, &mut self.batch, &mut self.tcp_out);
                }
            }
            Wire::Tcp { .. } => {
                if encode_frame(&self.sealed, &mut self.tcp_out).is_err() {
                    plane.counters.tx_errors.fetch_add(1, Ordering::Relaxed);
                }
                if self.tcp_out.len() >= 256 * 1024 {
                    flush_batch(plane, wire, &mut self.batch, &mut self.tcp_out);
                }
            }
        }
    }
}

fn flush_batch(plane: &DataPlane, wire: &Wire, batch: &mut SendBatch, tcp_out: &mut Vec<u8>) {
    match wire {
        Wire::Udp { socket, .. } => {
            if batch.is_empty() {
                return;
            }
            let queued = batch.len();
            match batch.flush(socket.as_ref()) {
                Ok(sent) if sent < queued => {
                    plane
                        .counters
                        .tx_errors
                        .fetch_add((queued - sent) as u64, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(error) => {
                    plane
                        .counters
                        .tx_errors
                        .fetch_add(queued as u64, Ordering::Relaxed);
                    tracing::debug!(%error, "sendmmsg failed");
                }
            }
        }
        Wire::Tcp { stream } => {
            if tcp_out.is_empty() {
                return;
            }
            if let Ok(mut stream) = stream.lock() {
                if stream.write_all(tcp_out).is_err() {
                    plane.counters.tx_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            tcp_out.clear();
        }
    }
    plane.mark_sent();
}

pub(super) fn set_nonblocking(fd: i32) {
    // SAFETY: fcntl on a descriptor we own; failure leaves it blocking, which poll() tolerates.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// wire → open → tun for UDP; control packets go to the control task. With UDP GRO one
/// recvmmsg slot holds many datagrams; with tun offloads the decrypted TCP segments of one
/// flow go to tun as one super-segment.
fn udp_receive_loop(
    plane: &DataPlane,
    socket: &UdpSocket,
    tun: &TunQueue,
    control: &mpsc::Sender<ControlInput>,
) {
    let mut batch = RecvBatch::new(RECV_BATCH, RECV_SLOT);
    if let Err(error) = batch.enable_udp_gro(socket) {
        tracing::debug!(%error, "no UDP GRO: one datagram per receive slot");
    }
    // Decrypted packets of one batch, back to back, and where each IP packet lies.
    let mut arena: Vec<u8> = Vec::with_capacity(RECV_BATCH * RECV_SLOT);
    let mut payloads: Vec<std::ops::Range<usize>> = Vec::new();
    let mut frames_out: Vec<u8> = Vec::with_capacity(RECV_BATCH * RECV_SLOT);
    let mut frames: Vec<std::ops::Range<usize>> = Vec::new();
    let poll_interval = Duration::from_millis(POLL_INTERVAL_MS as u64);
    while !plane.stop.load(Ordering::Relaxed) {
        // One poll and one recvmmsg per wake-up: a busy link keeps the socket readable, so the
        // poll returns at once and each recvmmsg takes a whole batch.
        match batch.recv(socket, Some(poll_interval)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => {
                tracing::debug!(%error, "recvmmsg failed");
                continue;
            }
        };
        let mut keys = match plane.receive_keys.lock() {
            Ok(keys) => keys,
            Err(_) => return,
        };
        let mut any_data = false;
        arena.clear();
        payloads.clear();
        for (packet, from) in batch.iter() {
            match peek_opcode(packet) {
                Ok((opcode, _)) if opcode.is_data() => {
                    // Decrypt in place in the arena: the batch's slots are read-only here.
                    let start = arena.len();
                    arena.extend_from_slice(packet);
                    let slot = &mut arena[start..];
                    let slot_address = slot.as_ptr() as usize;
                    let (ok, payload) = plane.open_data(&mut keys, slot);
                    any_data |= ok;
                    // The IP packet lies inside the decrypted slot: keep its range.
                    let range = payload.map(|payload| {
                        let offset = start + (payload.as_ptr() as usize - slot_address);
                        offset..offset + payload.len()
                    });
                    match range {
                        Some(range) => payloads.push(range),
                        None => arena.truncate(start),
                    }
                }
                Ok(_) => {
                    if control
                        .try_send(ControlInput::Packet {
                            bytes: packet.to_vec(),
                            from,
                        })
                        .is_err()
                    {
                        // The control task is behind: the peer retransmits.
                        plane
                            .counters
                            .control_dropped
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(_) => {
                    plane.counters.rx_malformed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        drop(keys);
        if any_data {
            plane.mark_received();
        }
        write_to_tun(tun, &arena, &payloads, &mut frames_out, &mut frames);
    }
}

/// Writes decrypted IP packets (`payloads` ranges of `arena`) to tun: coalesced into TCP
/// super-segments when the tun takes a virtio-net header, else one write per packet.
fn write_to_tun(
    tun: &TunQueue,
    arena: &[u8],
    payloads: &[std::ops::Range<usize>],
    frames_out: &mut Vec<u8>,
    frames: &mut Vec<std::ops::Range<usize>>,
) {
    let packets: Vec<&[u8]> = payloads
        .iter()
        .filter_map(|range| arena.get(range.clone()))
        .collect();
    if !tun.vnet_hdr() {
        for packet in packets {
            let _ = tun.write(packet);
        }
        return;
    }
    frames_out.clear();
    frames.clear();
    offload::coalesce(&packets, frames_out, frames);
    for range in frames.iter() {
        if let Some(frame) = frames_out.get(range.clone()) {
            let _ = tun.write(frame);
        }
    }
}

/// TCP: connect (or accept), then read frames until the connection ends; repeat until stopped.
fn tcp_connection_loop(
    plane: &DataPlane,
    listener: Option<TcpListener>,
    remotes: Vec<std::net::SocketAddr>,
    tun: &TunQueue,
    control: &mpsc::Sender<ControlInput>,
) {
    let mut attempt = 0usize;
    if let Some(listener) = &listener {
        let _ = listener.set_nonblocking(true);
    }
    while !plane.stop.load(Ordering::Relaxed) {
        let connection = match &listener {
            Some(listener) => {
                if !wait_readable(listener.as_raw_fd()) {
                    continue;
                }
                match listener.accept() {
                    Ok((stream, peer)) => Some((stream, peer)),
                    Err(_) => None,
                }
            }
            None => {
                let Some(&remote) = remotes.get(attempt % remotes.len().max(1)) else {
                    return;
                };
                attempt += 1;
                match TcpStream::connect_timeout(&remote, Duration::from_secs(5)) {
                    Ok(stream) => Some((stream, remote)),
                    Err(_) => {
                        std::thread::sleep(RECONNECT_DELAY);
                        None
                    }
                }
            }
        };
        let Some((stream, peer)) = connection else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let _ = stream.set_nonblocking(false);
        let Ok(reader) = stream.try_clone() else {
            continue;
        };
        if control
            .blocking_send(ControlInput::TcpConnected { stream, peer })
            .is_err()
        {
            return;
        }
        read_tcp_frames(plane, reader, tun, control, peer);
        if control.blocking_send(ControlInput::ConnectionLost).is_err() {
            return;
        }
        if listener.is_none() {
            std::thread::sleep(RECONNECT_DELAY);
        }
    }
}

fn read_tcp_frames(
    plane: &DataPlane,
    mut stream: TcpStream,
    tun: &TunQueue,
    control: &mpsc::Sender<ControlInput>,
    peer: SocketAddr,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(POLL_INTERVAL_MS as u64)));
    let mut decoder = FrameDecoder::new(std::num::NonZeroU16::MAX);
    let mut chunk = vec![0u8; 65_536];
    while !plane.stop.load(Ordering::Relaxed) {
        let read = match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(read) => read,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        };
        let mut offset = 0;
        while offset < read {
            offset += decoder.push(&chunk[offset..read]);
            while let Some(frame) = decoder.next_frame() {
                let Ok(frame) = frame else {
                    plane.counters.rx_malformed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let mut packet = frame.to_vec();
                match peek_opcode(&packet) {
                    Ok((opcode, _)) if opcode.is_data() => {
                        let ok = match plane.receive_keys.lock() {
                            Ok(mut keys) => plane.receive_data(&mut keys, &mut packet, tun),
                            Err(_) => return,
                        };
                        if ok {
                            plane.mark_received();
                        }
                    }
                    Ok(_) => {
                        if control
                            .blocking_send(ControlInput::Packet {
                                bytes: packet,
                                from: peer,
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(_) => {
                        plane.counters.rx_malformed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// site-a.toml: tunnel 0 is p2p with `tls = "server"`, tunnel 1 is a `role = "server"`.
    fn site_a() -> Config {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/site-a.toml");
        let text = std::fs::read_to_string(&path).expect("reading site-a.toml");
        Config::parse(&text, &path).unwrap_or_else(|error| panic!("{error}"))
    }

    fn server_setup(config: &Config) -> TlsSetup {
        let pki = PkiMaterial::load(&config.pki).expect("loading the example PKI");
        TlsSetup::Server(tls::server_config(&pki, &PeerChecks::default()).expect("server config"))
    }

    #[test]
    fn refuses_a_server_tunnel() {
        let config = site_a();
        let server = &config.tunnels[1];
        assert_eq!(server.role, Role::Server);
        let error = tls_role(server).expect_err("a server tunnel has no single-peer TLS role");
        assert!(error.to_string().contains("ServerRuntime"), "{error}");
        let Err(error) = session_config(server, server_setup(&config)) else {
            panic!("a server tunnel has no single-peer session config");
        };
        assert!(error.to_string().contains("ServerRuntime"), "{error}");
    }

    #[test]
    fn p2p_tls_server_end_keeps_its_role() {
        let config = site_a();
        let p2p = &config.tunnels[0];
        assert_eq!(p2p.role, Role::P2p);
        assert_eq!(tls_role(p2p).expect("p2p tls role"), TlsRole::Server);
        let session = session_config(p2p, server_setup(&config)).expect("p2p session config");
        assert!(matches!(session.mode, SessionMode::P2p));
    }
}
