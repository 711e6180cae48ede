//! OpenVPN directives → a [`Plan`]: the TOML to write, the ignored options with their reasons,
//! and notes about translations that change something. Two passes, like OpenVPN itself: first
//! every directive is read into [`Settings`] (later ones override, lists accumulate), then the
//! role is decided and the settings are checked together.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::table::{disposition, Disposition};
use super::tokenize::{split_line, tokenize, Directive};
use super::{describe, Diagnostic, ImportError, ImportOptions};
use crate::config::{Cipher, Compress, Role, Topology, Transport};

const DEFAULT_PORT: u16 = 1194;
const DEFAULT_WAN: &str = "eth0";
const NODE_NAME_MAX: usize = 15;
const TUNNEL_NAME_MAX: usize = 32;
/// The daemon's own default; emitting the key would only repeat it.
const DEFAULT_RENEG_SECONDS: u64 = 3600;

/// Where a key, certificate or static key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    /// A file (absolute path).
    File(PathBuf),
    /// An inline `<tag>` block's text, to be written to `file_name` in the --write-inline dir.
    Inline { text: String, path: PathBuf },
}

impl Source {
    /// The path the TOML names.
    pub fn path(&self) -> &Path {
        match self {
            Source::File(path) | Source::Inline { path, .. } => path,
        }
    }
}

/// `tls_auth = { ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TlsAuthPlan {
    pub key: Source,
    pub direction: Option<u8>,
    /// "SHA1" or "SHA256"; `None` leaves the default (SHA1).
    pub digest: Option<&'static str>,
}

/// Server-role keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ServerPlan {
    pub subnet: Ipv4Net,
    pub topology: Topology,
    pub server_address: Option<Ipv4Addr>,
    pub ifconfig_pool: Option<(Ipv4Addr, Ipv4Addr)>,
    pub push_routes: Vec<Ipv4Net>,
    pub push: Vec<String>,
    pub client_to_client: bool,
    pub duplicate_cn: bool,
    pub client_config_dir: Option<PathBuf>,
    pub max_clients: Option<u32>,
}

/// p2p-role keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct P2pPlan {
    pub tls_server: bool,
    pub local: Ipv4Addr,
    pub remote: Ipv4Addr,
}

/// Everything the output TOML says, plus the header comments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Plan {
    pub source: PathBuf,
    pub base_dir: PathBuf,
    /// (line, option, reason) for each ignored option, in file order.
    pub ignored: Vec<(usize, String, String)>,
    /// Translations that change behaviour or need the operator's attention.
    pub notes: Vec<String>,
    pub node: String,
    pub wan: String,
    pub lan: Option<String>,
    pub ca: Source,
    pub cert: Source,
    pub key: Source,
    pub crl: Option<Source>,
    pub tunnel: String,
    pub role: Role,
    pub transport: Transport,
    pub local: Option<SocketAddr>,
    pub remotes: Vec<SocketAddr>,
    pub device: Option<String>,
    pub ciphers: Option<Vec<Cipher>>,
    pub tls_auth: Option<TlsAuthPlan>,
    pub tls_crypt: Option<Source>,
    pub keepalive: Option<(u64, u64)>,
    pub reneg_sec: Option<u64>,
    pub mtu: Option<u32>,
    pub remote_cert_tls: Option<&'static str>,
    pub verify_x509_name: Option<String>,
    pub compress: Option<Compress>,
    pub routes: Vec<IpNet>,
    pub p2p: Option<P2pPlan>,
    pub server: Option<ServerPlan>,
}

impl Plan {
    /// Writes the inline blocks to their files (mode 0600: they may be private keys). An
    /// existing file with the same contents is left alone; one with other contents is an error,
    /// never overwritten.
    pub fn write_inline_files(&self) -> Result<Vec<PathBuf>, ImportError> {
        let sources = [
            Some(&self.ca),
            Some(&self.cert),
            Some(&self.key),
            self.crl.as_ref(),
            self.tls_auth.as_ref().map(|tls_auth| &tls_auth.key),
            self.tls_crypt.as_ref(),
        ];
        let mut written = Vec::new();
        for source in sources.into_iter().flatten() {
            let Source::Inline { text, path } = source else {
                continue;
            };
            write_private_file(path, text).map_err(|reason| ImportError::WriteInline {
                path: path.clone(),
                reason,
            })?;
            written.push(path.clone());
        }
        Ok(written)
    }
}

