//! What OpenVPN 2.6 exchanges as text on the TLS control channel: the peer-info (`IV_*`)
//! lines and OCC options string inside key method 2, the NUL-terminated control messages
//! (`PUSH_REQUEST`, `PUSH_REPLY,...`, `EXIT`, `AUTH_FAILED`, ...), the pushed options, and
//! data-cipher negotiation (NCP) for client/server and for p2p.
//!
//! Facts checked against the source (v2.6.14) and the real `openvpn` 2.6.14 binary; the
//! captured strings are the test fixtures below.
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;

use super::vocabulary::{Cipher, KeyDirection, TlsRole, Topology};

/// `IV_PROTO` bits (ssl.h `IV_PROTO_*`). Bit 0 is reserved: old servers tested
/// `IV_PROTO >= 2` for DATA_V2, so anyone setting a bit must set [`DATA_V2`] too.
pub mod iv_proto {
    /// Supports `P_DATA_V2` (peer-id data packets).
    pub const DATA_V2: u32 = 1 << 1;
    /// Will send `PUSH_REQUEST`; the server may push without waiting for it.
    pub const REQUEST_PUSH: u32 = 1 << 2;
    /// Supports data-key derivation with the RFC 5705 exporter (`key-derivation tls-ekm`).
    pub const TLS_KEY_EXPORT: u32 = 1 << 3;
    /// Understands keywords in `AUTH_PENDING` (e.g. `timeout 60`).
    pub const AUTH_PENDING_KW: u32 = 1 << 4;
    /// Runs p2p NCP: both ends pick the cipher from each other's `IV_CIPHERS`.
    pub const NCP_P2P: u32 = 1 << 5;
    /// Supports the pushed `dns` option (2.6).
    pub const DNS_OPTION: u32 = 1 << 6;
    /// Supports the control-channel `EXIT` message and the pushed `protocol-flags`.
    pub const CC_EXIT_NOTIFY: u32 = 1 << 7;
    /// Supports `AUTH_FAILED,TEMP`.
    pub const AUTH_FAIL_TEMP: u32 = 1 << 8;
    /// Supports dynamic tls-crypt (renegotiation under an EKM-derived tls-crypt key).
    pub const DYN_TLS_CRYPT: u32 = 1 << 9;
}

/// The version we announce in `IV_VER`. Servers and plugins compare it numerically; we speak
/// the 2.6 protocol, and say who we really are in `IV_GUI_VER`.
pub const ANNOUNCED_IV_VER: &str = "2.6.14";

/// Peer info: the `KEY=value\n` lines at the end of a key-method 2 message (ssl.c
/// `push_peer_info`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// `IV_VER`, e.g. `2.6.14`.
    pub version: Option<String>,
    /// `IV_PROTO`, see [`iv_proto`]; 0 when absent or not a number (OpenVPN uses `atoi`).
    pub proto_flags: u32,
    /// `IV_CIPHERS`, in the peer's order; names kept as sent (may include ciphers we lack).
    pub ciphers: Vec<String>,
    /// `IV_NCP` (2 means "AES-256-GCM and AES-128-GCM").
    pub ncp: Option<u32>,
    /// `IV_MTU`: the largest tun MTU the peer accepts in a push.
    pub mtu: Option<u16>,
    /// `IV_PLAT`, e.g. `linux`.
    pub platform: Option<String>,
    /// Every other line as (key, value), in order; a line without `=` has an empty value.
    pub other: Vec<(String, String)>,
}

impl PeerInfo {
    /// What we send. `p2p`: like a 2.6 p2p peer (no `--pull`, not `--mode server`), i.e. only
    /// `IV_CIPHERS` and `IV_PROTO` with [`iv_proto::NCP_P2P`]; otherwise like a 2.6
    /// `--client`. `mtu` is the largest tun MTU we accept (`IV_MTU`, client only).
    ///
    /// We announce only what we implement: DATA_V2, TLS-EKM and cc-exit always; REQUEST_PUSH
    /// as a client; NCP_P2P in p2p. Not DNS_OPTION, AUTH_PENDING_KW, AUTH_FAIL_TEMP or
    /// DYN_TLS_CRYPT (2.6 itself sends 746 in p2p and 990 as a client).
    pub fn ours(ciphers: &[Cipher], p2p: bool, mtu: u16) -> Self {
        let mut proto_flags =
            iv_proto::DATA_V2 | iv_proto::TLS_KEY_EXPORT | iv_proto::CC_EXIT_NOTIFY;
        let mut info = PeerInfo {
            ciphers: ciphers
                .iter()
                .map(|cipher| cipher.openvpn_name().to_owned())
                .collect(),
            ..PeerInfo::default()
        };
        if p2p {
            proto_flags |= iv_proto::NCP_P2P;
        } else {
            proto_flags |= iv_proto::REQUEST_PUSH;
            info.version = Some(ANNOUNCED_IV_VER.to_owned());
            info.platform = Some("linux".to_owned());
            // We read TCP control packets out of order just fine.
            info.other.push(("IV_TCPNL".into(), "1".into()));
            info.other.push((
                "IV_GUI_VER".into(),
                concat!("vpn-daemon_", env!("CARGO_PKG_VERSION")).into(),
            ));
            info.mtu = Some(mtu);
            if ciphers.contains(&Cipher::Aes128Gcm) && ciphers.contains(&Cipher::Aes256Gcm) {
                info.ncp = Some(2);
            }
        }
        info.proto_flags = proto_flags;
        info
    }

    /// The peer-info string, in 2.6's order: `IV_VER`, `IV_PLAT`, the others, `IV_MTU`,
    /// `IV_NCP`, `IV_CIPHERS`, `IV_PROTO`; every line ends in `\n`.
    pub fn to_wire(&self) -> String {
        let mut text = String::new();
        let mut line = |key: &str, value: &dyn fmt::Display| {
            text.push_str(&format!("{key}={value}\n"));
        };
        if let Some(version) = &self.version {
            line("IV_VER", version);
        }
        if let Some(platform) = &self.platform {
            line("IV_PLAT", platform);
        }
        for (key, value) in &self.other {
            line(key, value);
        }
        if let Some(mtu) = self.mtu {
            line("IV_MTU", &mtu);
        }
        if let Some(ncp) = self.ncp {
            line("IV_NCP", &ncp);
        }
        if !self.ciphers.is_empty() {
            line("IV_CIPHERS", &self.ciphers.join(":"));
        }
        line("IV_PROTO", &self.proto_flags);
        text
    }

    /// Reads peer info; never fails. The first occurrence of a key wins (OpenVPN searches
    /// with `strstr`); later duplicates land in `other`.
    pub fn parse(text: &str) -> Self {
        let mut info = PeerInfo::default();
        let mut seen_proto = false;
        let mut seen_ciphers = false;
        for line in text.split('\n') {
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                continue;
            }
            let (key, value) = line.split_once('=').unwrap_or((line, ""));
            match key {
                "IV_VER" if info.version.is_none() => info.version = Some(value.to_owned()),
                "IV_PLAT" if info.platform.is_none() => info.platform = Some(value.to_owned()),
                "IV_PROTO" if !seen_proto => {
                    seen_proto = true;
                    info.proto_flags = leading_number(value).unwrap_or(0);
                }
                "IV_CIPHERS" if !seen_ciphers => {
                    seen_ciphers = true;
                    info.ciphers = value
                        .split(':')
                        .filter(|name| !name.is_empty())
                        .map(str::to_owned)
                        .collect();
                }
                "IV_NCP" if info.ncp.is_none() => info.ncp = leading_number(value),
                "IV_MTU" if info.mtu.is_none() => {
                    info.mtu = leading_number(value).and_then(|mtu| u16::try_from(mtu).ok());
                }
                _ => info.other.push((key.to_owned(), value.to_owned())),
            }
        }
        info
    }

    /// Whether the peer set the [`iv_proto`] bit(s) `flag`.
    pub fn supports(&self, flag: u32) -> bool {
        self.proto_flags & flag == flag
    }

    /// Whether the peer negotiates ciphers at all (ssl_ncp.c `tls_peer_supports_ncp`):
    /// `IV_NCP >= 2` or an `IV_CIPHERS` list. Decides whether a server pushes `cipher`.
    pub fn supports_ncp(&self) -> bool {
        self.ncp.is_some_and(|ncp| ncp >= 2) || !self.ciphers.is_empty()
    }

    /// The value of another key, e.g. `IV_GUI_VER`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.other
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }

    /// The ciphers the peer accepts (ssl_ncp.c `tls_peer_ncp_list`): `IV_CIPHERS`, else
    /// AES-256-GCM and AES-128-GCM for `IV_NCP >= 2`, else none.
    fn ncp_list(&self) -> Vec<String> {
        if !self.ciphers.is_empty() {
            self.ciphers.clone()
        } else if self.ncp.is_some_and(|ncp| ncp >= 2) {
            vec!["AES-256-GCM".into(), "AES-128-GCM".into()]
        } else {
            Vec::new()
        }
    }
}

