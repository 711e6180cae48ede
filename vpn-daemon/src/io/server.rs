//! The multi-client server (`role = "server"`) at run time: one UDP socket and one tun device for
//! every client, one sans-IO [`Session`] per client in a tokio control task, and two blocking
//! data-path threads that find a packet's client by peer id (wire side) or by destination
//! address (tun side) in an immutable snapshot swapped in whenever a client comes or goes.
//!
//! ```text
//!   clients ──UDP──► [wire→tun thread] ── control packets ──► [control task: Sessions,
//!                      │ open with the client's key              pool, peer ids, ccd]
//!                      │ client-to-client: seal for the owner        │ snapshot (ArcSwap)
//!                      ▼                                             ▼ desired routes
//!                     tun ──► [tun→wire thread] ── route table ──►  [route reconcile task]
//! ```
//!
//! The address, peer id and push of a client are decided once TLS names it
//! ([`SessionEvent::PeerAuthenticated`]): its ccd file is read then, so ccd changes apply on the
//! client's next connection. Kernel routes for iroutes come from one level-triggered reconcile
//! loop (desired set vs the routes carrying our protocol id on this tun); nothing is left at
//! shutdown.
use std::collections::{BTreeSet, HashMap};
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arc_swap::{ArcSwap, ArcSwapOption};
use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, watch};

use super::netlink::Netlink;
use super::tun::{TunDevice, TunQueue};
use super::tunnel::{
    disable_ipv6, load_protection, set_nonblocking, spawn_named, wait_readable, ProtectionSource,
    TunnelRuntimeStatus,
};
use super::udp_batch::{RecvBatch, SendBatch};
use crate::config::ccd::{read_client_config, ClientConfig};
use crate::config::{
    Addressing, Compress, Config, ControlProtection, TlsRole, Topology, Transport, Tunnel,
};
use crate::proto::control_codec::{ControlCodec, ControlCodecError};
use crate::proto::data::{
    peek_data_key, CompressionFraming, DataError, ReceiveKey, Received, ReplayConfig, SendKey,
};
use crate::proto::framing::{encode_frame, FrameDecoder};
use crate::proto::options::{options_string, OccOptions, OccTransport, PeerInfo, PushOptions};
use crate::proto::packet::{peek_opcode, KeyId, Opcode};
use crate::proto::server::{
    client_push, AddressPool, Lease, PeerIds, RouteTable, ServerPush, SessionCookie,
};
use crate::proto::session::{
    classify_first_packet, stateless_reset_reply, FirstPacket, FirstPacketError, LinkActivity,
    Session, SessionConfig, SessionEnd, SessionEvent, SessionMode, TlsSetup,
};
use crate::proto::tls::{self, PeerChecks, PkiMaterial};

/// Largest packet read from tun or the wire.
const MAX_PACKET: usize = 65_535;
/// How often blocking threads look at the stop flag.
const POLL_INTERVAL_MS: i32 = 200;
/// Attempts to send one UDP packet while the socket buffer is full, and the wait before each.
const SEND_RETRIES: usize = 4;
const SEND_WAIT_MS: i32 = 5;
/// Datagrams per `sendmmsg` from tun to the clients (as the p2p data path).
const SEND_BATCH: usize = 128;
/// Receive slots of one `recvmmsg`; with UDP GRO each slot holds up to 64 KiB of datagrams.
const RECV_BATCH: usize = 32;
const RECV_SLOT: usize = 65_536;
/// How often the control task runs session timers.
const TICK: Duration = Duration::from_millis(200);
/// Most sessions still in their handshake at once; more hard resets are dropped until some
/// finish or time out (a flood of resets must not exhaust memory).
const MAX_HANDSHAKING: usize = 1024;
/// Longest we keep sending with the old key after a renegotiation (see io/tunnel.rs).
const KEY_SWITCH_GRACE: Duration = Duration::from_secs(3);
/// Capacity of the client event stream; a slow subscriber loses the oldest events.
const EVENT_CAPACITY: usize = 1024;
/// The reconcile loop also runs this often, to repair routes someone else removed.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(10);

/// A connected client, as events and status report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// The certificate's common name.
    pub common_name: String,
    /// The client's tunnel address.
    pub virtual_address: Ipv4Addr,
    /// Subnets behind the client (ccd `iroute`), routed to it.
    pub iroutes: Vec<Ipv4Net>,
    /// Where its packets come from.
    pub real_address: SocketAddr,
    /// Its DATA_V2 peer id.
    pub peer_id: u32,
    /// Wall-clock seconds since the Unix epoch when its tunnel came up.
    pub connected_since_unix: u64,
}

/// What the rest of the system hears about clients (route sharing consumes this).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientEvent {
    /// A client's tunnel is up: its address and iroutes are routed to it.
    ClientConnected(ClientInfo),
    /// A client left (exit, timeout, replaced, refused later, server stopping); its address and
    /// routes are gone.
    ClientDisconnected {
        /// The client as it was connected.
        client: ClientInfo,
        /// Why, in words.
        reason: String,
    },
}

/// Data-path counters of one server (all clients).
#[derive(Debug, Default)]
struct ServerCounters {
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    rx_replayed: AtomicU64,
    rx_unauthenticated: AtomicU64,
    rx_malformed: AtomicU64,
    rx_unknown_client: AtomicU64,
    rx_unknown_key: AtomicU64,
    rx_bad_source: AtomicU64,
    rx_compressed: AtomicU64,
    client_to_client: AtomicU64,
    tx_no_route: AtomicU64,
    tx_no_key: AtomicU64,
    tx_errors: AtomicU64,
    control_dropped: AtomicU64,
    control_unauthenticated: AtomicU64,
    /// Stateless cookie replies sent to first resets (UDP).
    control_cookie_sent: AtomicU64,
    /// Handshake packets echoing a wrong or expired cookie (no session was created).
    control_cookie_refused: AtomicU64,
}

/// What the data path knows about one client.
struct ClientPlane {
    peer_id: u32,
    real_address: SocketAddr,
    /// Over TCP, the client's connection; over UDP `None` (the shared socket is used).
    tcp: Option<Arc<Mutex<TcpStream>>>,
    send_key: ArcSwapOption<SendKey>,
    pending_send_key: ArcSwapOption<SendKey>,
    pending_deadline_ms: AtomicU64,
    receive_keys: Mutex<Vec<ReceiveKey>>,
    last_received_ms: AtomicU64,
    last_sent_ms: AtomicU64,
    rx_bytes: AtomicU64,
    tx_bytes: AtomicU64,
}

impl ClientPlane {
    fn new(
        peer_id: u32,
        real_address: SocketAddr,
        tcp: Option<Arc<Mutex<TcpStream>>>,
        now_ms: u64,
    ) -> Self {
        ClientPlane {
            peer_id,
            real_address,
            tcp,
            send_key: ArcSwapOption::empty(),
            pending_send_key: ArcSwapOption::empty(),
            pending_deadline_ms: AtomicU64::new(0),
            receive_keys: Mutex::new(Vec::new()),
            last_received_ms: AtomicU64::new(now_ms),
            last_sent_ms: AtomicU64::new(now_ms),
            rx_bytes: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
        }
    }

