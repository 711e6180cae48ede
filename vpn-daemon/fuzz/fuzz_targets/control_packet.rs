//! Control-channel decoders on arbitrary bytes: no panics, and whatever decodes re-encodes to
//! the same bytes (the plain layout has exactly one encoding).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vpn_daemon::proto::packet::{
    split_wrapped_client_key, ControlBody, ControlHeader, ControlPacket, EarlyNegotiation, Opcode,
    WrappedClientKey,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = ControlPacket::decode(data) {
        assert_eq!(packet.to_vec().expect("decoded packets re-encode"), data);
    }
    if let Ok((header, rest)) = ControlHeader::decode(data) {
        let bytes = header.to_bytes().expect("decoded headers re-encode");
        assert_eq!(bytes.len() + rest.len(), data.len());
        if let Ok(body) = ControlBody::decode(Opcode::ControlV1, rest) {
            let mut out = bytes.to_vec();
            body.append_to(Opcode::ControlV1, &mut out)
                .expect("decoded bodies re-encode");
            assert_eq!(out.len(), data.len());
        }
        let _ = ControlBody::decode(Opcode::AckV1, rest);
    }
    let _ = EarlyNegotiation::decode(data);
    if let Ok((front, key)) = split_wrapped_client_key(data) {
        assert_eq!(front.len() + key.as_bytes().len(), data.len());
        assert!(WrappedClientKey::new(key.as_bytes()).is_ok());
    }
});
