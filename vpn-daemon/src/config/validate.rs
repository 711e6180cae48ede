//! Raw file → [`Config`]: value checks, role rules, file checks and cross-checks between
//! tunnels. The first problem found is returned, located at the value (or key) it is about.
use std::collections::HashSet;
use std::fmt::Display;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use toml::Spanned;

use super::error::{line_column, Problem};
use super::raw::{
    KeySpans, Probe, RawConfig, RawFastPath, RawInterfaces, RawNode, RawPki, RawTunnel,
};
use super::values::{check_ifname, check_name, parse_prefix, parse_socket_addr};
use super::{
    files, Addressing, Config, ControlProtection, FastPath, Interfaces, Node, Role, Tunnel,
    TunnelFastPath, SCHEMA_VERSION,
};
use crate::proto::tls::PkiFiles;
use crate::proto::vocabulary::{
    Cipher, IfconfigPool, Keepalive, KeyDirection, TlsRole, Topology, Transport, UnknownCipher,
};

const NODE_NAME_MAX: usize = 15;
const TUNNEL_NAME_MAX: usize = 32;
/// Default tun device is "vpn-" + this many characters of the tunnel name: 15 bytes in all.
const DEVICE_NAME_FROM_TUNNEL: usize = 11;
/// `sun_path` is 108 bytes including the terminating NUL.
const UNIX_SOCKET_PATH_MAX: usize = 107;
const DEFAULT_RENEG_SECONDS: u64 = 3600;
const MIN_RENEG_SECONDS: i64 = 10;
const DEFAULT_MTU: u16 = 1500;
const MTU_RANGE: std::ops::RangeInclusive<i64> = 576..=9000;
const DEFAULT_MAX_CLIENTS: u16 = 1024;
const SERVER_PREFIX_LENGTHS: std::ops::RangeInclusive<u8> = 8..=29;
/// Durations are capped so that `Instant + duration` can never overflow further down.
const MAX_SECONDS: i64 = 365 * 24 * 3600;
/// Hints for a missing `local` and a missing `remote`.
const LOCAL_HINT: &str = "the IP:PORT to listen on, e.g. \"0.0.0.0:1194\"";
const REMOTE_HINT: &str = "a list of the peer's IP:PORT, e.g. [\"192.0.2.1:1194\"]";

const PEM_CERTIFICATE: &[&str] = &["CERTIFICATE"];
const PEM_PRIVATE_KEY: &[&str] = &["PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"];
const PEM_CRL: &[&str] = &["X509 CRL"];

/// Checks `text` (the file at `path`) and builds the [`Config`].
pub(super) fn config(text: &str, path: &Path) -> Result<Config, Problem> {
    // Forgiving pass first: TOML syntax, schema version, `[tunnel]` vs `[[tunnel]]`.
    let probe: Probe = toml::from_str(text)?;
    check_version(probe.version)?;
    check_tunnel_is_array(probe.tunnel)?;
    let raw: RawConfig = toml::from_str(text)?;
    let checker = Checker {
        text,
        base_dir: base_dir(path),
    };
    checker.config(raw, path)
}

fn check_version(version: Option<Spanned<toml::Value>>) -> Result<(), Problem> {
    let Some(version) = version else {
        return Err(Problem::unplaced(format!(
            "missing required key `version`; add `version = {SCHEMA_VERSION}` at the top of the file"
        )));
    };
    match version.get_ref() {
        toml::Value::Integer(SCHEMA_VERSION) => Ok(()),
        toml::Value::Integer(other) => Err(Problem::at(
            version.span(),
            format!(
                "unsupported config version {other}; this daemon reads version {SCHEMA_VERSION}"
            ),
        )),
        other => Err(Problem::at(
            version.span(),
            format!(
                "`version` must be the integer {SCHEMA_VERSION}, found a {}",
                other.type_str()
            ),
        )),
    }
}

fn check_tunnel_is_array(tunnel: Option<Spanned<toml::Value>>) -> Result<(), Problem> {
    match tunnel {
        Some(tunnel) if tunnel.get_ref().is_table() => Err(Problem::at(
            tunnel.span(),
            "`tunnel` must be an array of tables: write each tunnel as [[tunnel]] (double brackets)",
        )),
        _ => Ok(()),
    }
}

/// The directory relative paths resolve against: the config file's, made absolute so that the
/// resolved paths stay valid whatever the daemon's working directory later is.
fn base_dir(config_path: &Path) -> PathBuf {
    let dir = config_path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// A tunnel as built so far, with the spans the cross-checks point at.
struct BuiltTunnel {
    tunnel: Tunnel,
    local_span: Option<Range<usize>>,
    /// The `device` value, or the tunnel name when the device name was derived from it.
    device_span: Range<usize>,
    device_is_default: bool,
    name_span: Range<usize>,
}

struct Checker<'a> {
    text: &'a str,
    base_dir: PathBuf,
}

