//! Replay protection for tls-auth and tls-crypt control packets.
//!
//! Both wrappers carry an 8-byte replay id after the session id: a 32-bit packet id, then the
//! sender's 32-bit unix time (draft section "OpenVPN mixed timestamp/packet counter format"; the
//! time is the more significant half when the two are read as one counter). The sender fixes the
//! time when it sends its first packet and counts the packet id up from 1; it moves the time only
//! when the id would roll over (packet_id.c `packet_id_send_update`).
//!
//! The receiver keeps OpenVPN's "backtrack" window (packet_id.c `packet_id_test`,
//! `packet_id_add`, `packet_id_reap`): packets may arrive out of order within the last
//! `backtrack` ids (`--replay-window`, default 64), each id is accepted once, a packet id of 0 is
//! never valid, a time older than the newest is refused and a newer time starts a fresh window.
//! Additionally, once a packet has been in the window for `time_backtrack` (default 15 s) without
//! a gap before it being filled, the gaps at and below it are closed for good.
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Length of a replay id on the wire.
pub const REPLAY_ID_LEN: usize = 8;

/// OpenVPN's default `--replay-window` size (packet_id.h `DEFAULT_SEQ_BACKTRACK`).
pub const DEFAULT_BACKTRACK: u32 = 64;
/// The largest `--replay-window` size OpenVPN accepts (packet_id.h `MAX_SEQ_BACKTRACK`).
pub const MAX_BACKTRACK: u32 = 65536;
/// OpenVPN's default `--replay-window` time (packet_id.h `DEFAULT_TIME_BACKTRACK`).
pub const DEFAULT_TIME_BACKTRACK: Duration = Duration::from_secs(15);

/// The replay id of a tls-auth or tls-crypt packet: packet id, then sender time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplayId {
    /// Counts up from 1 for every packet sent, retransmissions included.
    pub packet_id: u32,
    /// Unix seconds, fixed by the sender when it starts counting.
    pub time: u32,
}

impl ReplayId {
    /// The wire form: packet id, then time, both big-endian.
    pub fn to_bytes(self) -> [u8; REPLAY_ID_LEN] {
        let mut bytes = [0u8; REPLAY_ID_LEN];
        let (packet_id, time) = bytes.split_at_mut(4);
        packet_id.copy_from_slice(&self.packet_id.to_be_bytes());
        time.copy_from_slice(&self.time.to_be_bytes());
        bytes
    }

    /// Reads the wire form written by [`ReplayId::to_bytes`].
    pub fn from_bytes(bytes: [u8; REPLAY_ID_LEN]) -> Self {
        let [a, b, c, d, e, f, g, h] = bytes;
        Self {
            packet_id: u32::from_be_bytes([a, b, c, d]),
            time: u32::from_be_bytes([e, f, g, h]),
        }
    }
}

/// The packet id space of one time value is used up and the clock has not moved on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("control packet ids exhausted: 2^32 packets sent within one second")]
pub struct ReplayIdsExhausted;

/// Hands out the replay ids a sender puts on its control packets.
#[derive(Debug, Clone)]
pub struct ReplayIdSequence {
    time: u32,
    last_packet_id: u32,
}

impl ReplayIdSequence {
    /// Starts a sequence at `now_unix` (seconds); the first id is `(1, now_unix)`.
    pub fn new(now_unix: u32) -> Self {
        Self {
            time: now_unix,
            last_packet_id: 0,
        }
    }

    /// The next replay id. When the packet id would wrap, the time moves to `now_unix`, which
    /// must be later than the current time (else [`ReplayIdsExhausted`]).
    pub fn next_id(&mut self, now_unix: u32) -> Result<ReplayId, ReplayIdsExhausted> {
        if self.last_packet_id == u32::MAX {
            if now_unix <= self.time {
                return Err(ReplayIdsExhausted);
            }
            self.time = now_unix;
            self.last_packet_id = 0;
        }
        self.last_packet_id += 1;
        Ok(ReplayId {
            packet_id: self.last_packet_id,
            time: self.time,
        })
    }
}

