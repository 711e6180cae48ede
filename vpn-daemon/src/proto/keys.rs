//! OpenVPN static keys (`openvpn --genkey secret`): the pre-shared 2048-bit keys behind
//! tls-auth and tls-crypt, and which of their halves each side sends and receives with.
//!
//! Layout (OpenVPN `struct key2`, draft appendix "OpenVPN Static key file format"): two keys of
//! 128 bytes each, every key a 64-byte cipher slot followed by a 64-byte HMAC slot:
//!
//! ```text
//! offset   0: cipher key 0 (64)   offset  64: HMAC key 0 (64)
//! offset 128: cipher key 1 (64)   offset 192: HMAC key 1 (64)
//! ```
//!
//! Algorithms use a prefix of a slot (e.g. HMAC-SHA1 the first 20 bytes of an HMAC slot).
use std::fmt;

use zeroize::Zeroize;

use super::vocabulary::{KeyDirection, TlsRole};

/// Size of an OpenVPN static key: 2048 bits.
pub const STATIC_KEY_BYTES: usize = 256;
/// Size of one cipher or HMAC slot of a key.
pub const KEY_SLOT_BYTES: usize = 64;

const STATIC_KEY_BEGIN: &str = "-----BEGIN OpenVPN Static key V1-----";
const STATIC_KEY_END: &str = "-----END OpenVPN Static key V1-----";

/// Why a text is not an OpenVPN static key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StaticKeyError {
    /// A tls-crypt-v2 client or server key was given instead of a static key.
    #[error("is a tls-crypt-v2 key, which schema v1 does not support; use a static key from `openvpn --genkey secret`")]
    TlsCryptV2,
    /// Something other than a comment precedes the BEGIN line.
    #[error("line {line}: expected `{STATIC_KEY_BEGIN}` (only '#' comments may come before it)")]
    TextBeforeBegin {
        /// 1-based line number.
        line: usize,
    },
    /// No BEGIN line at all.
    #[error("no `{STATIC_KEY_BEGIN}` line; create the file with `openvpn --genkey secret FILE`")]
    MissingBegin,
    /// The BEGIN line is never closed.
    #[error("no `{STATIC_KEY_END}` line after the BEGIN line")]
    MissingEnd,
    /// A key line holds a non-hex character.
    #[error("line {line}: key material must be hexadecimal, found {found:?}")]
    NotHex {
        /// 1-based line number.
        line: usize,
        /// The first offending character.
        found: char,
    },
    /// A key line has an odd number of hex digits.
    #[error("line {line}: odd number of hex digits")]
    OddHexDigits {
        /// 1-based line number.
        line: usize,
    },
    /// The block holds more or fewer than [`STATIC_KEY_BYTES`] bytes.
    #[error("holds {found} bytes of key material; an OpenVPN static key has {STATIC_KEY_BYTES}")]
    WrongLength {
        /// How many bytes the block holds.
        found: usize,
    },
}

/// One direction's keys: a 64-byte cipher slot and a 64-byte HMAC slot.
#[derive(Clone, Copy)]
pub struct DirectionKeys<'a> {
    /// Cipher key material; a cipher uses as many leading bytes as its key needs.
    pub cipher: &'a [u8; KEY_SLOT_BYTES],
    /// HMAC key material; an HMAC uses as many leading bytes as its digest produces.
    pub hmac: &'a [u8; KEY_SLOT_BYTES],
}

impl fmt::Debug for DirectionKeys<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("DirectionKeys { .. }")
    }
}

/// Which of the two keys of a static key (or of a data-channel key block) is meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyIndex {
    /// Bytes 0..128.
    Zero,
    /// Bytes 128..256.
    One,
}

/// The send and receive key indexes for an OpenVPN `key-direction`.
///
/// `None` is OpenVPN's bidirectional mode: both directions use key 0. `Normal` (`0`) sends with
/// key 0 and receives with key 1; `Inverse` (`1`) the reverse (crypto.c
/// `key_direction_state_init`). The two peers must use opposite directions, or both none.
pub fn direction_indexes(direction: Option<KeyDirection>) -> (KeyIndex, KeyIndex) {
    match direction {
        None => (KeyIndex::Zero, KeyIndex::Zero),
        Some(KeyDirection::Normal) => (KeyIndex::Zero, KeyIndex::One),
        Some(KeyDirection::Inverse) => (KeyIndex::One, KeyIndex::Zero),
    }
}

