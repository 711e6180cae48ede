//! Stock OpenVPN 2.6 (`/usr/sbin/openvpn`) as a test peer inside a network namespace.
//!
//! [`OpenVpnConfig`] renders a config file from a few typed choices (role, transport, control
//! channel protection, data ciphers) plus raw `extra` lines; [`OpenVpnPeer`] runs it, logs to a
//! file, waits for log lines and stops the process by PID (SIGTERM, then SIGKILL) when dropped.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use ipnet::Ipv4Net;

use crate::{pki::Pki, NetNs};

/// The line stock OpenVPN logs once its tunnel is up.
pub const UP: &str = "Initialization Sequence Completed";

/// Which OpenVPN mode the peer runs in.
#[derive(Debug, Clone)]
pub enum OvpnRole {
    /// `server NET MASK` (`mode server` + `tls-server` + an address pool), many clients.
    Server {
        subnet: Ipv4Net,
        topology: Topology,
        push_routes: Vec<Ipv4Net>,
    },
    /// `client` (`pull` + `tls-client`), trying `remotes` in order.
    Client { remotes: Vec<SocketAddr> },
    /// Point-to-point TLS mode: one peer, fixed `ifconfig` addresses, no pull/push.
    P2p {
        /// This end runs `tls-server` (else `tls-client`).
        tls_server: bool,
        /// `local ADDR`; `None` binds every address.
        local: Option<IpAddr>,
        /// `remote ADDR PORT`; `None` is allowed only for the TCP server end.
        remote: Option<SocketAddr>,
        ifconfig_local: Ipv4Addr,
        ifconfig_remote: Ipv4Addr,
        /// `route NET MASK` via the peer's tunnel address.
        routes: Vec<Ipv4Net>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    Subnet,
    Net30,
    P2p,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Control-channel protection with the PKI's static keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    None,
    /// `tls-auth KEY [direction]`: `Some(0)` conventionally on the server, `Some(1)` on clients.
    TlsAuth {
        direction: Option<u8>,
    },
    /// `tls-crypt KEY`.
    TlsCrypt,
}

/// Which certificate and key of the [`Pki`] this peer presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    Server,
    Client,
    Client2,
    OtherCaClient,
    ExpiredClient,
    RevokedClient,
}

impl Identity {
    fn files(self, pki: &Pki) -> (&PathBuf, &PathBuf) {
        match self {
            Identity::Server => (&pki.server_cert, &pki.server_key),
            Identity::Client => (&pki.client_cert, &pki.client_key),
            Identity::Client2 => (&pki.client2_cert, &pki.client2_key),
            Identity::OtherCaClient => (&pki.other_ca_client_cert, &pki.other_ca_client_key),
            Identity::ExpiredClient => (&pki.expired_client_cert, &pki.expired_client_key),
            Identity::RevokedClient => (&pki.revoked_client_cert, &pki.revoked_client_key),
        }
    }
}

/// An OpenVPN configuration. Build one with [`OpenVpnConfig::server`], [`OpenVpnConfig::client`]
/// or [`OpenVpnConfig::p2p`], then change the public fields.
#[derive(Debug, Clone)]
pub struct OpenVpnConfig {
    pub role: OvpnRole,
    pub transport: Transport,
    /// The local port for server and p2p (`lport`); clients use `nobind`.
    pub port: u16,
    pub protection: Protection,
    /// `data-ciphers`, colon separated, e.g. "AES-256-GCM" or "AES-256-GCM:CHACHA20-POLY1305".
    pub cipher: String,
    /// The tun device name (`dev`), at most 15 bytes.
    pub dev: String,
    /// Certificate and key presented; defaults to Server for servers and tls-server p2p ends.
    pub identity: Identity,
    /// `remote-cert-tls client|server` (the peer's expected EKU), default on.
    pub remote_cert_tls: bool,
    /// `crl-verify` with the PKI's CRL, default off.
    pub crl_verify: bool,
    /// `verb N`, default 3 (4 also logs each control packet's opcode).
    pub verb: u8,
    /// Raw lines appended last (later options win in OpenVPN), e.g. "reneg-sec 10".
    pub extra: Vec<String>,
    /// Certificate and key files presented instead of `identity`'s (e.g. from
    /// [`Pki::client_identity`]), default none.
    pub identity_files: Option<(PathBuf, PathBuf)>,
}

impl OpenVpnConfig {
    fn with_role(role: OvpnRole, identity: Identity) -> Self {
        Self {
            role,
            transport: Transport::Udp,
            port: 1194,
            protection: Protection::None,
            cipher: "AES-256-GCM".to_owned(),
            dev: "ovpn0".to_owned(),
            identity,
            remote_cert_tls: true,
            crl_verify: false,
            verb: 3,
            extra: Vec::new(),
            identity_files: None,
        }
    }

    /// A server handing out addresses from `subnet` (topology subnet, no pushed routes).
    pub fn server(subnet: Ipv4Net) -> Self {
        Self::with_role(
            OvpnRole::Server {
                subnet,
                topology: Topology::Subnet,
                push_routes: Vec::new(),
            },
            Identity::Server,
        )
    }

