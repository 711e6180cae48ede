//! The route table: every kernel route the daemon wants, who wants it, and which one wins.
//!
//! Several parts of the daemon want routes: a tunnel's configured `routes`, a server's route to
//! its own subnet, what a client tunnel learns in PUSH_REPLY, the iroutes of a server's connected
//! clients. Two of them may want the same prefix through different tunnels. Each hands its set to
//! [`RouteTable::replace_owner`] under its own [`RouteOwner`]; [`RouteTable::desired`] picks one
//! winner per prefix (lowest administrative distance, then lowest metric, then owner order), and
//! [`diff`] compares the winners with what the kernel holds under our protocol id. One reconcile
//! loop (`io::route_reconciler`) applies that diff, so every kernel route has exactly one owner in
//! the daemon, and the loser of a prefix comes back by itself when the winner goes.
//!
//! Pure: no sockets, no clock, no netlink types; devices are names, resolved to interface
//! indices by the caller of [`diff`].

use std::{
    collections::{btree_map::Entry, BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use ipnet::IpNet;

#[cfg(test)]
mod tests;

/// Who wants a route. The derived order is the last tie-break between two routes to one prefix
/// with equal distance and metric, so the winner never depends on insertion order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteOwner {
    /// A tunnel's configured `routes`, and a server tunnel's route to its own subnet.
    Tunnel { tunnel: String },
    /// The routes a client tunnel received in PUSH_REPLY.
    Pushed { tunnel: String },
    /// The ccd `iroute`s of a client connected to server tunnel `tunnel`.
    Iroute { tunnel: String, common_name: String },
}

/// The kind of a [`RouteOwner`], without the names: what status counts routes by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OwnerKind {
    Tunnel,
    Pushed,
    Iroute,
}

impl OwnerKind {
    /// The administrative distance a route of this kind gets unless set otherwise; lower wins.
    ///
    /// | kind | distance | why |
    /// |---|---|---|
    /// | `Iroute` | 10 | the server learned it from the client connected right now, for exactly the subnet behind it: the most specific knowledge there is |
    /// | `Tunnel` | 20 | the operator's own configuration (static routes) |
    /// | `Pushed` | 30 | the far end's word: it must not take a prefix the local configuration routes elsewhere |
    ///
    /// Like the administrative distances of a routing daemon's RIB (connected < static <
    /// learned), with gaps so that more kinds of owner can be placed between these.
    pub fn default_distance(self) -> u8 {
        match self {
            OwnerKind::Iroute => 10,
            OwnerKind::Tunnel => 20,
            OwnerKind::Pushed => 30,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OwnerKind::Tunnel => "tunnel",
            OwnerKind::Pushed => "pushed",
            OwnerKind::Iroute => "iroute",
        }
    }
}

impl fmt::Display for OwnerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl RouteOwner {
    pub fn kind(&self) -> OwnerKind {
        match self {
            RouteOwner::Tunnel { .. } => OwnerKind::Tunnel,
            RouteOwner::Pushed { .. } => OwnerKind::Pushed,
            RouteOwner::Iroute { .. } => OwnerKind::Iroute,
        }
    }

    /// The tunnel whose routes these are ([`RouteTable::remove_tunnel`] removes them with it).
    pub fn tunnel(&self) -> &str {
        match self {
            RouteOwner::Tunnel { tunnel }
            | RouteOwner::Pushed { tunnel }
            | RouteOwner::Iroute { tunnel, .. } => tunnel,
        }
    }

    pub fn default_distance(&self) -> u8 {
        self.kind().default_distance()
    }
}

impl fmt::Display for RouteOwner {
    /// `tunnel:NAME`, `pushed:NAME`, `iroute:NAME/COMMON_NAME`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteOwner::Tunnel { tunnel } | RouteOwner::Pushed { tunnel } => {
                write!(f, "{}:{tunnel}", self.kind())
            }
            RouteOwner::Iroute {
                tunnel,
                common_name,
            } => write!(f, "{}:{tunnel}/{common_name}", self.kind()),
        }
    }
}

/// A route one owner wants: to `destination` through `device` (on-link, or via `gateway`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub destination: IpNet,
    pub device: String,
    pub gateway: Option<IpAddr>,
    pub owner: RouteOwner,
    /// Administrative distance: decides between owners of one prefix; lower wins. Never reaches
    /// the kernel.
    pub distance: u8,
    /// The kernel route's metric (`RTA_PRIORITY`); also decides between routes of one distance.
    pub metric: u32,
}

