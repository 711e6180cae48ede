//! The daemon's event loop. It owns the running state; signals and control requests are events.
//!
//! SIGHUP re-reads the config: a config that fails validation, or that changes something only a
//! restart can change, is refused with a log line and the running config stays in force.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use crate::{
    config::Config,
    io::{
        control::{ControlRequest, ControlSocket, Request, Response},
        ebpf::WanFilter,
        netlink::Netlink,
        route_reconciler::RouteReconciler,
    },
    plan::fast_path::{self, FastPathPlan},
    runtime::TunnelRuntime,
    state::{Bus, NodeState},
    status::{FastPathStatus, RoutesStatus, RuntimeStatus, Status, TunnelStatus, WanStatus},
};

/// The safety net under the event-driven fast-path sync. The maps follow the node state the
/// moment a link goes up or down or a server's clients change; this tick covers what has no
/// signal: a failed apply to retry (a tun or the LAN interface not there yet), a device
/// re-created with a new ifindex outside a reload.
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
    let started = async {
        let netlink = Arc::new(Netlink::new().await.context("opening rtnetlink")?);
        let routes =
            RouteReconciler::spawn(netlink.clone()).context("starting the route reconciler")?;
        anyhow::Ok((netlink, routes))
    };
    let (netlink, routes) = match started.await {
        Ok(started) => started,
        Err(error) => {
            wan.detach()?;
            return Err(error);
        }
    };
    let bus = Bus::new();
    let mut tunnels = Vec::new();
    for tunnel in &config.tunnels {
        match TunnelRuntime::start(&config, tunnel, netlink.clone(), &bus).await {
            Ok(runtime) => tunnels.push(runtime),
            Err(error) => {
                // Undo what already started before refusing to run.
                for runtime in tunnels {
                    runtime.stop().await;
                }
                if let Err(error) = routes.shutdown().await {
                    tracing::warn!(error = %format!("{error:#}"), "removing our routes");
                }
                wan.detach()?;
                return Err(error.context(format!("starting tunnel {}", tunnel.name)));
            }
        }
    }

    let (requests_tx, mut requests) = mpsc::channel::<ControlRequest>(16);
    let control_task = control.serve(requests_tx, bus.events().clone());
    let mut node = bus.watch();
    let mut state = Running {
        config_path: config_path.to_owned(),
        config,
        wan,
        started: Instant::now(),
        tunnels,
        netlink,
        bus,
        routes,
        fast_path: FastPathSync {
            cpus: aya::util::nr_cpus().map_or(1, |cpus| cpus as u32),
            applied: None,
            last_error: None,
        },
    };
    state.sync(&node.borrow_and_update().clone());
    let mut fast_path_fallback = tokio::time::interval(FAST_PATH_FALLBACK);
    fast_path_fallback.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    tracing::info!(node = %state.config.node.name, socket = %state.config.node.control_socket.display(), "running");
    loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = sighup.recv() => state.reload().await,
            Ok(()) = node.changed() => {
                let current = node.borrow_and_update().clone();
                state.sync(&current);
            }
            _ = fast_path_fallback.tick() => {
                let current = node.borrow().clone();
                state.sync_fast_path(&current);
            }
            Some((request, reply_to)) = requests.recv() => {
                let _ = reply_to.send(state.answer(request));
            }
        }
    }
    control_task.abort();
    for runtime in std::mem::take(&mut state.tunnels) {
        runtime.stop().await;
    }
    if let Err(error) = state.routes.shutdown().await {
        tracing::warn!(error = %format!("{error:#}"), "removing our routes");
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
    tunnels: Vec<TunnelRuntime>,
    netlink: Arc<Netlink>,
    /// Where the tunnels publish their state and client events.
    bus: Bus,
    /// Applies the route table to the kernel.
    routes: RouteReconciler,
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
        let node = self.bus.state();
        let desired = crate::plan::routes::route_table(&self.config, &node);
        let reconciler = self.routes.stats();
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
            routes: RoutesStatus {
                desired: desired
                    .summary()
                    .into_iter()
                    .map(|(kind, summary)| (kind.as_str().to_owned(), summary.winning as u64))
                    .collect(),
                installed: reconciler.installed as u64,
                unresolved: reconciler.unresolved as u64,
                last_error: reconciler.last_error,
            },
            tunnels: self
                .config
                .tunnels
                .iter()
                .map(|tunnel| {
                    let running = self
                        .tunnels
                        .iter()
                        .find(|runtime| runtime.name() == tunnel.name);
                    let state = node.get(&tunnel.name).filter(|_| running.is_some());
                    let runtime = running
                        .zip(state)
                        .map(|(runtime, state)| RuntimeStatus::new(state, runtime.counters()));
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
                        clients: state
                            .map(|state| state.clients.iter().map(Into::into).collect())
                            .unwrap_or_default(),
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
        let new_plan = fast_path::plan(&new, &self.bus.state(), self.fast_path.cpus);
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
            match TunnelRuntime::start(&new, tunnel, self.netlink.clone(), &self.bus).await {
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
        self.sync(&self.bus.state());
    }

    /// Brings the kernel in step with the node state: the route table (the reconciler applies
    /// it) and the eBPF maps.
    fn sync(&mut self, node: &NodeState) {
        let table = crate::plan::routes::route_table(&self.config, node);
        self.routes.set(table.desired());
        self.sync_fast_path(node);
    }

    /// Brings the eBPF maps in step with the config and the node state; cheap when nothing
    /// changed (the plan equals the applied one). Errors are retried at the next change or
    /// fallback tick.
    fn sync_fast_path(&mut self, node: &NodeState) {
        let plan = fast_path::plan(&self.config, node, self.fast_path.cpus);
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
