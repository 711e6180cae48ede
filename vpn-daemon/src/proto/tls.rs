//! rustls configurations for the control channel, with OpenVPN 2.6's certificate checks.
//!
//! The session drives a `rustls::ClientConnection` / `ServerConnection` itself (sans-IO:
//! `read_tls`, `process_new_packets`, `write_tls`); this module only builds the configurations,
//! the verifiers behind them and a few helpers around a finished handshake.
//!
//! What the verifiers accept, following OpenVPN (ssl_verify.c `verify_cert` /
//! `verify_peer_cert`, ssl_verify_openssl.c, ssl_openssl.c `tls_ctx_set_options` and
//! `backend_tls_ctx_reload_crl`):
//! * Both ends always present a certificate and it must chain to `pki.ca`
//!   (`SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT`).
//! * No host name check: OpenVPN never compares the server name. The client verifier runs the
//!   full rustls chain and CRL check and then ignores only the name mismatch, which rustls
//!   reports last (`WebPkiServerVerifier::verify_server_cert`, rustls 0.23.46).
//! * If the peer certificate has an extended key usage extension it must allow the TLS role
//!   the peer plays (webpki's `KeyUsage::server_auth`/`client_auth`, as OpenSSL's default
//!   `ssl_server`/`ssl_client` purpose check).
//! * The CRLs are consulted for every certificate in the chain (OpenVPN sets
//!   `X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL`); a certificate whose issuer has no
//!   CRL in the file passes (OpenVPN ignores `X509_V_ERR_UNABLE_TO_GET_CRL`); an expired CRL
//!   refuses everyone (OpenSSL's `X509_V_ERR_CRL_HAS_EXPIRED` is not ignored).
//! * The end-entity certificate must have a common name of at most 64 bytes (OpenVPN
//!   `backend_x509_get_username` with `TLS_USERNAME_LEN`), then `remote-cert-tls` and
//!   `verify-x509-name` apply to it; see [`PeerChecks`].
//!
//! Deliberate exceptions to the sans-IO rules, both inside rustls: the verifiers take the time
//! from the configuration's time provider (the system clock in [`client_config`] and
//! [`server_config`]; tests pass a fixed clock to [`client_config_with_time`] and
//! [`server_config_with_time`]), and handshakes draw randomness from ring's system RNG.
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::time_provider::{DefaultTimeProvider, TimeProvider};
use rustls::{
    CertificateError, CommonState, ConnectionCommon, DigitallySignedStruct, DistinguishedName,
    Error, ExtendedKeyPurpose, OtherError, RootCertStore, SignatureScheme,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::prf::{key_block_from_ekm, KeyBlock, EKM_LABEL, KEY_BLOCK_BYTES};
use super::vocabulary::CertUsage;

/// OpenVPN's longest accepted common name (ssl_verify.c `TLS_USERNAME_LEN`).
pub const MAX_COMMON_NAME_BYTES: usize = 64;

/// The name the TLS client asks for. OpenVPN checks no server name, our verifier ignores it,
/// and with SNI disabled it never goes on the wire.
const DUMMY_SERVER_NAME: &str = "openvpn-server.invalid";

/// Why loading the PKI or building a TLS configuration failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A PEM file could not be read.
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        /// Which file: "CA", "certificate", "private key", "CRL".
        what: &'static str,
        /// The path as configured.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM file is malformed or holds no block of the expected kind.
    #[error("{what}: {detail}")]
    Pem {
        /// Which file.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// rustls refused the CA certificates, the CRLs, our certificate or our key.
    #[error("{what}: {source}")]
    Rustls {
        /// What was being set up.
        what: &'static str,
        /// The rustls error.
        source: Error,
    },
    /// rustls could not build a certificate verifier (no usable CA, unparsable CRL).
    #[error("cannot build the certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The data-channel keys could not be exported (handshake not complete).
    #[error("cannot export the data-channel keys: {0}")]
    Export(Error),
}

/// Where the PEM files are (the config file's `[pki]`, paths resolved and checked to hold the
/// right kind of PEM block).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PkiFiles {
    /// CA certificate(s) that peer certificates must chain to.
    pub ca: PathBuf,
    /// This node's certificate.
    pub cert: PathBuf,
    /// This node's private key (unencrypted PEM).
    pub key: PathBuf,
    /// Optional certificate revocation list.
    pub crl: Option<PathBuf>,
}