    /// A client of the servers at `remotes`, tried in order.
    pub fn client(remotes: Vec<SocketAddr>) -> Self {
        Self::with_role(OvpnRole::Client { remotes }, Identity::Client)
    }

    /// A point-to-point TLS end; the tls-server end presents the server certificate.
    pub fn p2p(
        tls_server: bool,
        remote: Option<SocketAddr>,
        ifconfig_local: Ipv4Addr,
        ifconfig_remote: Ipv4Addr,
    ) -> Self {
        Self::with_role(
            OvpnRole::P2p {
                tls_server,
                local: None,
                remote,
                ifconfig_local,
                ifconfig_remote,
                routes: Vec::new(),
            },
            if tls_server {
                Identity::Server
            } else {
                Identity::Client
            },
        )
    }

    /// Whether this end runs the TLS server.
    fn is_tls_server(&self) -> bool {
        match self.role {
            OvpnRole::Server { .. } => true,
            OvpnRole::Client { .. } => false,
            OvpnRole::P2p { tls_server, .. } => tls_server,
        }
    }

    /// The config file text, with absolute paths into `pki`.
    pub fn render(&self, pki: &Pki) -> String {
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        let tls_server = self.is_tls_server();
        line(format!("dev {}", self.dev));
        line("dev-type tun".to_owned());
        line(
            match (self.transport, tls_server) {
                (Transport::Udp, _) => "proto udp",
                (Transport::Tcp, true) => "proto tcp-server",
                (Transport::Tcp, false) => "proto tcp-client",
            }
            .to_owned(),
        );
        match &self.role {
            OvpnRole::Server {
                subnet,
                topology,
                push_routes,
            } => {
                line(format!("server {} {}", subnet.network(), subnet.netmask()));
                line(format!("topology {}", topology_name(*topology)));
                line(format!("lport {}", self.port));
                for route in push_routes {
                    line(format!(
                        "push \"route {} {}\"",
                        route.network(),
                        route.netmask()
                    ));
                }
            }
            OvpnRole::Client { remotes } => {
                line("client".to_owned());
                line("nobind".to_owned());
                for remote in remotes {
                    line(format!("remote {} {}", remote.ip(), remote.port()));
                }
                // Fail over quickly in tests instead of OpenVPN's 120 s default.
                line("connect-timeout 5".to_owned());
            }
            OvpnRole::P2p {
                tls_server,
                local,
                remote,
                ifconfig_local,
                ifconfig_remote,
                routes,
            } => {
                line(
                    if *tls_server {
                        "tls-server"
                    } else {
                        "tls-client"
                    }
                    .to_owned(),
                );
                if let Some(local) = local {
                    line(format!("local {local}"));
                }
                line(format!("lport {}", self.port));
                if let Some(remote) = remote {
                    line(format!("remote {} {}", remote.ip(), remote.port()));
                }
                line(format!("ifconfig {ifconfig_local} {ifconfig_remote}"));
                for route in routes {
                    line(format!(
                        "route {} {} {ifconfig_remote}",
                        route.network(),
                        route.netmask()
                    ));
                }
            }
        }
        if tls_server {
            line("dh none".to_owned());
        }
        let (cert, key) = match &self.identity_files {
            Some((cert, key)) => (cert, key),
            None => self.identity.files(pki),
        };
        line(format!("ca {}", pki.ca.display()));
        line(format!("cert {}", cert.display()));
        line(format!("key {}", key.display()));
        if self.remote_cert_tls {
            line(format!(
                "remote-cert-tls {}",
                if tls_server { "client" } else { "server" }
            ));
        }
        if self.crl_verify {
            line(format!("crl-verify {}", pki.crl.display()));
        }
        match self.protection {
            Protection::None => {}
            Protection::TlsAuth { direction } => {
                let mut text = format!("tls-auth {}", pki.tls_auth_key.display());
                if let Some(direction) = direction {
                    let _ = write!(text, " {direction}");
                }
                line(text);
            }
            Protection::TlsCrypt => line(format!("tls-crypt {}", pki.tls_crypt_key.display())),
        }
        line(format!("data-ciphers {}", self.cipher));
        // The kernel data-channel offload would take the data path out of userspace OpenVPN;
        // the tests and the benchmark compare against OpenVPN's own data channel.
        line("disable-dco".to_owned());
        line(format!("verb {}", self.verb));
        for extra in &self.extra {
            line(extra.clone());
        }
        out
    }
}

fn topology_name(topology: Topology) -> &'static str {
    match topology {
        Topology::Subnet => "subnet",
        Topology::Net30 => "net30",
        Topology::P2p => "p2p",
    }
}

/// A running `openvpn --config FILE` inside a namespace; SIGTERM (then SIGKILL) by PID on drop.
pub struct OpenVpnPeer {
    child: Child,
    log: PathBuf,
    config_path: PathBuf,
    // Holds the config and the log; removed when the peer is dropped.
    _dir: tempfile::TempDir,
}

