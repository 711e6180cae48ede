//! Typed link state on one bus.
//!
//! Every tunnel runtime writes its own entry of one [`NodeState`] (a `tokio::sync::watch`
//! channel: consumers see the latest state, never a backlog) and sends edge events (a client
//! connected or left) on one `broadcast` channel. The daemon's planners (the eBPF fast-path plan,
//! the route table) are pure functions of this state; status, metrics and later route sharing
//! read the same values. This module holds data only: no sockets, no clock.
use std::{collections::BTreeMap, fmt, net::SocketAddr};

use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use tokio::sync::{broadcast, watch};

/// Where a link is in its life. The fast path steers onto a link only while it is
/// [`LinkPhase::Established`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkPhase {
    /// A TLS server end (p2p) without a session: it waits for its peer.
    #[default]
    WaitingForPeer,
    /// A multi-client server with no client connected.
    WaitingForClients,
    /// A session is being set up (dialling, TLS, key exchange, or a new session replacing one).
    Connecting,
    /// Data flows: a single-peer tunnel's session has keys, or a server has at least one
    /// client.
    Established,
    /// The tunnel cannot start a session (e.g. its TLS configuration is unusable).
    Failed,
    /// The runtime has ended.
    Stopped,
}

impl LinkPhase {
    /// The words `vpn-daemon status` has always shown (tests and scripts match on them).
    pub fn as_str(self) -> &'static str {
        match self {
            LinkPhase::WaitingForPeer => "waiting for peer",
            LinkPhase::WaitingForClients => "waiting for clients",
            LinkPhase::Connecting => "connecting",
            LinkPhase::Established => "established",
            LinkPhase::Failed => "failed",
            LinkPhase::Stopped => "stopped",
        }
    }
}

impl fmt::Display for LinkPhase {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// How the data keys of a session were derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDerivation {
    TlsEkm,
    Prf,
}

impl KeyDerivation {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyDerivation::TlsEkm => "tls-ekm",
            KeyDerivation::Prf => "prf",
        }
    }
}

/// A client connected to a multi-client server.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// The state of one running tunnel, as its runtime publishes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelState {
    pub phase: LinkPhase,
    /// A single-peer tunnel's peer (outer address), once known.
    pub peer: Option<SocketAddr>,
    pub peer_common_name: Option<String>,
    /// The negotiated data cipher (single-peer tunnels).
    pub cipher: Option<String>,
    pub key_derivation: Option<KeyDerivation>,
    pub keys_negotiated: u64,
    pub last_error: Option<String>,
    /// Routes a client tunnel received in PUSH_REPLY, as pushed (the route planner filters
    /// them).
    pub pushed_routes: Vec<Ipv4Net>,
    /// A server's connected clients, by virtual address.
    pub clients: Vec<ClientInfo>,
    /// A server's sessions still in their handshake.
    pub handshaking: usize,
}

impl TunnelState {
    /// A state in `phase` with nothing else known.
    pub fn new(phase: LinkPhase) -> Self {
        TunnelState {
            phase,
            ..TunnelState::default()
        }
    }

    /// The outer addresses of the tunnel's peers: the one peer of a single-peer tunnel, each
    /// connected client of a server (what XDP admits while the link is established).
    pub fn peer_addresses(&self) -> Vec<std::net::IpAddr> {
        let mut peers: Vec<std::net::IpAddr> = if self.clients.is_empty() {
            self.peer.map(|peer| peer.ip()).into_iter().collect()
        } else {
            self.clients
                .iter()
                .map(|client| client.real_address.ip())
                .collect()
        };
        peers.sort();
        peers.dedup();
        peers
    }
}

/// Every running tunnel's state, by tunnel name.
pub type NodeState = BTreeMap<String, TunnelState>;

/// A client of a server tunnel connected or left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// A client's tunnel is up: its address and iroutes are routed to it.
    Connected(ClientInfo),
    /// A client left (exit, timeout, replaced, refused later, server stopping); its address and
    /// routes are gone.
    Disconnected {
        /// The client as it was connected.
        client: ClientInfo,
        /// Why, in words.
        reason: String,
    },
}

/// An edge event of one tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEvent {
    pub tunnel: String,
    pub event: ClientEvent,
}

/// Capacity of the edge-event stream; a slow subscriber loses the oldest events (and is told
/// how many).
pub const EVENT_CAPACITY: usize = 1024;

/// The daemon's one bus: the node state (watch) and the edge events (broadcast).
#[derive(Clone)]
pub struct Bus {
    state: watch::Sender<NodeState>,
    events: broadcast::Sender<NodeEvent>,
}