/// Like C `atoi`/`sscanf("%d")`: the leading decimal digits.
fn leading_number(text: &str) -> Option<u32> {
    let digits = text
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?;
    digits.parse().ok()
}

/// How the outer transport appears in the OCC string (socket.c `proto_remote`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OccTransport {
    /// `proto UDPv4` (also over IPv6: the family is not in the string).
    Udp,
    /// `proto TCPv4_SERVER`: we accepted the TCP connection.
    TcpServer,
    /// `proto TCPv4_CLIENT`: we opened the TCP connection.
    TcpClient,
}

/// The settings that shape the OCC options string (options.c `options_string`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OccOptions {
    /// Our TLS role; ends the string as `tls-client` / `tls-server`.
    pub role: TlsRole,
    /// The outer transport and which end of TCP we are.
    pub transport: OccTransport,
    /// The tun MTU.
    pub tun_mtu: u16,
    /// The `--cipher` an equivalent 2.6 config would have. `None` is 2.6's default (BF-CBC):
    /// shown as `cipher BF-CBC` in p2p and left out in client/server mode, with `auth SHA1,
    /// keysize 128`. A 2.6 `--client`/`--server` without `--cipher` sends that form.
    pub cipher: Option<Cipher>,
    /// p2p only: our (local, remote) tunnel addresses (`--ifconfig`); `None` for
    /// client/server mode, where 2.6 leaves `ifconfig` out.
    pub ifconfig: Option<(Ipv4Addr, Ipv4Addr)>,
    /// `tls-auth` in use (tls-crypt is not shown).
    pub tls_auth: bool,
    /// `key-direction` with tls-auth, shown as `keydir 0|1`.
    pub key_direction: Option<KeyDirection>,
}

impl OccOptions {
    /// The string we send; see [`options_string`].
    pub fn local(&self) -> String {
        options_string(self)
    }

    /// The string we expect from a peer with the matching config (options.c builds it with
    /// `remote = true`): TLS role, TCP end, ifconfig and keydir mirrored.
    pub fn expected_remote(&self) -> String {
        let mirrored = OccOptions {
            role: match self.role {
                TlsRole::Client => TlsRole::Server,
                TlsRole::Server => TlsRole::Client,
            },
            transport: match self.transport {
                OccTransport::Udp => OccTransport::Udp,
                OccTransport::TcpServer => OccTransport::TcpClient,
                OccTransport::TcpClient => OccTransport::TcpServer,
            },
            ifconfig: self.ifconfig.map(|(local, remote)| (remote, local)),
            key_direction: self.key_direction.map(|direction| match direction {
                KeyDirection::Normal => KeyDirection::Inverse,
                KeyDirection::Inverse => KeyDirection::Normal,
            }),
            ..self.clone()
        };
        options_string(&mirrored)
    }
}

/// The OCC options string a 2.6 peer with the equivalent config sends, e.g.
/// `V4,dev-type tun,link-mtu 1549,tun-mtu 1500,proto UDPv4,ifconfig 10.99.0.2 10.99.0.1,
/// cipher AES-256-GCM,auth [null-digest],keysize 256,key-method 2,tls-server`.
///
/// 2.6 only compares it with what it expects and logs differences at verb 7 (`options_cmp_equal`
/// / `options_warning`; `cipher`, `proto`, `keydir`, `key-method`, `tls-auth` are never even
/// compared), so a mismatch is cosmetic. What matters: a client/server peer uses our
/// `cipher` item as the legacy cipher only if we send no `IV_CIPHERS`.
///
/// `link-mtu` is 2.6's `calc_options_string_link_mtu`, measured on 2.6.14: tun MTU plus 41
/// (BF-CBC/SHA1 default), 49 (AES-GCM) or 34 (ChaCha20-Poly1305), plus 2 over TCP.
pub fn options_string(occ: &OccOptions) -> String {
    let over_tcp = occ.transport != OccTransport::Udp;
    let cipher_overhead = match occ.cipher {
        None => 41,
        Some(Cipher::Aes256Gcm | Cipher::Aes128Gcm) => 49,
        Some(Cipher::Chacha20Poly1305) => 34,
    };
    let link_mtu = u32::from(occ.tun_mtu) + cipher_overhead + if over_tcp { 2 } else { 0 };
    let proto = match occ.transport {
        OccTransport::Udp => "UDPv4",
        OccTransport::TcpServer => "TCPv4_SERVER",
        OccTransport::TcpClient => "TCPv4_CLIENT",
    };
    let mut text = format!(
        "V4,dev-type tun,link-mtu {link_mtu},tun-mtu {},proto {proto}",
        occ.tun_mtu
    );
    if let Some((local, remote)) = occ.ifconfig {
        // tun.c `ifconfig_options_string` prints the remote address first.
        text.push_str(&format!(",ifconfig {remote} {local}"));
    }
    if let Some(direction) = occ.key_direction {
        text.push_str(match direction {
            KeyDirection::Normal => ",keydir 0",
            KeyDirection::Inverse => ",keydir 1",
        });
    }
    match occ.cipher {
        Some(cipher) => {
            let key_bits = match cipher {
                Cipher::Aes128Gcm => 128,
                Cipher::Aes256Gcm | Cipher::Chacha20Poly1305 => 256,
            };
            text.push_str(&format!(
                ",cipher {cipher},auth [null-digest],keysize {key_bits}"
            ));
        }
        None => {
            // BF-CBC is announced only in p2p (not in any default data-ciphers list).
            if occ.ifconfig.is_some() {
                text.push_str(",cipher BF-CBC");
            }
            text.push_str(",auth SHA1,keysize 128");
        }
    }
    if occ.tls_auth {
        text.push_str(",tls-auth");
    }
    text.push_str(",key-method 2");
    text.push_str(match occ.role {
        TlsRole::Client => ",tls-client",
        TlsRole::Server => ",tls-server",
    });
    text
}

/// The value of `name` in an OCC options string (options.c `options_string_extract_option`),
/// e.g. `occ_option(s, "cipher")`; `[null-cipher]` reads as `none` like in ssl.c.
pub fn occ_option<'a>(options: &'a str, name: &str) -> Option<&'a str> {
    options.split(',').find_map(|item| {
        let (key, value) = item.split_once(' ')?;
        (key == name).then_some(if name == "cipher" && value == "[null-cipher]" {
            "none"
        } else {
            value
        })
    })
}

