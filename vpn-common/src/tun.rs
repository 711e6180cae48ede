//! The TC ingress program on every tun device: inner source policing ("rp_filter done right").
//!
//! A packet coming out of a tunnel passes only if its inner source lies in a prefix that tunnel
//! may send from: the peer's tunnel address and the subnets routed through it (OpenVPN's iroute
//! rule, WireGuard's AllowedIPs). The LPM trie is keyed by (tun ifindex, address), so one map
//! serves every tunnel and a prefix allowed on one tunnel says nothing about another.

use crate::Addr16;

/// Program name of the TC ingress entry point on tun devices.
pub const TC_TUN_PROGRAM: &str = "tc_tun_ingress";
/// LPM trie `Key<TunPrefixKey>` -> `u8` (1): allowed inner sources per tun.
pub const TUN_ALLOWED_MAP: &str = "TUN_ALLOWED";
/// Per-CPU array of `u64` packet counters indexed by [`TunCounter`].
pub const TUN_COUNTERS_MAP: &str = "TUN_COUNTERS";
/// Upper bound of allowed prefixes over all tunnels.
pub const MAX_TUN_PREFIXES: u32 = 16384;
/// LPM prefix bits taken by the ifindex before the address starts.
pub const TUN_IFINDEX_BITS: u32 = 32;

/// Key data of [`TUN_ALLOWED_MAP`]: the LPM prefix length is `32 + address prefix bits`, so the
/// ifindex always matches exactly.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TunPrefixKey {
    /// The tun device's ifindex, in network byte order (the trie compares bytes from the front;
    /// any fixed order works as long as both sides agree, this one reads well in bpftool).
    pub ifindex_be: u32,
    pub addr: Addr16,
}
const _: () = assert!(core::mem::size_of::<TunPrefixKey>() == 20);

impl TunPrefixKey {
    pub const fn new(ifindex: u32, addr: Addr16) -> Self {
        Self {
            ifindex_be: ifindex.to_be(),
            addr,
        }
    }
}

/// What the tun program saw. Every packet increments exactly one counter.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunCounter {
    /// Inner source allowed for this tunnel: passed.
    Allowed = 0,
    /// Inner source not allowed for this tunnel: dropped.
    DroppedSpoofed = 1,
    /// IP header cut short or a version that contradicts the skb protocol: dropped.
    DroppedMalformed = 2,
    /// Neither IPv4 nor IPv6 (a tun carries nothing else): dropped.
    DroppedNonIp = 3,
}

impl TunCounter {
    pub const COUNT: u32 = 4;
    pub const ALL: [TunCounter; Self::COUNT as usize] = [
        Self::Allowed,
        Self::DroppedSpoofed,
        Self::DroppedMalformed,
        Self::DroppedNonIp,
    ];

    /// Stable name used in `vpn-daemon status` and its JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::DroppedSpoofed => "dropped_spoofed",
            Self::DroppedMalformed => "dropped_malformed",
            Self::DroppedNonIp => "dropped_non_ip",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], integer fields and a byte array, no padding: every bit pattern is valid.
    unsafe impl aya::Pod for super::TunPrefixKey {}
}
