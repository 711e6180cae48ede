//! TCP segmentation and coalescing for a tun device with `IFF_VNET_HDR` and
//! `TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)`: pure functions on bytes, no syscalls.
//!
//! With those offloads one tun read returns a TCP super-segment (up to 64 KiB) behind a
//! `virtio_net_hdr`, and one tun write may hand the kernel such a super-segment: one syscall and
//! one trip through the stack per 64 KiB instead of per 1.4 KiB.
//!
//! - [`split`] turns a frame read from tun into ordinary IP packets, each with complete IP and
//!   TCP checksums, as a NIC doing TSO would put on the wire (sequence numbers advance, IPv4 ids
//!   count up, PSH/FIN only on the last segment, CWR only on the first).
//! - [`coalesce`] does the reverse for packets coming from the peer, following the kernel's TCP
//!   GRO rules: same flow, contiguous sequence numbers, identical headers apart from lengths,
//!   ids and checksums, every segment but the last of the same size, PSH only on the last,
//!   nothing but ACK/PSH set. Anything else goes to the tun as it is, one packet per frame.
//! - [`clamp_mss`] lowers the MSS option of TCP SYNs so tunnelled segments fit the wire without
//!   IP fragmentation (what OpenVPN's `mssfix` does by default).

use std::ops::Range;

/// Size of `struct virtio_net_hdr`, the prefix of every frame with `IFF_VNET_HDR`.
pub const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` is partial.
pub const VNET_F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const VNET_GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const VNET_GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const VNET_GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_ECN`, or-ed into `gso_type`.
pub const VNET_GSO_ECN: u8 = 0x80;

/// Most segments we coalesce into one tun write (the kernel's GRO limit is 64 too).
const MAX_COALESCED_SEGMENTS: usize = 64;
/// Largest coalesced IP packet: an IPv4 total length, or IPv6 payload length + 40.
const MAX_COALESCED_LEN: usize = 65_535;

const PROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_CWR: u8 = 0x80;
const TCP_CHECKSUM_OFFSET: usize = 16;
const IPV6_HEADER_LEN: usize = 40;

/// `struct virtio_net_hdr` (little-endian fields, as tun uses on little-endian hosts and with
/// `TUNSETVNETLE`; x86 and arm64 are little-endian).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VirtioNetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VirtioNetHdr {
    /// Reads the header at the start of `frame`.
    pub fn decode(frame: &[u8]) -> Result<Self, OffloadError> {
        let bytes: &[u8; VNET_HDR_LEN] = frame
            .get(..VNET_HDR_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(OffloadError::Truncated)?;
        let le = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        Ok(Self {
            flags: bytes[0],
            gso_type: bytes[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        })
    }

    /// The header's wire form.
    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut out = [0u8; VNET_HDR_LEN];
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        out
    }
}

/// Why a frame from tun could not be turned into packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    #[error("frame shorter than its headers")]
    Truncated,
    #[error("GSO type {0:#x} is not TCP over IPv4 or IPv6")]
    UnsupportedGso(u8),
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
}

