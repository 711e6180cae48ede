//! Sans-IO handshakes between our client and server configurations, on PKIs made with rcgen
//! and on the openssl-made example PKI.
use std::sync::Arc;

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SerialNumber,
};
use rustls::pki_types::UnixTime;
use rustls::time_provider::TimeProvider;
use rustls::{
    AlertDescription, CertificateError, ClientConnection, Connection, Error, ServerConnection,
};

use super::*;

/// 2030-01-01T00:00:00Z: inside every test certificate's validity unless a test says otherwise.
const NOW_UNIX: u64 = 1_893_456_000;

#[derive(Debug)]
struct FixedTime(u64);

impl TimeProvider for FixedTime {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            self.0,
        )))
    }
}

fn fixed_now() -> Arc<dyn TimeProvider> {
    Arc::new(FixedTime(NOW_UNIX))
}

struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2040, 1, 1);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    fn crl(&self, revoked_serials: &[u64], next_update: (i32, u8, u8)) -> String {
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2029, 1, 1),
            next_update: date_time_ymd(next_update.0, next_update.1, next_update.2),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked_serials
                .iter()
                .map(|&serial| RevokedCertParams {
                    serial_number: SerialNumber::from(serial),
                    revocation_time: date_time_ymd(2029, 6, 1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).unwrap().pem().unwrap()
    }
}

/// What goes into a leaf certificate; `Leaf::server`/`Leaf::client` are EasyRSA-like.
struct Leaf {
    common_name: Option<&'static str>,
    serial: u64,
    key_usages: Vec<KeyUsagePurpose>,
    extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
    not_after: (i32, u8, u8),
}

impl Leaf {
    fn server(common_name: &'static str) -> Self {
        Self {
            common_name: Some(common_name),
            serial: 1000,
            key_usages: vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ],
            extended_key_usages: vec![ExtendedKeyUsagePurpose::ServerAuth],
            not_after: (2039, 1, 1),
        }
    }

    fn client(common_name: &'static str) -> Self {
        Self {
            serial: 2000,
            extended_key_usages: vec![ExtendedKeyUsagePurpose::ClientAuth],
            key_usages: vec![KeyUsagePurpose::DigitalSignature],
            ..Self::server(common_name)
        }
    }

    fn serial(self, serial: u64) -> Self {
        Self { serial, ..self }
    }

    /// Issues the certificate and bundles it with `ca` (and `crl`) as our node's PKI.
    fn issue(&self, ca: &TestCa, crl: Option<&str>) -> PkiMaterial {
        self.issue_trusting(ca, &ca.pem, crl)
    }

    /// Issues the certificate from `issuer` but trusts `trusted_ca_pem` for the peer.
    fn issue_trusting(
        &self,
        issuer: &TestCa,
        trusted_ca_pem: &str,
        crl: Option<&str>,
    ) -> PkiMaterial {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "vpn-daemon tests");
        if let Some(common_name) = self.common_name {
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
        }
        params.serial_number = Some(SerialNumber::from(self.serial));
        params.key_usages = self.key_usages.clone();
        params.extended_key_usages = self.extended_key_usages.clone();
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(self.not_after.0, self.not_after.1, self.not_after.2);
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer.issuer).unwrap();
        PkiMaterial::from_pem(
            trusted_ca_pem.as_bytes(),
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
            crl.map(str::as_bytes),
        )
        .unwrap()
    }
}

/// How a handshake ended on each side.
struct Outcome {
    client: Connection,
    server: Connection,
    client_error: Option<Error>,
    server_error: Option<Error>,
}

impl Outcome {
    fn assert_success(&self) {
        assert!(
            self.client_error.is_none(),
            "client: {:?}",
            self.client_error
        );
        assert!(
            self.server_error.is_none(),
            "server: {:?}",
            self.server_error
        );
        assert!(!self.client.is_handshaking());
        assert!(!self.server.is_handshaking());
    }

    /// The side that refused logs this reason; the other side received an alert.
    fn refused_by_server(&self) -> String {
        let error = self.server_error.as_ref().expect("the server refused");
        assert!(
            matches!(self.client_error, Some(Error::AlertReceived(_))),
            "client: {:?}",
            self.client_error
        );
        describe_tls_error(error)
    }

    fn refused_by_client(&self) -> String {
        let error = self.client_error.as_ref().expect("the client refused");
        assert!(
            self.server_error.is_some(),
            "the server noticed the refusal"
        );
        describe_tls_error(error)
    }
}