fn write_private_file(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|error| describe(&error))?;
    }
    match std::fs::read(path) {
        Ok(existing) if existing == text.as_bytes() => return Ok(()),
        Ok(_) => {
            return Err(
                "the file exists with other contents; it is not overwritten (pick another --write-inline directory)"
                    .to_owned(),
            )
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(describe(&error)),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|error| describe(&error))?;
    file.write_all(text.as_bytes())
        .map_err(|error| describe(&error))
}

/// `proto` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Udp,
    /// `tcp`: the server side in server mode, the client side otherwise.
    Tcp,
    TcpServer,
    TcpClient,
}

impl Proto {
    /// `(proto, IPv6-only?)`; `None` if unknown.
    fn parse(text: &str) -> Option<(Proto, Option<bool>)> {
        Some(match text.to_ascii_lowercase().as_str() {
            "udp" => (Proto::Udp, None),
            "udp4" => (Proto::Udp, Some(false)),
            "udp6" => (Proto::Udp, Some(true)),
            "tcp" => (Proto::Tcp, None),
            "tcp4" => (Proto::Tcp, Some(false)),
            "tcp6" => (Proto::Tcp, Some(true)),
            "tcp-server" | "tcp4-server" => (Proto::TcpServer, Some(false)),
            "tcp6-server" => (Proto::TcpServer, Some(true)),
            "tcp-client" | "tcp4-client" => (Proto::TcpClient, Some(false)),
            "tcp6-client" => (Proto::TcpClient, Some(true)),
            _ => return None,
        })
    }

    fn transport(self) -> Transport {
        match self {
            Proto::Udp => Transport::Udp,
            _ => Transport::Tcp,
        }
    }
}

/// A value and the line it came from.
#[derive(Debug, Clone)]
struct At<T> {
    line: usize,
    value: T,
}

#[derive(Debug, Clone)]
struct RemoteSetting {
    host: String,
    port: Option<u16>,
    proto: Option<Proto>,
}

#[derive(Debug, Clone)]
struct RouteSetting {
    prefix: IpNet,
    gateway: Option<String>,
}

/// Everything read from the directives, before the role is known.
#[derive(Debug, Default)]
struct Settings {
    base_dir: PathBuf,
    mode_server: Option<usize>,
    server: Option<At<Ipv4Net>>,
    tls_server: Option<usize>,
    tls_client: Option<usize>,
    client: Option<usize>,
    pull: Option<usize>,
    ifconfig: Option<At<(Ipv4Addr, Ipv4Addr)>>,
    ifconfig_pool: Option<At<(Ipv4Addr, Ipv4Addr)>>,
    routes: Vec<At<RouteSetting>>,
    /// Each `push "..."` argument, verbatim.
    push: Vec<At<String>>,
    client_config_dir: Option<At<PathBuf>>,
    client_to_client: Option<usize>,
    duplicate_cn: Option<usize>,
    max_clients: Option<At<u32>>,
    topology: Option<At<Topology>>,
    keepalive: Option<At<(u64, u64)>>,
    ping: Option<At<u64>>,
    ping_restart: Option<At<u64>>,
    tls_auth: Option<At<(Source, Option<u8>)>>,
    key_direction: Option<At<u8>>,
    auth: Option<At<String>>,
    tls_crypt: Option<At<Source>>,
    data_ciphers: Option<At<Vec<Cipher>>>,
    remotes: Vec<At<RemoteSetting>>,
    proto: Option<At<(Proto, Option<bool>)>>,
    port: Option<u16>,
    lport: Option<u16>,
    rport: Option<u16>,
    local: Option<At<IpAddr>>,
    dev: Option<At<String>>,
    compress: Option<At<Compress>>,
    remote_cert_tls: Option<&'static str>,
    verify_x509_name: Option<String>,
    ca: Option<At<Source>>,
    cert: Option<At<Source>>,
    key: Option<At<Source>>,
    crl: Option<At<Source>>,
    reneg_sec: Option<At<u64>>,
    mtu: Option<At<u32>>,
}

struct Translator<'a> {
    file: &'a Path,
    options: &'a ImportOptions,
    diagnostics: Vec<Diagnostic>,
    ignored: Vec<(usize, String, String)>,
    notes: Vec<String>,
    settings: Settings,
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

fn parse_ipv4(text: &str) -> Result<Ipv4Addr, String> {
    text.parse()
        .map_err(|_| format!("`{text}` is not an IPv4 address"))
}

