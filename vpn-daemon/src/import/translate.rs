//! OpenVPN directives → a [`Plan`]: the TOML to write, the ignored options with their reasons,
//! and notes about translations that change something. Two passes, like OpenVPN itself: first
//! `read` puts every directive into [`Settings`] (later ones override, lists accumulate), then
//! this module decides the role and checks the settings together.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net};

use super::plan::{P2pPlan, Plan, ServerPlan, Source, TlsAuthPlan};
use super::read::{ipv4_prefix, netmask_length, At, Proto, Settings};
use super::tokenize::{split_line, tokenize};
use super::{describe, Diagnostic, ImportOptions};
use crate::config::Role;
use crate::proto::vocabulary::{Topology, Transport};

const DEFAULT_PORT: u16 = 1194;
const DEFAULT_WAN: &str = "eth0";
const NODE_NAME_MAX: usize = 15;
const TUNNEL_NAME_MAX: usize = 32;
/// The daemon's own default; emitting the key would only repeat it.
const DEFAULT_RENEG_SECONDS: u64 = 3600;

/// The state of one import: the settings read so far and every problem and remark found.
pub(super) struct Translator<'a> {
    pub file: &'a Path,
    pub options: &'a ImportOptions,
    pub diagnostics: Vec<Diagnostic>,
    pub ignored: Vec<(usize, String, String)>,
    pub notes: Vec<String>,
    pub settings: Settings,
}

/// Translates the text of OpenVPN config `file`. All problems come back at once, sorted by line.
pub(super) fn translate(
    text: &str,
    file: &Path,
    options: &ImportOptions,
) -> Result<Plan, Vec<Diagnostic>> {
    let directives = tokenize(text).map_err(|errors| {
        errors
            .into_iter()
            .map(|error| Diagnostic {
                file: file.to_path_buf(),
                line: Some(error.line),
                option: None,
                reason: error.reason,
            })
            .collect::<Vec<_>>()
    })?;
    let mut translator = Translator {
        file,
        options,
        diagnostics: Vec::new(),
        ignored: Vec::new(),
        notes: Vec::new(),
        settings: Settings {
            base_dir: config_dir(file),
            ..Settings::default()
        },
    };
    for directive in &directives {
        translator.directive(directive);
    }
    let plan = translator.finish();
    let mut diagnostics = translator.diagnostics;
    match plan {
        Some(plan) if diagnostics.is_empty() => Ok(plan),
        _ => {
            // The config's problems in line order (missing options last), then the ccd files'
            // in the order found (by file name, then line).
            diagnostics.sort_by_key(|diagnostic| {
                if diagnostic.file == file {
                    (0, diagnostic.line.unwrap_or(usize::MAX))
                } else {
                    (1, 0)
                }
            });
            Err(diagnostics)
        }
    }
}

