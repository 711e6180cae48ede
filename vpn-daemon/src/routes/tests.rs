use std::net::IpAddr;

use proptest::prelude::*;

use super::*;

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn tunnel(name: &str) -> RouteOwner {
    RouteOwner::Tunnel {
        tunnel: name.into(),
    }
}

fn pushed(name: &str) -> RouteOwner {
    RouteOwner::Pushed {
        tunnel: name.into(),
    }
}

fn iroute(name: &str, common_name: &str) -> RouteOwner {
    RouteOwner::Iroute {
        tunnel: name.into(),
        common_name: common_name.into(),
    }
}

/// Fills a table with `(owner, routes)` in the given order.
fn table(sets: &[(RouteOwner, Vec<Route>)]) -> RouteTable {
    let mut table = RouteTable::new();
    for (owner, routes) in sets {
        table.replace_owner(owner.clone(), routes.iter().cloned());
    }
    table
}

#[test]
fn distances_rank_iroutes_then_configuration_then_pushed_routes() {
    assert!(iroute("srv", "alice").default_distance() < tunnel("a").default_distance());
    assert!(tunnel("a").default_distance() < pushed("a").default_distance());
    let route = Route::new(pushed("hub"), net("10.9.0.0/16"), "tun0");
    assert_eq!(route.distance, OwnerKind::Pushed.default_distance());
    assert_eq!((route.gateway, route.metric), (None, 0));
}

#[test]
fn owners_display_kind_tunnel_and_common_name() {
    assert_eq!(tunnel("site-b").to_string(), "tunnel:site-b");
    assert_eq!(pushed("hub").to_string(), "pushed:hub");
    assert_eq!(iroute("srv", "alice").to_string(), "iroute:srv/alice");
    let route = KernelRoute::from(
        &Route::new(tunnel("a"), net("10.2.0.0/16"), "tun0")
            .with_gateway(ip("10.8.0.1"))
            .with_metric(7),
    );
    assert_eq!(
        route.to_string(),
        "10.2.0.0/16 via 10.8.0.1 dev tun0 metric 7 (owner tunnel:a)"
    );
}

#[test]
fn the_lower_distance_wins_whichever_owner_came_first() {
    let prefix = net("10.2.0.0/16");
    let sets = [
        (
            pushed("hub"),
            vec![Route::new(pushed("hub"), prefix, "tun-hub")],
        ),
        (
            iroute("srv", "alice"),
            vec![Route::new(iroute("srv", "alice"), prefix, "tun-srv")],
        ),
    ];
    let forward = table(&sets);
    let backward = table(&[sets[1].clone(), sets[0].clone()]);
    let desired = forward.desired();
    assert_eq!(desired, backward.desired());
    assert_eq!(desired.len(), 1);
    assert_eq!(desired[&prefix].device, "tun-srv");
    assert_eq!(desired[&prefix].owner, iroute("srv", "alice"));
    assert_eq!(forward.len(), 2, "the loser stays in the table");
}

#[test]
fn equal_distances_go_by_metric_then_by_owner_order() {
    let prefix = net("10.3.0.0/16");
    let by_metric = table(&[
        (
            tunnel("a"),
            vec![Route::new(tunnel("a"), prefix, "tun-a").with_metric(20)],
        ),
        (
            tunnel("b"),
            vec![Route::new(tunnel("b"), prefix, "tun-b").with_metric(10)],
        ),
    ]);
    assert_eq!(by_metric.desired()[&prefix].device, "tun-b");

    for order in [["b", "a"], ["a", "b"]] {
        let sets: Vec<_> = order
            .iter()
            .map(|name| (tunnel(name), vec![Route::new(tunnel(name), prefix, *name)]))
            .collect();
        assert_eq!(
            table(&sets).desired()[&prefix].owner,
            tunnel("a"),
            "{order:?}"
        );
    }

    // A set distance beats the owner's default.
    let mut preferred = Route::new(pushed("hub"), prefix, "tun-hub");
    preferred.distance = 1;
    let overridden = table(&[
        (tunnel("a"), vec![Route::new(tunnel("a"), prefix, "tun-a")]),
        (pushed("hub"), vec![preferred]),
    ]);
    assert_eq!(overridden.desired()[&prefix].device, "tun-hub");
}

