//! What the translator decided: the TOML to write (as typed values), the ignored options with
//! their reasons, the notes, and the inline blocks still to be written to files.
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net};

use super::{describe, ImportError};
use crate::config::{Compress, Role};
use crate::proto::vocabulary::{Cipher, Topology, Transport};

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
    pub(super) fn path(&self) -> &Path {
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
    pub(super) fn write_inline_files(&self) -> Result<Vec<PathBuf>, ImportError> {
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
