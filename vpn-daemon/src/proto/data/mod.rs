//! The OpenVPN 2.6 AEAD data channel (non-epoch format), built for the packet path: no
//! allocation per packet, no locks, decryption in place.
//!
//! Wire format (crypto.c `openvpn_encrypt_aead` / `openvpn_decrypt_aead`, ssl.c
//! `tls_prepend_opcode_v1/v2`, `handle_data_channel_packet`):
//!
//! ```text
//! DATA_V1:  op|kid (1)                 | packet id (4) | tag (16) | ciphertext
//! DATA_V2:  op|kid (1) | peer id (3)   | packet id (4) | tag (16) | ciphertext
//! ```
//!
//! * nonce = packet id (big-endian) || 8-byte implicit IV (from the HMAC key slot);
//! * associated data = for `DATA_V2` the 4 header bytes and the packet id; for `DATA_V1` the
//!   packet id only (the V1 opcode byte is prepended after encryption and not authenticated);
//! * the plaintext is the compression-framed payload ([`CompressionFraming`]); the keepalive
//!   ping ([`PING_MAGIC`]) and OCC messages ([`OCC_MAGIC`]) travel the same way;
//! * the packet id starts at 1; the sender stops at 2^32 - 1 (no wrap in the short form) and
//!   OpenVPN renegotiates from [`PACKET_ID_WRAP_TRIGGER`] on (ssl.c, `packet_id_close_to_wrapping`);
//! * the receiver checks the replay window only after the tag verified ([`ReplayWindow`]).
//!
//! ring expects the tag after the ciphertext; OpenVPN puts it before. Sealing therefore
//! reserves the tag's place and writes it after `seal_in_place_separate_tag`; opening copies
//! the 16 tag bytes aside and uses `open_in_place_separate_tag`, so no payload byte moves.
mod compress;
mod replay;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ring::aead::{self, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use zeroize::Zeroize;

use self::compress::Unframed;
pub use self::compress::{
    CompressionFraming, LZ4_COMPRESS_BYTE, LZO_COMPRESS_BYTE, NO_COMPRESS_BYTE,
    NO_COMPRESS_BYTE_SWAP, V2_INDICATOR_BYTE, V2_UNCOMPRESSED_BYTE,
};
pub use self::replay::{
    ReplayConfig, ReplayWindow, DEFAULT_REPLAY_TIME_WINDOW, DEFAULT_REPLAY_WINDOW,
    MAX_REPLAY_TIME_WINDOW, MAX_REPLAY_WINDOW, REAP_INTERVAL,
};
use super::packet::{
    first_byte, DataHeader, KeyId, Opcode, PacketError, DATA_V1_HEADER_LEN, DATA_V2_HEADER_LEN,
    PEER_ID_UNSET,
};
use super::prf::{AeadKey, IMPLICIT_IV_BYTES, NONCE_BYTES};
use crate::proto::vocabulary::Cipher;

/// Length of the packet id in front of the tag.
pub const PACKET_ID_LEN: usize = 4;
/// Length of the AEAD tag (`OPENVPN_AEAD_TAG_LENGTH`).
pub const TAG_LEN: usize = 16;
/// From this packet id on, OpenVPN starts a renegotiation (packet_id.h).
pub const PACKET_ID_WRAP_TRIGGER: u32 = 0xFF00_0000;
/// The keepalive ping payload (ping.c `ping_string`).
pub const PING_MAGIC: [u8; 16] = [
    0x2a, 0x18, 0x7b, 0xf3, 0x64, 0x1e, 0xb4, 0xcb, 0x07, 0xed, 0x2d, 0x0a, 0x98, 0x1f, 0xc7, 0x48,
];
/// The prefix of every OCC message (occ.c `occ_magic`); an opcode byte follows.
pub const OCC_MAGIC: [u8; 16] = [
    0x28, 0x7f, 0x34, 0x6b, 0xd4, 0xef, 0x7a, 0x81, 0x2d, 0x56, 0xb8, 0xd3, 0xaf, 0xc5, 0x45, 0x9c,
];
/// OCC opcode of explicit-exit-notify (occ.h `OCC_EXIT`).
pub const OCC_EXIT: u8 = 6;

/// Largest associated data: the `DATA_V2` header and the packet id.
const MAX_AD_LEN: usize = DATA_V2_HEADER_LEN + PACKET_ID_LEN;

/// Why a data packet could not be sealed or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// Shorter than header, packet id, tag and one byte of ciphertext.
    #[error("data packet too short")]
    TooShort,
    /// Byte 0 does not carry `DATA_V1` or `DATA_V2` (the 5-bit opcode value is given).
    #[error("opcode {0} is not a data-channel opcode")]
    NotData(u8),
    /// The packet belongs to another key generation.
    #[error("data packet for key id {got:?}, this key is {expected:?}")]
    WrongKeyId {
        /// This key's id.
        expected: KeyId,
        /// The packet's key id.
        got: KeyId,
    },
    /// The tag did not verify: forged, corrupted, or under another key.
    #[error("data packet failed authentication")]
    Unauthenticated,
    /// The packet id was seen before, is 0, or is too old for the replay window.
    #[error("data packet replayed or outside the replay window")]
    Replay,
    /// This key has sent 2^32 - 1 packets; it must be replaced by a renegotiated one.
    #[error("packet ids of this data key are exhausted")]
    PacketIdsExhausted,
    /// A `DATA_V2` peer id above 24 bits.
    #[error("peer id {0:#x} does not fit in 24 bits")]
    PeerIdOutOfRange(u32),
    /// The key material was rejected by the cipher.
    #[error("invalid data-channel key")]
    InvalidKey,
    /// `--replay-window` values outside OpenVPN's limits.
    #[error("replay window outside 0..=65536 packets or 0..=600 s")]
    InvalidReplayConfig,
    /// The compression framing byte is not one the configured framing knows.
    #[error("unexpected compression header byte {0:#04x}")]
    BadCompressionHeader(u8),
    /// Nothing to send, or nothing left after the framing (OpenVPN drops such packets).
    #[error("empty data-channel payload")]
    EmptyPayload,
    /// A payload too large for the cipher.
    #[error("payload too large for the cipher")]
    TooLong,
}

