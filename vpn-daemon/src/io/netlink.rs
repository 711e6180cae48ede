//! Link, address and route configuration over rtnetlink.
//!
//! Every route we install carries our own protocol id ([`ROUTE_PROTOCOL`]), so that a reconcile
//! or a cleanup after a crash finds exactly ours (`ip route show proto 156`) and never touches
//! routes of other daemons. Adds are idempotent (an existing address is success, routes use
//! `NLM_F_REPLACE`) and deleting a missing route is success.
//!
//! The netlink socket lives in the network namespace of the thread that calls [`Netlink::new`];
//! so does the one [`Netlink::subscribe`] opens.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{bail, Context as _};
use futures_util::{StreamExt as _, TryStreamExt as _};
use ipnet::IpNet;
use rtnetlink::{
    packet_core::{ErrorMessage, NetlinkMessage, NetlinkPayload},
    packet_route::{
        address::{AddressAttribute, AddressMessage},
        link::{LinkAttribute, LinkFlags},
        route::{
            RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
            RouteVia,
        },
        AddressFamily, RouteNetlinkMessage,
    },
    sys::AsyncSocket as _,
    LinkUnspec, MulticastGroup, RouteMessageBuilder,
};

use crate::routes::InstalledRoute;

/// The rtnetlink protocol id on every route this daemon installs (`rtm_protocol`). 156 (0x9c) is
/// unassigned in the kernel's `RTPROT_*` list and in iproute2's `rt_protos`.
pub const ROUTE_PROTOCOL: u8 = 0x9c;

/// A route of ours as the kernel reports it: destination, gateway, output interface index.
pub type OurRoute = (IpNet, Option<IpAddr>, u32);

/// An rtnetlink connection; its socket is served by a task spawned on the current tokio runtime.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
    /// The socket's netlink port id: the kernel puts it into the notifications of the changes
    /// this socket made, which is how [`Changes`] tells ours from everybody else's.
    port: u32,
}

impl Netlink {
    /// Opens the socket (in the calling thread's network namespace) and spawns its task.
    pub async fn new() -> anyhow::Result<Netlink> {
        let (mut connection, handle, _) =
            rtnetlink::new_connection().context("opening an rtnetlink socket")?;
        // Bound now rather than on the first send, so that the port id is known.
        let address = connection
            .socket_mut()
            .socket_mut()
            .bind_auto()
            .context("binding the rtnetlink socket")?;
        tokio::spawn(connection);
        Ok(Netlink {
            handle,
            port: address.port_number(),
        })
    }

