//! The daemon's event loop. It owns the running state; signals and control requests are events.
//!
//! SIGHUP re-reads the config: a config that fails validation, or that changes something only a
//! restart can change, is refused with a log line and the running config stays in force.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use vpn_common::wan::{TunnelPortKey, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    config::{Config, Role, Transport, Tunnel},
    io::{
        control::{ControlRequest, ControlSocket, Request, Response},
        ebpf::WanFilter,
        netlink::Netlink,
        server::{ClientInfo, ServerRuntime},
        tunnel::{TunnelRuntime, TunnelRuntimeStatus},
    },
    status::{Status, TunnelStatus, WanStatus},
};

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
    wan.set_tunnel_ports(&tunnel_ports(&config))?;
    let netlink = Arc::new(Netlink::new().await.context("opening rtnetlink")?);
    let mut tunnels = Vec::new();
    for tunnel in &config.tunnels {
        match Runtime::start(&config, tunnel, netlink.clone()).await {
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
    let control_task = control.serve(requests_tx);
    let mut state = Running {
        config_path: config_path.to_owned(),
        config,
        wan,
        started: Instant::now(),
        tunnels,
        netlink,
    };

    tracing::info!(node = %state.config.node.name, socket = %state.config.node.control_socket.display(), "running");
    loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = sighup.recv() => state.reload().await,
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
}

/// A running tunnel: the multi-client server for `role = "server"`, the single-peer runtime for
/// client and p2p.
enum Runtime {
    Single(TunnelRuntime),
    Server(ServerRuntime),
}

impl Runtime {
    async fn start(
        config: &Config,
        tunnel: &Tunnel,
        netlink: Arc<Netlink>,
    ) -> anyhow::Result<Self> {
        if tunnel.role == Role::Server {
            Ok(Runtime::Server(
                ServerRuntime::start(config, tunnel, netlink).await?,
            ))
        } else {
            Ok(Runtime::Single(
                TunnelRuntime::start(config, tunnel, netlink).await?,
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
        if let Err(error) = self.wan.set_tunnel_ports(&tunnel_ports(&new)) {
            tracing::error!(error = %format!("{error:#}"), "SIGHUP: updating tunnel ports failed; keeping the running config");
            // Put the kernel back in step with the config we keep.
            if let Err(error) = self.wan.set_tunnel_ports(&tunnel_ports(&self.config)) {
                tracing::error!(error = %format!("{error:#}"), "restoring tunnel ports");
            }
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
            match Runtime::start(&new, tunnel, self.netlink.clone()).await {
                Ok(runtime) => kept.push(runtime),
                Err(error) => {
                    tracing::error!(tunnel = %tunnel.name, error = %format!("{error:#}"), "SIGHUP: cannot start tunnel")
                }
            }
        }
        self.tunnels = kept;
        tracing::info!(summary = %new.summary(), "SIGHUP: config reloaded");
        self.config = new;
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

/// The transport ports the WAN filter must recognise as tunnel traffic.
fn tunnel_ports(config: &Config) -> BTreeSet<TunnelPortKey> {
    config
        .tunnels
        .iter()
        .filter_map(|tunnel| {
            let protocol = match tunnel.transport {
                Transport::Udp => IPPROTO_UDP,
                Transport::Tcp => IPPROTO_TCP,
            };
            tunnel
                .listen_port()
                .map(|port| TunnelPortKey::new(protocol, port))
        })
        .collect()
}
