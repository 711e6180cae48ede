//! Tier 3: the TC programs run by the kernel on crafted frames (BPF_PROG_TEST_RUN): tun source
//! policing, LAN steering and the WAN leak guard; allowed, dropped, malformed, truncated, IPv6
//! and fragments. Test runs hand TC programs an Ethernet frame; the programs read relative to the
//! network header, so the same code sees a bare IP packet on a real tun.
//!
//! Not reachable here: an IPv4/IPv6 ethertype with an L3 header cut short. The kernel's
//! `bpf_prog_test_run_skb` (net/bpf/test_run.c) refuses such input with EINVAL since 2026; on a
//! real tun it can occur (tun sets the protocol from the version nibble alone) and the programs
//! count it as malformed / unparsed. Header-length and version errors are covered below.

use std::net::IpAddr;

use aya::{
    maps::{
        lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues,
    },
    programs::{SchedClassifier, TestRun, TestRunOptions},
    util::nr_cpus,
    Ebpf,
};
use vpn_common::{
    leak::{LeakCounter, LEAK_COUNTERS_MAP, PROTECTED_MAP, TC_LEAK_PROGRAM},
    steer::{
        choose_link, flow_hash, link_id, FlowKey, Link, LinkGroup, SteerCounter, LINK_GROUPS_MAP,
        LINK_PACKETS_MAP, STEER_COUNTERS_MAP, STEER_ROUTES_MAP, TC_STEER_PROGRAM,
    },
    tun::{
        TunCounter, TunPrefixKey, TC_TUN_PROGRAM, TUN_ALLOWED_MAP, TUN_COUNTERS_MAP,
        TUN_IFINDEX_BITS,
    },
    user::{addr16, prefix_bits},
    wan::{PeerKey, WAN_PEERS_MAP},
    PrefixKey, IPPROTO_TCP, IPPROTO_UDP,
};
use vpn_daemon::io::ebpf::EBPF_OBJECT;
use vpn_tests::packet::{
    ipv6_extension_chain, ipv6_fragment_header, ipv6_options_header, IPPROTO_DSTOPTS,
    IPPROTO_FRAGMENT, IPPROTO_HOPOPTS,
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
/// Offset of `ingress_ifindex` in `struct __sk_buff` (uapi/linux/bpf.h).
const SKB_INGRESS_IFINDEX: usize = 36;
/// Offsets of `gso_segs` and `gso_size` in `struct __sk_buff` (uapi/linux/bpf.h).
const SKB_GSO_SEGS: usize = 164;
const SKB_GSO_SIZE: usize = 176;
/// `sizeof(struct __sk_buff)`.
const SKB_SIZE: usize = 192;

fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

fn ports(src: u16, dst: u16) -> Vec<u8> {
    let mut l4 = src.to_be_bytes().to_vec();
    l4.extend_from_slice(&dst.to_be_bytes());
    l4.extend_from_slice(&[0, 8, 0, 0]);
    l4
}

fn ipv4(src: &str, dst: &str, protocol: u8, fragment: u16, l4: &[u8]) -> Vec<u8> {
    let src: std::net::Ipv4Addr = src.parse().unwrap();
    let dst: std::net::Ipv4Addr = dst.parse().unwrap();
    let mut packet = vec![0x45, 0];
    packet.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 1]);
    packet.extend_from_slice(&fragment.to_be_bytes());
    packet.extend_from_slice(&[64, protocol, 0, 0]);
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.octets());
    packet.extend_from_slice(l4);
    ethernet(0x0800, &packet)
}

fn ipv6(src: &str, dst: &str, next_header: u8, l4: &[u8]) -> Vec<u8> {
    let src: std::net::Ipv6Addr = src.parse().unwrap();
    let dst: std::net::Ipv6Addr = dst.parse().unwrap();
    let mut packet = vec![0x60, 0, 0, 0];
    packet.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    packet.extend_from_slice(&[next_header, 64]);
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.octets());
    packet.extend_from_slice(l4);
    ethernet(0x86DD, &packet)
}

