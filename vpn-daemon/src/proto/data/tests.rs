use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::proto::prf::{DataChannelKeys, KeyBlock, KEY_BLOCK_BYTES};
use crate::proto::vocabulary::TlsRole;

const ALL_FRAMINGS: [CompressionFraming; 4] = [
    CompressionFraming::None,
    CompressionFraming::LzoStub,
    CompressionFraming::StubV1,
    CompressionFraming::StubV2,
];

/// Key block bytes 00, 01, ..., ff: the TLS client's send key is bytes 0..32 (0..16 for
/// AES-128) and its implicit IV bytes 64..72.
fn keys(cipher: Cipher, role: TlsRole) -> DataChannelKeys {
    let mut bytes = [0u8; KEY_BLOCK_BYTES];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = index as u8;
    }
    KeyBlock::from_bytes(bytes).data_channel_keys(cipher, role)
}

fn key_id(value: u8) -> KeyId {
    KeyId::new(value).unwrap()
}

/// A client send key and the matching server receive key.
fn pair(
    cipher: Cipher,
    format: DataFormat,
    framing: CompressionFraming,
    replay: ReplayConfig,
) -> (SendKey, ReceiveKey) {
    let client = keys(cipher, TlsRole::Client);
    let server = keys(cipher, TlsRole::Server);
    let send = SendKey::new(key_id(1), format, &client.send, framing).unwrap();
    let receive = ReceiveKey::new(key_id(1), &server.receive, framing, replay).unwrap();
    (send, receive)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).unwrap())
        .collect()
}

/// An IPv4/UDP header, 28 bytes.
const PAYLOAD: &str = "4500001c00010000401100000a0800010a08000204d2162e00080000";

/// Known answers computed with python3's `cryptography` 48 (OpenSSL underneath), independently
/// of ring, from the layout in crypto.c:
///
/// ```python
/// from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
/// kb = bytes(range(256))
/// payload = bytes.fromhex(PAYLOAD)
/// def pkt(alg, keylen, hdr, pid, plaintext, v2):
///     key = kb[0:keylen]; iv = kb[64:72]
///     pidb = pid.to_bytes(4, 'big')
///     ad = (hdr if v2 else b'') + pidb
///     ct_tag = alg(key).encrypt(pidb + iv, plaintext, ad)
///     return (hdr + pidb + ct_tag[-16:] + ct_tag[:-16]).hex()
/// v2hdr = bytes([(9 << 3) | 1, 0x0a, 0x0b, 0x0c])
/// pkt(AESGCM, 32, v2hdr, 1, payload, True)            # AES-256-GCM
/// pkt(AESGCM, 16, v2hdr, 1, payload, True)            # AES-128-GCM
/// pkt(ChaCha20Poly1305, 32, v2hdr, 1, payload, True)  # CHACHA20-POLY1305
/// pkt(AESGCM, 32, bytes([(6 << 3) | 2]), 1, b'\xfa' + payload, False)  # DATA_V1, comp-lzo
/// ```
const KAT_V2: [(Cipher, &str); 3] = [
    (
        Cipher::Aes256Gcm,
        "490a0b0c00000001f557748af476ce62f2da6f04c45958948ecb7ba16bb7a6c955af54777e3e0822f96539a3f41b8463f344e7b9",
    ),
    (
        Cipher::Aes128Gcm,
        "490a0b0c00000001cdd69b74d9731ed25193c93defa25a969703fcfbdcd23a90c2cc29ad12bf7aacce1f4a08c01cb0ab604638af",
    ),
    (
        Cipher::Chacha20Poly1305,
        "490a0b0c00000001725fc432cc0cad70b368e83953d902854b8432d8f3ad633ed3a7e7f34cc0fdeb607f55d4afddb340488b6581",
    ),
];
const KAT_V1_LZO: &str =
    "3200000001ed951a407030a24036152612e047de98318e7bbd77b6a7c915fe4577743c0023f26731a1f2cd405bdd4cefb9fc";

