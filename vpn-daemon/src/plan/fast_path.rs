//! What the eBPF maps should hold, computed from the config and the node state. Pure: the
//! daemon computes a [`FastPathPlan`] whenever the node state changes (and on a slow fallback
//! tick) and `WanFilter::apply` makes the kernel match it, removing what is stale and adding
//! what is missing (level-triggered, like the route reconciler).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use vpn_common::{
    steer::link_id,
    wan::{
        AdmissionConfig, TunnelPortKey, IPPROTO_TCP, IPPROTO_UDP, PORT_ACCEPTS_NEW_PEERS,
        PORT_LISTENING,
    },
};

use crate::config::{Addressing, Config, Role, Tunnel};
use crate::proto::vocabulary::Transport;
use crate::state::{LinkPhase, NodeState, TunnelState};

/// One link of a group, as the plan wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedLink {
    /// The tun device (resolved to an ifindex when applied).
    pub device: String,
    pub weight: u32,
    /// Stable rendezvous identity, from the tunnel name.
    pub id: u32,
    /// The tunnel MTU: bigger packets are left to the stack.
    pub mtu: u32,
}

/// Everything the eBPF maps should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FastPathPlan {
    /// Our listening tunnel ports and their flags (`PORT_*`).
    pub tunnel_ports: BTreeMap<TunnelPortKey, u8>,
    /// Outer sources always admitted at XDP (and exempt from the leak guard).
    pub peers: BTreeSet<IpAddr>,
    /// Handshake admission parameters, per CPU.
    pub admission: AdmissionConfig,
    /// Destinations the leak guard drops on WAN egress.
    pub protected: BTreeSet<IpNet>,
    /// tun device -> inner source prefixes it may send from (every running tunnel is policed).
    pub tun_sources: BTreeMap<String, BTreeSet<IpNet>>,
    /// Steered destination prefix -> link group id.
    pub steer_routes: BTreeMap<IpNet, u32>,
    /// Group id -> its live links (empty when none is up).
    pub groups: BTreeMap<u32, Vec<PlannedLink>>,
}

/// Group ids by group name: sorted names numbered from 0 (stable for a given config).
pub(crate) fn group_ids(config: &Config) -> BTreeMap<&str, u32> {
    let names: BTreeSet<&str> = config
        .tunnels
        .iter()
        .filter_map(|tunnel| tunnel.fast_path.link_group.as_deref())
        .collect();
    names.into_iter().zip(0..).collect()
}

/// The plan for `config` with the tunnels of `node` running, on `cpus` CPUs.
pub(crate) fn plan(config: &Config, node: &NodeState, cpus: u32) -> FastPathPlan {
    let mut plan = FastPathPlan {
        tunnel_ports: tunnel_ports(config),
        protected: config
            .fast_path
            .protected_prefixes
            .iter()
            .copied()
            .collect(),
        admission: admission(config, cpus),
        ..FastPathPlan::default()
    };
    for tunnel in &config.tunnels {
        plan.peers
            .extend(tunnel.remotes.iter().map(|remote| remote.ip()));
        let Some(state) = node.get(&tunnel.name) else {
            continue;
        };
        if established(Some(state)) {
            plan.peers.extend(state.peer_addresses());
        }
        plan.tun_sources
            .insert(tunnel.device.clone(), allowed_sources(tunnel, state));
    }
    let ids = group_ids(config);
    for (name, &id) in &ids {
        let members = config
            .tunnels
            .iter()
            .filter(|tunnel| tunnel.fast_path.link_group.as_deref() == Some(*name));
        let mut live = Vec::new();
        for tunnel in members {
            for route in &tunnel.routes {
                plan.steer_routes.insert(*route, id);
            }
            if established(node.get(&tunnel.name)) {
                live.push(PlannedLink {
                    device: tunnel.device.clone(),
                    weight: tunnel.fast_path.weight,
                    id: link_id(&tunnel.name),
                    mtu: u32::from(tunnel.mtu),
                });
            }
        }
        plan.groups.insert(id, live);
    }
    plan
}

