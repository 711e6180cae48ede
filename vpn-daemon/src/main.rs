//! `vpn-daemon`: run the appliance daemon, check a config, or ask a running daemon for its status.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use vpn_daemon::{
    config::Config,
    import::{import_openvpn, ImportOptions},
    io::control::{self, Request, Response},
};

/// Where control sockets live unless the config says otherwise.
const DEFAULT_SOCKET_DIR: &str = "/run/vpn-daemon";

/// `--version`: also says whether the eBPF programs carry aya-log calls (debug builds only; the
/// image build refuses a daemon that does).
#[cfg(ebpf_log)]
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\neBPF logging: compiled in (debug build)"
);
#[cfg(not(ebpf_log))]
const LONG_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\neBPF logging: not compiled in");

#[derive(Parser)]
#[command(
    version,
    long_version = LONG_VERSION,
    about = "OpenVPN-compatible, eBPF-accelerated site-to-site VPN daemon"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground until SIGTERM/SIGINT (SIGHUP reloads the config).
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file: prints a one-line summary, or FILE:LINE:COL: reason and exits 1.
    CheckConfig { file: PathBuf },
    /// Translate an OpenVPN 2.6 config (server, client or p2p) into this daemon's TOML, on
    /// stdout. Ignored options are listed in the output's header; options that cannot be
    /// honoured are errors (FILE:LINE: option: reason, all of them, exit 1, nothing on stdout).
    ImportOpenvpn {
        /// The OpenVPN config file.
        file: PathBuf,
        /// The client-config-dir to check and use (default: the config's client-config-dir).
        #[arg(long, value_name = "DIR")]
        ccd: Option<PathBuf>,
        /// Write inline <ca>, <cert>, <key>, <tls-auth>, <tls-crypt>, <crl-verify> blocks to
        /// files in DIR (created, mode 0600; existing files are never overwritten). Without it an
        /// inline block is an error.
        #[arg(long, value_name = "DIR")]
        write_inline: Option<PathBuf>,
        /// The WAN interface (default eth0, flagged as a placeholder in the output).
        #[arg(long, value_name = "IFACE")]
        wan: Option<String>,
        /// The LAN interface, if any.
        #[arg(long, value_name = "IFACE")]
        lan: Option<String>,
        /// The node name (default: from the file name).
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
        /// The tunnel name (default: from the file name).
        #[arg(long, value_name = "NAME")]
        tunnel: Option<String>,
    },
    /// Show the status of a running daemon.
    Status {
        /// Control socket to talk to (default: the only socket in /run/vpn-daemon).
        #[arg(long, conflicts_with = "config")]
        socket: Option<PathBuf>,
        /// Take the control socket from this config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print one JSON line per client-connected / client-disconnected event of the running
    /// daemon's server tunnels, until interrupted.
    Events {
        /// Control socket to talk to (default: the only socket in /run/vpn-daemon).
        #[arg(long, conflicts_with = "config")]
        socket: Option<PathBuf>,
        /// Take the control socket from this config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(config) => {
                println!("{}", config.summary());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("{error}");
                ExitCode::FAILURE
            }
        },
        Command::ImportOpenvpn {
            file,
            ccd,
            write_inline,
            wan,
            lan,
            node,
            tunnel,
        } => {
            let options = ImportOptions {
                ccd_dir: ccd,
                write_inline,
                wan,
                lan,
                node,
                tunnel,
            };
            match import_openvpn(&file, &options) {
                Ok(imported) => {
                    print!("{}", imported.toml);
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("{error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config } => report(run(&config)),
        Command::Status {
            socket,
            config,
            json,
        } => report(status(socket, config, json)),
        Command::Events { socket, config } => report(events(socket, config)),
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("vpn-daemon: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: &Path) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: log files and the appliance's captured logs stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(vpn_daemon::daemon::run(config))
}

fn control_socket(socket: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(match (socket, config) {
        (Some(socket), _) => socket,
        (None, Some(config)) => Config::load(&config)?.node.control_socket,
        (None, None) => only_socket_in(Path::new(DEFAULT_SOCKET_DIR))?,
    })
}

fn events(socket: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<()> {
    let socket = control_socket(socket, config)?;
    control::follow_events(&socket, |record| {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        serde_json::to_writer(&mut stdout, record)?;
        // Flushed per line: a pipe reader sees each event as it happens.
        writeln!(stdout)?;
        stdout.flush()?;
        Ok(())
    })
}

fn status(socket: Option<PathBuf>, config: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let socket = control_socket(socket, config)?;
    match control::request(&socket, &Request::Status)? {
        Response::Status(status) if json => {
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(())
        }
        Response::Status(status) => {
            print!("{}", status.render_text());
            Ok(())
        }
        Response::Error { message } => bail!("daemon answered: {message}"),
        Response::Event(_) => bail!("daemon answered a status request with an event"),
    }
}

fn only_socket_in(dir: &Path) -> anyhow::Result<PathBuf> {
    let sockets: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("no daemon running? cannot read {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "sock"))
        .collect();
    match sockets.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "no control socket in {} (is vpn-daemon running?)",
            dir.display()
        ),
        many => bail!(
            "several daemons run here; pick one with --socket: {}",
            many.iter()
                .map(|path| path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
