//! TC ingress on every tun device: the inner source of a packet coming out of a tunnel must lie
//! in a prefix that tunnel may send from (LPM trie keyed by tun ifindex + address). Otherwise the
//! packet is dropped and counted, so kernel rp_filter can stay off on tun devices.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use vpn_common::{
    ipv4_mapped,
    tun::{TunCounter, TunPrefixKey, TUN_IFINDEX_BITS},
    Addr16,
};

use crate::{
    log::debug,
    maps::{count, TUN_ALLOWED, TUN_COUNTERS},
    packet::{parse_ip, IpError},
};

/// Full-length match: the ifindex and all 128 address bits.
const EXACT_BITS: u32 = TUN_IFINDEX_BITS + 128;

#[classifier]
pub fn tc_tun_ingress(ctx: TcContext) -> i32 {
    let (counter, src) = police(&ctx);
    count(&TUN_COUNTERS, counter as u32);
    match counter {
        TunCounter::Allowed => TC_ACT_OK,
        TunCounter::DroppedSpoofed => {
            // SAFETY: reading a field of the program's own, valid __sk_buff context.
            let ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
            debug!(
                &ctx,
                "tc_tun: dropped spoofed source {:i} from tun ifindex {}", src, ifindex
            );
            TC_ACT_SHOT
        }
        _ => {
            debug!(
                &ctx,
                "tc_tun: dropped a malformed or non-IP packet (counter {})", counter as u32
            );
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
/// The counter this packet bumps, and its inner source (zero when not parsed).
fn police(ctx: &TcContext) -> (TunCounter, Addr16) {
    let header = match parse_ip(ctx) {
        Ok(header) => header,
        Err(IpError::NonIp) => return (TunCounter::DroppedNonIp, [0; 16]),
        Err(IpError::Malformed) => return (TunCounter::DroppedMalformed, [0; 16]),
    };
    // An IPv6 packet must not borrow an IPv4 allowance through the shared mapped address space.
    if header.ipv6 && header.src[..12] == ipv4_mapped([0; 4])[..12] {
        return (TunCounter::DroppedSpoofed, header.src);
    }
    // SAFETY: reading a field of the program's own, valid __sk_buff context. At TC ingress
    // skb_iif is the device the packet arrived on: the tun.
    let ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    // Every fragment carries the source, so fragments are policed like whole packets.
    let key = Key::new(EXACT_BITS, TunPrefixKey::new(ifindex, header.src));
    if TUN_ALLOWED.get(&key).is_some() {
        (TunCounter::Allowed, header.src)
    } else {
        (TunCounter::DroppedSpoofed, header.src)
    }
}
