//! `Reliable` driven by an arbitrary sequence of received packets (any control opcode, any
//! acks, message ids and payloads), sends, polls, deliveries and retransmission requests, on a
//! fake clock that moves forward by arbitrary steps, with an arbitrary configuration. Checks:
//!
//! * no panics;
//! * messages are delivered in id order, each exactly as first accepted, never twice;
//! * every outgoing packet carries at most the configured number of acks, only control
//!   opcodes, and only message ids that were sent and not yet acked;
//! * after `poll_transmit(now)` nothing is due any more at `now` (with a non-zero timeout).
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use vpn_daemon::proto::packet::{ControlBody, Opcode, SessionId, MAX_ACKS};
use vpn_daemon::proto::reliable::{Reliable, ReliableConfig, ReliableError};

/// Opcodes with a message id, which `send` takes.
const RELIABLE_OPCODES: [Opcode; 5] = [
    Opcode::HardResetClientV2,
    Opcode::HardResetServerV2,
    Opcode::SoftResetV1,
    Opcode::ControlV1,
    Opcode::ControlWkcV1,
];

fn run(input: &mut Unstructured<'_>) -> Result<()> {
    let config = ReliableConfig {
        send_window: input.int_in_range(0..=16)?,
        receive_window: input.int_in_range(0..=32)?,
        initial_timeout: Duration::from_millis(input.int_in_range(0..=5_000)?),
        max_timeout: Duration::from_millis(input.int_in_range(0..=60_000)?),
        max_acks_per_control: input.int_in_range(0..=12)?,
        max_acks_per_ack: input.int_in_range(0..=12)?,
    };
    let mut reliable = Reliable::new(config);
    let start = Instant::now();
    let mut now = start;
    // Message ids we sent and that were not acked yet (as far as we know: an ack removes).
    let mut unacked = BTreeSet::new();
    // The first copy of each message id that receive() accepted, and the next to deliver.
    let mut first_copies: BTreeMap<u32, (Opcode, Vec<u8>)> = BTreeMap::new();
    let mut next_delivery = 0u32;
    while !input.is_empty() {
        match input.int_in_range(0u8..=9)? {
            0..=3 => {
                let opcode_value = input.int_in_range(0u8..=31)?;
                let Ok(opcode) = Opcode::try_from(opcode_value) else {
                    continue;
                };
                let ack_count = input.int_in_range(0..=MAX_ACKS)?;
                let mut acks = Vec::with_capacity(ack_count);
                for _ in 0..ack_count {
                    // Mostly ids near the ones in flight, sometimes anything.
                    acks.push(if input.arbitrary()? {
                        input.arbitrary()?
                    } else {
                        input.int_in_range(0..=20)?
                    });
                }
                let message_id: Option<u32> = if input.arbitrary()? {
                    Some(input.int_in_range(0..=40)?)
                } else {
                    input.arbitrary()?
                };
                let len = input.int_in_range(0..=64)?;
                let payload = input.bytes(len)?;
                let body = ControlBody {
                    remote_session_id: (!acks.is_empty()).then_some(SessionId([7; 8])),
                    acks,
                    message_id,
                    payload,
                };
                let result = reliable.receive(now, opcode, &body);
                // Acks count unless the packet itself was refused (documented on receive()).
                let acks_processed = matches!(
                    result,
                    Ok(())
                        | Err(ReliableError::HardResetNotFirst(_)
                            | ReliableError::BeyondReceiveWindow { .. })
                );
                if acks_processed {
                    for ack in &body.acks {
                        unacked.remove(ack);
                    }
                }
                if let (Ok(()), Some(id)) = (result, message_id) {
                    if id >= next_delivery {
                        first_copies
                            .entry(id)
                            .or_insert_with(|| (opcode, payload.to_vec()));
                    }
                }
            }
            4 => {
                let opcode = *input.choose(&RELIABLE_OPCODES)?;
                let len = input.int_in_range(0..=64)?;
                let payload = input.bytes(len)?.to_vec();
                let could_send = reliable.can_send();
                match reliable.send(now, opcode, payload) {
                    Ok(id) => {
                        assert!(could_send);
                        assert!(unacked.insert(id), "message id {id} handed out twice");
                    }
                    Err(_) => assert!(!could_send),
                }
            }
            5 => {
                let packets = reliable.poll_transmit(now);
                for packet in &packets {
                    let max = if packet.opcode == Opcode::AckV1 {
                        config.max_acks_per_ack
                    } else {
                        config.max_acks_per_control
                    };
                    assert!(packet.acks.len() <= max.clamp(1, MAX_ACKS));
                    assert!(packet.opcode.is_control());
                    assert_eq!(packet.message_id.is_some(), packet.opcode.has_message_id());
                    if packet.opcode == Opcode::AckV1 {
                        assert!(!packet.acks.is_empty(), "empty ACK_V1");
                    }
                    if let Some(id) = packet.message_id {
                        assert!(unacked.contains(&id), "sent message {id} is not in flight");
                    }
                }
                assert!(!reliable.has_pending_acks());
                if !config.initial_timeout.is_zero() {
                    assert!(
                        reliable
                            .next_deadline()
                            .is_none_or(|deadline| deadline > now),
                        "still due after poll_transmit"
                    );
                }
            }
            6 => {
                while let Some(message) = reliable.pop_received() {
                    let first = first_copies
                        .remove(&next_delivery)
                        .expect("delivered a message that was never accepted");
                    assert_eq!(message, first, "message {next_delivery} differs");
                    next_delivery += 1;
                }
            }
            7 => reliable.retransmit_all_now(now),
            _ => {
                let step = if input.arbitrary()? {
                    Duration::from_millis(u64::from(input.arbitrary::<u16>()?))
                } else {
                    Duration::from_secs(u64::from(input.arbitrary::<u16>()?))
                };
                now += step;
            }
        }
        assert_eq!(reliable.all_acked(), unacked.is_empty());
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
