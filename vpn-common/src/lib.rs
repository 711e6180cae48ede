//! The ABI between `vpn-ebpf` and `vpn-daemon`: map names, keys, values and counter indices.
//!
//! Every type here is `#[repr(C)]` with explicit padding and a size assertion, because the kernel
//! copies these bytes verbatim between the two sides.
//!
//! Addresses in map keys are always 16 bytes: IPv6 as is, IPv4 as an IPv4-mapped IPv6 address
//! (`::ffff:a.b.c.d`), so one map serves both families and an IPv4 prefix of length `n` is an
//! LPM prefix of length `96 + n`.
#![no_std]

pub mod leak;
pub mod steer;
pub mod tun;
pub mod wan;

/// Name of the sub-directory of `/sys/fs/bpf` (one per node) under which the daemon pins maps.
pub const BPF_FS_ROOT: &str = "/sys/fs/bpf";

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// A 16-byte map address: IPv6, or IPv4 mapped into IPv6.
pub type Addr16 = [u8; 16];

/// Bits an IPv4 prefix length gains when mapped into IPv6 (`::ffff:0:0/96`).
pub const IPV4_MAPPED_PREFIX_BITS: u32 = 96;

/// `::ffff:a.b.c.d` for the IPv4 address `octets`.
#[inline(always)]
pub const fn ipv4_mapped(octets: [u8; 4]) -> Addr16 {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

/// LPM-trie key data for a plain address-prefix trie (steering routes, protected prefixes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrefixKey {
    pub addr: Addr16,
}
const _: () = assert!(core::mem::size_of::<PrefixKey>() == 16);

/// One `u64` counter per reason, per CPU: every program's counter maps have this value type.
pub type Counter = u64;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], a byte array only: every bit pattern is valid.
    unsafe impl aya::Pod for super::PrefixKey {}
}

#[cfg(feature = "user")]
pub mod user {
    //! Userspace helpers: turning `std::net` addresses and `ipnet` prefixes into map keys.
    extern crate std;
    use std::net::IpAddr;

    use super::{ipv4_mapped, Addr16, IPV4_MAPPED_PREFIX_BITS};

    /// The 16-byte map form of `addr`.
    pub fn addr16(addr: IpAddr) -> Addr16 {
        match addr {
            IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
            IpAddr::V6(v6) => v6.octets(),
        }
    }

    /// The LPM prefix length in the 16-byte address space for `prefix_len` bits of `addr`'s family.
    pub fn prefix_bits(addr: IpAddr, prefix_len: u8) -> u32 {
        match addr {
            IpAddr::V4(_) => IPV4_MAPPED_PREFIX_BITS + u32::from(prefix_len),
            IpAddr::V6(_) => u32::from(prefix_len),
        }
    }
}