impl Checker<'_> {
    fn config(&self, raw: RawConfig, path: &Path) -> Result<Config, Problem> {
        let node = self.node(&raw.node)?;
        let pki = self.pki(&raw.pki)?;
        let interfaces = self.interfaces(&raw.interfaces)?;
        let mut built: Vec<BuiltTunnel> = Vec::with_capacity(raw.tunnel.len());
        for (index, raw_tunnel) in raw.tunnel.iter().enumerate() {
            let tunnel = self.tunnel(raw_tunnel, index, &interfaces, &built)?;
            built.push(tunnel);
        }
        let fast_path = fast_path(raw.fast_path.as_ref())?;
        check_link_groups(&raw.tunnel, &built, &interfaces)?;
        Ok(Config {
            path: path.to_path_buf(),
            node,
            pki,
            interfaces,
            tunnels: built.into_iter().map(|built| built.tunnel).collect(),
            fast_path,
        })
    }

    /// 1-based line of a span, for "first defined on line N" hints.
    fn line_of(&self, span: &Range<usize>) -> usize {
        line_column(self.text, span.start).0
    }

    fn resolve(&self, path: &str) -> PathBuf {
        // `join` keeps `path` as is when it is absolute.
        self.base_dir.join(path)
    }

    /// Resolves a path value and runs `check` on the file it names.
    fn checked_file<E: Display>(
        &self,
        value: &Spanned<String>,
        what: &str,
        check: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<PathBuf, Problem> {
        let given = value.get_ref();
        if given.is_empty() {
            return Err(Problem::at(value.span(), format!("{what} path is empty")));
        }
        let resolved = self.resolve(given);
        check(&resolved).map_err(|error| {
            let reason = if Path::new(given) == resolved {
                format!("{what} file {given}: {error}")
            } else {
                format!(
                    "{what} file {given} (resolved to {}): {error}",
                    resolved.display()
                )
            };
            Problem::at(value.span(), reason)
        })?;
        Ok(resolved)
    }

    fn node(&self, raw: &RawNode) -> Result<Node, Problem> {
        let name = raw.name.get_ref();
        check_name("node name", name, NODE_NAME_MAX, true)
            .map_err(|error| Problem::at(raw.name.span(), error.to_string()))?;
        let control_socket = match &raw.control_socket {
            None => PathBuf::from(format!("/run/vpn-daemon/{name}.sock")),
            Some(socket) if socket.get_ref().is_empty() => {
                return Err(Problem::at(socket.span(), "`control_socket` is empty"));
            }
            Some(socket) => {
                let resolved = self.resolve(socket.get_ref());
                let length = resolved.as_os_str().len();
                if length > UNIX_SOCKET_PATH_MAX {
                    return Err(Problem::at(
                        socket.span(),
                        format!(
                            "control socket path {} is {length} bytes; Unix socket paths are limited to {UNIX_SOCKET_PATH_MAX}",
                            resolved.display()
                        ),
                    ));
                }
                resolved
            }
        };
        Ok(Node {
            name: name.clone(),
            control_socket,
        })
    }

    fn pki(&self, raw: &RawPki) -> Result<PkiFiles, Problem> {
        let pem = |labels: &'static [&'static str]| {
            move |path: &Path| files::check_pem_file(path, labels)
        };
        Ok(PkiFiles {
            ca: self.checked_file(&raw.ca, "CA certificate", pem(PEM_CERTIFICATE))?,
            cert: self.checked_file(&raw.cert, "certificate", pem(PEM_CERTIFICATE))?,
            key: self.checked_file(&raw.key, "private key", pem(PEM_PRIVATE_KEY))?,
            crl: raw
                .crl
                .as_ref()
                .map(|crl| self.checked_file(crl, "CRL", pem(PEM_CRL)))
                .transpose()?,
        })
    }

    fn interfaces(&self, raw: &RawInterfaces) -> Result<Interfaces, Problem> {
        let ifname = |value: &Spanned<String>| {
            check_ifname(value.get_ref())
                .map(|()| value.get_ref().clone())
                .map_err(|error| Problem::at(value.span(), error.to_string()))
        };
        let wan = ifname(&raw.wan)?;
        let lan = raw.lan.as_ref().map(ifname).transpose()?;
        if let (Some(lan), Some(lan_value)) = (&lan, &raw.lan) {
            if *lan == wan {
                return Err(Problem::at(
                    lan_value.span(),
                    format!("lan and wan are both `{wan}`; they must be different interfaces"),
                ));
            }
        }
        Ok(Interfaces {
            wan,
            lan,
            xdp_mode: raw.xdp_mode.unwrap_or_default(),
        })
    }

    /// Where key `key` of the `index`th `[[tunnel]]` is written, if it can be found.
    fn tunnel_key_span(&self, index: usize, key: &str) -> Option<Range<usize>> {
        let spans: KeySpans = toml::from_str(self.text).ok()?;
        let table = spans.tunnel.get(index)?;
        let (key, _) = table.get_key_value(key)?;
        Some(key.span())
    }

    fn tunnel(
        &self,
        raw: &RawTunnel,
        index: usize,
        interfaces: &Interfaces,
        earlier: &[BuiltTunnel],
    ) -> Result<BuiltTunnel, Problem> {
        let name = raw.name.get_ref().clone();
        let name_span = raw.name.span();
        check_name("tunnel name", &name, TUNNEL_NAME_MAX, false)
            .map_err(|error| Problem::at(name_span.clone(), error.to_string()))?;
        if let Some(first) = earlier.iter().find(|built| built.tunnel.name == name) {
            return Err(Problem::at(
                name_span,
                format!(
                    "duplicate tunnel name `{name}` (first used on line {})",
                    self.line_of(&first.name_span)
                ),
            ));
        }
        let role = *raw.role.get_ref();
        self.reject_keys_for_other_roles(raw, index, role)?;
        let transport = raw.transport.unwrap_or_default();
        let local = raw
            .local
            .as_ref()
            .map(|local| {
                parse_socket_addr(local.get_ref())
                    .map_err(|error| Problem::at(local.span(), error.to_string()))
            })
            .transpose()?;
        let remotes = match &raw.remote {
            None => Vec::new(),
            Some(list) => list
                .get_ref()
                .iter()
                .map(remote_address)
                .collect::<Result<_, _>>()?,
        };
        let (device, device_span, device_is_default) = match &raw.device {
            Some(device) => {
                check_ifname(device.get_ref())
                    .map_err(|error| Problem::at(device.span(), error.to_string()))?;
                (device.get_ref().clone(), device.span(), false)
            }
            None => {
                let prefix: String = name.chars().take(DEVICE_NAME_FROM_TUNNEL).collect();
                (format!("vpn-{prefix}"), name_span.clone(), true)
            }
        };
        let ciphers = ciphers(raw.ciphers.as_ref())?;
        let control_protection = self.control_protection(raw, index)?;
        let keepalive = raw.keepalive.as_ref().map(keepalive).transpose()?;
        let reneg_interval = reneg_interval(raw.reneg_sec.as_ref())?;
        let mtu = mtu(raw.mtu.as_ref())?;
        let verify_x509_name = match &raw.verify_x509_name {
            Some(cn) if cn.get_ref().trim().is_empty() => {
                return Err(Problem::at(cn.span(), "`verify_x509_name` is empty"));
            }
            Some(cn) => Some(cn.get_ref().clone()),
            None => None,
        };
        let routes = prefix_list(raw.routes.as_ref(), "route")?;
        let accept_pushed_default_route = match &raw.accept_pushed_default_route {
            Some(accept) if role != Role::Client => {
                return Err(Problem::at(
                    accept.span(),
                    format!("`accept_pushed_default_route` is for role \"client\" only (tunnel `{name}` is {role})"),
                ));
            }
            Some(accept) => *accept.get_ref(),
            None => false,
        };

        let missing = |key: &str, hint: &str| {
            Problem::at(
                name_span.clone(),
                format!("tunnel `{name}` (role {role}) is missing required key `{key}` ({hint})"),
            )
        };
        let addressing = match role {
            Role::Client => {
                require_remotes(raw, &missing, REMOTE_HINT)?;
                Addressing::Client
            }
            Role::Server => {
                if local.is_none() {
                    return Err(missing("local", LOCAL_HINT));
                }
                let Some(subnet) = &raw.server else {
                    return Err(missing(
                        "server",
                        "the IPv4 subnet handed out to clients, e.g. \"10.8.0.0/24\"",
                    ));
                };
                self.server_addressing(raw, server_subnet(subnet)?)?
            }
            Role::P2p => p2p_addressing(raw, transport, local.is_some(), &missing)?,
        };

        let built = BuiltTunnel {
            tunnel: Tunnel {
                name,
                role,
                transport,
                local,
                remotes,
                device,
                ciphers,
                control_protection,
                keepalive,
                reneg_interval,
                mtu,
                addressing,
                routes,
                remote_cert_tls: raw.remote_cert_tls,
                verify_x509_name,
                compress: raw.compress,
                fast_path: tunnel_fast_path(raw)?,
                accept_pushed_default_route,
            },
            local_span: raw.local.as_ref().map(Spanned::span),
            device_span,
            device_is_default,
            name_span,
        };
        check_device_is_free(&built, interfaces, earlier)?;
        check_local_is_free(&built, earlier)?;
        Ok(built)
    }

    /// "`ifconfig` is only valid for role p2p", pointing at the first such key in the file.
    fn reject_keys_for_other_roles(
        &self,
        raw: &RawTunnel,
        index: usize,
        role: Role,
    ) -> Result<(), Problem> {
        let mut misplaced: Vec<(&str, Range<usize>, &str)> = Vec::new();
        let mut note = |key, span: Option<Range<usize>>, why| {
            if let Some(span) = span {
                misplaced.push((key, span, why));
            }
        };
        if role != Role::P2p {
            let why = "is only valid for role p2p";
            note("tls", raw.tls.as_ref().map(Spanned::span), why);
            note("ifconfig", raw.ifconfig.as_ref().map(Spanned::span), why);
        }
        if role != Role::Server {
            let why = "is only valid for role server";
            note("server", raw.server.as_ref().map(Spanned::span), why);
            note("topology", raw.topology.as_ref().map(Spanned::span), why);
            note(
                "push_routes",
                raw.push_routes.as_ref().map(Spanned::span),
                why,
            );
            note(
                "server_address",
                raw.server_address.as_ref().map(Spanned::span),
                why,
            );
            note(
                "ifconfig_pool",
                raw.ifconfig_pool.as_ref().map(Spanned::span),
                why,
            );
            note("push", raw.push.as_ref().map(Spanned::span), why);
            note(
                "client_to_client",
                raw.client_to_client.as_ref().map(Spanned::span),
                why,
            );
            note(
                "duplicate_cn",
                raw.duplicate_cn.as_ref().map(Spanned::span),
                why,
            );
            note(
                "client_config_dir",
                raw.client_config_dir.as_ref().map(Spanned::span),
                why,
            );
            note(
                "max_clients",
                raw.max_clients.as_ref().map(Spanned::span),
                why,
            );
        }
        if role == Role::Server {
            let why = "is not valid for role server (a server only accepts connections)";
            note("remote", raw.remote.as_ref().map(Spanned::span), why);
        }
        match misplaced.into_iter().min_by_key(|(_, span, _)| span.start) {
            None => Ok(()),
            Some((key, value_span, why)) => {
                let span = self.tunnel_key_span(index, key).unwrap_or(value_span);
                Err(Problem::at(span, format!("`{key}` {why}")))
            }
        }
    }

    /// The multi-client server keys of one tunnel (`subnet` already checked).
    fn server_addressing(&self, raw: &RawTunnel, subnet: Ipv4Net) -> Result<Addressing, Problem> {
        let topology = raw
            .topology
            .as_ref()
            .map(|topology| *topology.get_ref())
            .unwrap_or_default();
        let push_routes = ipv4_prefix_list(raw.push_routes.as_ref(), "push_routes")?;
        let server_address = match &raw.server_address {
            None => first_host(subnet),
            Some(value) => {
                let address = ipv4_address(value, "server_address")?;
                check_host_of(address, subnet, value, "server_address")?;
                address
            }
        };
        let pool = match &raw.ifconfig_pool {
            None => default_pool(subnet, topology),
            Some(value) => {
                let raw_pool = value.get_ref();
                let start = ipv4_address(&raw_pool.start, "ifconfig_pool.start")?;
                check_host_of(start, subnet, &raw_pool.start, "ifconfig_pool.start")?;
                let end = ipv4_address(&raw_pool.end, "ifconfig_pool.end")?;
                check_host_of(end, subnet, &raw_pool.end, "ifconfig_pool.end")?;
                if end < start {
                    return Err(Problem::at(
                        raw_pool.end.span(),
                        format!("ifconfig_pool end {end} comes before its start {start}"),
                    ));
                }
                IfconfigPool { start, end }
            }
        };
        let push = match &raw.push {
            None => Vec::new(),
            Some(list) => list
                .get_ref()
                .iter()
                .map(push_option)
                .collect::<Result<_, _>>()?,
        };
        let client_config_dir =
            match &raw.client_config_dir {
                None => None,
                Some(value) => Some(self.checked_file(value, "client_config_dir", |path| {
                    match std::fs::metadata(path) {
                        Ok(metadata) if metadata.is_dir() => Ok(()),
                        Ok(_) => Err("is not a directory".to_owned()),
                        Err(error) => Err(super::error::describe_io_error(&error)),
                    }
                })?),
            };
        let max_clients = match &raw.max_clients {
            None => DEFAULT_MAX_CLIENTS,
            Some(value) => u16::try_from(*value.get_ref())
                .ok()
                .filter(|&count| count >= 1)
                .ok_or_else(|| {
                    Problem::at(
                        value.span(),
                        format!(
                            "max_clients must be between 1 and {}, got {}",
                            u16::MAX,
                            value.get_ref()
                        ),
                    )
                })?,
        };
        Ok(Addressing::Server {
            subnet,
            topology,
            push_routes,
            server_address,
            pool,
            push,
            client_to_client: raw
                .client_to_client
                .as_ref()
                .is_some_and(|value| *value.get_ref()),
            duplicate_cn: raw
                .duplicate_cn
                .as_ref()
                .is_some_and(|value| *value.get_ref()),
            client_config_dir,
            max_clients,
        })
    }

    fn control_protection(
        &self,
        raw: &RawTunnel,
        index: usize,
    ) -> Result<ControlProtection, Problem> {
        match (&raw.tls_auth, &raw.tls_crypt) {
            (Some(tls_auth), Some(tls_crypt)) => {
                // Point at whichever of the two comes second.
                let (key, value_span) = if tls_auth.span().start > tls_crypt.span().start {
                    ("tls_auth", tls_auth.span())
                } else {
                    ("tls_crypt", tls_crypt.span())
                };
                let span = self.tunnel_key_span(index, key).unwrap_or(value_span);
                Err(Problem::at(
                    span,
                    "`tls_auth` and `tls_crypt` cannot be used together; pick one (tls_crypt also hides the TLS handshake)",
                ))
            }
            (Some(tls_auth), None) => {
                let tls_auth = tls_auth.get_ref();
                let key =
                    self.checked_file(&tls_auth.key, "tls_auth key", files::check_static_key_file)?;
                let direction = match &tls_auth.direction {
                    None => None,
                    Some(direction) => match direction.get_ref() {
                        0 => Some(KeyDirection::Normal),
                        1 => Some(KeyDirection::Inverse),
                        other => {
                            return Err(Problem::at(
                                direction.span(),
                                format!("tls_auth `direction` must be 0 or 1, got {other}"),
                            ))
                        }
                    },
                };
                Ok(ControlProtection::TlsAuth {
                    key,
                    direction,
                    digest: tls_auth.digest.unwrap_or_default(),
                })
            }
            (None, Some(tls_crypt)) => Ok(ControlProtection::TlsCrypt {
                key: self.checked_file(tls_crypt, "tls_crypt key", files::check_static_key_file)?,
            }),
            (None, None) => Ok(ControlProtection::None),
        }
    }
}

