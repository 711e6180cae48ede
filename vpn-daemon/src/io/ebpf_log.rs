//! The eBPF programs' own log (aya-log), in debug builds only. build.rs compiles `vpn-ebpf` with
//! its `log` feature and sets `cfg(ebpf_log)` for debug builds; release objects have no log code
//! and no ring buffer, and [`EBPF_LOGGING`] is false there.
//!
//! Records go to tracing under the target [`EBPF_LOG_TARGET`], so `RUST_LOG=vpn_ebpf=debug`
//! shows every drop with its reason and address. The level the programs log at is fixed at load
//! time from that same filter: with the default filter they only check one global and log nothing.

use anyhow::Context as _;
use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;

/// Whether this build's eBPF object carries aya-log calls (debug builds).
pub const EBPF_LOGGING: bool = cfg!(ebpf_log);

/// The tracing target of every record the programs log.
pub const EBPF_LOG_TARGET: &str = "vpn_ebpf";

/// The global in the eBPF object that gates each log call (aya-log-ebpf's `AYA_LOG_LEVEL`).
pub const LOG_LEVEL_GLOBAL: &str = "AYA_LOG_LEVEL";

/// aya-log's levels as the programs compare them: a call logs when its level is at most this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum EbpfLogLevel {
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

impl EbpfLogLevel {
    /// The most verbose level the current tracing subscriber wants for [`EBPF_LOG_TARGET`];
    /// `Off` in builds without eBPF logging.
    pub fn from_tracing() -> Self {
        use tracing::Level;
        if !EBPF_LOGGING {
            Self::Off
        } else if tracing::enabled!(target: "vpn_ebpf", Level::TRACE) {
            Self::Trace
        } else if tracing::enabled!(target: "vpn_ebpf", Level::DEBUG) {
            Self::Debug
        } else if tracing::enabled!(target: "vpn_ebpf", Level::INFO) {
            Self::Info
        } else if tracing::enabled!(target: "vpn_ebpf", Level::WARN) {
            Self::Warn
        } else if tracing::enabled!(target: "vpn_ebpf", Level::ERROR) {
            Self::Error
        } else {
            Self::Off
        }
    }
}

/// Loads `object` with the programs' log level set to `level` (ignored in builds without eBPF
/// logging, whose object has no such global).
pub fn load_object(object: &[u8], level: EbpfLogLevel) -> anyhow::Result<Ebpf> {
    let mut loader = aya::EbpfLoader::new();
    let level = level as u8;
    if EBPF_LOGGING {
        loader.override_global(LOG_LEVEL_GLOBAL, &level, true);
    }
    loader.load(object).context("loading the eBPF object")
}

/// Forwards aya-log records to tracing, keeping the level and naming the eBPF module.
pub struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let (module, message) = (record.target(), record.args());
        // tracing needs the level as a constant at each call site.
        match record.level() {
            log::Level::Error => tracing::error!(target: "vpn_ebpf", module, "{message}"),
            log::Level::Warn => tracing::warn!(target: "vpn_ebpf", module, "{message}"),
            log::Level::Info => tracing::info!(target: "vpn_ebpf", module, "{message}"),
            log::Level::Debug => tracing::debug!(target: "vpn_ebpf", module, "{message}"),
            log::Level::Trace => tracing::trace!(target: "vpn_ebpf", module, "{message}"),
        }
    }

    fn flush(&self) {}
}

/// Reads the programs' log ring buffer (taken out of `ebpf`) and forwards it through `logger`.
pub struct EbpfLogReader<L: log::Log> {
    logger: EbpfLogger<L>,
}

impl<L: log::Log> EbpfLogReader<L> {
    /// `None` in builds without eBPF logging.
    pub fn take(ebpf: &mut Ebpf, logger: L) -> anyhow::Result<Option<Self>> {
        if !EBPF_LOGGING {
            return Ok(None);
        }
        let logger = EbpfLogger::init_with_logger(ebpf, logger)
            .context("opening the eBPF log ring buffer")?;
        Ok(Some(Self { logger }))
    }

    /// Forwards every record waiting in the ring buffer.
    pub fn flush(&mut self) {
        self.logger.flush();
    }
}

impl<L: log::Log + Send + 'static> EbpfLogReader<L> {
    /// Forwards records as they arrive, until the task is aborted (needs a tokio runtime).
    pub fn spawn(self) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        // SAFETY: the reader owns the ring buffer's MapData, so its fd stays open and the same
        // for as long as the AsyncFd owns the reader, and as_raw_fd always returns that fd.
        let mut ring =
            unsafe { AsyncFd::register_with_interest(self, tokio::io::Interest::READABLE) }
                .map_err(std::io::Error::from)
                .context("watching the eBPF log ring buffer")?;
        Ok(tokio::spawn(async move {
            loop {
                let Ok(mut ready) = ring.readable_mut().await else {
                    tracing::warn!("eBPF log ring buffer no longer readable; eBPF logging stops");
                    return;
                };
                ready.get_inner_mut().flush();
                ready.clear_ready();
            }
        }))
    }
}

impl<L: log::Log> std::os::fd::AsRawFd for EbpfLogReader<L> {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.logger.as_raw_fd()
    }
}
