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
    /// Every eBPF program's attachment and counters.
    #[serde(default)]
    pub fast_path: FastPathStatus,
}

/// The eBPF fast path: where each program is attached and its counters summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FastPathStatus {
    pub attached: Vec<String>,
    /// Program name (or `links`) -> counter name (or tun device) -> value.
    pub counters: BTreeMap<String, BTreeMap<String, u64>>,
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
            let _ = writeln!(out, "  {name:<22} {value}");
        }
        for attachment in &self.fast_path.attached {
            let _ = writeln!(out, "ebpf {attachment}");
        }
        for (program, counters) in &self.fast_path.counters {
            if program == "xdp_wan" || counters.is_empty() {
                continue; // xdp_wan is shown under wan above
            }
            let _ = writeln!(out, "  {program}:");
            for (name, value) in counters {
                let _ = writeln!(out, "    {name:<20} {value}");
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::server::ClientInfo;

    fn status_with_clients(clients: Vec<ClientInfo>) -> Status {
        Status {
            node: "n".into(),
            version: "0".into(),
            pid: 1,
            uptime_secs: 2,
            config_path: "c.toml".into(),
            config_summary: "n: 1 tunnel".into(),
            wan: WanStatus {
                interface: "eth0".into(),
                xdp_mode: "generic".into(),
                pin_dir: "/sys/fs/bpf/n".into(),
                counters: BTreeMap::new(),
            },
            fast_path: FastPathStatus::default(),
            tunnels: vec![TunnelStatus {
                name: "clients".into(),
                role: "server".into(),
                transport: "udp".into(),
                local: Some("0.0.0.0:1194".into()),
                remotes: Vec::new(),
                device: "vpn-clients".into(),
                state: "established".into(),
                runtime: None,
                clients,
            }],
        }
    }

    #[test]
    fn server_clients_are_listed_in_text_and_json() {
        let status = status_with_clients(vec![ClientInfo {
            common_name: "alice".into(),
            virtual_address: "10.8.0.50".parse().unwrap(),
            iroutes: vec!["192.168.50.0/24".parse().unwrap()],
            real_address: "192.0.2.7:40000".parse().unwrap(),
            peer_id: 3,
            connected_since_unix: 1_700_000_000,
        }]);
        let text = status.render_text();
        assert!(text.contains("  clients (1):\n"), "{text}");
        assert!(
            text.contains(
                "    10.8.0.50       cn alice from 192.0.2.7:40000 peer-id 3 iroutes 192.168.50.0/24\n"
            ),
            "{text}"
        );
        let json = serde_json::to_value(&status).unwrap();
        let client = &json["tunnels"][0]["clients"][0];
        assert_eq!(client["virtual_address"], "10.8.0.50");
        assert_eq!(client["iroutes"][0], "192.168.50.0/24");
        // A status from a daemon without the client list still parses.
        let mut older = json.clone();
        older["tunnels"][0]
            .as_object_mut()
            .unwrap()
            .remove("clients");
        let parsed: Status = serde_json::from_value(older).unwrap();
        assert!(parsed.tunnels[0].clients.is_empty());
        assert!(!status_with_clients(Vec::new())
            .render_text()
            .contains("clients ("));
    }
}