fn remote_address(value: &Spanned<String>) -> Result<SocketAddr, Problem> {
    let address = parse_socket_addr(value.get_ref())
        .map_err(|error| Problem::at(value.span(), error.to_string()))?;
    if address.port() == 0 {
        return Err(Problem::at(
            value.span(),
            format!("remote `{address}` has port 0; give the port the peer listens on"),
        ));
    }
    Ok(address)
}

/// A p2p tunnel's addressing: which end runs TLS and the two tunnel addresses, plus the keys the
/// role requires (`local`, and `remote` unless it is the TCP end that only accepts).
fn p2p_addressing(
    raw: &RawTunnel,
    transport: Transport,
    local_is_set: bool,
    missing: &dyn Fn(&str, &str) -> Problem,
) -> Result<Addressing, Problem> {
    let Some(tls) = &raw.tls else {
        return Err(missing(
            "tls",
            "\"server\" or \"client\": which end runs the TLS server",
        ));
    };
    let tls = *tls.get_ref();
    let Some(ifconfig) = &raw.ifconfig else {
        return Err(missing(
            "ifconfig",
            "the tunnel addresses, e.g. { local = \"10.99.0.1\", remote = \"10.99.0.2\" }",
        ));
    };
    let ifconfig = ifconfig.get_ref();
    let tunnel_local = ipv4_address(&ifconfig.local, "ifconfig.local")?;
    let tunnel_remote = ipv4_address(&ifconfig.remote, "ifconfig.remote")?;
    if tunnel_local == tunnel_remote {
        return Err(Problem::at(
            ifconfig.remote.span(),
            format!("ifconfig local and remote are both {tunnel_local}; they must differ"),
        ));
    }
    if !local_is_set {
        return Err(missing("local", LOCAL_HINT));
    }
    // Over TCP the TLS server end only accepts, so it may do without a remote.
    let accepts_only = transport == Transport::Tcp && tls == TlsRole::Server;
    if !accepts_only {
        require_remotes(raw, missing, REMOTE_HINT)?;
    }
    Ok(Addressing::P2p {
        tls,
        local: tunnel_local,
        remote: tunnel_remote,
    })
}

