//! XDP on the WAN NIC: admission. Packets to our tunnel ports pass only from configured or
//! connected peers, from sources in mid-handshake, or as a rate-limited first handshake packet on
//! ports that accept new peers; everything else to those ports is dropped before the stack sees
//! it. Traffic to other ports passes untouched. Every packet bumps exactly one counter.

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_ktime_get_ns, macros::xdp, programs::XdpContext,
};
use vpn_common::{
    ipv4_mapped,
    wan::{
        PeerKey, TunnelPortKey, WanCounter, IPPROTO_TCP, IPPROTO_UDP, MAX_REFILL_NS,
        MIN_HARD_RESET_LEN, OPCODE_HARD_RESET_CLIENT_V2, OPCODE_HARD_RESET_CLIENT_V3,
        PORT_ACCEPTS_NEW_PEERS, TOKEN,
    },
    Addr16,
};

use crate::{
    log::{debug, trace},
    maps::{
        count, ADMISSION_CONFIG, HANDSHAKE_BUCKET, TUNNEL_PORTS, WAN_COUNTERS, WAN_PEERS,
        WAN_PENDING,
    },
    packet::{
        read, read_be16, walk_ipv6_extensions, Ipv6Transport, ETH_HDR_LEN, ETH_P_IP, ETH_P_IPV6,
        IPV6_HDR_LEN,
    },
};

const UDP_HDR_LEN: usize = 8;
/// The source of a packet not parsed as far as its IP header.
const NO_ADDR: Addr16 = [0; 16];
const TCP_FLAGS_OFFSET: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

