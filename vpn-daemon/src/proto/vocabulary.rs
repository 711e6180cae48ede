//! The option values the protocol acts on, named after the OpenVPN options that set them:
//! `cipher`, `tls-server`/`tls-client`, `proto`, `topology`, `key-direction`, `auth`,
//! `keepalive`, `remote-cert-tls` and `ifconfig-pool`.
//!
//! They live here, under the protocol, so that `proto/` needs nothing from `config/`; the config
//! file and the importer deserialise and render them (hence the serde derives and OpenVPN
//! spellings).
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A data-channel cipher, named as OpenVPN names it. Only AEAD ciphers: no CBC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Cipher {
    /// `AES-256-GCM`
    #[serde(rename = "AES-256-GCM")]
    Aes256Gcm,
    /// `AES-128-GCM`
    #[serde(rename = "AES-128-GCM")]
    Aes128Gcm,
    /// `CHACHA20-POLY1305`
    #[serde(rename = "CHACHA20-POLY1305")]
    Chacha20Poly1305,
}

impl Cipher {
    /// Every supported cipher, in the default order of preference.
    pub const ALL: [Cipher; 3] = [
        Cipher::Aes256Gcm,
        Cipher::Aes128Gcm,
        Cipher::Chacha20Poly1305,
    ];

    /// The OpenVPN name, e.g. `AES-256-GCM`.
    pub fn openvpn_name(self) -> &'static str {
        match self {
            Cipher::Aes256Gcm => "AES-256-GCM",
            Cipher::Aes128Gcm => "AES-128-GCM",
            Cipher::Chacha20Poly1305 => "CHACHA20-POLY1305",
        }
    }
}

impl fmt::Display for Cipher {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.openvpn_name())
    }
}

/// A cipher name that is not one of [`Cipher::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown cipher `{0}`; supported: AES-256-GCM, AES-128-GCM, CHACHA20-POLY1305 (CBC ciphers are not supported)")]
pub struct UnknownCipher(pub String);

impl FromStr for Cipher {
    type Err = UnknownCipher;

    /// Case-insensitive, as in OpenVPN (`aes-256-gcm` works too).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Cipher::ALL
            .into_iter()
            .find(|cipher| cipher.openvpn_name().eq_ignore_ascii_case(name))
            .ok_or_else(|| UnknownCipher(name.to_owned()))
    }
}

/// Which end of the control channel runs the TLS server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsRole {
    /// OpenVPN `tls-server`.
    Server,
    /// OpenVPN `tls-client`.
    Client,
}

/// Outer transport of a tunnel (OpenVPN `proto`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// UDP (the default, and what the XDP fast path handles best).
    #[default]
    Udp,
    /// TCP, for networks that block UDP.
    Tcp,
}

impl fmt::Display for Transport {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        })
    }
}

/// OpenVPN `topology` for a server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    /// One address per client in a shared subnet (the default).
    #[default]
    Subnet,
    /// A /30 per client (legacy clients).
    Net30,
}

/// OpenVPN `key-direction`: which halves of a static key each side uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyDirection {
    /// `0`, conventionally the server.
    Normal,
    /// `1`, conventionally the client.
    Inverse,
}

/// HMAC digest for tls-auth (OpenVPN `auth`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TlsAuthDigest {
    /// `SHA1`, OpenVPN's default.
    #[default]
    #[serde(rename = "SHA1")]
    Sha1,
    /// `SHA256`.
    #[serde(rename = "SHA256")]
    Sha256,
}

/// Liveness checking (OpenVPN `keepalive interval timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Keepalive {
    /// Send a ping after this long without sending anything.
    pub interval: Duration,
    /// Declare the peer dead after this long without hearing from it.
    pub timeout: Duration,
}

/// Extended key usage the peer's certificate must carry (OpenVPN `remote-cert-tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertUsage {
    /// TLS Web Server Authentication.
    Server,
    /// TLS Web Client Authentication.
    Client,
}

/// An inclusive range of IPv4 addresses handed out to clients (OpenVPN `ifconfig-pool`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct IfconfigPool {
    /// First address of the pool.
    pub start: Ipv4Addr,
    /// Last address of the pool (inclusive).
    pub end: Ipv4Addr,
}
