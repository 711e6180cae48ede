//! tls-crypt (v1): control packets encrypted with AES-256-CTR and authenticated with
//! HMAC-SHA256 in a SIV construction, keyed from a static key.
//!
//! Wire layout (draft section "Encrypting control channel packets (tls-crypt)"; tls_crypt.c
//! `tls_crypt_wrap`, `tls_crypt_unwrap`):
//!
//! ```text
//! op|key_id (1) | own session id (8) | packet id (4) | time (4) | tag (32) | ciphertext
//! ```
//!
//! * `tag = HMAC-SHA256(Ka, op|key_id | session id | packet id | time | plaintext)`, where the
//!   plaintext is the rest of the control packet (ack count, acks, peer session id, message id,
//!   TLS payload);
//! * `ciphertext = AES-256-CTR(Ke, IV = first 16 bytes of tag, plaintext)`, a 128-bit big-endian
//!   counter over the whole IV (OpenSSL's CTR mode).
//!
//! `Ke` is the first 32 bytes of a cipher slot, `Ka` the first 32 bytes of an HMAC slot. The
//! direction is fixed by the TLS role: the TLS server uses key direction 0, the TLS client key
//! direction 1 (tls_crypt.c `tls_crypt_init_key`), so the client sends with key 1.
//!
//! Because the tag is computed over the plaintext, unwrapping has to decrypt before it can
//! authenticate. CTR decryption is harmless on forged input; the plaintext is released only after
//! the tag verified and is wiped from the caller's buffer otherwise.
use aes::Aes256;
use ctr::cipher::{KeyIvInit, StreamCipher};
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroize;

use super::control_replay::{ReplayId, REPLAY_ID_LEN};
use super::keys::{tls_crypt_direction, DirectionKeys, StaticKey, KEY_SLOT_BYTES};
use super::packet::CONTROL_HEADER_LEN;
use super::vocabulary::TlsRole;

/// Length of the tls-crypt authentication tag (HMAC-SHA256).
pub const TAG_LEN: usize = 32;
/// Bytes tls-crypt adds to a control packet: replay id and tag.
pub const OVERHEAD: usize = REPLAY_ID_LEN + TAG_LEN;

const CIPHER_KEY_LEN: usize = 32;
const IV_LEN: usize = 16;

type Aes256Ctr = ctr::Ctr128BE<Aes256>;

/// Why a tls-crypt packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TlsCryptError {
    /// Shorter than header, replay id and tag.
    #[error("tls-crypt packet of {len} bytes is shorter than the minimum of {min}")]
    TooShort {
        /// The packet length.
        len: usize,
        /// Header + replay id + tag.
        min: usize,
    },
    /// The tag does not match: another key, the wrong role, or a modified packet. A server
    /// stays silent on this (that is the point of tls-crypt).
    #[error("tls-crypt authentication failed (wrong key or role, or a modified packet)")]
    Unauthenticated,
}

/// The clear parts of a tls-crypt packet whose tag verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsCryptHeader<'a> {
    /// `op|key_id` and the sender's session id.
    pub header: &'a [u8; CONTROL_HEADER_LEN],
    /// The replay id to check against the session's [`ControlReplayWindow`].
    ///
    /// [`ControlReplayWindow`]: super::control_replay::ControlReplayWindow
    pub replay_id: ReplayId,
}

/// One direction's keys, wiped on drop.
struct DirectionKey {
    cipher: [u8; CIPHER_KEY_LEN],
    /// The 32-byte HMAC key zero-padded to SHA-256's 64-byte block (same MAC, see tls_auth.rs).
    hmac: [u8; KEY_SLOT_BYTES],
}

impl DirectionKey {
    fn new(keys: DirectionKeys<'_>) -> Self {
        let mut cipher = [0u8; CIPHER_KEY_LEN];
        for (target, source) in cipher.iter_mut().zip(keys.cipher.iter()) {
            *target = *source;
        }
        let mut hmac = [0u8; KEY_SLOT_BYTES];
        for (target, source) in hmac.iter_mut().zip(keys.hmac.iter()).take(TAG_LEN) {
            *target = *source;
        }
        Self { cipher, hmac }
    }

    fn tag(&self, header: &[u8], replay_id: &[u8], plaintext: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new((&self.hmac).into());
        mac.update(header);
        mac.update(replay_id);
        mac.update(plaintext);
        mac
    }

    fn apply_keystream(&self, iv: &[u8; IV_LEN], data: &mut [u8]) {
        let mut cipher = Aes256Ctr::new((&self.cipher).into(), iv.into());
        cipher.apply_keystream(data);
    }
}

impl Drop for DirectionKey {
    fn drop(&mut self) {
        self.cipher.zeroize();
        self.hmac.zeroize();
    }
}

