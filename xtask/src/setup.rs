//! `cargo xtask setup`: brings a fresh Debian 12 machine of this kind to a state where the
//! workspace builds and every test tier runs. Quick (about a second) when nothing is missing.

use std::process::Command;

use anyhow::{bail, Context as _};

use crate::{is_root, run_command};

/// Debian packages the build and the test peers need.
const APT_PACKAGES: &[&str] = &[
    // bpf-linker links against Debian's LLVM 22 (the nightly's LLVM major).
    "llvm-22-dev",
    "libpolly-22-dev",
    // Kernel plumbing for netns tests and eBPF inspection.
    "iproute2",
    "procps",
    "bpftool",
    "tcpdump",
    // Real peers and traffic tools for the test tiers.
    "openvpn",
    "openssl",
    "iperf3",
    "iputils-ping",
    "keepalived",
    "qemu-system-x86",
    // The appliance image (cargo xtask build-image / image-test): objcopy for UKIs, compressors,
    // UEFI firmware, and checkers for the FAT, GPT and cpio the build writes.
    "binutils",
    "zstd",
    "xz-utils",
    "ovmf",
    "dosfstools",
    "fdisk",
    "cpio",
    // BGP and metrics tests (upcoming): a real BGP peer and a real scraper, run by the tests in
    // namespaces with their own configs. bird2 is small (0.8 MB download); prometheus costs
    // about 23 MB to download and 330 MB on disk with its web UI's JavaScript dependencies
    // (218 MB of it libjs-moment-timezone); both installed in about 15 s here.
    "bird2",
    "prometheus",
];

/// Services of packages above that Debian enables and starts on install; the tests run their own
/// instances, so when setup has just installed one it stops and disables the system-wide one
/// (a host-wide bird or a prometheus on :9090 is nothing the tests want).
const NO_SYSTEM_SERVICE: &[(&str, &str)] = &[("bird2", "bird"), ("prometheus", "prometheus")];

/// Where apt keeps its package lists (`*_Packages`, possibly compressed) after `apt-get update`.
const APT_LISTS: &str = "/var/lib/apt/lists";

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Builds with stable 1.95 (about 2 minutes on 2 cores); runs the nightly for the targets.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub fn run() -> anyhow::Result<()> {
    install_apt_packages()?;
    ensure_rustup_components()?;
    ensure_bpf_linker()?;
    ensure_cargo_fuzz()
}

fn install_apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|package| !dpkg_installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {}; run as root or: sudo apt-get install {}",
            missing.join(" "),
            missing.join(" ")
        );
    }
    let mut updated = false;
    if !apt_lists_present() {
        println!("setup: no apt package lists in {APT_LISTS} yet: apt-get update first");
        apt_get_update()?;
        updated = true;
    }
    println!("setup: installing {}", missing.join(" "));
    if let Err(error) = apt_get_install(&missing) {
        if updated {
            return Err(error);
        }
        // Lists older than the mirror give 404s for superseded versions; lists from other
        // sources give "Unable to locate package". One update fixes both.
        println!(
            "setup: apt-get install failed ({error:#}); the package lists may be stale or \
             incomplete: apt-get update, then one more try"
        );
        apt_get_update()?;
        apt_get_install(&missing).context("apt-get install, retried after apt-get update")?;
    }
    stop_system_services(&missing);
    Ok(())
}

/// Whether apt has any package list (after a first `apt-get update`); the files are named
/// `<source>_Packages`, often with a compression suffix (`.lz4`, `.gz`, ...).
fn apt_lists_present() -> bool {
    std::fs::read_dir(APT_LISTS).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|entry| entry.file_name().to_string_lossy().contains("_Packages"))
    })
}

fn apt_get_update() -> anyhow::Result<()> {
    println!("setup: apt-get update");
    run_command(Command::new("apt-get").args(["update", "-qq"])).context("apt-get update")
}

fn apt_get_install(packages: &[&str]) -> anyhow::Result<()> {
    run_command(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Disables (and, where systemd runs, stops) the system services of [`NO_SYSTEM_SERVICE`]
/// packages just installed (`installed`). Best effort: a failure is only reported.
fn stop_system_services(installed: &[&str]) {
    let systemd_running = std::path::Path::new("/run/systemd/system").exists();
    for (package, unit) in NO_SYSTEM_SERVICE {
        if !installed.contains(package) {
            continue;
        }
        // Without a running systemd (containers) `disable` still removes the unit's links.
        let now: &[&str] = if systemd_running { &["--now"] } else { &[] };
        println!("setup: systemctl disable {unit} (the tests run their own {package})");
        let result = Command::new("systemctl")
            .arg("disable")
            .args(now)
            .args(["--quiet", unit])
            .status();
        match result {
            Ok(status) if status.success() => {}
            Ok(status) => println!("setup: warning: systemctl disable {unit}: {status}"),
            Err(error) => println!("setup: warning: systemctl disable {unit}: {error}"),
        }
    }
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|output| {
            String::from_utf8_lossy(&output.stdout).contains("install ok installed")
        })
}

fn ensure_rustup_components() -> anyhow::Result<()> {
    let toolchains = capture(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|line| line.starts_with("nightly")) {
        bail!(
            "the eBPF programs build with the nightly toolchain, which is not installed \
             (rustup toolchain install nightly --component rust-src)"
        );
    }
    for (toolchain, component) in [
        ("stable", "rustfmt"),
        ("stable", "clippy"),
        ("nightly", "rust-src"),
    ] {
        let installed = capture(Command::new("rustup").args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            toolchain,
        ]))?;
        if !installed.lines().any(|line| line.starts_with(component)) {
            println!("setup: rustup component add {component} --toolchain {toolchain}");
            run_command(Command::new("rustup").args([
                "component",
                "add",
                component,
                "--toolchain",
                toolchain,
            ]))?;
        }
    }
    Ok(())
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    let present = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).contains(BPF_LINKER_VERSION));
    if present {
        return Ok(());
    }
    println!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes)");
    let path = format!(
        "/usr/lib/llvm-22/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    run_command(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("PATH", path)
            .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22"),
    )
    .context("installing bpf-linker")
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if present {
        return Ok(());
    }
    println!("setup: cargo install cargo-fuzz {CARGO_FUZZ_VERSION} (about 2 minutes)");
    run_command(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))
    .context("installing cargo-fuzz")
}

fn capture(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
