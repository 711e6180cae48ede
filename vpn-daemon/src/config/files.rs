//! The files a config names: PEM certificates and keys, and OpenVPN static key files. Checked at
//! load time so that a typo in a path fails `check-config`, not the first handshake.
use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::error::describe_io_error;

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

/// Size of an OpenVPN static key (`--genkey secret`): 2048 bits.
pub(super) const STATIC_KEY_BYTES: usize = 256;
const STATIC_KEY_BEGIN: &str = "-----BEGIN OpenVPN Static key V1-----";
const STATIC_KEY_END: &str = "-----END OpenVPN Static key V1-----";

/// Why a file is not an OpenVPN static key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum StaticKeyError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("is a tls-crypt-v2 key, which schema v1 does not support; use a static key from `openvpn --genkey secret`")]
    TlsCryptV2,
    #[error("line {line}: expected `{STATIC_KEY_BEGIN}` (only '#' comments may come before it)")]
    TextBeforeBegin { line: usize },
    #[error("no `{STATIC_KEY_BEGIN}` line; create the file with `openvpn --genkey secret FILE`")]
    MissingBegin,
    #[error("no `{STATIC_KEY_END}` line after the BEGIN line")]
    MissingEnd,
    #[error("line {line}: key material must be hexadecimal, found {found:?}")]
    NotHex { line: usize, found: char },
    #[error("line {line}: odd number of hex digits")]
    OddHexDigits { line: usize },
    #[error("holds {found} bytes of key material; an OpenVPN static key has {STATIC_KEY_BYTES}")]
    WrongLength { found: usize },
}

/// Checks that `path` is an OpenVPN static key file (see [`parse_static_key`]).
pub(super) fn check_static_key_file(path: &Path) -> Result<(), StaticKeyError> {
    let contents = read_small_file(path)?;
    parse_static_key(&String::from_utf8_lossy(&contents)).map(drop)
}

/// Parses the `openvpn --genkey secret` format: '#' comment lines, then the BEGIN line, 256
/// bytes as hex (usually 16 lines of 32 digits), then the END line.
pub(super) fn parse_static_key(text: &str) -> Result<Vec<u8>, StaticKeyError> {
    let mut lines = text.lines().map(str::trim).enumerate();
    loop {
        let Some((index, line)) = lines.next() else {
            return Err(StaticKeyError::MissingBegin);
        };
        if line == STATIC_KEY_BEGIN {
            break;
        }
        if line.starts_with("-----BEGIN OpenVPN tls-crypt-v2") {
            return Err(StaticKeyError::TlsCryptV2);
        }
        if !(line.is_empty() || line.starts_with('#')) {
            return Err(StaticKeyError::TextBeforeBegin { line: index + 1 });
        }
    }
    let mut key = Vec::with_capacity(STATIC_KEY_BYTES);
    for (index, line) in lines {
        if line == STATIC_KEY_END {
            return if key.len() == STATIC_KEY_BYTES {
                Ok(key)
            } else {
                Err(StaticKeyError::WrongLength { found: key.len() })
            };
        }
        let line_number = index + 1;
        if let Some(found) = line.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(StaticKeyError::NotHex {
                line: line_number,
                found,
            });
        }
        if !line.len().is_multiple_of(2) {
            return Err(StaticKeyError::OddHexDigits { line: line_number });
        }
        for pair in line.as_bytes().chunks_exact(2) {
            let digits = std::str::from_utf8(pair).unwrap_or("");
            if let Ok(byte) = u8::from_str_radix(digits, 16) {
                key.push(byte);
            }
        }
    }
    Err(StaticKeyError::MissingEnd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn static_key_text(hex_lines: usize) -> String {
        let mut text = String::from("#\n# 2048 bit OpenVPN static key\n#\n");
        text.push_str(STATIC_KEY_BEGIN);
        text.push('\n');
        for line in 0..hex_lines {
            text.push_str(&format!("{:032x}\n", line as u128 * 0x0101_0101));
        }
        text.push_str(STATIC_KEY_END);
        text.push('\n');
        text
    }

    #[test]
    fn static_key_of_256_bytes_parses() {
        let key = parse_static_key(&static_key_text(16)).unwrap();
        assert_eq!(key.len(), STATIC_KEY_BYTES);
        assert_eq!(key[15], 0x00);
        assert_eq!(key[31], 0x01);
        assert_eq!(key[47], 0x02);
    }

    #[test]
    fn static_key_errors() {
        assert_eq!(
            parse_static_key(&static_key_text(15)),
            Err(StaticKeyError::WrongLength { found: 240 })
        );
        assert_eq!(parse_static_key(""), Err(StaticKeyError::MissingBegin));
        assert_eq!(
            parse_static_key("hello\n"),
            Err(StaticKeyError::TextBeforeBegin { line: 1 })
        );
        let unterminated = static_key_text(16).replace(STATIC_KEY_END, "");
        assert_eq!(
            parse_static_key(&unterminated),
            Err(StaticKeyError::MissingEnd)
        );
        let not_hex = static_key_text(16).replacen("00000000", "0000000g", 1);
        assert_eq!(
            parse_static_key(&not_hex),
            Err(StaticKeyError::NotHex {
                line: 5,
                found: 'g'
            })
        );
        assert_eq!(
            parse_static_key("-----BEGIN OpenVPN tls-crypt-v2 client key-----\n"),
            Err(StaticKeyError::TlsCryptV2)
        );
    }

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
