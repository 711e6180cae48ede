//! The data path every tunnel runs, single-peer or server: blocking threads that move packets
//! between the tun device and the wire without locks shared with other tunnels, finding each
//! packet's peer in the [`Peers`] table the control task swaps in.
//!
//! ```text
//!   tun ──read (TCP super-segments, split)──► [tun→wire] ── Peers::destination, seal ──► UDP sendmmsg (GSO runs)
//!                                                                                   └─► TCP peer's bounded queue ─► [writer]
//!   tun ◄──write (coalesced super-segments)── [wire→tun] ◄── Peers::sender, open ◄──── UDP recvmmsg (GRO) / [TCP reader]
//!                                                │ control packets, peer exits (try_send: never blocks)
//!                                                ▼
//!                                         [control task]
//! ```
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::mpsc;

use super::counters::{add, bump, Counters};
use super::peer::{outer_ipv6, Clock, Peer, PeerWire, Peers, TcpSendError, TcpSender};
use crate::io::tun::{TunQueue, VNET_HDR_LEN};
use crate::io::udp_batch::{RecvBatch, SendBatch};
use crate::offload;
use crate::proto::data::{peek_data_key, DataError, Received};
use crate::proto::framing::{encode_frame, FrameDecoder};
use crate::proto::packet::peek_opcode;

/// Largest packet we read from tun or the wire.
const MAX_PACKET: usize = 65_535;
/// How often blocking data-path threads look at the stop flag.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Outer packet size TCP MSS clamping aims at: OpenVPN's default `mssfix 1492`. Full-sized
/// tunnelled segments then need no IP fragmentation and can go out as UDP GSO runs.
const MSSFIX_OUTER: usize = 1492;
/// Datagrams per `sendmmsg`: room for two 64 KiB TCP super-segments split into ~1.4 KiB
/// packets, so a GSO run is rarely cut by a flush.
const SEND_BATCH: usize = 128;
/// Receive slots of one `recvmmsg`; with UDP GRO each slot holds up to 64 KiB of datagrams.
const RECV_BATCH: usize = 32;
const RECV_SLOT: usize = 65_536;
/// Framed bytes gathered for one TCP peer before they go to its queue.
const TCP_CHUNK: usize = 256 * 1024;
/// A TCP peer that has not taken a write for this long is disconnected.
const TCP_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TLS client waits before dialling again after a TCP connection ended or failed.
pub(crate) const RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// What the data path tells the control task.
pub(crate) enum ControlInput {
    /// A control-channel packet (unframed).
    Packet { bytes: Vec<u8>, from: SocketAddr },
    /// The peer at `from` sent explicit-exit-notify on the data channel.
    PeerExited { from: SocketAddr },
    /// A TCP connection is up (accepted or dialled).
    TcpConnected { peer: SocketAddr, sender: TcpSender },
    /// The TCP connection with `peer` ended.
    TcpClosed { peer: SocketAddr },
}

/// What the data-path threads share with the control task.
pub(crate) struct DataPath {
    pub(crate) name: String,
    pub(crate) peers: ArcSwap<Peers>,
    /// The tunnel's UDP socket (`None` over TCP).
    pub(crate) udp: Option<Arc<UdpSocket>>,
    pub(crate) counters: Counters,
    pub(crate) clock: Clock,
    /// A server forwards packets between its clients itself.
    pub(crate) client_to_client: bool,
    pub(crate) stop: AtomicBool,
    control: mpsc::Sender<ControlInput>,
}

impl DataPath {
    pub(crate) fn new(
        name: &str,
        udp: Option<Arc<UdpSocket>>,
        client_to_client: bool,
        control: mpsc::Sender<ControlInput>,
    ) -> Self {
        DataPath {
            name: name.to_owned(),
            peers: ArcSwap::from_pointee(Peers::default()),
            udp,
            counters: Counters::default(),
            clock: Clock::new(),
            client_to_client,
            stop: AtomicBool::new(false),
            control,
        }
    }

