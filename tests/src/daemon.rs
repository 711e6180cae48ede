//! The `vpn-daemon` binary under test: built once per test process, started inside a namespace,
//! stopped by PID (never by name), and queried through its own `status --json` command.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::OnceLock,
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _};

use crate::{wait_for, NetNs};

/// `RUST_LOG` of [`Daemon::start`].
pub const DEFAULT_RUST_LOG: &str = "debug,vpn_ebpf=info";

/// Path of the `vpn-daemon` binary, built by cargo if it is not up to date (in the profile of
/// the tests: `cargo test --release` gets a release daemon).
pub fn binary() -> anyhow::Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| build_binary().map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(|error| anyhow!(error))
}

fn build_binary() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--package",
            "vpn-daemon",
            "--bin",
            "vpn-daemon",
            "--message-format=json",
        ])
        // `cargo test --release` (benchmarks) runs a release daemon, as the image ships.
        .args(if cfg!(debug_assertions) {
            &[][..]
        } else {
            &["--release"][..]
        })
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build for vpn-daemon")?;
    if !output.status.success() {
        bail!("cargo build of vpn-daemon failed ({})", output.status);
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["target"]["name"] == "vpn-daemon")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| anyhow!("cargo build did not report the vpn-daemon executable"))
}

/// A `vpn-daemon run` process inside a namespace; killed by PID if still running when dropped.
pub struct Daemon {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts `vpn-daemon run --config CONFIG` in `ns`; its stderr goes to `log`. The daemon
    /// logs at debug, its eBPF programs only at info (that is, not per packet: floods in the
    /// tests would fill the log); pass `RUST_LOG` to [`Daemon::start_binary`] for more.
    pub fn start(ns: &NetNs, config: &Path, socket: &Path, log: &Path) -> anyhow::Result<Self> {
        Self::start_binary(&binary()?, DEFAULT_RUST_LOG, ns, config, socket, log)
    }

    /// Like [`Daemon::start`] with a given binary (e.g. a release build) and `RUST_LOG` value.
    pub fn start_binary(
        binary: &Path,
        rust_log: &str,
        ns: &NetNs,
        config: &Path,
        socket: &Path,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = ns
            .command(binary.to_str().context("binary path is not UTF-8")?)?
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .context("starting vpn-daemon")?;
        Ok(Self {
            child: Some(child),
            socket: socket.to_owned(),
            log: log.to_owned(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the daemon answers `status`, failing early (with its log) if it exits.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<serde_json::Value> {
        let child = self.child.as_mut().context("daemon already stopped")?;
        let socket = self.socket.clone();
        let mut exited = None;
        let status = wait_for("vpn-daemon to answer status", timeout, || {
            if let Ok(Some(code)) = child.try_wait() {
                exited = Some(code);
                return Some(None);
            }
            status_json(&socket).ok().map(Some)
        })?;
        match (status, exited) {
            (Some(status), _) => Ok(status),
            (None, code) => bail!(
                "vpn-daemon exited ({code:?}) before it was ready:\n{}",
                self.log()
            ),
        }
    }

    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        status_json(&self.socket)
    }

    pub fn signal(&self, signal: i32) -> anyhow::Result<()> {
        signal_child(
            self.child.as_ref().context("daemon already stopped")?,
            signal,
        )
    }

    /// Sends SIGTERM and waits for the daemon to exit.
    /// If it does not exit in time it is killed and the timeout is the error.
    pub fn stop(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("daemon already stopped")?;
        let status = signal_child(&child, libc::SIGTERM).and_then(|()| {
            wait_for("vpn-daemon to exit after SIGTERM", timeout, || {
                child.try_wait().ok().flatten()
            })
        });
        if status.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        }
        status
    }
}

impl Drop for Daemon {
    /// A failing test still gets a clean shutdown (XDP detached, pins removed) when the daemon
    /// answers SIGTERM; SIGKILL only if it does not.
    fn drop(&mut self) {
        if self.child.is_some() && self.stop(Duration::from_secs(5)).is_err() {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn signal_child(child: &Child, signal: i32) -> anyhow::Result<()> {
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    // SAFETY: kill(2) on the PID of a child we started and have not reaped.
    if unsafe { libc::kill(pid, signal) } != 0 {
        bail!("kill({pid}, {signal}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// `vpn-daemon status --json --socket SOCKET`, parsed.
pub fn status_json(socket: &Path) -> anyhow::Result<serde_json::Value> {
    let output = Command::new(binary()?)
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .output()
        .context("running vpn-daemon status")?;
    if !output.status.success() {
        bail!(
            "vpn-daemon status: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    serde_json::from_slice(&output.stdout).context("parsing vpn-daemon status --json")
}
