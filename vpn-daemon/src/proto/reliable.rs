//! The control channel's reliability layer for one key state (one key id of one session).
//!
//! OpenVPN keeps, per `key_state`, one send `reliable`, one receive `reliable`, the list of acks
//! to send (`rec_ack`) and a most-recently-sent ack list (`lru_acks`) (ssl.c `key_state_init`);
//! message ids start at 0 for every key id. The hard reset (key id 0) or soft reset (a
//! renegotiation's key id) is message 0, the TLS records follow. Everything here mirrors
//! OpenVPN's reliable.c, with the `now` and timing in [`Instant`]s instead of whole seconds:
//!
//! * **Send window** (`TLS_RELIABLE_N_SEND_BUFFERS` = 6, ssl_pkt.h): a message may be queued only
//!   while its id is less than 6 above the oldest unacknowledged one
//!   (reliable.c `reliable_get_buf_output_sequenced`), so one lost message stalls the window
//!   even when later ones are acked.
//! * **Retransmission**: a message goes out when queued, then again after `--tls-timeout`
//!   (default 2 s, options.c; `reliable_set_timeout(ks->send_reliable, packet_timeout)`), the
//!   interval doubling each time (`reliable_send`). OpenVPN does not cap the doubling (its
//!   `--hand-window`, 60 s, ends the attempt); we cap it at [`ReliableConfig::max_timeout`].
//!   A message is also resent early once acks for 3 later messages arrived
//!   (`N_ACK_RETRANSMIT`, `reliable_send_purge`).
//! * **Acks** are per message, not cumulative. Every received message is acked, duplicates and
//!   old ones included so the peer stops retransmitting (ssl.c `tls_pre_decrypt`: "even if it's
//!   a replay"); a message id at or beyond the receive window (`TLS_RELIABLE_N_REC_BUFFERS` =
//!   12 above the next id to deliver, `reliable_wont_break_sequentiality`) is dropped without
//!   ack. At most 8 acks wait (`RELIABLE_ACK_SIZE`); more are dropped and acked on the
//!   retransmission. Control packets carry up to 4 acks (`CONTROL_SEND_ACK_MAX`), a dedicated
//!   `ACK_V1` up to 8 (ssl.c `tls_process_state`). Each packet's ack list is filled up from the
//!   recently sent acks (reliable.c `reliable_ack_write`, `copy_acks_to_mru`; the draft's
//!   "LRU cache" of acks), so one lost ACK_V1 rarely costs a retransmission.
//! * A hard reset must carry message id 0; one with another id is ignored after its acks are
//!   processed (ssl.c `tls_pre_decrypt`).
//!
//! Session ids are the caller's business: a packet carrying acks names, in its remote session
//! id field, the session of the side whose messages it acks — so acks of *our* messages arrive
//! with the remote session id equal to *our own* session id (OpenVPN `reliable_ack_read` drops
//! the packet otherwise). Check that before calling [`Reliable::receive`]; when sending, put the
//! peer's session id in the packets that carry acks ([`OutgoingControl::body`]).
//!
//! Message ids are `u32` and never wrap here: the 2^32nd message of one key state is an error
//! (the draft allows refusing to roll over; renegotiation restarts at 0 long before).
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::packet::{ControlBody, Opcode, SessionId, MAX_ACKS};

/// OpenVPN's send window, `TLS_RELIABLE_N_SEND_BUFFERS` (ssl_pkt.h).
pub const SEND_WINDOW: usize = 6;
/// OpenVPN's receive window, `TLS_RELIABLE_N_REC_BUFFERS` (ssl_pkt.h).
pub const RECEIVE_WINDOW: usize = 12;
/// Acks piggy-backed on a control packet that carries a message, `CONTROL_SEND_ACK_MAX` (ssl.h).
pub const MAX_ACKS_PER_CONTROL: usize = 4;
/// Acks for later messages after which an unacked message is resent early, `N_ACK_RETRANSMIT`.
pub const FAST_RETRANSMIT_ACKS: u32 = 3;
/// `--tls-timeout` default: the first retransmission interval.
pub const DEFAULT_INITIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Our cap on the retransmission interval. With the 2 s start this keeps OpenVPN's schedule
/// (sends at 0, 2, 6, 14, 30 s) for the first four retransmissions.
pub const DEFAULT_MAX_TIMEOUT: Duration = Duration::from_secs(16);

/// Window sizes, timers and ack limits of a [`Reliable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReliableConfig {
    /// Span of message ids from the oldest unacked one that may be in flight (at least 1).
    pub send_window: usize,
    /// Span of message ids above the next one to deliver that are accepted (at least 1).
    pub receive_window: usize,
    /// First retransmission interval (`--tls-timeout`).
    pub initial_timeout: Duration,
    /// Largest retransmission interval (raised to `initial_timeout` if below it).
    pub max_timeout: Duration,
    /// Acks on a packet that carries a message (clamped to 1..=8). OpenVPN lowers both limits
    /// to 4 for a tls-client without tls-auth/tls-crypt/EKM, for SoftEther servers.
    pub max_acks_per_control: usize,
    /// Acks on an `ACK_V1` (clamped to 1..=8).
    pub max_acks_per_ack: usize,
}

