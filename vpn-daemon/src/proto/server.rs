//! The multi-client server's bookkeeping, sans-IO: which address each client gets (pool with
//! stable assignment per common name, or the ccd `ifconfig-push`), which peer id, which client
//! owns a destination address (its own address or an `iroute`), and what it is pushed.
//!
//! The server's runtime owns an [`AddressPool`], [`PeerIds`], a [`ServerPush`] and a
//! [`SessionCookie`] in its control task, uses them when a client authenticates or leaves, and
//! publishes a new [`RouteTable`] to the data-path threads after each change.
use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use ipnet::Ipv4Net;
use sha2::Sha256;

use super::options::PushOptions;
use super::packet::{SessionId, PEER_ID_UNSET, SESSION_ID_LEN};
use super::vocabulary::{IfconfigPool, Topology};

/// What the server applies to one client beyond the server-wide settings: OpenVPN's per-client
/// file in `client-config-dir`, named by the client's common name (`config::ccd` reads it).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClientConfig {
    /// `ifconfig-push LOCAL NETMASK|REMOTE`: the client's fixed address and, by topology, the
    /// subnet mask (`subnet`) or the peer address of its /30 (`net30`).
    pub ifconfig_push: Option<(Ipv4Addr, Ipv4Addr)>,
    /// `iroute NET MASK`: subnets behind this client, routed to it by the server.
    pub iroutes: Vec<Ipv4Net>,
    /// `push "..."`: extra options pushed to this client, verbatim, in file order.
    pub push: Vec<String>,
    /// `push-reset`: the server-wide pushed routes and options are not sent to this client.
    pub push_reset: bool,
    /// `disable`: the client is refused.
    pub disable: bool,
}

/// One client's address: what it is told (`ifconfig` in the push) and where packets for it go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The client's tunnel address; packets to it are routed to the client.
    pub address: Ipv4Addr,
    /// The second `ifconfig` argument: the netmask (`subnet`) or the peer address of the
    /// client's /30 (`net30`).
    pub ifconfig_second: Ipv4Addr,
    /// Whether the address came from the pool (and goes back to it).
    pub pooled: bool,
}

/// Why no address could be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// Every pool address is taken.
    #[error("the address pool is exhausted")]
    PoolExhausted,
    /// The ccd `ifconfig-push` address is held by another client.
    #[error("ifconfig-push address {0} is already in use by another client")]
    AddressInUse(Ipv4Addr),
    /// The ccd `ifconfig-push` does not fit the server's subnet or topology.
    #[error("ifconfig-push {0} {1} does not fit the server subnet {2} ({3})")]
    BadFixedAddress(Ipv4Addr, Ipv4Addr, Ipv4Net, &'static str),
}

/// The address pool of one server.
#[derive(Debug, Clone)]
pub struct AddressPool {
    subnet: Ipv4Net,
    topology: Topology,
    server_address: Ipv4Addr,
    /// Candidate client addresses in pool order (net30: the client host of each /30 block).
    candidates: Vec<Ipv4Addr>,
    in_use: BTreeSet<Ipv4Addr>,
    /// The address each common name had last, so that a reconnecting client gets it again
    /// while nobody else took it (OpenVPN's `ifconfig-pool-persist`, in memory).
    remembered: HashMap<String, Ipv4Addr>,
}

impl AddressPool {
    /// A pool over `range` of `subnet`; the server address is never handed out. net30 hands
    /// out one /30 per client, aligned, the client on the block's second host (ifconfig-pool
    /// in pool.c: `base + 4*i + 2` local, `+1` peer).
    pub fn new(
        subnet: Ipv4Net,
        topology: Topology,
        server_address: Ipv4Addr,
        range: IfconfigPool,
    ) -> Self {
        let start = u32::from(range.start);
        let end = u32::from(range.end);
        let candidates = match topology {
            Topology::Subnet => (start..=end)
                .map(Ipv4Addr::from)
                .filter(|&address| {
                    address != server_address
                        && address != subnet.network()
                        && address != subnet.broadcast()
                })
                .collect(),
            Topology::Net30 => {
                // First /30 block that starts at or after `start`.
                let first_block = start.div_ceil(4).saturating_mul(4);
                (first_block..=end)
                    .step_by(4)
                    .filter(|block| block.saturating_add(3) <= end)
                    .map(|block| Ipv4Addr::from(block + 2))
                    .filter(|&address| {
                        let block = u32::from(address) & !3;
                        let server = u32::from(server_address);
                        !(block..=block + 3).contains(&server) && subnet.contains(&address)
                    })
                    .collect()
            }
        };
        AddressPool {
            subnet,
            topology,
            server_address,
            candidates,
            in_use: BTreeSet::new(),
            remembered: HashMap::new(),
        }
    }

