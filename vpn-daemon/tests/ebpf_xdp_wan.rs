//! Tier 3: `xdp_wan` admission run by the kernel on crafted frames (BPF_PROG_TEST_RUN), one
//! branch per case, in order (the handshake bucket and the pending map carry state from case to
//! case). Each frame must get the expected verdict and bump exactly one counter, the expected one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use vpn_common::{
    user::addr16,
    wan::{
        AdmissionConfig, PeerKey, TunnelPortKey, WanCounter, ADMISSION_CONFIG_MAP, IPPROTO_TCP,
        IPPROTO_UDP, PORT_ACCEPTS_NEW_PEERS, PORT_LISTENING, TUNNEL_PORTS_MAP, WAN_COUNTERS_MAP,
        WAN_PEERS_MAP, XDP_WAN_PROGRAM,
    },
};
use vpn_daemon::io::{
    ebpf::EBPF_OBJECT,
    ebpf_log::{load_object, EbpfLogLevel, EbpfLogReader, EBPF_LOGGING},
};
use vpn_tests::packet::{
    ipv6_extension_chain, ipv6_fragment_header, ipv6_options_header, IPPROTO_AH, IPPROTO_DSTOPTS,
    IPPROTO_HOPOPTS, IPPROTO_ROUTING,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const IPPROTO_ICMP: u8 = 1;
/// A server port (accepts new peers), a p2p port with a fixed remote, a TCP server port.
const SERVER_PORT: u16 = 1194;
const P2P_PORT: u16 = 1195;
const TCP_PORT: u16 = 443;
const PEER: [u8; 4] = [10, 0, 0, 9];

fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A UDP header to `dst` followed by `payload`.
fn udp(dst: u16, payload: &[u8]) -> Vec<u8> {
    let mut l4 = 40000u16.to_be_bytes().to_vec();
    l4.extend_from_slice(&dst.to_be_bytes());
    l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(payload);
    l4
}

/// A 20-byte TCP header to `dst` with `flags`.
fn tcp(dst: u16, flags: u8) -> Vec<u8> {
    let mut l4 = 40000u16.to_be_bytes().to_vec();
    l4.extend_from_slice(&dst.to_be_bytes());
    l4.extend_from_slice(&[0; 8]); // seq, ack
    l4.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    l4
}

/// An OpenVPN packet: opcode/key id byte, then `rest_len` more bytes.
fn openvpn(opcode: u8, key_id: u8, rest_len: usize) -> Vec<u8> {
    let mut payload = vec![opcode << 3 | key_id];
    payload.resize(1 + rest_len, 0x11);
    payload
}

fn hard_reset_v2() -> Vec<u8> {
    openvpn(7, 0, 13)
}

fn ipv4(src: [u8; 4], protocol: u8, options_words: u8, fragment: u16, l4: &[u8]) -> Vec<u8> {
    let header_len = 20 + 4 * options_words as usize;
    let mut packet = vec![0x40 | (5 + options_words), 0];
    packet.extend_from_slice(&((header_len + l4.len()) as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 1]); // identification
    packet.extend_from_slice(&fragment.to_be_bytes());
    packet.extend_from_slice(&[64, protocol, 0, 0]);
    packet.extend_from_slice(&src);
    packet.extend_from_slice(&[10, 0, 0, 1]);
    packet.resize(header_len, 1); // options (NOP)
    packet.extend_from_slice(l4);
    ethernet(0x0800, &packet)
}

fn ipv6(src: Ipv6Addr, next_header: u8, l4: &[u8]) -> Vec<u8> {
    let mut packet = vec![0x60, 0, 0, 0];
    packet.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    packet.extend_from_slice(&[next_header, 64]);
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&[0xfd; 16]);
    packet.extend_from_slice(l4);
    ethernet(0x86DD, &packet)
}

/// An IPv6 packet with `extensions` between its fixed header and `protocol`'s `l4`.
fn ipv6_chain(src: Ipv6Addr, extensions: &[(u8, Vec<u8>)], protocol: u8, l4: &[u8]) -> Vec<u8> {
    let (first, chain) = ipv6_extension_chain(extensions, protocol, l4);
    ipv6(src, first, &chain)
}

fn peer_v6() -> Ipv6Addr {
    "fd00::9".parse().unwrap()
}