impl Default for ReliableConfig {
    fn default() -> Self {
        Self {
            send_window: SEND_WINDOW,
            receive_window: RECEIVE_WINDOW,
            initial_timeout: DEFAULT_INITIAL_TIMEOUT,
            max_timeout: DEFAULT_MAX_TIMEOUT,
            max_acks_per_control: MAX_ACKS_PER_CONTROL,
            max_acks_per_ack: MAX_ACKS,
        }
    }
}

impl ReliableConfig {
    fn normalized(self) -> Self {
        Self {
            send_window: self.send_window.max(1),
            receive_window: self.receive_window.max(1),
            initial_timeout: self.initial_timeout,
            max_timeout: self.max_timeout.max(self.initial_timeout),
            max_acks_per_control: self.max_acks_per_control.clamp(1, MAX_ACKS),
            max_acks_per_ack: self.max_acks_per_ack.clamp(1, MAX_ACKS),
        }
    }
}

/// Why a message could not be sent or a received packet's message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReliableError {
    /// The send window is full: keep the data and retry after acks arrive ([`Reliable::can_send`]).
    #[error("control channel send window full")]
    WindowFull,
    /// 2^32 messages were sent under this key id; renegotiate instead.
    #[error("control channel message ids exhausted for this key id")]
    MessageIdsExhausted,
    /// Only opcodes with a message id are sent reliably (not `ACK_V1` or data opcodes).
    #[error("{0:?} is not sent through the reliability layer")]
    NotReliable(Opcode),
    /// A data-channel opcode was handed to the control channel.
    #[error("{0:?} is not a control-channel opcode")]
    NotControl(Opcode),
    /// The body has a message id where the opcode has none, or lacks one where it needs it.
    #[error("{opcode:?} body with message id present: {present}")]
    MessageIdMismatch {
        /// The packet's opcode.
        opcode: Opcode,
        /// Whether the body had a message id.
        present: bool,
    },
    /// A hard reset with a message id other than 0 (OpenVPN ignores it; its acks were
    /// processed).
    #[error("hard reset with message id {0}, expected 0; ignored")]
    HardResetNotFirst(u32),
    /// The message id is too far ahead; the message was dropped without ack (its acks were
    /// processed).
    #[error("message id {message_id} beyond the receive window (next expected {next_expected})")]
    BeyondReceiveWindow {
        /// The received message id.
        message_id: u32,
        /// The next message id to deliver.
        next_expected: u64,
    },
}

/// A control packet to put on the wire, without header and session ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingControl {
    /// The packet's opcode.
    pub opcode: Opcode,
    /// Message ids acknowledged, at most 8.
    pub acks: Vec<u32>,
    /// The message id; `None` for `ACK_V1`.
    pub message_id: Option<u32>,
    /// The message (empty for `ACK_V1`).
    pub payload: Vec<u8>,
}

impl OutgoingControl {
    /// The packet body; `peer_session_id` is written only when the packet carries acks.
    pub fn body(&self, peer_session_id: SessionId) -> ControlBody<'_> {
        ControlBody {
            acks: self.acks.clone(),
            remote_session_id: (!self.acks.is_empty()).then_some(peer_session_id),
            message_id: self.message_id,
            payload: &self.payload,
        }
    }
}

/// One sent message waiting for its ack.
#[derive(Debug, Clone)]
struct InFlight {
    message_id: u32,
    opcode: Opcode,
    payload: Vec<u8>,
    /// When it is (re)sent next.
    next_try: Instant,
    /// The interval after the next (re)send.
    timeout: Duration,
    /// Acks received for later messages since the last send.
    later_acks: u32,
}

/// Send and receive reliability for one key state.
#[derive(Debug, Clone)]
pub struct Reliable {
    config: ReliableConfig,
    /// Id of the next message queued; beyond `u32::MAX` once exhausted.
    next_send_id: u64,
    /// Unacked messages, ascending ids.
    in_flight: VecDeque<InFlight>,
    /// Id of the next message to deliver.
    next_expected: u64,
    /// Received messages not yet delivered, all within the receive window.
    received: BTreeMap<u32, (Opcode, Vec<u8>)>,
    /// Acks not yet sent, oldest first, at most [`MAX_ACKS`].
    pending_acks: VecDeque<u32>,
    /// When the oldest pending ack became due.
    acks_due_since: Option<Instant>,
    /// Acks sent recently, most recent first, at most [`MAX_ACKS`].
    recent_acks: VecDeque<u32>,
}

