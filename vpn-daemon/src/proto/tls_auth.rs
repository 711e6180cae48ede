//! tls-auth: an HMAC on every control packet, keyed from a static key.
//!
//! Wire layout (draft section "HMAC authentication of control channel packets"; ssl_pkt.c
//! `tls_wrap_control` + `swap_hmac`):
//!
//! ```text
//! op|key_id (1) | own session id (8) | HMAC (20 or 32) | packet id (4) | time (4) | body
//! ```
//!
//! where `body` is the rest of the control packet (ack count, acks, peer session id, message
//! id, TLS payload). The HMAC covers `packet id | time | op|key_id | session id | body`: OpenVPN
//! computes it as its static-key data-channel HMAC over `replay id | header | body` and then moves
//! header and HMAC around (`swap_hmac`). The HMAC key is the first digest-length bytes of the
//! HMAC slot the key direction selects (crypto.c `init_key_ctx`, `hmac_ctx_init`).
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;
use zeroize::Zeroize;

use super::control_replay::{ReplayId, REPLAY_ID_LEN};
use super::keys::{DirectionKeys, StaticKey, KEY_SLOT_BYTES};
use super::packet::CONTROL_HEADER_LEN;
use super::vocabulary::{KeyDirection, TlsAuthDigest};

/// HMAC output length of a tls-auth digest.
pub fn digest_len(digest: TlsAuthDigest) -> usize {
    match digest {
        TlsAuthDigest::Sha1 => 20,
        TlsAuthDigest::Sha256 => 32,
    }
}

/// Why a tls-auth packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TlsAuthError {
    /// Shorter than header, HMAC and replay id.
    #[error("tls-auth packet of {len} bytes is shorter than the minimum of {min}")]
    TooShort {
        /// The packet length.
        len: usize,
        /// Header + HMAC + replay id.
        min: usize,
    },
    /// The HMAC does not match: another key, a wrong key direction or a modified packet.
    #[error("tls-auth HMAC mismatch (wrong key or key direction, or a modified packet)")]
    Unauthenticated,
}

/// A tls-auth packet whose HMAC verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsAuthPacket<'a> {
    /// `op|key_id` and the sender's session id.
    pub header: &'a [u8; CONTROL_HEADER_LEN],
    /// The replay id to check against the session's [`ControlReplayWindow`].
    ///
    /// [`ControlReplayWindow`]: super::control_replay::ControlReplayWindow
    pub replay_id: ReplayId,
    /// Everything after the replay id.
    pub body: &'a [u8],
}

/// An HMAC key zero-padded to the 64-byte block of SHA-1 and SHA-256. HMAC pads short keys with
/// zeros itself (RFC 2104), so the padded key gives the same MAC as the short one and lets us
/// build the MAC without a fallible length check.
struct PaddedHmacKey([u8; KEY_SLOT_BYTES]);

impl PaddedHmacKey {
    fn new(slot: &[u8; KEY_SLOT_BYTES], len: usize) -> Self {
        let mut padded = [0u8; KEY_SLOT_BYTES];
        for (target, source) in padded.iter_mut().zip(slot.iter()).take(len) {
            *target = *source;
        }
        Self(padded)
    }
}

impl Drop for PaddedHmacKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// The HMAC of `parts`, concatenated, under `key` with `digest`.
enum Tag {
    Sha1(Hmac<Sha1>),
    Sha256(Hmac<Sha256>),
}

impl Tag {
    fn new(digest: TlsAuthDigest, key: &PaddedHmacKey) -> Self {
        match digest {
            TlsAuthDigest::Sha1 => Tag::Sha1(Hmac::new((&key.0).into())),
            TlsAuthDigest::Sha256 => Tag::Sha256(Hmac::new((&key.0).into())),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Tag::Sha1(mac) => mac.update(data),
            Tag::Sha256(mac) => mac.update(data),
        }
    }

    fn append_to(self, out: &mut Vec<u8>) {
        match self {
            Tag::Sha1(mac) => out.extend_from_slice(&mac.finalize().into_bytes()),
            Tag::Sha256(mac) => out.extend_from_slice(&mac.finalize().into_bytes()),
        }
    }

    /// Constant-time comparison (hmac's `verify_slice` uses `subtle`).
    fn verify(self, expected: &[u8]) -> bool {
        match self {
            Tag::Sha1(mac) => mac.verify_slice(expected).is_ok(),
            Tag::Sha256(mac) => mac.verify_slice(expected).is_ok(),
        }
    }
}

/// tls-auth for one session: the send and receive HMAC keys and the digest.
pub struct TlsAuth {
    digest: TlsAuthDigest,
    send_key: PaddedHmacKey,
    receive_key: PaddedHmacKey,
}