/// Whether a tunnel carries traffic: only then is it steered onto and its peers admitted.
fn established(state: Option<&TunnelState>) -> bool {
    state.is_some_and(|state| state.phase == LinkPhase::Established)
}

/// The transport ports the WAN filter polices, with whether unknown sources may start a
/// handshake there: a server accepts new clients; a p2p end without a remote waits for anyone.
pub(crate) fn tunnel_ports(config: &Config) -> BTreeMap<TunnelPortKey, u8> {
    config
        .tunnels
        .iter()
        .filter_map(|tunnel| {
            let protocol = match tunnel.transport {
                Transport::Udp => IPPROTO_UDP,
                Transport::Tcp => IPPROTO_TCP,
            };
            let accepts_new = tunnel.role == Role::Server
                || (tunnel.role == Role::P2p && tunnel.remotes.is_empty());
            let flags = PORT_LISTENING
                | if accepts_new {
                    PORT_ACCEPTS_NEW_PEERS
                } else {
                    0
                };
            tunnel
                .listen_port()
                .map(|port| (TunnelPortKey::new(protocol, port), flags))
        })
        .collect()
}

/// The rate is node-wide; each CPU's bucket refills at its share (rounded up, so a small rate
/// on many CPUs never becomes zero). The burst applies per CPU.
fn admission(config: &Config, cpus: u32) -> AdmissionConfig {
    let cpus = cpus.max(1);
    AdmissionConfig {
        handshakes_per_sec_per_cpu: config.fast_path.handshakes_per_sec.div_ceil(cpus),
        handshake_burst: config.fast_path.handshake_burst,
        pending_ttl_ns: config.fast_path.handshake_window.as_nanos() as u64,
    }
}

