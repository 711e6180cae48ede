//! The first pass: each directive into [`Settings`], the way OpenVPN's `add_option` fills its
//! options (later values override, `remote`, `route` and `push` accumulate). Arguments are checked
//! here, against the directive's line; what depends on the role is checked in `translate`.
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::plan::Source;
use super::table::{disposition, Disposition, TAP};
use super::tokenize::Directive;
use super::translate::Translator;
use super::{describe, Diagnostic};
use crate::config::Compress;
use crate::proto::vocabulary::{Cipher, Topology, Transport};

/// `proto` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Proto {
    Udp,
    /// `tcp`: the server side in server mode, the client side otherwise.
    Tcp,
    TcpServer,
    TcpClient,
}

impl Proto {
    /// `(proto, IPv6-only?)`; `None` if unknown.
    pub(super) fn parse(text: &str) -> Option<(Proto, Option<bool>)> {
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

    pub(super) fn transport(self) -> Transport {
        match self {
            Proto::Udp => Transport::Udp,
            _ => Transport::Tcp,
        }
    }
}

/// A value and the line it came from.
#[derive(Debug, Clone)]
pub(super) struct At<T> {
    pub line: usize,
    pub value: T,
}

#[derive(Debug, Clone)]
pub(super) struct RemoteSetting {
    pub host: String,
    pub port: Option<u16>,
    pub proto: Option<Proto>,
}

#[derive(Debug, Clone)]
pub(super) struct RouteSetting {
    pub prefix: IpNet,
    pub gateway: Option<String>,
}

/// Everything read from the directives, before the role is known.
#[derive(Debug, Default)]
pub(super) struct Settings {
    pub base_dir: PathBuf,
    pub mode_server: Option<usize>,
    pub server: Option<At<Ipv4Net>>,
    pub tls_server: Option<usize>,
    pub tls_client: Option<usize>,
    pub client: Option<usize>,
    pub pull: Option<usize>,
    pub ifconfig: Option<At<(Ipv4Addr, Ipv4Addr)>>,
    pub ifconfig_pool: Option<At<(Ipv4Addr, Ipv4Addr)>>,
    pub routes: Vec<At<RouteSetting>>,
    /// Each `push "..."` argument, verbatim.
    pub push: Vec<At<String>>,
    pub client_config_dir: Option<At<PathBuf>>,
    pub client_to_client: Option<usize>,
    pub duplicate_cn: Option<usize>,
    pub max_clients: Option<At<u32>>,
    pub topology: Option<At<Topology>>,
    pub keepalive: Option<At<(u64, u64)>>,
    pub ping: Option<At<u64>>,
    pub ping_restart: Option<At<u64>>,
    pub tls_auth: Option<At<(Source, Option<u8>)>>,
    pub key_direction: Option<At<u8>>,
    pub auth: Option<At<String>>,
    pub tls_crypt: Option<At<Source>>,
    pub data_ciphers: Option<At<Vec<Cipher>>>,
    pub remotes: Vec<At<RemoteSetting>>,
    pub proto: Option<At<(Proto, Option<bool>)>>,
    /// `nobind`: a client binds no fixed port even if `lport`/`local` say one.
    pub nobind: bool,
    pub port: Option<u16>,
    pub lport: Option<u16>,
    pub rport: Option<u16>,
    pub local: Option<At<IpAddr>>,
    pub dev: Option<At<String>>,
    pub compress: Option<At<Compress>>,
    pub remote_cert_tls: Option<&'static str>,
    pub verify_x509_name: Option<String>,
    pub ca: Option<At<Source>>,
    pub cert: Option<At<Source>>,
    pub key: Option<At<Source>>,
    pub crl: Option<At<Source>>,
    pub reneg_sec: Option<At<u64>>,
    pub mtu: Option<At<u32>>,
}

pub(super) fn parse_ipv4(text: &str) -> Result<Ipv4Addr, String> {
    text.parse()
        .map_err(|_| format!("`{text}` is not an IPv4 address"))
}

/// The prefix length of a netmask like 255.255.255.0.
pub(super) fn netmask_length(text: &str) -> Result<u8, String> {
    let mask = u32::from(parse_ipv4(text)?);
    let length = mask.leading_ones();
    if mask.checked_shl(length).unwrap_or(0) != 0 {
        return Err(format!("`{text}` is not a netmask (ones then zeros)"));
    }
    Ok(length as u8)
}

/// `NETWORK NETMASK` as a prefix with the host bits clear.
pub(super) fn ipv4_prefix(network: &str, mask: &str) -> Result<Ipv4Net, String> {
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

pub(super) fn parse_number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("`{text}` is not a valid {what}"))
}

