//! The daemon in a namespace with its XDP program on the WAN veth, counting real packets.
//!
//! ```text
//!   ns "site" (vpn-daemon)                 ns "peer" (traffic source)
//!   +----------------------+   veth    +----------------------+
//!   | wan0  10.77.0.1/24   |-----------| peer0  10.77.0.2/24  |
//!   | xdp_wan, udp/1194    |           | UDP, raw frames      |
//!   +----------------------+           +----------------------+
//! ```

use std::{
    net::UdpSocket,
    path::{Path, PathBuf},
    time::Duration,
};

use vpn_tests::{daemon::Daemon, packet::send_raw_frame, require_root, veth_pair, wait_for, NetNs};

const TUNNEL_PACKETS: u64 = 50;
const OTHER_PACKETS: u64 = 30;
const TRUNCATED_FRAMES: u64 = 5;

fn example_pki() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../vpn-daemon/examples/pki")
}

/// A node name unique to this test process (it names /sys/fs/bpf/<node>/, shared by all namespaces).
fn node_name(tag: &str) -> String {
    format!("t{}{tag}", std::process::id())
}

fn write_config(dir: &Path, node: &str, wan: &str, port: u16) -> PathBuf {
    let pki = example_pki();
    let config = format!(
        r#"version = 1
[node]
name = "{node}"
control_socket = "{socket}"
[pki]
ca = "{pki}/ca.crt"
cert = "{pki}/site-a.crt"
key = "{pki}/site-a.key"
[interfaces]
wan = "{wan}"
xdp_mode = "native"
[[tunnel]]
name = "clients"
role = "server"
local = "0.0.0.0:{port}"
server = "10.8.0.0/24"
"#,
        socket = dir.join("control.sock").display(),
        pki = pki.display(),
    );
    let path = dir.join("site.toml");
    std::fs::write(&path, config).expect("writing config");
    path
}