impl Route {
    /// An on-link route with the owner's default distance and metric 0. The destination loses
    /// its host bits (10.1.2.3/16 is 10.1.0.0/16), as the kernel would make it.
    pub fn new(owner: RouteOwner, destination: IpNet, device: impl Into<String>) -> Route {
        Route {
            destination: destination.trunc(),
            device: device.into(),
            gateway: None,
            distance: owner.default_distance(),
            owner,
            metric: 0,
        }
    }

    pub fn with_gateway(mut self, gateway: IpAddr) -> Route {
        self.gateway = Some(gateway);
        self
    }

    pub fn with_metric(mut self, metric: u32) -> Route {
        self.metric = metric;
        self
    }

    /// What decides between routes to one prefix, best first: distance, metric, owner, and
    /// (for two routes of one owner) device and gateway, so that the order is total.
    fn preference(&self) -> (u8, u32, &RouteOwner, &str, Option<IpAddr>) {
        (
            self.distance,
            self.metric,
            &self.owner,
            &self.device,
            self.gateway,
        )
    }
}

/// The route the kernel should hold for one prefix: the winner among the owners that want it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelRoute {
    pub destination: IpNet,
    pub device: String,
    pub gateway: Option<IpAddr>,
    pub metric: u32,
    /// Kept for logs and status; the kernel only sees our protocol id.
    pub owner: RouteOwner,
}

impl fmt::Display for KernelRoute {
    /// Like `ip route`: `DEST [via GW] dev DEV metric N (owner OWNER)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.destination)?;
        if let Some(gateway) = self.gateway {
            write!(f, " via {gateway}")?;
        }
        write!(
            f,
            " dev {} metric {} (owner {})",
            self.device, self.metric, self.owner
        )
    }
}

impl From<&Route> for KernelRoute {
    fn from(route: &Route) -> KernelRoute {
        KernelRoute {
            destination: route.destination.trunc(),
            device: route.device.clone(),
            gateway: route.gateway,
            metric: route.metric,
            owner: route.owner.clone(),
        }
    }
}

/// One winning route per destination prefix: what the kernel should hold under our protocol id.
pub type DesiredRoutes = BTreeMap<IpNet, KernelRoute>;

/// How many routes of one kind of owner the table holds, and how many of them won their prefix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindSummary {
    pub routes: usize,
    pub winning: usize,
}

/// Every route the daemon wants, grouped by owner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    /// Each owner's routes sorted and without duplicates, so that equal sets compare equal
    /// whatever order they were given in. No owner has an empty list.
    by_owner: BTreeMap<RouteOwner, Vec<Route>>,
}

impl RouteTable {
    pub fn new() -> RouteTable {
        RouteTable::default()
    }

    /// Makes `routes` the whole set `owner` wants (an empty set removes the owner). Every route
    /// is filed under `owner`: a route naming another owner is a caller's bug (debug builds
    /// panic). Returns whether the table changed.
    pub fn replace_owner(
        &mut self,
        owner: RouteOwner,
        routes: impl IntoIterator<Item = Route>,
    ) -> bool {
        let mut routes: Vec<Route> = routes
            .into_iter()
            .map(|mut route| {
                debug_assert_eq!(route.owner, owner, "route {route:?} filed under {owner}");
                route.owner = owner.clone();
                route.destination = route.destination.trunc();
                route
            })
            .collect();
        routes.sort();
        routes.dedup();
        if routes.is_empty() {
            return self.remove_owner(&owner);
        }
        match self.by_owner.entry(owner) {
            Entry::Occupied(mut entry) if *entry.get() != routes => {
                entry.insert(routes);
                true
            }
            Entry::Occupied(_) => false,
            Entry::Vacant(entry) => {
                entry.insert(routes);
                true
            }
        }
    }

    /// Forgets every route of `owner`. Returns whether it had any.
    pub fn remove_owner(&mut self, owner: &RouteOwner) -> bool {
        self.by_owner.remove(owner).is_some()
    }

    /// Forgets every route of every owner that belongs to `tunnel` (its configured and pushed
    /// routes, its clients' iroutes). Returns whether there were any.
    pub fn remove_tunnel(&mut self, tunnel: &str) -> bool {
        let before = self.by_owner.len();
        self.by_owner.retain(|owner, _| owner.tunnel() != tunnel);
        self.by_owner.len() != before
    }

