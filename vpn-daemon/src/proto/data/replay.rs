//! Replay protection for data-channel packet ids, with OpenVPN's semantics (packet_id.c
//! `packet_id_test`, `packet_id_add`, `packet_id_reap`).
//!
//! The AEAD data channel carries a short-form packet id (32 bits, no time field), so of
//! OpenVPN's checks these remain:
//!
//! * id 0 is never valid (senders start at 1);
//! * with a window of `n > 0` (`--replay-window n t`, default 64): an id above the highest seen
//!   is accepted; an id at most `n - 1` below it is accepted once; older ids are rejected;
//! * the time window `t` (default 15 s): every [`REAP_INTERVAL`] the window is scanned from the
//!   highest id down; the first id that was received more than `t` ago, and every id below it,
//!   become unacceptable even if never seen. So a late packet is accepted only if it arrives no
//!   later than about `t` after a packet with a higher id was received. `t = 0` disables this;
//! * a window of 0 is OpenVPN's strict mode: the first id is accepted, then only its successor.
//!
//! TCP: OpenVPN 2.4 and later use the same window over TCP as over UDP (commit 55755e6e
//! "Enable TCP non-linear packet ID", peer-info `IV_TCPNL`), so that several threads may encrypt
//! in parallel; [`ReplayConfig::tcp`] therefore does not change the rules.
use std::time::{Duration, Instant};

use super::DataError;

/// Default sequence window (OpenVPN `DEFAULT_SEQ_BACKTRACK`).
pub const DEFAULT_REPLAY_WINDOW: u32 = 64;
/// Largest sequence window `--replay-window` accepts (OpenVPN `MAX_SEQ_BACKTRACK`).
pub const MAX_REPLAY_WINDOW: u32 = 65_536;
/// Default time window (OpenVPN `DEFAULT_TIME_BACKTRACK`).
pub const DEFAULT_REPLAY_TIME_WINDOW: Duration = Duration::from_secs(15);
/// Largest time window `--replay-window` accepts (OpenVPN `MAX_TIME_BACKTRACK`).
pub const MAX_REPLAY_TIME_WINDOW: Duration = Duration::from_secs(600);
/// How often the time window is applied (OpenVPN `SEQ_REAP_INTERVAL`).
pub const REAP_INTERVAL: Duration = Duration::from_secs(5);

/// Replay-protection settings (`--replay-window n t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayConfig {
    /// Sequence window `n`, 0..=[`MAX_REPLAY_WINDOW`]; 0 means strictly sequential ids.
    pub window: u32,
    /// Time window `t`, at most [`MAX_REPLAY_TIME_WINDOW`]; zero disables time expiry.
    pub time_window: Duration,
    /// Whether the link is TCP. Recorded for the caller's benefit only: OpenVPN 2.4+ applies the
    /// same window to TCP (see the module docs), and so do we.
    pub tcp: bool,
}

impl Default for ReplayConfig {
    /// OpenVPN's defaults: window 64, time window 15 s, UDP.
    fn default() -> Self {
        Self {
            window: DEFAULT_REPLAY_WINDOW,
            time_window: DEFAULT_REPLAY_TIME_WINDOW,
            tcp: false,
        }
    }
}

/// The receive-side replay state of one data-channel key.
///
/// Use [`check`](Self::check) before decrypting (cheap rejection) and
/// [`mark`](Self::mark) only after the packet authenticated, so forged packets cannot move the
/// window. Memory is allocated once, in [`new`](Self::new).
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    window: u64,
    time_window_ms: u64,
    /// Highest id accepted so far; 0 before the first.
    highest: u64,
    /// Ids at or below this were expired by the time window.
    expired_through: u64,
    /// Receive stamp of id `i` at `slots[i & mask]`, for ids within the window:
    /// 0 = not seen, otherwise milliseconds since `base` plus 1.
    slots: Box<[u64]>,
    mask: u64,
    base: Option<Instant>,
    last_reap: Option<Instant>,
}