#[test]
fn removing_the_winner_brings_the_loser_back() {
    let prefix = net("fd00:2::/48");
    let mut routes = table(&[
        (tunnel("a"), vec![Route::new(tunnel("a"), prefix, "tun-a")]),
        (
            iroute("srv", "bob"),
            vec![Route::new(iroute("srv", "bob"), prefix, "tun-srv")],
        ),
    ]);
    assert_eq!(routes.desired()[&prefix].device, "tun-srv");
    assert!(routes.remove_owner(&iroute("srv", "bob")));
    assert!(!routes.remove_owner(&iroute("srv", "bob")));
    assert_eq!(routes.desired()[&prefix].device, "tun-a");
    assert_eq!(routes.desired()[&prefix].owner, tunnel("a"));
}

#[test]
fn replace_owner_reports_changes_and_ignores_order_and_duplicates() {
    let owner = tunnel("a");
    let one = Route::new(owner.clone(), net("10.1.0.0/16"), "tun-a");
    let two = Route::new(owner.clone(), net("fd00:1::/64"), "tun-a");
    let mut routes = RouteTable::new();
    assert!(routes.is_empty());
    assert!(routes.replace_owner(owner.clone(), [one.clone(), two.clone()]));
    assert!(!routes.replace_owner(owner.clone(), [two.clone(), one.clone(), two.clone()]));
    assert_eq!(routes.len(), 2);
    assert!(routes.replace_owner(owner.clone(), [one.clone().with_metric(5)]));
    assert_eq!(
        routes.iter().collect::<Vec<_>>(),
        [&one.clone().with_metric(5)]
    );
    // An empty set removes the owner.
    assert!(routes.replace_owner(owner.clone(), []));
    assert!(routes.is_empty());
    assert!(!routes.replace_owner(owner, []));
}

#[test]
fn host_bits_do_not_make_another_prefix() {
    let mut routes = RouteTable::new();
    let mut sloppy = Route::new(pushed("hub"), net("10.1.0.0/16"), "tun-hub");
    sloppy.destination = net("10.1.2.3/16");
    routes.replace_owner(pushed("hub"), [sloppy]);
    routes.replace_owner(
        tunnel("a"),
        [Route::new(tunnel("a"), net("10.1.9.9/16"), "tun-a")],
    );
    let desired = routes.desired();
    assert_eq!(desired.keys().collect::<Vec<_>>(), [&net("10.1.0.0/16")]);
    assert_eq!(desired[&net("10.1.0.0/16")].device, "tun-a");
}

#[test]
fn remove_tunnel_takes_all_its_owners_and_nothing_else() {
    let mut routes = table(&[
        (
            tunnel("srv"),
            vec![Route::new(tunnel("srv"), net("10.8.0.0/24"), "tun-srv")],
        ),
        (
            iroute("srv", "alice"),
            vec![Route::new(
                iroute("srv", "alice"),
                net("10.20.0.0/16"),
                "tun-srv",
            )],
        ),
        (
            pushed("srv"),
            vec![Route::new(pushed("srv"), net("10.30.0.0/16"), "tun-srv")],
        ),
        (
            tunnel("other"),
            vec![Route::new(tunnel("other"), net("10.40.0.0/16"), "tun-o")],
        ),
    ]);
    assert!(routes.remove_tunnel("srv"));
    assert!(!routes.remove_tunnel("srv"));
    assert_eq!(routes.len(), 1);
    assert_eq!(routes.iter().next().unwrap().owner, tunnel("other"));
}

#[test]
fn summary_counts_routes_and_winners_per_kind() {
    let prefix = net("10.2.0.0/16");
    let routes = table(&[
        (
            tunnel("a"),
            vec![
                Route::new(tunnel("a"), prefix, "tun-a"),
                Route::new(tunnel("a"), net("10.4.0.0/16"), "tun-a"),
            ],
        ),
        (
            pushed("hub"),
            vec![Route::new(pushed("hub"), prefix, "tun-hub")],
        ),
    ]);
    let summary = routes.summary();
    assert_eq!(
        summary[&OwnerKind::Tunnel],
        KindSummary {
            routes: 2,
            winning: 2
        }
    );
    assert_eq!(
        summary[&OwnerKind::Pushed],
        KindSummary {
            routes: 1,
            winning: 0
        }
    );
    assert!(!summary.contains_key(&OwnerKind::Iroute));
}

fn desired_of(routes: &[Route]) -> DesiredRoutes {
    let mut table = RouteTable::new();
    for route in routes {
        let mut mine: Vec<Route> = table
            .iter()
            .filter(|r| r.owner == route.owner)
            .cloned()
            .collect();
        mine.push(route.clone());
        table.replace_owner(route.owner.clone(), mine);
    }
    table.desired()
}