impl Reliable {
    /// An empty send and receive state; both sides start at message id 0.
    pub fn new(config: ReliableConfig) -> Self {
        Self {
            config: config.normalized(),
            next_send_id: 0,
            in_flight: VecDeque::new(),
            next_expected: 0,
            received: BTreeMap::new(),
            pending_acks: VecDeque::new(),
            acks_due_since: None,
            recent_acks: VecDeque::new(),
        }
    }

    /// Queues a message (a reset, or `CONTROL_V1` with a TLS chunk) for sending at `now` and
    /// returns its message id. [`ReliableError::WindowFull`] when the window is full: keep the
    /// data and retry after acks arrive.
    pub fn send(
        &mut self,
        now: Instant,
        opcode: Opcode,
        payload: Vec<u8>,
    ) -> Result<u32, ReliableError> {
        if !opcode.has_message_id() {
            return Err(ReliableError::NotReliable(opcode));
        }
        let message_id =
            u32::try_from(self.next_send_id).map_err(|_| ReliableError::MessageIdsExhausted)?;
        if !self.window_open() {
            return Err(ReliableError::WindowFull);
        }
        self.in_flight.push_back(InFlight {
            message_id,
            opcode,
            payload,
            next_try: now,
            timeout: self.config.initial_timeout,
            later_acks: 0,
        });
        self.next_send_id += 1;
        Ok(message_id)
    }

    /// Whether [`send`](Self::send) would accept a message now.
    pub fn can_send(&self) -> bool {
        self.next_send_id <= u64::from(u32::MAX) && self.window_open()
    }

    fn window_open(&self) -> bool {
        self.in_flight.front().is_none_or(|oldest| {
            self.next_send_id - u64::from(oldest.message_id) < self.config.send_window as u64
        })
    }

    /// Handles a received, authenticated and decoded packet of this key id (the caller has
    /// checked its session ids, see the module docs): removes the messages it acks from the
    /// send window, and if it carries a message, queues an ack (also for duplicates and old
    /// ids) and keeps the message for in-order delivery if it is new and inside the receive
    /// window.
    ///
    /// Acks are processed even when an error says the message part was dropped.
    pub fn receive(
        &mut self,
        now: Instant,
        opcode: Opcode,
        body: &ControlBody<'_>,
    ) -> Result<(), ReliableError> {
        if opcode.is_data() {
            return Err(ReliableError::NotControl(opcode));
        }
        if body.message_id.is_some() != opcode.has_message_id() {
            return Err(ReliableError::MessageIdMismatch {
                opcode,
                present: body.message_id.is_some(),
            });
        }
        self.process_acks(now, &body.acks);
        let Some(message_id) = body.message_id else {
            return Ok(());
        };
        if opcode.is_hard_reset() && message_id != 0 {
            return Err(ReliableError::HardResetNotFirst(message_id));
        }
        let id = u64::from(message_id);
        if id >= self.next_expected + self.config.receive_window as u64 {
            return Err(ReliableError::BeyondReceiveWindow {
                message_id,
                next_expected: self.next_expected,
            });
        }
        if id >= self.next_expected {
            self.received
                .entry(message_id)
                .or_insert_with(|| (opcode, body.payload.to_vec()));
        }
        self.queue_ack(now, message_id);
        Ok(())
    }

    fn process_acks(&mut self, now: Instant, acks: &[u32]) {
        for &acked in acks {
            self.in_flight.retain(|entry| entry.message_id != acked);
            for entry in self.in_flight.iter_mut() {
                if entry.message_id < acked {
                    entry.later_acks = entry.later_acks.saturating_add(1);
                    if entry.later_acks >= FAST_RETRANSMIT_ACKS {
                        entry.next_try = entry.next_try.min(now);
                    }
                }
            }
        }
    }

    fn queue_ack(&mut self, now: Instant, message_id: u32) {
        if self.pending_acks.contains(&message_id) || self.pending_acks.len() >= MAX_ACKS {
            return;
        }
        self.pending_acks.push_back(message_id);
        self.acks_due_since.get_or_insert(now);
    }

    /// The next received message in order: (opcode, payload).
    pub fn pop_received(&mut self) -> Option<(Opcode, Vec<u8>)> {
        let id = u32::try_from(self.next_expected).ok()?;
        let message = self.received.remove(&id)?;
        self.next_expected += 1;
        Some(message)
    }