fn truncated(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    frame.truncate(len);
    frame
}

fn arp() -> Vec<u8> {
    ethernet(0x0806, &[0; 28])
}

fn load(ebpf: &mut Ebpf, name: &str) {
    let program: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
    program
        .load()
        .unwrap_or_else(|error| panic!("the verifier accepts {name}: {error:?}"));
}

/// Runs `program` on `frame` arriving on `ifindex`; returns the verdict.
fn run(ebpf: &Ebpf, program: &str, frame: &[u8], ifindex: u32) -> u32 {
    run_gso(ebpf, program, frame, ifindex, 0, 0)
}

/// Like [`run`] for a GSO packet of `gso_segs` segments of `gso_size` payload bytes (what GRO
/// on a NIC makes of a TCP flow).
fn run_gso(
    ebpf: &Ebpf,
    program: &str,
    frame: &[u8],
    ifindex: u32,
    gso_segs: u32,
    gso_size: u32,
) -> u32 {
    let mut skb = [0u8; SKB_SIZE];
    skb[SKB_INGRESS_IFINDEX..SKB_INGRESS_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
    skb[SKB_GSO_SEGS..SKB_GSO_SEGS + 4].copy_from_slice(&gso_segs.to_ne_bytes());
    skb[SKB_GSO_SIZE..SKB_GSO_SIZE + 4].copy_from_slice(&gso_size.to_ne_bytes());
    let program: &SchedClassifier = ebpf.program(program).unwrap().try_into().unwrap();
    program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&skb),
            ..Default::default()
        })
        .unwrap_or_else(|error| panic!("test run failed: {error:?}"))
        .return_value
}

fn counters(ebpf: &Ebpf, map: &str, count: usize) -> Vec<u64> {
    let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(ebpf.map(map).unwrap()).unwrap();
    (0..count as u32)
        .map(|index| map.get(&index, 0).unwrap().iter().sum())
        .collect()
}

/// Runs one case and checks the verdict and that exactly `expected` moved by one.
fn check(
    ebpf: &Ebpf,
    program: &str,
    counter_map: &str,
    names: &[&str],
    (name, frame, ifindex, expected, verdict): (&str, Vec<u8>, u32, usize, u32),
) {
    let before = counters(ebpf, counter_map, names.len());
    assert_eq!(
        run(ebpf, program, &frame, ifindex),
        verdict,
        "{name}: verdict"
    );
    let after = counters(ebpf, counter_map, names.len());
    for (index, counter) in names.iter().enumerate() {
        let delta = after[index] - before[index];
        assert_eq!(
            delta,
            u64::from(index == expected),
            "{name}: counter {counter} moved by {delta}"
        );
    }
}

/// `frame` is redirected by the steering program (one `redirected` count, nothing else) and lands
/// on the link with `link_ifindex`: its per-link packet counter moves by one.
fn assert_steered_to(ebpf: &Ebpf, names: &[&str], name: &str, frame: Vec<u8>, link_ifindex: u32) {
    let before = link_packets(ebpf, link_ifindex);
    check(
        ebpf,
        TC_STEER_PROGRAM,
        STEER_COUNTERS_MAP,
        names,
        (
            name,
            frame,
            1,
            SteerCounter::Redirected as usize,
            TC_ACT_REDIRECT,
        ),
    );
    assert_eq!(
        link_packets(ebpf, link_ifindex),
        before + 1,
        "{name} went to ifindex {link_ifindex}"
    );
}

fn prefix(text: &str) -> (IpAddr, u32) {
    let net: ipnet::IpNet = text.parse().unwrap();
    (net.addr(), prefix_bits(net.addr(), net.prefix_len()))
}

