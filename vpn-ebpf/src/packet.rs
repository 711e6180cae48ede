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
    /// A fragment of any kind (its ports, if any, are not used).
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
            Ok(IpHeader {
                src,
                dst,
                protocol: first[6],
                l4_offset: IPV6_HDR_LEN as u32,
                fragment: first[6] == IPPROTO_FRAGMENT,
                ipv6: true,
            })
        }
        _ => Err(IpError::NonIp),
    }
}