/// Moves everything `from` wants to send into `to`; false if nothing moved.
fn transfer(from: &mut Connection, to: &mut Connection, to_error: &mut Option<Error>) -> bool {
    let mut bytes = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut bytes).unwrap();
    }
    if bytes.is_empty() || to_error.is_some() {
        return false;
    }
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        to.read_tls(&mut rest).unwrap();
        if let Err(error) = to.process_new_packets() {
            *to_error = Some(error);
            return true;
        }
    }
    true
}

fn handshake_with(
    client_config: Arc<rustls::ClientConfig>,
    server_config: Arc<rustls::ServerConfig>,
) -> Outcome {
    let mut client =
        Connection::Client(ClientConnection::new(client_config, server_name()).unwrap());
    let mut server = Connection::Server(ServerConnection::new(server_config).unwrap());
    let (mut client_error, mut server_error) = (None, None);
    for _ in 0..16 {
        let sent = transfer(&mut client, &mut server, &mut server_error);
        let answered = transfer(&mut server, &mut client, &mut client_error);
        if !sent && !answered {
            break;
        }
    }
    Outcome {
        client,
        server,
        client_error,
        server_error,
    }
}

fn handshake(
    client_pki: &PkiMaterial,
    client_checks: &PeerChecks,
    server_pki: &PkiMaterial,
    server_checks: &PeerChecks,
) -> Outcome {
    handshake_with(
        client_config_with_time(client_pki, client_checks, fixed_now()).unwrap(),
        server_config_with_time(server_pki, server_checks, fixed_now()).unwrap(),
    )
}

fn no_checks() -> PeerChecks {
    PeerChecks::default()
}

fn strict(usage: CertUsage, name: &str) -> PeerChecks {
    PeerChecks {
        remote_cert_tls: Some(usage),
        verify_x509_name: Some(name.to_owned()),
    }
}

fn data_keys(connection: &Connection) -> Vec<u8> {
    let block = match connection {
        Connection::Client(client) => export_data_keys(client),
        Connection::Server(server) => export_data_keys(server),
    };
    block.unwrap().as_bytes().to_vec()
}

#[test]
fn good_pair_handshakes_on_tls13_and_tls12_and_derives_the_same_data_keys() {
    let ca = TestCa::new("test CA");
    let server = Leaf::server("site-a").issue(&ca, None);
    let client = Leaf::client("site-b").issue(&ca, None);
    let client_checks = strict(CertUsage::Server, "site-a");
    let server_checks = strict(CertUsage::Client, "site-b");

    for versions in [&[&rustls::version::TLS13], &[&rustls::version::TLS12]] {
        let outcome = handshake_with(
            client_config_for_versions(&client, &client_checks, fixed_now(), versions).unwrap(),
            server_config_with_time(&server, &server_checks, fixed_now()).unwrap(),
        );
        outcome.assert_success();
        assert_eq!(outcome.client.protocol_version(), Some(versions[0].version));
        assert_eq!(peer_common_name(&outcome.client).as_deref(), Some("site-a"));
        assert_eq!(peer_common_name(&outcome.server).as_deref(), Some("site-b"));

        let client_keys = data_keys(&outcome.client);
        let server_keys = data_keys(&outcome.server);
        assert_eq!(client_keys.len(), 256);
        assert_eq!(client_keys, server_keys);
        assert!(client_keys.iter().any(|&byte| byte != 0));
    }
}

#[test]
fn each_handshake_exports_fresh_keys_and_sends_no_sni() {
    let ca = TestCa::new("test CA");
    let server = Leaf::server("site-a").issue(&ca, None);
    let client = Leaf::client("site-b").issue(&ca, None);
    let first = handshake(&client, &no_checks(), &server, &no_checks());
    let second = handshake(&client, &no_checks(), &server, &no_checks());
    first.assert_success();
    second.assert_success();
    assert_ne!(data_keys(&first.client), data_keys(&second.client));
    match &first.server {
        Connection::Server(server) => assert_eq!(server.server_name(), None),
        Connection::Client(_) => unreachable!(),
    }
}

#[test]
fn export_before_the_handshake_is_an_error() {
    let ca = TestCa::new("test CA");
    let client = Leaf::client("site-b").issue(&ca, None);
    let config = client_config_with_time(&client, &no_checks(), fixed_now()).unwrap();
    let connection = ClientConnection::new(config, server_name()).unwrap();
    assert!(matches!(
        export_data_keys(&connection),
        Err(TlsSetupError::Export(Error::HandshakeNotComplete))
    ));
}