    /// Hands `input` to the control task without waiting: if it is behind, the input is
    /// dropped and counted (the peer retransmits).
    fn to_control(&self, input: ControlInput) {
        if self.control.try_send(input).is_err() {
            bump(&self.counters.control.control_dropped);
        }
    }

    /// Sends one packet (control, or already sealed) to `address` over `wire`; never blocks.
    pub(crate) fn send_raw(&self, wire: &PeerWire, address: SocketAddr, packet: &[u8]) -> bool {
        let sent = match wire {
            PeerWire::Udp => self
                .udp
                .as_ref()
                .is_some_and(|socket| socket.send_to(packet, address).is_ok()),
            PeerWire::Tcp(sender) => match sender.send_packet(packet) {
                Ok(()) => true,
                Err(TcpSendError::Full) => {
                    bump(&self.counters.tx.tx_queue_full);
                    return false;
                }
                Err(_) => false,
            },
        };
        if !sent {
            bump(&self.counters.tx.tx_errors);
        }
        sent
    }

    /// Sends one packet to `peer` and notes the activity.
    pub(crate) fn send_to_peer(&self, peer: &Peer, packet: &[u8]) {
        if self.send_raw(&peer.wire, peer.address, packet) {
            peer.mark_sent(self.clock.now_ms());
        }
    }

    /// A keepalive ping on the data channel, if the peer has a send key.
    pub(crate) fn send_ping(&self, peer: &Peer) {
        if let Some(key) = peer.send_key(self.clock.now_ms()) {
            let mut packet = Vec::new();
            if key.seal_ping(&mut packet).is_ok() {
                self.send_to_peer(peer, &packet);
            }
        }
    }

    /// explicit-exit-notify on the data channel (twice: it is not retransmitted).
    pub(crate) fn send_exit(&self, peer: &Peer) {
        if let Some(key) = peer.send_key(self.clock.now_ms()) {
            let mut packet = Vec::new();
            if key.seal_occ_exit(&mut packet).is_ok() {
                for _ in 0..2 {
                    self.send_to_peer(peer, &packet);
                }
            }
        }
    }

    /// Seals `payload` for `peer` into `sealed` and counts it; false (counted) if the peer has
    /// no key yet or sealing fails.
    fn seal_for(&self, peer: &Peer, payload: &[u8], sealed: &mut Vec<u8>, now_ms: u64) -> bool {
        let Some(key) = peer.send_key(now_ms) else {
            bump(&self.counters.tx.tx_no_key);
            return false;
        };
        if key.seal(payload, sealed).is_err() {
            bump(&self.counters.tx.tx_errors);
            return false;
        }
        bump(&self.counters.tx.tx_packets);
        add(&self.counters.tx.tx_bytes, payload.len() as u64);
        add(&peer.tx_bytes, payload.len() as u64);
        true
    }
}

/// Spawns a named data-path thread.
pub(crate) fn spawn_named(
    name: String,
    body: impl FnOnce() + Send + 'static,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    use anyhow::Context as _;
    std::thread::Builder::new()
        .name(name.chars().take(15).collect())
        .spawn(body)
        .context("spawning a data-path thread")
}

/// Waits until `fd` is readable or the poll interval passes.
fn wait_readable(fd: i32) -> bool {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd that lives across the call; nfds is 1.
    let ready = unsafe { libc::poll(&mut pollfd, 1, POLL_INTERVAL.as_millis() as i32) };
    ready > 0
}

