//! The TOML config file, schema v1, turned into a typed [`Config`].
//!
//! `vpn-daemon/examples/site-a.toml` documents every key. Loading is strict: unknown keys, wrong
//! types, bad values, missing files and conflicts between tunnels are all errors, and every error
//! says where it is as `FILE:LINE:COL: reason` (see [`ConfigError`]).
//!
//! Layout: `raw` is the file as serde sees it, `values` and `files` check single values and the
//! files they name, `validate` turns the raw file into a [`Config`] and does the cross-checks.
//!
//! The option values the protocol acts on (`Cipher`, `Keepalive`, `CertUsage`, ...) are the
//! protocol's own, from [`crate::proto::vocabulary`]; the `[pki]` paths are
//! [`crate::proto::tls::PkiFiles`] and a ccd file is a [`crate::proto::server::ClientConfig`].
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::proto::tls::PkiFiles;
use crate::proto::vocabulary::{
    CertUsage, Cipher, IfconfigPool, Keepalive, KeyDirection, TlsAuthDigest, TlsRole, Topology,
    Transport,
};

pub mod ccd;
mod error;
mod files;
mod raw;
mod validate;
mod values;

#[cfg(test)]
mod tests;

pub use error::ConfigError;

/// The only schema version this daemon reads.
pub const SCHEMA_VERSION: i64 = 1;

/// A validated config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// The file it was read from, as the caller named it.
    pub path: PathBuf,
    /// `[node]`: this appliance.
    pub node: Node,
    /// `[pki]`: certificate, key and trust anchors (paths resolved and checked).
    pub pki: PkiFiles,
    /// `[interfaces]`: where the appliance meets the networks.
    pub interfaces: Interfaces,
    /// `[[tunnel]]`, in file order.
    pub tunnels: Vec<Tunnel>,
    /// `[fast_path]`: eBPF admission and leak-guard settings (defaults when absent).
    pub fast_path: FastPath,
}

impl Config {
    /// Reads and validates the config file at `path`. Unreadable files (missing, not UTF-8, too
    /// big) are [`ConfigError`]s too, at line 1 column 1 or at the first bad byte.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = files::read_small_file(path).map_err(|error| ConfigError {
            file: path.to_path_buf(),
            line: 1,
            column: 1,
            reason: format!("cannot read the config file: {error}"),
        })?;
        Self::parse_bytes(&bytes, path)
    }

    /// Validates `text` as if read from `path`; relative paths in the file resolve against the
    /// directory of `path`, and the files they name are checked.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config = validate::config(text, path).map_err(|problem| problem.locate(text, path))?;
        // Every client config file is parsed now, so that a broken one stops start-up (or a
        // reload) with its own file and line instead of refusing that client later.
        for tunnel in &config.tunnels {
            if let Addressing::Server {
                client_config_dir: Some(dir),
                ..
            } = &tunnel.addressing
            {
                ccd::check_client_config_dir(dir)?;
            }
        }
        Ok(config)
    }

    /// Like [`Config::parse`] for raw file contents, which may not be UTF-8.
    fn parse_bytes(bytes: &[u8], path: &Path) -> Result<Config, ConfigError> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Self::parse(text, path),
            Err(utf8_error) => {
                let valid_up_to = utf8_error.valid_up_to();
                // The prefix is valid UTF-8 by definition, so this cannot fail.
                let valid_prefix = std::str::from_utf8(&bytes[..valid_up_to]).unwrap_or("");
                let bad_byte = bytes.get(valid_up_to).copied().unwrap_or(0);
                let problem = error::Problem::at(
                    valid_up_to..valid_up_to,
                    format!("the file is not valid UTF-8 (byte 0x{bad_byte:02x}); TOML files must be UTF-8"),
                );
                Err(problem.locate(valid_prefix, path))
            }
        }
    }

    /// One line for logs and `check-config`, e.g.
    /// `site-a: 2 tunnels (to-site-b: p2p/udp, clients: server/tcp), wan eth0, lan eth1`.
    pub fn summary(&self) -> String {
        let count = self.tunnels.len();
        let mut summary = format!(
            "{}: {count} tunnel{}",
            self.node.name,
            if count == 1 { "" } else { "s" }
        );
        if count > 0 {
            let tunnels: Vec<String> = self
                .tunnels
                .iter()
                .map(|tunnel| format!("{}: {}/{}", tunnel.name, tunnel.role, tunnel.transport))
                .collect();
            summary.push_str(&format!(" ({})", tunnels.join(", ")));
        }
        summary.push_str(&format!(", wan {}", self.interfaces.wan));
        if let Some(lan) = &self.interfaces.lan {
            summary.push_str(&format!(", lan {lan}"));
        }
        summary
    }
}