/// `remote` must be present and non-empty.
fn require_remotes(
    raw: &RawTunnel,
    missing: &dyn Fn(&str, &str) -> Problem,
    hint: &str,
) -> Result<(), Problem> {
    match &raw.remote {
        None => Err(missing("remote", hint)),
        Some(list) if list.get_ref().is_empty() => Err(Problem::at(
            list.span(),
            format!("`remote` needs at least one address ({hint})"),
        )),
        Some(_) => Ok(()),
    }
}

fn ciphers(raw: Option<&Spanned<Vec<Spanned<String>>>>) -> Result<Vec<Cipher>, Problem> {
    let Some(list) = raw else {
        return Ok(Cipher::ALL.to_vec());
    };
    if list.get_ref().is_empty() {
        return Err(Problem::at(
            list.span(),
            "`ciphers` is empty; list at least one, or leave the key out for the default",
        ));
    }
    let mut ciphers = Vec::new();
    for name in list.get_ref() {
        let cipher: Cipher = name
            .get_ref()
            .parse()
            .map_err(|error: UnknownCipher| Problem::at(name.span(), error.to_string()))?;
        if ciphers.contains(&cipher) {
            return Err(Problem::at(
                name.span(),
                format!("cipher {cipher} is listed twice"),
            ));
        }
        ciphers.push(cipher);
    }
    Ok(ciphers)
}

