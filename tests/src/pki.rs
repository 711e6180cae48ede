//! A throwaway PKI for tunnel tests, generated at test time with the `openssl` and `openvpn`
//! command-line tools (the tools real deployments use: EasyRSA drives `openssl ca` the same way,
//! so these certificates look like the ones stock OpenVPN users have).
//!
//! One CA signs the server certificate and every client certificate; a second, unrelated CA signs
//! one more client certificate that a server trusting only the first CA must refuse. One client
//! certificate expired long ago, one is revoked and listed in the CRL. All keys are RSA 2048,
//! unencrypted PKCS#8 (`-----BEGIN PRIVATE KEY-----`).

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use anyhow::{anyhow, Context as _};

/// Paths of every file in a generated PKI. All PEM, except the two OpenVPN static keys.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The directory everything was written to.
    pub dir: PathBuf,
    /// The CA certificate that signs the server and the (good, expired, revoked) client certs.
    pub ca: PathBuf,
    /// CRL of `ca`, listing `revoked_client_cert`.
    pub crl: PathBuf,
    /// CN "server", EKU serverAuth, KU digitalSignature + keyEncipherment.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// CN "client", EKU clientAuth.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// CN "client2", EKU clientAuth (a second concurrent client).
    pub client2_cert: PathBuf,
    pub client2_key: PathBuf,
    /// The CA certificate of the unrelated second CA.
    pub other_ca: PathBuf,
    /// CN "client", EKU clientAuth, but signed by `other_ca`.
    pub other_ca_client_cert: PathBuf,
    pub other_ca_client_key: PathBuf,
    /// CN "expired", EKU clientAuth, valid only in January 2020.
    pub expired_client_cert: PathBuf,
    pub expired_client_key: PathBuf,
    /// CN "revoked", EKU clientAuth, listed in `crl`.
    pub revoked_client_cert: PathBuf,
    pub revoked_client_key: PathBuf,
    /// `openvpn --genkey secret` output, for tls-crypt.
    pub tls_crypt_key: PathBuf,
    /// `openvpn --genkey secret` output, for tls-auth.
    pub tls_auth_key: PathBuf,
}

/// Prefix of the per-process directory [`Pki::shared`] generates into (under the temp dir).
const SHARED_PREFIX: &str = "vpnt-pki-";

impl Pki {
    /// The PKI of this test process: generated on first use into `$TMPDIR/vpnt-pki-<pid>`
    /// (about 2 s), then shared by every test. Directories left by earlier, finished test
    /// processes are removed first.
    pub fn shared() -> anyhow::Result<&'static Pki> {
        static SHARED: OnceLock<Result<Pki, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                remove_stale_shared_dirs();
                let dir =
                    std::env::temp_dir().join(format!("{SHARED_PREFIX}{}", std::process::id()));
                Pki::generate(&dir).map_err(|error| format!("{error:#}"))
            })
            .as_ref()
            .map_err(|error| anyhow!("generating the test PKI: {error}"))
    }

    /// Generates a fresh PKI into `dir` (created if missing; existing files are overwritten).
    pub fn generate(dir: &Path) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca = CertAuthority::create(dir, "ca", "vpnt-test-ca")?;
        let other = CertAuthority::create(dir, "other-ca", "vpnt-other-ca")?;

        let (server_cert, server_key) = ca.issue("server", "server", Ext::Server, Validity::Now)?;
        let (client_cert, client_key) = ca.issue("client", "client", Ext::Client, Validity::Now)?;
        let (client2_cert, client2_key) =
            ca.issue("client2", "client2", Ext::Client, Validity::Now)?;
        let (other_ca_client_cert, other_ca_client_key) =
            other.issue("other-ca-client", "client", Ext::Client, Validity::Now)?;
        let (expired_client_cert, expired_client_key) =
            ca.issue("expired", "expired", Ext::Client, Validity::Past)?;
        let (revoked_client_cert, revoked_client_key) =
            ca.issue("revoked", "revoked", Ext::Client, Validity::Now)?;
        let crl = ca.revoke_and_publish_crl(&revoked_client_cert)?;

        let tls_crypt_key = dir.join("tls-crypt.key");
        let tls_auth_key = dir.join("tls-auth.key");
        for key in [&tls_crypt_key, &tls_auth_key] {
            run(Command::new("openvpn")
                .args(["--genkey", "secret"])
                .arg(key))?;
        }

        Ok(Pki {
            dir: dir.to_owned(),
            ca: ca.cert.clone(),
            crl,
            server_cert,
            server_key,
            client_cert,
            client_key,
            client2_cert,
            client2_key,
            other_ca: other.cert.clone(),
            other_ca_client_cert,
            other_ca_client_key,
            expired_client_cert,
            expired_client_key,
            revoked_client_cert,
            revoked_client_key,
            tls_crypt_key,
            tls_auth_key,
        })
    }
}

