//! Data-channel header decoder on arbitrary bytes: no panics, exact re-encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vpn_daemon::proto::packet::DataHeader;

fuzz_target!(|data: &[u8]| {
    if let Ok((header, rest)) = DataHeader::decode(data) {
        let mut out = vec![0u8; header.encoded_len()];
        header.encode(&mut out).expect("decoded headers re-encode");
        out.extend_from_slice(rest);
        assert_eq!(out, data);
    }
});