/// The CA roots, our certificate chain and key, and the CRLs, parsed and checked.
pub struct PkiMaterial {
    roots: Arc<RootCertStore>,
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    crls: Vec<CertificateRevocationListDer<'static>>,
}

impl fmt::Debug for PkiMaterial {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("PkiMaterial")
            .field("roots", &self.roots.len())
            .field("cert_chain", &self.cert_chain.len())
            .field("crls", &self.crls.len())
            .finish_non_exhaustive()
    }
}

impl Clone for PkiMaterial {
    fn clone(&self) -> Self {
        Self {
            roots: Arc::clone(&self.roots),
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            crls: self.crls.clone(),
        }
    }
}

impl PkiMaterial {
    /// Reads the files named by `[pki]`.
    pub fn load(pki: &PkiFiles) -> Result<Self, TlsSetupError> {
        let read = |what: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| TlsSetupError::Read {
                what,
                path: path.to_owned(),
                source,
            })
        };
        let ca = read("CA", &pki.ca)?;
        let cert = read("certificate", &pki.cert)?;
        let key = read("private key", &pki.key)?;
        let crl = pki
            .crl
            .as_deref()
            .map(|path| read("CRL", path))
            .transpose()?;
        Self::from_pem(&ca, &cert, &key, crl.as_deref())
    }

    /// Parses PEM text: `ca` one or more CA certificates, `cert` our certificate optionally
    /// followed by intermediates (as OpenVPN's `--cert`), `key` an unencrypted PKCS#8, SEC1
    /// or PKCS#1 key, `crl` one or more CRLs.
    pub fn from_pem(
        ca: &[u8],
        cert: &[u8],
        key: &[u8],
        crl: Option<&[u8]>,
    ) -> Result<Self, TlsSetupError> {
        let ca_certs = pem_certificates("CA", ca)?;
        let mut roots = RootCertStore::empty();
        for ca_cert in ca_certs {
            roots.add(ca_cert).map_err(|source| TlsSetupError::Rustls {
                what: "CA certificate",
                source,
            })?;
        }
        let cert_chain = pem_certificates("certificate", cert)?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|error| TlsSetupError::Pem {
            what: "private key",
            detail: format!("no usable unencrypted private key ({error})"),
        })?;
        let crls = match crl {
            None => Vec::new(),
            Some(text) => {
                let crls = CertificateRevocationListDer::pem_slice_iter(text)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|error| TlsSetupError::Pem {
                        what: "CRL",
                        detail: error.to_string(),
                    })?;
                if crls.is_empty() {
                    return Err(TlsSetupError::Pem {
                        what: "CRL",
                        detail: "no X509 CRL block".to_owned(),
                    });
                }
                crls
            }
        };
        let material = Self {
            roots: Arc::new(roots),
            cert_chain,
            key,
            crls,
        };
        // Parse the CRLs and check key against certificate now, so that a bad file stops
        // start-up rather than the first handshake.
        material.server_cert_verifier(&provider())?;
        rustls::sign::CertifiedKey::from_der(
            material.cert_chain.clone(),
            material.key.clone_key(),
            &provider(),
        )
        .map_err(|source| TlsSetupError::Rustls {
            what: "certificate and private key",
            source,
        })?;
        Ok(material)
    }

    fn server_cert_verifier(
        &self,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Arc<WebPkiServerVerifier>, TlsSetupError> {
        Ok(WebPkiServerVerifier::builder_with_provider(
            Arc::clone(&self.roots),
            Arc::clone(provider),
        )
        .with_crls(self.crls.iter().cloned())
        .allow_unknown_revocation_status()
        .enforce_revocation_expiration()
        .build()?)
    }

    fn client_cert_verifier(
        &self,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Arc<dyn ClientCertVerifier>, TlsSetupError> {
        Ok(WebPkiClientVerifier::builder_with_provider(
            Arc::clone(&self.roots),
            Arc::clone(provider),
        )
        .with_crls(self.crls.iter().cloned())
        .allow_unknown_revocation_status()
        .enforce_revocation_expiration()
        .build()?)
    }
}

fn pem_certificates(
    what: &'static str,
    text: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs = CertificateDer::pem_slice_iter(text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsSetupError::Pem {
            what,
            detail: error.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Pem {
            what,
            detail: "no CERTIFICATE block".to_owned(),
        });
    }
    Ok(certs)
}

/// The checks OpenVPN applies to the peer's own (end-entity) certificate on top of the chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerChecks {
    /// `remote-cert-tls server|client`: the certificate must carry the key usage extension
    /// and an extended key usage with TLS Web Server (or Client) Authentication.
    pub remote_cert_tls: Option<CertUsage>,
    /// `verify-x509-name NAME name`: the common name must equal this exactly. (OpenVPN's
    /// default type, `subject`, compares the whole subject DN; we only offer `name`.)
    pub verify_x509_name: Option<String>,
}