/// The directory the config file is in, absolute.
fn config_dir(file: &Path) -> PathBuf {
    let dir = file
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// A name for the node or tunnel from the file name: lowercase letters, digits and '-',
/// starting with a letter.
fn name_from_file(file: &Path, max: usize) -> String {
    let stem = file
        .file_stem()
        .map(|stem| stem.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut name = String::new();
    for c in stem.chars() {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if !(c == '-' && (name.is_empty() || name.ends_with('-'))) {
            name.push(c);
        }
    }
    let name = name.trim_start_matches(|c: char| c.is_ascii_digit() || c == '-');
    let name: String = name.chars().take(max).collect();
    let name = name.trim_end_matches('-');
    if name.is_empty() {
        "openvpn".to_owned()
    } else {
        name.to_owned()
    }
}

impl Translator<'_> {
    /// Decides the role and checks the settings together.
    fn finish(&mut self) -> Option<Plan> {
        let role = self.role()?;
        let transport = self.transport(role);
        let mut plan_routes = Vec::new();
        let keepalive = self.keepalive(role);
        let server = if role == Role::Server {
            self.server_plan(&mut plan_routes, keepalive.is_some())
        } else {
            self.reject_server_options(role);
            None
        };
        let p2p = if role == Role::P2p {
            self.p2p_plan()
        } else {
            if let Some(ifconfig) = &self.settings.ifconfig {
                if role == Role::Client {
                    let line = ifconfig.line;
                    self.error(
                        Some(line),
                        "ifconfig",
                        "a client gets its address from the server's push; remove ifconfig",
                    );
                }
            }
            None
        };
        if role != Role::Server {
            self.routes_through_peer(role, p2p.as_ref(), &mut plan_routes);
        }
        let (local, remotes) = self.endpoints(role, transport);
        let tls_auth = self.tls_auth();
        if let (Some(_), Some(tls_crypt)) = (&tls_auth, &self.settings.tls_crypt) {
            let line = tls_crypt.line;
            self.error(
                Some(line),
                "tls-crypt",
                "tls-auth and tls-crypt cannot be used together",
            );
        }
        let device = self.device();
        let ca = self.required("ca", self.settings.ca.clone());
        let cert = self.required("cert", self.settings.cert.clone());
        let key = self.required("key", self.settings.key.clone());
        let names = self.names();
        let (ca, cert, key, (node, tunnel, wan)) = (ca?, cert?, key?, names?);
        if let (Some(tls_server), Some(tls_client)) =
            (self.settings.tls_server, self.settings.tls_client)
        {
            self.error(
                Some(tls_server.max(tls_client)),
                "tls-server",
                "tls-server and tls-client cannot both be set",
            );
        }
        Some(Plan {
            source: self.file.to_path_buf(),
            base_dir: self.settings.base_dir.clone(),
            ignored: {
                let mut ignored = std::mem::take(&mut self.ignored);
                ignored.sort_by_key(|(line, _, _)| *line);
                ignored
            },
            notes: std::mem::take(&mut self.notes),
            node,
            wan,
            lan: self.options.lan.clone(),
            ca,
            cert,
            key,
            crl: self.settings.crl.as_ref().map(|crl| crl.value.clone()),
            tunnel,
            role,
            transport,
            local,
            remotes,
            device,
            ciphers: self
                .settings
                .data_ciphers
                .as_ref()
                .map(|at| at.value.clone()),
            tls_auth,
            tls_crypt: self.settings.tls_crypt.as_ref().map(|at| at.value.clone()),
            keepalive,
            reneg_sec: self
                .settings
                .reneg_sec
                .as_ref()
                .map(|at| at.value)
                .filter(|&seconds| seconds != DEFAULT_RENEG_SECONDS),
            mtu: self
                .settings
                .mtu
                .as_ref()
                .map(|at| at.value)
                .filter(|&mtu| mtu != 1500),
            remote_cert_tls: self.settings.remote_cert_tls,
            verify_x509_name: self.settings.verify_x509_name.clone(),
            compress: self.settings.compress.as_ref().map(|at| at.value),
            routes: plan_routes,
            p2p,
            server,
        })
    }

    fn required(&mut self, option: &str, value: Option<At<Source>>) -> Option<Source> {
        if value.is_none() {
            let reason = match option {
                "ca" => "missing: the CA certificate(s) that peer certificates must chain to",
                "cert" => {
                    "missing: this end's certificate (the daemon authenticates by certificate)"
                }
                _ => "missing: this end's private key",
            };
            // Only when nothing else failed for it (a bad path was reported at its line).
            let inline = format!("<{option}>");
            let reported = self.diagnostics.iter().any(|diagnostic| {
                diagnostic.option.as_deref() == Some(option)
                    || diagnostic.option.as_deref() == Some(inline.as_str())
            });
            if !reported {
                self.error(None, option, reason);
            }
        }
        value.map(|at| at.value)
    }

    fn role(&mut self) -> Option<Role> {
        let s = &self.settings;
        if s.server.is_some() || s.mode_server.is_some() {
            if s.server.is_none() && s.tls_server.is_none() {
                let line = s.mode_server;
                self.error(line, "mode", "mode server needs tls-server");
                return None;
            }
            return Some(Role::Server);
        }
        if s.client.is_some() {
            return Some(Role::Client);
        }
        if let Some(line) = s.pull {
            if s.tls_client.is_none() {
                self.error(
                    Some(line),
                    "pull",
                    "pull needs tls-client (or use `client`)",
                );
                return None;
            }
            return Some(Role::Client);
        }
        if s.tls_server.is_some() || s.tls_client.is_some() {
            return Some(Role::P2p);
        }
        self.error(
            None,
            "tls-server",
            "none of server, mode server, client, tls-server or tls-client is set: static-key and plain-text tunnels are not supported (the daemon needs TLS)",
        );
        None
    }

    fn transport(&mut self, role: Role) -> Transport {
        let global = self.settings.proto.as_ref().map(|at| (at.line, at.value.0));
        let mut transport = global.map(|(_, proto)| proto.transport());
        let remotes: Vec<(usize, Proto)> = self
            .settings
            .remotes
            .iter()
            .filter_map(|remote| remote.value.proto.map(|proto| (remote.line, proto)))
            .collect();
        for (line, proto) in remotes {
            match transport {
                Some(existing) if existing != proto.transport() => self.error(
                    Some(line),
                    "remote",
                    format!(
                        "mixes {} with {existing}: one tunnel has one transport; import the {} remotes as a second tunnel",
                        proto.transport(),
                        proto.transport()
                    ),
                ),
                _ => transport = Some(proto.transport()),
            }
        }
        if let Some((line, proto)) = global {
            match (role, proto) {
                (Role::Server, Proto::TcpClient) => {
                    self.error(Some(line), "proto", "a server cannot be tcp-client")
                }
                (Role::Client, Proto::TcpServer) => {
                    self.error(Some(line), "proto", "a client cannot be tcp-server")
                }
                _ => {}
            }
        }
        transport.unwrap_or(Transport::Udp)
    }

    /// Whether a p2p tunnel over TCP is the listening side.
    fn p2p_tcp_listens(&self) -> bool {
        match self.settings.proto.as_ref().map(|at| at.value.0) {
            Some(Proto::TcpServer) => true,
            Some(Proto::TcpClient) => false,
            // OpenVPN: plain `tcp` listens when there is no remote to connect to.
            _ => self.settings.remotes.is_empty(),
        }
    }

    fn endpoints(
        &mut self,
        role: Role,
        transport: Transport,
    ) -> (Option<SocketAddr>, Vec<SocketAddr>) {
        let s = &self.settings;
        let ipv6 = s.proto.as_ref().and_then(|at| at.value.1).unwrap_or(false);
        let unspecified = if ipv6 {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        let local_port = s.lport.or(s.port).unwrap_or(DEFAULT_PORT);
        let remote_port = s.rport.or(s.port).unwrap_or(DEFAULT_PORT);
        let local_ip = s.local.as_ref().map(|at| at.value);
        let local = match role {
            Role::Server | Role::P2p => {
                Some(SocketAddr::new(local_ip.unwrap_or(unspecified), local_port))
            }
            Role::Client if !s.nobind && (local_ip.is_some() || s.lport.is_some()) => {
                Some(SocketAddr::new(local_ip.unwrap_or(unspecified), local_port))
            }
            Role::Client => None,
        };
        let remote_settings = s.remotes.clone();
        let mut remotes = Vec::new();
        for remote in remote_settings {
            match remote.value.host.parse::<IpAddr>() {
                Ok(ip) => remotes.push(SocketAddr::new(ip, remote.value.port.unwrap_or(remote_port))),
                Err(_) => self.error(
                    Some(remote.line),
                    "remote",
                    format!(
                        "`{}` is a host name; config schema v1 takes IP addresses only: write the address it resolves to",
                        remote.value.host
                    ),
                ),
            }
        }
        match role {
            Role::Server => {
                if let Some(first) = self.settings.remotes.first() {
                    let line = first.line;
                    self.error(
                        Some(line),
                        "remote",
                        "a server only accepts connections; remove remote",
                    );
                }
                remotes.clear();
            }
            Role::Client => {
                if self.settings.remotes.is_empty() {
                    self.error(
                        None,
                        "remote",
                        "missing: a client needs at least one remote",
                    );
                }
            }
            Role::P2p => {
                let tls_server = self.settings.tls_server.is_some();
                if transport == Transport::Tcp && self.p2p_tcp_listens() {
                    if !tls_server {
                        let line = self.settings.proto.as_ref().map(|at| at.line);
                        self.error(line, "proto", "the daemon's p2p TCP listener is always the TLS server: use tcp-server with tls-server, or tcp-client with tls-client");
                    }
                    if let Some(first) = self.settings.remotes.first() {
                        self.notes.push(format!(
                            "line {}: remote: dropped; the TCP listening end accepts its peer from any address (TLS still authenticates it)",
                            first.line
                        ));
                    }
                    remotes.clear();
                } else if self.settings.remotes.is_empty() {
                    self.error(None, "remote", "missing: a p2p tunnel over UDP (or the connecting end over TCP) needs the peer's address; the daemon does not wait for an unknown peer");
                }
            }
        }
        (local, remotes)
    }

    fn tls_auth(&mut self) -> Option<TlsAuthPlan> {
        let digest = match &self.settings.auth {
            None => None,
            Some(at) => {
                match at.value.to_ascii_uppercase().replace('-', "").as_str() {
                    "SHA1" => Some("SHA1"),
                    "SHA256" => Some("SHA256"),
                    other if self.settings.tls_auth.is_some() => {
                        let line = at.line;
                        self.error(
                        Some(line),
                        "auth",
                        format!("tls-auth with digest {other} is not supported; SHA1 and SHA256 are"),
                    );
                        None
                    }
                    _ => None,
                }
            }
        };
        let Some(tls_auth) = self.settings.tls_auth.clone() else {
            if let Some(at) = &self.settings.auth {
                let line = at.line;
                self.ignore(line, "auth", "without tls-auth it only affects CBC data ciphers, which are not supported (AEAD ciphers carry their own tag)");
            }
            if let Some(at) = &self.settings.key_direction {
                let line = at.line;
                self.ignore(line, "key-direction", "used only with tls-auth");
            }
            return None;
        };
        let (key, direction) = tls_auth.value;
        // An explicit direction on the tls-auth line wins over key-direction.
        let direction = direction.or(self.settings.key_direction.as_ref().map(|at| at.value));
        Some(TlsAuthPlan {
            key,
            direction,
            digest: digest.filter(|digest| *digest != "SHA1"),
        })
    }

    /// The last `push "NAME SECONDS"` of a server config.
    fn pushed_seconds(&self, name: &str) -> Option<u64> {
        self.settings.push.iter().rev().find_map(|at| {
            match split_line(&at.value).ok()?.as_slice() {
                [option, seconds] if option == name => seconds.parse().ok(),
                _ => None,
            }
        })
    }

    fn keepalive(&mut self, role: Role) -> Option<(u64, u64)> {
        // A mode-server config spells `keepalive A B` out as `push "ping A"`,
        // `push "ping-restart B"` and its own ping/ping-restart (OpenVPN doubles the server's
        // timeout). The pushed pair is what `keepalive` means.
        if role == Role::Server && self.settings.keepalive.is_none() {
            if let (Some(ping), Some(restart)) = (
                self.pushed_seconds("ping"),
                self.pushed_seconds("ping-restart"),
            ) {
                if ping > 0 && restart > ping {
                    self.notes.push(format!(
                        "keepalive {ping} {restart} from the pushed ping and ping-restart (what OpenVPN's `keepalive {ping} {restart}` pushes)"
                    ));
                    let local: Vec<(usize, &str)> = [
                        self.settings.ping.as_ref().map(|at| (at.line, "ping")),
                        self.settings
                            .ping_restart
                            .as_ref()
                            .map(|at| (at.line, "ping-restart")),
                    ]
                    .into_iter()
                    .flatten()
                    .collect();
                    for (line, option) in local {
                        self.ignore(line, option, "the server's own liveness timer; the daemon takes its timers from keepalive");
                    }
                    return Some((ping, restart));
                }
            }
        }
        let s = &self.settings;
        let keepalive = match (&s.keepalive, &s.ping, &s.ping_restart) {
            (Some(at), _, _) => Some(at.value),
            (None, Some(ping), Some(restart)) if restart.value > ping.value && ping.value > 0 => {
                Some((ping.value, restart.value))
            }
            (None, Some(ping), restart) => {
                let line = ping.line;
                let reason = match restart {
                    None => "ping without ping-restart: the daemon needs both (keepalive INTERVAL TIMEOUT)".to_owned(),
                    Some(restart) => format!("ping {} with ping-restart {}: the timeout must be longer than the interval", ping.value, restart.value),
                };
                self.error(Some(line), "ping", reason);
                None
            }
            (None, None, Some(restart)) => {
                let line = restart.line;
                self.error(
                    Some(line),
                    "ping-restart",
                    "ping-restart without ping: the daemon needs both (keepalive INTERVAL TIMEOUT)",
                );
                None
            }
            (None, None, None) => None,
        };
        if role == Role::Server && keepalive.is_none() {
            self.notes.push("no keepalive: a client that vanishes without a word keeps its address until the daemon restarts; OpenVPN's sample server config uses keepalive 10 120".to_owned());
        }
        keepalive
    }

    fn device(&mut self) -> Option<String> {
        let dev = self.settings.dev.clone()?;
        // `dev tun` asks for the next free tunN: keep the daemon's own name.
        (dev.value != "tun").then_some(dev.value)
    }

    fn names(&mut self) -> Option<(String, String, String)> {
        let node = self
            .options
            .node
            .clone()
            .unwrap_or_else(|| name_from_file(self.file, NODE_NAME_MAX));
        let tunnel = self
            .options
            .tunnel
            .clone()
            .unwrap_or_else(|| name_from_file(self.file, TUNNEL_NAME_MAX));
        let wan = match &self.options.wan {
            Some(wan) => wan.clone(),
            None => {
                self.notes.push(format!(
                    "interfaces.wan = \"{DEFAULT_WAN}\" is a placeholder (no --wan given): set the appliance's WAN interface"
                ));
                DEFAULT_WAN.to_owned()
            }
        };
        Some((node, tunnel, wan))
    }

    /// Server-only options on a client or p2p config.
    fn reject_server_options(&mut self, role: Role) {
        let s = &self.settings;
        let mut misplaced: Vec<(usize, &str)> = Vec::new();
        misplaced.extend(s.push.iter().map(|at| (at.line, "push")));
        misplaced.extend(
            s.ifconfig_pool
                .as_ref()
                .map(|at| (at.line, "ifconfig-pool")),
        );
        misplaced.extend(
            s.client_config_dir
                .as_ref()
                .map(|at| (at.line, "client-config-dir")),
        );
        misplaced.extend(s.client_to_client.map(|line| (line, "client-to-client")));
        misplaced.extend(s.duplicate_cn.map(|line| (line, "duplicate-cn")));
        misplaced.extend(s.max_clients.as_ref().map(|at| (at.line, "max-clients")));
        let misplaced: Vec<(usize, String)> = misplaced
            .into_iter()
            .map(|(line, option)| (line, option.to_owned()))
            .collect();
        for (line, option) in misplaced {
            self.error(
                Some(line),
                &option,
                format!("is a server option; this config is a {role} (no server / mode server)"),
            );
        }
        if let Some(topology) = &self.settings.topology {
            let line = topology.line;
            match (role, topology.value) {
                (Role::Client, _) => self.ignore(line, "topology", "a client takes the topology the server pushes"),
                (_, Topology::Subnet) => self.error(
                    Some(line),
                    "topology",
                    "topology subnet in p2p mode makes ifconfig LOCAL NETMASK; the daemon's p2p tunnel needs both ends' addresses (ifconfig LOCAL REMOTE, topology net30)",
                ),
                (_, Topology::Net30) => self.ignore(line, "topology", "net30 is what p2p ifconfig LOCAL REMOTE means"),
            }
        }
        if self.options.ccd_dir.is_some() {
            self.error(
                None,
                "--ccd",
                format!("a client-config-dir only applies to a server; this config is a {role}"),
            );
        }
    }

    fn p2p_plan(&mut self) -> Option<P2pPlan> {
        let Some(ifconfig) = self.settings.ifconfig.clone() else {
            self.error(None, "ifconfig", "missing: a p2p tunnel needs ifconfig LOCAL REMOTE (the tunnel addresses of both ends)");
            return None;
        };
        let (local, remote) = ifconfig.value;
        if local == remote {
            self.error(
                Some(ifconfig.line),
                "ifconfig",
                "local and remote addresses are the same",
            );
            return None;
        }
        Some(P2pPlan {
            tls_server: self.settings.tls_server.is_some(),
            local,
            remote,
        })
    }

    /// `route` lines of a client or p2p config: prefixes through the tunnel.
    fn routes_through_peer(&mut self, role: Role, p2p: Option<&P2pPlan>, routes: &mut Vec<IpNet>) {
        let settings = self.settings.routes.clone();
        for route in settings {
            if let Some(gateway) = &route.value.gateway {
                let through_peer = p2p.is_some_and(|p2p| gateway.parse() == Ok(p2p.remote));
                if !through_peer {
                    let peer = match p2p {
                        Some(p2p) => format!("the peer's tunnel address {}", p2p.remote),
                        None => "the tunnel (a client's routes go to its tun device)".to_owned(),
                    };
                    self.error(
                        Some(route.line),
                        "route",
                        format!("gateway {gateway} is not {peer}; only routes through the tunnel are supported ({role})"),
                    );
                    continue;
                }
            }
            if !routes.contains(&route.value.prefix) {
                routes.push(route.value.prefix);
            }
        }
    }

    fn server_plan(&mut self, routes: &mut Vec<IpNet>, keepalive_set: bool) -> Option<ServerPlan> {
        let topology = match &self.settings.topology {
            Some(at) => at.value,
            None => {
                self.notes.push(
                    "topology: net30, OpenVPN 2.6's default (the config does not set it)"
                        .to_owned(),
                );
                Topology::Net30
            }
        };
        let ServerSubnet {
            subnet,
            server_address,
            subnet_route_line,
        } = self.server_subnet(topology)?;
        if !(8..=29).contains(&subnet.prefix_len()) {
            self.error(
                None,
                "ifconfig",
                format!("the client subnet {subnet} must be /8 to /29 for the daemon"),
            );
            return None;
        }
        if self.settings.server.is_none() && self.settings.ifconfig_pool.is_none() {
            self.error(self.settings.mode_server, "mode", "mode server without ifconfig-pool (addresses only from client-config-dir) is not supported: the daemon would hand out pool addresses to clients OpenVPN refuses; add ifconfig-pool");
        }
        self.server_routes(subnet, subnet_route_line, routes);
        let server_address_value = server_address
            .unwrap_or_else(|| Ipv4Addr::from(u32::from(subnet.network()).saturating_add(1)));
        let (push_routes, push) = self.pushes(topology, server_address_value, keepalive_set);
        let client_config_dir = self.client_config_dir();
        Some(ServerPlan {
            subnet,
            topology,
            server_address,
            ifconfig_pool: self.settings.ifconfig_pool.as_ref().map(|at| at.value),
            push_routes,
            push,
            client_to_client: self.settings.client_to_client.is_some(),
            duplicate_cn: self.settings.duplicate_cn.is_some(),
            client_config_dir,
            max_clients: self.settings.max_clients.as_ref().map(|at| at.value),
        })
    }

    /// The client subnet, from `server NETWORK NETMASK` or, under `mode server`, from `ifconfig`.
    fn server_subnet(&mut self, topology: Topology) -> Option<ServerSubnet> {
        match (self.settings.server.clone(), self.settings.ifconfig.clone()) {
            (Some(server), Some(ifconfig)) => {
                self.error(
                    Some(ifconfig.line),
                    "ifconfig",
                    format!(
                        "`server` on line {} sets the server's address already; remove one of them",
                        server.line
                    ),
                );
                None
            }
            (Some(server), None) => {
                if !(8..=29).contains(&server.value.prefix_len()) {
                    self.error(
                        Some(server.line),
                        "server",
                        format!("{}: the daemon takes /8 to /29", server.value),
                    );
                    return None;
                }
                Some(ServerSubnet {
                    subnet: server.value,
                    server_address: None,
                    subnet_route_line: None,
                })
            }
            (None, None) => {
                self.error(self.settings.mode_server, "ifconfig", "missing: mode server needs ifconfig (the server's tunnel address) and ifconfig-pool");
                None
            }
            (None, Some(ifconfig)) => self.mode_server_subnet(topology, ifconfig),
        }
    }

    /// `mode server` with `ifconfig ADDRESS NETMASK` (topology subnet), or with `ifconfig` and
    /// the `route` that covers the server's address (topology net30, as OpenVPN's own `server`
    /// helper writes it).
    fn mode_server_subnet(
        &mut self,
        topology: Topology,
        ifconfig: At<(Ipv4Addr, Ipv4Addr)>,
    ) -> Option<ServerSubnet> {
        let (address, second) = ifconfig.value;
        match topology {
            Topology::Subnet => {
                let length = match netmask_length(&second.to_string()) {
                    Ok(length) => length,
                    Err(reason) => {
                        self.error(
                            Some(ifconfig.line),
                            "ifconfig",
                            format!(
                                "with topology subnet the second address is the netmask: {reason}"
                            ),
                        );
                        return None;
                    }
                };
                match Ipv4Net::new(address, length).map(|net| net.trunc()) {
                    Ok(subnet) => Some(ServerSubnet {
                        subnet,
                        server_address: Some(address),
                        subnet_route_line: None,
                    }),
                    Err(error) => {
                        self.error(Some(ifconfig.line), "ifconfig", error.to_string());
                        None
                    }
                }
            }
            Topology::Net30 => {
                let covering =
                    self.settings
                        .routes
                        .iter()
                        .find_map(|route| match route.value.prefix {
                            IpNet::V4(prefix)
                                if prefix.contains(&address) && prefix.prefix_len() < 30 =>
                            {
                                Some((prefix, route.line))
                            }
                            _ => None,
                        });
                match covering {
                    Some((subnet, line)) => Some(ServerSubnet {
                        subnet,
                        server_address: Some(address),
                        subnet_route_line: Some(line),
                    }),
                    None => {
                        self.error(Some(ifconfig.line), "ifconfig", format!("mode server with topology net30: no `route NETWORK NETMASK` covers {address}, so the client subnet is unknown"));
                        None
                    }
                }
            }
        }
    }

    /// `route` lines of a server config: prefixes routed to the clients (to whichever client's
    /// iroute covers them), so their gateway, if any, must be in the client subnet.
    /// `subnet_route_line` is the net30 `route` that is the client subnet itself.
    fn server_routes(
        &mut self,
        subnet: Ipv4Net,
        subnet_route_line: Option<usize>,
        routes: &mut Vec<IpNet>,
    ) {
        if let Some(line) = subnet_route_line {
            self.ignore(line, "route", "the client subnet of the net30 mode-server config: it is the `server` key (the daemon routes it)");
        }
        for route in self.settings.routes.clone() {
            if subnet_route_line == Some(route.line) {
                continue;
            }
            if let Some(gateway) = &route.value.gateway {
                let in_subnet = gateway
                    .parse::<Ipv4Addr>()
                    .is_ok_and(|gateway| subnet.contains(&gateway));
                if !in_subnet {
                    self.error(Some(route.line), "route", format!("gateway {gateway} is outside the client subnet {subnet}; only routes through the tunnel are supported"));
                    continue;
                }
                self.ignore(route.line, "route", format!("gateway {gateway}: the daemon routes the prefix to the client whose iroute covers it"));
            }
            if !routes.contains(&route.value.prefix) {
                routes.push(route.value.prefix);
            }
        }
    }

    /// The client-config-dir to name (`--ccd` wins over the config's own), with every problem
    /// of its files reported.
    fn client_config_dir(&mut self) -> Option<PathBuf> {
        let client_config_dir = match (&self.options.ccd_dir, &self.settings.client_config_dir) {
            (Some(dir), _) => Some(std::path::absolute(dir).unwrap_or_else(|_| dir.clone())),
            (None, Some(at)) => Some(at.value.clone()),
            (None, None) => None,
        };
        let dir = client_config_dir.as_ref()?;
        // A problem with the directory itself is at the option that named it.
        let (line, option) = match self.options.ccd_dir {
            Some(_) => (None, "--ccd"),
            None => (
                self.settings.client_config_dir.as_ref().map(|at| at.line),
                "client-config-dir",
            ),
        };
        for problem in check_ccd_dir(dir) {
            match problem {
                CcdProblem::Directory(reason) => self.error(line, option, reason),
                CcdProblem::File(diagnostic) => self.diagnostics.push(diagnostic),
            }
        }
        client_config_dir
    }

    /// `push "..."` lines → pushed routes and verbatim options. What the daemon's server pushes
    /// by itself (topology, route-gateway, ping/ping-restart from keepalive, compression, the
    /// net30 route to the server) is dropped, with the reason, so that it is not pushed twice.
    fn pushes(
        &mut self,
        topology: Topology,
        server_address: Ipv4Addr,
        keepalive_set: bool,
    ) -> (Vec<Ipv4Net>, Vec<String>) {
        let mut routes = Vec::new();
        let mut verbatim = Vec::new();
        for at in self.settings.push.clone() {
            let line = at.line;
            // What OpenVPN's own parser cannot split is pushed as written: the server does not
            // judge pushed text either.
            let tokens = split_line(&at.value).unwrap_or_default();
            let words: Vec<&str> = tokens.iter().map(String::as_str).collect();
            match words.as_slice() {
                ["route", network, rest @ ..] if rest.len() <= 2 && rest.get(1).is_none_or(|gw| *gw == "vpn_gateway") => {
                    let mask = rest.first().copied().unwrap_or("255.255.255.255");
                    match ipv4_prefix(network, mask) {
                        Ok(prefix) if topology == Topology::Net30 && prefix == Ipv4Net::from(server_address) => {
                            self.ignore(line, "push", format!("\"{}\": the daemon pushes the route to its own tunnel address itself (net30), as OpenVPN's `server` does", at.value));
                        }
                        Ok(prefix) if routes.contains(&prefix) => {}
                        Ok(prefix) => routes.push(prefix),
                        Err(reason) => self.error(Some(line), "push", format!("\"{}\": {reason}", at.value)),
                    }
                }
                ["topology", pushed] => {
                    let ours = match topology {
                        Topology::Subnet => "subnet",
                        Topology::Net30 => "net30",
                    };
                    if *pushed == ours {
                        self.ignore(line, "push", format!("\"{}\": the daemon pushes its topology itself", at.value));
                    } else {
                        self.error(Some(line), "push", format!("pushes topology {pushed} but the server runs topology {ours}"));
                    }
                }
                ["route-gateway", ..] => self.ignore(line, "push", format!("\"{}\": the daemon pushes its own tunnel address as route-gateway", at.value)),
                ["ping" | "ping-restart", ..] if keepalive_set => self.ignore(line, "push", format!("\"{}\": the daemon pushes ping and ping-restart from keepalive", at.value)),
                ["comp-lzo" | "compress", ..] if self.settings.compress.is_some() => self.ignore(line, "push", format!("\"{}\": the daemon pushes the compression framing of its `compress` key", at.value)),
                ["ifconfig" | "ifconfig-push" | "peer-id" | "cipher" | "auth-token", ..] => self.error(Some(line), "push", format!("\"{}\": the daemon pushes this itself per client; it cannot be pushed by hand", at.value)),
                _ => verbatim.push(at.value.clone()),
            }
        }
        (routes, verbatim)
    }
}

/// Where a server's clients get their addresses.
struct ServerSubnet {
    /// The client subnet (`server` in the TOML).
    subnet: Ipv4Net,
    /// The server's own address if the config sets it (`ifconfig` under `mode server`).
    server_address: Option<Ipv4Addr>,
    /// The line of the net30 `route` that gave the client subnet, if that is where it came from.
    subnet_route_line: Option<usize>,
}

/// A problem with a client-config-dir.
enum CcdProblem {
    /// The directory itself.
    Directory(String),
    /// One of its files.
    File(Diagnostic),
}

/// Checks the client-config-dir with the daemon's own ccd parser
/// ([`crate::config::ccd::read_client_config`]): every file in it (named by a client's common
/// name; dot files are skipped, as `check-config` does) and every problem, not just the first.
fn check_ccd_dir(dir: &Path) -> Vec<CcdProblem> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) => {
            return vec![CcdProblem::Directory(format!(
                "cannot read directory {}: {}",
                dir.display(),
                describe(&error)
            ))]
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_file()))
        .filter_map(|entry| entry.file_name().to_str().map(str::to_owned))
        .filter(|name| !name.starts_with('.'))
        .collect();
    names.sort();
    names
        .iter()
        .filter_map(|name| crate::config::ccd::read_client_config(dir, name).err())
        .map(|error| {
            CcdProblem::File(Diagnostic {
                file: error.file,
                line: Some(error.line),
                option: None,
                reason: error.reason,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_files() {
        assert_eq!(
            name_from_file(Path::new("/etc/openvpn/server.conf"), 15),
            "server"
        );
        assert_eq!(
            name_from_file(Path::new("Site_B link.ovpn"), 15),
            "site-b-link"
        );
        assert_eq!(name_from_file(Path::new("2nd--hq.conf"), 15), "nd-hq");
        assert_eq!(
            name_from_file(Path::new("a-very-long-name-indeed.conf"), 15),
            "a-very-long-nam"
        );
        assert_eq!(name_from_file(Path::new("___.conf"), 15), "openvpn");
    }

    #[test]
    fn netmasks() {
        assert_eq!(netmask_length("255.255.255.0"), Ok(24));
        assert_eq!(netmask_length("255.255.255.255"), Ok(32));
        assert_eq!(netmask_length("0.0.0.0"), Ok(0));
        assert!(netmask_length("255.0.255.0").is_err());
        assert!(netmask_length("10.8.0.1/24").is_err());
        assert_eq!(
            ipv4_prefix("10.8.0.0", "255.255.255.0")
                .unwrap()
                .to_string(),
            "10.8.0.0/24"
        );
        assert!(ipv4_prefix("10.8.0.1", "255.255.255.0")
            .unwrap_err()
            .contains("host bits"));
    }
}
