//! XDP on the WAN NIC: classifies every frame and counts it. Tunnel-port traffic is recognised
//! here so that admission (drop unknown sources before the stack sees them) can be added in place.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use vpn_common::wan::{TunnelPortKey, WanCounter, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    maps::{count_wan, TUNNEL_PORTS},
    packet::{read, read_be16, ETH_HDR_LEN, ETH_P_IP, ETH_P_IPV6, IPV6_HDR_LEN},
};

#[xdp]
pub fn xdp_wan(ctx: XdpContext) -> u32 {
    count_wan(classify(&ctx));
    xdp_action::XDP_PASS
}

#[inline(always)]
fn classify(ctx: &XdpContext) -> WanCounter {
    let (start, end) = (ctx.data(), ctx.data_end());
    let Some(ethertype) = read_be16(start, end, 12) else {
        return WanCounter::Malformed;
    };
    let (protocol, l4_offset) = match ethertype {
        ETH_P_IP => {
            let Some(version_ihl) = read::<u8>(start, end, ETH_HDR_LEN) else {
                return WanCounter::Malformed;
            };
            let ihl = (version_ihl & 0x0f) as usize;
            if version_ihl >> 4 != 4 || ihl < 5 {
                return WanCounter::Malformed;
            }
            let (Some(protocol), Some(frag)) = (
                read::<u8>(start, end, ETH_HDR_LEN + 9),
                read_be16(start, end, ETH_HDR_LEN + 6),
            ) else {
                return WanCounter::Malformed;
            };
            if frag & 0x1fff != 0 {
                // A non-first fragment carries no transport header to look at.
                return WanCounter::OtherIp;
            }
            (protocol, ETH_HDR_LEN + ihl * 4)
        }
        ETH_P_IPV6 => {
            let Some(next_header) = read::<u8>(start, end, ETH_HDR_LEN + 6) else {
                return WanCounter::Malformed;
            };
            (next_header, ETH_HDR_LEN + IPV6_HDR_LEN)
        }
        _ => return WanCounter::NonIp,
    };
    if protocol != IPPROTO_UDP && protocol != IPPROTO_TCP {
        return WanCounter::OtherIp;
    }
    let Some(dst_port) = read_be16(start, end, l4_offset + 2) else {
        return WanCounter::Malformed;
    };
    let key = TunnelPortKey::new(protocol, dst_port);
    // SAFETY: the value is only tested for presence, never held across a map update.
    if unsafe { TUNNEL_PORTS.get(key) }.is_some() {
        WanCounter::TunnelPacket
    } else {
        WanCounter::OtherIp
    }
}