#[test]
fn data_v2_known_answers() {
    let payload = unhex(PAYLOAD);
    for (cipher, expected) in KAT_V2 {
        let (send, mut receive) = pair(
            cipher,
            DataFormat::V2 { peer_id: 0x0a0b0c },
            CompressionFraming::None,
            ReplayConfig::default(),
        );
        let mut out = Vec::new();
        send.seal(&payload, &mut out).unwrap();
        assert_eq!(hex(&out), expected, "{cipher:?}");

        let mut wire = unhex(expected);
        assert_eq!(
            receive.open(Instant::now(), &mut wire),
            Ok(Received::Ip(&payload[..])),
            "{cipher:?}"
        );
    }
}

#[test]
fn data_v1_known_answer_leaves_the_opcode_out_of_the_associated_data() {
    let payload = unhex(PAYLOAD);
    let client = keys(Cipher::Aes256Gcm, TlsRole::Client);
    let server = keys(Cipher::Aes256Gcm, TlsRole::Server);
    let send = SendKey::new(
        key_id(2),
        DataFormat::V1,
        &client.send,
        CompressionFraming::LzoStub,
    )
    .unwrap();
    let mut out = Vec::new();
    send.seal(&payload, &mut out).unwrap();
    assert_eq!(hex(&out), KAT_V1_LZO);

    let mut receive = ReceiveKey::new(
        key_id(2),
        &server.receive,
        CompressionFraming::LzoStub,
        ReplayConfig::default(),
    )
    .unwrap();
    let mut wire = unhex(KAT_V1_LZO);
    assert_eq!(
        receive.open(Instant::now(), &mut wire),
        Ok(Received::Ip(&payload[..]))
    );
}

#[test]
fn round_trips_over_ciphers_formats_and_framings() {
    let payloads: [&[u8]; 4] = [
        &[0x45; 1],
        &[0x60; 1400],
        &[0x50, 0x00, 0x01],
        &[0xfb, 0xfa],
    ];
    for cipher in Cipher::ALL {
        for format in [
            DataFormat::V1,
            DataFormat::V2 { peer_id: 7 },
            DataFormat::V2 {
                peer_id: PEER_ID_UNSET,
            },
        ] {
            for framing in ALL_FRAMINGS {
                let (send, mut receive) = pair(cipher, format, framing, ReplayConfig::default());
                let now = Instant::now();
                let mut out = Vec::with_capacity(2048);
                let mut wire_bytes = 0;
                for payload in payloads {
                    send.seal(payload, &mut out).unwrap();
                    assert!(out.len() <= payload.len() + send.overhead());
                    wire_bytes += out.len() as u64;
                    assert_eq!(
                        receive.open(now, &mut out),
                        Ok(Received::Ip(payload)),
                        "{cipher:?} {format:?} {framing:?}"
                    );
                }
                send.seal_ping(&mut out).unwrap();
                wire_bytes += out.len() as u64;
                assert_eq!(receive.open(now, &mut out), Ok(Received::Ping));
                send.seal_occ_exit(&mut out).unwrap();
                wire_bytes += out.len() as u64;
                assert_eq!(receive.open(now, &mut out), Ok(Received::OccExit));

                assert_eq!(send.packets_sent(), 6);
                assert_eq!(send.bytes_sent(), wire_bytes);
                let stats = receive.stats();
                assert_eq!((stats.packets, stats.bytes), (6, wire_bytes));
            }
        }
    }
}

#[test]
fn sealing_reuses_the_callers_buffer() {
    let (send, _) = pair(
        Cipher::Aes256Gcm,
        DataFormat::V2 { peer_id: 1 },
        CompressionFraming::StubV2,
        ReplayConfig::default(),
    );
    let mut out = Vec::with_capacity(1500);
    let before = out.as_ptr();
    for _ in 0..10 {
        send.seal(&[0x45; 1400], &mut out).unwrap();
    }
    assert_eq!(out.as_ptr(), before, "no reallocation with enough capacity");
}