#[test]
fn tc_tun_ingress_drops_spoofed_inner_sources() {
    if !vpn_tests::require_root("tc_tun_ingress_drops_spoofed_inner_sources") {
        return;
    }
    let mut ebpf = Ebpf::load(EBPF_OBJECT).unwrap();
    {
        let mut allowed: LpmTrie<&mut MapData, TunPrefixKey, u8> =
            LpmTrie::try_from(ebpf.map_mut(TUN_ALLOWED_MAP).unwrap()).unwrap();
        for (ifindex, text) in [
            (7, "10.8.0.2/32"),
            (7, "192.168.50.0/24"),
            (7, "fd00:50::/64"),
            (8, "192.168.60.0/24"),
        ] {
            let (addr, bits) = prefix(text);
            let key = Key::new(
                TUN_IFINDEX_BITS + bits,
                TunPrefixKey::new(ifindex, addr16(addr)),
            );
            allowed.insert(&key, 1, 0).unwrap();
        }
    }
    load(&mut ebpf, TC_TUN_PROGRAM);
    let names: Vec<&str> = TunCounter::ALL
        .iter()
        .map(|counter| counter.name())
        .collect();
    let udp = ports(5000, 5201);
    use TunCounter::*;
    let cases = [
        (
            "peer tunnel address",
            ipv4("10.8.0.2", "10.1.0.1", IPPROTO_UDP, 0, &udp),
            7,
            Allowed,
            TC_ACT_OK,
        ),
        (
            "routed subnet (iroute)",
            ipv4("192.168.50.77", "10.1.0.1", IPPROTO_UDP, 0, &udp),
            7,
            Allowed,
            TC_ACT_OK,
        ),
        (
            "other tunnel's subnet",
            ipv4("192.168.60.1", "10.1.0.1", IPPROTO_UDP, 0, &udp),
            7,
            DroppedSpoofed,
            TC_ACT_SHOT,
        ),
        (
            "that subnet on its own tunnel",
            ipv4("192.168.60.1", "10.1.0.1", IPPROTO_UDP, 0, &udp),
            8,
            Allowed,
            TC_ACT_OK,
        ),
        (
            "neighbour of the peer address",
            ipv4("10.8.0.3", "10.1.0.1", IPPROTO_TCP, 0, &udp),
            7,
            DroppedSpoofed,
            TC_ACT_SHOT,
        ),
        (
            "tunnel with no prefixes",
            ipv4("10.8.0.2", "10.1.0.1", IPPROTO_UDP, 0, &udp),
            9,
            DroppedSpoofed,
            TC_ACT_SHOT,
        ),
        (
            "allowed non-first fragment",
            ipv4("192.168.50.1", "10.1.0.1", IPPROTO_UDP, 0x0020, &[0; 16]),
            7,
            Allowed,
            TC_ACT_OK,
        ),
        (
            "spoofed non-first fragment",
            ipv4("1.2.3.4", "10.1.0.1", IPPROTO_UDP, 0x0020, &[0; 16]),
            7,
            DroppedSpoofed,
            TC_ACT_SHOT,
        ),
        (
            "spoofed first fragment",
            ipv4("1.2.3.4", "10.1.0.1", IPPROTO_UDP, 0x2000, &udp),
            7,
            DroppedSpoofed,
            TC_ACT_SHOT,
        ),
        (
            "ipv6 allowed",
            ipv6("fd00:50::1", "fd00:1::1", IPPROTO_UDP, &udp),
            7,
            Allowed,
            TC_ACT_OK,
        ),
        (
            "ipv6 spoofed",
            ipv6("fd00:51::1", "fd00:1::1", IPPROTO_UDP, &udp),
            7,
            DroppedSpoofed,
            TC_ACT_SHOT,
        ),
        (
            "ipv4-mapped lookalike in ipv6",
            ipv6("::ffff:10.8.0.2", "fd00:1::1", IPPROTO_UDP, &udp),
            7,
            DroppedSpoofed,
            TC_ACT_SHOT,
        ),
        (
            "ipv4 ethertype, version 6",
            {
                let mut f = ipv4("10.8.0.2", "10.1.0.1", IPPROTO_UDP, 0, &udp);
                f[14] = 0x65;
                f
            },
            7,
            DroppedMalformed,
            TC_ACT_SHOT,
        ),
        (
            "ipv4 header length below 5",
            {
                let mut f = ipv4("10.8.0.2", "10.1.0.1", IPPROTO_UDP, 0, &udp);
                f[14] = 0x44;
                f
            },
            7,
            DroppedMalformed,
            TC_ACT_SHOT,
        ),
        ("arp", arp(), 7, DroppedNonIp, TC_ACT_SHOT),
    ];
    for (name, frame, ifindex, expected, verdict) in cases {
        check(
            &ebpf,
            TC_TUN_PROGRAM,
            TUN_COUNTERS_MAP,
            &names,
            (name, frame, ifindex, expected as usize, verdict),
        );
    }
}