/// Seconds from an integer value, within 1..=[`MAX_SECONDS`] after `minimum`.
fn seconds(value: &Spanned<i64>, what: &str, minimum: i64) -> Result<Duration, Problem> {
    let seconds = *value.get_ref();
    if seconds < minimum {
        return Err(Problem::at(
            value.span(),
            format!("{what} must be at least {minimum} seconds, got {seconds}"),
        ));
    }
    if seconds > MAX_SECONDS {
        return Err(Problem::at(
            value.span(),
            format!("{what} must be at most {MAX_SECONDS} seconds (one year), got {seconds}"),
        ));
    }
    // In range, so the conversion cannot fail.
    Ok(Duration::from_secs(u64::try_from(seconds).unwrap_or(0)))
}

fn keepalive(raw: &Spanned<super::raw::RawKeepalive>) -> Result<Keepalive, Problem> {
    let raw = raw.get_ref();
    let interval = seconds(&raw.interval, "keepalive interval", 1)?;
    let timeout = seconds(&raw.timeout, "keepalive timeout", 1)?;
    if timeout <= interval {
        return Err(Problem::at(
            raw.timeout.span(),
            format!(
                "keepalive timeout ({}s) must be longer than the interval ({}s)",
                timeout.as_secs(),
                interval.as_secs()
            ),
        ));
    }
    Ok(Keepalive { interval, timeout })
}

