//! TC ingress on the LAN NIC: per-flow steering. Destination prefix -> link group (LPM trie),
//! then the group's live link with the highest rendezvous score for the 5-tuple
//! (`vpn_common::steer::choose_link`), and `bpf_redirect` into that link's tun device.
//!
//! Only forwarded LAN traffic is steered here. Traffic the appliance originates itself never
//! crosses LAN ingress; it follows the kernel route the tunnels install (the last started link of
//! a group), which is fine for its volume (pings, management) and keeps it visible to the
//! ordinary routing table.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_redirect,
    macros::classifier,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use vpn_common::{
    steer::{choose_link, flow_hash, FlowKey, SteerCounter, MAX_LINKS},
    PrefixKey, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    maps::{count, LINK_GROUPS, LINK_PACKETS, STEER_COUNTERS, STEER_ROUTES},
    packet::{load_net, parse_ip},
};

#[classifier]
pub fn tc_lan_ingress(ctx: TcContext) -> i32 {
    let (counter, verdict) = steer(&ctx);
    count(&STEER_COUNTERS, counter as u32);
    verdict
}

#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]]),
        u32::from_be_bytes([addr[4], addr[5], addr[6], addr[7]]),
        u32::from_be_bytes([addr[8], addr[9], addr[10], addr[11]]),
        u32::from_be_bytes([addr[12], addr[13], addr[14], addr[15]]),
    ]
}

#[inline(always)]
fn steer(ctx: &TcContext) -> (SteerCounter, i32) {
    let Ok(header) = parse_ip(ctx) else {
        return (SteerCounter::Unparsed, TC_ACT_OK);
    };
    let Some(&group_id) = STEER_ROUTES.get(Key::new(128, PrefixKey { addr: header.dst })) else {
        return (SteerCounter::NotSteered, TC_ACT_OK);
    };
    let Some(group) = LINK_GROUPS.get(group_id) else {
        return (SteerCounter::NoLiveLink, TC_ACT_OK);
    };
    let mut flow = FlowKey {
        src: words(&header.src),
        dst: words(&header.dst),
        protocol: header.protocol,
        ..FlowKey::default()
    };
    if !header.fragment && (header.protocol == IPPROTO_TCP || header.protocol == IPPROTO_UDP) {
        // A datagram too short for its ports hashes on the 3-tuple; the stack judges it later.
        if let Some(ports) = load_net::<[u8; 4]>(ctx, header.l4_offset) {
            flow.src_port = u16::from_be_bytes([ports[0], ports[1]]);
            flow.dst_port = u16::from_be_bytes([ports[2], ports[3]]);
        }
    }
    let Some(slot) = choose_link(group, flow_hash(&flow)) else {
        return (SteerCounter::NoLiveLink, TC_ACT_OK);
    };
    // The verifier needs the slot bounded by the array, whatever LLVM proved.
    let slot = core::hint::black_box(slot) & (MAX_LINKS - 1);
    let ifindex = group.links[slot].ifindex;
    if let Some(packets) = LINK_PACKETS.get_ptr_mut(ifindex) {
        // SAFETY: a per-CPU value: only this CPU writes it while the program runs.
        unsafe { *packets += 1 };
    }
    // SAFETY: bpf_redirect only records the target; the kernel acts on TC_ACT_REDIRECT.
    let verdict = unsafe { bpf_redirect(ifindex, 0) } as i32;
    if verdict == TC_ACT_SHOT {
        return (SteerCounter::NoLiveLink, TC_ACT_OK);
    }
    (SteerCounter::Redirected, verdict)
}
