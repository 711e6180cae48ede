//! Per-flow steering across parallel links (TC ingress on the LAN NIC).
//!
//! Destination prefix -> link group ([`STEER_ROUTES_MAP`], LPM trie); per group the live links
//! ([`LINK_GROUPS_MAP`]); per packet the link with the highest rendezvous score for the flow's
//! 5-tuple. A link of weight `w` takes part as `w` virtual nodes, so its share of flows is
//! `w / total weight`, and removing a link moves only the flows whose best node was one of its
//! own: every other flow keeps its maximum. The daemon rewrites a group's entry (one atomic map
//! update) the moment a link goes up or down.
//!
//! The hash functions live here so that the daemon and tests can predict the eBPF choice.

/// Program name of the TC ingress entry point on the LAN NIC.
pub const TC_STEER_PROGRAM: &str = "tc_lan_ingress";
/// LPM trie `Key<PrefixKey>` -> `u32` link group id.
pub const STEER_ROUTES_MAP: &str = "STEER_ROUTES";
/// Array indexed by group id of [`LinkGroup`].
pub const LINK_GROUPS_MAP: &str = "LINK_GROUPS";
/// Per-CPU hash map tun ifindex (`u32`) -> `u64` packets redirected to that link.
pub const LINK_PACKETS_MAP: &str = "LINK_PACKETS";
/// Per-CPU array of `u64` packet counters indexed by [`SteerCounter`].
pub const STEER_COUNTERS_MAP: &str = "STEER_COUNTERS";
/// Upper bound of steering prefixes.
pub const MAX_STEER_ROUTES: u32 = 4096;
/// Number of link groups (group ids are `0..MAX_GROUPS`).
pub const MAX_GROUPS: u32 = 64;
/// Links per group.
pub const MAX_LINKS: usize = 8;
/// Largest link weight (the virtual-node loop is bounded by it).
pub const MAX_WEIGHT: u32 = 16;
/// Size of [`LINK_PACKETS_MAP`].
pub const MAX_LINK_COUNTERS: u32 = MAX_GROUPS * MAX_LINKS as u32;

/// One live link of a group.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Link {
    /// The tun device to redirect to.
    pub ifindex: u32,
    /// `1..=MAX_WEIGHT`.
    pub weight: u32,
    /// Stable identity of the link (from its tunnel name), so a tun re-created with a new ifindex
    /// keeps its flows.
    pub id: u32,
    /// The tun's MTU: a bigger packet goes to the stack instead (fragmentation or ICMP
    /// "fragmentation needed" keep path MTU discovery working). 0 = unchecked.
    pub mtu: u32,
}
const _: () = assert!(core::mem::size_of::<Link>() == 16);

/// A group's live links; `links[..count]` are valid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LinkGroup {
    pub count: u32,
    pub _pad: u32,
    pub links: [Link; MAX_LINKS],
}
const _: () = assert!(core::mem::size_of::<LinkGroup>() == 8 + 16 * MAX_LINKS);

/// The fields of a flow that select its link. Fragments hash with ports 0 (only the first
/// fragment carries them) so every fragment of a datagram takes the same link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source and destination as big-endian words (IPv4 mapped into IPv6).
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
}

/// splitmix64's finaliser: a full-avalanche 64-bit mix with no tables and no division.
#[inline(always)]
pub const fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The flow's hash, computed the same way in eBPF and userspace.
#[inline(always)]
pub fn flow_hash(flow: &FlowKey) -> u64 {
    let mut hash = mix64(0x9e37_79b9_7f4a_7c15 ^ flow.protocol as u64);
    hash = mix64(hash ^ ((flow.src[0] as u64) << 32 | flow.src[1] as u64));
    hash = mix64(hash ^ ((flow.src[2] as u64) << 32 | flow.src[3] as u64));
    hash = mix64(hash ^ ((flow.dst[0] as u64) << 32 | flow.dst[1] as u64));
    hash = mix64(hash ^ ((flow.dst[2] as u64) << 32 | flow.dst[3] as u64));
    mix64(hash ^ ((flow.src_port as u64) << 16 | flow.dst_port as u64))
}

/// Rendezvous score of virtual node `replica` of link `link_id` for a flow.
#[inline(always)]
pub const fn node_score(flow_hash: u64, link_id: u32, replica: u32) -> u64 {
    mix64(flow_hash ^ ((link_id as u64) << 32 | replica as u64).wrapping_mul(0xff51_afd7_ed55_8ccd))
}

