//! OpenVPN 2.6 packet codecs: opcodes, control-channel packets in their plain layout,
//! early-negotiation TLVs, the tls-crypt-v2 wrapped-key trailer and data-channel headers.
//!
//! Everything here is pure byte shuffling: no crypto, no state, no allocation on the data path.
//! Decoders borrow from their input and never panic; malformed bytes are a [`PacketError`].
//!
//! # Wire layouts
//!
//! Byte 0 of every packet is `opcode << 3 | key_id`. Over TCP each packet is preceded by a
//! 16-bit big-endian length (see [`super::framing`]); the layouts below start after it.
//!
//! ## Plain control packet (no `--tls-auth` / `--tls-crypt`)
//!
//! ```text
//!  0        1                        9
//! +--------+------------------------+
//! | op|kid | own session id (8)     |  ControlHeader, 9 bytes, always in clear
//! +--------+------------------------+
//! | n_acks | acked message ids (4 * n_acks, n_acks <= 8)     |  ControlBody
//! +--------+--------------------------------------------------+
//! | remote session id (8)        only if n_acks > 0           |
//! +-----------------------------------------------------------+
//! | message id (4)               absent in ACK_V1             |
//! +-----------------------------------------------------------+
//! | payload: TLS records; early-negotiation TLVs in a hard    |
//! | reset with message id 0; empty in ACK_V1                  |
//! +-----------------------------------------------------------+
//! ```
//!
//! ## `--tls-auth`: HMAC and replay id between header and body
//!
//! ```text
//! | op|kid | own sid (8) | HMAC (digest size: 20 for SHA1 .. 64 for SHA512) |
//! | replay packet id (4) | replay time (4, unix seconds) | ControlBody ...    |
//!
//! HMAC = HMAC-<auth digest>(key, replay id || replay time || op|kid || own sid || ControlBody)
//! ```
//!
//! ## `--tls-crypt` and `--tls-crypt-v2`: body authenticated and encrypted
//!
//! ```text
//! | op|kid | own sid (8) | replay packet id (4) | replay time (4) | tag (32) |
//! | AES-256-CTR(Ke, IV = tag[..16], ControlBody) ...                     |
//!
//! tag = HMAC-SHA256(Ka, op|kid || own sid || replay id || replay time || ControlBody)
//! ```
//!
//! ## `--tls-crypt-v2` trailer on `HARD_RESET_CLIENT_V3` and `CONTROL_WKC_V1`
//!
//! The client appends its wrapped key WKc *after* the whole tls-crypt packet, outside the
//! encryption (the server needs it to find the key that decrypts the rest):
//!
//! ```text
//! | tls-crypt packet as above ... | WKc: tag (32) | AES-256-CTR(Kc || metadata) | len (2) |
//!
//! len = length of the whole WKc, these 2 bytes included; at most 1024 (OpenVPN's limit)
//! ```
//!
//! Use [`split_wrapped_client_key`] on the received packet before unwrapping it; once the
//! trailer is gone a `CONTROL_WKC_V1` body has exactly the `CONTROL_V1` layout.
//!
//! ## Data channel
//!
//! ```text
//! DATA_V1: | op|kid |                     packet id, tag, ciphertext ...
//! DATA_V2: | op|kid | peer id (3, BE) |   packet id, tag, ciphertext ...
//! ```
//!
//! Sources: OpenVPN/openvpn-rfc `openvpn-wire-protocol.xml` (sections "General Control channel
//! format", "Client-specific encryption keys", "Control channel wire packet structure") and
//! OpenVPN/openvpn `src/openvpn/ssl_pkt.[ch]`, `tls_crypt.[ch]`, `reliable.c`, `ssl.c`,
//! `packet_id.c`.

use std::fmt;

/// Length of a session id on the wire.
pub const SESSION_ID_LEN: usize = 8;
/// Length of [`ControlHeader`]: byte 0 plus the sender's session id.
pub const CONTROL_HEADER_LEN: usize = 1 + SESSION_ID_LEN;
/// Most acknowledgements one control packet may carry (OpenVPN `RELIABLE_ACK_SIZE`; OpenVPN
/// drops a packet carrying more).
pub const MAX_ACKS: usize = 8;
/// Length of the `DATA_V1` header (byte 0 only).
pub const DATA_V1_HEADER_LEN: usize = 1;
/// Length of the `DATA_V2` header (byte 0 and a 24-bit peer id).
pub const DATA_V2_HEADER_LEN: usize = 4;
/// Largest peer id; this value itself means "no peer id assigned" (OpenVPN `MAX_PEER_ID`).
pub const PEER_ID_UNSET: u32 = 0x00FF_FFFF;
/// Largest wrapped client key OpenVPN accepts (`TLS_CRYPT_V2_MAX_WKC_LEN`).
pub const WKC_MAX_LEN: usize = 1024;
/// Length of the trailing length field of a wrapped client key.
pub const WKC_LENGTH_FIELD_LEN: usize = 2;
/// Initial tls-crypt-v2 replay packet id by which a client announces early-negotiation support
/// (and so its ability to resend WKc in `CONTROL_WKC_V1`); OpenVPN `EARLY_NEG_START`.
/// OpenVPN increments before sending, so the first reset carries `0x0f00_0001`.
pub const EARLY_NEG_START: u32 = 0x0F00_0000;
/// TLV type of the early-negotiation flags (OpenVPN `TLV_TYPE_EARLY_NEG_FLAGS`).
pub const TLV_TYPE_EARLY_NEG_FLAGS: u16 = 0x0001;

const OPCODE_SHIFT: u8 = 3;
const KEY_ID_MASK: u8 = 0x07;
const ACK_ID_LEN: usize = 4;
const MESSAGE_ID_LEN: usize = 4;
const TLV_HEADER_LEN: usize = 4;
const EARLY_NEG_FLAGS_LEN: u16 = 2;
const OPCODE_HARD_RESET_CLIENT_V1: u8 = 1;
const OPCODE_HARD_RESET_SERVER_V1: u8 = 2;

/// Which part of a packet a [`PacketError::Truncated`] ran out in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// Byte 0 (opcode and key id).
    Opcode,
    /// The sender's session id in the control header.
    SessionId,
    /// The acknowledgement count byte.
    AckCount,
    /// One acknowledged message id.
    AckedMessageId,
    /// The remote session id that follows a non-empty ack list.
    RemoteSessionId,
    /// The message id of a control packet.
    MessageId,
    /// The 24-bit peer id of `DATA_V2`.
    PeerId,
    /// The type and length of an early-negotiation TLV.
    TlvHeader,
    /// The value of an early-negotiation TLV.
    TlvValue,
    /// The trailing length of a wrapped client key.
    WrappedKeyLength,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Opcode => "opcode byte",
            Field::SessionId => "session id",
            Field::AckCount => "ack count",
            Field::AckedMessageId => "acked message id",
            Field::RemoteSessionId => "remote session id",
            Field::MessageId => "message id",
            Field::PeerId => "peer id",
            Field::TlvHeader => "TLV type/length",
            Field::TlvValue => "TLV value",
            Field::WrappedKeyLength => "wrapped client key length",
        })
    }
}