/// Why our checks refused a peer certificate whose chain verified. Carried inside
/// `rustls::Error::InvalidCertificate(CertificateError::Other(..))`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerCertRefusal {
    /// The certificate did not parse.
    #[error("peer certificate cannot be parsed: {0}")]
    Unparsable(String),
    /// No common name; OpenVPN refuses such peers whatever the options.
    #[error("peer certificate has no common name (OpenVPN requires one)")]
    NoCommonName,
    /// The common name is not a string we can read.
    #[error("peer certificate common name is not a readable string")]
    UnreadableCommonName,
    /// The common name is longer than OpenVPN accepts.
    #[error("peer certificate common name is {0} bytes long; OpenVPN accepts at most 64")]
    CommonNameTooLong(usize),
    /// `remote-cert-tls`: no key usage extension.
    #[error("remote-cert-tls {}: peer certificate lacks the key usage extension", usage_word(*.0))]
    MissingKeyUsage(CertUsage),
    /// `remote-cert-tls`: no extended key usage with the required purpose.
    #[error(
        "remote-cert-tls {}: peer certificate lacks the {} extended key usage",
        usage_word(*.0),
        usage_purpose(*.0)
    )]
    MissingExtendedKeyUsage(CertUsage),
    /// `verify-x509-name`: the common name differs.
    #[error("verify-x509-name: peer common name `{presented}` is not `{expected}`")]
    NameMismatch {
        /// The peer's common name (control characters replaced by `_`).
        presented: String,
        /// The configured name.
        expected: String,
    },
}

fn usage_word(usage: CertUsage) -> &'static str {
    match usage {
        CertUsage::Server => "server",
        CertUsage::Client => "client",
    }
}

fn usage_purpose(usage: CertUsage) -> &'static str {
    match usage {
        CertUsage::Server => "TLS Web Server Authentication",
        CertUsage::Client => "TLS Web Client Authentication",
    }
}

impl From<PeerCertRefusal> for Error {
    fn from(refusal: PeerCertRefusal) -> Self {
        Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(refusal))))
    }
}

/// OpenVPN's `verify_peer_cert` on the end-entity certificate, after the chain verified.
fn check_peer_certificate(
    end_entity: &CertificateDer<'_>,
    checks: &PeerChecks,
) -> Result<(), PeerCertRefusal> {
    let (_, cert) = X509Certificate::from_der(end_entity.as_ref())
        .map_err(|error| PeerCertRefusal::Unparsable(error.to_string()))?;
    let common_name = common_name(&cert)?;

    if let Some(usage) = checks.remote_cert_tls {
        // OpenVPN's `remote-cert-ku` without values only wants the extension present: the TLS
        // library checks its bits.
        let key_usage = cert
            .key_usage()
            .map_err(|error| PeerCertRefusal::Unparsable(error.to_string()))?;
        if key_usage.is_none() {
            return Err(PeerCertRefusal::MissingKeyUsage(usage));
        }
        let extended = cert
            .extended_key_usage()
            .map_err(|error| PeerCertRefusal::Unparsable(error.to_string()))?;
        let allowed = extended.is_some_and(|extension| match usage {
            CertUsage::Server => extension.value.server_auth,
            CertUsage::Client => extension.value.client_auth,
        });
        if !allowed {
            return Err(PeerCertRefusal::MissingExtendedKeyUsage(usage));
        }
    }

    if let Some(expected) = &checks.verify_x509_name {
        if common_name != *expected {
            return Err(PeerCertRefusal::NameMismatch {
                presented: common_name,
                expected: expected.clone(),
            });
        }
    }
    Ok(())
}

/// The last CN of the subject (OpenSSL's `extract_x509_field_ssl` takes the last), with
/// control characters replaced by `_` (ssl_verify.c `string_mod_remap_name`: `CC_PRINT`
/// keeps every byte >= 32 except 127).
fn common_name(cert: &X509Certificate<'_>) -> Result<String, PeerCertRefusal> {
    let attribute = cert
        .subject()
        .iter_common_name()
        .last()
        .ok_or(PeerCertRefusal::NoCommonName)?;
    let raw = attribute
        .as_str()
        .map_err(|_| PeerCertRefusal::UnreadableCommonName)?;
    if raw.len() > MAX_COMMON_NAME_BYTES {
        return Err(PeerCertRefusal::CommonNameTooLong(raw.len()));
    }
    Ok(raw
        .chars()
        .map(|c| if c < ' ' || c == '\u{7f}' { '_' } else { c })
        .collect())
}