/// Ones' complement sum (RFC 1071) of `data`, added to `initial`, not yet folded to 16 bits.
pub fn checksum_add(initial: u64, data: &[u8]) -> u64 {
    let mut sum = initial;
    let mut words = data.chunks_exact(4);
    for word in &mut words {
        sum += u64::from(u32::from_be_bytes([word[0], word[1], word[2], word[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    sum + u64::from(u32::from_be_bytes(tail))
}

/// Folds a sum from [`checksum_add`] to 16 bits (not complemented).
pub fn checksum_fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The sum of the TCP/UDP pseudo-header for an IP packet whose L4 part is `l4_len` bytes.
fn pseudo_header_sum(packet: &[u8], l4_len: usize) -> Option<u64> {
    match packet.first()? >> 4 {
        4 => {
            let addresses = packet.get(12..20)?;
            let protocol = *packet.get(9)?;
            Some(checksum_add(u64::from(protocol) + l4_len as u64, addresses))
        }
        6 => {
            let addresses = packet.get(8..40)?;
            let next = *packet.get(6)?;
            Some(checksum_add(u64::from(next) + l4_len as u64, addresses))
        }
        _ => None,
    }
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn write_u16(bytes: &mut [u8], at: usize, value: u16) -> Option<()> {
    bytes
        .get_mut(at..at + 2)?
        .copy_from_slice(&value.to_be_bytes());
    Some(())
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Recomputes the IPv4 header checksum of `packet` (IHL from the header).
fn fix_ipv4_header_checksum(packet: &mut [u8]) -> Option<()> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    write_u16(packet, 10, 0)?;
    let sum = checksum_add(0, packet.get(..ihl)?);
    write_u16(packet, 10, !checksum_fold(sum))
}

/// Writes the complete TCP checksum of `packet`, whose TCP header starts at `l4`.
fn fix_tcp_checksum(packet: &mut [u8], l4: usize) -> Option<()> {
    let l4_len = packet.len().checked_sub(l4)?;
    write_u16(packet, l4 + TCP_CHECKSUM_OFFSET, 0)?;
    let sum = checksum_add(pseudo_header_sum(packet, l4_len)?, packet.get(l4..)?);
    write_u16(packet, l4 + TCP_CHECKSUM_OFFSET, !checksum_fold(sum))
}

/// Turns one frame read from a tun with a virtio-net header into IP packets ready for the
/// wire, calling `emit` for each in order. Frames without GSO come out as they are (their
/// checksum completed if the kernel left it partial); TCP super-segments come out split at
/// `gso_size`. `scratch` holds the packet being built. Returns the number of packets emitted.
pub fn split(
    frame: &[u8],
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    let header = VirtioNetHdr::decode(frame)?;
    let packet = frame.get(VNET_HDR_LEN..).ok_or(OffloadError::Truncated)?;
    let gso_type = header.gso_type & !VNET_GSO_ECN;
    if gso_type == VNET_GSO_NONE {
        if header.flags & VNET_F_NEEDS_CSUM == 0 {
            emit(packet);
            return Ok(1);
        }
        // Complete the partial checksum: the field already holds the pseudo-header sum.
        let start = usize::from(header.csum_start);
        let field = start + usize::from(header.csum_offset);
        if field + 2 > packet.len() {
            return Err(OffloadError::Malformed("checksum offset past the packet"));
        }
        scratch.clear();
        scratch.extend_from_slice(packet);
        let sum = checksum_add(0, &scratch[start..]);
        write_u16(scratch, field, !checksum_fold(sum)).ok_or(OffloadError::Truncated)?;
        emit(scratch);
        return Ok(1);
    }
    let ipv4 = match (gso_type, packet.first().map(|b| b >> 4)) {
        (VNET_GSO_TCPV4, Some(4)) => true,
        (VNET_GSO_TCPV6, Some(6)) => false,
        _ => return Err(OffloadError::UnsupportedGso(header.gso_type)),
    };
    let l4 = if ipv4 {
        usize::from(packet[0] & 0x0f) * 4
    } else {
        // csum_start skips any extension headers.
        usize::from(header.csum_start)
    };
    if l4 < if ipv4 { 20 } else { IPV6_HEADER_LEN } {
        return Err(OffloadError::Malformed("IP header too short"));
    }
    let tcp_header_len = packet
        .get(l4 + 12)
        .map(|offset| usize::from(offset >> 4) * 4)
        .ok_or(OffloadError::Truncated)?;
    if tcp_header_len < 20 {
        return Err(OffloadError::Malformed("TCP header too short"));
    }
    let headers_len = l4 + tcp_header_len;
    let payload = packet.get(headers_len..).ok_or(OffloadError::Truncated)?;
    let segment_size = usize::from(header.gso_size);
    if segment_size == 0 {
        return Err(OffloadError::Malformed("GSO frame with gso_size 0"));
    }
    let headers = &packet[..headers_len];
    let first_seq = read_u32(headers, l4 + 4).ok_or(OffloadError::Truncated)?;
    let first_id = read_u16(headers, 4).ok_or(OffloadError::Truncated)?;
    let flags = headers[l4 + 13];
    let count = payload.len().div_ceil(segment_size).max(1);
    for (index, chunk) in payload
        .chunks(segment_size)
        .chain(payload.is_empty().then_some(&[][..]))
        .enumerate()
    {
        let last = index + 1 == count;
        scratch.clear();
        scratch.extend_from_slice(headers);
        scratch.extend_from_slice(chunk);
        let total = scratch.len();
        if ipv4 {
            let total = u16::try_from(total).map_err(|_| OffloadError::Malformed("too long"))?;
            write_u16(scratch, 2, total).ok_or(OffloadError::Truncated)?;
            write_u16(scratch, 4, first_id.wrapping_add(index as u16))
                .ok_or(OffloadError::Truncated)?;
            fix_ipv4_header_checksum(scratch).ok_or(OffloadError::Truncated)?;
        } else {
            let payload_len = u16::try_from(total - IPV6_HEADER_LEN)
                .map_err(|_| OffloadError::Malformed("too long"))?;
            write_u16(scratch, 4, payload_len).ok_or(OffloadError::Truncated)?;
        }
        let offset = (index * segment_size) as u32;
        scratch[l4 + 4..l4 + 8].copy_from_slice(&first_seq.wrapping_add(offset).to_be_bytes());
        let mut segment_flags = flags;
        if !last {
            segment_flags &= !(TCP_FIN | TCP_PSH);
        }
        if index > 0 {
            segment_flags &= !TCP_CWR;
        }
        scratch[l4 + 13] = segment_flags;
        fix_tcp_checksum(scratch, l4).ok_or(OffloadError::Truncated)?;
        emit(scratch);
    }
    Ok(count)
}

/// What identifies a TCP segment's flow and decides whether it may join a coalesced group.
#[derive(Debug, Clone, Copy)]
struct TcpSegment {
    ipv4: bool,
    /// Offset of the TCP header (= IP header length).
    l4: usize,
    /// IP + TCP header length.
    headers_len: usize,
    seq: u32,
    ip_id: u16,
    flags: u8,
    payload_len: usize,
}

/// Parses `packet` as a TCP segment that may be coalesced: plain IPv4 (no options, no
/// fragment) or IPv6 without extension headers, lengths exact, ACK set, nothing but ACK/PSH
/// set, payload present, and checksums valid (as GRO checks them before merging).
fn coalescible(packet: &[u8]) -> Option<TcpSegment> {
    let version = packet.first()? >> 4;
    let (ipv4, l4) = match version {
        4 => {
            if packet[0] & 0x0f != 5
                || *packet.get(9)? != PROTO_TCP
                || usize::from(read_u16(packet, 2)?) != packet.len()
                // MF set or a fragment offset: a fragment.
                || read_u16(packet, 6)? & 0x3fff != 0
                || checksum_fold(checksum_add(0, packet.get(..20)?)) != 0xffff
            {
                return None;
            }
            (true, 20)
        }
        6 => {
            if *packet.get(6)? != PROTO_TCP
                || usize::from(read_u16(packet, 4)?) + IPV6_HEADER_LEN != packet.len()
            {
                return None;
            }
            (false, IPV6_HEADER_LEN)
        }
        _ => return None,
    };
    let tcp_header_len = usize::from(packet.get(l4 + 12)? >> 4) * 4;
    let headers_len = l4 + tcp_header_len;
    if tcp_header_len < 20 || headers_len >= packet.len() {
        return None;
    }
    let flags = *packet.get(l4 + 13)?;
    if flags & TCP_ACK == 0 || flags & !(TCP_ACK | TCP_PSH) != 0 {
        return None;
    }
    let sum = checksum_add(
        pseudo_header_sum(packet, packet.len() - l4)?,
        packet.get(l4..)?,
    );
    if checksum_fold(sum) != 0xffff {
        return None;
    }
    Some(TcpSegment {
        ipv4,
        l4,
        headers_len,
        seq: read_u32(packet, l4 + 4)?,
        ip_id: read_u16(packet, 4)?,
        flags,
        payload_len: packet.len() - headers_len,
    })
}

/// Whether two segments' headers agree on everything but lengths, ids, checksums, sequence
/// numbers and PSH: same flow, same IP fields, same ack, window and TCP options.
fn same_headers(a: &[u8], b: &[u8], segment: &TcpSegment) -> bool {
    let l4 = segment.l4;
    let ip_same = if segment.ipv4 {
        a[..2] == b[..2] && a[6..10] == b[6..10] && a[12..20] == b[12..20]
    } else {
        a[..4] == b[..4] && a[6..40] == b[6..40]
    };
    ip_same
        && a[l4..l4 + 4] == b[l4..l4 + 4]
        && a[l4 + 8..l4 + 13] == b[l4 + 8..l4 + 13]
        && (a[l4 + 13] | TCP_PSH) == (b[l4 + 13] | TCP_PSH)
        && a[l4 + 14..l4 + 16] == b[l4 + 14..l4 + 16]
        && a[l4 + 18..segment.headers_len] == b[l4 + 18..segment.headers_len]
}

/// Packets merged (or passed through alone) into one tun frame.
#[derive(Debug)]
struct Group {
    /// Indices into the input, in order.
    members: Vec<usize>,
    /// The first member's parse, `None` for a packet that goes through alone.
    first: Option<TcpSegment>,
    next_seq: u32,
    next_id: u16,
    total_len: usize,
    /// A short segment or PSH ended the group.
    closed: bool,
}

/// Builds tun frames (virtio-net header + IP packet) from decrypted IP `packets`: TCP segments
/// that GRO would merge become one GSO super-segment, everything else one frame per packet.
/// The frames are appended to `out`; `frames` receives their ranges in `out`, in an order that
/// keeps every flow's packets in sequence.
pub fn coalesce(packets: &[&[u8]], out: &mut Vec<u8>, frames: &mut Vec<Range<usize>>) {
    let mut groups: Vec<Group> = Vec::new();
    for (index, packet) in packets.iter().enumerate() {
        let segment = coalescible(packet);
        if let Some(segment) = segment {
            // The flow's latest group, if it can take this segment.
            let joinable = groups.iter_mut().rev().find(|group| {
                group.first.is_some_and(|first| {
                    first.ipv4 == segment.ipv4
                        && first.headers_len == segment.headers_len
                        && same_headers(packets[group.members[0]], packet, &segment)
                })
            });
            if let Some(group) = joinable {
                let first = group.first.expect("joinable groups have a first segment");
                if !group.closed
                    && segment.seq == group.next_seq
                    && (!segment.ipv4 || segment.ip_id == group.next_id)
                    && segment.payload_len <= first.payload_len
                    && group.members.len() < MAX_COALESCED_SEGMENTS
                    && group.total_len + segment.payload_len <= MAX_COALESCED_LEN
                {
                    group.members.push(index);
                    group.next_seq = segment.seq.wrapping_add(segment.payload_len as u32);
                    group.next_id = segment.ip_id.wrapping_add(1);
                    group.total_len += segment.payload_len;
                    group.closed =
                        segment.payload_len < first.payload_len || segment.flags & TCP_PSH != 0;
                    continue;
                }
            }
        }
        groups.push(Group {
            members: vec![index],
            first: segment,
            next_seq: segment.map_or(0, |s| s.seq.wrapping_add(s.payload_len as u32)),
            next_id: segment.map_or(0, |s| s.ip_id.wrapping_add(1)),
            total_len: packet.len(),
            closed: segment.is_none_or(|s| s.flags & TCP_PSH != 0),
        });
    }
    for group in &groups {
        let start = out.len();
        match (group.first, group.members.as_slice()) {
            (Some(first), members @ [_, _, ..]) => {
                write_super_segment(packets, members, &first, group.total_len, out)
            }
            _ => {
                out.extend_from_slice(&VirtioNetHdr::default().encode());
                out.extend_from_slice(packets[group.members[0]]);
            }
        }
        frames.push(start..out.len());
    }
}

/// Appends one GSO frame made of `members` (validated, contiguous segments of one flow).
fn write_super_segment(
    packets: &[&[u8]],
    members: &[usize],
    first: &TcpSegment,
    total_len: usize,
    out: &mut Vec<u8>,
) {
    let header = VirtioNetHdr {
        flags: VNET_F_NEEDS_CSUM,
        gso_type: if first.ipv4 {
            VNET_GSO_TCPV4
        } else {
            VNET_GSO_TCPV6
        },
        hdr_len: first.headers_len as u16,
        gso_size: first.payload_len as u16,
        csum_start: first.l4 as u16,
        csum_offset: TCP_CHECKSUM_OFFSET as u16,
    };
    out.extend_from_slice(&header.encode());
    let packet_start = out.len();
    let first_packet = packets[members[0]];
    out.extend_from_slice(&first_packet[..first.headers_len]);
    let last_packet = packets[members[members.len() - 1]];
    for &member in members {
        out.extend_from_slice(&packets[member][first.headers_len..]);
    }
    let packet = &mut out[packet_start..];
    let l4 = first.l4;
    // total_len <= 65535 was checked when members joined.
    if first.ipv4 {
        let _ = write_u16(packet, 2, total_len as u16);
        let _ = fix_ipv4_header_checksum(packet);
    } else {
        let _ = write_u16(packet, 4, (total_len - IPV6_HEADER_LEN) as u16);
    }
    packet[l4 + 13] |= last_packet[l4 + 13] & TCP_PSH;
    // A partial checksum: the pseudo-header sum, not complemented, as the kernel expects.
    let pseudo = pseudo_header_sum(packet, total_len - l4).unwrap_or(0);
    let _ = write_u16(packet, l4 + TCP_CHECKSUM_OFFSET, checksum_fold(pseudo));
}

/// Whether `packet` is a TCP segment with SYN set (IPv4 unfragmented, or IPv6 without
/// extension headers): the only packets [`clamp_mss`] changes.
pub fn is_tcp_syn(packet: &[u8]) -> bool {
    let l4 = match packet.first().map(|b| b >> 4) {
        Some(4) if packet.get(9) == Some(&PROTO_TCP) => usize::from(packet[0] & 0x0f) * 4,
        Some(6) if packet.get(6) == Some(&PROTO_TCP) => IPV6_HEADER_LEN,
        _ => return false,
    };
    packet
        .get(l4 + 13)
        .is_some_and(|flags| flags & TCP_SYN != 0)
}

/// The largest TCP MSS whose segments, sealed with `overhead` bytes and sent over UDP, make
/// outer packets of at most `outer_limit` bytes (OpenVPN's default `mssfix` is 1492).
pub fn mss_for(outer_limit: usize, outer_ipv6: bool, inner_ipv6: bool, overhead: usize) -> u16 {
    let outer_headers = if outer_ipv6 { 40 } else { 20 } + 8;
    let inner_headers = if inner_ipv6 { 40 } else { 20 } + 20;
    let mss = outer_limit.saturating_sub(outer_headers + overhead + inner_headers);
    u16::try_from(mss).unwrap_or(u16::MAX).max(536)
}

/// Lowers the MSS option of a TCP SYN in `packet` (IPv4 or IPv6, no extension headers) to
/// at most `max_mss`, fixing the TCP checksum incrementally. Returns whether it changed it.
pub fn clamp_mss(packet: &mut [u8], max_mss: u16) -> bool {
    clamp_mss_inner(packet, max_mss).unwrap_or(false)
}

fn clamp_mss_inner(packet: &mut [u8], max_mss: u16) -> Option<bool> {
    let l4 = match packet.first()? >> 4 {
        4 if *packet.get(9)? == PROTO_TCP && read_u16(packet, 6)? & 0x1fff == 0 => {
            usize::from(packet[0] & 0x0f) * 4
        }
        6 if *packet.get(6)? == PROTO_TCP => IPV6_HEADER_LEN,
        _ => return Some(false),
    };
    if packet.get(l4 + 13)? & TCP_SYN == 0 {
        return Some(false);
    }
    let options_end = l4 + usize::from(packet.get(l4 + 12)? >> 4) * 4;
    let mut at = l4 + 20;
    while at < options_end {
        match *packet.get(at)? {
            0 => return Some(false),
            1 => at += 1,
            kind => {
                let len = usize::from(*packet.get(at + 1)?);
                if len < 2 {
                    return Some(false);
                }
                if kind == 2 && len == 4 {
                    let mss = read_u16(packet, at + 2)?;
                    if mss <= max_mss {
                        return Some(false);
                    }
                    write_u16(packet, at + 2, max_mss)?;
                    // RFC 1624: HC' = ~(~HC + ~m + m').
                    let old = read_u16(packet, l4 + TCP_CHECKSUM_OFFSET)?;
                    let sum = u64::from(!old) + u64::from(!mss) + u64::from(max_mss);
                    write_u16(packet, l4 + TCP_CHECKSUM_OFFSET, !checksum_fold(sum))?;
                    return Some(true);
                }
                at += len;
            }
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An independent checksum: 16-bit little-endian words summed with 32-bit folding, then
    /// byte-swapped (RFC 1071's byte-order independence), instead of big-endian 32-bit words.
    fn reference_checksum(parts: &[&[u8]]) -> u16 {
        let bytes: Vec<u8> = parts.concat();
        let mut sum: u32 = 0;
        for pair in bytes.chunks(2) {
            let word = u16::from_le_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
            sum = (sum & 0xffff) + (sum >> 16);
        }
        (!(sum as u16)).swap_bytes()
    }

    fn reference_tcp_checksum_ok(packet: &[u8]) -> bool {
        let (pseudo, l4) = if packet[0] >> 4 == 4 {
            let l4 = usize::from(packet[0] & 0xf) * 4;
            let len = (packet.len() - l4) as u16;
            let mut pseudo = packet[12..20].to_vec();
            pseudo.extend_from_slice(&[0, 6]);
            pseudo.extend_from_slice(&len.to_be_bytes());
            (pseudo, l4)
        } else {
            let len = (packet.len() - 40) as u32;
            let mut pseudo = packet[8..40].to_vec();
            pseudo.extend_from_slice(&len.to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 6]);
            (pseudo, 40)
        };
        reference_checksum(&[&pseudo, &packet[l4..]]) == 0
    }

    #[test]
    fn checksum_matches_a_known_ipv4_header() {
        // The classic example header (checksum b861 zeroed out).
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(!checksum_fold(checksum_add(0, &header)), 0xb861);
        assert_eq!(reference_checksum(&[&header]), 0xb861);
    }

    #[test]
    fn virtio_header_round_trips() {
        let header = VirtioNetHdr {
            flags: 1,
            gso_type: 4,
            hdr_len: 0x1234,
            gso_size: 1400,
            csum_start: 40,
            csum_offset: 16,
        };
        let bytes = header.encode();
        assert_eq!(bytes[4..6], 1400u16.to_le_bytes());
        assert_eq!(VirtioNetHdr::decode(&bytes), Ok(header));
        assert_eq!(
            VirtioNetHdr::decode(&bytes[..9]),
            Err(OffloadError::Truncated)
        );
    }

    /// A TCP/IP packet with valid checksums.
    #[allow(clippy::too_many_arguments)]
    fn tcp_packet(
        ipv6: bool,
        seq: u32,
        id: u16,
        flags: u8,
        options: &[u8],
        payload: &[u8],
        src_port: u16,
    ) -> Vec<u8> {
        let tcp_len = 20 + options.len();
        let mut tcp = vec![0u8; tcp_len];
        tcp[0..2].copy_from_slice(&src_port.to_be_bytes());
        tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&seq.to_be_bytes());
        tcp[8..12].copy_from_slice(&0x0102_0304u32.to_be_bytes());
        tcp[12] = ((tcp_len / 4) as u8) << 4;
        tcp[13] = flags;
        tcp[14..16].copy_from_slice(&512u16.to_be_bytes());
        tcp[20..].copy_from_slice(options);
        let mut packet = if ipv6 {
            let mut ip = vec![0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&((tcp_len + payload.len()) as u16).to_be_bytes());
            ip[6] = 6;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            ip[24..40].copy_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
            ip
        } else {
            let mut ip = vec![0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&((20 + tcp_len + payload.len()) as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&id.to_be_bytes());
            ip[6] = 0x40;
            ip[8] = 64;
            ip[9] = 6;
            ip[12..16].copy_from_slice(&[10, 252, 0, 1]);
            ip[16..20].copy_from_slice(&[10, 252, 0, 2]);
            ip
        };
        packet.extend_from_slice(&tcp);
        packet.extend_from_slice(payload);
        if !ipv6 {
            fix_ipv4_header_checksum(&mut packet).unwrap();
        }
        let l4 = if ipv6 { 40 } else { 20 };
        fix_tcp_checksum(&mut packet, l4).unwrap();
        packet
    }

    fn frames_of(out: &[u8], frames: &[Range<usize>]) -> Vec<Vec<u8>> {
        frames.iter().map(|r| out[r.clone()].to_vec()).collect()
    }

    fn split_all(frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut scratch = Vec::new();
        let mut packets = Vec::new();
        for frame in frames {
            split(frame, &mut scratch, |p| packets.push(p.to_vec())).unwrap();
        }
        packets
    }

    const TIMESTAMPS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];

    #[test]
    fn contiguous_segments_become_one_gso_frame_and_split_back() {
        for ipv6 in [false, true] {
            let packets: Vec<Vec<u8>> = (0..5u32)
                .map(|i| {
                    let len = if i == 4 { 300 } else { 1000 };
                    let flags = TCP_ACK | if i == 4 { TCP_PSH } else { 0 };
                    let payload: Vec<u8> = (0..len).map(|b| (b as u32 * 7 + i) as u8).collect();
                    tcp_packet(
                        ipv6,
                        1000 + i * 1000,
                        7 + i as u16,
                        flags,
                        &TIMESTAMPS,
                        &payload,
                        4000,
                    )
                })
                .collect();
            let refs: Vec<&[u8]> = packets.iter().map(Vec::as_slice).collect();
            let (mut out, mut frames) = (Vec::new(), Vec::new());
            coalesce(&refs, &mut out, &mut frames);
            assert_eq!(frames.len(), 1, "ipv6={ipv6}");
            let frame = &out[frames[0].clone()];
            let header = VirtioNetHdr::decode(frame).unwrap();
            assert_eq!(header.gso_size, 1000);
            assert_eq!(
                header.gso_type,
                if ipv6 { VNET_GSO_TCPV6 } else { VNET_GSO_TCPV4 }
            );
            assert_eq!(header.flags, VNET_F_NEEDS_CSUM);
            let back = split_all(&frames_of(&out, &frames));
            assert_eq!(back, packets, "ipv6={ipv6}");
        }
    }

    #[test]
    fn a_partial_checksum_frame_is_completed() {
        let packet = tcp_packet(false, 1, 1, TCP_ACK, &[], b"hello", 1);
        let mut partial = packet.clone();
        let pseudo = pseudo_header_sum(&partial, partial.len() - 20).unwrap();
        write_u16(&mut partial, 36, checksum_fold(pseudo)).unwrap();
        let mut frame = VirtioNetHdr {
            flags: VNET_F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..Default::default()
        }
        .encode()
        .to_vec();
        frame.extend_from_slice(&partial);
        assert_eq!(split_all(&[frame]), vec![packet]);
    }

    #[test]
    fn unusual_packets_pass_through_alone() {
        let data = |seq, flags, port| tcp_packet(false, seq, 1, flags, &[], &[9; 100], port);
        let mut bad_checksum = data(100, TCP_ACK, 1);
        *bad_checksum.last_mut().unwrap() ^= 1;
        let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
            (
                "gap in seq",
                vec![data(0, TCP_ACK, 1), data(200, TCP_ACK, 1)],
            ),
            (
                "psh ends",
                vec![data(0, TCP_ACK | TCP_PSH, 1), data(100, TCP_ACK, 1)],
            ),
            (
                "fin",
                vec![data(0, TCP_ACK, 1), data(100, TCP_ACK | TCP_FIN, 1)],
            ),
            ("bad checksum", vec![data(0, TCP_ACK, 1), bad_checksum]),
            (
                "udp",
                vec![vec![
                    0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2,
                ]],
            ),
            (
                "pure ack",
                vec![tcp_packet(false, 0, 1, TCP_ACK, &[], &[], 1)],
            ),
        ];
        for (name, packets) in cases {
            let refs: Vec<&[u8]> = packets.iter().map(Vec::as_slice).collect();
            let (mut out, mut frames) = (Vec::new(), Vec::new());
            coalesce(&refs, &mut out, &mut frames);
            assert_eq!(frames.len(), packets.len(), "{name}");
            for (frame, packet) in frames_of(&out, &frames).iter().zip(&packets) {
                assert_eq!(&frame[..VNET_HDR_LEN], &[0; VNET_HDR_LEN], "{name}");
                assert_eq!(&frame[VNET_HDR_LEN..], packet.as_slice(), "{name}");
            }
        }
    }

    #[test]
    fn flows_are_coalesced_separately_in_order() {
        let a = |i: u32| tcp_packet(false, i * 100, i as u16, TCP_ACK, &[], &[1; 100], 1);
        let b = |i: u32| {
            tcp_packet(
                false,
                5000 + i * 100,
                50 + i as u16,
                TCP_ACK,
                &[],
                &[2; 100],
                2,
            )
        };
        let packets = [a(0), b(0), a(1), b(1), a(2)];
        let refs: Vec<&[u8]> = packets.iter().map(Vec::as_slice).collect();
        let (mut out, mut frames) = (Vec::new(), Vec::new());
        coalesce(&refs, &mut out, &mut frames);
        assert_eq!(frames.len(), 2);
        let back = split_all(&frames_of(&out, &frames));
        assert_eq!(back, vec![a(0), a(1), a(2), b(0), b(1)]);
    }

    #[test]
    fn mss_is_clamped_with_a_valid_checksum() {
        for ipv6 in [false, true] {
            let options = [2, 4, 0x05, 0xb4, 1, 1, 4, 2]; // MSS 1460, NOP NOP, SACK-permitted
            let mut syn = tcp_packet(ipv6, 0, 1, TCP_SYN, &options, &[], 1);
            assert!(clamp_mss(&mut syn, 1400));
            let l4 = if ipv6 { 40 } else { 20 };
            assert_eq!(read_u16(&syn, l4 + 22), Some(1400));
            assert!(reference_tcp_checksum_ok(&syn));
            assert!(!clamp_mss(&mut syn, 1450), "already below");
            let mut ack = tcp_packet(ipv6, 0, 1, TCP_ACK, &options, &[], 1);
            assert!(!clamp_mss(&mut ack, 1000), "only SYNs");
            assert!(is_tcp_syn(&syn) && !is_tcp_syn(&ack));
        }
        assert!(
            !clamp_mss(&mut [0x45, 0, 0], 1000),
            "short input is left alone"
        );
    }

    #[test]
    fn mss_leaves_room_for_every_header() {
        // 1492 - 20 (IP) - 8 (UDP) - 24 (DATA_V2 AEAD) - 20 (IP) - 20 (TCP).
        assert_eq!(mss_for(1492, false, false, 24), 1400);
        assert_eq!(mss_for(1492, true, true, 24), 1360);
        assert_eq!(
            mss_for(100, false, false, 24),
            536,
            "never below the TCP minimum"
        );
    }

    proptest! {
        /// Splitting a random GSO frame gives packets whose checksums an independent
        /// computation accepts, and coalescing them gives the same super-segment back.
        #[test]
        fn split_then_coalesce_round_trips(
            ipv6 in any::<bool>(),
            mss in 1usize..1500,
            len in 1usize..20_000,
            seq in any::<u32>(),
            id in any::<u16>(),
            psh in any::<bool>(),
            with_options in any::<bool>(),
        ) {
            let options: &[u8] = if with_options { &TIMESTAMPS } else { &[] };
            let payload: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let flags = TCP_ACK | if psh { TCP_PSH } else { 0 };
            let big = tcp_packet(ipv6, seq, id, flags, options, &payload, 999);
            let l4 = if ipv6 { 40 } else { 20 };
            let header = VirtioNetHdr {
                flags: VNET_F_NEEDS_CSUM,
                gso_type: if ipv6 { VNET_GSO_TCPV6 } else { VNET_GSO_TCPV4 },
                hdr_len: (l4 + 20 + options.len()) as u16,
                gso_size: mss as u16,
                csum_start: l4 as u16,
                csum_offset: 16,
            };
            let mut frame = header.encode().to_vec();
            frame.extend_from_slice(&big);
            let segments = split_all(&[frame]);
            prop_assert_eq!(segments.len(), len.div_ceil(mss));
            for (i, segment) in segments.iter().enumerate() {
                prop_assert!(reference_tcp_checksum_ok(segment));
                if !ipv6 {
                    prop_assert_eq!(reference_checksum(&[&segment[..20]]), 0);
                }
                let last = i + 1 == segments.len();
                prop_assert_eq!(segment[l4 + 13] & TCP_PSH != 0, psh && last);
            }
            let refs: Vec<&[u8]> = segments.iter().map(Vec::as_slice).collect();
            let (mut out, mut frames) = (Vec::new(), Vec::new());
            coalesce(&refs, &mut out, &mut frames);
            let expected_frames = segments.len().div_ceil(MAX_COALESCED_SEGMENTS)
                .max(1);
            prop_assert!(frames.len() >= expected_frames);
            prop_assert_eq!(split_all(&frames_of(&out, &frames)), segments);
        }
    }
}