/// Why a packet could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PacketError {
    /// The input ended inside `field`. `needed` and `have` count bytes from the start of the
    /// slice given to the decoder.
    #[error("packet truncated in the {field}: need {needed} bytes, have {have}")]
    Truncated {
        /// The field that did not fit.
        field: Field,
        /// Bytes needed to hold that field.
        needed: usize,
        /// Bytes available.
        have: usize,
    },
    /// The opcode is not one OpenVPN has ever defined.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u8),
    /// `HARD_RESET_CLIENT_V1`/`HARD_RESET_SERVER_V1` (key-method 1), removed in OpenVPN 2.5.
    #[error("obsolete opcode {0} (key-method 1 hard reset), unsupported since OpenVPN 2.5")]
    ObsoleteOpcode(u8),
    /// A key id outside 0..=7.
    #[error("key id {0} out of range 0..=7")]
    InvalidKeyId(u8),
    /// A data-channel opcode where a control-channel packet was expected.
    #[error("{0:?} is a data-channel opcode, expected a control-channel one")]
    NotControl(Opcode),
    /// A control-channel opcode where a data-channel packet was expected.
    #[error("{0:?} is a control-channel opcode, expected a data-channel one")]
    NotData(Opcode),
    /// More than [`MAX_ACKS`] acknowledgements in one packet.
    #[error("{0} acknowledgements in one packet, at most 8 allowed")]
    TooManyAcks(usize),
    /// An `ACK_V1` with bytes after its acknowledgements (OpenVPN never sends any).
    #[error("ACK_V1 carries {0} bytes after its acknowledgements")]
    AckWithPayload(usize),
    /// Encoding a body whose remote session id is not present exactly when acks are.
    #[error("remote session id present: {present}, but {acks} acks (needed iff acks > 0)")]
    RemoteSessionIdMismatch {
        /// Number of acks in the body.
        acks: usize,
        /// Whether a remote session id was given.
        present: bool,
    },
    /// Encoding a body whose message id is not present exactly when the opcode is not `ACK_V1`.
    #[error("message id present: {present}, but {opcode:?} requires the opposite")]
    MessageIdMismatch {
        /// The opcode the body was encoded for.
        opcode: Opcode,
        /// Whether a message id was given.
        present: bool,
    },
    /// A peer id that does not fit in 24 bits.
    #[error("peer id {0:#x} does not fit in 24 bits")]
    PeerIdOutOfRange(u32),
    /// The caller's output buffer is too small.
    #[error("output buffer too small: need {needed} bytes, have {have}")]
    BufferTooSmall {
        /// Bytes the encoding needs.
        needed: usize,
        /// Bytes the buffer has.
        have: usize,
    },
    /// A known early-negotiation TLV with the wrong length.
    #[error("early-negotiation TLV type {tlv_type:#06x} has length {len}, expected {expected}")]
    TlvLength {
        /// The TLV type.
        tlv_type: u16,
        /// Its length field.
        len: u16,
        /// The length that type must have.
        expected: u16,
    },
    /// A wrapped client key was looked for in a packet whose opcode carries none.
    #[error("{0:?} carries no tls-crypt-v2 wrapped client key")]
    NoWrappedKey(Opcode),
    /// The trailing length of a wrapped client key is impossible.
    #[error("wrapped client key length {len} impossible in a {packet_len}-byte packet")]
    WrappedKeyLength {
        /// The length field's value.
        len: usize,
        /// Length of the packet it was read from.
        packet_len: usize,
    },
}

/// Packet type, the high 5 bits of byte 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// `P_CONTROL_SOFT_RESET_V1`: start renegotiation under a new key id.
    SoftResetV1 = 3,
    /// `P_CONTROL_V1`: TLS records.
    ControlV1 = 4,
    /// `P_ACK_V1`: acknowledgements only.
    AckV1 = 5,
    /// `P_DATA_V1`: data packet without peer id.
    DataV1 = 6,
    /// `P_CONTROL_HARD_RESET_CLIENT_V2`: client's first packet.
    HardResetClientV2 = 7,
    /// `P_CONTROL_HARD_RESET_SERVER_V2`: server's first packet.
    HardResetServerV2 = 8,
    /// `P_DATA_V2`: data packet with a 24-bit peer id.
    DataV2 = 9,
    /// `P_CONTROL_HARD_RESET_CLIENT_V3`: client's first packet under tls-crypt-v2 (WKc appended).
    HardResetClientV3 = 10,
    /// `P_CONTROL_WKC_V1`: `CONTROL_V1` with WKc appended, when the server asked for a resend.
    ControlWkcV1 = 11,
}

impl Opcode {
    /// The 5-bit wire value.
    pub const fn value(self) -> u8 {
        self as u8
    }

    /// Whether this is a data-channel opcode.
    pub const fn is_data(self) -> bool {
        matches!(self, Opcode::DataV1 | Opcode::DataV2)
    }

    /// Whether this is a control-channel opcode.
    pub const fn is_control(self) -> bool {
        !self.is_data()
    }

    /// Whether this opens a session (OpenVPN `is_hard_reset_method2`). The payload of such a
    /// packet with message id 0 is early-negotiation TLVs, not TLS.
    pub const fn is_hard_reset(self) -> bool {
        matches!(
            self,
            Opcode::HardResetClientV2 | Opcode::HardResetServerV2 | Opcode::HardResetClientV3
        )
    }

    /// Whether the packet has a tls-crypt-v2 wrapped client key appended on the wire.
    pub const fn carries_wrapped_client_key(self) -> bool {
        matches!(self, Opcode::HardResetClientV3 | Opcode::ControlWkcV1)
    }

    /// Whether a control packet of this kind has a message id (all but `ACK_V1`).
    pub const fn has_message_id(self) -> bool {
        self.is_control() && !matches!(self, Opcode::AckV1)
    }
}

impl TryFrom<u8> for Opcode {
    type Error = PacketError;

    /// Converts a 5-bit opcode value (byte 0 shifted right by 3).
    fn try_from(value: u8) -> Result<Self, PacketError> {
        Ok(match value {
            3 => Opcode::SoftResetV1,
            4 => Opcode::ControlV1,
            5 => Opcode::AckV1,
            6 => Opcode::DataV1,
            7 => Opcode::HardResetClientV2,
            8 => Opcode::HardResetServerV2,
            9 => Opcode::DataV2,
            10 => Opcode::HardResetClientV3,
            11 => Opcode::ControlWkcV1,
            OPCODE_HARD_RESET_CLIENT_V1 | OPCODE_HARD_RESET_SERVER_V1 => {
                return Err(PacketError::ObsoleteOpcode(value))
            }
            other => return Err(PacketError::UnknownOpcode(other)),
        })
    }
}

/// Key generation, the low 3 bits of byte 0 (0 for the first key of a session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct KeyId(u8);

impl KeyId {
    /// The key id of a session's first key.
    pub const ZERO: KeyId = KeyId(0);
    /// Largest key id.
    pub const MAX: u8 = KEY_ID_MASK;

    /// A key id, if `value` is in 0..=7.
    pub const fn new(value: u8) -> Result<KeyId, PacketError> {
        if value <= KEY_ID_MASK {
            Ok(KeyId(value))
        } else {
            Err(PacketError::InvalidKeyId(value))
        }
    }

    /// The numeric value, 0..=7.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// The key id a renegotiation moves to: +1, wrapping from 7 to 1, never back to 0, so that
    /// 0 always means "first key" (OpenVPN `key_state_init`).
    pub const fn next(self) -> KeyId {
        if self.0 >= KEY_ID_MASK {
            KeyId(1)
        } else {
            KeyId(self.0 + 1)
        }
    }
}

impl TryFrom<u8> for KeyId {
    type Error = PacketError;

    fn try_from(value: u8) -> Result<Self, PacketError> {
        KeyId::new(value)
    }
}

/// Builds byte 0 from an opcode and key id.
pub const fn first_byte(opcode: Opcode, key_id: KeyId) -> u8 {
    opcode.value() << OPCODE_SHIFT | key_id.get()
}

/// Splits byte 0 into opcode and key id.
pub fn parse_first_byte(byte: u8) -> Result<(Opcode, KeyId), PacketError> {
    let opcode = Opcode::try_from(byte >> OPCODE_SHIFT)?;
    Ok((opcode, KeyId(byte & KEY_ID_MASK)))
}

/// Opcode and key id of a packet, to dispatch between control and data processing.
pub fn peek_opcode(packet: &[u8]) -> Result<(Opcode, KeyId), PacketError> {
    let byte = *packet.first().ok_or(PacketError::Truncated {
        field: Field::Opcode,
        needed: 1,
        have: 0,
    })?;
    parse_first_byte(byte)
}

/// A 64-bit session id, opaque to the peer. OpenVPN treats all zeroes as "not set" and drops
/// control packets whose own session id is zero; that check belongs to the session layer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SessionId(pub [u8; SESSION_ID_LEN]);

impl SessionId {
    /// Whether this is the all-zero "undefined" session id.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; SESSION_ID_LEN]
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; SESSION_ID_LEN] {
        &self.0
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId(")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        write!(f, ")")
    }
}

/// Bounds-checked reader over a decoder's input; errors report offsets from the input start.
struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(input: &'a [u8]) -> Self {
        Reader { input, pos: 0 }
    }

    fn truncated(&self, field: Field, len: usize) -> PacketError {
        PacketError::Truncated {
            field,
            needed: self.pos.saturating_add(len),
            have: self.input.len(),
        }
    }

    fn take(&mut self, len: usize, field: Field) -> Result<&'a [u8], PacketError> {
        let bytes = self
            .input
            .get(self.pos..)
            .and_then(|rest| rest.get(..len))
            .ok_or_else(|| self.truncated(field, len))?;
        self.pos += len;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, field: Field) -> Result<[u8; N], PacketError> {
        let bytes = self
            .input
            .get(self.pos..)
            .and_then(|rest| rest.first_chunk::<N>())
            .ok_or_else(|| self.truncated(field, N))?;
        self.pos += N;
        Ok(*bytes)
    }

    fn u8(&mut self, field: Field) -> Result<u8, PacketError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: Field) -> Result<u16, PacketError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: Field) -> Result<u32, PacketError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn rest(&mut self) -> &'a [u8] {
        let rest = self.input.get(self.pos..).unwrap_or_default();
        self.pos = self.input.len();
        rest
    }
}