fn words(addr: IpAddr) -> [u32; 4] {
    let bytes = addr16(addr);
    std::array::from_fn(|index| {
        u32::from_be_bytes(bytes[index * 4..index * 4 + 4].try_into().unwrap())
    })
}

fn link_packets(ebpf: &Ebpf, ifindex: u32) -> u64 {
    let map: PerCpuHashMap<&MapData, u32, u64> =
        PerCpuHashMap::try_from(ebpf.map(LINK_PACKETS_MAP).unwrap()).unwrap();
    map.get(&ifindex, 0).unwrap().iter().sum()
}

#[test]
fn tc_lan_ingress_steers_flows_by_rendezvous_hash() {
    if !vpn_tests::require_root("tc_lan_ingress_steers_flows_by_rendezvous_hash") {
        return;
    }
    let mut ebpf = Ebpf::load(EBPF_OBJECT).unwrap();
    let mut group = LinkGroup::default();
    for (slot, (name, weight)) in [("dc2-a", 1), ("dc2-b", 1), ("dc2-c", 2), ("dc2-d", 4)]
        .into_iter()
        .enumerate()
    {
        group.links[slot] = Link {
            ifindex: 21 + slot as u32,
            weight,
            id: link_id(name),
            mtu: 1000,
        };
        group.count += 1;
    }
    {
        let mut routes: LpmTrie<&mut MapData, PrefixKey, u32> =
            LpmTrie::try_from(ebpf.map_mut(STEER_ROUTES_MAP).unwrap()).unwrap();
        for (text, group_id) in [("10.2.0.0/16", 3), ("fd02::/32", 3), ("10.3.0.0/16", 5)] {
            let (addr, bits) = prefix(text);
            routes
                .insert(
                    &Key::new(bits, PrefixKey { addr: addr16(addr) }),
                    group_id,
                    0,
                )
                .unwrap();
        }
        let mut groups: Array<&mut MapData, LinkGroup> =
            Array::try_from(ebpf.map_mut(LINK_GROUPS_MAP).unwrap()).unwrap();
        groups.set(3, group, 0).unwrap();
        let mut packets: PerCpuHashMap<&mut MapData, u32, u64> =
            PerCpuHashMap::try_from(ebpf.map_mut(LINK_PACKETS_MAP).unwrap()).unwrap();
        for link in &group.links[..4] {
            let zeros = PerCpuValues::try_from(vec![0u64; nr_cpus().unwrap()]).unwrap();
            packets.insert(link.ifindex, zeros, 0).unwrap();
        }
    }
    load(&mut ebpf, TC_STEER_PROGRAM);
    let names: Vec<&str> = SteerCounter::ALL
        .iter()
        .map(|counter| counter.name())
        .collect();

    // Every flow lands on the link userspace predicts; shares follow the weights 1:1:2:4.
    let mut predicted = [0u64; 4];
    for flow in 0..400u16 {
        let (protocol, src, dst) = (
            if flow % 2 == 0 {
                IPPROTO_UDP
            } else {
                IPPROTO_TCP
            },
            "10.1.0.5",
            "10.2.7.9",
        );
        let key = FlowKey {
            src: words(src.parse().unwrap()),
            dst: words(dst.parse().unwrap()),
            src_port: 10_000 + flow,
            dst_port: 5201,
            protocol,
        };
        let slot = choose_link(&group, flow_hash(&key)).unwrap();
        let ifindex = group.links[slot].ifindex;
        assert_steered_to(
            &ebpf,
            &names,
            &format!("flow {flow}"),
            ipv4(src, dst, protocol, 0, &ports(10_000 + flow, 5201)),
            ifindex,
        );
        predicted[slot] += 1;
    }
    for (slot, share) in [50, 50, 100, 200].into_iter().enumerate() {
        assert!(predicted[slot].abs_diff(share) < 45, "shares {predicted:?}");
    }

    // Fragments hash without ports, so all fragments of a datagram share a link.
    let fragment_key = FlowKey {
        src: words("10.1.0.5".parse().unwrap()),
        dst: words("10.2.7.9".parse().unwrap()),
        protocol: IPPROTO_UDP,
        ..FlowKey::default()
    };
    let fragment_link = group.links[choose_link(&group, flow_hash(&fragment_key)).unwrap()].ifindex;
    for (name, frame) in [
        (
            "first fragment",
            ipv4("10.1.0.5", "10.2.7.9", IPPROTO_UDP, 0x2000, &ports(1, 2)),
        ),
        (
            "later fragment",
            ipv4("10.1.0.5", "10.2.7.9", IPPROTO_UDP, 0x0040, &[0; 8]),
        ),
    ] {
        assert_steered_to(&ebpf, &names, name, frame, fragment_link);
    }

    // IPv6 extension headers are walked to the ports: each flow lands on its predicted link.
    for flow in 0..24u16 {
        let key = FlowKey {
            src: words("fd01::5".parse().unwrap()),
            dst: words("fd02::9".parse().unwrap()),
            src_port: 7000 + flow,
            dst_port: 53,
            protocol: IPPROTO_UDP,
        };
        let ifindex = group.links[choose_link(&group, flow_hash(&key)).unwrap()].ifindex;
        let (first, chain) = ipv6_extension_chain(
            &[
                ipv6_options_header(IPPROTO_HOPOPTS),
                ipv6_options_header(IPPROTO_DSTOPTS),
            ],
            IPPROTO_UDP,
            &ports(7000 + flow, 53),
        );
        assert_steered_to(
            &ebpf,
            &names,
            &format!("ipv6 flow {flow} behind extension headers"),
            ipv6("fd01::5", "fd02::9", first, &chain),
            ifindex,
        );
    }
    // IPv6 fragments, first or later, hash alike (without ports), so a datagram stays on one link.
    let fragment_key = FlowKey {
        src: words("fd01::5".parse().unwrap()),
        dst: words("fd02::9".parse().unwrap()),
        protocol: IPPROTO_FRAGMENT,
        ..FlowKey::default()
    };
    let fragment_link = group.links[choose_link(&group, flow_hash(&fragment_key)).unwrap()].ifindex;
    for (name, offset, l4) in [
        ("ipv6 first fragment", 0, ports(1, 2)),
        ("ipv6 later fragment", 185, vec![0; 8]),
    ] {
        let (first, chain) =
            ipv6_extension_chain(&[ipv6_fragment_header(offset)], IPPROTO_UDP, &l4);
        assert_steered_to(
            &ebpf,
            &names,
            name,
            ipv6("fd01::5", "fd02::9", first, &chain),
            fragment_link,
        );
    }

    use SteerCounter::*;
    let udp = ports(4000, 53);
    let cases = [
        (
            "ipv6 steered",
            ipv6("fd01::5", "fd02::9", IPPROTO_UDP, &udp),
            Redirected,
            TC_ACT_REDIRECT,
        ),
        (
            "icmp steered on the 3-tuple",
            ipv4("10.1.0.5", "10.2.0.1", 1, 0, &[8, 0, 0, 0, 0, 0, 0, 0]),
            Redirected,
            TC_ACT_REDIRECT,
        ),
        (
            "udp cut before its ports",
            truncated(ipv4("10.1.0.5", "10.2.0.1", IPPROTO_UDP, 0, &udp), 14 + 22),
            Redirected,
            TC_ACT_REDIRECT,
        ),
        (
            "destination not steered",
            ipv4("10.1.0.5", "10.9.9.9", IPPROTO_UDP, 0, &udp),
            NotSteered,
            TC_ACT_OK,
        ),
        (
            "ipv6 not steered",
            ipv6("fd01::5", "fd03::9", IPPROTO_UDP, &udp),
            NotSteered,
            TC_ACT_OK,
        ),
        (
            "group without live links",
            ipv4("10.1.0.5", "10.3.0.1", IPPROTO_UDP, 0, &udp),
            NoLiveLink,
            TC_ACT_OK,
        ),
        ("arp", arp(), Unparsed, TC_ACT_OK),
        (
            "bigger than the link mtu",
            ipv4("10.1.0.5", "10.2.0.1", IPPROTO_UDP, 0, &[0; 1000]),
            TooBig,
            TC_ACT_OK,
        ),
        (
            "ttl 1",
            with_ttl(ipv4("10.1.0.5", "10.2.0.1", IPPROTO_UDP, 0, &udp), 1),
            ToStack,
            TC_ACT_OK,
        ),
        (
            "ipv6 hop limit 1",
            with_ttl(ipv6("fd01::5", "fd02::9", IPPROTO_UDP, &udp), 1),
            ToStack,
            TC_ACT_OK,
        ),
    ];
    for (name, frame, expected, verdict) in cases {
        check(
            &ebpf,
            TC_STEER_PROGRAM,
            STEER_COUNTERS_MAP,
            &names,
            (name, frame, 1, expected as usize, verdict),
        );
    }

    // A redirected packet leaves with its TTL one lower and a still valid header checksum (an
    // incremental update: checked by summing the header), its IPv6 hop limit one lower.
    let frame = with_checksum(ipv4("10.1.0.5", "10.2.0.1", IPPROTO_UDP, 0, &udp));
    let (verdict, out) = run_out(&ebpf, TC_STEER_PROGRAM, &frame);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out[14 + 8], 63, "ttl decremented");
    assert_eq!(header_sum(&out[14..34]), 0xffff, "checksum still valid");
    assert_eq!(out[..22], frame[..22], "nothing before the ttl changed");
    assert_eq!(out[23], frame[23], "protocol unchanged");
    assert_eq!(out[26..], frame[26..], "nothing after the checksum changed");
    let frame = ipv6("fd01::5", "fd02::9", IPPROTO_UDP, &udp);
    let (verdict, out) = run_out(&ebpf, TC_STEER_PROGRAM, &frame);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out[14 + 7], 63, "hop limit decremented");

    // A GRO'd TCP super-packet over the link MTU (1000) is steered when each of its segments
    // fits (20 + 20 + 900 bytes), and left to the stack when they do not (20 + 20 + 990).
    let mut tcp = ports(40000, 5201);
    tcp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    tcp.resize(20 + 2700, 0);
    let super_packet = ipv4("10.1.0.5", "10.2.0.1", IPPROTO_TCP, 0, &tcp);
    for (name, gso_size, expected, verdict) in [
        (
            "gso segments fit the link",
            900,
            Redirected,
            TC_ACT_REDIRECT,
        ),
        ("gso segments too big for the link", 990, TooBig, TC_ACT_OK),
        ("not gso and too big", 0, TooBig, TC_ACT_OK),
    ] {
        let before = counters(&ebpf, STEER_COUNTERS_MAP, names.len());
        let segments = 2700u32.checked_div(gso_size).map_or(0, |whole| whole + 1);
        assert_eq!(
            run_gso(
                &ebpf,
                TC_STEER_PROGRAM,
                &super_packet,
                1,
                segments,
                gso_size
            ),
            verdict,
            "{name}: verdict"
        );
        let after = counters(&ebpf, STEER_COUNTERS_MAP, names.len());
        assert_eq!(
            after[expected as usize] - before[expected as usize],
            1,
            "{name}"
        );
    }
}