/// The slot in `group.links` with the highest score over all its virtual nodes, or `None` for
/// an empty group. Ties (astronomically rare) go to the lower slot.
#[inline(always)]
pub fn choose_link(group: &LinkGroup, flow_hash: u64) -> Option<usize> {
    let mut best: Option<usize> = None;
    let mut best_score = 0u64;
    let mut slot = 0;
    while slot < MAX_LINKS {
        if slot as u32 >= group.count {
            break;
        }
        let link = &group.links[slot];
        let mut replica = 0;
        while replica < MAX_WEIGHT {
            if replica >= link.weight {
                break;
            }
            let score = node_score(flow_hash, link.id, replica);
            if best.is_none() || score > best_score {
                best = Some(slot);
                best_score = score;
            }
            replica += 1;
        }
        slot += 1;
    }
    best
}

/// What the steering program saw. Every packet increments exactly one counter.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SteerCounter {
    /// Redirected to a live link.
    Redirected = 0,
    /// Destination not steered (no prefix matched): passed to the stack.
    NotSteered = 1,
    /// Destination steered but its group has no live link: passed to the stack (the leak guard
    /// stops it at the WAN if the destination is protected).
    NoLiveLink = 2,
    /// Not IP, or an IP header cut short: passed.
    Unparsed = 3,
    /// Bigger than the chosen link's MTU: passed to the stack, which fragments it or answers
    /// "fragmentation needed".
    TooBig = 4,
    /// TTL / hop limit 1 (or the IP header not right after an Ethernet header): passed to the
    /// stack, which answers "time exceeded" like any router.
    ToStack = 5,
}

impl SteerCounter {
    pub const COUNT: u32 = 6;
    pub const ALL: [SteerCounter; Self::COUNT as usize] = [
        Self::Redirected,
        Self::NotSteered,
        Self::NoLiveLink,
        Self::Unparsed,
        Self::TooBig,
        Self::ToStack,
    ];

    /// Stable name used in `vpn-daemon status` and its JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Redirected => "redirected",
            Self::NotSteered => "not_steered",
            Self::NoLiveLink => "no_live_link",
            Self::Unparsed => "unparsed",
            Self::TooBig => "too_big_to_stack",
            Self::ToStack => "ttl_to_stack",
        }
    }
}

/// A stable 32-bit link id from a tunnel name (FNV-1a).
pub fn link_id(name: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (both): #[repr(C)], integer fields with explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for super::Link {}
    unsafe impl aya::Pod for super::LinkGroup {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(links: &[(u32, u32)]) -> LinkGroup {
        let mut group = LinkGroup {
            count: links.len() as u32,
            ..Default::default()
        };
        for (slot, &(id, weight)) in links.iter().enumerate() {
            group.links[slot] = Link {
                ifindex: 100 + id,
                weight,
                id,
                mtu: 0,
            };
        }
        group
    }

    fn flow(n: u32) -> u64 {
        flow_hash(&FlowKey {
            src: [0, 0, 0xffff, 0x0a01_0000 | n],
            dst: [0, 0, 0xffff, 0x0a02_0001],
            src_port: (n % 60000) as u16,
            dst_port: 5201,
            protocol: 17,
        })
    }

    #[test]
    fn shares_follow_weights() {
        let group = group(&[(11, 1), (22, 1), (33, 2), (44, 4)]);
        let mut counts = [0u32; 4];
        for n in 0..80_000 {
            counts[choose_link(&group, flow(n)).unwrap()] += 1;
        }
        // Expected 10k, 10k, 20k, 40k; allow 3% of the total either way.
        for (got, want) in counts.iter().zip([10_000, 10_000, 20_000, 40_000]) {
            assert!(got.abs_diff(want) < 2_400, "{counts:?}");
        }
    }

    #[test]
    fn removing_a_link_moves_only_its_flows() {
        let all = group(&[(11, 1), (22, 2), (33, 1), (44, 3)]);
        let without_33 = group(&[(11, 1), (22, 2), (44, 3)]);
        let mut moved = 0;
        for n in 0..20_000 {
            let before = all.links[choose_link(&all, flow(n)).unwrap()].id;
            let after = without_33.links[choose_link(&without_33, flow(n)).unwrap()].id;
            if before != 33 {
                assert_eq!(before, after, "flow {n} moved though its link stayed");
            } else {
                moved += 1;
            }
        }
        assert!(moved > 2_000, "link 33 had about 1/7 of the flows: {moved}");
    }

    #[test]
    fn empty_group_has_no_link_and_ids_are_stable() {
        assert_eq!(choose_link(&LinkGroup::default(), 42), None);
        // FNV-1a("a") known answer.
        assert_eq!(link_id("a"), 0xe40c_292c);
        assert_eq!(link_id(""), 0x811c_9dc5);
    }
}
