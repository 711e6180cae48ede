//! The daemon's status as reported over the control socket (`vpn-daemon status [--json]`).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::state::{ClientInfo, TunnelState};

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
    /// The kernel routes the daemon owns.
    #[serde(default)]
    pub routes: RoutesStatus,
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
    pub runtime: Option<RuntimeStatus>,
    /// A multi-client server's connected clients, by tunnel address (empty for other roles).
    #[serde(default)]
    pub clients: Vec<ClientStatus>,
}

/// A running tunnel's session and data path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeStatus {
    pub state: String,
    pub peer: Option<String>,
    pub peer_common_name: Option<String>,
    pub cipher: Option<String>,
    pub key_derivation: Option<String>,
    pub keys_negotiated: u64,
    pub last_error: Option<String>,
    pub counters: BTreeMap<String, u64>,
}

impl RuntimeStatus {
    /// The status of a tunnel in `state` with data-path `counters`.
    pub fn new(state: &TunnelState, counters: BTreeMap<String, u64>) -> Self {
        RuntimeStatus {
            state: state.phase.to_string(),
            peer: state.peer.map(|peer| peer.to_string()),
            peer_common_name: state.peer_common_name.clone(),
            cipher: state.cipher.clone(),
            key_derivation: state.key_derivation.map(|kd| kd.as_str().to_owned()),
            keys_negotiated: state.keys_negotiated,
            last_error: state.last_error.clone(),
            counters,
        }
    }
}

/// A client connected to a server tunnel (also the body of a `vpn-daemon events` line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStatus {
    /// The certificate's common name.
    pub common_name: String,
    /// The client's tunnel address.
    pub virtual_address: Ipv4Addr,
    /// Subnets behind the client (ccd `iroute`), routed to it.
    pub iroutes: Vec<Ipv4Net>,
    /// Where its packets come from.
    pub real_address: SocketAddr,
    /// Its DATA_V2 peer id.
    pub peer_id: u32,
    /// Wall-clock seconds since the Unix epoch when its tunnel came up.
    pub connected_since_unix: u64,
}

impl From<&ClientInfo> for ClientStatus {
    fn from(client: &ClientInfo) -> Self {
        ClientStatus {
            common_name: client.common_name.clone(),
            virtual_address: client.virtual_address,
            iroutes: client.iroutes.clone(),
            real_address: client.real_address,
            peer_id: client.peer_id,
            connected_since_unix: client.connected_since_unix,
        }
    }
}

/// The daemon's route table and what the reconciler made of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutesStatus {
    /// Routes wanted in the kernel (one winner per prefix), by owner kind.
    pub desired: BTreeMap<String, u64>,
    /// Routes with our protocol id the reconciler last saw installed.
    pub installed: u64,
    /// Wanted routes whose device does not exist yet.
    pub unresolved: u64,
    /// The kernel's last refusal, until a reconcile succeeds.
    pub last_error: Option<String>,
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
        let desired: Vec<String> = self
            .routes
            .desired
            .iter()
            .map(|(owner, count)| format!("{count} {owner}"))
            .collect();
        let _ = writeln!(
            out,
            "routes {} installed (wanted: {}){}{}",
            self.routes.installed,
            if desired.is_empty() {
                "none".to_owned()
            } else {
                desired.join(", ")
            },
            if self.routes.unresolved > 0 {
                format!(", {} waiting for their device", self.routes.unresolved)
            } else {
                String::new()
            },
            self.routes
                .last_error
                .as_ref()
                .map(|error| format!(", last error: {error}"))
                .unwrap_or_default()
        );
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

    fn status_with_clients(clients: Vec<ClientStatus>) -> Status {
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
            routes: RoutesStatus::default(),
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
        let status = status_with_clients(vec![ClientStatus {
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
