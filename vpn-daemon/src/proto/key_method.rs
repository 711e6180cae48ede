//! Key method 2: the first message each peer writes as TLS application data once the TLS
//! handshake is done (ssl.c `key_method_2_write` / `key_method_2_read`).
//!
//! ```text
//! u32 0 | u8 2 (key method; the high nibble holds flags, always 0) |
//! pre_master[48] (only from the TLS client) | random1[32] | random2[32] |
//! string options | string username | string password | string peer_info
//! ```
//!
//! A "string" is a big-endian u16 length that counts a trailing NUL, then that many bytes
//! (ssl.c `write_string`). An absent username, password or peer-info is a bare length 0
//! (`write_empty_string`); an empty-but-present string is length 1 and a single NUL. OpenVPN
//! 2.x always writes all four strings, so a message that stops after the password is
//! incomplete, not finished.
//!
//! OpenVPN reads the message from a single `SSL_read`; we accept it split over any number of
//! TLS records and report [`KeyMethodError::Incomplete`] until it is all there.
use std::fmt;

use zeroize::Zeroize;

/// The key-method byte (ssl.h `KEY_METHOD_2`).
pub const KEY_METHOD_2: u8 = 2;
/// Mask that takes the key method out of the key-method/flags byte (ssl.h `KEY_METHOD_MASK`).
const KEY_METHOD_MASK: u8 = 0x0f;
/// Largest options string (with its NUL) a 2.6 peer accepts (ssl.h `TLS_OPTIONS_LEN`); a
/// longer one makes it drop the session.
pub const MAX_OPTIONS_LEN: usize = 512;
/// Length of the TLS client's pre-master secret.
pub const PRE_MASTER_BYTES: usize = 48;
/// Length of each random.
pub const RANDOM_BYTES: usize = 32;

/// One key-method 2 message. Key material and the password are wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyMethod2 {
    /// The legacy-PRF pre-master secret; present exactly when the sender is the TLS client.
    pub pre_master: Option<[u8; PRE_MASTER_BYTES]>,
    /// First random (legacy PRF master-secret seed).
    pub random1: [u8; RANDOM_BYTES],
    /// Second random (legacy PRF key-expansion seed).
    pub random2: [u8; RANDOM_BYTES],
    /// The OCC options string (see `options::OccOptions`), without its NUL.
    pub options: String,
    /// `auth-user-pass` user name; `None` is the empty field 2.6 sends without one.
    pub username: Option<String>,
    /// `auth-user-pass` password.
    pub password: Option<String>,
    /// `IV_...=...\n` lines (see `options::PeerInfo`); `None` is the empty field a 2.6
    /// `--mode server` sends.
    pub peer_info: Option<String>,
}

impl Drop for KeyMethod2 {
    fn drop(&mut self) {
        if let Some(pre_master) = &mut self.pre_master {
            pre_master.zeroize();
        }
        self.random1.zeroize();
        self.random2.zeroize();
        if let Some(password) = &mut self.password {
            password.zeroize();
        }
    }
}

impl fmt::Debug for KeyMethod2 {
    /// Leaves out the secrets, so the struct can be logged.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("KeyMethod2")
            .field(
                "pre_master",
                &self.pre_master.as_ref().map(|_| "<48 bytes>"),
            )
            .field("options", &self.options)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("peer_info", &self.peer_info)
            .finish_non_exhaustive()
    }
}

/// Which string field of the message an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The OCC options string.
    Options,
    /// The user name.
    Username,
    /// The password.
    Password,
    /// The peer-info string.
    PeerInfo,
}

impl fmt::Display for Field {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Field::Options => "options string",
            Field::Username => "username",
            Field::Password => "password",
            Field::PeerInfo => "peer-info",
        })
    }
}