    /// The index of interface `name`, or `None` if there is none.
    pub async fn link_index(&self, name: &str) -> anyhow::Result<Option<u32>> {
        let mut links = self.handle.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(Some(link.header.index)),
            Ok(None) => Ok(None),
            Err(error) if errno(&error) == Some(libc::ENODEV) => Ok(None),
            Err(error) => Err(error).with_context(|| format!("looking up link {name}")),
        }
    }

    /// The index of every link that is administratively up, by name.
    pub async fn up_links(&self) -> anyhow::Result<BTreeMap<String, u32>> {
        let mut up = BTreeMap::new();
        let mut links = self.handle.link().get().execute();
        while let Some(link) = links.try_next().await.context("dumping links")? {
            if !link.header.flags.contains(LinkFlags::Up) {
                continue;
            }
            for attribute in link.attributes {
                if let LinkAttribute::IfName(name) = attribute {
                    up.insert(name, link.header.index);
                }
            }
        }
        Ok(up)
    }

    /// Sets link `index` up, and its MTU if given.
    pub async fn set_link_up(&self, index: u32, mtu: Option<u32>) -> anyhow::Result<()> {
        let mut builder = LinkUnspec::new_with_index(index).up();
        if let Some(mtu) = mtu {
            builder = builder.mtu(mtu);
        }
        self.handle
            .link()
            .set(builder.build())
            .execute()
            .await
            .with_context(|| format!("setting link {index} up (mtu {mtu:?})"))
    }

    /// Adds `addr/prefix_len` to link `index`; with `peer`, a point-to-point address (local
    /// `addr`, remote `peer`, like OpenVPN's `ifconfig local remote`). Already present is success.
    pub async fn add_address(
        &self,
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
        peer: Option<IpAddr>,
    ) -> anyhow::Result<()> {
        let message = address_message(index, addr, prefix_len, peer)?;
        let mut request = self.handle.address().add(index, addr, prefix_len);
        *request.message_mut() = message;
        match request.execute().await {
            Ok(()) => Ok(()),
            Err(error) if errno(&error) == Some(libc::EEXIST) => Ok(()),
            Err(error) => Err(error).with_context(|| {
                format!("adding address {addr}/{prefix_len} (peer {peer:?}) to link {index}")
            }),
        }
    }

    /// Installs or replaces (`NLM_F_REPLACE`) the route to `dest` through link `dev`, via a
    /// gateway or directly on the link, in table main with our [`ROUTE_PROTOCOL`].
    pub async fn replace_route(
        &self,
        dest: IpNet,
        via: Option<IpAddr>,
        dev: u32,
        metric: Option<u32>,
    ) -> anyhow::Result<()> {
        let message = route_message(dest, via, dev, metric)?;
        self.handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .with_context(|| format!("replacing route {dest} via {via:?} dev {dev}"))
    }

    /// Deletes our route to `dest` on link `dev`. A route that is already gone (or whose link
    /// is gone, which took the route with it) is success.
    pub async fn delete_route(&self, dest: IpNet, dev: u32) -> anyhow::Result<()> {
        let message = route_message(dest, None, dev, None)?;
        self.delete(message)
            .await
            .with_context(|| format!("deleting route {dest} dev {dev}"))
    }

    /// Deletes exactly `route` (destination, gateway, link and metric), a route of ours the
    /// kernel reported. One that is already gone is success, as in [`Netlink::delete_route`].
    pub async fn delete_installed_route(&self, route: &InstalledRoute) -> anyhow::Result<()> {
        let message = route_message(
            route.destination,
            route.gateway,
            route.ifindex,
            Some(route.metric),
        )?;
        self.delete(message)
            .await
            .with_context(|| format!("deleting route {route:?}"))
    }

    async fn delete(&self, mut message: RouteMessage) -> Result<(), rtnetlink::Error> {
        // Like `ip route del`: match any scope.
        message.header.scope = RouteScope::NoWhere;
        match self.handle.route().del(message).execute().await {
            Err(error)
                if matches!(
                    errno(&error),
                    Some(libc::ESRCH) | Some(libc::ENOENT) | Some(libc::ENODEV)
                ) =>
            {
                Ok(())
            }
            result => result,
        }
    }

    /// Every route in table main, IPv4 and IPv6, that carries our [`ROUTE_PROTOCOL`].
    pub async fn routes_with_our_protocol(&self) -> anyhow::Result<Vec<OurRoute>> {
        Ok(self
            .installed_routes()
            .await?
            .into_iter()
            .map(|route| (route.destination, route.gateway, route.ifindex))
            .collect())
    }

    /// Like [`Netlink::routes_with_our_protocol`], with each route's metric.
    pub async fn installed_routes(&self) -> anyhow::Result<Vec<InstalledRoute>> {
        let mut ours = Vec::new();
        let dumps = [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ];
        for request in dumps {
            let mut routes = self.handle.route().get(request).execute();
            while let Some(route) = routes.try_next().await.context("dumping routes")? {
                if let Some(entry) = our_route(&route) {
                    ours.push(entry);
                }
            }
        }
        Ok(ours)
    }

    /// Opens a second rtnetlink socket, in the calling thread's network namespace, subscribed
    /// to the changes of links, addresses and routes (IPv4 and IPv6). Its task is spawned on
    /// the current tokio runtime (this must be called inside one) and ends with the returned
    /// [`Changes`]. Subscribe before dumping, so that nothing changes unseen in between.
    pub fn subscribe(&self) -> anyhow::Result<Changes> {
        let (mut connection, _, mut messages) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Route,
        ])
        .context("opening an rtnetlink socket for link, address and route changes")?;
        // The kernel does not wait for a slow reader: past the buffer, notifications are lost
        // (and reported as an overrun). 1 MiB holds thousands of route changes.
        connection
            .socket_mut()
            .socket_mut()
            .set_rx_buf_sz(1 << 20)
            .context("sizing the rtnetlink notification buffer")?;
        let (sender, changes) = tokio::sync::mpsc::unbounded_channel();
        let own_port = self.port;
        let forward = async move {
            while let Some((message, _)) = messages.next().await {
                if let Some(change) = classify(&message, own_port) {
                    if sender.send(change).is_err() {
                        break;
                    }
                }
            }
        };
        let task = tokio::spawn(async move {
            tokio::select! {
                () = connection => {}
                () = forward => {}
            }
        });
        Ok(Changes { changes, task })
    }
}