#[test]
fn other_occ_messages_carry_their_opcode() {
    let (send, mut receive) = pair(
        Cipher::Aes128Gcm,
        DataFormat::V1,
        CompressionFraming::None,
        ReplayConfig::default(),
    );
    let mut message = OCC_MAGIC.to_vec();
    message.extend_from_slice(&[0x00, 0x01]); // OCC_REQUEST and a stray byte
    let mut out = Vec::new();
    send.seal(&message, &mut out).unwrap();
    assert_eq!(
        receive.open(Instant::now(), &mut out),
        Ok(Received::Occ(&[0x00, 0x01]))
    );
    // The ping magic with anything after it is an IP packet as far as OpenVPN is concerned.
    let mut almost_ping = PING_MAGIC.to_vec();
    almost_ping.push(0);
    send.seal(&almost_ping, &mut out).unwrap();
    assert_eq!(
        receive.open(Instant::now(), &mut out),
        Ok(Received::Ip(&almost_ping[..]))
    );
}

#[test]
fn tampering_anywhere_fails_authentication() {
    for cipher in Cipher::ALL {
        for format in [DataFormat::V1, DataFormat::V2 { peer_id: 0x123456 }] {
            let (send, mut receive) = pair(
                cipher,
                format,
                CompressionFraming::None,
                ReplayConfig::default(),
            );
            let mut original = Vec::new();
            send.seal(&unhex(PAYLOAD), &mut original).unwrap();
            // Byte 0 holds opcode and key id, checked before the crypto; every later byte
            // (peer id, packet id, tag, ciphertext) is authenticated.
            for position in 1..original.len() {
                let mut wire = original.clone();
                wire[position] ^= 0x80; // (0x01 would turn packet id 1 into the invalid 0)
                assert_eq!(
                    receive.open(Instant::now(), &mut wire),
                    Err(DataError::Unauthenticated),
                    "{cipher:?} {format:?} byte {position}"
                );
            }
            let mut wire = original.clone();
            assert!(receive.open(Instant::now(), &mut wire).is_ok());
            assert_eq!(
                receive.stats().auth_failed,
                original.len() as u64 - 1,
                "{cipher:?} {format:?}"
            );
        }
    }
}

#[test]
fn switching_v2_to_v1_or_the_key_fails() {
    let (send, mut receive) = pair(
        Cipher::Aes256Gcm,
        DataFormat::V2 { peer_id: 5 },
        CompressionFraming::None,
        ReplayConfig::default(),
    );
    let mut wire = Vec::new();
    send.seal(&[0x45; 40], &mut wire).unwrap();
    // Rewrite as DATA_V1 by dropping the peer id: the associated data changes.
    let mut as_v1 = vec![first_byte(Opcode::DataV1, key_id(1))];
    as_v1.extend_from_slice(&wire[4..]);
    assert_eq!(
        receive.open(Instant::now(), &mut as_v1),
        Err(DataError::Unauthenticated)
    );
    // The server's own send key is not the client's.
    let server = keys(Cipher::Aes256Gcm, TlsRole::Server);
    let wrong = SendKey::new(
        key_id(1),
        DataFormat::V2 { peer_id: 5 },
        &server.send,
        CompressionFraming::None,
    )
    .unwrap();
    wrong.seal(&[0x45; 40], &mut wire).unwrap();
    assert_eq!(
        receive.open(Instant::now(), &mut wire),
        Err(DataError::Unauthenticated)
    );
}