impl std::fmt::Debug for TlsAuth {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TlsAuth")
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl TlsAuth {
    /// Keys from `key` under OpenVPN `key-direction` `direction` (`None`: both ways key 0).
    pub fn new(key: &StaticKey, direction: Option<KeyDirection>, digest: TlsAuthDigest) -> Self {
        let hmac_key = |keys: DirectionKeys<'_>| PaddedHmacKey::new(keys.hmac, digest_len(digest));
        Self {
            digest,
            send_key: hmac_key(key.send_keys(direction)),
            receive_key: hmac_key(key.receive_keys(direction)),
        }
    }

    /// Bytes tls-auth adds to a control packet: HMAC and replay id.
    pub fn overhead(&self) -> usize {
        digest_len(self.digest) + REPLAY_ID_LEN
    }

    /// Appends the wrapped packet `header | HMAC | replay id | body` to `out`.
    pub fn wrap(
        &self,
        header: &[u8; CONTROL_HEADER_LEN],
        replay_id: ReplayId,
        body: &[u8],
        out: &mut Vec<u8>,
    ) {
        let replay_bytes = replay_id.to_bytes();
        let mut tag = Tag::new(self.digest, &self.send_key);
        tag.update(&replay_bytes);
        tag.update(header);
        tag.update(body);
        out.reserve(CONTROL_HEADER_LEN + self.overhead() + body.len());
        out.extend_from_slice(header);
        tag.append_to(out);
        out.extend_from_slice(&replay_bytes);
        out.extend_from_slice(body);
    }

    /// Verifies the HMAC of a received packet (constant time) and splits it. Replay is not
    /// checked here: pass the returned [`TlsAuthPacket::replay_id`] to the session's window.
    pub fn unwrap<'a>(&self, packet: &'a [u8]) -> Result<TlsAuthPacket<'a>, TlsAuthError> {
        let too_short = TlsAuthError::TooShort {
            len: packet.len(),
            min: CONTROL_HEADER_LEN + self.overhead(),
        };
        let (header, rest) = packet
            .split_first_chunk::<CONTROL_HEADER_LEN>()
            .ok_or(too_short)?;
        let (received_tag, rest) = rest
            .split_at_checked(digest_len(self.digest))
            .ok_or(too_short)?;
        let (replay_bytes, body) = rest.split_first_chunk::<REPLAY_ID_LEN>().ok_or(too_short)?;
        let mut tag = Tag::new(self.digest, &self.receive_key);
        tag.update(replay_bytes);
        tag.update(header);
        tag.update(body);
        if !tag.verify(received_tag) {
            return Err(TlsAuthError::Unauthenticated);
        }
        Ok(TlsAuthPacket {
            header,
            replay_id: ReplayId::from_bytes(*replay_bytes),
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::keys::tests::counting_key;

    const HEADER: [u8; CONTROL_HEADER_LEN] = [0x38, 1, 2, 3, 4, 5, 6, 7, 8];
    const BODY: &[u8] = &[0x00, 0x00, 0x00, 0x00, 0x00];
    const REPLAY: ReplayId = ReplayId {
        packet_id: 1,
        time: 0x6543_2100,
    };

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    fn wrapped(auth: &TlsAuth) -> Vec<u8> {
        let mut out = Vec::new();
        auth.wrap(&HEADER, REPLAY, BODY, &mut out);
        out
    }

    /// Known answers, computed independently with OpenSSL over the bytes the HMAC covers
    /// (replay id | header | body = 00000001 65432100 3801020304050607 08 0000000000) and with
    /// the key direction 0 send key: HMAC slot 0 = bytes 64..128 of the counting key, so the
    /// SHA1 key is 404142…53 and the SHA256 key 404142…5f:
    ///
    /// ```text
    /// printf '00000001654321003801020304050607080000000000' | xxd -r -p |
    ///   openssl dgst -sha1 -mac HMAC -macopt hexkey:404142434445464748494a4b4c4d4e4f50515253
    /// printf '00000001654321003801020304050607080000000000' | xxd -r -p |
    ///   openssl dgst -sha256 -mac HMAC \
    ///   -macopt hexkey:404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f
    /// ```
    #[test]
    fn wrap_matches_openssl_hmac() {
        let key = counting_key();
        let sha1 = TlsAuth::new(&key, Some(KeyDirection::Normal), TlsAuthDigest::Sha1);
        assert_eq!(
            hex(&wrapped(&sha1)),
            format!(
                "{}{}{}{}",
                "380102030405060708",
                "afa86d59a563b23def160d939b5cbf3bf726e00c",
                "0000000165432100",
                "0000000000"
            )
        );
        let sha256 = TlsAuth::new(&key, Some(KeyDirection::Normal), TlsAuthDigest::Sha256);
        assert_eq!(
            hex(&wrapped(&sha256)),
            format!(
                "{}{}{}{}",
                "380102030405060708",
                "e3629e8aad09e192441aae0fbbd0e313ef7b44fc295edcfbaaaaa93c51a91e45",
                "0000000165432100",
                "0000000000"
            )
        );
    }

    #[test]
    fn round_trip_with_opposite_directions() {
        let key = counting_key();
        for digest in [TlsAuthDigest::Sha1, TlsAuthDigest::Sha256] {
            let server = TlsAuth::new(&key, Some(KeyDirection::Normal), digest);
            let client = TlsAuth::new(&key, Some(KeyDirection::Inverse), digest);
            let packet = wrapped(&server);
            assert_eq!(
                packet.len(),
                CONTROL_HEADER_LEN + server.overhead() + BODY.len()
            );
            let opened = client.unwrap(&packet).unwrap();
            assert_eq!(opened.header, &HEADER);
            assert_eq!(opened.replay_id, REPLAY);
            assert_eq!(opened.body, BODY);
            // The sender cannot open its own packet: it receives with the other half.
            assert_eq!(server.unwrap(&packet), Err(TlsAuthError::Unauthenticated));
            let mut reply = Vec::new();
            client.wrap(&HEADER, REPLAY, b"reply", &mut reply);
            assert_eq!(server.unwrap(&reply).unwrap().body, b"reply");
            assert_eq!(client.unwrap(&reply), Err(TlsAuthError::Unauthenticated));
        }
    }

    #[test]
    fn bidirectional_key_opens_its_own_packets() {
        let key = counting_key();
        let auth = TlsAuth::new(&key, None, TlsAuthDigest::Sha1);
        let packet = wrapped(&auth);
        assert_eq!(auth.unwrap(&packet).unwrap().body, BODY);
        let directed = TlsAuth::new(&key, Some(KeyDirection::Inverse), TlsAuthDigest::Sha1);
        // Direction 1 receives with key 0, which is what bidirectional sends with.
        assert_eq!(directed.unwrap(&packet).unwrap().body, BODY);
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let key = counting_key();
        let server = TlsAuth::new(&key, Some(KeyDirection::Normal), TlsAuthDigest::Sha1);
        let client = TlsAuth::new(&key, Some(KeyDirection::Inverse), TlsAuthDigest::Sha1);
        let packet = wrapped(&server);
        for bit in 0..packet.len() * 8 {
            let mut flipped = packet.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                client.unwrap(&flipped),
                Err(TlsAuthError::Unauthenticated),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn wrong_key_digest_or_length_is_refused() {
        let key = counting_key();
        let server = TlsAuth::new(&key, Some(KeyDirection::Normal), TlsAuthDigest::Sha1);
        let packet = wrapped(&server);
        let mut other_bytes = [0x55u8; 256];
        other_bytes[0] = 0;
        let other = StaticKey::from_bytes(other_bytes);
        let stranger = TlsAuth::new(&other, Some(KeyDirection::Inverse), TlsAuthDigest::Sha1);
        assert_eq!(stranger.unwrap(&packet), Err(TlsAuthError::Unauthenticated));
        // A SHA256 receiver reads a SHA1 packet's replay id and body as HMAC bytes.
        let sha256 = TlsAuth::new(&key, Some(KeyDirection::Inverse), TlsAuthDigest::Sha256);
        let mut long = Vec::new();
        server.wrap(&HEADER, REPLAY, &[0; 32], &mut long);
        assert_eq!(sha256.unwrap(&long), Err(TlsAuthError::Unauthenticated));
        assert_eq!(
            sha256.unwrap(&packet),
            Err(TlsAuthError::TooShort { len: 42, min: 49 })
        );
        let client = TlsAuth::new(&key, Some(KeyDirection::Inverse), TlsAuthDigest::Sha1);
        for len in 0..CONTROL_HEADER_LEN + client.overhead() {
            assert_eq!(
                client.unwrap(&packet[..len]),
                Err(TlsAuthError::TooShort { len, min: 37 })
            );
        }
        // An empty body is fine (ACK-less packets never have one, but the HMAC does not care).
        let mut empty = Vec::new();
        server.wrap(&HEADER, REPLAY, &[], &mut empty);
        assert_eq!(client.unwrap(&empty).unwrap().body, b"");
    }

    #[test]
    fn wrap_appends_to_the_buffer() {
        let key = counting_key();
        let auth = TlsAuth::new(&key, None, TlsAuthDigest::Sha1);
        let mut out = vec![0xaa, 0xbb];
        auth.wrap(&HEADER, REPLAY, BODY, &mut out);
        assert_eq!(&out[..2], &[0xaa, 0xbb]);
        assert_eq!(auth.unwrap(&out[2..]).unwrap().body, BODY);
    }
}
