//! The data-path counters of one tunnel (all its peers), with one name table for status.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Declares a cache-line aligned group of counters and its name table: the tun→wire thread, the
/// wire→tun thread and the control task each write their own group, so no line bounces between
/// cores on every packet.
macro_rules! counter_group {
    ($(#[$meta:meta])* $name:ident { $($(#[$field_meta:meta])* $field:ident,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        #[repr(C, align(64))]
        pub(crate) struct $name {
            $($(#[$field_meta])* pub(crate) $field: AtomicU64,)*
        }

        impl $name {
            fn snapshot_into(&self, out: &mut BTreeMap<String, u64>) {
                $(out.insert(stringify!($field).to_owned(), self.$field.load(Ordering::Relaxed));)*
            }
        }
    };
}

counter_group!(
    /// tun → wire.
    TxCounters {
        tx_packets,
        tx_bytes,
        /// No send key yet (or any more) for the peer.
        tx_no_key,
        /// A server's tun packet for an address no client owns.
        tx_no_route,
        /// Sealing or sending failed.
        tx_errors,
        /// A TCP peer's bounded send queue was full: the packet was dropped, not waited for.
        tx_queue_full,
    }
);

counter_group!(
    /// wire → tun.
    RxCounters {
        rx_packets,
        rx_bytes,
        rx_replayed,
        rx_unauthenticated,
        rx_malformed,
        /// Compressed data packets: only compression framing is supported.
        rx_compressed,
        rx_unknown_key,
        /// A server's data packet whose peer id (or address) is no connected client's.
        rx_unknown_client,
        /// A server's client sent from an address it does not own.
        rx_bad_source,
        /// Packets a server forwarded from one client to another.
        client_to_client,
    }
);

counter_group!(
    /// Control channel.
    ControlCounters {
        /// Control packets refused by tls-auth/tls-crypt: never answered.
        control_unauthenticated,
        /// Control packets dropped as replays, as not belonging to a session, or because the
        /// control task was behind (the peer retransmits).
        control_dropped,
        /// Stateless cookie replies sent to first resets (UDP server).
        control_cookie_sent,
        /// Handshake packets echoing a wrong or expired cookie (no session was created).
        control_cookie_refused,
    }
);

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) tx: TxCounters,
    pub(crate) rx: RxCounters,
    pub(crate) control: ControlCounters,
}

impl Counters {
    /// Every counter by name, for `vpn-daemon status`.
    pub(crate) fn snapshot(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        self.tx.snapshot_into(&mut out);
        self.rx.snapshot_into(&mut out);
        self.control.snapshot_into(&mut out);
        out
    }
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Adds `amount` to a counter.
pub(crate) fn add(counter: &AtomicU64, amount: u64) {
    counter.fetch_add(amount, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_sit_on_their_own_cache_lines_and_every_counter_is_named() {
        assert_eq!(std::mem::align_of::<TxCounters>(), 64);
        assert_eq!(std::mem::align_of::<RxCounters>(), 64);
        let counters = Counters::default();
        bump(&counters.rx.rx_bad_source);
        add(&counters.tx.tx_bytes, 1400);
        let snapshot = counters.snapshot();
        assert_eq!(snapshot["rx_bad_source"], 1);
        assert_eq!(snapshot["tx_bytes"], 1400);
        assert_eq!(snapshot.len(), 20);
    }
}
