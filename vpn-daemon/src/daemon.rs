//! The daemon's event loop. It owns the running state; signals and control requests are events.
//!
//! SIGHUP re-reads the config: a config that fails validation, or that changes something only a
//! restart can change, is refused with a log line and the running config stays in force.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{broadcast, mpsc, Notify},
};

use crate::{
    config::{Config, Role, Tunnel},
    io::{
        control::{
            ClientEventRecord, ControlRequest, ControlSocket, Request, Response,
            DAEMON_EVENT_CAPACITY,
        },
        ebpf::WanFilter,
        ebpf_plan::{self, FastPathPlan, LinkState},
        netlink::Netlink,
        server::{ClientInfo, ServerRuntime},
        tunnel::{TunnelRuntime, TunnelRuntimeStatus},
    },
    status::{FastPathStatus, Status, TunnelStatus, WanStatus},
};

/// The safety net under the event-driven fast-path sync. Tunnel runtimes notify the daemon the
/// moment a link goes up or down or a server's clients change, and the maps follow at once;
/// this tick covers what has no signal: a failed apply to retry (a tun or the LAN interface
/// not there yet), a device re-created with a new ifindex outside a reload.
const FAST_PATH_FALLBACK: Duration = Duration::from_secs(1);

/// Runs the daemon until SIGTERM or SIGINT, then removes everything it installed.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    // Handlers first: a SIGTERM during start-up must still run the cleanup below, not kill us
    // with XDP attached and maps pinned.
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let config = Config::load(config_path)?;
    tracing::info!(summary = %config.summary(), "config loaded");

    let mut control = ControlSocket::bind(&config.node.control_socket)?;
    let mut wan = WanFilter::attach(
        &config.node.name,
        &config.interfaces.wan,
        config.interfaces.xdp_mode,
    )
    .with_context(|| format!("setting up the WAN filter on {}", config.interfaces.wan))?;
    let ebpf_log_task = match wan
        .take_log_reader()
        .map(|reader| reader.spawn())
        .transpose()
    {
        Ok(task) => task,
        Err(error) => {
            wan.detach()?;
            return Err(error);
        }
    };
    let netlink = Arc::new(Netlink::new().await.context("opening rtnetlink")?);
    let (events, _) = broadcast::channel(DAEMON_EVENT_CAPACITY);
    // One permit-storing signal for all runtimes: a notification while the loop is busy is
    // kept, several coalesce into one sync (which reads every tunnel's current state anyway).
    let link_changed = Arc::new(Notify::new());
    let mut tunnels = Vec::new();
    for tunnel in &config.tunnels {
        match Runtime::start(&config, tunnel, netlink.clone(), &events, &link_changed).await {
            Ok(runtime) => tunnels.push(runtime),
            Err(error) => {
                // Undo what already started before refusing to run.
                for runtime in tunnels {
                    Runtime::stop(runtime).await;
                }
                wan.detach()?;
                return Err(error.context(format!("starting tunnel {}", tunnel.name)));
            }
        }
    }

    let (requests_tx, mut requests) = mpsc::channel::<ControlRequest>(16);
    let control_task = control.serve(requests_tx, events.clone());
    let mut state = Running {
        config_path: config_path.to_owned(),
        config,
        wan,
        started: Instant::now(),
        tunnels,
        netlink,
        events,
        link_changed: link_changed.clone(),
        fast_path: FastPathSync {
            cpus: aya::util::nr_cpus().map_or(1, |cpus| cpus as u32),
            applied: None,
            last_error: None,
        },
    };
    state.sync_fast_path();
    let mut fast_path_fallback = tokio::time::interval(FAST_PATH_FALLBACK);
    fast_path_fallback.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    tracing::info!(node = %state.config.node.name, socket = %state.config.node.control_socket.display(), "running");
    loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = sighup.recv() => state.reload().await,
            _ = link_changed.notified() => state.sync_fast_path(),
            _ = fast_path_fallback.tick() => state.sync_fast_path(),
            Some((request, reply_to)) = requests.recv() => {
                let _ = reply_to.send(state.answer(request));
            }
        }
    }
    control_task.abort();
    for runtime in std::mem::take(&mut state.tunnels) {
        runtime.stop().await;
    }
    state.wan.detach()?;
    if let Some(task) = ebpf_log_task {
        task.abort();
    }
    drop(control);
    tracing::info!("stopped");
    Ok(())
}

struct Running {
    config_path: PathBuf,
    config: Config,
    wan: WanFilter,
    started: Instant,
    tunnels: Vec<Runtime>,
    netlink: Arc<Netlink>,
    /// Client events of every server tunnel, for `vpn-daemon events`.
    events: broadcast::Sender<ClientEventRecord>,
    /// Handed to every runtime: notified when a status the fast-path plan reads changes.
    link_changed: Arc<Notify>,
    fast_path: FastPathSync,
}

