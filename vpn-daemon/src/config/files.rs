//! The files a config names: PEM certificates and keys, and OpenVPN static key files. Checked at
//! load time so that a typo in a path fails `check-config`, not the first handshake.
use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::error::describe_io_error;
use crate::proto::keys::{StaticKey, StaticKeyError};

/// Certificates, keys and static key files are a few KiB; anything much bigger is the wrong file.
pub(super) const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Why a referenced file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum ReadError {
    #[error("{0}")]
    Io(String),
    #[error("not a regular file")]
    NotRegularFile,
    #[error("larger than {MAX_FILE_BYTES} bytes")]
    TooLarge,
}

impl From<std::io::Error> for ReadError {
    fn from(error: std::io::Error) -> Self {
        ReadError::Io(describe_io_error(&error))
    }
}

/// Reads a regular file of at most [`MAX_FILE_BYTES`]. Devices and FIFOs are refused before they
/// are opened: `/dev/zero` would never end and a FIFO would block the daemon.
pub(super) fn read_small_file(path: &Path) -> Result<Vec<u8>, ReadError> {
    if !std::fs::metadata(path)?.is_file() {
        return Err(ReadError::NotRegularFile);
    }
    let mut contents = Vec::new();
    File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut contents)?;
    if contents.len() as u64 > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge);
    }
    Ok(contents)
}

/// Why a file does not hold the PEM block it should.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum PemError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("no PEM block found (expected a PEM {expected} block)")]
    NoPem { expected: String },
    #[error("holds PEM {found} but no {expected} block; is it the right file?")]
    WrongBlock { found: String, expected: String },
    #[error("the PEM \"{label}\" block is not terminated by `-----END {label}-----`")]
    Unterminated { label: String },
    #[error("the PEM \"{label}\" block has no valid base64 contents")]
    BadBody { label: String },
    #[error("the private key is encrypted with a passphrase; the daemon needs an unencrypted key")]
    Encrypted,
}

/// One `-----BEGIN X-----` … `-----END X-----` block.
struct PemBlock {
    label: String,
    /// Lines between BEGIN and END; `None` if END never came.
    body: Option<Vec<String>>,
}

fn pem_blocks(text: &str) -> Vec<PemBlock> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut body = Vec::new();
        let mut terminated = false;
        for line in lines.by_ref() {
            if line == end {
                terminated = true;
                break;
            }
            body.push(line.to_owned());
        }
        blocks.push(PemBlock {
            label: label.to_owned(),
            body: terminated.then_some(body),
        });
    }
    blocks
}

/// Base64 contents, optionally preceded by RFC 1421 headers ("Proc-Type: …") and a blank line.
fn valid_pem_body(body: &[String]) -> bool {
    let data: String = body
        .iter()
        .filter(|line| !line.contains(':'))
        .map(String::as_str)
        .collect();
    !data.is_empty()
        && data.len().is_multiple_of(4)
        && data
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
}

/// `"A"` or `"A" or "B"`, for messages.
fn quoted_labels(labels: &[&str]) -> String {
    labels
        .iter()
        .map(|label| format!("\"{label}\""))
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Checks that `path` holds a well-formed PEM block with one of `labels`.
pub(super) fn check_pem_file(path: &Path, labels: &[&str]) -> Result<(), PemError> {
    let contents = read_small_file(path)?;
    check_pem(&String::from_utf8_lossy(&contents), labels)
}

fn check_pem(text: &str, labels: &[&str]) -> Result<(), PemError> {
    let blocks = pem_blocks(text);
    let expected = quoted_labels(labels);
    let wanted_key = labels.iter().any(|label| label.ends_with("PRIVATE KEY"));
    let mut found_labels: Vec<&str> = Vec::new();
    for block in &blocks {
        if wanted_key && block.label == "ENCRYPTED PRIVATE KEY" {
            return Err(PemError::Encrypted);
        }
        if !labels.contains(&block.label.as_str()) {
            if !found_labels.contains(&block.label.as_str()) {
                found_labels.push(&block.label);
            }
            continue;
        }
        let Some(body) = &block.body else {
            return Err(PemError::Unterminated {
                label: block.label.clone(),
            });
        };
        // Legacy OpenSSL encryption marks the block with "Proc-Type: 4,ENCRYPTED".
        if body.iter().any(|line| line.contains("ENCRYPTED")) {
            return Err(PemError::Encrypted);
        }
        if !valid_pem_body(body) {
            return Err(PemError::BadBody {
                label: block.label.clone(),
            });
        }
        return Ok(());
    }
    if found_labels.is_empty() {
        Err(PemError::NoPem { expected })
    } else {
        Err(PemError::WrongBlock {
            found: found_labels
                .iter()
                .map(|label| format!("\"{label}\""))
                .collect::<Vec<_>>()
                .join(", "),
            expected,
        })
    }
}

/// Why a file is not an OpenVPN static key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum StaticKeyFileError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Key(#[from] StaticKeyError),
}

/// Checks that `path` is an OpenVPN static key file (see [`StaticKey::parse`]).
pub(super) fn check_static_key_file(path: &Path) -> Result<(), StaticKeyFileError> {
    let contents = read_small_file(path)?;
    StaticKey::parse(&String::from_utf8_lossy(&contents))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_checks() {
        let cert = "-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n";
        assert_eq!(check_pem(cert, &["CERTIFICATE"]), Ok(()));
        assert_eq!(
            check_pem(cert, &["PRIVATE KEY", "EC PRIVATE KEY"]),
            Err(PemError::WrongBlock {
                found: "\"CERTIFICATE\"".to_owned(),
                expected: "\"PRIVATE KEY\" or \"EC PRIVATE KEY\"".to_owned(),
            })
        );
        assert!(matches!(
            check_pem("garbage", &["CERTIFICATE"]),
            Err(PemError::NoPem { .. })
        ));
        assert!(matches!(
            check_pem("-----BEGIN CERTIFICATE-----\nQUJD\n", &["CERTIFICATE"]),
            Err(PemError::Unterminated { .. })
        ));
        assert!(matches!(
            check_pem(
                "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
                &["CERTIFICATE"]
            ),
            Err(PemError::BadBody { .. })
        ));
        assert_eq!(
            check_pem(
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nQUJD\n-----END ENCRYPTED PRIVATE KEY-----\n",
                &["PRIVATE KEY"]
            ),
            Err(PemError::Encrypted)
        );
    }
}
