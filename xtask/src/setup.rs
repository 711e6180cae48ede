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
];

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
    println!("setup: installing {}", missing.join(" "));
    run_command(Command::new("apt-get").args(["update", "-qq"]))?;
    run_command(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
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