/// tls-crypt v1 for one side: send and receive keys chosen by the TLS role.
pub struct TlsCrypt {
    send: DirectionKey,
    receive: DirectionKey,
}

impl std::fmt::Debug for TlsCrypt {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("TlsCrypt { .. }")
    }
}

impl TlsCrypt {
    /// Keys from `key` for the side playing TLS `role` (`tls-server` or `tls-client`).
    pub fn new(key: &StaticKey, role: TlsRole) -> Self {
        let direction = Some(tls_crypt_direction(role));
        Self {
            send: DirectionKey::new(key.send_keys(direction)),
            receive: DirectionKey::new(key.receive_keys(direction)),
        }
    }

    /// Appends the wrapped packet `header | replay id | tag | ciphertext` to `out`.
    pub fn wrap(
        &self,
        header: &[u8; CONTROL_HEADER_LEN],
        replay_id: ReplayId,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) {
        let replay_bytes = replay_id.to_bytes();
        let tag = self
            .send
            .tag(header, &replay_bytes, plaintext)
            .finalize()
            .into_bytes();
        let mut iv = [0u8; IV_LEN];
        for (target, source) in iv.iter_mut().zip(tag.iter()) {
            *target = *source;
        }
        out.reserve(CONTROL_HEADER_LEN + OVERHEAD + plaintext.len());
        out.extend_from_slice(header);
        out.extend_from_slice(&replay_bytes);
        out.extend_from_slice(&tag);
        let start = out.len();
        out.extend_from_slice(plaintext);
        if let Some(body) = out.get_mut(start..) {
            self.send.apply_keystream(&iv, body);
        }
    }