/// Which data packet header [`SendKey`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataFormat {
    /// `DATA_V1`: opcode and key id only.
    V1,
    /// `DATA_V2`: with the 24-bit peer id ([`PEER_ID_UNSET`] when the server assigned none).
    V2 {
        /// The peer id, at most [`PEER_ID_UNSET`].
        peer_id: u32,
    },
}

/// What an authenticated data packet carried.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// An IP packet for the tunnel device.
    Ip(&'a [u8]),
    /// The keepalive ping.
    Ping,
    /// OCC `OCC_EXIT`: the peer is shutting down (explicit-exit-notify).
    OccExit,
    /// Another OCC message: the bytes after [`OCC_MAGIC`], starting with the OCC opcode.
    Occ(&'a [u8]),
    /// A really compressed packet; we do not decompress. The caller counts, drops and logs it.
    Compressed,
}

/// Counters of one [`ReceiveKey`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiveStats {
    /// Packets that authenticated and passed the replay check (pings and OCC included,
    /// compressed ones not).
    pub packets: u64,
    /// Wire bytes of those packets.
    pub bytes: u64,
    /// Packets rejected by the replay window.
    pub replayed: u64,
    /// Packets whose tag did not verify.
    pub auth_failed: u64,
    /// Packets rejected before or after decryption for their form: too short, not data,
    /// wrong key id, bad compression header, empty payload.
    pub malformed: u64,
    /// Authenticated packets that were really compressed.
    pub compressed: u64,
}

/// Opcode, key id and (for `DATA_V2`) peer id of a data packet, without touching the crypto:
/// lets the receive path pick the key and the peer before decrypting.
pub fn peek_data_key(packet: &[u8]) -> Result<(Opcode, KeyId, Option<u32>), PacketError> {
    let (header, _) = DataHeader::decode(packet)?;
    let peer_id = match header {
        DataHeader::V1 { .. } => None,
        DataHeader::V2 { peer_id, .. } => Some(peer_id),
    };
    Ok((header.opcode(), header.key_id(), peer_id))
}

fn ring_algorithm(cipher: Cipher) -> &'static aead::Algorithm {
    match cipher {
        Cipher::Aes256Gcm => &aead::AES_256_GCM,
        Cipher::Aes128Gcm => &aead::AES_128_GCM,
        Cipher::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
    }
}

