//! The authenticated side of `ReceiveKey::open`: a `SendKey` seals payloads from the input, and
//! the packets are delivered in an arbitrary order, duplicated, or mutated, on an arbitrary
//! clock, to the matching `ReceiveKey` (cipher, `DATA_V1`/`DATA_V2`, compression framing and
//! replay window from the input). Checks:
//!
//! * an intact packet opens to exactly the payload sealed, or is refused as a replay;
//! * a packet id is accepted at most once;
//! * a packet with any byte changed, cut or extended never opens;
//! * the counters add up.
#![no_main]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use vpn_daemon::proto::data::{
    CompressionFraming, DataError, DataFormat, ReceiveKey, Received, ReplayConfig, SendKey,
    MAX_REPLAY_TIME_WINDOW, MAX_REPLAY_WINDOW, OCC_EXIT, OCC_MAGIC, PING_MAGIC,
};
use vpn_daemon::proto::packet::{KeyId, PEER_ID_UNSET};
use vpn_daemon::proto::prf::{KeyBlock, KEY_BLOCK_BYTES};
use vpn_daemon::proto::vocabulary::{Cipher, TlsRole};

const FRAMINGS: [CompressionFraming; 4] = [
    CompressionFraming::None,
    CompressionFraming::LzoStub,
    CompressionFraming::StubV1,
    CompressionFraming::StubV2,
];

/// What the receiver must report for an intact packet carrying `payload`.
fn expected(payload: &[u8]) -> Received<'_> {
    if payload == PING_MAGIC {
        Received::Ping
    } else if let Some(occ) = payload.strip_prefix(&OCC_MAGIC) {
        if occ.first() == Some(&OCC_EXIT) {
            Received::OccExit
        } else {
            Received::Occ(occ)
        }
    } else {
        Received::Ip(payload)
    }
}

fn run(input: &mut Unstructured<'_>) -> Result<()> {
    let cipher = *input.choose(&Cipher::ALL)?;
    let framing = *input.choose(&FRAMINGS)?;
    let format = if input.arbitrary()? {
        DataFormat::V1
    } else {
        DataFormat::V2 {
            peer_id: input.int_in_range(0..=PEER_ID_UNSET)?,
        }
    };
    let key_id = KeyId::new(input.int_in_range(0..=KeyId::MAX)?).expect("in range");
    let replay = ReplayConfig {
        window: input.int_in_range(0..=MAX_REPLAY_WINDOW)?,
        time_window: Duration::from_secs(input.int_in_range(0..=MAX_REPLAY_TIME_WINDOW.as_secs())?),
        tcp: input.arbitrary()?,
    };
    let mut block = [0u8; KEY_BLOCK_BYTES];
    for (index, byte) in block.iter_mut().enumerate() {
        *byte = (index as u8).wrapping_mul(13);
    }
    let block = KeyBlock::from_bytes(block);
    let client = block.data_channel_keys(cipher, TlsRole::Client);
    let server = block.data_channel_keys(cipher, TlsRole::Server);
    let send = SendKey::new(key_id, format, &client.send, framing).expect("valid send key");
    let mut receive =
        ReceiveKey::new(key_id, &server.receive, framing, replay).expect("valid receive key");

    let start = Instant::now();
    let mut elapsed = Duration::ZERO;
    // (wire packet, payload) in sending order: index + 1 is the packet id.
    let mut sent: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut accepted_ids = HashSet::new();
    let (mut opened, mut refused) = (0u64, 0u64);
    while !input.is_empty() {
        match input.int_in_range(0u8..=3)? {
            0 => {
                let len = usize::from(input.arbitrary::<u16>()?) % 1500;
                let mut payload = input.bytes(len.min(input.len()))?.to_vec();
                // Now and then a ping or an OCC message, which open() classifies.
                match input.int_in_range(0u8..=7)? {
                    0 => payload = PING_MAGIC.to_vec(),
                    1 => payload = [&OCC_MAGIC[..], &payload].concat(),
                    _ => {}
                }
                let mut wire = Vec::new();
                match send.seal(&payload, &mut wire) {
                    Ok(()) => sent.push((wire, payload)),
                    Err(error) => {
                        assert!(payload.is_empty() && error == DataError::EmptyPayload);
                    }
                }
            }
            1 => elapsed += Duration::from_millis(u64::from(input.arbitrary::<u32>()?) % 700_000),
            _ => {
                if sent.is_empty() {
                    continue;
                }
                let index = input.choose_index(sent.len())?;
                let (wire, payload) = &sent[index];
                let mut packet = wire.clone();
                match input.int_in_range(0u8..=5)? {
                    0 => {
                        let at = input.choose_index(packet.len())?;
                        packet[at] ^= input.int_in_range(1..=u8::MAX)?;
                    }
                    1 => packet.truncate(input.choose_index(packet.len())?),
                    2 => packet.push(input.arbitrary()?),
                    _ => {}
                }
                let intact = packet == *wire;
                let packet_id = index + 1;
                let result = receive.open(start + elapsed, &mut packet);
                match result {
                    Ok(received) => {
                        assert!(intact, "a modified packet opened: {received:?}");
                        assert_eq!(received, expected(payload));
                        assert!(
                            accepted_ids.insert(packet_id),
                            "packet id {packet_id} accepted twice"
                        );
                        opened += 1;
                    }
                    Err(DataError::Replay) => refused += 1,
                    Err(error) => {
                        assert!(!intact, "an intact packet was refused: {error}");
                        refused += 1;
                    }
                }
            }
        }
    }
    let stats = receive.stats();
    // Our own framing never announces real compression.
    assert_eq!((stats.packets, stats.compressed), (opened, 0));
    assert_eq!(
        stats.replayed + stats.auth_failed + stats.malformed,
        refused
    );
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
