//! `ControlCodec::decode` under every protection (none, tls-auth SHA1/SHA256, tls-crypt) with
//! fixed test keys: no panics on any input, and the crypto does what it promises:
//!
//! * raw bytes: under `Protection::None` the codec agrees with `ControlPacket::decode`; under
//!   tls-auth/tls-crypt random bytes never authenticate;
//! * packets the peer's `TlsAuth`/`TlsCrypt` wrapped around arbitrary header and body bytes
//!   (so the decoders behind the authentication get fuzzed too) authenticate unless mutated,
//!   and a mutated one never decodes.
//!
//! One set of codecs lives through the whole input, so the replay window sees arbitrary
//! sequences of replay ids on an arbitrary (monotonic) clock.
#![no_main]

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use vpn_daemon::proto::control_codec::{ControlCodec, ControlCodecError, Protection};
use vpn_daemon::proto::control_replay::ReplayId;
use vpn_daemon::proto::keys::{StaticKey, STATIC_KEY_BYTES};
use vpn_daemon::proto::packet::{peek_opcode, ControlHeader, ControlPacket, CONTROL_HEADER_LEN};
use vpn_daemon::proto::tls_auth::TlsAuth;
use vpn_daemon::proto::tls_crypt::TlsCrypt;
use vpn_daemon::proto::vocabulary::{KeyDirection, TlsAuthDigest, TlsRole};

const NOW_UNIX: u32 = 0x6543_2100;
const DIGESTS: [TlsAuthDigest; 2] = [TlsAuthDigest::Sha1, TlsAuthDigest::Sha256];

fn static_key() -> StaticKey {
    let mut bytes = [0u8; STATIC_KEY_BYTES];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = (index as u8).wrapping_mul(7).wrapping_add(3);
    }
    StaticKey::from_bytes(bytes)
}

/// The sending side's wrappers: tls-auth per digest (key direction 1) and tls-crypt (client).
struct Senders {
    auth: [TlsAuth; 2],
    crypt: TlsCrypt,
}

fn senders() -> &'static Senders {
    static SENDERS: OnceLock<Senders> = OnceLock::new();
    SENDERS.get_or_init(|| {
        let key = static_key();
        Senders {
            auth: DIGESTS.map(|digest| TlsAuth::new(&key, Some(KeyDirection::Inverse), digest)),
            crypt: TlsCrypt::new(&key, TlsRole::Client),
        }
    })
}

/// Receiving codecs: none, tls-auth SHA1, tls-auth SHA256, tls-crypt (server).
fn receivers() -> [ControlCodec; 4] {
    let key = static_key();
    let auth = |digest| Protection::TlsAuth(TlsAuth::new(&key, Some(KeyDirection::Normal), digest));
    [
        Protection::None,
        auth(TlsAuthDigest::Sha1),
        auth(TlsAuthDigest::Sha256),
        Protection::TlsCrypt(TlsCrypt::new(&key, TlsRole::Server)),
    ]
    .map(|protection| ControlCodec::new(protection, NOW_UNIX))
}

fn run(input: &mut Unstructured<'_>) -> Result<()> {
    let mut codecs = receivers();
    let start = Instant::now();
    let mut elapsed = Duration::ZERO;
    let mut scratch = Vec::new();
    let mut accepted: [HashSet<ReplayId>; 4] = Default::default();
    while !input.is_empty() {
        elapsed += Duration::from_millis(u64::from(input.arbitrary::<u16>()?) * 8);
        let now = start + elapsed;
        let index = usize::from(input.int_in_range(0u8..=3)?);
        if input.arbitrary::<bool>()? {
            let len = usize::from(input.arbitrary::<u16>()?) % 1600;
            let wire = input.bytes(len.min(input.len()))?;
            let stateless = codecs[index].decode_stateless(wire, &mut scratch).is_ok();
            let result = codecs[index].decode(now, wire, &mut scratch);
            let wkc_opcode = peek_opcode(wire).is_ok_and(|(op, _)| op.carries_wrapped_client_key());
            if index == 0 && wkc_opcode {
                // Without tls-crypt, tls-crypt-v2 opcodes are refused by design.
                assert!(matches!(
                    result,
                    Err(ControlCodecError::TlsCryptV2Opcode(_))
                ));
            } else if index == 0 {
                assert_eq!(
                    result.as_ref().ok(),
                    ControlPacket::decode(wire).ok().as_ref()
                );
            } else {
                assert!(!stateless && result.is_err(), "random bytes authenticated");
            }
            continue;
        }
        if index == 0 {
            continue;
        }
        // A packet the peer wrapped: arbitrary header and body, arbitrary replay id.
        let header: [u8; CONTROL_HEADER_LEN] = input.arbitrary()?;
        let replay_id = ReplayId {
            packet_id: input.arbitrary()?,
            time: input.arbitrary()?,
        };
        let len = usize::from(input.arbitrary::<u16>()?) % 1600;
        let body = input.bytes(len.min(input.len()))?;
        let mut wire = Vec::new();
        match index {
            1 | 2 => senders().auth[index - 1].wrap(&header, replay_id, body, &mut wire),
            _ => senders().crypt.wrap(&header, replay_id, body, &mut wire),
        }
        let mutation: Option<(u16, u8)> = input.arbitrary()?;
        let mutated = match mutation {
            Some((at, xor)) if xor != 0 => {
                let at = usize::from(at) % wire.len();
                wire[at] ^= xor;
                true
            }
            _ => false,
        };
        let result = codecs[index].decode(now, &wire, &mut scratch);
        match result {
            Ok(packet) => {
                assert!(!mutated, "a modified packet authenticated");
                assert!(
                    accepted[index].insert(replay_id),
                    "replay id {replay_id:?} accepted twice"
                );
                assert_eq!(
                    Ok(packet.header),
                    ControlHeader::decode(&header).map(|(h, _)| h)
                );
            }
            Err(ControlCodecError::Unauthenticated | ControlCodecError::TooShort { .. }) => {
                // Under tls-crypt, tls-crypt-v2 opcodes make the codec cut a wrapped client
                // key off the end first, so such a packet cannot authenticate.
                let wkc_split = index == 3
                    && peek_opcode(&header).is_ok_and(|(op, _)| op.carries_wrapped_client_key());
                assert!(
                    mutated || wkc_split,
                    "an intact wrapped packet failed authentication"
                );
            }
            Err(_) => {}
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