#[test]
fn header_errors_are_reported_before_decryption() {
    let (send, mut receive) = pair(
        Cipher::Aes256Gcm,
        DataFormat::V2 { peer_id: 5 },
        CompressionFraming::None,
        ReplayConfig::default(),
    );
    let mut wire = Vec::new();
    send.seal(&[0x45; 40], &mut wire).unwrap();
    let mut other_key = wire.clone();
    other_key[0] = first_byte(Opcode::DataV2, key_id(2));
    assert_eq!(
        receive.open(Instant::now(), &mut other_key),
        Err(DataError::WrongKeyId {
            expected: key_id(1),
            got: key_id(2)
        })
    );
    let mut control = wire.clone();
    control[0] = first_byte(Opcode::ControlV1, key_id(1));
    assert_eq!(
        receive.open(Instant::now(), &mut control),
        Err(DataError::NotData(4))
    );
    // Header, packet id and tag but no ciphertext.
    let mut short = wire[..4 + 4 + 16].to_vec();
    assert_eq!(
        receive.open(Instant::now(), &mut short),
        Err(DataError::TooShort)
    );
    assert_eq!(
        receive.open(Instant::now(), &mut []),
        Err(DataError::TooShort)
    );
    assert_eq!(receive.stats().malformed, 4);
}

#[test]
fn replays_are_rejected_and_reordering_accepted_once() {
    let (send, mut receive) = pair(
        Cipher::Chacha20Poly1305,
        DataFormat::V2 { peer_id: 9 },
        CompressionFraming::None,
        ReplayConfig::default(),
    );
    let now = Instant::now();
    let packets: Vec<Vec<u8>> = (0..100)
        .map(|index| {
            let mut out = Vec::new();
            send.seal(&[0x45, index], &mut out).unwrap();
            out
        })
        .collect();
    let open = |receive: &mut ReceiveKey, index: usize| {
        let mut wire = packets[index].clone();
        receive.open(now, &mut wire).map(|received| match received {
            Received::Ip(payload) => payload[1],
            other => panic!("unexpected {other:?}"),
        })
    };
    assert_eq!(open(&mut receive, 0), Ok(0));
    assert_eq!(open(&mut receive, 0), Err(DataError::Replay), "duplicate");
    assert_eq!(open(&mut receive, 90), Ok(90));
    assert_eq!(
        open(&mut receive, 50),
        Ok(50),
        "90 - 50 < 64: late but accepted"
    );
    assert_eq!(open(&mut receive, 50), Err(DataError::Replay), "only once");
    assert_eq!(open(&mut receive, 20), Err(DataError::Replay), "too old");
    assert_eq!(receive.stats().replayed, 3);
}

#[test]
fn forged_packets_do_not_move_the_replay_window() {
    let (send, mut receive) = pair(
        Cipher::Aes256Gcm,
        DataFormat::V2 { peer_id: 9 },
        CompressionFraming::None,
        ReplayConfig::default(),
    );
    let now = Instant::now();
    let mut first = Vec::new();
    send.seal(&[0x45], &mut first).unwrap();
    // A forgery claiming packet id 1000 would push id 1 out of the window if it were marked.
    let mut forged = first.clone();
    forged[4..8].copy_from_slice(&1000u32.to_be_bytes());
    assert_eq!(
        receive.open(now, &mut forged),
        Err(DataError::Unauthenticated)
    );
    assert_eq!(receive.open(now, &mut first), Ok(Received::Ip(&[0x45])));
}

#[test]
fn late_packets_expire_with_the_time_window() {
    let (send, mut receive) = pair(
        Cipher::Aes256Gcm,
        DataFormat::V1,
        CompressionFraming::None,
        ReplayConfig {
            window: 64,
            time_window: Duration::from_secs(15),
            tcp: false,
        },
    );
    let start = Instant::now();
    let mut late = Vec::new();
    send.seal(&[0x45], &mut late).unwrap();
    let mut newer = Vec::new();
    send.seal(&[0x46], &mut newer).unwrap();
    assert!(receive.open(start, &mut newer).is_ok());
    assert_eq!(
        receive.open(start + Duration::from_secs(16), &mut late),
        Err(DataError::Replay)
    );
}