#[xdp]
pub fn xdp_wan(ctx: XdpContext) -> u32 {
    let (counter, src) = classify(&ctx);
    count(&WAN_COUNTERS, counter as u32);
    match counter {
        WanCounter::DroppedHandshakeRate => {
            debug!(
                &ctx,
                "xdp_wan: dropped a first handshake packet from {:i}: over the rate", src
            );
            xdp_action::XDP_DROP
        }
        WanCounter::DroppedUnknownSource => {
            debug!(
                &ctx,
                "xdp_wan: dropped a packet from unknown source {:i} to a tunnel port", src
            );
            xdp_action::XDP_DROP
        }
        WanCounter::DroppedLongHeaderChain => {
            debug!(
                &ctx,
                "xdp_wan: dropped IPv6 from {:i}: too many extension headers", src
            );
            xdp_action::XDP_DROP
        }
        WanCounter::HandshakeAdmitted => {
            trace!(
                &ctx,
                "xdp_wan: admitted a first handshake packet from {:i}",
                src
            );
            xdp_action::XDP_PASS
        }
        _ => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
/// The counter this packet bumps, and its source address (zero when not parsed that far).
fn classify(ctx: &XdpContext) -> (WanCounter, Addr16) {
    let (start, end) = (ctx.data(), ctx.data_end());
    let Some(ethertype) = read_be16(start, end, 12) else {
        return (WanCounter::Malformed, NO_ADDR);
    };
    let (protocol, l4_offset, src): (u8, usize, Addr16) = match ethertype {
        ETH_P_IP => {
            let Some(header) = read::<[u8; 20]>(start, end, ETH_HDR_LEN) else {
                return (WanCounter::Malformed, NO_ADDR);
            };
            let ihl = (header[0] & 0x0f) as usize;
            if header[0] >> 4 != 4 || ihl < 5 {
                return (WanCounter::Malformed, NO_ADDR);
            }
            let frag = u16::from_be_bytes([header[6], header[7]]);
            if frag & 0x1fff != 0 {
                // A non-first fragment carries no transport header to look at; without its first
                // fragment (dropped here if unadmitted) it never reassembles.
                return (WanCounter::OtherIp, NO_ADDR);
            }
            let src = ipv4_mapped([header[12], header[13], header[14], header[15]]);
            (header[9], ETH_HDR_LEN + ihl * 4, src)
        }
        ETH_P_IPV6 => {
            let Some(header) = read::<[u8; 24]>(start, end, ETH_HDR_LEN) else {
                return (WanCounter::Malformed, NO_ADDR);
            };
            let mut src = [0u8; 16];
            src.copy_from_slice(&header[8..24]);
            let walked = walk_ipv6_extensions(header[6], ETH_HDR_LEN + IPV6_HDR_LEN, |offset| {
                read::<[u8; 4]>(start, end, offset)
            });
            match walked {
                // A first fragment has the ports and is judged on them; the later ones are
                // useless without it.
                Ipv6Transport::Found {
                    protocol, offset, ..
                } => (protocol, offset, src),
                Ipv6Transport::LaterFragment => return (WanCounter::OtherIp, src),
                Ipv6Transport::Truncated => return (WanCounter::Malformed, src),
                // Its port cannot be checked, so it could be a way around admission.
                Ipv6Transport::TooLong => return (WanCounter::DroppedLongHeaderChain, src),
            }
        }
        _ => return (WanCounter::NonIp, NO_ADDR),
    };
    if protocol != IPPROTO_UDP && protocol != IPPROTO_TCP {
        return (WanCounter::OtherIp, src);
    }
    let Some(dst_port) = read_be16(start, end, l4_offset + 2) else {
        return (WanCounter::Malformed, src);
    };
    // SAFETY: the value is copied out at once, never held across a map update.
    let Some(flags) =
        (unsafe { TUNNEL_PORTS.get(TunnelPortKey::new(protocol, dst_port)) }).copied()
    else {
        return (WanCounter::OtherIp, src);
    };
    let peer = PeerKey { addr: src };
    if WAN_PEERS.get_ptr(peer).is_some() {
        return (WanCounter::TunnelFromPeer, src);
    }
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(expiry) = WAN_PENDING.get_ptr(peer) {
        // SAFETY: a u64 read from a live map value; a concurrent update yields either value.
        if unsafe { *expiry } > now {
            return (WanCounter::HandshakeInProgress, src);
        }
    }
    if flags & PORT_ACCEPTS_NEW_PEERS == 0 {
        return (WanCounter::DroppedUnknownSource, src);
    }
    let first_packet = if protocol == IPPROTO_UDP {
        is_hard_reset(start, end, l4_offset + UDP_HDR_LEN)
    } else {
        matches!(read::<u8>(start, end, l4_offset + TCP_FLAGS_OFFSET), Some(flags) if flags & (TCP_SYN | TCP_ACK) == TCP_SYN)
    };
    if !first_packet {
        return (WanCounter::DroppedUnknownSource, src);
    }
    let Some(config) = ADMISSION_CONFIG.get(0) else {
        return (WanCounter::DroppedHandshakeRate, src);
    };
    if !take_token(
        now,
        config.handshakes_per_sec_per_cpu,
        config.handshake_burst,
    ) {
        return (WanCounter::DroppedHandshakeRate, src);
    }
    let expiry = now + config.pending_ttl_ns;
    // A full LRU evicts its oldest entry; a failed insert only costs that source a retry.
    let _ = WAN_PENDING.insert(peer, expiry, 0);
    (WanCounter::HandshakeAdmitted, src)
}

/// Whether the UDP payload at `payload` looks like an OpenVPN client's first packet: a hard
/// reset opcode with key id 0, and long enough to carry the session id and packet id.
#[inline(always)]
fn is_hard_reset(start: usize, end: usize, payload: usize) -> bool {
    let Some(first) = read::<[u8; MIN_HARD_RESET_LEN]>(start, end, payload) else {
        return false;
    };
    let opcode = first[0] >> 3;
    let key_id = first[0] & 0x07;
    key_id == 0 && (opcode == OPCODE_HARD_RESET_CLIENT_V2 || opcode == OPCODE_HARD_RESET_CLIENT_V3)
}

/// Takes one token from this CPU's bucket, refilling it for the time since the last refill.
#[inline(always)]
fn take_token(now: u64, rate: u32, burst: u32) -> bool {
    let Some(bucket) = HANDSHAKE_BUCKET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: the per-CPU slot belongs to this CPU for the duration of the program run (XDP
    // runs with preemption disabled), so nothing else touches it meanwhile.
    let bucket = unsafe { &mut *bucket };
    let elapsed = now.saturating_sub(bucket.last_refill_ns);
    let capacity = burst as u64 * TOKEN;
    let credit = if elapsed >= MAX_REFILL_NS {
        capacity
    } else {
        let refilled = bucket.credit + elapsed * rate as u64;
        if refilled > capacity {
            capacity
        } else {
            refilled
        }
    };
    bucket.last_refill_ns = now;
    if credit < TOKEN {
        bucket.credit = credit;
        return false;
    }
    bucket.credit = credit - TOKEN;
    true
}
