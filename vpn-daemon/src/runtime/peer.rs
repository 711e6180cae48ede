//! One peer of the data path (the single peer of a p2p or client tunnel, or one client of a
//! server): its data-channel keys and their lifecycle, its transport, its activity for
//! keepalive. And [`Peers`], the immutable table the data-path threads look peers up in,
//! swapped as a whole whenever a peer comes or goes.
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use crate::proto::data::{ReceiveKey, SendKey};
use crate::proto::framing::encode_frame;
use crate::proto::packet::KeyId;
use crate::proto::server::RouteTable as ClientRoutes;
use crate::proto::session::{LinkActivity, SessionEvent};

/// Longest we keep sending with the old key after renegotiating (see [`Peer::activate_send_key`]).
const KEY_SWITCH_GRACE: Duration = Duration::from_secs(3);
/// Bytes a TCP peer may have queued for its writer thread; beyond it packets are dropped and
/// counted (`tx_queue_full`), never waited for.
pub(crate) const TCP_QUEUE_BYTES: usize = 4 << 20;

/// Milliseconds since a fixed anchor, so timestamps fit in an atomic.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    anchor: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock {
            anchor: Instant::now(),
        }
    }

    pub(crate) fn millis(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.anchor).as_millis() as u64
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.millis(Instant::now())
    }

    pub(crate) fn instant(&self, millis: u64) -> Instant {
        self.anchor + Duration::from_millis(millis)
    }
}

/// The sending half of a TCP connection: a bounded queue drained by the connection's writer
/// thread, so neither the control task nor the data path ever blocks on the socket.
#[derive(Clone)]
pub(crate) struct TcpSender {
    queue: std_mpsc::SyncSender<Vec<u8>>,
    queued_bytes: Arc<AtomicUsize>,
    /// Set by the writer when it gives up: queued chunks are never written.
    closed: Arc<AtomicBool>,
    stream: Arc<TcpStream>,
}

/// Why a TCP send did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TcpSendError {
    /// The queue holds [`TCP_QUEUE_BYTES`] already: the peer does not keep up.
    Full,
    /// The connection's writer has ended.
    Closed,
    /// A packet too long for the 16-bit length prefix.
    TooLong,
}