#[test]
fn client_certificate_from_another_ca_is_refused() {
    let ca = TestCa::new("test CA");
    let other_ca = TestCa::new("other CA");
    let server = Leaf::server("site-a").issue(&ca, None);
    let client = Leaf::client("site-b").issue_trusting(&other_ca, &ca.pem, None);
    let outcome = handshake(&client, &no_checks(), &server, &no_checks());
    assert!(matches!(
        outcome.server_error,
        Some(Error::InvalidCertificate(CertificateError::UnknownIssuer))
    ));
    assert_eq!(
        outcome.refused_by_server(),
        "certificate chain does not verify to the configured CA (UnknownIssuer)"
    );
}

#[test]
fn server_certificate_from_another_ca_is_refused_before_the_ignored_name_check() {
    let ca = TestCa::new("test CA");
    let other_ca = TestCa::new("other CA");
    let server = Leaf::server("site-a").issue_trusting(&other_ca, &ca.pem, None);
    let client = Leaf::client("site-b").issue(&ca, None);
    let outcome = handshake(&client, &no_checks(), &server, &no_checks());
    assert_eq!(
        outcome.refused_by_client(),
        "certificate chain does not verify to the configured CA (UnknownIssuer)"
    );
    assert!(matches!(
        outcome.server_error,
        Some(Error::AlertReceived(AlertDescription::UnknownCA))
    ));
}

#[test]
fn expired_certificates_are_refused_on_both_sides() {
    let ca = TestCa::new("test CA");
    let expired_client = Leaf {
        not_after: (2025, 1, 1),
        ..Leaf::client("site-b")
    }
    .issue(&ca, None);
    let good_server = Leaf::server("site-a").issue(&ca, None);
    let outcome = handshake(&expired_client, &no_checks(), &good_server, &no_checks());
    assert_eq!(
        outcome.refused_by_server(),
        "certificate expired (valid until Jan  1 00:00:00 2025 +00:00, \
         now Jan  1 00:00:00 2030 +00:00)"
    );

    let expired_server = Leaf {
        not_after: (2025, 1, 1),
        ..Leaf::server("site-a")
    }
    .issue(&ca, None);
    let good_client = Leaf::client("site-b").issue(&ca, None);
    let outcome = handshake(&good_client, &no_checks(), &expired_server, &no_checks());
    assert!(outcome
        .refused_by_client()
        .starts_with("certificate expired ("));
}

#[test]
fn revoked_certificates_are_refused_and_others_pass_the_same_crl() {
    let ca = TestCa::new("test CA");
    let crl = ca.crl(&[2001, 1001], (2031, 1, 1));
    let server = Leaf::server("site-a").issue(&ca, Some(&crl));
    let client = Leaf::client("site-b").issue(&ca, Some(&crl));
    handshake(&client, &no_checks(), &server, &no_checks()).assert_success();

    let revoked_client = Leaf::client("site-b").serial(2001).issue(&ca, Some(&crl));
    let outcome = handshake(&revoked_client, &no_checks(), &server, &no_checks());
    assert!(matches!(
        outcome.server_error,
        Some(Error::InvalidCertificate(CertificateError::Revoked))
    ));
    assert_eq!(outcome.refused_by_server(), "certificate revoked by CRL");

    let revoked_server = Leaf::server("site-a").serial(1001).issue(&ca, Some(&crl));
    let outcome = handshake(&client, &no_checks(), &revoked_server, &no_checks());
    assert_eq!(outcome.refused_by_client(), "certificate revoked by CRL");
}

#[test]
fn a_crl_of_another_ca_neither_refuses_nor_blocks() {
    // OpenVPN ignores X509_V_ERR_UNABLE_TO_GET_CRL: no CRL for the issuer is no refusal.
    let ca = TestCa::new("test CA");
    let other_crl = TestCa::new("other CA").crl(&[2000], (2031, 1, 1));
    let server = Leaf::server("site-a").issue(&ca, Some(&other_crl));
    let client = Leaf::client("site-b").issue(&ca, None);
    handshake(&client, &no_checks(), &server, &no_checks()).assert_success();
}

#[test]
fn an_expired_crl_refuses_every_peer() {
    let ca = TestCa::new("test CA");
    let stale_crl = ca.crl(&[], (2029, 6, 1));
    let server = Leaf::server("site-a").issue(&ca, Some(&stale_crl));
    let client = Leaf::client("site-b").issue(&ca, None);
    let outcome = handshake(&client, &no_checks(), &server, &no_checks());
    assert_eq!(
        outcome.refused_by_server(),
        "the CRL expired at Jun  1 00:00:00 2029 +00:00; renew it (every peer is refused until then)"
    );
}