    /// Every route, by owner (in owner order), winners and losers alike.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.by_owner.values().flatten()
    }

    pub fn len(&self) -> usize {
        self.by_owner.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_owner.is_empty()
    }

    /// One winner per destination prefix: the lowest distance, then the lowest metric, then the
    /// first owner in [`RouteOwner`] order. Depends only on the table's contents.
    pub fn desired(&self) -> DesiredRoutes {
        self.winners()
            .into_iter()
            .map(|(destination, route)| (destination, KernelRoute::from(route)))
            .collect()
    }

    /// Routes and winners per kind of owner (kinds without routes are left out), for status.
    pub fn summary(&self) -> BTreeMap<OwnerKind, KindSummary> {
        let mut summary: BTreeMap<OwnerKind, KindSummary> = BTreeMap::new();
        for route in self.iter() {
            summary.entry(route.owner.kind()).or_default().routes += 1;
        }
        for route in self.winners().values() {
            summary.entry(route.owner.kind()).or_default().winning += 1;
        }
        summary
    }

    fn winners(&self) -> BTreeMap<IpNet, &Route> {
        let mut best: BTreeMap<IpNet, &Route> = BTreeMap::new();
        for route in self.iter() {
            match best.entry(route.destination) {
                Entry::Vacant(entry) => {
                    entry.insert(route);
                }
                Entry::Occupied(mut entry) => {
                    if route.preference() < entry.get().preference() {
                        entry.insert(route);
                    }
                }
            }
        }
        best
    }
}

/// A route of ours as the kernel holds it (table main, our protocol id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstalledRoute {
    pub destination: IpNet,
    pub gateway: Option<IpAddr>,
    pub ifindex: u32,
    pub metric: u32,
}

/// What to change so that the kernel holds exactly the desired routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteDiff {
    /// Routes of ours that are not desired, or not as desired (device, gateway or metric).
    pub delete: Vec<InstalledRoute>,
    /// Desired routes the kernel lacks, each with its device's interface index.
    pub add: Vec<(KernelRoute, u32)>,
    /// Desired routes whose device is not there (yet): not an error, they wait for it.
    pub unresolved: Vec<KernelRoute>,
}

impl RouteDiff {
    /// Whether the kernel already holds what can be installed now.
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.add.is_empty()
    }
}

/// Compares the desired routes with `installed` (every route the kernel holds with our protocol
/// id), level-triggered: whatever the history, applying the deletes and then the adds leaves the
/// kernel with exactly the desired routes whose devices exist. `ifindex_of` resolves a device
/// name to its interface index, `None` while the device is missing (or not usable).
///
/// A route installed with the wrong device, gateway or metric is deleted and added again; of two
/// installed routes that both match one desired route, the first is kept.
pub fn diff(
    desired: &DesiredRoutes,
    installed: &[InstalledRoute],
    ifindex_of: impl Fn(&str) -> Option<u32>,
) -> RouteDiff {
    let ifindices: BTreeMap<&str, Option<u32>> = desired
        .values()
        .map(|route| (route.device.as_str(), ifindex_of(&route.device)))
        .collect();
    let resolve = |route: &KernelRoute| ifindices.get(route.device.as_str()).copied().flatten();

    let mut kept = BTreeSet::new();
    let mut result = RouteDiff::default();
    for have in installed {
        let destination = have.destination.trunc();
        let matches = !kept.contains(&destination)
            && desired.get(&destination).is_some_and(|want| {
                resolve(want) == Some(have.ifindex)
                    && want.gateway == have.gateway
                    && kernel_metric(want) == have.metric
            });
        if matches {
            kept.insert(destination);
        } else {
            result.delete.push(*have);
        }
    }
    for (destination, want) in desired {
        if kept.contains(destination) {
            continue;
        }
        match resolve(want) {
            Some(ifindex) => result.add.push((want.clone(), ifindex)),
            None => result.unresolved.push(want.clone()),
        }
    }
    result
}

/// The metric the kernel reports for `route` once installed: IPv6 makes 0 into 1024
/// (`IP6_RT_PRIO_USER`), so comparing the plain metric would re-add such routes forever.
fn kernel_metric(route: &KernelRoute) -> u32 {
    match (route.destination, route.metric) {
        (IpNet::V6(_), 0) => 1024,
        (_, metric) => metric,
    }
}
