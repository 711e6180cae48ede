//! Every map of the appliance's eBPF programs. Names and value types come from `vpn-common`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use vpn_common::{
    leak::{LeakCounter, MAX_PROTECTED},
    steer::{LinkGroup, SteerCounter, MAX_GROUPS, MAX_LINK_COUNTERS, MAX_STEER_ROUTES},
    tun::{TunCounter, TunPrefixKey, MAX_TUN_PREFIXES},
    wan::{
        AdmissionConfig, HandshakeBucket, PeerKey, TunnelPortKey, WanCounter, MAX_PEERS,
        MAX_PENDING, MAX_TUNNEL_PORTS,
    },
    PrefixKey,
};

// ---- WAN XDP admission ----

/// Ports our tunnels listen on (filled by the daemon from its config), value = port flags.
#[map]
pub static TUNNEL_PORTS: HashMap<TunnelPortKey, u8> =
    HashMap::with_max_entries(MAX_TUNNEL_PORTS, 0);

/// Sources always admitted: configured remotes and connected peers.
#[map]
pub static WAN_PEERS: HashMap<PeerKey, u8> = HashMap::with_max_entries(MAX_PEERS, 0);

/// Sources in mid-handshake -> expiry (ns). LRU so a flood of admitted handshakes cannot fill it.
#[map]
pub static WAN_PENDING: LruHashMap<PeerKey, u64> = LruHashMap::with_max_entries(MAX_PENDING, 0);

#[map]
pub static ADMISSION_CONFIG: Array<AdmissionConfig> = Array::with_max_entries(1, 0);

/// Per-CPU: no lock and no cross-CPU cache traffic; the daemon divides the configured rate.
#[map]
pub static HANDSHAKE_BUCKET: PerCpuArray<HandshakeBucket> = PerCpuArray::with_max_entries(1, 0);

/// One `u64` per [`WanCounter`], per CPU; the daemon sums them.
#[map]
pub static WAN_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(WanCounter::COUNT, 0);

// ---- tun ingress source policing ----

#[map]
pub static TUN_ALLOWED: LpmTrie<TunPrefixKey, u8> = LpmTrie::with_max_entries(MAX_TUN_PREFIXES, 0);

#[map]
pub static TUN_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(TunCounter::COUNT, 0);

// ---- LAN ingress steering ----

#[map]
pub static STEER_ROUTES: LpmTrie<PrefixKey, u32> = LpmTrie::with_max_entries(MAX_STEER_ROUTES, 0);

#[map]
pub static LINK_GROUPS: Array<LinkGroup> = Array::with_max_entries(MAX_GROUPS, 0);

#[map]
pub static LINK_PACKETS: PerCpuHashMap<u32, u64> =
    PerCpuHashMap::with_max_entries(MAX_LINK_COUNTERS, 0);

#[map]
pub static STEER_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SteerCounter::COUNT, 0);

// ---- WAN egress leak guard ----

#[map]
pub static PROTECTED: LpmTrie<PrefixKey, u8> = LpmTrie::with_max_entries(MAX_PROTECTED, 0);

#[map]
pub static LEAK_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(LeakCounter::COUNT, 0);

/// Adds one to slot `index` of a per-CPU counter array.
#[inline(always)]
pub fn count(counters: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = counters.get_ptr_mut(index) {
        // SAFETY: the per-CPU slot belongs to this CPU for the duration of the program run.
        unsafe { *slot += 1 };
    }
}
