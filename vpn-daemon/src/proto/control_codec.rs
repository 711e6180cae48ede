//! Session-level wire wrapping of control packets: plain, `--tls-auth` or `--tls-crypt`.
//!
//! A [`ControlCodec`] belongs to one TLS session (one pair of session ids) and is shared by all
//! key ids of that session, like OpenVPN's `tls_session.tls_wrap`: the replay ids it puts on
//! outgoing packets count up across key ids, and incoming replay ids are checked in one window
//! per session (ssl.c `tls_session_init` calls `packet_id_init(&session->tls_wrap.opt.packet_id,
//! replay_window, replay_time, ...)` once per session; `key_state_init` does not touch it).
//!
//! The replay window takes OpenVPN's `--replay-window n t` (default 64 packets, 15 s: options.c
//! sets `replay_window = DEFAULT_SEQ_BACKTRACK`, `replay_time = DEFAULT_TIME_BACKTRACK`), the
//! same option as the data channel. OpenVPN checks replay only after the HMAC (tls-auth,
//! crypto.c `openvpn_decrypt_v1`) or the tag (tls-crypt, tls_crypt.c `tls_crypt_unwrap`)
//! verified; so do we, and a packet that fails authentication never moves the window.
//!
//! Not covered here:
//! * the stateless first-packet check of a UDP server (ssl_pkt.c `tls_pre_decrypt_lite`), which
//!   authenticates but ignores replay ids (`CO_IGNORE_PACKET_ID`): use
//!   [`ControlCodec::decode_stateless`];
//! * `dynamic tls-crypt` renegotiations (2.6 `tls_wrap_reneg`, used for key ids > 0 when both
//!   sides announce `IV_PROTO_DYN_TLS_CRYPT`): that is a second wrap with its own replay state,
//!   i.e. a second `ControlCodec` the session picks by key id (ssl_pkt.h
//!   `tls_session_get_tls_wrap`);
//! * appending a tls-crypt-v2 wrapped client key on send. On receive, a tls-crypt codec strips
//!   the key from `HARD_RESET_CLIENT_V3`/`CONTROL_WKC_V1` (the caller has already used it to
//!   build the [`TlsCrypt`]).
use std::time::Instant;

use super::control_replay::{
    ControlReplayWindow, ReplayError, ReplayId, ReplayIdSequence, ReplayIdsExhausted,
};
use super::packet::{
    peek_opcode, split_wrapped_client_key, ControlBody, ControlHeader, ControlPacket, Opcode,
    PacketError,
};
use super::tls_auth::{TlsAuth, TlsAuthError};
use super::tls_crypt::{TlsCrypt, TlsCryptError, OVERHEAD as TLS_CRYPT_OVERHEAD};

/// How control packets are protected on the wire.
#[derive(Debug)]
pub enum Protection {
    /// Plain control packets: no authentication before TLS (no `--tls-auth`/`--tls-crypt`).
    None,
    /// `--tls-auth`: HMAC and replay id.
    TlsAuth(TlsAuth),
    /// `--tls-crypt` (v1): encrypted and authenticated, with replay id.
    TlsCrypt(TlsCrypt),
}

/// Why a control packet could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlCodecError {
    /// Too short to hold the protection's fields; cannot be authenticated. Stay silent.
    #[error("control packet of {len} bytes is shorter than its protection needs ({min})")]
    TooShort {
        /// The packet length.
        len: usize,
        /// Header plus protection fields.
        min: usize,
    },
    /// HMAC or tag mismatch: another key, the wrong key direction or TLS role, or a modified
    /// packet. Callers stay silent (this is the point of tls-auth/tls-crypt).
    #[error("control packet failed authentication (wrong key, direction or role, or modified)")]
    Unauthenticated,
    /// An authentic packet whose replay id was refused (a duplicate, too old, or expired).
    #[error("control packet replay id refused: {0}")]
    Replay(ReplayError),
    /// The bytes (or the packet to encode) do not form a valid control packet.
    #[error("malformed control packet: {0}")]
    Malformed(PacketError),
    /// Sending more than 2^32 packets within one second of unix time.
    #[error("{0}")]
    ReplayIdsExhausted(ReplayIdsExhausted),
    /// A tls-crypt-v2 opcode (`HARD_RESET_CLIENT_V3`, `CONTROL_WKC_V1`) where this codec cannot
    /// handle it: on send (no wrapped client key to append) or without tls-crypt.
    #[error("{0:?} needs tls-crypt-v2 wrapped-key handling this codec does not do")]
    TlsCryptV2Opcode(Opcode),
}