    /// How many pool addresses there are in all.
    pub fn capacity(&self) -> usize {
        self.candidates.len()
    }

    /// Addresses handed out now.
    pub fn in_use(&self) -> usize {
        self.in_use.len()
    }

    /// An address for `common_name`: the ccd `ifconfig-push` if given, else the address it
    /// had before if free, else the first free pool address.
    pub fn lease(
        &mut self,
        common_name: &str,
        fixed: Option<(Ipv4Addr, Ipv4Addr)>,
    ) -> Result<Lease, LeaseError> {
        if let Some((local, second)) = fixed {
            let lease = self.check_fixed(local, second)?;
            if self.in_use.contains(&local) {
                return Err(LeaseError::AddressInUse(local));
            }
            self.in_use.insert(local);
            return Ok(lease);
        }
        let remembered =
            self.remembered.get(common_name).copied().filter(|address| {
                !self.in_use.contains(address) && self.candidates.contains(address)
            });
        let address = match remembered {
            Some(address) => address,
            None => self
                .candidates
                .iter()
                .copied()
                // Prefer addresses nobody remembers, so that reconnecting clients keep theirs.
                .find(|address| {
                    !self.in_use.contains(address)
                        && !self.remembered.values().any(|held| held == address)
                })
                .or_else(|| {
                    self.candidates
                        .iter()
                        .copied()
                        .find(|address| !self.in_use.contains(address))
                })
                .ok_or(LeaseError::PoolExhausted)?,
        };
        self.in_use.insert(address);
        self.remembered.insert(common_name.to_owned(), address);
        Ok(Lease {
            address,
            ifconfig_second: self.second_for(address),
            pooled: true,
        })
    }

    /// Gives an address back.
    pub fn release(&mut self, address: Ipv4Addr) {
        self.in_use.remove(&address);
    }

    fn second_for(&self, address: Ipv4Addr) -> Ipv4Addr {
        match self.topology {
            Topology::Subnet => self.subnet.netmask(),
            Topology::Net30 => Ipv4Addr::from(u32::from(address).saturating_sub(1)),
        }
    }

    fn check_fixed(&self, local: Ipv4Addr, second: Ipv4Addr) -> Result<Lease, LeaseError> {
        let bad = |why| LeaseError::BadFixedAddress(local, second, self.subnet, why);
        match self.topology {
            Topology::Subnet => {
                if !self.subnet.contains(&local)
                    || local == self.subnet.network()
                    || local == self.subnet.broadcast()
                {
                    return Err(bad("the address must be a host of the server subnet"));
                }
                if local == self.server_address {
                    return Err(bad("that is the server's own address"));
                }
                if second != self.subnet.netmask() {
                    return Err(bad(
                        "with topology subnet the second address is the subnet's netmask",
                    ));
                }
            }
            Topology::Net30 => {
                let block = u32::from(local) & !3;
                let host = u32::from(local) & 3;
                if !(host == 1 || host == 2) || (u32::from(second) & !3) != block || second == local
                {
                    return Err(bad(
                        "with topology net30 both addresses must be the two hosts of one /30",
                    ));
                }
                let server = u32::from(self.server_address);
                if (block..=block + 3).contains(&server) {
                    return Err(bad("that /30 holds the server's own address"));
                }
            }
        }
        Ok(Lease {
            address: local,
            ifconfig_second: second,
            pooled: false,
        })
    }
}