fn reneg_interval(raw: Option<&Spanned<i64>>) -> Result<Duration, Problem> {
    match raw {
        None => Ok(Duration::from_secs(DEFAULT_RENEG_SECONDS)),
        // 0 disables renegotiation, as in OpenVPN.
        Some(value) if *value.get_ref() == 0 => Ok(Duration::ZERO),
        Some(value) if (1..MIN_RENEG_SECONDS).contains(value.get_ref()) => Err(Problem::at(
            value.span(),
            format!(
                "reneg_sec must be 0 (never) or at least {MIN_RENEG_SECONDS} seconds, got {}",
                value.get_ref()
            ),
        )),
        Some(value) => seconds(value, "reneg_sec", 0),
    }
}

fn mtu(raw: Option<&Spanned<i64>>) -> Result<u16, Problem> {
    let Some(value) = raw else {
        return Ok(DEFAULT_MTU);
    };
    let mtu = *value.get_ref();
    match u16::try_from(mtu) {
        Ok(mtu16) if MTU_RANGE.contains(&mtu) => Ok(mtu16),
        _ => Err(Problem::at(
            value.span(),
            format!(
                "mtu must be between {} and {}, got {mtu}",
                MTU_RANGE.start(),
                MTU_RANGE.end()
            ),
        )),
    }
}

/// A list of prefixes with host bits clear and no repeats.
fn prefix_list(
    raw: Option<&Spanned<Vec<Spanned<String>>>>,
    what: &str,
) -> Result<Vec<IpNet>, Problem> {
    let Some(list) = raw else {
        return Ok(Vec::new());
    };
    let mut seen = HashSet::new();
    let mut prefixes = Vec::new();
    for value in list.get_ref() {
        let prefix = parse_prefix(value.get_ref())
            .map_err(|error| Problem::at(value.span(), format!("{what} {error}")))?;
        if !seen.insert(prefix) {
            return Err(Problem::at(
                value.span(),
                format!("{what} {prefix} is listed twice"),
            ));
        }
        prefixes.push(prefix);
    }
    Ok(prefixes)
}

fn ipv4_prefix(value: &Spanned<String>, what: &str) -> Result<Ipv4Net, Problem> {
    match parse_prefix(value.get_ref()) {
        Ok(IpNet::V4(prefix)) => Ok(prefix),
        Ok(IpNet::V6(prefix)) => Err(Problem::at(
            value.span(),
            format!("{what} {prefix} is IPv6; only IPv4 is supported here (schema v1)"),
        )),
        Err(error) => Err(Problem::at(value.span(), format!("{what} {error}"))),
    }
}

fn ipv4_prefix_list(
    raw: Option<&Spanned<Vec<Spanned<String>>>>,
    what: &str,
) -> Result<Vec<Ipv4Net>, Problem> {
    let Some(list) = raw else {
        return Ok(Vec::new());
    };
    let mut prefixes = Vec::new();
    for value in list.get_ref() {
        let prefix = ipv4_prefix(value, what)?;
        if prefixes.contains(&prefix) {
            return Err(Problem::at(
                value.span(),
                format!("{what} {prefix} is listed twice"),
            ));
        }
        prefixes.push(prefix);
    }
    Ok(prefixes)
}

fn server_subnet(value: &Spanned<String>) -> Result<Ipv4Net, Problem> {
    let subnet = ipv4_prefix(value, "server subnet")?;
    if !SERVER_PREFIX_LENGTHS.contains(&subnet.prefix_len()) {
        return Err(Problem::at(
            value.span(),
            format!(
                "server subnet {subnet} must be between /{} and /{}",
                SERVER_PREFIX_LENGTHS.start(),
                SERVER_PREFIX_LENGTHS.end()
            ),
        ));
    }
    Ok(subnet)
}

/// The first usable host of a subnet: OpenVPN `server` gives it to the server itself.
fn first_host(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).saturating_add(1))
}

