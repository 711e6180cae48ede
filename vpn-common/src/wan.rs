//! The WAN (physical NIC) XDP program's maps: tunnel ports, admitted peers, the handshake token
//! bucket and the per-reason counters.
//!
//! Admission rule, per packet to one of our tunnel ports: a source in [`WAN_PEERS_MAP`] (a
//! configured remote or a connected peer) passes; a source that recently sent an admitted first
//! handshake packet ([`WAN_PENDING_MAP`], until its expiry) passes; on a port that accepts new
//! peers ([`PORT_ACCEPTS_NEW_PEERS`]) a first handshake packet passes if the per-CPU token bucket
//! has a token; everything else is dropped. Traffic to other ports is not touched.

use crate::Addr16;
pub use crate::{IPPROTO_TCP, IPPROTO_UDP};

/// Program name of the XDP entry point on the WAN NIC.
pub const XDP_WAN_PROGRAM: &str = "xdp_wan";
/// Map of the tunnel ports this node listens on: [`TunnelPortKey`] -> `u8` port flags.
pub const TUNNEL_PORTS_MAP: &str = "TUNNEL_PORTS";
/// Hash map [`PeerKey`] -> `u8` (1): sources always admitted (configured remotes, connected peers).
pub const WAN_PEERS_MAP: &str = "WAN_PEERS";
/// LRU hash map [`PeerKey`] -> `u64` expiry (`bpf_ktime_get_ns` clock): sources whose first
/// handshake packet was admitted, admitted until the expiry so their handshake can finish.
pub const WAN_PENDING_MAP: &str = "WAN_PENDING";
/// Array of one [`AdmissionConfig`].
pub const ADMISSION_CONFIG_MAP: &str = "ADMISSION_CONFIG";
/// Per-CPU array of one [`HandshakeBucket`].
pub const HANDSHAKE_BUCKET_MAP: &str = "HANDSHAKE_BUCKET";
/// Per-CPU array of `u64` packet counters indexed by [`WanCounter`].
pub const WAN_COUNTERS_MAP: &str = "WAN_COUNTERS";
/// Upper bound of tunnel ports per node (size of [`TUNNEL_PORTS_MAP`]).
pub const MAX_TUNNEL_PORTS: u32 = 64;
/// Upper bound of always-admitted peers (size of [`WAN_PEERS_MAP`]).
pub const MAX_PEERS: u32 = 4096;
/// Size of the LRU map of sources in mid-handshake.
pub const MAX_PENDING: u32 = 4096;

/// Port flag: the port is one of ours (always set for a present key).
pub const PORT_LISTENING: u8 = 1;
/// Port flag: unknown sources may start a handshake here (server role, p2p waiting for any peer).
pub const PORT_ACCEPTS_NEW_PEERS: u8 = 2;

/// OpenVPN opcodes (high 5 bits of the first byte of a UDP payload) that start a new session:
/// `P_CONTROL_HARD_RESET_CLIENT_V2` and `P_CONTROL_HARD_RESET_CLIENT_V3` (openvpn ssl_pkt.h).
pub const OPCODE_HARD_RESET_CLIENT_V2: u8 = 7;
pub const OPCODE_HARD_RESET_CLIENT_V3: u8 = 10;
/// Shortest first handshake packet: opcode/key id (1), session id (8), ack array length (1),
/// message packet id (4); tls-auth and tls-crypt only make it longer.
pub const MIN_HARD_RESET_LEN: usize = 14;

/// A transport port one of our tunnels listens on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TunnelPortKey {
    /// Port in host byte order.
    pub port: u16,
    /// [`IPPROTO_UDP`] or [`IPPROTO_TCP`].
    pub protocol: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<TunnelPortKey>() == 4);

impl TunnelPortKey {
    pub const fn new(protocol: u8, port: u16) -> Self {
        Self {
            port,
            protocol,
            _pad: 0,
        }
    }
}