    /// Packets to put on the wire at `now`: the messages due for (re)transmission, lowest id
    /// first, each with up to [`ReliableConfig::max_acks_per_control`] acks, then `ACK_V1`
    /// packets while acks are still pending. Ack lists are topped up with recently sent acks.
    /// Each (re)send doubles the message's retransmission interval, up to the cap.
    pub fn poll_transmit(&mut self, now: Instant) -> Vec<OutgoingControl> {
        let mut packets = Vec::new();
        for index in 0..self.in_flight.len() {
            if self
                .in_flight
                .get(index)
                .is_none_or(|entry| now < entry.next_try)
            {
                continue;
            }
            let acks = self.take_acks(self.config.max_acks_per_control);
            let max_timeout = self.config.max_timeout;
            if let Some(entry) = self.in_flight.get_mut(index) {
                entry.next_try = now.checked_add(entry.timeout).unwrap_or(now);
                entry.timeout = entry.timeout.saturating_mul(2).min(max_timeout);
                entry.later_acks = 0;
                packets.push(OutgoingControl {
                    opcode: entry.opcode,
                    acks,
                    message_id: Some(entry.message_id),
                    payload: entry.payload.clone(),
                });
            }
        }
        while !self.pending_acks.is_empty() {
            let acks = self.take_acks(self.config.max_acks_per_ack);
            packets.push(OutgoingControl {
                opcode: Opcode::AckV1,
                acks,
                message_id: None,
                payload: Vec::new(),
            });
        }
        packets
    }

    /// Moves up to `max` pending acks to the front of the recently-sent list and returns the
    /// first `max` of that list: the new acks first, then recent ones again.
    fn take_acks(&mut self, max: usize) -> Vec<u32> {
        let count = self.pending_acks.len().min(max);
        let fresh: Vec<u32> = self.pending_acks.drain(..count).collect();
        for &id in fresh.iter().rev() {
            self.recent_acks.retain(|&recent| recent != id);
            self.recent_acks.push_front(id);
        }
        self.recent_acks.truncate(MAX_ACKS);
        if self.pending_acks.is_empty() {
            self.acks_due_since = None;
        }
        self.recent_acks.iter().take(max).copied().collect()
    }