/// The fixed key direction tls-crypt (v1) uses: the TLS server is `Normal`, the TLS client
/// `Inverse` (tls_crypt.c `tls_crypt_init_key`). No `key-direction` option applies to tls-crypt.
pub fn tls_crypt_direction(role: TlsRole) -> KeyDirection {
    match role {
        TlsRole::Server => KeyDirection::Normal,
        TlsRole::Client => KeyDirection::Inverse,
    }
}

/// Two keys as four 64-byte slots: cipher 0, HMAC 0, cipher 1, HMAC 1. The layout shared by
/// static keys and data-channel key blocks (OpenVPN `struct key2`).
pub(crate) type KeySlots = [[u8; KEY_SLOT_BYTES]; 4];

/// Splits 256 bytes in file order into [`KeySlots`].
pub(crate) fn slots_from_bytes(bytes: &[u8; STATIC_KEY_BYTES]) -> KeySlots {
    let mut slots = [[0u8; KEY_SLOT_BYTES]; 4];
    for (slot, chunk) in slots.iter_mut().zip(bytes.chunks_exact(KEY_SLOT_BYTES)) {
        slot.copy_from_slice(chunk);
    }
    slots
}

/// Returns the cipher and HMAC slots of key `index`.
pub(crate) fn key_slots(slots: &KeySlots, index: KeyIndex) -> DirectionKeys<'_> {
    let [cipher0, hmac0, cipher1, hmac1] = slots;
    let (cipher, hmac) = match index {
        KeyIndex::Zero => (cipher0, hmac0),
        KeyIndex::One => (cipher1, hmac1),
    };
    DirectionKeys { cipher, hmac }
}

/// A 2048-bit OpenVPN static key. The key material is wiped when the value is dropped.
///
/// Deliberately not `PartialEq`: comparing keys is not something the daemon should do with a
/// short-circuiting `==`.
#[derive(Clone)]
pub struct StaticKey {
    slots: KeySlots,
}

impl StaticKey {
    /// Wraps raw key material (the 256 bytes of a static key file, in file order).
    pub fn from_bytes(mut bytes: [u8; STATIC_KEY_BYTES]) -> Self {
        let key = Self {
            slots: slots_from_bytes(&bytes),
        };
        bytes.zeroize();
        key
    }

    /// Parses the `openvpn --genkey secret` format: '#' comment lines, then the BEGIN line, 256
    /// bytes as hex (usually 16 lines of 32 digits), then the END line.
    pub fn parse(text: &str) -> Result<Self, StaticKeyError> {
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
        let mut bytes = zeroize::Zeroizing::new([0u8; STATIC_KEY_BYTES]);
        // Counts every byte seen, also past the 256th, so that the error says how many there were.
        let mut found = 0usize;
        for (index, line) in lines {
            if line == STATIC_KEY_END {
                return if found == STATIC_KEY_BYTES {
                    Ok(Self::from_bytes(*bytes))
                } else {
                    Err(StaticKeyError::WrongLength { found })
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
                    if let Some(slot) = bytes.get_mut(found) {
                        *slot = byte;
                    }
                    found += 1;
                }
            }
        }
        Err(StaticKeyError::MissingEnd)
    }

    /// The raw 256 bytes, in file order.
    pub fn as_bytes(&self) -> &[u8] {
        self.slots.as_flattened()
    }

    /// Key `index` (0 or 1) of the static key.
    pub fn key(&self, index: KeyIndex) -> DirectionKeys<'_> {
        key_slots(&self.slots, index)
    }

    /// The keys this side sends with under `direction` (see [`direction_indexes`]).
    pub fn send_keys(&self, direction: Option<KeyDirection>) -> DirectionKeys<'_> {
        self.key(direction_indexes(direction).0)
    }

    /// The keys this side receives with under `direction` (see [`direction_indexes`]).
    pub fn receive_keys(&self, direction: Option<KeyDirection>) -> DirectionKeys<'_> {
        self.key(direction_indexes(direction).1)
    }
}

impl Drop for StaticKey {
    fn drop(&mut self) {
        self.slots.zeroize();
    }
}

