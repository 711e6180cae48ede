//! One tunnel runtime for every role: the single peer of a `client` or `p2p` tunnel and the
//! many clients of a `server` run on the same data path ([`datapath`]), with the same peers
//! ([`peer`]: keys and their lifecycle, transport, keepalive activity), counters, tun (with TCP
//! offloads) and UDP/TCP transports. Only the session side differs: [`single`] runs one session
//! with one peer, [`server`] one per client with pool, peer ids and ccd.
//!
//! ```text
//!               ┌─────────────── TunnelRuntime (one per [[tunnel]]) ───────────────┐
//! config, PKI ─►│ setup: tun + TCP offloads, socket, session config, protection    │
//!               │                                                                  │
//!               │ control task (tokio): SingleDriver | ServerDriver, Session(s)    │─► bus: TunnelState (watch)
//!               │      ▲ ControlInput (try_send)       │ Peers (ArcSwap)           │        ClientEvent (broadcast)
//!               │      │                               ▼                           │
//!               │ data-path threads: tun→wire, wire→tun (UDP), TCP readers/writers │
//!               └──────────────────────────────────────────────────────────────────┘
//! ```
//! The runtime installs no routes itself: it publishes what it knows (pushed routes, connected
//! clients and their iroutes) and the daemon's route planner turns that into the one route
//! table.
mod counters;
mod datapath;
mod peer;
mod server;
mod setup;
mod single;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};

use crate::config::{Addressing, Config, Tunnel};
use crate::io::netlink::Netlink;
use crate::io::tun::TunDevice;
use crate::proto::vocabulary::{TlsRole, Topology, Transport};
use crate::state::{Bus, LinkPhase, TunnelPublisher};
use datapath::{spawn_named, ControlInput, DataPath};
use server::ServerDriver;
use setup::ProtectionSource;
use single::SingleDriver;

/// Inputs from the data path the control task may fall behind on before they are dropped
/// (and counted): control packets are retransmitted by the peer.
const CONTROL_QUEUE: usize = 4096;

/// A running tunnel of any role.
pub(crate) struct TunnelRuntime {
    name: String,
    server: bool,
    path: Arc<DataPath>,
    publisher: TunnelPublisher,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TunnelRuntime {
    /// Creates the tun device and socket and starts the tunnel; its state and events go on
    /// `bus`.
    pub(crate) async fn start(
        config: &Config,
        tunnel: &Tunnel,
        netlink: Arc<Netlink>,
        bus: &Bus,
    ) -> anyhow::Result<TunnelRuntime> {
        let role = setup::tls_role(tunnel);
        let server = matches!(tunnel.addressing, Addressing::Server { .. });
        let tls = setup::tls_setup(&config.pki, tunnel, role)?;
        let protection = ProtectionSource::load(&tunnel.control_protection)?;
        let session_config = setup::session_config(tunnel, tls);

        let device = setup::create_tun(&tunnel.device)?;
        let ifindex = device.ifindex();
        netlink
            .set_link_up(ifindex, Some(u32::from(tunnel.mtu)))
            .await?;
        configure_addresses(&netlink, ifindex, tunnel).await?;

        let udp = match tunnel.transport {
            Transport::Udp => Some(Arc::new(setup::bind_udp(tunnel)?)),
            Transport::Tcp => None,
        };
        // Only a server, or a p2p TLS server without a remote, accepts;
        // everyone else dials out.
        let listener = match tunnel.transport {
            Transport::Tcp if server || (role == TlsRole::Server && tunnel.remotes.is_empty()) => {
                let bind = setup::local_address(tunnel);
                Some(TcpListener::bind(bind).with_context(|| format!("listening on TCP {bind}"))?)
            }
            _ => None,
        };
        let client_to_client = matches!(
            tunnel.addressing,
            Addressing::Server {
                client_to_client: true,
                ..
            }
        );
        let (input_tx, input_rx) = mpsc::channel::<ControlInput>(CONTROL_QUEUE);
        let path = Arc::new(DataPath::new(&tunnel.name, udp, client_to_client, input_tx));
        let mut parts = TunnelParts {
            device: None,
            threads: Vec::new(),
        };
        if let Err(error) = parts.spawn_threads(&path, &device, listener, tunnel) {
            parts.stop(&path).await;
            return Err(error);
        }
        parts.device = Some(device);

        let publisher = bus.publisher(
            &tunnel.name,
            if server {
                LinkPhase::WaitingForClients
            } else {
                SingleDriver::idle_phase(tunnel)
            },
        );
        let (stop, stop_rx) = watch::channel(false);
        let task = if server {
            let driver = match ServerDriver::new(
                tunnel,
                session_config,
                protection,
                path.clone(),
                publisher.clone(),
                parts,
            ) {
                Ok(driver) => driver,
                Err(error) => {
                    path.stop.store(true, Ordering::Relaxed);
                    publisher.remove();
                    return Err(error);
                }
            };
            tracing::info!(tunnel = %tunnel.name, local = %setup::local_address(tunnel), "multi-client server listening");
            tokio::spawn(driver.run(input_rx, stop_rx))
        } else {
            let driver = SingleDriver::new(
                tunnel.clone(),
                session_config,
                protection,
                path.clone(),
                publisher.clone(),
                netlink,
                parts,
            );
            tokio::spawn(driver.run(input_rx, stop_rx))
        };
        Ok(TunnelRuntime {
            name: tunnel.name.clone(),
            server,
            path,
            publisher,
            stop,
            task,
        })
    }

    /// The tunnel's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The data-path counters by name (a server's also count its clients).
    pub(crate) fn counters(&self) -> BTreeMap<String, u64> {
        let mut counters = self.path.counters.snapshot();
        if self.server {
            let state = self.publisher.current();
            counters.insert("clients_connected".into(), state.clients.len() as u64);
            counters.insert("clients_handshaking".into(), state.handshaking as u64);
        }
        counters
    }

    /// Says goodbye to the peer(s), stops the threads and removes the tun device (and with it
    /// the routes through it); the tunnel's entry leaves the node state.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.publisher.remove();
    }
}

