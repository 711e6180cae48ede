//! Tier 4 (kernel pieces of io/): tun devices, rtnetlink configuration and batched UDP, each
//! test in its own fresh network namespace (never the host's).
//!
//! ```text
//!   namespace vpnt-<pid>-<n>-tun
//!   ┌───────────────────────────────────────────────────────────────┐
//!   │  UDP socket 10.77.0.1 ── route 10.77.0.0/24 ──▶ vt0 (tun) ──▶ fd held by the test │
//!   │  UDP socket 10.77.0.1:7777 ◀── kernel ◀── packet written to the fd by the test     │
//!   └───────────────────────────────────────────────────────────────┘
//!   namespace vpnt-<pid>-<n>-udp: sockets on 127.0.0.1 / ::1 exchanging recvmmsg/sendmmsg batches
//! ```

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use ipnet::IpNet;
use serde_json::Value;
use vpn_daemon::io::{
    netlink::{Netlink, ROUTE_PROTOCOL},
    tun::{TunDevice, TunOptions, TunQueue, OFFLOAD_GSO, VNET_HDR_LEN},
    udp_batch::{set_socket_buffers, RecvBatch, SendBatch},
};
use vpn_tests::{require_root, wait_for, NetNs};

const WAIT: Duration = Duration::from_secs(5);

/// Runs `future` on a current-thread runtime on the calling thread, so that the netlink socket
/// it opens lives in that thread's namespace.
fn block_on<T>(future: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(future)
}

fn ip_json(ns: &NetNs, args: &[&str]) -> anyhow::Result<Value> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let text = ns.ip(&full)?;
    // `ip -j` prints nothing at all for an empty list on some versions.
    if text.trim().is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_str(&text).with_context(|| format!("parsing `ip {full:?}`: {text}"))
}

/// The next packet on `queue` that `accept` likes, within `timeout`.
fn read_packet_matching(
    queue: &TunQueue,
    timeout: Duration,
    accept: impl Fn(&[u8]) -> bool,
) -> anyhow::Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut buffer = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(
            !left.is_zero(),
            "no matching packet on the tun within {timeout:?}"
        );
        if !poll_readable(queue.as_raw_fd(), left)? {
            continue;
        }
        let len = queue.read(&mut buffer)?;
        let packet = &buffer[..len];
        if accept(packet) {
            return Ok(packet.to_vec());
        }
    }
}

fn poll_readable(fd: i32, timeout: Duration) -> anyhow::Result<bool> {
    let mut entry = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1.
    let rc = unsafe { libc::poll(&mut entry, 1, timeout.as_millis() as i32) };
    ensure!(rc >= 0, "poll: {}", std::io::Error::last_os_error());
    Ok(rc > 0)
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4/UDP packet (UDP checksum 0 = none, allowed over IPv4).
fn ipv4_udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let (IpAddr::V4(src_ip), IpAddr::V4(dst_ip)) = (src.ip(), dst.ip()) else {
        panic!("IPv4 only");
    };
    let total = 20 + 8 + payload.len();
    let mut packet = vec![0x45, 0];
    packet.extend_from_slice(&(total as u16).to_be_bytes());
    packet.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, 17, 0, 0]);
    packet.extend_from_slice(&src_ip.octets());
    packet.extend_from_slice(&dst_ip.octets());
    let header_sum = checksum(&packet);
    packet[10..12].copy_from_slice(&header_sum.to_be_bytes());
    packet.extend_from_slice(&src.port().to_be_bytes());
    packet.extend_from_slice(&dst.port().to_be_bytes());
    packet.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(payload);
    packet
}

/// Source, destination and payload of an IPv4/UDP packet, `None` for anything else.
fn parse_ipv4_udp(packet: &[u8]) -> Option<(SocketAddr, SocketAddr, &[u8])> {
    if packet.first()? >> 4 != 4 || *packet.get(9)? != 17 {
        return None;
    }
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    let src_ip = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst_ip = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    let udp = packet.get(header_len..)?;
    let src_port = u16::from_be_bytes([*udp.first()?, *udp.get(1)?]);
    let dst_port = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    let udp_len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    Some((
        SocketAddr::from((src_ip, src_port)),
        SocketAddr::from((dst_ip, dst_port)),
        udp.get(8..udp_len)?,
    ))
}

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