impl ReplayWindow {
    /// An empty window. Errors with [`DataError::InvalidReplayConfig`] outside OpenVPN's limits.
    pub fn new(config: ReplayConfig) -> Result<Self, DataError> {
        if config.window > MAX_REPLAY_WINDOW || config.time_window > MAX_REPLAY_TIME_WINDOW {
            return Err(DataError::InvalidReplayConfig);
        }
        // A power-of-two ring makes the slot of an id a mask; only the first `window` ids below
        // the highest are ever consulted.
        let capacity = if config.window == 0 {
            0
        } else {
            config.window.next_power_of_two()
        };
        Ok(Self {
            window: u64::from(config.window),
            time_window_ms: duration_ms(config.time_window),
            highest: 0,
            expired_through: 0,
            slots: vec![0; capacity as usize].into_boxed_slice(),
            mask: u64::from(capacity.saturating_sub(1)),
            base: None,
            last_reap: None,
        })
    }

    /// The highest packet id accepted so far (0 before the first).
    pub fn highest(&self) -> u32 {
        u32::try_from(self.highest).unwrap_or(u32::MAX)
    }

    /// Whether `packet_id` would be accepted now. Applies the time window first if it is due,
    /// as OpenVPN's `crypto_check_replay` does. Does not record the id.
    pub fn check(&mut self, now: Instant, packet_id: u32) -> Result<(), DataError> {
        self.reap_if_due(now);
        if self.acceptable(u64::from(packet_id)) {
            Ok(())
        } else {
            Err(DataError::Replay)
        }
    }

    /// Records `packet_id` as received at `now`. Call only for an authenticated packet that
    /// passed [`check`](Self::check); an id that would be rejected is ignored.
    pub fn mark(&mut self, now: Instant, packet_id: u32) {
        let id = u64::from(packet_id);
        if !self.acceptable(id) {
            return;
        }
        if self.window == 0 {
            self.highest = id;
            return;
        }
        let stamp = self.stamp(now);
        if id > self.highest {
            self.clear_slots_between(self.highest, id);
            self.highest = id;
        }
        if let Some(slot) = self.slots.get_mut((id & self.mask) as usize) {
            *slot = stamp;
        }
    }

    /// [`check`](Self::check) then [`mark`](Self::mark), for callers that authenticated already.
    pub fn check_and_mark(&mut self, now: Instant, packet_id: u32) -> Result<(), DataError> {
        self.check(now, packet_id)?;
        self.mark(now, packet_id);
        Ok(())
    }

    fn acceptable(&self, id: u64) -> bool {
        if id == 0 {
            return false;
        }
        if self.window == 0 {
            return self.highest == 0 || id == self.highest + 1;
        }
        if id > self.highest {
            return true;
        }
        if id <= self.expired_through || self.highest - id >= self.window {
            return false;
        }
        self.slots.get((id & self.mask) as usize) == Some(&0)
    }

    /// Forgets the slots of the ids in `(from, to)` that enter the window when `to` becomes
    /// the highest id: their ring positions still hold stamps of ids one ring length older.
    fn clear_slots_between(&mut self, from: u64, to: u64) {
        let gap = to - from - 1;
        if gap >= self.slots.len() as u64 {
            self.slots.fill(0);
            return;
        }
        for id in from + 1..to {
            if let Some(slot) = self.slots.get_mut((id & self.mask) as usize) {
                *slot = 0;
            }
        }
    }

    fn stamp(&mut self, now: Instant) -> u64 {
        let base = *self.base.get_or_insert(now);
        duration_ms(now.saturating_duration_since(base)).saturating_add(1)
    }

