//! Crafted frames sent through an AF_PACKET socket, for traffic no ordinary socket can produce
//! (truncated headers, odd ethertypes), and UDP datagrams with a forged source through a raw
//! IPv4 socket.

use std::ffi::CString;
use std::net::SocketAddrV4;

use anyhow::{bail, Context as _};

/// Sends `frame` (a whole Ethernet frame) out of `ifname` in the calling thread's namespace.
pub fn send_raw_frame(ifname: &str, frame: &[u8]) -> anyhow::Result<()> {
    let c_ifname = CString::new(ifname).context("interface name has a NUL")?;
    // SAFETY: if_nametoindex reads a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(c_ifname.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {ifname}");
    }
    // SAFETY: plain socket(2) call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        bail!("socket(AF_PACKET): {}", std::io::Error::last_os_error());
    }
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value that we then fill in.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_ifindex = ifindex as i32;
    address.sll_halen = 6;
    // The destination MAC is the frame's first six bytes (zeros if the frame is shorter).
    let mac_len = frame.len().min(6);
    address.sll_addr[..mac_len].copy_from_slice(&frame[..mac_len]);
    // SAFETY: buffer and address are valid for the lengths passed.
    let sent = unsafe {
        libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&address as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    let error = std::io::Error::last_os_error();
    // SAFETY: fd is ours and closed once.
    unsafe { libc::close(fd) };
    if sent < 0 {
        bail!("sendto on {ifname}: {error}");
    }
    Ok(())
}

/// Sends one UDP datagram from `source` to `destination` through a raw IPv4 socket in the
/// calling thread's namespace: the source may be an address and port another socket holds (a
/// forged packet "from" a running peer). The UDP checksum is left zero (none, as IPv4 allows);
/// the kernel fills in the IP checksum, id and total length.
pub fn send_udp_from(
    source: SocketAddrV4,
    destination: SocketAddrV4,
    payload: &[u8],
) -> anyhow::Result<()> {
    let udp_len = u16::try_from(8 + payload.len()).context("datagram too long")?;
    let total = udp_len.checked_add(20).context("datagram too long")?;
    let mut packet = Vec::with_capacity(usize::from(total));
    packet.extend_from_slice(&[0x45, 0]);
    packet.extend_from_slice(&total.to_be_bytes());
    // id (kernel-filled), DF, TTL 64, UDP, checksum (kernel-filled).
    packet.extend_from_slice(&[0, 0, 0x40, 0, 64, libc::IPPROTO_UDP as u8, 0, 0]);
    packet.extend_from_slice(&source.ip().octets());
    packet.extend_from_slice(&destination.ip().octets());
    packet.extend_from_slice(&source.port().to_be_bytes());
    packet.extend_from_slice(&destination.port().to_be_bytes());
    packet.extend_from_slice(&udp_len.to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(payload);
    // SAFETY: plain socket(2) call; the fd is closed below. IPPROTO_RAW implies IP_HDRINCL.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        bail!(
            "socket(AF_INET, SOCK_RAW): {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: sockaddr_in is plain data; zeroed is a valid value that we then fill in.
    let mut address: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    address.sin_family = libc::AF_INET as libc::sa_family_t;
    address.sin_addr.s_addr = u32::from(*destination.ip()).to_be();
    // SAFETY: buffer and address are valid for the lengths passed.
    let sent = unsafe {
        libc::sendto(
            fd,
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&address as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    let error = std::io::Error::last_os_error();
    // SAFETY: fd is ours and closed once.
    unsafe { libc::close(fd) };
    if sent < 0 {
        bail!("sendto {destination} from {source}: {error}");
    }
    Ok(())
}

/// IPv6 extension header types the eBPF programs walk.
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_DSTOPTS: u8 = 60;

/// The bytes after an IPv6 fixed header: `extensions` (each its type and its bytes after the
/// next-header byte, which this fills in), then `l4`. Returns the fixed header's next-header
/// value with them.
pub fn ipv6_extension_chain(
    extensions: &[(u8, Vec<u8>)],
    protocol: u8,
    l4: &[u8],
) -> (u8, Vec<u8>) {
    let mut chain = Vec::new();
    for (index, (_, body)) in extensions.iter().enumerate() {
        let next = extensions
            .get(index + 1)
            .map_or(protocol, |(kind, _)| *kind);
        chain.push(next);
        chain.extend_from_slice(body);
    }
    chain.extend_from_slice(l4);
    let first = extensions.first().map_or(protocol, |(kind, _)| *kind);
    (first, chain)
}

/// A hop-by-hop or destination options header holding one PadN option: 8 bytes in all.
pub fn ipv6_options_header(kind: u8) -> (u8, Vec<u8>) {
    (kind, vec![0, 1, 4, 0, 0, 0, 0])
}

/// A fragment header for `offset` (in 8-byte units), more fragments following.
pub fn ipv6_fragment_header(offset: u16) -> (u8, Vec<u8>) {
    let mut body = vec![0];
    body.extend_from_slice(&(offset << 3 | 1).to_be_bytes());
    body.extend_from_slice(&[0, 0, 0, 42]);
    (IPPROTO_FRAGMENT, body)
}