/// Where encoders write: a caller's fixed buffer or a growable `Vec`.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Writes into a slice already checked to be large enough; `put` past the end would be a bug
/// in `encoded_len`, and is dropped (and caught by the tests) rather than panicking.
struct SliceSink<'a> {
    out: &'a mut [u8],
    pos: usize,
}

impl Sink for SliceSink<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let end = self.pos.saturating_add(bytes.len());
        if let Some(dst) = self.out.get_mut(self.pos..end) {
            dst.copy_from_slice(bytes);
            self.pos = end;
        }
    }
}

/// Checks `out` can take `needed` bytes and returns a sink over it.
fn slice_sink(out: &mut [u8], needed: usize) -> Result<SliceSink<'_>, PacketError> {
    if out.len() < needed {
        return Err(PacketError::BufferTooSmall {
            needed,
            have: out.len(),
        });
    }
    Ok(SliceSink { out, pos: 0 })
}

/// The 9 bytes every control packet starts with, outside any tls-auth/tls-crypt protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ControlHeader {
    /// A control-channel opcode.
    pub opcode: Opcode,
    /// Key generation the packet belongs to.
    pub key_id: KeyId,
    /// The sender's own session id.
    pub session_id: SessionId,
}

impl ControlHeader {
    /// Decodes the header and returns it with the bytes after it (the protection fields, or the
    /// plain [`ControlBody`]).
    pub fn decode(input: &[u8]) -> Result<(ControlHeader, &[u8]), PacketError> {
        let mut reader = Reader::new(input);
        let header = Self::read(&mut reader)?;
        Ok((header, reader.rest()))
    }

    fn read(reader: &mut Reader<'_>) -> Result<ControlHeader, PacketError> {
        let (opcode, key_id) = parse_first_byte(reader.u8(Field::Opcode)?)?;
        if opcode.is_data() {
            return Err(PacketError::NotControl(opcode));
        }
        let session_id = SessionId(reader.array(Field::SessionId)?);
        Ok(ControlHeader {
            opcode,
            key_id,
            session_id,
        })
    }

    /// The header's wire bytes; fails for a data-channel opcode.
    pub fn to_bytes(&self) -> Result<[u8; CONTROL_HEADER_LEN], PacketError> {
        if self.opcode.is_data() {
            return Err(PacketError::NotControl(self.opcode));
        }
        let mut bytes = [0; CONTROL_HEADER_LEN];
        bytes[0] = first_byte(self.opcode, self.key_id);
        bytes[1..].copy_from_slice(&self.session_id.0);
        Ok(bytes)
    }

    /// Writes the header to the start of `out` and returns its length, [`CONTROL_HEADER_LEN`].
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, PacketError> {
        let bytes = self.to_bytes()?;
        slice_sink(out, CONTROL_HEADER_LEN)?.put(&bytes);
        Ok(CONTROL_HEADER_LEN)
    }
}

/// Everything after the header and protection fields: acks, message id and payload. This is
/// what tls-auth authenticates and tls-crypt encrypts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ControlBody<'a> {
    /// Message ids being acknowledged, at most [`MAX_ACKS`]. Acks are per packet, not
    /// cumulative.
    pub acks: Vec<u32>,
    /// The peer's session id; present exactly when `acks` is non-empty.
    pub remote_session_id: Option<SessionId>,
    /// This packet's message id; absent exactly for `ACK_V1`.
    pub message_id: Option<u32>,
    /// TLS records (or early-negotiation TLVs in a hard reset); empty for `ACK_V1`.
    pub payload: &'a [u8],
}

impl<'a> ControlBody<'a> {
    /// Decodes a body that belongs to a packet with `opcode`. The payload borrows from `input`.
    pub fn decode(opcode: Opcode, input: &'a [u8]) -> Result<ControlBody<'a>, PacketError> {
        Self::read(opcode, &mut Reader::new(input))
    }

    fn read(opcode: Opcode, reader: &mut Reader<'a>) -> Result<ControlBody<'a>, PacketError> {
        if opcode.is_data() {
            return Err(PacketError::NotControl(opcode));
        }
        let ack_count = reader.u8(Field::AckCount)?;
        if usize::from(ack_count) > MAX_ACKS {
            return Err(PacketError::TooManyAcks(usize::from(ack_count)));
        }
        let mut acks = Vec::with_capacity(usize::from(ack_count));
        for _ in 0..ack_count {
            acks.push(reader.u32(Field::AckedMessageId)?);
        }
        let remote_session_id = if acks.is_empty() {
            None
        } else {
            Some(SessionId(reader.array(Field::RemoteSessionId)?))
        };
        let message_id = if opcode.has_message_id() {
            Some(reader.u32(Field::MessageId)?)
        } else {
            None
        };
        let payload = reader.rest();
        if !opcode.has_message_id() && !payload.is_empty() {
            return Err(PacketError::AckWithPayload(payload.len()));
        }
        Ok(ControlBody {
            acks,
            remote_session_id,
            message_id,
            payload,
        })
    }

    /// Checks the body can be encoded for `opcode`.
    pub fn validate(&self, opcode: Opcode) -> Result<(), PacketError> {
        if opcode.is_data() {
            return Err(PacketError::NotControl(opcode));
        }
        if self.acks.len() > MAX_ACKS {
            return Err(PacketError::TooManyAcks(self.acks.len()));
        }
        if self.remote_session_id.is_some() == self.acks.is_empty() {
            return Err(PacketError::RemoteSessionIdMismatch {
                acks: self.acks.len(),
                present: self.remote_session_id.is_some(),
            });
        }
        if self.message_id.is_some() != opcode.has_message_id() {
            return Err(PacketError::MessageIdMismatch {
                opcode,
                present: self.message_id.is_some(),
            });
        }
        if !opcode.has_message_id() && !self.payload.is_empty() {
            return Err(PacketError::AckWithPayload(self.payload.len()));
        }
        Ok(())
    }

    /// Length of the encoded body.
    pub fn encoded_len(&self) -> usize {
        1 + ACK_ID_LEN * self.acks.len()
            + self.remote_session_id.map_or(0, |_| SESSION_ID_LEN)
            + self.message_id.map_or(0, |_| MESSAGE_ID_LEN)
            + self.payload.len()
    }

    fn write(&self, sink: &mut impl Sink) {
        // validate() has bounded acks.len() by MAX_ACKS, so it fits the count byte.
        sink.put(&[self.acks.len() as u8]);
        for ack in &self.acks {
            sink.put(&ack.to_be_bytes());
        }
        if let Some(remote) = &self.remote_session_id {
            sink.put(&remote.0);
        }
        if let Some(message_id) = self.message_id {
            sink.put(&message_id.to_be_bytes());
        }
        sink.put(self.payload);
    }

    /// Writes the body for a packet with `opcode` to the start of `out`; returns its length.
    pub fn encode(&self, opcode: Opcode, out: &mut [u8]) -> Result<usize, PacketError> {
        self.validate(opcode)?;
        let len = self.encoded_len();
        self.write(&mut slice_sink(out, len)?);
        Ok(len)
    }

    /// Appends the body for a packet with `opcode` to `out`.
    pub fn append_to(&self, opcode: Opcode, out: &mut Vec<u8>) -> Result<(), PacketError> {
        self.validate(opcode)?;
        out.reserve(self.encoded_len());
        self.write(out);
        Ok(())
    }
}

/// A whole control packet in the plain layout (header immediately followed by body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPacket<'a> {
    /// Opcode, key id, sender session id.
    pub header: ControlHeader,
    /// Acks, message id, payload.
    pub body: ControlBody<'a>,
}

impl<'a> ControlPacket<'a> {
    /// Decodes a plain control packet. For `HARD_RESET_CLIENT_V3`/`CONTROL_WKC_V1` strip the
    /// wrapped key first ([`split_wrapped_client_key`]); those only exist under tls-crypt-v2.
    pub fn decode(input: &'a [u8]) -> Result<ControlPacket<'a>, PacketError> {
        let mut reader = Reader::new(input);
        let header = ControlHeader::read(&mut reader)?;
        let body = ControlBody::read(header.opcode, &mut reader)?;
        Ok(ControlPacket { header, body })
    }

    /// Length of the encoded packet.
    pub fn encoded_len(&self) -> usize {
        CONTROL_HEADER_LEN + self.body.encoded_len()
    }

    /// Writes the packet to the start of `out` and returns its length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, PacketError> {
        let header = self.header.to_bytes()?;
        self.body.validate(self.header.opcode)?;
        let len = self.encoded_len();
        let mut sink = slice_sink(out, len)?;
        sink.put(&header);
        self.body.write(&mut sink);
        Ok(len)
    }