/// What a tunnel may send from: `allowed_sources` if given, else by role. p2p: the peer's
/// tunnel address and the routed subnets; server: the client subnet, the routed subnets and
/// its connected clients' iroutes (ccd files, known only at run time); client: anything (the
/// server is our gateway to wherever it routes).
pub(crate) fn allowed_sources(tunnel: &Tunnel, state: &TunnelState) -> BTreeSet<IpNet> {
    if let Some(list) = &tunnel.fast_path.allowed_sources {
        return list.iter().copied().collect();
    }
    let mut sources: BTreeSet<IpNet> = tunnel.routes.iter().copied().collect();
    match &tunnel.addressing {
        Addressing::P2p { remote, .. } => {
            sources.insert(IpNet::V4(Ipv4Net::from(*remote)));
        }
        Addressing::Server { subnet, .. } => {
            sources.insert(IpNet::V4(*subnet));
            for client in &state.clients {
                sources.extend(client.iroutes.iter().map(|iroute| IpNet::V4(*iroute)));
            }
        }
        Addressing::Client => {
            sources.insert(IpNet::V4(Ipv4Net::default()));
            sources.insert(IpNet::V6(Ipv6Net::default()));
        }
    }
    sources
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ClientInfo;

    fn config(tunnels: &str, extra: &str) -> Config {
        super::super::test_config(&format!("{extra}\n{tunnels}"))
    }

    fn p2p(name: &str, port: u16, group: Option<(&str, u32)>, remote: &str) -> String {
        let group = group
            .map(|(group, weight)| format!("link_group = \"{group}\"\nweight = {weight}\n"))
            .unwrap_or_default();
        format!(
            r#"[[tunnel]]
name = "{name}"
role = "p2p"
tls = "server"
local = "0.0.0.0:{port}"
remote = ["{remote}:{port}"]
ifconfig = {{ local = "10.99.{port_low}.1", remote = "10.99.{port_low}.2" }}
routes = ["10.2.0.0/16"]
{group}"#,
            port_low = port % 200
        )
    }

    #[test]
    fn ports_peers_and_sources_follow_roles() {
        let config = config(
            &format!(
                "{}[[tunnel]]\nname = \"clients\"\nrole = \"server\"\nlocal = \"0.0.0.0:1300\"\nserver = \"10.8.0.0/24\"\nroutes = [\"192.168.7.0/24\"]\n",
                p2p("site-b", 1194, None, "192.0.2.2")
            ),
            "[fast_path]\nprotected_prefixes = [\"10.2.0.0/16\"]\nhandshakes_per_sec = 10\n",
        );
        let mut site_b = TunnelState::new(LinkPhase::Established);
        site_b.peer = Some("192.0.2.2:1194".parse().unwrap());
        let mut clients = TunnelState::new(LinkPhase::Established);
        clients.clients = vec![ClientInfo {
            common_name: "alice".into(),
            virtual_address: "10.8.0.2".parse().unwrap(),
            iroutes: vec!["192.168.50.0/24".parse().unwrap()],
            real_address: "198.51.100.7:40000".parse().unwrap(),
            peer_id: 0,
            connected_since_unix: 0,
        }];
        let node = NodeState::from([
            ("site-b".to_owned(), site_b),
            ("clients".to_owned(), clients),
        ]);
        let plan = plan(&config, &node, 4);
        assert_eq!(
            plan.tunnel_ports,
            BTreeMap::from([
                (TunnelPortKey::new(IPPROTO_UDP, 1194), PORT_LISTENING),
                (
                    TunnelPortKey::new(IPPROTO_UDP, 1300),
                    PORT_LISTENING | PORT_ACCEPTS_NEW_PEERS
                ),
            ])
        );
        let peers: Vec<String> = plan.peers.iter().map(ToString::to_string).collect();
        assert_eq!(peers, ["192.0.2.2", "198.51.100.7"]);
        assert_eq!(
            plan.admission.handshakes_per_sec_per_cpu, 3,
            "10/s over 4 CPUs, rounded up"
        );
        assert_eq!(plan.protected.len(), 1);
        let sources = |device: &str| -> Vec<String> {
            plan.tun_sources[device]
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(sources("vpn-site-b"), ["10.2.0.0/16", "10.99.194.2/32"]);
        assert_eq!(
            sources("vpn-clients"),
            ["10.8.0.0/24", "192.168.7.0/24", "192.168.50.0/24"],
            "a connected client's iroute is an allowed source"
        );
        assert!(plan.groups.is_empty() && plan.steer_routes.is_empty());

        // A client that is no longer connected is no longer admitted; configured remotes stay.
        let mut node = node;
        let clients = node.get_mut("clients").unwrap();
        clients.phase = LinkPhase::WaitingForClients;
        clients.clients.clear();
        let plan = super::plan(&config, &node, 4);
        let peers: Vec<String> = plan.peers.iter().map(ToString::to_string).collect();
        assert_eq!(peers, ["192.0.2.2"]);
    }

    #[test]
    fn groups_hold_only_established_links() {
        let tunnels: String = (0..4)
            .map(|index| {
                p2p(
                    &format!("l{index}"),
                    1200 + index,
                    Some(("dc2", index as u32 + 1)),
                    "192.0.2.2",
                )
            })
            .collect();
        let config = config(&tunnels, "");
        let mut node: NodeState = (0..4)
            .map(|index| {
                (
                    format!("l{index}"),
                    TunnelState::new(LinkPhase::Established),
                )
            })
            .collect();
        node.get_mut("l2").unwrap().phase = LinkPhase::Connecting;
        let plan = plan(&config, &node, 1);
        assert_eq!(
            plan.steer_routes,
            BTreeMap::from([("10.2.0.0/16".parse().unwrap(), 0)])
        );
        let live: Vec<(&str, u32)> = plan.groups[&0]
            .iter()
            .map(|link| (link.device.as_str(), link.weight))
            .collect();
        assert_eq!(live, [("vpn-l0", 1), ("vpn-l1", 2), ("vpn-l3", 4)]);
        assert_eq!(plan.groups[&0][0].id, link_id("l0"));
    }
}