#[test]
fn tun_gets_address_and_routes_and_carries_packets_both_ways() -> anyhow::Result<()> {
    if !require_root("tun_gets_address_and_routes_and_carries_packets_both_ways") {
        return Ok(());
    }
    let ns = NetNs::new("tun")?;
    let tun = ns.run(|| {
        let tun = TunDevice::create("vt0", 1)?;
        let index = tun.ifindex();
        block_on(async move {
            let netlink = Netlink::new().await?;
            assert_eq!(netlink.link_index("vt0").await?, Some(index));
            assert_eq!(netlink.link_index("absent0").await?, None);
            netlink.set_link_up(index, Some(1400)).await?;
            let local = IpAddr::from([10, 77, 0, 1]);
            netlink.add_address(index, local, 24, None).await?;
            netlink.add_address(index, local, 24, None).await?; // already there: fine
            let p2p_local = IpAddr::from([10, 79, 0, 1]);
            let p2p_peer = IpAddr::from([10, 79, 0, 2]);
            netlink
                .add_address(index, p2p_local, 32, Some(p2p_peer))
                .await?;
            let gateway = IpAddr::from([10, 77, 0, 2]);
            let other_gateway = IpAddr::from([10, 77, 0, 3]);
            netlink
                .replace_route(net("10.78.0.0/16"), Some(gateway), index, Some(50))
                .await?;
            // Same destination and metric: replaced in place, not added beside.
            netlink
                .replace_route(net("10.78.0.0/16"), Some(other_gateway), index, Some(50))
                .await?;
            netlink
                .replace_route(net("10.80.0.5/24"), None, index, None)
                .await?;
            let mut ours = netlink.routes_with_our_protocol().await?;
            ours.sort();
            assert_eq!(
                ours,
                vec![
                    (net("10.78.0.0/16"), Some(other_gateway), index),
                    (net("10.80.0.0/24"), None, index),
                ]
            );
            Ok(())
        })?;
        Ok(tun)
    })?;
    let index = tun.ifindex();
    assert_eq!(tun.name(), "vt0");

    // What `ip` sees.
    let link = ip_json(&ns, &["link", "show", "dev", "vt0"])?;
    assert_eq!(link[0]["mtu"], 1400, "{link}");
    assert!(
        link[0]["flags"]
            .as_array()
            .unwrap()
            .contains(&Value::from("UP")),
        "{link}"
    );
    let addresses = ip_json(&ns, &["addr", "show", "dev", "vt0"])?;
    let addr_info = addresses[0]["addr_info"].as_array().context("addr_info")?;
    let shown: BTreeSet<(String, Option<String>, u64)> = addr_info
        .iter()
        .map(|a| {
            (
                a["local"].as_str().unwrap_or_default().to_string(),
                a["address"].as_str().map(str::to_string),
                a["prefixlen"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    let expected: BTreeSet<_> = [
        ("10.77.0.1".to_string(), None, 24),
        ("10.79.0.1".to_string(), Some("10.79.0.2".to_string()), 32),
    ]
    .into();
    assert_eq!(shown, expected, "{addresses}");
    let protocol = ROUTE_PROTOCOL.to_string();
    let routes = ip_json(&ns, &["route", "show", "proto", &protocol])?;
    let routes = routes.as_array().context("routes")?;
    assert_eq!(routes.len(), 2, "{routes:?}");
    let via = routes
        .iter()
        .find(|r| r["dst"] == "10.78.0.0/16")
        .context("10.78/16")?;
    assert_eq!(via["gateway"], "10.77.0.3");
    assert_eq!(via["dev"], "vt0");
    assert_eq!(via["metric"], 50);
    let on_link = routes
        .iter()
        .find(|r| r["dst"] == "10.80.0.0/24")
        .context("10.80/24")?;
    assert_eq!(on_link["scope"], "link");
    assert!(on_link.get("gateway").is_none());

    // Kernel -> tun: a datagram to the tun's peer pops out of the fd, byte for byte.
    let payload = b"out through the tun".to_vec();
    let socket = ns.run(|| Ok(UdpSocket::bind("10.77.0.1:7777")?))?;
    socket.send_to(&payload, "10.77.0.2:9999")?;
    let queue = tun.queue(0).context("queue 0")?;
    let packet = read_packet_matching(queue, WAIT, |p| {
        parse_ipv4_udp(p).is_some_and(|(_, dst, _)| dst.port() == 9999)
    })?;
    let (src, dst, body) = parse_ipv4_udp(&packet).unwrap();
    assert_eq!(src, "10.77.0.1:7777".parse()?);
    assert_eq!(dst, "10.77.0.2:9999".parse()?);
    assert_eq!(body, payload.as_slice());
    assert_eq!(
        checksum(&packet[..20]),
        0,
        "the kernel's IPv4 header checksum verifies"
    );

    // tun -> kernel: a packet written to the fd is delivered to the socket.
    let inbound = ipv4_udp(
        "10.77.0.2:5555".parse()?,
        "10.77.0.1:7777".parse()?,
        b"in via fd",
    );
    assert_eq!(queue.write(&inbound)?, inbound.len());
    socket.set_read_timeout(Some(WAIT))?;
    let mut buffer = [0u8; 64];
    let (len, from) = socket
        .recv_from(&mut buffer)
        .context("datagram written to the tun")?;
    assert_eq!(&buffer[..len], b"in via fd");
    assert_eq!(from, "10.77.0.2:5555".parse()?);

    // Route deletion: ours go, a repeated delete is fine.
    ns.run(move || {
        block_on(async move {
            let netlink = Netlink::new().await?;
            netlink.delete_route(net("10.78.0.0/16"), index).await?;
            netlink.delete_route(net("10.78.0.0/16"), index).await?;
            let ours = netlink.routes_with_our_protocol().await?;
            assert_eq!(ours, vec![(net("10.80.0.0/24"), None, index)]);
            Ok(())
        })
    })?;
    let routes = ip_json(&ns, &["route", "show", "proto", &protocol])?;
    assert_eq!(routes.as_array().map(Vec::len), Some(1), "{routes}");

    // The device (and the routes through it) vanish with the last fd.
    drop(tun);
    wait_for("vt0 to disappear", WAIT, || {
        let links = ip_json(&ns, &["link", "show"]).ok()?;
        let names: Vec<_> = links
            .as_array()?
            .iter()
            .filter_map(|l| l["ifname"].as_str())
            .collect();
        (!names.contains(&"vt0")).then_some(())
    })?;
    let routes = ip_json(&ns, &["route", "show", "proto", &protocol])?;
    assert_eq!(routes.as_array().map(Vec::len), Some(0), "{routes}");
    ns.run(move || {
        block_on(async move {
            let netlink = Netlink::new().await?;
            assert_eq!(netlink.link_index("vt0").await?, None);
            // Deleting a route whose device is gone is success too.
            netlink.delete_route(net("10.80.0.0/24"), index).await?;
            assert!(netlink.routes_with_our_protocol().await?.is_empty());
            Ok(())
        })
    })?;
    Ok(())
}

#[test]
fn tun_names_taken_or_invalid_are_clear_errors() -> anyhow::Result<()> {
    if !require_root("tun_names_taken_or_invalid_are_clear_errors") {
        return Ok(());
    }
    let ns = NetNs::new("tunname")?;
    ns.run(|| {
        let first = TunDevice::create("vtx0", 1)?;
        let error = TunDevice::create("vtx0", 1).expect_err("name taken");
        assert!(format!("{error:#}").contains("already exists"), "{error:#}");
        let error = TunDevice::create("lo", 1).expect_err("lo is no tun");
        assert!(format!("{error:#}").contains("lo"), "{error:#}");
        // The kernel picks the number in a `%d` template.
        let numbered = TunDevice::create("vtn%d", 1)?;
        assert_eq!(numbered.name(), "vtn0");
        assert_ne!(numbered.ifindex(), first.ifindex());
        Ok(())
    })
}

#[test]
fn multi_queue_tun_spreads_flows_over_its_queues() -> anyhow::Result<()> {
    if !require_root("multi_queue_tun_spreads_flows_over_its_queues") {
        return Ok(());
    }
    const QUEUES: usize = 4;
    const FLOWS: usize = 64;
    let ns = NetNs::new("tunmq")?;
    let tun = ns.run(|| {
        let tun = TunDevice::create("vtm0", QUEUES)?;
        let index = tun.ifindex();
        block_on(async move {
            let netlink = Netlink::new().await?;
            netlink.set_link_up(index, None).await?;
            netlink
                .add_address(index, IpAddr::from([10, 88, 0, 1]), 24, None)
                .await
        })?;
        Ok(tun)
    })?;
    assert_eq!(tun.queue_count(), QUEUES);
    assert!(tun.queue(QUEUES).is_none());
    let details = ip_json(&ns, &["-d", "link", "show", "dev", "vtm0"])?;
    let info = &details[0]["linkinfo"]["info_data"];
    assert_eq!(info["type"], "tun", "{details}");
    assert_eq!(info["multi_queue"], true, "{details}");
    assert_eq!(info["pi"], false, "IFF_NO_PI: {details}");
    assert_eq!(info["persist"], false, "goes with its fds: {details}");
    if let Some(count) = info.get("numqueues") {
        assert_eq!(count.as_u64(), Some(QUEUES as u64), "{details}");
    }

    // One datagram per flow (source port); each must come out of exactly one queue.
    ns.run(|| {
        for flow in 0..FLOWS {
            let socket = UdpSocket::bind("10.88.0.1:0")?;
            socket.send_to(&(flow as u32).to_be_bytes(), "10.88.0.2:4000")?;
        }
        Ok(())
    })?;
    let mut seen = BTreeSet::new();
    let mut per_queue = [0usize; QUEUES];
    let deadline = Instant::now() + WAIT;
    let mut buffer = vec![0u8; 2048];
    while seen.len() < FLOWS && Instant::now() < deadline {
        for (index, count) in per_queue.iter_mut().enumerate() {
            let queue = tun.queue(index).unwrap();
            if !poll_readable(queue.as_raw_fd(), Duration::from_millis(10))? {
                continue;
            }
            let len = queue.read(&mut buffer)?;
            if let Some((_, dst, body)) = parse_ipv4_udp(&buffer[..len]) {
                if dst.port() == 4000 {
                    let flow = u32::from_be_bytes(body.try_into()?);
                    assert!(seen.insert(flow), "flow {flow} came out twice");
                    *count += 1;
                }
            }
        }
    }
    assert_eq!(seen.len(), FLOWS, "per queue: {per_queue:?}");
    println!("multi-queue tun: {FLOWS} flows over {QUEUES} queues: {per_queue:?}");
    let used = per_queue.iter().filter(|&&n| n > 0).count();
    assert!(
        used >= 2,
        "the kernel hashed 64 flows onto one queue: {per_queue:?}"
    );

    // A clone is the same queue: a packet written through it is delivered.
    let clone = tun.queue(1).unwrap().try_clone()?;
    let receiver = ns.run(|| Ok(UdpSocket::bind("10.88.0.1:4001")?))?;
    receiver.set_read_timeout(Some(WAIT))?;
    clone.write(&ipv4_udp(
        "10.88.0.2:1".parse()?,
        "10.88.0.1:4001".parse()?,
        b"clone",
    ))?;
    let mut small = [0u8; 16];
    let (len, _) = receiver.recv_from(&mut small)?;
    assert_eq!(&small[..len], b"clone");

    // The device stays while any queue fd does, and goes with the last one.
    let queues = tun.into_queues();
    drop(queues);
    assert!(
        ip_json(&ns, &["link", "show", "dev", "vtm0"]).is_ok(),
        "the clone keeps it"
    );
    drop(clone);
    wait_for("vtm0 to disappear", WAIT, || {
        ip_json(&ns, &["link", "show", "dev", "vtm0"])
            .is_err()
            .then_some(())
    })?;
    Ok(())
}

#[test]
fn vnet_hdr_tun_prefixes_a_virtio_header() -> anyhow::Result<()> {
    if !require_root("vnet_hdr_tun_prefixes_a_virtio_header") {
        return Ok(());
    }
    let ns = NetNs::new("tunvnet")?;
    let options = TunOptions {
        queues: 2,
        vnet_hdr: true,
        offload: OFFLOAD_GSO,
    };
    let (tun, socket) = ns.run(move || {
        let tun = TunDevice::create_with("vtv0", options)?;
        let index = tun.ifindex();
        block_on(async move {
            let netlink = Netlink::new().await?;
            netlink.set_link_up(index, None).await?;
            netlink
                .add_address(index, IpAddr::from([10, 89, 0, 1]), 24, None)
                .await
        })?;
        Ok((tun, UdpSocket::bind("10.89.0.1:6000")?))
    })?;
    assert!(tun.vnet_hdr());
    let details = ip_json(&ns, &["-d", "link", "show", "dev", "vtv0"])?;
    assert_eq!(
        details[0]["linkinfo"]["info_data"]["vnet_hdr"], true,
        "{details}"
    );

    socket.send_to(b"with header", "10.89.0.2:6001")?;
    let mut found = None;
    for index in 0..tun.queue_count() {
        let queue = tun.queue(index).unwrap();
        if let Ok(packet) = read_packet_matching(queue, Duration::from_millis(500), |p| {
            p.len() > VNET_HDR_LEN
                && parse_ipv4_udp(&p[VNET_HDR_LEN..]).is_some_and(|(_, d, _)| d.port() == 6001)
        }) {
            found = Some(packet);
        }
    }
    let packet = found.context("no packet with a vnet header on any queue")?;
    let (_, _, body) = parse_ipv4_udp(&packet[VNET_HDR_LEN..]).unwrap();
    assert_eq!(body, b"with header");
    // gso_type (byte 1) is VIRTIO_NET_HDR_GSO_NONE for a small datagram.
    assert_eq!(packet[1], 0, "{:?}", &packet[..VNET_HDR_LEN]);

    // Writing needs the header too: an all-zero one means "no offload, checksums done".
    let mut inbound = vec![0u8; VNET_HDR_LEN];
    inbound.extend(ipv4_udp(
        "10.89.0.2:1".parse()?,
        "10.89.0.1:6000".parse()?,
        b"in",
    ));
    tun.queue(0).unwrap().write(&inbound)?;
    socket.set_read_timeout(Some(WAIT))?;
    let mut buffer = [0u8; 16];
    let (len, _) = socket.recv_from(&mut buffer)?;
    assert_eq!(&buffer[..len], b"in");
    Ok(())
}

/// Payload of datagram `index`: its index, then a length and pattern that vary with it.
fn numbered_payload(index: u32) -> Vec<u8> {
    let len = 4 + (index as usize * 37) % 1400;
    let mut payload = index.to_be_bytes().to_vec();
    payload.extend((4..len).map(|i| (i as u32 ^ index.wrapping_mul(2654435761)) as u8));
    payload
}

/// Sends `indices` from `socket` to `to` in batches of `batch` datagrams.
fn send_numbered(
    socket: &UdpSocket,
    to: SocketAddr,
    indices: impl Iterator<Item = u32>,
    batch: usize,
) -> anyhow::Result<SendBatch> {
    let mut sender = SendBatch::new(batch, 1500);
    for index in indices {
        if sender.is_full() {
            sender.flush(socket)?;
        }
        sender.push(&numbered_payload(index), to)?;
    }
    sender.flush(socket)?;
    Ok(sender)
}

/// Receives until `expected` datagrams arrived; checks each one's bytes and source.
fn receive_numbered(
    socket: &UdpSocket,
    expected: usize,
    source_of: impl Fn(u32) -> SocketAddr,
) -> anyhow::Result<usize> {
    let mut receiver = RecvBatch::new(64, 2048);
    let mut seen = BTreeSet::new();
    let mut largest_batch = 0;
    while seen.len() < expected {
        let count = receiver.recv(socket, Some(WAIT))?;
        if count == 0 {
            bail!("timed out with {} of {expected} datagrams", seen.len());
        }
        largest_batch = largest_batch.max(count);
        assert_eq!(receiver.len(), count);
        for (data, source) in receiver.iter() {
            let index = u32::from_be_bytes(data[..4].try_into()?);
            assert_eq!(data, numbered_payload(index).as_slice(), "datagram {index}");
            assert_eq!(source, source_of(index), "source of datagram {index}");
            assert!(seen.insert(index), "datagram {index} twice");
        }
    }
    assert_eq!(seen.len(), expected);
    assert_eq!(receiver.truncated_total(), 0);
    Ok(largest_batch)
}

#[test]
fn batches_carry_1000_datagrams_over_loopback_exactly() -> anyhow::Result<()> {
    if !require_root("batches_carry_1000_datagrams_over_loopback_exactly") {
        return Ok(());
    }
    let ns = NetNs::new("udp")?;
    ns.run(|| {
        let receiver = UdpSocket::bind("127.0.0.1:0")?;
        let buffers = set_socket_buffers(&receiver, 8 << 20)?;
        // Root forces past rmem_max; the kernel reports twice the request.
        assert!(buffers.receive >= 8 << 20, "{buffers:?}");
        assert!(buffers.send >= 8 << 20, "{buffers:?}");
        let to = receiver.local_addr()?;
        let even = UdpSocket::bind("127.0.0.1:0")?;
        let odd = UdpSocket::bind("127.0.0.1:0")?;
        let (even_addr, odd_addr) = (even.local_addr()?, odd.local_addr()?);
        let even_stats = send_numbered(&even, to, (0..1000).step_by(2), 32)?.stats();
        let odd_stats = send_numbered(&odd, to, (1..1000).step_by(2), 32)?.stats();
        assert_eq!((even_stats.sent, even_stats.dropped), (500, 0));
        assert_eq!((odd_stats.sent, odd_stats.dropped), (500, 0));
        let largest = receive_numbered(&receiver, 1000, |index| {
            if index % 2 == 0 {
                even_addr
            } else {
                odd_addr
            }
        })?;
        assert!(
            largest > 1,
            "recvmmsg never returned more than one datagram"
        );
        println!("recvmmsg: largest batch {largest} of 64");

        // A refused datagram mid-batch is dropped and counted; the rest still go.
        let mut batch = SendBatch::new(8, 64);
        batch.push(b"one", to)?;
        batch.push(b"unroutable", "10.255.0.1:9".parse()?)?; // this namespace has only lo
        batch.push(b"two", to)?;
        assert_eq!(batch.flush(&even)?, 2);
        assert_eq!(batch.stats().dropped, 1);
        assert!(batch.last_error().is_some());
        assert!(batch.is_empty());
        let mut receive = RecvBatch::new(4, 64);
        let mut got = Vec::new();
        while got.len() < 2 {
            ensure!(receive.recv(&receiver, Some(WAIT))? > 0, "timed out");
            got.extend(receive.iter().map(|(data, _)| data.to_vec()));
        }
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);

        // A datagram longer than a slot is counted, not handed out cut short.
        even.send_to(&[7u8; 100], to)?;
        even.send_to(b"fits", to)?;
        let mut small = RecvBatch::new(4, 32);
        let mut complete = Vec::new();
        while small.truncated_total() + (complete.len() as u64) < 2 {
            ensure!(small.recv(&receiver, Some(WAIT))? > 0, "timed out");
            complete.extend(small.iter().map(|(data, _)| data.to_vec()));
        }
        assert_eq!(small.truncated_total(), 1);
        assert_eq!(complete, vec![b"fits".to_vec()]);

        // Nothing queued: a timeout is Ok(0).
        assert_eq!(small.recv(&receiver, Some(Duration::from_millis(20)))?, 0);
        assert!(small.is_empty());
        Ok(())
    })
}

#[test]
fn dual_stack_batches_keep_ipv4_peers_ipv4() -> anyhow::Result<()> {
    if !require_root("dual_stack_batches_keep_ipv4_peers_ipv4") {
        return Ok(());
    }
    let ns = NetNs::new("udp6")?;
    // The harness turns IPv6 off; this test wants ::1 on lo.
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=0"])?;
    ns.run(|| {
        let server = UdpSocket::bind("[::]:0")?; // dual-stack (bindv6only=0)
        set_socket_buffers(&server, 4 << 20)?;
        let port = server.local_addr()?.port();
        let v4_client = UdpSocket::bind("127.0.0.1:0")?;
        let v6_client = UdpSocket::bind("[::1]:0")?;
        let (v4_addr, v6_addr) = (v4_client.local_addr()?, v6_client.local_addr()?);
        send_numbered(
            &v4_client,
            SocketAddr::from(([127, 0, 0, 1], port)),
            0..100,
            32,
        )?;
        send_numbered(&v6_client, format!("[::1]:{port}").parse()?, 100..200, 32)?;
        receive_numbered(
            &server,
            200,
            |index| if index < 100 { v4_addr } else { v6_addr },
        )?;

        // Replies from the dual-stack socket: a plain IPv4 destination works as is.
        let mut replies = SendBatch::new(4, 64);
        replies.push(b"to v4", v4_addr)?;
        replies.push(b"to v6", v6_addr)?;
        assert_eq!(replies.flush(&server)?, 2);
        for (client, expected) in [(&v4_client, b"to v4"), (&v6_client, b"to v6")] {
            client.set_read_timeout(Some(WAIT))?;
            let mut buffer = [0u8; 16];
            let len = client.recv(&mut buffer)?;
            assert_eq!(&buffer[..len], expected);
        }
        Ok(())
    })
}

#[test]
fn udp_gso_batches_arrive_as_the_datagrams_pushed() -> anyhow::Result<()> {
    if !require_root("udp_gso_batches_arrive_as_the_datagrams_pushed") {
        return Ok(());
    }
    let ns = NetNs::new("udpgso")?;
    ns.run(|| {
        let receiver = UdpSocket::bind("127.0.0.1:0")?;
        set_socket_buffers(&receiver, 8 << 20)?;
        let to = receiver.local_addr()?;
        let sender = UdpSocket::bind("127.0.0.1:0")?;
        let from = sender.local_addr()?;
        // Runs of 1200-byte datagrams, every 10th cut to 500 bytes (which ends a GSO run).
        let payload = |index: u32| {
            let len = if index % 10 == 9 { 500 } else { 1200 };
            let mut bytes = index.to_be_bytes().to_vec();
            bytes.extend((4..len).map(|i| (i as u32).wrapping_mul(index + 1) as u8));
            bytes
        };
        let mut batch = SendBatch::new(64, 1500);
        batch.set_udp_gso(true);
        for index in 0..1000u32 {
            if batch.is_full() {
                batch.flush(&sender)?;
            }
            batch.push(&payload(index), to)?;
        }
        batch.flush(&sender)?;
        assert!(
            batch.udp_gso(),
            "loopback segments: {:?}",
            batch.last_error()
        );
        assert_eq!((batch.stats().sent, batch.stats().dropped), (1000, 0));

        let mut receive = RecvBatch::new(64, 2048);
        let mut next = 0u32;
        while next < 1000 {
            ensure!(
                receive.recv(&receiver, Some(WAIT))? > 0,
                "timed out at {next}"
            );
            for (data, source) in receive.iter() {
                // One socket, one path: segments arrive in order.
                assert_eq!(data, payload(next).as_slice(), "datagram {next}");
                assert_eq!(source, from);
                next += 1;
            }
        }
        Ok(())
    })
}

/// A GSO run whose segments do not fit the path MTU is refused with EMSGSIZE (GSO never
/// fragments): the batch must still deliver it, one datagram per message (IP-fragmented), and
/// keep GSO for runs that fit. (Dropping such runs was what stalled tunnels with GSO on.)
#[test]
fn udp_gso_runs_above_the_path_mtu_are_still_delivered() -> anyhow::Result<()> {
    if !require_root("udp_gso_runs_above_the_path_mtu_are_still_delivered") {
        return Ok(());
    }
    let ns = NetNs::new("udpmtu")?;
    ns.ip(&["link", "set", "lo", "mtu", "1500"])?;
    ns.run(|| {
        let receiver = UdpSocket::bind("127.0.0.1:0")?;
        let to = receiver.local_addr()?;
        let sender = UdpSocket::bind("127.0.0.1:0")?;
        // 1524 + 28 bytes of headers > 1500: what a 1500-byte tun packet sealed for the wire is.
        let payload = |index: u32| {
            let len = if index < 10 { 1524 } else { 1000 };
            let mut bytes = index.to_be_bytes().to_vec();
            bytes.resize(len, index as u8);
            bytes
        };
        let mut batch = SendBatch::new(64, 2048);
        batch.set_udp_gso(true);
        for round in 0..2 {
            for index in 0..20u32 {
                batch.push(&payload(index), to)?;
            }
            let sent = batch.flush(&sender)?;
            assert_eq!(sent, 20, "round {round}: {:?}", batch.last_error());
        }
        let stats = batch.stats();
        assert_eq!((stats.sent, stats.dropped), (40, 0));
        assert_eq!(stats.gso_refused, 1, "refused once, then sent unsegmented");
        assert!(batch.udp_gso(), "GSO stays on for datagrams that fit");

        let mut receive = RecvBatch::new(64, 2048);
        let mut got = Vec::new();
        while got.len() < 40 {
            ensure!(
                receive.recv(&receiver, Some(WAIT))? > 0,
                "timed out at {}",
                got.len()
            );
            got.extend(receive.iter().map(|(data, _)| data.to_vec()));
        }
        let expected: Vec<Vec<u8>> = (0..2).flat_map(|_| (0..20).map(payload)).collect();
        assert_eq!(got, expected);
        Ok(())
    })
}

/// With UDP GRO on, a GSO run over loopback arrives as one coalesced slot, which `iter`
/// splits back into the datagrams sent, in order and byte for byte.
#[test]
fn udp_gro_slots_split_into_the_datagrams_sent() -> anyhow::Result<()> {
    if !require_root("udp_gro_slots_split_into_the_datagrams_sent") {
        return Ok(());
    }
    let ns = NetNs::new("udpgro")?;
    ns.run(|| {
        let receiver = UdpSocket::bind("127.0.0.1:0")?;
        set_socket_buffers(&receiver, 8 << 20)?;
        let to = receiver.local_addr()?;
        let sender = UdpSocket::bind("127.0.0.1:0")?;
        let from = sender.local_addr()?;
        let mut receive = RecvBatch::new(8, 65_536);
        receive.enable_udp_gro(&receiver)?;
        assert!(receive.udp_gro());
        // Runs of 1200-byte datagrams, every 16th shorter (the end of a run).
        let payload = |index: u32| {
            let len = if index % 16 == 15 { 333 } else { 1200 };
            let mut bytes = index.to_be_bytes().to_vec();
            bytes.extend((4..len).map(|i| (i as u32).wrapping_mul(index + 7) as u8));
            bytes
        };
        let mut batch = SendBatch::new(64, 1500);
        batch.set_udp_gso(true);
        for index in 0..256u32 {
            if batch.is_full() {
                batch.flush(&sender)?;
            }
            batch.push(&payload(index), to)?;
        }
        batch.flush(&sender)?;
        let mut next = 0u32;
        let mut slots = 0;
        while next < 256 {
            ensure!(
                receive.recv(&receiver, Some(WAIT))? > 0,
                "timed out at {next}"
            );
            slots += receive.len();
            for (data, source) in receive.iter() {
                assert_eq!(data, payload(next).as_slice(), "datagram {next}");
                assert_eq!(source, from);
                next += 1;
            }
        }
        assert!(
            slots < 256,
            "{slots} slots for 256 datagrams: nothing coalesced"
        );
        assert_eq!(receive.truncated_total(), 0);
        Ok(())
    })
}

/// Not a pass/fail test: prints datagrams/s for sendmmsg batches of 32 against one sendto per
/// datagram, on loopback (the receiver does not read; the kernel drops past its buffer).
#[test]
fn measure_sendmmsg_against_sendto() -> anyhow::Result<()> {
    if !require_root("measure_sendmmsg_against_sendto") {
        return Ok(());
    }
    const DATAGRAMS: usize = 100_000;
    const SIZE: usize = 1200;
    let ns = NetNs::new("udprate")?;
    ns.run(|| {
        let sink = UdpSocket::bind("127.0.0.1:0")?;
        let to = sink.local_addr()?;
        let sender = UdpSocket::bind("127.0.0.1:0")?;
        let payload = vec![0xa5u8; SIZE];

        let started = Instant::now();
        for _ in 0..DATAGRAMS {
            sender.send_to(&payload, to)?;
        }
        let single = DATAGRAMS as f64 / started.elapsed().as_secs_f64();

        let mut batch = SendBatch::new(32, SIZE);
        let started = Instant::now();
        for _ in 0..DATAGRAMS {
            if batch.is_full() {
                batch.flush(&sender)?;
            }
            batch.push(&payload, to)?;
        }
        batch.flush(&sender)?;
        let batched = DATAGRAMS as f64 / started.elapsed().as_secs_f64();
        assert_eq!(batch.stats().sent, DATAGRAMS as u64);

        let mut gso = SendBatch::new(32, SIZE);
        gso.set_udp_gso(true);
        let started = Instant::now();
        for _ in 0..DATAGRAMS {
            if gso.is_full() {
                gso.flush(&sender)?;
            }
            gso.push(&payload, to)?;
        }
        gso.flush(&sender)?;
        let segmented = DATAGRAMS as f64 / started.elapsed().as_secs_f64();
        assert_eq!(gso.stats().sent, DATAGRAMS as u64);
        println!(
            "loopback, {SIZE}-byte datagrams: sendto {single:.0}/s, sendmmsg x32 {batched:.0}/s \
             ({:.2}x), sendmmsg x32 + UDP GSO {segmented:.0}/s ({:.2}x, gso kept: {})",
            batched / single,
            segmented / single,
            gso.udp_gso()
        );
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// The route reconciler
//
//   namespace vpnt-<pid>-<n>-rr / -rrf
//   ┌──────────────────────────────────────────────────────────────────────────┐
//   │  rr0 ══ veth ══ rr1          rr9 ══ veth ══ rr8 (created during the test)  │
//   │  10.60.0.1/24                                                            │
//   │  routes with protocol 156 through rr0 / rr1 / rr9: the reconciler's      │
//   │  a route of another protocol on rr0 that it must never touch             │
//   └──────────────────────────────────────────────────────────────────────────┘

use std::sync::Arc;

use vpn_daemon::{
    io::route_reconciler::{ReconcilerStats, RouteReconciler},
    routes::{Route, RouteOwner, RouteTable},
};

/// A route reconciler (with its own [`Netlink`]) on a runtime whose threads live in `ns`;
/// the caller drives it from any thread.
fn reconciler_in(ns: &NetNs) -> anyhow::Result<(tokio::runtime::Runtime, RouteReconciler)> {
    ns.run(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let reconciler =
            runtime.block_on(async { RouteReconciler::spawn(Arc::new(Netlink::new().await?)) })?;
        Ok((runtime, reconciler))
    })
}

/// `(destination, device, gateway, metric)` of a route as `ip -j route` shows it.
type Shown = (String, String, Option<String>, u64);

fn shown(dst: &str, dev: &str, gateway: Option<&str>, metric: u64) -> Shown {
    (dst.into(), dev.into(), gateway.map(str::to_string), metric)
}

/// Every route with our protocol id, IPv4 and IPv6, as `ip` shows them.
fn our_routes(ns: &NetNs) -> anyhow::Result<BTreeSet<Shown>> {
    let protocol = ROUTE_PROTOCOL.to_string();
    let mut routes = BTreeSet::new();
    for family in ["-4", "-6"] {
        let listed = ip_json(ns, &[family, "route", "show", "proto", &protocol])?;
        for route in listed.as_array().context("routes")? {
            routes.insert((
                route["dst"].as_str().unwrap_or_default().to_string(),
                route["dev"].as_str().unwrap_or_default().to_string(),
                route["gateway"].as_str().map(str::to_string),
                route["metric"].as_u64().unwrap_or(0),
            ));
        }
    }
    Ok(routes)
}

/// Waits until our routes in `ns` are exactly `expected`.
fn wait_for_routes(ns: &NetNs, what: &str, expected: &[Shown]) -> anyhow::Result<()> {
    let expected: BTreeSet<Shown> = expected.iter().cloned().collect();
    let mut last = BTreeSet::new();
    wait_for(what, WAIT, || {
        last = our_routes(ns).ok()?;
        (last == expected).then_some(())
    })
    .with_context(|| format!("ours: {last:?}, expected: {expected:?}"))
}

fn wait_for_stats(
    reconciler: &RouteReconciler,
    what: &str,
    accept: impl Fn(&ReconcilerStats) -> bool,
) -> anyhow::Result<ReconcilerStats> {
    wait_for(what, WAIT, || {
        let stats = reconciler.stats();
        accept(&stats).then_some(stats)
    })
    .with_context(|| format!("stats: {:?}", reconciler.stats()))
}

/// A veth pair `a`/`b` in `ns`, both up.
fn veth_in(ns: &NetNs, a: &str, b: &str) -> anyhow::Result<()> {
    ns.ip(&["link", "add", a, "type", "veth", "peer", "name", b])?;
    ns.ip(&["link", "set", a, "up"])?;
    ns.ip(&["link", "set", b, "up"])?;
    Ok(())
}

fn owned_by(owner: &RouteOwner, routes: Vec<Route>) -> (RouteOwner, Vec<Route>) {
    (owner.clone(), routes)
}

#[test]
fn route_reconciler_keeps_the_desired_routes_and_removes_them_on_shutdown() -> anyhow::Result<()> {
    if !require_root("route_reconciler_keeps_the_desired_routes_and_removes_them_on_shutdown") {
        return Ok(());
    }
    let ns = NetNs::new("rr")?;
    veth_in(&ns, "rr0", "rr1")?;
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.rr0.disable_ipv6=0"])?;
    ns.ip(&["addr", "add", "10.60.0.1/24", "dev", "rr0"])?;
    // A route of ours a crashed run left behind, and one of another daemon.
    ns.ip(&["route", "add", "10.66.0.0/16", "dev", "rr0", "proto", "156"])?;
    ns.ip(&[
        "route",
        "add",
        "10.67.0.0/16",
        "dev",
        "rr0",
        "proto",
        "static",
    ])?;

    let (runtime, reconciler) = reconciler_in(&ns)?;
    wait_for_routes(&ns, "the leftover route to go", &[])?;

    // (a) Three routes (one IPv6, one via a gateway); a pushed route loses 10.70/16 to the
    // configured one, and one waits for its device.
    let tunnel = RouteOwner::Tunnel { tunnel: "a".into() };
    let pushed = RouteOwner::Pushed { tunnel: "b".into() };
    let late = RouteOwner::Iroute {
        tunnel: "srv".into(),
        common_name: "late".into(),
    };
    let mut table = RouteTable::new();
    for (owner, routes) in [
        owned_by(
            &tunnel,
            vec![
                Route::new(tunnel.clone(), net("10.70.0.0/16"), "rr0"),
                Route::new(tunnel.clone(), net("10.71.0.0/16"), "rr0")
                    .with_gateway(IpAddr::from([10, 60, 0, 2]))
                    .with_metric(50),
                Route::new(tunnel.clone(), net("fd00:70::/64"), "rr0"),
            ],
        ),
        owned_by(
            &pushed,
            vec![Route::new(pushed.clone(), net("10.70.0.0/16"), "rr1")],
        ),
        owned_by(
            &late,
            vec![Route::new(late.clone(), net("10.72.0.0/16"), "rr9")],
        ),
    ] {
        table.replace_owner(owner, routes);
    }
    reconciler.set(table.desired());
    let three = [
        shown("10.70.0.0/16", "rr0", None, 0),
        shown("10.71.0.0/16", "rr0", Some("10.60.0.2"), 50),
        shown("fd00:70::/64", "rr0", None, 1024),
    ];
    wait_for_routes(&ns, "the three routes", &three)?;
    let stats = wait_for_stats(&reconciler, "3 installed, 1 unresolved", |s| {
        (s.installed, s.unresolved, s.failing) == (3, 1, 0)
    })?;
    assert!(stats.watching && stats.last_error.is_none(), "{stats:?}");

    // (b) Deleted behind the reconciler's back: it comes back.
    ns.ip(&["route", "del", "10.70.0.0/16", "dev", "rr0", "proto", "156"])?;
    ns.ip(&[
        "-6",
        "route",
        "del",
        "fd00:70::/64",
        "dev",
        "rr0",
        "proto",
        "156",
    ])?;
    wait_for_routes(&ns, "the deleted routes to come back", &three)?;

    // (c) The device of the waiting route appears (down), then comes up: the route follows.
    ns.ip(&["link", "add", "rr9", "type", "veth", "peer", "name", "rr8"])?;
    ns.ip(&["link", "set", "rr8", "up"])?;
    ns.ip(&["link", "set", "rr9", "up"])?;
    let mut four = three.to_vec();
    four.push(shown("10.72.0.0/16", "rr9", None, 0));
    wait_for_routes(&ns, "the route on the new device", &four)?;
    wait_for_stats(&reconciler, "4 installed", |s| {
        (s.installed, s.unresolved) == (4, 0)
    })?;
    // IPv4 drops routes through a link that goes down, without a notification: the link
    // change makes the route wait, and it comes back with the link.
    ns.ip(&["link", "set", "rr9", "down"])?;
    wait_for_stats(&reconciler, "the route on the downed link waiting", |s| {
        (s.installed, s.unresolved) == (3, 1)
    })?;
    wait_for_routes(&ns, "the three routes without rr9", &three)?;
    ns.ip(&["link", "set", "rr9", "up"])?;
    wait_for_routes(&ns, "the route on rr9 back up", &four)?;

    // (d) The tunnel keeps only its IPv6 route, with a metric: 10.71/16 goes, the IPv6 route
    // is replaced, and the pushed route takes 10.70/16 over on rr1.
    table.replace_owner(
        tunnel.clone(),
        [Route::new(tunnel.clone(), net("fd00:70::/64"), "rr0").with_metric(10)],
    );
    reconciler.set(table.desired());
    wait_for_routes(
        &ns,
        "the changed set",
        &[
            shown("10.70.0.0/16", "rr1", None, 0),
            shown("fd00:70::/64", "rr0", None, 10),
            shown("10.72.0.0/16", "rr9", None, 0),
        ],
    )?;

    // (e) Shutdown removes everything of ours, and nothing else.
    runtime.block_on(reconciler.shutdown())?;
    assert_eq!(our_routes(&ns)?, BTreeSet::new());
    let others = ip_json(&ns, &["route", "show", "proto", "static"])?;
    assert_eq!(others[0]["dst"], "10.67.0.0/16", "{others}");
    Ok(())
}

#[test]
fn route_reconciler_retries_a_refused_route_without_spinning_or_blocking_others(
) -> anyhow::Result<()> {
    if !require_root("route_reconciler_retries_a_refused_route_without_spinning_or_blocking_others")
    {
        return Ok(());
    }
    let ns = NetNs::new("rrf")?;
    veth_in(&ns, "rr0", "rr1")?;
    ns.ip(&["addr", "add", "10.60.0.1/24", "dev", "rr0"])?;
    let (runtime, reconciler) = reconciler_in(&ns)?;

    // (f) 192.0.2.1 is on no link of the namespace: the kernel refuses that route.
    let owner = RouteOwner::Tunnel { tunnel: "a".into() };
    let route = |destination: &str| Route::new(owner.clone(), net(destination), "rr0");
    let mut table = RouteTable::new();
    table.replace_owner(
        owner.clone(),
        [
            route("10.80.0.0/16"),
            route("10.81.0.0/16").with_gateway(IpAddr::from([10, 60, 0, 2])),
            route("10.82.0.0/16").with_gateway(IpAddr::from([192, 0, 2, 1])),
        ],
    );
    reconciler.set(table.desired());
    let good = [
        shown("10.80.0.0/16", "rr0", None, 0),
        shown("10.81.0.0/16", "rr0", Some("10.60.0.2"), 0),
    ];
    wait_for_routes(&ns, "the two routes the kernel takes", &good)?;
    let stats = wait_for_stats(&reconciler, "the refused route", |s| s.failing == 1)?;
    let error = stats.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("10.82.0.0/16") && error.contains("tunnel:a"),
        "{stats:?}"
    );
    assert_eq!((stats.installed, stats.unresolved), (2, 0), "{stats:?}");

    // Retried with backoff (100 ms, doubling), not in a loop: three more passes take at least
    // 100 + 200 + 400 ms minus the part of the first delay already gone.
    let started = Instant::now();
    let from = reconciler.stats().passes;
    let after = wait_for_stats(&reconciler, "three retries", |s| s.passes >= from + 3)?;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(500),
        "3 retries in {elapsed:?}"
    );
    assert!(after.passes <= from + 5, "{} passes", after.passes - from);

    // Other changes still go through while it fails.
    table.replace_owner(
        owner.clone(),
        [
            route("10.80.0.0/16"),
            route("10.81.0.0/16").with_gateway(IpAddr::from([10, 60, 0, 2])),
            route("10.82.0.0/16").with_gateway(IpAddr::from([192, 0, 2, 1])),
            route("10.83.0.0/16"),
        ],
    );
    reconciler.set(table.desired());
    let mut three = good.to_vec();
    three.push(shown("10.83.0.0/16", "rr0", None, 0));
    wait_for_routes(&ns, "the added route beside the refused one", &three)?;

    // The gateway becomes reachable: the address change brings the refused route in.
    ns.ip(&["addr", "add", "192.0.2.254/24", "dev", "rr0"])?;
    let mut four = three.clone();
    four.push(shown("10.82.0.0/16", "rr0", Some("192.0.2.1"), 0));
    wait_for_routes(&ns, "the route once its gateway is reachable", &four)?;
    let stats = wait_for_stats(&reconciler, "no failure left", |s| s.failing == 0)?;
    assert_eq!((stats.installed, stats.last_error), (4, None));

    runtime.block_on(reconciler.shutdown())?;
    assert_eq!(our_routes(&ns)?, BTreeSet::new());
    Ok(())
}