/// What the daemon last wrote into the eBPF maps.
struct FastPathSync {
    cpus: u32,
    /// The plan the maps hold; `None` forces the next sync to apply (after a reload, devices may
    /// have been re-created with new ifindexes).
    applied: Option<FastPathPlan>,
    /// The last apply error, logged once rather than on every retry.
    last_error: Option<String>,
}

/// A running tunnel: the multi-client server for `role = "server"`, the single-peer runtime for
/// client and p2p.
enum Runtime {
    Single(TunnelRuntime),
    Server(ServerRuntime),
}

impl Runtime {
    /// Starts `tunnel`; a server's client events are forwarded to `events` (tagged with the
    /// tunnel name) for as long as it runs; `link_changed` is notified on every status change
    /// the fast path reads.
    async fn start(
        config: &Config,
        tunnel: &Tunnel,
        netlink: Arc<Netlink>,
        events: &broadcast::Sender<ClientEventRecord>,
        link_changed: &Arc<Notify>,
    ) -> anyhow::Result<Self> {
        if tunnel.role == Role::Server {
            let server =
                ServerRuntime::start(config, tunnel, netlink, link_changed.clone()).await?;
            let mut server_events = server.subscribe();
            let (events, name) = (events.clone(), tunnel.name.clone());
            // Ends when the server stops (its event sender is dropped).
            tokio::spawn(async move {
                loop {
                    match server_events.recv().await {
                        Ok(event) => {
                            let _ = events.send(ClientEventRecord::new(&name, event));
                        }
                        Err(broadcast::error::RecvError::Lagged(lost)) => {
                            tracing::warn!(tunnel = %name, lost, "client events lost");
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
            Ok(Runtime::Server(server))
        } else {
            Ok(Runtime::Single(
                TunnelRuntime::start(config, tunnel, netlink, link_changed.clone()).await?,
            ))
        }
    }

    fn name(&self) -> &str {
        match self {
            Runtime::Single(runtime) => runtime.name(),
            Runtime::Server(runtime) => runtime.name(),
        }
    }

    fn status(&self) -> (TunnelRuntimeStatus, Vec<ClientInfo>) {
        match self {
            Runtime::Single(runtime) => (runtime.status(), Vec::new()),
            Runtime::Server(runtime) => (runtime.status(), runtime.clients()),
        }
    }

    async fn stop(self) {
        match self {
            Runtime::Single(runtime) => runtime.stop().await,
            Runtime::Server(runtime) => runtime.stop().await,
        }
    }
}

impl Running {
    fn answer(&self, request: Request) -> Response {
        match request {
            // The control socket streams events itself; this never reaches the event loop.
            Request::Events => Response::Error {
                message: "events are streamed by the control socket".to_owned(),
            },
            Request::Status => match self.status() {
                Ok(status) => Response::Status(Box::new(status)),
                Err(error) => Response::Error {
                    message: format!("{error:#}"),
                },
            },
        }
    }

    fn status(&self) -> anyhow::Result<Status> {
        Ok(Status {
            node: self.config.node.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            config_path: self.config_path.display().to_string(),
            config_summary: self.config.summary(),
            wan: WanStatus {
                interface: self.wan.interface().to_owned(),
                xdp_mode: self.wan.attached_mode().to_owned(),
                pin_dir: self.wan.pin_dir().display().to_string(),
                counters: self.wan.counters()?,
            },
            fast_path: FastPathStatus {
                attached: self.wan.attachments(),
                counters: self.wan.all_counters()?,
            },
            tunnels: self
                .config
                .tunnels
                .iter()
                .map(|tunnel| {
                    let (runtime, clients) = self
                        .tunnels
                        .iter()
                        .find(|runtime| runtime.name() == tunnel.name)
                        .map(Runtime::status)
                        .unzip();
                    TunnelStatus {
                        name: tunnel.name.clone(),
                        role: tunnel.role.to_string(),
                        transport: tunnel.transport.to_string(),
                        local: tunnel.local.map(|local| local.to_string()),
                        remotes: tunnel.remotes.iter().map(ToString::to_string).collect(),
                        device: tunnel.device.clone(),
                        state: runtime
                            .as_ref()
                            .map_or_else(|| "stopped".to_owned(), |runtime| runtime.state.clone()),
                        runtime,
                        clients: clients.unwrap_or_default(),
                    }
                })
                .collect(),
        })
    }

    async fn reload(&mut self) {
        let new = match Config::load(&self.config_path) {
            Ok(new) => new,
            Err(error) => {
                tracing::error!(%error, "SIGHUP: config refused, keeping the running config");
                return;
            }
        };
        if let Some(what) = restart_only_change(&self.config, &new) {
            tracing::error!(
                "SIGHUP: config refused, {what} changes only on restart; keeping the running config"
            );
            return;
        }
        let new_plan = ebpf_plan::plan(&new, &self.link_states(), self.fast_path.cpus);
        if let Err(error) = self.wan.apply(&new_plan) {
            tracing::error!(error = %format!("{error:#}"), "SIGHUP: updating the eBPF maps failed; keeping the running config");
            // Put the kernel back in step with the config we keep (at the next sync).
            self.fast_path.applied = None;
            return;
        }
        // Tunnels whose settings changed restart; the others keep their sessions. A server's
        // client config files are not part of its settings: they are read when each client
        // connects, so a change there restarts nothing and applies on the client's reconnect.
        let mut kept = Vec::new();
        for runtime in std::mem::take(&mut self.tunnels) {
            let old = self
                .config
                .tunnels
                .iter()
                .find(|tunnel| tunnel.name == runtime.name());
            let updated = new
                .tunnels
                .iter()
                .find(|tunnel| tunnel.name == runtime.name());
            if old.is_some() && old == updated && self.config.pki == new.pki {
                kept.push(runtime);
            } else {
                tracing::info!(tunnel = runtime.name(), "SIGHUP: stopping tunnel");
                runtime.stop().await;
            }
        }
        for tunnel in &new.tunnels {
            if kept.iter().any(|runtime| runtime.name() == tunnel.name) {
                continue;
            }
            match Runtime::start(
                &new,
                tunnel,
                self.netlink.clone(),
                &self.events,
                &self.link_changed,
            )
            .await
            {
                Ok(runtime) => kept.push(runtime),
                Err(error) => {
                    tracing::error!(tunnel = %tunnel.name, error = %format!("{error:#}"), "SIGHUP: cannot start tunnel")
                }
            }
        }
        self.tunnels = kept;
        tracing::info!(summary = %new.summary(), "SIGHUP: config reloaded");
        self.config = new;
        self.fast_path.applied = None;
        self.sync_fast_path();
    }

    /// Each running tunnel's state as the fast path needs it.
    fn link_states(&self) -> BTreeMap<String, LinkState> {
        self.tunnels
            .iter()
            .map(|runtime| {
                let (status, clients) = runtime.status();
                // A single-peer tunnel reports its one peer; a multi-client server each
                // connected client's outer address, admitted at XDP while connected.
                let peers: Vec<std::net::IpAddr> = if clients.is_empty() {
                    status
                        .peer
                        .as_deref()
                        .and_then(|peer| peer.parse::<SocketAddr>().ok())
                        .map(|peer| peer.ip())
                        .into_iter()
                        .collect()
                } else {
                    let unique: std::collections::BTreeSet<std::net::IpAddr> = clients
                        .iter()
                        .map(|client| client.real_address.ip())
                        .collect();
                    unique.into_iter().collect()
                };
                let state = LinkState {
                    established: status.state == "established",
                    peers,
                };
                (runtime.name().to_owned(), state)
            })
            .collect()
    }

    /// A multi-client server's tun also carries packets from its connected clients' iroutes
    /// (ccd files, known only at run time); the tun source policing must let them in, unless
    /// the tunnel lists its `allowed_sources` explicitly.
    fn allow_client_iroutes(&self, plan: &mut FastPathPlan) {
        for runtime in &self.tunnels {
            let Runtime::Server(server) = runtime else {
                continue;
            };
            let Some(tunnel) = self
                .config
                .tunnels
                .iter()
                .find(|tunnel| tunnel.name == server.name())
            else {
                continue;
            };
            if tunnel.fast_path.allowed_sources.is_some() {
                continue;
            }
            if let Some(sources) = plan.tun_sources.get_mut(&tunnel.device) {
                for client in server.clients() {
                    sources.extend(
                        client
                            .iroutes
                            .iter()
                            .map(|iroute| ipnet::IpNet::V4(*iroute)),
                    );
                }
            }
        }
    }

    /// Brings the eBPF maps in step with the config and the tunnels' current states; cheap when
    /// nothing changed (the plan equals the applied one). Errors are retried at the next
    /// signal or fallback tick.
    fn sync_fast_path(&mut self) {
        let mut plan = ebpf_plan::plan(&self.config, &self.link_states(), self.fast_path.cpus);
        self.allow_client_iroutes(&mut plan);
        if self.fast_path.applied.as_ref() == Some(&plan) {
            return;
        }
        let mut result = Ok(());
        if !plan.groups.is_empty() {
            if let Some(lan) = &self.config.interfaces.lan {
                result = self.wan.attach_lan(lan);
            }
        }
        match result.and_then(|()| self.wan.apply(&plan)) {
            Ok(()) => {
                self.fast_path.applied = Some(plan);
                self.fast_path.last_error = None;
            }
            Err(error) => {
                let message = format!("{error:#}");
                if self.fast_path.last_error.as_ref() != Some(&message) {
                    tracing::error!(error = %message, "updating the eBPF fast path (retrying)");
                    self.fast_path.last_error = Some(message);
                }
            }
        }
    }
}

/// What a running daemon cannot change in place, if `new` changes it.
fn restart_only_change(old: &Config, new: &Config) -> Option<&'static str> {
    if old.node != new.node {
        Some("[node]")
    } else if old.interfaces != new.interfaces {
        Some("[interfaces]")
    } else {
        None
    }
}