impl TcpSender {
    /// Starts the writer thread of `stream`. A write that cannot finish within `write_timeout`
    /// (a peer that stopped reading) shuts the connection down, which ends its reader too.
    pub(crate) fn start(
        stream: TcpStream,
        name: String,
        write_timeout: Duration,
    ) -> anyhow::Result<TcpSender> {
        use std::io::Write as _;
        stream.set_write_timeout(Some(write_timeout))?;
        let stream = Arc::new(stream);
        // Messages are whole batches of frames; the byte bound is what limits memory.
        let (queue, chunks) = std_mpsc::sync_channel::<Vec<u8>>(1024);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicBool::new(false));
        let (writer, queued, writer_closed) =
            (stream.clone(), queued_bytes.clone(), closed.clone());
        super::spawn_named(name, move || {
            for chunk in chunks {
                queued.fetch_sub(chunk.len(), Ordering::Relaxed);
                if (&*writer).write_all(&chunk).is_err() {
                    writer_closed.store(true, Ordering::Relaxed);
                    let _ = writer.shutdown(std::net::Shutdown::Both);
                    return;
                }
            }
        })?;
        Ok(TcpSender {
            queue,
            queued_bytes,
            closed,
            stream,
        })
    }

    /// Queues one packet with its length prefix.
    pub(crate) fn send_packet(&self, packet: &[u8]) -> Result<(), TcpSendError> {
        let mut framed = Vec::with_capacity(packet.len() + 2);
        encode_frame(packet, &mut framed).map_err(|_| TcpSendError::TooLong)?;
        self.send_frames(framed)
    }

    /// Queues already framed bytes (several packets back to back).
    pub(crate) fn send_frames(&self, frames: Vec<u8>) -> Result<(), TcpSendError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(TcpSendError::Closed);
        }
        let len = frames.len();
        if self.queued_bytes.fetch_add(len, Ordering::Relaxed) + len > TCP_QUEUE_BYTES {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            return Err(TcpSendError::Full);
        }
        self.queue.try_send(frames).map_err(|error| {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            match error {
                std_mpsc::TrySendError::Full(_) => TcpSendError::Full,
                std_mpsc::TrySendError::Disconnected(_) => TcpSendError::Closed,
            }
        })
    }

    /// Closes the connection (both directions); its reader and writer threads end.
    pub(crate) fn close(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// How packets reach a peer.
#[derive(Clone)]
pub(crate) enum PeerWire {
    /// The tunnel's UDP socket, to the peer's address.
    Udp,
    /// The peer's TCP connection.
    Tcp(TcpSender),
}

/// What the data path knows about one peer.
pub(crate) struct Peer {
    /// The DATA_V2 peer id (a server's client), 0 for a single peer.
    pub(crate) peer_id: u32,
    pub(crate) address: SocketAddr,
    pub(crate) wire: PeerWire,
    send_key: ArcSwapOption<SendKey>,
    /// A renegotiated key the session has activated, not yet sent with: we switch once the peer
    /// sends on it (so it surely can decrypt it) or at `pending_deadline_ms`, whichever is
    /// first. A 2.6 peer enables a new key only once it saw our ack of its key-method message;
    /// if that ack is lost, switching at once would blackhole our traffic until its 2 s
    /// retransmit.
    pending_send_key: ArcSwapOption<SendKey>,
    pending_deadline_ms: AtomicU64,
    /// Taken by the one thread receiving from this peer, once per packet batch.
    pub(crate) receive_keys: Mutex<Vec<ReceiveKey>>,
    last_received_ms: AtomicU64,
    last_sent_ms: AtomicU64,
    pub(crate) rx_bytes: AtomicU64,
    pub(crate) tx_bytes: AtomicU64,
}

impl Peer {
    pub(crate) fn new(peer_id: u32, address: SocketAddr, wire: PeerWire, now_ms: u64) -> Self {
        Peer {
            peer_id,
            address,
            wire,
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

    /// The key to seal with now: the pending renegotiated key once its grace period is over.
    pub(crate) fn send_key(&self, now_ms: u64) -> Option<Arc<SendKey>> {
        self.promote_pending_key(None, now_ms);
        self.send_key.load_full()
    }

    /// Starts sending with the pending renegotiated key once the peer used it (`used` is the
    /// key id a packet just authenticated under) or its grace period is over (`used` None).
    pub(crate) fn promote_pending_key(&self, used: Option<KeyId>, now_ms: u64) {
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

    /// The session activated `key`: the first key is used at once, a renegotiated one after
    /// the peer used it or [`KEY_SWITCH_GRACE`].
    pub(crate) fn activate_send_key(&self, key: Arc<SendKey>, now_ms: u64) {
        if self.send_key.load().is_none() {
            self.send_key.store(Some(key));
        } else {
            let deadline = now_ms + KEY_SWITCH_GRACE.as_millis() as u64;
            self.pending_deadline_ms.store(deadline, Ordering::Relaxed);
            self.pending_send_key.store(Some(key));
        }
    }

    pub(crate) fn install_receive_key(&self, key: ReceiveKey) {
        if let Ok(mut keys) = self.receive_keys.lock() {
            keys.retain(|existing| existing.key_id() != key.key_id());
            keys.push(key);
        }
    }

    pub(crate) fn retire_receive_key(&self, key_id: KeyId) {
        if let Ok(mut keys) = self.receive_keys.lock() {
            keys.retain(|existing| existing.key_id() != key_id);
        }
    }

    /// Forgets every key (the session ended).
    pub(crate) fn clear_keys(&self) {
        self.send_key.store(None);
        self.pending_send_key.store(None);
        if let Ok(mut keys) = self.receive_keys.lock() {
            keys.clear();
        }
    }

    /// Applies a session's key events to this peer; other events are handed back.
    /// `SendPing` needs the transport: the caller's [`super::datapath::DataPath::send_ping`].
    pub(crate) fn apply_key_event(&self, event: SessionEvent, now_ms: u64) -> Option<SessionEvent> {
        match event {
            SessionEvent::InstallReceiveKey(key) => self.install_receive_key(*key),
            SessionEvent::ActivateSendKey(key) => self.activate_send_key(key, now_ms),
            SessionEvent::RetireReceiveKey(key_id) => self.retire_receive_key(key_id),
            other => return Some(other),
        }
        None
    }

    pub(crate) fn mark_received(&self, now_ms: u64) {
        self.last_received_ms.store(now_ms, Ordering::Relaxed);
    }

    pub(crate) fn mark_sent(&self, now_ms: u64) {
        self.last_sent_ms.store(now_ms, Ordering::Relaxed);
    }

    /// When the data path last heard from and sent to this peer, for keepalive.
    pub(crate) fn activity(&self, clock: &Clock) -> LinkActivity {
        LinkActivity {
            last_received: clock.instant(self.last_received_ms.load(Ordering::Relaxed)),
            last_sent: clock.instant(self.last_sent_ms.load(Ordering::Relaxed)),
        }
    }
}

/// The data path's view of its peers; immutable, replaced as a whole on every change.
#[derive(Default)]
pub(crate) struct Peers {
    /// A single-peer tunnel's peer: every tun packet goes to it, every data packet is its.
    only: Option<Arc<Peer>>,
    by_peer_id: HashMap<u32, Arc<Peer>>,
    by_address: HashMap<SocketAddr, Arc<Peer>>,
    /// A server's client addresses and iroutes: where tun packets go, and which inner sources
    /// each client may send from.
    routes: ClientRoutes,
}

impl Peers {
    /// The table of a single-peer tunnel.
    pub(crate) fn single(peer: Option<Arc<Peer>>) -> Self {
        Peers {
            only: peer,
            ..Peers::default()
        }
    }

    /// The table of a server's clients.
    pub(crate) fn clients(clients: Vec<Arc<Peer>>, routes: ClientRoutes) -> Self {
        let mut peers = Peers {
            routes,
            ..Peers::default()
        };
        for client in clients {
            peers.by_address.insert(client.address, client.clone());
            peers.by_peer_id.insert(client.peer_id, client);
        }
        peers
    }

    /// Whose is a data packet with `peer_id` (DATA_V2) from `from`. A server's client must send
    /// from the address it connected from (no float).
    pub(crate) fn sender(&self, peer_id: Option<u32>, from: SocketAddr) -> Option<&Arc<Peer>> {
        if let Some(only) = &self.only {
            return Some(only);
        }
        match peer_id {
            Some(peer_id) => self.by_peer_id.get(&peer_id),
            None => self.by_address.get(&from),
        }
        .filter(|peer| peer.address == from)
    }

    /// Who a tun packet goes to: the single peer, or the client owning its destination.
    pub(crate) fn destination(&self, packet: &[u8]) -> Option<&Arc<Peer>> {
        if let Some(only) = &self.only {
            return Some(only);
        }
        let (_, destination) = ipv4_addresses(packet)?;
        self.by_peer_id.get(&self.routes.lookup(destination)?)
    }

    /// A server's check of a decrypted packet from `peer`: its source must be the client's own
    /// (address or iroute); IPv6 inside is not routed by the server. Single peers are policed by
    /// the eBPF program on their tun instead.
    pub(crate) fn source_allowed(&self, peer: &Peer, packet: &[u8]) -> bool {
        if self.only.is_some() {
            return true;
        }
        ipv4_addresses(packet)
            .is_some_and(|(source, _)| self.routes.source_allowed(peer.peer_id, source))
    }

    /// Another client owning the destination of `packet` from `peer` (client-to-client).
    pub(crate) fn other_client(&self, peer: &Peer, packet: &[u8]) -> Option<&Arc<Peer>> {
        if self.only.is_some() {
            return None;
        }
        let (_, destination) = ipv4_addresses(packet)?;
        let owner = self.routes.lookup(destination)?;
        (owner != peer.peer_id)
            .then(|| self.by_peer_id.get(&owner))
            .flatten()
    }
}

/// IPv4 source and destination of a packet, if it is IPv4.
fn ipv4_addresses(packet: &[u8]) -> Option<(std::net::Ipv4Addr, std::net::Ipv4Addr)> {
    if packet.first()? >> 4 != 4 {
        return None;
    }
    let source: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
    let destination: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
    Some((source.into(), destination.into()))
}

/// Whether `peer` is reached over IPv6 (the outer header is longer: MSS clamping).
pub(crate) fn outer_ipv6(peer: &Peer) -> bool {
    matches!(peer.address.ip(), IpAddr::V6(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tcp_peer_that_stops_reading_is_refused_then_disconnected_never_waited_for() {
        use std::io::Read as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dialled = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut stalled_peer, _) = listener.accept().unwrap();
        let sender =
            TcpSender::start(dialled, "test-w".into(), Duration::from_millis(300)).unwrap();
        // The peer reads nothing: once the socket buffers and the queue are full, sends are
        // refused at once; the writer, stuck for longer than its timeout, gives up and closes
        // the connection.
        let chunk = vec![0u8; 64 * 1024];
        let started = Instant::now();
        let (mut refused, mut slowest) = (0, Duration::ZERO);
        loop {
            let before = Instant::now();
            let sent = sender.send_frames(chunk.clone());
            slowest = slowest.max(before.elapsed());
            match sent {
                Ok(()) => {}
                Err(TcpSendError::Full) => refused += 1,
                Err(TcpSendError::Closed) => break,
                Err(error) => panic!("unexpected {error:?}"),
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the writer never gave up on the stalled peer"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(refused > 0, "a full queue refuses");
        assert!(
            slowest < Duration::from_millis(100),
            "sending never waits for the peer (slowest send {slowest:?})"
        );
        // The peer finds the end of the stream after what was written.
        stalled_peer
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut sink = vec![0u8; 1 << 20];
        loop {
            match stalled_peer.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(error) => panic!("the connection was not closed: {error}"),
            }
        }
    }

    fn peer(peer_id: u32, address: &str) -> Arc<Peer> {
        Arc::new(Peer::new(
            peer_id,
            address.parse().unwrap(),
            PeerWire::Udp,
            0,
        ))
    }

    fn ipv4_packet(source: [u8; 4], destination: [u8; 4]) -> Vec<u8> {
        let mut packet = vec![0u8; 20];
        packet[0] = 0x45;
        packet[12..16].copy_from_slice(&source);
        packet[16..20].copy_from_slice(&destination);
        packet
    }

    #[test]
    fn a_single_peer_gets_everything() {
        let only = peer(0, "192.0.2.1:1194");
        let peers = Peers::single(Some(only.clone()));
        let packet = ipv4_packet([10, 1, 0, 1], [10, 2, 0, 1]);
        assert!(Arc::ptr_eq(peers.destination(&packet).unwrap(), &only));
        assert!(Arc::ptr_eq(
            peers
                .sender(None, "198.51.100.9:5".parse().unwrap())
                .unwrap(),
            &only
        ));
        assert!(peers.source_allowed(&only, &[0x60]));
        assert!(peers.other_client(&only, &packet).is_none());
    }

    #[test]
    fn clients_are_found_by_peer_id_from_their_own_address_and_by_route() {
        let alice = peer(1, "198.51.100.1:4000");
        let bob = peer(2, "198.51.100.2:4000");
        let alice_net: ipnet::Ipv4Net = "192.168.50.0/24".parse().unwrap();
        let routes = ClientRoutes::build([
            (
                "10.8.0.2".parse().unwrap(),
                std::slice::from_ref(&alice_net),
                1,
            ),
            ("10.8.0.3".parse().unwrap(), &[][..], 2),
        ]);
        let peers = Peers::clients(vec![alice.clone(), bob.clone()], routes);
        assert!(Arc::ptr_eq(
            peers.sender(Some(1), alice.address).unwrap(),
            &alice
        ));
        assert!(peers.sender(Some(1), bob.address).is_none(), "no float");
        assert!(Arc::ptr_eq(peers.sender(None, bob.address).unwrap(), &bob));
        let to_alice_lan = ipv4_packet([10, 8, 0, 3], [192, 168, 50, 7]);
        assert!(Arc::ptr_eq(
            peers.destination(&to_alice_lan).unwrap(),
            &alice
        ));
        assert!(peers.source_allowed(&bob, &to_alice_lan));
        assert!(!peers.source_allowed(&alice, &to_alice_lan));
        assert!(Arc::ptr_eq(
            peers.other_client(&bob, &to_alice_lan).unwrap(),
            &alice
        ));
        assert!(peers
            .destination(&ipv4_packet([10, 8, 0, 1], [10, 9, 9, 9]))
            .is_none());
    }

    fn send_key(key_id: u8) -> Arc<SendKey> {
        use crate::proto::data::{CompressionFraming, DataFormat};
        use crate::proto::prf::{KeyBlock, KEY_BLOCK_BYTES};
        let keys = KeyBlock::from_bytes([7u8; KEY_BLOCK_BYTES]).data_channel_keys(
            crate::proto::vocabulary::Cipher::Aes256Gcm,
            crate::proto::vocabulary::TlsRole::Client,
        );
        let key_id = KeyId::new(key_id).unwrap();
        Arc::new(
            SendKey::new(key_id, DataFormat::V1, &keys.send, CompressionFraming::None).unwrap(),
        )
    }

    #[test]
    fn a_renegotiated_key_waits_for_use_or_grace() {
        let peer = peer(0, "192.0.2.1:1194");
        assert!(peer.send_key(0).is_none());
        peer.activate_send_key(send_key(0), 0);
        assert_eq!(peer.send_key(0).unwrap().key_id(), KeyId::new(0).unwrap());
        // A renegotiated key: not used until the peer sends on it ...
        peer.activate_send_key(send_key(1), 1_000);
        assert_eq!(
            peer.send_key(1_001).unwrap().key_id(),
            KeyId::new(0).unwrap()
        );
        peer.promote_pending_key(Some(KeyId::new(1).unwrap()), 1_002);
        assert_eq!(
            peer.send_key(1_003).unwrap().key_id(),
            KeyId::new(1).unwrap()
        );
        // ... or until the grace period is over.
        peer.activate_send_key(send_key(2), 2_000);
        assert_eq!(
            peer.send_key(4_999).unwrap().key_id(),
            KeyId::new(1).unwrap()
        );
        assert_eq!(
            peer.send_key(5_000).unwrap().key_id(),
            KeyId::new(2).unwrap()
        );
        peer.clear_keys();
        assert!(peer.send_key(6_000).is_none());
    }
}