impl From<PacketError> for ControlCodecError {
    fn from(error: PacketError) -> Self {
        ControlCodecError::Malformed(error)
    }
}

impl From<ReplayIdsExhausted> for ControlCodecError {
    fn from(error: ReplayIdsExhausted) -> Self {
        ControlCodecError::ReplayIdsExhausted(error)
    }
}

impl From<TlsAuthError> for ControlCodecError {
    fn from(error: TlsAuthError) -> Self {
        match error {
            TlsAuthError::TooShort { len, min } => ControlCodecError::TooShort { len, min },
            TlsAuthError::Unauthenticated => ControlCodecError::Unauthenticated,
        }
    }
}

impl From<TlsCryptError> for ControlCodecError {
    fn from(error: TlsCryptError) -> Self {
        match error {
            TlsCryptError::TooShort { len, min } => ControlCodecError::TooShort { len, min },
            TlsCryptError::Unauthenticated => ControlCodecError::Unauthenticated,
        }
    }
}

/// Wraps and unwraps the control packets of one TLS session.
#[derive(Debug)]
pub struct ControlCodec {
    protection: Protection,
    send_ids: ReplayIdSequence,
    replay_window: ControlReplayWindow,
    /// Reused buffer for the body of an outgoing packet before it is wrapped.
    body: Vec<u8>,
}

impl ControlCodec {
    /// A codec with OpenVPN's default `--replay-window 64 15`; replay ids sent start at
    /// `(1, now_unix)`.
    pub fn new(protection: Protection, now_unix: u32) -> Self {
        Self::with_replay_window(protection, now_unix, ControlReplayWindow::default())
    }

    /// A codec with a configured `--replay-window` (see [`ControlReplayWindow::new`]).
    pub fn with_replay_window(
        protection: Protection,
        now_unix: u32,
        replay_window: ControlReplayWindow,
    ) -> Self {
        Self {
            protection,
            send_ids: ReplayIdSequence::new(now_unix),
            replay_window,
            body: Vec::new(),
        }
    }

    /// Bytes the protection adds to a plain control packet (for sizing payloads to the MTU).
    pub fn overhead(&self) -> usize {
        match &self.protection {
            Protection::None => 0,
            Protection::TlsAuth(auth) => auth.overhead(),
            Protection::TlsCrypt(_) => TLS_CRYPT_OVERHEAD,
        }
    }

    /// The protection in use.
    pub fn protection(&self) -> &Protection {
        &self.protection
    }

    /// Encodes `packet` and wraps it; appends the wire bytes to `out` (nothing is appended on
    /// error). Under tls-auth and tls-crypt every call, retransmissions included, uses a fresh
    /// replay id.
    pub fn encode(
        &mut self,
        now_unix: u32,
        packet: &ControlPacket<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), ControlCodecError> {
        let opcode = packet.header.opcode;
        if opcode.carries_wrapped_client_key() {
            return Err(ControlCodecError::TlsCryptV2Opcode(opcode));
        }
        let header = packet.header.to_bytes()?;
        packet.body.validate(opcode)?;
        let Self {
            protection,
            send_ids,
            body,
            ..
        } = self;
        match protection {
            Protection::None => packet.append_to(out)?,
            Protection::TlsAuth(auth) => {
                let replay_id = send_ids.next_id(now_unix)?;
                body.clear();
                packet.body.append_to(opcode, body)?;
                auth.wrap(&header, replay_id, body, out);
            }
            Protection::TlsCrypt(crypt) => {
                let replay_id = send_ids.next_id(now_unix)?;
                body.clear();
                packet.body.append_to(opcode, body)?;
                crypt.wrap(&header, replay_id, body, out);
            }
        }
        Ok(())
    }