/// A control message (forward.c `parse_incoming_control_channel_command`): matched by prefix
/// like OpenVPN, the argument is what follows the first `,`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlMessage<'a> {
    /// `PUSH_REQUEST` (client to server).
    PushRequest,
    /// `PUSH_REPLY[,options]`: the options after `PUSH_REPLY,` (empty for a bare reply).
    PushReply(&'a str),
    /// `EXIT`: the peer is going away (cc-exit, explicit-exit-notify over TLS).
    Exit,
    /// `RESTART[,text]`: the server asks the client to reconnect (`[N]`: try the next
    /// server, `[P]`: keep cached passwords).
    Restart(Option<&'a str>),
    /// `HALT[,text]`: the server asks the client to stop.
    Halt(Option<&'a str>),
    /// `AUTH_FAILED[,reason]` (`TEMP[...]` reasons mean "retry later").
    AuthFailed(Option<&'a str>),
    /// `AUTH_PENDING[,keywords]`: authentication continues out of band.
    AuthPending(Option<&'a str>),
    /// `INFO,text` (also matches `INFO` alone, with empty text).
    Info(&'a str),
    /// `INFO_PRE,text`: info sent before authentication completes (e.g. web auth URL).
    InfoPre(&'a str),
    /// Anything else (`CR_RESPONSE,...`, unknown), whole.
    Other(&'a str),
}

impl<'a> ControlMessage<'a> {
    /// Classifies one message text (without its NUL).
    pub fn classify(text: &'a str) -> Self {
        let argument = |prefix: &str| {
            text.get(prefix.len()..)
                .and_then(|rest| rest.strip_prefix(','))
                .filter(|rest| !rest.is_empty())
        };
        if text.starts_with("AUTH_FAILED") {
            ControlMessage::AuthFailed(argument("AUTH_FAILED"))
        } else if text.starts_with("PUSH_REQUEST") {
            ControlMessage::PushRequest
        } else if let Some(rest) = text.strip_prefix("PUSH_REPLY") {
            ControlMessage::PushReply(rest.strip_prefix(',').unwrap_or(rest))
        } else if text.starts_with("RESTART") {
            ControlMessage::Restart(argument("RESTART"))
        } else if text.starts_with("HALT") {
            ControlMessage::Halt(argument("HALT"))
        } else if text.starts_with("INFO_PRE") {
            ControlMessage::InfoPre(argument("INFO_PRE").unwrap_or(""))
        } else if text.starts_with("INFO") {
            ControlMessage::Info(argument("INFO").unwrap_or(""))
        } else if text.starts_with("AUTH_PENDING") {
            ControlMessage::AuthPending(argument("AUTH_PENDING"))
        } else if text.starts_with("EXIT") {
            ControlMessage::Exit
        } else {
            ControlMessage::Other(text)
        }
    }
}

/// Why no control message could be taken from the plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlMessageError {
    /// No NUL yet: wait for more TLS plaintext.
    #[error("control message incomplete; more TLS plaintext needed")]
    Incomplete,
    /// The message has bytes other than printable ASCII; OpenVPN drops such messages.
    /// Skip `skip` bytes (the message and its NUL) and go on.
    #[error("control message of {skip} bytes has non-printable characters; dropped")]
    NotPrintable {
        /// Bytes to discard, NUL included.
        skip: usize,
    },
    /// Text to send contains a NUL, which would end the message early.
    #[error("control message text contains a NUL byte")]
    ContainsNul,
}

/// Takes the first NUL-terminated message from `bytes` and returns it with the number of bytes
/// used (NUL included). Call again on the rest for the next; several may arrive together.
/// Trailing `\r`/`\n` are dropped (ssl_pkt.c `extract_command_buffer`).
pub fn parse_control_message(
    bytes: &[u8],
) -> Result<(ControlMessage<'_>, usize), ControlMessageError> {
    let end = bytes
        .iter()
        .position(|&byte| byte == 0)
        .ok_or(ControlMessageError::Incomplete)?;
    let consumed = end + 1;
    let raw = bytes.get(..end).unwrap_or_default();
    let mut text_end = raw.len();
    while text_end > 0 && matches!(raw.get(text_end - 1), Some(b'\r' | b'\n')) {
        text_end -= 1;
    }
    let raw = raw.get(..text_end).unwrap_or_default();
    if !raw.iter().all(|byte| (0x20..0x7f).contains(byte)) {
        return Err(ControlMessageError::NotPrintable { skip: consumed });
    }
    // All printable ASCII, so this cannot fail.
    let text = std::str::from_utf8(raw)
        .map_err(|_| ControlMessageError::NotPrintable { skip: consumed })?;
    Ok((ControlMessage::classify(text), consumed))
}

/// Appends `text` and its NUL: the wire form of one control message.
pub fn encode_control_message(text: &str, out: &mut Vec<u8>) -> Result<(), ControlMessageError> {
    if text.contains('\0') {
        return Err(ControlMessageError::ContainsNul);
    }
    out.extend_from_slice(text.as_bytes());
    out.push(0);
    Ok(())
}

/// Largest control message a 2.6 server builds for a push (common.h `PUSH_BUNDLE_SIZE`).
pub const PUSH_BUNDLE_SIZE: usize = 1024;

/// The options of one `PUSH_REPLY` (or several joined with [`PushOptions::merge`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushOptions {
    /// `ifconfig A B`: (our address, netmask) with `topology subnet`, (our address, peer
    /// address) with `net30`.
    pub ifconfig: Option<(Ipv4Addr, Ipv4Addr)>,
    /// `topology subnet|net30`.
    pub topology: Option<Topology>,
    /// `route NETWORK [NETMASK [GATEWAY [METRIC]]]`, gateway `None` = the VPN gateway.
    pub routes: Vec<(Ipv4Net, Option<Ipv4Addr>)>,
    /// `route-gateway A` (subnet topology).
    pub route_gateway: Option<Ipv4Addr>,
    /// `peer-id N`: use DATA_V2 with this 24-bit id.
    pub peer_id: Option<u32>,
    /// `cipher NAME`: the data cipher the server chose.
    pub cipher: Option<Cipher>,
    /// Data keys from TLS-EKM: `key-derivation tls-ekm` or `tls-ekm` in `protocol-flags`.
    pub key_derivation_tls_ekm: bool,
    /// `ping N` (seconds).
    pub ping: Option<u32>,
    /// `ping-restart N` (seconds).
    pub ping_restart: Option<u32>,
    /// `protocol-flags ...` words, e.g. `cc-exit`, `tls-ekm`, `dyn-tls-crypt`.
    pub protocol_flags: Vec<String>,
    /// A compression option that adds no compression (`compress stub-v2`, `comp-lzo no`,
    /// ...), whole; it may still change data-packet framing. Real compression is refused.
    pub compression: Option<String>,
    /// `tun-mtu N`.
    pub tun_mtu: Option<u16>,
    /// Options we do not act on (`redirect-gateway`, `dhcp-option`, `route-ipv6`, ...),
    /// whole, for logs.
    pub ignored: Vec<String>,
    /// `push-continuation 2` (more replies follow) or `1` (last of several).
    pub continuation: Option<u8>,
}

/// Why a pushed option list is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// `cipher` names a cipher we do not implement.
    #[error("pushed option `{option}`: the server chose a data cipher we do not support (supported: AES-256-GCM, AES-128-GCM, CHACHA20-POLY1305)")]
    UnsupportedCipher {
        /// The option as pushed.
        option: String,
    },
    /// Compression that would actually compress.
    #[error("pushed option `{option}`: compression is not supported; remove it from the server (or use `compress stub-v2`)")]
    UnsupportedCompression {
        /// The option as pushed.
        option: String,
    },
    /// A topology we do not implement.
    #[error("pushed option `{option}`: only `topology subnet` and `topology net30` are supported")]
    UnsupportedTopology {
        /// The option as pushed.
        option: String,
    },
    /// An option we understand with an argument that does not parse.
    #[error("pushed option `{option}` is malformed: {reason}")]
    Malformed {
        /// The option as pushed.
        option: String,
        /// What is wrong.
        reason: &'static str,
    },
}

impl PushOptions {
    /// Parses the options of a push reply; accepts the text with or without the leading
    /// `PUSH_REPLY,`. Unknown options go to `ignored`; options that would make the tunnel
    /// misbehave if ignored (unknown cipher, real compression) are errors naming the option.
    pub fn parse(reply: &str) -> Result<Self, PushError> {
        let body = reply
            .strip_prefix("PUSH_REPLY")
            .map(|rest| rest.strip_prefix(',').unwrap_or(rest))
            .unwrap_or(reply);
        let mut options = PushOptions::default();
        for option in body.split(',') {
            let option = option.trim();
            if !option.is_empty() {
                options.apply(option)?;
            }
        }
        Ok(options)
    }

    fn apply(&mut self, option: &str) -> Result<(), PushError> {
        let words: Vec<&str> = option.split_whitespace().collect();
        let malformed = |reason| PushError::Malformed {
            option: option.to_owned(),
            reason,
        };
        let address = |index: usize| -> Result<Ipv4Addr, PushError> {
            words
                .get(index)
                .ok_or_else(|| malformed("an address is missing"))?
                .parse()
                .map_err(|_| malformed("not an IPv4 address"))
        };
        let number = |reason| -> Result<u32, PushError> {
            words
                .get(1)
                .and_then(|word| word.parse().ok())
                .ok_or_else(|| malformed(reason))
        };
        match words.first().copied().unwrap_or_default() {
            "ifconfig" => self.ifconfig = Some((address(1)?, address(2)?)),
            "topology" => {
                self.topology = Some(match words.get(1).copied() {
                    Some("subnet") => Topology::Subnet,
                    Some("net30") => Topology::Net30,
                    _ => {
                        return Err(PushError::UnsupportedTopology {
                            option: option.to_owned(),
                        })
                    }
                })
            }
            "route" => match parse_route(&words) {
                Some(RouteTarget::Tunnel(route)) => self.routes.push(route),
                Some(RouteTarget::Elsewhere) => self.ignored.push(option.to_owned()),
                None => return Err(malformed("expected `route NETWORK [NETMASK [GATEWAY]]`")),
            },
            "route-gateway" => {
                // `route-gateway dhcp` is for tap; nothing to do on tun.
                if words.get(1) == Some(&"dhcp") {
                    self.ignored.push(option.to_owned());
                } else {
                    self.route_gateway = Some(address(1)?);
                }
            }
            "peer-id" => {
                let peer_id = number("expected a number")?;
                if peer_id >= 1 << 24 {
                    return Err(malformed("peer-id must fit in 24 bits"));
                }
                self.peer_id = Some(peer_id);
            }
            "cipher" => {
                let name = words
                    .get(1)
                    .ok_or_else(|| malformed("cipher name missing"))?;
                self.cipher =
                    Some(
                        Cipher::from_str(name).map_err(|_| PushError::UnsupportedCipher {
                            option: option.to_owned(),
                        })?,
                    );
            }
            "key-derivation" => {
                if words.get(1) != Some(&"tls-ekm") {
                    return Err(malformed("only `key-derivation tls-ekm` exists"));
                }
                self.key_derivation_tls_ekm = true;
            }
            "protocol-flags" => {
                for flag in words.iter().skip(1) {
                    if *flag == "tls-ekm" {
                        self.key_derivation_tls_ekm = true;
                    }
                    self.protocol_flags.push((*flag).to_owned());
                }
            }
            "ping" => self.ping = Some(number("expected seconds")?),
            "ping-restart" => self.ping_restart = Some(number("expected seconds")?),
            "tun-mtu" => {
                let mtu = number("expected an MTU")?;
                self.tun_mtu = Some(u16::try_from(mtu).map_err(|_| malformed("MTU out of range"))?);
            }
            "push-continuation" => {
                self.continuation = match words.get(1).copied() {
                    Some("1") => Some(1),
                    Some("2") => Some(2),
                    _ => return Err(malformed("expected 1 or 2")),
                }
            }
            "comp-lzo" => match words.get(1).copied() {
                Some("no") => self.compression = Some(option.to_owned()),
                _ => {
                    return Err(PushError::UnsupportedCompression {
                        option: option.to_owned(),
                    })
                }
            },
            "compress" => match words.get(1).copied() {
                None | Some("stub" | "stub-v2") => self.compression = Some(option.to_owned()),
                Some(_) => {
                    return Err(PushError::UnsupportedCompression {
                        option: option.to_owned(),
                    })
                }
            },
            _ => self.ignored.push(option.to_owned()),
        }
        Ok(())
    }

    /// Whether this reply ends the push (no `push-continuation 2`).
    pub fn is_final(&self) -> bool {
        self.continuation != Some(2)
    }

    /// Folds in the next reply of a `push-continuation` sequence: its single values replace
    /// ours when set, lists are appended, and `continuation` becomes the newer one's.
    pub fn merge(&mut self, next: PushOptions) {
        fn replace<T>(ours: &mut Option<T>, theirs: Option<T>) {
            if theirs.is_some() {
                *ours = theirs;
            }
        }
        replace(&mut self.ifconfig, next.ifconfig);
        replace(&mut self.topology, next.topology);
        self.routes.extend(next.routes);
        replace(&mut self.route_gateway, next.route_gateway);
        replace(&mut self.peer_id, next.peer_id);
        replace(&mut self.cipher, next.cipher);
        self.key_derivation_tls_ekm |= next.key_derivation_tls_ekm;
        replace(&mut self.ping, next.ping);
        replace(&mut self.ping_restart, next.ping_restart);
        self.protocol_flags.extend(next.protocol_flags);
        replace(&mut self.compression, next.compression);
        replace(&mut self.tun_mtu, next.tun_mtu);
        self.ignored.extend(next.ignored);
        self.continuation = next.continuation;
    }

    /// The `PUSH_REPLY,...` text in the order a 2.6 server sends it: its `push` list
    /// (routes, other pushed options, `route-gateway`, `topology`, `ping`, `ping-restart`),
    /// then the per-client part (push.c `prepare_push_reply`: `ifconfig`, `peer-id`,
    /// `cipher`, `key-derivation tls-ekm` only without `protocol-flags`, `protocol-flags`,
    /// `tun-mtu`), then `push-continuation`. Splitting a long reply is the caller's job.
    pub fn to_reply(&self) -> String {
        let mut items: Vec<String> = vec!["PUSH_REPLY".into()];
        for (network, gateway) in &self.routes {
            let mut route = format!("route {} {}", network.network(), network.netmask());
            if let Some(gateway) = gateway {
                route.push_str(&format!(" {gateway}"));
            }
            items.push(route);
        }
        items.extend(self.ignored.iter().cloned());
        if let Some(compression) = &self.compression {
            items.push(compression.clone());
        }
        if let Some(gateway) = self.route_gateway {
            items.push(format!("route-gateway {gateway}"));
        }
        if let Some(topology) = self.topology {
            items.push(
                match topology {
                    Topology::Subnet => "topology subnet",
                    Topology::Net30 => "topology net30",
                }
                .into(),
            );
        }
        if let Some(ping) = self.ping {
            items.push(format!("ping {ping}"));
        }
        if let Some(ping_restart) = self.ping_restart {
            items.push(format!("ping-restart {ping_restart}"));
        }
        if let Some((address, mask_or_peer)) = self.ifconfig {
            items.push(format!("ifconfig {address} {mask_or_peer}"));
        }
        if let Some(peer_id) = self.peer_id {
            items.push(format!("peer-id {peer_id}"));
        }
        if let Some(cipher) = self.cipher {
            items.push(format!("cipher {cipher}"));
        }
        let ekm_in_flags = self.protocol_flags.iter().any(|flag| flag == "tls-ekm");
        if self.key_derivation_tls_ekm && !ekm_in_flags {
            items.push("key-derivation tls-ekm".into());
        }
        if !self.protocol_flags.is_empty() {
            items.push(format!("protocol-flags {}", self.protocol_flags.join(" ")));
        }
        if let Some(mtu) = self.tun_mtu {
            items.push(format!("tun-mtu {mtu}"));
        }
        if let Some(continuation) = self.continuation {
            items.push(format!("push-continuation {continuation}"));
        }
        items.join(",")
    }

    /// What a 2.6 server adds for this client from its peer info (push.c
    /// `prepare_push_reply`, multi.c `multi_client_set_protocol_options`): `peer-id` if the
    /// client has DATA_V2, `cipher` if it does NCP, `protocol-flags cc-exit tls-ekm` if it has
    /// cc-exit (+TLS-EKM), else `key-derivation tls-ekm` if it has TLS-EKM, `tun-mtu` if it
    /// sent `IV_MTU`. (2.6 also adds `dyn-tls-crypt`; we do not implement it.)
    pub fn add_per_client(&mut self, peer: &PeerInfo, peer_id: u32, cipher: Cipher, tun_mtu: u16) {
        if peer.supports(iv_proto::DATA_V2) {
            self.peer_id = Some(peer_id);
        }
        if peer.supports_ncp() {
            self.cipher = Some(cipher);
        }
        if peer.supports(iv_proto::TLS_KEY_EXPORT) {
            self.key_derivation_tls_ekm = true;
        }
        if peer.supports(iv_proto::CC_EXIT_NOTIFY) {
            self.protocol_flags.push("cc-exit".into());
            if peer.supports(iv_proto::TLS_KEY_EXPORT) {
                self.protocol_flags.push("tls-ekm".into());
            }
        }
        if peer.mtu.is_some() {
            self.tun_mtu = Some(tun_mtu);
        }
    }
}

enum RouteTarget {
    /// Through the tunnel (gateway `None`: the VPN gateway).
    Tunnel((Ipv4Net, Option<Ipv4Addr>)),
    /// `net_gateway` / `remote_host`: not through the tunnel.
    Elsewhere,
}

/// `route NETWORK [NETMASK|default [GATEWAY|vpn_gateway|default [METRIC]]]`; a missing netmask
/// is 255.255.255.255 (options.c / route.c defaults).
fn parse_route(words: &[&str]) -> Option<RouteTarget> {
    let network: Ipv4Addr = words.get(1)?.parse().ok()?;
    let prefix_len = match words.get(2).copied() {
        None | Some("default") => 32,
        Some(mask) => {
            let mask = u32::from(mask.parse::<Ipv4Addr>().ok()?);
            // Netmasks must be contiguous ones.
            if mask.leading_ones() + mask.trailing_zeros() != 32 {
                return None;
            }
            u8::try_from(mask.leading_ones()).ok()?
        }
    };
    let net = Ipv4Net::new(network, prefix_len).ok()?.trunc();
    let gateway = match words.get(3).copied() {
        None | Some("default" | "vpn_gateway") => None,
        Some("net_gateway" | "remote_host") => return Some(RouteTarget::Elsewhere),
        Some(gateway) => Some(gateway.parse().ok()?),
    };
    Some(RouteTarget::Tunnel((net, gateway)))
}

/// Why no data cipher could be agreed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NcpError {
    /// Both sides named ciphers, none in common.
    #[error("no common data cipher: ours are {ours}, the peer supports {peer}")]
    NoCommonCipher {
        /// Our list, `:`-joined.
        ours: String,
        /// The peer's list (or its single OCC cipher), `:`-joined.
        peer: String,
    },
    /// The peer said nothing usable about ciphers (no `IV_CIPHERS`, no `IV_NCP=2`, no or an
    /// unsupported `cipher` in its options string).
    #[error("the peer announced no data ciphers (no IV_CIPHERS, no IV_NCP=2, OCC cipher {occ_cipher}); it is too old or misconfigured; set `data-ciphers`/`cipher` on it to one of ours: {ours}")]
    NoPeerCiphers {
        /// The `cipher` from its options string, or `none`.
        occ_cipher: String,
        /// Our list, `:`-joined.
        ours: String,
    },
}

fn join_ciphers(ciphers: &[Cipher]) -> String {
    ciphers
        .iter()
        .map(|cipher| cipher.openvpn_name())
        .collect::<Vec<_>>()
        .join(":")
}

fn cipher_in(list: &[String], cipher: Cipher) -> bool {
    list.iter()
        .any(|name| name.eq_ignore_ascii_case(cipher.openvpn_name()))
}

/// Server side: the data cipher for a client (ssl_ncp.c `ncp_get_best_cipher`): the first of
/// `ours` that the client lists in `IV_CIPHERS` (else in the `IV_NCP=2` implied
/// AES-256-GCM:AES-128-GCM), or that equals the `cipher` of its options string — the latter
/// only when it sent no `IV_CIPHERS`. Our order wins.
pub fn negotiate_server_cipher(
    ours: &[Cipher],
    peer: &PeerInfo,
    peer_options: &str,
) -> Result<Cipher, NcpError> {
    let peer_list = peer.ncp_list();
    let occ_cipher = if peer.ciphers.is_empty() {
        occ_option(peer_options, "cipher")
    } else {
        None
    };
    let chosen = ours.iter().copied().find(|&cipher| {
        cipher_in(&peer_list, cipher)
            || occ_cipher.is_some_and(|name| name.eq_ignore_ascii_case(cipher.openvpn_name()))
    });
    match chosen {
        Some(cipher) => Ok(cipher),
        None if !peer_list.is_empty() => Err(NcpError::NoCommonCipher {
            ours: join_ciphers(ours),
            peer: peer_list.join(":"),
        }),
        None => Err(NcpError::NoPeerCiphers {
            occ_cipher: occ_option(peer_options, "cipher")
                .unwrap_or("none")
                .to_owned(),
            ours: join_ciphers(ours),
        }),
    }
}

/// p2p (2.6 "P2P NCP", ssl_ncp.c `p2p_mode_ncp` / `get_p2p_ncp_cipher` /
/// `p2p_ncp_set_options`): both ends compute the same answer from each other's peer info.
///
/// * Cipher: the first cipher in the **TLS server's** list that is also in the TLS client's
///   list; `our_role` says which list is whose.
/// * TLS-EKM data keys: when the peer announces [`iv_proto::NCP_P2P`] and
///   [`iv_proto::TLS_KEY_EXPORT`] (we always support it).
/// * A peer without `NCP_P2P` (2.5 and older, or one with `--pull`) negotiates nothing: 2.6
///   then falls back to its own `--cipher`/`--data-ciphers-fallback` and the legacy PRF.
///   We do the equivalent: use the `cipher` from the peer's options string (which a p2p
///   peer always sends) if it is one of ours, with `use_ekm = false`; otherwise fail.
///
/// Returns (cipher, use_ekm). DATA_V2 and its peer-id: see [`p2p_peer_id`].
pub fn negotiate_p2p(
    ours: &[Cipher],
    our_role: TlsRole,
    peer: &PeerInfo,
    peer_options: &str,
) -> Result<(Cipher, bool), NcpError> {
    if peer.supports(iv_proto::NCP_P2P) && !peer.ciphers.is_empty() {
        let peer_ciphers: Vec<Cipher> = peer
            .ciphers
            .iter()
            .filter_map(|name| Cipher::from_str(name).ok())
            .collect();
        let (server_list, client_list) = match our_role {
            TlsRole::Server => (ours, peer_ciphers.as_slice()),
            TlsRole::Client => (peer_ciphers.as_slice(), ours),
        };
        let use_ekm = peer.supports(iv_proto::TLS_KEY_EXPORT);
        return server_list
            .iter()
            .copied()
            .find(|cipher| client_list.contains(cipher))
            .map(|cipher| (cipher, use_ekm))
            .ok_or_else(|| NcpError::NoCommonCipher {
                ours: join_ciphers(ours),
                peer: peer.ciphers.join(":"),
            });
    }
    let occ_cipher = occ_option(peer_options, "cipher");
    match occ_cipher.and_then(|name| Cipher::from_str(name).ok()) {
        Some(cipher) if ours.contains(&cipher) => Ok((cipher, false)),
        _ => Err(NcpError::NoPeerCiphers {
            occ_cipher: occ_cipher.unwrap_or("none").to_owned(),
            ours: join_ciphers(ours),
        }),
    }
}

/// The RFC 5705 label for the p2p peer-id (ssl_backend.h `EXPORT_P2P_PEERID_LABEL`).
pub const P2P_PEER_ID_EKM_LABEL: &str = "EXPORTER-OpenVPN-p2p-peerid";
/// The p2p peer-id without TLS-EKM: `'v' 'p' 'n'` (ssl_ncp.c `p2p_ncp_set_options`).
pub const P2P_FIXED_PEER_ID: u32 = 0x76706e;

/// p2p DATA_V2: `None` means send DATA_V1 (the peer lacks `NCP_P2P` or `DATA_V2`). Otherwise
/// both ends send DATA_V2 with the same peer-id: with TLS-EKM the 3 bytes exported under
/// [`P2P_PEER_ID_EKM_LABEL`] (big-endian; pass `ekm_peer_id`), else [`P2P_FIXED_PEER_ID`].
pub fn p2p_peer_id(peer: &PeerInfo, use_ekm: bool, ekm_peer_id: [u8; 3]) -> Option<u32> {
    if !peer.supports(iv_proto::NCP_P2P) || !peer.supports(iv_proto::DATA_V2) {
        return None;
    }
    if use_ekm {
        let [high, middle, low] = ekm_peer_id;
        Some(u32::from_be_bytes([0, high, middle, low]))
    } else {
        Some(P2P_FIXED_PEER_ID)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Captured from the real openvpn 2.6.14 (`--verb 7`) on 127.0.0.1 in a private netns.
    /// `--server 10.8.0.0 255.255.255.0 --topology subnet --push "route 10.1.0.0 255.255.0.0"
    /// --keepalive 10 60`, client `--client`, UDP.
    const PUSH_REPLY_SUBNET: &str = "PUSH_REPLY,route 10.1.0.0 255.255.0.0,route-gateway 10.8.0.1,topology subnet,ping 10,ping-restart 60,ifconfig 10.8.0.2 255.255.255.0,peer-id 0,cipher AES-256-GCM,protocol-flags cc-exit tls-ekm dyn-tls-crypt,tun-mtu 1500";
    /// Same with `--topology net30`, redirect-gateway and dhcp-option pushed,
    /// `--data-ciphers AES-128-GCM:AES-256-GCM`, `--tun-mtu 1400`, TCP.
    const PUSH_REPLY_NET30: &str = "PUSH_REPLY,route 10.1.0.0 255.255.0.0,redirect-gateway def1,dhcp-option DNS 10.8.0.1,route 10.8.0.1,topology net30,ping 10,ping-restart 60,ifconfig 10.8.0.6 10.8.0.5,peer-id 0,cipher AES-128-GCM,protocol-flags cc-exit tls-ekm dyn-tls-crypt,tun-mtu 1400";
    /// Peer info of a 2.6.14 `--client` (one `peer info:` log line per entry).
    const PEER_INFO_CLIENT: &str = "IV_VER=2.6.14\nIV_PLAT=linux\nIV_TCPNL=1\nIV_MTU=1600\nIV_NCP=2\nIV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305\nIV_PROTO=990\nIV_LZO_STUB=1\nIV_COMP_STUB=1\nIV_COMP_STUBv2=1\n";
    /// Peer info of a 2.6.14 p2p peer (`--tls-server`/`--tls-client` + `--ifconfig`).
    const PEER_INFO_P2P: &str =
        "IV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305\nIV_PROTO=746\n";
    /// Local options strings (`Local Options String (VER=V4): '...'`).
    const OCC_CLIENT_MODE: &str = "V4,dev-type tun,link-mtu 1541,tun-mtu 1500,proto UDPv4,auth SHA1,keysize 128,key-method 2,tls-client";
    const OCC_SERVER_MODE_TCP_1400: &str = "V4,dev-type tun,link-mtu 1443,tun-mtu 1400,proto TCPv4_SERVER,auth SHA1,keysize 128,key-method 2,tls-server";
    const OCC_P2P_DEFAULT_SERVER: &str = "V4,dev-type tun,link-mtu 1541,tun-mtu 1500,proto UDPv4,ifconfig 10.99.0.2 10.99.0.1,cipher BF-CBC,auth SHA1,keysize 128,key-method 2,tls-server";
    const OCC_P2P_AES256_SERVER: &str = "V4,dev-type tun,link-mtu 1549,tun-mtu 1500,proto UDPv4,ifconfig 10.99.0.2 10.99.0.1,cipher AES-256-GCM,auth [null-digest],keysize 256,key-method 2,tls-server";
    const OCC_P2P_AES128_CLIENT: &str = "V4,dev-type tun,link-mtu 1549,tun-mtu 1500,proto UDPv4,ifconfig 10.99.0.1 10.99.0.2,cipher AES-128-GCM,auth [null-digest],keysize 128,key-method 2,tls-client";
    const OCC_P2P_CHACHA_SERVER: &str = "V4,dev-type tun,link-mtu 1534,tun-mtu 1500,proto UDPv4,ifconfig 10.99.0.2 10.99.0.1,cipher CHACHA20-POLY1305,auth [null-digest],keysize 256,key-method 2,tls-server";
    const OCC_P2P_AES256_TCP_CLIENT: &str = "V4,dev-type tun,link-mtu 1551,tun-mtu 1500,proto TCPv4_CLIENT,ifconfig 10.99.0.1 10.99.0.2,cipher AES-256-GCM,auth [null-digest],keysize 256,key-method 2,tls-client";
    const OCC_P2P_AES256_TLS_AUTH_SERVER: &str = "V4,dev-type tun,link-mtu 1549,tun-mtu 1500,proto UDPv4,ifconfig 10.99.0.2 10.99.0.1,cipher AES-256-GCM,auth [null-digest],keysize 256,tls-auth,key-method 2,tls-server";
    const OCC_P2P_AES256_MTU9000_SERVER: &str = "V4,dev-type tun,link-mtu 9049,tun-mtu 9000,proto UDPv4,ifconfig 10.99.0.2 10.99.0.1,cipher AES-256-GCM,auth [null-digest],keysize 256,key-method 2,tls-server";

    fn address(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    fn p2p_occ(role: TlsRole, cipher: Option<Cipher>) -> OccOptions {
        let (local, remote) = match role {
            TlsRole::Server => (address("10.99.0.1"), address("10.99.0.2")),
            TlsRole::Client => (address("10.99.0.2"), address("10.99.0.1")),
        };
        OccOptions {
            role,
            transport: OccTransport::Udp,
            tun_mtu: 1500,
            cipher,
            ifconfig: Some((local, remote)),
            tls_auth: false,
            key_direction: None,
        }
    }

    #[test]
    fn options_strings_match_real_openvpn() {
        use Cipher::*;
        let server = |cipher| p2p_occ(TlsRole::Server, cipher);
        let client = |cipher| p2p_occ(TlsRole::Client, cipher);
        assert_eq!(server(None).local(), OCC_P2P_DEFAULT_SERVER);
        assert_eq!(server(Some(Aes256Gcm)).local(), OCC_P2P_AES256_SERVER);
        assert_eq!(client(Some(Aes128Gcm)).local(), OCC_P2P_AES128_CLIENT);
        assert_eq!(
            server(Some(Chacha20Poly1305)).local(),
            OCC_P2P_CHACHA_SERVER
        );
        let tcp = OccOptions {
            transport: OccTransport::TcpClient,
            ..client(Some(Aes256Gcm))
        };
        assert_eq!(tcp.local(), OCC_P2P_AES256_TCP_CLIENT);
        let tls_auth = OccOptions {
            tls_auth: true,
            ..server(Some(Aes256Gcm))
        };
        assert_eq!(tls_auth.local(), OCC_P2P_AES256_TLS_AUTH_SERVER);
        let jumbo = OccOptions {
            tun_mtu: 9000,
            ..server(Some(Aes256Gcm))
        };
        assert_eq!(jumbo.local(), OCC_P2P_AES256_MTU9000_SERVER);
        // The peer's local string is what we expect from it, and the other way round.
        assert_eq!(
            server(Some(Aes256Gcm)).expected_remote(),
            client(Some(Aes256Gcm)).local()
        );
        assert_eq!(
            tcp.expected_remote().replace("TCPv4_SERVER", "X"),
            OccOptions {
                transport: OccTransport::TcpServer,
                ..server(Some(Aes256Gcm))
            }
            .local()
            .replace("TCPv4_SERVER", "X")
        );

        let client_mode = OccOptions {
            role: TlsRole::Client,
            transport: OccTransport::Udp,
            tun_mtu: 1500,
            cipher: None,
            ifconfig: None,
            tls_auth: false,
            key_direction: None,
        };
        assert_eq!(client_mode.local(), OCC_CLIENT_MODE);
        let server_mode = OccOptions {
            role: TlsRole::Server,
            transport: OccTransport::TcpServer,
            tun_mtu: 1400,
            ..client_mode.clone()
        };
        assert_eq!(server_mode.local(), OCC_SERVER_MODE_TCP_1400);
        assert_eq!(
            server_mode.expected_remote(),
            "V4,dev-type tun,link-mtu 1443,tun-mtu 1400,proto TCPv4_CLIENT,auth SHA1,keysize 128,key-method 2,tls-client"
        );
    }

    #[test]
    fn occ_option_extracts_values() {
        assert_eq!(
            occ_option(OCC_P2P_AES256_SERVER, "cipher"),
            Some("AES-256-GCM")
        );
        assert_eq!(occ_option(OCC_P2P_AES256_SERVER, "tun-mtu"), Some("1500"));
        assert_eq!(occ_option(OCC_CLIENT_MODE, "cipher"), None);
        assert_eq!(
            occ_option("V4,cipher [null-cipher]", "cipher"),
            Some("none")
        );
    }

    #[test]
    fn peer_info_fixtures_parse() {
        let client = PeerInfo::parse(PEER_INFO_CLIENT);
        assert_eq!(client.version.as_deref(), Some("2.6.14"));
        assert_eq!(client.platform.as_deref(), Some("linux"));
        assert_eq!(client.mtu, Some(1600));
        assert_eq!(client.ncp, Some(2));
        assert_eq!(
            client.ciphers,
            ["AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305"]
        );
        assert_eq!(client.proto_flags, 990);
        for flag in [
            iv_proto::DATA_V2,
            iv_proto::REQUEST_PUSH,
            iv_proto::TLS_KEY_EXPORT,
            iv_proto::AUTH_PENDING_KW,
            iv_proto::DNS_OPTION,
            iv_proto::CC_EXIT_NOTIFY,
            iv_proto::AUTH_FAIL_TEMP,
            iv_proto::DYN_TLS_CRYPT,
        ] {
            assert!(client.supports(flag), "flag {flag:#x}");
        }
        assert!(!client.supports(iv_proto::NCP_P2P));
        assert_eq!(client.get("IV_TCPNL"), Some("1"));
        assert_eq!(client.get("IV_COMP_STUBv2"), Some("1"));
        assert_eq!(client.to_wire(), "IV_VER=2.6.14\nIV_PLAT=linux\nIV_TCPNL=1\nIV_LZO_STUB=1\nIV_COMP_STUB=1\nIV_COMP_STUBv2=1\nIV_MTU=1600\nIV_NCP=2\nIV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305\nIV_PROTO=990\n");
        assert_eq!(PeerInfo::parse(&client.to_wire()), client);

        let p2p = PeerInfo::parse(PEER_INFO_P2P);
        assert_eq!(
            p2p.proto_flags,
            iv_proto::DATA_V2
                | iv_proto::TLS_KEY_EXPORT
                | iv_proto::NCP_P2P
                | iv_proto::DNS_OPTION
                | iv_proto::CC_EXIT_NOTIFY
                | iv_proto::DYN_TLS_CRYPT
        );
        assert_eq!(p2p.to_wire(), PEER_INFO_P2P);
        assert!(p2p.version.is_none() && p2p.mtu.is_none() && p2p.other.is_empty());
    }

    #[test]
    fn peer_info_is_tolerant() {
        let info = PeerInfo::parse(
            "garbage\nIV_PROTO=abc\nIV_MTU=99999\nIV_NCP=2x\r\nUV_X=a=b\nIV_PROTO=6\n",
        );
        assert_eq!(info.proto_flags, 0);
        assert_eq!(info.mtu, None);
        assert_eq!(info.ncp, Some(2));
        assert_eq!(info.get("garbage"), Some(""));
        assert_eq!(info.get("UV_X"), Some("a=b"));
        assert_eq!(
            info.get("IV_PROTO"),
            Some("6"),
            "a duplicate is kept, not used"
        );
    }

    #[test]
    fn our_peer_info() {
        let p2p = PeerInfo::ours(&Cipher::ALL, true, 1500);
        assert_eq!(
            p2p.to_wire(),
            "IV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305\nIV_PROTO=170\n"
        );
        let client = PeerInfo::ours(&[Cipher::Chacha20Poly1305, Cipher::Aes256Gcm], false, 1600);
        assert_eq!(client.proto_flags, 2 | 4 | 8 | 128);
        assert_eq!(client.ncp, None, "IV_NCP=2 needs both AES-GCM ciphers");
        let wire = client.to_wire();
        assert!(
            wire.starts_with("IV_VER=2.6.14\nIV_PLAT=linux\nIV_TCPNL=1\nIV_GUI_VER=vpn-daemon_")
        );
        assert!(
            wire.ends_with("IV_MTU=1600\nIV_CIPHERS=CHACHA20-POLY1305:AES-256-GCM\nIV_PROTO=142\n")
        );
        assert_eq!(PeerInfo::ours(&Cipher::ALL, false, 1500).ncp, Some(2));
    }

    #[test]
    fn control_messages() {
        let stream = b"PUSH_REQUEST\0PUSH_REPLY,ping 10\0EXIT\0AUTH_FAILED\0AUTH_FAILED,TEMP[backoff 5]: busy\0RESTART,[N]bye\r\n\0HALT\0INFO,hi\0INFO_PRE,WEB_AUTH::x\0AUTH_PENDING,timeout 60\0CR_RESPONSE,abc\0PUSH_REPLY\0\0PUSH_RE";
        let expected = [
            ControlMessage::PushRequest,
            ControlMessage::PushReply("ping 10"),
            ControlMessage::Exit,
            ControlMessage::AuthFailed(None),
            ControlMessage::AuthFailed(Some("TEMP[backoff 5]: busy")),
            ControlMessage::Restart(Some("[N]bye")),
            ControlMessage::Halt(None),
            ControlMessage::Info("hi"),
            ControlMessage::InfoPre("WEB_AUTH::x"),
            ControlMessage::AuthPending(Some("timeout 60")),
            ControlMessage::Other("CR_RESPONSE,abc"),
            ControlMessage::PushReply(""),
            ControlMessage::Other(""),
        ];
        let mut rest: &[u8] = stream;
        for want in expected {
            let (message, used) = parse_control_message(rest).unwrap();
            assert_eq!(message, want);
            rest = &rest[used..];
        }
        assert_eq!(rest, b"PUSH_RE");
        assert_eq!(
            parse_control_message(rest),
            Err(ControlMessageError::Incomplete)
        );
        assert_eq!(
            parse_control_message(b"PUSH\x01\0EXIT\0"),
            Err(ControlMessageError::NotPrintable { skip: 6 })
        );
        let mut out = Vec::new();
        encode_control_message("PUSH_REQUEST", &mut out).unwrap();
        encode_control_message("EXIT", &mut out).unwrap();
        assert_eq!(out, b"PUSH_REQUEST\0EXIT\0");
        assert_eq!(
            encode_control_message("a\0b", &mut out),
            Err(ControlMessageError::ContainsNul)
        );
    }

    #[test]
    fn control_message_byte_by_byte() {
        let wire = format!("{PUSH_REPLY_SUBNET}\0");
        for end in 0..wire.len() {
            assert_eq!(
                parse_control_message(&wire.as_bytes()[..end]),
                Err(ControlMessageError::Incomplete)
            );
        }
        let (message, used) = parse_control_message(wire.as_bytes()).unwrap();
        assert_eq!(used, wire.len());
        assert_eq!(
            message,
            ControlMessage::PushReply(&PUSH_REPLY_SUBNET["PUSH_REPLY,".len()..])
        );
    }

    #[test]
    fn push_reply_subnet_fixture() {
        let options = PushOptions::parse(PUSH_REPLY_SUBNET).unwrap();
        assert_eq!(options.routes, [("10.1.0.0/16".parse().unwrap(), None)]);
        assert_eq!(options.route_gateway, Some(address("10.8.0.1")));
        assert_eq!(options.topology, Some(Topology::Subnet));
        assert_eq!(options.ping, Some(10));
        assert_eq!(options.ping_restart, Some(60));
        assert_eq!(
            options.ifconfig,
            Some((address("10.8.0.2"), address("255.255.255.0")))
        );
        assert_eq!(options.peer_id, Some(0));
        assert_eq!(options.cipher, Some(Cipher::Aes256Gcm));
        assert!(options.key_derivation_tls_ekm, "tls-ekm in protocol-flags");
        assert_eq!(
            options.protocol_flags,
            ["cc-exit", "tls-ekm", "dyn-tls-crypt"]
        );
        assert_eq!(options.tun_mtu, Some(1500));
        assert!(options.ignored.is_empty());
        assert!(options.is_final());
        assert_eq!(options.to_reply(), PUSH_REPLY_SUBNET);
        // The same without the prefix.
        assert_eq!(
            PushOptions::parse(&PUSH_REPLY_SUBNET["PUSH_REPLY,".len()..]).unwrap(),
            options
        );
    }

    #[test]
    fn push_reply_net30_fixture() {
        let options = PushOptions::parse(PUSH_REPLY_NET30).unwrap();
        assert_eq!(
            options.routes,
            [
                ("10.1.0.0/16".parse().unwrap(), None),
                ("10.8.0.1/32".parse().unwrap(), None)
            ]
        );
        assert_eq!(
            options.ignored,
            ["redirect-gateway def1", "dhcp-option DNS 10.8.0.1"]
        );
        assert_eq!(options.topology, Some(Topology::Net30));
        assert_eq!(
            options.ifconfig,
            Some((address("10.8.0.6"), address("10.8.0.5")))
        );
        assert_eq!(options.cipher, Some(Cipher::Aes128Gcm));
        assert_eq!(options.tun_mtu, Some(1400));
        assert_eq!(PushOptions::parse(&options.to_reply()).unwrap(), options);
    }

    #[test]
    fn server_side_reply_like_openvpn() {
        // What our server builds for a 2.6 client must equal what 2.6 built, minus
        // dyn-tls-crypt which we do not offer.
        let client = PeerInfo::parse(PEER_INFO_CLIENT);
        let cipher = negotiate_server_cipher(&Cipher::ALL, &client, OCC_CLIENT_MODE).unwrap();
        let mut reply = PushOptions {
            routes: vec![("10.1.0.0/16".parse().unwrap(), None)],
            route_gateway: Some(address("10.8.0.1")),
            topology: Some(Topology::Subnet),
            ping: Some(10),
            ping_restart: Some(60),
            ifconfig: Some((address("10.8.0.2"), address("255.255.255.0"))),
            ..PushOptions::default()
        };
        reply.add_per_client(&client, 0, cipher, 1500);
        assert_eq!(
            reply.to_reply(),
            PUSH_REPLY_SUBNET.replace(" dyn-tls-crypt", "")
        );

        // A client with TLS-EKM but without cc-exit gets `key-derivation tls-ekm` instead.
        let old = PeerInfo::parse("IV_PROTO=10\nIV_NCP=2\n");
        let mut reply = PushOptions::default();
        reply.add_per_client(&old, 7, Cipher::Aes128Gcm, 1500);
        assert_eq!(
            reply.to_reply(),
            "PUSH_REPLY,peer-id 7,cipher AES-128-GCM,key-derivation tls-ekm"
        );
    }

    #[test]
    fn push_errors_name_the_option() {
        let error = PushOptions::parse("PUSH_REPLY,ping 10,cipher BF-CBC").unwrap_err();
        assert_eq!(
            error,
            PushError::UnsupportedCipher {
                option: "cipher BF-CBC".into()
            }
        );
        assert!(error.to_string().contains("`cipher BF-CBC`"));
        for (reply, bad) in [
            ("compress lz4-v2", "compress lz4-v2"),
            ("comp-lzo yes", "comp-lzo yes"),
            ("comp-lzo", "comp-lzo"),
        ] {
            assert_eq!(
                PushOptions::parse(reply),
                Err(PushError::UnsupportedCompression { option: bad.into() })
            );
        }
        assert!(matches!(
            PushOptions::parse("topology p2p"),
            Err(PushError::UnsupportedTopology { .. })
        ));
        for bad in [
            "peer-id 16777216",
            "peer-id x",
            "ifconfig 10.0.0.1",
            "route 10.0.0.0 255.0.255.0",
            "route x",
            "key-derivation foo",
            "push-continuation 3",
            "tun-mtu 70000",
            "ping",
        ] {
            assert!(
                matches!(PushOptions::parse(bad), Err(PushError::Malformed { ref option, .. }) if option == bad),
                "{bad}"
            );
        }
        let stub = PushOptions::parse("compress stub-v2,route 10.2.0.0 255.255.0.0 net_gateway,route 10.3.0.0 255.255.0.0 10.8.0.9 5").unwrap();
        assert_eq!(stub.compression.as_deref(), Some("compress stub-v2"));
        assert_eq!(stub.ignored, ["route 10.2.0.0 255.255.0.0 net_gateway"]);
        assert_eq!(
            stub.routes,
            [("10.3.0.0/16".parse().unwrap(), Some(address("10.8.0.9")))]
        );
    }

    #[test]
    fn push_continuation_merges() {
        let mut first =
            PushOptions::parse("PUSH_REPLY,route 10.1.0.0 255.255.0.0,ping 10,push-continuation 2")
                .unwrap();
        assert!(!first.is_final());
        let second = PushOptions::parse("PUSH_REPLY,route 10.2.0.0 255.255.0.0,ifconfig 10.8.0.2 255.255.255.0,ping 20,push-continuation 1").unwrap();
        first.merge(second);
        assert!(first.is_final());
        assert_eq!(first.routes.len(), 2);
        assert_eq!(first.ping, Some(20));
        assert_eq!(
            first.ifconfig,
            Some((address("10.8.0.2"), address("255.255.255.0")))
        );
        assert_eq!(first.continuation, Some(1));
    }

    #[test]
    fn server_cipher_table() {
        use Cipher::*;
        let all = Cipher::ALL;
        let info = PeerInfo::parse;
        // (ours, peer info, peer options, expected)
        let cases: [(&[Cipher], &str, &str, Option<Cipher>); 9] = [
            (&all, PEER_INFO_CLIENT, OCC_CLIENT_MODE, Some(Aes256Gcm)),
            (
                &[Chacha20Poly1305, Aes256Gcm],
                PEER_INFO_CLIENT,
                "",
                Some(Chacha20Poly1305),
            ),
            // Our order wins over the client's.
            (
                &[Aes128Gcm, Aes256Gcm],
                "IV_CIPHERS=AES-256-GCM:AES-128-GCM\n",
                "",
                Some(Aes128Gcm),
            ),
            // IV_NCP=2 alone implies the two AES-GCM ciphers.
            (
                &[Chacha20Poly1305, Aes128Gcm],
                "IV_NCP=2\n",
                "",
                Some(Aes128Gcm),
            ),
            (&[Chacha20Poly1305], "IV_NCP=2\n", "", None),
            // No NCP: the legacy OCC cipher.
            (
                &all,
                "",
                "V4,cipher CHACHA20-POLY1305,auth [null-digest]",
                Some(Chacha20Poly1305),
            ),
            (&all, "", "V4,cipher BF-CBC,auth SHA1", None),
            // With IV_CIPHERS the OCC cipher is not trusted (ssl_ncp.c).
            (
                &all,
                "IV_CIPHERS=AES-192-GCM\n",
                "V4,cipher AES-256-GCM",
                None,
            ),
            (&all, "", "", None),
        ];
        for (ours, peer, options, expected) in cases {
            let result = negotiate_server_cipher(ours, &info(peer), options);
            assert_eq!(
                result.as_ref().ok().copied(),
                expected,
                "{peer:?} {options:?}: {result:?}"
            );
        }
        assert_eq!(
            negotiate_server_cipher(&[Chacha20Poly1305], &info("IV_NCP=2\n"), "").unwrap_err().to_string(),
            "no common data cipher: ours are CHACHA20-POLY1305, the peer supports AES-256-GCM:AES-128-GCM"
        );
        assert!(matches!(
            negotiate_server_cipher(&all, &info(""), "V4,cipher BF-CBC"),
            Err(NcpError::NoPeerCiphers { ref occ_cipher, .. }) if occ_cipher == "BF-CBC"
        ));
    }

    #[test]
    fn p2p_table() {
        use Cipher::*;
        let p2p_peer =
            |ciphers: &str| PeerInfo::parse(&format!("IV_CIPHERS={ciphers}\nIV_PROTO=746\n"));
        let ours = [Chacha20Poly1305, Aes128Gcm, Aes256Gcm];
        // The TLS server's order decides, whichever side we are.
        assert_eq!(
            negotiate_p2p(
                &ours,
                TlsRole::Server,
                &p2p_peer("AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305"),
                ""
            ),
            Ok((Chacha20Poly1305, true))
        );
        assert_eq!(
            negotiate_p2p(
                &ours,
                TlsRole::Client,
                &p2p_peer("AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305"),
                ""
            ),
            Ok((Aes256Gcm, true))
        );
        assert_eq!(
            negotiate_p2p(
                &ours,
                TlsRole::Client,
                &p2p_peer("AES-192-GCM:AES-128-GCM"),
                ""
            ),
            Ok((Aes128Gcm, true))
        );
        assert!(matches!(
            negotiate_p2p(
                &[Chacha20Poly1305],
                TlsRole::Server,
                &p2p_peer("AES-256-GCM"),
                ""
            ),
            Err(NcpError::NoCommonCipher { .. })
        ));
        // Both ends agree: the peer (a 2.6 with our list) computes the same from ours.
        let our_info = PeerInfo::ours(&ours, true, 1500);
        let peer_list = [Aes256Gcm, Chacha20Poly1305];
        let peer_view = negotiate_p2p(&peer_list, TlsRole::Client, &our_info, "").unwrap();
        let our_view = negotiate_p2p(
            &ours,
            TlsRole::Server,
            &PeerInfo::ours(&peer_list, true, 1500),
            "",
        )
        .unwrap();
        assert_eq!(peer_view, our_view);
        // NCP_P2P without TLS-EKM: negotiated cipher, legacy PRF.
        let no_ekm = PeerInfo::parse("IV_CIPHERS=AES-128-GCM\nIV_PROTO=34\n");
        assert_eq!(
            negotiate_p2p(&ours, TlsRole::Server, &no_ekm, ""),
            Ok((Aes128Gcm, false))
        );
        // A peer without P2P NCP (2.5, or no peer info): its OCC cipher, no EKM.
        let old = PeerInfo::parse("IV_PROTO=2\n");
        assert_eq!(
            negotiate_p2p(&ours, TlsRole::Server, &old, OCC_P2P_AES256_SERVER),
            Ok((Aes256Gcm, false))
        );
        assert!(
            matches!(negotiate_p2p(&ours, TlsRole::Server, &old, OCC_P2P_DEFAULT_SERVER), Err(NcpError::NoPeerCiphers { ref occ_cipher, .. }) if occ_cipher == "BF-CBC")
        );
        assert!(negotiate_p2p(
            &[Aes128Gcm],
            TlsRole::Client,
            &PeerInfo::default(),
            OCC_P2P_AES256_SERVER
        )
        .is_err());
    }

    #[test]
    fn p2p_peer_ids() {
        let p2p = PeerInfo::parse(PEER_INFO_P2P);
        // Captured: 2.6.14 logged "peer-id 2512741" and sent 0x48 0x26 0x57 0x65 (DATA_V2).
        assert_eq!(p2p_peer_id(&p2p, true, [0x26, 0x57, 0x65]), Some(2512741));
        assert_eq!(p2p_peer_id(&p2p, false, [1, 2, 3]), Some(0x76706e));
        assert_eq!(
            p2p_peer_id(&PeerInfo::parse("IV_PROTO=32\n"), true, [1, 2, 3]),
            None
        );
        assert_eq!(
            p2p_peer_id(&PeerInfo::parse(PEER_INFO_CLIENT), true, [1, 2, 3]),
            None
        );
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = PeerInfo::parse(&text);
            let _ = PushOptions::parse(&text);
            let _ = occ_option(&text, "cipher");
            let mut rest: &[u8] = &bytes;
            while let Ok((_, used)) | Err(ControlMessageError::NotPrintable { skip: used }) =
                parse_control_message(rest)
            {
                prop_assert!(used >= 1 && used <= rest.len());
                rest = &rest[used..];
            }
        }

        #[test]
        fn push_options_round_trip(
            routes in proptest::collection::vec((any::<u32>(), 0u8..=32), 0..4),
            ping in proptest::option::of(1u32..1000),
            peer_id in proptest::option::of(0u32..(1 << 24)),
            mtu in proptest::option::of(576u16..9001),
        ) {
            let options = PushOptions {
                routes: routes.into_iter().map(|(address, length)| {
                    (Ipv4Net::new(Ipv4Addr::from(address), length).unwrap().trunc(), None)
                }).collect(),
                ping,
                peer_id,
                tun_mtu: mtu,
                cipher: Some(Cipher::Chacha20Poly1305),
                key_derivation_tls_ekm: true,
                ..PushOptions::default()
            };
            prop_assert_eq!(PushOptions::parse(&options.to_reply()).unwrap(), options);
        }

        #[test]
        fn peer_info_round_trip(flags in any::<u32>(), mtu in proptest::option::of(any::<u16>()), p2p: bool) {
            let mut info = PeerInfo::ours(&Cipher::ALL, p2p, 1500);
            info.proto_flags = flags;
            info.mtu = mtu;
            prop_assert_eq!(PeerInfo::parse(&info.to_wire()), info);
        }
    }
}