/// Why a replay id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// Packet ids start at 1.
    #[error("packet id 0 is never valid")]
    ZeroPacketId,
    /// The sender's time is older than that of a packet already accepted.
    #[error("sender time went backwards")]
    TimeWentBack,
    /// The id is below the window.
    #[error("packet id is older than the replay window")]
    TooOld,
    /// The id was accepted before.
    #[error("packet id was already received")]
    Duplicate,
    /// The id's slot in the window was closed after the time backtrack elapsed.
    #[error("packet id arrived too late (replay-window time exceeded)")]
    Expired,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Unseen,
    /// Accepted at this local time.
    Seen(Instant),
    /// Closed by the time backtrack; never accepted again.
    Expired,
}

/// The receive side's record of control-packet replay ids (one per session and direction).
///
/// Use it the way boringtun uses its validator: [`check`](Self::check) before the (expensive)
/// authentication, [`mark`](Self::mark) only after the packet authenticated, so that forged
/// packets cannot move the window.
#[derive(Debug, Clone)]
pub struct ControlReplayWindow {
    backtrack: u32,
    time_backtrack: Option<Duration>,
    /// Sender time and highest packet id accepted so far.
    newest: Option<ReplayId>,
    /// `slots[d]` is packet id `newest.packet_id - d`; never longer than `backtrack`.
    slots: VecDeque<Slot>,
}

impl Default for ControlReplayWindow {
    fn default() -> Self {
        Self::new(DEFAULT_BACKTRACK, Some(DEFAULT_TIME_BACKTRACK))
    }
}

impl ControlReplayWindow {
    /// A window accepting ids up to `backtrack - 1` below the newest (clamped to
    /// 1..=[`MAX_BACKTRACK`]). `time_backtrack` of `None` turns the time-based closing off.
    pub fn new(backtrack: u32, time_backtrack: Option<Duration>) -> Self {
        let backtrack = backtrack.clamp(1, MAX_BACKTRACK);
        Self {
            backtrack,
            time_backtrack,
            newest: None,
            slots: VecDeque::new(),
        }
    }

    /// Whether `id` would be accepted at local time `now`. Does not change the window.
    pub fn check(&self, id: ReplayId, now: Instant) -> Result<(), ReplayError> {
        if id.packet_id == 0 {
            return Err(ReplayError::ZeroPacketId);
        }
        let Some(newest) = self.newest else {
            return Ok(());
        };
        if id.time < newest.time {
            return Err(ReplayError::TimeWentBack);
        }
        if id.time > newest.time || id.packet_id > newest.packet_id {
            return Ok(());
        }
        let distance = (newest.packet_id - id.packet_id) as usize;
        let Some(slot) = self.slots.get(distance) else {
            return Err(ReplayError::TooOld);
        };
        if matches!(slot, Slot::Seen(_)) {
            return Err(ReplayError::Duplicate);
        }
        if self.closed_at_or_above(distance, now) {
            return Err(ReplayError::Expired);
        }
        Ok(())
    }

    /// Records `id` as received at `now`. Call only after [`check`](Self::check) passed and the
    /// packet authenticated; an id that `check` refuses leaves the window unchanged.
    pub fn mark(&mut self, id: ReplayId, now: Instant) {
        if self.check(id, now).is_err() {
            return;
        }
        self.close_expired(now);
        let distance = match self.newest {
            Some(newest) if newest.time == id.time && id.packet_id <= newest.packet_id => {
                (newest.packet_id - id.packet_id) as usize
            }
            Some(newest)
                if newest.time == id.time && id.packet_id - newest.packet_id < self.backtrack =>
            {
                // Slide forward: the new ids between old newest and this one start unseen.
                for _ in newest.packet_id..id.packet_id {
                    self.slots.push_front(Slot::Unseen);
                }
                self.slots.truncate(self.backtrack as usize);
                self.newest = Some(id);
                0
            }
            _ => {
                // First packet, a newer sender time, or a jump past the whole window: start
                // afresh with ids 1..=packet_id (at most `backtrack` of them) unseen.
                let length = id.packet_id.min(self.backtrack) as usize;
                self.slots.clear();
                self.slots.resize(length, Slot::Unseen);
                self.newest = Some(id);
                0
            }
        };
        if let Some(slot) = self.slots.get_mut(distance) {
            *slot = Slot::Seen(now);
        }
    }