    /// Appends the packet to `out`.
    pub fn append_to(&self, out: &mut Vec<u8>) -> Result<(), PacketError> {
        let header = self.header.to_bytes()?;
        self.body.validate(self.header.opcode)?;
        out.reserve(self.encoded_len());
        out.put(&header);
        self.body.write(out);
        Ok(())
    }

    /// The packet's bytes in a new `Vec`.
    pub fn to_vec(&self) -> Result<Vec<u8>, PacketError> {
        let mut out = Vec::new();
        self.append_to(&mut out)?;
        Ok(out)
    }
}

/// Flags of the `EARLY_NEG_FLAGS` TLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EarlyNegFlags(pub u16);

impl EarlyNegFlags {
    /// The server asks the client to resend its wrapped key in a `CONTROL_WKC_V1` (OpenVPN
    /// `EARLY_NEG_FLAG_RESEND_WKC`).
    pub const RESEND_WKC: EarlyNegFlags = EarlyNegFlags(0x0001);

    /// Whether all bits of `other` are set.
    pub const fn contains(self, other: EarlyNegFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

/// One early-negotiation TLV we understand. Unknown types are skipped when decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EarlyNegTlv {
    /// `TLV_TYPE_EARLY_NEG_FLAGS` (type 1, length 2).
    Flags(EarlyNegFlags),
}

/// The early-negotiation TLVs in the payload of a hard reset with message id 0.
///
/// Layout (OpenVPN `parse_early_negotiation_tlvs` in ssl.c, `tls_reset_standalone` in
/// ssl_pkt.c): zero or more `type (u16 BE) | length (u16 BE) | value (length bytes)`. 2.6
/// servers send `EARLY_NEG_FLAGS` with `RESEND_WKC` in their `HARD_RESET_SERVER_V2` when the
/// client's `HARD_RESET_CLIENT_V3` announced [`EARLY_NEG_START`]. OpenVPN parses every hard
/// reset's payload this way (client and server side) and aborts the session on a malformed one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EarlyNegotiation {
    /// The known TLVs, in wire order.
    pub tlvs: Vec<EarlyNegTlv>,
}

impl EarlyNegotiation {
    /// Parses a hard-reset payload; unknown TLV types are skipped.
    pub fn decode(payload: &[u8]) -> Result<EarlyNegotiation, PacketError> {
        let mut reader = Reader::new(payload);
        let mut tlvs = Vec::new();
        while reader.pos < payload.len() {
            let tlv_type = reader.u16(Field::TlvHeader)?;
            let len = reader.u16(Field::TlvHeader)?;
            let value = reader.take(usize::from(len), Field::TlvValue)?;
            if tlv_type == TLV_TYPE_EARLY_NEG_FLAGS {
                let bytes: [u8; 2] = value.try_into().map_err(|_| PacketError::TlvLength {
                    tlv_type,
                    len,
                    expected: EARLY_NEG_FLAGS_LEN,
                })?;
                tlvs.push(EarlyNegTlv::Flags(EarlyNegFlags(u16::from_be_bytes(bytes))));
            }
        }
        Ok(EarlyNegotiation { tlvs })
    }

    /// Whether the peer asked for the wrapped client key to be resent (any flags TLV with
    /// `RESEND_WKC`; OpenVPN ORs repeated flags TLVs).
    pub fn resend_wkc(&self) -> bool {
        self.tlvs.iter().any(|tlv| match tlv {
            EarlyNegTlv::Flags(flags) => flags.contains(EarlyNegFlags::RESEND_WKC),
        })
    }

    /// Length of the encoded TLVs.
    pub fn encoded_len(&self) -> usize {
        self.tlvs
            .iter()
            .map(|tlv| match tlv {
                EarlyNegTlv::Flags(_) => TLV_HEADER_LEN + usize::from(EARLY_NEG_FLAGS_LEN),
            })
            .sum()
    }

    /// Appends the TLVs to `out` (a hard reset's payload).
    pub fn append_to(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        for tlv in &self.tlvs {
            match tlv {
                EarlyNegTlv::Flags(flags) => {
                    out.put(&TLV_TYPE_EARLY_NEG_FLAGS.to_be_bytes());
                    out.put(&EARLY_NEG_FLAGS_LEN.to_be_bytes());
                    out.put(&flags.0.to_be_bytes());
                }
            }
        }
    }
}

/// Whether a tls-crypt-v2 replay packet id on a client's hard reset announces early
/// negotiation: top byte has the `0x0f` bits set (OpenVPN mudp.c `do_pre_decrypt_check`).
pub const fn replay_id_announces_early_negotiation(replay_packet_id: u32) -> bool {
    (replay_packet_id >> 24) & 0x0F == 0x0F
}

/// A tls-crypt-v2 wrapped client key (WKc), opaque to the client, including its trailing
/// 16-bit length. OpenVPN's format is `tag (32) | AES-256-CTR(Kc || metadata) | len (2)`, but
/// a server may choose another; only the trailing length is part of the wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrappedClientKey<'a>(&'a [u8]);

impl<'a> WrappedClientKey<'a> {
    /// Checks that `bytes` is a whole WKc: its last two bytes hold its own length.
    pub fn new(bytes: &'a [u8]) -> Result<WrappedClientKey<'a>, PacketError> {
        let len = trailing_wkc_len(bytes)?;
        if len != bytes.len() || !(WKC_LENGTH_FIELD_LEN..=WKC_MAX_LEN).contains(&len) {
            return Err(PacketError::WrappedKeyLength {
                len,
                packet_len: bytes.len(),
            });
        }
        Ok(WrappedClientKey(bytes))
    }

    /// The whole WKc as sent on the wire (append it after the tls-crypt-wrapped packet).
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.0
    }
}

fn trailing_wkc_len(bytes: &[u8]) -> Result<usize, PacketError> {
    let len = bytes
        .last_chunk::<WKC_LENGTH_FIELD_LEN>()
        .ok_or(PacketError::Truncated {
            field: Field::WrappedKeyLength,
            needed: WKC_LENGTH_FIELD_LEN,
            have: bytes.len(),
        })?;
    Ok(usize::from(u16::from_be_bytes(*len)))
}

/// Splits a received `HARD_RESET_CLIENT_V3`/`CONTROL_WKC_V1` into the tls-crypt-wrapped packet
/// and the wrapped client key appended to it. Checks only the framing (the length fits, leaves
/// the 9-byte header and is at most [`WKC_MAX_LEN`]); unwrapping is the tls-crypt-v2 layer's job.
pub fn split_wrapped_client_key(
    packet: &[u8],
) -> Result<(&[u8], WrappedClientKey<'_>), PacketError> {
    let (opcode, _) = peek_opcode(packet)?;
    if !opcode.carries_wrapped_client_key() {
        return Err(PacketError::NoWrappedKey(opcode));
    }
    let len = trailing_wkc_len(packet)?;
    let invalid = PacketError::WrappedKeyLength {
        len,
        packet_len: packet.len(),
    };
    if !(WKC_LENGTH_FIELD_LEN..=WKC_MAX_LEN).contains(&len) {
        return Err(invalid);
    }
    let split = packet
        .len()
        .checked_sub(len)
        .filter(|&at| at >= CONTROL_HEADER_LEN)
        .ok_or(invalid)?;
    let (wrapped_packet, wkc) = packet.split_at(split);
    Ok((wrapped_packet, WrappedClientKey(wkc)))
}

/// Header of a data-channel packet. The packet id, tag and ciphertext after it belong to the
/// data-channel crypto layer. For `DATA_V2` the AEAD associated data starts at byte 0 (header
/// included); for `DATA_V1` it starts after the header (openvpn-rfc "AEAD encrypted data
/// channel packet").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataHeader {
    /// `DATA_V1`: byte 0 only.
    V1 {
        /// Key generation.
        key_id: KeyId,
    },
    /// `DATA_V2`: byte 0 and a 24-bit peer id.
    V2 {
        /// Key generation.
        key_id: KeyId,
        /// Server-assigned peer id, 24 bits; [`PEER_ID_UNSET`] when none is assigned.
        peer_id: u32,
    },
}

impl DataHeader {
    /// The opcode of this header.
    pub const fn opcode(&self) -> Opcode {
        match self {
            DataHeader::V1 { .. } => Opcode::DataV1,
            DataHeader::V2 { .. } => Opcode::DataV2,
        }
    }

    /// The key id of this header.
    pub const fn key_id(&self) -> KeyId {
        match *self {
            DataHeader::V1 { key_id } | DataHeader::V2 { key_id, .. } => key_id,
        }
    }

    /// Header length on the wire: 1 or 4.
    pub const fn encoded_len(&self) -> usize {
        match self {
            DataHeader::V1 { .. } => DATA_V1_HEADER_LEN,
            DataHeader::V2 { .. } => DATA_V2_HEADER_LEN,
        }
    }