    /// Unwraps `wire` (HMAC verify or decrypt), checks and records its replay id (tls-auth and
    /// tls-crypt only) and decodes it. The returned packet borrows `wire`, or `scratch`, which
    /// receives the tls-crypt plaintext (it is cleared first).
    ///
    /// The replay id is recorded only for packets that authenticated and decoded, so forged or
    /// broken packets never move the window.
    pub fn decode<'a>(
        &mut self,
        now: Instant,
        wire: &'a [u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<ControlPacket<'a>, ControlCodecError> {
        let (packet, replay_id) = open(&self.protection, wire, scratch)?;
        if let Some(replay_id) = replay_id {
            self.replay_window
                .check(replay_id, now)
                .map_err(ControlCodecError::Replay)?;
            self.replay_window.mark(replay_id, now);
        }
        Ok(packet)
    }

    /// Like [`decode`](Self::decode), but neither checks nor records the replay id: for a UDP
    /// server's stateless look at a first packet before any session exists (OpenVPN
    /// `tls_pre_decrypt_lite` authenticates with `CO_IGNORE_PACKET_ID`). The session that is
    /// then created must still [`decode`](Self::decode) the packets it handles.
    pub fn decode_stateless<'a>(
        &self,
        wire: &'a [u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<ControlPacket<'a>, ControlCodecError> {
        open(&self.protection, wire, scratch).map(|(packet, _)| packet)
    }
}