type Case = (&'static str, Vec<u8>, WanCounter);

fn cases() -> Vec<Case> {
    use WanCounter::*;
    let unknown = |n: u8| [10, 0, 0, n];
    let unknown_v6: Ipv6Addr = "fd00::66".parse().unwrap();
    let mut truncated_udp = ipv4(PEER, IPPROTO_UDP, 0, 0, &udp(SERVER_PORT, &[]));
    truncated_udp.truncate(14 + 20 + 3);
    let mut truncated_ipv4 = ipv4(PEER, IPPROTO_UDP, 0, 0, &udp(SERVER_PORT, &[]));
    truncated_ipv4.truncate(14 + 8);
    let mut truncated_ipv6 = ipv6(peer_v6(), IPPROTO_UDP, &udp(SERVER_PORT, &[]));
    truncated_ipv6.truncate(14 + 5);
    let mut bad_version = ipv4(PEER, IPPROTO_UDP, 0, 0, &udp(SERVER_PORT, &[]));
    bad_version[14] = 0x65;
    let mut short_ihl = ipv4(PEER, IPPROTO_UDP, 0, 0, &udp(SERVER_PORT, &[]));
    short_ihl[14] = 0x44;
    let data_v2 = openvpn(9, 0, 40);
    vec![
        // Known peers pass on every tunnel port, both families, both transports.
        (
            "peer udp to server port",
            ipv4(PEER, IPPROTO_UDP, 0, 0, &udp(SERVER_PORT, &data_v2)),
            TunnelFromPeer,
        ),
        (
            "peer udp to p2p port",
            ipv4(PEER, IPPROTO_UDP, 0, 0, &udp(P2P_PORT, &data_v2)),
            TunnelFromPeer,
        ),
        (
            "peer tcp to tcp port",
            ipv4(PEER, IPPROTO_TCP, 0, 0, &tcp(TCP_PORT, 0x10)),
            TunnelFromPeer,
        ),
        (
            "peer ipv4 with options",
            ipv4(PEER, IPPROTO_UDP, 2, 0, &udp(SERVER_PORT, &data_v2)),
            TunnelFromPeer,
        ),
        (
            "peer ipv6 udp",
            ipv6(peer_v6(), IPPROTO_UDP, &udp(SERVER_PORT, &data_v2)),
            TunnelFromPeer,
        ),
        // Unknown sources: data packets are dropped.
        (
            "unknown data packet",
            ipv4(unknown(2), IPPROTO_UDP, 0, 0, &udp(SERVER_PORT, &data_v2)),
            DroppedUnknownSource,
        ),
        (
            "unknown ipv6 data packet",
            ipv6(
                "fd00::2".parse().unwrap(),
                IPPROTO_UDP,
                &udp(SERVER_PORT, &data_v2),
            ),
            DroppedUnknownSource,
        ),
        (
            "unknown first fragment (MF)",
            ipv4(
                unknown(2),
                IPPROTO_UDP,
                0,
                0x2000,
                &udp(SERVER_PORT, &data_v2),
            ),
            DroppedUnknownSource,
        ),
        (
            "unknown hard reset to p2p port",
            ipv4(
                unknown(2),
                IPPROTO_UDP,
                0,
                0,
                &udp(P2P_PORT, &hard_reset_v2()),
            ),
            DroppedUnknownSource,
        ),
        (
            "hard reset with key id 1",
            ipv4(
                unknown(4),
                IPPROTO_UDP,
                0,
                0,
                &udp(SERVER_PORT, &openvpn(7, 1, 13)),
            ),
            DroppedUnknownSource,
        ),
        (
            "hard reset one byte too short",
            ipv4(
                unknown(4),
                IPPROTO_UDP,
                0,
                0,
                &udp(SERVER_PORT, &openvpn(7, 0, 12)),
            ),
            DroppedUnknownSource,
        ),
        (
            "server hard reset opcode (8)",
            ipv4(
                unknown(4),
                IPPROTO_UDP,
                0,
                0,
                &udp(SERVER_PORT, &openvpn(8, 0, 13)),
            ),
            DroppedUnknownSource,
        ),
        (
            "unknown tcp ack",
            ipv4(unknown(6), IPPROTO_TCP, 0, 0, &tcp(TCP_PORT, 0x10)),
            DroppedUnknownSource,
        ),
        (
            "unknown tcp syn-ack",
            ipv4(unknown(6), IPPROTO_TCP, 0, 0, &tcp(TCP_PORT, 0x12)),
            DroppedUnknownSource,
        ),
        // First handshake packets spend the burst of 2 tokens...
        (
            "hard reset v2 admitted",
            ipv4(
                unknown(3),
                IPPROTO_UDP,
                0,
                0,
                &udp(SERVER_PORT, &hard_reset_v2()),
            ),
            HandshakeAdmitted,
        ),
        (
            "its source continues the handshake",
            ipv4(
                unknown(3),
                IPPROTO_UDP,
                0,
                0,
                &udp(SERVER_PORT, &openvpn(4, 0, 30)),
            ),
            HandshakeInProgress,
        ),
        (
            "its source repeats the reset",
            ipv4(
                unknown(3),
                IPPROTO_UDP,
                0,
                0,
                &udp(SERVER_PORT, &hard_reset_v2()),
            ),
            HandshakeInProgress,
        ),
        (
            "tcp syn admitted",
            ipv4(unknown(5), IPPROTO_TCP, 0, 0, &tcp(TCP_PORT, 0x02)),
            HandshakeAdmitted,
        ),
        (
            "its tcp ack continues",
            ipv4(unknown(5), IPPROTO_TCP, 0, 0, &tcp(TCP_PORT, 0x10)),
            HandshakeInProgress,
        ),
        // ...and the next is over the rate (0 per second after the burst).
        (
            "hard reset v3 over the rate",
            ipv4(
                unknown(7),
                IPPROTO_UDP,
                0,
                0,
                &udp(SERVER_PORT, &openvpn(10, 0, 40)),
            ),
            DroppedHandshakeRate,
        ),
        (
            "ipv6 hard reset over the rate",
            ipv6(
                "fd00::7".parse().unwrap(),
                IPPROTO_UDP,
                &udp(SERVER_PORT, &hard_reset_v2()),
            ),
            DroppedHandshakeRate,
        ),
        // Not for a tunnel port: untouched.
        (
            "udp to the tcp port",
            ipv4(unknown(2), IPPROTO_UDP, 0, 0, &udp(TCP_PORT, &data_v2)),
            OtherIp,
        ),
        (
            "tcp to the udp port",
            ipv4(unknown(2), IPPROTO_TCP, 0, 0, &tcp(SERVER_PORT, 0x10)),
            OtherIp,
        ),
        (
            "udp to another port",
            ipv4(unknown(2), IPPROTO_UDP, 0, 0, &udp(53, &data_v2)),
            OtherIp,
        ),
        (
            "icmp",
            ipv4(unknown(2), IPPROTO_ICMP, 0, 0, &[8, 0, 0, 0, 0, 0, 0, 0]),
            OtherIp,
        ),
        (
            "non-first fragment",
            ipv4(
                unknown(2),
                IPPROTO_UDP,
                0,
                0x0010,
                &udp(SERVER_PORT, &data_v2),
            ),
            OtherIp,
        ),
        // IPv6 extension headers are walked to the transport header.
        (
            "ipv6 hop-by-hop header before a peer's udp",
            ipv6_chain(
                peer_v6(),
                &[ipv6_options_header(IPPROTO_HOPOPTS)],
                IPPROTO_UDP,
                &udp(SERVER_PORT, &data_v2),
            ),
            TunnelFromPeer,
        ),
        (
            "ipv6 hop-by-hop, routing, destination options before an unknown source's udp",
            ipv6_chain(
                unknown_v6,
                &[
                    ipv6_options_header(IPPROTO_HOPOPTS),
                    (IPPROTO_ROUTING, vec![0, 0, 0, 0, 0, 0, 0]),
                    ipv6_options_header(IPPROTO_DSTOPTS),
                ],
                IPPROTO_UDP,
                &udp(SERVER_PORT, &data_v2),
            ),
            DroppedUnknownSource,
        ),
        (
            "ipv6 authentication header before an unknown source's udp",
            ipv6_chain(
                unknown_v6,
                &[(IPPROTO_AH, {
                    // Payload length 4: (4 + 2) * 4 = 24 bytes in all.
                    let mut body = vec![4];
                    body.resize(23, 0xa5);
                    body
                })],
                IPPROTO_UDP,
                &udp(SERVER_PORT, &data_v2),
            ),
            DroppedUnknownSource,
        ),
        (
            "ipv6 first fragment is judged on its port",
            ipv6_chain(
                unknown_v6,
                &[ipv6_fragment_header(0)],
                IPPROTO_UDP,
                &udp(SERVER_PORT, &data_v2),
            ),
            DroppedUnknownSource,
        ),
        (
            "ipv6 later fragment has no port",
            ipv6_chain(
                unknown_v6,
                &[ipv6_fragment_header(185)],
                IPPROTO_UDP,
                &data_v2,
            ),
            OtherIp,
        ),
        (
            "ipv6 six extension headers are walked",
            ipv6_chain(
                unknown_v6,
                &vec![ipv6_options_header(IPPROTO_DSTOPTS); 6],
                IPPROTO_UDP,
                &udp(SERVER_PORT, &data_v2),
            ),
            DroppedUnknownSource,
        ),
        (
            "ipv6 seven extension headers are too many",
            ipv6_chain(
                unknown_v6,
                &vec![ipv6_options_header(IPPROTO_DSTOPTS); 7],
                IPPROTO_UDP,
                &udp(SERVER_PORT, &data_v2),
            ),
            DroppedLongHeaderChain,
        ),
        (
            "ipv6 extension header past the end",
            ipv6_chain(
                unknown_v6,
                &[
                    ipv6_options_header(IPPROTO_HOPOPTS),
                    (IPPROTO_DSTOPTS, vec![200]),
                ],
                IPPROTO_UDP,
                &[],
            ),
            Malformed,
        ),
        (
            "ipv6 esp is not walked",
            ipv6_chain(unknown_v6, &[], 50, &udp(SERVER_PORT, &data_v2)),
            OtherIp,
        ),
        (
            "ipv6 udp to another port",
            ipv6("fd00::2".parse().unwrap(), IPPROTO_UDP, &udp(53, &data_v2)),
            OtherIp,
        ),
        // Malformed and non-IP: passed and counted.
        ("ipv4 header length below 5 words", short_ihl, Malformed),
        ("ipv4 ethertype with version 6", bad_version, Malformed),
        ("ipv4 header cut short", truncated_ipv4, Malformed),
        ("udp header cut before the port", truncated_udp, Malformed),
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

/// The token bucket is per CPU: keep every test run on one CPU.
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity only touch `set`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

fn set_admission(ebpf: &mut Ebpf, config: AdmissionConfig) {
    let mut map: Array<&mut MapData, AdmissionConfig> =
        Array::try_from(ebpf.map_mut(ADMISSION_CONFIG_MAP).unwrap()).unwrap();
    map.set(0, config, 0).unwrap();
}

fn run_case(ebpf: &Ebpf, (name, frame, expected): &Case) {
    let before = counters(ebpf);
    let program: &Xdp = ebpf.program(XDP_WAN_PROGRAM).unwrap().try_into().unwrap();
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ..Default::default()
        })
        .unwrap_or_else(|error| panic!("{name}: test run failed: {error}"));
    let dropped = matches!(
        expected,
        WanCounter::DroppedHandshakeRate
            | WanCounter::DroppedUnknownSource
            | WanCounter::DroppedLongHeaderChain
    );
    let verdict = if dropped { XDP_DROP } else { XDP_PASS };
    assert_eq!(result.return_value, verdict, "{name}: verdict");
    let after = counters(ebpf);
    for counter in WanCounter::ALL {
        let delta = after[counter as usize] - before[counter as usize];
        let want = u64::from(counter == *expected);
        assert_eq!(
            delta,
            want,
            "{name}: counter {} moved by {delta}",
            counter.name()
        );
    }
}

#[test]
fn xdp_wan_admits_peers_and_rate_limited_handshakes_only() {
    if !vpn_tests::require_root("xdp_wan_admits_peers_and_rate_limited_handshakes_only") {
        return;
    }
    pin_to_cpu0();
    // Every log call live (debug builds), so the verifier checks the logging paths too.
    let mut ebpf = load_object(EBPF_OBJECT, EbpfLogLevel::Trace).expect("loading the eBPF object");
    {
        let mut ports: HashMap<&mut MapData, TunnelPortKey, u8> =
            HashMap::try_from(ebpf.map_mut(TUNNEL_PORTS_MAP).unwrap()).unwrap();
        let open = PORT_LISTENING | PORT_ACCEPTS_NEW_PEERS;
        ports
            .insert(TunnelPortKey::new(IPPROTO_UDP, SERVER_PORT), open, 0)
            .unwrap();
        ports
            .insert(TunnelPortKey::new(IPPROTO_UDP, P2P_PORT), PORT_LISTENING, 0)
            .unwrap();
        ports
            .insert(TunnelPortKey::new(IPPROTO_TCP, TCP_PORT), open, 0)
            .unwrap();
    }
    {
        let mut peers: HashMap<&mut MapData, PeerKey, u8> =
            HashMap::try_from(ebpf.map_mut(WAN_PEERS_MAP).unwrap()).unwrap();
        for peer in [IpAddr::V4(Ipv4Addr::from(PEER)), IpAddr::V6(peer_v6())] {
            peers.insert(PeerKey { addr: addr16(peer) }, 1, 0).unwrap();
        }
    }
    set_admission(
        &mut ebpf,
        AdmissionConfig {
            handshakes_per_sec_per_cpu: 0,
            handshake_burst: 2,
            pending_ttl_ns: 60_000_000_000,
        },
    );
    let program: &mut Xdp = ebpf
        .program_mut(XDP_WAN_PROGRAM)
        .unwrap()
        .try_into()
        .unwrap();
    program.load().expect("the verifier accepts xdp_wan");

    for case in cases() {
        run_case(&ebpf, &case);
    }

    // A fast refill admits again; with a zero time-to-live the admitted source gets no grace.
    set_admission(
        &mut ebpf,
        AdmissionConfig {
            handshakes_per_sec_per_cpu: 1_000_000,
            handshake_burst: 5,
            pending_ttl_ns: 0,
        },
    );
    std::thread::sleep(std::time::Duration::from_millis(1));
    let source = [10, 0, 0, 8];
    run_case(
        &ebpf,
        &(
            "refilled bucket admits",
            ipv4(
                source,
                IPPROTO_UDP,
                0,
                0,
                &udp(SERVER_PORT, &hard_reset_v2()),
            ),
            WanCounter::HandshakeAdmitted,
        ),
    );
    run_case(
        &ebpf,
        &(
            "expired pending source is unknown again",
            ipv4(
                source,
                IPPROTO_UDP,
                0,
                0,
                &udp(SERVER_PORT, &openvpn(4, 0, 30)),
            ),
            WanCounter::DroppedUnknownSource,
        ),
    );
}

/// The per-packet cost of the drop path, measured by the kernel (BPF_PROG_TEST_RUN with repeat):
/// `cargo test -p vpn-daemon --test ebpf_xdp_wan xdp_wan_drop_cost -- --nocapture`.
#[test]
fn xdp_wan_drop_cost() {
    if !vpn_tests::require_root("xdp_wan_drop_cost") {
        return;
    }
    // Off is what a release build does (its object has no log calls at all); debug builds also
    // show what logging every drop costs (the ring buffer fills, then each reserve fails).
    let levels: &[EbpfLogLevel] = if EBPF_LOGGING {
        &[EbpfLogLevel::Off, EbpfLogLevel::Debug]
    } else {
        &[EbpfLogLevel::Off]
    };
    for &level in levels {
        let mut ebpf = load_object(EBPF_OBJECT, level).expect("loading the eBPF object");
        {
            let mut ports: HashMap<&mut MapData, TunnelPortKey, u8> =
                HashMap::try_from(ebpf.map_mut(TUNNEL_PORTS_MAP).unwrap()).unwrap();
            ports
                .insert(
                    TunnelPortKey::new(IPPROTO_UDP, SERVER_PORT),
                    PORT_LISTENING,
                    0,
                )
                .unwrap();
        }
        let program: &mut Xdp = ebpf
            .program_mut(XDP_WAN_PROGRAM)
            .unwrap()
            .try_into()
            .unwrap();
        program.load().unwrap();
        let frame = ipv4(
            [10, 0, 0, 2],
            IPPROTO_UDP,
            0,
            0,
            &udp(SERVER_PORT, &openvpn(9, 0, 100)),
        );
        let repeat = 1_000_000;
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                repeat,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(result.return_value, XDP_DROP);
        let ns_per_packet = result.duration.as_nanos() as f64;
        eprintln!(
            "xdp_wan drop path, eBPF log level {level:?}: {ns_per_packet:.0} ns per packet in the kernel (BPF_PROG_TEST_RUN, repeat {repeat}), {:.1} Mpps per core",
            1e3 / ns_per_packet.max(1.0)
        );
        let counted: u64 = counters(&ebpf)[WanCounter::DroppedUnknownSource as usize];
        assert_eq!(counted, u64::from(repeat), "every repetition counted");
    }
}

/// Collects the log records the programs send, as the daemon's tracing forwarder would see them.
#[derive(Clone, Default)]
struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<(log::Level, String)>>>);