fn ring_key(key: &AeadKey) -> Result<LessSafeKey, DataError> {
    let unbound = UnboundKey::new(ring_algorithm(key.cipher()), key.key())
        .map_err(|_| DataError::InvalidKey)?;
    Ok(LessSafeKey::new(unbound))
}

fn nonce(packet_id: [u8; PACKET_ID_LEN], implicit_iv: &[u8; IMPLICIT_IV_BYTES]) -> Nonce {
    let mut bytes = [0u8; NONCE_BYTES];
    let (id, rest) = bytes.split_at_mut(PACKET_ID_LEN);
    id.copy_from_slice(&packet_id);
    rest.copy_from_slice(implicit_iv);
    Nonce::assume_unique_for_key(bytes)
}

/// The sending half of one data-channel key. `Send + Sync`: several threads may seal with
/// one key at once; packet ids come from an atomic counter (so packets may leave slightly out
/// of order, which the peer's replay window allows).
pub struct SendKey {
    key: LessSafeKey,
    key_id: KeyId,
    /// `DATA_V2` header bytes, or the `DATA_V1` opcode byte in `header[0]`.
    header: [u8; DATA_V2_HEADER_LEN],
    /// 1 for `DATA_V1`, 4 for `DATA_V2`.
    header_len: usize,
    /// Whether the header is part of the associated data (`DATA_V2` only).
    header_in_ad: bool,
    implicit_iv: [u8; IMPLICIT_IV_BYTES],
    compression: CompressionFraming,
    /// Packet ids handed out so far; the next id is this plus one.
    ids_used: AtomicU64,
    bytes_sent: AtomicU64,
}

impl std::fmt::Debug for SendKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SendKey")
            .field("key_id", &self.key_id)
            .field("header", &&self.header[..self.header_len])
            .field("compression", &self.compression)
            .field("packets_sent", &self.packets_sent())
            .finish_non_exhaustive()
    }
}

impl Drop for SendKey {
    fn drop(&mut self) {
        self.implicit_iv.zeroize();
    }
}

impl SendKey {
    /// A send key for packets with `key_id` in `format`.
    pub fn new(
        key_id: KeyId,
        format: DataFormat,
        key: &AeadKey,
        compression: CompressionFraming,
    ) -> Result<Self, DataError> {
        let mut header = [0u8; DATA_V2_HEADER_LEN];
        let (header_len, header_in_ad) = match format {
            DataFormat::V1 => {
                header[0] = first_byte(Opcode::DataV1, key_id);
                (DATA_V1_HEADER_LEN, false)
            }
            DataFormat::V2 { peer_id } => {
                if peer_id > PEER_ID_UNSET {
                    return Err(DataError::PeerIdOutOfRange(peer_id));
                }
                let [_, a, b, c] = peer_id.to_be_bytes();
                header = [first_byte(Opcode::DataV2, key_id), a, b, c];
                (DATA_V2_HEADER_LEN, true)
            }
        };
        Ok(Self {
            key: ring_key(key)?,
            key_id,
            header,
            header_len,
            header_in_ad,
            implicit_iv: *key.implicit_iv(),
            compression,
            ids_used: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
        })
    }

    /// The key id written into every packet.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Packet ids used so far (at most 2^32 - 1). Renegotiate once this reaches
    /// [`PACKET_ID_WRAP_TRIGGER`], as OpenVPN does.
    pub fn packets_sent(&self) -> u64 {
        self.ids_used
            .load(Ordering::Relaxed)
            .min(u64::from(u32::MAX))
    }

