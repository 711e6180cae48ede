//! Project tasks: `cargo xtask setup | test | fuzz | demo | vm-test | build-image | bench`. Every
//! task runs `setup` first, so a fresh machine needs nothing but cargo.

mod bench;
mod demo;
mod fuzz;
mod image;
mod setup;
mod test;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Tasks of the vpn appliance workspace")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: apt packages, rustup components, bpf-linker (idempotent).
    Setup,
    /// Formatting, clippy (warnings denied), every test tier, then every fuzz target briefly
    /// (VPN_FUZZ_SECONDS each, default 10); privileged tiers need root.
    Test,
    /// Builds the cargo-fuzz targets (nightly) and runs each for a while; fails on a crash and
    /// prints where the crash input was saved.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = fuzz::DEFAULT_SECONDS)]
        seconds: u32,
        /// Targets to run (default: all of vpn-daemon/fuzz).
        targets: Vec<String>,
    },
    /// Build the appliance image, boot two sites and their hosts in qemu, show the tunnel up,
    /// traffic crossing it and `vpn-daemon status` from both appliances, then shut down.
    Demo {
        /// Keep the VMs running until Ctrl-C instead of shutting down after showing it.
        #[arg(long)]
        hold: bool,
    },
    /// Boots VM topologies under qemu (TCG) and runs the end-to-end scenarios: `list` names them;
    /// none given runs all. Logs, consoles and pcaps in <target>/vm-test/<scenario>/.
    VmTest {
        /// Only the short subset CI runs.
        #[arg(long)]
        smoke: bool,
        /// Scenarios to run (default: all).
        scenarios: Vec<String>,
    },
    /// The appliance disk image (GPT: ESP with systemd-boot and A/B slots, APPCONFIG) and the
    /// direct-boot artifacts, in <target>/image/; prints path, size and sha256.
    BuildImage {
        /// Site TOML for the APPCONFIG partition (stored as site.toml).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// Network file for the APPCONFIG partition (stored as network; see image/README.md).
        #[arg(long)]
        network: Option<std::path::PathBuf>,
        /// More files for the APPCONFIG partition (certificates, keys).
        #[arg(long = "file")]
        files: Vec<std::path::PathBuf>,
        /// Output directory (default <target>/image).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Builds the image and checks what no VM topology covers: reproducible (a second build gives
    /// the same bytes, the FATs fsck clean), partition (an image with its site config on APPCONFIG
    /// boots through OVMF without fw_cfg). Default: both. VM boots are vm-test's.
    ImageTest { scenarios: Vec<String> },
    /// Throughput, CPU and added latency: bare veth, stock OpenVPN 2.6 and our daemon (p2p, and
    /// server + one client; UDP, AES-256-GCM) in network namespaces; results in
    /// <target>/bench/results.json.
    Bench {
        /// Repetitions of every measurement; the table shows median [min–max].
        #[arg(long, default_value_t = 3)]
        runs: u32,
        /// iperf3 -t seconds per throughput run.
        #[arg(long, default_value_t = 10)]
        duration: u32,
        /// Measure this vpn-daemon executable (e.g. one saved from an earlier commit) instead of
        /// building the workspace's in release.
        #[arg(long, value_name = "PATH")]
        daemon: Option<std::path::PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let cli = Cli::parse();
    setup::run()?;
    match cli.task {
        Task::Setup => Ok(()),
        Task::Test => test::run(),
        Task::Fuzz { seconds, targets } => fuzz::run(seconds, &targets),
        Task::Demo { hold } => demo::run(hold, started),
        Task::VmTest { smoke, scenarios } => vm::run(&scenarios, smoke),
        Task::BuildImage {
            config,
            network,
            files,
            out,
        } => image::run(&image::ImageOptions {
            config,
            network,
            extra_files: files,
            out_dir: out,
        }),
        Task::ImageTest { scenarios } => {
            let artifacts = image::build(&image::ImageOptions::default())?;
            image::check::run(&artifacts, &scenarios)
        }
        Task::Bench {
            runs,
            duration,
            daemon,
        } => bench::run(&bench::BenchOptions {
            runs,
            duration,
            daemon,
        }),
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_owned()
}

/// Runs a command, inheriting stdio, and fails if it fails.
pub fn run_command(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

/// Prints a step header and how long the step took.
pub fn step<T>(name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    println!("==> {name}");
    let started = Instant::now();
    let result = f();
    let outcome = if result.is_ok() { "ok" } else { "FAILED" };
    println!(
        "<== {name}: {outcome} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    result
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