    /// Decrypts and authenticates a received packet. On success the plaintext (ack count, acks,
    /// peer session id, message id, payload) is appended to `plaintext` and the clear header is
    /// returned; on failure `plaintext` is left as it was. Replay is not checked here: pass
    /// [`TlsCryptHeader::replay_id`] to the session's window.
    pub fn unwrap<'a>(
        &self,
        packet: &'a [u8],
        plaintext: &mut Vec<u8>,
    ) -> Result<TlsCryptHeader<'a>, TlsCryptError> {
        let too_short = TlsCryptError::TooShort {
            len: packet.len(),
            min: CONTROL_HEADER_LEN + OVERHEAD,
        };
        let (header, rest) = packet
            .split_first_chunk::<CONTROL_HEADER_LEN>()
            .ok_or(too_short)?;
        let (replay_bytes, rest) = rest.split_first_chunk::<REPLAY_ID_LEN>().ok_or(too_short)?;
        let (tag, ciphertext) = rest.split_first_chunk::<TAG_LEN>().ok_or(too_short)?;
        let (iv, _) = tag.split_first_chunk::<IV_LEN>().ok_or(too_short)?;

        let start = plaintext.len();
        plaintext.extend_from_slice(ciphertext);
        let authentic = match plaintext.get_mut(start..) {
            Some(decrypted) => {
                self.receive.apply_keystream(iv, decrypted);
                self.receive
                    .tag(header, replay_bytes, decrypted)
                    .verify_slice(tag)
                    .is_ok()
            }
            None => false,
        };
        if !authentic {
            if let Some(decrypted) = plaintext.get_mut(start..) {
                decrypted.zeroize();
            }
            plaintext.truncate(start);
            return Err(TlsCryptError::Unauthenticated);
        }
        Ok(TlsCryptHeader {
            header,
            replay_id: ReplayId::from_bytes(*replay_bytes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::keys::tests::counting_key;

    const HEADER: [u8; CONTROL_HEADER_LEN] = [0x38, 1, 2, 3, 4, 5, 6, 7, 8];
    const PLAINTEXT: &[u8] = b"\x00\x00\x00\x00\x00hello, tls-crypt";
    const REPLAY: ReplayId = ReplayId {
        packet_id: 1,
        time: 0x6543_2100,
    };

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    fn wrapped(crypt: &TlsCrypt) -> Vec<u8> {
        let mut out = Vec::new();
        crypt.wrap(&HEADER, REPLAY, PLAINTEXT, &mut out);
        out
    }

    /// Known answer for the client side (key direction 1 sends with key 1: cipher key = bytes
    /// 128..160 = 80..9f, HMAC key = bytes 192..224 = c0..df of the counting key), computed
    /// independently with OpenSSL:
    ///
    /// ```text
    /// # tag over header | replay id | plaintext
    /// printf 3801020304050607080000000165432100000000000068656c6c6f2c20746c732d6372797074 |
    ///   xxd -r -p | openssl dgst -sha256 -mac HMAC \
    ///   -macopt hexkey:c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf
    /// # => 9cfc4697eea6484b454565aade7392c9380bea0096fdbeafd5c24f1697ea3cf4
    /// # ciphertext: AES-256-CTR, IV = the first 16 bytes of the tag
    /// printf 000000000068656c6c6f2c20746c732d6372797074 | xxd -r -p |
    ///   openssl enc -aes-256-ctr \
    ///   -K 808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f \
    ///   -iv 9cfc4697eea6484b454565aade7392c9 | xxd -p
    /// # => 08f62386ac9c11b07744a11d3a6b2d6f678b446325
    /// ```
    #[test]
    fn client_wrap_matches_openssl() {
        let key = counting_key();
        let client = TlsCrypt::new(&key, TlsRole::Client);
        assert_eq!(hex(&wrapped(&client)), KNOWN_CLIENT_PACKET);
    }

    const KNOWN_CLIENT_PACKET: &str = concat!(
        "380102030405060708",
        "0000000165432100",
        "9cfc4697eea6484b454565aade7392c9380bea0096fdbeafd5c24f1697ea3cf4",
        "08f62386ac9c11b07744a11d3a6b2d6f678b446325",
    );

    #[test]
    fn round_trip_between_client_and_server() {
        let key = counting_key();
        let client = TlsCrypt::new(&key, TlsRole::Client);
        let server = TlsCrypt::new(&key, TlsRole::Server);
        let packet = wrapped(&client);
        assert_eq!(
            packet.len(),
            CONTROL_HEADER_LEN + OVERHEAD + PLAINTEXT.len()
        );
        // The ciphertext does not show the plaintext.
        assert!(!packet
            .windows(PLAINTEXT.len())
            .any(|window| window == PLAINTEXT));
        let mut plaintext = Vec::new();
        let opened = server.unwrap(&packet, &mut plaintext).unwrap();
        assert_eq!(opened.header, &HEADER);
        assert_eq!(opened.replay_id, REPLAY);
        assert_eq!(plaintext, PLAINTEXT);

        let mut reply = Vec::new();
        server.wrap(&HEADER, REPLAY, b"reply", &mut reply);
        plaintext.clear();
        client.unwrap(&reply, &mut plaintext).unwrap();
        assert_eq!(plaintext, b"reply");

        // Empty plaintext works too.
        let mut empty = Vec::new();
        client.wrap(&HEADER, REPLAY, &[], &mut empty);
        plaintext.clear();
        server.unwrap(&empty, &mut plaintext).unwrap();
        assert!(plaintext.is_empty());
    }

    #[test]
    fn same_role_or_wrong_key_is_unauthenticated() {
        let key = counting_key();
        let client = TlsCrypt::new(&key, TlsRole::Client);
        let packet = wrapped(&client);
        let mut plaintext = vec![1, 2, 3];
        // A client cannot open a client's packet: it receives with the other key.
        assert_eq!(
            client.unwrap(&packet, &mut plaintext),
            Err(TlsCryptError::Unauthenticated)
        );
        assert_eq!(plaintext, [1, 2, 3]);
        let other = StaticKey::from_bytes([0x42; 256]);
        let stranger = TlsCrypt::new(&other, TlsRole::Server);
        assert_eq!(
            stranger.unwrap(&packet, &mut plaintext),
            Err(TlsCryptError::Unauthenticated)
        );
        assert_eq!(plaintext, [1, 2, 3]);
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let key = counting_key();
        let client = TlsCrypt::new(&key, TlsRole::Client);
        let server = TlsCrypt::new(&key, TlsRole::Server);
        let packet = wrapped(&client);
        let mut plaintext = Vec::new();
        for bit in 0..packet.len() * 8 {
            let mut flipped = packet.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                server.unwrap(&flipped, &mut plaintext),
                Err(TlsCryptError::Unauthenticated),
                "bit {bit}"
            );
            assert!(plaintext.is_empty());
        }
    }

    #[test]
    fn short_packets_are_refused() {
        let key = counting_key();
        let server = TlsCrypt::new(&key, TlsRole::Server);
        let packet = wrapped(&TlsCrypt::new(&key, TlsRole::Client));
        let mut plaintext = Vec::new();
        for len in 0..CONTROL_HEADER_LEN + OVERHEAD {
            assert_eq!(
                server.unwrap(&packet[..len], &mut plaintext),
                Err(TlsCryptError::TooShort { len, min: 49 })
            );
        }
        // Cutting off ciphertext bytes changes the authenticated plaintext.
        assert_eq!(
            server.unwrap(&packet[..packet.len() - 1], &mut plaintext),
            Err(TlsCryptError::Unauthenticated)
        );
    }
}