impl log::Log for CapturedLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let line = format!("{}: {}", record.target(), record.args());
        self.0.lock().unwrap().push((record.level(), line));
    }
    fn flush(&self) {}
}

/// Debug builds log each drop with its reason and source, at the level the daemon asks for; a
/// release build's object carries no log ring buffer at all.
#[test]
fn xdp_wan_logs_drops_in_debug_builds_only() {
    if !vpn_tests::require_root("xdp_wan_logs_drops_in_debug_builds_only") {
        return;
    }
    let unknown_source = ipv4(
        [192, 0, 2, 77],
        IPPROTO_UDP,
        0,
        0,
        &udp(SERVER_PORT, &openvpn(9, 0, 100)),
    );
    let handshake = ipv4(
        [192, 0, 2, 78],
        IPPROTO_UDP,
        0,
        0,
        &udp(SERVER_PORT, &hard_reset_v2()),
    );
    let run = |level: EbpfLogLevel| -> Option<Vec<(log::Level, String)>> {
        let mut ebpf = load_object(EBPF_OBJECT, level).expect("loading the eBPF object");
        {
            let mut ports: HashMap<&mut MapData, TunnelPortKey, u8> =
                HashMap::try_from(ebpf.map_mut(TUNNEL_PORTS_MAP).unwrap()).unwrap();
            let open = PORT_LISTENING | PORT_ACCEPTS_NEW_PEERS;
            ports
                .insert(TunnelPortKey::new(IPPROTO_UDP, SERVER_PORT), open, 0)
                .unwrap();
        }
        set_admission(
            &mut ebpf,
            AdmissionConfig {
                handshakes_per_sec_per_cpu: 0,
                handshake_burst: 1,
                pending_ttl_ns: 0,
            },
        );
        let captured = CapturedLog::default();
        let reader = EbpfLogReader::take(&mut ebpf, captured.clone()).unwrap();
        let program: &mut Xdp = ebpf
            .program_mut(XDP_WAN_PROGRAM)
            .unwrap()
            .try_into()
            .unwrap();
        program.load().unwrap();
        for frame in [&unknown_source, &handshake] {
            let result = program
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    ..Default::default()
                })
                .unwrap();
            assert_eq!(
                result.return_value,
                if frame == &handshake {
                    XDP_PASS
                } else {
                    XDP_DROP
                }
            );
        }
        let mut reader = reader?;
        reader.flush();
        let records = captured.0.lock().unwrap().clone();
        Some(records)
    };

    if !EBPF_LOGGING {
        assert!(run(EbpfLogLevel::Trace).is_none());
        let ebpf = load_object(EBPF_OBJECT, EbpfLogLevel::Off).unwrap();
        assert!(
            ebpf.maps().all(|(name, _)| name != "AYA_LOGS"),
            "a release object must not carry the log ring buffer"
        );
        eprintln!("release build: no eBPF logging, as intended");
        return;
    }
    let trace = run(EbpfLogLevel::Trace).expect("debug builds log");
    assert_eq!(
        trace,
        vec![
            (
                log::Level::Debug,
                "vpn_ebpf::xdp_wan: xdp_wan: dropped a packet from unknown source ::ffff:192.0.2.77 to a tunnel port"
                    .to_owned()
            ),
            (
                log::Level::Trace,
                "vpn_ebpf::xdp_wan: xdp_wan: admitted a first handshake packet from ::ffff:192.0.2.78"
                    .to_owned()
            ),
        ]
    );
    // At debug the admission (trace) is not logged; at the default level (info) nothing is.
    let debug = run(EbpfLogLevel::Debug).unwrap();
    assert_eq!(debug, trace[..1].to_vec());
    assert_eq!(run(EbpfLogLevel::Info).unwrap(), vec![]);
}