fn installed(
    destination: &str,
    gateway: Option<&str>,
    ifindex: u32,
    metric: u32,
) -> InstalledRoute {
    InstalledRoute {
        destination: net(destination),
        gateway: gateway.map(ip),
        ifindex,
        metric,
    }
}

fn devices(name: &str) -> Option<u32> {
    match name {
        "tun-a" => Some(4),
        "tun-b" => Some(5),
        _ => None,
    }
}

#[test]
fn diff_adds_the_missing_and_deletes_the_unwanted() {
    let owner = tunnel("a");
    let desired = desired_of(&[
        Route::new(owner.clone(), net("10.1.0.0/16"), "tun-a"),
        Route::new(owner.clone(), net("fd00:1::/64"), "tun-a"),
        Route::new(owner.clone(), net("10.2.0.0/16"), "tun-a"),
    ]);
    let have = [
        installed("10.1.0.0/16", None, 4, 0),
        installed("10.99.0.0/16", None, 4, 0),
        installed("fd00:99::/64", None, 5, 1024),
    ];
    let diff = diff(&desired, &have, devices);
    assert_eq!(diff.delete, [have[1], have[2]]);
    let added: Vec<_> = diff
        .add
        .iter()
        .map(|(route, ifindex)| (route.destination, *ifindex))
        .collect();
    assert_eq!(added, [(net("10.2.0.0/16"), 4), (net("fd00:1::/64"), 4)]);
    assert!(diff.unresolved.is_empty());
    assert!(!diff.is_empty());
}

#[test]
fn diff_replaces_routes_with_the_wrong_device_gateway_or_metric() {
    let owner = tunnel("a");
    let desired = desired_of(&[
        Route::new(owner.clone(), net("10.1.0.0/16"), "tun-a"),
        Route::new(owner.clone(), net("10.2.0.0/16"), "tun-a").with_gateway(ip("10.8.0.1")),
        Route::new(owner.clone(), net("10.3.0.0/16"), "tun-a").with_metric(30),
        Route::new(owner.clone(), net("10.4.0.0/16"), "tun-b"),
    ]);
    let have = [
        installed("10.1.0.0/16", None, 5, 0),
        installed("10.2.0.0/16", Some("10.8.0.2"), 4, 0),
        installed("10.3.0.0/16", None, 4, 0),
        installed("10.4.0.0/16", None, 5, 0),
    ];
    let diff = diff(&desired, &have, devices);
    assert_eq!(diff.delete, have[..3]);
    let added: Vec<_> = diff
        .add
        .iter()
        .map(|(route, ifindex)| (route.destination, route.gateway, route.metric, *ifindex))
        .collect();
    assert_eq!(
        added,
        [
            (net("10.1.0.0/16"), None, 0, 4),
            (net("10.2.0.0/16"), Some(ip("10.8.0.1")), 0, 4),
            (net("10.3.0.0/16"), None, 30, 4),
        ]
    );
}

#[test]
fn diff_leaves_routes_as_desired_alone_and_drops_duplicates() {
    let owner = tunnel("a");
    let desired = desired_of(&[
        Route::new(owner.clone(), net("10.1.0.0/16"), "tun-a").with_metric(10),
        // IPv6 metric 0 is 1024 in the kernel.
        Route::new(owner.clone(), net("fd00:1::/64"), "tun-b"),
        Route::new(owner.clone(), net("fd00:2::/64"), "tun-b").with_metric(7),
    ]);
    let have = [
        installed("10.1.0.0/16", None, 4, 10),
        installed("fd00:1::/64", None, 5, 1024),
        installed("fd00:2::/64", None, 5, 7),
        installed("10.1.0.0/16", None, 4, 10),
    ];
    let diff = diff(&desired, &have, devices);
    assert_eq!(diff.delete, [have[3]]);
    assert!(diff.add.is_empty());
    let settled = super::diff(&desired, &have[..3], devices);
    assert!(settled.is_empty(), "{settled:?}");
}

