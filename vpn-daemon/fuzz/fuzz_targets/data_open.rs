//! `ReceiveKey::open` on arbitrary bytes with a fixed key, under each cipher and compression
//! framing (picked by the first input byte): no panics, and random bytes never authenticate.
//! `data_open_sealed` covers the authenticated side.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use vpn_daemon::proto::data::{CompressionFraming, ReceiveKey, ReplayConfig};
use vpn_daemon::proto::packet::KeyId;
use vpn_daemon::proto::prf::{KeyBlock, KEY_BLOCK_BYTES};
use vpn_daemon::proto::vocabulary::{Cipher, TlsRole};

const FRAMINGS: [CompressionFraming; 4] = [
    CompressionFraming::None,
    CompressionFraming::LzoStub,
    CompressionFraming::StubV1,
    CompressionFraming::StubV2,
];

fuzz_target!(|data: &[u8]| {
    let [selector, packet @ ..] = data else {
        return;
    };
    let cipher = Cipher::ALL[usize::from(selector & 3) % Cipher::ALL.len()];
    let framing = FRAMINGS[usize::from(selector >> 2) & 3];
    let key_id = KeyId::new((selector >> 4) & KeyId::MAX).expect("three bits");
    let mut block = [0u8; KEY_BLOCK_BYTES];
    for (index, byte) in block.iter_mut().enumerate() {
        *byte = index as u8;
    }
    let keys = KeyBlock::from_bytes(block).data_channel_keys(cipher, TlsRole::Server);
    let mut receive = ReceiveKey::new(key_id, &keys.receive, framing, ReplayConfig::default())
        .expect("valid key");
    let mut packet = packet.to_vec();
    let result = receive.open(Instant::now(), &mut packet);
    // (Err(Replay) is fine: the replay check comes first, e.g. for packet id 0.)
    assert!(
        result.is_err(),
        "random bytes passed authentication: {result:?}"
    );
    let stats = receive.stats();
    assert_eq!(stats.packets + stats.compressed, 0);
    assert_eq!(stats.replayed + stats.auth_failed + stats.malformed, 1);
});