impl OpenVpnPeer {
    /// Writes the rendered config to a fresh temp dir and starts OpenVPN in `ns` with its
    /// stdout and stderr going to a log file there.
    pub fn start(ns: &NetNs, config: &OpenVpnConfig, pki: &Pki) -> anyhow::Result<OpenVpnPeer> {
        let dir = tempfile::Builder::new()
            .prefix("vpnt-ovpn-")
            .tempdir()
            .context("creating OpenVPN temp dir")?;
        let config_path = dir.path().join("openvpn.conf");
        std::fs::write(&config_path, config.render(pki))
            .with_context(|| format!("writing {}", config_path.display()))?;
        let log = dir.path().join("openvpn.log");
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = ns
            .command("openvpn")?
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting openvpn")?;
        Ok(OpenVpnPeer {
            child,
            log,
            config_path,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything OpenVPN logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The config file OpenVPN was started with (for error messages).
    pub fn config_text(&self) -> String {
        std::fs::read_to_string(&self.config_path).unwrap_or_default()
    }

    /// Whether the process is still running (not exited, not a zombie awaiting our wait).
    pub fn is_running(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).is_ok_and(|stat| {
            // The state follows the parenthesised command name, which may contain spaces.
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
    }

    /// Waits until the log contains `needle`, e.g. "Initialization Sequence Completed".
    /// Fails early if OpenVPN exits; every error ends with the last 40 log lines.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        self.wait_for_log_count(needle, 1, timeout)
    }

    /// Waits until `needle` occurs at least `count` times in the log (e.g. the second
    /// "Outgoing Data Channel: Cipher" line after a renegotiation).
    pub fn wait_for_log_count(
        &self,
        needle: &str,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().matches(needle).count() >= count {
                return Ok(());
            }
            if !self.is_running() {
                bail!(
                    "openvpn (pid {}) exited before logging {needle:?} x{count}; log tail:\n{}",
                    self.pid(),
                    self.log_tail(40)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for openvpn (pid {}) to log {needle:?} x{count}; log tail:\n{}",
                    self.pid(),
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Sends SIGTERM (by PID) and waits up to `timeout` for the exit; SIGKILL after that.
    pub fn stop(&mut self, timeout: Duration) {
        crate::traffic::stop_child(&mut self.child, timeout);
    }
}

impl Drop for OpenVpnPeer {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_pki() -> Pki {
        let p = |name: &str| PathBuf::from(format!("/pki/{name}"));
        Pki {
            dir: p(""),
            ca: p("ca.crt"),
            crl: p("crl.pem"),
            server_cert: p("server.crt"),
            server_key: p("server.key"),
            client_cert: p("client.crt"),
            client_key: p("client.key"),
            client2_cert: p("client2.crt"),
            client2_key: p("client2.key"),
            other_ca: p("other-ca.crt"),
            other_ca_client_cert: p("other.crt"),
            other_ca_client_key: p("other.key"),
            expired_client_cert: p("expired.crt"),
            expired_client_key: p("expired.key"),
            revoked_client_cert: p("revoked.crt"),
            revoked_client_key: p("revoked.key"),
            tls_crypt_key: p("tc.key"),
            tls_auth_key: p("ta.key"),
        }
    }

    #[test]
    fn server_config_renders_openvpn_directives() {
        let mut config = OpenVpnConfig::server("10.8.0.0/24".parse().unwrap());
        if let OvpnRole::Server { push_routes, .. } = &mut config.role {
            push_routes.push("10.1.0.0/16".parse().unwrap());
        }
        config.transport = Transport::Tcp;
        config.protection = Protection::TlsAuth { direction: Some(0) };
        config.crl_verify = true;
        config.extra.push("reneg-sec 10".to_owned());
        let text = config.render(&fake_pki());
        for expected in [
            "proto tcp-server\n",
            "server 10.8.0.0 255.255.255.0\n",
            "topology subnet\n",
            "push \"route 10.1.0.0 255.255.0.0\"\n",
            "dh none\n",
            "cert /pki/server.crt\n",
            "remote-cert-tls client\n",
            "crl-verify /pki/crl.pem\n",
            "tls-auth /pki/ta.key 0\n",
            "data-ciphers AES-256-GCM\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert!(text.ends_with("reneg-sec 10\n"), "{text}");
    }

    #[test]
    fn p2p_client_config_renders_openvpn_directives() {
        let mut config = OpenVpnConfig::p2p(
            false,
            Some("10.0.0.2:1195".parse().unwrap()),
            "10.99.0.2".parse().unwrap(),
            "10.99.0.1".parse().unwrap(),
        );
        config.protection = Protection::TlsCrypt;
        if let OvpnRole::P2p { routes, .. } = &mut config.role {
            routes.push("10.1.0.0/16".parse().unwrap());
        }
        let text = config.render(&fake_pki());
        for expected in [
            "proto udp\n",
            "tls-client\n",
            "remote 10.0.0.2 1195\n",
            "ifconfig 10.99.0.2 10.99.0.1\n",
            "route 10.1.0.0 255.255.0.0 10.99.0.1\n",
            "cert /pki/client.crt\n",
            "remote-cert-tls server\n",
            "tls-crypt /pki/tc.key\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert!(!text.contains("dh none"), "{text}");
    }
}
