//! The text decoders of the TLS plaintext: `parse_control_message` over a stream of messages,
//! `PushOptions::parse` on every push reply (and on the raw input), `PeerInfo::parse` on the
//! input as text. No panics; the message parser always makes progress within the input;
//! `PushOptions` and `PeerInfo` survive a round trip through their wire form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vpn_daemon::proto::options::{
    parse_control_message, ControlMessage, ControlMessageError, PeerInfo, PushOptions,
};

fn check_push(text: &str) {
    if let Ok(options) = PushOptions::parse(text) {
        let reply = options.to_reply();
        let again = PushOptions::parse(&reply).expect("our own reply parses");
        assert_eq!(again, options, "push options changed through {reply:?}");
    }
}

fn check_peer_info(text: &str) {
    let info = PeerInfo::parse(text);
    let wire = info.to_wire();
    assert_eq!(
        PeerInfo::parse(&wire).to_wire(),
        wire,
        "peer info not stable"
    );
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while !rest.is_empty() {
        let consumed = match parse_control_message(rest) {
            Ok((message, consumed)) => {
                if let ControlMessage::PushReply(options) = message {
                    check_push(options);
                }
                consumed
            }
            Err(ControlMessageError::NotPrintable { skip }) => skip,
            Err(ControlMessageError::Incomplete) => break,
            Err(error) => panic!("unexpected error {error:?}"),
        };
        assert!(consumed > 0 && consumed <= rest.len());
        rest = &rest[consumed..];
    }
    let text = String::from_utf8_lossy(data);
    check_push(&text);
    check_peer_info(&text);
});