/// The prefix length of a netmask like 255.255.255.0.
fn netmask_length(text: &str) -> Result<u8, String> {
    let mask = u32::from(parse_ipv4(text)?);
    let length = mask.leading_ones();
    if mask.checked_shl(length).unwrap_or(0) != 0 {
        return Err(format!("`{text}` is not a netmask (ones then zeros)"));
    }
    Ok(length as u8)
}

/// `NETWORK NETMASK` as a prefix with the host bits clear.
fn ipv4_prefix(network: &str, mask: &str) -> Result<Ipv4Net, String> {
    let address = parse_ipv4(network)?;
    let prefix = Ipv4Net::new(address, netmask_length(mask)?).map_err(|error| error.to_string())?;
    if prefix.network() != address {
        return Err(format!(
            "`{network} {mask}` has host bits set; did you mean {} {mask}?",
            prefix.network()
        ));
    }
    Ok(prefix)
}

fn parse_number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("`{text}` is not a valid {what}"))
}

impl Translator<'_> {
    fn error(&mut self, line: Option<usize>, option: &str, reason: impl Into<String>) {
        self.diagnostics.push(Diagnostic {
            file: self.file.to_path_buf(),
            line,
            option: Some(option.to_owned()),
            reason: reason.into(),
        });
    }

    fn ignore(&mut self, line: usize, option: &str, reason: impl Into<String>) {
        self.ignored.push((line, option.to_owned(), reason.into()));
    }

    /// A file argument resolved like OpenVPN (against `cd`, else the config's directory),
    /// checked to exist.
    fn file_source(&mut self, directive: &Directive, argument: &str) -> Option<Source> {
        let path = self.settings.base_dir.join(argument);
        if let Err(error) = std::fs::metadata(&path) {
            self.error(
                Some(directive.line),
                &directive.name,
                format!("cannot read {}: {}", path.display(), describe(&error)),
            );
            return None;
        }
        Some(Source::File(path))
    }

    /// The key, certificate or static key of `directive`: its inline block or its file.
    fn source(&mut self, directive: &Directive, file_name: &str) -> Option<Source> {
        if let Some(text) = &directive.inline {
            let Some(dir) = &self.options.write_inline else {
                self.error(
                    Some(directive.line),
                    &format!("<{}>", directive.name),
                    "inline block: the TOML can only name files; pass --write-inline DIR to write it to a file there",
                );
                return None;
            };
            let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
            return Some(Source::Inline {
                text: text.clone(),
                path: dir.join(file_name),
            });
        }
        let argument = directive.args.first()?.clone();
        self.file_source(directive, &argument)
    }

    /// Checks the argument count; reports and returns false if it is wrong.
    fn arguments(&mut self, directive: &Directive, range: std::ops::RangeInclusive<usize>) -> bool {
        let count = directive.args.len() + usize::from(directive.inline.is_some());
        if range.contains(&count) {
            return true;
        }
        let expected = if range.start() == range.end() {
            format!("{}", range.start())
        } else {
            format!("{} to {}", range.start(), range.end())
        };
        self.error(
            Some(directive.line),
            &directive.name,
            format!("takes {expected} argument(s), got {count}"),
        );
        false
    }

    fn directive(&mut self, directive: &Directive) {
        let name = directive.name.as_str();
        match disposition(name) {
            Disposition::Ignore(reason) => self.ignore(directive.line, name, reason),
            Disposition::Unsupported(reason) => {
                let option = if directive.inline.is_some() {
                    format!("<{name}>")
                } else {
                    name.to_owned()
                };
                self.error(Some(directive.line), &option, reason);
            }
            Disposition::Translate => {
                if let Err(reason) = self.translate_one(directive) {
                    self.error(Some(directive.line), name, reason);
                }
            }
        }
    }

    /// One translatable directive into the settings. `Err` is a reason to report at its line.
    fn translate_one(&mut self, d: &Directive) -> Result<(), String> {
        let line = d.line;
        let args: Vec<&str> = d.args.iter().map(String::as_str).collect();
        let flag = |translator: &mut Self, count: usize| translator.arguments(d, count..=count);
        if d.inline.is_some()
            && !matches!(
                d.name.as_str(),
                "ca" | "cert" | "key" | "tls-auth" | "tls-crypt" | "crl-verify"
            )
        {
            return Err(format!("<{}> inline blocks are not supported", d.name));
        }
        match d.name.as_str() {
            "mode" => match args.as_slice() {
                ["server"] => self.settings.mode_server = Some(line),
                ["p2p"] => self.settings.mode_server = None,
                _ => return Err("takes `server` or `p2p`".to_owned()),
            },
            "server" => {
                let (network, mask) = match args.as_slice() {
                    [network, mask] => (*network, *mask),
                    [_, _, "nopool"] => {
                        return Err("`nopool` is not supported: clients without an ifconfig-push would get no address; use ifconfig-pool or mode server".to_owned())
                    }
                    _ => return Err("takes NETWORK NETMASK".to_owned()),
                };
                let subnet = ipv4_prefix(network, mask)?;
                self.settings.server = Some(At { line, value: subnet });
            }
            "tls-server" if flag(self, 0) => self.settings.tls_server = Some(line),
            "tls-client" if flag(self, 0) => self.settings.tls_client = Some(line),
            "client" if flag(self, 0) => self.settings.client = Some(line),
            "pull" if flag(self, 0) => self.settings.pull = Some(line),
            "nobind" if flag(self, 0) => self.ignore(
                line,
                "nobind",
                "a client binds an ephemeral port unless `local`/`lport` is given",
            ),
            "ifconfig" => {
                let [first, second] = args.as_slice() else {
                    return Err("takes LOCAL REMOTE|NETMASK".to_owned());
                };
                let value = (parse_ipv4(first)?, parse_ipv4(second)?);
                self.settings.ifconfig = Some(At { line, value });
            }
            "ifconfig-pool" => {
                let (start, end) = match args.as_slice() {
                    [start, end] | [start, end, _] => (*start, *end),
                    _ => return Err("takes START END [NETMASK]".to_owned()),
                };
                let (start, end) = (parse_ipv4(start)?, parse_ipv4(end)?);
                if start > end {
                    return Err(format!("the pool starts at {start}, after its end {end}"));
                }
                self.settings.ifconfig_pool = Some(At {
                    line,
                    value: (start, end),
                });
            }
            "route" => {
                let (network, mask, gateway) = match args.as_slice() {
                    [network] => (*network, "255.255.255.255", None),
                    [network, mask] => (*network, *mask, None),
                    [network, mask, gateway] | [network, mask, gateway, _] => {
                        (*network, *mask, Some(*gateway))
                    }
                    _ => return Err("takes NETWORK [NETMASK [GATEWAY [METRIC]]]".to_owned()),
                };
                if args.len() == 4 {
                    self.ignore(line, "route", "the metric is not used: routes get the kernel's default metric");
                }
                let prefix = ipv4_prefix(network, mask)?;
                let gateway = match gateway {
                    None | Some("default") | Some("vpn_gateway") => None,
                    Some(gateway @ ("net_gateway" | "remote_host")) => {
                        return Err(format!(
                            "a route via `{gateway}` (outside the tunnel) is not supported; add it to the appliance's routing instead"
                        ))
                    }
                    Some(gateway) => {
                        parse_ipv4(gateway)?;
                        Some(gateway.to_owned())
                    }
                };
                self.settings.routes.push(At {
                    line,
                    value: RouteSetting {
                        prefix: IpNet::V4(prefix),
                        gateway,
                    },
                });
            }
            "route-ipv6" => {
                let [network, ..] = args.as_slice() else {
                    return Err("takes NETWORK/BITS [GATEWAY [METRIC]]".to_owned());
                };
                let prefix: Ipv6Net = network
                    .parse()
                    .map_err(|_| format!("`{network}` is not an IPv6 prefix (NETWORK/BITS)"))?;
                if prefix.trunc() != prefix {
                    return Err(format!(
                        "`{network}` has host bits set; did you mean {}?",
                        prefix.trunc()
                    ));
                }
                if args.len() > 1 {
                    self.ignore(line, "route-ipv6", "the gateway and metric are not used: the route goes to the tun device");
                }
                self.settings.routes.push(At {
                    line,
                    value: RouteSetting {
                        prefix: IpNet::V6(prefix),
                        gateway: None,
                    },
                });
            }
            "route-gateway" => self.ignore(
                line,
                "route-gateway",
                "routes go straight to the tun device (a server pushes its own address as route-gateway)",
            ),
            "push" => {
                let [option] = args.as_slice() else {
                    return Err("takes one (quoted) option, e.g. push \"route 10.1.0.0 255.255.0.0\"".to_owned());
                };
                self.settings.push.push(At {
                    line,
                    value: (*option).to_owned(),
                });
            }
            "client-config-dir" => {
                let [dir] = args.as_slice() else {
                    return Err("takes DIR".to_owned());
                };
                let value = self.settings.base_dir.join(dir);
                self.settings.client_config_dir = Some(At { line, value });
            }
            "client-to-client" if flag(self, 0) => self.settings.client_to_client = Some(line),
            "duplicate-cn" if flag(self, 0) => self.settings.duplicate_cn = Some(line),
            "max-clients" => {
                let [count] = args.as_slice() else {
                    return Err("takes N".to_owned());
                };
                let count: u32 = parse_number(count, "number of clients")?;
                if !(1..=65535).contains(&count) {
                    return Err(format!("{count} clients: the daemon takes 1 to 65535"));
                }
                self.settings.max_clients = Some(At { line, value: count });
            }
            "topology" => {
                let value = match args.as_slice() {
                    ["subnet"] => Topology::Subnet,
                    ["net30"] => Topology::Net30,
                    ["p2p"] => {
                        return Err("topology p2p is not supported; use subnet or net30".to_owned())
                    }
                    _ => return Err("takes subnet, net30 or p2p".to_owned()),
                };
                self.settings.topology = Some(At { line, value });
            }
            "keepalive" => {
                let [interval, timeout] = args.as_slice() else {
                    return Err("takes INTERVAL TIMEOUT".to_owned());
                };
                let interval: u64 = parse_number(interval, "number of seconds")?;
                let timeout: u64 = parse_number(timeout, "number of seconds")?;
                if interval == 0 || timeout <= interval {
                    return Err(format!(
                        "keepalive {interval} {timeout}: the daemon needs an interval of at least 1 s and a longer timeout"
                    ));
                }
                self.settings.keepalive = Some(At {
                    line,
                    value: (interval, timeout),
                });
            }
            "ping" => {
                let [seconds] = args.as_slice() else {
                    return Err("takes SECONDS".to_owned());
                };
                let value = parse_number(seconds, "number of seconds")?;
                self.settings.ping = Some(At { line, value });
            }
            "ping-restart" | "ping-exit" => {
                let [seconds] = args.as_slice() else {
                    return Err("takes SECONDS".to_owned());
                };
                let value = parse_number(seconds, "number of seconds")?;
                if d.name == "ping-exit" {
                    self.notes.push(format!(
                        "line {line}: ping-exit {value}: the daemon does not exit when the peer goes silent; it declares the peer dead after {value} s and reconnects (keepalive timeout)"
                    ));
                }
                self.settings.ping_restart = Some(At { line, value });
            }
            "tls-auth" => {
                if !self.arguments(d, 1..=2) {
                    return Ok(());
                }
                let direction = match args.get(1) {
                    None => None,
                    Some(&"0") => Some(0),
                    Some(&"1") => Some(1),
                    Some(other) => return Err(format!("key direction `{other}` must be 0 or 1")),
                };
                if let Some(key) = self.source(d, "tls-auth.key") {
                    self.settings.tls_auth = Some(At {
                        line,
                        value: (key, direction),
                    });
                }
            }
            "key-direction" => {
                let value = match args.as_slice() {
                    ["0"] => 0,
                    ["1"] => 1,
                    _ => return Err("takes 0 or 1".to_owned()),
                };
                self.settings.key_direction = Some(At { line, value });
            }
            "auth" => {
                let [digest] = args.as_slice() else {
                    return Err("takes DIGEST".to_owned());
                };
                self.settings.auth = Some(At {
                    line,
                    value: (*digest).to_owned(),
                });
            }
            "tls-crypt" => {
                if !self.arguments(d, 1..=1) {
                    return Ok(());
                }
                if let Some(key) = self.source(d, "tls-crypt.key") {
                    self.settings.tls_crypt = Some(At { line, value: key });
                }
            }
            "data-ciphers" | "ncp-ciphers" => {
                let [list] = args.as_slice() else {
                    return Err("takes CIPHER[:CIPHER...]".to_owned());
                };
                let mut ciphers = Vec::new();
                let mut dropped = Vec::new();
                for name in list.split(':').filter(|name| !name.is_empty()) {
                    // "?NAME" (2.6): use the cipher only if the library has it.
                    let name = name.strip_prefix('?').unwrap_or(name);
                    match name.parse::<Cipher>() {
                        Ok(cipher) if !ciphers.contains(&cipher) => ciphers.push(cipher),
                        Ok(_) => {}
                        Err(_) => dropped.push(name.to_owned()),
                    }
                }
                if ciphers.is_empty() {
                    return Err(format!(
                        "none of `{list}` is supported; the daemon supports AES-256-GCM, AES-128-GCM and CHACHA20-POLY1305 (no CBC)"
                    ));
                }
                if !dropped.is_empty() {
                    self.ignore(
                        line,
                        &d.name,
                        format!(
                            "{} dropped from the list: only AEAD ciphers are supported; peers that can only use {} cannot connect",
                            dropped.join(", "),
                            if dropped.len() == 1 { "it" } else { "them" }
                        ),
                    );
                }
                self.settings.data_ciphers = Some(At {
                    line,
                    value: ciphers,
                });
            }
            "cipher" | "data-ciphers-fallback" => {
                let [name] = args.as_slice() else {
                    return Err("takes CIPHER".to_owned());
                };
                let reason = if name.parse::<Cipher>().is_ok() {
                    "OpenVPN 2.6 uses it only for peers that cannot negotiate a cipher; the daemon always negotiates from data-ciphers".to_owned()
                } else {
                    format!("OpenVPN 2.6 uses it only for peers that cannot negotiate a cipher; {name} is not supported (AEAD only), so such peers (OpenVPN 2.3 and older, or pinned to {name}) cannot connect")
                };
                self.ignore(line, &d.name, reason);
            }
            "remote" => {
                let (host, port, proto) = match args.as_slice() {
                    [host] => (*host, None, None),
                    [host, port] => (*host, Some(*port), None),
                    [host, port, proto] => (*host, Some(*port), Some(*proto)),
                    _ => return Err("takes HOST [PORT [PROTO]]".to_owned()),
                };
                let port = port
                    .map(|port| parse_number::<u16>(port, "port"))
                    .transpose()?;
                let proto = proto
                    .map(|proto| {
                        Proto::parse(proto)
                            .map(|(proto, _)| proto)
                            .ok_or_else(|| format!("unknown protocol `{proto}`"))
                    })
                    .transpose()?;
                self.settings.remotes.push(At {
                    line,
                    value: RemoteSetting {
                        host: host.to_owned(),
                        port,
                        proto,
                    },
                });
            }
            "proto" => {
                let [proto] = args.as_slice() else {
                    return Err("takes udp, tcp, tcp-server, tcp-client (or a 4/6 variant)".to_owned());
                };
                let value = Proto::parse(proto).ok_or_else(|| format!("unknown protocol `{proto}`"))?;
                self.settings.proto = Some(At { line, value });
            }
            "port" | "lport" | "rport" => {
                let [port] = args.as_slice() else {
                    return Err("takes PORT".to_owned());
                };
                let port: u16 = parse_number(port, "port")?;
                match d.name.as_str() {
                    "port" => self.settings.port = Some(port),
                    "lport" => self.settings.lport = Some(port),
                    _ => self.settings.rport = Some(port),
                }
            }
            "local" => {
                let [address] = args.as_slice() else {
                    return Err("takes ADDRESS".to_owned());
                };
                let value: IpAddr = address.parse().map_err(|_| {
                    format!("`{address}` is not an IP address (config schema v1 takes IP addresses, not host names)")
                })?;
                self.settings.local = Some(At { line, value });
            }
            "dev" => {
                let [device] = args.as_slice() else {
                    return Err("takes tun, tunN or a device name".to_owned());
                };
                if device.starts_with("tap") {
                    return Err(
                        "layer-2 (tap) tunnels are not supported; the daemon only does tun (layer 3)"
                            .to_owned(),
                    );
                }
                if *device == "null" {
                    return Err("dev null (no tunnel device) is not supported".to_owned());
                }
                self.settings.dev = Some(At {
                    line,
                    value: (*device).to_owned(),
                });
            }
            "dev-type" => match args.as_slice() {
                ["tun"] => {}
                ["tap"] => {
                    return Err(
                        "layer-2 (tap) tunnels are not supported; the daemon only does tun (layer 3)"
                            .to_owned(),
                    )
                }
                _ => return Err("takes tun or tap".to_owned()),
            },
            "comp-lzo" => {
                if !self.arguments(d, 0..=1) {
                    return Ok(());
                }
                self.settings.compress = Some(At {
                    line,
                    value: Compress::LzoStub,
                });
                if args.first().is_some_and(|mode| *mode != "no") {
                    self.notes.push(format!(
                        "line {line}: comp-lzo {}: the daemon never compresses; it keeps the comp-lzo framing and drops compressed packets from the peer (OpenVPN 2.6 with `allow-compression no` does the same)",
                        args.first().copied().unwrap_or_default()
                    ));
                }
            }
            "compress" => {
                let value = match args.as_slice() {
                    [] | ["stub"] | ["lz4"] => Compress::Stub,
                    ["stub-v2"] | ["lz4-v2"] => Compress::StubV2,
                    ["lzo"] => return Err("`compress lzo` framing is not supported; comp-lzo, compress, compress stub|lz4 and compress stub-v2|lz4-v2 are".to_owned()),
                    ["migrate"] => return Err("`compress migrate` is not supported".to_owned()),
                    _ => return Err("takes nothing, stub, stub-v2, lz4, lz4-v2 or lzo".to_owned()),
                };
                self.settings.compress = Some(At { line, value });
            }
            "remote-cert-tls" => {
                self.settings.remote_cert_tls = Some(match args.as_slice() {
                    ["server"] => "server",
                    ["client"] => "client",
                    _ => return Err("takes server or client".to_owned()),
                });
            }
            "verify-x509-name" => match args.as_slice() {
                [name, "name"] => self.settings.verify_x509_name = Some((*name).to_owned()),
                [_] | [_, "subject"] => {
                    return Err("the default type `subject` compares the whole subject DN; the daemon checks the common name only: write `verify-x509-name CN name`".to_owned())
                }
                [_, "name-prefix"] => {
                    return Err("`name-prefix` is not supported; the daemon checks the exact common name (`verify-x509-name CN name`)".to_owned())
                }
                _ => return Err("takes NAME [subject|name|name-prefix]".to_owned()),
            },
            "verify-client-cert" => match args.as_slice() {
                [] | ["require"] => self.ignore(
                    line,
                    "verify-client-cert",
                    "clients always need a valid certificate",
                ),
                _ => {
                    return Err(
                        "clients without certificates are not supported: the daemon authenticates peers by certificate only"
                            .to_owned(),
                    )
                }
            },
            "ca" | "cert" | "key" => {
                if !self.arguments(d, 1..=1) {
                    return Ok(());
                }
                let file_name = match d.name.as_str() {
                    "ca" => "ca.crt",
                    "cert" => "cert.crt",
                    _ => "key.pem",
                };
                if let Some(source) = self.source(d, file_name) {
                    let value = Some(At {
                        line,
                        value: source,
                    });
                    match d.name.as_str() {
                        "ca" => self.settings.ca = value,
                        "cert" => self.settings.cert = value,
                        _ => self.settings.key = value,
                    }
                }
            }
            "crl-verify" => {
                if args.get(1) == Some(&"dir") {
                    return Err("a CRL directory is not supported; give one PEM CRL file".to_owned());
                }
                if !self.arguments(d, 1..=1) {
                    return Ok(());
                }
                if let Some(source) = self.source(d, "crl.pem") {
                    self.settings.crl = Some(At {
                        line,
                        value: source,
                    });
                }
            }
            "reneg-sec" => {
                let (seconds, maximum) = match args.as_slice() {
                    [seconds] => (*seconds, None),
                    [seconds, maximum] => (*seconds, Some(*maximum)),
                    _ => return Err("takes SECONDS [MAX]".to_owned()),
                };
                let seconds: u64 = parse_number(seconds, "number of seconds")?;
                if (1..10).contains(&seconds) {
                    return Err(format!(
                        "{seconds} s: the daemon renegotiates at most every 10 s (0 turns it off)"
                    ));
                }
                if maximum.is_some() {
                    self.ignore(line, "reneg-sec", "the second value (randomisation range) is not used; keys are renegotiated every SECONDS");
                }
                self.settings.reneg_sec = Some(At {
                    line,
                    value: seconds,
                });
            }
            "tun-mtu" => {
                let [mtu] = args.as_slice() else {
                    return Err("takes MTU".to_owned());
                };
                let mtu: u32 = parse_number(mtu, "MTU")?;
                if !(576..=9000).contains(&mtu) {
                    return Err(format!("MTU {mtu}: the daemon takes 576 to 9000"));
                }
                self.settings.mtu = Some(At { line, value: mtu });
            }
            "cd" => {
                let [dir] = args.as_slice() else {
                    return Err("takes DIR".to_owned());
                };
                let dir = self.settings.base_dir.join(dir);
                self.settings.base_dir = dir;
            }
            // Flags given arguments: `arguments` reported it already.
            "tls-server" | "tls-client" | "client" | "pull" | "nobind" | "client-to-client"
            | "duplicate-cn" => {}
            other => return Err(format!("`{other}` is not handled by the importer")),
        }
        Ok(())
    }

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
            Role::Client if local_ip.is_some() || s.lport.is_some() => {
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
        let (subnet, server_address, subnet_route) = match (
            self.settings.server.clone(),
            self.settings.ifconfig.clone(),
        ) {
            (Some(server), Some(ifconfig)) => {
                self.error(
                    Some(ifconfig.line),
                    "ifconfig",
                    format!(
                        "`server` on line {} sets the server's address already; remove one of them",
                        server.line
                    ),
                );
                return None;
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
                (server.value, None, None)
            }
            (None, None) => {
                self.error(self.settings.mode_server, "ifconfig", "missing: mode server needs ifconfig (the server's tunnel address) and ifconfig-pool");
                return None;
            }
            (None, Some(ifconfig)) => {
                let (address, second) = ifconfig.value;
                match topology {
                    Topology::Subnet => {
                        let length = match netmask_length(&second.to_string()) {
                            Ok(length) => length,
                            Err(reason) => {
                                self.error(Some(ifconfig.line), "ifconfig", format!("with topology subnet the second address is the netmask: {reason}"));
                                return None;
                            }
                        };
                        let subnet = Ipv4Net::new(address, length).map(|net| net.trunc());
                        match subnet {
                            Ok(subnet) => (subnet, Some(address), None),
                            Err(error) => {
                                self.error(Some(ifconfig.line), "ifconfig", error.to_string());
                                return None;
                            }
                        }
                    }
                    Topology::Net30 => {
                        // The client subnet is the `route` that covers the server's address.
                        let covering =
                            self.settings
                                .routes
                                .iter()
                                .find(|route| match route.value.prefix {
                                    IpNet::V4(prefix) => {
                                        prefix.contains(&address) && prefix.prefix_len() < 30
                                    }
                                    IpNet::V6(_) => false,
                                });
                        match covering.map(|route| (route.value.prefix, route.line)) {
                            Some((IpNet::V4(prefix), line)) => {
                                (prefix, Some(address), Some((IpNet::V4(prefix), line)))
                            }
                            _ => {
                                self.error(Some(ifconfig.line), "ifconfig", format!("mode server with topology net30: no `route NETWORK NETMASK` covers {address}, so the client subnet is unknown"));
                                return None;
                            }
                        }
                    }
                }
            }
        };
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
        if let Some((_, line)) = subnet_route {
            self.ignore(line, "route", "the client subnet of the net30 mode-server config: it is the `server` key (the daemon routes it)");
        }
        for route in self.settings.routes.clone() {
            if subnet_route.is_some_and(|(_, line)| line == route.line) {
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
        let server_address_value = server_address
            .unwrap_or_else(|| Ipv4Addr::from(u32::from(subnet.network()).saturating_add(1)));
        let (push_routes, push) = self.pushes(topology, server_address_value, keepalive_set);
        let client_config_dir = match (&self.options.ccd_dir, &self.settings.client_config_dir) {
            (Some(dir), _) => Some(std::path::absolute(dir).unwrap_or_else(|_| dir.clone())),
            (None, Some(at)) => Some(at.value.clone()),
            (None, None) => None,
        };
        if let Some(dir) = &client_config_dir {
            let line = self.settings.client_config_dir.as_ref().map(|at| at.line);
            let problems = check_ccd_dir(dir);
            for problem in problems {
                match problem {
                    CcdProblem::Directory(reason) => self.error(
                        if self.options.ccd_dir.is_some() {
                            None
                        } else {
                            line
                        },
                        if self.options.ccd_dir.is_some() {
                            "--ccd"
                        } else {
                            "client-config-dir"
                        },
                        reason,
                    ),
                    CcdProblem::File(diagnostic) => self.diagnostics.push(diagnostic),
                }
            }
        }
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