/// OpenVPN's `server` default pool (helper.c): subnet .2 up to two below the broadcast address;
/// net30 .4 up to four below it (up to the broadcast address for a /29).
fn default_pool(subnet: Ipv4Net, topology: Topology) -> IfconfigPool {
    let network = u32::from(subnet.network());
    let broadcast = u32::from(subnet.broadcast());
    let (start, end) = match topology {
        Topology::Subnet => (network + 2, broadcast.saturating_sub(2)),
        Topology::Net30 => {
            let reserve = if subnet.prefix_len() == 29 { 0 } else { 4 };
            (network + 4, broadcast.saturating_sub(reserve))
        }
    };
    IfconfigPool {
        start: Ipv4Addr::from(start),
        end: Ipv4Addr::from(end.max(start)),
    }
}

/// `address` must be a host of `subnet`: inside it, neither its network nor broadcast address.
fn check_host_of(
    address: Ipv4Addr,
    subnet: Ipv4Net,
    value: &Spanned<String>,
    what: &str,
) -> Result<(), Problem> {
    if !subnet.contains(&address) {
        return Err(Problem::at(
            value.span(),
            format!("{what} {address} is outside the server subnet {subnet}"),
        ));
    }
    if address == subnet.network() || address == subnet.broadcast() {
        return Err(Problem::at(
            value.span(),
            format!("{what} {address} is the network or broadcast address of {subnet}"),
        ));
    }
    Ok(())
}

/// One `push` entry: sent inside PUSH_REPLY, where ',' separates options, so it cannot hold one.
fn push_option(value: &Spanned<String>) -> Result<String, Problem> {
    let option = value.get_ref().trim();
    if option.is_empty() {
        return Err(Problem::at(value.span(), "push option is empty"));
    }
    if let Some(bad) = option.chars().find(|c| *c == ',' || c.is_control()) {
        return Err(Problem::at(
            value.span(),
            format!(
                "push option `{option}` contains {bad:?}; options are separated by ',' on the wire, so one option cannot contain it (write two entries)"
            ),
        ));
    }
    if option.split_whitespace().next() == Some("route") {
        return Err(Problem::at(
            value.span(),
            format!("push option `{option}`: put pushed routes in `push_routes`"),
        ));
    }
    Ok(option.to_owned())
}

fn ipv4_address(value: &Spanned<String>, what: &str) -> Result<Ipv4Addr, Problem> {
    value.get_ref().parse().map_err(|_| {
        let kind = if value.get_ref().parse::<IpAddr>().is_ok() {
            "is IPv6; schema v1 tunnel addresses are IPv4"
        } else {
            "is not an IPv4 address"
        };
        Problem::at(value.span(), format!("{what} `{}` {kind}", value.get_ref()))
    })
}

/// The tun device must not be the WAN/LAN interface or another tunnel's device.
fn check_device_is_free(
    built: &BuiltTunnel,
    interfaces: &Interfaces,
    earlier: &[BuiltTunnel],
) -> Result<(), Problem> {
    let device = &built.tunnel.device;
    let hint = if built.device_is_default {
        " (the default device name, derived from the tunnel name; set `device` to choose another)"
    } else {
        ""
    };
    let taken_by = if *device == interfaces.wan {
        Some("the wan interface".to_owned())
    } else if interfaces.lan.as_ref() == Some(device) {
        Some("the lan interface".to_owned())
    } else {
        earlier
            .iter()
            .find(|other| other.tunnel.device == *device)
            .map(|other| format!("tunnel `{}`", other.tunnel.name))
    };
    match taken_by {
        None => Ok(()),
        Some(owner) => Err(Problem::at(
            built.device_span.clone(),
            format!("device `{device}` is already used by {owner}{hint}"),
        )),
    }
}

/// Two tunnels cannot bind the same transport and port on overlapping addresses.
fn check_local_is_free(built: &BuiltTunnel, earlier: &[BuiltTunnel]) -> Result<(), Problem> {
    let (Some(local), Some(local_span)) = (built.tunnel.local, &built.local_span) else {
        return Ok(());
    };
    let Some(port) = built.tunnel.listen_port() else {
        return Ok(());
    };
    let transport = built.tunnel.transport;
    let clash = earlier.iter().find(|other| {
        other.tunnel.transport == transport
            && other.tunnel.listen_port() == Some(port)
            && other.tunnel.local.is_some_and(|other_local| {
                other_local.ip() == local.ip()
                    || other_local.ip().is_unspecified()
                    || local.ip().is_unspecified()
            })
    });
    match clash {
        None => Ok(()),
        Some(other) => Err(Problem::at(
            local_span.clone(),
            format!(
                "local {local}/{transport} clashes with tunnel `{}` ({}/{transport}): the same {transport} port on overlapping addresses",
                other.tunnel.name,
                other.tunnel.local.map_or_else(String::new, |other_local| other_local.to_string()),
            ),
        )),
    }
}

// ---- eBPF fast path (issue 5) ----