    /// [`check`](Self::check), then [`mark`](Self::mark) if accepted.
    pub fn check_and_mark(&mut self, id: ReplayId, now: Instant) -> Result<(), ReplayError> {
        self.check(id, now)?;
        self.mark(id, now);
        Ok(())
    }

    /// The newest replay id accepted so far.
    pub fn newest(&self) -> Option<ReplayId> {
        self.newest
    }

    fn is_stale(&self, received: Instant, now: Instant) -> bool {
        self.time_backtrack
            .is_some_and(|limit| now.saturating_duration_since(received) > limit)
    }

    /// Whether slot `distance` is closed: it, or a newer slot, is expired or was seen longer
    /// than the time backtrack ago (packet_id.c `packet_id_reap`: once one slot is old enough,
    /// every older gap is given up).
    fn closed_at_or_above(&self, distance: usize, now: Instant) -> bool {
        self.slots.iter().take(distance + 1).any(|slot| match slot {
            Slot::Unseen => false,
            Slot::Expired => true,
            Slot::Seen(received) => self.is_stale(*received, now),
        })
    }

    /// Turns every slot at or below the newest stale one into `Expired`.
    fn close_expired(&mut self, now: Instant) {
        let first_stale = self.slots.iter().position(|slot| match slot {
            Slot::Unseen => false,
            Slot::Expired => true,
            Slot::Seen(received) => self.is_stale(*received, now),
        });
        if let Some(first_stale) = first_stale {
            for slot in self.slots.iter_mut().skip(first_stale) {
                *slot = Slot::Expired;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn id(packet_id: u32, time: u32) -> ReplayId {
        ReplayId { packet_id, time }
    }

    #[test]
    fn replay_id_wire_form() {
        let replay_id = id(0x0102_0304, 0x0a0b_0c0d);
        assert_eq!(replay_id.to_bytes(), [1, 2, 3, 4, 0x0a, 0x0b, 0x0c, 0x0d]);
        assert_eq!(ReplayId::from_bytes(replay_id.to_bytes()), replay_id);
    }

    #[test]
    fn sequence_counts_from_one_and_rolls_over_only_when_time_moves() {
        let mut sequence = ReplayIdSequence::new(1000);
        assert_eq!(sequence.next_id(1000), Ok(id(1, 1000)));
        assert_eq!(sequence.next_id(1005), Ok(id(2, 1000)));
        sequence.last_packet_id = u32::MAX;
        assert_eq!(sequence.next_id(1000), Err(ReplayIdsExhausted));
        assert_eq!(sequence.next_id(1001), Ok(id(1, 1001)));
    }

    #[test]
    fn duplicates_and_too_old_are_refused_reordering_is_accepted() {
        let now = Instant::now();
        let mut window = ControlReplayWindow::new(8, None);
        assert_eq!(
            window.check_and_mark(id(0, 5), now),
            Err(ReplayError::ZeroPacketId)
        );
        assert_eq!(window.check_and_mark(id(1, 5), now), Ok(()));
        assert_eq!(
            window.check_and_mark(id(1, 5), now),
            Err(ReplayError::Duplicate)
        );
        assert_eq!(window.check_and_mark(id(4, 5), now), Ok(()));
        // 2 and 3 were skipped and may still come, once each.
        assert_eq!(window.check_and_mark(id(3, 5), now), Ok(()));
        assert_eq!(window.check_and_mark(id(2, 5), now), Ok(()));
        assert_eq!(
            window.check_and_mark(id(2, 5), now),
            Err(ReplayError::Duplicate)
        );
        assert_eq!(window.check_and_mark(id(20, 5), now), Ok(()));
        // Window of 8 below 20: 13..=20.
        assert_eq!(
            window.check_and_mark(id(12, 5), now),
            Err(ReplayError::TooOld)
        );
        assert_eq!(window.check_and_mark(id(13, 5), now), Ok(()));
        // Sender time went back: refused; forward: a fresh window.
        assert_eq!(
            window.check_and_mark(id(21, 4), now),
            Err(ReplayError::TimeWentBack)
        );
        assert_eq!(window.check_and_mark(id(3, 6), now), Ok(()));
        assert_eq!(window.check_and_mark(id(1, 6), now), Ok(()));
        assert_eq!(
            window.check_and_mark(id(20, 5), now),
            Err(ReplayError::TimeWentBack)
        );
        assert_eq!(window.newest(), Some(id(3, 6)));
    }

    #[test]
    fn check_does_not_change_the_window() {
        let now = Instant::now();
        let mut window = ControlReplayWindow::default();
        window.check_and_mark(id(1, 1), now).unwrap();
        assert_eq!(window.check(id(2, 1), now), Ok(()));
        assert_eq!(window.check(id(2, 1), now), Ok(()));
        assert_eq!(window.newest(), Some(id(1, 1)));
    }

    #[test]
    fn gaps_close_after_the_time_backtrack() {
        let start = Instant::now();
        let mut window = ControlReplayWindow::new(64, Some(Duration::from_secs(15)));
        window.check_and_mark(id(1, 1), start).unwrap();
        window.check_and_mark(id(3, 1), start).unwrap();
        // Within 15 s the gap at 2 is still open.
        assert_eq!(
            window.check(id(2, 1), start + Duration::from_secs(15)),
            Ok(())
        );
        // Afterwards it is closed, also after new packets moved the window on.
        let late = start + Duration::from_secs(16);
        assert_eq!(window.check(id(2, 1), late), Err(ReplayError::Expired));
        window.check_and_mark(id(5, 1), late).unwrap();
        assert_eq!(window.check(id(2, 1), late), Err(ReplayError::Expired));
        // The gap at 4 opened after packet 3 went stale and only the fresh packet 5 lies above
        // it, so it stays open.
        assert_eq!(window.check(id(4, 1), late), Ok(()));
        assert_eq!(window.check(id(6, 1), late), Ok(()));
    }

    /// The obvious set-based model of the same rules (no time backtrack).
    #[derive(Default)]
    struct Model {
        time: Option<u32>,
        highest: u32,
        seen: BTreeSet<u32>,
    }

    impl Model {
        fn accept(&mut self, backtrack: u32, replay_id: ReplayId) -> bool {
            let ReplayId { packet_id, time } = replay_id;
            if packet_id == 0 {
                return false;
            }
            let fresh = match self.time {
                None => true,
                Some(current) if time > current => true,
                Some(current) if time < current => return false,
                Some(_) => false,
            };
            if fresh {
                self.time = Some(time);
                self.highest = packet_id;
                self.seen = BTreeSet::from([packet_id]);
                return true;
            }
            if packet_id <= self.highest
                && (self.highest - packet_id >= backtrack || self.seen.contains(&packet_id))
            {
                return false;
            }
            self.highest = self.highest.max(packet_id);
            self.seen.insert(packet_id);
            true
        }
    }

    proptest! {
        #[test]
        fn window_matches_a_set_model(
            backtrack in 1u32..20,
            ids in proptest::collection::vec((0u32..60, 0u32..3), 0..200),
        ) {
            let now = Instant::now();
            let mut window = ControlReplayWindow::new(backtrack, None);
            let mut model = Model::default();
            for (packet_id, time) in ids {
                let replay_id = id(packet_id, time);
                let accepted = window.check_and_mark(replay_id, now).is_ok();
                prop_assert_eq!(accepted, model.accept(backtrack, replay_id), "{:?}", replay_id);
            }
        }
    }
}