fn set_nonblocking(fd: i32) {
    // SAFETY: fcntl on a descriptor we own; failure leaves it blocking, which poll() tolerates.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// tun → wire

/// tun → seal → wire, in batches: read every packet tun has (with offloads: TCP super-segments,
/// split here), seal each for the peer owning its destination, and send UDP peers' packets
/// with one sendmmsg in GSO runs, TCP peers' through their queues.
pub(crate) fn tun_to_wire(path: &DataPath, tun: &TunQueue) {
    let mut buffer = vec![0u8; MAX_PACKET + VNET_HDR_LEN];
    let mut scratch = Vec::with_capacity(MAX_PACKET);
    let mut out = Outbound {
        sealed: Vec::with_capacity(MAX_PACKET),
        syn: Vec::new(),
        batch: SendBatch::new(SEND_BATCH, 2048),
        tcp: None,
    };
    out.batch.set_udp_gso(true);
    let mut gso_refused = 0;
    let fd = tun.as_raw_fd();
    set_nonblocking(fd);
    while !path.stop.load(Ordering::Relaxed) {
        if !wait_readable(fd) {
            continue;
        }
        let peers = path.peers.load();
        let now_ms = path.clock.now_ms();
        loop {
            let read = match tun.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let Some(frame) = buffer.get(..read) else {
                continue;
            };
            if !tun.vnet_hdr() {
                out.route(path, &peers, now_ms, frame);
                continue;
            }
            let split = offload::split(frame, &mut scratch, |packet| {
                out.route(path, &peers, now_ms, packet)
            });
            if split.is_err() {
                bump(&path.counters.tx.tx_errors);
            }
        }
        out.flush(path);
        let refused = out.batch.stats().gso_refused;
        if refused != gso_refused {
            gso_refused = refused;
            tracing::debug!(tunnel = %path.name, refused, gso = out.batch.udp_gso(), error = ?out.batch.last_error(), "the kernel refused UDP GSO sends");
        }
    }
}

/// The tun→wire thread's buffers between reading a packet and sending it.
struct Outbound {
    sealed: Vec<u8>,
    /// A copy of a TCP SYN whose MSS option is being clamped.
    syn: Vec<u8>,
    batch: SendBatch,
    /// Framed packets gathered for one TCP peer.
    tcp: Option<(Arc<Peer>, Vec<u8>)>,
}

impl Outbound {
    /// Seals one IP packet for its peer and queues it, flushing what is full.
    fn route(&mut self, path: &DataPath, peers: &Peers, now_ms: u64, packet: &[u8]) {
        let Some(peer) = peers.destination(packet) else {
            bump(&path.counters.tx.tx_no_route);
            return;
        };
        let packet = if offload::is_tcp_syn(packet) {
            let Some(key) = peer.send_key(now_ms) else {
                bump(&path.counters.tx.tx_no_key);
                return;
            };
            let inner_ipv6 = packet.first().is_some_and(|b| b >> 4 == 6);
            let mss = offload::mss_for(MSSFIX_OUTER, outer_ipv6(peer), inner_ipv6, key.overhead());
            self.syn.clear();
            self.syn.extend_from_slice(packet);
            offload::clamp_mss(&mut self.syn, mss);
            &self.syn[..]
        } else {
            packet
        };
        if !path.seal_for(peer, packet, &mut self.sealed, now_ms) {
            return;
        }
        peer.mark_sent(now_ms);
        match &peer.wire {
            PeerWire::Udp => {
                if self.batch.is_full() {
                    self.flush_udp(path);
                }
                if self.batch.push(&self.sealed, peer.address).is_err() {
                    // Longer than a slot: cannot happen below the tun MTU, but never lose it.
                    path.send_raw(&PeerWire::Udp, peer.address, &self.sealed);
                }
            }
            PeerWire::Tcp(_) => {
                if self
                    .tcp
                    .as_ref()
                    .is_some_and(|(pending, _)| !Arc::ptr_eq(pending, peer))
                {
                    self.flush_tcp(path);
                }
                let (_, frames) = self.tcp.get_or_insert_with(|| (peer.clone(), Vec::new()));
                if encode_frame(&self.sealed, frames).is_err() {
                    bump(&path.counters.tx.tx_errors);
                }
                if frames.len() >= TCP_CHUNK {
                    self.flush_tcp(path);
                }
            }
        }
    }

    fn flush(&mut self, path: &DataPath) {
        self.flush_udp(path);
        self.flush_tcp(path);
    }

    /// Sends what the batch holds; drops are counted as send errors.
    fn flush_udp(&mut self, path: &DataPath) {
        if self.batch.is_empty() {
            return;
        }
        let Some(socket) = path.udp.as_ref() else {
            self.batch.clear();
            return;
        };
        let queued = self.batch.len();
        match self.batch.flush(socket.as_ref()) {
            Ok(sent) => add(
                &path.counters.tx.tx_errors,
                queued.saturating_sub(sent) as u64,
            ),
            Err(error) => {
                add(&path.counters.tx.tx_errors, queued as u64);
                tracing::debug!(tunnel = %path.name, %error, "sendmmsg failed");
            }
        }
    }

    fn flush_tcp(&mut self, path: &DataPath) {
        let Some((peer, frames)) = self.tcp.take() else {
            return;
        };
        let PeerWire::Tcp(sender) = &peer.wire else {
            return;
        };
        match sender.send_frames(frames) {
            Ok(()) => {}
            Err(TcpSendError::Full) => bump(&path.counters.tx.tx_queue_full),
            Err(_) => bump(&path.counters.tx.tx_errors),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// wire → tun

/// The wire→tun side's buffers: decrypted packets of one batch, back to back, coalesced into
/// tun frames when the tun takes a virtio-net header.
struct Inbound {
    arena: Vec<u8>,
    payloads: Vec<Range<usize>>,
    frames_out: Vec<u8>,
    frames: Vec<Range<usize>>,
    /// A client-to-client packet re-sealed for its destination client.
    sealed: Vec<u8>,
}

impl Inbound {
    fn new(capacity: usize) -> Self {
        Inbound {
            arena: Vec::with_capacity(capacity),
            payloads: Vec::new(),
            frames_out: Vec::with_capacity(capacity),
            frames: Vec::new(),
            sealed: Vec::with_capacity(MAX_PACKET),
        }
    }

    /// One packet from the wire: data is opened (in the arena) and kept for tun, control goes
    /// to the control task.
    fn packet(
        &mut self,
        path: &DataPath,
        peers: &Peers,
        packet: &[u8],
        from: SocketAddr,
        now: Instant,
    ) {
        match peek_opcode(packet) {
            Ok((opcode, _)) if opcode.is_data() => self.data(path, peers, packet, from, now),
            Ok(_) => path.to_control(ControlInput::Packet {
                bytes: packet.to_vec(),
                from,
            }),
            Err(_) => bump(&path.counters.rx.rx_malformed),
        }
    }

    fn data(
        &mut self,
        path: &DataPath,
        peers: &Peers,
        packet: &[u8],
        from: SocketAddr,
        now: Instant,
    ) {
        let counters = &path.counters.rx;
        let Ok((_, key_id, peer_id)) = peek_data_key(packet) else {
            bump(&counters.rx_malformed);
            return;
        };
        let Some(peer) = peers.sender(peer_id, from) else {
            bump(&counters.rx_unknown_client);
            return;
        };
        let Ok(mut keys) = peer.receive_keys.lock() else {
            return;
        };
        let Some(key) = keys.iter_mut().find(|key| key.key_id() == key_id) else {
            bump(&counters.rx_unknown_key);
            return;
        };
        // Decrypt in place in the arena: the receive batch is read-only here.
        let start = self.arena.len();
        self.arena.extend_from_slice(packet);
        let slot = &mut self.arena[start..];
        let slot_address = slot.as_ptr() as usize;
        let opened = key.open(now, slot);
        if opened.is_ok() {
            let now_ms = path.clock.millis(now);
            peer.mark_received(now_ms);
            peer.promote_pending_key(Some(key_id), now_ms);
        }
        let kept = match opened {
            Ok(Received::Ip(payload)) => {
                if !peers.source_allowed(peer, payload) {
                    bump(&counters.rx_bad_source);
                    None
                } else {
                    bump(&counters.rx_packets);
                    add(&counters.rx_bytes, payload.len() as u64);
                    add(&peer.rx_bytes, payload.len() as u64);
                    let forward = path
                        .client_to_client
                        .then(|| peers.other_client(peer, payload))
                        .flatten();
                    match forward {
                        Some(owner) => {
                            bump(&counters.client_to_client);
                            let now_ms = path.clock.millis(now);
                            if path.seal_for(owner, payload, &mut self.sealed, now_ms) {
                                path.send_to_peer(owner, &self.sealed);
                            }
                            None
                        }
                        // The IP packet lies inside the decrypted slot: keep its range.
                        None => {
                            let offset = start + (payload.as_ptr() as usize - slot_address);
                            Some(offset..offset + payload.len())
                        }
                    }
                }
            }
            Ok(Received::Ping) | Ok(Received::Occ(_)) => None,
            Ok(Received::OccExit) => {
                path.to_control(ControlInput::PeerExited { from });
                None
            }
            Ok(Received::Compressed) => {
                bump(&counters.rx_compressed);
                None
            }
            Err(DataError::Replay) => {
                bump(&counters.rx_replayed);
                None
            }
            Err(DataError::Unauthenticated) => {
                bump(&counters.rx_unauthenticated);
                None
            }
            Err(_) => {
                bump(&counters.rx_malformed);
                None
            }
        };
        match kept {
            Some(range) => self.payloads.push(range),
            None => self.arena.truncate(start),
        }
    }

    /// Writes the kept packets to tun: coalesced into TCP super-segments when the tun takes a
    /// virtio-net header, else one write per packet.
    fn flush(&mut self, tun: &TunQueue) {
        if self.payloads.is_empty() {
            self.arena.clear();
            return;
        }
        let packets: Vec<&[u8]> = self
            .payloads
            .iter()
            .filter_map(|range| self.arena.get(range.clone()))
            .collect();
        if tun.vnet_hdr() {
            self.frames_out.clear();
            self.frames.clear();
            offload::coalesce(&packets, &mut self.frames_out, &mut self.frames);
            for range in self.frames.iter() {
                if let Some(frame) = self.frames_out.get(range.clone()) {
                    let _ = tun.write(frame);
                }
            }
        } else {
            for packet in packets {
                let _ = tun.write(packet);
            }
        }
        self.arena.clear();
        self.payloads.clear();
    }
}

/// wire → open → tun for UDP, a recvmmsg batch at a time (with UDP GRO one slot holds many
/// datagrams); control packets go to the control task.
pub(crate) fn udp_to_tun(path: &DataPath, tun: &TunQueue) {
    let Some(socket) = path.udp.clone() else {
        return;
    };
    let mut batch = RecvBatch::new(RECV_BATCH, RECV_SLOT);
    if let Err(error) = batch.enable_udp_gro(socket.as_ref()) {
        tracing::debug!(tunnel = %path.name, %error, "no UDP GRO: one datagram per receive slot");
    }
    let mut inbound = Inbound::new(RECV_BATCH * RECV_SLOT);
    while !path.stop.load(Ordering::Relaxed) {
        // One poll and one recvmmsg per wake-up: a busy link keeps the socket readable, so the
        // poll returns at once and each recvmmsg takes a whole batch.
        match batch.recv(socket.as_ref(), Some(POLL_INTERVAL)) {
            Ok(0) => continue,
            Ok(_) => {}
            // WouldBlock, EINTR, or an ICMP error from a vanished peer: keep reading.
            Err(error) => {
                tracing::trace!(tunnel = %path.name, %error, "recvmmsg");
                continue;
            }
        }
        let peers = path.peers.load();
        let now = Instant::now();
        for (packet, from) in batch.iter() {
            inbound.packet(path, &peers, packet, from, now);
        }
        inbound.flush(tun);
    }
}

// ---------------------------------------------------------------------------------------------
// TCP

/// Reads one TCP connection's frames until it ends or the tunnel stops.
fn tcp_to_tun(path: &DataPath, mut stream: TcpStream, from: SocketAddr, tun: &TunQueue) {
    use std::io::Read as _;
    let _ = stream.set_read_timeout(Some(POLL_INTERVAL));
    let mut decoder = FrameDecoder::new(std::num::NonZeroU16::MAX);
    let mut chunk = vec![0u8; MAX_PACKET];
    let mut inbound = Inbound::new(2 * MAX_PACKET);
    while !path.stop.load(Ordering::Relaxed) {
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
        let peers = path.peers.load();
        let now = Instant::now();
        let mut offset = 0;
        while offset < read {
            offset += decoder.push(chunk.get(offset..read).unwrap_or_default());
            while let Some(frame) = decoder.next_frame() {
                let Ok(frame) = frame else {
                    bump(&path.counters.rx.rx_malformed);
                    return;
                };
                inbound.packet(path, &peers, frame, from, now);
            }
            inbound.flush(tun);
        }
    }
}

/// Announces a new connection to the control task and starts its writer; the reader runs on
/// the calling thread until the connection ends.
fn serve_connection(path: &DataPath, stream: TcpStream, peer: SocketAddr, tun: &TunQueue) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_nonblocking(false);
    let (reader, writer) = match stream.try_clone() {
        Ok(reader) => (reader, stream),
        Err(_) => return,
    };
    let sender = match TcpSender::start(writer, format!("{}-w", path.name), TCP_WRITE_TIMEOUT) {
        Ok(sender) => sender,
        Err(error) => {
            tracing::warn!(tunnel = %path.name, %peer, error = %format!("{error:#}"), "cannot start a TCP writer");
            return;
        }
    };
    path.to_control(ControlInput::TcpConnected {
        peer,
        sender: sender.clone(),
    });
    tcp_to_tun(path, reader, peer, tun);
    sender.close();
    path.to_control(ControlInput::TcpClosed { peer });
}

/// Accepts TCP peers; each connection gets its own reader thread (detached: it ends when the
/// connection closes or the tunnel stops).
pub(crate) fn tcp_accept(path: &Arc<DataPath>, listener: TcpListener, tun: &Arc<TunQueue>) {
    let _ = listener.set_nonblocking(true);
    while !path.stop.load(Ordering::Relaxed) {
        if !wait_readable(listener.as_raw_fd()) {
            continue;
        }
        let Ok((stream, peer)) = listener.accept() else {
            continue;
        };
        let (path, tun) = (path.clone(), tun.clone());
        let name = format!("{}-c", path.name);
        let spawned = spawn_named(name, move || serve_connection(&path, stream, peer, &tun));
        if spawned.is_err() {
            tracing::warn!(%peer, "cannot start a reader thread for a TCP peer");
        }
    }
}

/// A TLS client over TCP: dials the remotes in turn, serves each connection until it ends, and
/// dials again after [`RECONNECT_DELAY`].
pub(crate) fn tcp_dial(path: &DataPath, remotes: &[SocketAddr], tun: &TunQueue) {
    for &remote in remotes.iter().cycle() {
        if path.stop.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(stream) = TcpStream::connect_timeout(&remote, Duration::from_secs(5)) {
            serve_connection(path, stream, remote, tun);
        }
        // Sleep in poll-sized steps so a stop is noticed.
        let until = Instant::now() + RECONNECT_DELAY;
        while Instant::now() < until && !path.stop.load(Ordering::Relaxed) {
            std::thread::sleep(POLL_INTERVAL.min(until.saturating_duration_since(Instant::now())));
        }
    }
}

#[cfg(test)]
mod tests {
    //! The shared data path with real keys and loopback UDP sockets (no tun, no root): a
    //! server's table of two clients, as the wire→tun and tun→wire sides see it.
    use std::net::Ipv4Addr;

    use super::*;
    use crate::proto::data::{CompressionFraming, DataFormat, ReceiveKey, ReplayConfig, SendKey};
    use crate::proto::packet::KeyId;
    use crate::proto::prf::{KeyBlock, KEY_BLOCK_BYTES};
    use crate::proto::server::RouteTable as ClientRoutes;
    use crate::proto::vocabulary::{Cipher, TlsRole};

    /// One client's keys: what the client seals with and what the server opens with, and the
    /// reverse direction.
    struct ClientKeys {
        client_send: SendKey,
        client_receive: ReceiveKey,
        server_send: Arc<SendKey>,
        server_receive: ReceiveKey,
    }

    fn client_keys(seed: u8, peer_id: u32) -> ClientKeys {
        let block = KeyBlock::from_bytes([seed; KEY_BLOCK_BYTES]);
        let client = block.data_channel_keys(Cipher::Aes256Gcm, TlsRole::Client);
        let server = block.data_channel_keys(Cipher::Aes256Gcm, TlsRole::Server);
        let key_id = KeyId::new(0).unwrap();
        let framing = CompressionFraming::None;
        let format = DataFormat::V2 { peer_id };
        ClientKeys {
            client_send: SendKey::new(key_id, format, &client.send, framing).unwrap(),
            client_receive: ReceiveKey::new(
                key_id,
                &client.receive,
                framing,
                ReplayConfig::default(),
            )
            .unwrap(),
            server_send: Arc::new(SendKey::new(key_id, format, &server.send, framing).unwrap()),
            server_receive: ReceiveKey::new(
                key_id,
                &server.receive,
                framing,
                ReplayConfig::default(),
            )
            .unwrap(),
        }
    }

    fn ipv4(source: Ipv4Addr, destination: Ipv4Addr) -> Vec<u8> {
        let mut packet = vec![0u8; 28];
        packet[0] = 0x45;
        packet[2..4].copy_from_slice(&28u16.to_be_bytes());
        packet[8] = 64;
        packet[9] = 17;
        packet[12..16].copy_from_slice(&source.octets());
        packet[16..20].copy_from_slice(&destination.octets());
        packet
    }

    fn loopback() -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        socket
    }

    struct Server {
        path: DataPath,
        alice: (UdpSocket, ClientKeys),
        bob: (UdpSocket, ClientKeys),
        _control: mpsc::Receiver<ControlInput>,
    }

    /// A server at 10.8.0.1 with alice (10.8.0.2, iroute 192.168.50.0/24) and bob (10.8.0.3),
    /// both established.
    fn server(client_to_client: bool) -> Server {
        let (control, control_rx) = mpsc::channel(16);
        let socket = Arc::new(loopback());
        let path = DataPath::new("test", Some(socket), client_to_client, control);
        let alice = (loopback(), client_keys(1, 1));
        let bob = (loopback(), client_keys(2, 2));
        let mut peers = Vec::new();
        for (peer_id, (socket, keys)) in [(1, &alice), (2, &bob)] {
            let peer = Peer::new(peer_id, socket.local_addr().unwrap(), PeerWire::Udp, 0);
            peer.activate_send_key(keys.server_send.clone(), 0);
            let receive = client_keys(peer_id as u8, peer_id).server_receive;
            peer.install_receive_key(receive);
            peers.push(Arc::new(peer));
        }
        let alice_lan: ipnet::Ipv4Net = "192.168.50.0/24".parse().unwrap();
        let routes = ClientRoutes::build([
            (
                Ipv4Addr::new(10, 8, 0, 2),
                std::slice::from_ref(&alice_lan),
                1,
            ),
            (Ipv4Addr::new(10, 8, 0, 3), &[][..], 2),
        ]);
        path.peers.store(Arc::new(Peers::clients(peers, routes)));
        Server {
            path,
            alice,
            bob,
            _control: control_rx,
        }
    }

    fn counter(path: &DataPath, name: &str) -> u64 {
        path.counters.snapshot()[name]
    }

    #[test]
    fn a_client_may_send_only_from_its_own_addresses() {
        let server = server(false);
        let peers = server.path.peers.load();
        let mut inbound = Inbound::new(4096);
        let from = server.alice.0.local_addr().unwrap();
        let now = Instant::now();
        for source in [
            Ipv4Addr::new(10, 8, 0, 2),
            Ipv4Addr::new(192, 168, 50, 9),
            Ipv4Addr::new(10, 8, 0, 3),
        ] {
            let mut sealed = Vec::new();
            let packet = ipv4(source, Ipv4Addr::new(10, 1, 0, 1));
            server
                .alice
                .1
                .client_send
                .seal(&packet, &mut sealed)
                .unwrap();
            inbound.packet(&server.path, &peers, &sealed, from, now);
        }
        assert_eq!(inbound.payloads.len(), 2, "its address and its iroute");
        assert_eq!(counter(&server.path, "rx_packets"), 2);
        assert_eq!(counter(&server.path, "rx_bad_source"), 1, "bob's address");
        // A packet under alice's peer id from another address is no client's.
        let mut sealed = Vec::new();
        let packet = ipv4(Ipv4Addr::new(10, 8, 0, 2), Ipv4Addr::new(10, 1, 0, 1));
        server
            .alice
            .1
            .client_send
            .seal(&packet, &mut sealed)
            .unwrap();
        inbound.packet(
            &server.path,
            &peers,
            &sealed,
            server.bob.0.local_addr().unwrap(),
            now,
        );
        assert_eq!(counter(&server.path, "rx_unknown_client"), 1);
        // Garbage is counted and dropped.
        inbound.packet(&server.path, &peers, &[0x48, 0, 0], from, now);
        assert_eq!(counter(&server.path, "rx_malformed"), 1);
    }

    #[test]
    fn client_to_client_packets_are_resealed_for_the_owner() {
        let mut server = server(true);
        let peers = server.path.peers.load();
        let mut inbound = Inbound::new(4096);
        let packet = ipv4(Ipv4Addr::new(10, 8, 0, 3), Ipv4Addr::new(192, 168, 50, 7));
        let mut sealed = Vec::new();
        server.bob.1.client_send.seal(&packet, &mut sealed).unwrap();
        inbound.packet(
            &server.path,
            &peers,
            &sealed,
            server.bob.0.local_addr().unwrap(),
            Instant::now(),
        );
        assert!(inbound.payloads.is_empty(), "nothing for the server's tun");
        assert_eq!(counter(&server.path, "client_to_client"), 1);
        let mut received = vec![0u8; 2048];
        let len = server
            .alice
            .0
            .recv(&mut received)
            .expect("alice gets bob's packet");
        let opened = server
            .alice
            .1
            .client_receive
            .open(Instant::now(), &mut received[..len]);
        assert!(matches!(opened, Ok(Received::Ip(inner)) if inner == packet.as_slice()));
    }

    #[test]
    fn tun_packets_go_to_the_client_owning_the_destination() {
        let mut server = server(false);
        let peers = server.path.peers.load();
        let mut out = Outbound {
            sealed: Vec::new(),
            syn: Vec::new(),
            batch: SendBatch::new(SEND_BATCH, 2048),
            tcp: None,
        };
        let to_bob = ipv4(Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(10, 8, 0, 3));
        let to_alice_lan = ipv4(Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(192, 168, 50, 1));
        let to_nobody = ipv4(Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(10, 8, 0, 99));
        for packet in [&to_bob, &to_alice_lan, &to_nobody] {
            out.route(&server.path, &peers, 0, packet);
        }
        out.flush(&server.path);
        assert_eq!(counter(&server.path, "tx_packets"), 2);
        assert_eq!(counter(&server.path, "tx_no_route"), 1);
        for (socket, keys, expected) in [
            (&server.bob.0, &mut server.bob.1, &to_bob),
            (&server.alice.0, &mut server.alice.1, &to_alice_lan),
        ] {
            let mut received = vec![0u8; 2048];
            let len = socket.recv(&mut received).expect("a sealed packet");
            let opened = keys
                .client_receive
                .open(Instant::now(), &mut received[..len]);
            assert!(matches!(opened, Ok(Received::Ip(inner)) if inner == expected.as_slice()));
        }
    }
}
