//! TC egress on the WAN NIC: the leak guard. A packet to a protected prefix must never leave the
//! WAN unencrypted; when its tunnel is down the kernel would route it in the clear via the
//! default route, so it is dropped and counted here. Our tunnels' outer endpoints are exempt.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use vpn_common::{leak::LeakCounter, wan::PeerKey, Addr16, PrefixKey};

use crate::{
    log::debug,
    maps::{count, LEAK_COUNTERS, PROTECTED, WAN_PEERS},
    packet::parse_ip,
};

#[classifier]
pub fn tc_wan_egress(ctx: TcContext) -> i32 {
    let (counter, dst) = guard(&ctx);
    count(&LEAK_COUNTERS, counter as u32);
    match counter {
        LeakCounter::DroppedProtected => {
            debug!(
                &ctx,
                "tc_wan_egress: dropped a packet to protected {:i} leaving in the clear", dst
            );
            TC_ACT_SHOT
        }
        _ => TC_ACT_OK,
    }
}

#[inline(always)]
/// The counter this packet bumps, and its destination (zero when not parsed).
fn guard(ctx: &TcContext) -> (LeakCounter, Addr16) {
    let Ok(header) = parse_ip(ctx) else {
        return (LeakCounter::Unparsed, [0; 16]);
    };
    // Every fragment carries the destination, so fragments are judged like whole packets.
    if PROTECTED
        .get(Key::new(128, PrefixKey { addr: header.dst }))
        .is_none()
        || WAN_PEERS.get_ptr(PeerKey { addr: header.dst }).is_some()
    {
        return (LeakCounter::Passed, header.dst);
    }
    (LeakCounter::DroppedProtected, header.dst)
}