    /// The earliest instant [`poll_transmit`](Self::poll_transmit) has something to send.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.in_flight
            .iter()
            .map(|entry| entry.next_try)
            .chain(self.acks_due_since)
            .min()
    }

    /// Resends every unacked message at the next poll and restarts its backoff (OpenVPN
    /// `reliable_schedule_now`, used once when the peer's first packet shows it is up).
    pub fn retransmit_all_now(&mut self, now: Instant) {
        for entry in self.in_flight.iter_mut() {
            entry.next_try = now;
            entry.timeout = self.config.initial_timeout;
        }
    }

    /// Whether every sent message has been acked.
    pub fn all_acked(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Whether acks wait to be sent.
    pub fn has_pending_acks(&self) -> bool {
        !self.pending_acks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::proto::control_codec::{ControlCodec, ControlCodecError, Protection};
    use crate::proto::keys::tests::counting_key;
    use crate::proto::packet::{ControlHeader, ControlPacket, KeyId};
    use crate::proto::tls_auth::TlsAuth;
    use crate::proto::vocabulary::{KeyDirection, TlsAuthDigest};

    fn secs(seconds: f64) -> Duration {
        Duration::from_secs_f64(seconds)
    }

    fn body<'a>(acks: &[u32], message_id: Option<u32>, payload: &'a [u8]) -> ControlBody<'a> {
        ControlBody {
            acks: acks.to_vec(),
            remote_session_id: (!acks.is_empty()).then_some(SessionId([1; 8])),
            message_id,
            payload,
        }
    }

    fn ack_packet(acks: &[u32]) -> ControlBody<'static> {
        body(acks, None, b"")
    }

    fn ids(packets: &[OutgoingControl]) -> Vec<Option<u32>> {
        packets.iter().map(|packet| packet.message_id).collect()
    }

    #[test]
    fn openvpn_defaults() {
        let config = ReliableConfig::default();
        assert_eq!(config.send_window, 6);
        assert_eq!(config.receive_window, 12);
        assert_eq!(config.initial_timeout, Duration::from_secs(2));
        assert_eq!(config.max_acks_per_control, 4);
        assert_eq!(config.max_acks_per_ack, 8);
    }

    #[test]
    fn retransmission_backs_off_exponentially_up_to_the_cap() {
        let start = Instant::now();
        let mut reliable = Reliable::new(ReliableConfig {
            max_timeout: Duration::from_secs(8),
            ..ReliableConfig::default()
        });
        assert_eq!(reliable.next_deadline(), None);
        assert_eq!(
            reliable.send(start, Opcode::ControlV1, b"m".to_vec()),
            Ok(0)
        );
        assert_eq!(reliable.next_deadline(), Some(start));
        // Sends at 0, then intervals 2, 4, 8 and then capped at 8: 0, 2, 6, 14, 22, 30.
        let mut sent_at = Vec::new();
        let mut now = start;
        while now <= start + secs(31.0) {
            let packets = reliable.poll_transmit(now);
            if !packets.is_empty() {
                assert_eq!(ids(&packets), [Some(0)]);
                assert_eq!(packets[0].payload, b"m");
                sent_at.push((now - start).as_millis());
            }
            now += secs(0.25);
        }
        assert_eq!(sent_at, [0, 2000, 6000, 14000, 22000, 30000]);
        assert_eq!(reliable.next_deadline(), Some(start + secs(38.0)));
        // Nothing due before the deadline, not even a pure ack.
        assert!(reliable.poll_transmit(start + secs(37.9)).is_empty());
        // Acked: nothing more to send, no deadline.
        reliable
            .receive(start + secs(31.0), Opcode::AckV1, &ack_packet(&[0]))
            .unwrap();
        assert!(reliable.all_acked());
        assert_eq!(reliable.next_deadline(), None);
        assert!(reliable.poll_transmit(start + secs(100.0)).is_empty());
    }

    #[test]
    fn send_window_spans_from_the_oldest_unacked_message() {
        let now = Instant::now();
        let mut reliable = Reliable::new(ReliableConfig::default());
        for expected in 0..6 {
            assert!(reliable.can_send());
            assert_eq!(
                reliable.send(now, Opcode::ControlV1, vec![expected as u8]),
                Ok(expected)
            );
        }
        assert!(!reliable.can_send());
        assert_eq!(
            reliable.send(now, Opcode::ControlV1, vec![6]),
            Err(ReliableError::WindowFull)
        );
        assert_eq!(
            ids(&reliable.poll_transmit(now)),
            (0..6).map(Some).collect::<Vec<_>>()
        );
        // Acks for 1..=5 do not open the window while 0 is outstanding.
        reliable
            .receive(now, Opcode::AckV1, &ack_packet(&[5, 4, 3, 2, 1]))
            .unwrap();
        assert!(!reliable.all_acked());
        assert_eq!(
            reliable.send(now, Opcode::ControlV1, vec![6]),
            Err(ReliableError::WindowFull)
        );
        reliable
            .receive(now, Opcode::AckV1, &ack_packet(&[0]))
            .unwrap();
        assert!(reliable.all_acked());
        assert_eq!(reliable.send(now, Opcode::ControlV1, vec![6]), Ok(6));
        // ACK_V1 and data opcodes are not sent reliably.
        assert_eq!(
            reliable.send(now, Opcode::AckV1, vec![]),
            Err(ReliableError::NotReliable(Opcode::AckV1))
        );
        assert_eq!(
            reliable.send(now, Opcode::DataV2, vec![]),
            Err(ReliableError::NotReliable(Opcode::DataV2))
        );
    }

    #[test]
    fn first_hard_reset_is_acked_piggy_backed_on_our_reset() {
        let now = Instant::now();
        let mut server = Reliable::new(ReliableConfig::default());
        server
            .receive(now, Opcode::HardResetClientV2, &body(&[], Some(0), b""))
            .unwrap();
        assert!(server.has_pending_acks());
        assert_eq!(server.next_deadline(), Some(now));
        assert_eq!(
            server.pop_received(),
            Some((Opcode::HardResetClientV2, vec![]))
        );
        assert_eq!(server.send(now, Opcode::HardResetServerV2, vec![]), Ok(0));
        let packets = server.poll_transmit(now);
        assert_eq!(
            packets,
            [OutgoingControl {
                opcode: Opcode::HardResetServerV2,
                acks: vec![0],
                message_id: Some(0),
                payload: vec![],
            }]
        );
        assert!(!server.has_pending_acks());
        let client_sid = SessionId([7; 8]);
        assert_eq!(
            packets[0].body(client_sid).remote_session_id,
            Some(client_sid)
        );
    }

    #[test]
    fn acks_go_alone_when_nothing_else_is_due_and_are_repeated_from_the_recent_list() {
        let now = Instant::now();
        let mut reliable = Reliable::new(ReliableConfig::default());
        for id in 0..2 {
            reliable
                .receive(now, Opcode::ControlV1, &body(&[], Some(id), b"tls"))
                .unwrap();
        }
        let packets = reliable.poll_transmit(now);
        assert_eq!(
            packets,
            [OutgoingControl {
                opcode: Opcode::AckV1,
                acks: vec![0, 1],
                message_id: None,
                payload: vec![],
            }]
        );
        assert!(!reliable.has_pending_acks());
        assert_eq!(reliable.next_deadline(), None);
        // Nothing new to ack: no packet at all.
        assert!(reliable.poll_transmit(now).is_empty());
        // A later control packet repeats the recent acks (newest first after fresh ones).
        reliable
            .receive(now, Opcode::ControlV1, &body(&[], Some(2), b"tls"))
            .unwrap();
        reliable
            .send(now, Opcode::ControlV1, b"reply".to_vec())
            .unwrap();
        let packets = reliable.poll_transmit(now);
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].message_id, Some(0));
        assert_eq!(packets[0].acks, [2, 0, 1]);
    }

    #[test]
    fn control_packets_carry_four_acks_and_the_rest_go_in_an_ack_packet() {
        let now = Instant::now();
        let mut reliable = Reliable::new(ReliableConfig::default());
        for id in 0..6 {
            reliable
                .receive(now, Opcode::ControlV1, &body(&[], Some(id), b""))
                .unwrap();
        }
        reliable
            .send(now, Opcode::ControlV1, b"a".to_vec())
            .unwrap();
        let packets = reliable.poll_transmit(now);
        assert_eq!(packets.len(), 2);
        assert_eq!(packets[0].opcode, Opcode::ControlV1);
        assert_eq!(packets[0].acks, [0, 1, 2, 3]);
        assert_eq!(packets[1].opcode, Opcode::AckV1);
        // The two left over, topped up with the four just sent.
        assert_eq!(packets[1].acks, [4, 5, 0, 1, 2, 3]);
        for packet in &packets {
            packet
                .body(SessionId([3; 8]))
                .validate(packet.opcode)
                .unwrap();
        }
    }

    #[test]
    fn at_most_eight_acks_wait() {
        let now = Instant::now();
        let mut reliable = Reliable::new(ReliableConfig::default());
        for id in 0..12 {
            reliable
                .receive(now, Opcode::ControlV1, &body(&[], Some(id), b""))
                .unwrap();
        }
        let packets = reliable.poll_transmit(now);
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].acks, (0..8).collect::<Vec<_>>());
        // All 12 were kept for delivery all the same; 8..12 get acked on retransmission.
        assert_eq!(std::iter::from_fn(|| reliable.pop_received()).count(), 12);
        reliable
            .receive(now, Opcode::ControlV1, &body(&[], Some(9), b""))
            .unwrap();
        assert_eq!(reliable.poll_transmit(now)[0].acks[0], 9);
    }

    #[test]
    fn reordered_messages_are_delivered_in_order_once() {
        let now = Instant::now();
        let mut reliable = Reliable::new(ReliableConfig::default());
        for id in [2, 0, 2, 1] {
            reliable
                .receive(now, Opcode::ControlV1, &body(&[], Some(id), &[id as u8]))
                .unwrap();
        }
        let delivered: Vec<Vec<u8>> = std::iter::from_fn(|| reliable.pop_received())
            .map(|(_, payload)| payload)
            .collect();
        assert_eq!(delivered, [[0], [1], [2]]);
        // Duplicate ids are acked once per poll.
        assert_eq!(reliable.poll_transmit(now)[0].acks, [2, 0, 1]);
    }

    #[test]
    fn duplicates_are_re_acked_and_messages_beyond_the_window_dropped_unacked() {
        let now = Instant::now();
        let mut reliable = Reliable::new(ReliableConfig::default());
        reliable
            .receive(now, Opcode::ControlV1, &body(&[], Some(0), b"first"))
            .unwrap();
        assert_eq!(
            reliable.pop_received(),
            Some((Opcode::ControlV1, b"first".to_vec()))
        );
        reliable.poll_transmit(now);
        // The peer did not get our ack and retransmits: acked again, not delivered again.
        reliable
            .receive(now, Opcode::ControlV1, &body(&[], Some(0), b"first"))
            .unwrap();
        assert!(reliable.has_pending_acks());
        assert_eq!(reliable.pop_received(), None);
        assert_eq!(reliable.poll_transmit(now)[0].acks, [0]);
        // Next expected is 1, so 1..=12 are inside the window and 13 is not.
        assert_eq!(
            reliable.receive(now, Opcode::ControlV1, &body(&[], Some(13), b"")),
            Err(ReliableError::BeyondReceiveWindow {
                message_id: 13,
                next_expected: 1
            })
        );
        assert!(!reliable.has_pending_acks());
        reliable
            .receive(now, Opcode::ControlV1, &body(&[], Some(12), b"last"))
            .unwrap();
        assert!(reliable.has_pending_acks());
        assert_eq!(reliable.pop_received(), None);
    }

    #[test]
    fn hard_reset_with_another_id_is_ignored_but_its_acks_count() {
        let now = Instant::now();
        let mut reliable = Reliable::new(ReliableConfig::default());
        reliable
            .send(now, Opcode::HardResetClientV2, vec![])
            .unwrap();
        assert_eq!(
            reliable.receive(now, Opcode::HardResetServerV2, &body(&[0], Some(3), b"")),
            Err(ReliableError::HardResetNotFirst(3))
        );
        assert!(reliable.all_acked());
        assert!(!reliable.has_pending_acks());
        assert_eq!(reliable.pop_received(), None);
    }

    #[test]
    fn malformed_bodies_are_refused_before_anything_changes() {
        let now = Instant::now();
        let mut reliable = Reliable::new(ReliableConfig::default());
        reliable.send(now, Opcode::ControlV1, vec![]).unwrap();
        assert_eq!(
            reliable.receive(now, Opcode::AckV1, &body(&[0], Some(1), b"")),
            Err(ReliableError::MessageIdMismatch {
                opcode: Opcode::AckV1,
                present: true
            })
        );
        assert_eq!(
            reliable.receive(now, Opcode::ControlV1, &body(&[0], None, b"")),
            Err(ReliableError::MessageIdMismatch {
                opcode: Opcode::ControlV1,
                present: false
            })
        );
        assert_eq!(
            reliable.receive(now, Opcode::DataV2, &body(&[0], None, b"")),
            Err(ReliableError::NotControl(Opcode::DataV2))
        );
        assert!(!reliable.all_acked());
    }

    #[test]
    fn three_later_acks_trigger_an_early_retransmission() {
        let start = Instant::now();
        let mut reliable = Reliable::new(ReliableConfig::default());
        for _ in 0..4 {
            reliable.send(start, Opcode::ControlV1, vec![]).unwrap();
        }
        assert_eq!(reliable.poll_transmit(start).len(), 4);
        let soon = start + secs(0.1);
        reliable
            .receive(soon, Opcode::AckV1, &ack_packet(&[1, 2]))
            .unwrap();
        assert_eq!(reliable.next_deadline(), Some(start + secs(2.0)));
        reliable
            .receive(soon, Opcode::AckV1, &ack_packet(&[3]))
            .unwrap();
        assert_eq!(reliable.next_deadline(), Some(soon));
        let packets = reliable.poll_transmit(soon);
        assert_eq!(ids(&packets), [Some(0)]);
        // The early send counts as a retransmission: the next interval is 4 s.
        assert_eq!(reliable.next_deadline(), Some(soon + secs(4.0)));
    }

    #[test]
    fn retransmit_all_now_restarts_the_backoff() {
        let start = Instant::now();
        let mut reliable = Reliable::new(ReliableConfig::default());
        reliable
            .send(start, Opcode::HardResetClientV2, vec![])
            .unwrap();
        reliable.poll_transmit(start);
        reliable.poll_transmit(start + secs(2.0));
        assert_eq!(reliable.next_deadline(), Some(start + secs(6.0)));
        let burst = start + secs(3.0);
        reliable.retransmit_all_now(burst);
        assert_eq!(ids(&reliable.poll_transmit(burst)), [Some(0)]);
        assert_eq!(reliable.next_deadline(), Some(burst + secs(2.0)));
    }

    #[test]
    fn message_ids_do_not_wrap() {
        let now = Instant::now();
        let mut reliable = Reliable::new(ReliableConfig::default());
        reliable.next_send_id = u64::from(u32::MAX);
        assert_eq!(reliable.send(now, Opcode::ControlV1, vec![]), Ok(u32::MAX));
        reliable
            .receive(now, Opcode::AckV1, &ack_packet(&[u32::MAX]))
            .unwrap();
        assert!(!reliable.can_send());
        assert_eq!(
            reliable.send(now, Opcode::ControlV1, vec![]),
            Err(ReliableError::MessageIdsExhausted)
        );
        // Receiving side: after delivering id u32::MAX nothing more is delivered.
        reliable.next_expected = u64::from(u32::MAX);
        reliable
            .receive(now, Opcode::ControlV1, &body(&[], Some(u32::MAX), b"end"))
            .unwrap();
        assert_eq!(
            reliable.pop_received(),
            Some((Opcode::ControlV1, b"end".to_vec()))
        );
        assert_eq!(reliable.pop_received(), None);
        reliable
            .receive(now, Opcode::ControlV1, &body(&[], Some(0), b"old"))
            .unwrap();
        assert_eq!(reliable.pop_received(), None);
    }

    /// xorshift64: a deterministic pseudo-random source for the simulated link.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn percent(&mut self, chance: u64) -> bool {
            self.next() % 100 < chance
        }

        fn millis(&mut self, low: u64, high: u64) -> Duration {
            Duration::from_millis(low + self.next() % (high - low))
        }
    }

    /// One side of the simulated session: reliability, wire codec, and its application data.
    struct Endpoint {
        reliable: Reliable,
        codec: ControlCodec,
        own: SessionId,
        peer: SessionId,
        to_send: VecDeque<Vec<u8>>,
        delivered: Vec<Vec<u8>>,
        packets_sent: usize,
        replays_refused: usize,
    }

    impl Endpoint {
        fn new(protection: Protection, own: SessionId, peer: SessionId, tag: &str) -> Self {
            Self {
                reliable: Reliable::new(ReliableConfig::default()),
                codec: ControlCodec::new(protection, 1_700_000_000),
                own,
                peer,
                // Sizes vary so that payload mix-ups would show.
                to_send: (0..200)
                    .map(|i| format!("{tag} message {i} {}", "x".repeat(i % 17)).into_bytes())
                    .collect(),
                delivered: Vec::new(),
                packets_sent: 0,
                replays_refused: 0,
            }
        }

        fn transmit(&mut self, now: Instant, wire: &mut Vec<Vec<u8>>) {
            while self.reliable.can_send() {
                let Some(message) = self.to_send.pop_front() else {
                    break;
                };
                self.reliable.send(now, Opcode::ControlV1, message).unwrap();
            }
            for outgoing in self.reliable.poll_transmit(now) {
                let packet = ControlPacket {
                    header: ControlHeader {
                        opcode: outgoing.opcode,
                        key_id: KeyId::ZERO,
                        session_id: self.own,
                    },
                    body: outgoing.body(self.peer),
                };
                let mut bytes = Vec::new();
                self.codec
                    .encode(1_700_000_000, &packet, &mut bytes)
                    .unwrap();
                wire.push(bytes);
                self.packets_sent += 1;
            }
        }

        fn handle(&mut self, now: Instant, bytes: &[u8]) {
            let mut scratch = Vec::new();
            let packet = match self.codec.decode(now, bytes, &mut scratch) {
                Ok(packet) => packet,
                Err(ControlCodecError::Replay(_)) => {
                    self.replays_refused += 1;
                    return;
                }
                Err(other) => panic!("{other}"),
            };
            assert_eq!(packet.header.session_id, self.peer);
            if let Some(remote) = packet.body.remote_session_id {
                // Acks of our messages name our session.
                assert_eq!(remote, self.own);
            }
            self.reliable
                .receive(now, packet.header.opcode, &packet.body)
                .unwrap();
            while let Some((opcode, payload)) = self.reliable.pop_received() {
                assert_eq!(opcode, Opcode::ControlV1);
                self.delivered.push(payload);
            }
        }

        fn done(&self) -> bool {
            self.to_send.is_empty() && self.reliable.all_acked()
        }
    }

    /// Packets in flight on the simulated link: (arrival, to the first endpoint?, bytes).
    type Link = Vec<(Instant, bool, Vec<u8>)>;

    /// Two endpoints exchange 200 messages each over a link that loses 20%, duplicates 10% and
    /// delays by 10..300 ms (so reorders) every packet; returns (packets sent, duplicates the
    /// codec refused as replays, simulated duration).
    fn run_lossy_pair(
        seed: u64,
        client: Protection,
        server: Protection,
    ) -> (usize, usize, Duration) {
        let start = Instant::now();
        let mut rng = XorShift(seed);
        let (client_sid, server_sid) = (SessionId([0xc1; 8]), SessionId([0x5e; 8]));
        let mut a = Endpoint::new(client, client_sid, server_sid, "a");
        let mut b = Endpoint::new(server, server_sid, client_sid, "b");
        let expected = |tag: &str| -> Vec<Vec<u8>> {
            Endpoint::new(Protection::None, client_sid, server_sid, tag)
                .to_send
                .into_iter()
                .collect()
        };
        let mut link: Link = Vec::new();
        let mut now = start;
        for _ in 0..1_000_000 {
            for (endpoint, to_a) in [(&mut a, false), (&mut b, true)] {
                let mut wire = Vec::new();
                endpoint.transmit(now, &mut wire);
                for bytes in wire {
                    if rng.percent(20) {
                        continue;
                    }
                    if rng.percent(10) {
                        link.push((now + rng.millis(10, 300), to_a, bytes.clone()));
                    }
                    link.push((now + rng.millis(10, 300), to_a, bytes));
                }
            }
            let (arrived, in_transit): (Link, Link) =
                link.into_iter().partition(|(at, ..)| *at <= now);
            link = in_transit;
            for (_, to_a, bytes) in arrived {
                let endpoint = if to_a { &mut a } else { &mut b };
                endpoint.handle(now, &bytes);
            }
            if a.done() && b.done() && link.is_empty() {
                assert_eq!(a.delivered, expected("b"));
                assert_eq!(b.delivered, expected("a"));
                let replays = a.replays_refused + b.replays_refused;
                return (a.packets_sent + b.packets_sent, replays, now - start);
            }
            let next = [a.reliable.next_deadline(), b.reliable.next_deadline()]
                .into_iter()
                .flatten()
                .chain(link.iter().map(|(at, ..)| *at))
                .min()
                .expect("stalled: nothing scheduled but not done");
            now = now.max(next);
        }
        panic!("did not finish");
    }

    #[test]
    fn lossy_reordering_duplicating_link_delivers_everything_once_in_order() {
        for seed in [1, 0x9e37_79b9_7f4a_7c15, 42] {
            let (sent, replays, elapsed) = run_lossy_pair(seed, Protection::None, Protection::None);
            // Loss forced retransmissions (at least one 2 s timeout) beyond the 400 messages.
            assert!(sent > 400, "seed {seed}: {sent} packets");
            assert!(elapsed > Duration::from_secs(2), "{elapsed:?}");
            // Without tls-auth every duplicate reached the reliability layer.
            assert_eq!(replays, 0);
        }
    }

    #[test]
    fn lossy_pair_through_tls_auth() {
        let key = counting_key();
        let auth = |direction| {
            Protection::TlsAuth(TlsAuth::new(&key, Some(direction), TlsAuthDigest::Sha256))
        };
        let (sent, replays, _) =
            run_lossy_pair(7, auth(KeyDirection::Inverse), auth(KeyDirection::Normal));
        // Duplicated wire packets carry the same replay id and stop at the codec.
        assert!(replays > 0 && replays < sent, "{replays} of {sent}");
    }
}