/// Authenticates and decodes one packet; returns its replay id, if the protection has one.
fn open<'a>(
    protection: &Protection,
    wire: &'a [u8],
    scratch: &'a mut Vec<u8>,
) -> Result<(ControlPacket<'a>, Option<ReplayId>), ControlCodecError> {
    let (opcode, _) = peek_opcode(wire)?;
    match protection {
        Protection::None => {
            if opcode.carries_wrapped_client_key() {
                return Err(ControlCodecError::TlsCryptV2Opcode(opcode));
            }
            Ok((ControlPacket::decode(wire)?, None))
        }
        Protection::TlsAuth(auth) => {
            if opcode.carries_wrapped_client_key() {
                return Err(ControlCodecError::TlsCryptV2Opcode(opcode));
            }
            let opened = auth.unwrap(wire)?;
            let (header, _) = ControlHeader::decode(opened.header)?;
            let body = ControlBody::decode(header.opcode, opened.body)?;
            Ok((ControlPacket { header, body }, Some(opened.replay_id)))
        }
        Protection::TlsCrypt(crypt) => {
            let wire = if opcode.carries_wrapped_client_key() {
                split_wrapped_client_key(wire)?.0
            } else {
                wire
            };
            scratch.clear();
            let opened = crypt.unwrap(wire, scratch)?;
            let (header, _) = ControlHeader::decode(opened.header)?;
            let plaintext: &'a Vec<u8> = scratch;
            let body = ControlBody::decode(header.opcode, plaintext)?;
            Ok((ControlPacket { header, body }, Some(opened.replay_id)))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::proto::keys::tests::counting_key;
    use crate::proto::keys::StaticKey;
    use crate::proto::packet::{KeyId, SessionId, CONTROL_HEADER_LEN};
    use crate::proto::vocabulary::{KeyDirection, TlsAuthDigest, TlsRole};

    const NOW_UNIX: u32 = 0x6543_2100;
    const CLIENT_SID: SessionId = SessionId([1, 2, 3, 4, 5, 6, 7, 8]);
    const SERVER_SID: SessionId = SessionId([9, 10, 11, 12, 13, 14, 15, 16]);

    /// Codecs for the two ends of a session under each protection: (name, client, server).
    fn pairs() -> Vec<(&'static str, ControlCodec, ControlCodec)> {
        let key = counting_key();
        let auth =
            |direction, digest| Protection::TlsAuth(TlsAuth::new(&key, Some(direction), digest));
        let crypt = |role| Protection::TlsCrypt(TlsCrypt::new(&key, role));
        let codec = |protection| ControlCodec::new(protection, NOW_UNIX);
        vec![
            ("none", codec(Protection::None), codec(Protection::None)),
            (
                "tls-auth SHA1",
                codec(auth(KeyDirection::Inverse, TlsAuthDigest::Sha1)),
                codec(auth(KeyDirection::Normal, TlsAuthDigest::Sha1)),
            ),
            (
                "tls-auth SHA256",
                codec(auth(KeyDirection::Inverse, TlsAuthDigest::Sha256)),
                codec(auth(KeyDirection::Normal, TlsAuthDigest::Sha256)),
            ),
            (
                "tls-crypt",
                codec(crypt(TlsRole::Client)),
                codec(crypt(TlsRole::Server)),
            ),
        ]
    }

    fn control(message_id: u32, payload: &[u8]) -> ControlPacket<'_> {
        ControlPacket {
            header: ControlHeader {
                opcode: Opcode::ControlV1,
                key_id: KeyId::new(2).unwrap(),
                session_id: CLIENT_SID,
            },
            body: ControlBody {
                acks: vec![7, 3],
                remote_session_id: Some(SERVER_SID),
                message_id: Some(message_id),
                payload,
            },
        }
    }

    fn hard_reset() -> ControlPacket<'static> {
        ControlPacket {
            header: ControlHeader {
                opcode: Opcode::HardResetClientV2,
                key_id: KeyId::ZERO,
                session_id: CLIENT_SID,
            },
            body: ControlBody {
                message_id: Some(0),
                ..ControlBody::default()
            },
        }
    }

    fn ack() -> ControlPacket<'static> {
        ControlPacket {
            header: ControlHeader {
                opcode: Opcode::AckV1,
                key_id: KeyId::ZERO,
                session_id: SERVER_SID,
            },
            body: ControlBody {
                acks: vec![0],
                remote_session_id: Some(CLIENT_SID),
                message_id: None,
                payload: &[],
            },
        }
    }

    fn encoded(codec: &mut ControlCodec, packet: &ControlPacket<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        codec.encode(NOW_UNIX, packet, &mut out).unwrap();
        out
    }

    #[test]
    fn round_trips_under_every_protection() {
        let now = Instant::now();
        let overheads = [0, 20 + 8, 32 + 8, 8 + 32];
        for ((name, mut client, mut server), overhead) in pairs().into_iter().zip(overheads) {
            assert_eq!(client.overhead(), overhead, "{name}");
            for packet in [hard_reset(), control(1, b"tls records"), control(2, b"")] {
                let wire = encoded(&mut client, &packet);
                assert_eq!(wire.len(), packet.encoded_len() + overhead, "{name}");
                // The 9-byte header stays in clear under every protection.
                assert_eq!(
                    wire[..CONTROL_HEADER_LEN],
                    packet.header.to_bytes().unwrap()
                );
                let mut scratch = Vec::new();
                let decoded = server.decode(now, &wire, &mut scratch).unwrap();
                assert_eq!(decoded, packet, "{name}");
            }
            let reply = ack();
            let wire = encoded(&mut server, &reply);
            let mut scratch = Vec::new();
            assert_eq!(client.decode(now, &wire, &mut scratch), Ok(reply), "{name}");
        }
    }

    #[test]
    fn plain_encoding_is_the_plain_packet_and_tls_crypt_hides_the_payload() {
        let pairs = pairs();
        let mut iter = pairs.into_iter();
        let (_, mut plain, _) = iter.next().unwrap();
        let packet = control(1, b"secret-looking payload");
        assert_eq!(encoded(&mut plain, &packet), packet.to_vec().unwrap());
        let (_, mut crypt, _) = iter.nth(2).unwrap();
        let wire = encoded(&mut crypt, &packet);
        assert!(!wire
            .windows(packet.body.payload.len())
            .any(|window| window == packet.body.payload));
    }

    #[test]
    fn replay_ids_count_up_per_codec_across_key_ids() {
        let key = counting_key();
        let auth = TlsAuth::new(&key, Some(KeyDirection::Inverse), TlsAuthDigest::Sha1);
        let mut client = ControlCodec::new(Protection::TlsAuth(auth), NOW_UNIX);
        let server = TlsAuth::new(&key, Some(KeyDirection::Normal), TlsAuthDigest::Sha1);
        let mut packet = control(1, b"x");
        for expected in 1..=3u32 {
            packet.header.key_id = KeyId::new(expected as u8).unwrap();
            let wire = encoded(&mut client, &packet);
            let replay_id = server.unwrap(&wire).unwrap().replay_id;
            assert_eq!(
                replay_id,
                ReplayId {
                    packet_id: expected,
                    time: NOW_UNIX
                }
            );
        }
    }

    #[test]
    fn replays_are_refused_except_without_protection() {
        let now = Instant::now();
        for (name, mut client, mut server) in pairs() {
            let wire = encoded(&mut client, &control(1, b"once"));
            let mut scratch = Vec::new();
            server.decode(now, &wire, &mut scratch).unwrap();
            let again = server.decode(now, &wire, &mut scratch);
            if name == "none" {
                // Without tls-auth/tls-crypt the reliability layer's message ids are the only
                // duplicate filter.
                assert!(again.is_ok());
            } else {
                assert_eq!(
                    again,
                    Err(ControlCodecError::Replay(ReplayError::Duplicate)),
                    "{name}"
                );
                // 70 packets later the first one is below the 64-packet window.
                let mut latest = Vec::new();
                for _ in 0..70 {
                    latest = encoded(&mut client, &control(1, b"x"));
                }
                server.decode(now, &latest, &mut scratch).unwrap();
                assert_eq!(
                    server.decode(now, &wire, &mut scratch),
                    Err(ControlCodecError::Replay(ReplayError::TooOld)),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn reordered_packets_within_the_window_are_accepted_until_the_time_backtrack() {
        let start = Instant::now();
        let key = counting_key();
        let mut client = ControlCodec::new(
            Protection::TlsCrypt(TlsCrypt::new(&key, TlsRole::Client)),
            1,
        );
        let mut server = ControlCodec::new(
            Protection::TlsCrypt(TlsCrypt::new(&key, TlsRole::Server)),
            1,
        );
        let wires: Vec<Vec<u8>> = (0..4)
            .map(|i| encoded(&mut client, &control(i, b"r")))
            .collect();
        let mut scratch = Vec::new();
        server.decode(start, &wires[2], &mut scratch).unwrap();
        server.decode(start, &wires[0], &mut scratch).unwrap();
        // OpenVPN's default time backtrack (15 s) closes gaps below packets seen that long ago.
        let late = start + Duration::from_secs(16);
        assert_eq!(
            server.decode(late, &wires[1], &mut scratch),
            Err(ControlCodecError::Replay(ReplayError::Expired))
        );
        server.decode(late, &wires[3], &mut scratch).unwrap();
    }

    #[test]
    fn wrong_key_is_unauthenticated_and_does_not_move_the_replay_window() {
        let now = Instant::now();
        let stranger_key = StaticKey::from_bytes([0x42; 256]);
        let strangers = [
            Protection::TlsAuth(TlsAuth::new(
                &stranger_key,
                Some(KeyDirection::Inverse),
                TlsAuthDigest::Sha1,
            )),
            Protection::TlsAuth(TlsAuth::new(
                &stranger_key,
                Some(KeyDirection::Inverse),
                TlsAuthDigest::Sha256,
            )),
            Protection::TlsCrypt(TlsCrypt::new(&stranger_key, TlsRole::Client)),
        ];
        for ((name, mut client, mut server), stranger) in pairs().into_iter().skip(1).zip(strangers)
        {
            let mut stranger = ControlCodec::new(stranger, NOW_UNIX);
            let forged = encoded(&mut stranger, &control(1, b"forged"));
            let mut scratch = vec![0xee; 3];
            assert_eq!(
                server.decode(now, &forged, &mut scratch),
                Err(ControlCodecError::Unauthenticated),
                "{name}"
            );
            // A packet from the same side (same key direction / role) is also refused.
            let mut twin = pairs().into_iter().find(|(n, ..)| *n == name).unwrap().2;
            let reflected = encoded(&mut twin, &control(1, b"reflected"));
            assert_eq!(
                server.decode(now, &reflected, &mut scratch),
                Err(ControlCodecError::Unauthenticated),
                "{name}"
            );
            // The genuine packet with the same replay id (1) is still accepted afterwards.
            let genuine = encoded(&mut client, &control(1, b"genuine"));
            let decoded = server.decode(now, &genuine, &mut scratch).unwrap();
            assert_eq!(decoded.body.payload, b"genuine", "{name}");
            // Modified in the header: refused.
            let mut modified = genuine.clone();
            modified[0] ^= 0x08;
            assert_eq!(
                server.decode(now, &modified, &mut scratch),
                Err(ControlCodecError::Unauthenticated),
                "{name}"
            );
        }
    }

    #[test]
    fn short_malformed_and_v2_packets_are_refused() {
        let now = Instant::now();
        for (name, mut client, mut server) in pairs() {
            let mut scratch = Vec::new();
            let short = server.decode(now, &[0x38, 1, 2, 3], &mut scratch);
            if name == "none" {
                assert!(
                    matches!(
                        short,
                        Err(ControlCodecError::Malformed(PacketError::Truncated { .. }))
                    ),
                    "{name}"
                );
            } else {
                assert!(
                    matches!(short, Err(ControlCodecError::TooShort { len: 4, .. })),
                    "{name}"
                );
            }
            assert_eq!(
                server.decode(now, &[], &mut scratch),
                Err(ControlCodecError::Malformed(PacketError::Truncated {
                    field: crate::proto::packet::Field::Opcode,
                    needed: 1,
                    have: 0
                }))
            );
            // Encoding refuses inconsistent packets and tls-crypt-v2 opcodes, appending nothing.
            let mut bad = control(1, b"");
            bad.body.remote_session_id = None;
            let mut out = Vec::new();
            assert!(matches!(
                client.encode(NOW_UNIX, &bad, &mut out),
                Err(ControlCodecError::Malformed(
                    PacketError::RemoteSessionIdMismatch { .. }
                ))
            ));
            let mut v3 = hard_reset();
            v3.header.opcode = Opcode::HardResetClientV3;
            assert_eq!(
                client.encode(NOW_UNIX, &v3, &mut out),
                Err(ControlCodecError::TlsCryptV2Opcode(
                    Opcode::HardResetClientV3
                ))
            );
            assert!(out.is_empty());
        }
    }

    #[test]
    fn tls_auth_body_errors_are_malformed_after_authentication() {
        // An authentic packet whose body is broken: an ACK_V1 with payload.
        let key = counting_key();
        let client = TlsAuth::new(&key, Some(KeyDirection::Inverse), TlsAuthDigest::Sha1);
        let server = TlsAuth::new(&key, Some(KeyDirection::Normal), TlsAuthDigest::Sha1);
        let mut server = ControlCodec::new(Protection::TlsAuth(server), NOW_UNIX);
        let header = ack().header.to_bytes().unwrap();
        let replay_id = ReplayId {
            packet_id: 1,
            time: NOW_UNIX,
        };
        let mut wire = Vec::new();
        client.wrap(&header, replay_id, &[0, 0xde, 0xad], &mut wire);
        let mut scratch = Vec::new();
        assert_eq!(
            server.decode(Instant::now(), &wire, &mut scratch),
            Err(ControlCodecError::Malformed(PacketError::AckWithPayload(2)))
        );
    }

    #[test]
    fn tls_crypt_strips_a_wrapped_client_key_and_others_refuse_v2_opcodes() {
        let now = Instant::now();
        let key = counting_key();
        let client = TlsCrypt::new(&key, TlsRole::Client);
        let mut v3 = hard_reset();
        v3.header.opcode = Opcode::HardResetClientV3;
        let replay_id = ReplayId {
            packet_id: 0x0f00_0001,
            time: NOW_UNIX,
        };
        let mut body = Vec::new();
        v3.body.append_to(v3.header.opcode, &mut body).unwrap();
        let mut wire = Vec::new();
        client.wrap(&v3.header.to_bytes().unwrap(), replay_id, &body, &mut wire);
        // A (fake) wrapped client key: 40 bytes including its 2-byte length.
        wire.extend([0xab; 38]);
        wire.extend(40u16.to_be_bytes());
        for (name, _, mut server) in pairs() {
            let mut scratch = Vec::new();
            let decoded = server.decode(now, &wire, &mut scratch);
            if name == "tls-crypt" {
                assert_eq!(decoded, Ok(v3.clone()));
            } else {
                assert_eq!(
                    decoded,
                    Err(ControlCodecError::TlsCryptV2Opcode(
                        Opcode::HardResetClientV3
                    )),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn decode_stateless_ignores_replay() {
        let now = Instant::now();
        let (_, mut client, mut server) = pairs().into_iter().nth(1).unwrap();
        let wire = encoded(&mut client, &hard_reset());
        let mut scratch = Vec::new();
        assert_eq!(
            server.decode_stateless(&wire, &mut scratch),
            Ok(hard_reset())
        );
        assert_eq!(
            server.decode_stateless(&wire, &mut scratch),
            Ok(hard_reset())
        );
        // The stateless look did not record the id, so the session accepts the packet once.
        assert_eq!(server.decode(now, &wire, &mut scratch), Ok(hard_reset()));
        assert!(matches!(
            server.decode(now, &wire, &mut scratch),
            Err(ControlCodecError::Replay(_))
        ));
    }

    proptest! {
        /// Decoding arbitrary bytes never panics under any protection.
        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let now = Instant::now();
            for (_, _, mut server) in pairs() {
                let mut scratch = Vec::new();
                let _ = server.decode(now, &bytes, &mut scratch);
                let _ = server.decode_stateless(&bytes, &mut scratch);
            }
        }

        /// Valid wire packets with a few bytes changed: never a panic, and under tls-auth and
        /// tls-crypt never accepted unless the bytes were changed back to the original.
        #[test]
        fn mutated_packets_are_refused(
            payload in prop::collection::vec(any::<u8>(), 0..64),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let now = Instant::now();
            for (name, mut client, mut server) in pairs() {
                let wire = encoded(&mut client, &control(5, &payload));
                let mut mutated = wire.clone();
                for (index, value) in &edits {
                    let at = index.index(mutated.len());
                    mutated[at] = *value;
                }
                let mut scratch = Vec::new();
                let result = server.decode(now, &mutated, &mut scratch);
                if name != "none" && mutated != wire {
                    prop_assert!(result.is_err(), "{}", name);
                }
            }
        }
    }
}
