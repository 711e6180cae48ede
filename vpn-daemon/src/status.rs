//! The daemon's status as reported over the control socket (`vpn-daemon status [--json]`).

use std::{collections::BTreeMap, fmt::Write as _};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub config_path: String,
    pub config_summary: String,
    pub wan: WanStatus,
    pub tunnels: Vec<TunnelStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WanStatus {
    pub interface: String,
    /// XDP mode the program actually attached in ("native" or "generic").
    pub xdp_mode: String,
    pub pin_dir: String,
    /// Packet counters of the WAN XDP program, summed over CPUs.
    pub counters: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelStatus {
    pub name: String,
    pub role: String,
    pub transport: String,
    pub local: Option<String>,
    pub remotes: Vec<String>,
    pub device: String,
    pub state: String,
    /// Session and data-path details while the tunnel runs.
    pub runtime: Option<crate::io::tunnel::TunnelRuntimeStatus>,
    /// A multi-client server's connected clients, by tunnel address (empty for other roles).
    #[serde(default)]
    pub clients: Vec<crate::io::server::ClientInfo>,
}

impl Status {
    /// Human-readable form for `vpn-daemon status`.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "node {}  vpn-daemon {}  pid {}  up {}s",
            self.node, self.version, self.pid, self.uptime_secs
        );
        let _ = writeln!(out, "config {}: {}", self.config_path, self.config_summary);
        let _ = writeln!(
            out,
            "wan {} (xdp {}, maps pinned in {})",
            self.wan.interface, self.wan.xdp_mode, self.wan.pin_dir
        );
        for (name, value) in &self.wan.counters {
            let _ = writeln!(out, "  {name:<16} {value}");
        }
        if self.tunnels.is_empty() {
            let _ = writeln!(out, "no tunnels configured");
        }
        for tunnel in &self.tunnels {
            let endpoint = match (&tunnel.local, tunnel.remotes.is_empty()) {
                (Some(local), true) => format!("listen {local}"),
                (Some(local), false) => format!("{local} -> {}", tunnel.remotes.join(", ")),
                (None, _) => format!("-> {}", tunnel.remotes.join(", ")),
            };
            let _ = writeln!(
                out,
                "tunnel {} {}/{} dev {} {}: {}",
                tunnel.name, tunnel.role, tunnel.transport, tunnel.device, endpoint, tunnel.state
            );
            if let Some(runtime) = &tunnel.runtime {
                if let Some(peer) = &runtime.peer {
                    let _ = writeln!(
                        out,
                        "  peer {peer} cn {} cipher {} keys {} ({} negotiated)",
                        runtime.peer_common_name.as_deref().unwrap_or("-"),
                        runtime.cipher.as_deref().unwrap_or("-"),
                        runtime.key_derivation.as_deref().unwrap_or("-"),
                        runtime.keys_negotiated
                    );
                }
                if let Some(error) = &runtime.last_error {
                    let _ = writeln!(out, "  last error: {error}");
                }
                for (name, value) in &runtime.counters {
                    let _ = writeln!(out, "  {name:<20} {value}");
                }
            }
            if !tunnel.clients.is_empty() {
                let _ = writeln!(out, "  clients ({}):", tunnel.clients.len());
            }
            for client in &tunnel.clients {
                let iroutes: Vec<String> = client.iroutes.iter().map(ToString::to_string).collect();
                let _ = writeln!(
                    out,
                    "    {:<15} cn {} from {} peer-id {}{}",
                    client.virtual_address,
                    client.common_name,
                    client.real_address,
                    client.peer_id,
                    if iroutes.is_empty() {
                        String::new()
                    } else {
                        format!(" iroutes {}", iroutes.join(" "))
                    }
                );
            }
        }
        out
    }
}