impl Default for Bus {
    fn default() -> Self {
        Bus::new()
    }
}

impl Bus {
    pub fn new() -> Self {
        Bus {
            state: watch::Sender::new(NodeState::new()),
            events: broadcast::Sender::new(EVENT_CAPACITY),
        }
    }

    /// A subscription to the node state.
    pub fn watch(&self) -> watch::Receiver<NodeState> {
        self.state.subscribe()
    }

    /// The current node state.
    pub fn state(&self) -> NodeState {
        self.state.borrow().clone()
    }

    /// A subscription to edge events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    /// The sender side of the edge events (the control socket streams them).
    pub fn events(&self) -> &broadcast::Sender<NodeEvent> {
        &self.events
    }

    /// The handle through which the runtime of `tunnel` publishes, starting in `phase`.
    pub fn publisher(&self, tunnel: &str, phase: LinkPhase) -> TunnelPublisher {
        let publisher = TunnelPublisher {
            tunnel: tunnel.to_owned(),
            bus: self.clone(),
        };
        publisher.update(|state| *state = TunnelState::new(phase));
        publisher
    }
}

/// One tunnel's writing end of the bus.
#[derive(Clone)]
pub struct TunnelPublisher {
    tunnel: String,
    bus: Bus,
}

impl TunnelPublisher {
    pub fn tunnel(&self) -> &str {
        &self.tunnel
    }

    /// Changes this tunnel's entry; subscribers are woken only if it changed.
    pub fn update(&self, change: impl FnOnce(&mut TunnelState)) {
        self.bus.state.send_if_modified(|node| {
            let entry = node.entry(self.tunnel.clone()).or_default();
            let before = entry.clone();
            change(entry);
            *entry != before
        });
    }

    /// This tunnel's current entry.
    pub fn current(&self) -> TunnelState {
        self.bus
            .state
            .borrow()
            .get(&self.tunnel)
            .cloned()
            .unwrap_or_default()
    }

    /// Sends an edge event of this tunnel (nobody listening is fine).
    pub fn event(&self, event: ClientEvent) {
        let _ = self.bus.events.send(NodeEvent {
            tunnel: self.tunnel.clone(),
            event,
        });
    }

    /// Removes this tunnel's entry (its runtime is gone).
    pub fn remove(&self) {
        self.bus
            .state
            .send_if_modified(|node| node.remove(&self.tunnel).is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishers_write_their_own_entry_and_wake_only_on_change() {
        let bus = Bus::new();
        let mut watch = bus.watch();
        let a = bus.publisher("a", LinkPhase::Connecting);
        let b = bus.publisher("b", LinkPhase::WaitingForClients);
        assert!(watch.has_changed().unwrap());
        watch.borrow_and_update();
        a.update(|state| state.phase = LinkPhase::Connecting);
        assert!(!watch.has_changed().unwrap(), "no change, no wake-up");
        a.update(|state| state.phase = LinkPhase::Established);
        assert!(watch.has_changed().unwrap());
        let node = watch.borrow_and_update().clone();
        assert_eq!(node["a"].phase, LinkPhase::Established);
        assert_eq!(node["b"].phase, LinkPhase::WaitingForClients);
        b.remove();
        assert!(!bus.state().contains_key("b"));
    }

    #[test]
    fn peer_addresses_are_the_peer_or_the_clients_deduplicated() {
        let mut state = TunnelState::new(LinkPhase::Established);
        state.peer = Some("192.0.2.1:1194".parse().unwrap());
        assert_eq!(
            state.peer_addresses(),
            vec!["192.0.2.1".parse::<std::net::IpAddr>().unwrap()]
        );
        let client = |address: &str| ClientInfo {
            common_name: "c".into(),
            virtual_address: Ipv4Addr::new(10, 8, 0, 2),
            iroutes: Vec::new(),
            real_address: address.parse().unwrap(),
            peer_id: 0,
            connected_since_unix: 0,
        };
        state.clients = vec![
            client("198.51.100.2:1"),
            client("198.51.100.1:2"),
            client("198.51.100.2:3"),
        ];
        assert_eq!(
            state.peer_addresses(),
            vec![
                "198.51.100.1".parse::<std::net::IpAddr>().unwrap(),
                "198.51.100.2".parse().unwrap()
            ]
        );
    }

    #[test]
    fn phases_keep_their_status_words() {
        assert_eq!(LinkPhase::Established.to_string(), "established");
        assert_eq!(LinkPhase::WaitingForPeer.to_string(), "waiting for peer");
        assert_eq!(
            LinkPhase::WaitingForClients.to_string(),
            "waiting for clients"
        );
    }
}