/// Peer ids for DATA_V2, smallest free first (multi.c hands out the lowest free slot too).
#[derive(Debug, Clone, Default)]
pub struct PeerIds {
    in_use: BTreeSet<u32>,
}

impl PeerIds {
    /// The smallest free id, or `None` when all 2^24-1 are taken.
    pub fn allocate(&mut self) -> Option<u32> {
        let mut candidate = 0u32;
        for &used in &self.in_use {
            if used != candidate {
                break;
            }
            candidate += 1;
        }
        if candidate >= PEER_ID_UNSET {
            return None;
        }
        self.in_use.insert(candidate);
        Some(candidate)
    }

    /// Frees `peer_id`.
    pub fn release(&mut self, peer_id: u32) {
        self.in_use.remove(&peer_id);
    }
}

/// Which client owns a destination: host routes for client addresses, prefixes for iroutes,
/// longest prefix first. Immutable once built; the control task builds a new one per change
/// and the data path reads it without locks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    hosts: HashMap<Ipv4Addr, u32>,
    /// Sorted longest prefix first.
    prefixes: Vec<(Ipv4Net, u32)>,
}

impl RouteTable {
    /// A table from `(address, iroutes, owner)` per client. Later clients win a contested
    /// iroute, as in OpenVPN (the most recently learned route).
    pub fn build<'a>(clients: impl IntoIterator<Item = (Ipv4Addr, &'a [Ipv4Net], u32)>) -> Self {
        let mut table = RouteTable::default();
        for (address, iroutes, owner) in clients {
            table.hosts.insert(address, owner);
            for iroute in iroutes {
                if iroute.prefix_len() == 32 {
                    table.hosts.insert(iroute.network(), owner);
                } else {
                    table.prefixes.retain(|(prefix, _)| prefix != iroute);
                    table.prefixes.push((*iroute, owner));
                }
            }
        }
        table
            .prefixes
            .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.prefix_len()));
        table
    }

    /// The owner of `destination`, if a client has it.
    pub fn lookup(&self, destination: Ipv4Addr) -> Option<u32> {
        if let Some(&owner) = self.hosts.get(&destination) {
            return Some(owner);
        }
        self.prefixes
            .iter()
            .find(|(prefix, _)| prefix.contains(&destination))
            .map(|&(_, owner)| owner)
    }

    /// Whether `owner` may send from `source` (its address or one of its iroutes): OpenVPN
    /// drops packets whose source a client does not own (multi.c, "bad source address").
    pub fn source_allowed(&self, owner: u32, source: Ipv4Addr) -> bool {
        self.lookup(source) == Some(owner)
    }

    /// Number of clients' host routes and prefixes, for status.
    pub fn len(&self) -> usize {
        self.hosts.len() + self.prefixes.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The server-wide part of every push, from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerPush {
    /// The server subnet.
    pub subnet: Ipv4Net,
    /// `subnet` or `net30`.
    pub topology: Topology,
    /// The server's tunnel address (the route gateway with `subnet`).
    pub server_address: Ipv4Addr,
    /// `push_routes`.
    pub routes: Vec<Ipv4Net>,
    /// `push`, verbatim.
    pub options: Vec<String>,
    /// `client_to_client`: net30 clients get a route to the whole subnet.
    pub client_to_client: bool,
    /// The compression option the server pushes, if any.
    pub compression: Option<String>,
}

/// What one client is pushed (before the per-client fields the session adds): topology,
/// `ifconfig`, routes and options as OpenVPN's `server` helper and push.c build them, with the
/// ccd's `push-reset` (drops the server-wide routes and options, keeps addressing) and `push`.
pub fn client_push(server: &ServerPush, lease: &Lease, ccd: Option<&ClientConfig>) -> PushOptions {
    let mut push = PushOptions {
        topology: Some(server.topology),
        ifconfig: Some((lease.address, lease.ifconfig_second)),
        compression: server.compression.clone(),
        ..PushOptions::default()
    };
    match server.topology {
        Topology::Subnet => push.route_gateway = Some(server.server_address),
        Topology::Net30 => {
            // helper.c: the whole subnet with client-to-client, else the server's address.
            let route = if server.client_to_client {
                server.subnet
            } else {
                Ipv4Net::new(server.server_address, 32).unwrap_or(server.subnet)
            };
            push.routes.push((route, None));
        }
    }
    let reset = ccd.is_some_and(|ccd| ccd.push_reset);
    if !reset {
        push.routes
            .extend(server.routes.iter().map(|route| (*route, None)));
        push.ignored.extend(server.options.iter().cloned());
    }
    if let Some(ccd) = ccd {
        push.ignored.extend(ccd.push.iter().cloned());
    }
    push
}

// ---------------------------------------------------------------------------------------------
// Stateless first packet (HMAC cookie session id)

/// OpenVPN 2.6's stateless answer to a client's first `HARD_RESET_CLIENT_V2`: the server's
/// session id is an HMAC of a time slot, the client's address and the client's session id, so
/// the server can answer without keeping state and create the session only when the client's
/// next packet echoes that id in its ACK (OpenVPN ssl_pkt.c `calculate_session_id_hmac`,
/// `check_session_id_hmac`). Only this server ever checks the cookie, so its exact input layout
/// is ours to choose; the window rules follow OpenVPN.
pub struct SessionCookie {
    /// The caller's 32-byte key zero-padded to SHA-256's block, as HMAC pads it anyway.
    key: [u8; 64],
    slot_secs: u64,
}

/// Time slots before (and one after) the current one whose cookies are still accepted, as
/// OpenVPN's `check_session_id_hmac` (offsets -2..=1).
const COOKIE_SLOTS: std::ops::RangeInclusive<i64> = -2..=1;

impl SessionCookie {
    /// A cookie source with the caller's random `key` (fresh per process: cookies never
    /// outlive a restart) and OpenVPN's `hand-window` in seconds (default 60); a slot lasts
    /// half the window, rounded up.
    pub fn new(key: [u8; 32], hand_window_secs: u32) -> Self {
        let mut padded = [0u8; 64];
        padded[..32].copy_from_slice(&key);
        SessionCookie {
            key: padded,
            slot_secs: u64::from(hand_window_secs).div_ceil(2).max(1),
        }
    }

    /// The server session id to answer `client_session` from `client` with at `now_unix`.
    pub fn server_session_id(
        &self,
        client_session: SessionId,
        client: std::net::SocketAddr,
        now_unix: u64,
    ) -> SessionId {
        let tag = self.tag(self.slot(now_unix), client_session, client);
        let mut id = [0u8; SESSION_ID_LEN];
        id.copy_from_slice(tag.get(..SESSION_ID_LEN).unwrap_or(&[0; SESSION_ID_LEN]));
        SessionId(id)
    }

    /// Whether `echoed` (the server session id the client's ACK names) is a cookie this server
    /// handed to `client_session` at `client` recently enough; compared in constant time.
    pub fn verify(
        &self,
        echoed: SessionId,
        client_session: SessionId,
        client: std::net::SocketAddr,
        now_unix: u64,
    ) -> bool {
        let current = self.slot(now_unix) as i64;
        COOKIE_SLOTS
            .filter_map(|offset| u64::try_from(current.checked_add(offset)?).ok())
            .map(|slot| self.mac(slot, client_session, client))
            .fold(false, |found, mac| {
                found | mac.verify_truncated_left(echoed.as_bytes()).is_ok()
            })
    }

    fn slot(&self, now_unix: u64) -> u64 {
        now_unix / self.slot_secs
    }

    fn mac(
        &self,
        slot: u64,
        client_session: SessionId,
        client: std::net::SocketAddr,
    ) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new((&self.key).into());
        mac.update(&slot.to_be_bytes());
        match client {
            std::net::SocketAddr::V4(address) => {
                mac.update(&[4]);
                mac.update(&address.ip().octets());
            }
            std::net::SocketAddr::V6(address) => {
                mac.update(&[6]);
                mac.update(&address.ip().octets());
            }
        }
        mac.update(&client.port().to_be_bytes());
        mac.update(client_session.as_bytes());
        mac
    }

    fn tag(&self, slot: u64, client_session: SessionId, client: std::net::SocketAddr) -> Vec<u8> {
        self.mac(slot, client_session, client)
            .finalize()
            .into_bytes()
            .to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    fn subnet_pool() -> AddressPool {
        AddressPool::new(
            net("10.8.0.0/24"),
            Topology::Subnet,
            ip("10.8.0.1"),
            IfconfigPool {
                start: ip("10.8.0.2"),
                end: ip("10.8.0.253"),
            },
        )
    }

    #[test]
    fn subnet_pool_hands_out_in_order_and_keeps_addresses_per_name() {
        let mut pool = subnet_pool();
        assert_eq!(pool.capacity(), 252);
        let alice = pool.lease("alice", None).unwrap();
        assert_eq!(
            alice,
            Lease {
                address: ip("10.8.0.2"),
                ifconfig_second: ip("255.255.255.0"),
                pooled: true
            }
        );
        let bob = pool.lease("bob", None).unwrap();
        assert_eq!(bob.address, ip("10.8.0.3"));
        // Alice leaves; carol does not take her address while an unremembered one is free.
        pool.release(alice.address);
        assert_eq!(pool.lease("carol", None).unwrap().address, ip("10.8.0.4"));
        assert_eq!(pool.lease("alice", None).unwrap().address, ip("10.8.0.2"));
        assert_eq!(pool.in_use(), 3);
    }

    #[test]
    fn pool_skips_the_server_address_and_reports_exhaustion() {
        let mut pool = AddressPool::new(
            net("10.8.0.0/29"),
            Topology::Subnet,
            ip("10.8.0.3"),
            IfconfigPool {
                start: ip("10.8.0.2"),
                end: ip("10.8.0.4"),
            },
        );
        assert_eq!(pool.capacity(), 2);
        assert_eq!(pool.lease("a", None).unwrap().address, ip("10.8.0.2"));
        assert_eq!(pool.lease("b", None).unwrap().address, ip("10.8.0.4"));
        assert_eq!(pool.lease("c", None), Err(LeaseError::PoolExhausted));
        pool.release(ip("10.8.0.2"));
        // All free addresses are remembered by someone: the pool still hands them out.
        assert_eq!(pool.lease("c", None).unwrap().address, ip("10.8.0.2"));
    }

    #[test]
    fn net30_pool_gives_one_aligned_block_per_client() {
        // The server helper's default: .4 .. broadcast-4, server .1 (peer .2).
        let mut pool = AddressPool::new(
            net("10.8.0.0/24"),
            Topology::Net30,
            ip("10.8.0.1"),
            IfconfigPool {
                start: ip("10.8.0.4"),
                end: ip("10.8.0.251"),
            },
        );
        assert_eq!(pool.capacity(), 62);
        let first = pool.lease("a", None).unwrap();
        // OpenVPN's first net30 client: ifconfig 10.8.0.6 10.8.0.5.
        assert_eq!(
            (first.address, first.ifconfig_second),
            (ip("10.8.0.6"), ip("10.8.0.5"))
        );
        assert_eq!(pool.lease("b", None).unwrap().address, ip("10.8.0.10"));
    }

    #[test]
    fn fixed_addresses_are_checked_against_subnet_and_topology() {
        let mut pool = subnet_pool();
        let fixed = pool
            .lease("alice", Some((ip("10.8.0.50"), ip("255.255.255.0"))))
            .unwrap();
        assert!(!fixed.pooled);
        assert_eq!(
            pool.lease("alice2", Some((ip("10.8.0.50"), ip("255.255.255.0")))),
            Err(LeaseError::AddressInUse(ip("10.8.0.50")))
        );
        for (local, second) in [
            ("10.9.0.5", "255.255.255.0"),
            ("10.8.0.1", "255.255.255.0"),
            ("10.8.0.5", "255.255.0.0"),
            ("10.8.0.255", "255.255.255.0"),
        ] {
            assert!(matches!(
                pool.lease("x", Some((ip(local), ip(second)))),
                Err(LeaseError::BadFixedAddress(..))
            ));
        }
        let mut net30 = AddressPool::new(
            net("10.8.0.0/24"),
            Topology::Net30,
            ip("10.8.0.1"),
            IfconfigPool {
                start: ip("10.8.0.4"),
                end: ip("10.8.0.251"),
            },
        );
        assert!(net30
            .lease("a", Some((ip("10.8.0.9"), ip("10.8.0.10"))))
            .is_ok());
        assert!(net30
            .lease("b", Some((ip("10.8.0.13"), ip("10.8.0.17"))))
            .is_err());
        assert!(net30
            .lease("c", Some((ip("10.8.0.2"), ip("10.8.0.1"))))
            .is_err());
    }

    #[test]
    fn peer_ids_reuse_the_smallest_free() {
        let mut ids = PeerIds::default();
        assert_eq!(ids.allocate(), Some(0));
        assert_eq!(ids.allocate(), Some(1));
        assert_eq!(ids.allocate(), Some(2));
        ids.release(1);
        assert_eq!(ids.allocate(), Some(1));
        assert_eq!(ids.allocate(), Some(3));
    }

    #[test]
    fn route_table_prefers_hosts_then_longest_prefix() {
        let alice_routes = [net("192.168.0.0/16"), net("10.50.0.7/32")];
        let bob_routes = [net("192.168.5.0/24")];
        let table = RouteTable::build([
            (ip("10.8.0.2"), &alice_routes[..], 1),
            (ip("10.8.0.3"), &bob_routes[..], 2),
        ]);
        assert_eq!(table.lookup(ip("10.8.0.2")), Some(1));
        assert_eq!(table.lookup(ip("10.8.0.3")), Some(2));
        assert_eq!(table.lookup(ip("192.168.5.9")), Some(2));
        assert_eq!(table.lookup(ip("192.168.6.9")), Some(1));
        assert_eq!(table.lookup(ip("10.50.0.7")), Some(1));
        assert_eq!(table.lookup(ip("10.8.0.4")), None);
        assert!(table.source_allowed(1, ip("192.168.7.1")));
        assert!(!table.source_allowed(1, ip("10.8.0.3")));
        assert!(!table.source_allowed(2, ip("8.8.8.8")));
    }

    fn server_push(topology: Topology, client_to_client: bool) -> ServerPush {
        ServerPush {
            subnet: net("10.8.0.0/24"),
            topology,
            server_address: ip("10.8.0.1"),
            routes: vec![net("10.1.0.0/16")],
            options: vec!["dhcp-option DNS 10.8.0.1".into()],
            client_to_client,
            compression: None,
        }
    }

    #[test]
    fn push_reply_for_subnet_with_ccd() {
        let lease = Lease {
            address: ip("10.8.0.50"),
            ifconfig_second: ip("255.255.255.0"),
            pooled: false,
        };
        let push = client_push(&server_push(Topology::Subnet, false), &lease, None);
        assert_eq!(
            push.to_reply(),
            "PUSH_REPLY,route 10.1.0.0 255.255.0.0,dhcp-option DNS 10.8.0.1,route-gateway 10.8.0.1,topology subnet,ifconfig 10.8.0.50 255.255.255.0"
        );
        let ccd = ClientConfig {
            push_reset: true,
            push: vec!["route 172.16.0.0 255.240.0.0".into()],
            ..ClientConfig::default()
        };
        let push = client_push(&server_push(Topology::Subnet, false), &lease, Some(&ccd));
        assert_eq!(
            push.to_reply(),
            "PUSH_REPLY,route 172.16.0.0 255.240.0.0,route-gateway 10.8.0.1,topology subnet,ifconfig 10.8.0.50 255.255.255.0"
        );
    }

    #[test]
    fn push_reply_for_net30_routes_the_server_or_the_subnet() {
        let lease = Lease {
            address: ip("10.8.0.6"),
            ifconfig_second: ip("10.8.0.5"),
            pooled: true,
        };
        let push = client_push(&server_push(Topology::Net30, false), &lease, None);
        assert_eq!(
            push.to_reply(),
            "PUSH_REPLY,route 10.8.0.1 255.255.255.255,route 10.1.0.0 255.255.0.0,dhcp-option DNS 10.8.0.1,topology net30,ifconfig 10.8.0.6 10.8.0.5"
        );
        let push = client_push(&server_push(Topology::Net30, true), &lease, None);
        assert!(push
            .to_reply()
            .starts_with("PUSH_REPLY,route 10.8.0.0 255.255.255.0,"));
    }

    fn cookie_inputs() -> (SessionCookie, SessionId, std::net::SocketAddr) {
        (
            SessionCookie::new([7; 32], 60),
            SessionId([1, 2, 3, 4, 5, 6, 7, 8]),
            "192.0.2.10:40000".parse().unwrap(),
        )
    }

    #[test]
    fn cookie_is_an_hmac_sha256_prefix_of_slot_address_and_client_session() {
        let (cookie, client_session, client) = cookie_inputs();
        // Known answer computed independently: HMAC-SHA256(key 32x07, slot 1000/30 = 33 as u64
        // BE || 0x04 || 192.0.2.10 || port 40000 BE || 0102030405060708), first 8 bytes.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&[7u8; 32]).unwrap();
        let mut input = 33u64.to_be_bytes().to_vec();
        input.extend_from_slice(&[4, 192, 0, 2, 10]);
        input.extend_from_slice(&40000u16.to_be_bytes());
        input.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        mac.update(&input);
        let expected = mac.finalize().into_bytes();
        let id = cookie.server_session_id(client_session, client, 1000);
        assert_eq!(&id.0[..], &expected[..8]);
        assert_ne!(id, SessionId([0; 8]));
    }

    #[test]
    fn cookie_is_accepted_for_two_slots_back_and_one_ahead_only() {
        let (cookie, client_session, client) = cookie_inputs();
        let issued_at = 30 * 100; // start of slot 100
        let id = cookie.server_session_id(client_session, client, issued_at);
        // Slots 99..=102 as "now" accept it (offsets -2..=1 around now).
        for now in [
            issued_at - 1,
            issued_at,
            issued_at + 30,
            issued_at + 60 + 29,
        ] {
            assert!(cookie.verify(id, client_session, client, now), "now {now}");
        }
        assert!(!cookie.verify(id, client_session, client, issued_at + 90));
        assert!(!cookie.verify(id, client_session, client, issued_at - 31));
    }

    #[test]
    fn cookie_is_bound_to_address_port_client_session_and_key() {
        let (cookie, client_session, client) = cookie_inputs();
        let now = 5000;
        let id = cookie.server_session_id(client_session, client, now);
        let other_port: std::net::SocketAddr = "192.0.2.10:40001".parse().unwrap();
        let other_ip: std::net::SocketAddr = "192.0.2.11:40000".parse().unwrap();
        let v6: std::net::SocketAddr = "[2001:db8::1]:40000".parse().unwrap();
        assert!(cookie.verify(id, client_session, client, now));
        assert!(!cookie.verify(id, client_session, other_port, now));
        assert!(!cookie.verify(id, client_session, other_ip, now));
        assert!(!cookie.verify(id, client_session, v6, now));
        assert!(!cookie.verify(id, SessionId([1, 2, 3, 4, 5, 6, 7, 9]), client, now));
        let other_key = SessionCookie::new([8; 32], 60);
        assert!(!other_key.verify(id, client_session, client, now));
        let mut flipped = id;
        flipped.0[7] ^= 1;
        assert!(!cookie.verify(flipped, client_session, client, now));
    }

    #[test]
    fn cookie_slot_is_half_the_hand_window_rounded_up() {
        // hand-window 5 -> slots of 3 s: a cookie from t=0 (slot 0) holds until slot 2 ends.
        let cookie = SessionCookie::new([1; 32], 5);
        let (_, client_session, client) = cookie_inputs();
        let id = cookie.server_session_id(client_session, client, 0);
        assert!(cookie.verify(id, client_session, client, 8));
        assert!(!cookie.verify(id, client_session, client, 9));
        // A zero window still gives 1 s slots, no division by zero.
        let zero = SessionCookie::new([1; 32], 0);
        let id = zero.server_session_id(client_session, client, 10);
        assert!(zero.verify(id, client_session, client, 12));
    }
}