    /// Decodes the header and returns it with the rest of the packet.
    pub fn decode(packet: &[u8]) -> Result<(DataHeader, &[u8]), PacketError> {
        let mut reader = Reader::new(packet);
        let (opcode, key_id) = parse_first_byte(reader.u8(Field::Opcode)?)?;
        let header = match opcode {
            Opcode::DataV1 => DataHeader::V1 { key_id },
            Opcode::DataV2 => {
                let [a, b, c] = reader.array(Field::PeerId)?;
                DataHeader::V2 {
                    key_id,
                    peer_id: u32::from_be_bytes([0, a, b, c]),
                }
            }
            control => return Err(PacketError::NotData(control)),
        };
        Ok((header, reader.rest()))
    }

    /// Writes the header to the start of `out` and returns its length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, PacketError> {
        let byte0 = first_byte(self.opcode(), self.key_id());
        match *self {
            DataHeader::V1 { .. } => slice_sink(out, DATA_V1_HEADER_LEN)?.put(&[byte0]),
            DataHeader::V2 { peer_id, .. } => {
                if peer_id > PEER_ID_UNSET {
                    return Err(PacketError::PeerIdOutOfRange(peer_id));
                }
                let [_, a, b, c] = peer_id.to_be_bytes();
                slice_sink(out, DATA_V2_HEADER_LEN)?.put(&[byte0, a, b, c]);
            }
        }
        Ok(self.encoded_len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SID_A: SessionId = SessionId([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08]);
    const SID_B: SessionId = SessionId([0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8]);

    /// HARD_RESET_CLIENT_V2, key 0, no acks, message id 0, empty payload; bytes written from
    /// the draft's field table: 7 << 3 | 0 = 0x38.
    const HARD_RESET_CLIENT: [u8; 14] = [
        0x38, // opcode 7, key id 0
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // own session id
        0x00, // no acks, so no remote session id
        0x00, 0x00, 0x00, 0x00, // message id 0
    ];

    /// CONTROL_V1, key 1, acking 5 and 6, message id 7, first bytes of a TLS record.
    const CONTROL_TWO_ACKS: [u8; 33] = [
        0x21, // opcode 4, key id 1
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // own session id
        0x02, // two acks
        0x00, 0x00, 0x00, 0x05, // ack 5
        0x00, 0x00, 0x00, 0x06, // ack 6
        0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, // remote session id
        0x00, 0x00, 0x00, 0x07, // message id 7
        0x16, 0x03, 0x01, // payload
    ];

    /// ACK_V1, key 2, acking 3.
    const ACK: [u8; 22] = [
        0x2a, // opcode 5, key id 2
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // own session id
        0x01, // one ack
        0x00, 0x00, 0x00, 0x03, // ack 3
        0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, // remote session id
    ];

    /// A 2.6 server's stateless HARD_RESET_SERVER_V2 (ssl_pkt.c `tls_reset_standalone`): acks
    /// the client's packet 0, message id 0, payload = EARLY_NEG_FLAGS TLV with RESEND_WKC.
    const HARD_RESET_SERVER_RESEND_WKC: [u8; 32] = [
        0x40, // opcode 8, key id 0
        0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, // own session id
        0x01, // one ack
        0x00, 0x00, 0x00, 0x00, // ack 0
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // remote session id
        0x00, 0x00, 0x00, 0x00, // message id 0
        0x00, 0x01, 0x00, 0x02, 0x00, 0x01, // TLV type 1, length 2, flags RESEND_WKC
    ];

    #[test]
    fn hard_reset_client_v2_known_bytes() {
        let expected = ControlPacket {
            header: ControlHeader {
                opcode: Opcode::HardResetClientV2,
                key_id: KeyId::ZERO,
                session_id: SID_A,
            },
            body: ControlBody {
                acks: vec![],
                remote_session_id: None,
                message_id: Some(0),
                payload: &[],
            },
        };
        assert_eq!(
            ControlPacket::decode(&HARD_RESET_CLIENT),
            Ok(expected.clone())
        );
        assert_eq!(expected.to_vec().unwrap(), HARD_RESET_CLIENT);
        let mut buf = [0xffu8; 20];
        assert_eq!(expected.encode(&mut buf), Ok(14));
        assert_eq!(buf[..14], HARD_RESET_CLIENT);
    }

    #[test]
    fn control_v1_with_two_acks_known_bytes() {
        let packet = ControlPacket::decode(&CONTROL_TWO_ACKS).unwrap();
        assert_eq!(packet.header.opcode, Opcode::ControlV1);
        assert_eq!(packet.header.key_id.get(), 1);
        assert_eq!(packet.header.session_id, SID_A);
        assert_eq!(packet.body.acks, [5, 6]);
        assert_eq!(packet.body.remote_session_id, Some(SID_B));
        assert_eq!(packet.body.message_id, Some(7));
        assert_eq!(packet.body.payload, [0x16, 0x03, 0x01]);
        // The payload is a view into the input, not a copy.
        assert!(std::ptr::eq(packet.body.payload, &CONTROL_TWO_ACKS[30..]));
        assert_eq!(packet.to_vec().unwrap(), CONTROL_TWO_ACKS);
    }

    #[test]
    fn ack_v1_known_bytes() {
        let packet = ControlPacket::decode(&ACK).unwrap();
        assert_eq!(packet.header.opcode, Opcode::AckV1);
        assert_eq!(packet.header.key_id.get(), 2);
        assert_eq!(packet.body.acks, [3]);
        assert_eq!(packet.body.remote_session_id, Some(SID_B));
        assert_eq!(packet.body.message_id, None);
        assert!(packet.body.payload.is_empty());
        assert_eq!(packet.to_vec().unwrap(), ACK);
    }

    /// Bytes captured on loopback from Debian's OpenVPN 2.6.14 (`--tls-client --dev null`, no
    /// tls-auth): its first packet, a HARD_RESET_CLIENT_V2.
    #[test]
    fn decodes_real_openvpn_client_reset() {
        let captured = [
            0x38, 0xc8, 0xc6, 0x53, 0xe8, 0xd6, 0xe0, 0x68, 0x74, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        let packet = ControlPacket::decode(&captured).unwrap();
        assert_eq!(packet.header.opcode, Opcode::HardResetClientV2);
        assert_eq!(packet.header.key_id, KeyId::ZERO);
        assert_eq!(
            packet.header.session_id,
            SessionId([0xc8, 0xc6, 0x53, 0xe8, 0xd6, 0xe0, 0x68, 0x74])
        );
        assert!(packet.body.acks.is_empty());
        assert_eq!(packet.body.message_id, Some(0));
        assert!(packet.body.payload.is_empty());
        assert_eq!(packet.to_vec().unwrap(), captured);
    }

    /// OpenVPN 2.6.14 (`--tls-server --dev null`) answering our `HARD_RESET_CLIENT` bytes,
    /// over UDP and over TCP (length-prefixed): it acks our message 0 and echoes our session id,
    /// so it accepted what this encoder produces.
    #[test]
    fn decodes_real_openvpn_server_reset_udp_and_tcp() {
        use super::super::framing::FrameDecoder;

        let udp = [
            0x40, 0xa7, 0xe3, 0x36, 0xc1, 0x12, 0x1a, 0x41, 0x52, 0x01, 0x00, 0x00, 0x00, 0x00,
            0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x00, 0x00, 0x00, 0x00,
        ];
        let tcp = [
            0x00, 0x1a, 0x40, 0x57, 0xef, 0x2e, 0x3f, 0xf3, 0xf6, 0x8e, 0xcf, 0x01, 0x00, 0x00,
            0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x00, 0x00, 0x00, 0x00,
        ];
        let mut decoder = FrameDecoder::default();
        assert_eq!(decoder.push(&tcp), tcp.len());
        let tcp_packet = decoder.next_frame().unwrap().unwrap().to_vec();
        assert_eq!(decoder.next_frame(), None);

        for (bytes, server_sid) in [
            (&udp[..], [0xa7, 0xe3, 0x36, 0xc1, 0x12, 0x1a, 0x41, 0x52]),
            (
                &tcp_packet[..],
                [0x57, 0xef, 0x2e, 0x3f, 0xf3, 0xf6, 0x8e, 0xcf],
            ),
        ] {
            let packet = ControlPacket::decode(bytes).unwrap();
            assert_eq!(packet.header.opcode, Opcode::HardResetServerV2);
            assert_eq!(packet.header.session_id, SessionId(server_sid));
            assert_eq!(packet.body.acks, [0]);
            assert_eq!(packet.body.remote_session_id, Some(SID_A));
            assert_eq!(packet.body.message_id, Some(0));
            assert!(packet.body.payload.is_empty());
            assert_eq!(packet.to_vec().unwrap(), bytes);
        }
    }

    /// From a full OpenVPN 2.6.14 p2p session on loopback (every packet of which decoded and
    /// re-encoded identically): the client's ACK_V1 re-acking its five most recent receipts,
    /// the server's CONTROL_V1 carrying its TLS ServerHello, and a DATA_V2 keepalive.
    #[test]
    fn decodes_real_openvpn_session_packets() {
        let server_sid = SessionId([0x8e, 0xbb, 0x53, 0x5f, 0xab, 0x39, 0x2a, 0xad]);
        let client_sid = SessionId([0x3e, 0x4b, 0xb4, 0xc8, 0x0a, 0x0c, 0xc0, 0x45]);
        let ack = [
            0x28, 0x8e, 0xbb, 0x53, 0x5f, 0xab, 0x39, 0x2a, 0xad, 0x05, 0x00, 0x00, 0x00, 0x04,
            0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00,
            0x00, 0x00, 0x3e, 0x4b, 0xb4, 0xc8, 0x0a, 0x0c, 0xc0, 0x45,
        ];
        let packet = ControlPacket::decode(&ack).unwrap();
        assert_eq!(packet.header.opcode, Opcode::AckV1);
        assert_eq!(packet.header.session_id, server_sid);
        assert_eq!(packet.body.acks, [4, 3, 2, 1, 0]);
        assert_eq!(packet.body.remote_session_id, Some(client_sid));
        assert_eq!(packet.to_vec().unwrap(), ack);

        // First 32 bytes of a 1223-byte packet; the payload is cut, which is undetectable.
        let control_prefix = [
            0x20, 0x3e, 0x4b, 0xb4, 0xc8, 0x0a, 0x0c, 0xc0, 0x45, 0x02, 0x00, 0x00, 0x00, 0x01,
            0x00, 0x00, 0x00, 0x00, 0x8e, 0xbb, 0x53, 0x5f, 0xab, 0x39, 0x2a, 0xad, 0x00, 0x00,
            0x00, 0x01, 0x16, 0x03,
        ];
        let packet = ControlPacket::decode(&control_prefix).unwrap();
        assert_eq!(packet.header.opcode, Opcode::ControlV1);
        assert_eq!(packet.body.acks, [1, 0]);
        assert_eq!(packet.body.message_id, Some(1));
        assert_eq!(packet.body.payload, [0x16, 0x03]); // TLS handshake record

        let data = [
            0x48, 0x8a, 0x8b, 0x89, 0x00, 0x00, 0x00, 0x01, 0x09, 0xa6, 0x67, 0xde,
        ];
        let (header, rest) = DataHeader::decode(&data).unwrap();
        assert_eq!(
            header,
            DataHeader::V2 {
                key_id: KeyId::ZERO,
                peer_id: 9_079_689 // "peer-id 9079689" in OpenVPN's log
            }
        );
        assert_eq!(rest, &data[4..]); // packet id 1, then the AEAD tag
    }

    #[test]
    fn header_and_body_decode_separately() {
        let (header, rest) = ControlHeader::decode(&CONTROL_TWO_ACKS).unwrap();
        assert_eq!(header.to_bytes().unwrap(), CONTROL_TWO_ACKS[..9]);
        assert_eq!(rest, &CONTROL_TWO_ACKS[9..]);
        let body = ControlBody::decode(header.opcode, rest).unwrap();
        let mut out = Vec::new();
        body.append_to(header.opcode, &mut out).unwrap();
        assert_eq!(out, rest);
        let mut fixed = [0u8; 24];
        assert_eq!(body.encode(header.opcode, &mut fixed), Ok(24));
        assert_eq!(fixed, rest);
    }

    #[test]
    fn server_reset_carries_early_negotiation_flags() {
        let packet = ControlPacket::decode(&HARD_RESET_SERVER_RESEND_WKC).unwrap();
        assert!(packet.header.opcode.is_hard_reset());
        assert_eq!(packet.body.acks, [0]);
        assert_eq!(packet.body.remote_session_id, Some(SID_A));
        let negotiation = EarlyNegotiation::decode(packet.body.payload).unwrap();
        assert_eq!(
            negotiation.tlvs,
            [EarlyNegTlv::Flags(EarlyNegFlags::RESEND_WKC)]
        );
        assert!(negotiation.resend_wkc());
        let mut payload = Vec::new();
        negotiation.append_to(&mut payload);
        assert_eq!(payload, packet.body.payload);
        assert_eq!(negotiation.encoded_len(), payload.len());
    }

    #[test]
    fn early_negotiation_skips_unknown_tlvs() {
        let payload = [
            0x12, 0x34, 0x00, 0x03, 0xaa, 0xbb, 0xcc, // unknown type, 3 bytes
            0x00, 0x01, 0x00, 0x02, 0x00, 0x00, // flags, none set
            0xff, 0xff, 0x00, 0x00, // unknown type, empty
        ];
        let negotiation = EarlyNegotiation::decode(&payload).unwrap();
        assert_eq!(negotiation.tlvs, [EarlyNegTlv::Flags(EarlyNegFlags(0))]);
        assert!(!negotiation.resend_wkc());
        assert_eq!(EarlyNegotiation::decode(&[]).unwrap().tlvs, []);
    }

    #[test]
    fn early_negotiation_errors() {
        assert_eq!(
            EarlyNegotiation::decode(&[0x00, 0x01, 0x00]),
            Err(PacketError::Truncated {
                field: Field::TlvHeader,
                needed: 4,
                have: 3
            })
        );
        assert_eq!(
            EarlyNegotiation::decode(&[0x00, 0x07, 0x00, 0x04, 0xaa]),
            Err(PacketError::Truncated {
                field: Field::TlvValue,
                needed: 8,
                have: 5
            })
        );
        assert_eq!(
            EarlyNegotiation::decode(&[0x00, 0x01, 0x00, 0x01, 0x01]),
            Err(PacketError::TlvLength {
                tlv_type: 1,
                len: 1,
                expected: 2
            })
        );
    }

    #[test]
    fn early_negotiation_announcement_in_replay_id() {
        assert!(replay_id_announces_early_negotiation(EARLY_NEG_START + 1));
        assert!(replay_id_announces_early_negotiation(0xff00_0000));
        assert!(!replay_id_announces_early_negotiation(1));
        assert!(!replay_id_announces_early_negotiation(0x0e00_0001));
    }

    /// Every proper prefix of a packet fails with `Truncated` in the field that was cut.
    fn assert_truncation_points(packet: &[u8], fields: &[(usize, Field)]) {
        for cut in 0..packet.len() {
            let field = fields
                .iter()
                .rev()
                .find(|(start, _)| *start <= cut)
                .map(|(_, field)| *field);
            match ControlPacket::decode(&packet[..cut]) {
                Err(PacketError::Truncated {
                    field: got,
                    needed,
                    have,
                }) => {
                    assert_eq!(Some(got), field, "cut at {cut}");
                    assert_eq!(have, cut);
                    assert!(needed > cut, "cut at {cut}: needed {needed}");
                }
                // Cutting into the payload only shortens the payload.
                Ok(packet) => assert!(field.is_none(), "cut at {cut} decoded {packet:?}"),
                Err(other) => panic!("cut at {cut}: {other}"),
            }
        }
    }

    #[test]
    fn truncation_points_hard_reset() {
        assert_truncation_points(
            &HARD_RESET_CLIENT,
            &[
                (0, Field::Opcode),
                (1, Field::SessionId),
                (9, Field::AckCount),
                (10, Field::MessageId),
            ],
        );
    }

    #[test]
    fn truncation_points_control_with_acks() {
        let fields = [
            (0, Field::Opcode),
            (1, Field::SessionId),
            (9, Field::AckCount),
            (10, Field::AckedMessageId),
            (18, Field::RemoteSessionId),
            (26, Field::MessageId),
        ];
        // Past the message id, a cut shortens the TLS payload, which is not detectable.
        for cut in 30..CONTROL_TWO_ACKS.len() {
            let packet = ControlPacket::decode(&CONTROL_TWO_ACKS[..cut]).unwrap();
            assert_eq!(packet.body.payload, &CONTROL_TWO_ACKS[30..cut]);
        }
        for cut in 0..30 {
            let expected = fields.iter().rev().find(|(s, _)| *s <= cut).unwrap().1;
            match ControlPacket::decode(&CONTROL_TWO_ACKS[..cut]) {
                Err(PacketError::Truncated { field, have, .. }) => {
                    assert_eq!((field, have), (expected, cut));
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        // Exact `needed` in the middle of the second ack.
        assert_eq!(
            ControlPacket::decode(&CONTROL_TWO_ACKS[..15]),
            Err(PacketError::Truncated {
                field: Field::AckedMessageId,
                needed: 18,
                have: 15
            })
        );
    }

    #[test]
    fn truncation_points_ack() {
        assert_truncation_points(
            &ACK,
            &[
                (0, Field::Opcode),
                (1, Field::SessionId),
                (9, Field::AckCount),
                (10, Field::AckedMessageId),
                (14, Field::RemoteSessionId),
            ],
        );
    }

    #[test]
    fn truncation_offsets_are_relative_to_the_body_when_decoding_a_body() {
        assert_eq!(
            ControlBody::decode(Opcode::ControlV1, &CONTROL_TWO_ACKS[9..20]),
            Err(PacketError::Truncated {
                field: Field::RemoteSessionId,
                needed: 17,
                have: 11
            })
        );
        assert_eq!(
            ControlHeader::decode(&[0x38, 1, 2]),
            Err(PacketError::Truncated {
                field: Field::SessionId,
                needed: 9,
                have: 3
            })
        );
    }

    #[test]
    fn opcode_errors() {
        // Opcodes 1 and 2 are the key-method-1 resets: recognised, refused.
        assert_eq!(
            ControlPacket::decode(&[1 << 3, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(PacketError::ObsoleteOpcode(1))
        );
        assert_eq!(
            peek_opcode(&[2 << 3 | 5]),
            Err(PacketError::ObsoleteOpcode(2))
        );
        for unknown in [0u8, 12, 31] {
            assert_eq!(
                peek_opcode(&[unknown << 3]),
                Err(PacketError::UnknownOpcode(unknown))
            );
        }
        assert_eq!(
            peek_opcode(&[]),
            Err(PacketError::Truncated {
                field: Field::Opcode,
                needed: 1,
                have: 0
            })
        );
        assert_eq!(
            ControlPacket::decode(&[0x48, 0, 0, 0]),
            Err(PacketError::NotControl(Opcode::DataV2))
        );
        assert_eq!(
            DataHeader::decode(&HARD_RESET_CLIENT),
            Err(PacketError::NotData(Opcode::HardResetClientV2))
        );
    }

    #[test]
    fn opcode_values_and_classes() {
        for value in 0..32u8 {
            if let Ok(opcode) = Opcode::try_from(value) {
                assert_eq!(opcode.value(), value);
                assert_ne!(opcode.is_data(), opcode.is_control());
            }
        }
        assert_eq!(first_byte(Opcode::DataV2, KeyId::new(7).unwrap()), 0x4f);
        assert_eq!(
            parse_first_byte(0x5d),
            Ok((Opcode::ControlWkcV1, KeyId::new(5).unwrap()))
        );
        assert!(Opcode::AckV1.is_control() && !Opcode::AckV1.has_message_id());
        assert!(!Opcode::DataV1.has_message_id());
        assert!(Opcode::HardResetClientV3.carries_wrapped_client_key());
        assert!(!Opcode::SoftResetV1.is_hard_reset());
    }

    #[test]
    fn key_id_range_and_renegotiation_wrap() {
        assert_eq!(KeyId::new(8), Err(PacketError::InvalidKeyId(8)));
        assert_eq!(KeyId::try_from(7).map(KeyId::get), Ok(7));
        let sequence: Vec<u8> = std::iter::successors(Some(KeyId::ZERO), |k| Some(k.next()))
            .take(10)
            .map(KeyId::get)
            .collect();
        assert_eq!(sequence, [0, 1, 2, 3, 4, 5, 6, 7, 1, 2]);
    }

    #[test]
    fn too_many_acks_and_ack_payload_rejected() {
        let mut nine = HARD_RESET_CLIENT.to_vec();
        nine[0] = 0x20; // CONTROL_V1
        nine[9] = 9;
        nine.extend([0u8; 9 * 4 + 8 + 4]);
        assert_eq!(
            ControlPacket::decode(&nine),
            Err(PacketError::TooManyAcks(9))
        );

        let mut ack_with_payload = ACK.to_vec();
        ack_with_payload.extend([0xde, 0xad]);
        assert_eq!(
            ControlPacket::decode(&ack_with_payload),
            Err(PacketError::AckWithPayload(2))
        );
    }

    #[test]
    fn encode_rejects_inconsistent_bodies() {
        let header = ControlHeader {
            opcode: Opcode::ControlV1,
            key_id: KeyId::ZERO,
            session_id: SID_A,
        };
        let body = ControlBody {
            acks: vec![1; 9],
            remote_session_id: Some(SID_B),
            message_id: Some(1),
            payload: b"x",
        };
        let packet = |body: ControlBody<'static>| ControlPacket { header, body };
        assert_eq!(
            packet(body.clone()).to_vec(),
            Err(PacketError::TooManyAcks(9))
        );
        let no_remote = ControlBody {
            acks: vec![1],
            remote_session_id: None,
            ..body.clone()
        };
        assert_eq!(
            packet(no_remote).to_vec(),
            Err(PacketError::RemoteSessionIdMismatch {
                acks: 1,
                present: false
            })
        );
        let stray_remote = ControlBody {
            acks: vec![],
            ..body.clone()
        };
        assert!(matches!(
            packet(stray_remote).to_vec(),
            Err(PacketError::RemoteSessionIdMismatch { acks: 0, .. })
        ));
        let no_message_id = ControlBody {
            acks: vec![],
            remote_session_id: None,
            message_id: None,
            payload: b"",
        };
        assert_eq!(
            packet(no_message_id.clone()).to_vec(),
            Err(PacketError::MessageIdMismatch {
                opcode: Opcode::ControlV1,
                present: false
            })
        );
        assert_eq!(
            ControlBody {
                message_id: Some(3),
                ..no_message_id.clone()
            }
            .append_to(Opcode::AckV1, &mut Vec::new()),
            Err(PacketError::MessageIdMismatch {
                opcode: Opcode::AckV1,
                present: true
            })
        );
        assert_eq!(
            no_message_id.append_to(Opcode::DataV1, &mut Vec::new()),
            Err(PacketError::NotControl(Opcode::DataV1))
        );
        let valid = ControlPacket::decode(&CONTROL_TWO_ACKS).unwrap();
        let mut small = [0u8; 32];
        assert_eq!(
            valid.encode(&mut small),
            Err(PacketError::BufferTooSmall {
                needed: 33,
                have: 32
            })
        );
        assert_eq!(
            header.encode(&mut [0u8; 8]),
            Err(PacketError::BufferTooSmall { needed: 9, have: 8 })
        );
    }

    #[test]
    fn data_headers_known_bytes() {
        let v2 = [0x4a, 0x00, 0x01, 0x02, 0xaa, 0xbb];
        let (header, rest) = DataHeader::decode(&v2).unwrap();
        assert_eq!(
            header,
            DataHeader::V2 {
                key_id: KeyId::new(2).unwrap(),
                peer_id: 0x000102
            }
        );
        assert_eq!(rest, [0xaa, 0xbb]);
        let mut out = [0u8; 4];
        assert_eq!(header.encode(&mut out), Ok(4));
        assert_eq!(out, v2[..4]);

        let (header, rest) = DataHeader::decode(&[0x31, 0xcc]).unwrap();
        assert_eq!(
            header,
            DataHeader::V1 {
                key_id: KeyId::new(1).unwrap()
            }
        );
        assert_eq!(rest, [0xcc]);
        assert_eq!(header.encode(&mut out[..1]), Ok(1));
        assert_eq!(out[0], 0x31);

        let unset = DataHeader::V2 {
            key_id: KeyId::ZERO,
            peer_id: PEER_ID_UNSET,
        };
        assert_eq!(unset.encode(&mut out), Ok(4));
        assert_eq!(out, [0x48, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn data_header_errors() {
        assert_eq!(
            DataHeader::decode(&[0x48, 0x00, 0x01]),
            Err(PacketError::Truncated {
                field: Field::PeerId,
                needed: 4,
                have: 3
            })
        );
        let too_big = DataHeader::V2 {
            key_id: KeyId::ZERO,
            peer_id: 0x0100_0000,
        };
        assert_eq!(
            too_big.encode(&mut [0u8; 4]),
            Err(PacketError::PeerIdOutOfRange(0x0100_0000))
        );
        let header = DataHeader::V2 {
            key_id: KeyId::ZERO,
            peer_id: 1,
        };
        assert_eq!(
            header.encode(&mut [0u8; 3]),
            Err(PacketError::BufferTooSmall { needed: 4, have: 3 })
        );
    }

    fn wkc(len: usize) -> Vec<u8> {
        let mut key: Vec<u8> = (0..len - 2).map(|i| i as u8).collect();
        key.extend((len as u16).to_be_bytes());
        key
    }

    #[test]
    fn wrapped_client_key_split() {
        // A tls-crypt-wrapped packet: header, replay id, tag, some ciphertext.
        let mut wrapped = vec![0x50]; // HARD_RESET_CLIENT_V3, key 0
        wrapped.extend(SID_A.0);
        wrapped.extend([0x0f, 0, 0, 1, 0x65, 0, 0, 0]);
        wrapped.extend([0x77; 32 + 5]);
        let key = wkc(290); // 32 tag + 256 Kc + 2 length, no metadata
        let mut packet = wrapped.clone();
        packet.extend(&key);

        let (front, split_key) = split_wrapped_client_key(&packet).unwrap();
        assert_eq!(front, wrapped);
        assert_eq!(split_key.as_bytes(), key);
        assert_eq!(WrappedClientKey::new(&key), Ok(split_key));

        // CONTROL_WKC_V1 works the same way.
        packet[0] = 0x58;
        assert!(split_wrapped_client_key(&packet).is_ok());
    }

    #[test]
    fn wrapped_client_key_errors() {
        let mut packet = HARD_RESET_CLIENT.to_vec();
        packet.extend(wkc(300));
        assert_eq!(
            split_wrapped_client_key(&packet),
            Err(PacketError::NoWrappedKey(Opcode::HardResetClientV2))
        );
        packet[0] = 0x50;
        assert!(split_wrapped_client_key(&packet).is_ok());

        // The key would eat into the 9-byte header.
        let mut short = vec![0x50, 1, 2, 3, 4, 5, 6, 7];
        short.extend(wkc(300));
        assert_eq!(
            split_wrapped_client_key(&short),
            Err(PacketError::WrappedKeyLength {
                len: 300,
                packet_len: 308
            })
        );
        // Longer than the packet.
        let mut lie = packet.clone();
        let end = lie.len();
        lie[end - 2..].copy_from_slice(&1000u16.to_be_bytes());
        assert!(matches!(
            split_wrapped_client_key(&lie),
            Err(PacketError::WrappedKeyLength { len: 1000, .. })
        ));
        // Lengths OpenVPN never accepts: below its own 2 bytes, above 1024.
        for bad in [0u16, 1, 1025, 0xffff] {
            let mut p = vec![0x50; 2000];
            p.extend(bad.to_be_bytes());
            assert!(matches!(
                split_wrapped_client_key(&p),
                Err(PacketError::WrappedKeyLength { .. })
            ));
        }
        assert_eq!(
            split_wrapped_client_key(&[0x50]),
            Err(PacketError::Truncated {
                field: Field::WrappedKeyLength,
                needed: 2,
                have: 1
            })
        );
        assert!(WrappedClientKey::new(&[0, 3]).is_err());
        assert_eq!(
            WrappedClientKey::new(&[0, 2]).map(|k| k.as_bytes().len()),
            Ok(2)
        );
    }

    #[test]
    fn session_id_debug_is_hex() {
        assert_eq!(format!("{SID_B:?}"), "SessionId(a1a2a3a4a5a6a7a8)");
        assert!(SessionId::default().is_zero() && !SID_A.is_zero());
    }

    fn any_control_opcode() -> impl Strategy<Value = Opcode> {
        prop::sample::select(vec![
            Opcode::SoftResetV1,
            Opcode::ControlV1,
            Opcode::AckV1,
            Opcode::HardResetClientV2,
            Opcode::HardResetServerV2,
            Opcode::HardResetClientV3,
            Opcode::ControlWkcV1,
        ])
    }

    /// Owned parts of a valid control packet (proptest values must be `'static`).
    #[derive(Debug, Clone)]
    struct Parts {
        header: ControlHeader,
        acks: Vec<u32>,
        remote: SessionId,
        message_id: u32,
        payload: Vec<u8>,
    }

    impl Parts {
        fn packet(&self) -> ControlPacket<'_> {
            let has_message_id = self.header.opcode.has_message_id();
            ControlPacket {
                header: self.header,
                body: ControlBody {
                    acks: self.acks.clone(),
                    remote_session_id: (!self.acks.is_empty()).then_some(self.remote),
                    message_id: has_message_id.then_some(self.message_id),
                    payload: if has_message_id { &self.payload } else { &[] },
                },
            }
        }
    }

    fn any_parts() -> impl Strategy<Value = Parts> {
        (
            any_control_opcode(),
            0u8..=7,
            any::<[u8; 8]>(),
            prop::collection::vec(any::<u32>(), 0..=MAX_ACKS),
            any::<[u8; 8]>(),
            any::<u32>(),
            prop::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(
                |(opcode, key, sid, acks, remote, message_id, payload)| Parts {
                    header: ControlHeader {
                        opcode,
                        key_id: KeyId(key),
                        session_id: SessionId(sid),
                    },
                    acks,
                    remote: SessionId(remote),
                    message_id,
                    payload,
                },
            )
    }

    proptest! {
        #[test]
        fn control_packet_round_trips(parts in any_parts()) {
            let packet = parts.packet();
            let bytes = packet.to_vec().unwrap();
            prop_assert_eq!(bytes.len(), packet.encoded_len());
            prop_assert_eq!(ControlPacket::decode(&bytes).unwrap(), packet.clone());

            let mut fixed = vec![0u8; bytes.len()];
            prop_assert_eq!(packet.encode(&mut fixed), Ok(bytes.len()));
            prop_assert_eq!(&fixed, &bytes);

            // Header and body separately give the same bytes as the whole packet.
            let mut split = packet.header.to_bytes().unwrap().to_vec();
            packet.body.append_to(packet.header.opcode, &mut split).unwrap();
            prop_assert_eq!(split, bytes);
        }

        #[test]
        fn data_header_round_trips(
            v2 in any::<bool>(),
            key in 0u8..=7,
            peer_id in 0u32..=PEER_ID_UNSET,
            rest in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let key_id = KeyId(key);
            let header = if v2 {
                DataHeader::V2 { key_id, peer_id }
            } else {
                DataHeader::V1 { key_id }
            };
            let mut bytes = vec![0u8; header.encoded_len()];
            prop_assert_eq!(header.encode(&mut bytes), Ok(header.encoded_len()));
            bytes.extend(&rest);
            let (decoded, decoded_rest) = DataHeader::decode(&bytes).unwrap();
            prop_assert_eq!(decoded, header);
            prop_assert_eq!(decoded_rest, &rest[..]);
        }

        #[test]
        fn early_negotiation_round_trips(flags in prop::collection::vec(any::<u16>(), 0..5)) {
            let negotiation = EarlyNegotiation {
                tlvs: flags.into_iter().map(|f| EarlyNegTlv::Flags(EarlyNegFlags(f))).collect(),
            };
            let mut bytes = Vec::new();
            negotiation.append_to(&mut bytes);
            prop_assert_eq!(bytes.len(), negotiation.encoded_len());
            prop_assert_eq!(EarlyNegotiation::decode(&bytes).unwrap(), negotiation);
        }

        /// Decoding arbitrary bytes never panics, and whatever decodes re-encodes to the same
        /// bytes (the plain layout has exactly one encoding).
        #[test]
        fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
            if let Ok(packet) = ControlPacket::decode(&bytes) {
                prop_assert_eq!(packet.to_vec().unwrap(), bytes.clone());
            }
            if let Ok((header, rest)) = ControlHeader::decode(&bytes) {
                prop_assert_eq!(&header.to_bytes().unwrap()[..], &bytes[..9]);
                prop_assert_eq!(rest, &bytes[9..]);
            }
            for opcode in [Opcode::ControlV1, Opcode::AckV1, Opcode::DataV2] {
                if let Ok(body) = ControlBody::decode(opcode, &bytes) {
                    let mut out = Vec::new();
                    body.append_to(opcode, &mut out).unwrap();
                    prop_assert_eq!(out, bytes.clone());
                }
            }
            if let Ok((header, rest)) = DataHeader::decode(&bytes) {
                let mut out = vec![0u8; header.encoded_len()];
                header.encode(&mut out).unwrap();
                out.extend(rest);
                prop_assert_eq!(out, bytes.clone());
            }
            let _ = EarlyNegotiation::decode(&bytes);
            if let Ok((front, key)) = split_wrapped_client_key(&bytes) {
                prop_assert_eq!(front.len() + key.as_bytes().len(), bytes.len());
                prop_assert!(WrappedClientKey::new(key.as_bytes()).is_ok());
            }
        }

        /// Like `decoders_never_panic`, but starting from a valid packet with a few bytes
        /// changed, which reaches deeper into the decoder than uniform noise.
        #[test]
        fn mutated_packets_never_panic(
            parts in any_parts(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut bytes = parts.packet().to_vec().unwrap();
            for (index, value) in edits {
                let at = index.index(bytes.len());
                bytes[at] = value;
            }
            if let Ok(packet) = ControlPacket::decode(&bytes) {
                prop_assert_eq!(packet.to_vec().unwrap(), bytes);
            }
        }
    }
}