/// What a notification of [`Changes`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A route with our [`ROUTE_PROTOCOL`] in table main, changed by another socket than the
    /// [`Netlink`] that subscribed (someone deleted or replaced one of ours).
    OurRoute,
    /// A link appeared, went, or changed (up, down, renamed).
    Link,
    /// An address was added or removed.
    Address,
    /// Notifications were lost (the buffer overflowed), or one came that is none of the above:
    /// anything may have changed.
    Unknown,
}

/// Link, address and route changes in the network namespace, from [`Netlink::subscribe`].
/// Left out: routes of other protocols, and the route changes that the subscribing [`Netlink`]
/// made itself.
#[derive(Debug)]
pub struct Changes {
    changes: tokio::sync::mpsc::UnboundedReceiver<Change>,
    /// Serves the socket and classifies its notifications into `changes`.
    task: tokio::task::JoinHandle<()>,
}

impl Changes {
    /// The next change; `None` once the socket has failed (no change will be seen again).
    pub async fn next(&mut self) -> Option<Change> {
        self.changes.recv().await
    }

    /// A change that has already arrived, without waiting.
    pub fn try_next(&mut self) -> Option<Change> {
        self.changes.try_recv().ok()
    }
}

impl Drop for Changes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What `message` is about; `None` for a route of another protocol, or one changed through
/// port `own_port`.
fn classify(message: &NetlinkMessage<RouteNetlinkMessage>, own_port: u32) -> Option<Change> {
    let NetlinkPayload::InnerMessage(inner) = &message.payload else {
        return Some(Change::Unknown);
    };
    Some(match inner {
        RouteNetlinkMessage::NewRoute(route) | RouteNetlinkMessage::DelRoute(route) => {
            if message.header.port_number == own_port || our_route(route).is_none() {
                return None;
            }
            Change::OurRoute
        }
        RouteNetlinkMessage::NewLink(_) | RouteNetlinkMessage::DelLink(_) => Change::Link,
        RouteNetlinkMessage::NewAddress(_) | RouteNetlinkMessage::DelAddress(_) => Change::Address,
        _ => Change::Unknown,
    })
}

/// The errno of the kernel's refusal behind `error` (from any [`Netlink`] call), if it was one.
pub fn kernel_errno(error: &anyhow::Error) -> Option<i32> {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<rtnetlink::Error>())
        .and_then(errno)
}

/// The errno of a kernel NACK, if that is what `error` is.
fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(ErrorMessage {
            code: Some(code), ..
        }) => Some(code.get().abs()),
        _ => None,
    }
}

