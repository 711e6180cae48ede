//! The WAN (physical NIC) XDP program's maps.

/// Program name of the XDP entry point on the WAN NIC.
pub const XDP_WAN_PROGRAM: &str = "xdp_wan";
/// Map of the tunnel ports this node listens on: [`TunnelPortKey`] -> `u8` (1 = present).
pub const TUNNEL_PORTS_MAP: &str = "TUNNEL_PORTS";
/// Per-CPU array of `u64` packet counters indexed by [`WanCounter`].
pub const WAN_COUNTERS_MAP: &str = "WAN_COUNTERS";
/// Upper bound of tunnel ports per node (size of [`TUNNEL_PORTS_MAP`]).
pub const MAX_TUNNEL_PORTS: u32 = 64;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

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

/// What the WAN program saw. Every packet increments exactly one counter.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WanCounter {
    /// UDP or TCP to one of our tunnel ports (IPv4 or IPv6).
    TunnelPacket = 0,
    /// IP traffic that is not for a tunnel port (including non-first fragments).
    OtherIp = 1,
    /// Not IPv4/IPv6 (ARP, LLDP, ...).
    NonIp = 2,
    /// Too short for the headers it claims, or an impossible header length.
    Malformed = 3,
}

impl WanCounter {
    pub const COUNT: u32 = 4;
    pub const ALL: [WanCounter; Self::COUNT as usize] = [
        Self::TunnelPacket,
        Self::OtherIp,
        Self::NonIp,
        Self::Malformed,
    ];

    /// Stable name used in `vpn-daemon status` and its JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Self::TunnelPacket => "tunnel_packets",
            Self::OtherIp => "other_ip",
            Self::NonIp => "non_ip",
            Self::Malformed => "malformed",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], only integer fields, explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for super::TunnelPortKey {}
}