/// Why a key-method 2 message cannot be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyMethodError {
    /// The bytes so far are a valid prefix; wait for more TLS plaintext.
    #[error("key-method 2 message incomplete; more TLS plaintext needed")]
    Incomplete,
    /// The key-method byte is not 2 (key method 1 was removed in OpenVPN 2.5).
    #[error("unsupported key method {found} (flags byte 0x{byte:02x}); only key method 2 exists in OpenVPN 2.5+")]
    UnsupportedKeyMethod {
        /// The low nibble.
        found: u8,
        /// The whole byte.
        byte: u8,
    },
    /// The leading u32 is not zero (it was the key-method 1 marker slot).
    #[error("key-method 2 message must start with four zero bytes, found {found:#010x}")]
    BadPrefix {
        /// What was there instead.
        found: u32,
    },
    /// A string field is not UTF-8.
    #[error("the {field} in the key-method 2 message is not valid UTF-8")]
    NotUtf8 {
        /// Which field.
        field: Field,
    },
    /// A string is too long to encode (or, for options, for a 2.6 peer to accept).
    #[error("the {field} is {length} bytes; at most {max} fit")]
    TooLong {
        /// Which field.
        field: Field,
        /// Its length in bytes, without NUL.
        length: usize,
        /// The largest allowed length, without NUL.
        max: usize,
    },
    /// A string to encode contains a NUL, where the peer would cut it.
    #[error("the {field} contains a NUL byte")]
    ContainsNul {
        /// Which field.
        field: Field,
    },
    /// `pre_master` is present or absent against the sender's TLS role.
    #[error("pre_master must be present exactly when the sender is the TLS client")]
    PreMasterMismatch,
}

impl KeyMethod2 {
    /// Appends the wire form to `out`. Fails (writing nothing) if a string is too long: the
    /// options string beyond [`MAX_OPTIONS_LEN`] (a 2.6 peer would drop us), any other
    /// beyond the u16 length field, or a string contains a NUL (the peer would cut it there).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), KeyMethodError> {
        let strings = [
            (Field::Options, Some(self.options.as_str())),
            (Field::Username, self.username.as_deref()),
            (Field::Password, self.password.as_deref()),
            (Field::PeerInfo, self.peer_info.as_deref()),
        ];
        for (field, value) in strings {
            let Some(value) = value else { continue };
            let max = match field {
                Field::Options => MAX_OPTIONS_LEN - 1,
                _ => usize::from(u16::MAX) - 1,
            };
            if value.len() > max {
                return Err(KeyMethodError::TooLong {
                    field,
                    length: value.len(),
                    max,
                });
            }
            if value.contains('\0') {
                return Err(KeyMethodError::ContainsNul { field });
            }
        }
        out.extend_from_slice(&0u32.to_be_bytes());
        out.push(KEY_METHOD_2);
        if let Some(pre_master) = &self.pre_master {
            out.extend_from_slice(pre_master);
        }
        out.extend_from_slice(&self.random1);
        out.extend_from_slice(&self.random2);
        for (_, value) in strings {
            write_string(out, value);
        }
        Ok(())
    }

    /// Reads one message from the start of `bytes`, returning it and the number of bytes it
    /// took (a client's `PUSH_REQUEST` may follow in the same plaintext).
    /// `from_tls_client`: whether the sender is the TLS client (then `pre_master` is there).
    pub fn decode(
        bytes: &[u8],
        from_tls_client: bool,
    ) -> Result<(KeyMethod2, usize), KeyMethodError> {
        let mut reader = Reader { bytes, at: 0 };
        let prefix = u32::from_be_bytes(reader.array::<4>()?);
        let method_byte = reader.array::<1>()?[0];
        if method_byte & KEY_METHOD_MASK != KEY_METHOD_2 {
            return Err(KeyMethodError::UnsupportedKeyMethod {
                found: method_byte & KEY_METHOD_MASK,
                byte: method_byte,
            });
        }
        // OpenVPN skips these four bytes unread; we insist on zero to catch misframed input
        // early, but only after the key method so a key-method-1 peer gets the clearer error.
        if prefix != 0 {
            return Err(KeyMethodError::BadPrefix { found: prefix });
        }
        let mut message = KeyMethod2 {
            pre_master: None,
            random1: [0; RANDOM_BYTES],
            random2: [0; RANDOM_BYTES],
            options: String::new(),
            username: None,
            password: None,
            peer_info: None,
        };
        if from_tls_client {
            message.pre_master = Some(reader.array()?);
        }
        message.random1 = reader.array()?;
        message.random2 = reader.array()?;
        message.options = reader.string(Field::Options)?.unwrap_or_default();
        message.username = reader.string(Field::Username)?;
        message.password = reader.string(Field::Password)?;
        message.peer_info = reader.string(Field::PeerInfo)?;
        Ok((message, reader.at))
    }

    /// Checks that `pre_master` matches the sender's role before sending.
    pub fn check_role(&self, from_tls_client: bool) -> Result<(), KeyMethodError> {
        if self.pre_master.is_some() == from_tls_client {
            Ok(())
        } else {
            Err(KeyMethodError::PreMasterMismatch)
        }
    }
}