impl fmt::Debug for StaticKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("StaticKey { .. }")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A static key file with `hex_lines` lines of 16 bytes; line `n` is `n * 0x01010101` as a
    /// 128-bit big-endian number.
    pub(crate) fn static_key_text(hex_lines: usize) -> String {
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

    /// A key whose byte `i` is `i`: every slot is recognisable by its first byte.
    pub(crate) fn counting_key() -> StaticKey {
        let mut bytes = [0u8; STATIC_KEY_BYTES];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = index as u8;
        }
        StaticKey::from_bytes(bytes)
    }

    #[test]
    fn static_key_of_256_bytes_parses() {
        let key = StaticKey::parse(&static_key_text(16)).unwrap();
        assert_eq!(key.as_bytes().len(), STATIC_KEY_BYTES);
        assert_eq!(key.as_bytes()[15], 0x00);
        assert_eq!(key.as_bytes()[31], 0x01);
        assert_eq!(key.as_bytes()[47], 0x02);
        assert_eq!(key.as_bytes()[255], 0x0f);
    }

    #[test]
    fn static_key_errors() {
        let error = |text: &str| StaticKey::parse(text).unwrap_err();
        assert_eq!(
            error(&static_key_text(15)),
            StaticKeyError::WrongLength { found: 240 }
        );
        assert_eq!(
            error(&static_key_text(17)),
            StaticKeyError::WrongLength { found: 272 }
        );
        assert_eq!(error(""), StaticKeyError::MissingBegin);
        assert_eq!(
            error("hello\n"),
            StaticKeyError::TextBeforeBegin { line: 1 }
        );
        let unterminated = static_key_text(16).replace(STATIC_KEY_END, "");
        assert_eq!(error(&unterminated), StaticKeyError::MissingEnd);
        let not_hex = static_key_text(16).replacen("00000000", "0000000g", 1);
        assert_eq!(
            error(&not_hex),
            StaticKeyError::NotHex {
                line: 5,
                found: 'g'
            }
        );
        let odd = static_key_text(16).replacen("00000000", "0000000", 1);
        assert_eq!(error(&odd), StaticKeyError::OddHexDigits { line: 5 });
        assert_eq!(
            error("-----BEGIN OpenVPN tls-crypt-v2 client key-----\n"),
            StaticKeyError::TlsCryptV2
        );
    }

    #[test]
    fn example_pki_keys_parse() {
        for name in ["ta.key", "tc.key"] {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/pki/");
            let text = std::fs::read_to_string(format!("{path}{name}")).unwrap();
            StaticKey::parse(&text).unwrap();
        }
    }

    #[test]
    fn slots_are_in_file_order() {
        let key = counting_key();
        let zero = key.key(KeyIndex::Zero);
        let one = key.key(KeyIndex::One);
        assert_eq!(zero.cipher[0], 0);
        assert_eq!(zero.hmac[0], 64);
        assert_eq!(one.cipher[0], 128);
        assert_eq!(one.hmac[0], 192);
        assert_eq!(one.hmac[63], 255);
    }

    #[test]
    fn key_directions_pick_opposite_halves() {
        let key = counting_key();
        let first_byte = |keys: DirectionKeys<'_>| keys.cipher[0];
        // Bidirectional: both ways key 0.
        assert_eq!(first_byte(key.send_keys(None)), 0);
        assert_eq!(first_byte(key.receive_keys(None)), 0);
        let normal = Some(KeyDirection::Normal);
        let inverse = Some(KeyDirection::Inverse);
        assert_eq!(first_byte(key.send_keys(normal)), 0);
        assert_eq!(first_byte(key.receive_keys(normal)), 128);
        assert_eq!(first_byte(key.send_keys(inverse)), 128);
        assert_eq!(first_byte(key.receive_keys(inverse)), 0);
        // What one side sends with, the other receives with.
        assert_eq!(key.send_keys(normal).hmac, key.receive_keys(inverse).hmac);
        assert_eq!(tls_crypt_direction(TlsRole::Server), KeyDirection::Normal);
        assert_eq!(tls_crypt_direction(TlsRole::Client), KeyDirection::Inverse);
    }

    #[test]
    fn debug_does_not_show_key_material() {
        let key = counting_key();
        assert_eq!(format!("{key:?}"), "StaticKey { .. }");
    }
}