#[test]
fn remote_cert_tls_server_refuses_a_client_certificate() {
    let ca = TestCa::new("test CA");
    let client = Leaf::client("site-b").issue(&ca, None);
    // A client-EKU certificate on the server side: webpki itself refuses the purpose.
    let wrong_server = Leaf::client("site-a").issue(&ca, None);
    let outcome = handshake(&client, &no_checks(), &wrong_server, &no_checks());
    assert_eq!(
        outcome.refused_by_client(),
        "certificate extended key usage lacks TLS Web Server Authentication"
    );

    // No EKU at all passes webpki, and OpenVPN without remote-cert-tls ...
    let no_eku_server = Leaf {
        extended_key_usages: vec![],
        ..Leaf::server("site-a")
    }
    .issue(&ca, None);
    handshake(&client, &no_checks(), &no_eku_server, &no_checks()).assert_success();
    // ... but not remote-cert-tls server.
    let checks = PeerChecks {
        remote_cert_tls: Some(CertUsage::Server),
        verify_x509_name: None,
    };
    let outcome = handshake(&client, &checks, &no_eku_server, &no_checks());
    assert_eq!(
        outcome.refused_by_client(),
        "remote-cert-tls server: peer certificate lacks the TLS Web Server Authentication \
         extended key usage"
    );

    // remote-cert-tls also wants the key usage extension present.
    let no_ku_server = Leaf {
        key_usages: vec![],
        ..Leaf::server("site-a")
    }
    .issue(&ca, None);
    let outcome = handshake(&client, &checks, &no_ku_server, &no_checks());
    assert_eq!(
        outcome.refused_by_client(),
        "remote-cert-tls server: peer certificate lacks the key usage extension"
    );
}

#[test]
fn remote_cert_tls_client_refuses_a_server_certificate() {
    let ca = TestCa::new("test CA");
    let server = Leaf::server("site-a").issue(&ca, None);
    let wrong_client = Leaf::server("site-b").issue(&ca, None);
    let outcome = handshake(&wrong_client, &no_checks(), &server, &no_checks());
    assert_eq!(
        outcome.refused_by_server(),
        "certificate extended key usage lacks TLS Web Client Authentication"
    );

    let no_eku_client = Leaf {
        extended_key_usages: vec![],
        ..Leaf::client("site-b")
    }
    .issue(&ca, None);
    let checks = PeerChecks {
        remote_cert_tls: Some(CertUsage::Client),
        verify_x509_name: None,
    };
    let outcome = handshake(&no_eku_client, &no_checks(), &server, &checks);
    assert_eq!(
        outcome.refused_by_server(),
        "remote-cert-tls client: peer certificate lacks the TLS Web Client Authentication \
         extended key usage"
    );
}

#[test]
fn verify_x509_name_mismatch_is_refused_on_both_sides() {
    let ca = TestCa::new("test CA");
    let server = Leaf::server("site-a").issue(&ca, None);
    let client = Leaf::client("site-b").issue(&ca, None);
    let outcome = handshake(
        &client,
        &no_checks(),
        &server,
        &strict(CertUsage::Client, "site-c"),
    );
    assert_eq!(
        outcome.refused_by_server(),
        "verify-x509-name: peer common name `site-b` is not `site-c`"
    );
    let outcome = handshake(
        &client,
        &strict(CertUsage::Server, "site-"),
        &server,
        &no_checks(),
    );
    assert_eq!(
        outcome.refused_by_client(),
        "verify-x509-name: peer common name `site-a` is not `site-`"
    );
}

#[test]
fn a_peer_without_common_name_is_refused() {
    let ca = TestCa::new("test CA");
    let server = Leaf::server("site-a").issue(&ca, None);
    let nameless_client = Leaf {
        common_name: None,
        ..Leaf::client("unused")
    }
    .issue(&ca, None);
    let outcome = handshake(&nameless_client, &no_checks(), &server, &no_checks());
    assert_eq!(
        outcome.refused_by_server(),
        "peer certificate has no common name (OpenVPN requires one)"
    );
}

