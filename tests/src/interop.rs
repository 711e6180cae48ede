//! What the interop tests (tests/tunnel_openvpn.rs, tests/import_interop.rs) share: a two-site
//! topology, our daemon started from a config file, and assertions on its status and on traffic
//! through the tunnel. The helpers panic with the daemon's status and log on failure, as the
//! tests would.
//!
//! ```text
//!   ns "a"                                    ns "b"
//!   +-----------------------------+   veth   +-----------------------------+
//!   | a0  W.X.N.1/24              |----------| b0  W.X.N.2/24              |
//!   | lo  10.1.N.1 (site A LAN)   |          | lo  10.2.N.1 (site B LAN)   |
//!   +-----------------------------+          +-----------------------------+
//! ```
//! `W.X` is the test file's WAN prefix and `N` the test's own number, so tests may run in
//! parallel.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use crate::{
    daemon::Daemon,
    openvpn::{OpenVpnPeer, UP},
    traffic::{ping, wait_for_ping},
    veth_pair, wait_for, NetNs,
};

/// How long a tunnel may take to come up, ours or stock OpenVPN's.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Port both sites' OpenVPN endpoints use on the WAN.
const WAN_PORT: u16 = 1194;
/// Replies [`assert_pings`] wants.
const PINGS: u32 = 5;

/// Two namespaces joined by a veth pair (see the module diagram), and a temp dir for configs.
pub struct TwoSites {
    pub a: NetNs,
    pub b: NetNs,
    /// The test's number `N`, the third octet of every address.
    pub net: u8,
    pub dir: tempfile::TempDir,
    wan_prefix: [u8; 2],
}

impl TwoSites {
    /// Namespaces tagged `<tag>a` and `<tag>b`, WAN `<wan_prefix>.<net>.0/24` on a0/b0, and each
    /// site's "LAN" address (10.1.N.1, 10.2.N.1) on its loopback, for routed site links.
    pub fn new(tag: &str, wan_prefix: [u8; 2], net: u8) -> TwoSites {
        let a = NetNs::new(&format!("{tag}a")).expect("namespace a");
        let b = NetNs::new(&format!("{tag}b")).expect("namespace b");
        let [w, x] = wan_prefix;
        veth_pair(
            (&a, "a0", &format!("{w}.{x}.{net}.1/24")),
            (&b, "b0", &format!("{w}.{x}.{net}.2/24")),
        )
        .expect("veth pair");
        a.ip(&["addr", "add", &format!("10.1.{net}.1/32"), "dev", "lo"])
            .expect("site A LAN address");
        b.ip(&["addr", "add", &format!("10.2.{net}.1/32"), "dev", "lo"])
            .expect("site B LAN address");
        TwoSites {
            a,
            b,
            net,
            dir: tempfile::tempdir().expect("temp dir"),
            wan_prefix,
        }
    }

    /// Site A's WAN endpoint, `W.X.N.1:1194`.
    pub fn a_wan(&self) -> SocketAddr {
        self.wan(1)
    }

    /// Site B's WAN endpoint, `W.X.N.2:1194`.
    pub fn b_wan(&self) -> SocketAddr {
        self.wan(2)
    }

    fn wan(&self, host: u8) -> SocketAddr {
        let [w, x] = self.wan_prefix;
        SocketAddr::from(([w, x, self.net, host], WAN_PORT))
    }
}

/// An address literal the test wrote.
pub fn ip(text: &str) -> IpAddr {
    text.parse().expect("literal address")
}

/// Starts our daemon in `ns` from `config`, with its control socket `ctl.sock` and its log
/// `daemon.log` beside the config, and waits until it answers `status`.
pub fn start_daemon(ns: &NetNs, config: &Path) -> Daemon {
    let dir = config.parent().expect("config dir");
    let mut daemon = Daemon::start(ns, config, &dir.join("ctl.sock"), &dir.join("daemon.log"))
        .expect("starting vpn-daemon");
    daemon
        .wait_ready(Duration::from_secs(20))
        .unwrap_or_else(|error| {
            panic!(
                "daemon not ready: {error:#}\nconfig:\n{}",
                std::fs::read_to_string(config).unwrap_or_default()
            )
        });
    daemon
}

/// The state of our daemon's first tunnel ("established", "connecting", ...); empty if the
/// daemon does not answer.
pub fn tunnel_state(daemon: &Daemon) -> String {
    daemon
        .status()
        .ok()
        .and_then(|status| status["tunnels"][0]["state"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Waits until our daemon's first tunnel is established.
pub fn wait_established(daemon: &Daemon) {
    let result = wait_for("our tunnel to be established", HANDSHAKE_TIMEOUT, || {
        (tunnel_state(daemon) == "established").then_some(())
    });
    if let Err(error) = result {
        panic!(
            "{error:#}\nstatus: {:?}\nlog:\n{}",
            daemon.status(),
            daemon.log()
        );
    }
}

/// Waits until stock OpenVPN logs "Initialization Sequence Completed"; on failure shows our
/// daemon's log too, since ours is usually the reason.
pub fn wait_stock_up(stock: &OpenVpnPeer, ours: &Daemon) {
    stock
        .wait_for_log(UP, HANDSHAKE_TIMEOUT)
        .unwrap_or_else(|error| panic!("{error:#}\nours:\n{}", ours.log()));
}

/// Waits for `dst` to answer a ping from `from` (addresses and routes may still be going in),
/// then wants all of five more pings answered.
pub fn assert_pings(from: &NetNs, dst: &str) {
    wait_for_ping(from, ip(dst), Duration::from_secs(15))
        .unwrap_or_else(|error| panic!("no ping reply from {dst} in {}: {error:#}", from.name()));
    let result = ping(from, ip(dst), PINGS).expect("ping");
    assert_eq!(
        result.received,
        PINGS,
        "ping {dst} from {}: {result:?}",
        from.name()
    );
}

/// Pings `dst` from `ns` with source address `src`: LAN to LAN through a routed site link.
pub fn assert_lan_ping(ns: &NetNs, src: &str, dst: &str) {
    let output = ns
        .exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "-I", src, dst])
        .expect("LAN ping");
    assert!(
        output.status.success(),
        "LAN ping {src} -> {dst} in {}: {}",
        ns.name(),
        String::from_utf8_lossy(&output.stdout)
    );
}

/// The IPv4 address on device `dev` in `ns`.
pub fn tunnel_address(ns: &NetNs, dev: &str) -> String {
    let output = ns
        .ip(&["-4", "-o", "addr", "show", "dev", dev])
        .expect("ip addr");
    let inet = output
        .split_whitespace()
        .skip_while(|word| *word != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("no address on {dev}: {output}"));
    inet.split('/').next().unwrap_or_default().to_owned()
}
