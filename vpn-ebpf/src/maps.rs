//! Every map of the appliance's eBPF programs. Names and value types come from `vpn-common`.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use vpn_common::wan::{TunnelPortKey, WanCounter, MAX_TUNNEL_PORTS};

/// Ports our tunnels listen on (filled by the daemon from its config).
#[map]
pub static TUNNEL_PORTS: HashMap<TunnelPortKey, u8> =
    HashMap::with_max_entries(MAX_TUNNEL_PORTS, 0);

/// One `u64` per [`WanCounter`], per CPU; the daemon sums them.
#[map]
pub static WAN_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(WanCounter::COUNT, 0);

#[inline(always)]
pub fn count_wan(counter: WanCounter) {
    if let Some(slot) = WAN_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the per-CPU slot belongs to this CPU for the duration of the program run.
        unsafe { *slot += 1 };
    }
}
