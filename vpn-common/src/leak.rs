//! The TC egress program on the WAN NIC: the leak guard.
//!
//! A packet leaving the WAN whose destination lies in a protected prefix (a remote site that must
//! only be reached through a tunnel) is dropped: when the tunnel is down, the kernel would route
//! it in the clear via the default route. Destinations in the WAN peer map (our tunnels' outer
//! endpoints) are exempt, so a peer whose public address happens to lie in a protected prefix
//! still gets its encrypted packets.

/// Program name of the TC egress entry point on the WAN NIC.
pub const TC_LEAK_PROGRAM: &str = "tc_wan_egress";
/// LPM trie `Key<PrefixKey>` -> `u8` (1): protected destination prefixes.
pub const PROTECTED_MAP: &str = "PROTECTED";
/// Per-CPU array of `u64` packet counters indexed by [`LeakCounter`].
pub const LEAK_COUNTERS_MAP: &str = "LEAK_COUNTERS";
/// Upper bound of protected prefixes.
pub const MAX_PROTECTED: u32 = 4096;

/// What the leak guard saw. Every packet increments exactly one counter.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeakCounter {
    /// Destination not protected (or a tunnel endpoint): passed.
    Passed = 0,
    /// Destination in a protected prefix: dropped.
    DroppedProtected = 1,
    /// Not IP, or an IP header cut short: passed (nothing to judge).
    Unparsed = 2,
}

impl LeakCounter {
    pub const COUNT: u32 = 3;
    pub const ALL: [LeakCounter; Self::COUNT as usize] =
        [Self::Passed, Self::DroppedProtected, Self::Unparsed];

    /// Stable name used in `vpn-daemon status` and its JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::DroppedProtected => "dropped_protected",
            Self::Unparsed => "unparsed",
        }
    }
}