impl Translator<'_> {
    pub(super) fn error(&mut self, line: Option<usize>, option: &str, reason: impl Into<String>) {
        self.diagnostics.push(Diagnostic {
            file: self.file.to_path_buf(),
            line,
            option: Some(option.to_owned()),
            reason: reason.into(),
        });
    }

    pub(super) fn ignore(&mut self, line: usize, option: &str, reason: impl Into<String>) {
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

    /// One directive, by what [`disposition`] says about its option.
    pub(super) fn directive(&mut self, directive: &Directive) {
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
            Disposition::Translate(_) if directive.inline.is_some() => self.error(
                Some(directive.line),
                name,
                format!("<{name}> inline blocks are not supported"),
            ),
            Disposition::Translate(handler) | Disposition::TranslateFile(handler) => {
                let args: Vec<&str> = directive.args.iter().map(String::as_str).collect();
                if let Err(reason) = handler(self, directive, &args) {
                    self.error(Some(directive.line), name, reason);
                }
            }
        }
    }
}

/// How one option is translated: its directive `d`, with the arguments as `args`, into `t`'s
/// settings (or an ignored-option line or a note). `Err` is a reason to report at the
/// directive's line; problems reported by the handler itself come back as `Ok`.
pub(super) type Handler =
    fn(t: &mut Translator<'_>, d: &Directive, args: &[&str]) -> Result<(), String>;

// The handlers `table::TABLE` names, grouped: role, addresses and routes, server, keepalive,
// control-channel protection, data ciphers, endpoints, device and compression, certificates,
// timers and sizes.

/// A flag's line, or `None` if it was given arguments (reported here).
fn flag(t: &mut Translator<'_>, d: &Directive) -> Option<usize> {
    t.arguments(d, 0..=0).then_some(d.line)
}

pub(super) fn mode(t: &mut Translator<'_>, d: &Directive, args: &[&str]) -> Result<(), String> {
    match args {
        ["server"] => t.settings.mode_server = Some(d.line),
        ["p2p"] => t.settings.mode_server = None,
        _ => return Err("takes `server` or `p2p`".to_owned()),
    }
    Ok(())
}

pub(super) fn server(t: &mut Translator<'_>, d: &Directive, args: &[&str]) -> Result<(), String> {
    let (network, mask) = match args {
        [network, mask] => (*network, *mask),
        [_, _, "nopool"] => {
            return Err("`nopool` is not supported: clients without an ifconfig-push would get no address; use ifconfig-pool or mode server".to_owned())
        }
        _ => return Err("takes NETWORK NETMASK".to_owned()),
    };
    let subnet = ipv4_prefix(network, mask)?;
    t.settings.server = Some(At {
        line: d.line,
        value: subnet,
    });
    Ok(())
}

pub(super) fn tls_server(t: &mut Translator<'_>, d: &Directive, _: &[&str]) -> Result<(), String> {
    if let Some(line) = flag(t, d) {
        t.settings.tls_server = Some(line);
    }
    Ok(())
}

pub(super) fn tls_client(t: &mut Translator<'_>, d: &Directive, _: &[&str]) -> Result<(), String> {
    if let Some(line) = flag(t, d) {
        t.settings.tls_client = Some(line);
    }
    Ok(())
}

pub(super) fn client(t: &mut Translator<'_>, d: &Directive, _: &[&str]) -> Result<(), String> {
    if let Some(line) = flag(t, d) {
        t.settings.client = Some(line);
    }
    Ok(())
}

pub(super) fn pull(t: &mut Translator<'_>, d: &Directive, _: &[&str]) -> Result<(), String> {
    if let Some(line) = flag(t, d) {
        t.settings.pull = Some(line);
    }
    Ok(())
}

pub(super) fn nobind(t: &mut Translator<'_>, d: &Directive, _: &[&str]) -> Result<(), String> {
    if let Some(line) = flag(t, d) {
        t.settings.nobind = true;
        t.ignore(
            line,
            "nobind",
            "a client binds an ephemeral port unless `local`/`lport` is given",
        );
    }
    Ok(())
}

pub(super) fn ifconfig(t: &mut Translator<'_>, d: &Directive, args: &[&str]) -> Result<(), String> {
    let [first, second] = args else {
        return Err("takes LOCAL REMOTE|NETMASK".to_owned());
    };
    let value = (parse_ipv4(first)?, parse_ipv4(second)?);
    t.settings.ifconfig = Some(At {
        line: d.line,
        value,
    });
    Ok(())
}

pub(super) fn ifconfig_pool(
    t: &mut Translator<'_>,
    d: &Directive,
    args: &[&str],
) -> Result<(), String> {
    let (start, end) = match args {
        [start, end] | [start, end, _] => (*start, *end),
        _ => return Err("takes START END [NETMASK]".to_owned()),
    };
    let (start, end) = (parse_ipv4(start)?, parse_ipv4(end)?);
    if start > end {
        return Err(format!("the pool starts at {start}, after its end {end}"));
    }
    t.settings.ifconfig_pool = Some(At {
        line: d.line,
        value: (start, end),
    });
    Ok(())
}

pub(super) fn route(t: &mut Translator<'_>, d: &Directive, args: &[&str]) -> Result<(), String> {
    let (network, mask, gateway) = match args {
        [network] => (*network, "255.255.255.255", None),
        [network, mask] => (*network, *mask, None),
        [network, mask, gateway] | [network, mask, gateway, _] => (*network, *mask, Some(*gateway)),
        _ => return Err("takes NETWORK [NETMASK [GATEWAY [METRIC]]]".to_owned()),
    };
    if args.len() == 4 {
        t.ignore(
            d.line,
            "route",
            "the metric is not used: routes get the kernel's default metric",
        );
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
    t.settings.routes.push(At {
        line: d.line,
        value: RouteSetting {
            prefix: IpNet::V4(prefix),
            gateway,
        },
    });
    Ok(())
}

pub(super) fn route_ipv6(
    t: &mut Translator<'_>,
    d: &Directive,
    args: &[&str],
) -> Result<(), String> {
    let [network, ..] = args else {
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
        t.ignore(
            d.line,
            "route-ipv6",
            "the gateway and metric are not used: the route goes to the tun device",
        );
    }
    t.settings.routes.push(At {
        line: d.line,
        value: RouteSetting {
            prefix: IpNet::V6(prefix),
            gateway: None,
        },
    });
    Ok(())
}

pub(super) fn route_gateway(
    t: &mut Translator<'_>,
    d: &Directive,
    _: &[&str],
) -> Result<(), String> {
    t.ignore(
        d.line,
        "route-gateway",
        "routes go straight to the tun device (a server pushes its own address as route-gateway)",
    );
    Ok(())
}

pub(super) fn push(t: &mut Translator<'_>, d: &Directive, args: &[&str]) -> Result<(), String> {
    let [option] = args else {
        return Err(
            "takes one (quoted) option, e.g. push \"route 10.1.0.0 255.255.0.0\"".to_owned(),
        );
    };
    t.settings.push.push(At {
        line: d.line,
        value: (*option).to_owned(),
    });
    Ok(())
}

pub(super) fn client_config_dir(
    t: &mut Translator<'_>,
    d: &Directive,
    args: &[&str],
) -> Result<(), String> {
    let [dir] = args else {
        return Err("takes DIR".to_owned());
    };
    let value = t.settings.base_dir.join(dir);
    t.settings.client_config_dir = Some(At {
        line: d.line,
        value,
    });
    Ok(())
}

pub(super) fn client_to_client(
    t: &mut Translator<'_>,
    d: &Directive,
    _: &[&str],
) -> Result<(), String> {
    if let Some(line) = flag(t, d) {
        t.settings.client_to_client = Some(line);
    }
    Ok(())
}

pub(super) fn duplicate_cn(
    t: &mut Translator<'_>,
    d: &Directive,
    _: &[&str],
) -> Result<(), String> {
    if let Some(line) = flag(t, d) {
        t.settings.duplicate_cn = Some(line);
    }
    Ok(())
}

pub(super) fn max_clients(
    t: &mut Translator<'_>,
    d: &Directive,
    args: &[&str],
) -> Result<(), String> {
    let [count] = args else {
        return Err("takes N".to_owned());
    };
    let count: u32 = parse_number(count, "number of clients")?;
    if !(1..=65535).contains(&count) {
        return Err(format!("{count} clients: the daemon takes 1 to 65535"));
    }
    t.settings.max_clients = Some(At {
        line: d.line,
        value: count,
    });
    Ok(())
}

pub(super) fn topology(t: &mut Translator<'_>, d: &Directive, args: &[&str]) -> Result<(), String> {
    let value = match args {
        ["subnet"] => Topology::Subnet,
        ["net30"] => Topology::Net30,
        ["p2p"] => return Err("topology p2p is not supported; use subnet or net30".to_owned()),
        _ => return Err("takes subnet, net30 or p2p".to_owned()),
    };
    t.settings.topology = Some(At {
        line: d.line,
        value,
    });
    Ok(())
}

pub(super) fn keepalive(
    t: &mut Translator<'_>,
    d: &Directive,
    args: &[&str],
) -> Result<(), String> {
    let [interval, timeout] = args else {
        return Err("takes INTERVAL TIMEOUT".to_owned());
    };
    let interval: u64 = parse_number(interval, "number of seconds")?;
    let timeout: u64 = parse_number(timeout, "number of seconds")?;
    if interval == 0 || timeout <= interval {
        return Err(format!(
            "keepalive {interval} {timeout}: the daemon needs an interval of at least 1 s and a longer timeout"
        ));
    }
    t.settings.keepalive = Some(At {
        line: d.line,
        value: (interval, timeout),
    });
    Ok(())
}

/// The one `SECONDS` argument of `ping`, `ping-restart` and `ping-exit`.
fn seconds_argument(args: &[&str]) -> Result<u64, String> {
    let [seconds] = args else {
        return Err("takes SECONDS".to_owned());
    };
    parse_number(seconds, "number of seconds")
}

pub(super) fn ping(t: &mut Translator<'_>, d: &Directive, args: &[&str]) -> Result<(), String> {
    let value = seconds_argument(args)?;
    t.settings.ping = Some(At {
        line: d.line,
        value,
    });
    Ok(())
}

pub(super) fn ping_restart(
    t: &mut Translator<'_>,
    d: &Directive,
    args: &[&str],
) -> Result<(), String> {
    let value = seconds_argument(args)?;
    t.settings.ping_restart = Some(At {
        line: d.line,
        value,
    });
    Ok(())
}

/// Read as `ping-restart`: the daemon reconnects where OpenVPN would exit.
pub(super) fn ping_exit(
    t: &mut Translator<'_>,
    d: &Directive,
    args: &[&str],
) -> Result<(), String> {
    let value = seconds_argument(args)?;
    let line = d.line;
    t.notes.push(format!(
        "line {line}: ping-exit {value}: the daemon does not exit when the peer goes silent; it declares the peer dead after {value} s and reconnects (keepalive timeout)"
    ));
    t.settings.ping_restart = Some(At { line, value });
    Ok(())
}

pub(super) fn tls_auth(t: &mut Translator<'_>, d: &Directive, args: &[&str]) -> Result<(), String> {
    if !t.arguments(d, 1..=2) {
        return Ok(());
    }
    let direction = match args.get(1) {
        None => None,
        Some(&"0") => Some(0),
        Some(&"1") => Some(1),
        Some(other) => return Err(format!("key direction `{other}` must be 0 or 1")),
    };
    if let Some(key) = t.source(d, "tls-auth.key") {
        t.settings.tls_auth = Some(At {
            line: d.line,
            value: (key, direction),
        });
    }
    Ok(())
}

pub(super) fn key_direction(
    t: &mut Translator<'_>,
    d: &Directive,
    args: &[&str],
) -> Result<(), String> {
    let value = match args {
        ["0"] => 0,
        ["1"] => 1,
        _ => return Err("takes 0 or 1".to_owned()),
    };
    t.settings.key_direction = Some(At {
        line: d.line,
        value,
    });
    Ok(())
}

pub(super) fn auth(t: &mut Translator<'_>, d: &Directive, args: &[&str]) -> Result<(), String> {
    let [digest] = args else {
        return Err("takes DIGEST".to_owned());
    };
    t.settings.auth = Some(At {
        line: d.line,
        value: (*digest).to_owned(),
    });
    Ok(())
}

pub(super) fn tls_crypt(t: &mut Translator<'_>, d: &Directive, _: &[&str]) -> Result<(), String> {
    if let Some(key) = one_file(t, d, "tls-crypt.key") {
        t.settings.tls_crypt = Some(key);
    }
    Ok(())
}

/// `data-ciphers` and its old name `ncp-ciphers`.
pub(super) fn data_ciphers(
    t: &mut Translator<'_>,
    d: &Directive,
    args: &[&str],
) -> Result<(), String> {
    let [list] = args else {
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
        t.ignore(
            d.line,
            &d.name,
            format!(
                "{} dropped from the list: only AEAD ciphers are supported; peers that can only use {} cannot connect",
                dropped.join(", "),
                if dropped.len() == 1 { "it" } else { "them" }
            ),
        );
    }
    t.settings.data_ciphers = Some(At {
        line: d.line,
        value: ciphers,
    });
    Ok(())
}

/// `cipher` and `data-ciphers-fallback`: only for peers that cannot negotiate, so ignored.
pub(super) fn cipher(t: &mut Translator<'_>, d: &Directive, args: &[&str]) -> Result<(), String> {
    let [name] = args else {
        return Err("takes CIPHER".to_owned());
    };
    let reason = if name.parse::<Cipher>().is_ok() {
        "OpenVPN 2.6 uses it only for peers that cannot negotiate a cipher; the daemon always negotiates from data-ciphers".to_owned()
    } else {
        format!("OpenVPN 2.6 uses it only for peers that cannot negotiate a cipher; {name} is not supported (AEAD only), so such peers (OpenVPN 2.3 and older, or pinned to {name}) cannot connect")
    };
    t.ignore(d.line, &d.name, reason);
    Ok(())
}

pub(super) fn remote(t: &mut Translator<'_>, d: &Directive, args: &[&str]) -> Result<(), String> {
    let (host, port, proto) = match args {
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
    t.settings.remotes.push(At {
        line: d.line,
        value: RemoteSetting {
            host: host.to_owned(),
            port,
            proto,
        },
    });
    Ok(())
}

pub(super) fn proto(t: &mut Translator<'_>, d: &Directive, args: &[&str]) -> Result<(), String> {
    let [proto] = args else {
        return Err("takes udp, tcp, tcp-server, tcp-client (or a 4/6 variant)".to_owned());
    };
    let value = Proto::parse(proto).ok_or_else(|| format!("unknown protocol `{proto}`"))?;
    t.settings.proto = Some(At {
        line: d.line,
        value,
    });
    Ok(())
}

/// The one `PORT` argument of `port`, `lport` and `rport`.
fn port_argument(args: &[&str]) -> Result<u16, String> {
    let [port] = args else {
        return Err("takes PORT".to_owned());
    };
    parse_number(port, "port")
}

pub(super) fn port(t: &mut Translator<'_>, _: &Directive, args: &[&str]) -> Result<(), String> {
    t.settings.port = Some(port_argument(args)?);
    Ok(())
}

pub(super) fn lport(t: &mut Translator<'_>, _: &Directive, args: &[&str]) -> Result<(), String> {
    t.settings.lport = Some(port_argument(args)?);
    Ok(())
}

pub(super) fn rport(t: &mut Translator<'_>, _: &Directive, args: &[&str]) -> Result<(), String> {
    t.settings.rport = Some(port_argument(args)?);
    Ok(())
}

pub(super) fn local(t: &mut Translator<'_>, d: &Directive, args: &[&str]) -> Result<(), String> {
    let [address] = args else {
        return Err("takes ADDRESS".to_owned());
    };
    let value: IpAddr = address.parse().map_err(|_| {
        format!("`{address}` is not an IP address (config schema v1 takes IP addresses, not host names)")
    })?;
    t.settings.local = Some(At {
        line: d.line,
        value,
    });
    Ok(())
}

pub(super) fn dev(t: &mut Translator<'_>, d: &Directive, args: &[&str]) -> Result<(), String> {
    let [device] = args else {
        return Err("takes tun, tunN or a device name".to_owned());
    };
    if device.starts_with("tap") {
        return Err(TAP.to_owned());
    }
    if *device == "null" {
        return Err("dev null (no tunnel device) is not supported".to_owned());
    }
    t.settings.dev = Some(At {
        line: d.line,
        value: (*device).to_owned(),
    });
    Ok(())
}

pub(super) fn dev_type(_: &mut Translator<'_>, _: &Directive, args: &[&str]) -> Result<(), String> {
    match args {
        ["tun"] => Ok(()),
        ["tap"] => Err(TAP.to_owned()),
        _ => Err("takes tun or tap".to_owned()),
    }
}

pub(super) fn comp_lzo(t: &mut Translator<'_>, d: &Directive, args: &[&str]) -> Result<(), String> {
    if !t.arguments(d, 0..=1) {
        return Ok(());
    }
    let line = d.line;
    t.settings.compress = Some(At {
        line,
        value: Compress::LzoStub,
    });
    if let Some(mode) = args.first().filter(|mode| **mode != "no") {
        t.notes.push(format!(
            "line {line}: comp-lzo {mode}: the daemon never compresses; it keeps the comp-lzo framing and drops compressed packets from the peer (OpenVPN 2.6 with `allow-compression no` does the same)"
        ));
    }
    Ok(())
}

pub(super) fn compress(t: &mut Translator<'_>, d: &Directive, args: &[&str]) -> Result<(), String> {
    let value = match args {
        [] | ["stub"] | ["lz4"] => Compress::Stub,
        ["stub-v2"] | ["lz4-v2"] => Compress::StubV2,
        ["lzo"] => return Err("`compress lzo` framing is not supported; comp-lzo, compress, compress stub|lz4 and compress stub-v2|lz4-v2 are".to_owned()),
        ["migrate"] => return Err("`compress migrate` is not supported".to_owned()),
        _ => return Err("takes nothing, stub, stub-v2, lz4, lz4-v2 or lzo".to_owned()),
    };
    t.settings.compress = Some(At {
        line: d.line,
        value,
    });
    Ok(())
}

pub(super) fn remote_cert_tls(
    t: &mut Translator<'_>,
    _: &Directive,
    args: &[&str],
) -> Result<(), String> {
    t.settings.remote_cert_tls = Some(match args {
        ["server"] => "server",
        ["client"] => "client",
        _ => return Err("takes server or client".to_owned()),
    });
    Ok(())
}

pub(super) fn verify_x509_name(
    t: &mut Translator<'_>,
    _: &Directive,
    args: &[&str],
) -> Result<(), String> {
    match args {
        [name, "name"] => t.settings.verify_x509_name = Some((*name).to_owned()),
        [_] | [_, "subject"] => {
            return Err("the default type `subject` compares the whole subject DN; the daemon checks the common name only: write `verify-x509-name CN name`".to_owned())
        }
        [_, "name-prefix"] => {
            return Err("`name-prefix` is not supported; the daemon checks the exact common name (`verify-x509-name CN name`)".to_owned())
        }
        _ => return Err("takes NAME [subject|name|name-prefix]".to_owned()),
    }
    Ok(())
}

pub(super) fn verify_client_cert(
    t: &mut Translator<'_>,
    d: &Directive,
    args: &[&str],
) -> Result<(), String> {
    match args {
        [] | ["require"] => {
            t.ignore(
                d.line,
                "verify-client-cert",
                "clients always need a valid certificate",
            );
            Ok(())
        }
        _ => Err(
            "clients without certificates are not supported: the daemon authenticates peers by certificate only"
                .to_owned(),
        ),
    }
}

/// The one file (or inline block, written to `file_name` with `--write-inline`) of `ca`, `cert`,
/// `key`, `crl-verify` and `tls-crypt`; `None` after reporting why there is none.
fn one_file(t: &mut Translator<'_>, d: &Directive, file_name: &str) -> Option<At<Source>> {
    if !t.arguments(d, 1..=1) {
        return None;
    }
    let value = t.source(d, file_name)?;
    Some(At {
        line: d.line,
        value,
    })
}

pub(super) fn ca(t: &mut Translator<'_>, d: &Directive, _: &[&str]) -> Result<(), String> {
    if let Some(ca) = one_file(t, d, "ca.crt") {
        t.settings.ca = Some(ca);
    }
    Ok(())
}

pub(super) fn cert(t: &mut Translator<'_>, d: &Directive, _: &[&str]) -> Result<(), String> {
    if let Some(cert) = one_file(t, d, "cert.crt") {
        t.settings.cert = Some(cert);
    }
    Ok(())
}

pub(super) fn key(t: &mut Translator<'_>, d: &Directive, _: &[&str]) -> Result<(), String> {
    if let Some(key) = one_file(t, d, "key.pem") {
        t.settings.key = Some(key);
    }
    Ok(())
}

pub(super) fn crl_verify(
    t: &mut Translator<'_>,
    d: &Directive,
    args: &[&str],
) -> Result<(), String> {
    if args.get(1) == Some(&"dir") {
        return Err("a CRL directory is not supported; give one PEM CRL file".to_owned());
    }
    if let Some(crl) = one_file(t, d, "crl.pem") {
        t.settings.crl = Some(crl);
    }
    Ok(())
}

pub(super) fn reneg_sec(
    t: &mut Translator<'_>,
    d: &Directive,
    args: &[&str],
) -> Result<(), String> {
    let (seconds, maximum) = match args {
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
        t.ignore(
            d.line,
            "reneg-sec",
            "the second value (randomisation range) is not used; keys are renegotiated every SECONDS",
        );
    }
    t.settings.reneg_sec = Some(At {
        line: d.line,
        value: seconds,
    });
    Ok(())
}

pub(super) fn tun_mtu(t: &mut Translator<'_>, d: &Directive, args: &[&str]) -> Result<(), String> {
    let [mtu] = args else {
        return Err("takes MTU".to_owned());
    };
    let mtu: u32 = parse_number(mtu, "MTU")?;
    if !(576..=9000).contains(&mtu) {
        return Err(format!("MTU {mtu}: the daemon takes 576 to 9000"));
    }
    t.settings.mtu = Some(At {
        line: d.line,
        value: mtu,
    });
    Ok(())
}

/// `cd DIR`: later relative paths resolve against it.
pub(super) fn cd(t: &mut Translator<'_>, _: &Directive, args: &[&str]) -> Result<(), String> {
    let [dir] = args else {
        return Err("takes DIR".to_owned());
    };
    t.settings.base_dir = t.settings.base_dir.join(dir);
    Ok(())
}