/// Links per group and groups per node, as the eBPF maps are sized (vpn_common::steer).
const MAX_LINKS_PER_GROUP: usize = vpn_common::steer::MAX_LINKS;
const MAX_LINK_GROUPS: usize = vpn_common::steer::MAX_GROUPS as usize;
const LINK_WEIGHTS: std::ops::RangeInclusive<i64> = 1..=vpn_common::steer::MAX_WEIGHT as i64;
const HANDSHAKE_RATE_RANGE: std::ops::RangeInclusive<i64> =
    0..=vpn_common::wan::MAX_HANDSHAKE_RATE as i64;
const HANDSHAKE_WINDOW_SECONDS: std::ops::RangeInclusive<i64> = 1..=600;

fn bounded(
    value: Option<&Spanned<i64>>,
    key: &str,
    range: std::ops::RangeInclusive<i64>,
    default: i64,
) -> Result<i64, Problem> {
    match value {
        None => Ok(default),
        Some(value) if range.contains(value.get_ref()) => Ok(*value.get_ref()),
        Some(value) => Err(Problem::at(
            value.span(),
            format!(
                "`{key}` must be {}..={}, got {}",
                range.start(),
                range.end(),
                value.get_ref()
            ),
        )),
    }
}

/// `[fast_path]`, with defaults for what is absent.
fn fast_path(raw: Option<&RawFastPath>) -> Result<FastPath, Problem> {
    let defaults = FastPath::default();
    let Some(raw) = raw else {
        return Ok(defaults);
    };
    Ok(FastPath {
        protected_prefixes: prefix_list(raw.protected_prefixes.as_ref(), "protected prefix")?,
        handshakes_per_sec: bounded(
            raw.handshakes_per_sec.as_ref(),
            "handshakes_per_sec",
            HANDSHAKE_RATE_RANGE,
            i64::from(defaults.handshakes_per_sec),
        )? as u32,
        handshake_burst: bounded(
            raw.handshake_burst.as_ref(),
            "handshake_burst",
            HANDSHAKE_RATE_RANGE,
            i64::from(defaults.handshake_burst),
        )? as u32,
        handshake_window: Duration::from_secs(bounded(
            raw.handshake_window_secs.as_ref(),
            "handshake_window_secs",
            HANDSHAKE_WINDOW_SECONDS,
            defaults.handshake_window.as_secs() as i64,
        )? as u64),
    })
}

/// A tunnel's `link_group`, `weight` and `allowed_sources`.
fn tunnel_fast_path(raw: &RawTunnel) -> Result<TunnelFastPath, Problem> {
    let link_group = match &raw.link_group {
        Some(group) => {
            check_name("link_group", group.get_ref(), TUNNEL_NAME_MAX, false)
                .map_err(|error| Problem::at(group.span(), error.to_string()))?;
            Some(group.get_ref().clone())
        }
        None => None,
    };
    if let (Some(weight), None) = (&raw.weight, &link_group) {
        return Err(Problem::at(
            weight.span(),
            "`weight` only applies to a tunnel in a `link_group` (its share of the group's flows)",
        ));
    }
    let weight = bounded(raw.weight.as_ref(), "weight", LINK_WEIGHTS, 1)? as u32;
    let allowed_sources = match &raw.allowed_sources {
        Some(list) => Some(prefix_list(Some(list), "allowed source")?),
        None => None,
    };
    Ok(TunnelFastPath {
        link_group,
        weight,
        allowed_sources,
    })
}

/// Link groups need a LAN (steering runs on LAN ingress), fit the maps, and own their routes:
/// a prefix steered to two groups would be ambiguous.
fn check_link_groups(
    raw: &[RawTunnel],
    built: &[BuiltTunnel],
    interfaces: &Interfaces,
) -> Result<(), Problem> {
    let mut members: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut route_owner: std::collections::HashMap<IpNet, (&str, &str)> = Default::default();
    for (raw, built) in raw.iter().zip(built) {
        let tunnel = &built.tunnel;
        let (Some(group), Some(span)) = (&tunnel.fast_path.link_group, &raw.link_group) else {
            continue;
        };
        if interfaces.lan.is_none() {
            return Err(Problem::at(
                span.span(),
                "`link_group` needs `lan` in [interfaces]: flows are steered on LAN ingress",
            ));
        }
        let count = members.entry(group).or_default();
        *count += 1;
        if *count > MAX_LINKS_PER_GROUP {
            return Err(Problem::at(
                span.span(),
                format!("link group `{group}` has more than {MAX_LINKS_PER_GROUP} tunnels"),
            ));
        }
        if members.len() > MAX_LINK_GROUPS {
            return Err(Problem::at(
                span.span(),
                format!("more than {MAX_LINK_GROUPS} link groups"),
            ));
        }
        for route in &tunnel.routes {
            match route_owner.get(route) {
                Some((other_group, other_tunnel)) if *other_group != group.as_str() => {
                    return Err(Problem::at(
                        span.span(),
                        format!(
                            "route {route} of tunnel `{}` is also routed by link group `{other_group}` (tunnel `{other_tunnel}`); a prefix belongs to one group only",
                            tunnel.name
                        ),
                    ));
                }
                _ => {
                    route_owner.insert(*route, (group, &tunnel.name));
                }
            }
        }
    }
    Ok(())
}