/// The tun address of a server (its subnet, or net30's point-to-point pair) or of a p2p end;
/// a client learns its own from the push.
async fn configure_addresses(
    netlink: &Netlink,
    ifindex: u32,
    tunnel: &Tunnel,
) -> anyhow::Result<()> {
    match &tunnel.addressing {
        Addressing::Server {
            subnet,
            topology: Topology::Subnet,
            server_address,
            ..
        } => {
            netlink
                .add_address(
                    ifindex,
                    IpAddr::V4(*server_address),
                    subnet.prefix_len(),
                    None,
                )
                .await
        }
        Addressing::Server {
            topology: Topology::Net30,
            server_address,
            ..
        } => {
            // ifconfig SERVER SERVER+1, and the whole subnet through the tun (the route
            // planner's), as OpenVPN's helper.c.
            let peer = Ipv4Addr::from(u32::from(*server_address).wrapping_add(1));
            netlink
                .add_address(
                    ifindex,
                    IpAddr::V4(*server_address),
                    32,
                    Some(IpAddr::V4(peer)),
                )
                .await
        }
        Addressing::P2p { local, remote, .. } => {
            netlink
                .add_address(ifindex, IpAddr::V4(*local), 32, Some(IpAddr::V4(*remote)))
                .await
        }
        Addressing::Client => Ok(()),
    }
}

/// What a tunnel owns besides its sessions: the tun device and the data-path threads.
pub(crate) struct TunnelParts {
    device: Option<TunDevice>,
    threads: Vec<JoinHandle<()>>,
}

impl TunnelParts {
    fn spawn_threads(
        &mut self,
        path: &Arc<DataPath>,
        device: &TunDevice,
        listener: Option<TcpListener>,
        tunnel: &Tunnel,
    ) -> anyhow::Result<()> {
        let queue = device.queue(0).context("the tun device has no queue")?;
        let tun_read = queue.try_clone().context("cloning the tun queue")?;
        let tun_write = Arc::new(queue.try_clone().context("cloning the tun queue")?);
        let name = &tunnel.name;
        {
            let path = path.clone();
            self.threads
                .push(spawn_named(format!("{name}-tx"), move || {
                    datapath::tun_to_wire(&path, &tun_read)
                })?);
        }
        let path = path.clone();
        let thread = match (tunnel.transport, listener) {
            (Transport::Udp, _) => spawn_named(format!("{name}-rx"), move || {
                datapath::udp_to_tun(&path, &tun_write)
            })?,
            (Transport::Tcp, Some(listener)) => spawn_named(format!("{name}-accept"), move || {
                datapath::tcp_accept(&path, listener, &tun_write)
            })?,
            (Transport::Tcp, None) => {
                let remotes = tunnel.remotes.clone();
                spawn_named(format!("{name}-tcp"), move || {
                    datapath::tcp_dial(&path, &remotes, &tun_write)
                })?
            }
        };
        self.threads.push(thread);
        Ok(())
    }

    /// Stops the data-path threads and waits for them, then closes the tun (closing its last
    /// fd deletes the device, its addresses and its routes).
    async fn stop(&mut self, path: &DataPath) {
        path.stop.store(true, Ordering::Relaxed);
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
        drop(self.device.take());
    }
}
