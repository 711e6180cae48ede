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
    log::{debug, trace},
    maps::{count, LINK_GROUPS, LINK_PACKETS, STEER_COUNTERS, STEER_ROUTES},
    packet::{load_net, parse_ip, IpHeader, ETH_HDR_LEN},
};

#[classifier]
pub fn tc_lan_ingress(ctx: TcContext) -> i32 {
    let (counter, verdict) = steer(&ctx);
    count(&STEER_COUNTERS, counter as u32);
    match counter {
        SteerCounter::Redirected | SteerCounter::NotSteered | SteerCounter::Unparsed => {}
        // A steered prefix that fell back to the kernel route: worth seeing when debugging.
        _ => debug!(
            &ctx,
            "tc_lan: left a steered packet to the stack (counter {})", counter as u32
        ),
    }
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

/// Decrements the IPv4 TTL (fixing the header checksum) or the IPv6 hop limit. `false` when the
/// limit is 1 or less, or when the IP header is not right after an Ethernet header (say, a VLAN
/// tag in the data), so the writes would land elsewhere.
#[inline(always)]
fn decrement_hop_limit(ctx: &TcContext, header: &IpHeader) -> bool {
    if header.ipv6 {
        let Ok(fixed) = ctx.load::<[u8; 8]>(ETH_HDR_LEN) else {
            return false;
        };
        let Some(relative) = load_net::<[u8; 8]>(ctx, 0) else {
            return false;
        };
        if fixed != relative || fixed[7] <= 1 {
            return false;
        }
        return ctx.store(ETH_HDR_LEN + 7, &(fixed[7] - 1), 0).is_ok();
    }
    let Ok(fixed) = ctx.load::<[u8; 20]>(ETH_HDR_LEN) else {
        return false;
    };
    let Some(relative) = load_net::<[u8; 20]>(ctx, 0) else {
        return false;
    };
    let (ttl, protocol) = (fixed[8], fixed[9]);
    if fixed != relative || ttl <= 1 {
        return false;
    }
    // The checksum covers TTL and protocol as one 16-bit word; the helper wants the old and new
    // words as they sit in the packet (network order).
    let old = u16::from_be_bytes([ttl, protocol]).to_be() as u64;
    let new = u16::from_be_bytes([ttl - 1, protocol]).to_be() as u64;
    ctx.store(ETH_HDR_LEN + 8, &(ttl - 1), 0).is_ok()
        && ctx.l3_csum_replace(ETH_HDR_LEN + 10, old, new, 2).is_ok()
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
    let hash = flow_hash(&flow);
    let Some(slot) = choose_link(group, hash) else {
        return (SteerCounter::NoLiveLink, TC_ACT_OK);
    };
    // The verifier needs the slot bounded by the array, whatever LLVM proved.
    let slot = core::hint::black_box(slot) & (MAX_LINKS - 1);
    let link = &group.links[slot];
    let ifindex = link.ifindex;
    // Redirecting bypasses IP forwarding, so do what a router must here, or leave the packet to
    // the stack (which then routes it through the kernel route and answers with ICMP).
    if link.mtu != 0
        && ctx.len() > link.mtu + ETH_HDR_LEN as u32
        && !gso_segments_fit(ctx, &header, link.mtu)
    {
        return (SteerCounter::TooBig, TC_ACT_OK);
    }
    if !decrement_hop_limit(ctx, &header) {
        return (SteerCounter::ToStack, TC_ACT_OK);
    }
    if let Some(packets) = LINK_PACKETS.get_ptr_mut(ifindex) {
        // SAFETY: a per-CPU value: only this CPU writes it while the program runs.
        unsafe { *packets += 1 };
    }
    // SAFETY: bpf_redirect only records the target; the kernel acts on TC_ACT_REDIRECT.
    let verdict = unsafe { bpf_redirect(ifindex, 0) } as i32;
    if verdict == TC_ACT_SHOT {
        return (SteerCounter::NoLiveLink, TC_ACT_OK);
    }
    trace!(
        ctx,
        "tc_lan: steered flow hash {} of group {} to ifindex {}",
        hash,
        group_id,
        ifindex
    );
    (SteerCounter::Redirected, verdict)
}

/// Whether `ctx` is a GSO packet whose segments each fit `mtu`. GRO on the LAN NIC merges a TCP
/// flow's segments into one big packet; the tun (or the stack, for a tun without offloads) cuts
/// it back into `gso_size` pieces on the way out, so one segment must fit the link, not the whole.
#[inline(always)]
fn gso_segments_fit(ctx: &TcContext, header: &IpHeader, mtu: u32) -> bool {
    // SAFETY: a plain read of the context the kernel handed to this program.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if gso_size == 0 {
        return false;
    }
    let l4_header_len = match header.protocol {
        IPPROTO_TCP => match load_net::<u8>(ctx, header.l4_offset + 12) {
            Some(data_offset) => u32::from(data_offset >> 4) * 4,
            None => return false,
        },
        IPPROTO_UDP => 8,
        _ => return false,
    };
    header.l4_offset + l4_header_len + gso_size <= mtu
}