    /// OpenVPN `packet_id_reap`: scanning from the highest id down, the first id received more
    /// than the time window ago expires together with everything below it.
    fn reap_if_due(&mut self, now: Instant) {
        if self.time_window_ms == 0 || self.window == 0 {
            return;
        }
        if let Some(last) = self.last_reap {
            if now.saturating_duration_since(last) < REAP_INTERVAL {
                return;
            }
        }
        self.last_reap = Some(now);
        let Some(base) = self.base else {
            return;
        };
        let now_ms = duration_ms(now.saturating_duration_since(base));
        let lowest = self
            .highest
            .saturating_sub(self.window - 1)
            .max(self.expired_through + 1)
            .max(1);
        let mut id = self.highest;
        while id >= lowest {
            let stamp = self
                .slots
                .get((id & self.mask) as usize)
                .copied()
                .unwrap_or(0);
            if stamp != 0 && (stamp - 1).saturating_add(self.time_window_ms) < now_ms {
                self.expired_through = id;
                return;
            }
            id -= 1;
        }
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn window(window: u32, time_window: Duration) -> ReplayWindow {
        ReplayWindow::new(ReplayConfig {
            window,
            time_window,
            tcp: false,
        })
        .unwrap()
    }

    fn accept(replay: &mut ReplayWindow, now: Instant, id: u32) -> bool {
        replay.check_and_mark(now, id).is_ok()
    }

    #[test]
    fn duplicate_is_rejected_and_reordering_within_the_window_accepted_once() {
        let now = Instant::now();
        let mut replay = window(64, Duration::ZERO);
        assert!(accept(&mut replay, now, 1));
        assert!(!accept(&mut replay, now, 1), "duplicate");
        assert!(accept(&mut replay, now, 5));
        assert!(accept(&mut replay, now, 3), "late but inside the window");
        assert!(!accept(&mut replay, now, 3), "late duplicate");
        assert!(accept(&mut replay, now, 2));
        assert!(accept(&mut replay, now, 4));
        assert_eq!(replay.highest(), 5);
    }

    #[test]
    fn id_zero_is_never_accepted() {
        let now = Instant::now();
        assert!(!accept(&mut window(64, Duration::ZERO), now, 0));
        assert!(!accept(&mut window(0, Duration::ZERO), now, 0));
    }

    #[test]
    fn window_edge_is_exactly_n_ids() {
        let now = Instant::now();
        let mut replay = window(64, Duration::ZERO);
        assert!(accept(&mut replay, now, 100));
        assert!(
            !accept(&mut replay, now, 36),
            "100 - 36 = 64 is outside a window of 64"
        );
        assert!(
            accept(&mut replay, now, 37),
            "100 - 37 = 63 is the oldest id inside"
        );
        // Far jump: everything below the new window is too old, inside it is fresh.
        assert!(accept(&mut replay, now, 1_000));
        assert!(!accept(&mut replay, now, 100));
        assert!(accept(&mut replay, now, 999));
        assert!(accept(&mut replay, now, 937));
        assert!(!accept(&mut replay, now, 936));
    }

    #[test]
    fn ring_reuse_does_not_leak_old_stamps() {
        // Window 3 uses a ring of 4: id 1's slot is reused by id 5.
        let now = Instant::now();
        let mut replay = window(3, Duration::ZERO);
        assert!(accept(&mut replay, now, 1));
        assert!(accept(&mut replay, now, 4));
        assert!(accept(&mut replay, now, 6));
        assert!(
            accept(&mut replay, now, 5),
            "slot of 1 must have been cleared for 5"
        );
        assert!(
            !accept(&mut replay, now, 3),
            "6 - 3 = 3 is outside a window of 3"
        );
    }

    #[test]
    fn strict_mode_wants_consecutive_ids() {
        let now = Instant::now();
        let mut replay = window(0, Duration::from_secs(15));
        assert!(accept(&mut replay, now, 7), "any first id");
        assert!(accept(&mut replay, now, 8));
        assert!(!accept(&mut replay, now, 10), "gap");
        assert!(!accept(&mut replay, now, 8), "duplicate");
        assert!(accept(&mut replay, now, 9));
    }

    #[test]
    fn time_window_expires_late_packets() {
        let start = Instant::now();
        let mut replay = window(64, Duration::from_secs(15));
        assert!(accept(&mut replay, start, 1));
        assert!(accept(&mut replay, start, 3));
        // Within 15 s of receiving 3, id 2 is still welcome (reap at t=10 finds nothing old).
        let t10 = start + Duration::from_secs(10);
        assert!(replay.check(t10, 2).is_ok());
        // At t=16, the reap finds 3 received more than 15 s ago: 3 and everything below expire.
        assert!(accept(&mut replay, start + Duration::from_secs(16), 10));
        assert!(!accept(&mut replay, start + Duration::from_secs(16), 2));
        assert!(
            accept(&mut replay, start + Duration::from_secs(16), 9),
            "above the expired id"
        );
    }

    #[test]
    fn reap_runs_at_most_every_five_seconds() {
        let start = Instant::now();
        let mut replay = window(64, Duration::from_secs(1));
        assert!(replay.check(start, 1).is_ok()); // first reap at `start`
        replay.mark(start, 3);
        // 3 is 2 s old at t=2, but the next reap is due only at t=5.
        assert!(replay.check(start + Duration::from_secs(2), 2).is_ok());
        assert!(replay.check(start + Duration::from_secs(5), 2).is_err());
    }

    #[test]
    fn limits_follow_openvpn() {
        let config = |window, secs| ReplayConfig {
            window,
            time_window: Duration::from_secs(secs),
            tcp: true,
        };
        assert!(ReplayWindow::new(config(65_536, 600)).is_ok());
        assert_eq!(
            ReplayWindow::new(config(65_537, 15)).err(),
            Some(DataError::InvalidReplayConfig)
        );
        assert_eq!(
            ReplayWindow::new(config(64, 601)).err(),
            Some(DataError::InvalidReplayConfig)
        );
    }

    /// The rules of the module docs, on a map of every id ever accepted.
    struct Model {
        window: u64,
        time_window: Duration,
        seen: HashMap<u64, Instant>,
        highest: u64,
        expired_through: u64,
        last_reap: Option<Instant>,
    }

    impl Model {
        fn accept(&mut self, now: Instant, id: u64) -> bool {
            if !self.time_window.is_zero()
                && self.window > 0
                && self
                    .last_reap
                    .is_none_or(|last| now >= last + REAP_INTERVAL)
            {
                self.last_reap = Some(now);
                let mut candidate = self.highest;
                while candidate > self.expired_through
                    && candidate > 0
                    && self.highest - candidate < self.window
                {
                    if let Some(&at) = self.seen.get(&candidate) {
                        if now.duration_since(at) > self.time_window {
                            self.expired_through = candidate;
                            break;
                        }
                    }
                    candidate -= 1;
                }
            }
            let ok = id != 0
                && if self.window == 0 {
                    self.highest == 0 || id == self.highest + 1
                } else {
                    id > self.highest
                        || (id > self.expired_through
                            && self.highest - id < self.window
                            && !self.seen.contains_key(&id))
                };
            if ok {
                self.seen.insert(id, now);
                self.highest = self.highest.max(id);
                if self.window == 0 {
                    self.highest = id;
                }
            }
            ok
        }
    }

    proptest! {
        #[test]
        fn matches_the_reference_model(
            window_size in prop_oneof![Just(0u32), 1u32..10, Just(64u32)],
            time_window_ms in prop_oneof![Just(0u64), 500u64..20_000],
            steps in proptest::collection::vec((0u32..200, 0u64..3_000), 1..300),
        ) {
            let start = Instant::now();
            let time_window = Duration::from_millis(time_window_ms);
            let mut replay = window(window_size, time_window);
            let mut model = Model {
                window: u64::from(window_size),
                time_window,
                seen: HashMap::new(),
                highest: 0,
                expired_through: 0,
                last_reap: None,
            };
            let mut now = start;
            for (id, advance_ms) in steps {
                now += Duration::from_millis(advance_ms);
                let expected = model.accept(now, u64::from(id));
                prop_assert_eq!(accept(&mut replay, now, id), expected, "id {} at {:?}", id, now - start);
            }
        }
    }
}