#[test]
fn diff_holds_routes_whose_device_is_missing_as_unresolved() {
    let desired = desired_of(&[
        Route::new(tunnel("a"), net("10.1.0.0/16"), "tun-a"),
        Route::new(pushed("late"), net("10.5.0.0/16"), "tun-late"),
    ]);
    // The device went away and came back under another index; ours on the old one must go.
    let have = [installed("10.5.0.0/16", None, 9, 0)];
    let diff = diff(&desired, &have, devices);
    assert_eq!(diff.delete, have);
    assert_eq!(diff.add.len(), 1);
    assert_eq!(diff.unresolved.len(), 1);
    assert_eq!(diff.unresolved[0].device, "tun-late");
    assert_eq!(diff.unresolved[0].owner, pushed("late"));
}

#[test]
fn an_empty_desired_set_deletes_everything_of_ours() {
    let have = [
        installed("10.1.0.0/16", None, 4, 0),
        installed("::/0", Some("fe80::1"), 4, 1024),
    ];
    let diff = diff(&DesiredRoutes::new(), &have, devices);
    assert_eq!(diff.delete, have);
    assert!(diff.add.is_empty() && diff.unresolved.is_empty());
}

/// A route from small pools of owners, prefixes (IPv4 and IPv6), devices, distances and
/// metrics, so that collisions on a prefix are common.
fn any_route() -> impl Strategy<Value = Route> {
    let owners = prop_oneof![
        Just(tunnel("a")),
        Just(tunnel("b")),
        Just(pushed("a")),
        Just(iroute("srv", "alice")),
        Just(iroute("srv", "bob")),
    ];
    let prefixes = prop_oneof![
        Just(net("10.1.0.0/16")),
        Just(net("10.2.0.0/16")),
        Just(net("0.0.0.0/0")),
        Just(net("fd00:1::/64")),
        Just(net("::/0")),
    ];
    let devices = prop_oneof![Just("tun-a"), Just("tun-b")];
    (owners, prefixes, devices, 0u8..3, 0u32..3, any::<bool>()).prop_map(
        |(owner, prefix, device, distance, metric, via)| {
            let mut route = Route::new(owner, prefix, device).with_metric(metric);
            route.distance += distance;
            if via {
                let gateway = match prefix {
                    IpNet::V4(_) => ip("10.8.0.1"),
                    IpNet::V6(_) => ip("fd00::1"),
                };
                route = route.with_gateway(gateway);
            }
            route
        },
    )
}

proptest! {
    #[test]
    fn desired_does_not_depend_on_insertion_order(
        (routes, shuffled) in prop::collection::vec(any_route(), 0..24)
            .prop_flat_map(|routes| (Just(routes.clone()), Just(routes).prop_shuffle()))
    ) {
        let desired = desired_of(&routes);
        prop_assert_eq!(&desired, &desired_of(&shuffled));
        // Each winner is the best candidate for its prefix, and every prefix has one.
        let prefixes: BTreeSet<IpNet> = routes.iter().map(|r| r.destination).collect();
        prop_assert_eq!(desired.len(), prefixes.len());
        for route in &routes {
            let winner = &desired[&route.destination];
            let best = routes
                .iter()
                .filter(|r| r.destination == route.destination)
                .min_by(|x, y| x.preference().cmp(&y.preference()))
                .unwrap();
            prop_assert_eq!(winner, &KernelRoute::from(best));
        }
    }

    #[test]
    fn applying_a_diff_settles(
        routes in prop::collection::vec(any_route(), 0..16),
        have in prop::collection::vec(
            (0usize..5, prop::option::of(Just(ip("10.8.0.1"))), 3u32..6, 0u32..3),
            0..8,
        ),
    ) {
        let prefixes = ["10.1.0.0/16", "10.2.0.0/16", "0.0.0.0/0", "10.7.0.0/16", "10.9.0.0/16"];
        let have: Vec<InstalledRoute> = have
            .into_iter()
            .map(|(prefix, gateway, ifindex, metric)| InstalledRoute {
                destination: net(prefixes[prefix]),
                gateway,
                ifindex,
                metric,
            })
            .collect();
        let desired = desired_of(&routes);
        let first = diff(&desired, &have, devices);
        // What the kernel holds after the deletes and adds.
        let mut after = have.clone();
        for deleted in &first.delete {
            let at = after.iter().position(|route| route == deleted).unwrap();
            after.remove(at);
        }
        after.extend(first.add.iter().map(|(route, ifindex)| InstalledRoute {
            destination: route.destination,
            gateway: route.gateway,
            ifindex: *ifindex,
            metric: kernel_metric(route),
        }));
        let second = diff(&desired, &after, devices);
        prop_assert!(second.is_empty(), "{:?}", second);
        prop_assert_eq!(second.unresolved, first.unresolved);
    }
}