/// `[node]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// 1-15 characters of `[a-z0-9-]`, starting with a letter; names /sys/fs/bpf/<name>/.
    pub name: String,
    /// Where `vpn-daemon status` finds the daemon; default `/run/vpn-daemon/<name>.sock`.
    pub control_socket: PathBuf,
}

/// `[interfaces]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interfaces {
    /// The WAN interface the XDP filter attaches to.
    pub wan: String,
    /// The LAN interface, if the appliance routes one.
    pub lan: Option<String>,
    /// How the XDP program is attached to `wan`.
    pub xdp_mode: XdpMode,
}

/// How to attach the XDP program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode if the driver supports it, generic otherwise.
    #[default]
    Auto,
    /// Driver mode only; fail if the driver cannot.
    Native,
    /// Generic (skb) mode: works everywhere, slower.
    Generic,
}

/// One `[[tunnel]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tunnel {
    /// Unique among tunnels; 1-32 characters of `[a-z0-9-]`.
    pub name: String,
    /// Which end of an OpenVPN connection this is.
    pub role: Role,
    /// Outer transport; default UDP.
    pub transport: Transport,
    /// Where to bind; required for server and p2p. Port 0 means "any port".
    pub local: Option<SocketAddr>,
    /// Peers to connect to, tried in order; empty for a server.
    pub remotes: Vec<SocketAddr>,
    /// The tun device; default `vpn-` + the first 11 characters of the name.
    pub device: String,
    /// Data-channel ciphers in order of preference (never empty).
    pub ciphers: Vec<Cipher>,
    /// tls-auth, tls-crypt or nothing around the control channel.
    pub control_protection: ControlProtection,
    /// Liveness checks, if configured.
    pub keepalive: Option<Keepalive>,
    /// Data-channel key renegotiation interval; zero means never.
    pub reneg_interval: Duration,
    /// Tunnel MTU, 576..=9000.
    pub mtu: u16,
    /// How the tunnel's inner addresses are set up, by role.
    pub addressing: Addressing,
    /// Prefixes routed through this tunnel.
    pub routes: Vec<ipnet::IpNet>,
    /// Required extended key usage of the peer's certificate.
    pub remote_cert_tls: Option<CertUsage>,
    /// Required common name of the peer's certificate.
    pub verify_x509_name: Option<String>,
    /// Compression framing the peer expects, if any.
    pub compress: Option<Compress>,
    /// eBPF fast-path settings of this tunnel (`link_group`, `weight`, `allowed_sources`).
    pub fast_path: TunnelFastPath,
    /// A client installs a pushed default route (or `def1` half) and routes covering the
    /// server's own address; off by default.
    pub accept_pushed_default_route: bool,
}

impl Tunnel {
    /// The local port to listen on, if `local` is set and its port is not 0.
    pub fn listen_port(&self) -> Option<u16> {
        self.local
            .map(|local| local.port())
            .filter(|&port| port != 0)
    }
}

/// Which end of an OpenVPN connection a tunnel is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Connects to a server (`client` in OpenVPN).
    Client,
    /// Accepts many clients and hands out addresses (`server` in OpenVPN).
    Server,
    /// One peer, fixed addresses (`ifconfig` + `tls-server`/`tls-client` in OpenVPN).
    P2p,
}

impl fmt::Display for Role {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Role::Client => "client",
            Role::Server => "server",
            Role::P2p => "p2p",
        })
    }
}

/// What protects the TLS control channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlProtection {
    /// Plain TLS.
    None,
    /// OpenVPN `tls-auth`: an HMAC on every control packet.
    TlsAuth {
        /// The static key file (resolved path).
        key: PathBuf,
        /// OpenVPN `key-direction`; `None` uses the same key halves in both directions.
        direction: Option<KeyDirection>,
        /// The HMAC digest (OpenVPN `auth`).
        digest: TlsAuthDigest,
    },
    /// OpenVPN `tls-crypt`: control packets encrypted and authenticated.
    TlsCrypt {
        /// The static key file (resolved path).
        key: PathBuf,
    },
}