#[test]
fn common_name_rules_follow_openvpn() {
    let ca = TestCa::new("test CA");
    let issue = |dn: &[&str]| {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for part in dn {
            params.distinguished_name.push(DnType::CommonName, *part);
        }
        let key = KeyPair::generate().unwrap();
        let der = params.signed_by(&key, &ca.issuer).unwrap().der().clone();
        let (_, cert) = X509Certificate::from_der(der.as_ref()).unwrap();
        common_name(&cert)
    };
    // rcgen keeps one value per attribute type, so "last CN" is exercised by the parser path
    // only; control characters become '_'.
    assert_eq!(issue(&["a\tb\u{7f}c"]), Ok("a_b_c".to_owned()));
    assert_eq!(issue(&[&"x".repeat(64)]), Ok("x".repeat(64)));
    assert_eq!(
        issue(&[&"x".repeat(65)]),
        Err(PeerCertRefusal::CommonNameTooLong(65))
    );
}

#[test]
fn loading_rejects_bad_material_with_a_reason() {
    let ca = TestCa::new("test CA");
    let key = KeyPair::generate().unwrap();
    let other_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "site-a");
    let cert = params.signed_by(&key, &ca.issuer).unwrap().pem();

    let mismatch = PkiMaterial::from_pem(
        ca.pem.as_bytes(),
        cert.as_bytes(),
        other_key.serialize_pem().as_bytes(),
        None,
    )
    .unwrap_err();
    assert!(
        mismatch
            .to_string()
            .starts_with("certificate and private key:"),
        "{mismatch}"
    );

    let no_ca = PkiMaterial::from_pem(
        b"nothing here",
        cert.as_bytes(),
        key.serialize_pem().as_bytes(),
        None,
    )
    .unwrap_err();
    assert_eq!(no_ca.to_string(), "CA: no CERTIFICATE block");

    let no_key = PkiMaterial::from_pem(ca.pem.as_bytes(), cert.as_bytes(), cert.as_bytes(), None)
        .unwrap_err();
    assert!(
        no_key.to_string().starts_with("private key: no usable"),
        "{no_key}"
    );

    let bad_crl = "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n";
    let error = PkiMaterial::from_pem(
        ca.pem.as_bytes(),
        cert.as_bytes(),
        key.serialize_pem().as_bytes(),
        Some(bad_crl.as_bytes()),
    )
    .unwrap_err();
    assert!(matches!(error, TlsSetupError::Verifier(_)), "{error}");
}

#[test]
fn describe_tls_error_names_the_peer_side_of_a_refusal() {
    assert_eq!(
        describe_tls_error(&Error::AlertReceived(AlertDescription::BadCertificate)),
        "peer aborted the handshake with TLS alert BadCertificate"
    );
    assert_eq!(
        describe_tls_error(&Error::NoCertificatesPresented),
        "peer presented no certificate"
    );
    assert_eq!(
        describe_tls_error(&PeerCertRefusal::MissingKeyUsage(CertUsage::Client).into()),
        "remote-cert-tls client: peer certificate lacks the key usage extension"
    );
}

/// The openssl-made example PKI (ECDSA P-256, EKU serverAuth for site-a and clientAuth for
/// site-b, empty CRL): site-a as TLS server and site-b as TLS client with the checks the
/// example configs use, on the real clock.
#[test]
fn example_pki_site_a_serves_site_b() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pki");
    let pki = |name: &str| {
        PkiMaterial::load(&PkiFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            crl: Some(dir.join("crl.pem")),
        })
        .unwrap()
    };
    let (site_a, site_b) = (pki("site-a"), pki("site-b"));
    let outcome = handshake_with(
        client_config(&site_b, &strict(CertUsage::Server, "site-a")).unwrap(),
        server_config(&site_a, &strict(CertUsage::Client, "site-b")).unwrap(),
    );
    outcome.assert_success();
    assert_eq!(peer_common_name(&outcome.client).as_deref(), Some("site-a"));
    assert_eq!(peer_common_name(&outcome.server).as_deref(), Some("site-b"));
    assert_eq!(data_keys(&outcome.client), data_keys(&outcome.server));

    // And the roles reversed are refused, as `remote-cert-tls` demands.
    let outcome = handshake_with(
        client_config(&site_a, &no_checks()).unwrap(),
        server_config(&site_b, &no_checks()).unwrap(),
    );
    assert!(outcome.client_error.is_some());

    let missing = PkiMaterial::load(&PkiFiles {
        ca: dir.join("missing.crt"),
        cert: dir.join("site-a.crt"),
        key: dir.join("site-a.key"),
        crl: None,
    })
    .unwrap_err();
    assert!(
        missing.to_string().starts_with("cannot read CA file "),
        "{missing}"
    );
}