fn counter(status: &serde_json::Value, name: &str) -> u64 {
    status["wan"]["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("status has no counter {name}: {status}"))
}

fn send_udp(peer: &NetNs, port: u16, count: u64) {
    peer.run(move || {
        let socket = UdpSocket::bind("10.77.0.2:0")?;
        for sequence in 0..count {
            socket.send_to(&sequence.to_be_bytes(), ("10.77.0.1", port))?;
        }
        Ok(())
    })
    .expect("sending UDP from the peer namespace");
}

#[test]
fn daemon_counts_wan_traffic_reloads_and_cleans_up() {
    if !require_root("daemon_counts_wan_traffic_reloads_and_cleans_up") {
        return;
    }
    let site = NetNs::new("site").unwrap();
    let peer = NetNs::new("peer").unwrap();
    veth_pair(
        (&site, "wan0", "10.77.0.1/24"),
        (&peer, "peer0", "10.77.0.2/24"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = node_name("w");
    let config = write_config(dir.path(), &node, "wan0", 1194);
    let socket = dir.path().join("control.sock");
    let pin_dir = PathBuf::from("/sys/fs/bpf").join(&node);

    // eBPF logging on at debug (debug builds): each drop below must be logged with its source.
    let mut daemon = Daemon::start_binary(
        &vpn_tests::daemon::binary().unwrap(),
        "debug",
        &site,
        &config,
        &socket,
        &dir.path().join("daemon.log"),
    )
    .unwrap();
    let status = daemon.wait_ready(Duration::from_secs(20)).unwrap();
    assert_eq!(status["node"], node.as_str());
    assert_eq!(
        status["wan"]["xdp_mode"], "native",
        "veth supports native XDP"
    );
    assert_eq!(status["tunnels"][0]["name"], "clients");
    assert!(
        site.ip(&["link", "show", "wan0"]).unwrap().contains("xdp"),
        "XDP attached to wan0"
    );
    for map in ["TUNNEL_PORTS", "WAN_COUNTERS"] {
        assert!(
            pin_dir.join(map).exists(),
            "{map} pinned in {}",
            pin_dir.display()
        );
    }

    // Real traffic from the peer: datagrams to the tunnel port, to another port, and frames
    // whose IPv4 header is cut short.
    send_udp(&peer, 1194, TUNNEL_PACKETS);
    send_udp(&peer, 5000, OTHER_PACKETS);
    let truncated_ipv4: Vec<u8> = [[0xff; 6], [0x02; 6]]
        .concat()
        .into_iter()
        .chain([0x08, 0x00, 0x45, 0x00, 0x00])
        .collect();
    peer.run(move || {
        for _ in 0..TRUNCATED_FRAMES {
            send_raw_frame("peer0", &truncated_ipv4)?;
        }
        Ok(())
    })
    .unwrap();

    let status = wait_for("all packets counted", Duration::from_secs(10), || {
        let status = daemon.status().ok()?;
        (counter(&status, "dropped_unknown_source") >= TUNNEL_PACKETS
            && counter(&status, "other_ip") >= OTHER_PACKETS
            && counter(&status, "malformed") >= TRUNCATED_FRAMES)
            .then_some(status)
    })
    .unwrap_or_else(|error| panic!("{error:#}; daemon log:\n{}", daemon.log()));
    assert_eq!(counter(&status, "dropped_unknown_source"), TUNNEL_PACKETS);
    assert_eq!(counter(&status, "malformed"), TRUNCATED_FRAMES);
    assert!(
        counter(&status, "non_ip") >= 1,
        "ARP from the peer is counted as non-IP"
    );

    // Debug builds log each drop through aya-log, with its reason and source; release builds
    // have no eBPF logging at all.
    let dropped_line = "dropped a packet from unknown source ::ffff:10.77.0.2 to a tunnel port";
    if vpn_daemon::io::ebpf_log::EBPF_LOGGING {
        wait_for(
            "the drops in the daemon log",
            Duration::from_secs(10),
            || (daemon.log().matches(dropped_line).count() as u64 >= TUNNEL_PACKETS).then_some(()),
        )
        .unwrap_or_else(|error| panic!("{error:#}; daemon log:\n{}", daemon.log()));
        assert_eq!(
            daemon.log().matches(dropped_line).count() as u64,
            TUNNEL_PACKETS
        );
    } else {
        assert!(
            !daemon.log().contains("vpn_ebpf"),
            "release build logged from eBPF"
        );
    }

    // A reload with an invalid config is refused and the running config stays in force.
    let good_config = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        good_config.replace("role = \"server\"", "role = \"sever\""),
    )
    .unwrap();
    daemon.signal(libc::SIGHUP).unwrap();
    wait_for(
        "the refused reload to be logged",
        Duration::from_secs(10),
        || {
            daemon
                .log()
                .contains("SIGHUP: config refused")
                .then_some(())
        },
    )
    .unwrap();
    send_udp(&peer, 1194, 10);
    wait_for(
        "tunnel port still recognised",
        Duration::from_secs(10),
        || {
            (counter(&daemon.status().ok()?, "dropped_unknown_source") == TUNNEL_PACKETS + 10)
                .then_some(())
        },
    )
    .unwrap();

    // A valid reload moves the tunnel port: the map follows, the old port is plain traffic.
    write_config(dir.path(), &node, "wan0", 1195);
    daemon.signal(libc::SIGHUP).unwrap();
    wait_for("the reload to be applied", Duration::from_secs(10), || {
        daemon
            .log()
            .contains("SIGHUP: config reloaded")
            .then_some(())
    })
    .unwrap();
    send_udp(&peer, 1195, 7);
    send_udp(&peer, 1194, 3);
    wait_for("counts after the reload", Duration::from_secs(10), || {
        (counter(&daemon.status().ok()?, "dropped_unknown_source") == TUNNEL_PACKETS + 17)
            .then_some(())
    })
    .unwrap_or_else(|error| panic!("{error:#}; status: {:?}", daemon.status()));

    // SIGTERM: clean exit, and nothing of ours left in the kernel or on disk.
    let exit = daemon.stop(Duration::from_secs(10)).unwrap();
    assert!(
        exit.success(),
        "daemon exit status {exit}; log:\n{}",
        daemon.log()
    );
    assert!(
        !site.ip(&["link", "show", "wan0"]).unwrap().contains("xdp"),
        "XDP detached"
    );
    assert!(!pin_dir.exists(), "pins removed");
    assert!(!socket.exists(), "control socket removed");
}

#[test]
fn daemon_refuses_missing_wan_and_leaves_nothing_behind() {
    if !require_root("daemon_refuses_missing_wan_and_leaves_nothing_behind") {
        return;
    }
    let site = NetNs::new("nowan").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = node_name("m");
    let config = write_config(dir.path(), &node, "absent0", 1194);
    let socket = dir.path().join("control.sock");
    let mut daemon =
        Daemon::start(&site, &config, &socket, &dir.path().join("daemon.log")).unwrap();
    let error = daemon.wait_ready(Duration::from_secs(20)).unwrap_err();
    assert!(
        format!("{error:#}").contains("absent0"),
        "the error names the missing interface: {error:#}"
    );
    assert!(
        !PathBuf::from("/sys/fs/bpf").join(&node).exists(),
        "no pins left"
    );
    assert!(!socket.exists(), "no control socket left");
}