#[test]
fn compressed_packets_are_classified_not_decoded() {
    // A sender without framing can produce the bytes a compressing peer would.
    let client = keys(Cipher::Aes256Gcm, TlsRole::Client);
    let server = keys(Cipher::Aes256Gcm, TlsRole::Server);
    let raw = SendKey::new(
        key_id(0),
        DataFormat::V1,
        &client.send,
        CompressionFraming::None,
    )
    .unwrap();
    let cases: [(CompressionFraming, &[u8]); 3] = [
        (CompressionFraming::LzoStub, &[LZO_COMPRESS_BYTE, 1, 2, 3]),
        (CompressionFraming::StubV1, &[LZ4_COMPRESS_BYTE, 1, 2, 3]),
        (CompressionFraming::StubV2, &[V2_INDICATOR_BYTE, 0x01, 1, 2]),
    ];
    for (framing, plaintext) in cases {
        let mut receive =
            ReceiveKey::new(key_id(0), &server.receive, framing, ReplayConfig::default()).unwrap();
        let mut wire = Vec::new();
        raw.seal(plaintext, &mut wire).unwrap();
        assert_eq!(
            receive.open(Instant::now(), &mut wire),
            Ok(Received::Compressed)
        );
        assert_eq!(receive.stats().compressed, 1);
        assert_eq!(receive.stats().packets, 0);
    }
    // A header byte the framing does not know is malformed.
    let mut receive = ReceiveKey::new(
        key_id(0),
        &server.receive,
        CompressionFraming::LzoStub,
        ReplayConfig::default(),
    )
    .unwrap();
    let mut wire = Vec::new();
    raw.seal(&[0x45, 0], &mut wire).unwrap();
    assert_eq!(
        receive.open(Instant::now(), &mut wire),
        Err(DataError::BadCompressionHeader(0x45))
    );
}

#[test]
fn packet_ids_run_out_at_two_to_the_32() {
    let (send, mut receive) = pair(
        Cipher::Aes256Gcm,
        DataFormat::V2 { peer_id: 1 },
        CompressionFraming::None,
        ReplayConfig::default(),
    );
    send.ids_used.store(
        u64::from(u32::MAX) - 1,
        std::sync::atomic::Ordering::Relaxed,
    );
    let mut out = Vec::new();
    send.seal(&[0x45], &mut out).unwrap();
    assert_eq!(&out[4..8], &[0xff; 4], "the last id is 2^32 - 1");
    assert!(receive.open(Instant::now(), &mut out).is_ok());
    assert_eq!(
        send.seal(&[0x45], &mut out),
        Err(DataError::PacketIdsExhausted)
    );
    assert_eq!(
        send.seal(&[0x45], &mut out),
        Err(DataError::PacketIdsExhausted)
    );
    assert_eq!(send.packets_sent(), u64::from(u32::MAX));
}

#[test]
fn invalid_inputs_to_constructors_and_seal() {
    let client = keys(Cipher::Aes256Gcm, TlsRole::Client);
    assert_eq!(
        SendKey::new(
            key_id(0),
            DataFormat::V2 {
                peer_id: 0x0100_0000
            },
            &client.send,
            CompressionFraming::None
        )
        .err(),
        Some(DataError::PeerIdOutOfRange(0x0100_0000))
    );
    let send = SendKey::new(
        key_id(0),
        DataFormat::V1,
        &client.send,
        CompressionFraming::None,
    )
    .unwrap();
    let mut out = Vec::new();
    assert_eq!(send.seal(&[], &mut out), Err(DataError::EmptyPayload));
    assert_eq!(send.packets_sent(), 0, "no packet id spent");
}