/// An outer source address (IPv4 mapped into IPv6). Ports are left out on purpose: a peer behind
/// NAT may change its source port (OpenVPN `float`), and the tunnel itself checks the session.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey {
    pub addr: Addr16,
}
const _: () = assert!(core::mem::size_of::<PeerKey>() == 16);

/// Handshake admission parameters, written by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// First-handshake packets per second each CPU admits from unknown sources.
    pub handshakes_per_sec_per_cpu: u32,
    /// Bucket depth per CPU (packets admitted in a burst).
    pub handshake_burst: u32,
    /// How long a source stays admitted after its first handshake packet, in nanoseconds.
    pub pending_ttl_ns: u64,
}
const _: () = assert!(core::mem::size_of::<AdmissionConfig>() == 16);

/// One CPU's token bucket. Credit is kept in token-nanoseconds (one token = 1e9) so refilling
/// needs only a multiplication: `credit += elapsed_ns * rate`, capped at `burst * 1e9`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandshakeBucket {
    pub credit: u64,
    pub last_refill_ns: u64,
}
const _: () = assert!(core::mem::size_of::<HandshakeBucket>() == 16);

/// Token-nanoseconds one admitted packet costs.
pub const TOKEN: u64 = 1_000_000_000;
/// Refill time beyond which the bucket is simply full (keeps `elapsed * rate` from overflowing).
pub const MAX_REFILL_NS: u64 = 10 * TOKEN;
/// Largest accepted rate and burst (with [`MAX_REFILL_NS`] the credit stays below 2^63).
pub const MAX_HANDSHAKE_RATE: u32 = 1_000_000;

/// What the WAN program saw. Every packet increments exactly one counter.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WanCounter {
    /// To a tunnel port from a configured or connected peer: passed.
    TunnelFromPeer = 0,
    /// IP traffic that is not for a tunnel port (including non-first fragments, IPv4 or IPv6):
    /// passed.
    OtherIp = 1,
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed.
    NonIp = 2,
    /// Too short for the headers it claims, or an impossible header length: passed (the stack
    /// drops it, and nothing of ours parses it).
    Malformed = 3,
    /// A first handshake packet from an unknown source, within the rate: passed.
    HandshakeAdmitted = 4,
    /// From a source whose handshake was admitted recently: passed.
    HandshakeInProgress = 5,
    /// A first handshake packet over the rate: dropped.
    DroppedHandshakeRate = 6,
    /// From an unknown source and not a first handshake packet (or on a port that accepts no
    /// new peers): dropped.
    DroppedUnknownSource = 7,
    /// IPv6 with more extension headers than XDP walks (six): dropped, as its transport port
    /// cannot be checked and it could otherwise slip past admission.
    DroppedLongHeaderChain = 8,
}

impl WanCounter {
    pub const COUNT: u32 = 9;
    pub const ALL: [WanCounter; Self::COUNT as usize] = [
        Self::TunnelFromPeer,
        Self::OtherIp,
        Self::NonIp,
        Self::Malformed,
        Self::HandshakeAdmitted,
        Self::HandshakeInProgress,
        Self::DroppedHandshakeRate,
        Self::DroppedUnknownSource,
        Self::DroppedLongHeaderChain,
    ];

    /// Stable name used in `vpn-daemon status` and its JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Self::TunnelFromPeer => "tunnel_from_peer",
            Self::OtherIp => "other_ip",
            Self::NonIp => "non_ip",
            Self::Malformed => "malformed",
            Self::HandshakeAdmitted => "handshake_admitted",
            Self::HandshakeInProgress => "handshake_in_progress",
            Self::DroppedHandshakeRate => "dropped_handshake_rate",
            Self::DroppedUnknownSource => "dropped_unknown_source",
            Self::DroppedLongHeaderChain => "dropped_long_header_chain",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all four): #[repr(C)], only integer fields, explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for super::TunnelPortKey {}
    unsafe impl aya::Pod for super::PeerKey {}
    unsafe impl aya::Pod for super::AdmissionConfig {}
    unsafe impl aya::Pod for super::HandshakeBucket {}
}