impl Pki {
    /// A client certificate with common name `common_name` (P-256 key, quick to make), issued
    /// by the main CA into `<dir>/issued-<common_name>.crt|key`; issued once, then reused.
    /// For tests that need many distinct clients (the multi-client server).
    pub fn client_identity(&self, common_name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        // `openssl ca` keeps its database in files: one issuer at a time.
        static ISSUING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = ISSUING
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let stem = format!("issued-{common_name}");
        let cert = self.dir.join(format!("{stem}.crt"));
        let key = self.dir.join(format!("{stem}.key"));
        if cert.exists() && key.exists() {
            return Ok((cert, key));
        }
        let ca_dir = self.dir.join("ca");
        let csr = ca_dir.join(format!("{stem}.csr"));
        run(Command::new("openssl")
            .args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-subj", &format!("/CN={common_name}")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr))?;
        run(Command::new("openssl")
            .args(["ca", "-batch", "-notext", "-config"])
            .arg(ca_dir.join("openssl.cnf"))
            .args(["-extensions", "client_ext", "-days", "30", "-in"])
            .arg(&csr)
            .arg("-out")
            .arg(&cert))?;
        Ok((cert, key))
    }
}

#[derive(Clone, Copy)]
enum Ext {
    Server,
    Client,
}

#[derive(Clone, Copy)]
enum Validity {
    /// From now for 30 days.
    Now,
    /// January 2020 only: expired for years.
    Past,
}

/// A CA driven through `openssl ca`, which keeps the issued-certificate database a CRL needs.
struct CertAuthority {
    dir: PathBuf,
    config: PathBuf,
    cert: PathBuf,
}

impl CertAuthority {
    fn create(parent: &Path, name: &str, common_name: &str) -> anyhow::Result<Self> {
        let dir = parent.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("issued"))
            .with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("index.txt"), "")?;
        std::fs::write(dir.join("serial"), "1000\n")?;
        std::fs::write(dir.join("crlnumber"), "1000\n")?;
        let config = dir.join("openssl.cnf");
        std::fs::write(&config, ca_config(&dir))?;

        let cert = parent.join(format!("{name}.crt"));
        run(Command::new("openssl")
            .args([
                "req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256",
            ])
            .args(["-days", "30", "-subj", &format!("/CN={common_name}")])
            .arg("-keyout")
            .arg(dir.join("ca.key"))
            .arg("-out")
            .arg(&cert)
            .args(["-config"])
            .arg(&config)
            .args(["-extensions", "ca_ext"]))?;
        Ok(Self { dir, config, cert })
    }

    /// Issues `<file_stem>.crt` / `<file_stem>.key` next to the CA certificate.
    fn issue(
        &self,
        file_stem: &str,
        common_name: &str,
        ext: Ext,
        validity: Validity,
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        let parent = self.dir.parent().context("CA dir has a parent")?;
        let cert = parent.join(format!("{file_stem}.crt"));
        let key = parent.join(format!("{file_stem}.key"));
        let csr = self.dir.join(format!("{file_stem}.csr"));
        run(Command::new("openssl")
            .args(["req", "-new", "-newkey", "rsa:2048", "-nodes"])
            .args(["-subj", &format!("/CN={common_name}")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr))?;
        let mut sign = Command::new("openssl");
        sign.args(["ca", "-batch", "-notext", "-config"])
            .arg(&self.config)
            .args([
                "-extensions",
                match ext {
                    Ext::Server => "server_ext",
                    Ext::Client => "client_ext",
                },
            ])
            .arg("-in")
            .arg(&csr)
            .arg("-out")
            .arg(&cert);
        match validity {
            Validity::Now => sign.args(["-days", "30"]),
            Validity::Past => sign.args([
                "-startdate",
                "20200101000000Z",
                "-enddate",
                "20200131000000Z",
            ]),
        };
        run(&mut sign)?;
        Ok((cert, key))
    }

    /// Revokes `cert` and writes the CA's CRL (valid 30 days) next to the CA certificate.
    fn revoke_and_publish_crl(&self, cert: &Path) -> anyhow::Result<PathBuf> {
        run(Command::new("openssl")
            .args(["ca", "-batch", "-config"])
            .arg(&self.config)
            .arg("-revoke")
            .arg(cert))?;
        let crl = self
            .dir
            .parent()
            .context("CA dir has a parent")?
            .join("crl.pem");
        run(Command::new("openssl")
            .args(["ca", "-batch", "-gencrl", "-crldays", "30", "-config"])
            .arg(&self.config)
            .arg("-out")
            .arg(&crl))?;
        Ok(crl)
    }
}