fn address_message(
    index: u32,
    addr: IpAddr,
    prefix_len: u8,
    peer: Option<IpAddr>,
) -> anyhow::Result<AddressMessage> {
    let (family, max_len) = match addr {
        IpAddr::V4(_) => (AddressFamily::Inet, 32),
        IpAddr::V6(_) => (AddressFamily::Inet6, 128),
    };
    if prefix_len > max_len {
        bail!("address {addr}/{prefix_len}: prefix longer than {max_len}");
    }
    if let Some(peer) = peer {
        if peer.is_ipv4() != addr.is_ipv4() {
            bail!("address {addr}: peer {peer} is of the other address family");
        }
    }
    let mut message = AddressMessage::default();
    message.header.family = family;
    message.header.prefix_len = prefix_len;
    message.header.index = index;
    // IFA_LOCAL is our address; IFA_ADDRESS is the remote end on a point-to-point link and our
    // own address otherwise (rtnetlink(7), iproute2's `ip addr add LOCAL peer REMOTE`).
    message.attributes.push(AddressAttribute::Local(addr));
    message
        .attributes
        .push(AddressAttribute::Address(peer.unwrap_or(addr)));
    if let (IpAddr::V4(v4), None) = (addr, peer) {
        if prefix_len < 31 {
            let host_bits = u32::MAX >> prefix_len;
            message
                .attributes
                .push(AddressAttribute::Broadcast(Ipv4Addr::from(
                    u32::from(v4) | host_bits,
                )));
        }
    }
    Ok(message)
}

fn route_message(
    dest: IpNet,
    via: Option<IpAddr>,
    dev: u32,
    metric: Option<u32>,
) -> anyhow::Result<RouteMessage> {
    // The kernel rejects a destination with host bits set; 10.1.2.3/16 means 10.1.0.0/16.
    let dest = dest.trunc();
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dest.addr(), dest.prefix_len())
        .with_context(|| format!("route destination {dest}"))?
        .output_interface(dev)
        .table_id(u32::from(RouteHeader::RT_TABLE_MAIN))
        .protocol(RouteProtocol::from(ROUTE_PROTOCOL));
    match via {
        Some(gateway) => {
            builder = builder
                .gateway(gateway)
                .with_context(|| format!("route {dest} via {gateway}"))?;
        }
        // A route without a gateway is on-link, as `ip route add DEST dev DEV` makes it.
        None => builder = builder.scope(RouteScope::Link),
    }
    if let Some(metric) = metric {
        builder = builder.priority(metric);
    }
    Ok(builder.build())
}

/// `route` if it is ours, in table main, and has an output interface.
fn our_route(route: &RouteMessage) -> Option<InstalledRoute> {
    if u8::from(route.header.protocol) != ROUTE_PROTOCOL {
        return None;
    }
    let mut table = u32::from(route.header.table);
    let mut destination = None;
    let mut gateway = None;
    let mut oif = None;
    let mut metric = 0;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Table(id) => table = *id,
            RouteAttribute::Destination(address) => destination = ip_of(address),
            RouteAttribute::Gateway(address) => gateway = ip_of(address),
            // An IPv4 route through an IPv6 gateway (RTA_VIA).
            RouteAttribute::Via(RouteVia::Inet6(v6)) => gateway = Some(IpAddr::V6(*v6)),
            RouteAttribute::Via(RouteVia::Inet(v4)) => gateway = Some(IpAddr::V4(*v4)),
            RouteAttribute::Oif(index) => oif = Some(*index),
            RouteAttribute::Priority(priority) => metric = *priority,
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let prefix_len = route.header.destination_prefix_length;
    // No RTA_DST means the default route of the family.
    let destination = destination.unwrap_or(match route.header.address_family {
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    });
    Some(InstalledRoute {
        destination: IpNet::new(destination, prefix_len).ok()?,
        gateway,
        ifindex: oif?,
        metric,
    })
}