/// The TLS client's verifier: webpki chain and CRL checks, no name check, OpenVPN's checks.
#[derive(Debug)]
struct OpenVpnServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    checks: PeerChecks,
}

impl ServerCertVerifier for OpenVpnServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            // rustls checks the name only after the chain, validity, purpose and CRLs all
            // passed, so a name error means everything OpenVPN cares about verified.
            Ok(_)
            | Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(error) => return Err(error),
        }
        check_peer_certificate(end_entity, &self.checks)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The TLS server's verifier: a client certificate is mandatory, then OpenVPN's checks.
#[derive(Debug)]
struct OpenVpnClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    checks: PeerChecks,
}

impl ClientCertVerifier for OpenVpnClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_peer_certificate(end_entity, &self.checks)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// ring with rustls's default suites (TLS 1.3 AES-GCM/ChaCha20, TLS 1.2 ECDHE-ECDSA/RSA
/// AES-GCM/ChaCha20) and groups (X25519, P-256, P-384).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS client configuration (OpenVPN `tls-client`), checking time with the system clock.
pub fn client_config(
    pki: &PkiMaterial,
    checks: &PeerChecks,
) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    client_config_with_time(pki, checks, Arc::new(DefaultTimeProvider))
}

/// [`client_config`] with the clock the verifiers use for validity and CRL dates.
pub fn client_config_with_time(
    pki: &PkiMaterial,
    checks: &PeerChecks,
    time: Arc<dyn TimeProvider>,
) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    client_config_for_versions(pki, checks, time, rustls::DEFAULT_VERSIONS)
}

