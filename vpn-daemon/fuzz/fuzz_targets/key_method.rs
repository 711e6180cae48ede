//! `KeyMethod2::decode` on arbitrary TLS plaintext, as from the TLS client and as from the
//! server: no panics, the length it reports lies within the input, and what decodes re-encodes
//! (when it is encodable) to bytes that decode to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vpn_daemon::proto::key_method::KeyMethod2;

fuzz_target!(|data: &[u8]| {
    for from_tls_client in [true, false] {
        let Ok((message, consumed)) = KeyMethod2::decode(data, from_tls_client) else {
            continue;
        };
        assert!(consumed <= data.len());
        assert!(message.check_role(from_tls_client).is_ok());
        let mut encoded = Vec::new();
        // Decoding does not limit the options string as sending does, so encoding may refuse.
        if message.encode(&mut encoded).is_ok() {
            let (again, again_consumed) =
                KeyMethod2::decode(&encoded, from_tls_client).expect("encoded messages decode");
            assert!(again == message, "re-encoded message differs");
            assert_eq!(again_consumed, encoded.len());
        }
    }
});
