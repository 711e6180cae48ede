//! Which routes the daemon wants in the kernel, from the config and the node state: each
//! running tunnel's configured routes (and a net30 server's subnet), the routes a client tunnel
//! was pushed (filtered), and every connected client's iroutes.
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

use crate::config::{Addressing, Config, Tunnel};
use crate::proto::vocabulary::Topology;
use crate::routes::{Route, RouteOwner, RouteTable};
use crate::state::{NodeState, TunnelState};

/// The route table for `config` with the tunnels of `node` running. A tunnel that is not
/// running owns nothing (its tun device is gone, and with it every route through it).
pub(crate) fn route_table(config: &Config, node: &NodeState) -> RouteTable {
    let mut table = RouteTable::default();
    for tunnel in &config.tunnels {
        let Some(state) = node.get(&tunnel.name) else {
            continue;
        };
        let device = &tunnel.device;
        let mut configured: Vec<IpNet> = tunnel.routes.clone();
        if let Addressing::Server {
            subnet,
            topology: Topology::Net30,
            ..
        } = &tunnel.addressing
        {
            // net30: the server's tun has a point-to-point address; the subnet needs a route.
            configured.push(IpNet::V4(*subnet));
        }
        let owner = RouteOwner::Tunnel {
            tunnel: tunnel.name.clone(),
        };
        table.replace_owner(
            owner.clone(),
            configured
                .into_iter()
                .map(|destination| Route::new(owner.clone(), destination, device)),
        );
        let owner = RouteOwner::Pushed {
            tunnel: tunnel.name.clone(),
        };
        table.replace_owner(
            owner.clone(),
            accepted_pushed_routes(tunnel, state)
                .map(|destination| Route::new(owner.clone(), IpNet::V4(destination), device)),
        );
        for client in &state.clients {
            let owner = RouteOwner::Iroute {
                tunnel: tunnel.name.clone(),
                common_name: client.common_name.clone(),
            };
            table.replace_owner(
                owner.clone(),
                client
                    .iroutes
                    .iter()
                    .map(|iroute| Route::new(owner.clone(), IpNet::V4(*iroute), device)),
            );
        }
    }
    table
}

/// The pushed routes a client tunnel installs.
fn accepted_pushed_routes<'a>(
    tunnel: &'a Tunnel,
    state: &'a TunnelState,
) -> impl Iterator<Item = Ipv4Net> + 'a {
    let server = state.peer.map(|peer| peer.ip());
    state
        .pushed_routes
        .iter()
        .copied()
        .filter(move |route| pushed_route_accepted(tunnel, server, *route))
}

/// Whether a client tunnel installs a pushed `route`. A default route (or half of one, as
/// `redirect-gateway def1` pushes) and any route covering the server's own outer address are
/// refused unless the tunnel accepts them: either would pull the tunnel's own packets into the
/// tunnel, or hand all traffic to a server that may not be meant to carry it.
pub(crate) fn pushed_route_accepted(
    tunnel: &Tunnel,
    server: Option<IpAddr>,
    route: Ipv4Net,
) -> bool {
    if tunnel.accept_pushed_default_route {
        return true;
    }
    let default_like = route.prefix_len() <= 1;
    let covers_server = matches!(server, Some(IpAddr::V4(address)) if route.contains(&address));
    !default_like && !covers_server
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ClientInfo, LinkPhase};

    /// A p2p link routing 10.2.0.0/16, a net30 server with its clients, and a client tunnel.
    fn config(client_extra: &str) -> Config {
        super::super::test_config(&format!(
            r#"[[tunnel]]
name = "link"
role = "p2p"
tls = "server"
local = "0.0.0.0:1194"
remote = ["192.0.2.2:1194"]
ifconfig = {{ local = "10.99.0.1", remote = "10.99.0.2" }}
routes = ["10.2.0.0/16"]
[[tunnel]]
name = "clients"
role = "server"
local = "0.0.0.0:1300"
server = "10.8.0.0/24"
topology = "net30"
[[tunnel]]
name = "up"
role = "client"
remote = ["198.51.100.1:1194"]
{client_extra}
"#
        ))
    }

    fn client(common_name: &str, iroutes: &[&str]) -> ClientInfo {
        ClientInfo {
            common_name: common_name.into(),
            virtual_address: "10.8.0.6".parse().unwrap(),
            iroutes: iroutes.iter().map(|net| net.parse().unwrap()).collect(),
            real_address: "203.0.113.9:40000".parse().unwrap(),
            peer_id: 0,
            connected_since_unix: 0,
        }
    }

    fn routes(table: &RouteTable) -> Vec<String> {
        table
            .desired()
            .values()
            .map(|route| {
                format!(
                    "{} dev {} ({})",
                    route.destination, route.device, route.owner
                )
            })
            .collect()
    }

    #[test]
    fn running_tunnels_own_their_routes_clients_their_iroutes() {
        let config = config("");
        let mut up = TunnelState::new(LinkPhase::Established);
        up.peer = Some("198.51.100.1:1194".parse().unwrap());
        up.pushed_routes = [
            "10.50.0.0/16",
            "0.0.0.0/0",
            "0.0.0.0/1",
            "128.0.0.0/1",
            "198.51.100.0/24",
        ]
        .iter()
        .map(|net| net.parse().unwrap())
        .collect();
        let mut clients = TunnelState::new(LinkPhase::Established);
        clients.clients = vec![client("alice", &["192.168.50.0/24"])];
        let node = NodeState::from([
            ("link".to_owned(), TunnelState::new(LinkPhase::Connecting)),
            ("clients".to_owned(), clients),
            ("up".to_owned(), up),
        ]);
        assert_eq!(
            routes(&route_table(&config, &node)),
            [
                "10.2.0.0/16 dev vpn-link (tunnel:link)",
                "10.8.0.0/24 dev vpn-clients (tunnel:clients)",
                "10.50.0.0/16 dev vpn-up (pushed:up)",
                "192.168.50.0/24 dev vpn-clients (iroute:clients/alice)",
            ],
            "the default route, its def1 halves and the server's own prefix are refused"
        );
        // A tunnel that is not running owns nothing; a client that left takes its iroute.
        let mut node = node;
        node.remove("link");
        node.get_mut("clients").unwrap().clients.clear();
        assert_eq!(
            routes(&route_table(&config, &node)),
            [
                "10.8.0.0/24 dev vpn-clients (tunnel:clients)",
                "10.50.0.0/16 dev vpn-up (pushed:up)",
            ]
        );
    }

    #[test]
    fn a_client_can_accept_a_pushed_default_route() {
        let config = config("accept_pushed_default_route = true");
        let mut up = TunnelState::new(LinkPhase::Established);
        up.pushed_routes = vec!["0.0.0.0/0".parse().unwrap()];
        let node = NodeState::from([("up".to_owned(), up)]);
        assert_eq!(
            routes(&route_table(&config, &node)),
            ["0.0.0.0/0 dev vpn-up (pushed:up)"]
        );
    }
}