fn with_ttl(mut frame: Vec<u8>, ttl: u8) -> Vec<u8> {
    let offset = if frame[12..14] == [0x86, 0xdd] {
        14 + 7
    } else {
        14 + 8
    };
    frame[offset] = ttl;
    frame
}

/// The ones'-complement sum of an IPv4 header (0xffff when its checksum is right).
fn header_sum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn with_checksum(mut frame: Vec<u8>) -> Vec<u8> {
    frame[24..26].copy_from_slice(&[0, 0]);
    let checksum = !header_sum(&frame[14..34]);
    frame[24..26].copy_from_slice(&checksum.to_be_bytes());
    assert_eq!(header_sum(&frame[14..34]), 0xffff);
    frame
}

/// Runs `program` on `frame` and returns the verdict and the packet as the program left it.
fn run_out(ebpf: &Ebpf, program: &str, frame: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 64];
    let program: &SchedClassifier = ebpf.program(program).unwrap().try_into().unwrap();
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .unwrap();
    out.truncate(frame.len());
    (result.return_value, out)
}

#[test]
fn tc_wan_egress_drops_protected_destinations() {
    if !vpn_tests::require_root("tc_wan_egress_drops_protected_destinations") {
        return;
    }
    let mut ebpf = Ebpf::load(EBPF_OBJECT).unwrap();
    {
        let mut protected: LpmTrie<&mut MapData, PrefixKey, u8> =
            LpmTrie::try_from(ebpf.map_mut(PROTECTED_MAP).unwrap()).unwrap();
        for text in ["10.2.0.0/16", "fd02::/32"] {
            let (addr, bits) = prefix(text);
            protected
                .insert(&Key::new(bits, PrefixKey { addr: addr16(addr) }), 1, 0)
                .unwrap();
        }
        let mut peers: HashMap<&mut MapData, PeerKey, u8> =
            HashMap::try_from(ebpf.map_mut(WAN_PEERS_MAP).unwrap()).unwrap();
        peers
            .insert(
                PeerKey {
                    addr: addr16("10.2.0.1".parse().unwrap()),
                },
                1,
                0,
            )
            .unwrap();
    }
    load(&mut ebpf, TC_LEAK_PROGRAM);
    let names: Vec<&str> = LeakCounter::ALL
        .iter()
        .map(|counter| counter.name())
        .collect();
    let udp = ports(4000, 5201);
    use LeakCounter::*;
    let cases = [
        (
            "protected destination",
            ipv4("192.0.2.1", "10.2.3.4", IPPROTO_UDP, 0, &udp),
            DroppedProtected,
            TC_ACT_SHOT,
        ),
        (
            "protected tcp",
            ipv4("192.0.2.1", "10.2.255.255", IPPROTO_TCP, 0, &udp),
            DroppedProtected,
            TC_ACT_SHOT,
        ),
        (
            "protected non-first fragment",
            ipv4("192.0.2.1", "10.2.3.4", IPPROTO_UDP, 0x0040, &[0; 8]),
            DroppedProtected,
            TC_ACT_SHOT,
        ),
        (
            "tunnel endpoint inside the prefix",
            ipv4("192.0.2.1", "10.2.0.1", IPPROTO_UDP, 0, &udp),
            Passed,
            TC_ACT_OK,
        ),
        (
            "unprotected destination",
            ipv4("192.0.2.1", "8.8.8.8", IPPROTO_UDP, 0, &udp),
            Passed,
            TC_ACT_OK,
        ),
        (
            "just outside the prefix",
            ipv4("192.0.2.1", "10.3.0.0", IPPROTO_UDP, 0, &udp),
            Passed,
            TC_ACT_OK,
        ),
        (
            "ipv6 protected",
            ipv6("2001:db8::1", "fd02::1", IPPROTO_UDP, &udp),
            DroppedProtected,
            TC_ACT_SHOT,
        ),
        (
            "ipv6 unprotected",
            ipv6("2001:db8::1", "2001:db8::2", IPPROTO_UDP, &udp),
            Passed,
            TC_ACT_OK,
        ),
        ("arp", arp(), Unparsed, TC_ACT_OK),
    ];
    for (name, frame, expected, verdict) in cases {
        check(
            &ebpf,
            TC_LEAK_PROGRAM,
            LEAK_COUNTERS_MAP,
            &names,
            (name, frame, 1, expected as usize, verdict),
        );
    }
}