/// Compression framing a peer expects (compression itself is never done; compressed packets
/// from a peer are counted and dropped, as OpenVPN 2.6 does with `allow-compression no`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Compress {
    /// The peer has `comp-lzo` (or `comp-lzo no`): a one-byte header on every packet.
    #[serde(rename = "comp-lzo")]
    LzoStub,
    /// The peer has `compress`, `compress stub` or `compress lz4`.
    #[serde(rename = "stub")]
    Stub,
    /// The peer has `compress stub-v2` or `compress lz4-v2`.
    #[serde(rename = "stub-v2")]
    StubV2,
}

/// How a tunnel's inner addresses are set up; one variant per [`Role`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Addressing {
    /// Fixed addresses at both ends, like OpenVPN `ifconfig local remote`.
    P2p {
        /// Which end runs the TLS server.
        tls: TlsRole,
        /// This end's tunnel address.
        local: Ipv4Addr,
        /// The peer's tunnel address.
        remote: Ipv4Addr,
    },
    /// Hands out addresses from `subnet` to clients, like OpenVPN `server`.
    Server {
        /// The client address pool (host bits clear, /8 to /29).
        subnet: ipnet::Ipv4Net,
        /// How addresses are carved out of `subnet`.
        topology: Topology,
        /// Routes pushed to clients.
        push_routes: Vec<ipnet::Ipv4Net>,
        /// The server's own tunnel address (OpenVPN `ifconfig` under `mode server`); default the
        /// first host of `subnet`.
        server_address: Ipv4Addr,
        /// Where pooled client addresses come from (OpenVPN `ifconfig-pool`); the server address
        /// is never handed out even if it lies inside.
        pool: IfconfigPool,
        /// Options pushed verbatim after the routes (OpenVPN `push "..."` other than `route`).
        push: Vec<String>,
        /// Whether clients reach each other through the server (OpenVPN `client-to-client`).
        client_to_client: bool,
        /// Whether several clients may share a certificate common name (OpenVPN `duplicate-cn`);
        /// when false a new connection replaces the old one with the same name.
        duplicate_cn: bool,
        /// Per-client files named by common name, in OpenVPN ccd syntax (see [`ccd`]); resolved
        /// against the config file's directory. Read when a client connects.
        client_config_dir: Option<PathBuf>,
        /// Most clients connected at once (OpenVPN `max-clients`), 1..=65535.
        max_clients: u16,
    },
    /// The address comes from the server's push.
    Client,
}

// ---- eBPF fast path (issue 5): `[fast_path]` and the per-tunnel fast-path keys ----

/// `[fast_path]`: settings of the eBPF programs that are not per tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FastPath {
    /// Destinations that must never leave the WAN unencrypted: the leak guard on WAN egress drops
    /// packets to them (when their tunnel is down the kernel would route them in the clear).
    pub protected_prefixes: Vec<ipnet::IpNet>,
    /// First handshake packets per second admitted from unknown sources on ports that accept
    /// new peers (spread over the CPUs' token buckets).
    pub handshakes_per_sec: u32,
    /// Handshake packets admitted in a burst (per CPU).
    pub handshake_burst: u32,
    /// How long a source whose first handshake packet was admitted may continue its handshake
    /// before it must be a connected peer.
    pub handshake_window: Duration,
}

impl Default for FastPath {
    fn default() -> Self {
        Self {
            protected_prefixes: Vec::new(),
            handshakes_per_sec: 100,
            handshake_burst: 20,
            handshake_window: Duration::from_secs(30),
        }
    }
}

/// A tunnel's fast-path settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TunnelFastPath {
    /// Parallel links to the same peer share a group: LAN traffic to the group's routes is spread
    /// over its live links per flow. `None`: the tunnel is not steered.
    pub link_group: Option<String>,
    /// Share of the group's flows, 1..=16 (default 1).
    pub weight: u32,
    /// Inner sources this tunnel may send from, replacing the role's default (p2p: the peer's
    /// tunnel address and `routes`; server: the client subnet and `routes`; client: anything).
    pub allowed_sources: Option<Vec<ipnet::IpNet>>,
}