    /// Wire bytes of the packets sealed so far (what OpenVPN's `reneg-bytes` counts).
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::Relaxed)
    }

    /// Bytes `seal` adds to a payload: header, packet id, tag and compression framing.
    pub fn overhead(&self) -> usize {
        self.header_len + PACKET_ID_LEN + TAG_LEN + self.compression.max_overhead()
    }

    /// Seals one IP packet. `out` is cleared and receives the whole wire packet; it is only
    /// grown if its capacity is short, so a reused buffer means no allocation.
    pub fn seal(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), DataError> {
        if payload.is_empty() {
            return Err(DataError::EmptyPayload);
        }
        let packet_id = self.next_packet_id()?;
        out.clear();
        out.reserve(self.overhead() + payload.len());
        out.extend_from_slice(&self.header[..self.header_len]);
        out.extend_from_slice(&packet_id);
        out.extend_from_slice(&[0u8; TAG_LEN]);
        self.compression.frame_into(payload, out);
        self.seal_in_place(packet_id, out)
    }

    /// Seals the keepalive ping ([`PING_MAGIC`]).
    pub fn seal_ping(&self, out: &mut Vec<u8>) -> Result<(), DataError> {
        self.seal(&PING_MAGIC, out)
    }

    /// Seals OCC `OCC_EXIT` (explicit-exit-notify over the data channel).
    pub fn seal_occ_exit(&self, out: &mut Vec<u8>) -> Result<(), DataError> {
        let mut message = [0u8; OCC_MAGIC.len() + 1];
        let (magic, opcode) = message.split_at_mut(OCC_MAGIC.len());
        magic.copy_from_slice(&OCC_MAGIC);
        opcode.copy_from_slice(&[OCC_EXIT]);
        self.seal(&message, out)
    }

    fn next_packet_id(&self) -> Result<[u8; PACKET_ID_LEN], DataError> {
        // Relaxed suffices: the counter's read-modify-write order alone makes ids unique.
        let id = self.ids_used.fetch_add(1, Ordering::Relaxed) + 1;
        u32::try_from(id)
            .map(u32::to_be_bytes)
            .map_err(|_| DataError::PacketIdsExhausted)
    }

    /// Encrypts `out[header + id + tag..]` and writes the tag into its reserved place.
    fn seal_in_place(
        &self,
        packet_id: [u8; PACKET_ID_LEN],
        out: &mut [u8],
    ) -> Result<(), DataError> {
        let (ad, ad_len) =
            associated_data(&self.header, self.header_len, self.header_in_ad, packet_id);
        let prefix_len = self.header_len + PACKET_ID_LEN;
        let (prefix, rest) = out
            .split_at_mut_checked(prefix_len)
            .ok_or(DataError::TooShort)?;
        let (tag_place, plaintext) = rest
            .split_at_mut_checked(TAG_LEN)
            .ok_or(DataError::TooShort)?;
        let tag = self
            .key
            .seal_in_place_separate_tag(
                nonce(packet_id, &self.implicit_iv),
                Aad::from(ad.get(..ad_len).unwrap_or_default()),
                plaintext,
            )
            .map_err(|_| DataError::TooLong)?;
        tag_place.copy_from_slice(tag.as_ref());
        let wire_len = prefix.len() + TAG_LEN + plaintext.len();
        self.bytes_sent
            .fetch_add(wire_len as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// The associated data: (`DATA_V2` header) || packet id, in a stack buffer.
fn associated_data(
    header: &[u8; DATA_V2_HEADER_LEN],
    header_len: usize,
    header_in_ad: bool,
    packet_id: [u8; PACKET_ID_LEN],
) -> ([u8; MAX_AD_LEN], usize) {
    let mut ad = [0u8; MAX_AD_LEN];
    let header_part = if header_in_ad { header_len } else { 0 };
    let (head, id) = ad.split_at_mut(header_part);
    head.copy_from_slice(&header[..header_part]);
    if let Some(id) = id.get_mut(..PACKET_ID_LEN) {
        id.copy_from_slice(&packet_id);
    }
    (ad, header_part + PACKET_ID_LEN)
}

/// The receiving half of one data-channel key, owned by one receive thread. Accepts both
/// `DATA_V1` and `DATA_V2` packets with its key id, as OpenVPN does; the peer id is
/// authenticated (V2) but matching it to a peer is the dispatcher's job ([`peek_data_key`]).
pub struct ReceiveKey {
    key: LessSafeKey,
    key_id: KeyId,
    implicit_iv: [u8; IMPLICIT_IV_BYTES],
    compression: CompressionFraming,
    replay: ReplayWindow,
    stats: ReceiveStats,
}

impl std::fmt::Debug for ReceiveKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ReceiveKey")
            .field("key_id", &self.key_id)
            .field("compression", &self.compression)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Drop for ReceiveKey {
    fn drop(&mut self) {
        self.implicit_iv.zeroize();
    }
}

impl ReceiveKey {
    /// A receive key for packets with `key_id`.
    pub fn new(
        key_id: KeyId,
        key: &AeadKey,
        compression: CompressionFraming,
        replay: ReplayConfig,
    ) -> Result<Self, DataError> {
        Ok(Self {
            key: ring_key(key)?,
            key_id,
            implicit_iv: *key.implicit_iv(),
            compression,
            replay: ReplayWindow::new(replay)?,
            stats: ReceiveStats::default(),
        })
    }

    /// The key id this key accepts.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The counters so far.
    pub fn stats(&self) -> ReceiveStats {
        self.stats
    }

    /// Authenticates and decrypts `packet` in place, checks and then marks the packet id in
    /// the replay window (marking only after authentication), strips the compression framing
    /// and classifies the payload. The returned slice points into `packet`.
    pub fn open<'a>(
        &mut self,
        now: Instant,
        packet: &'a mut [u8],
    ) -> Result<Received<'a>, DataError> {
        let wire_len = packet.len() as u64;
        let result = self.open_counted(now, packet);
        match &result {
            Ok(Received::Compressed) => self.stats.compressed += 1,
            Ok(_) => {
                self.stats.packets += 1;
                self.stats.bytes += wire_len;
            }
            Err(DataError::Replay) => self.stats.replayed += 1,
            Err(DataError::Unauthenticated) => self.stats.auth_failed += 1,
            Err(_) => self.stats.malformed += 1,
        }
        result
    }

    fn open_counted<'a>(
        &mut self,
        now: Instant,
        packet: &'a mut [u8],
    ) -> Result<Received<'a>, DataError> {
        let &byte0 = packet.first().ok_or(DataError::TooShort)?;
        let (header_len, header_in_ad) = match byte0 >> 3 {
            opcode if opcode == Opcode::DataV1.value() => (DATA_V1_HEADER_LEN, false),
            opcode if opcode == Opcode::DataV2.value() => (DATA_V2_HEADER_LEN, true),
            opcode => return Err(DataError::NotData(opcode)),
        };
        let got = KeyId::new(byte0 & KeyId::MAX).map_err(|_| DataError::TooShort)?;
        if got != self.key_id {
            return Err(DataError::WrongKeyId {
                expected: self.key_id,
                got,
            });
        }
        let (prefix, rest) = packet
            .split_at_mut_checked(header_len + PACKET_ID_LEN)
            .ok_or(DataError::TooShort)?;
        let (tag, ciphertext) = rest
            .split_at_mut_checked(TAG_LEN)
            .ok_or(DataError::TooShort)?;
        if ciphertext.is_empty() {
            return Err(DataError::TooShort);
        }
        let (header, id_bytes) = prefix.split_at(header_len);
        let packet_id: [u8; PACKET_ID_LEN] =
            id_bytes.try_into().map_err(|_| DataError::TooShort)?;
        let id = u32::from_be_bytes(packet_id);
        // Cheap rejection first; the window only moves after the tag verified.
        self.replay.check(now, id)?;

        let mut header_bytes = [0u8; DATA_V2_HEADER_LEN];
        if let Some(target) = header_bytes.get_mut(..header.len()) {
            target.copy_from_slice(header);
        }
        let (ad, ad_len) = associated_data(&header_bytes, header_len, header_in_ad, packet_id);
        let tag: [u8; TAG_LEN] = (&*tag).try_into().map_err(|_| DataError::TooShort)?;
        let plaintext = self
            .key
            .open_in_place_separate_tag(
                nonce(packet_id, &self.implicit_iv),
                Aad::from(ad.get(..ad_len).unwrap_or_default()),
                Tag::from(tag),
                ciphertext,
                0..,
            )
            .map_err(|_| DataError::Unauthenticated)?;
        self.replay.mark(now, id);

        let payload = match self.compression.unframe(plaintext)? {
            Unframed::Compressed => return Ok(Received::Compressed),
            Unframed::Payload(payload) => payload,
        };
        Ok(classify(payload))
    }
}

/// Sorts an authenticated payload into ping, OCC or IP (forward.c `process_incoming_link_part2`:
/// a ping is exactly the magic; OCC is anything starting with its magic).
fn classify(payload: &[u8]) -> Received<'_> {
    if payload == PING_MAGIC {
        return Received::Ping;
    }
    match payload.strip_prefix(&OCC_MAGIC) {
        Some([OCC_EXIT, ..]) => Received::OccExit,
        Some(occ) => Received::Occ(occ),
        None => Received::Ip(payload),
    }
}

#[cfg(test)]
mod tests;
