//! `cargo xtask fuzz [--seconds N] [TARGET...]`: builds the cargo-fuzz targets of
//! `vpn-daemon/fuzz` with the nightly toolchain and runs each for N seconds. Fails on the first
//! crash and says where libFuzzer saved the input that caused it.
//!
//! The eBPF programs are not built for the fuzz targets (`AYA_BUILD_SKIP=1`).
//! Targets are built without a sanitizer (`-s none`): the fuzzed code is safe Rust, where
//! AddressSanitizer finds nothing that a panic does not, and it costs build and run time.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

use crate::{step, workspace_root};

/// Seconds per target for `cargo xtask fuzz` when `--seconds` is not given.
pub const DEFAULT_SECONDS: u32 = 20;

fn fuzz_dir() -> PathBuf {
    workspace_root().join("vpn-daemon").join("fuzz")
}

/// `cargo +nightly fuzz <subcommand>` in the fuzz crate, never letting rustup download.
fn cargo_fuzz(subcommand: &str) -> Command {
    let mut command = Command::new("cargo");
    command
        .args(["+nightly", "fuzz", subcommand])
        .current_dir(fuzz_dir())
        .env("RUSTUP_AUTO_INSTALL", "0")
        // The targets never load eBPF: skip its nested nightly build (vpn-daemon/build.rs
        // leaves an empty object instead).
        .env("AYA_BUILD_SKIP", "1");
    command
}

/// Where the fuzz build goes: `$CARGO_TARGET_DIR/fuzz` if set (a separate tree, since the
/// flags differ from the workspace's), else cargo-fuzz's default `vpn-daemon/fuzz/target`.
fn target_dir_args() -> Vec<String> {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => vec![
            "--target-dir".into(),
            Path::new(&dir).join("fuzz").display().to_string(),
        ],
        None => Vec::new(),
    }
}

/// Every target the fuzz crate declares (`cargo fuzz list`).
pub fn all_targets() -> anyhow::Result<Vec<String>> {
    let output = cargo_fuzz("list")
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo +nightly fuzz list")?;
    if !output.status.success() {
        bail!("cargo +nightly fuzz list failed: {}", output.status);
    }
    let targets: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect();
    if targets.is_empty() {
        bail!("no fuzz targets in {}", fuzz_dir().display());
    }
    Ok(targets)
}

/// Builds all targets once, then runs `targets` (all if empty) for `seconds` each.
pub fn run(seconds: u32, targets: &[String]) -> anyhow::Result<()> {
    let available = all_targets()?;
    let targets: Vec<String> = if targets.is_empty() {
        available.clone()
    } else {
        targets.to_vec()
    };
    if let Some(unknown) = targets.iter().find(|target| !available.contains(target)) {
        bail!(
            "no fuzz target {unknown:?}; available: {}",
            available.join(" ")
        );
    }
    let target_dir = target_dir_args();
    // One build for all targets shares the dependency compilation; `run` then only checks.
    step("fuzz: build all targets (nightly, no sanitizer)", || {
        let status = cargo_fuzz("build")
            .args(["-s", "none"])
            .args(&target_dir)
            .status()
            .context("running cargo +nightly fuzz build")?;
        if !status.success() {
            bail!("building the fuzz targets failed: {status}");
        }
        Ok(())
    })?;
    for target in &targets {
        step(&format!("fuzz: {target} for {seconds} s"), || {
            run_target(target, seconds, &target_dir)
        })?;
    }
    Ok(())
}

fn run_target(target: &str, seconds: u32, target_dir: &[String]) -> anyhow::Result<()> {
    let artifacts = fuzz_dir().join("artifacts").join(target);
    let output = cargo_fuzz("run")
        .args(["-s", "none"])
        .args(target_dir)
        .arg(target)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        // libFuzzer reports on stderr; keep its progress quiet, the final stats and any
        // crash report show.
        .arg("-print_final_stats=1")
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running fuzz target {target}"))?;
    let report = String::from_utf8_lossy(&output.stderr);
    let summary: Vec<&str> = report
        .lines()
        .filter(|line| line.starts_with("stat::") || line.contains("Done "))
        .collect();
    for line in &summary {
        println!("  {line}");
    }
    if output.status.success() {
        return Ok(());
    }
    eprintln!("{report}");
    let saved: Vec<&str> = report
        .lines()
        .filter_map(|line| {
            line.split_once("Test unit written to ")
                .map(|(_, path)| path.trim())
        })
        .collect();
    let location = if saved.is_empty() {
        format!("look in {}", artifacts.display())
    } else {
        saved.join(", ")
    };
    bail!(
        "fuzz target {target} failed ({}); crash input: {location}\n  reproduce: cd {} && cargo +nightly fuzz run -s none {target} {}",
        output.status,
        fuzz_dir().display(),
        saved.first().copied().unwrap_or("<input>")
    )
}
