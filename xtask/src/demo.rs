//! `cargo xtask demo`: the daemon with an embedded site config in a network namespace, real
//! traffic from a peer namespace, its status before and after, then a clean shutdown.
//!
//! ```text
//!   ns site (vpn-daemon, XDP on wan0)  ---- veth ----  ns peer (sends traffic)
//!   wan0 10.77.0.1/24                                  peer0 10.77.0.2/24
//! ```
//! Once the appliance image lands this becomes two booted appliance sites with a tunnel between.

use std::{net::UdpSocket, process::Command, time::Duration};

use anyhow::{bail, Context as _};
use vpn_tests::{daemon::Daemon, veth_pair, NetNs};

use crate::{is_root, step, workspace_root};

const SITE_CONFIG: &str = include_str!("../demo/site.toml");

pub fn run(hold: bool) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the demo creates network namespaces and loads eBPF: run it as root");
    }
    let daemon_binary = step("build vpn-daemon", vpn_tests::daemon::binary)?;
    let site = NetNs::new("demo-site")?;
    let peer = NetNs::new("demo-peer")?;
    veth_pair(
        (&site, "wan0", "10.77.0.1/24"),
        (&peer, "peer0", "10.77.0.2/24"),
    )?;

    let dir = tempfile::tempdir()?;
    let node = format!("demo{}", std::process::id());
    let socket = dir.path().join("control.sock");
    let config_path = dir.path().join("site.toml");
    let pki = workspace_root().join("vpn-daemon/examples/pki");
    std::fs::write(
        &config_path,
        SITE_CONFIG
            .replace("{node}", &node)
            .replace("{socket}", &socket.display().to_string())
            .replace("{pki}", &pki.display().to_string()),
    )?;

    let log = dir.path().join("daemon.log");
    let mut daemon = Daemon::start(&site, &config_path, &socket, &log)?;
    step("start vpn-daemon in namespace", || {
        daemon.wait_ready(Duration::from_secs(30))
    })
    .with_context(|| format!("daemon log:\n{}", daemon.log()))?;
    show_status(&daemon_binary, &socket, "status after start")?;

    step("send traffic from the peer namespace", || {
        peer.run(|| {
            let socket = UdpSocket::bind("10.77.0.2:0")?;
            for sequence in 0u32..100 {
                socket.send_to(&sequence.to_be_bytes(), "10.77.0.1:1194")?;
                socket.send_to(&sequence.to_be_bytes(), "10.77.0.1:5353")?;
            }
            Ok(())
        })
    })?;
    std::thread::sleep(Duration::from_millis(200));
    show_status(
        &daemon_binary,
        &socket,
        "status after 100 datagrams to the tunnel port and 100 to another",
    )?;
    println!("--- bpftool map dump pinned /sys/fs/bpf/{node}/TUNNEL_PORTS");
    let _ = Command::new("bpftool")
        .args([
            "map",
            "dump",
            "pinned",
            &format!("/sys/fs/bpf/{node}/TUNNEL_PORTS"),
        ])
        .status();

    if hold {
        println!(
            "holding: daemon pid {:?}, socket {}; Ctrl-C to stop",
            daemon.pid(),
            socket.display()
        );
        wait_for_interrupt();
    }
    let exit = step("stop vpn-daemon (SIGTERM)", || {
        daemon.stop(Duration::from_secs(10))
    })?;
    if !exit.success() {
        bail!("vpn-daemon exited with {exit}; log:\n{}", daemon.log());
    }
    let leftover_xdp = site.ip(&["link", "show", "wan0"])?.contains("xdp");
    let leftover_pins = std::path::Path::new("/sys/fs/bpf").join(&node).exists();
    if leftover_xdp || leftover_pins {
        bail!("shutdown left state behind (xdp attached: {leftover_xdp}, pins: {leftover_pins})");
    }
    println!("demo done: daemon stopped cleanly, XDP detached, pins and socket removed");
    Ok(())
}

fn show_status(
    binary: &std::path::Path,
    socket: &std::path::Path,
    title: &str,
) -> anyhow::Result<()> {
    println!("--- vpn-daemon status ({title})");
    crate::run_command(
        Command::new(binary)
            .arg("status")
            .arg("--socket")
            .arg(socket),
    )
}

/// Blocks until SIGINT or SIGTERM reaches this process.
fn wait_for_interrupt() {
    // SAFETY: a zeroed sigset_t is then initialised by sigemptyset; sigwait blocks this thread
    // only; the signals were blocked first so they are queued rather than killing the process.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let mut signal = 0;
        libc::sigwait(&set, &mut signal);
    }
}