/// `None` is the empty field (length 0); `Some(s)` is length `s.len() + 1`, `s`, NUL.
fn write_string(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        None => out.extend_from_slice(&0u16.to_be_bytes()),
        Some(value) => {
            // encode() checked the length, so this never saturates.
            let length = u16::try_from(value.len() + 1).unwrap_or(u16::MAX);
            out.extend_from_slice(&length.to_be_bytes());
            out.extend_from_slice(value.as_bytes());
            out.push(0);
        }
    }
}

/// A cursor over a plaintext prefix that reports running out as `Incomplete`.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, count: usize) -> Result<&[u8], KeyMethodError> {
        let end = self
            .at
            .checked_add(count)
            .ok_or(KeyMethodError::Incomplete)?;
        let taken = self
            .bytes
            .get(self.at..end)
            .ok_or(KeyMethodError::Incomplete)?;
        self.at = end;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], KeyMethodError> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    /// Like ssl.c `read_string`: the value is what precedes the first NUL among the `length`
    /// bytes (OpenVPN overwrites the last byte with NUL and reads a C string).
    fn string(&mut self, field: Field) -> Result<Option<String>, KeyMethodError> {
        let length = usize::from(u16::from_be_bytes(self.array()?));
        if length == 0 {
            return Ok(None);
        }
        let raw = self.take(length)?;
        let without_last = raw.get(..length - 1).unwrap_or_default();
        let value = without_last
            .split(|&byte| byte == 0)
            .next()
            .unwrap_or_default();
        let value = std::str::from_utf8(value).map_err(|_| KeyMethodError::NotUtf8 { field })?;
        Ok(Some(value.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What a 2.6.14 `--client` sends (options and peer-info captured from `--verb 7` logs of
    /// the real binary, see options.rs fixtures); randoms are made up.
    fn client_message() -> KeyMethod2 {
        KeyMethod2 {
            pre_master: Some([0x11; 48]),
            random1: [0x22; 32],
            random2: [0x33; 32],
            options: "V4,dev-type tun,link-mtu 1541,tun-mtu 1500,proto UDPv4,auth SHA1,keysize 128,key-method 2,tls-client".into(),
            username: None,
            password: None,
            peer_info: Some("IV_VER=2.6.14\nIV_PLAT=linux\nIV_TCPNL=1\nIV_MTU=1600\nIV_NCP=2\nIV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305\nIV_PROTO=990\n".into()),
        }
    }

    /// The exact bytes, built by hand from the layout in ssl.c.
    fn client_bytes(message: &KeyMethod2) -> Vec<u8> {
        let mut bytes = vec![0, 0, 0, 0, 2];
        bytes.extend_from_slice(&[0x11; 48]);
        bytes.extend_from_slice(&[0x22; 32]);
        bytes.extend_from_slice(&[0x33; 32]);
        let options = message.options.as_bytes();
        bytes.extend_from_slice(&(options.len() as u16 + 1).to_be_bytes());
        bytes.extend_from_slice(options);
        bytes.push(0);
        bytes.extend_from_slice(&[0, 0, 0, 0]); // no username, no password
        let peer_info = message.peer_info.as_deref().unwrap().as_bytes();
        bytes.extend_from_slice(&(peer_info.len() as u16 + 1).to_be_bytes());
        bytes.extend_from_slice(peer_info);
        bytes.push(0);
        bytes
    }

    #[test]
    fn client_message_has_the_documented_layout() {
        let message = client_message();
        let mut encoded = Vec::new();
        message.encode(&mut encoded).unwrap();
        assert_eq!(encoded, client_bytes(&message));
        assert_eq!(&encoded[..5], &[0, 0, 0, 0, 2]);
        // 5 + 48 + 64, then the options length (the options string is 100 bytes + NUL).
        assert_eq!(&encoded[117..119], &[0, 101]);
        let (decoded, consumed) = KeyMethod2::decode(&encoded, true).unwrap();
        assert_eq!(decoded, message);
        assert_eq!(consumed, encoded.len());
    }

    #[test]
    fn server_message_has_no_pre_master_and_may_have_no_peer_info() {
        // A 2.6 `--mode server` sends no peer info at all (push_peer_info_detail 0).
        let message = KeyMethod2 {
            pre_master: None,
            random1: [1; 32],
            random2: [2; 32],
            options: "V4,dev-type tun,link-mtu 1541,tun-mtu 1500,proto UDPv4,auth SHA1,keysize 128,key-method 2,tls-server".into(),
            username: None,
            password: None,
            peer_info: None,
        };
        let mut encoded = Vec::new();
        message.encode(&mut encoded).unwrap();
        assert_eq!(encoded.len(), 5 + 64 + 2 + message.options.len() + 1 + 6);
        assert_eq!(&encoded[encoded.len() - 6..], &[0; 6]);
        let (decoded, consumed) = KeyMethod2::decode(&encoded, false).unwrap();
        assert_eq!(decoded, message);
        assert_eq!(consumed, encoded.len());
    }

    #[test]
    fn absent_and_empty_strings_differ_on_the_wire() {
        let mut message = client_message();
        message.username = Some(String::new());
        message.password = Some("secret".into());
        let mut encoded = Vec::new();
        message.encode(&mut encoded).unwrap();
        let options_end = 117 + 2 + message.options.len() + 1;
        assert_eq!(&encoded[options_end..options_end + 3], &[0, 1, 0]);
        assert_eq!(
            &encoded[options_end + 3..options_end + 12],
            b"\x00\x07secret\x00"
        );
        let (decoded, _) = KeyMethod2::decode(&encoded, true).unwrap();
        assert_eq!(decoded.username.as_deref(), Some(""));
        assert_eq!(decoded.password.as_deref(), Some("secret"));
    }

    #[test]
    fn trailing_data_is_left_for_the_caller() {
        let message = client_message();
        let mut encoded = Vec::new();
        message.encode(&mut encoded).unwrap();
        let length = encoded.len();
        encoded.extend_from_slice(b"PUSH_REQUEST\0");
        let (_, consumed) = KeyMethod2::decode(&encoded, true).unwrap();
        assert_eq!(consumed, length);
        assert_eq!(&encoded[consumed..], b"PUSH_REQUEST\0");
    }

    #[test]
    fn every_proper_prefix_is_incomplete() {
        let message = client_message();
        let mut encoded = Vec::new();
        message.encode(&mut encoded).unwrap();
        for end in 0..encoded.len() {
            assert_eq!(
                KeyMethod2::decode(&encoded[..end], true),
                Err(KeyMethodError::Incomplete),
                "prefix of {end} bytes"
            );
        }
        assert!(KeyMethod2::decode(&encoded, true).is_ok());
    }

    #[test]
    fn string_is_cut_at_the_first_nul_like_openvpn() {
        let mut bytes = vec![0, 0, 0, 0, 2];
        bytes.extend_from_slice(&[0; 64]);
        bytes.extend_from_slice(&[0, 5]);
        bytes.extend_from_slice(b"V4\0xy"); // last byte is not NUL: OpenVPN overwrites it
        bytes.extend_from_slice(&[0, 3]);
        bytes.extend_from_slice(b"abc");
        bytes.extend_from_slice(&[0, 0, 0, 0]);
        let (decoded, consumed) = KeyMethod2::decode(&bytes, false).unwrap();
        assert_eq!(decoded.options, "V4");
        assert_eq!(decoded.username.as_deref(), Some("ab"));
        assert_eq!(consumed, bytes.len());
    }

    #[test]
    fn errors_are_specific() {
        let mut bytes = vec![0, 0, 0, 0, 1];
        bytes.extend_from_slice(&[0; 200]);
        assert_eq!(
            KeyMethod2::decode(&bytes, false),
            Err(KeyMethodError::UnsupportedKeyMethod { found: 1, byte: 1 })
        );
        bytes[4] = 2;
        bytes[3] = 9;
        assert_eq!(
            KeyMethod2::decode(&bytes, false),
            Err(KeyMethodError::BadPrefix { found: 9 })
        );
        let mut bytes = vec![0, 0, 0, 0, 2];
        bytes.extend_from_slice(&[0; 64]);
        bytes.extend_from_slice(&[0, 3, 0xff, 0xfe, 0]);
        bytes.extend_from_slice(&[0; 6]);
        assert_eq!(
            KeyMethod2::decode(&bytes, false),
            Err(KeyMethodError::NotUtf8 {
                field: Field::Options
            })
        );
        let mut message = client_message();
        message.options = "x".repeat(MAX_OPTIONS_LEN);
        let mut out = Vec::new();
        assert!(matches!(
            message.encode(&mut out),
            Err(KeyMethodError::TooLong {
                field: Field::Options,
                max: 511,
                ..
            })
        ));
        assert!(out.is_empty(), "a failed encode must write nothing");
        message.options = "V4\0".into();
        assert_eq!(
            message.encode(&mut out),
            Err(KeyMethodError::ContainsNul {
                field: Field::Options
            })
        );
        assert_eq!(
            message.check_role(false),
            Err(KeyMethodError::PreMasterMismatch)
        );
        assert_eq!(message.check_role(true), Ok(()));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let mut message = client_message();
        message.password = Some("hunter2".into());
        let shown = format!("{message:?}");
        assert!(!shown.contains("hunter2"));
        assert!(!shown.contains("17, 17")); // 0x11 bytes of pre_master
    }

    fn arbitrary_message() -> impl Strategy<Value = KeyMethod2> {
        let text = "[ -~\n]{0,40}";
        (
            any::<bool>(),
            any::<[u8; 32]>(),
            text,
            proptest::option::of(text),
            proptest::option::of(text),
            proptest::option::of(text),
        )
            .prop_map(|(client, random, options, username, password, peer_info)| {
                KeyMethod2 {
                    pre_master: client.then_some([7; 48]),
                    random1: random,
                    random2: [9; 32],
                    options,
                    username,
                    password,
                    peer_info,
                }
            })
    }

    proptest! {
        #[test]
        fn round_trips(message in arbitrary_message()) {
            let mut encoded = Vec::new();
            message.encode(&mut encoded).unwrap();
            let from_client = message.pre_master.is_some();
            let (decoded, consumed) = KeyMethod2::decode(&encoded, from_client).unwrap();
            prop_assert_eq!(&decoded, &message);
            prop_assert_eq!(consumed, encoded.len());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), client: bool) {
            if let Ok((_, consumed)) = KeyMethod2::decode(&bytes, client) {
                prop_assert!(consumed <= bytes.len());
            }
        }
    }
}