fn ip_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_to_point_addresses_put_the_peer_in_ifa_address() {
        let local = IpAddr::from([10, 8, 0, 1]);
        let peer = IpAddr::from([10, 8, 0, 2]);
        let message = address_message(7, local, 32, Some(peer)).unwrap();
        assert_eq!(message.header.index, 7);
        assert_eq!(message.header.prefix_len, 32);
        assert!(message.attributes.contains(&AddressAttribute::Local(local)));
        assert!(message
            .attributes
            .contains(&AddressAttribute::Address(peer)));
        assert!(!message
            .attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Broadcast(_))));
    }

    #[test]
    fn subnet_addresses_get_their_broadcast() {
        let message = address_message(3, IpAddr::from([10, 9, 8, 1]), 24, None).unwrap();
        assert!(message
            .attributes
            .contains(&AddressAttribute::Broadcast(Ipv4Addr::new(10, 9, 8, 255))));
    }

    #[test]
    fn bad_prefixes_and_mixed_families_are_errors() {
        assert!(address_message(1, IpAddr::from([10, 0, 0, 1]), 33, None).is_err());
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert!(address_message(1, IpAddr::from([10, 0, 0, 1]), 32, Some(v6)).is_err());
        let dest: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(
            route_message(dest, Some(v6), 1, None).is_ok(),
            "v4 via v6 is RTA_VIA"
        );
        let dest6: IpNet = "fd00::/8".parse().unwrap();
        assert!(route_message(dest6, Some(IpAddr::from([10, 0, 0, 1])), 1, None).is_err());
    }

    #[test]
    fn route_messages_carry_our_protocol_and_a_truncated_destination() {
        let dest: IpNet = "10.1.2.3/16".parse().unwrap();
        let message = route_message(dest, None, 4, Some(20)).unwrap();
        assert_eq!(u8::from(message.header.protocol), ROUTE_PROTOCOL);
        assert_eq!(message.header.table, RouteHeader::RT_TABLE_MAIN);
        assert_eq!(message.header.scope, RouteScope::Link);
        assert!(message
            .attributes
            .contains(&RouteAttribute::Destination(RouteAddress::Inet(
                Ipv4Addr::new(10, 1, 0, 0)
            ))));
        assert!(message.attributes.contains(&RouteAttribute::Priority(20)));
        assert!(message.attributes.contains(&RouteAttribute::Oif(4)));
        assert_eq!(
            our_route(&message),
            Some(InstalledRoute {
                destination: "10.1.0.0/16".parse().unwrap(),
                gateway: None,
                ifindex: 4,
                metric: 20,
            })
        );
    }

    #[test]
    fn notifications_are_classified_leaving_out_other_and_own_route_changes() {
        use rtnetlink::packet_core::NetlinkHeader;
        use rtnetlink::packet_route::link::LinkMessage;
        let notification = |port: u32, inner: RouteNetlinkMessage| {
            let mut header = NetlinkHeader::default();
            header.port_number = port;
            NetlinkMessage::new(header, NetlinkPayload::InnerMessage(inner))
        };
        let ours = route_message("10.1.0.0/16".parse().unwrap(), None, 4, None).unwrap();
        let mut static_route = ours.clone();
        static_route.header.protocol = RouteProtocol::Static;
        let cases = [
            (
                notification(7, RouteNetlinkMessage::DelRoute(ours.clone())),
                Some(Change::OurRoute),
            ),
            (
                notification(9, RouteNetlinkMessage::NewRoute(ours.clone())),
                None,
            ),
            (
                notification(3, RouteNetlinkMessage::NewRoute(static_route)),
                None,
            ),
            (
                notification(0, RouteNetlinkMessage::DelRoute(ours)),
                Some(Change::OurRoute),
            ),
            (
                notification(0, RouteNetlinkMessage::NewLink(LinkMessage::default())),
                Some(Change::Link),
            ),
            (
                notification(
                    0,
                    RouteNetlinkMessage::NewAddress(AddressMessage::default()),
                ),
                Some(Change::Address),
            ),
            (
                NetlinkMessage::new(
                    NetlinkHeader::default(),
                    NetlinkPayload::Overrun(Vec::new()),
                ),
                Some(Change::Unknown),
            ),
        ];
        for (message, expected) in cases {
            assert_eq!(classify(&message, 9), expected, "{message:?}");
        }
    }

    #[test]
    fn routes_through_a_gateway_of_the_other_family_keep_it() {
        let dest: IpNet = "10.5.0.0/16".parse().unwrap();
        let gateway = IpAddr::V6("fe80::1".parse().unwrap());
        let message = route_message(dest, Some(gateway), 2, None).unwrap();
        let route = our_route(&message).unwrap();
        assert_eq!((route.gateway, route.metric), (Some(gateway), 0));
        let mut foreign = message;
        foreign.header.protocol = RouteProtocol::Static;
        assert_eq!(our_route(&foreign), None);
    }
}
