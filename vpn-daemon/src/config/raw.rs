//! The file as serde sees it: every table refuses unknown keys, and every value that gets checked
//! after deserialisation keeps its byte span so that the check can point at it.
use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::Deserialize;
use toml::Spanned;

use super::{Compress, Role, XdpMode};
use crate::proto::vocabulary::{CertUsage, TlsAuthDigest, TlsRole, Topology, Transport};

/// First, forgiving pass: only what must be judged before the strict pass, so that a file from a
/// newer schema says "unsupported version" instead of "unknown field".
#[derive(Debug, Deserialize)]
pub(super) struct Probe {
    pub version: Option<Spanned<toml::Value>>,
    pub tunnel: Option<Spanned<toml::Value>>,
}

/// Where each key of each `[[tunnel]]` is written, for errors about a key rather than its value
/// ("`ifconfig` is only valid for role p2p"). Serde does not hand out key spans otherwise.
#[derive(Debug, Deserialize)]
pub(super) struct KeySpans {
    #[serde(default)]
    pub tunnel: Vec<BTreeMap<Spanned<String>, IgnoredAny>>,
}

/// The whole file, schema v1.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    /// Judged by [`Probe`] already; listed so that the key is known here.
    #[allow(dead_code)]
    pub version: IgnoredAny,
    pub node: RawNode,
    pub pki: RawPki,
    pub interfaces: RawInterfaces,
    #[serde(default)]
    pub tunnel: Vec<RawTunnel>,
    // eBPF fast path (issue 5)
    pub fast_path: Option<RawFastPath>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    pub name: Spanned<String>,
    pub control_socket: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPki {
    pub ca: Spanned<String>,
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    pub crl: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInterfaces {
    pub wan: Spanned<String>,
    pub lan: Option<Spanned<String>>,
    pub xdp_mode: Option<XdpMode>,
}

/// One `[[tunnel]]`. Role-specific keys are all optional here; which ones a role needs or refuses
/// is decided in `validate`, where the error can name the role.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTunnel {
    pub name: Spanned<String>,
    pub role: Spanned<Role>,
    pub transport: Option<Transport>,
    pub local: Option<Spanned<String>>,
    pub remote: Option<Spanned<Vec<Spanned<String>>>>,
    pub device: Option<Spanned<String>>,
    pub ciphers: Option<Spanned<Vec<Spanned<String>>>>,
    pub tls_auth: Option<Spanned<RawTlsAuth>>,
    pub tls_crypt: Option<Spanned<String>>,
    pub keepalive: Option<Spanned<RawKeepalive>>,
    pub reneg_sec: Option<Spanned<i64>>,
    pub mtu: Option<Spanned<i64>>,
    pub remote_cert_tls: Option<CertUsage>,
    pub verify_x509_name: Option<Spanned<String>>,
    pub compress: Option<Compress>,
    pub routes: Option<Spanned<Vec<Spanned<String>>>>,
    // client only
    pub accept_pushed_default_route: Option<Spanned<bool>>,
    // p2p only
    pub tls: Option<Spanned<TlsRole>>,
    pub ifconfig: Option<Spanned<RawIfconfig>>,
    // server only
    pub server: Option<Spanned<String>>,
    pub topology: Option<Spanned<Topology>>,
    pub push_routes: Option<Spanned<Vec<Spanned<String>>>>,
    pub server_address: Option<Spanned<String>>,
    pub ifconfig_pool: Option<Spanned<RawIfconfigPool>>,
    pub push: Option<Spanned<Vec<Spanned<String>>>>,
    pub client_to_client: Option<Spanned<bool>>,
    pub duplicate_cn: Option<Spanned<bool>>,
    pub client_config_dir: Option<Spanned<String>>,
    pub max_clients: Option<Spanned<i64>>,
    // eBPF fast path (issue 5)
    pub link_group: Option<Spanned<String>>,
    pub weight: Option<Spanned<i64>>,
    pub allowed_sources: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIfconfigPool {
    pub start: Spanned<String>,
    pub end: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTlsAuth {
    pub key: Spanned<String>,
    pub direction: Option<Spanned<i64>>,
    pub digest: Option<TlsAuthDigest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeepalive {
    pub interval: Spanned<i64>,
    pub timeout: Spanned<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIfconfig {
    pub local: Spanned<String>,
    pub remote: Spanned<String>,
}

// ---- eBPF fast path (issue 5) ----

/// `[fast_path]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFastPath {
    pub protected_prefixes: Option<Spanned<Vec<Spanned<String>>>>,
    pub handshakes_per_sec: Option<Spanned<i64>>,
    pub handshake_burst: Option<Spanned<i64>>,
    pub handshake_window_secs: Option<Spanned<i64>>,
}