fn client_config_for_versions(
    pki: &PkiMaterial,
    checks: &PeerChecks,
    time: Arc<dyn TimeProvider>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let provider = provider();
    let verifier = Arc::new(OpenVpnServerVerifier {
        inner: pki.server_cert_verifier(&provider)?,
        checks: checks.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_details(provider, time)
        .with_protocol_versions(versions)
        .map_err(|source| TlsSetupError::Rustls {
            what: "TLS versions",
            source,
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(pki.cert_chain.clone(), pki.key.clone_key())
        .map_err(|source| TlsSetupError::Rustls {
            what: "certificate and private key",
            source,
        })?;
    // OpenSSL's client sends no SNI unless asked; OpenVPN never asks.
    config.enable_sni = false;
    // OpenVPN turns session caching and tickets off: every handshake verifies the peer.
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// The TLS server configuration (OpenVPN `tls-server`), checking time with the system clock.
pub fn server_config(
    pki: &PkiMaterial,
    checks: &PeerChecks,
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    server_config_with_time(pki, checks, Arc::new(DefaultTimeProvider))
}

/// [`server_config`] with the clock the verifiers use for validity and CRL dates.
pub fn server_config_with_time(
    pki: &PkiMaterial,
    checks: &PeerChecks,
    time: Arc<dyn TimeProvider>,
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    server_config_for_versions(pki, checks, time, rustls::DEFAULT_VERSIONS)
}

fn server_config_for_versions(
    pki: &PkiMaterial,
    checks: &PeerChecks,
    time: Arc<dyn TimeProvider>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let provider = provider();
    let verifier = Arc::new(OpenVpnClientVerifier {
        inner: pki.client_cert_verifier(&provider)?,
        checks: checks.clone(),
    });
    let mut config = rustls::ServerConfig::builder_with_details(provider, time)
        .with_protocol_versions(versions)
        .map_err(|source| TlsSetupError::Rustls {
            what: "TLS versions",
            source,
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(pki.cert_chain.clone(), pki.key.clone_key())
        .map_err(|source| TlsSetupError::Rustls {
            what: "certificate and private key",
            source,
        })?;
    // No resumption (OpenVPN: SSL_OP_NO_TICKET, SSL_SESS_CACHE_OFF).
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The server name the TLS client passes to `ClientConnection::new`. Never checked, never sent.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(DUMMY_SERVER_NAME).expect("the dummy server name is a valid DNS name")
}

/// The peer certificate's common name as OpenVPN logs it (last CN, control characters as
/// `_`), once the peer has presented a certificate.
pub fn peer_common_name(conn: &CommonState) -> Option<String> {
    let end_entity = conn.peer_certificates()?.first()?;
    let (_, cert) = X509Certificate::from_der(end_entity.as_ref()).ok()?;
    common_name(&cert).ok()
}

/// The TLS-EKM data-channel key block: 256 bytes exported with [`EKM_LABEL`] and no context
/// (OpenVPN `key-derivation tls-ekm`). Works on a `ClientConnection` or `ServerConnection`
/// once the handshake is complete.
pub fn export_data_keys<Data>(conn: &ConnectionCommon<Data>) -> Result<KeyBlock, TlsSetupError> {
    let exported = conn
        .export_keying_material([0u8; KEY_BLOCK_BYTES], EKM_LABEL.as_bytes(), None)
        .map_err(TlsSetupError::Export)?;
    Ok(key_block_from_ekm(exported))
}

/// A one-line reason for a TLS failure, for `peer certificate refused: <reason>` and similar
/// logs. Covers our own refusals ([`PeerCertRefusal`]) and rustls's certificate errors.
pub fn describe_tls_error(error: &Error) -> String {
    match error {
        Error::InvalidCertificate(certificate) => describe_certificate_error(certificate),
        Error::NoCertificatesPresented => "peer presented no certificate".to_owned(),
        Error::AlertReceived(alert) => {
            format!("peer aborted the handshake with TLS alert {alert:?}")
        }
        Error::PeerIncompatible(why) => format!("peer's TLS parameters are incompatible: {why:?}"),
        Error::PeerMisbehaved(why) => format!("peer violated the TLS protocol: {why:?}"),
        Error::InvalidCertRevocationList(why) => format!("CRL unusable: {why:?}"),
        other => other.to_string(),
    }
}

fn describe_certificate_error(error: &CertificateError) -> String {
    let chain =
        |why: &str| format!("certificate chain does not verify to the configured CA ({why})");
    match error {
        CertificateError::UnknownIssuer => chain("UnknownIssuer"),
        CertificateError::BadSignature => chain("BadSignature"),
        CertificateError::Expired => "certificate expired".to_owned(),
        CertificateError::ExpiredContext { time, not_after } => format!(
            "certificate expired (valid until {}, now {})",
            utc(not_after),
            utc(time)
        ),
        CertificateError::NotValidYet => "certificate not yet valid".to_owned(),
        CertificateError::NotValidYetContext { time, not_before } => format!(
            "certificate not yet valid (valid from {}, now {})",
            utc(not_before),
            utc(time)
        ),
        CertificateError::Revoked => "certificate revoked by CRL".to_owned(),
        CertificateError::UnknownRevocationStatus => {
            "certificate revocation status unknown".to_owned()
        }
        CertificateError::ExpiredRevocationList => {
            "the CRL has expired; renew it (every peer is refused until then)".to_owned()
        }
        CertificateError::ExpiredRevocationListContext { next_update, .. } => format!(
            "the CRL expired at {}; renew it (every peer is refused until then)",
            utc(next_update)
        ),
        CertificateError::InvalidPurpose => {
            "certificate extended key usage does not allow this TLS role".to_owned()
        }
        CertificateError::InvalidPurposeContext { required, .. } => format!(
            "certificate extended key usage lacks {}",
            match required {
                ExtendedKeyPurpose::ServerAuth => "TLS Web Server Authentication",
                ExtendedKeyPurpose::ClientAuth => "TLS Web Client Authentication",
                _ => "the purpose this TLS role needs",
            }
        ),
        CertificateError::BadEncoding => "certificate is malformed".to_owned(),
        CertificateError::UnhandledCriticalExtension => {
            "certificate has an unsupported critical extension".to_owned()
        }
        CertificateError::UnsupportedSignatureAlgorithmContext { .. }
        | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            chain("unsupported signature algorithm")
        }
        CertificateError::Other(OtherError(inner)) => inner.to_string(),
        other => format!("certificate refused ({other:?})"),
    }
}

fn utc(time: &UnixTime) -> String {
    i64::try_from(time.as_secs())
        .ok()
        .and_then(|secs| x509_parser::time::ASN1Time::from_timestamp(secs).ok())
        .map_or_else(
            || format!("{}s after the epoch", time.as_secs()),
            |t| t.to_string(),
        )
}

#[cfg(test)]
mod tests;
