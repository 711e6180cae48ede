//! Bounds-checked reads from packet memory, in the forms the verifier accepts.

use aya_ebpf::{
    bindings::bpf_hdr_start_off::BPF_HDR_START_NET, helpers::bpf_skb_load_bytes_relative,
    programs::TcContext, EbpfContext as _,
};
use vpn_common::{ipv4_mapped, Addr16};

pub const ETH_HDR_LEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const IPV6_HDR_LEN: usize = 40;
pub const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

/// How many IPv6 extension headers are walked to reach the transport header. RFC 8200's
/// recommended order has at most six before it; a longer chain is not something a peer sends.
pub const MAX_IPV6_EXTENSIONS: usize = 6;

/// Where an IPv6 packet's transport header is, after its extension headers.
pub enum Ipv6Transport {
    /// `protocol` starts at `offset`; `fragment` when it is the first fragment of a datagram.
    Found {
        protocol: u8,
        offset: usize,
        fragment: bool,
    },
    /// A fragment after the first: it has no transport header.
    LaterFragment,
    /// An extension header runs past the end of the packet.
    Truncated,
    /// More than [`MAX_IPV6_EXTENSIONS`] extension headers.
    TooLong,
}

/// Walks the extension headers starting with `next_header` at `offset`. `read4` returns the
/// first 4 bytes at an offset (enough for every extension header's next-header and length).
#[inline(always)]
pub fn walk_ipv6_extensions(
    mut next_header: u8,
    mut offset: usize,
    read4: impl Fn(usize) -> Option<[u8; 4]>,
) -> Ipv6Transport {
    let mut fragment = false;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        let length = match next_header {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT => {
                let Some(bytes) = read4(offset) else {
                    return Ipv6Transport::Truncated;
                };
                let length = match next_header {
                    IPPROTO_FRAGMENT => {
                        // The offset in 8-byte units sits above the 3 flag bits.
                        if u16::from_be_bytes([bytes[2], bytes[3]]) >> 3 != 0 {
                            return Ipv6Transport::LaterFragment;
                        }
                        fragment = true;
                        8
                    }
                    IPPROTO_AH => (bytes[1] as usize + 2) * 4,
                    _ => (bytes[1] as usize + 1) * 8,
                };
                next_header = bytes[0];
                length
            }
            _ => {
                return Ipv6Transport::Found {
                    protocol: next_header,
                    offset,
                    fragment,
                }
            }
        };
        offset += length;
    }
    match next_header {
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT => {
            Ipv6Transport::TooLong
        }
        _ => Ipv6Transport::Found {
            protocol: next_header,
            offset,
            fragment,
        },
    }
}

/// Reads a `T` at `offset` from `start` if it lies wholly before `end` (XDP direct access).
#[inline(always)]
pub fn read<T: Copy>(start: usize, end: usize, offset: usize) -> Option<T> {
    let at = start + offset;
    if at + core::mem::size_of::<T>() > end {
        return None;
    }
    // SAFETY: the range [at, at + size_of::<T>()) was checked against the packet end above;
    // read_unaligned because packet headers carry no alignment guarantee.
    Some(unsafe { core::ptr::read_unaligned(at as *const T) })
}

#[inline(always)]
pub fn read_be16(start: usize, end: usize, offset: usize) -> Option<u16> {
    read::<[u8; 2]>(start, end, offset).map(u16::from_be_bytes)
}

/// Reads a `T` at `offset` from the skb's network header. Relative to the network header, the
/// same code works on a tun (no link header), an Ethernet NIC and in BPF_PROG_TEST_RUN (which
/// hands TC programs an Ethernet frame), and the helper also reaches non-linear skb data.
#[inline(always)]
pub fn load_net<T: Copy>(ctx: &TcContext, offset: u32) -> Option<T> {
    let mut value = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: the helper writes exactly size_of::<T>() bytes into `value` or fails; on success
    // every byte is initialised and T is a plain integer/array type.
    unsafe {
        let rc = bpf_skb_load_bytes_relative(
            ctx.as_ptr(),
            offset,
            value.as_mut_ptr() as *mut _,
            core::mem::size_of::<T>() as u32,
            BPF_HDR_START_NET,
        );
        (rc == 0).then(|| value.assume_init())
    }
}

/// The L3 facts the TC programs need.
pub struct IpHeader {
    pub src: Addr16,
    pub dst: Addr16,
    pub protocol: u8,
    /// Offset of the transport header from the network header.
    pub l4_offset: u32,
    /// The ports must not be used: a fragment of any kind (later fragments of the datagram have
    /// none, and all must hash alike), or an IPv6 header chain too long or cut short to walk.
    pub fragment: bool,
    pub ipv6: bool,
}

/// Why an IP header could not be read.
pub enum IpError {
    NonIp,
    Malformed,
}

/// Parses the IPv4 or IPv6 header at the skb's network header, by `skb->protocol`.
#[inline(always)]
pub fn parse_ip(ctx: &TcContext) -> Result<IpHeader, IpError> {
    let protocol = u16::from_be(ctx.skb.protocol() as u16);
    match protocol {
        ETH_P_IP => {
            let first: [u8; 20] = load_net(ctx, 0).ok_or(IpError::Malformed)?;
            let ihl = (first[0] & 0x0f) as u32;
            if first[0] >> 4 != 4 || ihl < 5 {
                return Err(IpError::Malformed);
            }
            let frag = u16::from_be_bytes([first[6], first[7]]);
            Ok(IpHeader {
                src: ipv4_mapped([first[12], first[13], first[14], first[15]]),
                dst: ipv4_mapped([first[16], first[17], first[18], first[19]]),
                protocol: first[9],
                l4_offset: ihl * 4,
                // MF set or a non-zero offset.
                fragment: frag & 0x3fff != 0,
                ipv6: false,
            })
        }
        ETH_P_IPV6 => {
            let first: [u8; 40] = load_net(ctx, 0).ok_or(IpError::Malformed)?;
            if first[0] >> 4 != 6 {
                return Err(IpError::Malformed);
            }
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&first[8..24]);
            dst.copy_from_slice(&first[24..40]);
            let (protocol, l4_offset, fragment) =
                match walk_ipv6_extensions(first[6], IPV6_HDR_LEN, |offset| {
                    load_net::<[u8; 4]>(ctx, offset as u32)
                }) {
                    Ipv6Transport::Found {
                        protocol,
                        offset,
                        fragment: false,
                    } => (protocol, offset as u32, false),
                    // Only the first fragment names the transport protocol; all of them are
                    // labelled alike so that a datagram's fragments hash (and travel) together.
                    Ipv6Transport::Found { fragment: true, .. } | Ipv6Transport::LaterFragment => {
                        (IPPROTO_FRAGMENT, IPV6_HDR_LEN as u32, true)
                    }
                    // The addresses are all the TC programs must have; a chain that cannot be
                    // walked is judged, and hashed, by them alone.
                    Ipv6Transport::Truncated | Ipv6Transport::TooLong => {
                        (first[6], IPV6_HDR_LEN as u32, true)
                    }
                };
            Ok(IpHeader {
                src,
                dst,
                protocol,
                l4_offset,
                fragment,
                ipv6: true,
            })
        }
        _ => Err(IpError::NonIp),
    }
}
