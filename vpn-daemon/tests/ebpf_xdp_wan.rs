//! Tier 3: `xdp_wan` run by the kernel on crafted frames (BPF_PROG_TEST_RUN), one branch per case.
//! Each frame must pass (XDP_PASS) and bump exactly one counter, the expected one.

use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use vpn_common::wan::{
    TunnelPortKey, WanCounter, IPPROTO_TCP, IPPROTO_UDP, TUNNEL_PORTS_MAP, WAN_COUNTERS_MAP,
    XDP_WAN_PROGRAM,
};
use vpn_daemon::io::ebpf::EBPF_OBJECT;

const XDP_PASS: u32 = 2;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_HOPOPTS: u8 = 0;

fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Source and destination ports followed by 4 more bytes (UDP length+checksum or TCP seq).
fn ports(dst: u16) -> Vec<u8> {
    let mut l4 = 40000u16.to_be_bytes().to_vec();
    l4.extend_from_slice(&dst.to_be_bytes());
    l4.extend_from_slice(&[0; 4]);
    l4
}

fn ipv4(protocol: u8, options_words: u8, fragment: u16, l4: &[u8]) -> Vec<u8> {
    let header_len = 20 + 4 * options_words as usize;
    let mut packet = vec![0x40 | (5 + options_words), 0];
    packet.extend_from_slice(&((header_len + l4.len()) as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 1]); // identification
    packet.extend_from_slice(&fragment.to_be_bytes());
    packet.extend_from_slice(&[64, protocol, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1]);
    packet.resize(header_len, 1); // options (NOP)
    packet.extend_from_slice(l4);
    ethernet(0x0800, &packet)
}

fn ipv6(next_header: u8, l4: &[u8]) -> Vec<u8> {
    let mut packet = vec![0x60, 0, 0, 0];
    packet.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    packet.extend_from_slice(&[next_header, 64]);
    packet.extend_from_slice(&[0xfd; 32]); // source and destination
    packet.extend_from_slice(l4);
    ethernet(0x86DD, &packet)
}

fn cases() -> Vec<(&'static str, Vec<u8>, WanCounter)> {
    use WanCounter::*;
    let mut truncated_udp = ipv4(IPPROTO_UDP, 0, 0, &ports(1194));
    truncated_udp.truncate(14 + 20 + 3);
    let mut truncated_ipv4 = ipv4(IPPROTO_UDP, 0, 0, &ports(1194));
    truncated_ipv4.truncate(14 + 8);
    let mut truncated_ipv6 = ipv6(IPPROTO_UDP, &ports(1194));
    truncated_ipv6.truncate(14 + 5);
    let mut bad_version = ipv4(IPPROTO_UDP, 0, 0, &ports(1194));
    bad_version[14] = 0x65;
    let mut short_ihl = ipv4(IPPROTO_UDP, 0, 0, &ports(1194));
    short_ihl[14] = 0x44;
    vec![
        (
            "ipv4 udp to tunnel port",
            ipv4(IPPROTO_UDP, 0, 0, &ports(1194)),
            TunnelPacket,
        ),
        (
            "ipv4 tcp to tunnel port",
            ipv4(IPPROTO_TCP, 0, 0, &ports(443)),
            TunnelPacket,
        ),
        (
            "ipv4 udp to the tcp tunnel port",
            ipv4(IPPROTO_UDP, 0, 0, &ports(443)),
            OtherIp,
        ),
        (
            "ipv4 tcp to the udp tunnel port",
            ipv4(IPPROTO_TCP, 0, 0, &ports(1194)),
            OtherIp,
        ),
        (
            "ipv4 udp to another port",
            ipv4(IPPROTO_UDP, 0, 0, &ports(53)),
            OtherIp,
        ),
        (
            "ipv4 icmp",
            ipv4(IPPROTO_ICMP, 0, 0, &[8, 0, 0, 0, 0, 0, 0, 0]),
            OtherIp,
        ),
        (
            "ipv4 with options, udp to tunnel port",
            ipv4(IPPROTO_UDP, 2, 0, &ports(1194)),
            TunnelPacket,
        ),
        (
            "ipv4 first fragment (MF)",
            ipv4(IPPROTO_UDP, 0, 0x2000, &ports(1194)),
            TunnelPacket,
        ),
        (
            "ipv4 non-first fragment",
            ipv4(IPPROTO_UDP, 0, 0x0010, &ports(1194)),
            OtherIp,
        ),
        ("ipv4 header length below 5 words", short_ihl, Malformed),
        ("ipv4 ethertype with version 6", bad_version, Malformed),
        ("ipv4 header cut short", truncated_ipv4, Malformed),
        (
            "ipv4 udp header cut before the port",
            truncated_udp,
            Malformed,
        ),
        (
            "ipv6 udp to tunnel port",
            ipv6(IPPROTO_UDP, &ports(1194)),
            TunnelPacket,
        ),
        (
            "ipv6 tcp to tunnel port",
            ipv6(IPPROTO_TCP, &ports(443)),
            TunnelPacket,
        ),
        (
            "ipv6 udp to another port",
            ipv6(IPPROTO_UDP, &ports(53)),
            OtherIp,
        ),
        // Extension headers are not walked yet: such packets are plain IP traffic.
        (
            "ipv6 hop-by-hop header first",
            ipv6(IPPROTO_HOPOPTS, &ports(1194)),
            OtherIp,
        ),
        ("ipv6 header cut short", truncated_ipv6, Malformed),
        ("arp", ethernet(0x0806, &[0; 28]), NonIp),
        ("bare ethernet header", ethernet(0x88cc, &[]), NonIp),
    ]
}

fn counters(ebpf: &Ebpf) -> Vec<u64> {
    let map: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(ebpf.map(WAN_COUNTERS_MAP).unwrap()).unwrap();
    WanCounter::ALL
        .iter()
        .map(|&counter| map.get(&(counter as u32), 0).unwrap().iter().sum())
        .collect()
}

#[test]
fn xdp_wan_classifies_every_branch() {
    if !vpn_tests::require_root("xdp_wan_classifies_every_branch") {
        return;
    }
    let mut ebpf = Ebpf::load(EBPF_OBJECT).expect("loading the eBPF object");
    {
        let mut ports: HashMap<&mut MapData, TunnelPortKey, u8> =
            HashMap::try_from(ebpf.map_mut(TUNNEL_PORTS_MAP).unwrap()).unwrap();
        ports
            .insert(TunnelPortKey::new(IPPROTO_UDP, 1194), 1, 0)
            .unwrap();
        ports
            .insert(TunnelPortKey::new(IPPROTO_TCP, 443), 1, 0)
            .unwrap();
    }
    let program: &mut Xdp = ebpf
        .program_mut(XDP_WAN_PROGRAM)
        .unwrap()
        .try_into()
        .unwrap();
    program.load().expect("the verifier accepts xdp_wan");

    for (name, frame, expected) in cases() {
        let before = counters(&ebpf);
        let program: &Xdp = ebpf.program(XDP_WAN_PROGRAM).unwrap().try_into().unwrap();
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                ..Default::default()
            })
            .unwrap_or_else(|error| panic!("{name}: test run failed: {error}"));
        assert_eq!(result.return_value, XDP_PASS, "{name}: verdict");
        let after = counters(&ebpf);
        for counter in WanCounter::ALL {
            let delta = after[counter as usize] - before[counter as usize];
            let want = u64::from(counter == expected);
            assert_eq!(
                delta,
                want,
                "{name}: counter {} moved by {delta}",
                counter.name()
            );
        }
    }
}