/// A minimal `openssl ca` configuration; the extension sections mirror EasyRSA's x509-types.
fn ca_config(dir: &Path) -> String {
    format!(
        r#"[ ca ]
default_ca = ca_default

[ ca_default ]
database = {dir}/index.txt
new_certs_dir = {dir}/issued
serial = {dir}/serial
crlnumber = {dir}/crlnumber
certificate = {dir}/../{name}.crt
private_key = {dir}/ca.key
default_md = sha256
default_crl_days = 30
policy = policy_any
unique_subject = no
copy_extensions = none

[ policy_any ]
commonName = supplied

[ req ]
distinguished_name = req_dn
[ req_dn ]

[ ca_ext ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[ server_ext ]
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer

[ client_ext ]
basicConstraints = CA:FALSE
keyUsage = digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"#,
        dir = dir.display(),
        name = dir
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default(),
    )
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    crate::netns::run_checked(command).map(drop)
}

/// Removes `vpnt-pki-<pid>` directories whose test process is gone.
fn remove_stale_shared_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(SHARED_PREFIX)
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openssl_text(args: &[&str], path: &Path) -> String {
        let output = Command::new("openssl")
            .args(args)
            .arg(path)
            .output()
            .expect("running openssl");
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr)
    }

    fn verify(ca: &Path, crl: Option<&Path>, cert: &Path) -> String {
        let mut command = Command::new("openssl");
        command.arg("verify").arg("-CAfile").arg(ca);
        if let Some(crl) = crl {
            command.arg("-crl_check").arg("-CRLfile").arg(crl);
        }
        let output = command.arg(cert).output().expect("running openssl verify");
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr)
    }

    #[test]
    fn generated_pki_has_the_promised_properties() {
        let pki = Pki::shared().expect("generating PKI");
        let ok = |cert: &Path| verify(&pki.ca, Some(&pki.crl), cert);
        assert!(ok(&pki.server_cert).contains(": OK"));
        assert!(ok(&pki.client_cert).contains(": OK"));
        assert!(ok(&pki.client2_cert).contains(": OK"));
        assert!(ok(&pki.expired_client_cert).contains("certificate has expired"));
        assert!(ok(&pki.revoked_client_cert).contains("certificate revoked"));
        assert!(ok(&pki.other_ca_client_cert).contains("unable to get local issuer"));
        assert!(verify(&pki.other_ca, None, &pki.other_ca_client_cert).contains(": OK"));

        let server = openssl_text(&["x509", "-noout", "-text", "-in"], &pki.server_cert);
        assert!(server.contains("Subject: CN = server"), "{server}");
        assert!(server.contains("TLS Web Server Authentication"), "{server}");
        assert!(
            server.contains("Digital Signature, Key Encipherment"),
            "{server}"
        );
        let client = openssl_text(&["x509", "-noout", "-text", "-in"], &pki.client2_cert);
        assert!(client.contains("Subject: CN = client2"), "{client}");
        assert!(client.contains("TLS Web Client Authentication"), "{client}");

        for key in [&pki.tls_crypt_key, &pki.tls_auth_key] {
            let text = std::fs::read_to_string(key).expect("reading static key");
            assert!(text.contains("-----BEGIN OpenVPN Static key V1-----"));
        }
    }
}