#[test]
fn concurrent_sealing_hands_out_unique_ids() {
    let (send, mut receive) = pair(
        Cipher::Aes256Gcm,
        DataFormat::V2 { peer_id: 1 },
        CompressionFraming::None,
        ReplayConfig {
            window: 4096,
            ..ReplayConfig::default()
        },
    );
    let packets: Vec<Vec<u8>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    (0..500)
                        .map(|_| {
                            let mut out = Vec::new();
                            send.seal(&[0x45; 64], &mut out).unwrap();
                            out
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().unwrap())
            .collect()
    });
    let now = Instant::now();
    for mut packet in packets {
        assert!(receive.open(now, &mut packet).is_ok());
    }
    assert_eq!(receive.stats().packets, 2000);
    assert_eq!(send.packets_sent(), 2000);
}

#[test]
fn peek_reads_the_header_only() {
    assert_eq!(
        peek_data_key(&[0x49, 0x0a, 0x0b, 0x0c, 0xff]),
        Ok((Opcode::DataV2, key_id(1), Some(0x0a0b0c)))
    );
    assert_eq!(
        peek_data_key(&[0x32]),
        Ok((Opcode::DataV1, key_id(2), None))
    );
    assert!(peek_data_key(&[0x49, 0x0a]).is_err());
    assert!(peek_data_key(&[0x20]).is_err(), "CONTROL_V1");
    assert!(peek_data_key(&[]).is_err());
}

fn assert_send_sync<T: Send + Sync>() {}
fn assert_send<T: Send>() {}

#[test]
fn thread_safety_markers() {
    assert_send_sync::<SendKey>();
    assert_send::<ReceiveKey>();
}

proptest! {
    #[test]
    fn open_never_panics_on_arbitrary_bytes(mut bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        for framing in ALL_FRAMINGS {
            let (_, mut receive) = pair(
                Cipher::Aes256Gcm,
                DataFormat::V1,
                framing,
                ReplayConfig::default(),
            );
            let result = receive.open(Instant::now(), &mut bytes);
            prop_assert!(result.is_err());
        }
    }

    #[test]
    fn open_never_panics_on_mutated_packets(
        payload in proptest::collection::vec(any::<u8>(), 1..100),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        truncate in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        for framing in ALL_FRAMINGS {
            let (send, mut receive) = pair(
                Cipher::Chacha20Poly1305,
                DataFormat::V2 { peer_id: 3 },
                framing,
                ReplayConfig::default(),
            );
            let mut wire = Vec::new();
            send.seal(&payload, &mut wire).unwrap();
            for (index, value) in &flips {
                let at = index.index(wire.len());
                wire[at] ^= value;
            }
            if let Some(keep) = &truncate {
                wire.truncate(keep.index(wire.len() + 1));
            }
            let _ = receive.open(Instant::now(), &mut wire);
        }
    }
}

/// Prints seal + open throughput per cipher on one core. Run with
/// `cargo test --release -p vpn-daemon --lib proto::data::tests::throughput -- --ignored --nocapture`.
#[test]
#[ignore = "performance figure, run in release mode"]
fn throughput_seal_open_1m_1400_byte_packets() {
    const PACKETS: u32 = 1_000_000;
    const SIZE: usize = 1400;
    for cipher in Cipher::ALL {
        let (send, mut receive) = pair(
            cipher,
            DataFormat::V2 { peer_id: 1 },
            CompressionFraming::None,
            ReplayConfig::default(),
        );
        let payload = [0x45u8; SIZE];
        let mut wire = Vec::with_capacity(SIZE + 64);
        let now = Instant::now();
        let start = Instant::now();
        for _ in 0..PACKETS {
            send.seal(&payload, &mut wire).unwrap();
            match receive.open(now, &mut wire) {
                Ok(Received::Ip(received)) => assert_eq!(received.len(), SIZE),
                other => panic!("{other:?}"),
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        let megabytes = f64::from(PACKETS) * SIZE as f64 / 1e6;
        println!(
            "{cipher:?}: {PACKETS} x {SIZE} B sealed+opened in {elapsed:.2} s = {:.0} MB/s per core \
             (payload bytes through seal and open each)",
            megabytes / elapsed
        );
    }
}