    /// Starts sending with a pending renegotiated key once the client used it, or after the
    /// grace period (`used` None).
    fn promote_pending_key(&self, used: Option<KeyId>, now_ms: u64) {
        let pending = self.pending_send_key.load();
        let Some(key) = pending.as_ref() else { return };
        let due = match used {
            Some(key_id) => key_id == key.key_id(),
            None => now_ms >= self.pending_deadline_ms.load(Ordering::Relaxed),
        };
        if due {
            self.send_key.store(Some(key.clone()));
            self.pending_send_key.store(None);
        }
    }
}

/// The data path's view of the clients, replaced as a whole on every change.
#[derive(Default)]
struct Snapshot {
    by_peer_id: HashMap<u32, Arc<ClientPlane>>,
    by_address: HashMap<SocketAddr, Arc<ClientPlane>>,
    routes: RouteTable,
}

/// State shared by the control task and the data-path threads.
struct Shared {
    snapshot: ArcSwap<Snapshot>,
    /// The UDP socket of a UDP server (`None` over TCP).
    socket: Option<Arc<UdpSocket>>,
    counters: ServerCounters,
    anchor: Instant,
    client_to_client: bool,
    stop: AtomicBool,
}

impl Shared {
    fn millis(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.anchor).as_millis() as u64
    }

    fn now_ms(&self) -> u64 {
        self.millis(Instant::now())
    }

    /// Seals `payload` for `client` and sends it.
    fn send_data(&self, client: &ClientPlane, payload: &[u8], sealed: &mut Vec<u8>) {
        if self.seal_data(client, payload, sealed) {
            self.send_wire(client, sealed);
        }
    }

    /// Seals `payload` for `client` into `sealed` and counts it as sent; false (counted) if
    /// the client has no key yet or sealing fails.
    fn seal_data(&self, client: &ClientPlane, payload: &[u8], sealed: &mut Vec<u8>) -> bool {
        client.promote_pending_key(None, self.now_ms());
        let Some(key) = client.send_key.load_full() else {
            self.counters.tx_no_key.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        if key.seal(payload, sealed).is_err() {
            self.counters.tx_errors.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.counters.tx_packets.fetch_add(1, Ordering::Relaxed);
        self.counters
            .tx_bytes
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        client
            .tx_bytes
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        true
    }

    fn send_wire(&self, client: &ClientPlane, packet: &[u8]) {
        let sent = match &client.tcp {
            Some(stream) => send_framed(stream, packet),
            None => self.send_udp(packet, client.real_address),
        };
        if !sent {
            self.counters.tx_errors.fetch_add(1, Ordering::Relaxed);
        }
        client.last_sent_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Sends on the (non-blocking) UDP socket; a full send buffer is waited out briefly rather
    /// than dropping the packet, which would make TCP inside the tunnel back off.
    fn send_udp(&self, packet: &[u8], to: SocketAddr) -> bool {
        let Some(socket) = self.socket.as_ref() else {
            return false;
        };
        for _ in 0..SEND_RETRIES {
            match socket.send_to(packet, to) {
                Ok(_) => return true,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    wait_writable(socket.as_raw_fd());
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        false
    }
}

/// Writes one packet with its TCP length prefix.
fn send_framed(stream: &Mutex<TcpStream>, packet: &[u8]) -> bool {
    let mut framed = Vec::with_capacity(packet.len() + 2);
    if encode_frame(packet, &mut framed).is_err() {
        return false;
    }
    match stream.lock() {
        Ok(mut stream) => stream.write_all(&framed).is_ok(),
        Err(_) => false,
    }
}

/// Input to the control task from the data path.
enum ControlInput {
    Packet {
        bytes: Vec<u8>,
        from: SocketAddr,
    },
    ClientExited {
        peer_id: u32,
    },
    TcpConnected {
        peer: SocketAddr,
        stream: Arc<Mutex<TcpStream>>,
    },
    TcpClosed {
        peer: SocketAddr,
    },
}

/// Status shared with [`ServerRuntime::status`].
#[derive(Default)]
struct SharedStatus {
    state: String,
    last_error: Option<String>,
    clients: Vec<ClientInfo>,
    handshaking: usize,
}

/// A running multi-client server.
pub struct ServerRuntime {
    name: String,
    shared: Arc<Shared>,
    status: Arc<Mutex<SharedStatus>>,
    events: broadcast::Sender<ClientEvent>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ServerRuntime {
    /// Creates the tun device (with the server address), binds the UDP socket and starts the
    /// server. Only `role = "server"` over UDP. `link_changed` is notified whenever the state or
    /// the connected clients change (the eBPF fast path reads their addresses and iroutes).
    pub async fn start(
        config: &Config,
        tunnel: &Tunnel,
        netlink: Arc<Netlink>,
        link_changed: Arc<tokio::sync::Notify>,
    ) -> anyhow::Result<ServerRuntime> {
        let Addressing::Server {
            subnet,
            topology,
            push_routes,
            server_address,
            pool,
            push,
            client_to_client,
            duplicate_cn,
            client_config_dir,
            max_clients,
        } = tunnel.addressing.clone()
        else {
            anyhow::bail!("tunnel {} is not a server", tunnel.name);
        };
        let pki = PkiMaterial::load(&config.pki).context("loading the PKI")?;
        let checks = PeerChecks {
            remote_cert_tls: tunnel.remote_cert_tls,
            verify_x509_name: tunnel.verify_x509_name.clone(),
        };
        let tls_config = tls::server_config(&pki, &checks)?;
        let protection = load_protection(&tunnel.control_protection)?;
        let session_config = server_session_config(tunnel, TlsSetup::Server(tls_config));
        let compression_push = tunnel.compress.map(|compress| {
            match compress {
                Compress::LzoStub => "comp-lzo no",
                Compress::Stub => "compress",
                Compress::StubV2 => "compress stub-v2",
            }
            .to_owned()
        });

        let device = TunDevice::create(&tunnel.device, 1)
            .with_context(|| format!("creating tun {}", tunnel.device))?;
        disable_ipv6(&tunnel.device);
        let ifindex = device.ifindex();
        netlink
            .set_link_up(ifindex, Some(u32::from(tunnel.mtu)))
            .await?;
        let mut static_routes: BTreeSet<IpNet> = tunnel.routes.iter().copied().collect();
        match topology {
            Topology::Subnet => {
                netlink
                    .add_address(
                        ifindex,
                        IpAddr::V4(server_address),
                        subnet.prefix_len(),
                        None,
                    )
                    .await?
            }
            Topology::Net30 => {
                // ifconfig SERVER SERVER+1, and the whole subnet through the tun (helper.c).
                let peer = Ipv4Addr::from(u32::from(server_address).wrapping_add(1));
                netlink
                    .add_address(
                        ifindex,
                        IpAddr::V4(server_address),
                        32,
                        Some(IpAddr::V4(peer)),
                    )
                    .await?;
                static_routes.insert(IpNet::V4(subnet));
            }
        }

        let bind = tunnel
            .local
            .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
        let (socket, listener) = match tunnel.transport {
            Transport::Udp => {
                let socket =
                    UdpSocket::bind(bind).with_context(|| format!("binding UDP {bind}"))?;
                socket.set_nonblocking(true)?;
                if let Err(error) = super::udp_batch::set_socket_buffers(&socket, 4 << 20) {
                    tracing::warn!(%error, "cannot enlarge the UDP socket buffers");
                }
                (Some(Arc::new(socket)), None)
            }
            Transport::Tcp => {
                let listener =
                    TcpListener::bind(bind).with_context(|| format!("listening on TCP {bind}"))?;
                listener.set_nonblocking(true)?;
                (None, Some(listener))
            }
        };
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            socket,
            counters: ServerCounters::default(),
            anchor: Instant::now(),
            client_to_client,
            stop: AtomicBool::new(false),
        });
        let (input_tx, input_rx) = mpsc::channel::<ControlInput>(4096);
        let queue = device.queue(0).context("the tun device has no queue")?;
        let tun_read = queue.try_clone().context("cloning the tun queue")?;
        let tun_write = Arc::new(queue.try_clone().context("cloning the tun queue")?);
        let mut threads = Vec::new();
        match listener {
            None => {
                let shared = shared.clone();
                threads.push(spawn_named(format!("{}-rx", tunnel.name), move || {
                    wire_receive_loop(&shared, &tun_write, &input_tx)
                })?);
            }
            Some(listener) => {
                let shared = shared.clone();
                let name = tunnel.name.clone();
                threads.push(spawn_named(format!("{}-accept", tunnel.name), move || {
                    tcp_accept_loop(&shared, &name, listener, &tun_write, &input_tx)
                })?);
            }
        }
        {
            let shared = shared.clone();
            threads.push(spawn_named(format!("{}-tx", tunnel.name), move || {
                tun_receive_loop(&shared, &tun_read)
            })?);
        }

        let (routes_tx, routes_rx) = watch::channel(static_routes.clone());
        let reconcile = tokio::spawn(reconcile_routes(netlink.clone(), ifindex, routes_rx));
        let status = Arc::new(Mutex::new(SharedStatus {
            state: "waiting for clients".into(),
            ..SharedStatus::default()
        }));
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let (stop, stop_rx) = watch::channel(false);
        let mut cookie_key = [0u8; 32];
        {
            use ring::rand::SecureRandom;
            ring::rand::SystemRandom::new()
                .fill(&mut cookie_key)
                .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
        }
        let hand_window_secs =
            u32::try_from(session_config.handshake_window.as_secs()).unwrap_or(u32::MAX);
        let control = ControlTask {
            name: tunnel.name.clone(),
            first_packets: ControlCodec::new(protection.build(TlsRole::Server), unix_now() as u32),
            cookie: SessionCookie::new(cookie_key, hand_window_secs),
            session_config,
            protection,
            shared: shared.clone(),
            status: status.clone(),
            link_changed,
            events: events.clone(),
            pool: AddressPool::new(subnet, topology, server_address, pool),
            peer_ids: PeerIds::default(),
            push: ServerPush {
                subnet,
                topology,
                server_address,
                routes: push_routes,
                options: push,
                client_to_client,
                compression: compression_push,
            },
            duplicate_cn,
            client_config_dir,
            max_clients: usize::from(max_clients),
            connections: HashMap::new(),
            tcp_streams: HashMap::new(),
            static_routes,
            routes_tx,
            reconcile: Some(reconcile),
            device: Some(device),
            threads,
            last_full_tick: Instant::now(),
        };
        let task = tokio::spawn(control.run(input_rx, stop_rx));
        tracing::info!(tunnel = %tunnel.name, local = %bind, "multi-client server listening");
        Ok(ServerRuntime {
            name: tunnel.name.clone(),
            shared,
            status,
            events,
            stop,
            task,
        })
    }

    /// The tunnel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A stream of client connected/disconnected events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ClientEvent> {
        self.events.subscribe()
    }

    /// The connected clients, by virtual address.
    pub fn clients(&self) -> Vec<ClientInfo> {
        self.status
            .lock()
            .map(|status| status.clients.clone())
            .unwrap_or_default()
    }

    /// A status snapshot (state, counters) like a single-peer tunnel's.
    pub fn status(&self) -> TunnelRuntimeStatus {
        let (state, last_error, connected, handshaking) = self
            .status
            .lock()
            .map(|status| {
                (
                    status.state.clone(),
                    status.last_error.clone(),
                    status.clients.len(),
                    status.handshaking,
                )
            })
            .unwrap_or_default();
        let counters = &self.shared.counters;
        let pairs = [
            ("tx_packets", &counters.tx_packets),
            ("tx_bytes", &counters.tx_bytes),
            ("rx_packets", &counters.rx_packets),
            ("rx_bytes", &counters.rx_bytes),
            ("rx_replayed", &counters.rx_replayed),
            ("rx_unauthenticated", &counters.rx_unauthenticated),
            ("rx_malformed", &counters.rx_malformed),
            ("rx_unknown_client", &counters.rx_unknown_client),
            ("rx_unknown_key", &counters.rx_unknown_key),
            ("rx_bad_source", &counters.rx_bad_source),
            ("rx_compressed", &counters.rx_compressed),
            ("client_to_client", &counters.client_to_client),
            ("tx_no_route", &counters.tx_no_route),
            ("tx_no_key", &counters.tx_no_key),
            ("tx_errors", &counters.tx_errors),
            ("control_dropped", &counters.control_dropped),
            ("control_unauthenticated", &counters.control_unauthenticated),
            ("control_cookie_sent", &counters.control_cookie_sent),
            ("control_cookie_refused", &counters.control_cookie_refused),
        ];
        let mut counters: std::collections::BTreeMap<String, u64> = pairs
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value.load(Ordering::Relaxed)))
            .collect();
        counters.insert("clients_connected".into(), connected as u64);
        counters.insert("clients_handshaking".into(), handshaking as u64);
        TunnelRuntimeStatus {
            state,
            last_error,
            counters,
            ..TunnelRuntimeStatus::default()
        }
    }

    /// Says goodbye to every client, stops the threads, removes the routes and the tun device.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The session configuration every client session starts from; the push is per client.
fn server_session_config(tunnel: &Tunnel, tls: TlsSetup) -> SessionConfig {
    let mode = SessionMode::Server {
        push: PushOptions::default(),
        peer_id: 0,
    };
    let mut config = SessionConfig::new(tls, mode, tunnel.transport, tunnel.ciphers.clone());
    let (tls_auth, key_direction) = match &tunnel.control_protection {
        ControlProtection::TlsAuth { direction, .. } => (true, *direction),
        _ => (false, None),
    };
    config.options_string = options_string(&OccOptions {
        role: TlsRole::Server,
        transport: match tunnel.transport {
            Transport::Udp => OccTransport::Udp,
            Transport::Tcp => OccTransport::TcpServer,
        },
        tun_mtu: tunnel.mtu,
        cipher: tunnel.ciphers.first().copied(),
        ifconfig: None,
        tls_auth,
        key_direction,
    });
    config.tun_mtu = tunnel.mtu;
    config.peer_info = PeerInfo::ours(&tunnel.ciphers, false, tunnel.mtu);
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
    config.push_per_client = true;
    config
}

// ---------------------------------------------------------------------------------------------
// Data path

/// Waits until `fd` can be written or [`SEND_WAIT_MS`] pass.
fn wait_writable(fd: i32) {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: `pollfd` is a valid, initialised pollfd that lives across the call; nfds is 1.
    unsafe { libc::poll(&mut pollfd, 1, SEND_WAIT_MS) };
}

/// IPv4 source and destination of a packet, if it is IPv4.
fn ipv4_addresses(packet: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    if packet.first()? >> 4 != 4 {
        return None;
    }
    let source: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
    let destination: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
    Some((Ipv4Addr::from(source), Ipv4Addr::from(destination)))
}

/// Reads the UDP socket a batch at a time (`recvmmsg`, with UDP GRO where the kernel offers
/// it): data packets are opened and written to tun (or forwarded to another client), control
/// packets go to the control task.
fn wire_receive_loop(shared: &Shared, tun: &TunQueue, control: &mpsc::Sender<ControlInput>) {
    let Some(socket) = shared.socket.clone() else {
        return;
    };
    let mut batch = RecvBatch::new(RECV_BATCH, RECV_SLOT);
    if let Err(error) = batch.enable_udp_gro(socket.as_ref()) {
        tracing::debug!(%error, "no UDP GRO: one datagram per receive slot");
    }
    // Data packets are opened in place, and the batch's slots are read-only.
    let mut packet = Vec::with_capacity(MAX_PACKET);
    let mut sealed = Vec::with_capacity(MAX_PACKET);
    let poll_interval = Duration::from_millis(POLL_INTERVAL_MS as u64);
    while !shared.stop.load(Ordering::Relaxed) {
        match batch.recv(socket.as_ref(), Some(poll_interval)) {
            Ok(0) => continue,
            Ok(_) => {}
            // WouldBlock: another reader raced us; ICMP errors from a vanished client also
            // surface here. Either way, keep reading.
            Err(_) => continue,
        }
        for (datagram, from) in batch.iter() {
            packet.clear();
            packet.extend_from_slice(datagram);
            dispatch_packet(shared, &mut packet, from, tun, control, &mut sealed);
        }
    }
}

/// One packet from a client: data is opened here, control goes to the control task.
fn dispatch_packet(
    shared: &Shared,
    packet: &mut [u8],
    from: SocketAddr,
    tun: &TunQueue,
    control: &mpsc::Sender<ControlInput>,
    sealed: &mut Vec<u8>,
) {
    {
        {
            match peek_opcode(packet) {
                Ok((Opcode::DataV1 | Opcode::DataV2, _)) => {
                    receive_data(shared, packet, from, tun, control, sealed)
                }
                Ok(_) => {
                    let input = ControlInput::Packet {
                        bytes: packet.to_vec(),
                        from,
                    };
                    if control.try_send(input).is_err() {
                        shared
                            .counters
                            .control_dropped
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(_) => {
                    shared.counters.rx_malformed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Accepts TCP clients; each connection gets a reader thread and is announced to the control
/// task, which writes to it.
fn tcp_accept_loop(
    shared: &Arc<Shared>,
    name: &str,
    listener: TcpListener,
    tun: &Arc<TunQueue>,
    control: &mpsc::Sender<ControlInput>,
) {
    let fd = listener.as_raw_fd();
    while !shared.stop.load(Ordering::Relaxed) {
        if !wait_readable(fd) {
            continue;
        }
        let Ok((stream, peer)) = listener.accept() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let _ = stream.set_nonblocking(false);
        let Ok(reader) = stream.try_clone() else {
            continue;
        };
        let writer = Arc::new(Mutex::new(stream));
        if control
            .blocking_send(ControlInput::TcpConnected {
                peer,
                stream: writer,
            })
            .is_err()
        {
            return;
        }
        let (shared, tun, control) = (shared.clone(), tun.clone(), control.clone());
        // Detached: it ends when the connection closes or the server stops.
        let spawned = spawn_named(format!("{name}-c"), move || {
            tcp_read_loop(&shared, reader, peer, &tun, &control);
            let _ = control.blocking_send(ControlInput::TcpClosed { peer });
        });
        if spawned.is_err() {
            tracing::warn!(%peer, "cannot start a reader thread for a TCP client");
        }
    }
}

fn tcp_read_loop(
    shared: &Shared,
    mut stream: TcpStream,
    peer: SocketAddr,
    tun: &TunQueue,
    control: &mpsc::Sender<ControlInput>,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(POLL_INTERVAL_MS as u64)));
    let mut decoder = FrameDecoder::new(std::num::NonZeroU16::MAX);
    let mut chunk = vec![0u8; MAX_PACKET];
    let mut sealed = Vec::with_capacity(MAX_PACKET);
    while !shared.stop.load(Ordering::Relaxed) {
        let read = match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(read) => read,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(_) => return,
        };
        let mut offset = 0;
        while offset < read {
            offset += decoder.push(chunk.get(offset..read).unwrap_or_default());
            while let Some(frame) = decoder.next_frame() {
                let Ok(frame) = frame else {
                    shared.counters.rx_malformed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let mut packet = frame.to_vec();
                dispatch_packet(shared, &mut packet, peer, tun, control, &mut sealed);
            }
        }
    }
}

fn receive_data(
    shared: &Shared,
    packet: &mut [u8],
    from: SocketAddr,
    tun: &TunQueue,
    control: &mpsc::Sender<ControlInput>,
    sealed: &mut Vec<u8>,
) {
    let counters = &shared.counters;
    let Ok((_, key_id, peer_id)) = peek_data_key(packet) else {
        counters.rx_malformed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let snapshot = shared.snapshot.load();
    let client = match peer_id {
        Some(peer_id) => snapshot.by_peer_id.get(&peer_id),
        None => snapshot.by_address.get(&from),
    };
    // No floating: a client's packets must come from the address it connected from.
    let Some(client) = client.filter(|client| client.real_address == from) else {
        counters.rx_unknown_client.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let Ok(mut keys) = client.receive_keys.lock() else {
        return;
    };
    let Some(key) = keys.iter_mut().find(|key| key.key_id() == key_id) else {
        counters.rx_unknown_key.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let opened = key.open(Instant::now(), packet);
    if opened.is_ok() {
        let now_ms = shared.now_ms();
        client.last_received_ms.store(now_ms, Ordering::Relaxed);
        client.promote_pending_key(Some(key_id), now_ms);
    }
    match opened {
        Ok(Received::Ip(payload)) => {
            let Some((source, destination)) = ipv4_addresses(payload) else {
                // IPv6 inside the tunnel is not routed by this server (schema v1 is IPv4).
                counters.rx_bad_source.fetch_add(1, Ordering::Relaxed);
                return;
            };
            if !snapshot.routes.source_allowed(client.peer_id, source) {
                counters.rx_bad_source.fetch_add(1, Ordering::Relaxed);
                return;
            }
            counters.rx_packets.fetch_add(1, Ordering::Relaxed);
            counters
                .rx_bytes
                .fetch_add(payload.len() as u64, Ordering::Relaxed);
            client
                .rx_bytes
                .fetch_add(payload.len() as u64, Ordering::Relaxed);
            if shared.client_to_client {
                let owner = snapshot
                    .routes
                    .lookup(destination)
                    .filter(|&owner| owner != client.peer_id)
                    .and_then(|owner| snapshot.by_peer_id.get(&owner));
                if let Some(owner) = owner {
                    counters.client_to_client.fetch_add(1, Ordering::Relaxed);
                    let payload = payload.to_vec();
                    drop(keys);
                    shared.send_data(owner, &payload, sealed);
                    return;
                }
            }
            let _ = tun.write(payload);
        }
        Ok(Received::Ping) | Ok(Received::Occ(_)) => {}
        Ok(Received::OccExit) => {
            let _ = control.try_send(ControlInput::ClientExited {
                peer_id: client.peer_id,
            });
        }
        Ok(Received::Compressed) => {
            counters.rx_compressed.fetch_add(1, Ordering::Relaxed);
        }
        Err(DataError::Replay) => {
            counters.rx_replayed.fetch_add(1, Ordering::Relaxed);
        }
        Err(DataError::Unauthenticated) => {
            counters.rx_unauthenticated.fetch_add(1, Ordering::Relaxed);
        }
        Err(_) => {
            counters.rx_malformed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Reads tun: each packet goes to the client owning its destination. UDP clients' packets are
/// sealed into one batch, sent with `sendmmsg` (runs to one client as UDP GSO) whenever tun has
/// nothing more queued or the batch is full.
fn tun_receive_loop(shared: &Shared, tun: &TunQueue) {
    let mut buffer = vec![0u8; MAX_PACKET];
    let mut sealed = Vec::with_capacity(MAX_PACKET);
    let mut batch = SendBatch::new(SEND_BATCH, 2048);
    batch.set_udp_gso(true);
    let fd = tun.as_raw_fd();
    set_nonblocking(fd);
    while !shared.stop.load(Ordering::Relaxed) {
        if !wait_readable(fd) {
            continue;
        }
        loop {
            let read = match tun.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let Some(payload) = buffer.get(..read) else {
                continue;
            };
            let snapshot = shared.snapshot.load();
            let owner = ipv4_addresses(payload)
                .and_then(|(_, destination)| snapshot.routes.lookup(destination))
                .and_then(|owner| snapshot.by_peer_id.get(&owner));
            let Some(client) = owner else {
                shared.counters.tx_no_route.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if client.tcp.is_some() {
                shared.send_data(client, payload, &mut sealed);
                continue;
            }
            if !shared.seal_data(client, payload, &mut sealed) {
                continue;
            }
            if batch.is_full() {
                flush_batch(shared, &mut batch);
            }
            if batch.push(&sealed, client.real_address).is_err() {
                // Longer than a slot: cannot happen below the tun MTU, but never lose it.
                if !shared.send_udp(&sealed, client.real_address) {
                    shared.counters.tx_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            client
                .last_sent_ms
                .store(shared.now_ms(), Ordering::Relaxed);
        }
        flush_batch(shared, &mut batch);
    }
}

/// Sends what `batch` holds on the server's UDP socket; drops are counted as send errors.
fn flush_batch(shared: &Shared, batch: &mut SendBatch) {
    if batch.is_empty() {
        return;
    }
    let Some(socket) = shared.socket.as_ref() else {
        batch.clear();
        return;
    };
    let queued = batch.len();
    let sent = batch.flush(socket.as_ref()).unwrap_or(0);
    let lost = queued.saturating_sub(sent) as u64;
    if lost > 0 {
        shared.counters.tx_errors.fetch_add(lost, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// Kernel routes

/// Keeps the routes with our protocol id on `ifindex` equal to the desired set: deletes what is
/// not desired, adds what is missing; runs on every change of the set and every
/// [`RECONCILE_INTERVAL`]. When the sender goes away it removes everything of ours on the link.
async fn reconcile_routes(
    netlink: Arc<Netlink>,
    ifindex: u32,
    mut desired: watch::Receiver<BTreeSet<IpNet>>,
) {
    loop {
        let want = desired.borrow_and_update().clone();
        if let Err(error) = reconcile_once(&netlink, ifindex, &want).await {
            tracing::warn!(error = %format!("{error:#}"), "route reconcile failed; retrying");
        }
        tokio::select! {
            changed = desired.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = tokio::time::sleep(RECONCILE_INTERVAL) => {}
        }
    }
    if let Err(error) = reconcile_once(&netlink, ifindex, &BTreeSet::new()).await {
        tracing::warn!(error = %format!("{error:#}"), "removing the server's routes");
    }
}

async fn reconcile_once(
    netlink: &Netlink,
    ifindex: u32,
    want: &BTreeSet<IpNet>,
) -> anyhow::Result<()> {
    let have: BTreeSet<IpNet> = netlink
        .routes_with_our_protocol()
        .await?
        .into_iter()
        .filter(|&(_, _, dev)| dev == ifindex)
        .map(|(destination, _, _)| destination)
        .collect();
    for stale in have.difference(want) {
        netlink.delete_route(*stale, ifindex).await?;
    }
    for missing in want.difference(&have) {
        netlink.replace_route(*missing, None, ifindex, None).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Control task

/// A client that TLS named and the server admitted.
struct Admitted {
    common_name: String,
    lease: Lease,
    iroutes: Vec<Ipv4Net>,
    plane: Arc<ClientPlane>,
    connected: Option<ClientInfo>,
}

/// One client connection (one UDP source address).
struct Connection {
    session: Session,
    admitted: Option<Admitted>,
}

struct ControlTask {
    name: String,
    session_config: SessionConfig,
    protection: ProtectionSource,
    /// Authenticates first packets from unknown addresses (no replay state; UDP).
    first_packets: ControlCodec,
    /// Makes and checks the HMAC-cookie session ids of stateless first replies (UDP); its
    /// key is random per process.
    cookie: SessionCookie,
    shared: Arc<Shared>,
    status: Arc<Mutex<SharedStatus>>,
    /// Told when the published state or client list changes (not on every tick).
    link_changed: Arc<tokio::sync::Notify>,
    events: broadcast::Sender<ClientEvent>,
    pool: AddressPool,
    peer_ids: PeerIds,
    push: ServerPush,
    duplicate_cn: bool,
    client_config_dir: Option<std::path::PathBuf>,
    max_clients: usize,
    connections: HashMap<SocketAddr, Connection>,
    /// TCP clients' connections by peer address (from accept until close).
    tcp_streams: HashMap<SocketAddr, Arc<Mutex<TcpStream>>>,
    static_routes: BTreeSet<IpNet>,
    routes_tx: watch::Sender<BTreeSet<IpNet>>,
    reconcile: Option<tokio::task::JoinHandle<()>>,
    device: Option<TunDevice>,
    threads: Vec<JoinHandle<()>>,
    last_full_tick: Instant,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

impl ControlTask {
    async fn run(
        mut self,
        mut input: mpsc::Receiver<ControlInput>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                message = input.recv() => match message {
                    Some(ControlInput::Packet { bytes, from }) => self.on_packet(&bytes, from),
                    Some(ControlInput::ClientExited { peer_id }) => {
                        let address = self.connections.iter().find_map(|(address, connection)| {
                            connection
                                .admitted
                                .as_ref()
                                .filter(|admitted| admitted.plane.peer_id == peer_id)
                                .map(|_| *address)
                        });
                        if let Some(address) = address {
                            self.remove(address, "the client exited (explicit-exit-notify)");
                        }
                    }
                    Some(ControlInput::TcpConnected { peer, stream }) => {
                        self.tcp_streams.insert(peer, stream);
                    }
                    Some(ControlInput::TcpClosed { peer }) => {
                        self.remove(peer, "the TCP connection closed");
                        self.tcp_streams.remove(&peer);
                    }
                    None => break,
                },
                _ = tick.tick() => self.on_tick(),
            }
        }
        self.shutdown().await;
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        let full = now.saturating_duration_since(self.last_full_tick) >= Duration::from_secs(1);
        if full {
            self.last_full_tick = now;
        }
        let now_ms = self.shared.millis(now);
        let addresses: Vec<SocketAddr> = self.connections.keys().copied().collect();
        for address in addresses {
            let Some(connection) = self.connections.get_mut(&address) else {
                continue;
            };
            if let Some(admitted) = &connection.admitted {
                admitted.plane.promote_pending_key(None, now_ms);
            }
            let due = connection
                .session
                .poll_timeout()
                .is_some_and(|at| at <= now);
            if due || full {
                let activity = match &connection.admitted {
                    Some(admitted) => activity(&self.shared, &admitted.plane),
                    // Before admission only the handshake window matters.
                    None => LinkActivity {
                        last_received: now,
                        last_sent: now,
                    },
                };
                connection.session.handle_timeout(now, activity);
                self.drive(address);
            }
        }
        self.publish_status();
    }

    fn make_session(&self, now: Instant) -> Option<Session> {
        let now_unix = unix_now() as u32;
        let codec = ControlCodec::new(self.protection.build(TlsRole::Server), now_unix);
        match Session::new(
            self.session_config.clone(),
            codec,
            now,
            now_unix,
            system_random(),
        ) {
            Ok(session) => Some(session),
            Err(end) => {
                tracing::error!(tunnel = %self.name, reason = %end, "cannot start a session");
                None
            }
        }
    }

    fn on_packet(&mut self, bytes: &[u8], from: SocketAddr) {
        let now = Instant::now();
        let stateless = self.session_config.transport == Transport::Udp;
        if let Some(connection) = self.connections.get_mut(&from) {
            let another_session =
                stateless && is_another_sessions_handshake(&connection.session, bytes);
            if !connection.session.is_new_session_reset(bytes) && !another_session {
                feed(&self.shared, &mut connection.session, now, bytes);
                self.drive(from);
                return;
            }
        }
        if stateless {
            self.on_first_packet(bytes, from, now);
            return;
        }
        // TCP: the connection itself proves the address (OpenVPN uses the cookie on UDP only).
        let is_reset = matches!(peek_opcode(bytes), Ok((Opcode::HardResetClientV2, _)));
        if !is_reset {
            self.shared
                .counters
                .control_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let handshaking = self
            .connections
            .values()
            .filter(|connection| connection.admitted.is_none())
            .count();
        if handshaking >= MAX_HANDSHAKING {
            self.shared
                .counters
                .control_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Try the reset on a fresh session; only one that authenticates replaces what there is.
        let Some(mut session) = self.make_session(now) else {
            return;
        };
        feed(&self.shared, &mut session, now, bytes);
        if session.remote_session_id().is_none() {
            return;
        }
        if self.connections.contains_key(&from) {
            // Over TCP the new session runs on the same connection: keep it open.
            self.forget(from, "the client started a new session");
        }
        self.connections.insert(
            from,
            Connection {
                session,
                admitted: None,
            },
        );
        self.drive(from);
    }

    /// A UDP packet from an address without a session of that client (OpenVPN 2.6 mudp.c
    /// `do_pre_decrypt_check`): a hard reset gets the stateless cookie reply; a handshake
    /// packet echoing a valid cookie creates the session, which then handles it.
    fn on_first_packet(&mut self, bytes: &[u8], from: SocketAddr, now: Instant) {
        let counters = &self.shared.counters;
        match classify_first_packet(&self.first_packets, bytes) {
            Err(FirstPacketError::Codec(ControlCodecError::Unauthenticated)) => {
                counters
                    .control_unauthenticated
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                counters.control_dropped.fetch_add(1, Ordering::Relaxed);
            }
            Ok(FirstPacket::Reset { client_session }) => {
                let now_unix = unix_now();
                let cookie = self
                    .cookie
                    .server_session_id(client_session, from, now_unix);
                // A fresh codec per reply: its replay id is 1, as OpenVPN's.
                let mut codec =
                    ControlCodec::new(self.protection.build(TlsRole::Server), now_unix as u32);
                match stateless_reset_reply(&mut codec, now_unix as u32, cookie, client_session) {
                    Ok(wire) => {
                        counters.control_cookie_sent.fetch_add(1, Ordering::Relaxed);
                        self.transmit(from, &wire);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot wrap the stateless reset reply");
                        counters.tx_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok(FirstPacket::Echo {
                client_session,
                echoed,
            }) => {
                if !self.cookie.verify(echoed, client_session, from, unix_now()) {
                    counters
                        .control_cookie_refused
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let handshaking = self
                    .connections
                    .values()
                    .filter(|connection| connection.admitted.is_none())
                    .count();
                if handshaking >= MAX_HANDSHAKING {
                    counters.control_dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let now_unix = unix_now() as u32;
                let codec = ControlCodec::new(self.protection.build(TlsRole::Server), now_unix);
                let mut session = match Session::new_server_after_cookie(
                    self.session_config.clone(),
                    codec,
                    now,
                    now_unix,
                    system_random(),
                    echoed,
                    client_session,
                ) {
                    Ok(session) => session,
                    Err(end) => {
                        tracing::error!(tunnel = %self.name, reason = %end, "cannot start a session");
                        return;
                    }
                };
                feed(&self.shared, &mut session, now, bytes);
                if self.connections.contains_key(&from) {
                    self.forget(from, "the client started a new session");
                }
                self.connections.insert(
                    from,
                    Connection {
                        session,
                        admitted: None,
                    },
                );
                self.drive(from);
            }
        }
    }

    /// Sends a control packet to the client at `address`.
    fn transmit(&self, address: SocketAddr, packet: &[u8]) {
        let sent = match self.tcp_streams.get(&address) {
            Some(stream) => send_framed(stream, packet),
            None => self.shared.send_udp(packet, address),
        };
        if !sent {
            self.shared
                .counters
                .tx_errors
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The data-path state of the admitted client at `address`.
    fn plane_of(&self, address: SocketAddr) -> Option<Arc<ClientPlane>> {
        self.connections
            .get(&address)?
            .admitted
            .as_ref()
            .map(|admitted| admitted.plane.clone())
    }

    /// Acts on the events of the session at `address`.
    fn drive(&mut self, address: SocketAddr) {
        let mut ended: Option<String> = None;
        loop {
            let Some(event) = self
                .connections
                .get_mut(&address)
                .and_then(|connection| connection.session.poll_event())
            else {
                break;
            };
            match event {
                SessionEvent::Transmit(bytes) => self.transmit(address, &bytes),
                SessionEvent::PeerAuthenticated { common_name } => {
                    self.admit(address, common_name);
                }
                SessionEvent::InstallReceiveKey(key) => {
                    if let Some(plane) = self.plane_of(address) {
                        if let Ok(mut keys) = plane.receive_keys.lock() {
                            keys.retain(|existing| existing.key_id() != key.key_id());
                            keys.push(*key);
                        }
                    }
                }
                SessionEvent::ActivateSendKey(key) => {
                    if let Some(plane) = self.plane_of(address) {
                        if plane.send_key.load().is_none() {
                            plane.send_key.store(Some(key));
                        } else {
                            let deadline = self.shared.millis(Instant::now() + KEY_SWITCH_GRACE);
                            plane.pending_deadline_ms.store(deadline, Ordering::Relaxed);
                            plane.pending_send_key.store(Some(key));
                        }
                    }
                }
                SessionEvent::RetireReceiveKey(key_id) => {
                    if let Some(plane) = self.plane_of(address) {
                        if let Ok(mut keys) = plane.receive_keys.lock() {
                            keys.retain(|existing| existing.key_id() != key_id);
                        }
                    }
                }
                SessionEvent::Established { params, .. } => {
                    let Some(admitted) = self
                        .connections
                        .get_mut(&address)
                        .and_then(|connection| connection.admitted.as_mut())
                    else {
                        continue;
                    };
                    let info = ClientInfo {
                        common_name: admitted.common_name.clone(),
                        virtual_address: admitted.lease.address,
                        iroutes: admitted.iroutes.clone(),
                        real_address: address,
                        peer_id: admitted.plane.peer_id,
                        connected_since_unix: unix_now(),
                    };
                    admitted.connected = Some(info.clone());
                    tracing::info!(
                        tunnel = %self.name,
                        peer = %address,
                        cn = %info.common_name,
                        address = %info.virtual_address,
                        peer_id = info.peer_id,
                        cipher = %params.cipher,
                        "client connected"
                    );
                    let _ = self.events.send(ClientEvent::ClientConnected(info));
                    self.publish_routes();
                }
                SessionEvent::Pushed(_) => {}
                SessionEvent::SendPing => {
                    if let Some(plane) = self.plane_of(address) {
                        if let Some(key) = plane.send_key.load_full() {
                            let mut packet = Vec::new();
                            if key.seal_ping(&mut packet).is_ok() {
                                self.shared.send_wire(&plane, &packet);
                            }
                        }
                    }
                }
                SessionEvent::Ended(end) => {
                    if let SessionEnd::TlsFailed(reason) = &end {
                        tracing::error!(tunnel = %self.name, peer = %address, "session refused: {reason}");
                    }
                    ended = Some(match end {
                        SessionEnd::PeerExit => "the client exited".to_owned(),
                        other => other.to_string(),
                    });
                }
            }
        }
        if let Some(reason) = ended {
            self.remove(address, &reason);
        }
    }

    /// Decides about a client TLS just named: ccd, duplicate-cn, max-clients, address, push.
    fn admit(&mut self, address: SocketAddr, common_name: Option<String>) {
        let now = Instant::now();
        let common_name = common_name.unwrap_or_default();
        let decision = self.admission(address, &common_name);
        let Some(connection) = self.connections.get_mut(&address) else {
            return;
        };
        match decision {
            Err(reason) => {
                tracing::warn!(tunnel = %self.name, peer = %address, cn = %common_name, "client refused: {reason}");
                connection.session.refuse(now, &reason);
            }
            Ok((lease, ccd, peer_id)) => {
                let push = client_push(&self.push, &lease, ccd.as_ref());
                let plane = Arc::new(ClientPlane::new(
                    peer_id,
                    address,
                    self.tcp_streams.get(&address).cloned(),
                    self.shared.millis(now),
                ));
                connection.admitted = Some(Admitted {
                    common_name,
                    lease,
                    iroutes: ccd.map(|ccd| ccd.iroutes).unwrap_or_default(),
                    plane,
                    connected: None,
                });
                connection.session.set_push(now, push, peer_id);
                self.publish_routes();
            }
        }
    }

    fn admission(
        &mut self,
        address: SocketAddr,
        common_name: &str,
    ) -> Result<(Lease, Option<ClientConfig>, u32), String> {
        if common_name.is_empty() {
            return Err("the client certificate has no common name".into());
        }
        let ccd = match &self.client_config_dir {
            None => None,
            Some(dir) => {
                let own = read_client_config(dir, common_name).map_err(|error| {
                    tracing::error!(%error, "client config file");
                    format!("client config file error: {error}")
                })?;
                match own {
                    Some(ccd) => Some(ccd),
                    None => read_client_config(dir, "DEFAULT")
                        .map_err(|error| format!("client config file error: {error}"))?,
                }
            }
        };
        if ccd.as_ref().is_some_and(|ccd| ccd.disable) {
            return Err("client disabled".into());
        }
        if !self.duplicate_cn {
            let others: Vec<SocketAddr> = self
                .connections
                .iter()
                .filter(|(other, connection)| {
                    **other != address
                        && connection
                            .admitted
                            .as_ref()
                            .is_some_and(|admitted| admitted.common_name == common_name)
                })
                .map(|(other, _)| *other)
                .collect();
            for other in others {
                self.remove(
                    other,
                    "a new connection with the same common name replaced it",
                );
            }
        }
        let admitted = self
            .connections
            .values()
            .filter(|connection| connection.admitted.is_some())
            .count();
        if admitted >= self.max_clients {
            return Err(format!("max_clients ({}) reached", self.max_clients));
        }
        let fixed = ccd.as_ref().and_then(|ccd| ccd.ifconfig_push);
        let lease = self
            .pool
            .lease(common_name, fixed)
            .map_err(|error| error.to_string())?;
        let Some(peer_id) = self.peer_ids.allocate() else {
            self.pool.release(lease.address);
            return Err("no free peer id".into());
        };
        Ok((lease, ccd, peer_id))
    }

    /// Forgets the connection at `address` (its address, peer id and routes are freed) and,
    /// over TCP, closes it: there the connection is the session.
    fn remove(&mut self, address: SocketAddr, reason: &str) {
        if self.forget(address, reason) {
            if let Some(stream) = self.tcp_streams.get(&address) {
                if let Ok(stream) = stream.lock() {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                }
            }
        }
    }

    /// Forgets the connection at `address`, keeping its transport; whether there was one.
    fn forget(&mut self, address: SocketAddr, reason: &str) -> bool {
        let Some(connection) = self.connections.remove(&address) else {
            return false;
        };
        let Some(admitted) = connection.admitted else {
            tracing::debug!(tunnel = %self.name, peer = %address, "handshake ended: {reason}");
            return true;
        };
        self.pool.release(admitted.lease.address);
        self.peer_ids.release(admitted.plane.peer_id);
        self.publish_routes();
        if let Some(client) = admitted.connected {
            tracing::info!(tunnel = %self.name, peer = %address, cn = %client.common_name, address = %client.virtual_address, "client disconnected: {reason}");
            let _ = self.events.send(ClientEvent::ClientDisconnected {
                client,
                reason: reason.to_owned(),
            });
        }
        true
    }

    /// Publishes a new data-path snapshot and the desired kernel routes.
    fn publish_routes(&mut self) {
        let mut snapshot = Snapshot::default();
        let mut routed = Vec::new();
        let mut desired = self.static_routes.clone();
        for connection in self.connections.values() {
            let Some(admitted) = &connection.admitted else {
                continue;
            };
            let plane = admitted.plane.clone();
            snapshot
                .by_address
                .insert(plane.real_address, plane.clone());
            snapshot.by_peer_id.insert(plane.peer_id, plane);
            if admitted.connected.is_some() {
                routed.push((
                    admitted.lease.address,
                    admitted.iroutes.as_slice(),
                    admitted.plane.peer_id,
                ));
                desired.extend(admitted.iroutes.iter().map(|iroute| IpNet::V4(*iroute)));
            }
        }
        snapshot.routes = RouteTable::build(routed);
        self.shared.snapshot.store(Arc::new(snapshot));
        self.routes_tx.send_if_modified(|current| {
            if *current == desired {
                false
            } else {
                *current = desired;
                true
            }
        });
        self.publish_status();
    }

    fn publish_status(&self) {
        let mut clients: Vec<ClientInfo> = self
            .connections
            .values()
            .filter_map(|connection| connection.admitted.as_ref()?.connected.clone())
            .collect();
        clients.sort_by_key(|client| client.virtual_address);
        let handshaking = self
            .connections
            .values()
            .filter(|connection| connection.admitted.is_none())
            .count();
        if let Ok(mut status) = self.status.lock() {
            // "established" as soon as one client is, like a single-peer tunnel; the client
            // list says who.
            let state = if clients.is_empty() {
                "waiting for clients"
            } else {
                "established"
            };
            let changed = status.state != state || status.clients != clients;
            status.state = state.into();
            status.clients = clients;
            status.handshaking = handshaking;
            if changed {
                self.link_changed.notify_one();
            }
        }
    }

    async fn shutdown(mut self) {
        let now = Instant::now();
        let addresses: Vec<SocketAddr> = self.connections.keys().copied().collect();
        for address in addresses {
            let Some(connection) = self.connections.get_mut(&address) else {
                continue;
            };
            // RESTART,[N]: the client reconnects at once, to its next remote if it has one
            // (another server of the deployment), instead of waiting for its ping-restart.
            let sent_exit = connection.session.restart_peer(now, true);
            let plane = connection
                .admitted
                .as_ref()
                .map(|admitted| admitted.plane.clone());
            let mut outgoing = Vec::new();
            while let Some(event) = connection.session.poll_event() {
                if let SessionEvent::Transmit(bytes) = event {
                    outgoing.push(bytes);
                }
            }
            for bytes in outgoing {
                self.transmit(address, &bytes);
            }
            if let (false, Some(plane)) = (sent_exit, plane) {
                // explicit-exit-notify on the data channel for clients without cc-exit.
                if let Some(key) = plane.send_key.load_full() {
                    let mut packet = Vec::new();
                    if key.seal_occ_exit(&mut packet).is_ok() {
                        for _ in 0..2 {
                            self.shared.send_wire(&plane, &packet);
                        }
                    }
                }
            }
            self.remove(address, "the server is stopping");
        }
        self.shared.stop.store(true, Ordering::Relaxed);
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
        // Dropping the sender makes the reconcile task remove every route of ours, then end.
        let (replacement, _) = watch::channel(BTreeSet::new());
        drop(std::mem::replace(&mut self.routes_tx, replacement));
        if let Some(reconcile) = self.reconcile.take() {
            let _ = reconcile.await;
        }
        drop(self.device.take());
        tracing::info!(tunnel = %self.name, "server stopped");
    }
}

/// When the data path last saw traffic with `plane`, for keepalive.
fn activity(shared: &Shared, plane: &ClientPlane) -> LinkActivity {
    let at = |ms: u64| shared.anchor + Duration::from_millis(ms);
    LinkActivity {
        last_received: at(plane.last_received_ms.load(Ordering::Relaxed)),
        last_sent: at(plane.last_sent_ms.load(Ordering::Relaxed)),
    }
}

/// The session's random source: the system RNG.
fn system_random() -> crate::proto::session::RandomSource {
    Box::new(|buffer: &mut [u8]| {
        use ring::rand::SecureRandom;
        // The system RNG failing is not recoverable; zeroes would be worse than stopping.
        ring::rand::SystemRandom::new()
            .fill(buffer)
            .expect("the system random number generator failed");
    })
}

/// Whether `bytes` is a handshake packet (CONTROL_V1/ACK_V1) of a client session other than
/// `session`'s: a client that restarted from the same address echoing a new cookie.
fn is_another_sessions_handshake(session: &Session, bytes: &[u8]) -> bool {
    let Ok((header, _)) = crate::proto::packet::ControlHeader::decode(bytes) else {
        return false;
    };
    matches!(header.opcode, Opcode::ControlV1 | Opcode::AckV1)
        && session
            .remote_session_id()
            .is_some_and(|remote| remote != header.session_id)
}

/// Hands one control packet to `session` and counts what it refused.
fn feed(shared: &Shared, session: &mut Session, now: Instant, bytes: &[u8]) {
    let before = session.stats();
    session.handle_control(now, bytes);
    let after = session.stats();
    shared.counters.control_unauthenticated.fetch_add(
        after.unauthenticated - before.unauthenticated,
        Ordering::Relaxed,
    );
    shared.counters.control_dropped.fetch_add(
        (after.replayed - before.replayed) + (after.malformed - before.malformed),
        Ordering::Relaxed,
    );
}
